//! What each subcommand does, at the edge: load, start, wait for signals, print, exit.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use billgate_sim::biller::{BillerOptions, StandInBiller};
use billgate_sim::storm::polls::PollsOptions;
use billgate_sim::storm::StormOptions;

use crate::cli::{PollsArgs, StormArgs};
use crate::clock::Clock;
use crate::config::{self, Config, ConfigErrors};
use crate::gateway::{self, Gateway};
use crate::replay;

/// `billgate serve`
pub async fn serve(
    config_path: PathBuf,
    with_biller: bool,
    pid_file: Option<PathBuf>,
    max_config_bytes: u64,
) -> anyhow::Result<ExitCode> {
    let config = match load_file(&config_path, max_config_bytes) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if with_biller && config.biller.url.tls {
        eprintln!("error: --with-biller starts a plain-HTTP stand-in, and [biller] url is {}: start the stand-in alone with `billgate biller --tls-cert FILE --tls-key FILE` instead", config.biller.url);
        return Ok(ExitCode::FAILURE);
    }
    raise_open_files();
    let signals = Signals::register()?;
    let clock = Clock::real();
    let (biller_stop, biller_task) = if with_biller {
        let target = config.biller.url.host_port();
        let listener = tokio::net::TcpListener::bind(&target)
            .await
            .with_context(|| format!("cannot start the stand-in biller on {target}"))?;
        let capacity = config.biller.capacity.per_second();
        let biller = StandInBiller::new(
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
        config_path: Some(config_path),
        ..gateway::Options::default()
    };
    let gateway = match Gateway::start(config, options).await {
        Ok(gateway) => gateway,
        // A file the configuration names (for TLS to the biller) could not be used: told at
        // its key, as every configuration error is.
        Err(error) => match error.downcast_ref::<ConfigErrors>() {
            Some(errors) => {
                eprintln!("{errors}");
                return Ok(ExitCode::FAILURE);
            }
            None => return Err(error),
        },
    };
    let pid_file = pid_file.map(PidFile::write).transpose()?;
    signals.serve(&gateway).await;
    tracing::info!("shutting down: no new connections, finishing open requests");
    gateway.shutdown().await;
    if let (Some(stop), Some(task)) = (biller_stop, biller_task) {
        let _ = stop.send(());
        let _ = task.await;
    }
    drop(pid_file);
    Ok(ExitCode::SUCCESS)
}

/// `serve --pid-file`: the process id, written whole (a temporary file renamed into place, so a
/// reader never sees half a number) and removed when the gateway stops.
struct PidFile(PathBuf);

impl PidFile {
    fn write(path: PathBuf) -> anyhow::Result<PidFile> {
        let mut temporary = path.clone().into_os_string();
        temporary.push(".tmp");
        std::fs::write(&temporary, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&temporary, &path))
            .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.0) {
            tracing::warn!(%error, path = %self.0.display(), "cannot remove the pid file");
        }
    }
}

