//! billgate: a reverse proxy that protects a utility-bill (EBPP) API from the partners that call it.
//!
//! A request's path: [`proxy`] serves it, [`admission`] decides it (a pure function of the
//! request, the [`config`] snapshot and the [`clock`]), the pooled client forwards it to the
//! biller, and [`metrics`] counts it. [`biller`] is the stand-in EBPP biller; [`storm`] replays
//! the 2014 polling storm against it, with and without the gateway, and [`storm::polls`] measures
//! the answer cache under partners polling far past the biller's capacity.
// Unsafe code is denied everywhere but in four small, documented places: three that a measured
// gain needs — asking which core a thread runs on (`shards`), prefetching (`memory`) and handing
// allocations to mimalloc (`allocator`) — and the open-file limit's two system calls (`limits`).
#![deny(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod allocator;
pub mod biller;
pub mod breaker;
pub mod cache;
pub mod cli;
pub mod clock;
mod commands;
pub mod concurrency;
pub mod config;
pub mod control;
pub mod gateway;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod shards;
pub mod storm;

use std::process::ExitCode;

use cli::{Command, LogFormat, Opts};

/// Runs one command line; the exit code says whether it succeeded.
pub fn run(opts: Opts) -> ExitCode {
    init_logging(opts.log_format);
    let result = match opts.command {
        Command::Check { config, diff } => Ok(commands::check(&config, diff.as_deref())),
        Command::HashKey => commands::hash_key(),
        Command::Serve {
            config,
            with_biller,
        } => runtime().and_then(|rt| rt.block_on(commands::serve(config, with_biller))),
        Command::Biller {
            listen,
            capacity,
            base_latency,
        } => {
            runtime().and_then(|rt| rt.block_on(commands::biller(listen, &capacity, &base_latency)))
        }
        Command::Storm(args) => runtime().and_then(|rt| rt.block_on(commands::storm(args))),
        Command::Polls(args) => runtime().and_then(|rt| rt.block_on(commands::polls(args))),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
