//! The command line: clap definitions only.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{DEFAULT_MAX_CONFIG_BYTES, MAX_CONFIG_BYTES, MIN_CONFIG_BYTES};

/// `--max-config-bytes`: the range `[server] max_config_bytes` takes.
fn config_bytes(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if (MIN_CONFIG_BYTES..=MAX_CONFIG_BYTES).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a number of bytes from {MIN_CONFIG_BYTES} to {MAX_CONFIG_BYTES} (64 MiB), like {DEFAULT_MAX_CONFIG_BYTES}"
        )),
    }
}

/// billgate: a reverse proxy that protects a utility-bill (EBPP) API from the partners that
/// call it.
#[derive(Debug, Parser)]
#[command(name = "billgate", version, about)]
pub struct Opts {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Append logs to this file instead of stderr; SIGUSR1 reopens it (for logrotate).
    #[arg(long, global = true, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// The configuration file. Required: the shipped `config.toml` carries public demo keys,
        /// so it is never used unless named.
        #[arg(long)]
        config: PathBuf,
        /// Also start the stand-in biller at `[biller] url`, in-process.
        #[arg(long)]
        with_biller: bool,
        /// Write the process id here once the listeners are open (removed at exit), so that
        /// `kill -HUP "$(cat FILE)"` reaches this gateway and no other.
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
        /// The largest configuration file read at start, in bytes (4096 to 64 MiB); reloads
        /// read at most the running `[server] max_config_bytes`.
        #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_CONFIG_BYTES, value_parser = config_bytes)]
        max_config_bytes: u64,
    },
    /// Validate a configuration and print its partners, quotas and warnings; exit 1 on error.
    ///
    /// With `--diff OLD.toml`, print instead what changes from OLD.toml (say, the running
    /// configuration) to this one, partner by partner, and the guardrails the change hits.
    /// `check` applies nothing and has no `--force`: a guardrail is a warning here (exit 0), but
    /// a reload of that change is refused unless forced with `POST /admin/reload?force=true`.
    Check {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        /// The configuration to compare against (validated in full too).
        #[arg(long, value_name = "OLD.toml")]
        diff: Option<PathBuf>,
        /// The largest configuration file read, in bytes (4096 to 64 MiB).
        #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_CONFIG_BYTES, value_parser = config_bytes)]
        max_config_bytes: u64,
    },
    /// Read an API key on stdin and print its SHA-256, for `keys_sha256`.
    HashKey,
    /// Print the SHA-256 of the first certificate in a PEM file, for `client_cert_sha256`.
    HashCert {
        /// The partner's client certificate, PEM.
        #[arg(value_name = "FILE.pem")]
        file: PathBuf,
    },
    /// Run the stand-in EBPP biller alone.
    Biller {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Requests per second it can serve, as a rate (`400/s`).
        #[arg(long, default_value = "400/s")]
        capacity: String,
        /// Latency when idle, as a duration (`5ms`).
        #[arg(long, default_value = "5ms")]
        base_latency: String,
        /// Push bill events (a bill paid, a new bill) to this URL, a gateway's
        /// `http://ADMIN/v1/bill-events`; needs --push-token-file.
        #[arg(long, requires = "push_token_file")]
        push_to: Option<String>,
        /// The file holding the bearer token the gateway knows the biller by.
        #[arg(long, requires = "push_to")]
        push_token_file: Option<PathBuf>,
        /// Issue a new bill this often (a duration, `1s`), to the accounts asked about so far
        /// in turn.
        #[arg(long)]
        new_bill_every: Option<String>,
        /// Serve TLS with this certificate chain (PEM, leaf first); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM: PKCS#8, RSA or SEC1); needs --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Replay the 2014 polling storm in-process (stand-in biller, gateway, three partners) and
    /// report what reached the biller and what each partner got; exit 1 if a check fails.
    Storm(StormArgs),
    /// Poll the answer cache in-process: three partners ask about the same bill accounts at 50 ×
    /// the biller's capacity; report the calls reaching the biller, cache-hit latency and the
    /// cache's memory; exit 1 if a check fails.
    Polls(PollsArgs),
}

/// `billgate storm`
#[derive(Debug, Args)]
pub struct StormArgs {
    /// Send the same load straight to the biller, without the gateway.
    #[arg(long)]
    pub bypass: bool,
    /// The seconds-long form: 2s per phase, breaker and stand-in timings scaled down.
    #[arg(long)]
    pub short: bool,
    /// The biller's capacity C, as a rate (default 400/s; 200/s with --short).
    #[arg(long)]
    pub capacity: Option<String>,
    /// The calm phase's length (default 10s; 2s with --short).
    #[arg(long)]
    pub calm: Option<String>,
    /// The storm phase's length (default 20s; 2s with --short).
    #[arg(long)]
    pub storm: Option<String>,
    /// The brown-out phase's length (default 10s; 2s with --short).
    #[arg(long)]
    pub brownout: Option<String>,
    /// The recovery phase's length (default 15s; 2s with --short).
    #[arg(long)]
    pub recovery: Option<String>,
    /// Seeds the poller's choice of accounts (default 2014).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Gateway instances sharing quotas and the biller's capacity through one Redis
    /// (`[fleet]`), each partner's requests dealt to them in turn, request by request (1–16;
    /// default 1: one gateway, no Redis).
    #[arg(long, default_value_t = 1, conflicts_with = "bypass")]
    pub instances: u32,
    /// The fleet's Redis, e.g. redis://127.0.0.1:6379/0 (default: a redis-server from PATH
    /// started on a free loopback port for the run; Debian's redis-server package). With
    /// `--instances 1` the gateway joins it as a fleet of one. Its `billgate:fleet:*` keys are
    /// shared with any other fleet on it, and never flushed.
    #[arg(long, value_name = "URL", conflicts_with = "bypass")]
    pub redis: Option<String>,
    /// Replay the storm twice: as it was, then with the poller subscribed to its accounts
    /// (`[subscriptions]`, refresh 6h) instead of polling them; print both reports and the
    /// biller's load per second side by side.
    #[arg(long, conflicts_with_all = ["bypass", "redis"])]
    pub subscribe: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `billgate polls`
#[derive(Debug, Args)]
pub struct PollsArgs {
    /// The ten-second form for CI: 1 000 accounts, C = 20/s, a one-second timeline.
    #[arg(long)]
    pub short: bool,
    /// The biller's capacity C, as a rate (default 100/s; 20/s with --short).
    #[arg(long)]
    pub capacity: Option<String>,
    /// The partners together poll at this many times C (default 50).
    #[arg(long)]
    pub factor: Option<u32>,
    /// Distinct bill accounts polled (default 10000; 1000 with --short).
    #[arg(long)]
    pub accounts: Option<u32>,
    /// How long the partners poll (default 120s; 10s with --short).
    #[arg(long)]
    pub duration: Option<String>,
    /// Seeds the choice of accounts (default 2014).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The gateway's `[biller.breaker] min_calls` (default: a ten-second window of the polls'
    /// share of C; with the shipped 20, slow first calls can open the breaker, and polls alone
    /// never close it).
    #[arg(long)]
    pub breaker_min_calls: Option<u32>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
