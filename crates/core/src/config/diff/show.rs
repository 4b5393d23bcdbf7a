//! The printed diff: one line per change, sorted by partner id and route name, so operators can
//! paste it into a ticket and review it.

use std::fmt::{self, Write};

use super::compare::{account, cache_for, route_class};
use super::{ConfigDiff, Guardrail, PartnerChange, PartnerDiff, RouteDiff, SettingChange};
use super::{OVERCOMMIT_LIMIT, RAISE_LIMIT};
use crate::config::model::{Class, Mode, Partner, Route, DEFAULT_MAX_TRACKED_ACCOUNTS};
use crate::config::rate::Rate;

/// How many hex characters of a key hash are shown: enough to tell keys apart in a review,
/// never the whole hash.
const KEY_PREFIX: usize = 8;

impl fmt::Display for ConfigDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "no changes");
        }
        write!(f, "partners: {}", self.partner_counts().heading())?;
        for p in &self.partners {
            partner(f, p)?;
        }
        write!(f, "\nroutes: {}", self.route_counts().heading())?;
        for r in &self.routes {
            route(f, r)?;
        }
        for (name, settings) in [("server", &self.server), ("biller", &self.biller)] {
            if settings.is_empty() {
                write!(f, "\n{name}: unchanged")?;
            } else {
                write!(f, "\n{name}: {} changed", settings.len())?;
            }
            for s in settings {
                write!(f, "\n  {}", setting(s))?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Guardrail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guardrail: {}: {}", self.key_path, self.message)
    }
}

fn partner(f: &mut fmt::Formatter<'_>, diff: &PartnerDiff) -> fmt::Result {
    let id = diff.id();
    match diff {
        PartnerDiff::Added(p) => write!(f, "\n  {id}  added: {}", describe_partner(p)),
        PartnerDiff::Removed(p) => write!(f, "\n  {id}  removed: {}", describe_partner(p)),
        PartnerDiff::Changed { changes, .. } => {
            for change in changes {
                write!(f, "\n  {id}  {}", partner_change(change))?;
            }
            Ok(())
        }
    }
}

/// `payment 50/s, inquiry_user 10/s, inquiry_scheduled closed; per_account 2/min; mode enforce;
/// 1 key`, with `max_tracked_accounts` when it is not the default.
fn describe_partner(p: &Partner) -> String {
    let quotas: Vec<String> = Class::ALL
        .iter()
        .map(|c| format!("{} {}", c.as_str(), quota(p.quota.get(*c))))
        .collect();
    let keys = p.keys_sha256.len();
    let mut line = format!(
        "{}; per_account {}; mode {}; {keys} key{}",
        quotas.join(", "),
        per_account(p.per_account),
        p.mode.as_str(),
        if keys == 1 { "" } else { "s" }
    );
    if p.max_tracked_accounts != DEFAULT_MAX_TRACKED_ACCOUNTS {
        let _ = write!(line, "; max_tracked_accounts {}", p.max_tracked_accounts);
    }
    line
}

fn partner_change(change: &PartnerChange) -> String {
    match change {
        PartnerChange::Quota { class, old, new } => format!(
            "{}  {} → {}  ({})",
            class.as_str(),
            quota(*old),
            quota(*new),
            movement(*old, *new)
        ),
        PartnerChange::PerAccount { old, new } => {
            let note = match (old, new) {
                (None, _) => "limit added".to_owned(),
                (_, None) => "limit removed".to_owned(),
                _ => movement(*old, *new),
            };
            format!(
                "per_account  {} → {}  ({note})",
                per_account(*old),
                per_account(*new)
            )
        }
        PartnerChange::Mode { old, new } => {
            let note = match new {
                Mode::Enforce => "over-quota requests will be rejected",
                Mode::Shadow => "over-quota requests will be counted and forwarded, not rejected",
            };
            format!("mode  {} → {}  ({note})", old.as_str(), new.as_str())
        }
        PartnerChange::Keys {
            added,
            removed,
            before,
            after,
        } => {
            let mut notes = Vec::new();
            for (verb, keys) in [("added", added), ("removed", removed)] {
                if !keys.is_empty() {
                    let prefixes: Vec<String> = keys.iter().map(key_prefix).collect();
                    notes.push(format!("{} {verb}: {}", keys.len(), prefixes.join(", ")));
                }
            }
            format!("keys  {before} → {after}  ({})", notes.join("; "))
        }
        PartnerChange::MaxTrackedAccounts { old, new } => {
            format!("max_tracked_accounts  {old} → {new}")
        }
        PartnerChange::Webhooks { old, new } => format!("subscriptions  {old} → {new}"),
    }
}

