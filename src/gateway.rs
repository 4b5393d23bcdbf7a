//! A running gateway: partner listener, admin listener and the background work beside them
//! (biller and breaker probes, per-account sweeps, the gauges `/metrics` reads), started
//! together and stopped together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admission::Suspensions;
use crate::breaker::{outcome_of_status, Admission, BreakerState, CallOutcome};
use crate::clock::Clock;
use crate::config::Config;
use crate::control::{Control, ReloadError, Reloaded};
use crate::proxy::{self, BillerPool, Shared};

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
    /// The connections of the gateway's own calls to the biller (breaker probes); partner
    /// requests go out on their worker's pool.
    probes: Arc<BillerPool>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Reads the files the configuration names for TLS (the partner listener's and the
    /// biller's), binds both listeners (port 0 picks a free port) and starts serving.
    ///
    /// # Errors
    /// A file the configuration names cannot be read or used: the error is the located
    /// [`crate::config::ConfigErrors`] (`downcast_ref` finds it). A listener cannot be bound.
    pub async fn start(config: Config, options: Options) -> anyhow::Result<Gateway> {
        let (tls, biller_tls) = crate::biller_tls::load_both(&config)?;
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
            biller_tls,
            options.clock.clone(),
            Suspensions::default(),
        )?);
        shared.set_tls(tls);
        let control = Arc::new(
            Control::new(Arc::clone(&shared), options.config_path.clone())
                .map_err(|e| anyhow::anyhow!(e))?,
        );
        if let Some(fleet) = shared.fleet() {
            fleet.join(&control).await;
            // Built for the instances the heartbeat found alive (the in-flight limit's share).
            shared.rebuild();
        }
        let subscriptions = if shared.snapshot().config.subscriptions.is_some() {
            let config = shared.snapshot_full().config.clone();
            let subscriptions = crate::subscriptions::Subscriptions::open(&config, &shared).await?;
            shared.set_subscriptions(Arc::clone(&subscriptions));
            Some(subscriptions)
        } else {
            None
        };
        let (stop, stopped) = watch::channel(false);
        let probes = BillerPool::for_config(&shared.snapshot().config);
        let workers = proxy::Workers::start(
            &shared,
            shared.snapshot().config.server.worker_count(),
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
            tokio::spawn(probing(
                Arc::clone(&shared),
                Arc::clone(&probes),
                options.probe_every,
                stopped.clone(),
            )),
            tokio::spawn(sweeping(
                Arc::clone(&shared),
                options.sweep_every,
                stopped.clone(),
            )),
        ];
        let mut tasks = tasks;
        if let Some(subscriptions) = subscriptions {
            tasks.extend(crate::subscriptions::start(
                subscriptions,
                &shared,
                &stopped,
            ));
        }
        if let Some(fleet) = shared.fleet() {
            tasks.push(tokio::spawn(
                Arc::clone(fleet).run(Arc::clone(&control), stopped),
            ));
        }
        tracing::info!(%addr, %admin_addr, "billgate listening");
        Ok(Gateway {
            addr,
            admin_addr,
            shared,
            control,
            probes,
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

    /// Probes the biller now, as the background probe does every `probe_every`: true when it
    /// accepted a connection.
    pub async fn probe_biller(&self) -> bool {
        probe_biller(&self.shared).await
    }

    /// Probes the half-open breakers now, as the background probe does.
    pub async fn probe_breakers(&self) {
        probe_breakers(&self.shared, &self.probes).await;
    }

    /// Sweeps idle per-account state now, as the background sweep does every `sweep_every`.
    pub fn sweep(&self) {
        sweep(&self.shared);
    }
}

/// Probes the biller with a TCP connect, and its half-open breakers, every `every` until
/// `shutdown` turns true.
async fn probing(
    shared: Arc<Shared>,
    probes: Arc<BillerPool>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        probe_biller(&shared).await;
        probe_breakers(&shared, &probes).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Sweeps idle per-account state every `every` until `shutdown` turns true.
async fn sweeping(shared: Arc<Shared>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => sweep(&shared),
            _ = shutdown.changed() => return,
        }
    }
}

