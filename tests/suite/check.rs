//! The shipped `config.toml`: it loads, it is the embedded default, its demo keys are the ones
//! the README shows, and `check` reports the partners and shares an operator expects.

use std::path::Path;

use billgate::config::{
    check_report, hash_key, load_file, load_str, AccountSource, Class, Config, Mode, RouteClass,
    DEFAULT_CONFIG,
};
use billgate::ids::{PartnerId, RouteId};

fn shipped() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    match load_file(&path) {
        Ok(config) => config,
        Err(errors) => panic!("the shipped config.toml is invalid:\n{errors}"),
    }
}

#[test]
fn the_shipped_config_is_the_embedded_default() {
    let from_disk = shipped();
    let embedded = load_str(DEFAULT_CONFIG, "config.toml").map_err(|e| e.to_string());
    let embedded = embedded.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from_disk.source_sha256, embedded.source_sha256);
    assert_eq!(from_disk.source_sha256.len(), 64);
}

#[test]
fn the_shipped_config_holds_the_design_example() {
    let c = shipped();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9100");
    assert_eq!(c.server.key_header, "x-api-key");
    assert_eq!(c.server.origin_header, "x-request-origin");
    assert_eq!(c.biller.url.host_port(), "127.0.0.1:9000");
    assert_eq!(c.biller.capacity.to_string(), "400/s");
    assert_eq!(c.biller.max_in_flight, 128);
    assert_eq!(c.biller.breaker.min_calls, 20);

    let names: Vec<&str> = c.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["bill-inquiry", "bill-payment"]);
    assert_eq!(
        c.routes[RouteId::new(0)].account,
        AccountSource::PathSegment
    );
    assert_eq!(c.routes[RouteId::new(0)].class, RouteClass::Inquiry);
    assert_eq!(
        c.routes[RouteId::new(0)].cache_for.map(|d| d.as_secs()),
        Some(60)
    );
    assert_eq!(
        (
            c.routes[RouteId::new(1)].method.as_str(),
            c.routes[RouteId::new(1)].class
        ),
        ("POST", RouteClass::Payment)
    );
}

#[test]
fn the_demo_keys_are_the_documented_ones() {
    let c = shipped();
    let keys = |i: usize| -> Vec<String> {
        c.partners[PartnerId::new(i)]
            .keys_sha256
            .iter()
            .map(hex::encode)
            .collect()
    };
    assert_eq!(keys(0), [hash_key("wallet-a-demo-key")]);
    assert_eq!(
        keys(1),
        [hash_key("bank-b-demo-key"), hash_key("bank-b-demo-key-2")]
    );
    assert_eq!(keys(2), [hash_key("paynow-c-demo-key")]);
}

#[test]
fn check_reports_partners_and_their_shares_of_capacity() {
    let c = shipped();
    let report = check_report(&c);
    let rows: Vec<(&str, Mode, [Option<f64>; 3], usize)> = report
        .partners
        .iter()
        .map(|p| (p.id.as_str(), p.mode, p.shares, p.keys))
        .collect();
    assert_eq!(
        rows,
        [
            (
                "wallet-a",
                Mode::Enforce,
                [Some(0.5), Some(0.125), Some(0.05)],
                1
            ),
            (
                "bank-b",
                Mode::Enforce,
                [Some(0.25), Some(0.075), Some(0.025)],
                2
            ),
            (
                "paynow-c",
                Mode::Shadow,
                [Some(0.125), Some(0.025), None],
                1
            ),
        ]
    );
    let scheduled = report.partners[0].quotas[Class::InquiryScheduled.index()];
    assert_eq!(
        scheduled.map(|r| r.to_string()),
        Some("20/s burst 40".to_owned())
    );

    // Only the shadow partner is worth a note: no quota exceeds capacity, the sum (470/s) is
    // under 3x 400/s, and every partner has a key.
    let warnings: Vec<&str> = report
        .warnings
        .iter()
        .map(|w| w.key_path.as_str())
        .collect();
    assert_eq!(warnings, ["partner[2].mode"]);
    assert!(report.warnings[0]
        .message
        .contains("\"paynow-c\" is in shadow mode"));
}

