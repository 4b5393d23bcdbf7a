//! The storm's cast and script: three partners with quotas derived from the biller's capacity,
//! the request streams each sends in each phase, and the gateway configuration that admits them.

use std::time::Duration;

use serde::Serialize;

use crate::config::{self, hash_key, Class, Config};

use super::StormOptions;

/// The four phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Well-behaved partners only: the no-storm baseline.
    Calm,
    /// The poller joins.
    Storm,
    /// The storm goes on and the biller browns out.
    Brownout,
    /// The brown-out is cleared; the storm goes on.
    Recovery,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 4] = [Phase::Calm, Phase::Storm, Phase::Brownout, Phase::Recovery];

    /// The phase's name as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Calm => "calm",
            Phase::Storm => "storm",
            Phase::Brownout => "brownout",
            Phase::Recovery => "recovery",
        }
    }

    /// Whether the phase begins with the biller changing (browning out, or recovering), so that
    /// its first [`SETTLE`] is the gateway's time to see it.
    pub fn settles(self) -> bool {
        matches!(self, Phase::Brownout | Phase::Recovery)
    }

    /// Index into per-phase arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How long the gateway is given to see the biller change, at the start of the brown-out and of
/// the recovery. It learns of either only from the calls it makes: its shedder judges each
/// quarter second on the last second's calls, and the stand-in's own failures follow its load
/// over its last second. The requests due in this time are reported, and judged apart.
pub const SETTLE: Duration = Duration::from_secs(1);

/// The partner that polls (the 2014 payment app).
pub const POLLER: &str = "poller";
/// The well-behaved partners.
pub const WELL_BEHAVED: [&str; 2] = ["wallet", "bank"];

/// How a stream picks the bill account of each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accounts {
    /// A fresh account per request (`{prefix}0000001`, …): people asking about their own bill.
    Sequential { prefix: &'static str },
    /// Uniformly among `pool` accounts (`ACC-0` … ), from a seeded generator.
    Random { pool: u32 },
}

/// One partner's requests of one class, sent at a fixed rate in some phases.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// The partner's id in the gateway's configuration.
    pub partner: &'static str,
    /// The API key it sends.
    pub key: String,
    /// What it asks: payments, user inquiries or scheduled inquiries.
    pub class: Class,
    /// Requests per second while sending.
    pub per_sec: f64,
    /// Sends in phases from this one to the end.
    pub from: Phase,
    /// Which bill accounts it names.
    pub accounts: Accounts,
}

/// A share of the capacity `c` as a whole number of requests per second, at least 1.
fn share(c: u32, divisor: u32) -> u32 {
    (c / divisor).max(1)
}

/// The API key a partner sends (public: these keys exist only inside the replay).
pub(crate) fn key(partner: &str) -> String {
    format!("storm-{partner}-demo-key")
}

/// Every stream of the scenario for capacity C: the well-behaved partners send half their
/// quotas, about 0.23 C in all; the poller sends `storm_factor` × its scheduled quota of C/10.
pub fn streams(options: &StormOptions) -> Vec<Stream> {
    let c = options.capacity_per_sec;
    let f = f64::from;
    let mut streams = vec![
        Stream {
            partner: "wallet",
            key: key("wallet"),
            class: Class::Payment,
            per_sec: f(share(c, 10)),
            from: Phase::Calm,
            accounts: Accounts::Sequential { prefix: "WP-" },
        },
        Stream {
            partner: "wallet",
            key: key("wallet"),
            class: Class::InquiryUser,
            per_sec: f(share(c, 20)),
            from: Phase::Calm,
            accounts: Accounts::Sequential { prefix: "WI-" },
        },
        Stream {
            partner: "bank",
            key: key("bank"),
            class: Class::Payment,
            per_sec: f(share(c, 20)),
            from: Phase::Calm,
            accounts: Accounts::Sequential { prefix: "BP-" },
        },
        Stream {
            partner: "bank",
            key: key("bank"),
            class: Class::InquiryUser,
            per_sec: f(share(c, 40)),
            from: Phase::Calm,
            accounts: Accounts::Sequential { prefix: "BI-" },
        },
        Stream {
            partner: POLLER,
            key: key(POLLER),
            class: Class::InquiryScheduled,
            per_sec: f(share(c, 10)) * f(options.storm_factor),
            from: Phase::Storm,
            accounts: Accounts::Random {
                pool: options.poller_accounts,
            },
        },
    ];
    // Subscribed, the poller sends nothing: the gateway asks about its accounts.
    if options.subscribe {
        streams.retain(|s| s.partner != POLLER);
    }
    streams
}