fn route(f: &mut fmt::Formatter<'_>, diff: &RouteDiff) -> fmt::Result {
    match diff {
        RouteDiff::Added(r) => write!(f, "\n  {}  added: {}", r.name, describe_route(r)),
        RouteDiff::Removed(r) => write!(f, "\n  {}  removed: {}", r.name, describe_route(r)),
        RouteDiff::Changed { name, changes } => {
            for c in changes {
                write!(f, "\n  {name}  {}", setting(c))?;
            }
            Ok(())
        }
        RouteDiff::Reordered { old, new } => write!(
            f,
            "\n  match order  {} → {}  (the first route that matches a request wins)",
            old.join(", "),
            new.join(", ")
        ),
    }
}

/// `GET /v1/bills/{account}; class inquiry; account path {account}; cache_for 60s`
fn describe_route(r: &Route) -> String {
    format!(
        "{} {}; class {}; account {}; cache_for {}",
        r.method,
        r.path.raw,
        route_class(r.class),
        account(&r.account),
        cache_for(r)
    )
}

fn setting(s: &SettingChange) -> String {
    match &s.note {
        Some(note) => format!("{}  {} → {}  ({note})", s.key, s.old, s.new),
        None => format!("{}  {} → {}", s.key, s.old, s.new),
    }
}

fn quota(rate: Option<Rate>) -> String {
    rate.map_or("closed".to_owned(), |r| r.to_string())
}

fn per_account(rate: Option<Rate>) -> String {
    rate.map_or("no limit".to_owned(), |r| r.to_string())
}

fn key_prefix(hash: &[u8; 32]) -> String {
    let mut hex = hex::encode(hash);
    hex.truncate(KEY_PREFIX);
    hex + "…"
}

/// How a limit moved: `opened`, `closed`, `×10.0, raised`, `×0.5, cut`, or, at the same
/// sustained rate, `×1.0, burst raised`, `×1.0, burst cut` or `same limit`.
pub(super) fn movement(old: Option<Rate>, new: Option<Rate>) -> String {
    let (old, new) = match (old, new) {
        (Some(old), Some(new)) => (old, new),
        (None, Some(_)) => return "opened".to_owned(),
        (Some(_), None) => return "closed".to_owned(),
        (None, None) => return "unchanged".to_owned(),
    };
    let ratio = new.per_second() / old.per_second();
    let shown = factor(ratio);
    if ratio > 1.0 {
        format!("×{shown}, raised")
    } else if ratio < 1.0 {
        format!("×{shown}, cut")
    } else if new.burst > old.burst {
        format!("×{shown}, burst raised")
    } else if new.burst < old.burst {
        format!("×{shown}, burst cut")
    } else {
        "same limit".to_owned()
    }
}

/// A factor with one decimal, or more when one would round it to zero or hide which side of
/// 1× or a guardrail limit it is on (`×10.04` must not read `×10.0`).
pub(super) fn factor(x: f64) -> String {
    let hides = |shown: f64| {
        [1.0, RAISE_LIMIT, OVERCOMMIT_LIMIT]
            .iter()
            .any(|limit| x.partial_cmp(limit) != shown.partial_cmp(limit))
    };
    let mut decimals = 1;
    loop {
        let text = format!("{x:.decimals$}");
        let shown: f64 = text.parse().unwrap_or(x);
        if decimals >= 9 || !((shown == 0.0 && x != 0.0) || hides(shown)) {
            return text;
        }
        decimals += 1;
    }
}

/// A rate in requests per second without a needless `.0`.
pub(in crate::config) fn number(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_keep_one_decimal_unless_it_would_mislead() {
        assert_eq!(factor(12.5), "12.5");
        assert_eq!(factor(10.0), "10.0");
        assert_eq!(factor(10.04), "10.04");
        assert_eq!(factor(2.025), "2.02");
        assert_eq!(factor(0.5), "0.5");
        assert_eq!(factor(1.0 / 1200.0), "0.001");
        assert_eq!(factor(0.99999), "0.99999");
        assert_eq!(number(470.0), "470");
        assert_eq!(number(0.5), "0.50");
    }

    #[test]
    fn movements_name_the_direction() {
        let r = |s: &str| crate::config::parse_rate(s).ok();
        assert_eq!(movement(r("20/s"), r("200/s")), "×10.0, raised");
        assert_eq!(movement(r("60/min"), r("1/s")), "×1.0, burst cut");
        assert_eq!(movement(r("1/s"), r("60/min burst 1")), "same limit");
        assert_eq!(movement(None, r("1/s")), "opened");
        assert_eq!(movement(r("1/s"), None), "closed");
    }
}
