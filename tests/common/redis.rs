//! A real `redis-server` on a free loopback port, and a TCP proxy in front of it that can slow
//! or stall the traffic: for the fleet tests. Either works from any runtime, or none.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// How long a starting redis-server may take to answer PING.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A redis-server child process, empty, without persistence; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts redis-server on a free loopback port and waits until it answers PING.
    pub fn start() -> RedisServer {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("billgate-redis-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis temp dir");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
        };
        // The port is free when picked, but another process may take it before redis binds it:
        // then redis exits, and another port is tried.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of five free ports");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILLs the server and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, and starts an empty one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not start again on port {}",
            self.port
        );
    }

    /// Starts redis-server on `self.port`; false when it exited before answering (port taken).
    fn spawn(&mut self) -> bool {
        let mut child = match Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH: install Debian's redis-server package \
                 (apt-get install redis-server; .ci/run does it)"
            ),
            Err(e) => panic!("could not run redis-server: {e}"),
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if answers_as(self.addr(), child.id()) {
                self.child = Some(child);
                return true;
            }
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server on port {} did not answer PING", self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nothing listened on a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// Whether a Redis at `addr` answers PING with PONG.
/// Whether the redis-server answering at `addr` is process `pid`: another test's server may
/// hold the port this one was told to take (picked free a moment before by both), and must
/// not be taken for this one.
fn answers_as(addr: SocketAddr, pid: u32) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"INFO server\r\n").is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while reply.len() < 64 * 1024 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&reply);
        if let Some(at) = text.find("process_id:") {
            let rest = &text[at + "process_id:".len()..];
            if let Some(end) = rest.find("\r\n") {
                return rest[..end].trim().parse::<u32>().ok() == Some(pid);
            }
        }
    }
    false
}

/// A TCP proxy on a free loopback port, forwarding to one target, that can delay or hold back
/// what it forwards. Runs on its own thread and runtime; stops on drop.
pub struct Proxy {
    addr: SocketAddr,
    control: watch::Sender<Control>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone, Copy, Default)]
struct Control {
    delay: Duration,
    stalled: bool,
    stopped: bool,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        listener.set_nonblocking(true).expect("nonblocking proxy");
        let (control, watching) = watch::channel(Control::default());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(serve(listener, target, watching));
            runtime.shutdown_background();
        });
        Proxy {
            addr,
            control,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Every chunk is forwarded this long after it arrived, in both directions.
    pub fn set_delay(&self, delay: Duration) {
        self.control.send_modify(|c| c.delay = delay);
    }

    /// While stalled nothing is forwarded (what arrives is kept); connections stay open.
    pub fn set_stalled(&self, stalled: bool) {
        self.control.send_modify(|c| c.stalled = stalled);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.control.send_modify(|c| c.stopped = true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(listener: TcpListener, target: SocketAddr, control: watch::Receiver<Control>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut stop = control.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let control = control.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(client_read, server_write, control.clone()));
                    tokio::spawn(pump(server_read, client_write, control));
                });
            }
            _ = stop.wait_for(|c| c.stopped) => return,
        }
    }
}

/// Forwards one direction: each chunk is stamped when read, and written once its delay from
/// then has passed and the proxy is not stalled. Reading goes on meanwhile, so delays do not
/// add up.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut control: watch::Receiver<Control>,
) {
    let (chunks, mut queued) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn({
        let mut control = control.clone();
        async move {
            while let Some((read_at, chunk)) = queued.recv().await {
                let delay = control.borrow().delay;
                tokio::time::sleep_until(read_at + delay).await;
                if control.wait_for(|c| !c.stalled || c.stopped).await.is_err() {
                    return;
                }
                if control.borrow().stopped || to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = to.shutdown().await;
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if chunks.send((tokio::time::Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            },
            _ = control.wait_for(|c| c.stopped) => break,
        }
    }
    drop(chunks);
    let _ = writer.await;
}
