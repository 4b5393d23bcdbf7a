//! The admission decision: who is calling, what they ask, and whether it may reach the biller.
//!
//! [`Gate::decide`] is a pure function of the request's parts, the gate (built from one
//! configuration snapshot) and the clock: no I/O, no `await`, no lock on the path of a known
//! partner and account (atomics and compare-and-swap; an account seen for the first time takes
//! its shard's lock of the account table). Checks run in order — key, route, class open, partner
//! quota for the class, per-account quota, biller budget — and the first refusal answers.
//!
//! With thousands of partners and a million accounts, a decision's state is mostly not in
//! cache. The layout keeps a refusal at the partner's quota to one round of misses: the key's
//! hint (a compact table that stays in cache) names the partner and the slot of its cell (see
//! [`KeyIndex`]), so the gate is found by the partner's index and the cell by its slot, with
//! no pointer read first; the gate, the cell — which holds the suspension and the one-cell
//! quotas' arrival times — and the key's entry are then asked for together. The account's
//! slot (see [`AccountTable`]) is asked for as soon as routing has found the account.

mod accounts;
mod biller;
mod budget;
pub(crate) mod gcra;
mod identify;
mod quota;
mod route;
mod shed;
mod suspension;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use governor::nanos::Nanos;

use http::Method;

pub use accounts::{AccountDenial, AccountLimiter, AccountTable, Place};
pub use biller::{BillerOutcome, Pause, Protection, Shed, Ticket, PAYMENT_FAILURE_RATE};
pub use budget::Budget;
pub use identify::{Asked, Card, KeyIndex};
pub use quota::{Passed, Quota, QuotaLines, Remaining};
pub use route::{account_ok, Matched, Router, MAX_ACCOUNT_LEN};
pub use shed::Shedder;
pub use suspension::{CellRef, PartnerCell, Suspension, Suspensions, CHUNK};

use crate::clock::Clock;
use crate::config::{Class, Config, Mode, Rate, RouteClass};
use crate::fleet::{FleetState, Lease, Ledger, Taken};
use crate::ids::{PartnerId, PerPartner, RouteId};

/// The biller's capacity levels as `[biller]` sets them: the whole, what inquiries may use,
/// what scheduled polls may use (`None` for a level whose reserve is zero).
pub fn biller_levels(biller: &crate::config::Biller) -> [Option<Rate>; 3] {
    budget::level_rates(biller.capacity, biller.payment_reserve, biller.user_reserve)
}

/// What the decision reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'r> {
    pub method: &'r Method,
    pub path: &'r str,
    pub query: Option<&'r str>,
    /// The value of the key header, if present.
    pub key: Option<&'r [u8]>,
    /// The SHA-256 of the client certificate the connection's TLS handshake verified, if any.
    pub certificate: Option<&'r [u8; 32]>,
    /// True when the origin header says `user` (a person is waiting).
    pub origin_user: bool,
}

/// Why a request was (or, in shadow mode, would have been) refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    MissingKey,
    UnknownKey,
    NoRoute,
    ClassClosed,
    PartnerQuota,
    AccountQuota,
    AccountTableFull,
    BillerCapacity,
    Suspended,
    BillerPaused,
    BreakerOpen,
    BillerBusy,
    BillerStrained,
    /// The bill account in the path or query is unfit to forward (see
    /// [`account_ok`]).
    BadAccount,
    /// The key and the client certificate belong to different partners (or the key to none).
    KeyCertificateMismatch,
    /// The key's partner lists client certificates, and the connection presented none of them.
    CertificateRequired,
}

impl Reason {
    /// Every reason, for binding metric handles up front.
    pub const ALL: [Reason; 16] = [
        Reason::MissingKey,
        Reason::UnknownKey,
        Reason::NoRoute,
        Reason::ClassClosed,
        Reason::PartnerQuota,
        Reason::AccountQuota,
        Reason::AccountTableFull,
        Reason::BillerCapacity,
        Reason::Suspended,
        Reason::BillerPaused,
        Reason::BreakerOpen,
        Reason::BillerBusy,
        Reason::BillerStrained,
        Reason::BadAccount,
        Reason::KeyCertificateMismatch,
        Reason::CertificateRequired,
    ];

