//! The partners' answers sorted by status and `x-billgate-cache`, and counted: by partner, by
//! timeline step, by refusal reason, with latency histograms for hits and fetched answers.

use std::collections::BTreeMap;
use std::time::Duration;

use http::StatusCode;

use super::report::Counts;
use crate::storm::LatencyHistogram;

/// The most distinct rejection reasons kept apart; any further ones count as `other`.
const MAX_REASONS: usize = 32;

/// What the partners saw.
#[derive(Debug, Default)]
pub(crate) struct PollRecorder {
    /// By scheduled send time, one per timeline step.
    pub intervals: Vec<Counts>,
    /// One per partner, in [`PARTNERS`] order.
    pub partners: [Counts; 3],
    /// Refusals by the reason in the gateway's problem type (`biller_capacity`, …).
    pub reasons: BTreeMap<String, u64>,
    /// `x-billgate-cache: hit` answers, from the scheduled send time.
    pub hit: LatencyHistogram,
    /// The same answers, from when the request actually left.
    pub hit_service: LatencyHistogram,
    /// 2xx answers fetched from the biller (`miss`, `coalesced`), from the scheduled send time.
    pub fetched: LatencyHistogram,
    /// Every request: from its scheduled time to when its task started sending it.
    pub dispatch: LatencyHistogram,
    /// Distinct accounts whose requests were sent.
    pub distinct_accounts: u64,
    /// Per account, 2xx answers marked `x-billgate-cache: miss`: each one biller call whose
    /// answer the cache then kept for `cache_for`.
    pub fetches: Vec<u32>,
}

/// How one answer is counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sorted {
    Hit,
    Miss,
    Coalesced,
    /// Refused by the gateway, with the reason its problem type names.
    Rejected(String),
    /// A 5xx not from the gateway's admission, a broken exchange or no answer in time.
    Failed,
    /// Anything else, including a 2xx without `x-billgate-cache`.
    Other,
}

/// `status`, the cache header and the body as a [`Sorted`]. As in the storm, the gateway's
/// refusals are 429, or 503 with a `urn:billgate:problem:` type; the biller's own 503s are not.
pub(crate) fn sort(status: StatusCode, cache: Option<&[u8]>, body: &[u8]) -> Sorted {
    if status.is_success() {
        return match cache {
            Some(b"hit") => Sorted::Hit,
            Some(b"miss") => Sorted::Miss,
            Some(b"coalesced") => Sorted::Coalesced,
            _ => Sorted::Other,
        };
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        if let Some(reason) = gateway_reason(body) {
            return Sorted::Rejected(reason);
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Sorted::Rejected("unknown".to_owned());
        }
    }
    if status.is_server_error() {
        Sorted::Failed
    } else {
        Sorted::Other
    }
}

/// The reason in a gateway problem body's `type` (`urn:billgate:problem:REASON`).
fn gateway_reason(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Problem {
        #[serde(rename = "type")]
        kind: String,
    }
    let problem: Problem = serde_json::from_slice(body).ok()?;
    problem
        .kind
        .strip_prefix("urn:billgate:problem:")
        .map(str::to_owned)
}

impl PollRecorder {
    pub(crate) fn record(
        &mut self,
        partner: usize,
        slot: usize,
        sorted: Sorted,
        latency: Latencies,
    ) {
        let mut bump = |f: fn(&mut Counts) -> &mut u64| {
            *f(&mut self.partners[partner]) += 1;
            if let Some(interval) = self.intervals.get_mut(slot) {
                *f(interval) += 1;
            }
        };
        match sorted {
            Sorted::Hit => bump(|c| &mut c.hit),
            Sorted::Miss => bump(|c| &mut c.miss),
            Sorted::Coalesced => bump(|c| &mut c.coalesced),
            Sorted::Rejected(_) => bump(|c| &mut c.rejected),
            Sorted::Failed => bump(|c| &mut c.failed),
            Sorted::Other => bump(|c| &mut c.other),
        }
        self.dispatch.record(latency.dispatch);
        match sorted {
            Sorted::Hit => {
                self.hit.record(latency.scheduled);
                self.hit_service.record(latency.service);
            }
            Sorted::Miss | Sorted::Coalesced => self.fetched.record(latency.scheduled),
            Sorted::Rejected(reason) => {
                let known = self.reasons.len() < MAX_REASONS || self.reasons.contains_key(&reason);
                let reason = if known { reason } else { "other".to_owned() };
                *self.reasons.entry(reason).or_insert(0) += 1;
            }
            Sorted::Failed | Sorted::Other => {}
        }
    }
}

/// One answer's latencies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latencies {
    /// From the scheduled send time to the whole answer.
    pub scheduled: Duration,
    /// From the actual send to the whole answer.
    pub service: Duration,
    /// From the scheduled send time to the actual send.
    pub dispatch: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_sorted_by_status_cache_header_and_problem_type() {
        let ok = StatusCode::OK;
        assert_eq!(sort(ok, Some(b"hit"), b"{}"), Sorted::Hit);
        assert_eq!(sort(ok, Some(b"miss"), b"{}"), Sorted::Miss);
        assert_eq!(sort(ok, Some(b"coalesced"), b"{}"), Sorted::Coalesced);
        assert_eq!(sort(ok, None, b"{}"), Sorted::Other);
        let capacity = br#"{"type":"urn:billgate:problem:biller_capacity","status":503}"#;
        assert_eq!(
            sort(StatusCode::SERVICE_UNAVAILABLE, None, capacity),
            Sorted::Rejected("biller_capacity".to_owned())
        );
        let biller = br#"{"type":"/problems/biller-down","status":503}"#;
        assert_eq!(
            sort(StatusCode::SERVICE_UNAVAILABLE, Some(b"miss"), biller),
            Sorted::Failed
        );
        assert_eq!(
            sort(StatusCode::TOO_MANY_REQUESTS, None, b""),
            Sorted::Rejected("unknown".to_owned())
        );
        assert_eq!(sort(StatusCode::BAD_GATEWAY, None, b""), Sorted::Failed);
        assert_eq!(sort(StatusCode::NOT_FOUND, None, b""), Sorted::Other);
    }

    #[test]
    fn the_recorder_counts_by_partner_and_slot_and_bounds_its_reasons() {
        let mut r = PollRecorder {
            intervals: vec![Counts::default(); 2],
            ..PollRecorder::default()
        };
        let l = Latencies {
            scheduled: Duration::from_micros(300),
            service: Duration::from_micros(200),
            dispatch: Duration::from_micros(100),
        };
        r.record(1, 0, Sorted::Hit, l);
        r.record(1, 9, Sorted::Miss, l);
        for i in 0..40 {
            r.record(2, 1, Sorted::Rejected(format!("r{i}")), l);
        }
        assert_eq!((r.partners[1].hit, r.partners[1].miss), (1, 1));
        assert_eq!((r.intervals[0].hit, r.intervals[1].rejected), (1, 40));
        assert_eq!((r.hit.len(), r.fetched.len(), r.dispatch.len()), (1, 1, 42));
        assert_eq!(r.reasons.len(), MAX_REASONS + 1);
        assert_eq!(r.reasons.get("other"), Some(&8));
    }
}
