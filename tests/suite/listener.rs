//! The partners' listener: its accept queue is as long as `[server] listen_backlog`, as the
//! kernel reports it (`ss`, from iproute2), so a reconnect storm's handshakes wait for the
//! acceptor instead of being dropped and retried a second later.

use crate::common;

use std::net::SocketAddr;
use std::process::Command;

use common::*;

const Q: &str = r#"payment = "100/s", inquiry_user = "100/s", inquiry_scheduled = "100/s""#;

/// The accept queue's length of the socket listening on `addr`, as `ss` reports it (its
/// Send-Q column, for a listening socket).
fn backlog_of(addr: SocketAddr) -> u32 {
    let filter = format!("sport = :{}", addr.port());
    let out = Command::new("ss")
        .args(["-H", "-l", "-t", "-n", &filter])
        .output()
        .expect("run ss (iproute2)");
    assert!(out.status.success(), "ss failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&addr.to_string()))
        .collect();
    assert_eq!(lines.len(), 1, "one listener on {addr}, in:\n{text}");
    let columns: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(columns[0], "LISTEN", "{text}");
    columns[2].parse().expect("Send-Q is a number")
}

/// What the kernel makes of a requested backlog: Linux caps it at `net.core.somaxconn`.
fn granted(requested: u32) -> u32 {
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("read somaxconn")
        .trim()
        .parse::<u32>()
        .expect("somaxconn is a number");
    requested.min(somaxconn)
}

/// A gateway with `server` added to its `[server]` table. No request is sent: the biller's
/// address is a closed port.
async fn gateway(server: &str) -> TestGateway {
    let biller = format!("http://{}", closed_port().await);
    let text = config_toml(
        &biller,
        "2s",
        "10000/s",
        &partner("wallet-a", "key-a", Q, ""),
    )
    .replacen("[server]\n", &format!("[server]\n{server}"), 1);
    TestGateway::start(load(&text)).await
}

#[tokio::test]
async fn the_listener_holds_4096_handshakes_by_default_not_128() {
    let gw = gateway("").await;
    assert_eq!(backlog_of(gw.gateway.addr), granted(4096));
    assert!(granted(4096) > 128, "this machine's somaxconn is below 129");
}

#[tokio::test]
async fn the_listener_holds_as_many_handshakes_as_configured() {
    let gw = gateway("listen_backlog = 1000\n").await;
    assert_eq!(backlog_of(gw.gateway.addr), granted(1000));
    // The admin API's listener is not the partners' and keeps the usual queue.
    assert_eq!(backlog_of(gw.gateway.admin_addr), granted(128));
}
