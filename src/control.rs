//! Operating a running gateway: reload the configuration, suspend and resume partners, keep
//! suspensions in the state file, hold the admin token. Used by the admin API and by signals;
//! nothing here is on the request path.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::admission::Suspension;
use crate::config::{self, ConfigErrors};
use crate::proxy::Shared;
use crate::recent::Recent;

/// The environment variable the admin bearer token is read from.
pub const TOKEN_ENV: &str = "BILLGATE_ADMIN_TOKEN";

/// How long a reload may spend reading and validating the file. A regular file of at most
/// `max_config_bytes` takes well under a second; only a stalled file system takes longer, and
/// then the reload gives up instead of holding the operator (or the next reload) waiting.
pub const LOAD_TIME_LIMIT: Duration = Duration::from_secs(10);

/// The most bytes read from `admin_token_file`: a token is a line, not a file's worth.
const TOKEN_FILE_CAP: u64 = 4096;
/// The most bytes read from the state file: a suspension per partner, each a short reason.
const STATE_FILE_CAP: u64 = 16 * 1024 * 1024;

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    pub sha256: String,
    /// One line saying what changed.
    pub summary: String,
    /// The full change, partner by partner.
    pub diff: String,
    /// What the new file has worth a second look (a route no request reaches), as `billgate
    /// check` words it.
    pub warnings: Vec<String>,
}

/// Why a reload did not happen; the running configuration stays in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the configuration did not come from a file, so there is nothing to re-read")]
    NoFile,
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error("the change trips {} guardrail(s); reload with force to apply it anyway:\n{}", .0.len(), .0.join("\n"))]
    Refused(Vec<String>),
    /// Reading and validating the file took longer than [`LOAD_TIME_LIMIT`].
    #[error("reading {path} took longer than {}s (a stalled file system?); nothing was applied", .limit.as_secs())]
    TimedOut { path: String, limit: Duration },
    /// An earlier reload that ran out of time is still reading the file; another read would
    /// only pile up behind it.
    #[error("an earlier reload is still reading {0} (it ran out of time); nothing was applied")]
    StillReading(String),
}

/// Why a suspension could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no partner \"{0}\" in the running configuration")]
    UnknownPartner(String),
    #[error("could not write the state file {path}: {error}")]
    State { path: String, error: std::io::Error },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    #[serde(default)]
    suspended: std::collections::BTreeMap<String, Suspension>,
    /// With `[fleet]`: the instances last seen alive, which an instance started while Redis is
    /// out of reach divides its quotas by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fleet_instances: Option<u32>,
}

/// The handle operators act through.
pub struct Control {
    pub shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    /// SHA-256 of the admin token; `None` turns the mutating endpoints off.
    token: ArcSwapOption<[u8; 32]>,
    /// Reloads happen one at a time.
    reloads: tokio::sync::Mutex<()>,
    /// Suspensions and resumptions (and the state-file writes recording them) happen one at a
    /// time. A lock of their own: a suspension must never wait for a reload, which reads a
    /// file and may take up to [`LOAD_TIME_LIMIT`]. Suspensions live beside the snapshot, not
    /// in it, so a reload installing a snapshot meanwhile changes none of them.
    suspensions: tokio::sync::Mutex<()>,
    /// Set while a blocking thread reads the configuration file; cleared by that thread.
    reading: Arc<AtomicBool>,
    /// The partners' request counters sampled for `GET /admin/partners/{id}`.
    pub recent: Recent,
    /// The fleet's size as the state file had it at start (0: not there).
    fleet_on_file: std::sync::atomic::AtomicU32,
}

impl Control {
    /// Wraps a running gateway's state; reads the admin token and the suspensions on file.
    pub fn new(shared: Arc<Shared>, config_path: Option<PathBuf>) -> Result<Control, String> {
        let control = Control {
            shared,
            config_path,
            token: ArcSwapOption::empty(),
            recent: Recent::default(),
            reloads: tokio::sync::Mutex::new(()),
            suspensions: tokio::sync::Mutex::new(()),
            reading: Arc::new(AtomicBool::new(false)),
            fleet_on_file: std::sync::atomic::AtomicU32::new(0),
        };
        control.read_token()?;
        control.read_state()?;
        Ok(control)
    }

    /// Whether the admin token is set (the mutating endpoints are on).
    pub fn has_token(&self) -> bool {
        self.token.load().is_some()
    }

