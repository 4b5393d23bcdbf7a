//! `billgate check --diff`: one pair of configurations per kind of change under `tests/diffs/`
//! (`NAME.old.toml`, `NAME.new.toml`), each with the exact lines printed and the exact
//! guardrails hit; then the real binary.
//!
//! Key hashes in the pairs are written `{key:NAME}` and replaced by `hash_key("NAME")` here.

use std::path::{Path, PathBuf};
use std::process::Command;

use billgate::config::{
    diff, hash_key, load_str, parse_rate, Class, Config, ConfigDiff, PartnerChange, PartnerDiff,
    Rate,
};

/// Every pair under `tests/diffs/`; [`every_pair_is_asserted`] keeps this list honest.
const CASES: &[&str] = &[
    "burst_raised",
    "capacity_changed",
    "class_closed",
    "class_opened",
    "key_rotated",
    "last_key_removed",
    "max_tracked_accounts_changed",
    "mode_changed",
    "no_change",
    "partner_added",
    "partner_added_above_capacity",
    "partner_removed",
    "per_account_changed",
    "quota_cut",
    "quota_raised",
    "route_added",
    "route_changed",
    "route_removed",
    "routes_reordered",
    "settings_changed",
    "total_above_2x_capacity",
    "total_already_above_2x",
];

const REFUSED: &str = "a reload of this change will be refused unless forced (POST /admin/reload?force=true); billgate check applies nothing itself";

fn pairs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/diffs")
}

