//! What each subcommand does, at the edge: load, start, wait for signals, print, exit.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::biller::{Biller, BillerOptions};
use crate::clock::Clock;
use crate::config::{self, Config, ConfigErrors};
use crate::gateway::{self, Gateway};

/// `billgate serve`
pub async fn serve(config_path: Option<PathBuf>, with_biller: bool) -> anyhow::Result<ExitCode> {
    let config = match load(config_path.as_deref()) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let clock = Clock::real();
    let (biller_stop, biller_task) = if with_biller {
        let target = config.biller.url.host_port();
        let listener = tokio::net::TcpListener::bind(&target)
            .await
            .with_context(|| format!("cannot start the stand-in biller on {target}"))?;
        let capacity = config.biller.capacity.per_second();
        let biller = Biller::new(
            BillerOptions {
                capacity_per_sec: capacity,
                ..BillerOptions::default()
            },
            clock.clone(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tracing::info!(%target, capacity, "stand-in biller listening");
        let task = tokio::spawn(biller.serve(listener, async move {
            let _ = stopped.await;
        }));
        (Some(stop), Some(task))
    } else {
        (None, None)
    };
    let options = gateway::Options {
        clock,
        config_path: config_path.clone(),
        ..gateway::Options::default()
    };
    let gateway = Gateway::start(config, options).await?;
    wait_for_signals(&gateway).await?;
    tracing::info!("shutting down: no new connections, finishing open requests");
    gateway.shutdown().await;
    if let (Some(stop), Some(task)) = (biller_stop, biller_task) {
        let _ = stop.send(());
        let _ = task.await;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(unix)]
async fn wait_for_signals(gateway: &Gateway) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            // The outcome is logged and counted by the reload itself.
            _ = hangup.recv() => {
                let _ = gateway.reload(false).await;
            }
            _ = terminate.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_gateway: &Gateway) -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    match path {
        Some(path) => config::load_file(path),
        None => config::load_str(config::DEFAULT_CONFIG, "config.toml (embedded)"),
    }
}

/// `billgate check`, and with `diff_from`, `billgate check --diff OLD.toml`: both files are
/// validated in full; errors in either are printed and the exit code is 1. Guardrails are
/// warnings here: exit 0.
pub fn check(path: &Path, diff_from: Option<&Path>) -> ExitCode {
    let new = config::load_file(path);
    let old = diff_from.map(config::load_file);
    let (new, old) = match (new, old) {
        (Ok(new), None) => (new, None),
        (Ok(new), Some(Ok(old))) => (new, Some(old)),
        (new, old) => {
            for errors in [new.err(), old.and_then(Result::err)].into_iter().flatten() {
                eprintln!("{errors}");
            }
            return ExitCode::FAILURE;
        }
    };
    let report = config::check_report(&new);
    let shown = match (&old, diff_from) {
        (Some(old), Some(old_path)) => diff_report(old_path, path, old, &new, &report),
        _ => report.to_string(),
    };
    println!("{}", shown.trim_end());
    println!("{}: valid", path.display());
    ExitCode::SUCCESS
}

/// The diff, the guardrails it hits, then the new configuration's warnings.
fn diff_report(
    old_path: &Path,
    new_path: &Path,
    old: &Config,
    new: &Config,
    report: &config::CheckReport,
) -> String {
    let diff = config::diff(old, new);
    let mut out = format!(
        "changes from {} to {}\n{diff}\n\n",
        old_path.display(),
        new_path.display()
    );
    let guardrails = diff.guardrails();
    if guardrails.is_empty() {
        out.push_str("no guardrails hit\n");
    } else {
        let plural = if guardrails.len() == 1 { "" } else { "s" };
        out.push_str(&format!("{} guardrail{plural} hit\n", guardrails.len()));
        for g in &guardrails {
            out.push_str(&format!("{g}\n"));
        }
        out.push_str("a reload of this change will be refused unless forced (POST /admin/reload?force=true); billgate check applies nothing itself\n");
    }
    out.push('\n');
    if report.warnings.is_empty() {
        out.push_str("no warnings");
    } else {
        let plural = if report.warnings.len() == 1 { "" } else { "s" };
        out.push_str(&format!("{} warning{plural}", report.warnings.len()));
        for w in &report.warnings {
            out.push_str(&format!("\n{w}"));
        }
    }
    out
}

/// `billgate hash-key`
pub fn hash_key() -> anyhow::Result<ExitCode> {
    let mut key = String::new();
    std::io::stdin()
        .read_to_string(&mut key)
        .context("reading the key from stdin")?;
    if key.trim_end_matches(['\r', '\n']).is_empty() {
        eprintln!("error: no key on stdin (try: printf %s 'the-key' | billgate hash-key)");
        return Ok(ExitCode::FAILURE);
    }
    let mut out = std::io::stdout();
    writeln!(out, "{}", config::hash_key(&key))?;
    Ok(ExitCode::SUCCESS)
}

/// `billgate biller`
pub async fn biller(
    listen: std::net::SocketAddr,
    capacity: &str,
    base_latency: &str,
) -> anyhow::Result<ExitCode> {
    let capacity =
        config::parse_rate(capacity).map_err(|e| anyhow::anyhow!("--capacity: expected {e}"))?;
    let base_latency = config::parse_duration(base_latency)
        .map_err(|e| anyhow::anyhow!("--base-latency: expected {e}"))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let options = BillerOptions {
        capacity_per_sec: capacity.per_second(),
        base_latency,
        ..BillerOptions::default()
    };
    tracing::info!(%listen, capacity = %capacity, "stand-in biller listening");
    Biller::new(options, Clock::real())
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