    /// Whether `presented` is the admin token.
    pub fn token_matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        self.token.load().as_deref().is_some_and(|t| *t == digest)
    }

    fn read_token(&self) -> Result<(), String> {
        let file = self
            .shared
            .snapshot()
            .config
            .server
            .admin_token_file
            .clone();
        let token = match file {
            Some(path) => {
                // A regular file only, and small: this runs on the admin listener's thread.
                let text = config::read_regular_file(&path, TOKEN_FILE_CAP)
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .map_err(|e| format!("cannot read admin_token_file {}: {e}", path.display()))?;
                Some(text.trim().to_owned())
            }
            None => std::env::var(TOKEN_ENV).ok().map(|t| t.trim().to_owned()),
        };
        let digest = token
            .filter(|t| !t.is_empty())
            .map(|t| Arc::new(<[u8; 32]>::from(Sha256::digest(t.as_bytes()))));
        if digest.is_none() {
            tracing::warn!("no admin token ({TOKEN_ENV} or [server] admin_token_file): reload, suspend and resume over HTTP are off");
        }
        self.token.store(digest);
        Ok(())
    }

    fn state_path(&self) -> Option<PathBuf> {
        self.shared.snapshot().config.server.state_file.clone()
    }

    fn read_state(&self) -> Result<(), String> {
        let Some(path) = self.state_path() else {
            return Ok(());
        };
        let text = match config::read_regular_file(&path, STATE_FILE_CAP) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(config::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(())
            }
            Err(e) => return Err(format!("cannot read state file {}: {e}", path.display())),
        };
        let state: StateFile = serde_json::from_str(&text)
            .map_err(|e| format!("state file {} is not valid: {e}", path.display()))?;
        self.fleet_on_file.store(
            state.fleet_instances.unwrap_or(0),
            std::sync::atomic::Ordering::Relaxed,
        );
        for (id, suspension) in state.suspended {
            let reason = printable(&suspension.reason);
            tracing::warn!(partner = %id, %reason, "partner suspended (from the state file)");
            self.shared.suspensions().suspend(&id, suspension);
        }
        Ok(())
    }

    fn write_state(&self) -> Result<(), ControlError> {
        let Some(path) = self.state_path() else {
            return Ok(());
        };
        let state = StateFile {
            suspended: self.shared.suspensions().list().into_iter().collect(),
            fleet_instances: self.shared.fleet().map(|f| f.state().instances()),
        };
        write_atomically(&path, &state).map_err(|error| ControlError::State {
            path: path.display().to_string(),
            error,
        })
    }

    /// The fleet's size as the state file had it when this instance started.
    pub fn fleet_instances_on_file(&self) -> Option<u32> {
        match self
            .fleet_on_file
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            n => Some(n),
        }
    }

    /// Builds the running snapshot again for what changed outside the file (the fleet's size:
    /// each instance's share of `max_in_flight`), one at a time with reloads, so it never puts
    /// back a configuration a reload replaced meanwhile.
    pub async fn rebuild(&self) {
        let _one_at_a_time = self.reloads.lock().await;
        self.shared.rebuild();
    }

    /// The fleet's size changed: recorded in the state file, beside the suspensions.
    pub async fn fleet_size_changed(&self) {
        let _serial = self.suspensions.lock().await;
        if let Err(error) = self.write_state() {
            tracing::error!("{error}");
        }
    }

    /// Re-reads the configuration file; applies it if valid in full and within the guardrails
    /// (or `force`). The outcome is logged and counted either way.
    pub async fn reload(&self, force: bool) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.reloads.lock().await;
        let result = self.reload_inner(force).await;
        let metrics = self.shared.metrics();
        match &result {
            Ok(done) => {
                metrics.reload("ok");
                // One event a log file holds on one line: the diff's lines as a list.
                let diff: Vec<&str> = done.diff.lines().collect();
                tracing::info!(
                    sha256 = %done.sha256,
                    summary = %done.summary,
                    ?diff,
                    warnings = ?done.warnings,
                    "configuration reloaded"
                );
            }
            Err(ReloadError::Refused(hits)) => {
                metrics.reload("refused");
                tracing::warn!(
                    guardrails = ?hits,
                    "reload refused by guardrails; the running configuration stays"
                );
            }
            Err(error) => {
                metrics.reload("error");
                let errors: Vec<String> = error.to_string().lines().map(str::to_owned).collect();
                tracing::error!(?errors, "reload failed; the running configuration stays");
            }
        }
        result
    }

    async fn reload_inner(&self, force: bool) -> Result<Reloaded, ReloadError> {
        let path = self.config_path.clone().ok_or(ReloadError::NoFile)?;
        let shown = path.display().to_string();
        // The running configuration says how much may be read: a file swapped in at the path
        // cannot make the gateway read more than the operators allowed.
        let cap = self.shared.snapshot().config.server.max_config_bytes;
        // The certificate, key and CA files of both legs are read with the configuration, on
        // the same thread and under the same time limit: a reload naming a bad one changes
        // nothing.
        let load = move || {
            let config = config::load_file_within(
                &path,
                cap,
                "the running configuration's [server] max_config_bytes",
            )?;
            let (tls, biller_tls) = crate::biller_tls::load_both(&config)?;
            Ok((config, tls, biller_tls))
        };
        let deadline = tokio::time::sleep(LOAD_TIME_LIMIT);
        let loaded = match bounded(&self.reading, deadline, load).await {
            Bounded::Done(loaded) => loaded,
            Bounded::Busy => return Err(ReloadError::StillReading(shown)),
            Bounded::TimedOut => {
                return Err(ReloadError::TimedOut {
                    path: shown,
                    limit: LOAD_TIME_LIMIT,
                })
            }
            Bounded::Failed(error) => Err(ConfigErrors::one(config::ConfigError::whole_file(
                &shown, error,
            ))),
        };
        let (next, tls, biller_tls) = loaded.map_err(ReloadError::Invalid)?;
        let running = self.shared.snapshot_full();
        let change = config::diff(&running.config, &next);
        let hits: Vec<String> = change
            .guardrails()
            .iter()
            .map(ToString::to_string)
            .collect();
        if !hits.is_empty() && !force {
            return Err(ReloadError::Refused(hits));
        }
        let done = Reloaded {
            sha256: next.source_sha256.clone(),
            summary: change.summary(),
            diff: change.to_string(),
            warnings: next.warnings.iter().map(ToString::to_string).collect(),
        };
        if let Some(subscriptions) = self.shared.subscriptions() {
            if let Err(error) = subscriptions.reload(&next) {
                tracing::error!("{error}; the previous webhook secrets and biller token stay");
            }
        }
        self.shared.install(next, biller_tls);
        self.shared.set_tls(tls);
        if let Err(error) = self.read_token() {
            tracing::error!("{error}; the previous admin token stays");
        }
        Ok(done)
    }

    /// Suspends a partner of the running configuration and records it in the state file.
    pub async fn suspend(&self, id: &str, reason: &str) -> Result<Suspension, ControlError> {
        let _serial = self.suspensions.lock().await;
        self.known(id)?;
        let since_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let suspension = Suspension {
            reason: reason.to_owned(),
            since_unix,
        };
        self.shared.suspensions().suspend(id, suspension.clone());
        tracing::warn!(partner = %id, reason = %printable(reason), "partner suspended");
        self.write_state()?;
        Ok(suspension)
    }

    /// Lifts a suspension; `Ok(false)` when the partner was not suspended.
    pub async fn resume(&self, id: &str) -> Result<bool, ControlError> {
        let _serial = self.suspensions.lock().await;
        self.known(id)?;
        let lifted = self.shared.suspensions().resume(id);
        if lifted {
            tracing::warn!(partner = %id, "partner resumed");
            self.write_state()?;
        }
        Ok(lifted)
    }

    /// Takes in a suspension made (`Some`) or lifted (`None`) on another instance of the
    /// fleet, and records it in the state file, so that a restart without Redis keeps it.
    pub async fn from_fleet(&self, id: &str, suspension: Option<Suspension>) {
        let _serial = self.suspensions.lock().await;
        match suspension {
            Some(suspension) => {
                tracing::warn!(partner = %id, reason = %printable(&suspension.reason), "partner suspended (on another instance of the fleet)");
                self.shared.suspensions().suspend(id, suspension);
            }
            None => {
                if !self.shared.suspensions().resume(id) {
                    return;
                }
                tracing::warn!(partner = %id, "partner resumed (on another instance of the fleet)");
            }
        }
        if let Err(error) = self.write_state() {
            tracing::error!("{error}");
        }
    }

    fn known(&self, id: &str) -> Result<(), ControlError> {
        let snapshot = self.shared.snapshot();
        if snapshot.config.partners.iter().any(|p| p.id == id) {
            Ok(())
        } else {
            Err(ControlError::UnknownPartner(id.to_owned()))
        }
    }
}

