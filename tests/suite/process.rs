//! The real binary as operators run it: SIGHUP reloads under load without a failed request,
//! SIGTERM drains and exits 0, and the JSON access log never shows a key.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::*;
use http::StatusCode;

/// A `billgate serve` process and the addresses it reported.
struct Process {
    child: Child,
    addr: String,
    admin: String,
    /// What it logged up to and including "billgate listening".
    startup: Vec<String>,
    lines: mpsc::Receiver<String>,
}

impl Process {
    fn start(config: &std::path::Path) -> Process {
        let mut command = Command::new(env!("CARGO_BIN_EXE_billgate"));
        command
            .args(["--log-format", "json", "serve", "--config"])
            .arg(config);
        Process::spawn(command)
    }

    /// [`Process::start`] with its soft open-file limit at half its hard one, as a shell's
    /// `ulimit -Sn` sets it before `exec`ing billgate (so the child's id is billgate's).
    fn start_with_half_the_open_files(config: &std::path::Path) -> Process {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"ulimit -Sn $(( $(ulimit -Hn) / 2 )) && exec "$0" "$@""#)
            .arg(env!("CARGO_BIN_EXE_billgate"))
            .args(["--log-format", "json", "serve", "--config"])
            .arg(config);
        Process::spawn(command)
    }

    /// [`Process::start`] with soft and hard open-file limits of `files`: it cannot raise them.
    fn start_with_open_files(config: &std::path::Path, files: u32) -> Process {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                r#"ulimit -Sn {files} && ulimit -Hn {files} && exec "$0" "$@""#
            ))
            .arg(env!("CARGO_BIN_EXE_billgate"))
            .args(["--log-format", "json", "serve", "--config"])
            .arg(config);
        Process::spawn(command)
    }

    fn spawn(mut command: Command) -> Process {
        let mut child = command
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start billgate");
        let stderr: ChildStderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut startup = Vec::new();
        let listening = loop {
            let line = wait_for(&lines, "");
            startup.push(line.clone());
            if line.contains("billgate listening") {
                break line;
            }
        };
        // JSON, or text: `… billgate listening addr=… admin_addr=…`, colours taken out.
        let json: serde_json::Value = serde_json::from_str(&listening)
            .unwrap_or_else(|_| serde_json::json!({ "fields": text_fields(&listening) }));
        let field = |name: &str| json["fields"][name].as_str().expect(name).to_owned();
        Process {
            addr: field("addr"),
            admin: field("admin_addr"),
            startup,
            child,
            lines,
        }
    }

    /// [`Process::start`] logging text (the default), with `BILLGATE_ADMIN_TOKEN` set to
    /// `token`.
    fn start_text(config: &std::path::Path, token: &str) -> Process {
        let mut command = Command::new(env!("CARGO_BIN_EXE_billgate"));
        command
            .args(["serve", "--config"])
            .arg(config)
            .env(billgate::control::TOKEN_ENV, token);
        Process::spawn(command)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A text log line without its colours (ANSI escape sequences).
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `name=value` fields of a text log line.
fn text_fields(line: &str) -> serde_json::Map<String, serde_json::Value> {
    plain(line)
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(name, value)| (name.to_owned(), serde_json::Value::from(value)))
        .collect()
}

/// The next log line containing `needle` (at most 10 s away).
fn wait_for(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => continue,
            Err(_) => panic!("no log line with {needle:?} within 10 s"),
        }
    }
}

