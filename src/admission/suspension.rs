//! Suspended partners: a partner the operators cut off gets 403 with their reason at once.
//! Suspensions are runtime state, kept apart from the configuration so they survive reloads.
//! Each partner has one such cell of runtime state, on one cache line that every decision for
//! the partner reads: its suspension flag, the pause the biller may ask for naming it, and the
//! arrival times of its one-cell class quotas (see [`crate::admission::Quota`]). A decision
//! refused at a partner's quota so reads the quota's arrival time on the same line as the
//! suspension flag, and every snapshot a reload builds shares it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

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

/// Every partner's cell, by partner id. Cloning shares the registry.
#[derive(Default, Clone)]
pub struct Suspensions(Arc<DashMap<String, Arc<PartnerCell>>>);

impl Suspensions {
    /// The cell for `id`, created (not suspended) if new.
    pub fn cell(&self, id: &str) -> Arc<PartnerCell> {
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
