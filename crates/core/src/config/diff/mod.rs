//! `billgate check --diff`: what a configuration change does, partner by partner, and the
//! guardrails a reload refuses to cross unless the operator forces it.
//!
//! [`diff`] compares two validated configurations into a [`ConfigDiff`]; its `Display` is the
//! printed diff, [`ConfigDiff::guardrails`] the changes a reload refuses unless forced, and
//! [`ConfigDiff::summary`] one line for the reload log.
//!
//! ```
//! use billgate_core::config::{diff, load_str};
//!
//! let old = "[biller]\nurl = \"http://127.0.0.1:9000\"\ncapacity = \"400/s\"\n\
//!            [[partner]]\nid = \"wallet-a\"\nkeys_sha256 = [\"{}\"]\n\
//!            quota = { inquiry_scheduled = \"20/s burst 40\" }\n";
//! let old = old.replace("{}", &billgate_core::config::hash_key("wallet-a-key"));
//! let new = old.replace("20/s burst 40", "250/s burst 40");
//! let change = diff(&load_str(&old, "old.toml")?, &load_str(&new, "new.toml")?);
//! assert_eq!(
//!     change.to_string().lines().nth(1),
//!     Some("  wallet-a  inquiry_scheduled  20/s burst 40 → 250/s burst 40  (×12.5, raised)")
//! );
//! let hits = change.guardrails();
//! assert_eq!(hits[0].key_path, "partner[wallet-a].quota.inquiry_scheduled");
//! assert_eq!(
//!     change.summary(),
//!     "1 partner changed, 0 added, 0 removed, routes unchanged, server and biller unchanged"
//! );
//! # Ok::<(), billgate_core::config::ConfigErrors>(())
//! ```
//!
//! # Guardrails
//!
//! - **A quota raised more than 10×**: a partner's class whose sustained rate
//!   ([`Rate::per_second`]) or burst is more than [`RAISE_LIMIT`] times what it was. Exactly 10×
//!   is not a hit. The burst counts because a mistyped `burst 4000` lets that many requests
//!   arrive at once however low the rate.
//! - **A class opened above the biller's capacity**: a class that was closed (or whose partner
//!   is new) has no old quota to take a factor of, and opening one is routine onboarding; it is a
//!   hit only when its new rate alone exceeds the biller's whole (new) capacity, since then that
//!   one partner could saturate the biller on its own.
//! - **All quotas together above 2× capacity**: the sum of every open class of every partner
//!   (in requests per second, shadow partners included) exceeds [`OVERCOMMIT_LIMIT`] times the
//!   biller's new capacity while the old sum did not exceed that many times the old capacity.
//!   A capacity cut that crosses the line counts; a configuration already above it does not hit
//!   again.
//!
//! A partner's last key removed is not a guardrail but an error: a partner without a key is
//! refused when the file is loaded.

mod compare;
mod guardrails;
mod show;

pub(super) use show::number;

use super::model::{Class, Config, Mode, Partner, Route};
use super::rate::Rate;

/// A quota (rate or burst) raised by more than this factor is a guardrail hit.
pub const RAISE_LIMIT: f64 = 10.0;

/// All partners' quotas together above this many times the biller's capacity is a guardrail hit
/// (when they were not already above it).
pub const OVERCOMMIT_LIMIT: f64 = 2.0;

/// What changes from one configuration to another. `Display`: the printed diff, sorted by
/// partner id and route name, or `no changes`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigDiff {
    /// Partners added, removed or changed, sorted by id.
    pub partners: Vec<PartnerDiff>,
    /// Routes added, removed or changed, sorted by name; then [`RouteDiff::Reordered`], if any.
    pub routes: Vec<RouteDiff>,
    /// `[server]` keys whose value changed, in the order the model lists them.
    pub server: Vec<SettingChange>,
    /// `[biller]` and `[biller.breaker]` keys whose value changed (`breaker.window`, …).
    pub biller: Vec<SettingChange>,
    /// All quotas against capacity in the old configuration.
    pub before: Commitment,
    /// All quotas against capacity in the new configuration.
    pub after: Commitment,
}

/// All partners' quotas together against the biller's capacity, in one configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Commitment {
    /// The sum of every open class's sustained rate over every partner, in requests per second.
    pub quota_per_second: f64,
    pub capacity: Rate,
}

/// One partner that differs between the two configurations.
#[derive(Debug, Clone, PartialEq)]
pub enum PartnerDiff {
    /// Only in the new configuration.
    Added(Partner),
    /// Only in the old configuration.
    Removed(Partner),
    /// In both, with these changes, in the order of [`PartnerChange`]'s variants (quotas by
    /// [`Class::ALL`]).
    Changed {
        id: String,
        changes: Vec<PartnerChange>,
    },
}

impl PartnerDiff {
    /// The partner's id.
    pub fn id(&self) -> &str {
        match self {
            PartnerDiff::Added(p) | PartnerDiff::Removed(p) => &p.id,
            PartnerDiff::Changed { id, .. } => id,
        }
    }
}

