//! billgate: a reverse proxy that protects a utility-bill (EBPP) API from the partners that call it.
//!
//! This crate is the I/O shell: [`proxy`] serves partners and calls the biller, [`gateway`]
//! starts and stops the listeners and the background work beside them, [`admin`] and
//! [`metrics`] are the operators' side, [`cli`] and [`run`] the command line. Every decision is
//! made in `billgate-core` (re-exported here as [`admission`], [`config`], [`breaker`],
//! [`concurrency`], [`cache`] and [`clock`]) as a pure function of the request, the
//! configuration snapshot and the clock. The stand-in biller and the replays live in
//! `billgate-sim`; only [`commands`](crate::run) and [`replay`] use it.
// Unsafe code is denied everywhere but in one small, documented place: the open-file limit's two
// system calls (`limits`).
#![deny(unsafe_code)]

pub use billgate_core::{
    admission, breaker, cache, clock, concurrency, config, ids, memory, shards,
};

pub mod admin;
pub mod biller_tls;
pub mod cli;
pub mod coalesce;
mod commands;
pub mod control;
pub mod fleet;
pub mod gateway;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod recent;
pub mod replay;
pub mod subscriptions;
pub mod tls;

use std::process::ExitCode;

use cli::{Command, Opts};

/// Runs one command line; the exit code says whether it succeeded.
pub fn run(opts: Opts) -> ExitCode {
    if let Err(error) = logging::init(opts.log_format, opts.log_file.as_deref()) {
        eprintln!("error: cannot open the log file: {error}");
        return ExitCode::FAILURE;
    }
    let result = match opts.command {
        Command::Check {
            config,
            diff,
            max_config_bytes,
        } => Ok(commands::check(&config, diff.as_deref(), max_config_bytes)),
        Command::HashKey => commands::hash_key(),
        Command::HashCert { file } => commands::hash_cert(&file),
        Command::Serve {
            config,
            with_biller,
            pid_file,
            max_config_bytes,
        } => runtime().and_then(|rt| {
            rt.block_on(commands::serve(
                config,
                with_biller,
                pid_file,
                max_config_bytes,
            ))
        }),
        Command::Biller {
            listen,
            capacity,
            base_latency,
            push_to,
            push_token_file,
            new_bill_every,
            tls_cert,
            tls_key,
        } => {
            let tls = tls_cert.zip(tls_key);
            let push = push_to.zip(push_token_file);
            runtime().and_then(|rt| {
                rt.block_on(commands::biller(
                    listen,
                    &capacity,
                    &base_latency,
                    push,
                    new_bill_every.as_deref(),
                    tls,
                ))
            })
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
