//! billgate: a reverse proxy that protects a utility-bill (EBPP) API from the partners that call it.
#![forbid(unsafe_code)]

pub mod biller;
pub mod clock;
pub mod config;
