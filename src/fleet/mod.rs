//! This instance's side of a fleet (`[fleet]`): the background tasks that keep its leases on
//! the fleet's buckets filled, beat its heartbeat, learn who else is alive, and carry
//! suspensions both ways. The admission decision reads only what these tasks leave in
//! [`FleetState`] and the leases (see `billgate_core::fleet`); nothing here is on a request's
//! path, and no request waits on Redis.

pub mod redis;

pub use billgate_core::fleet::*;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::redis::{Beat, Fleet as Heard, LinkError, RedisLink, Refill};
use crate::admission::Suspension;
use crate::config;
use crate::control::Control;

/// How often the heartbeat is written and the fleet read: suspensions reach every instance
/// within two of these.
pub const BEAT: Duration = Duration::from_millis(250);

/// An instance not heard from for this long is no longer counted alive.
pub const ALIVE_WITHIN: Duration = Duration::from_secs(2);

/// How long a fleet role (see [`Fleet::lead`]) is held from its last renewal: the longest a
/// dead leader's work waits for another instance to take it.
pub const LEAD_FOR: Duration = Duration::from_secs(3);

/// How often a role is renewed, or asked for by the instances that do not hold it.
pub const LEAD_EVERY: Duration = Duration::from_millis(500);

/// What an instance publishes about itself with each heartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Info {
    config_sha256: String,
    /// Tokens its leases were granted per second since its previous heartbeat.
    granted_per_second: f64,
    started_unix: u64,
    /// Random, one per process: a name beaten by two processes shows two of these.
    #[serde(default)]
    run: String,
}

/// One instance as `/admin/fleet` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub instance: String,
    /// Milliseconds since its last heartbeat, by Redis's clock.
    pub last_heartbeat_ms_ago: u64,
    /// [`crate::config::Config::fleet_sha256`] of its configuration: what every instance must
    /// agree on (all but `[server]` and `[fleet]`).
    pub config_sha256: String,
    /// Its part of the tokens the fleet granted lately (0 to 1; an even split when idle).
    pub share: f64,
    pub granted_per_second: f64,
    pub this: bool,
}

/// The fleet as this instance last saw it.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub instance: String,
    pub redis_up: bool,
    /// `leases` while Redis answers; `shares` when every quota is divided among the instances
    /// last seen alive.
    pub mode: &'static str,
    pub instances: Vec<MemberView>,
    pub config_sha256: String,
    /// Some live instance runs another configuration.
    pub config_mismatch: bool,
    /// Another process beats under this instance's name.
    pub duplicate_instance: bool,
}

/// The fleet's metrics, registered on the gateway's registry when the fleet starts.
struct FleetMetrics {
    instances: IntGauge,
    refills: IntCounterVec,
    redis_up: IntGauge,
    config_mismatch: IntGauge,
    duplicate_instance: IntGauge,
    fallbacks: IntCounter,
}

