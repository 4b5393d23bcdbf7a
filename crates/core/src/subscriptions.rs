//! The subscription API's rules, without I/O: who may subscribe and how often (each partner's
//! `quota.subscription`), where its webhooks may go (its `webhook_prefixes`), and when each
//! subscribed account is asked about (spread evenly over `[subscriptions] refresh`).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::admission::{Denied, Limit, Policy, Quota, Reason, Remaining};
use crate::config::{Config, PartnerWebhooks, Rate};
use crate::fleet::Ledger;
use crate::ids::PartnerId;
use governor::nanos::Nanos;

/// The longest callback URL accepted.
pub const MAX_CALLBACK_LEN: usize = 2048;

/// One partner's subscription quota: its limiter and the arrival time it spends, which
/// outlives reloads that leave the rate as it was.
struct Entry {
    quota: Quota,
    own: Arc<AtomicU64>,
}

/// Every partner's subscription quota, built with each configuration snapshot.
#[derive(Default)]
pub struct SubscriptionGate {
    /// By partner index; `None`: the partner may not subscribe.
    entries: Vec<Option<Entry>>,
    /// The partners' ids, by index: what a rebuilt gate finds its partners' state by.
    ids: Vec<String>,
}

impl SubscriptionGate {
    /// The quotas of `config`'s partners, each keeping its state from `previous` when its
    /// rate is unchanged (a reload does not hand a partner a fresh burst).
    pub fn build(config: &Config, previous: Option<&SubscriptionGate>) -> SubscriptionGate {
        let kept: HashMap<&str, (&Entry, Rate)> = previous
            .map(|previous| {
                previous
                    .ids
                    .iter()
                    .zip(&previous.entries)
                    .filter_map(|(id, entry)| {
                        let entry = entry.as_ref()?;
                        Some((id.as_str(), (entry, entry.quota.rate())))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let entries = config
            .partners
            .iter()
            .map(|partner| {
                let webhooks = partner.webhooks.as_ref()?;
                let own = match kept.get(partner.id.as_str()) {
                    Some((entry, rate)) if *rate == webhooks.quota => Arc::clone(&entry.own),
                    _ => Arc::new(AtomicU64::new(0)),
                };
                Some(Entry {
                    quota: Quota::one_cell(webhooks.quota),
                    own,
                })
            })
            .collect();
        SubscriptionGate {
            entries,
            ids: config.partners.iter().map(|p| p.id.clone()).collect(),
        }
    }

    /// Spends one request of `partner`'s subscription quota at `now`: its state for the
    /// `RateLimit` fields, or why not (403 when the partner may not subscribe, 429 over its
    /// quota). In a fleet the fleet's lease is spent first, as for the classes' quotas: a
    /// request it refuses spends nothing here, and one refused here gives its token back.
    pub fn check(
        &self,
        partner: PartnerId,
        now: Nanos,
        fleet: Option<&Ledger>,
    ) -> Result<Limit, Denied> {
        let denied = |reason, limit: Option<Limit>| Denied {
            reason,
            partner: Some(partner),
            class: None,
            route: None,
            limit,
            retry_after: limit.map(|l| l.remaining.wait),
        };
        let Some(Some(entry)) = self.entries.get(partner.index()) else {
            return Err(denied(Reason::ClassClosed, None));
        };
        let rate = entry.quota.rate();
        let limit = |remaining: Remaining| Limit {
            policy: Policy::Subscription,
            rate,
            remaining,
        };
        let leased = match fleet.and_then(|f| Some((f, f.subscription(partner)?))) {
            Some((fleet, lease)) => match lease.take(fleet.state(), now.as_u64(), 1) {
                Ok(taken) => Some((lease, taken)),
                Err(wait) => {
                    let remaining = Remaining::refused(rate, wait);
                    return Err(denied(Reason::PartnerQuota, Some(limit(remaining))));
                }
            },
            None => None,
        };
        match entry.quota.check(&entry.own, now) {
            Ok(remaining) => Ok(limit(remaining)),
            Err(remaining) => {
                if let Some((lease, taken)) = leased {
                    lease.refund(taken, 1);
                }
                Err(denied(Reason::PartnerQuota, Some(limit(remaining))))
            }
        }
    }
}

/// Why a callback is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadCallback {
    /// Longer than [`MAX_CALLBACK_LEN`].
    TooLong,
    /// Not an absolute http(s) URL, or one with user info, a fragment, spaces or control
    /// characters, or a path that climbs out of its prefix (`..`, `.`, their encodings).
    Malformed,
    /// Under none of the partner's `webhook_prefixes`.
    NotUnderPrefix,
}

impl BadCallback {
    /// What the partner is told.
    pub fn detail(self) -> &'static str {
        match self {
            BadCallback::TooLong => "the callback URL is longer than 2048 bytes",
            BadCallback::Malformed => "the callback must be an absolute http:// or https:// URL without user info, fragment, spaces, or `.`/`..` path segments",
            BadCallback::NotUnderPrefix => "the callback is under none of the URL prefixes the biller's operators allowed for this partner (webhook_prefixes)",
        }
    }
}

/// Whether `callback` may receive `webhooks`' partner's events: an absolute URL under one of
/// its prefixes whose path cannot be read as leaving it.
pub fn check_callback(webhooks: &PartnerWebhooks, callback: &str) -> Result<(), BadCallback> {
    if callback.len() > MAX_CALLBACK_LEN {
        return Err(BadCallback::TooLong);
    }
    let printable = callback
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'#' | b'\\'));
    let Some(rest) = callback
        .strip_prefix("https://")
        .or_else(|| callback.strip_prefix("http://"))
    else {
        return Err(BadCallback::Malformed);
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let path = rest[authority.len()..]
        .split('?')
        .next()
        .unwrap_or_default();
    let climbs = path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    }) || path.to_ascii_lowercase().contains("%2f");
    if !printable
        || authority.is_empty()
        || authority.contains('@')
        || climbs
        || callback.parse::<http::Uri>().is_err()
    {
        return Err(BadCallback::Malformed);
    }
    if webhooks
        .prefixes
        .iter()
        .any(|prefix| callback.starts_with(prefix.as_str()))
    {
        Ok(())
    } else {
        Err(BadCallback::NotUnderPrefix)
    }
}