    /// The label used in metrics and in problem bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingKey => "missing_key",
            Reason::UnknownKey => "unknown_key",
            Reason::NoRoute => "no_route",
            Reason::ClassClosed => "class_closed",
            Reason::PartnerQuota => "partner_quota",
            Reason::AccountQuota => "account_quota",
            Reason::AccountTableFull => "account_table_full",
            Reason::BillerCapacity => "biller_capacity",
            Reason::Suspended => "suspended",
            Reason::BillerPaused => "biller_paused",
            Reason::BreakerOpen => "breaker_open",
            Reason::BillerBusy => "biller_busy",
            Reason::BillerStrained => "biller_strained",
            Reason::BadAccount => "bad_account",
            Reason::KeyCertificateMismatch => "key_certificate_mismatch",
            Reason::CertificateRequired => "certificate_required",
        }
    }

    /// Index into per-reason arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether shadow mode forwards a request refused for this reason. Shadow mode trials a
    /// partner's own limits; access rules and the biller's protection stay enforced.
    pub fn shadowable(self) -> bool {
        matches!(
            self,
            Reason::PartnerQuota | Reason::AccountQuota | Reason::AccountTableFull
        )
    }
}

/// Which quota a `RateLimit` field speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Class(Class),
    PerAccount,
    Biller,
    /// The subscription API's own quota (`quota.subscription`).
    Subscription,
}

impl Policy {
    /// The policy name in `RateLimit-Policy` and `RateLimit`.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Class(class) => class.as_str(),
            Policy::PerAccount => "per_account",
            Policy::Biller => "biller",
            Policy::Subscription => "subscription",
        }
    }
}

/// A quota's state after a check, for the `RateLimit` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub policy: Policy,
    pub rate: Rate,
    pub remaining: Remaining,
}

/// An admitted request. `'r` borrows the request, `'g` the gate that admitted it.
#[derive(Debug)]
pub struct Admitted<'r, 'g> {
    pub partner: PartnerId,
    pub class: Class,
    pub route: RouteId,
    pub account: Option<&'r str>,
    /// The partner's quota for the class, after this request.
    pub limit: Limit,
    /// In shadow mode: what would have refused it.
    pub shadow: Option<Reason>,
    /// The right to send it to the biller; report the outcome with [`Ticket::finish`].
    pub ticket: Ticket<'g>,
}

/// A refused request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub reason: Reason,
    pub partner: Option<PartnerId>,
    pub class: Option<Class>,
    pub route: Option<RouteId>,
    /// The quota that refused, for `Retry-After` and the `RateLimit` fields.
    pub limit: Option<Limit>,
    /// How long to wait before trying again, when waiting helps.
    pub retry_after: Option<Duration>,
}

/// The decision for one request.
#[derive(Debug)]
pub enum Decision<'r, 'g> {
    Admit(Admitted<'r, 'g>),
    Deny(Denied),
}

/// One partner's admission state: three cache lines, laid out in this order (`repr(C)`) so
/// that a scheduled poll — the class a polling storm is made of — finds its quota, the
/// pointer to the partner's cell and the mode on one line. The payment and user-inquiry
/// quotas come before it; the per-account limit and the id after.
#[repr(C, align(64))]
pub struct PartnerGate {
    /// One limiter per class, `None` for a closed class. A one-cell quota's arrival time is
    /// in the partner's cell.
    pub quotas: [Option<Quota>; 3],
    /// The partner's runtime state, shared with the registry and every snapshot: its
    /// suspension (so suspending takes effect at once), the pause the biller asked for naming
    /// it, and its one-cell quotas' arrival times.
    pub cell: CellRef,
    pub mode: Mode,
    /// The per-account limit, its accounts kept in the gate's [`AccountTable`].
    pub accounts: Option<AccountLimiter>,
    pub id: Arc<str>,
    /// The partner lists client certificates: its key alone does not identify it.
    pub needs_certificate: bool,
}

impl PartnerGate {
    /// The partner's quota for `class` with the arrival time it spends, `None` when the class
    /// is closed.
    #[inline]
    pub fn quota(&self, class: Class) -> Option<(&Quota, &AtomicU64)> {
        let quota = self.quotas[class.index()].as_ref()?;
        Some((quota, self.cell.arrival(class)))
    }

