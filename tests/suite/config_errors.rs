//! One example file per configuration failure (`tests/invalid_configs/`), and the message a user
//! reads for each: its key path, line, column, and what was expected.

use std::path::{Path, PathBuf};

use billgate::config::{load_file, ConfigError};

/// One expected error: key path, line, column, and fragments the message must contain.
type Expected = (&'static str, usize, usize, &'static [&'static str]);

const RATE: &str = "expected a rate like \"50/s\"";
const URL: &str = "expected an http or https URL like \"http://127.0.0.1:9000\"";
const PATH: &str = "expected a path like \"/v1/bills/{account}\"";

#[rustfmt::skip]
const CASES: &[(&str, &[Expected])] = &[
    ("unknown_key.toml", &[(
        "partner[0].per_acount", 9, 1,
        &["unknown key `per_acount`", "did you mean `per_account`?", "expected one of: id, keys_sha256, client_cert_sha256, quota, per_account, max_tracked_accounts, mode"],
    )]),
    ("bad_rate.toml", &[("partner[1].quota.inquiry_user", 12, 45, &[RATE, "\"x\" is not a period"])]),
    ("rate_spelling.toml", &[
        ("biller.capacity", 4, 12, &[RATE, "a period of s, min or h", "\"second\" is not a period; write \"400/s\""]),
        ("partner[0].quota.inquiry_user", 8, 45, &[RATE, "\"sec\" is not a period; write \"5/s\""]),
        ("partner[0].per_account", 9, 15, &[RATE, "\"m\" is not a period; write \"2/min\""]),
    ]),
    ("duplicate_partner_id.toml", &[(
        "partner[1].id", 11, 6,
        &["the partner id \"wallet-a\" is already used by partner[0] at", "duplicate_partner_id.toml:7:6", "ids must be unique"],
    )]),
    ("duplicate_key_hash.toml", &[(
        "partner[1].keys_sha256[1]", 14, 3,
        &["this key hash is also at partner[0].keys_sha256[0]", "duplicate_key_hash.toml:8:16", "one key must identify one partner"],
    )]),
    ("bad_route_template.toml", &[("route[0].path", 9, 8, &[PATH, "\"{account\" has a brace inside literal text"])]),
    ("duplicate_route.toml", &[(
        "route[1].path", 15, 8,
        &["GET /v1/bills/{id} matches the same requests as route[0] (GET /v1/bills/{account})", "duplicate_route.toml:9:8"],
    )]),
    ("account_query_with_account.toml", &[("route[0].account_query", 10, 17, &["from {account} in its path or from account_query, not both"])]),
    ("cache_for_payment.toml", &[("route[0].cache_for", 11, 13, &["cache_for only applies to inquiry routes"])]),
    ("route_as_table.toml", &[("route", 6, 1, &["expected an array of tables, written [[route]] before each item, found a table"])]),
    ("malformed_url.toml", &[("biller.url", 3, 7, &[URL, "\"http://bill er:9000\" is not a valid URL"])]),
    ("tls_file_with_http_url.toml", &[(
        "biller.ca_file", 5, 11,
        &["ca_file is for TLS to the biller, and url is http://bills.internal:9000: use an https:// url, or leave ca_file out"],
    )]),
    ("client_cert_without_key.toml", &[(
        "biller.client_cert", 5, 15,
        &["client_cert needs client_key: a client certificate and its private key go together"],
    )]),
    ("userinfo_url.toml", &[("biller.url", 3, 7, &[URL, "it carries credentials"])]),
    ("bad_header_name.toml", &[(
        "server.key_header", 3, 14,
        &["expected an HTTP header name like \"x-api-key\"", "\"x api key\" is not a valid header name"],
    )]),
    ("hop_by_hop_header.toml", &[(
        "server.key_header", 3, 14,
        &["expected an HTTP header name", "\"connection\" is a hop-by-hop header"],
    )]),
    ("same_headers.toml", &[(
        "server.origin_header", 4, 17,
        &["key_header and origin_header are both \"x-api-key\"", "must differ"],
    )]),
    ("bad_mode.toml", &[("partner[0].mode", 9, 8, &["expected \"enforce\"", "or \"shadow\"", "\"strict\" is neither"])]),
    ("partner_without_key.toml", &[("partner[1].keys_sha256", 13, 15, &["expected at least one key hash", "can never be identified"])]),
    ("zero_workers.toml", &[("server.workers", 3, 11, &["expected a number of worker threads from 1 to 256, like 2", "0 is not between 1 and 256"])]),
    ("huge_backlog.toml", &[("server.listen_backlog", 3, 18, &["expected a number of connections from 1 to 65535, like 4096", "100000 is not between 1 and 65535"])]),
    ("wrong_type.toml", &[("biller.max_in_flight", 5, 17, &["expected a whole number above 0, like 128, found a string (\"128\")"])]),
    ("missing_required_key.toml", &[(
        "biller.capacity", 2, 1,
        &["missing required key `capacity`", "expected everything all partners together may send, as a rate like \"400/s\""],
    )]),
    ("missing_biller.toml", &[("biller", 1, 1, &["missing required table [biller]", "expected at least url"])]),
    ("raw_key_instead_of_hash.toml", &[(
        "partner[0].keys_sha256[0]", 8, 16,
        &["expected a key's SHA-256 as 64 hex characters", "17 characters long", "only its hash belongs here"],
    )]),
    ("fleet_settings.toml", &[
        ("fleet.redis", 7, 9, &["expected a Redis URL like \"redis://127.0.0.1:6379/0\"", "found \"http://127.0.0.1:6379\""]),
        ("fleet.instance", 8, 12, &["expected an instance name of letters, digits", "found \"gw 1\""]),
        ("fleet.timeout", 9, 11, &["expected a duration like \"250ms\"", "\"soon\" does not start with a whole number"]),
    ]),
    ("subscription_settings.toml", &[
        ("subscriptions.store", 7, 9, &["expected a database URL like \"sqlite://billgate.db\" or \"postgres://", "found \"mysql://db/billgate\""]),
        ("subscriptions.capacity_share", 8, 18, &["expected a share of the biller's capacity above 0 and at most 1", "1.5 is outside it"]),
        ("subscriptions.refresh", 9, 11, &["expected a duration like \"250ms\"", "\"daily\" does not start with a whole number"]),
        ("partner[0].webhook_prefixes[0]", 15, 21, &["expected a callback URL prefix like", "has no path after its host (end it with /)"]),
        ("partner[1].webhook_secret_file", 21, 23, &["webhook_secret_file is set but quota.subscription is not"]),
    ]),
    ("syntax_error.toml", &[("", 12, 1, &["invalid TOML: missing comma between key-value pairs, expected `,`"])]),
    ("several_errors.toml", &[
        ("server.admin_listn", 4, 1, &["unknown key `admin_listn`", "did you mean `admin_listen`?"]),
        ("biller.url", 7, 7, &[URL, "the scheme \"ftp\" is neither http nor https"]),
        ("biller.capacity", 8, 12, &[RATE, "unexpected \"burst\""]),
        ("biller.breaker.failure_rate", 11, 16, &["expected a share of failed calls above 0 and at most 1", "1.5 is outside it"]),
        ("route[0].path", 16, 8, &[PATH, "segment 2 is empty"]),
        ("route[1].name", 20, 8, &["the route name \"bill-inquiry\" is already used by route[0] at", "several_errors.toml:14:8"]),
        ("route[1].method", 21, 10, &["expected an HTTP method, one of GET, POST", "\"FETCH\" is not one"]),
        ("route[1].class", 23, 9, &["expected a route class, \"payment\" or \"inquiry\"", "\"payments\" is not one"]),
        ("partner[0].id", 26, 6, &["expected a partner id like \"wallet-a\", found an integer (7)"]),
        ("partner[2].id", 34, 6, &["expected a partner id like \"wallet-a\"", "\"Paynow C\" is not one"]),
        ("partner[2].quota.inquiry_user", 35, 44, &[RATE, "\"x\" is not a period"]),
    ]),
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid_configs")
}

fn errors_of(name: &str) -> (String, Vec<ConfigError>) {
    let path = dir().join(name);
    match load_file(&path) {
        Ok(_) => panic!("{name} loaded, but it is an example of a failure"),
        Err(errors) => (errors.to_string(), errors.0),
    }
}

#[test]
fn each_example_reports_exactly_its_errors_located() {
    let mut failures = Vec::new();
    for (name, expected) in CASES {
        let (shown, errors) = errors_of(name);
        let got: Vec<(&str, usize, usize)> = errors
            .iter()
            .map(|e| (e.key_path.as_str(), e.line, e.column))
            .collect();
        let want: Vec<(&str, usize, usize)> =
            expected.iter().map(|(p, l, c, _)| (*p, *l, *c)).collect();
        if got != want {
            failures.push(format!("{name}: got {got:?}, want {want:?}\n{shown}"));
            continue;
        }
        for (error, (_, _, _, fragments)) in errors.iter().zip(expected.iter()) {
            for fragment in *fragments {
                if !error.message.contains(fragment) {
                    failures.push(format!(
                        "{name}: {}: {:?} lacks {fragment:?}",
                        error.key_path, error.message
                    ));
                }
            }
            assert!(error.file.ends_with(name), "{}", error.file);
        }
        let plural = if errors.len() == 1 { "error" } else { "errors" };
        let summary = format!("{name} has {} {plural}; nothing was applied", errors.len());
        if !shown.ends_with(&summary) {
            failures.push(format!("{name}: the summary line is wrong:\n{shown}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_example_file_is_asserted() {
    let mut on_disk: Vec<String> = std::fs::read_dir(dir())
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".toml"))
                .collect()
        })
        .unwrap_or_default();
    on_disk.sort();
    let mut asserted: Vec<String> = CASES.iter().map(|(n, _)| (*n).to_owned()).collect();
    asserted.sort();
    assert_eq!(on_disk, asserted);
}

#[test]
fn errors_render_rustc_style_with_the_offending_text_underlined() {
    let (shown, _) = errors_of("bad_rate.toml");
    let path = dir().join("bad_rate.toml");
    let expected = format!(
        "  --> {}:12:45\n   |\n12 | quota = {{ payment = \"200/s\", inquiry_user = \"50/x\" }}\n   |                                             ^^^^^^\n",
        path.display()
    );
    assert!(
        shown.starts_with("error: partner[1].quota.inquiry_user: expected a rate like"),
        "{shown}"
    );
    assert!(shown.contains(&expected), "{shown}");
}

#[test]
fn a_syntax_error_hides_nothing_else_because_nothing_else_is_trusted() {
    // syntax_error.toml also has an unknown key (`listne`); only the syntax error is reported.
    let (_, errors) = errors_of("syntax_error.toml");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].key_path, "");
}