/// One refresh period's plan: `count` accounts asked about one after another, evenly spaced
/// over `period` from `start` (no two at once, none bunched at the top of the period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spread {
    pub start: Nanos,
    pub period: Duration,
    pub count: u64,
}

impl Spread {
    /// When the `i`-th account of the period is due.
    pub fn due(&self, i: u64) -> Nanos {
        if self.count == 0 {
            return self.start;
        }
        let step = self.period.as_nanos() / u128::from(self.count);
        let offset = u64::try_from(step.saturating_mul(u128::from(i))).unwrap_or(u64::MAX);
        Nanos::from(self.start.as_u64().saturating_add(offset))
    }

    /// When the next period starts.
    pub fn end(&self) -> Nanos {
        let period = u64::try_from(self.period.as_nanos()).unwrap_or(u64::MAX);
        Nanos::from(self.start.as_u64().saturating_add(period))
    }
}

/// The dedup key of one event to one subscription: the same bill change observed twice (two
/// instances, a restart, the biller pushing what a refresh also saw) gives the same id, and
/// the store keeps one delivery per id.
pub fn event_id(subscription_id: &str, bill_id: &str, version: i64) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{subscription_id}\n{bill_id}\n{version}").as_bytes());
    format!("evt_{}", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, parse_rate, SecretSource};

    fn webhooks(prefixes: &[&str]) -> PartnerWebhooks {
        PartnerWebhooks {
            quota: parse_rate("5/s").unwrap(),
            max_subscriptions: 10,
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            secret: SecretSource::Env("S".into()),
        }
    }

    #[test]
    fn callbacks_must_stay_under_a_prefix() {
        let w = webhooks(&["https://hooks.bank-b.example/billgate/"]);
        let ok = [
            "https://hooks.bank-b.example/billgate/",
            "https://hooks.bank-b.example/billgate/a/b?x=1",
        ];
        for callback in ok {
            assert_eq!(check_callback(&w, callback), Ok(()), "{callback}");
        }
        let refused = [
            (
                "https://hooks.bank-b.example/other/",
                BadCallback::NotUnderPrefix,
            ),
            (
                "https://hooks.bank-b.example.evil/billgate/",
                BadCallback::NotUnderPrefix,
            ),
            (
                "http://hooks.bank-b.example/billgate/",
                BadCallback::NotUnderPrefix,
            ),
            (
                "https://hooks.bank-b.example/billgate/../admin",
                BadCallback::Malformed,
            ),
            (
                "https://hooks.bank-b.example/billgate/%2E%2e/admin",
                BadCallback::Malformed,
            ),
            (
                "https://hooks.bank-b.example/billgate/a%2Fb",
                BadCallback::Malformed,
            ),
            (
                "https://me@hooks.bank-b.example/billgate/",
                BadCallback::Malformed,
            ),
            (
                "https://hooks.bank-b.example/billgate/#x",
                BadCallback::Malformed,
            ),
            (
                "https://hooks.bank-b.example/billgate/a b",
                BadCallback::Malformed,
            ),
            (
                "ftp://hooks.bank-b.example/billgate/",
                BadCallback::Malformed,
            ),
            ("/billgate/", BadCallback::Malformed),
        ];
        for (callback, why) in refused {
            assert_eq!(check_callback(&w, callback), Err(why), "{callback}");
        }
        let long = format!("https://hooks.bank-b.example/billgate/{}", "a".repeat(2048));
        assert_eq!(check_callback(&w, &long), Err(BadCallback::TooLong));
    }

    /// Ten thousand accounts over 100 s: exactly a hundred in every second, in order.
    #[test]
    fn a_period_is_spread_evenly() {
        let spread = Spread {
            start: Nanos::from(7_000_000_000u64),
            period: Duration::from_secs(100),
            count: 10_000,
        };
        let mut per_second = [0u32; 100];
        let mut last = 0;
        for i in 0..10_000 {
            let due = spread.due(i).as_u64();
            assert!(due >= last);
            last = due;
            per_second[usize::try_from((due - 7_000_000_000) / 1_000_000_000).unwrap()] += 1;
        }
        assert!(per_second.iter().all(|&n| n == 100), "{per_second:?}");
        assert_eq!(spread.end().as_u64(), 107_000_000_000);
    }

    #[test]
    fn the_quota_refuses_past_its_burst_and_survives_a_reload() {
        let text = format!(
            "[biller]\nurl = \"http://127.0.0.1:9\"\ncapacity = \"10/s\"\n[subscriptions]\n[[partner]]\nid = \"bank-b\"\nkeys_sha256 = [\"{}\"]\nquota = {{ subscription = \"2/s\" }}\nwebhook_prefixes = [\"https://h/x/\"]\nwebhook_secret_env = \"S\"\n[[partner]]\nid = \"wallet-a\"\nkeys_sha256 = [\"{}\"]\nquota = {{ payment = \"2/s\" }}\n",
            "a".repeat(64),
            "b".repeat(64)
        );
        let config = load_str(&text, "t.toml").unwrap();
        let gate = SubscriptionGate::build(&config, None);
        let now = Nanos::from(1_000_000_000u64);
        let bank = PartnerId::new(0);
        assert!(gate.check(bank, now, None).is_ok());
        let limit = gate.check(bank, now, None).unwrap();
        assert_eq!(
            (limit.policy, limit.remaining.remaining),
            (Policy::Subscription, 0)
        );
        let again = SubscriptionGate::build(&config, Some(&gate));
        let refused = again.check(bank, now, None).unwrap_err();
        assert_eq!(refused.reason, Reason::PartnerQuota);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(500)));
        let closed = again.check(PartnerId::new(1), now, None).unwrap_err();
        assert_eq!((closed.reason, closed.limit), (Reason::ClassClosed, None));
    }

    #[test]
    fn an_event_id_names_one_change_to_one_subscription() {
        let a = event_id("sub_1", "BILL-1", 1);
        assert_eq!(a, event_id("sub_1", "BILL-1", 1));
        assert_ne!(a, event_id("sub_1", "BILL-1", 2));
        assert_ne!(a, event_id("sub_2", "BILL-1", 1));
        assert_eq!(a.len(), 4 + 32);
    }
}
