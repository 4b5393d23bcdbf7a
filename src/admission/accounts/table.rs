//! One shard of the per-account table: open addressing with linear probing over compact slots,
//! each the account's 64-bit keyed hash and its GCRA theoretical arrival time (16 bytes).
//!
//! The shard is only touched under its lock, so slots are plain integers. It grows by doubling
//! once three quarters full (so a lookup always meets an empty slot), deletes by shifting the
//! rest of a cluster back (no tombstones, so probes stay short after sweeps), and shrinks when a
//! sweep leaves it less than an eighth full.

/// A slot: `key == 0` is empty (keys are never 0, see [`Table::key_of`]).
#[derive(Clone, Copy, Default)]
pub(super) struct Slot {
    key: u64,
    tat: u64,
}

/// The slots of one shard; the length of `slots` is zero or a power of two.
#[derive(Default)]
pub(super) struct Table {
    slots: Vec<Slot>,
    len: usize,
}

const MIN_SLOTS: usize = 8;

impl Table {
    /// The key a hash is stored under: 0 marks an empty slot, so a hash of 0 becomes 1.
    #[inline]
    pub fn key_of(hash: u64) -> u64 {
        hash.max(1)
    }

    /// Accounts in this shard.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Slots allocated (for memory accounting in tests).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// The theoretical arrival time of `key`, if tracked.
    #[inline]
    pub fn tat_mut(&mut self, key: u64) -> Option<&mut u64> {
        let mask = self.mask();
        let mut i = key as usize & mask;
        // The table is never full, so the probe ends at the key or an empty slot.
        for _ in 0..self.slots.len() {
            let slot = self.slots.get(i)?;
            if slot.key == key {
                return self.slots.get_mut(i).map(|s| &mut s.tat);
            }
            if slot.key == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Tracks `key` (which must not be tracked yet) with arrival time `tat`. Grows the table
    /// first if it would be more than three quarters full: the only allocation, amortised.
    pub fn insert(&mut self, key: u64, tat: u64) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.resize((self.slots.len() * 2).max(MIN_SLOTS));
        }
        self.place(Slot { key, tat });
        self.len += 1;
    }

    fn place(&mut self, slot: Slot) {
        let mask = self.mask();
        let mut i = slot.key as usize & mask;
        for _ in 0..self.slots.len() {
            match self.slots.get_mut(i) {
                Some(free) if free.key == 0 => {
                    *free = slot;
                    return;
                }
                Some(_) => i = (i + 1) & mask,
                None => return,
            }
        }
    }

    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); slots]);
        for slot in old.into_iter().filter(|s| s.key != 0) {
            self.place(slot);
        }
    }

    /// Removes every account whose arrival time is not above `drop_below`; returns how many.
    pub fn retain_above(&mut self, drop_below: u64) -> usize {
        let mut removed = 0;
        let mut i = 0;
        while i < self.slots.len() {
            match self.slots.get(i) {
                Some(slot) if slot.key != 0 && slot.tat <= drop_below => {
                    // The shift may bring a later entry into `i`: look at `i` again.
                    self.remove_at(i);
                    removed += 1;
                }
                _ => i += 1,
            }
        }
        self.len -= removed;
        if self.slots.len() > MIN_SLOTS && self.len * 8 < self.slots.len() {
            self.resize((self.len * 2).next_power_of_two().max(MIN_SLOTS));
        }
        removed
    }

    /// Empties slot `hole` and shifts back the entries of its cluster that may move into it.
    fn remove_at(&mut self, mut hole: usize) {
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let Some(&next) = self.slots.get(j) else {
                return;
            };
            if next.key == 0 || j == hole {
                break;
            }
            let home = next.key as usize & mask;
            // `next` may fill the hole if the hole lies on its probe path, from home to j.
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                if let Some(slot) = self.slots.get_mut(hole) {
                    *slot = next;
                }
                hole = j;
            }
        }
        if let Some(slot) = self.slots.get_mut(hole) {
            *slot = Slot::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys whose home is `home` in a table of `slots` slots.
    fn key(home: u64, n: u64, slots: u64) -> u64 {
        home + (n + 1) * slots
    }

    #[test]
    fn finds_what_it_holds_through_collisions_growth_and_removal() {
        let mut t = Table::default();
        // Many keys on one home slot force long clusters, wrap-around and regrowth.
        let keys: Vec<u64> = (0..40).map(|n| key(7, n, 8)).collect();
        for (n, &k) in keys.iter().enumerate() {
            assert!(t.tat_mut(k).is_none());
            t.insert(k, n as u64 + 100);
        }
        assert_eq!(t.len(), 40);
        assert!(t.capacity() >= 64);
        for (n, &k) in keys.iter().enumerate() {
            assert_eq!(t.tat_mut(k).copied(), Some(n as u64 + 100));
        }
        // Drop every other one (arrival times 100, 102, …), then all are still where found.
        for (n, &k) in keys.iter().enumerate() {
            *t.tat_mut(k).unwrap() = if n % 2 == 0 { 1 } else { 1_000 };
        }
        assert_eq!(t.retain_above(1), 20);
        for (n, &k) in keys.iter().enumerate() {
            assert_eq!(t.tat_mut(k).is_some(), n % 2 == 1, "key {n}");
        }
        assert_eq!(t.retain_above(1_000), 20);
        assert_eq!((t.len(), t.capacity()), (0, MIN_SLOTS));
    }

    #[test]
    fn removal_keeps_clusters_that_wrap_around_the_end() {
        let mut t = Table::default();
        t.insert(key(6, 0, 8), 5);
        t.insert(key(6, 1, 8), 50);
        t.insert(key(7, 0, 8), 5);
        t.insert(key(6, 2, 8), 50);
        t.insert(key(0, 0, 8), 50);
        assert_eq!(t.capacity(), 8);
        assert_eq!(t.retain_above(5), 2);
        for k in [key(6, 1, 8), key(6, 2, 8), key(0, 0, 8)] {
            assert_eq!(t.tat_mut(k).copied(), Some(50));
        }
        assert!(t.tat_mut(key(6, 0, 8)).is_none());
    }
}
