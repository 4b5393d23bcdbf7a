//! Splitting one shared count or budget into per-core shards, so that threads on different cores
//! write different cache lines: how many shards, which one is a thread's own (its core's), how
//! a total is split among them, and a cache-line-padded cell to keep them apart.
//!
//! A caller tries its own shard first and the others only when its own refuses ("stealing"):
//! the totals stay exact, and two cores share a line only when a shard runs dry.

use std::cell::Cell;
use std::ops::Deref;
use std::sync::OnceLock;

/// No more shards than this, however many cores: each one costs a line per sharded structure.
pub const MAX_SHARDS: usize = 16;

/// The number of shards for structures built now: the cores this process may run on, at most
/// [`MAX_SHARDS`], at least 1. Read once per process.
pub fn count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_SHARDS)
    })
}

/// The core a thread last found itself on is asked again after this many look-ups.
pub const RECHECK_EVERY: u32 = 256;

thread_local! {
    /// This thread's core as last asked, and look-ups left until it is asked again.
    static CPU: Cell<(usize, u32)> = const { Cell::new((0, 0)) };
}

/// The shard of `shards` that belongs to the core this thread runs on (0 when that cannot be
/// known). The core is asked once every [`RECHECK_EVERY`] look-ups and remembered per thread
/// in between; a thread that migrates starts using its new core's shard soon after. Any shard
/// is correct: the home one is only the one nobody else is writing.
#[inline]
pub fn home(shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let cpu = CPU.with(|cell| {
        let (cpu, left) = cell.get();
        if left > 0 {
            cell.set((cpu, left - 1));
            cpu
        } else {
            let cpu = current_cpu();
            cell.set((cpu, RECHECK_EVERY - 1));
            cpu
        }
    });
    // Cores are usually fewer than the shards they index: no division for them.
    if cpu < shards {
        cpu
    } else {
        cpu % shards
    }
}

/// The shards of `n` in the order a caller at `home` tries them: its own, then the next ones,
/// wrapping around.
#[inline]
pub fn from(home: usize, n: usize) -> impl Iterator<Item = usize> {
    (home..n).chain(0..home.min(n))
}

#[cfg(target_os = "linux")]
#[inline]
#[allow(unsafe_code)]
fn current_cpu() -> usize {
    // SAFETY: `sched_getcpu` takes no arguments and touches no memory of ours; it returns the
    // current CPU number or -1 on error. With glibc's restartable sequences it is a load from
    // thread-local storage (no system call).
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).unwrap_or(0)
}

#[cfg(not(target_os = "linux"))]
#[inline]
fn current_cpu() -> usize {
    0
}

/// Shard `k`'s part of `total` split over `shards`: the remainder goes one each to the first
/// shards, so the parts add up to `total` exactly.
#[inline]
pub fn split(total: u64, shards: usize, k: usize) -> u64 {
    let n = shards.max(1) as u64;
    // Shard counts are core counts, nearly always a power of two: shifts, not divisions, on
    // the in-flight limit's path.
    let (whole, rest) = if n.is_power_of_two() {
        (total >> n.trailing_zeros(), total & (n - 1))
    } else {
        (total / n, total % n)
    };
    whole + u64::from((k as u64) < rest)
}

/// A value alone on its cache line (128 bytes: two 64-byte lines, as the adjacent-line
/// prefetcher fetches them in pairs), so writes to one shard never disturb its neighbour.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

impl<T> Deref for Padded<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_add_up_to_the_total() {
        for total in [0, 1, 2, 3, 7, 400, 1_000_001] {
            for shards in 1..=MAX_SHARDS {
                let sum: u64 = (0..shards).map(|k| split(total, shards, k)).sum();
                assert_eq!(sum, total, "{total} over {shards}");
                let (lo, hi) = (split(total, shards, shards - 1), split(total, shards, 0));
                assert!(hi - lo <= 1);
                let n = shards as u64;
                for k in 0..shards {
                    let by_division = total / n + u64::from((k as u64) < total % n);
                    assert_eq!(split(total, shards, k), by_division, "{total} {shards} {k}");
                }
            }
        }
    }

    #[test]
    fn home_is_a_valid_shard() {
        assert!((1..=MAX_SHARDS).contains(&count()));
        for shards in 1..=MAX_SHARDS {
            for _ in 0..2 * RECHECK_EVERY {
                assert!(home(shards) < shards);
            }
            let order: Vec<usize> = from(home(shards), shards).collect();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..shards).collect::<Vec<_>>());
            assert_eq!(order[0], home(shards));
        }
        assert_eq!(std::mem::align_of::<Padded<u8>>(), 128);
    }
}