    /// Asks for the gate's lines (see [`crate::memory`]).
    #[inline]
    fn prefetch(&self) {
        let at = crate::memory::address_of(self);
        for line in 0..std::mem::size_of::<PartnerGate>().div_ceil(64) {
            crate::memory::prefetch_address(at.wrapping_add(64 * line));
        }
    }
}

/// A partner's card in the key index: the slot of its cell, which the key's hint carries. The
/// gate is found by the partner's index; the cell, shared by every snapshot, by this slot and
/// the address of its chunk (see [`Gate::cell_address`]).
fn card_of(gate: &PartnerGate) -> Card {
    gate.cell.slot()
}

/// Everything the decision needs, built from one configuration.
pub struct Gate {
    keys: KeyIndex,
    /// Client certificate fingerprints → partner: few, and looked up only for a request on a
    /// connection that presented a verified certificate.
    certificates: HashMap<[u8; 32], PartnerId>,
    router: Router,
    /// Every partner's per-account state; carried from one gate to the next.
    accounts: Arc<AccountTable>,
    partners: PerPartner<PartnerGate>,
    /// The address of each chunk of partner cells, by chunk, for [`Gate::cell_address`].
    cell_chunks: Box<[usize]>,
    protection: Arc<Protection>,
    clock: Clock,
    /// In a fleet: the leases on the fleet's buckets, spent beside the local quotas.
    fleet: Option<Ledger>,
}

impl Gate {
    /// Builds the gate for `config`. Limiter state is carried over from `previous` for every
    /// partner and class whose rate did not change, and likewise for per-account tables and the
    /// biller budget, so a reload resets nobody's quota.
    pub fn build(
        config: &Config,
        previous: Option<&Gate>,
        clock: &Clock,
        suspensions: &Suspensions,
    ) -> Gate {
        let old = |id: &str| previous.and_then(|g| g.partners.iter().find(|p| &*p.id == id));
        let table = previous.map_or_else(
            || Arc::new(AccountTable::new(clock.clone())),
            |g| Arc::clone(&g.accounts),
        );
        let partners = config
            .partners
            .iter()
            .map(|p| {
                let before = old(&p.id);
                let cell = suspensions.cell(&p.id);
                let quotas = Class::ALL.map(|class| {
                    let rate = p.quota.get(class)?;
                    let kept = before
                        .and_then(|b| b.quotas[class.index()].as_ref())
                        .filter(|q| q.rate() == rate)
                        .cloned();
                    Some(kept.unwrap_or_else(|| {
                        // A new rate, or a partner new to this gate: a fresh quota. A one-cell
                        // one spends the arrival time in the partner's cell, which outlives
                        // gates (and a partner removed and added again): it starts afresh.
                        let quota = Quota::new(rate);
                        if quota.is_one_cell() {
                            cell.restart(class);
                        }
                        quota
                    }))
                });
                let accounts = p.per_account.map(|rate| {
                    before
                        .and_then(|b| b.accounts.as_ref())
                        .filter(|a| a.rate() == rate && a.ceiling() == p.max_tracked_accounts)
                        .cloned()
                        .unwrap_or_else(|| table.limiter(rate, p.max_tracked_accounts))
                });
                PartnerGate {
                    id: Arc::from(p.id.as_str()),
                    mode: p.mode,
                    quotas,
                    accounts,
                    cell,
                    needs_certificate: !p.client_cert_sha256.is_empty(),
                }
            })
            .collect::<Vec<_>>();
        let protection = Arc::new(Protection::build(
            &config.biller,
            previous.map(|g| &*g.protection),
            clock,
        ));
        Gate {
            keys: KeyIndex::with_cards(
                config
                    .partners
                    .iter()
                    .zip(&partners)
                    .map(|(p, gate)| (&p.keys_sha256[..], card_of(gate))),
            ),
            certificates: config
                .partners
                .iter()
                .enumerate()
                .flat_map(|(i, p)| {
                    p.client_cert_sha256
                        .iter()
                        .map(move |digest| (*digest, PartnerId::new(i)))
                })
                .collect(),
            router: Router::new(config.routes.clone()),
            accounts: table,
            partners: partners.into(),
            // After every partner has its cell: each one's chunk is listed.
            cell_chunks: suspensions.chunk_addresses(),
            protection,
            clock: clock.clone(),
            fleet: None,
        }
    }

