//! The command line as an operator runs it: `check` and `hash-key` on the real binary.

use std::io::Write;
use std::process::{Command, Stdio};

fn billgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_billgate"))
}

#[test]
fn check_accepts_the_shipped_config_and_prints_partners() {
    let out = billgate()
        .args(["check", "--config", "config.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for partner in ["wallet-a", "bank-b", "paynow-c"] {
        assert!(
            stdout.contains(partner),
            "{partner} missing from:\n{stdout}"
        );
    }
    assert!(stdout.contains("200/s (50.0%)"), "{stdout}");
}

#[test]
fn check_rejects_a_broken_config_with_every_error_located() {
    let dir = std::env::temp_dir().join(format!("billgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.toml");
    let shipped = std::fs::read_to_string("config.toml").unwrap();
    let broken = shipped
        .replacen("payment = \"200/s\"", "payment = \"200/x\"", 1)
        .replacen(
            "url = \"http://127.0.0.1:9000\"",
            "url = \"http//127.0.0.1:9000\"",
            1,
        );
    assert_ne!(
        broken, shipped,
        "the shipped config changed shape; update this test"
    );
    std::fs::write(&path, &broken).unwrap();
    let out = billgate()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line_of = |needle: &str| broken.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert!(
        stderr.contains(&format!("broken.toml:{}:", line_of("200/x"))),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("broken.toml:{}:", line_of("http//"))),
        "{stderr}"
    );
    assert!(stderr.contains("partner[0].quota.payment"), "{stderr}");
    assert!(stderr.contains("biller.url"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hash_key_prints_the_sha256_of_stdin() {
    let mut child = billgate()
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"wallet-a-demo-key\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        billgate::config::hash_key("wallet-a-demo-key")
    );
    let shipped = std::fs::read_to_string("config.toml").unwrap();
    assert!(shipped.contains(String::from_utf8_lossy(&out.stdout).trim()));
}

/// The shipped file carries public demo keys: `serve` never falls back to it, it says which flag
/// to pass and exits 2 (clap's usage error) without opening a listener.
#[test]
fn serve_without_a_config_refuses_and_names_the_flag() {
    let out = billgate().arg("serve").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the following required arguments were not provided")
            && stderr.contains("--config <CONFIG>"),
        "{stderr}"
    );
}
