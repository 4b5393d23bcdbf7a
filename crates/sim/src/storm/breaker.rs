//! The gateway's inquiry breaker as its `/metrics` shows it: `billgate_breaker_state{breaker}`
//! (0 closed, 1 open, 2 half-open) and `billgate_breaker_transitions_total{breaker,from,to}`,
//! sampled into a timeline.

use std::collections::BTreeMap;

use serde::Serialize;

const STATE: &str = "billgate_breaker_state";
const TRANSITIONS: &str = "billgate_breaker_transitions_total";
/// The most transitions kept; a flapping breaker cannot grow the trace without bound.
const MAX_TRANSITIONS: usize = 10_000;

/// One change of the breaker's state, as first seen by a sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeenTransition {
    /// Seconds from the start of the run to the sample that first showed it (so it happened at
    /// most one sampling interval earlier).
    pub at_secs: f64,
    pub from: String,
    pub to: String,
    /// The instance whose breaker it was, in a fleet (`--instances`); `None` for one gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// What the samples of `/metrics` showed of the breaker.
#[derive(Debug, Clone, Default)]
pub(crate) struct BreakerTrace {
    /// Whether any sample carried a breaker metric.
    pub exported: bool,
    pub transitions: Vec<SeenTransition>,
    state: Option<String>,
    counts: BTreeMap<(String, String), u64>,
}

impl BreakerTrace {
    /// Read one `/metrics` text taken `at_secs` into the run.
    pub fn observe(&mut self, at_secs: f64, text: &str) {
        // The gateway runs two breakers; the inquiry breaker is the one that sheds the storm.
        let inquiry = |labels: &str| label(labels, "breaker").is_none_or(|b| b == "inquiry");
        let state = samples(text, STATE)
            .find(|(labels, _)| inquiry(labels))
            .map(|(_, value)| state_name(value));
        let counts: Vec<_> = samples(text, TRANSITIONS)
            .filter(|(labels, _)| inquiry(labels))
            .filter_map(|(labels, value)| {
                let from = label(labels, "from")?;
                let to = label(labels, "to")?;
                Some(((normalise(from), normalise(to)), value.max(0.0) as u64))
            })
            .collect();
        if state.is_none() && counts.is_empty() {
            return;
        }
        self.exported = true;
        let mut new = Vec::new();
        for (pair, count) in counts {
            let before = self.counts.insert(pair.clone(), count).unwrap_or(0);
            for _ in before..count.min(before + MAX_TRANSITIONS as u64) {
                new.push(pair.clone());
            }
        }
        if new.is_empty() {
            // No counters (or no change in them): fall back on the gauge.
            if let (Some(before), Some(now)) = (&self.state, &state) {
                if before != now {
                    new.push((before.clone(), now.clone()));
                }
            }
        }
        // Several transitions between two samples: chain them from the last known state.
        let mut current = self.state.clone().unwrap_or_else(|| "closed".to_owned());
        while !new.is_empty() && self.transitions.len() < MAX_TRANSITIONS {
            let next = new
                .iter()
                .position(|(from, _)| *from == current)
                .unwrap_or(0);
            let (from, to) = new.swap_remove(next);
            current = to.clone();
            self.transitions.push(SeenTransition {
                at_secs,
                from,
                to,
                instance: None,
            });
        }
        if state.is_some() {
            self.state = state;
        } else if let Some(last) = self.transitions.last() {
            self.state = Some(last.to.clone());
        }
    }

    /// The state after every transition seen at or before `at_secs` ("closed" before any).
    pub fn state_at(&self, at_secs: f64) -> &str {
        self.transitions
            .iter()
            .take_while(|t| t.at_secs <= at_secs)
            .last()
            .map_or("closed", |t| t.to.as_str())
    }
}

fn state_name(value: f64) -> String {
    match value as i64 {
        0 => "closed",
        1 => "open",
        2 => "half-open",
        _ => "unknown",
    }
    .to_owned()
}

/// `half_open`, `HalfOpen` and `half-open` alike.
fn normalise(state: &str) -> String {
    let lower = state.to_ascii_lowercase().replace('_', "-");
    if lower == "halfopen" {
        "half-open".to_owned()
    } else {
        lower
    }
}