/// `text` fit for one line of a log: control characters (a line break that would forge a log
/// line, an escape sequence that would act on the terminal) and the invisible characters that
/// reorder text are written as escapes, `\n` or `\u{1b}`, and a backslash as `\\` so that an
/// escape in the text itself stays told apart. The operators' reason is kept as they wrote it
/// everywhere else: partners read it in JSON, which escapes it its own way.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_invisible_layout(c) => {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

/// Bidirectional overrides and isolates, marks, and line or paragraph separators: they change
/// how the text around them is shown without showing themselves.
fn is_invisible_layout(c: char) -> bool {
    matches!(
        c,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

/// What [`bounded`] came back with.
#[derive(Debug)]
enum Bounded<T> {
    Done(T),
    /// The work panicked; its message.
    Failed(String),
    /// It ran past the limit; it goes on on its thread, and `reading` stays set until it ends.
    TimedOut,
    /// Work started earlier is still running.
    Busy,
}

/// Runs `work` on a blocking thread until `deadline` (a timer), one at a time: `reading` is
/// set while it runs, and work is refused (`Busy`) while an earlier one that timed out still
/// runs, so a stalled file system costs one thread, never one per attempt.
async fn bounded<T: Send + 'static>(
    reading: &Arc<AtomicBool>,
    deadline: impl std::future::Future<Output = ()>,
    work: impl FnOnce() -> T + Send + 'static,
) -> Bounded<T> {
    if reading.swap(true, Ordering::AcqRel) {
        return Bounded::Busy;
    }
    /// Clears the flag when the work ends, however it ends.
    struct Clear(Arc<AtomicBool>);
    impl Drop for Clear {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }
    let clear = Clear(Arc::clone(reading));
    let task = tokio::task::spawn_blocking(move || {
        let _clear = clear;
        work()
    });
    tokio::select! {
        joined = task => match joined {
            Ok(done) => Bounded::Done(done),
            Err(error) => Bounded::Failed(error.to_string()),
        },
        () = deadline => Bounded::TimedOut,
    }
}

/// Writes `value` as JSON next to `path` then renames it over `path`, so a crash never leaves a
/// half-written state file.
fn write_atomically(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_logged_on_one_line_with_control_characters_escaped() {
        assert_eq!(
            printable("polling storm, see incident 4711"),
            "polling storm, see incident 4711"
        );
        assert_eq!(
            printable("storm\nFAKE partner resumed\r\u{1b}[2J\tdone"),
            "storm\\nFAKE partner resumed\\r\\u{1b}[2J\\tdone"
        );
        assert_eq!(
            printable("a\\nb"),
            "a\\\\nb",
            "a backslash in the text stays told apart"
        );
        assert_eq!(printable("\u{0}\u{7f}\u{85}"), "\\u{0}\\u{7f}\\u{85}");
        assert_eq!(
            printable("abc\u{202e}gnp.exe\u{2028}"),
            "abc\\u{202e}gnp.exe\\u{2028}"
        );
        assert_eq!(printable("水道 é"), "水道 é");
    }

    /// A deadline the test passes by hand: the time limit is a timer in the gateway.
    fn by_hand() -> (
        tokio::sync::oneshot::Sender<()>,
        impl std::future::Future<Output = ()>,
    ) {
        let (pass, passed) = tokio::sync::oneshot::channel::<()>();
        (pass, async move {
            let _ = passed.await;
        })
    }

    fn never() -> impl std::future::Future<Output = ()> {
        std::future::pending()
    }

    #[tokio::test]
    async fn work_past_the_limit_is_given_up_and_no_second_one_piles_up_behind_it() {
        let reading = Arc::new(AtomicBool::new(false));
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (pass, deadline) = by_hand();
        assert!(pass.send(()).is_ok());
        let stuck = bounded(&reading, deadline, move || held.recv().is_ok()).await;
        assert!(matches!(stuck, Bounded::TimedOut));
        let next = bounded(&reading, never(), || 2).await;
        assert!(matches!(next, Bounded::Busy), "{next:?}");

        // Once the stuck work ends, work runs again.
        assert!(release.send(()).is_ok());
        let mut after = Bounded::Busy;
        for _ in 0..1_000_000 {
            after = bounded(&reading, never(), || 3).await;
            if !matches!(after, Bounded::Busy) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(matches!(after, Bounded::Done(3)), "{after:?}");
        assert!(!reading.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_panic_in_the_work_is_an_answer_and_clears_the_flag() {
        let reading = Arc::new(AtomicBool::new(false));
        let failed = bounded(&reading, never(), || {
            panic!("a broken parser");
        })
        .await;
        assert!(
            matches!(&failed, Bounded::Failed(m) if m.contains("panicked")),
            "{failed:?}"
        );
        assert!(matches!(
            bounded(&reading, never(), || 4).await,
            Bounded::Done(4)
        ));
    }
}
