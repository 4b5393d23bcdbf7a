//! The storm and polls replays of `billgate-sim`, played through this crate's gateway.

use std::time::Duration;

use billgate_core::clock::Clock;
use billgate_core::config::Config;
use billgate_sim::launch::{BoxFuture, Launch, Running};
use billgate_sim::storm::polls::{self, PollsOptions, PollsReport};
use billgate_sim::storm::{self, StormOptions, StormReport};

use crate::gateway::{self, Gateway};

/// Replays the 2014 storm through a gateway of this crate (see [`storm::run`]).
///
/// # Errors
/// As [`storm::run`].
pub async fn storm(options: StormOptions) -> anyhow::Result<StormReport> {
    storm::run(options, &Gateways).await
}

/// Plays partners polling far past the biller's capacity through a gateway of this crate (see
/// [`polls::run`]).
///
/// # Errors
/// As [`polls::run`].
pub async fn polls(options: PollsOptions) -> anyhow::Result<PollsReport> {
    polls::run(options, &Gateways).await
}

/// Starts this crate's gateway for a replay, with a one-second drain so a replay ends promptly.
struct Gateways;

impl Launch for Gateways {
    fn launch(
        &self,
        config: Config,
        clock: Clock,
    ) -> BoxFuture<'_, anyhow::Result<Box<dyn Running>>> {
        Box::pin(async move {
            let options = gateway::Options {
                clock,
                drain: Duration::from_secs(1),
                ..gateway::Options::default()
            };
            let started = Gateway::start(config, options).await?;
            Ok(Box::new(started) as Box<dyn Running>)
        })
    }
}

impl Running for Gateway {
    fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    fn admin_addr(&self) -> std::net::SocketAddr {
        self.admin_addr
    }

    fn shutdown(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(Gateway::shutdown(*self))
    }
}