/// The poller's account `i`, as it polls it and as it subscribes to it.
pub fn poller_account(i: u32) -> String {
    format!("ACC-{i}")
}

/// The refresher's share of the biller's capacity in a subscribed run: it learns each new
/// account's bills at this pace before the phases begin, when the biller is otherwise idle (half,
/// not the default tenth, so that day one takes less long); in the phases, at `refresh = "6h"`,
/// it asks about an account every couple of seconds whatever its share.
pub const ONBOARDING_SHARE: f64 = 0.5;

/// With [`StormOptions::subscribe`]: `[subscriptions]` on a SQLite store at `store`, and the
/// poller allowed to subscribe to every one of its accounts, with webhooks to `hooks` signed
/// with the secret in `secret_file`. Appended to [`gateway_toml`] (the poller is its last
/// partner).
pub fn subscribe_toml(
    options: &StormOptions,
    gateway: String,
    store: &std::path::Path,
    hooks: std::net::SocketAddr,
    secret_file: &std::path::Path,
) -> String {
    let c = options.capacity_per_sec;
    let scheduled = format!("inquiry_scheduled = \"{}/s\" }}", share(c, 10));
    let mut text = gateway;
    if let Some(at) = text.rfind(&scheduled) {
        text.replace_range(
            at..at + scheduled.len(),
            &format!(
                "inquiry_scheduled = \"{}/s\", subscription = \"2000/s\" }}",
                share(c, 10)
            ),
        );
    }
    format!(
        "{text}max_subscriptions = {}\nwebhook_prefixes = [\"http://{hooks}/\"]\nwebhook_secret_file = \"{}\"\n\n[subscriptions]\nstore = \"sqlite://{}\"\nrefresh = \"6h\"\ncapacity_share = {ONBOARDING_SHARE}\n",
        options.poller_accounts,
        secret_file.display(),
        store.display()
    )
}

/// Durations as the configuration reads them, in whole milliseconds.
fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// The gateway configuration for a biller at `biller_addr`: listeners on port 0, `[biller]
/// capacity` = C, the breaker as `options` say, the routes of the shipped `config.toml`, and
/// the three partners. Each well-behaved partner's quota is twice what it sends; the poller's
/// scheduled quota is C/10 (burst the same), so its storm is `storm_factor` × that.
pub fn gateway_toml(options: &StormOptions, biller_addr: std::net::SocketAddr) -> String {
    let c = options.capacity_per_sec;
    let b = &options.breaker;
    let partner = |id: &str, payment: u32, user: u32, scheduled: u32, per_account: &str| {
        format!(
            "[[partner]]\nid = \"{id}\"\nkeys_sha256 = [\"{}\"]\n\
             quota = {{ payment = \"{payment}/s\", inquiry_user = \"{user}/s\", \
             inquiry_scheduled = \"{scheduled}/s\" }}\nper_account = \"{per_account}\"\n\
             mode = \"enforce\"\n",
            hash_key(&key(id))
        )
    };
    format!(
        r#"# Generated by `billgate storm`.
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
access_log = false

[biller]
url = "http://{biller_addr}"
timeout = "{timeout}"
connect_timeout = "500ms"
capacity = "{c}/s"
max_in_flight = 256

[biller.breaker]
failure_rate = {failure_rate:?}
window = "{window}"
min_calls = {min_calls}
open_for = "{open_for}"

[[route]]
name = "bill-inquiry"
method = "GET"
path = "/v1/bills/{{account}}"
class = "inquiry"
cache_for = "60s"

[[route]]
name = "bill-payment"
method = "POST"
path = "/v1/payments"
class = "payment"

{wallet}
{bank}
{poller}"#,
        timeout = ms(options.biller_timeout),
        failure_rate = b.failure_rate,
        window = ms(b.window),
        min_calls = b.min_calls,
        open_for = ms(b.open_for),
        wallet = partner(
            "wallet",
            2 * share(c, 10),
            2 * share(c, 20),
            share(c, 20),
            "6/min"
        ),
        bank = partner(
            "bank",
            2 * share(c, 20),
            2 * share(c, 40),
            share(c, 40),
            "6/min"
        ),
        poller = partner(POLLER, share(c, 10), share(c, 20), share(c, 10), "2/min"),
    )
}