    /// This gate, one of a fleet's (see [`crate::fleet`]): every partner quota and level of
    /// the biller's capacity is also spent from a lease on the fleet's bucket, and per-account
    /// quotas are shared among the instances alive, and so are the breakers' and the shedder's
    /// evidence and the in-flight limit (see [`Protection::one_of`]), for as many instances as
    /// are alive now. Leases `previous` held on unchanged quotas are carried over.
    pub fn in_fleet(
        mut self,
        config: &Config,
        state: Arc<FleetState>,
        previous: Option<&Gate>,
    ) -> Gate {
        // The breakers, the shedder and the in-flight limit see this instance's calls alone:
        // built for its share of them.
        self.protection = Arc::new(Protection::one_of(
            &config.biller,
            previous.map(|g| &*g.protection),
            &self.clock,
            state.instances(),
        ));
        let before = previous.and_then(|g| g.fleet.as_ref());
        self.fleet = Some(Ledger::build(config, before, state));
        self
    }

    /// The fleet's leases, when this gate is one of a fleet's.
    pub fn fleet(&self) -> Option<&Ledger> {
        self.fleet.as_ref()
    }

    pub fn partners(&self) -> &PerPartner<PartnerGate> {
        &self.partners
    }

    /// Where the partner cell of `slot` is, as a number, for prefetching only (0 if unknown).
    #[inline]
    fn cell_address(&self, slot: Card) -> usize {
        let (chunk, place) = (slot as usize / CHUNK, slot as usize % CHUNK);
        self.cell_chunks.get(chunk).map_or(0, |first| {
            first.wrapping_add(place * std::mem::size_of::<PartnerCell>())
        })
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The breaker, the in-flight limit, the capacity budget and the pauses.
    pub fn protection(&self) -> &Arc<Protection> {
        &self.protection
    }

    /// What `partner`'s quota for `class` would say now, spending nothing; `None` when the
    /// class is closed to it (or there is no such partner).
    pub fn quota_now(&self, partner: PartnerId, class: Class) -> Option<Remaining> {
        let (quota, own) = self.partners.get(partner)?.quota(class)?;
        Some(quota.peek(own, self.clock.now()))
    }

    /// Pauses what the biller asked to pause: one partner, or a whole class.
    pub fn pause(&self, class: Class, partner: Option<PartnerId>, wait: Duration) {
        let until = governor::nanos::Nanos::from(self.clock.elapsed() + wait);
        match partner.and_then(|i| self.partners.get(i)) {
            Some(p) => p.cell.pause().until(until),
            None => self.protection.pauses[class.index()].until(until),
        }
    }

    /// Evicts idle accounts, and those of limits no longer in use, from the account table.
    pub fn sweep_accounts(&self) {
        self.accounts.sweep();
    }

    /// The table every partner's accounts are kept in.
    pub fn accounts(&self) -> &Arc<AccountTable> {
        &self.accounts
    }

    /// Decides one request: [`Gate::classify`], then [`Gate::admit`]. Pure: reads the clock,
    /// spends tokens, never blocks.
    pub fn decide<'r>(&self, req: &RequestParts<'r>) -> Decision<'r, '_> {
        match self.classify(req) {
            Ok(classified) => self.admit(classified),
            Err(denied) => Decision::Deny(denied),
        }
    }

