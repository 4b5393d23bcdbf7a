//! Configuration: `config.toml` parsed, then validated once into types that cannot hold a bad
//! value. Errors carry file, line and column. Knows nothing of HTTP serving.

pub mod diff;
pub mod model;
pub mod rate;

mod check;
mod error;
mod fields;
mod load;
mod partners;
mod routes;
mod sections;
mod template;
mod values;

pub use check::{check_report, CheckReport, PartnerSummary, Warning};
pub use diff::{
    diff, Commitment, ConfigDiff, Guardrail, PartnerChange, PartnerDiff, RouteDiff, SettingChange,
};
pub use error::{ConfigError, ConfigErrors};
pub use load::{
    hash_key, load_file, load_file_within, load_str, read_regular_file, ReadError, DEFAULT_CONFIG,
    DEFAULT_MAX_CONFIG_BYTES, MAX_CONFIG_BYTES, MIN_CONFIG_BYTES,
};
pub use model::*;
pub use rate::{parse_duration, parse_rate, Period, Rate};
