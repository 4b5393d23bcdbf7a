//! From a file's bytes to a validated [`Config`], or to every error in it at once.

use std::path::Path;

use sha2::{Digest, Sha256};
use toml::de::DeTable;

use super::error::{ConfigError, ConfigErrors, Source};
use super::fields::{Errors, Table};
use super::model::Config;
use super::{partners, routes, sections};

/// The shipped `config.toml`, embedded: the configuration used when none is given.
pub const DEFAULT_CONFIG: &str = include_str!("../../../../config.toml");

const TOP_KEYS: &[&str] = &[
    "server",
    "biller",
    "cache",
    "fleet",
    "subscriptions",
    "route",
    "partner",
];

/// The default `[server] max_config_bytes`: a generous ceiling for hand-written files (the
/// shipped one is under 5 KiB), low enough that reading and checking a file stays quick.
pub const DEFAULT_MAX_CONFIG_BYTES: u64 = 8 * 1024 * 1024;
/// The least `[server] max_config_bytes` may be set to.
pub const MIN_CONFIG_BYTES: u64 = 4096;
/// The most `[server] max_config_bytes` (and `--max-config-bytes`) may be set to.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024 * 1024;

/// Why a file could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A FIFO, a device, a socket or a directory: reading it could block for ever (a FIFO
    /// with no writer) or never end (`/dev/zero`).
    #[error("it is {0}, not a regular file; only a regular file is read (a pipe or a device could block or never end)")]
    NotRegular(&'static str),
    #[error("it is {size} bytes, over the cap of {cap} bytes")]
    TooLarge { size: u64, cap: u64 },
    #[error("it grew past the cap of {cap} bytes while being read")]
    Grew { cap: u64 },
}

/// Reads the regular file at `path` whole, refusing anything else and anything over `cap`
/// bytes. Never blocks on a FIFO: it is opened without waiting for a writer, then refused.
///
/// # Errors
/// The file cannot be opened or read, is not a regular file (a symbolic link is followed to
/// what it names), or is larger than `cap`.
pub fn read_regular_file(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Opening a FIFO for reading waits for a writer unless O_NONBLOCK is set; O_NOCTTY keeps
        // a terminal device from becoming the process's controlling terminal.
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path)?;
    // The type and size of what was opened, not of what the path named a moment before.
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind_of(&meta.file_type())));
    }
    if meta.len() > cap {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            cap,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::Grew { cap });
    }
    Ok(bytes)
}

fn kind_of(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Reads and validates a configuration file of at most [`DEFAULT_MAX_CONFIG_BYTES`] and at
/// most its own `[server] max_config_bytes`.
///
/// # Errors
/// Every problem found, each located; a file that cannot be read, is not a regular file, is too
/// large or is not UTF-8 is one error.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = "the default [server] max_config_bytes";
    load_file_within(path, DEFAULT_MAX_CONFIG_BYTES, origin)
}

/// [`load_file`] reading at most `cap` bytes: a reload passes the running configuration's
/// `max_config_bytes`, so that a file swapped in at the path is never read past what the
/// running configuration allows; `serve` and `check` pass `--max-config-bytes`. `cap_origin`
/// says where the cap comes from, for the error. A file over its own `max_config_bytes` is
/// refused too: a file `serve` starts from is one a reload would take.
///
/// # Errors
/// As [`load_file`].
pub fn load_file_within(path: &Path, cap: u64, cap_origin: &str) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let whole_file = |message: String| ConfigErrors::one(ConfigError::whole_file(&file, message));
    let bytes = read_regular_file(path, cap).map_err(|e| {
        let origin = match e {
            ReadError::TooLarge { .. } | ReadError::Grew { .. } => format!(" ({cap_origin})"),
            _ => String::new(),
        };
        whole_file(format!("cannot read the configuration file: {e}{origin}"))
    })?;
    let config = match std::str::from_utf8(&bytes) {
        Ok(text) => load_str(text, &file)?,
        Err(e) => {
            // Up to the first bad byte the lossy text has the same offsets as the file.
            let text = String::from_utf8_lossy(&bytes);
            let at = e.valid_up_to();
            let message = "the file is not UTF-8 text (is it the right file?)";
            return Err(ConfigErrors::one(Source::new(&file, &text).error(
                at..at + 1,
                "",
                message,
            )));
        }
    };
    let own = config.server.max_config_bytes;
    if bytes.len() as u64 > own {
        // The same file is refused by `serve` and by a reload alike.
        return Err(whole_file(format!(
            "the file is {} bytes, over its own [server] max_config_bytes of {own}; raise it to load this file",
            bytes.len()
        )));
    }
    Ok(config)
}

