//! billgate-sim: the stand-in EBPP [`biller`], and the [`storm`] and polls replays that play
//! partners against it, with and without the gateway in front.
//!
//! The gateway is reached through [`launch::Launch`], which the `billgate` crate implements:
//! this crate never depends on the gateway's, and the gateway's modules never import this one.
#![forbid(unsafe_code)]

pub mod biller;
pub mod launch;
pub mod storm;

use billgate_core::{cache, clock, config};