    /// Who is asking and what: the key's partner (not suspended), the route, the class (open to
    /// the partner). Spends nothing.
    pub fn classify<'r>(&self, req: &RequestParts<'r>) -> Result<Classified<'r>, Denied> {
        let deny = |reason, partner, class, route| Denied {
            reason,
            partner,
            class,
            route,
            limit: None,
            retry_after: None,
        };
        // A verified client certificate names its partner outright; a key with it must name
        // the same one.
        let by_certificate = req
            .certificate
            .and_then(|digest| self.certificates.get(digest).copied());
        if req.key.is_none() && by_certificate.is_none() {
            return Err(deny(Reason::MissingKey, None, None, None));
        }
        // The key's hint and entry are asked for first. Routing reads only the request and
        // the router, so it runs while they are on their way. The account's slot depends only
        // on the account number, so it is asked for as soon as routing has found the number;
        // then the partner's gate and cell are asked for the moment the key's hint names the
        // partner.
        let asked = req.key.map(|key| self.keys.ask(key));
        let matched = self.router.find(req.method, req.path, req.query);
        let class = matched.map(|m| match m.class {
            RouteClass::Payment => Class::Payment,
            RouteClass::Inquiry if req.origin_user => Class::InquiryUser,
            RouteClass::Inquiry => Class::InquiryScheduled,
        });
        let account = matched.and_then(|m| match (m.class, m.account) {
            (RouteClass::Inquiry, Some(account)) => Some(account),
            _ => None,
        });
        let place = account.map(|account| {
            let place = self.accounts.place(account);
            self.accounts.prefetch(place);
            place
        });
        let early = |p: PartnerId, slot: Card| {
            if let Some(gate) = self.partners.get(p) {
                gate.prefetch();
            }
            crate::memory::prefetch_address(self.cell_address(slot));
        };
        let found = asked.map(|asked| self.keys.find_asked(asked, early));
        if let (None, Some(by_cert)) = (found, by_certificate) {
            early(by_cert, card_of(&self.partners[by_cert]));
        }
        let partner = self.who(found, by_certificate)?;
        let gate = &self.partners[partner];
        if let Some(class) = class {
            // A sharded quota's cells, found from the gate.
            if let Some(quota) = &gate.quotas[class.index()] {
                quota.lines().prefetch();
            }
        }
        if gate.cell.is_suspended() {
            return Err(deny(Reason::Suspended, Some(partner), None, None));
        }
        let (Some(matched), Some(class)) = (matched, class) else {
            return Err(deny(Reason::NoRoute, Some(partner), None, None));
        };
        // A malformed request, whatever the partner may do: nothing is spent for it.
        if matched.bad_account {
            return Err(deny(
                Reason::BadAccount,
                Some(partner),
                Some(class),
                Some(matched.route),
            ));
        }
        if gate.quotas[class.index()].is_none() {
            return Err(deny(
                Reason::ClassClosed,
                Some(partner),
                Some(class),
                Some(matched.route),
            ));
        }
        Ok(Classified {
            partner,
            class,
            route: matched.route,
            route_class: matched.class,
            account: matched.account,
            account_place: place,
        })
    }

    /// The partner a request's key (`found`: looked up, `None` when it carried none) and
    /// verified client certificate name: a certificate names its partner outright, a key with
    /// it must name the same one, and a partner that lists certificates is not reached by its
    /// key alone.
    #[inline]
    fn who(
        &self,
        found: Option<Option<PartnerId>>,
        by_certificate: Option<PartnerId>,
    ) -> Result<PartnerId, Denied> {
        let deny = Gate::denied;
        match (found, by_certificate) {
            (None, Some(by_cert)) => Ok(by_cert),
            (Some(Some(by_key)), Some(by_cert)) if by_key == by_cert => Ok(by_key),
            (Some(_), Some(by_cert)) => Err(deny(Reason::KeyCertificateMismatch, Some(by_cert))),
            (Some(Some(by_key)), None) if self.partners[by_key].needs_certificate => {
                Err(deny(Reason::CertificateRequired, Some(by_key)))
            }
            (Some(Some(by_key)), None) => Ok(by_key),
            (Some(None), None) | (None, None) => Err(deny(Reason::UnknownKey, None)),
        }
    }

    /// Who is asking, for a request the gateway answers itself (the subscription API): the
    /// partner its key and client certificate name, as [`Gate::classify`] finds it, not
    /// suspended. Spends nothing.
    pub fn identify(
        &self,
        key: Option<&[u8]>,
        certificate: Option<&[u8; 32]>,
    ) -> Result<PartnerId, Denied> {
        let by_certificate = certificate.and_then(|digest| self.certificates.get(digest).copied());
        if key.is_none() && by_certificate.is_none() {
            return Err(Gate::denied(Reason::MissingKey, None));
        }
        let found = key.map(|key| self.keys.find(key));
        let partner = self.who(found, by_certificate)?;
        if self.partners[partner].cell.is_suspended() {
            return Err(Gate::denied(Reason::Suspended, Some(partner)));
        }
        Ok(partner)
    }

    /// A refusal that names no class, route or quota.
    fn denied(reason: Reason, partner: Option<PartnerId>) -> Denied {
        Denied {
            reason,
            partner,
            class: None,
            route: None,
            limit: None,
            retry_after: None,
        }
    }

    /// Spends the partner's quota for the class, the per-account quota and the biller's
    /// protection for a classified request that is to reach the biller.
    pub fn admit<'r>(&self, c: Classified<'r>) -> Decision<'r, '_> {
        let partner = &self.partners[c.partner];
        let deny = |reason, limit: Option<Limit>| {
            Decision::Deny(Denied {
                reason,
                partner: Some(c.partner),
                class: Some(c.class),
                route: Some(c.route),
                retry_after: limit.map(|l: Limit| l.remaining.wait),
                limit,
            })
        };
        let now = self.clock.now();
        let shadow = partner.mode == Mode::Shadow;
        let mut would_refuse = None;
        let Some((quota, own)) = partner.quota(c.class) else {
            return deny(Reason::ClassClosed, None);
        };
        let class_limit = |remaining| Limit {
            policy: Policy::Class(c.class),
            rate: quota.rate(),
            remaining,
        };
        // In a fleet, the fleet's lease first: a request it refuses spends nothing here. A
        // later refusal gives its token back.
        let mut leased = Leased::default();
        if let Some(fleet) = &self.fleet {
            if let Some(lease) = fleet.partner(c.partner, c.class) {
                match lease.take(fleet.state(), now.as_u64(), 1) {
                    Ok(taken) => leased.partner = Some((lease, taken)),
                    Err(_) if shadow => would_refuse = Some(Reason::PartnerQuota),
                    Err(wait) => {
                        let remaining = Remaining::refused(quota.rate(), wait);
                        return deny(Reason::PartnerQuota, Some(class_limit(remaining)));
                    }
                }
            }
        }
        // What remains of the quota is worked out only once the request is admitted.
        let spent = match quota.pass_n(own, now, 1) {
            Ok(passed) => Ok(passed),
            Err(remaining) if shadow => {
                would_refuse = Some(Reason::PartnerQuota);
                Err(remaining)
            }
            Err(remaining) => {
                leased.refund();
                return deny(Reason::PartnerQuota, Some(class_limit(remaining)));
            }
        };

        // The account's key is worked out only now: a refusal at the partner's quota never
        // reads the per-account limit's line.
        if let (Some(accounts), Some(place)) = (&partner.accounts, c.account_place) {
            let key = self.accounts.key_at(place, accounts.tag());
            let instances = self.fleet.as_ref().map_or(1, |f| f.state().instances());
            if let Err(denial) = accounts.check_shared(key, now, instances) {
                let (reason, wait) = match denial {
                    AccountDenial::TooOften(wait) => (Reason::AccountQuota, wait),
                    // A full table frees up as idle accounts are swept; one replenish interval
                    // is when the oldest of them can next become idle.
                    AccountDenial::TableFull => (
                        Reason::AccountTableFull,
                        accounts.rate().replenish_interval(),
                    ),
                };
                if !shadow {
                    let limit = Limit {
                        policy: Policy::PerAccount,
                        rate: accounts.rate(),
                        remaining: Remaining::refused(accounts.rate(), wait),
                    };
                    leased.refund();
                    return deny(reason, Some(limit));
                }
                would_refuse = would_refuse.or(Some(reason));
            }
        }

        // The fleet's leases on the biller's capacity, level by level, before the local budget.
        if let Some(fleet) = &self.fleet {
            for (level, lease) in fleet.biller(c.class).enumerate() {
                match lease.take(fleet.state(), now.as_u64(), 1) {
                    Ok(taken) => leased.levels[level] = Some((lease, taken)),
                    Err(wait) => {
                        leased.refund();
                        return Decision::Deny(Denied {
                            reason: Reason::BillerCapacity,
                            partner: Some(c.partner),
                            class: Some(c.class),
                            route: Some(c.route),
                            limit: None,
                            retry_after: Some(wait),
                        });
                    }
                }
            }
        }
        let ticket = match self.protection.admit(c.class, partner.cell.pause(), now) {
            Ok(ticket) => ticket,
            Err(shed) => {
                leased.refund();
                let (reason, wait) = match shed {
                    Shed::Paused(wait) => (Reason::BillerPaused, wait),
                    Shed::BreakerOpen(wait) => (Reason::BreakerOpen, wait),
                    Shed::Capacity(wait) => (Reason::BillerCapacity, wait),
                    Shed::Busy => (Reason::BillerBusy, Duration::from_secs(1)),
                    Shed::Strained => (Reason::BillerStrained, Duration::from_secs(1)),
                };
                return Decision::Deny(Denied {
                    reason,
                    partner: Some(c.partner),
                    class: Some(c.class),
                    route: Some(c.route),
                    limit: None,
                    retry_after: Some(wait),
                });
            }
        };

        let remaining = spent.map_or_else(|refused| refused, |passed| quota.remaining(passed));
        Decision::Admit(Admitted {
            partner: c.partner,
            class: c.class,
            route: c.route,
            account: c.account,
            limit: class_limit(remaining),
            shadow: would_refuse,
            ticket,
        })
    }

    /// Spends `cost` of the partner's class quota for an answer served from the gateway's
    /// memory: never the per-account quota or the biller's capacity. `Ok(None)` when the cost
    /// is 0; in shadow mode an over-quota hit is `Ok` with `shadow` set.
    pub fn admit_cached(&self, c: &Classified<'_>, cost: u32) -> Result<CachedAdmission, Denied> {
        let Some(cost) = NonZeroU32::new(cost) else {
            return Ok(CachedAdmission {
                limit: None,
                shadow: None,
            });
        };
        let now = self.clock.now();
        // In a fleet, a hit spends the fleet's lease too: the quota is the fleet's.
        let mut leased = Leased::default();
        if let Some(fleet) = &self.fleet {
            if let Some(lease) = fleet.partner(c.partner, c.class) {
                match lease.take(fleet.state(), now.as_u64(), cost.get()) {
                    Ok(taken) => leased.partner = Some((lease, taken)),
                    Err(wait) => {
                        let rate = lease.rate();
                        let limit = Limit {
                            policy: Policy::Class(c.class),
                            rate,
                            remaining: Remaining::refused(rate, wait),
                        };
                        if self.partners[c.partner].mode == Mode::Shadow {
                            return Ok(CachedAdmission {
                                limit: Some(limit),
                                shadow: Some(Reason::PartnerQuota),
                            });
                        }
                        return Err(Denied {
                            reason: Reason::PartnerQuota,
                            partner: Some(c.partner),
                            class: Some(c.class),
                            route: Some(c.route),
                            retry_after: Some(wait),
                            limit: Some(limit),
                        });
                    }
                }
            }
        }
        let spent = self.spend_quota(c.partner, c.class, cost.get(), now);
        if !matches!(spent, Some(Ok(_))) {
            leased.refund_n(cost.get());
        }
        match spent {
            Some(Ok(limit)) => Ok(CachedAdmission {
                limit: Some(limit),
                shadow: None,
            }),
            Some(Err(limit)) if self.partners[c.partner].mode == Mode::Shadow => {
                Ok(CachedAdmission {
                    limit: Some(limit),
                    shadow: Some(Reason::PartnerQuota),
                })
            }
            Some(Err(limit)) => Err(Denied {
                reason: Reason::PartnerQuota,
                partner: Some(c.partner),
                class: Some(c.class),
                route: Some(c.route),
                retry_after: Some(limit.remaining.wait),
                limit: Some(limit),
            }),
            None => Err(Denied {
                reason: Reason::ClassClosed,
                partner: Some(c.partner),
                class: Some(c.class),
                route: Some(c.route),
                retry_after: None,
                limit: None,
            }),
        }
    }

    /// `None` when the class is closed; else the quota's state after spending `cost`.
    fn spend_quota(
        &self,
        partner: PartnerId,
        class: Class,
        cost: u32,
        now: Nanos,
    ) -> Option<Result<Limit, Limit>> {
        let (quota, own) = self.partners[partner].quota(class)?;
        let limit = |remaining| Limit {
            policy: Policy::Class(class),
            rate: quota.rate(),
            remaining,
        };
        Some(quota.check_n(own, now, cost).map(limit).map_err(limit))
    }
}