/// One change to a partner present in both configurations.
#[derive(Debug, Clone, PartialEq)]
pub enum PartnerChange {
    /// A class's quota; `None` is closed, so `None → Some` opens the class.
    Quota {
        class: Class,
        old: Option<Rate>,
        new: Option<Rate>,
    },
    /// `per_account`; `None` is no per-account limit.
    PerAccount {
        old: Option<Rate>,
        new: Option<Rate>,
    },
    Mode {
        old: Mode,
        new: Mode,
    },
    /// Key hashes added and removed (in file order), and how many keys before and after.
    /// A reordering alone is no change.
    Keys {
        added: Vec<[u8; 32]>,
        removed: Vec<[u8; 32]>,
        before: usize,
        after: usize,
    },
    MaxTrackedAccounts {
        old: usize,
        new: usize,
    },
    /// The subscription settings (`quota.subscription`, `max_subscriptions`, the callback
    /// prefixes, where the secret is read from), each side summed up in words.
    Webhooks {
        old: String,
        new: String,
    },
}

/// One route that differs, or a change in the order routes are matched in.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteDiff {
    /// Only in the new configuration.
    Added(Route),
    /// Only in the old configuration.
    Removed(Route),
    /// In both; `changes` keys are `method`, `path`, `class`, `account`, `cache_for`.
    Changed {
        name: String,
        changes: Vec<SettingChange>,
    },
    /// The routes in both configurations are matched in another order (the first match wins):
    /// their names in the old order and in the new.
    Reordered { old: Vec<String>, new: Vec<String> },
}

/// One setting whose value changed, both values as an operator writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingChange {
    /// The key within its section or route, e.g. `capacity`, `breaker.window`, `cache_for`.
    pub key: String,
    pub old: String,
    pub new: String,
    /// What the change means when the values alone do not say it, e.g. `×2.0, raised`.
    pub note: Option<String>,
}

/// A change a reload refuses unless forced. `Display`: `guardrail: KEY_PATH: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guardrail {
    /// Where, by partner id: `partner[wallet-a].quota.inquiry_scheduled`,
    /// `partner[wallet-a].keys_sha256`, or `partner` for all quotas together.
    pub key_path: String,
    pub message: String,
}

/// Compares two valid configurations: what applying `new` in place of `old` changes.
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    ConfigDiff {
        partners: compare::partners(&old.partners, &new.partners),
        routes: compare::routes(&old.routes, &new.routes),
        server: compare::server(old, new),
        biller: compare::biller(old, new),
        before: Commitment::of(old),
        after: Commitment::of(new),
    }
}

impl ConfigDiff {
    /// True when the two configurations behave the same (comments and layout aside).
    pub fn is_empty(&self) -> bool {
        self.partners.is_empty()
            && self.routes.is_empty()
            && self.server.is_empty()
            && self.biller.is_empty()
    }

    /// One line for the reload log, e.g.
    /// `2 partners changed, 1 added, 0 removed, routes unchanged, server and biller unchanged`;
    /// `no changes` when there are none.
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "no changes".to_owned();
        }
        let (partners, routes) = (self.partner_counts(), self.route_counts());
        let settings: Vec<String> = (self.server.iter().map(|s| format!("server.{}", s.key)))
            .chain(self.biller.iter().map(|s| format!("biller.{}", s.key)))
            .collect();
        let settings = if settings.is_empty() {
            "server and biller unchanged".to_owned()
        } else {
            format!("settings changed: {}", settings.join(", "))
        };
        format!(
            "{}, {}, {settings}",
            partners.summary("partner"),
            routes.summary("route")
        )
    }

    fn partner_counts(&self) -> Counts {
        Counts::of(self.partners.iter().map(|p| match p {
            PartnerDiff::Added(_) => Kind::Added,
            PartnerDiff::Removed(_) => Kind::Removed,
            PartnerDiff::Changed { .. } => Kind::Changed,
        }))
    }

    fn route_counts(&self) -> Counts {
        Counts::of(self.routes.iter().map(|r| match r {
            RouteDiff::Added(_) => Kind::Added,
            RouteDiff::Removed(_) => Kind::Removed,
            RouteDiff::Changed { .. } => Kind::Changed,
            RouteDiff::Reordered { .. } => Kind::Reordered,
        }))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Added,
    Removed,
    Changed,
    Reordered,
}

/// How many entries of a section were added, removed, changed, and whether it was reordered.
#[derive(Default)]
struct Counts {
    added: usize,
    removed: usize,
    changed: usize,
    reordered: bool,
}

impl Counts {
    fn of(kinds: impl Iterator<Item = Kind>) -> Self {
        let mut counts = Counts::default();
        for kind in kinds {
            match kind {
                Kind::Added => counts.added += 1,
                Kind::Removed => counts.removed += 1,
                Kind::Changed => counts.changed += 1,
                Kind::Reordered => counts.reordered = true,
            }
        }
        counts
    }

    fn is_empty(&self) -> bool {
        self.added + self.removed + self.changed == 0 && !self.reordered
    }

    /// `partners unchanged` or `1 partner changed, 2 added, 0 removed[, reordered]`.
    fn summary(&self, noun: &str) -> String {
        if self.is_empty() {
            return format!("{noun}s unchanged");
        }
        let plural = if self.changed == 1 { "" } else { "s" };
        let mut line = format!(
            "{} {noun}{plural} changed, {} added, {} removed",
            self.changed, self.added, self.removed
        );
        if self.reordered {
            line.push_str(", reordered");
        }
        line
    }

    /// `2 changed, 1 added, 0 removed[, reordered]`, for a section heading.
    fn heading(&self) -> String {
        if self.is_empty() {
            return "unchanged".to_owned();
        }
        let mut line = format!(
            "{} changed, {} added, {} removed",
            self.changed, self.added, self.removed
        );
        if self.reordered {
            line.push_str(", reordered");
        }
        line
    }
}
