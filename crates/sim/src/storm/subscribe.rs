//! `storm --subscribe`: the poller subscribes to its accounts instead of polling them. Here are
//! what that run needs besides the storm's own: a store and a signing secret in a directory of
//! its own, a webhook receiver on loopback (it answers 204 and counts), and the subscribing
//! itself, through the gateway's API before the phases start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::scenario::{self, POLLER};
use super::StormOptions;

/// Subscriptions made at once.
const AT_ONCE: u32 = 16;

/// The subscribed run's directory, receiver and counts; the directory goes with it.
pub struct Subscribing {
    pub dir: PathBuf,
    pub hooks: SocketAddr,
    /// Webhooks the receiver was sent.
    pub webhooks: Arc<AtomicU64>,
}

impl Subscribing {
    /// A fresh directory with the poller's signing secret, and the receiver started.
    pub async fn start() -> anyhow::Result<Subscribing> {
        let dir = std::env::temp_dir().join(format!(
            "billgate-storm-subscribe-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("poller.whsec"),
            "whsec_c3Rvcm0tcG9sbGVyLXNpZ25pbmctc2VjcmV0\n",
        )?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let hooks = listener.local_addr()?;
        let webhooks = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&webhooks);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<_>| {
                        let counted = Arc::clone(&counted);
                        async move {
                            let _ = BodyExt::collect(request.into_body()).await;
                            counted.fetch_add(1, Ordering::Relaxed);
                            let mut answer = Response::new(Full::new(Bytes::new()));
                            *answer.status_mut() = hyper::StatusCode::NO_CONTENT;
                            Ok::<_, std::convert::Infallible>(answer)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Subscribing {
            dir,
            hooks,
            webhooks,
        })
    }

    /// The gateway configuration of a subscribed run.
    pub fn config(
        &self,
        options: &StormOptions,
        biller_addr: SocketAddr,
    ) -> anyhow::Result<crate::config::Config> {
        let text = scenario::subscribe_toml(
            options,
            scenario::gateway_toml(options, biller_addr),
            &self.dir.join("subscriptions.db"),
            self.hooks,
            &self.dir.join("poller.whsec"),
        );
        crate::config::load_str(&text, "storm.toml").map_err(|errors| {
            anyhow::anyhow!("the generated gateway configuration is invalid:\n{errors}")
        })
    }

    /// The poller subscribes, through the gateway at `gateway`, to each of its accounts: how
    /// many it holds.
    ///
    /// # Errors
    /// A subscription the gateway did not take.
    pub async fn subscribe(
        &self,
        options: &StormOptions,
        gateway: SocketAddr,
    ) -> anyhow::Result<u32> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let key = scenario::key(POLLER);
        let accounts = options.poller_accounts;
        let mut tasks = Vec::new();
        for lane in 0..AT_ONCE {
            let (client, key, hooks) = (client.clone(), key.clone(), self.hooks);
            tasks.push(tokio::spawn(async move {
                let mut made = 0u32;
                for i in (lane..accounts).step_by(AT_ONCE as usize) {
                    let body = format!(
                        "{{\"account\":\"{}\",\"callback\":\"http://{hooks}/poller\"}}",
                        scenario::poller_account(i)
                    );
                    let request = Request::builder()
                        .method(Method::POST)
                        .uri(format!("http://{gateway}/v1/subscriptions"))
                        .header("x-api-key", &key)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)))?;
                    let answer = client.request(request).await?;
                    let status = answer.status();
                    let _ = BodyExt::collect(answer.into_body()).await;
                    if !status.is_success() {
                        anyhow::bail!("the gateway answered {status} to a subscription");
                    }
                    made += 1;
                }
                Ok::<_, anyhow::Error>(made)
            }));
        }
        let mut made = 0;
        for task in tasks {
            made += task.await??;
        }
        Ok(made)
    }
}

impl Drop for Subscribing {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