/// The text of one side of a pair, with `{key:NAME}` replaced by the hash of `NAME`.
fn text(name: &str, side: &str) -> String {
    let path = pairs_dir().join(format!("{name}.{side}.toml"));
    let template = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = String::new();
    let mut rest = template.as_str();
    while let Some(start) = rest.find("{key:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "{key:".len()..];
        let end = after.find('}').expect("an unclosed {key:NAME} placeholder");
        out.push_str(&hash_key(&after[..end]));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn load(name: &str, side: &str) -> Config {
    let file = format!("{name}.{side}.toml");
    load_str(&text(name, side), &file).unwrap_or_else(|e| panic!("{e}"))
}

fn diff_of(name: &str) -> ConfigDiff {
    diff(&load(name, "old"), &load(name, "new"))
}

/// The first eight hex characters of a demo key's hash, as the diff shows it.
fn prefix(key: &str) -> String {
    format!("{}…", &hash_key(key)[..8])
}

/// Asserts the printed diff line for line, and the printed guardrails.
fn assert_case<S: AsRef<str>>(name: &str, printed: &[S], guardrails: &[&str]) {
    let d = diff_of(name);
    let shown = d.to_string();
    let expected: Vec<&str> = printed.iter().map(AsRef::as_ref).collect();
    assert_eq!(
        shown.lines().collect::<Vec<_>>(),
        expected,
        "{name}:\n{shown}"
    );
    let hits: Vec<String> = d.guardrails().iter().map(ToString::to_string).collect();
    assert_eq!(hits, guardrails, "{name}");
    assert_eq!(d.is_empty(), name == "no_change", "{name}");
}

fn rate(text: &str) -> Rate {
    parse_rate(text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_pair_is_asserted() {
    let mut found: Vec<String> = std::fs::read_dir(pairs_dir())
        .expect("tests/diffs")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    found.sort();
    let mut expected: Vec<String> = CASES
        .iter()
        .flat_map(|c| [format!("{c}.new.toml"), format!("{c}.old.toml")])
        .collect();
    expected.sort();
    assert_eq!(found, expected);
}

#[test]
fn partner_added() {
    assert_case(
        "partner_added",
        &[
            "partners: 0 changed, 1 added, 0 removed",
            "  bank-b  added: payment 100/s, inquiry_user 30/s, inquiry_scheduled 10/s; per_account 6/min; mode enforce; 2 keys",
            "routes: unchanged",
            "server: unchanged",
            "biller: unchanged",
        ],
        &[],
    );
}

#[test]
fn a_partner_added_with_a_class_above_capacity_hits_a_guardrail() {
    assert_case(
        "partner_added_above_capacity",
        &[
            "partners: 0 changed, 1 added, 0 removed",
            "  poller-x  added: payment closed, inquiry_user closed, inquiry_scheduled 30000/min; per_account no limit; mode enforce; 1 key",
            "routes: unchanged",
            "server: unchanged",
            "biller: unchanged",
        ],
        &["guardrail: partner[poller-x].quota.inquiry_scheduled: class opened at 30000/min, more than the biller's whole capacity 400/s (1.2×)"],
    );
}

#[test]
fn partner_removed() {
    assert_case(
        "partner_removed",
        &[
            "partners: 0 changed, 0 added, 1 removed",
            "  bank-b  removed: payment 100/s, inquiry_user 30/s, inquiry_scheduled 10/s; per_account 6/min; mode enforce; 2 keys",
            "routes: unchanged",
            "server: unchanged",
            "biller: unchanged",
        ],
        &[],
    );
}

#[test]
fn a_quota_raised_more_than_ten_times_hits_a_guardrail_and_exactly_ten_does_not() {
    assert_case(
        "quota_raised",
        &[
            "partners: 1 changed, 0 added, 0 removed",
            "  wallet-a  inquiry_user  5/s → 50/s  (×10.0, raised)",
            "  wallet-a  inquiry_scheduled  2/s burst 4 → 25/s burst 4  (×12.5, raised)",
            "routes: unchanged",
            "server: unchanged",
            "biller: unchanged",
        ],
        &["guardrail: partner[wallet-a].quota.inquiry_scheduled: quota raised ×12.5, more than 10×: 2/s burst 4 → 25/s burst 4"],
    );
}

#[test]
fn the_structured_changes_of_a_raise() {
    let d = diff_of("quota_raised");
    assert_eq!(
        d.partners,
        [PartnerDiff::Changed {
            id: "wallet-a".to_owned(),
            changes: vec![
                PartnerChange::Quota {
                    class: Class::InquiryUser,
                    old: Some(rate("5/s")),
                    new: Some(rate("50/s")),
                },
                PartnerChange::Quota {
                    class: Class::InquiryScheduled,
                    old: Some(rate("2/s burst 4")),
                    new: Some(rate("25/s burst 4")),
                },
            ],
        }]
    );
    assert!(d.routes.is_empty() && d.server.is_empty() && d.biller.is_empty());
    assert_eq!(d.before.quota_per_second, 27.0);
    assert_eq!(d.after.quota_per_second, 95.0);
    let hit = &d.guardrails()[0];
    assert_eq!(hit.key_path, "partner[wallet-a].quota.inquiry_scheduled");
}

#[test]
fn a_burst_raised_more_than_ten_times_hits_a_guardrail() {
    assert_case(
        "burst_raised",
        &[
            "partners: 1 changed, 0 added, 0 removed",
            "  wallet-a  inquiry_scheduled  20/s burst 40 → 20/s burst 4000  (×1.0, burst raised)",
            "routes: unchanged",
            "server: unchanged",
            "biller: unchanged",
        ],
        &["guardrail: partner[wallet-a].quota.inquiry_scheduled: burst raised ×100.0, more than 10×: 20/s burst 40 → 20/s burst 4000 (up to 4000 requests at once)"],
    );
}

#[test]
fn quota_cut() {
    assert_case(
        "quota_cut",
        &[
            "partners: 1 changed, 0 added, 0 removed",
            "  wallet-a  payment  200/s → 100/s  (×0.5, cut)",
            "  wallet-a  inquiry_scheduled  20/s burst 40 → 1/min  (×0.001, cut)",
            "routes: unchanged",
            "server: unchanged",
            "biller: unchanged",
        ],
        &[],
    );
}

#[test]
fn a_class_opened_hits_a_guardrail_only_above_the_billers_capacity() {
    assert_case(
        "class_opened",
        &[
            "partners: 2 changed, 0 added, 0 removed",
            "  paynow-c  inquiry_scheduled  closed → 10/s  (opened)",
            "  wallet-a  inquiry_user  closed → 500/s  (opened)",
            "routes: unchanged",
            "server: unchanged",
            "biller: unchanged",
        ],
        &["guardrail: partner[wallet-a].quota.inquiry_user: class opened at 500/s, more than the biller's whole capacity 400/s (1.2×)"],
    );
}

#[test]
fn class_closed() {
    assert_case(
        "class_closed",
        &[
            "partners: 1 changed, 0 added, 0 removed",
            "  wallet-a  inquiry_user  50/s → closed  (closed)",
            "routes: unchanged",
            "server: unchanged",
            "biller: unchanged",
        ],
        &[],
    );
}

#[test]
fn per_account_changed() {
    assert_case(
        "per_account_changed",
        &[
            "partners: 3 changed, 0 added, 0 removed",
            "  bank-b  per_account  no limit → 1/min  (limit added)",
            "  paynow-c  per_account  2/min → no limit  (limit removed)",
            "  wallet-a  per_account  2/min → 6/min  (×3.0, raised)",
            "routes: unchanged",
            "server: unchanged",
            "biller: unchanged",
        ],
        &[],
    );
}

#[test]
fn mode_changed() {
    assert_case(
        "mode_changed",
        &[
            "partners: 2 changed, 0 added, 0 removed",
            "  paynow-c  mode  shadow → enforce  (over-quota requests will be rejected)",
            "  wallet-a  mode  enforce → shadow  (over-quota requests will be counted and forwarded, not rejected)",
            "routes: unchanged",
            "server: unchanged",
            "biller: unchanged",
        ],
        &[],
    );
}

#[test]
fn keys_rotated_show_counts_and_short_prefixes_only() {
    let printed = [
        "partners: 2 changed, 0 added, 0 removed".to_owned(),
        format!(
            "  bank-b  keys  2 → 2  (1 added: {}; 1 removed: {})",
            prefix("bank-b-3"),
            prefix("bank-b-1")
        ),
        format!(
            "  wallet-a  keys  1 → 2  (1 added: {})",
            prefix("wallet-a-2")
        ),
        "routes: unchanged".to_owned(),
        "server: unchanged".to_owned(),
        "biller: unchanged".to_owned(),
    ];
    assert_case("key_rotated", &printed, &[]);
    let shown = diff_of("key_rotated").to_string();
    for key in ["bank-b-1", "bank-b-3", "wallet-a-2"] {
        assert!(!shown.contains(&hash_key(key)[..9]), "{shown}");
    }
}

/// Removing a partner's last key leaves a partner no request can be identified as: the new file
/// is refused whole, located, so the change can neither be checked nor reloaded.
#[test]
fn a_partners_last_key_removed_is_refused() {
    let file = "last_key_removed.new.toml";
    let errors = match load_str(&text("last_key_removed", "new"), file) {
        Ok(_) => panic!("{file} loaded, but a partner in it has no key"),
        Err(errors) => errors,
    };
    let located: Vec<_> = errors
        .0
        .iter()
        .map(|e| (e.key_path.as_str(), e.line, e.column))
        .collect();
    assert_eq!(located, [("partner[0].keys_sha256", 23, 15)]);
    assert!(errors.0[0].message.contains("can never be identified"));
    load("last_key_removed", "old");
}

#[test]
fn max_tracked_accounts_changed() {
    assert_case(
        "max_tracked_accounts_changed",
        &[
            "partners: 1 changed, 0 added, 0 removed",
            "  wallet-a  max_tracked_accounts  100000 → 5000",
            "routes: unchanged",
            "server: unchanged",
            "biller: unchanged",
        ],
        &[],
    );
}

#[test]
fn route_added() {
    assert_case(
        "route_added",
        &[
            "partners: unchanged",
            "routes: 0 changed, 1 added, 0 removed",
            "  bill-history  added: GET /v1/history; class inquiry; account query account; cache_for 5min",
            "server: unchanged",
            "biller: unchanged",
        ],
        &[],
    );
}

#[test]
fn route_removed() {
    assert_case(
        "route_removed",
        &[
            "partners: unchanged",
            "routes: 0 changed, 0 added, 1 removed",
            "  bill-history  removed: GET /v1/history; class inquiry; account query account; cache_for 5min",
            "server: unchanged",
            "biller: unchanged",
        ],
        &[],
    );
}

#[test]
fn route_changed() {
    assert_case(
        "route_changed",
        &[
            "partners: unchanged",
            "routes: 1 changed, 0 added, 0 removed",
            "  bill-inquiry  path  /v1/bills/{account} → /v2/bills",
            "  bill-inquiry  account  path {account} → query acct",
            "  bill-inquiry  cache_for  60s → 5min",
            "server: unchanged",
            "biller: unchanged",
        ],
        &[],
    );
}

#[test]
fn routes_reordered_are_a_change_because_the_first_match_wins() {
    assert_case(
        "routes_reordered",
        &[
            "partners: unchanged",
            "routes: 0 changed, 0 added, 0 removed, reordered",
            "  match order  bill-inquiry, bill-payment, bill-history → bill-history, bill-inquiry, bill-payment  (the first route that matches a request wins)",
            "server: unchanged",
            "biller: unchanged",
        ],
        &[],
    );
}

#[test]
fn capacity_changed() {
    assert_case(
        "capacity_changed",
        &[
            "partners: unchanged",
            "routes: unchanged",
            "server: unchanged",
            "biller: 1 changed",
            "  capacity  400/s → 800/s  (×2.0, raised)",
        ],
        &[],
    );
}

#[test]
fn server_and_biller_settings_changed() {
    assert_case(
        "settings_changed",
        &[
            "partners: unchanged",
            "routes: unchanged",
            "server: 3 changed",
            "  listen  127.0.0.1:8080 → 127.0.0.1:8081  (the listener is bound at start: takes effect on restart)",
            "  key_header  x-api-key → x-partner-key",
            "  listen_backlog  4096 → 1024  (the listener is bound at start: takes effect on restart)",
            "biller: 5 changed",
            "  url  http://127.0.0.1:9000 → http://bills.internal:9000/ebpp",
            "  timeout  3s → 5s",
            "  max_in_flight  128 → 64",
            "  breaker.failure_rate  0.5 → 0.25",
            "  breaker.window  10s → 30s",
        ],
        &[],
    );
}

#[test]
fn all_quotas_raised_above_twice_the_capacity_hit_a_guardrail() {
    assert_case(
        "total_above_2x_capacity",
        &[
            "partners: 1 changed, 0 added, 0 removed",
            "  wallet-a  payment  200/s → 600/s  (×3.0, raised)",
            "routes: unchanged",
            "server: unchanged",
            "biller: unchanged",
        ],
        // 810/400 is 2.025: two decimals, so the factor does not read as exactly 2.
        &["guardrail: partner: all partners' quotas add up to 810/s, 2.02× the biller's capacity 400/s, more than 2× (before: 410/s, 1.02× of 400/s)"],
    );
}

#[test]
fn all_quotas_already_above_twice_the_capacity_do_not_hit_again() {
    assert_case(
        "total_already_above_2x",
        &[
            "partners: 1 changed, 0 added, 0 removed",
            "  wallet-a  payment  200/s → 400/s  (×2.0, raised)",
            "routes: unchanged",
            "server: unchanged",
            "biller: unchanged",
        ],
        &[],
    );
}

#[test]
fn comments_layout_key_order_and_spelling_are_no_change() {
    assert_case("no_change", &["no changes"], &[]);
    assert_eq!(diff_of("no_change").summary(), "no changes");
}

#[test]
fn summaries_fit_one_line_of_the_reload_log() {
    let summaries: Vec<(&str, String)> = [
        "partner_added",
        "key_rotated",
        "routes_reordered",
        "route_changed",
        "settings_changed",
    ]
    .iter()
    .map(|name| (*name, diff_of(name).summary()))
    .collect();
    assert_eq!(
        summaries,
        [
            ("partner_added", "0 partners changed, 1 added, 0 removed, routes unchanged, server and biller unchanged".to_owned()),
            ("key_rotated", "2 partners changed, 0 added, 0 removed, routes unchanged, server and biller unchanged".to_owned()),
            ("routes_reordered", "partners unchanged, 0 routes changed, 0 added, 0 removed, reordered, server and biller unchanged".to_owned()),
            ("route_changed", "partners unchanged, 1 route changed, 0 added, 0 removed, server and biller unchanged".to_owned()),
            ("settings_changed", "partners unchanged, routes unchanged, settings changed: server.listen, server.key_header, server.listen_backlog, biller.url, biller.timeout, biller.max_in_flight, biller.breaker.failure_rate, biller.breaker.window".to_owned()),
        ]
    );
}

/// Writes both sides of a pair, keys filled in, to a fresh directory.
fn write_pair(name: &str, dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("a temporary directory");
    let (old, new) = (dir.join("old.toml"), dir.join("new.toml"));
    std::fs::write(&old, text(name, "old")).expect("old.toml written");
    std::fs::write(&new, text(name, "new")).expect("new.toml written");
    (old, new)
}

fn check_diff(old: &Path, new: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_billgate"))
        .arg("check")
        .arg("--config")
        .arg(new)
        .arg("--diff")
        .arg(old)
        .output()
        .expect("billgate runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_binary_prints_the_diff_and_guardrails_and_exits_0() {
    let dir = std::env::temp_dir().join(format!("billgate-diff-{}", std::process::id()));
    let (old, new) = write_pair("quota_raised", &dir.join("raised"));
    let (code, stdout, stderr) = check_diff(&old, &new);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("changes from {} to {}", old.display(), new.display())
    );
    for expected in [
        "  wallet-a  inquiry_scheduled  2/s burst 4 → 25/s burst 4  (×12.5, raised)",
        "1 guardrail hit",
        "guardrail: partner[wallet-a].quota.inquiry_scheduled: quota raised ×12.5, more than 10×: 2/s burst 4 → 25/s burst 4",
        REFUSED,
        "no warnings",
    ] {
        assert!(lines.contains(&expected), "missing {expected:?} in\n{stdout}");
    }
    assert_eq!(
        lines.last().copied(),
        Some(format!("{}: valid", new.display()).as_str())
    );

    let (old, new) = write_pair("no_change", &dir.join("same"));
    let (code, stdout, _) = check_diff(&old, &new);
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        &lines[1..4],
        ["no changes", "", "no guardrails hit"],
        "{stdout}"
    );
    assert!(!stdout.contains(REFUSED));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_binary_refuses_an_invalid_old_file_with_its_errors_located() {
    let dir = std::env::temp_dir().join(format!("billgate-diff-bad-{}", std::process::id()));
    let (old, new) = write_pair("quota_cut", &dir);
    let broken = text("quota_cut", "old").replace("payment = \"200/s\"", "payment = \"200/x\"");
    std::fs::write(&old, &broken).expect("old.toml written");
    let (code, stdout, stderr) = check_diff(&old, &new);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let line = broken
        .lines()
        .position(|l| l.contains("200/x"))
        .map(|i| i + 1)
        .unwrap_or_default();
    assert!(
        stderr.contains(&format!("{}:{line}:", old.display())),
        "{stderr}"
    );
    assert!(stderr.contains("partner[0].quota.payment"), "{stderr}");
    assert!(
        stderr.contains("has 1 error; nothing was applied"),
        "{stderr}"
    );

    // Errors in both files are all printed.
    std::fs::write(&new, "[biller]\n").expect("new.toml written");
    let (code, _, stderr) = check_diff(&old, &new);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("error: {} has", new.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("error: {} has", old.display())),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
