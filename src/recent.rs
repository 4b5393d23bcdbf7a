//! Each partner's requests by class over the last minute, for `GET /admin/partners/{id}`: the
//! request counters sampled every few seconds into a short ring, the rate read as the difference
//! between now and the sample a minute back (or the oldest, in the first minute).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::config::Class;
use crate::metrics::{ClassMetrics, Outcome};

/// The span a rate is taken over.
pub const WINDOW: Duration = Duration::from_secs(60);
/// How often the counters are sampled.
pub const EVERY: Duration = Duration::from_secs(5);

/// Requests one partner sent in one class: answered (forwarded, from memory or failed at the
/// biller) and refused by the gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub answered: u64,
    pub rejected: u64,
}

impl Counts {
    /// The class's counters now.
    pub fn of(metrics: &ClassMetrics) -> Counts {
        Counts {
            answered: [Outcome::Forwarded, Outcome::Cached, Outcome::Failed]
                .into_iter()
                .map(|o| metrics.count(o))
                .sum(),
            rejected: metrics.count(Outcome::Rejected),
        }
    }
}

/// Per second, over the span the rate was taken on.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Rates {
    pub answered_per_sec: f64,
    pub rejected_per_sec: f64,
}

type PartnerCounts = HashMap<String, [Counts; 3]>;

/// The ring of samples; one per gateway.
#[derive(Default)]
pub struct Recent {
    samples: Mutex<VecDeque<(Duration, PartnerCounts)>>,
}

impl Recent {
    /// Keeps `counts` as they were at `at` (the gateway clock's elapsed time), dropping what is
    /// too old to be a minute back.
    pub fn record(&self, at: Duration, counts: PartnerCounts) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.push_back((at, counts));
        while samples
            .front()
            .is_some_and(|(then, _)| at.saturating_sub(*then) > WINDOW + EVERY)
        {
            samples.pop_front();
        }
    }

    /// `partner`'s rates by class from the sample at most a minute before `now` to `current`,
    /// and the span they were taken over (zero before any sample, or in the sample's instant).
    pub fn rates(
        &self,
        now: Duration,
        partner: &str,
        current: [Counts; 3],
    ) -> ([Rates; 3], Duration) {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((then, before)) = samples
            .iter()
            .find(|(then, _)| now.saturating_sub(*then) <= WINDOW)
        else {
            return ([Rates::default(); 3], Duration::ZERO);
        };
        let span = now.saturating_sub(*then);
        if span.is_zero() {
            return ([Rates::default(); 3], span);
        }
        let before = before.get(partner).copied().unwrap_or_default();
        let per_sec = |now: u64, then: u64| now.saturating_sub(then) as f64 / span.as_secs_f64();
        let rates = Class::ALL.map(|c| {
            let (now, then) = (current[c.index()], before[c.index()]);
            Rates {
                answered_per_sec: per_sec(now.answered, then.answered),
                rejected_per_sec: per_sec(now.rejected, then.rejected),
            }
        });
        (rates, span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(answered: u64, rejected: u64) -> [Counts; 3] {
        [
            Counts { answered, rejected },
            Counts::default(),
            Counts::default(),
        ]
    }

    #[test]
    fn the_rate_is_taken_from_the_sample_a_minute_back() {
        let recent = Recent::default();
        let s = Duration::from_secs;
        for (at, answered) in [(0, 0), (30, 600), (65, 1300), (95, 1900)] {
            recent.record(s(at), [("a".to_owned(), counts(answered, 0))].into());
        }
        // At 100 s the oldest sample within a minute is the one at 65 s.
        let (rates, span) = recent.rates(s(100), "a", counts(2000, 70));
        assert_eq!(span, s(35));
        assert_eq!(rates[0].answered_per_sec, 700.0 / 35.0);
        assert_eq!(rates[0].rejected_per_sec, 2.0);
        // A partner the samples never saw counts from zero.
        assert_eq!(
            recent.rates(s(100), "b", counts(35, 0)).0[0].answered_per_sec,
            1.0
        );
        // Samples older than a minute and a tick are gone.
        assert_eq!(recent.samples.lock().unwrap().len(), 3);
    }
}
