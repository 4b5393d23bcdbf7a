//! The in-flight count, one counter per core (see [`crate::shards`]): taking and freeing a slot
//! writes only the taker's own shard while it has room.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::shards::{self, split, Padded};

/// Calls in flight, counted per shard.
#[derive(Debug)]
pub(super) struct InFlight {
    shards: Box<[Padded<AtomicU32>]>,
}

impl InFlight {
    pub fn new(shards: usize) -> Self {
        InFlight {
            shards: (0..shards.max(1))
                .map(|_| Padded(AtomicU32::new(0)))
                .collect(),
        }
    }

    /// Takes a slot if some shard `k` holds fewer than its part of `limit` minus its part of
    /// `reserve`, the caller's own shard first; the shard taken from, or `None` when all are
    /// full. The parts add up to the whole, so no more than `limit − reserve` slots are ever
    /// held by callers with this reserve, and no more than `limit` in all.
    #[inline]
    pub fn try_take(&self, limit: u32, reserve: u32) -> Option<usize> {
        let n = self.shards.len();
        shards::from(shards::home(n), n).find(|&k| {
            let allowed =
                split(u64::from(limit), n, k).saturating_sub(split(u64::from(reserve), n, k));
            let Ok(allowed) = u32::try_from(allowed) else {
                return false;
            };
            self.shards[k]
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                    (held < allowed).then_some(held + 1)
                })
                .is_ok()
        })
    }

    /// Frees a slot taken from `shard`.
    #[inline]
    pub fn release(&self, shard: usize) {
        if let Some(count) = self.shards.get(shard) {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Slots held in all shards.
    pub fn total(&self) -> u32 {
        self.shards
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .fold(0, u32::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_gives_its_part_and_no_more() {
        for n in 1..=4 {
            let flight = InFlight::new(n);
            let taken = std::iter::from_fn(|| flight.try_take(10, 3)).count();
            assert_eq!(taken, 7, "{n} shards");
            assert_eq!(flight.total(), 7);
            assert_eq!(std::iter::from_fn(|| flight.try_take(10, 0)).count(), 3);
            assert!(flight.try_take(10, 0).is_none());
            for k in 0..n {
                flight.release(k);
            }
            assert_eq!(flight.total(), 10 - n as u32);
        }
    }
}
