//! One shard's slots: open addressing with linear probing over compact slots, each the
//! account's 64-bit keyed hash and its GCRA theoretical arrival time (16 bytes, atomics).
//!
//! A slot's key never changes once written, so a reader that finds its key knows the arrival
//! time beside it is that account's, and spends it by compare-and-swap without any lock.
//! Everything else — inserting, growing, evicting — happens under the shard's lock: inserts
//! fill an empty slot (time first, then key), and growing or evicting builds a new array and
//! publishes it, after freezing every slot of the old one so that a reader still holding the
//! old array fails its compare-and-swap and retries under the lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// Set in an arrival time whose slot has been copied away: the time is read-only there.
pub(super) const FROZEN: u64 = 1 << 63;

const MIN_SLOTS: usize = 4;

/// A slot: `key == 0` is empty (keys are never 0, see [`Slots::key_of`]).
#[derive(Default)]
pub(super) struct Slot {
    key: AtomicU64,
    /// The arrival time; [`FROZEN`] set once the slot was copied into a newer array.
    pub tat: AtomicU64,
}

/// A shard's array of slots; its length is zero or a power of two, at most ¾ full. Arrays of
/// up to [`INLINE`] slots live inside the shard's `Arc` itself, so a shard of a few accounts
/// (most shards of a partner with few accounts) costs one pointer hop fewer.
pub(super) enum Slots {
    Inline([Slot; INLINE]),
    Boxed(Box<[Slot]>),
}

/// The most slots kept inline.
const INLINE: usize = 4;

impl Default for Slots {
    fn default() -> Self {
        Slots::Boxed(Box::default())
    }
}

impl Slots {
    /// An empty array of `size` slots (a power of two).
    fn with_size(size: usize) -> Slots {
        if size == INLINE {
            Slots::Inline(Default::default())
        } else {
            Slots::Boxed((0..size).map(|_| Slot::default()).collect())
        }
    }

    #[inline]
    fn all(&self) -> &[Slot] {
        match self {
            Slots::Inline(slots) => slots,
            Slots::Boxed(slots) => slots,
        }
    }

    /// The key a hash is stored under: 0 marks an empty slot, so a hash of 0 becomes 1.
    #[inline]
    pub fn key_of(hash: u64) -> u64 {
        hash.max(1)
    }

    /// Slots allocated.
    pub fn capacity(&self) -> usize {
        self.all().len()
    }

    #[inline]
    fn mask(&self) -> usize {
        self.all().len().wrapping_sub(1)
    }

    /// The slot holding `key`, if any. Lock-free; may miss a key being inserted this instant.
    #[inline]
    pub fn find(&self, key: u64) -> Option<&Slot> {
        let mask = self.mask();
        let mut i = key as usize & mask;
        // The array is never full, so the probe ends at the key or an empty slot.
        for _ in 0..self.all().len() {
            let slot = self.all().get(i)?;
            let seen = slot.key.load(Ordering::Acquire);
            if seen == key {
                return Some(slot);
            }
            if seen == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Whether `len + 1` accounts fit without passing ¾ full.
    pub fn has_room(&self, len: usize) -> bool {
        (len + 1) * 4 <= self.all().len() * 3
    }

    /// Puts `key` (not present) with arrival time `tat` in an empty slot. Only under the lock.
    pub fn insert(&self, key: u64, tat: u64) {
        let mask = self.mask();
        let mut i = key as usize & mask;
        for _ in 0..self.all().len() {
            let Some(slot) = self.all().get(i) else {
                return;
            };
            if slot.key.load(Ordering::Relaxed) == 0 {
                slot.tat.store(tat, Ordering::Relaxed);
                // Publishes the time with the key: a reader seeing the key sees the time.
                slot.key.store(key, Ordering::Release);
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// How many accounts have an arrival time above `drop_below` (a lower bound while
    /// readers run: they only ever move times forward).
    pub fn count_above(&self, drop_below: u64) -> usize {
        self.all()
            .iter()
            .filter(|s| {
                s.key.load(Ordering::Relaxed) != 0
                    && s.tat.load(Ordering::Acquire) & !FROZEN > drop_below
            })
            .count()
    }

    /// Freezes every slot and copies the accounts whose time is above `drop_below` into a new
    /// array of `slots` slots (grown to fit them if need be). Only under the lock. Returns the
    /// new array and how many accounts it holds.
    pub fn rebuild(&self, slots: usize, drop_below: Option<u64>) -> (Slots, usize) {
        let mut kept = Vec::with_capacity(self.all().len());
        for slot in self.all().iter() {
            let key = slot.key.load(Ordering::Relaxed);
            if key == 0 {
                continue;
            }
            // From here on, readers' compare-and-swaps on this slot fail: the time is final.
            let tat = slot.tat.fetch_or(FROZEN, Ordering::AcqRel) & !FROZEN;
            if drop_below.is_none_or(|limit| tat > limit) {
                kept.push((key, tat));
            }
        }
        let mut size = slots.max(MIN_SLOTS);
        while kept.len() * 4 > size * 3 {
            size *= 2;
        }
        let fresh = Slots::with_size(size);
        for &(key, tat) in &kept {
            fresh.insert(key, tat);
        }
        (fresh, kept.len())
    }
}

/// The size a table holding `len` accounts shrinks to after a sweep, if it should.
pub(super) fn shrunk(capacity: usize, len: usize) -> usize {
    if capacity > MIN_SLOTS && len * 8 < capacity {
        (len * 2).next_power_of_two().max(MIN_SLOTS)
    } else {
        capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys whose home is `home` in an array of `slots` slots.
    fn key(home: u64, n: u64, slots: u64) -> u64 {
        home + (n + 1) * slots
    }

    #[test]
    fn finds_what_it_holds_through_collisions_and_rebuilds() {
        let mut slots = Slots::default();
        let keys: Vec<u64> = (0..40).map(|n| key(7, n, 8)).collect();
        for (n, &k) in keys.iter().enumerate() {
            assert!(slots.find(k).is_none());
            if !slots.has_room(n) {
                slots = slots.rebuild(slots.capacity() * 2, None).0;
            }
            slots.insert(k, n as u64 + 100);
        }
        assert_eq!(slots.capacity(), 64);
        for (n, &k) in keys.iter().enumerate() {
            let tat = slots.find(k).map(|s| s.tat.load(Ordering::Relaxed));
            assert_eq!(tat, Some(n as u64 + 100));
        }
        // Times 100..=119 go; the old array is frozen, the new one is not.
        let (fresh, kept) = slots.rebuild(64, Some(119));
        assert_eq!(kept, 20);
        let frozen = slots.find(keys[0]).unwrap().tat.load(Ordering::Relaxed);
        assert_eq!(frozen, FROZEN | 100);
        for (n, &k) in keys.iter().enumerate() {
            let tat = fresh.find(k).map(|s| s.tat.load(Ordering::Relaxed));
            assert_eq!(tat, (n >= 20).then_some(n as u64 + 100), "key {n}");
        }
        assert_eq!((fresh.count_above(119), fresh.count_above(120)), (20, 19));
        assert_eq!(shrunk(64, 20), 64);
        assert_eq!(shrunk(64, 7), 16);
        assert_eq!((shrunk(8, 0), shrunk(4, 0)), (4, 4));
    }
}
