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

const TOP_KEYS: &[&str] = &["server", "biller", "cache", "route", "partner"];

/// Reads and validates a configuration file.
///
/// # Errors
/// Every problem found, each located; a file that cannot be read, or is not UTF-8, is one error.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::whole_file(
            &file,
            format!("cannot read the configuration file: {e}"),
        )])
    })?;
    match std::str::from_utf8(&bytes) {
        Ok(text) => load_str(text, &file),
        Err(e) => {
            // Up to the first bad byte the lossy text has the same offsets as the file.
            let text = String::from_utf8_lossy(&bytes);
            let at = e.valid_up_to();
            let message = "the file is not UTF-8 text (is it the right file?)";
            Err(ConfigErrors(vec![Source::new(&file, &text).error(
                at..at + 1,
                "",
                message,
            )]))
        }
    }
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
        ConfigErrors(vec![source.error(span, "", message)])
    })?;
    let mut errors = Errors::new(source);
    let root = Table::root(&mut errors, &doc, TOP_KEYS);
    let server = sections::server(&mut errors, &root);
    let biller = sections::biller(&mut errors, &root);
    let cache = sections::cache(&mut errors, &root);
    let routes = routes::routes(&mut errors, &root);
    let partners = partners::partners(&mut errors, &root);
    if errors.list.is_empty() {
        if let (Some(server), Some(biller), Some(cache), Some(routes), Some(partners)) =
            (server, biller, cache, routes, partners)
        {
            return Ok(Config {
                server,
                biller,
                cache,
                routes: routes.into(),
                partners: partners.into(),
                source_sha256: hex::encode(Sha256::digest(text.as_bytes())),
            });
        }
        // Every refusal above reports itself; this is a guard, not a path.
        errors.push(0..0, "", "the configuration is invalid");
    }
    let mut list = errors.list;
    list.sort_by_key(|e| (e.line, e.column));
    Err(ConfigErrors(list))
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
