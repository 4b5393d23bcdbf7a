//! Configuration: `config.toml` parsed, then validated once into types that cannot hold a bad
//! value. Errors carry file, line and column. Knows nothing of HTTP serving.

pub mod model;
pub mod rate;

pub use model::*;
pub use rate::{parse_duration, parse_rate, Period, Rate};
