//! What a replay needs of the gateway it plays through: start one from a configuration and a
//! clock, know where it listens, stop it. The `billgate` crate implements [`Launch`] over its
//! own gateway, so this crate stays free of it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use billgate_core::clock::Clock;
use billgate_core::config::Config;

/// A boxed, sendable future: what the traits below return, as they are used as `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Starts gateways for a replay.
pub trait Launch: Send + Sync {
    /// A gateway serving `config` on loopback ports of its own, timed by `clock`.
    ///
    /// # Errors
    /// The gateway could not start (a port, a configuration it refuses).
    fn launch(
        &self,
        config: Config,
        clock: Clock,
    ) -> BoxFuture<'_, anyhow::Result<Box<dyn Running>>>;
}

/// A gateway a [`Launch`] started.
pub trait Running: Send {
    /// Where partners connect.
    fn addr(&self) -> SocketAddr;
    /// Where `/metrics` and the admin API answer.
    fn admin_addr(&self) -> SocketAddr;
    /// Stops the gateway and waits until it has.
    fn shutdown(self: Box<Self>) -> BoxFuture<'static, ()>;
}