/// Tries one TCP connection to the biller and records whether it was accepted.
async fn probe_biller(shared: &Shared) -> bool {
    let (target, timeout) = {
        let snapshot = shared.snapshot();
        (
            snapshot.config.biller.url.host_port(),
            snapshot.config.biller.connect_timeout,
        )
    };
    let reachable =
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&target)).await {
            Ok(Ok(_)) => true,
            // The gateway had no socket to try with: that says nothing about the biller.
            Ok(Err(error)) if proxy::is_gateway_exhausted(&error) => {
                return shared.biller_reachable();
            }
            _ => false,
        };
    if reachable != shared.set_biller_reachable(reachable) {
        tracing::info!(biller = %target, reachable, "biller reachability changed");
    }
    reachable
}

/// Sends half-open breakers a probe of the gateway's own (`GET` on the biller's base path):
/// when only scheduled polls are flowing — which are never probes — a breaker would otherwise
/// stay half-open for ever. Any answer below 500 counts as success.
async fn probe_breakers(shared: &Shared, probes: &Arc<BillerPool>) {
    let snapshot = shared.snapshot_full();
    let protection = snapshot.gate.protection();
    for breaker in [&protection.breaker, &protection.payment_breaker] {
        if breaker.state() != BreakerState::HalfOpen {
            continue;
        }
        let Admission::Probe(probe) = breaker.admit(true) else {
            continue;
        };
        let upstream = &snapshot.upstream;
        let path = if upstream.base_path.is_empty() {
            "/".to_owned()
        } else {
            upstream.base_path.clone()
        };
        let Ok(uri) = http::Uri::try_from(path) else {
            continue;
        };
        let mut request = http::Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = uri;
        request
            .headers_mut()
            .insert(http::header::HOST, upstream.host.clone());
        let timeout = snapshot.config.biller.timeout;
        let sent = probes.send(upstream.target(), request, tokio::time::Instant::now());
        let outcome = match tokio::time::timeout(timeout, sent).await {
            Ok(Ok(response)) => outcome_of_status(response.status().as_u16()),
            _ => CallOutcome::Failure,
        };
        tracing::info!(outcome = ?outcome, "gateway probe of a half-open breaker");
        probe.record(outcome);
    }
}

/// Evicts idle per-account state and stale cache bookkeeping; refreshes the account gauges.
fn sweep(shared: &Shared) {
    let snapshot = shared.snapshot();
    snapshot.gate.sweep_accounts();
    shared.cache().sweep();
    for (gate, runtime) in snapshot.gate.partners().iter().zip(&snapshot.partners) {
        if let Some(accounts) = &gate.accounts {
            runtime
                .metrics
                .accounts_tracked
                .set(i64::try_from(accounts.tracked()).unwrap_or(i64::MAX));
            let evicted = accounts.evicted();
            let counted = runtime.metrics.accounts_evicted.get();
            runtime
                .metrics
                .accounts_evicted
                .inc_by(evicted.saturating_sub(counted));
        }
    }
}

/// Copies the breakers', the cache's and the adaptive limit's state into their metrics: the
/// admin listener calls it before each `/metrics`, so the gauges are read, not kept twice.
pub fn refresh_gauges(shared: &Shared) {
    let snapshot = shared.snapshot();
    let metrics = shared.metrics();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    metrics.set_tls_cert_expiry(shared.tls().map(|tls| tls.not_after.saturating_sub(now)));
    let protection = snapshot.gate.protection();
    for (name, breaker) in [
        ("inquiry", &protection.breaker),
        ("payment", &protection.payment_breaker),
    ] {
        metrics
            .breaker_state
            .with_label_values(&[name])
            .set(breaker.state().as_gauge());
        for from in BreakerState::ALL {
            for to in BreakerState::ALL {
                let total = if from == to {
                    0
                } else {
                    breaker.transitions_between(from, to)
                };
                if total > 0 {
                    metrics.breaker_transitions(name, from.as_str(), to.as_str(), total);
                }
            }
        }
    }
    metrics.cache(&shared.cache().stats());
    metrics
        .concurrency_limit
        .set(i64::from(protection.concurrency.limit()));
    // Every call at the biller holds an in-flight slot: the count is read, not kept twice.
    metrics
        .upstream_in_flight
        .set(i64::from(protection.concurrency.in_flight()));
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