/// Validates configuration text; `file_name` is used in error messages.
///
/// # Errors
/// Every problem found, each located, in file order. A TOML syntax error is reported alone:
/// nothing after it can be trusted.
pub fn load_str(text: &str, file_name: &str) -> Result<Config, ConfigErrors> {
    let source = Source::new(file_name, text);
    let doc = DeTable::parse(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = format!("invalid TOML: {}", e.message().trim_end());
        ConfigErrors::one(source.error(span, "", message))
    })?;
    let mut errors = Errors::new(source);
    let root = Table::root(&mut errors, &doc, TOP_KEYS);
    let server = sections::server(&mut errors, &root);
    let biller = sections::biller(&mut errors, &root);
    let cache = sections::cache(&mut errors, &root);
    let fleet = sections::fleet(&mut errors, &root);
    let subscriptions = sections::subscriptions(&mut errors, &root);
    let routes = routes::routes(&mut errors, &root);
    let partners = partners::partners(&mut errors, &root, matches!(subscriptions, Some(Some(_))));
    if errors.count() == 0 {
        if let (
            Some(server),
            Some(biller),
            Some(cache),
            Some(fleet),
            Some(subscriptions),
            Some(routes),
            Some(partners),
        ) = (
            server,
            biller,
            cache,
            fleet,
            subscriptions,
            routes,
            partners,
        ) {
            return Ok(Config {
                server,
                biller,
                cache,
                fleet,
                subscriptions,
                routes: routes.into(),
                partners: partners.into(),
                source_sha256: hex::encode(Sha256::digest(text.as_bytes())),
                fleet_sha256: fleet_sha256(text),
                warnings: errors.warnings,
            });
        }
        // Every refusal above reports itself; this is a guard, not a path.
        errors.push(0..0, "", "the configuration is invalid");
    }
    Err(errors.finish())
}

/// See [`Config::fleet_sha256`]. The text has already parsed; should it not parse as a table
/// here, the file's own hash stands in.
fn fleet_sha256(text: &str) -> String {
    let canonical = text.parse::<toml::Table>().ok().and_then(|mut table| {
        table.remove("server");
        table.remove("fleet");
        toml::to_string(&table).ok()
    });
    let bytes = canonical.as_deref().unwrap_or(text).as_bytes();
    hex::encode(Sha256::digest(bytes))
}

