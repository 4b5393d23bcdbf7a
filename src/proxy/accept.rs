//! Accepting connections on a listener that may fail to: out of file descriptors (`EMFILE`),
//! the system's file table full, no kernel memory. A failed accept is retried after a short
//! back-off, never at once (that would spin a core while nothing can change), and a run of
//! failures is logged twice — when it begins, and when accepting works again, with the count —
//! not once per retry.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// How long a listener waits after a failed accept before it tries again.
pub const BACK_OFF: Duration = Duration::from_millis(50);

/// A listener, and the run of failed accepts it is in, if any.
pub struct Acceptor {
    listener: TcpListener,
    /// What the log calls it: "partner" or "admin".
    name: &'static str,
    failures: Failures,
}

impl Acceptor {
    pub fn new(listener: TcpListener, name: &'static str) -> Acceptor {
        Acceptor {
            listener,
            name,
            failures: Failures::default(),
        }
    }

    /// The next connection. Failed accepts are retried after [`BACK_OFF`]. Cancel-safe, as
    /// [`TcpListener::accept`] is.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    if let Some((failed, over)) = self.failures.succeeded() {
                        tracing::info!(
                            listener = self.name,
                            failed,
                            after_ms = crate::logging::ms(over),
                            "accepting connections again"
                        );
                    }
                    return accepted;
                }
                Err(error) => {
                    if self.failures.failed() {
                        tracing::warn!(
                            listener = self.name,
                            %error,
                            "cannot accept connections; retrying every 50 ms, and saying so again once it can"
                        );
                    }
                    tokio::time::sleep(BACK_OFF).await;
                }
            }
        }
    }
}

/// A run of failed accepts: when it began and how many it counts.
#[derive(Debug, Default)]
struct Failures {
    since: Option<Instant>,
    count: u64,
}

impl Failures {
    /// Counts a failure; true for the first of a run, the one to log.
    fn failed(&mut self) -> bool {
        self.count += 1;
        let first = self.since.is_none();
        self.since.get_or_insert_with(Instant::now);
        first
    }

    /// Ends the run, if there is one: how many accepts failed, over how long.
    fn succeeded(&mut self) -> Option<(u64, Duration)> {
        let since = self.since.take()?;
        Some((std::mem::take(&mut self.count), since.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::Failures;

    #[test]
    fn a_run_of_failures_is_told_once_at_its_start_and_counted_at_its_end() {
        let mut failures = Failures::default();
        assert_eq!(failures.succeeded(), None, "no run, nothing to tell");
        assert!(failures.failed());
        assert!(!failures.failed());
        assert!(!failures.failed());
        assert_eq!(failures.succeeded().map(|(n, _)| n), Some(3));
        assert_eq!(failures.succeeded(), None, "the run is over");
        // A new run starts afresh.
        assert!(failures.failed());
        assert_eq!(failures.succeeded().map(|(n, _)| n), Some(1));
    }
}
