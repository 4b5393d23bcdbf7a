//! A running gateway: partner listener, admin listener and the background tasks beside them
//! (biller probe, per-account sweeps), started together and stopped together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admission::Suspensions;
use crate::clock::Clock;
use crate::config::Config;
use crate::control::{Control, ReloadError, Reloaded};
use crate::proxy::{self, Shared};

/// How a gateway runs, beyond its configuration.
#[derive(Clone)]
pub struct Options {
    pub clock: Clock,
    /// The file reloads re-read; `None` when the configuration did not come from a file.
    pub config_path: Option<PathBuf>,
    /// How long open connections may finish after shutdown begins. Default 10s.
    pub drain: Duration,
    /// How often the biller is probed for `/readyz`. Default 1s.
    pub probe_every: Duration,
    /// How often idle per-account state is evicted. Default 5s.
    pub sweep_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Clock::real(),
            config_path: None,
            drain: Duration::from_secs(10),
            probe_every: Duration::from_secs(1),
            sweep_every: Duration::from_secs(5),
        }
    }
}

/// The partners' listener, its accept queue `backlog` long. The standard library and tokio
/// both listen with 128: a reconnect storm of a few hundred partner connections overflows that
/// while the acceptor is busy, and the kernel drops the overflow's handshakes, each retried by
/// its client only a second or more later.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted gateway rebinds at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(backlog)?;
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok();
    if let Some(granted) = capped_backlog(backlog, somaxconn.as_deref()) {
        tracing::warn!(
            listen_backlog = backlog,
            granted,
            "the kernel caps the accept queue at net.core.somaxconn; raise it (sysctl -w net.core.somaxconn={backlog}) to hold a reconnect storm"
        );
    }
    Ok(listener)
}

/// The accept queue Linux grants instead of `backlog`, when `somaxconn` (the text of
/// `/proc/sys/net/core/somaxconn`) caps it.
fn capped_backlog(backlog: u32, somaxconn: Option<&str>) -> Option<u32> {
    let cap: u32 = somaxconn?.trim().parse().ok()?;
    (cap < backlog).then_some(cap)
}

/// A started gateway.
pub struct Gateway {
    /// Where partners connect.
    pub addr: SocketAddr,
    /// Where the admin endpoints answer.
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
    /// Reload, suspend, resume.
    pub control: Arc<Control>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Binds both listeners (port 0 picks a free port) and starts serving.
    pub async fn start(config: Config, options: Options) -> anyhow::Result<Gateway> {
        let listener = listen(config.server.listen, config.server.listen_backlog)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
        let admin = TcpListener::bind(config.server.admin_listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {} (admin): {e}",
                    config.server.admin_listen
                )
            })?;
        let addr = listener.local_addr()?;
        let admin_addr = admin.local_addr()?;
        let shared = Arc::new(Shared::new(
            config,
            options.clock.clone(),
            Suspensions::default(),
        )?);
        let control = Arc::new(
            Control::new(Arc::clone(&shared), options.config_path.clone())
                .map_err(|e| anyhow::anyhow!(e))?,
        );
        let (stop, stopped) = watch::channel(false);
        let workers = proxy::Workers::start(
            &shared,
            shared.snapshot.load().config.server.worker_count(),
            &stopped,
            options.drain,
        )
        .map_err(|e| anyhow::anyhow!("cannot start the worker threads: {e}"))?;
        let tasks = vec![
            tokio::spawn(proxy::serve(workers, listener, stopped.clone())),
            tokio::spawn(crate::admin::serve(
                Arc::clone(&control),
                admin,
                stopped.clone(),
            )),
            tokio::spawn(proxy::probe_biller(
                Arc::clone(&shared),
                options.probe_every,
                stopped.clone(),
            )),
            tokio::spawn(proxy::sweep_accounts(
                Arc::clone(&shared),
                options.sweep_every,
                stopped,
            )),
        ];
        tracing::info!(%addr, %admin_addr, "billgate listening");
        Ok(Gateway {
            addr,
            admin_addr,
            shared,
            control,
            stop,
            tasks,
        })
    }

    /// Re-reads the configuration file and swaps it in if it is valid in full and within the
    /// guardrails (or `force`); otherwise the running configuration stays.
    pub async fn reload(&self, force: bool) -> Result<Reloaded, ReloadError> {
        self.control.reload(force).await
    }

    /// Stops accepting, lets open requests finish (up to the drain time) and stops every task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::capped_backlog;

    #[test]
    fn somaxconn_below_the_backlog_caps_it() {
        assert_eq!(capped_backlog(4096, Some("128\n")), Some(128));
        assert_eq!(capped_backlog(4096, Some("4096\n")), None);
        assert_eq!(capped_backlog(1000, Some("4096")), None);
        // Not Linux, or not readable: nothing to say.
        assert_eq!(capped_backlog(4096, None), None);
        assert_eq!(capped_backlog(4096, Some("many")), None);
    }
}
