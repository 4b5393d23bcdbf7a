//! Suspended partners: a partner the operators cut off gets 403 with their reason at once.
//! Suspensions are runtime state, kept apart from the configuration so they survive reloads.
//! The pause the biller may ask for, naming a partner, is runtime state of the same kind: it is
//! kept in the same cell, on the same cache line as the suspension flag, which every decision
//! reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::biller::Pause;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

/// Why and since when a partner is suspended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    pub reason: String,
    /// Seconds since the Unix epoch.
    pub since_unix: u64,
}

/// One partner's suspension state, read on every request with one atomic load, and the pause
/// the biller asked for naming it. Alone on its cache line.
#[derive(Default)]
#[repr(align(64))]
pub struct SuspensionCell {
    suspended: AtomicBool,
    pause: Pause,
    detail: ArcSwapOption<Suspension>,
}

impl SuspensionCell {
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

/// Every partner's suspension cell, by partner id. Cloning shares the registry.
#[derive(Default, Clone)]
pub struct Suspensions(Arc<DashMap<String, Arc<SuspensionCell>>>);

impl Suspensions {
    /// The cell for `id`, created (not suspended) if new.
    pub fn cell(&self, id: &str) -> Arc<SuspensionCell> {
        if let Some(cell) = self.0.get(id) {
            return Arc::clone(&cell);
        }
        Arc::clone(&self.0.entry(id.to_owned()).or_default())
    }

    pub fn suspend(&self, id: &str, suspension: Suspension) {
        self.cell(id).set(Some(suspension));
    }

    /// Lifts a suspension; false if the partner was not suspended.
    pub fn resume(&self, id: &str) -> bool {
        match self.0.get(id) {
            Some(cell) if cell.is_suspended() => {
                cell.set(None);
                true
            }
            _ => false,
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Suspension>> {
        self.0.get(id).and_then(|cell| cell.get())
    }

    /// Every current suspension, sorted by partner id.
    pub fn list(&self) -> Vec<(String, Suspension)> {
        let mut all: Vec<_> = self
            .0
            .iter()
            .filter_map(|e| e.value().get().map(|s| (e.key().clone(), (*s).clone())))
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
