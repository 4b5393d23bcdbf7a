//! Quotas and the biller's capacity shared by a fleet of gateway instances (`[fleet]`).
//!
//! The fleet keeps one token bucket per partner × class quota, per partner's subscription quota
//! and per level of the biller's capacity in Redis. Each instance holds a [`Lease`] on each: a few tokens taken ahead of need
//! by a refiller beside the request path, spent here by an atomic subtraction. No decision
//! waits on Redis. Without a lease (Redis down, or a quota idle here) an instance spends its
//! share, the quota divided by the instances it last saw alive, and owes it to the bucket.
//! Per-account quotas, too many and too small to lease, are always shared so (see
//! [`FleetState::instances`]).
//!
//! This module decides nothing by I/O: the gateway's fleet task talks to Redis and reports what
//! it heard through [`FleetState`] and the leases.

mod lease;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

pub use lease::{Ask, Lease, Taken, AHEAD, IDLE, SLICE, TICK};

use crate::admission::biller_levels;
use crate::config::{Class, Config};
use crate::ids::PartnerId;

/// What the instance last heard from the fleet: shared by the fleet task, which writes it,
/// and every gate, which reads it per request.
#[derive(Debug)]
pub struct FleetState {
    /// Redis answered the last call in time.
    up: AtomicBool,
    /// Instances alive at the last heartbeat, this one included.
    instances: AtomicU32,
}

impl Default for FleetState {
    fn default() -> Self {
        FleetState::new()
    }
}

impl FleetState {
    /// Not yet heard from: Redis counted down, this instance alone.
    pub fn new() -> FleetState {
        FleetState {
            up: AtomicBool::new(false),
            instances: AtomicU32::new(1),
        }
    }

    /// Whether leases are spent (else every quota is shared).
    #[inline]
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Records whether Redis answered; true when that changed.
    pub fn set_up(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::AcqRel) != up
    }

    /// Instances alive at the last heartbeat (at least this one): what a share divides by.
    #[inline]
    pub fn instances(&self) -> u32 {
        self.instances.load(Ordering::Relaxed).max(1)
    }

    pub fn set_instances(&self, n: u32) {
        self.instances.store(n.max(1), Ordering::Relaxed);
    }
}

/// The levels of the biller's capacity, by index as [`biller_levels`] gives them.
const LEVEL_KEYS: [&str; 3] = ["biller:total", "biller:inquiries", "biller:scheduled"];

/// Every lease one gate spends: each partner's per class, and the biller's capacity levels.
/// A lease whose key and rate a reload keeps is carried over, held tokens and all.
pub struct Ledger {
    state: Arc<FleetState>,
    partners: Vec<[Option<Arc<Lease>>; 3]>,
    /// Each partner's subscription quota (`quota.subscription`), by partner index.
    subscriptions: Vec<Option<Arc<Lease>>>,
    biller: [Option<Arc<Lease>>; 3],
}

impl Ledger {
    pub fn build(config: &Config, previous: Option<&Ledger>, state: Arc<FleetState>) -> Ledger {
        let mut old = previous
            .map(|p| {
                p.leases()
                    .map(|l| (l.key().to_string(), Arc::clone(l)))
                    .collect::<std::collections::HashMap<_, _>>()
            })
            .unwrap_or_default();
        let mut lease = |key: String, rate| match old.remove(&key) {
            Some(kept) if kept.rate() == rate => kept,
            _ => Arc::new(Lease::new(key, rate)),
        };
        let partners = config
            .partners
            .iter()
            .map(|p| {
                Class::ALL.map(|class| {
                    let rate = p.quota.get(class)?;
                    Some(lease(format!("q:{}:{}", p.id, class.as_str()), rate))
                })
            })
            .collect();
        let subscriptions = config
            .partners
            .iter()
            .map(|p| {
                let rate = p.webhooks.as_ref()?.quota;
                Some(lease(format!("q:{}:subscription", p.id), rate))
            })
            .collect();
        let rates = biller_levels(&config.biller);
        let mut level = 0;
        let biller = rates.map(|rate| {
            let key = LEVEL_KEYS[level.min(2)];
            level += 1;
            rate.map(|rate| lease(key.to_string(), rate))
        });
        Ledger {
            state,
            partners,
            subscriptions,
            biller,
        }
    }

    pub fn state(&self) -> &FleetState {
        &self.state
    }

    /// The lease on `partner`'s quota for `class`.
    #[inline]
    pub fn partner(&self, partner: PartnerId, class: Class) -> Option<&Lease> {
        self.partners.get(partner.index())?[class.index()].as_deref()
    }

    /// The lease on `partner`'s subscription quota.
    #[inline]
    pub fn subscription(&self, partner: PartnerId) -> Option<&Lease> {
        self.subscriptions.get(partner.index())?.as_deref()
    }

    /// The leases on the biller's capacity a request of `class` spends: payments the whole,
    /// user inquiries also the inquiries' level, scheduled polls all three.
    pub fn biller(&self, class: Class) -> impl Iterator<Item = &Lease> {
        let levels = match class {
            Class::Payment => 1,
            Class::InquiryUser => 2,
            Class::InquiryScheduled => 3,
        };
        self.biller[..levels].iter().flatten().map(|l| &**l)
    }

    /// Every lease, for the refiller.
    pub fn leases(&self) -> impl Iterator<Item = &Arc<Lease>> {
        self.partners
            .iter()
            .flat_map(|classes| classes.iter().flatten())
            .chain(self.subscriptions.iter().flatten())
            .chain(self.biller.iter().flatten())
    }
}

#[cfg(test)]
mod simulation;