#[test]
fn an_unreadable_file_is_one_error() {
    let path = dir().join("no-such-file.toml");
    let errors = load_file(&path).err().map(|e| e.0).unwrap_or_default();
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].line, errors[0].column), (0, 0));
    assert!(errors[0]
        .message
        .starts_with("cannot read the configuration file"));
}

#[test]
fn mangled_copies_of_the_shipped_config_never_panic() {
    // Fuzz-ish: every character of the shipped file deleted, or replaced by a troublemaker, in
    // turn. Each copy must load or fail with located errors; none may panic.
    let text = billgate::config::DEFAULT_CONFIG;
    let junk = [
        "",
        "\"",
        "{",
        "]",
        "\n",
        "9999999999999999999999",
        "é",
        "\u{0}",
        "=",
        "[[x]]\n",
    ];
    let mut located = 0;
    for (at, _) in text.char_indices().step_by(7) {
        let rest = text[at..].chars().next().map_or(0, char::len_utf8);
        for piece in junk {
            let copy = format!("{}{piece}{}", &text[..at], &text[at + rest..]);
            if let Err(errors) = billgate::config::load_str(&copy, "mangled.toml") {
                assert!(!errors.0.is_empty());
                assert!(errors.0.iter().all(|e| e.line >= 1 && e.column >= 1));
                let _ = errors.to_string();
                located += 1;
            }
        }
    }
    assert!(located > 500, "{located}");
}