impl FleetMetrics {
    fn register(registry: &prometheus::Registry) -> Result<FleetMetrics, prometheus::Error> {
        let instances = IntGauge::new(
            "billgate_fleet_instances",
            "Gateway instances alive at the last heartbeat, this one included.",
        )?;
        let refills = IntCounterVec::new(
            Opts::new(
                "billgate_fleet_lease_refills_total",
                "Lease refills asked of Redis, by result: granted (tokens came), empty (the \
                 fleet's bucket had none), error (no answer in time).",
            ),
            &["result"],
        )?;
        let redis_up = IntGauge::new(
            "billgate_fleet_redis_up",
            "1 while Redis answers in time (quotas spent from leases), 0 while each quota falls \
             back to this instance's share.",
        )?;
        let config_mismatch = IntGauge::new(
            "billgate_fleet_config_mismatch",
            "1 when some live instance runs a configuration other than this one's.",
        )?;
        let duplicate_instance = IntGauge::new(
            "billgate_fleet_duplicate_instance",
            "1 while another process beats under this instance's name (each needs its own); \
             it is counted as one instance more meanwhile.",
        )?;
        let fallbacks = IntCounter::new(
            "billgate_fleet_fallbacks_total",
            "Times this instance lost Redis and fell back to its share of every quota.",
        )?;
        registry.register(Box::new(instances.clone()))?;
        registry.register(Box::new(refills.clone()))?;
        registry.register(Box::new(redis_up.clone()))?;
        registry.register(Box::new(config_mismatch.clone()))?;
        registry.register(Box::new(duplicate_instance.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        for result in ["granted", "empty", "error"] {
            refills.with_label_values(&[result]);
        }
        instances.set(1);
        Ok(FleetMetrics {
            instances,
            refills,
            redis_up,
            config_mismatch,
            duplicate_instance,
            fallbacks,
        })
    }
}

/// Suspensions as last agreed with the fleet.
#[derive(Default)]
struct Agreed {
    /// This instance's suspensions after the last heartbeat.
    local: HashMap<String, Suspension>,
    /// The fleet's at the last heartbeat.
    fleet: HashSet<String>,
}

/// This instance in the fleet.
pub struct Fleet {
    instance: String,
    /// This process's [`Info::run`], and its name as a role's holder: two processes that
    /// share an instance name never both lead.
    run: String,
    holder: String,
    /// Heartbeats that found another process's info under this name, and when the last did.
    twin: Mutex<(u32, Option<std::time::Instant>)>,
    link: RedisLink,
    state: Arc<FleetState>,
    metrics: FleetMetrics,
    view: ArcSwap<View>,
    started_unix: u64,
    /// Tokens granted to this instance, ever, and at the last heartbeat.
    granted: AtomicU64,
    granted_at_beat: Mutex<(u64, std::time::Instant, f64)>,
    /// Redis has answered at least once.
    joined: AtomicBool,
    /// When the last heartbeat was answered.
    heard_at: Mutex<Option<std::time::Instant>>,
    /// How long a refill round trip took lately, in nanoseconds (smoothed): leases are
    /// refilled that much further ahead.
    round_trip: AtomicU64,
    agreed: Mutex<Agreed>,
}

impl Fleet {
    /// This instance's part in the fleet `settings` name; nothing is sent until [`Fleet::run`].
    ///
    /// # Errors
    /// The Redis URL is refused by the client, or the metrics cannot be registered.
    pub fn new(
        settings: &config::Fleet,
        registry: &prometheus::Registry,
        config_sha256: &str,
    ) -> anyhow::Result<Fleet> {
        let instance = settings.instance.clone().unwrap_or_else(default_instance);
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("[fleet]: no randomness: {e}"))?;
        let run = format!("{:016x}", u64::from_le_bytes(random));
        let link = RedisLink::open(&settings.redis, "fleet", settings.timeout)
            .map_err(|e| anyhow::anyhow!("[fleet] redis: {e}"))?;
        let metrics = FleetMetrics::register(registry)?;
        let view = View {
            instance: instance.clone(),
            redis_up: false,
            mode: "shares",
            instances: Vec::new(),
            config_sha256: config_sha256.to_string(),
            config_mismatch: false,
            duplicate_instance: false,
        };
        Ok(Fleet {
            holder: format!("{instance}/{run}"),
            run,
            twin: Mutex::new((0, None)),
            instance,
            link,
            state: Arc::new(FleetState::new()),
            metrics,
            view: ArcSwap::from_pointee(view),
            started_unix: unix_now(),
            granted: AtomicU64::new(0),
            granted_at_beat: Mutex::new((0, std::time::Instant::now(), 0.0)),
            joined: AtomicBool::new(false),
            heard_at: Mutex::new(None),
            round_trip: AtomicU64::new(0),
            agreed: Mutex::new(Agreed::default()),
        })
    }

    /// What every gate of this instance reads.
    pub fn state(&self) -> &Arc<FleetState> {
        &self.state
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The fleet as last seen, for `/admin/fleet`: each heartbeat's age counts the time since
    /// it was heard, so that during an outage the ages keep growing.
    pub fn view(&self) -> View {
        let mut view = View::clone(&self.view.load());
        let since = self
            .heard_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map_or(0, |at| {
                u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)
            });
        for member in &mut view.instances {
            member.last_heartbeat_ms_ago = member.last_heartbeat_ms_ago.saturating_add(since);
        }
        view
    }

    /// One heartbeat before the listeners serve, so that the first requests are shared among
    /// the instances alive rather than each taking the whole quota (a start is not a request:
    /// it may wait, at most `[fleet] timeout`, for Redis).
    pub async fn join(&self, control: &Control) {
        // Until Redis answers, the fleet is as large as it was last seen (the state file's):
        // an instance started while Redis is out of reach spends its share, not whole quotas.
        if let Some(n) = control.fleet_instances_on_file().filter(|n| *n > 1) {
            self.state.set_instances(n);
            self.metrics.instances.set(i64::from(n));
            control
                .shared
                .snapshot_full()
                .gate
                .protection()
                .share_among(n);
        }
        self.beat(control).await;
    }

    /// Refills and heartbeats until `shutdown` turns true. The first heartbeat is tried at
    /// once, so the instance knows its fleet before its first refill.
    pub async fn run(self: Arc<Self>, control: Arc<Control>, shutdown: watch::Receiver<bool>) {
        let shared = Arc::clone(&control.shared);
        let beats = {
            let fleet = Arc::clone(&self);
            let mut shutdown = shutdown.clone();
            async move {
                loop {
                    fleet.beat(&control).await;
                    tokio::select! {
                        _ = tokio::time::sleep(BEAT) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        let refills = {
            let mut shutdown = shutdown.clone();
            async move {
                let mut tick = tokio::time::interval(TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = shutdown.changed() => return,
                    }
                    let snapshot = shared.snapshot_full();
                    if let Some(ledger) = snapshot.gate.fleet() {
                        self.refill(ledger, shared.clock().now().as_u64()).await;
                    }
                }
            }
        };
        tokio::join!(beats, refills);
    }

    /// One refill round: every lease that needs something asks it of its bucket, all in one
    /// round trip.
    async fn refill(&self, ledger: &Ledger, now: u64) {
        // A refill asked now lands a round trip later, and the next one a tick after that.
        let lead = TICK + 2 * Duration::from_nanos(self.round_trip.load(Ordering::Relaxed));
        let asks: Vec<(&Arc<Lease>, Ask)> = ledger
            .leases()
            .map(|lease| (lease, lease.plan(&self.state, now, lead)))
            .filter(|(_, ask)| !ask.is_empty())
            .collect();
        if asks.is_empty() {
            return;
        }
        let batch: Vec<Refill> = asks
            .iter()
            .map(|(lease, ask)| Refill {
                key: lease.key().to_string(),
                per_second: lease.per_second(),
                burst: u64::from(lease.rate().burst.get()),
                want: ask.want,
                give_back: ask.give_back,
                debt: ask.debt,
            })
            .collect();
        let sent = std::time::Instant::now();
        let reply = self.link.refill(&batch).await;
        let took = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let before = self.round_trip.load(Ordering::Relaxed);
        let smoothed = if before == 0 {
            took
        } else {
            (before + took) / 2
        };
        self.round_trip.store(smoothed, Ordering::Relaxed);
        match reply {
            Ok(grants) if grants.len() == asks.len() => {
                let (mut granted, mut empty, mut tokens) = (0, 0, 0);
                for ((lease, ask), grant) in asks.iter().zip(&grants) {
                    lease.granted(ask, grant.granted);
                    if ask.want > 0 {
                        tokens += grant.granted;
                        if grant.granted > 0 {
                            granted += 1;
                        } else {
                            empty += 1;
                        }
                    }
                }
                self.granted.fetch_add(tokens, Ordering::Relaxed);
                self.metrics
                    .refills
                    .with_label_values(&["granted"])
                    .inc_by(granted);
                self.metrics
                    .refills
                    .with_label_values(&["empty"])
                    .inc_by(empty);
                self.answered();
            }
            Ok(grants) => {
                let error = LinkError::Reply(format!(
                    "{} grants for {} refills",
                    grants.len(),
                    asks.len()
                ));
                self.lost(ledger, &error);
            }
            Err(error) => self.lost(ledger, &error),
        }
    }

    /// Says in the view whether Redis answers (the rest of it is as last heard).
    fn show_up(&self, up: bool) {
        let view = self.view.load();
        if view.redis_up != up {
            let mut next = View::clone(&view);
            next.redis_up = up;
            next.mode = if up { "leases" } else { "shares" };
            self.view.store(Arc::new(next));
        }
    }

    /// Redis answered: leases from now on.
    fn answered(&self) {
        self.metrics.redis_up.set(1);
        self.show_up(true);
        if self.state.set_up(true) {
            if self.joined.swap(true, Ordering::AcqRel) {
                tracing::warn!(instance = %self.instance, "Redis answers again: quotas are spent from the fleet's leases again");
            } else {
                tracing::info!(instance = %self.instance, "joined the fleet");
            }
        }
    }

    /// Redis did not answer in time: every lease lapses and each quota falls back to this
    /// instance's share until it answers again. Said once per outage.
    fn lost(&self, ledger: &Ledger, error: &LinkError) {
        self.metrics.refills.with_label_values(&["error"]).inc();
        self.metrics.redis_up.set(0);
        let changed = self.state.set_up(false);
        self.show_up(false);
        for lease in ledger.leases() {
            lease.lapse();
        }
        if changed || !self.joined.swap(true, Ordering::AcqRel) {
            self.metrics.fallbacks.inc();
            tracing::warn!(
                instance = %self.instance,
                instances = self.state.instances(),
                %error,
                "Redis is out of reach: each quota falls back to this instance's share (the quota divided by the instances last seen alive) until it answers"
            );
        }
    }

    /// Holds `role` (one instance of the fleet at a time does its work) until `shutdown`:
    /// `leading` is true while this instance holds it. The role is renewed every [`LEAD_EVERY`]
    /// for [`LEAD_FOR`]; an instance that cannot renew it steps down before its hold expires,
    /// so two instances never both hold it (and while Redis is out of reach, none does).
    pub async fn lead(
        self: Arc<Self>,
        role: &'static str,
        leading: watch::Sender<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut held_until: Option<std::time::Instant> = None;
        loop {
            let asked = std::time::Instant::now();
            match self.link.lead(role, &self.holder, LEAD_FOR).await {
                Ok(true) => held_until = Some(asked + LEAD_FOR),
                Ok(false) => held_until = None,
                Err(error) => {
                    tracing::debug!(%error, role, "could not renew a fleet role");
                }
            }
            // A hold not renewed is given up a renewal early, before another may take it.
            let holds =
                held_until.is_some_and(|until| std::time::Instant::now() + LEAD_EVERY < until);
            if holds != *leading.borrow() {
                tracing::info!(instance = %self.instance, role, leading = holds, "fleet role changed hands");
                leading.send_replace(holds);
            }
            tokio::select! {
                _ = tokio::time::sleep(LEAD_EVERY) => {}
                _ = shutdown.changed() => {
                    leading.send_replace(false);
                    return;
                }
            }
        }
    }

    /// One heartbeat: push this instance's suspension changes, beat, read the fleet, take in
    /// its suspensions.
    async fn beat(&self, control: &Control) {
        let shared = &*control.shared;
        let snapshot = shared.snapshot_full();
        let config_sha256 = snapshot.config.fleet_sha256.clone();
        let mut local: HashMap<String, Suspension> =
            shared.suspensions().list().into_iter().collect();
        let (pushes, removals) = {
            let agreed = self.agreed.lock().unwrap_or_else(PoisonError::into_inner);
            let pushes: Vec<(String, Suspension)> = local
                .iter()
                .filter(|(id, s)| agreed.local.get(*id) != Some(*s))
                .map(|(id, s)| (id.clone(), s.clone()))
                .collect();
            let removals: Vec<(String, Suspension)> = agreed
                .local
                .iter()
                .filter(|(id, _)| !local.contains_key(*id))
                .map(|(id, s)| (id.clone(), s.clone()))
                .collect();
            (pushes, removals)
        };
        let ledger = snapshot.gate.fleet();
        let lost = |error: &LinkError| match ledger {
            Some(ledger) => self.lost(ledger, error),
            None => {
                self.metrics.redis_up.set(0);
                self.state.set_up(false);
                self.show_up(false);
            }
        };
        let mut stale = Vec::new();
        for (id, suspension) in &pushes {
            let json = serde_json::to_string(suspension).unwrap_or_default();
            match self.link.set_suspension(id, &json, false).await {
                Ok(true) => {}
                Ok(false) => stale.push(id.clone()),
                Err(error) => return lost(&error),
            }
        }
        for (id, suspension) in &removals {
            let json = serde_json::to_string(suspension).unwrap_or_default();
            if let Err(error) = self.link.set_suspension(id, &json, true).await {
                return lost(&error);
            }
        }
        // Kept in the state file while this instance was away, and lifted by the fleet
        // meanwhile: lifted here too, not brought back.
        for id in &stale {
            tracing::info!(instance = %self.instance, partner = %id, "a suspension the fleet lifted while this instance was away is lifted here too");
            control.from_fleet(id, None).await;
            local.remove(id);
        }
        let pushes: Vec<(String, Suspension)> = pushes
            .into_iter()
            .filter(|(id, _)| !stale.contains(id))
            .collect();

        let info = Info {
            config_sha256: config_sha256.clone(),
            granted_per_second: self.granted_rate(),
            started_unix: self.started_unix,
            run: self.run.clone(),
        };
        let info = serde_json::to_string(&info).unwrap_or_default();
        let heard = match self
            .link
            .heartbeat(&Beat {
                instance: &self.instance,
                info: &info,
                alive_within: ALIVE_WITHIN,
            })
            .await
        {
            Ok(heard) => heard,
            Err(error) => return lost(&error),
        };
        self.answered();
        let duplicate = self.twinned(&heard);
        let alive = u32::try_from(heard.instances.len()).unwrap_or(u32::MAX);
        // This instance is alive whatever the reply says (a beat written just now), and a
        // process sharing its name is one more: the shares stay within the quotas.
        let alive = if heard.instances.iter().any(|m| m.id == self.instance) {
            alive
        } else {
            alive.saturating_add(1)
        }
        .saturating_add(u32::from(duplicate));
        let resized = alive != self.state.instances();
        if resized {
            // The breakers and the shedder judge on this instance's share of the calls.
            snapshot.gate.protection().share_among(alive);
        }
        self.state.set_instances(alive);
        if resized {
            control.fleet_size_changed().await;
            // The in-flight limit's share is built with the snapshot.
            control.rebuild().await;
        }
        self.metrics.instances.set(i64::from(alive));
        self.take_suspensions(control, &snapshot.config, local, &pushes, &removals, &heard)
            .await;
        let view = self.view_of(&heard, &config_sha256, duplicate);
        if view.duplicate_instance != self.view.load().duplicate_instance {
            if view.duplicate_instance {
                tracing::error!(instance = %self.instance, "another process beats under this instance's name: give each [fleet] instance a name of its own; it is counted as one instance more meanwhile");
            } else {
                tracing::info!(instance = %self.instance, "no other process beats under this instance's name any more");
            }
        }
        self.metrics
            .duplicate_instance
            .set(i64::from(view.duplicate_instance));
        if view.config_mismatch != self.view.load().config_mismatch {
            let others: Vec<&str> = view
                .instances
                .iter()
                .filter(|m| m.config_sha256 != config_sha256)
                .map(|m| m.instance.as_str())
                .collect();
            if view.config_mismatch {
                tracing::warn!(instance = %self.instance, ?others, "instances of the fleet run another configuration (all but [server] and [fleet] differ from this one's)");
            } else {
                tracing::info!(instance = %self.instance, "every instance of the fleet runs this configuration again");
            }
        }
        self.metrics
            .config_mismatch
            .set(i64::from(view.config_mismatch));
        *self.heard_at.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(std::time::Instant::now());
        self.view.store(Arc::new(view));
    }

    /// Applies the fleet's suspension changes here: one the fleet has and this instance has
    /// not (and did not just lift) is taken; one this instance has, the fleet had and no
    /// longer has, was lifted elsewhere and is lifted here. Both go through `control`, which
    /// records them in the state file.
    async fn take_suspensions(
        &self,
        control: &Control,
        config: &config::Config,
        mut local: HashMap<String, Suspension>,
        pushed: &[(String, Suspension)],
        removed: &[(String, Suspension)],
        heard: &Heard,
    ) {
        let fleet: HashMap<&str, &str> = heard
            .suspensions
            .iter()
            .map(|(id, json)| (id.as_str(), json.as_str()))
            .collect();
        let known = |id: &str| config.partners.iter().any(|p| p.id == id);
        let taken: Vec<(String, Suspension)> = fleet
            .iter()
            .filter(|(id, _)| {
                !local.contains_key(**id) && !removed.iter().any(|(r, _)| r == *id) && known(id)
            })
            .map(|(id, json)| {
                let suspension = serde_json::from_str::<Suspension>(json).unwrap_or(Suspension {
                    reason: "suspended on another instance of the fleet".into(),
                    since_unix: unix_now(),
                });
                (id.to_string(), suspension)
            })
            .collect();
        let lifted: Vec<String> = {
            let agreed = self.agreed.lock().unwrap_or_else(PoisonError::into_inner);
            local
                .keys()
                .filter(|id| {
                    !fleet.contains_key(id.as_str())
                        && agreed.fleet.contains(*id)
                        && !pushed.iter().any(|(p, _)| p == *id)
                })
                .cloned()
                .collect()
        };
        for (id, suspension) in taken {
            control.from_fleet(&id, Some(suspension.clone())).await;
            local.insert(id, suspension);
        }
        for id in lifted {
            control.from_fleet(&id, None).await;
            local.remove(&id);
        }
        let mut agreed = self.agreed.lock().unwrap_or_else(PoisonError::into_inner);
        agreed.fleet = fleet.keys().map(|id| id.to_string()).collect();
        agreed.local = local;
    }

    /// Tokens granted per second lately: smoothed over heartbeats (a quarter of each new
    /// reading), as one 250 ms beat sees a refill or none.
    fn granted_rate(&self) -> f64 {
        let now = std::time::Instant::now();
        let total = self.granted.load(Ordering::Relaxed);
        let mut last = self
            .granted_at_beat
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.duration_since(last.1).as_secs_f64();
        let lately = if elapsed > 0.0 {
            total.saturating_sub(last.0) as f64 / elapsed
        } else {
            0.0
        };
        let rate = 0.75 * last.2 + 0.25 * lately;
        *last = (total, now, rate);
        rate
    }

    /// Whether another process beats under this instance's name: its info (another run) was
    /// under the name, beaten within [`ALIVE_WITHIN`], at two heartbeats, the last of them
    /// within [`ALIVE_WITHIN`]. Once is not enough: it is what a restart under the same name
    /// finds of the process before it.
    fn twinned(&self, heard: &Heard) -> bool {
        let alive_ms = u64::try_from(ALIVE_WITHIN.as_millis()).unwrap_or(u64::MAX);
        let seen = heard.before.as_ref().is_some_and(|(info, since_ms)| {
            *since_ms < alive_ms
                && serde_json::from_str::<Info>(info)
                    .is_ok_and(|other| !other.run.is_empty() && other.run != self.run)
        });
        let now = std::time::Instant::now();
        let mut twin = self.twin.lock().unwrap_or_else(PoisonError::into_inner);
        if seen {
            *twin = (twin.0.saturating_add(1), Some(now));
        } else if twin
            .1
            .is_none_or(|last| now.duration_since(last) >= ALIVE_WITHIN)
        {
            *twin = (0, None);
        }
        twin.0 >= 2
    }

    fn view_of(&self, heard: &Heard, config_sha256: &str, duplicate: bool) -> View {
        let members: Vec<(String, u64, Info)> = heard
            .instances
            .iter()
            .map(|m| {
                let info = serde_json::from_str::<Info>(&m.info).unwrap_or_default();
                (m.id.clone(), m.since_ms, info)
            })
            .collect();
        let total: f64 = members.iter().map(|(_, _, i)| i.granted_per_second).sum();
        let count = members.len().max(1) as f64;
        let instances: Vec<MemberView> = members
            .into_iter()
            .map(|(id, since_ms, info)| MemberView {
                this: id == self.instance,
                instance: id,
                last_heartbeat_ms_ago: since_ms,
                share: if total > 0.0 {
                    info.granted_per_second / total
                } else {
                    1.0 / count
                },
                granted_per_second: info.granted_per_second,
                config_sha256: info.config_sha256,
            })
            .collect();
        let config_mismatch = instances
            .iter()
            .any(|m| !m.config_sha256.is_empty() && m.config_sha256 != config_sha256);
        View {
            instance: self.instance.clone(),
            redis_up: self.state.is_up(),
            mode: if self.state.is_up() {
                "leases"
            } else {
                "shares"
            },
            instances,
            config_sha256: config_sha256.to_string(),
            config_mismatch,
            duplicate_instance: duplicate,
        }
    }
}

/// The host name and the process id: unique on a machine, readable in `/admin/fleet`.
fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "billgate".into());
    format!("{host}-{}", std::process::id())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