fn write_config(dir: &TempDir, biller: &str, b_quota: &str) -> std::path::PathBuf {
    let partners = partner("wallet-a", "key-a", r#"inquiry_scheduled = "3/min""#, "")
        + &partner(
            "bank-b",
            "key-b",
            &format!("inquiry_scheduled = \"{b_quota}\""),
            "",
        )
        + &partner("steady-c", "key-c", r#"payment = "100000/s""#, "");
    let path = dir.join("billgate.toml");
    let text = config_toml(biller, "2s", "100000/s", &partners);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_under_load_without_a_failed_request() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("sighup");
    let path = write_config(&dir, &biller.url(), "1/min");
    let process = Process::start(&path);

    // wallet-a spends its whole quota; bank-b its one request.
    for n in 0..3 {
        assert_eq!(
            get(
                &process.url(&format!("/v1/bills/a{n}")),
                &[("x-api-key", "key-a")]
            )
            .await
            .status,
            StatusCode::OK
        );
    }
    assert_eq!(
        get(&process.url("/v1/bills/b0"), &[("x-api-key", "key-b")])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get(&process.url("/v1/bills/b1"), &[("x-api-key", "key-b")])
            .await
            .status,
        429
    );

    // steady-c pays without pause while the file changes and SIGHUP arrives five times.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, sent, failed, url) = (
            stop.clone(),
            sent.clone(),
            failed.clone(),
            process.url("/v1/payments"),
        );
        tokio::spawn(async move {
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let reply = pay(&url, &[("x-api-key", "key-c")]).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if reply.status != StatusCode::CREATED {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    for round in 0..5 {
        // Within 10× of the old quota, so no guardrail holds the reload back.
        let quota = if round % 2 == 0 { "5/min" } else { "6/min" };
        write_config(&dir, &biller.url(), quota);
        process.signal("HUP");
        wait_for(&process.lines, "configuration reloaded");
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );

    // The changed quota is in effect; the untouched partner's spent quota was not reset.
    assert_eq!(
        get(&process.url("/v1/bills/b2"), &[("x-api-key", "key-b")])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get(&process.url("/v1/bills/a9"), &[("x-api-key", "key-a")])
            .await
            .status,
        429
    );
    let metrics = get(&format!("http://{}/metrics", process.admin), &[])
        .await
        .text();
    assert_eq!(
        sample(&metrics, r#"billgate_config_reloads_total{result="ok"}"#),
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_and_exits_0() {
    let biller = TestBiller::slow(Duration::from_millis(400)).await;
    let dir = TempDir::new("sigterm");
    let path = write_config(&dir, &biller.url(), "10/s");
    let mut process = Process::start(&path);
    let url = process.url("/v1/bills/slow");
    let in_flight = tokio::spawn(async move { get(&url, &[("x-api-key", "key-b")]).await });
    biller.until_received(1).await;
    process.signal("TERM");
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let status = tokio::task::spawn_blocking(move || {
        let status = process.child.wait().unwrap();
        (status, process)
    })
    .await
    .unwrap()
    .0;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_reason_cannot_forge_a_line_of_the_text_log() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("reason-log");
    let path = write_config(&dir, &biller.url(), "10/s");
    let token = "reason-log-token";
    let process = Process::start_text(&path, token);
    let reason = "storm\nWARN billgate::control: partner resumed partner=bank-b\u{1b}[2J\u{202e}";
    let body = serde_json::json!({ "reason": reason }).to_string();
    let reply = send(
        http::Method::POST,
        &format!("http://{}/admin/partners/bank-b/suspend", process.admin),
        &[("authorization", &format!("Bearer {token}"))],
        body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // The partner is told the reason as written.
    assert_eq!(reply.json()["suspended"]["reason"], reason);
    let line = plain(&wait_for(&process.lines, "partner suspended"));
    assert!(
        line.contains(
            r"reason=storm\nWARN billgate::control: partner resumed partner=bank-b\u{1b}[2J\u{202e}"
        ),
        "{line:?}"
    );
    // (An escape sequence in the line would have been taken out with the colours; the
    // assertion above finds it escaped.)
    assert!(!line.contains(['\n', '\u{202e}']), "{line:?}");
}

/// Waits (at most 10 s) for the process's log to end, as it does when the process exits;
/// whether it ended.
fn until_closed(lines: &mpsc::Receiver<String>) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(_) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return true,
            Err(mpsc::RecvTimeoutError::Timeout) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_at_the_config_path_hangs_neither_a_sighup_reload_nor_sigterm() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("fifo-term");
    let path = write_config(&dir, &biller.url(), "10/s");
    let mut process = Process::start(&path);
    std::fs::remove_file(&path).unwrap();
    let c_path = std::ffi::CString::new(path.display().to_string()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo reads it and touches nothing else.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);

    // Nobody writes to the FIFO: the reload refuses it at once and says why.
    process.signal("HUP");
    let line = wait_for(&process.lines, "reload failed");
    assert!(
        line.contains("it is a FIFO (named pipe), not a regular file"),
        "{line}"
    );
    process.signal("TERM");
    let exited = until_closed(&process.lines);
    assert!(exited, "billgate did not exit within 10 s of SIGTERM");
    assert_eq!(process.child.wait().unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_the_partner_and_never_the_key() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("access");
    let path = write_config(&dir, &biller.url(), "10/s");
    let process = Process::start(&path);
    assert_eq!(
        get(&process.url("/v1/bills/77"), &[("x-api-key", "key-b")])
            .await
            .status,
        StatusCode::OK
    );
    let line = wait_for(&process.lines, "billgate::access");
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    let fields = &json["fields"];
    assert_eq!(fields["partner"], "bank-b");
    assert_eq!(fields["class"], "inquiry_scheduled");
    assert_eq!(fields["route"], "bill-inquiry");
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["outcome"], "forwarded");
    assert!(fields["upstream_ms"].as_f64().is_some());
    assert!(
        !line.contains("key-b"),
        "the access log leaked the key: {line}"
    );
    assert_eq!(
        get(&process.url("/v1/bills/78"), &[("x-api-key", "wrong-key")])
            .await
            .status,
        401
    );
    let line = wait_for(&process.lines, "billgate::access");
    assert!(
        line.contains("unknown_key") && !line.contains("wrong-key"),
        "{line}"
    );
}

/// The soft and hard "Max open files" of process `pid`.
fn open_files(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-file limit in:\n{limits}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_raises_its_open_file_limit_to_the_hard_limit() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("nofile");
    let path = write_config(&dir, &biller.url(), "10/s");
    let process = Process::start_with_half_the_open_files(&path);
    let (soft, hard) = open_files(process.child.id());
    assert_eq!(soft, hard, "the soft limit was left below the hard one");
    let raised = process
        .startup
        .iter()
        .find(|l| l.contains("open-file limit raised to the hard limit"))
        .unwrap_or_else(|| panic!("no line says the limit was raised: {:?}", process.startup));
    let json: serde_json::Value = serde_json::from_str(raised).unwrap();
    assert_eq!(json["fields"]["from"], hard / 2);
    assert_eq!(json["fields"]["to"], hard);
    assert_eq!(
        get(&process.url("/v1/bills/77"), &[("x-api-key", "key-b")])
            .await
            .status,
        StatusCode::OK
    );
}

/// `/metrics` asked on `admin`, a connection kept open, so that asking frees no file of the
/// gateway's.
async fn metrics_on(admin: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncWriteExt;
    admin
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: billgate\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(admin).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_sockets_is_the_gateways_503_and_never_the_billers_failure() {
    use tokio::io::AsyncWriteExt;
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("sockets");
    // Room for the retries below: an answer of the gateway's own still spends the quota.
    let path = write_config(&dir, &biller.url(), "100000/s");
    let process = Process::start_with_open_files(&path, 64);
    assert!(
        process
            .startup
            .iter()
            .any(|l| l.contains("cannot exceed the open-file limit")),
        "no warning about 64 open files: {:?}",
        process.startup
    );
    let mut admin = tokio::net::TcpStream::connect(&process.admin)
        .await
        .unwrap();
    let limit_before = sample(
        &metrics_on(&mut admin).await,
        "billgate_upstream_concurrency_limit",
    );

    // A connection to ask on, taken while files are to spare; then more connections than the
    // gateway has files for, so that it accepts until it has none left. Nothing of the
    // gateway's closes meanwhile: every connection it holds stays open.
    let mut asking = tokio::net::TcpStream::connect(&process.addr).await.unwrap();
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(tokio::net::TcpStream::connect(&process.addr).await.unwrap());
    }
    let failing = wait_for(&process.lines, "cannot accept connections");
    assert!(failing.contains("\"listener\":\"partner\""), "{failing}");

    // Its first call to the biller needs a connection it has no file for.
    asking
        .write_all(b"GET /v1/bills/77 HTTP/1.1\r\nhost: billgate\r\nx-api-key: key-b\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut asking).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(
        answer.contains("\"reason\":\"gateway_out_of_sockets\""),
        "{answer}"
    );
    wait_for(&process.lines, "no socket for a connection to the biller");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nretry-after: 1\r\n"),
        "{answer}"
    );
    assert_eq!(biller.biller.stats().received, 0);

    // It blamed the biller for nothing; with the flood gone, it has files again.
    let metrics = metrics_on(&mut admin).await;
    assert_eq!(
        sample(
            &metrics,
            r#"billgate_upstream_errors_total{kind="no_socket"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"billgate_upstream_errors_total{kind="connect"}"#
        ),
        0.0
    );
    assert_eq!(
        sample(&metrics, "billgate_upstream_concurrency_limit"),
        limit_before
    );
    drop(flood);
    let again = wait_for(&process.lines, "accepting connections again");
    let json: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(json["fields"]["listener"], "partner");
    assert!(json["fields"]["failed"].as_u64().unwrap() >= 1, "{again}");
    // Asked again on the same connection, so on the same worker, whose pool connects once the
    // gateway has closed the flood's connections (it accepts what was queued of them first).
    let mut answer = String::new();
    for _ in 0..10_000 {
        asking
            .write_all(b"GET /v1/bills/78 HTTP/1.1\r\nhost: billgate\r\nx-api-key: key-b\r\n\r\n")
            .await
            .unwrap();
        answer = read_answer(&mut asking).await;
        if !answer.contains("gateway_out_of_sockets") {
            break;
        }
    }
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    wait_for(&process.lines, "connections to the biller open again");
}

/// Waits for `ready` to give a value, checking every 10 ms for at most 10 s.
fn poll<T>(what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `--pid-file` names this gateway (so `kill -HUP "$(cat FILE)"` reaches it and no other) and
/// goes at exit; `--log-file` holds one line per event, no colour codes, and SIGUSR1 moves the
/// logging to a fresh file after logrotate renamed the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pid_file_names_this_gateway_and_sigusr1_reopens_the_log_file() {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new("pidfile");
    let config = write_config(&dir, &biller.url(), "10/s");
    let (log, rotated, pid) = (
        dir.join("billgate.log"),
        dir.join("billgate.log.1"),
        dir.join("billgate.pid"),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_billgate"))
        .arg("--log-file")
        .arg(&log)
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--pid-file")
        .arg(&pid)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start billgate");
    let written = poll("pid file", || {
        std::fs::read_to_string(&pid)
            .ok()
            .filter(|s| s.ends_with('\n'))
    });
    assert_eq!(written, format!("{}\n", child.id()));
    let kill = |signal: &str| {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), written.trim()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    };

    let first = std::fs::read_to_string(&log).unwrap();
    assert!(first.contains("billgate listening"), "{first}");
    assert!(
        !first.contains('\u{1b}'),
        "colour codes in a file: {first:?}"
    );

    std::fs::rename(&log, &rotated).unwrap();
    kill("USR1");
    // The reopened file exists once SIGUSR1 was handled; a reload then logs into it.
    poll("reopened log file", || log.exists().then_some(()));
    kill("HUP");
    let reloaded = poll("reload line", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.contains("configuration reloaded"))
    });
    let line = reloaded
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap();
    assert!(line.contains("diff=["), "the diff is one field: {line}");
    assert!(!std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("configuration reloaded"));

    kill("TERM");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!pid.exists(), "the pid file outlived the gateway");
}
