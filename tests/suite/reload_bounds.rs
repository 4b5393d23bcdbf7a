//! A reload reads a regular file only, up to `[server] max_config_bytes`, and never holds up
//! suspensions: a FIFO, a device or an oversized file swapped in at the configuration path is
//! refused at once, naming the file and why, and the running configuration stays.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};

const Q: &str = r#"payment = "100/s", inquiry_user = "100/s", inquiry_scheduled = "100/s""#;
const TOKEN: &str = "s3cret-admin-token";
const AUTH: (&str, &str) = ("authorization", "Bearer s3cret-admin-token");

/// A bound on each answer awaited, so that a hang fails the test instead of stalling it.
const PROMPT: Duration = Duration::from_secs(5);

/// The configuration text: an admin token file and a state file in `dir`.
fn config_text(dir: &TempDir, biller_url: &str) -> String {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let server = format!(
        "[server]\nstate_file = \"{}\"\nadmin_token_file = \"{}\"\n",
        dir.join("state.json").display(),
        dir.join("token").display()
    );
    config_toml(
        biller_url,
        "2s",
        "10000/s",
        &partner("wallet-a", "key-a", Q, ""),
    )
    .replacen("[server]\n", &server, 1)
}

/// A gateway serving the config file in a temporary directory of its own, with the biller it
/// forwards to: the text it was started from, and where it is.
struct OnFile {
    _biller: TestBiller,
    _dir: TempDir,
    path: std::path::PathBuf,
    text: String,
    gw: TestGateway,
}

async fn on_file(name: &str) -> OnFile {
    let biller = TestBiller::roomy().await;
    let dir = TempDir::new(name);
    let path = dir.join("billgate.toml");
    let text = config_text(&dir, &biller.url());
    std::fs::write(&path, &text).unwrap();
    let gw = TestGateway::start_from_file(&path).await;
    OnFile {
        _biller: biller,
        _dir: dir,
        path,
        text,
        gw,
    }
}

async fn reload(gw: &TestGateway) -> Reply {
    let url = gw.admin_url("/admin/reload");
    tokio::time::timeout(PROMPT, send(Method::POST, &url, &[AUTH], ""))
        .await
        .expect("the reload answers promptly")
}

/// Asserts a refused reload: 422 problem+json whose detail names the file and says why, the
/// running configuration kept and still serving.
async fn assert_refused(gw: &TestGateway, reply: &Reply, path: &Path, why: &str) {
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text()
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let detail = reply.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains(&path.display().to_string()), "{detail}");
    assert!(detail.contains(why), "{detail}");
    let served = get(&gw.url("/v1/bills/1"), &[("x-api-key", "key-a")]).await;
    assert_eq!(served.status, StatusCode::OK);
    let metrics = gw.metrics().await;
    let errors = sample(&metrics, r#"billgate_config_reloads_total{result="error"}"#);
    assert_eq!(errors, 1.0);
}

fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.display().to_string()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo reads it and touches nothing else.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
}

/// Opens the FIFO's writing end and closes it, so that a reader blocked on it (a reload that
/// opened it) sees the end of the file and lets go. Without a reader it does nothing.
fn release_readers(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
}

#[tokio::test]
async fn a_fifo_at_the_config_path_is_refused_at_once_and_a_suspension_meanwhile_works() {
    let OnFile {
        _biller,
        _dir,
        path,
        text,
        gw,
    } = on_file("fifo").await;
    std::fs::remove_file(&path).unwrap();
    mkfifo(&path);

    // Nobody ever writes to the FIFO. The reload and a suspension go out together.
    let url = gw.admin_url("/admin/reload");
    let reloading = tokio::spawn(async move { send(Method::POST, &url, &[AUTH], "").await });
    let suspend_url = gw.admin_url("/admin/partners/wallet-a/suspend");
    let body = r#"{"reason":"polling storm"}"#;
    let suspended =
        tokio::time::timeout(PROMPT, send(Method::POST, &suspend_url, &[AUTH], body)).await;
    let reloaded = tokio::time::timeout(PROMPT, reloading).await;
    // Whatever happened, no reader stays blocked on the FIFO past the test.
    release_readers(&path);

    let suspended = suspended.expect("the suspension answers while a reload is under way");
    assert_eq!(suspended.status, StatusCode::OK, "{}", suspended.text());
    let reply = reloaded.expect("the reload answers promptly").unwrap();
    let why = "it is a FIFO (named pipe), not a regular file";
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text()
    );
    let detail = reply.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains(&path.display().to_string()), "{detail}");
    assert!(detail.contains(why), "{detail}");
    let refused = get(&gw.url("/v1/bills/1"), &[("x-api-key", "key-a")]).await;
    assert_eq!(refused.json()["reason"], "suspended");

    // Resuming works too, and the FIFO has not wedged anything: a regular file reloads.
    let resume_url = gw.admin_url("/admin/partners/wallet-a/resume");
    let resumed = tokio::time::timeout(PROMPT, send(Method::POST, &resume_url, &[AUTH], "")).await;
    assert_eq!(resumed.expect("resume answers").status, StatusCode::OK);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, text).unwrap();
    assert_eq!(reload(&gw).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_file_over_the_cap_is_refused_naming_the_cap() {
    let OnFile {
        _biller,
        _dir,
        path,
        text,
        gw,
    } = on_file("oversized").await;

    // Valid in itself, but one byte over the default cap of 8 MiB.
    let line = "# padding padding padding padding padding padding padding padding padding\n";
    let mut big = text.clone();
    while big.len() + line.len() <= 8 * 1024 * 1024 {
        big.push_str(line);
    }
    big.push_str(&"#".repeat(8 * 1024 * 1024 + 1 - big.len()));
    assert_eq!(big.len(), 8 * 1024 * 1024 + 1);
    std::fs::write(&path, &big).unwrap();
    let reply = reload(&gw).await;
    let why = "it is 8388609 bytes, over the cap of 8388608 bytes (the running configuration's [server] max_config_bytes)";
    assert_refused(&gw, &reply, &path, why).await;

    // The cap is the running configuration's: lowered, it applies to the next reload.
    let lowered = text.replacen("[server]\n", "[server]\nmax_config_bytes = 4096\n", 1);
    std::fs::write(&path, &lowered).unwrap();
    assert_eq!(reload(&gw).await.status, StatusCode::OK);
    let padded = format!("{lowered}{}", "#".repeat(4097 - lowered.len()));
    std::fs::write(&path, &padded).unwrap();
    let reply = reload(&gw).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let detail = reply.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        detail.contains("it is 4097 bytes, over the cap of 4096 bytes"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_device_at_the_config_path_is_refused_without_reading_it() {
    let OnFile {
        _biller,
        _dir,
        path,
        text: _,
        gw,
    } = on_file("devzero").await;
    std::fs::remove_file(&path).unwrap();
    // Endless zeros: read whole, it would fill the memory.
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    let reply = reload(&gw).await;
    let why = "it is a character device, not a regular file";
    assert_refused(&gw, &reply, &path, why).await;
}