/// Lets `serve` hold as many connections as the hard open-file limit allows, and says so.
fn raise_open_files() {
    match crate::limits::raise_open_files() {
        Ok(files) => {
            if files.soft > files.before {
                tracing::info!(
                    from = files.before,
                    to = files.soft,
                    "open-file limit raised to the hard limit"
                );
            }
            if files.soft < crate::limits::FEW_OPEN_FILES {
                tracing::warn!(
                    limit = files.soft,
                    "partner and biller connections together cannot exceed the open-file limit; raise the hard limit (systemd: LimitNOFILE=) to hold more"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
}

/// The signals `serve` answers, registered before the listeners open so that a signal sent as
/// soon as the gateway says it is listening is never met by the default action (exit).
struct Signals {
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    reopen_log: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                hangup: signal(SignalKind::hangup())?,
                terminate: signal(SignalKind::terminate())?,
                reopen_log: signal(SignalKind::user_defined1())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Reloads on SIGHUP and reopens the log file on SIGUSR1, until SIGTERM or Ctrl-C.
    async fn serve(mut self, gateway: &Gateway) {
        #[cfg(unix)]
        loop {
            tokio::select! {
                // The outcome is logged and counted by the reload itself. It runs on a task of
                // its own so that this loop goes on listening: a SIGTERM must never wait for a
                // reload reading a file.
                _ = self.hangup.recv() => {
                    let control = std::sync::Arc::clone(&gateway.control);
                    tokio::spawn(async move {
                        let _ = control.reload(false).await;
                    });
                }
                _ = self.reopen_log.recv() => {
                    if let Err(error) = crate::logging::reopen() {
                        tracing::error!(%error, "cannot reopen the log file; logging on to the old one");
                    }
                }
                _ = self.terminate.recv() => return,
                _ = tokio::signal::ctrl_c() => return,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = gateway;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// [`config::load_file_within`] `cap` bytes (`--max-config-bytes`), on a thread of its own, given up after
/// [`crate::control::LOAD_TIME_LIMIT`]: the file is opened without waiting and only a regular
/// file is read, so only a stalled file system could hold it, and then the command says so
/// instead of hanging.
fn load_file(path: &Path, cap: u64) -> Result<Config, ConfigErrors> {
    let (done, outcome) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("config-load".into())
        .spawn(move || {
            let origin = "--max-config-bytes";
            let _ = done.send(config::load_file_within(&owned, cap, origin));
        });
    let shown = path.display().to_string();
    let whole_file =
        |message: String| ConfigErrors::one(config::ConfigError::whole_file(&shown, message));
    if let Err(error) = spawned {
        return Err(whole_file(format!(
            "cannot start a thread to read the configuration file: {error}"
        )));
    }
    let limit = crate::control::LOAD_TIME_LIMIT;
    outcome.recv_timeout(limit).unwrap_or_else(|_| {
        Err(whole_file(format!(
            "reading the configuration file took longer than {}s (a stalled file system?)",
            limit.as_secs()
        )))
    })
}

/// `billgate check`, and with `diff_from`, `billgate check --diff OLD.toml`: both files are
/// validated in full (and the new one's TLS files for the biller read); errors in either are
/// printed and the exit code is 1. Guardrails are
/// warnings here: exit 0.
pub fn check(path: &Path, diff_from: Option<&Path>, max_config_bytes: u64) -> ExitCode {
    // The files the configuration names (certificates, keys, CAs, of both legs) are read too:
    // `check` passes only what `serve` and a reload would take.
    let new = load_file(path, max_config_bytes)
        .and_then(|config| crate::biller_tls::load_both(&config).map(|_| config));
    let old = diff_from.map(|old| load_file(old, max_config_bytes));
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

/// `billgate hash-cert FILE.pem`
pub fn hash_cert(file: &Path) -> anyhow::Result<ExitCode> {
    let pem = match config::read_regular_file(file, 1024 * 1024) {
        Ok(pem) => pem,
        Err(error) => {
            eprintln!("error: cannot read {}: {error}", file.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    match crate::tls::hash_cert(&pem) {
        Ok(fingerprint) => {
            writeln!(std::io::stdout(), "{fingerprint}")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            eprintln!("error: {}: {why}", file.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The most bytes read from the stand-in biller's certificate or key file.
const PEM_FILE_CAP: u64 = 16 * 1024 * 1024;

/// `billgate biller`, in TLS with `tls` (the certificate chain's and the key's paths).
pub async fn biller(
    listen: std::net::SocketAddr,
    capacity: &str,
    base_latency: &str,
    push: Option<(String, PathBuf)>,
    new_bill_every: Option<&str>,
    tls: Option<(PathBuf, PathBuf)>,
) -> anyhow::Result<ExitCode> {
    let push = match push {
        Some((url, token_file)) => {
            if !url.starts_with("http://") {
                anyhow::bail!("--push-to: expected an http:// URL like http://127.0.0.1:9100/v1/bill-events, found {url:?}");
            }
            let token = std::fs::read_to_string(&token_file).with_context(|| {
                format!("--push-token-file: cannot read {}", token_file.display())
            })?;
            let token = token.trim().to_owned();
            if token.is_empty() {
                anyhow::bail!("--push-token-file: {} is empty", token_file.display());
            }
            Some(billgate_sim::biller::PushOptions { url, token })
        }
        None => None,
    };
    let new_bill_every = new_bill_every
        .map(|every| {
            config::parse_duration(every)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--new-bill-every: expected a duration like \"1s\", found {every:?}"
                    )
                })
        })
        .transpose()?;
    let capacity =
        config::parse_rate(capacity).map_err(|e| anyhow::anyhow!("--capacity: expected {e}"))?;
    let base_latency = config::parse_duration(base_latency)
        .map_err(|e| anyhow::anyhow!("--base-latency: expected {e}"))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let tls = match tls {
        Some((cert, key)) => {
            let read = |flag: &str, path: &Path| {
                config::read_regular_file(path, PEM_FILE_CAP)
                    .with_context(|| format!("{flag}: cannot read {}", path.display()))
            };
            let (cert_pem, key_pem) = (read("--tls-cert", &cert)?, read("--tls-key", &key)?);
            let tls = billgate_sim::biller::server_config(&cert_pem, &key_pem)
                .map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key: {e}"))?;
            Some(tls)
        }
        None => None,
    };
    let options = BillerOptions {
        capacity_per_sec: capacity.per_second(),
        base_latency,
        push,
        new_bill_every,
        ..BillerOptions::default()
    };
    let biller = StandInBiller::new(options, Clock::real());
    let stopped = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tracing::info!(%listen, capacity = %capacity, tls = tls.is_some(), "stand-in biller listening");
    match tls {
        Some(tls) => biller.serve_tls(listener, tls, stopped).await?,
        None => biller.serve(listener, stopped).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `billgate storm`: the report on stdout (a table, or JSON with `--json`); exit 1 if a check
/// failed.
pub async fn storm(args: StormArgs) -> anyhow::Result<ExitCode> {
    let options = StormOptions {
        instances: args.instances,
        redis: args.redis.clone(),
        ..storm_options(&args)?
    };
    options.validate()?;
    if !args.subscribe {
        let report = replay::storm(options).await?;
        return print_report(&report, args.json, report.passed());
    }
    let polling = replay::storm(options.clone()).await?;
    let subscribed = replay::storm(StormOptions {
        subscribe: true,
        ..options
    })
    .await?;
    let passed = polling.passed() && subscribed.passed();
    if args.json {
        let both = serde_json::json!({ "polling": polling, "subscribed": subscribed });
        return print_report(&JsonOnly(both), true, passed);
    }
    let mut out = std::io::stdout();
    write!(out, "{polling}\n{subscribed}\n")?;
    writeln!(
        out,
        "The biller's load, requests per second (mean / most in any second), polling vs subscribed:"
    )?;
    for (p, s) in polling.phases.iter().zip(&subscribed.phases) {
        writeln!(
            out,
            "  {:<9} polling {:>6.1} / {:>4}   subscribed {:>6.1} / {:>4}",
            p.phase.as_str(),
            p.load.mean_per_sec,
            p.load.max_per_sec.unwrap_or(0),
            s.load.mean_per_sec,
            s.load.max_per_sec.unwrap_or(0),
        )?;
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A JSON value printed as the report.
struct JsonOnly(serde_json::Value);

impl serde::Serialize for JsonOnly {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl std::fmt::Display for JsonOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Prints a scenario's report (a table, or JSON); the exit code says whether its checks passed.
fn print_report(
    report: &(impl serde::Serialize + std::fmt::Display),
    json: bool,
    passed: bool,
) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout();
    if json {
        serde_json::to_writer_pretty(&mut out, report)?;
        writeln!(out)?;
    } else {
        write!(out, "{report}")?;
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--capacity`: a whole number of requests per second from 10/s to 10000/s.
fn scenario_capacity(text: &str, example: &str) -> anyhow::Result<u32> {
    let capacity = config::parse_rate(text)
        .map_err(|e| anyhow::anyhow!("--capacity: expected {e}"))?
        .per_second();
    if capacity.fract() != 0.0 || !(10.0..=10_000.0).contains(&capacity) {
        anyhow::bail!("--capacity: expected a whole number of requests per second from 10/s to 10000/s, e.g. {example}");
    }
    Ok(capacity as u32)
}

/// The options `args` ask for, on top of the full or the short form.
pub fn storm_options(args: &StormArgs) -> anyhow::Result<StormOptions> {
    let mut options = if args.short {
        StormOptions::short()
    } else {
        StormOptions::default()
    };
    options.bypass = args.bypass;
    if let Some(capacity) = &args.capacity {
        options.capacity_per_sec = scenario_capacity(capacity, "400/s")?;
    }
    let phases = [
        ("--calm", &args.calm, &mut options.calm),
        ("--storm", &args.storm, &mut options.storm),
        ("--brownout", &args.brownout, &mut options.brownout),
        ("--recovery", &args.recovery, &mut options.recovery),
    ];
    for (flag, text, length) in phases {
        if let Some(text) = text {
            *length = config::parse_duration(text)
                .map_err(|e| anyhow::anyhow!("{flag}: expected {e}"))?;
        }
    }
    if let Some(seed) = args.seed {
        options.seed = seed;
    }
    options.validate()?;
    Ok(options)
}

/// `billgate polls`: the report on stdout (a table, or JSON with `--json`); exit 1 if a check
/// failed.
pub async fn polls(args: PollsArgs) -> anyhow::Result<ExitCode> {
    let options = polls_options(&args)?;
    let report = replay::polls(options).await?;
    print_report(&report, args.json, report.passed())
}

/// The options `args` ask for, on top of the full or the short form.
pub fn polls_options(args: &PollsArgs) -> anyhow::Result<PollsOptions> {
    let mut options = if args.short {
        PollsOptions::short()
    } else {
        PollsOptions::default()
    };
    if let Some(text) = &args.capacity {
        options.capacity_per_sec = scenario_capacity(text, "100/s")?;
    }
    if let Some(text) = &args.duration {
        options.duration = config::parse_duration(text)
            .map_err(|e| anyhow::anyhow!("--duration: expected {e}"))?;
    }
    options.factor = args.factor.unwrap_or(options.factor);
    options.accounts = args.accounts.unwrap_or(options.accounts);
    options.seed = args.seed.unwrap_or(options.seed);
    options.breaker_min_calls = args.breaker_min_calls.or(options.breaker_min_calls);
    options.validate()?;
    Ok(options)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;
    use crate::cli::{Command, Opts};

    fn storm_args(args: &[&str]) -> StormArgs {
        let argv = ["billgate", "storm"].iter().chain(args);
        match Opts::parse_from(argv).command {
            Command::Storm(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn storm_options_start_from_the_full_or_short_form() {
        assert_eq!(
            storm_options(&storm_args(&[])).unwrap(),
            StormOptions::default()
        );
        let short = storm_options(&storm_args(&["--short", "--bypass"])).unwrap();
        assert_eq!(
            short,
            StormOptions {
                bypass: true,
                ..StormOptions::short()
            }
        );
    }

    #[test]
    fn storm_flags_override_capacity_phases_and_seed() {
        let args = storm_args(&[
            "--capacity",
            "12000/min",
            "--calm",
            "3s",
            "--storm",
            "1500ms",
            "--brownout",
            "4s",
            "--recovery",
            "5s",
            "--seed",
            "7",
        ]);
        let o = storm_options(&args).unwrap();
        assert_eq!(o.capacity_per_sec, 200);
        assert_eq!(o.calm, Duration::from_secs(3));
        assert_eq!(o.storm, Duration::from_millis(1500));
        assert_eq!(
            (o.brownout, o.recovery),
            (Duration::from_secs(4), Duration::from_secs(5))
        );
        assert_eq!(o.seed, 7);
    }

    #[test]
    fn bad_storm_flags_name_the_flag() {
        let error = |args: &[&str]| storm_options(&storm_args(args)).unwrap_err().to_string();
        assert!(error(&["--capacity", "lots"]).contains("--capacity"));
        assert!(error(&["--capacity", "1/min"]).contains("--capacity"));
        assert!(error(&["--capacity", "5/s"]).contains("--capacity"));
        assert!(error(&["--storm", "soon"]).contains("--storm"));
        assert!(error(&["--calm", "100ms"]).contains("calm phase"));
    }

    fn polls_args(args: &[&str]) -> PollsArgs {
        let argv = ["billgate", "polls"].iter().chain(args);
        match Opts::parse_from(argv).command {
            Command::Polls(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn polls_options_start_from_the_full_or_short_form_and_take_overrides() {
        assert_eq!(
            polls_options(&polls_args(&[])).unwrap(),
            PollsOptions::default()
        );
        assert_eq!(
            polls_options(&polls_args(&["--short"])).unwrap(),
            PollsOptions::short()
        );
        let o = polls_options(&polls_args(&[
            "--short",
            "--capacity",
            "2400/min",
            "--factor",
            "10",
            "--accounts",
            "500",
            "--duration",
            "3s",
            "--seed",
            "9",
            "--breaker-min-calls",
            "20",
        ]))
        .unwrap();
        assert_eq!((o.capacity_per_sec, o.factor, o.accounts), (40, 10, 500));
        assert_eq!((o.duration, o.seed), (Duration::from_secs(3), 9));
        assert_eq!(o.breaker_min_calls(), 20);
        let error = |args: &[&str]| polls_options(&polls_args(args)).unwrap_err().to_string();
        assert!(error(&["--capacity", "5/s"]).contains("--capacity"));
        assert!(error(&["--duration", "soon"]).contains("--duration"));
        assert!(error(&["--accounts", "0"]).contains("accounts"));
    }
}
