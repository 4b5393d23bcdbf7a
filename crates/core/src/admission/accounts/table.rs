//! One shard's slots: open addressing with linear probing over compact slots, each an
//! account's 64-bit keyed hash and its GCRA theoretical arrival time (16 bytes, atomics), with
//! the tag of the partner that owns it in a parallel array (read only by writers and sweeps).
//!
//! A slot's key never changes once written, so a reader that finds its key knows the arrival
//! time beside it is that account's, and spends it by compare-and-swap without any lock.
//! Everything else — inserting, growing, evicting — happens under the shard's lock: inserts
//! fill an empty slot (owner and time first, then key), and growing or evicting builds a new
//! array and publishes it, after freezing every slot of the old one so that a reader still
//! holding the old array fails its compare-and-swap and retries under the lock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

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

/// An account as a rebuild sees it: key, owner's tag, arrival time (unfrozen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub key: u64,
    pub owner: u32,
    pub tat: u64,
}

/// A shard's array of slots; its length is zero or a power of two, at most ¾ full.
#[derive(Default)]
pub(super) struct Slots {
    slots: Box<[Slot]>,
    /// `owners[i]` is the tag of the partner whose account `slots[i]` holds.
    owners: Box<[AtomicU32]>,
}

impl Slots {
    /// An empty array of `size` slots (a power of two).
    fn with_size(size: usize) -> Slots {
        Slots {
            slots: (0..size).map(|_| Slot::default()).collect(),
            owners: (0..size).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// The key a hash is stored under: 0 marks an empty slot, so a hash of 0 becomes 1.
    #[inline]
    pub fn key_of(hash: u64) -> u64 {
        hash.max(1)
    }

    /// Slots allocated.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// Where the slots are, and the mask a key's home is found with: for prefetching.
    pub fn lines(&self) -> (usize, usize) {
        (crate::memory::address_of(&*self.slots), self.mask())
    }

    /// The slot holding `key`, if any. Lock-free; may miss a key being inserted this instant.
    #[inline]
    pub fn find(&self, key: u64) -> Option<&Slot> {
        let mask = self.mask();
        let mut i = key as usize & mask;
        // The array is never full, so the probe ends at the key or an empty slot.
        for _ in 0..self.slots.len() {
            let slot = self.slots.get(i)?;
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
        (len + 1) * 4 <= self.slots.len() * 3
    }

    /// Puts `entry` (its key not present) in an empty slot. Only under the lock.
    pub fn insert(&self, entry: Entry) {
        let mask = self.mask();
        let mut i = entry.key as usize & mask;
        for _ in 0..self.slots.len() {
            let (Some(slot), Some(owner)) = (self.slots.get(i), self.owners.get(i)) else {
                return;
            };
            if slot.key.load(Ordering::Relaxed) == 0 {
                owner.store(entry.owner, Ordering::Relaxed);
                slot.tat.store(entry.tat, Ordering::Relaxed);
                // Publishes the time with the key: a reader seeing the key sees the time.
                slot.key.store(entry.key, Ordering::Release);
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// Every account held, as of now (times only ever move forward while readers run).
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.slots
            .iter()
            .zip(self.owners.iter())
            .filter_map(|(slot, owner)| {
                let key = slot.key.load(Ordering::Relaxed);
                (key != 0).then(|| Entry {
                    key,
                    owner: owner.load(Ordering::Relaxed),
                    tat: slot.tat.load(Ordering::Acquire) & !FROZEN,
                })
            })
    }

    /// Freezes every slot and copies the accounts `keep` says stay into a new array of `slots`
    /// slots (grown to fit them if need be). Only under the lock. Returns the new array and how
    /// many accounts it holds; `dropped` hears of every account left behind.
    pub fn rebuild(
        &self,
        slots: usize,
        keep: impl Fn(&Entry) -> bool,
        mut dropped: impl FnMut(&Entry),
    ) -> (Slots, usize) {
        let mut kept = Vec::with_capacity(self.slots.len());
        for (slot, owner) in self.slots.iter().zip(self.owners.iter()) {
            let key = slot.key.load(Ordering::Relaxed);
            if key == 0 {
                continue;
            }
            // From here on, readers' compare-and-swaps on this slot fail: the time is final.
            let tat = slot.tat.fetch_or(FROZEN, Ordering::AcqRel) & !FROZEN;
            let entry = Entry {
                key,
                owner: owner.load(Ordering::Relaxed),
                tat,
            };
            if keep(&entry) {
                kept.push(entry);
            } else {
                dropped(&entry);
            }
        }
        let mut size = slots.max(MIN_SLOTS);
        while kept.len() * 4 > size * 3 {
            size *= 2;
        }
        let fresh = Slots::with_size(size);
        for &entry in &kept {
            fresh.insert(entry);
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
                slots = slots.rebuild(slots.capacity() * 2, |_| true, |_| {}).0;
            }
            slots.insert(Entry {
                key: k,
                owner: n as u32 % 3,
                tat: n as u64 + 100,
            });
        }
        assert_eq!(slots.capacity(), 64);
        for (n, &k) in keys.iter().enumerate() {
            let tat = slots.find(k).map(|s| s.tat.load(Ordering::Relaxed));
            assert_eq!(tat, Some(n as u64 + 100));
        }
        // Times 100..=119 go, and so does every account of owner 2; the old array is frozen,
        // the new one is not.
        let mut gone = Vec::new();
        let (fresh, kept) =
            slots.rebuild(64, |e| e.tat > 119 && e.owner != 2, |e| gone.push(e.key));
        let stays = |n: usize| n >= 20 && n % 3 != 2;
        assert_eq!(kept, (0..40).filter(|&n| stays(n)).count());
        assert_eq!(gone.len(), 40 - kept);
        let frozen = slots.find(keys[0]).unwrap().tat.load(Ordering::Relaxed);
        assert_eq!(frozen, FROZEN | 100);
        for (n, &k) in keys.iter().enumerate() {
            let tat = fresh.find(k).map(|s| s.tat.load(Ordering::Relaxed));
            assert_eq!(tat, stays(n).then_some(n as u64 + 100), "key {n}");
            assert_eq!(gone.contains(&k), !stays(n), "key {n}");
        }
        let mut owners: Vec<u32> = fresh.entries().map(|e| e.owner).collect();
        owners.sort_unstable();
        owners.dedup();
        assert_eq!(owners, [0, 1]);
        assert_eq!(shrunk(64, 20), 64);
        assert_eq!(shrunk(64, 7), 16);
        assert_eq!((shrunk(8, 0), shrunk(4, 0)), (4, 4));
    }
}