/// What one decision took of the fleet's leases, to give back if a later check refuses.
#[derive(Default)]
struct Leased<'g> {
    partner: Option<(&'g Lease, Taken)>,
    levels: [Option<(&'g Lease, Taken)>; 3],
}

impl Leased<'_> {
    fn refund(&self) {
        self.refund_n(1);
    }

    fn refund_n(&self, n: u32) {
        for (lease, taken) in self.partner.iter().chain(self.levels.iter().flatten()) {
            lease.refund(*taken, n);
        }
    }
}

/// A request identified and classified, not yet admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified<'r> {
    pub partner: PartnerId,
    pub class: Class,
    pub route: RouteId,
    pub route_class: RouteClass,
    pub account: Option<&'r str>,
    /// For an inquiry naming an account: where the account is in the account table (already
    /// asked for), for the per-account limit if the partner has one.
    pub account_place: Option<Place>,
}

/// What a cache hit spent of the partner's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedAdmission {
    /// The class quota after the hit; `None` when hits cost nothing.
    pub limit: Option<Limit>,
    /// In shadow mode: the quota would have refused it.
    pub shadow: Option<Reason>,
}

// The gate's private layout: where each partner's cell is, and which line a decision reads.
#[cfg(test)]
mod tests {
    use super::*;

