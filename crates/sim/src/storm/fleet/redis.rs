//! The Redis a storm's fleet shares: the one `--redis` names, or a `redis-server` from `PATH`
//! started for the run on a free loopback port, in a temporary directory, without persistence,
//! and killed at the end.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a started `redis-server` may take to answer PING.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// Free ports tried: another process may take the one picked before redis-server binds it.
const PORT_TRIES: usize = 5;

/// The schemes the gateway's `[fleet] redis` accepts.
const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];

/// Why `url` cannot be written into the gateways' `[fleet] redis`, if it cannot.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let scheme_ok = SCHEMES.iter().any(|s| url.starts_with(s));
    let rest_ok = url.len() > url.find("//").unwrap_or(0) + 2;
    if !scheme_ok || !rest_ok {
        return Err(format!(
            "expected a Redis URL like redis://127.0.0.1:6379/0, found {url:?}"
        ));
    }
    if url.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err("the URL may not hold quotes, backslashes or control characters".into());
    }
    Ok(())
}

/// `url` with any password replaced by `***`, for the report.
pub fn redacted(url: &str) -> String {
    let Some(after) = url.find("//").map(|i| i + 2) else {
        return url.to_owned();
    };
    let authority_end = url[after..].find('/').map_or(url.len(), |i| after + i);
    match url[after..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &url[after..after + at];
            let user = userinfo.split_once(':').map_or("", |(user, _)| user);
            if userinfo.contains(':') {
                format!("{}{user}:***{}", &url[..after], &url[after + at..])
            } else {
                format!("{}***{}", &url[..after], &url[after + at..])
            }
        }
        None => url.to_owned(),
    }
}

/// The fleet's Redis for one run.
pub(crate) struct FleetRedis {
    url: String,
    started: Option<Started>,
}

impl FleetRedis {
    /// The Redis `url` names, or when `None` a `redis-server` started now.
    ///
    /// # Errors
    /// `redis-server` is not on `PATH`, cannot run, or does not answer on any of a few ports.
    pub(crate) async fn for_run(url: Option<&str>) -> anyhow::Result<FleetRedis> {
        match url {
            Some(url) => Ok(FleetRedis {
                url: url.to_owned(),
                started: None,
            }),
            None => {
                let started = Started::start().await?;
                Ok(FleetRedis {
                    url: format!("redis://127.0.0.1:{}/0", started.port),
                    started: Some(started),
                })
            }
        }
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Whether it was started for this run.
    pub(crate) fn started(&self) -> bool {
        self.started.is_some()
    }

    /// Stops a `redis-server` started for the run (and removes its directory); a Redis named
    /// by `--redis` is left as it is.
    pub(crate) fn stop(self) {
        drop(self.started);
    }
}

/// A `redis-server` child process; killed, and its directory removed, on drop.
struct Started {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Started {
    async fn start() -> anyhow::Result<Started> {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("billgate-storm-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("storm: cannot make {}: {e}", dir.display()))?;
        for _ in 0..PORT_TRIES {
            match try_port(&dir).await {
                Ok(Some((child, port))) => return Ok(Started { child, port, dir }),
                Ok(None) => continue,
                Err(error) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(error);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        anyhow::bail!("storm: redis-server exited at once on {PORT_TRIES} free loopback ports")
    }
}

/// A `redis-server` on a free port, answering; `None` if it exited at once (the port was
/// taken meanwhile).
async fn try_port(dir: &std::path::Path) -> anyhow::Result<Option<(Child, u16)>> {
    let port = free_port()?;
    let mut child = spawn(REDIS_SERVER, port, dir)?;
    match answers(&mut child, port).await {
        Ok(true) => Ok(Some((child, port))),
        Ok(false) => Ok(None),
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(error)
        }
    }
}

/// Waits until the `redis-server` on `port` answers PING: true, or false if it exited first.
async fn answers(child: &mut Child, port: u16) -> anyhow::Result<bool> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if ping(port).await {
            return Ok(true);
        }
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(false);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "storm: the redis-server started on 127.0.0.1:{port} did not answer PING within {START_DEADLINE:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The program started, looked up on `PATH`.
const REDIS_SERVER: &str = "redis-server";

fn spawn(program: &str, port: u16, dir: &std::path::Path) -> anyhow::Result<Child> {
    Command::new(program)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "storm: --instances needs a Redis: {program} is not on PATH; install Debian's \
                 redis-server package (apt-get install redis-server) or name a running Redis \
                 with --redis redis://HOST:PORT/DB"
            ),
            _ => anyhow::anyhow!("storm: cannot run {program}: {e}"),
        })
}

/// A loopback port nothing listened on a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Whether a Redis on loopback `port` answers PING with PONG.
async fn ping(port: u16) -> bool {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await.ok()?;
        Some(&reply == b"+PONG\r\n")
    };
    tokio::time::timeout(Duration::from_millis(500), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_the_gateway_would_refuse_are_refused_here() {
        assert!(check_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_url("rediss://cache.internal/1").is_ok());
        assert!(check_url("http://127.0.0.1:6379").is_err());
        assert!(check_url("redis://").is_err());
        assert!(check_url("redis://a\"b/0").is_err());
    }

    #[test]
    fn a_missing_redis_server_names_the_package_to_install() {
        let dir = std::env::temp_dir();
        let error = spawn("redis-server-not-installed-here", 1, &dir)
            .unwrap_err()
            .to_string();
        assert!(error.contains("is not on PATH"), "{error}");
        assert!(error.contains("Debian's redis-server package"), "{error}");
        assert!(error.contains("--redis"), "{error}");
    }

    #[test]
    fn passwords_never_reach_the_report() {
        assert_eq!(redacted("redis://127.0.0.1:1/0"), "redis://127.0.0.1:1/0");
        assert_eq!(
            redacted("redis://user:secret@host:1/0"),
            "redis://user:***@host:1/0"
        );
        assert_eq!(redacted("redis://secret@host/0"), "redis://***@host/0");
        assert_eq!(redacted("unix:///run/redis.sock"), "unix:///run/redis.sock");
    }
}
