//! Operating a running gateway over its admin API: the bearer token, suspend and resume
//! (surviving reload and restart), reload with invalid files, and a draining shutdown.

use crate::common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};

const Q: &str = r#"payment = "100/s", inquiry_user = "100/s", inquiry_scheduled = "100/s""#;
const TOKEN: &str = "s3cret-admin-token";

/// Writes a configuration with an admin token file and a state file into `dir`.
fn write_config(
    dir: &TempDir,
    biller_url: &str,
    partners: &str,
    with_token: bool,
) -> std::path::PathBuf {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let mut text = config_toml(biller_url, "2s", "10000/s", partners);
    let mut server = format!("state_file = \"{}\"\n", dir.join("state.json").display());
    if with_token {
        server += &format!("admin_token_file = \"{}\"\n", dir.join("token").display());
    }
    text = text.replacen("[server]\n", &format!("[server]\n{server}"), 1);
    let path = dir.join("billgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A gateway with the admin token set, serving wallet-a from a file in a directory of its own.
async fn token_gateway(name: &str) -> (TestBiller, TempDir, TestGateway) {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new(name);
    let path = write_config(
        &dir,
        &biller.url(),
        &partner("wallet-a", "key-a", Q, ""),
        true,
    );
    let gw = TestGateway::start_from_file(&path).await;
    (biller, dir, gw)
}

#[tokio::test]
async fn the_admin_api_needs_the_right_token() {
    let (_biller, _dir, gw) = token_gateway("auth").await;
    let url = gw.admin_url("/admin/partners/wallet-a/suspend");
    let body = r#"{"reason":"polling storm"}"#;

    let none = send(Method::POST, &url, &[], body).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"billgate-admin\"")
    );
    let wrong = send(
        Method::POST,
        &url,
        &[("authorization", &bearer("nope"))],
        body,
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let reads = get(&gw.admin_url("/admin/partners"), &[]).await;
    assert_eq!(
        reads.status,
        StatusCode::UNAUTHORIZED,
        "reads need the token once one is set"
    );
    let right = send(
        Method::POST,
        &url,
        &[("authorization", &bearer(TOKEN))],
        body,
    )
    .await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.text());
    assert_eq!(right.json()["suspended"]["reason"], "polling storm");
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    // RFC 9110 §11.1: the authentication scheme is case-insensitive.
    let (_biller, _dir, gw) = token_gateway("bearer-case").await;
    let url = gw.admin_url("/admin/partners/wallet-a/suspend");
    let body = r#"{"reason":"polling storm"}"#;
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let value = format!("{scheme} {TOKEN}");
        let reply = send(Method::POST, &url, &[("authorization", &value)], body).await;
        assert_eq!(reply.status, StatusCode::OK, "{value}: {}", reply.text());
    }
    let reads = get(
        &gw.admin_url("/admin/partners"),
        &[("authorization", &format!("bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(reads.status, StatusCode::OK);
    let basic = send(
        Method::POST,
        &url,
        &[("authorization", "Basic czNjcmV0")],
        body,
    )
    .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn without_a_token_mutations_are_off_and_say_so() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("notoken");
    let path = write_config(
        &dir,
        &biller.url(),
        &partner("wallet-a", "key-a", Q, ""),
        false,
    );
    // The environment variable is the other source; make sure this process has none.
    assert!(std::env::var(billgate::control::TOKEN_ENV).is_err());
    let gw = TestGateway::start_from_file(&path).await;
    let reply = send(Method::POST, &gw.admin_url("/admin/reload"), &[], "").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.json()["detail"]
        .as_str()
        .unwrap()
        .contains("BILLGATE_ADMIN_TOKEN"));
    let reads = get(&gw.admin_url("/admin/partners"), &[]).await;
    assert_eq!(reads.status, StatusCode::OK);
    assert_eq!(reads.json()["partners"][0]["id"], "wallet-a");
}

#[tokio::test]
async fn a_suspended_partner_gets_403_with_the_reason_through_reload_and_restart() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("suspend");
    let partners = partner("wallet-a", "key-a", Q, "") + &partner("bank-b", "key-b", Q, "");
    let path = write_config(&dir, &biller.url(), &partners, true);
    let auth = bearer(TOKEN);
    let admin = [("authorization", auth.as_str())];
    {
        let gw = TestGateway::start_from_file(&path).await;
        let reply = send(
            Method::POST,
            &gw.admin_url("/admin/partners/wallet-a/suspend"),
            &admin,
            r#"{"reason":"payments undeliverable until the contract is renewed"}"#,
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        let refused = pay(&gw.url("/v1/payments"), &[("x-api-key", "key-a")]).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        let body = refused.json();
        assert_eq!(body["reason"], "suspended");
        assert!(body["detail"]
            .as_str()
            .unwrap()
            .contains("payments undeliverable until the contract is renewed"));
        assert_eq!(
            pay(&gw.url("/v1/payments"), &[("x-api-key", "key-b")])
                .await
                .status,
            StatusCode::CREATED
        );
        assert_eq!(biller.biller.stats().payments, 1);

        let reloaded = send(Method::POST, &gw.admin_url("/admin/reload"), &admin, "").await;
        assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text());
        assert_eq!(
            pay(&gw.url("/v1/payments"), &[("x-api-key", "key-a")])
                .await
                .status,
            StatusCode::FORBIDDEN
        );
        let list = get(&gw.admin_url("/admin/partners"), &admin).await.json();
        assert_eq!(
            list["partners"][0]["suspended"]["reason"],
            "payments undeliverable until the contract is renewed"
        );
        assert_eq!(list["partners"][0]["requests_since_start"]["rejected"], 2);
        gw.gateway.shutdown().await;
    }
    // A new process reads the state file.
    let gw = TestGateway::start_from_file(&path).await;
    assert_eq!(
        pay(&gw.url("/v1/payments"), &[("x-api-key", "key-a")])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let resumed = send(
        Method::POST,
        &gw.admin_url("/admin/partners/wallet-a/resume"),
        &admin,
        "",
    )
    .await;
    assert_eq!(resumed.json()["resumed"], true);
    assert_eq!(
        pay(&gw.url("/v1/payments"), &[("x-api-key", "key-a")])
            .await
            .status,
        StatusCode::CREATED
    );
    let unknown = send(
        Method::POST,
        &gw.admin_url("/admin/partners/nobody/suspend"),
        &admin,
        r#"{"reason":"x"}"#,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let no_reason = send(
        Method::POST,
        &gw.admin_url("/admin/partners/bank-b/suspend"),
        &admin,
        "{}",
    )
    .await;
    assert_eq!(no_reason.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_invalid_reload_keeps_the_running_configuration() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("badreload");
    let path = write_config(
        &dir,
        &biller.url(),
        &partner("wallet-a", "key-a", Q, ""),
        true,
    );
    let gw = TestGateway::start_from_file(&path).await;
    let before = get(
        &gw.admin_url("/admin/config"),
        &[("authorization", &bearer(TOKEN))],
    )
    .await
    .json();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("100/s", "100/x");
    std::fs::write(&path, text).unwrap();
    let reply = send(
        Method::POST,
        &gw.admin_url("/admin/reload"),
        &[("authorization", &bearer(TOKEN))],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.json()["detail"]
        .as_str()
        .unwrap()
        .contains("partner[0].quota.payment"));
    let after = get(
        &gw.admin_url("/admin/config"),
        &[("authorization", &bearer(TOKEN))],
    )
    .await
    .json();
    assert_eq!(before["sha256"], after["sha256"]);
    assert_eq!(
        get(&gw.url("/v1/bills/1"), &[("x-api-key", "key-a")])
            .await
            .status,
        StatusCode::OK
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(&metrics, r#"billgate_config_reloads_total{result="error"}"#),
        1.0
    );
    assert_eq!(
        sample(&metrics, r#"billgate_config_reloads_total{result="ok"}"#),
        0.0
    );
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish() {
    let biller = TestBiller::slow(Duration::from_millis(300)).await;
    let gw = TestGateway::start(config(&biller.url(), &partner("wallet-a", "key-a", Q, ""))).await;
    let url = gw.url("/v1/bills/1");
    let addr = gw.gateway.addr;
    let in_flight = tokio::spawn(async move { get(&url, &[("x-api-key", "key-a")]).await });
    // Shut down once the request has reached the biller.
    biller.until_received(1).await;
    gw.gateway.shutdown().await;
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn a_reload_tripping_a_guardrail_is_refused_unless_forced() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("guardrail");
    let quota = r#"inquiry_scheduled = "1/s""#;
    let path = write_config(
        &dir,
        &biller.url(),
        &partner("wallet-a", "key-a", quota, ""),
        true,
    );
    let gw = TestGateway::start_from_file(&path).await;
    let auth = bearer(TOKEN);
    let admin = [("authorization", auth.as_str())];
    let raised = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"1/s\"", "\"100/s\"");
    std::fs::write(&path, raised).unwrap();

    let refused = send(Method::POST, &gw.admin_url("/admin/reload"), &admin, "").await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    let detail = refused.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains("partner[wallet-a].quota.inquiry_scheduled"),
        "{detail}"
    );
    let h = [("x-api-key", "key-a")];
    assert_eq!(get(&gw.url("/v1/bills/1"), &h).await.status, StatusCode::OK);
    assert_eq!(
        get(&gw.url("/v1/bills/2"), &h).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the old quota still holds"
    );

    let forced = send(
        Method::POST,
        &gw.admin_url("/admin/reload?force=true"),
        &admin,
        "",
    )
    .await;
    assert_eq!(forced.status, StatusCode::OK, "{}", forced.text());
    let body = forced.json();
    assert!(
        body["summary"].as_str().unwrap().contains("1 partner"),
        "{body}"
    );
    assert!(
        body["diff"].as_str().unwrap().contains("wallet-a"),
        "{body}"
    );
    assert_eq!(
        get(&gw.url("/v1/bills/3"), &h).await.status,
        StatusCode::OK,
        "the new quota is in effect"
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"billgate_config_reloads_total{result="refused"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&metrics, r#"billgate_config_reloads_total{result="ok"}"#),
        1.0
    );
    assert!(metrics.contains(&format!(
        "billgate_config_info{{sha256=\"{}\"}} 1",
        body["sha256"].as_str().unwrap()
    )));
}

#[tokio::test]
async fn a_reload_that_moves_the_biller_takes_effect_at_once() {
    let old = FixedUpstream::start(200, &[]).await;
    let new = FixedUpstream::start(200, &[]).await;
    let dir = TempDir::new("movebiller");
    let path = write_config(&dir, &old.url(), &partner("wallet-a", "key-a", Q, ""), true);
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "[server]\n",
        "[server]\nworkers = 1\n",
        1,
    );
    std::fs::write(&path, &text).unwrap();
    let gw = TestGateway::start_from_file(&path).await;
    let url = gw.url("/v1/bills/1");
    let ask = || get(&url, &[("x-api-key", "key-a")]);
    assert_eq!(ask().await.status, StatusCode::OK);
    assert_eq!(ask().await.status, StatusCode::OK);
    assert_eq!((old.received(), new.received()), (2, 0));

    std::fs::write(&path, text.replace(&old.url(), &new.url())).unwrap();
    let reloaded = send(
        Method::POST,
        &gw.admin_url("/admin/reload"),
        &[("authorization", &bearer(TOKEN))],
        "",
    )
    .await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text());
    for _ in 0..3 {
        assert_eq!(ask().await.status, StatusCode::OK);
    }
    // The pooled connection to the old biller is not used again.
    assert_eq!((old.received(), new.received()), (2, 3));
    assert_eq!(new.connections(), 1);
}
