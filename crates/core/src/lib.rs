//! billgate-core: everything billgate decides, and nothing that does I/O.
//!
//! [`config`] parses and validates `config.toml` into a snapshot; [`admission`] decides each
//! request from its parts, that snapshot and the [`clock`]; [`breaker`] and [`concurrency`]
//! guard the biller; [`cache`] holds the inquiry answers and the rules for keeping them. This
//! crate depends on no async runtime and no HTTP server or client: the gateway (`billgate`) is
//! the I/O shell around it.
// Unsafe code is denied everywhere but in two small, documented places that a measured gain
// needs: asking which core a thread runs on (`shards`) and prefetching (`memory`).
#![deny(unsafe_code)]

pub mod admission;
pub mod breaker;
pub mod cache;
pub mod clock;
pub mod concurrency;
pub mod config;
pub mod fleet;
pub mod ids;
pub mod memory;
pub mod shards;
pub mod subscriptions;
