//! The gateway's integration tests over real sockets, one module per concern, linked into one
//! binary: each test binary links tokio, hyper, rustls, sqlx and redis, and one per file filled a
//! CI machine's disk. `tests/allocations.rs` (a counting global allocator) and `tests/storm.rs`
//! (replays that must run alone) stay binaries of their own.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/hooks.rs"]
mod hooks;
#[path = "../../crates/subs/tests/common/postgres.rs"]
mod postgres;
#[path = "../common/redis.rs"]
mod redis_server;

mod admin;
mod biller;
mod biller_tls;
mod cache;
mod capacity;
mod check;
mod cli;
mod config_errors;
mod dashboard;
mod diff;
mod fleet;
mod fleet_redis;
mod forwarding;
mod framing;
mod heads_differential;
mod listener;
mod operations;
mod polls;
mod pool_differential;
mod process;
mod protection;
mod quotas;
mod reload_bounds;
mod slow_bodies;
mod statuses;
mod subscriptions;
mod subscriptions_fleet;
mod tls;