#[test]
fn check_prints_the_tables_then_the_warnings() {
    let shown = check_report(&shipped()).to_string();
    let expected_rows = [
        "  id        mode     payment        inquiry_user  inquiry_scheduled     per_account  keys",
        "  wallet-a  enforce  200/s (50.0%)  50/s (12.5%)  20/s burst 40 (5.0%)  2/min        1",
        "  bank-b    enforce  100/s (25.0%)  30/s (7.5%)   10/s (2.5%)           6/min        2",
        "  paynow-c  shadow   50/s (12.5%)   10/s (2.5%)   closed                2/min        1",
        "  name          method  path                 class    account         cache_for",
        "  bill-inquiry  GET     /v1/bills/{account}  inquiry  path {account}  60s",
        "  bill-payment  POST    /v1/payments         payment  -               -",
    ];
    for row in expected_rows {
        assert!(
            shown.contains(&format!("{row}\n")),
            "missing {row:?} in\n{shown}"
        );
    }
    assert!(
        shown.starts_with("biller http://127.0.0.1:9000, capacity 400/s\n"),
        "{shown}"
    );
    assert!(shown.ends_with("1 warning\nwarning: partner[2].mode: partner \"paynow-c\" is in shadow mode: its over-quota requests are counted and reported, never rejected"), "{shown}");
}

#[test]
fn an_overcommitted_configuration_warns_with_the_factor() {
    let text = DEFAULT_CONFIG.replace("capacity = \"400/s\"", "capacity = \"100/s\"");
    let c = load_str(&text, "config.toml").unwrap_or_else(|e| panic!("{e}"));
    let report = check_report(&c);
    let warning = report.warnings.iter().find(|w| w.key_path == "partner");
    let message = warning.map(|w| w.message.as_str()).unwrap_or_default();
    assert!(
        message.contains("add up to 470/s, 4.7× the biller's capacity 100/s"),
        "{message}"
    );
    let over: Vec<&str> = report
        .warnings
        .iter()
        .map(|w| w.key_path.as_str())
        .collect();
    assert!(over.contains(&"partner[0].quota.payment"), "{over:?}");
}

#[test]
fn a_literal_route_behind_an_account_route_is_a_warning_naming_both_routes_and_lines() {
    let text = DEFAULT_CONFIG.replacen(
        "[[route]]\nname = \"bill-payment\"",
        "[[route]]\nname = \"bill-summary\"\nmethod = \"GET\"\npath = \"/v1/bills/summary\"\nclass = \"inquiry\"\n\n[[route]]\nname = \"bill-payment\"",
        1,
    );
    let c = load_str(&text, "config.toml").unwrap_or_else(|e| panic!("{e}"));
    let report = check_report(&c);
    let inquiry = text
        .lines()
        .position(|l| l.starts_with("path = \"/v1/bills/{account}\""))
        .map(|i| i + 1);
    let summary = text
        .lines()
        .position(|l| l == "path = \"/v1/bills/summary\"")
        .map(|i| i + 1);
    let (inquiry, summary) = (inquiry.unwrap_or(0), summary.unwrap_or(0));
    let shadowed: Vec<&str> = report
        .warnings
        .iter()
        .filter(|w| w.key_path == "route[1].path")
        .map(|w| w.message.as_str())
        .collect();
    assert_eq!(
        shadowed,
        [format!("route[1] \"bill-summary\" (GET /v1/bills/summary, at config.toml:{summary}:8) is never matched: route[0] \"bill-inquiry\" (GET /v1/bills/{{account}}, at config.toml:{inquiry}:8) comes before it and matches every request it would; move route[1] above it")]
    );
    assert!(report
        .to_string()
        .contains("warning: route[1].path: route[1] \"bill-summary\""));
}