/// Hex SHA-256 of an API key, as `keys_sha256` holds it. One trailing `"\n"` or `"\r\n"` is
/// dropped first, so `echo KEY | billgate hash-key` hashes `KEY`.
pub fn hash_key(key: &str) -> String {
    let key = key
        .strip_suffix("\r\n")
        .or_else(|| key.strip_suffix('\n'))
        .unwrap_or(key);
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_keys_without_their_line_break() {
        let plain = hash_key("wallet-a-demo-key");
        assert_eq!(plain.len(), 64);
        assert_eq!(hash_key("wallet-a-demo-key\n"), plain);
        assert_eq!(hash_key("wallet-a-demo-key\r\n"), plain);
        assert_ne!(hash_key("wallet-a-demo-key\n\n"), plain);
        assert_eq!(
            hash_key(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// Instances of one fleet differ in their listeners and names, not in what they enforce.
    #[test]
    fn the_fleet_hash_leaves_out_each_instances_own_tables() {
        let config = |listen: &str, instance: &str, quota: &str| {
            let text =
                std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config.toml"))
                    .unwrap_or_default()
                    .replace("127.0.0.1:8080", listen)
                    .replace("payment = \"200/s\"", quota);
            let text = format!("# {instance}\n{text}\n[fleet]\nredis = \"redis://127.0.0.1/\"\ninstance = \"{instance}\"\n");
            load_str(&text, "c.toml")
                .map(|c| (c.source_sha256, c.fleet_sha256))
                .ok()
        };
        let one = config("127.0.0.1:8081", "gw-1", "payment = \"200/s\"").unwrap();
        let two = config("127.0.0.1:8082", "gw-2", "payment = \"200/s\"").unwrap();
        let other = config("127.0.0.1:8081", "gw-1", "payment = \"300/s\"").unwrap();
        assert_ne!(one.0, two.0);
        assert_eq!(one.1, two.1);
        assert_ne!(one.1, other.1);
    }

    #[test]
    fn syntax_errors_come_alone() {
        let text = "[server]\nlisten = \"127.0.0.1:1\nunknown = 1\n";
        let errors = load_str(text, "c.toml")
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].line, errors[0].key_path.as_str()), (2, ""));
        assert!(errors[0].message.starts_with("invalid TOML"));
    }

    #[test]
    fn junk_never_panics() {
        let junk = [
            "",
            "\u{0}\u{1}\u{2}",
            "[[[",
            "a = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]",
            "biller = 1\nroute = 2\npartner = \"x\"\nserver = []",
            "[biller]\nurl = \"http://[::1\"\ncapacity = \"4294967296/s\"",
            "[[partner]]\nmax_tracked_accounts = 99999999999999999999999999999999999\nquota = 1",
            "[[route]]\npath = \"/{\"\n[[route]]\npath = \"/}{\"",
            "server.listen.x = 1",
            "\u{feff}[server]\nlisten = \"127.0.0.1:1\"",
        ];
        for text in junk {
            let result = load_str(text, "j.toml");
            assert!(result.is_err(), "{text:?}");
            let shown = result.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(shown.contains("nothing was applied"), "{shown}");
        }
    }

    #[test]
    fn a_file_of_200_000_bad_tables_is_reported_in_one_linear_pass() {
        // Every table an unknown key: 200 000 errors. Locating each from the start of the file
        // made this quadratic (20 000 tables took 54 s in a debug build, 60 000 took 415 s).
        let mut text = String::from("[biller]\nurl = \"http://b:1\"\ncapacity = \"1/s\"\n");
        for n in 0..200_000 {
            text.push_str(&format!("[t{n}]\n"));
        }
        let errors = load_str(&text, "tables.toml").err();
        let errors = errors.unwrap_or_else(|| ConfigErrors::one(ConfigError::whole_file("", "")));
        assert_eq!(errors.total(), 200_000);
        assert_eq!((errors.0.len(), errors.omitted()), (100, 199_900));
        let first = &errors.0[0];
        assert_eq!(
            (first.key_path.as_str(), first.line, first.column),
            ("t0", 4, 2)
        );
        let last = &errors.0[99];
        assert_eq!(
            (last.key_path.as_str(), last.line, last.column),
            ("t99", 103, 2)
        );
        let shown = errors.to_string();
        assert!(shown.ends_with("error: … and 199900 more errors after these 100 (fix these first)\n\nerror: tables.toml has 200000 errors; nothing was applied"), "{}", &shown[shown.len() - 300..]);
    }

    #[test]
    fn the_first_errors_in_file_order_are_the_ones_kept() {
        // Unknown keys are found first, duplicates last; the report is still in file order.
        let mut text = String::new();
        for n in 0..150 {
            text.push_str(&format!(
                "[[route]]\nname = \"r\"\nmethod = \"GET\"\npath = \"/{n}\"\nclass = \"inquiry\"\n"
            ));
        }
        text.push_str("zzz = 1\n");
        let errors = load_str(&text, "r.toml").err().map(|e| (e.omitted(), e.0));
        let (omitted, list) = errors.unwrap_or_default();
        // 149 duplicate names, the unknown key, the missing [biller].
        assert_eq!((list.len(), omitted), (100, 51));
        assert_eq!(list[0].key_path, "biller");
        assert_eq!(
            (list[1].key_path.as_str(), list[1].line),
            ("route[1].name", 7)
        );
        assert!(list[1]
            .message
            .contains("already used by route[0] at r.toml:2:8"));
        assert_eq!(list[99].key_path, "route[99].name");
    }

    /// A scratch directory of this process, removed when dropped.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("billgate-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::create_dir_all(&dir);
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn only_message(result: Result<Config, ConfigErrors>) -> String {
        let errors = result.err().map(|e| e.0).unwrap_or_default();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!((errors[0].line, errors[0].column), (0, 0));
        errors[0].message.clone()
    }

    #[cfg(unix)]
    #[test]
    fn pipes_devices_and_directories_are_refused_without_reading_them() {
        let dir = Scratch::new("load-kinds");
        let fifo = dir.0.join("fifo.toml");
        let c_path = std::ffi::CString::new(fifo.display().to_string()).unwrap_or_default();
        // SAFETY: a valid NUL-terminated path; mkfifo touches nothing else.
        #[allow(unsafe_code)]
        let made = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
        assert_eq!(made, 0);
        // No writer ever opens it: a plain open would wait for ever.
        let message = only_message(load_file(&fifo));
        assert_eq!(message, "cannot read the configuration file: it is a FIFO (named pipe), not a regular file; only a regular file is read (a pipe or a device could block or never end)");

        let zero = dir.0.join("zero.toml");
        let _ = std::os::unix::fs::symlink("/dev/zero", &zero);
        let message = only_message(load_file(&zero));
        assert!(
            message.contains("it is a character device, not a regular file"),
            "{message}"
        );

        let message = only_message(load_file(&dir.0));
        assert!(
            message.contains("it is a directory, not a regular file"),
            "{message}"
        );
    }

    #[test]
    fn files_over_the_cap_are_refused_naming_it() {
        let dir = Scratch::new("load-cap");
        let path = dir.0.join("big.toml");
        let valid = "[biller]\nurl = \"http://b:1\"\ncapacity = \"1/s\"\n";
        let padded = format!("{valid}{}", "# padding\n".repeat(1000));
        let _ = std::fs::write(&path, &padded);
        let message = only_message(load_file_within(
            &path,
            5000,
            "the running [server] max_config_bytes",
        ));
        assert_eq!(message, format!("cannot read the configuration file: it is {} bytes, over the cap of 5000 bytes (the running [server] max_config_bytes)", padded.len()));
        assert!(load_file_within(&path, 20_000, "cap").is_ok());

        // A file larger than its own cap is refused however it is loaded.
        let own = format!("[server]\nmax_config_bytes = 4096\n{padded}");
        let _ = std::fs::write(&path, &own);
        let message = only_message(load_file(&path));
        assert_eq!(message, format!("the file is {} bytes, over its own [server] max_config_bytes of 4096; raise it to load this file", own.len()));
        assert_eq!(
            load_str(&format!("[server]\nmax_config_bytes = 4095\n{valid}"), "c.toml")
                .err()
                .map(|e| e.0[0].message.clone()),
            Some("expected a number of bytes from 4096 to 67108864 (64 MiB), like 8388608; 4095 is not between 4096 and 67108864".to_owned())
        );
    }

    #[test]
    fn unreadable_and_binary_files_are_one_error() {
        let missing = load_file(Path::new("/nonexistent/billgate.toml"));
        let errors = missing.err().map(|e| e.0).unwrap_or_default();
        assert_eq!((errors.len(), errors[0].line), (1, 0));
        assert!(errors[0]
            .message
            .starts_with("cannot read the configuration file"));

        let dir = std::env::temp_dir().join(format!("billgate-load-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("binary.toml");
        let _ = std::fs::write(&path, b"# ok\nk = \xff\xfe\n");
        let errors = load_file(&path).err().map(|e| e.0).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].line, errors[0].column), (2, 5));
        assert!(errors[0].message.contains("not UTF-8"));
    }
}
