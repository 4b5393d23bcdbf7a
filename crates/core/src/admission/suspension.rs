//! Suspended partners: a partner the operators cut off gets 403 with their reason at once.
//! Suspensions are runtime state, kept apart from the configuration so they survive reloads.
//! Each partner has one such cell of runtime state, on one cache line that every decision for
//! the partner reads: its suspension flag, the pause the biller may ask for naming it, and the
//! arrival times of its one-cell class quotas (see [`crate::admission::Quota`]). A decision
//! refused at a partner's quota so reads the quota's arrival time on the same line as the
//! suspension flag, and every snapshot a reload builds shares it.
//!
//! Cells are kept in chunks of [`CHUNK`] that never move, each partner id at a slot of its own
//! for the life of the process: a cell's address follows from its slot and its chunk's
//! address, so a decision can ask for the cell as soon as the key's hint gives the slot,
//! without first reading a pointer to it.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;

use super::biller::Pause;
use crate::config::Class;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

/// Why and since when a partner is suspended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    pub reason: String,
    /// Seconds since the Unix epoch.
    pub since_unix: u64,
}

/// One partner's runtime state: its suspension, read on every request with one atomic load,
/// the pause the biller asked for naming it, and its one-cell quotas' arrival times. Alone on
/// its cache line.
#[derive(Default)]
#[repr(align(64))]
pub struct PartnerCell {
    suspended: AtomicBool,
    pause: Pause,
    /// Per class (by [`Class::index`]): the arrival time of the partner's quota for it, when
    /// that quota is one cell.
    arrivals: [AtomicU64; 3],
    detail: ArcSwapOption<Suspension>,
}

impl PartnerCell {
    /// The arrival time the partner's one-cell quota for `class` spends.
    #[inline]
    pub fn arrival(&self, class: Class) -> &AtomicU64 {
        &self.arrivals[class.index()]
    }

    /// Starts the partner's quota for `class` afresh: a reload gave it a new rate, or the
    /// partner is new.
    pub fn restart(&self, class: Class) {
        self.arrival(class).store(0, Ordering::Release);
    }

    #[inline]
    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::Acquire)
    }

    pub fn get(&self) -> Option<Arc<Suspension>> {
        self.detail.load_full()
    }

    /// The pause the biller asked for, naming this partner.
    #[inline]
    pub fn pause(&self) -> &Pause {
        &self.pause
    }

    fn set(&self, suspension: Option<Suspension>) {
        let on = suspension.is_some();
        self.detail.store(suspension.map(Arc::new));
        self.suspended.store(on, Ordering::Release);
    }
}

/// Cells in a chunk of the registry.
pub const CHUNK: usize = 1024;

/// A partner's cell in the registry, and its slot there (chunk × [`CHUNK`] + place).
#[derive(Clone)]
pub struct CellRef {
    chunk: Arc<Chunk>,
    slot: u32,
}

/// [`CHUNK`] cells, allocated together.
type Chunk = [PartnerCell; CHUNK];

fn new_chunk() -> Arc<Chunk> {
    let cells: Arc<[PartnerCell]> = (0..CHUNK).map(|_| PartnerCell::default()).collect();
    // The length is CHUNK by construction; the fallback is never taken.
    cells
        .try_into()
        .unwrap_or_else(|_| Arc::new(std::array::from_fn(|_| PartnerCell::default())))
}

impl CellRef {
    /// Where the cell is kept for the life of the process.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

impl Deref for CellRef {
    type Target = PartnerCell;

    #[inline]
    fn deref(&self) -> &PartnerCell {
        &self.chunk[self.slot as usize % CHUNK]
    }
}

/// Every partner's cell, by partner id. Cloning shares the registry.
#[derive(Default, Clone)]
pub struct Suspensions(Arc<Registry>);

#[derive(Default)]
struct Registry {
    slots: DashMap<String, u32>,
    /// Every chunk so far, in slot order; a slot is taken by appending.
    chunks: Mutex<Chunks>,
}

#[derive(Default)]
struct Chunks {
    all: Vec<Arc<Chunk>>,
    taken: u32,
}

impl Suspensions {
    /// The cell for `id`, created (not suspended) if new.
    pub fn cell(&self, id: &str) -> CellRef {
        let known = self.0.slots.get(id).map(|slot| *slot);
        let slot = match known {
            Some(slot) => slot,
            None => *self
                .0
                .slots
                .entry(id.to_owned())
                .or_insert_with(|| self.take_slot()),
        };
        self.at(slot)
    }

    fn chunks(&self) -> std::sync::MutexGuard<'_, Chunks> {
        // Nothing panics while holding it; a poisoned list is still a sound list.
        self.0.chunks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_slot(&self) -> u32 {
        let mut chunks = self.chunks();
        let slot = chunks.taken;
        if slot as usize / CHUNK == chunks.all.len() {
            chunks.all.push(new_chunk());
        }
        chunks.taken = slot.saturating_add(1);
        slot
    }

    /// The cell at `slot`, which has been taken (so its chunk is in the list).
    fn at(&self, slot: u32) -> CellRef {
        let chunk = self.chunks().all.get(slot as usize / CHUNK).map(Arc::clone);
        CellRef {
            // Never a new chunk: a slot is handed out only after its chunk is listed. Cells of
            // their own rather than a panic.
            chunk: chunk.unwrap_or_else(new_chunk),
            slot,
        }
    }

    /// Each chunk's address, by chunk: a cell's is its chunk's plus its place times the size
    /// of a cell.
    pub fn chunk_addresses(&self) -> Box<[usize]> {
        self.chunks()
            .all
            .iter()
            .map(|chunk| crate::memory::address_of(&**chunk))
            .collect()
    }

    pub fn suspend(&self, id: &str, suspension: Suspension) {
        self.cell(id).set(Some(suspension));
    }

    /// Lifts a suspension; false if the partner was not suspended.
    pub fn resume(&self, id: &str) -> bool {
        let Some(slot) = self.0.slots.get(id).map(|slot| *slot) else {
            return false;
        };
        let cell = self.at(slot);
        if !cell.is_suspended() {
            return false;
        }
        cell.set(None);
        true
    }

    pub fn get(&self, id: &str) -> Option<Arc<Suspension>> {
        let slot = self.0.slots.get(id).map(|slot| *slot)?;
        self.at(slot).get()
    }

    /// Every current suspension, sorted by partner id.
    pub fn list(&self) -> Vec<(String, Suspension)> {
        let slots: Vec<(String, u32)> = self
            .0
            .slots
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        let mut all: Vec<_> = slots
            .into_iter()
            .filter_map(|(id, slot)| self.at(slot).get().map(|s| (id, (*s).clone())))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspend_and_resume_through_a_shared_cell() {
        let s = Suspensions::default();
        let cell = s.cell("a");
        assert!(!cell.is_suspended());
        s.suspend(
            "a",
            Suspension {
                reason: "fraud review".into(),
                since_unix: 7,
            },
        );
        assert!(cell.is_suspended());
        assert_eq!(cell.get().unwrap().reason, "fraud review");
        assert_eq!(s.list().len(), 1);
        assert!(s.resume("a"));
        assert!(!cell.is_suspended());
        assert!(!s.resume("a"));
        assert!(s.list().is_empty());
    }
}