/// Every sample of metric `name` in Prometheus text: its label block (without braces, possibly
/// empty) and its value.
pub(crate) fn samples<'t>(
    text: &'t str,
    name: &'t str,
) -> impl Iterator<Item = (&'t str, f64)> + 't {
    text.lines().filter_map(move |line| {
        let rest = line.trim_start().strip_prefix(name)?;
        let (labels, rest) = if let Some(inner) = rest.strip_prefix('{') {
            inner.split_once('}')?
        } else if rest.starts_with([' ', '\t']) {
            ("", rest)
        } else {
            return None; // another metric whose name starts with `name`
        };
        let value = rest.split_whitespace().next()?.parse().ok()?;
        Some((labels, value))
    })
}

/// The value of label `key` in a label block such as `from="closed",to="open"`.
pub(crate) fn label<'l>(labels: &'l str, key: &str) -> Option<&'l str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOSED: &str = "# HELP billgate_breaker_state 0 closed\n\
        # TYPE billgate_breaker_state gauge\n\
        billgate_breaker_state 0\n\
        billgate_breaker_state_extra 7\n";

    fn with_counts(state: u8, counts: &[(&str, &str, u64)]) -> String {
        let mut text = format!("billgate_breaker_state {state}\n");
        for (from, to, n) in counts {
            text.push_str(&format!(
                "billgate_breaker_transitions_total{{from=\"{from}\",to=\"{to}\"}} {n}\n"
            ));
        }
        text
    }

    #[test]
    fn absent_metrics_mean_not_exported() {
        let mut trace = BreakerTrace::default();
        trace.observe(0.1, "billgate_requests_total{partner=\"a\"} 3\n");
        assert!(!trace.exported);
        assert!(trace.transitions.is_empty());
        trace.observe(0.2, CLOSED);
        assert!(trace.exported);
        assert_eq!(trace.state_at(1.0), "closed");
    }

    #[test]
    fn counters_give_every_transition_in_order_even_between_two_samples() {
        let mut trace = BreakerTrace::default();
        trace.observe(1.0, &with_counts(0, &[]));
        trace.observe(
            2.0,
            &with_counts(
                1,
                &[
                    ("half_open", "open", 1),
                    ("closed", "open", 1),
                    ("open", "half_open", 1),
                ],
            ),
        );
        trace.observe(3.0, &with_counts(0, &[("half_open", "closed", 1)]));
        let seen: Vec<_> = trace
            .transitions
            .iter()
            .map(|t| (t.at_secs, t.from.as_str(), t.to.as_str()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (2.0, "closed", "open"),
                (2.0, "open", "half-open"),
                (2.0, "half-open", "open"),
                (3.0, "half-open", "closed"),
            ]
        );
        assert_eq!(trace.state_at(2.5), "open");
        assert_eq!(trace.state_at(3.0), "closed");
    }

    #[test]
    fn the_gauge_alone_still_shows_changes() {
        let mut trace = BreakerTrace::default();
        trace.observe(0.0, "billgate_breaker_state{biller=\"main\"} 0\n");
        trace.observe(0.1, "billgate_breaker_state{biller=\"main\"} 1\n");
        trace.observe(0.2, "billgate_breaker_state{biller=\"main\"} 1\n");
        trace.observe(0.3, "billgate_breaker_state{biller=\"main\"} 2\n");
        let to: Vec<_> = trace.transitions.iter().map(|t| t.to.as_str()).collect();
        assert_eq!(to, vec!["open", "half-open"]);
        assert_eq!(trace.transitions[0].at_secs, 0.1);
    }

    #[test]
    fn odd_text_is_ignored() {
        let mut trace = BreakerTrace::default();
        trace.observe(
            0.0,
            "billgate_breaker_state{ 1\nbillgate_breaker_state nan?\n{}\n",
        );
        assert!(!trace.exported);
        assert_eq!(label("a=\"1\", b = \"2\"", "b"), Some("2"));
        assert_eq!(label("a=\"1\"", "c"), None);
    }
}
