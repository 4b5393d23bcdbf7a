//! The process's open-file limit. Every partner connection and every connection to the biller
//! is a file descriptor, and the soft limit a service starts with is often 1 024 (systemd's
//! default `LimitNOFILE=1024:524288`), which a reconnect storm of a thousand partner
//! connections exhausts: accepts then fail, new biller connections fail, and partners wait in
//! the accept queue. The soft limit may be raised up to the hard one without privileges, so
//! `serve` does that at start, as the Go runtime does for every Go program.

/// The open-file limits, before and after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit: the most the soft limit may be raised to.
    pub hard: u64,
}

/// Below this many file descriptors, `serve` warns that connections are capped.
pub const FEW_OPEN_FILES: u64 = 4096;

/// Raises the soft open-file limit to the hard limit.
#[cfg(unix)]
pub fn raise_open_files() -> std::io::Result<OpenFiles> {
    let (before, hard) = get()?;
    if before >= hard {
        return Ok(OpenFiles {
            before,
            soft: before,
            hard,
        });
    }
    set(hard, hard)?;
    let (soft, hard) = get()?;
    Ok(OpenFiles { before, soft, hard })
}

/// Raises the soft open-file limit to the hard limit (nothing to raise here).
#[cfg(not(unix))]
pub fn raise_open_files() -> std::io::Result<OpenFiles> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// The soft and hard `RLIMIT_NOFILE`.
#[cfg(unix)]
#[allow(unsafe_code)]
fn get() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` through the pointer, which points at a live,
    // writable `rlimit` of ours for the whole call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Sets the soft and hard `RLIMIT_NOFILE`.
#[cfg(unix)]
#[allow(unsafe_code)]
fn set(soft: u64, hard: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `setrlimit` only reads one `rlimit` through the pointer, which points at a live
    // `rlimit` of ours for the whole call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let raised = raise_open_files().unwrap();
        assert_eq!(raised.soft, raised.hard);
        assert!(raised.before <= raised.soft);
        assert_eq!(get().unwrap(), (raised.hard, raised.hard));
        // Raising again changes nothing.
        let again = raise_open_files().unwrap();
        assert_eq!(
            again,
            OpenFiles {
                before: raised.hard,
                soft: raised.hard,
                hard: raised.hard
            }
        );
    }
}
