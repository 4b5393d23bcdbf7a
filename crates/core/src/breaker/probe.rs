//! Half-open probes: slots claimed by compare-and-swap, freed by an answer, a drop, or
//! `probe_timeout`; and what a probe's answer does to the breaker.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::word::{self, ceil_ms, floor_ms, ms_to_nanos};
use super::{Admission, Breaker, BreakerState, CallOutcome};

/// A half-open probe's hold on one probe slot. Record its outcome with [`Probe::record`];
/// dropping it unrecorded frees the slot and decides nothing.
#[derive(Debug)]
#[must_use = "a probe's outcome decides whether the breaker closes"]
pub struct Probe {
    breaker: Arc<Breaker>,
    slot: usize,
    claim: u64,
    generation: u16,
}

impl Breaker {
    /// Claims a free probe slot, or one held by a probe of an earlier generation or older than
    /// `probe_timeout`.
    pub(super) fn claim_slot(self: &Arc<Self>, generation: u16, now: u64) -> Option<Probe> {
        let claim = word::pack_slot(generation, ceil_ms(now));
        for (slot, cell) in self.slots.iter().enumerate() {
            let bits = cell.load(Ordering::Acquire);
            if self.holds(bits, generation, now).is_some() {
                continue;
            }
            if cell
                .compare_exchange(bits, claim, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(Probe {
                    breaker: Arc::clone(self),
                    slot,
                    claim,
                    generation,
                });
            }
        }
        None
    }

    /// The deadline of the probe in `bits`, if it still holds its slot.
    fn holds(&self, bits: u64, generation: u16, now: u64) -> Option<u64> {
        let (of, started_ms) = word::unpack_slot(bits)?;
        let deadline = ms_to_nanos(started_ms).saturating_add(self.probe_timeout_nanos);
        (of == generation && now < deadline).then_some(deadline)
    }

    pub(super) fn refuse_half_open(&self, generation: u16, now: u64) -> Admission {
        let soonest = self
            .slots
            .iter()
            .filter_map(|cell| self.holds(cell.load(Ordering::Acquire), generation, now))
            .min();
        let wait = soonest.map_or(self.probe_timeout_nanos, |d| d - now);
        Admission::Reject {
            retry_after: Duration::from_nanos(wait),
        }
    }

    fn release(&self, slot: usize, claim: u64) -> bool {
        self.slots.get(slot).is_some_and(|cell| {
            cell.compare_exchange(claim, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }

    fn probe_answered(&self, generation: u16, outcome: CallOutcome) {
        let word = self.current();
        if word.state != BreakerState::HalfOpen || word.generation != generation {
            return;
        }
        let now = self.clock.now().as_u64();
        match outcome {
            CallOutcome::Failure => {
                self.open(word, self.next_level(word.level), now);
            }
            CallOutcome::Success => {
                let before = self
                    .successes
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                        let count = word::count_of(bits, generation);
                        Some(word::pack_count(generation, count + 1))
                    })
                    .unwrap_or(0);
                if word::count_of(before, generation) + 1 >= self.probes_to_close {
                    // Forget the failures that opened it before anyone can count them again.
                    self.window.reset();
                    self.transition(word, word.next(BreakerState::Closed, 0, floor_ms(now)));
                }
            }
        }
    }
}

impl Probe {
    /// Reports the probe's outcome: a success counts towards closing, a failure reopens the
    /// breaker. Ignored if the probe outlived `probe_timeout` and lost its slot, or if the
    /// half-open spell it belonged to is over.
    pub fn record(mut self, outcome: CallOutcome) {
        // Taken first, so Drop cannot free a slot that a new probe has claimed meanwhile.
        let claim = std::mem::take(&mut self.claim);
        if self.breaker.release(self.slot, claim) {
            self.breaker.probe_answered(self.generation, outcome);
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if self.claim != 0 {
            self.breaker.release(self.slot, self.claim);
        }
    }
}
