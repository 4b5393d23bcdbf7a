pub mod store;
pub mod webhook;
