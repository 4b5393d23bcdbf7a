//! Where the process's logs go and how they read: text or JSON, on stderr or in the file
//! `--log-file` names, reopened on SIGUSR1 so logrotate can move it away. Colour codes only
//! when stderr is a terminal; durations as milliseconds with three decimals ([`ms`]).

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tracing_subscriber::fmt::MakeWriter;

use crate::cli::LogFormat;

/// The log file, when `--log-file` named one; set once at start.
static LOG_FILE: OnceLock<LogFile> = OnceLock::new();

/// A duration as a log field: milliseconds, rounded to the microsecond.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}

/// Installs the process's subscriber: `RUST_LOG` filters (default `info`), `format` shapes,
/// and the lines go to `file` when given, else to stderr.
///
/// # Errors
/// The file cannot be opened for appending.
pub fn init(format: LogFormat, file: Option<&Path>) -> io::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second subscriber (tests run several commands in one process) keeps the first.
    let _ = match file {
        Some(path) => {
            let file = LOG_FILE.get_or_init(|| LogFile::empty(path));
            file.reopen()?;
            let builder = builder.with_ansi(false).with_writer(file.clone());
            match format {
                LogFormat::Text => builder.try_init(),
                LogFormat::Json => builder.json().try_init(),
            }
        }
        None => {
            let builder = builder
                .with_ansi(io::stderr().is_terminal())
                .with_writer(io::stderr);
            match format {
                LogFormat::Text => builder.try_init(),
                LogFormat::Json => builder.json().try_init(),
            }
        }
    };
    Ok(())
}

/// Reopens the log file at its path (after logrotate moved it), when there is one. Lines
/// written meanwhile went to the moved file; none is lost.
///
/// # Errors
/// The path cannot be opened for appending; the old file stays in use.
pub fn reopen() -> io::Result<()> {
    match LOG_FILE.get() {
        Some(file) => file.reopen(),
        None => Ok(()),
    }
}

/// An append-only log file that can be swapped for a fresh one at the same path while other
/// threads write: each line is one `write` to whichever file is current.
#[derive(Clone)]
struct LogFile {
    path: PathBuf,
    current: Arc<ArcSwap<Option<File>>>,
}

impl LogFile {
    fn empty(path: &Path) -> Self {
        LogFile {
            path: path.to_owned(),
            current: Arc::new(ArcSwap::from_pointee(None)),
        }
    }

    fn reopen(&self) -> io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.current.store(Arc::new(Some(file)));
        Ok(())
    }
}

/// One event's writer: the file current when the event began.
struct Line(Arc<Option<File>>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.as_ref() {
            Some(file) => (&*file).write(buf),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.0.as_ref() {
            Some(file) => (&*file).flush(),
            None => Ok(()),
        }
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(self.current.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_milliseconds_to_the_microsecond() {
        assert_eq!(ms(Duration::from_nanos(1_234_567)), 1.235);
        assert_eq!(ms(Duration::from_secs(2)), 2000.0);
        assert_eq!(ms(Duration::ZERO), 0.0);
    }

    #[test]
    fn a_reopened_file_takes_the_lines_after_the_move() {
        let dir = std::env::temp_dir().join(format!("billgate-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("billgate.log");
        let moved = dir.join("billgate.log.1");
        let log = LogFile::empty(&path);
        log.reopen().unwrap();
        log.make_writer().write_all(b"first\n").unwrap();
        std::fs::rename(&path, &moved).unwrap();
        log.make_writer().write_all(b"second\n").unwrap();
        log.reopen().unwrap();
        log.make_writer().write_all(b"third\n").unwrap();
        assert_eq!(std::fs::read_to_string(&moved).unwrap(), "first\nsecond\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "third\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