    /// Partner `a` (key `ka`) with a sharded scheduled quota and a per-account one; `b` (key
    /// `kb`) with a one-cell payment quota.
    fn two_partners() -> Config {
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[biller]
url = "http://127.0.0.1:9"
capacity = "1000/s"

[[route]]
name = "bill-inquiry"
method = "GET"
path = "/v1/bills/{{account}}"
class = "inquiry"

[[partner]]
id = "a"
keys_sha256 = ["{a}"]
quota = {{ inquiry_scheduled = "500/s" }}
per_account = "1/s"

[[partner]]
id = "b"
keys_sha256 = ["{b}"]
quota = {{ payment = "5/s" }}
"#,
            a = crate::config::hash_key("ka"),
            b = crate::config::hash_key("kb"),
        );
        crate::config::load_str(&text, "two-partners.toml").expect("a valid config")
    }

    #[test]
    fn the_key_index_carries_where_each_partners_cell_is() {
        let (clock, _) = Clock::fake();
        let cfg = two_partners();
        let gate = Gate::build(&cfg, None, &clock, &Suspensions::default());
        for (n, key) in ["ka", "kb"].into_iter().enumerate() {
            let cell = &gate.partners()[PartnerId::new(n)].cell;
            let card = cell.slot();
            assert_eq!(card_of(&gate.partners()[PartnerId::new(n)]), card);
            assert_eq!(gate.cell_address(card), crate::memory::address_of(&**cell));
            // By digest the first time, from the remembered entry after.
            for _ in 0..2 {
                let partner = gate.keys.find_with(key.as_bytes(), |_, _| {}).unwrap();
                assert_eq!(
                    (partner, gate.keys.card(partner)),
                    (PartnerId::new(n), card)
                );
            }
        }
        // a's 500/s is sharded when there are cores to shard it over; b's 5/s is one cell, kept in
        // b's cell.
        let (a, b) = (
            &gate.partners()[PartnerId::new(0)],
            &gate.partners()[PartnerId::new(1)],
        );
        assert_eq!(
            a.quotas[2].as_ref().unwrap().is_one_cell(),
            crate::shards::count() == 1
        );
        assert!(b.quotas[0].as_ref().unwrap().is_one_cell());
        // Three whole lines, all prefetched together.
        assert_eq!(std::mem::size_of::<PartnerGate>(), 192);
    }

    #[test]
    fn a_scheduled_poll_reads_one_line_of_its_partners_gate() {
        use std::mem::{offset_of, size_of};
        let line = |offset: usize, len: usize| {
            let (first, last) = (offset / 64, (offset + len - 1) / 64);
            assert_eq!(first, last, "{offset}+{len} straddles a line");
            first
        };
        let scheduled = offset_of!(PartnerGate, quotas)
            + Class::InquiryScheduled.index() * size_of::<Option<Quota>>();
        let at = line(scheduled, size_of::<Option<Quota>>());
        assert_eq!(line(offset_of!(PartnerGate, cell), 8), at);
        assert_eq!(line(offset_of!(PartnerGate, mode), 1), at);
        assert_eq!(size_of::<PartnerGate>(), 192, "three lines");
        // The partner's cell: its suspension, pause and arrival times on one line.
        assert_eq!(size_of::<PartnerCell>(), 64);
    }
}