/// [`gateway_toml`], validated.
///
/// # Errors
/// The configuration loader's report, should the generated text ever be refused.
pub fn gateway_config(
    options: &StormOptions,
    biller_addr: std::net::SocketAddr,
) -> anyhow::Result<Config> {
    let text = gateway_toml(options, biller_addr);
    config::load_str(&text, "storm.toml").map_err(|errors| {
        anyhow::anyhow!("the generated gateway configuration is invalid:\n{errors}")
    })
}

/// The `[fleet]` table of instance `instance` sharing the Redis at `redis` (a URL already
/// checked to need no escaping), the timeout left at its default.
pub fn fleet_toml(redis: &str, instance: &str) -> String {
    format!("\n[fleet]\nredis = \"{redis}\"\ninstance = \"{instance}\"\n")
}

/// [`gateway_config`] for instance `instance` of a fleet sharing the Redis at `redis`.
///
/// # Errors
/// As [`gateway_config`]; also a Redis URL the loader refuses.
pub fn member_config(
    options: &StormOptions,
    biller_addr: std::net::SocketAddr,
    redis: &str,
    instance: &str,
) -> anyhow::Result<Config> {
    let text = gateway_toml(options, biller_addr) + &fleet_toml(redis, instance);
    config::load_str(&text, "storm.toml").map_err(|errors| {
        anyhow::anyhow!("the generated gateway configuration is invalid:\n{errors}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_configuration_is_valid_and_says_what_the_options_say() {
        let options = StormOptions::default();
        let addr = "127.0.0.1:9999".parse().unwrap();
        let config = gateway_config(&options, addr).unwrap();
        assert_eq!(config.biller.capacity.per_second(), 400.0);
        assert_eq!(
            config.biller.breaker.failure_rate,
            options.breaker.failure_rate
        );
        assert_eq!(config.biller.breaker.open_for, options.breaker.open_for);
        assert_eq!(config.partners.len(), 3);
        let poller = config.partners.iter().find(|p| p.id == POLLER).unwrap();
        let quota = poller.quota.get(Class::InquiryScheduled).unwrap();
        assert_eq!(quota.per_second(), 40.0);
    }

    #[test]
    fn each_member_of_a_fleet_names_the_redis_and_itself() {
        let options = StormOptions::short();
        let addr = "127.0.0.1:9999".parse().unwrap();
        let config = member_config(&options, addr, "redis://127.0.0.1:6390/0", "gw-2").unwrap();
        let fleet = config.fleet.expect("a [fleet] table");
        assert_eq!(fleet.redis, "redis://127.0.0.1:6390/0");
        assert_eq!(fleet.instance.as_deref(), Some("gw-2"));
        assert_eq!(
            config.partners,
            gateway_config(&options, addr).unwrap().partners
        );
        assert!(gateway_config(&options, addr).unwrap().fleet.is_none());
    }

    #[test]
    fn well_behaved_partners_send_half_their_quota_and_the_poller_twenty_times_its_own() {
        let options = StormOptions::default();
        let config = gateway_config(&options, "127.0.0.1:1".parse().unwrap()).unwrap();
        for stream in streams(&options) {
            let partner = config
                .partners
                .iter()
                .find(|p| p.id == stream.partner)
                .unwrap();
            let quota = partner.quota.get(stream.class).unwrap().per_second();
            let expected = if stream.partner == POLLER {
                quota * 20.0
            } else {
                quota / 2.0
            };
            assert_eq!(
                stream.per_sec, expected,
                "{} {:?}",
                stream.partner, stream.class
            );
            assert_eq!(
                config::hash_key(&stream.key),
                hex::encode(partner.keys_sha256[0])
            );
        }
    }
}
