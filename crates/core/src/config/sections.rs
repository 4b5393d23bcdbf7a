//! `[server]`, `[biller]` and `[biller.breaker]`: each key checked on its own, defaults filled,
//! then the rules that tie keys together.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::HeaderName;
use toml::de::DeTable;

use super::fields::{Errors, Table};
use super::load::{DEFAULT_MAX_CONFIG_BYTES, MAX_CONFIG_BYTES, MIN_CONFIG_BYTES};
use super::model::{
    Biller, BillerUrl, BreakerConfig, Cache, ClientAuth, FileRef, Fleet, Server, ServerTls,
    Subscriptions,
};
use super::rate::{parse_rate, Period, Rate};
use super::values::{biller_url, header_name, positive_duration, socket_addr};

pub(crate) const SERVER_KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "key_header",
    "origin_header",
    "partner_header",
    "max_body_bytes",
    "access_log",
    "admin_token_file",
    "state_file",
    "workers",
    "listen_backlog",
    "max_config_bytes",
    "tls",
];
pub(crate) const TLS_KEYS: &[&str] = &["cert", "key", "client_ca", "client_auth"];
pub(crate) const BILLER_KEYS: &[&str] = &[
    "url",
    "timeout",
    "connect_timeout",
    "capacity",
    "max_in_flight",
    "payment_reserve",
    "user_reserve",
    "pause_partner_header",
    "breaker",
    "ca_file",
    "client_cert",
    "client_key",
];
pub(crate) const BREAKER_KEYS: &[&str] = &["failure_rate", "window", "min_calls", "open_for"];

/// The most worker threads `[server] workers` may ask for.
const MAX_WORKERS: u64 = 256;

/// The default `[server] listen_backlog`: Linux's default `net.core.somaxconn`, which caps it.
pub(crate) const LISTEN_BACKLOG: u32 = 4096;

const ADDR: &str = "an address like \"127.0.0.1:8080\"";
const HEADER: &str = "a header name like \"x-api-key\"";
const DURATION: &str = "a duration like \"3s\"";

/// `[server]`; every key has a default, so the table may be left out.
pub(crate) fn server(errors: &mut Errors<'_>, root: &Table<'_, '_>) -> Option<Server> {
    let empty = DeTable::new();
    let t = root.section(errors, "server", SERVER_KEYS, &empty)?;
    let listen = t.parse_or(errors, "listen", ADDR, addr(8080), socket_addr);
    let admin_listen = t.parse_or(errors, "admin_listen", ADDR, addr(9100), socket_addr);
    let key_header = t.parse_or(
        errors,
        "key_header",
        HEADER,
        header("x-api-key"),
        header_name,
    );
    let origin_header = t.parse_or(
        errors,
        "origin_header",
        HEADER,
        header("x-request-origin"),
        header_name,
    );
    let partner_header = t.parse_or(
        errors,
        "partner_header",
        HEADER,
        header("x-billgate-partner"),
        header_name,
    );
    let max_body_bytes = integer_in(
        errors,
        &t,
        "max_body_bytes",
        (1, u64::MAX),
        "a number of bytes above 0, like 1048576",
        1_048_576,
    );

    let access_log = t.boolean_or(errors, "access_log", true);
    let workers = match t.integer(
        errors,
        "workers",
        (1, MAX_WORKERS),
        "a number of worker threads from 1 to 256, like 2",
    ) {
        Some(at) => Some(usize::try_from(at.value).ok()),
        None if t.get("workers").is_some() => None,
        None => Some(None),
    };
    let listen_backlog = integer_in(
        errors,
        &t,
        "listen_backlog",
        (1, 65_535),
        "a number of connections from 1 to 65535, like 4096",
        LISTEN_BACKLOG.into(),
    )
    .and_then(|n| u32::try_from(n).ok());
    let max_config_bytes = integer_in(
        errors,
        &t,
        "max_config_bytes",
        (MIN_CONFIG_BYTES, MAX_CONFIG_BYTES),
        "a number of bytes from 4096 to 67108864 (64 MiB), like 8388608",
        DEFAULT_MAX_CONFIG_BYTES,
    );
    let path = |errors: &mut Errors<'_>, key: &str, expected: &str| {
        t.file(errors, key, expected)
            .map(|file| file.map(|file| file.path))
    };
    let admin_token_file = path(
        errors,
        "admin_token_file",
        "the path of a file holding the admin bearer token",
    );
    let state_file = path(
        errors,
        "state_file",
        "the path of the file suspensions are kept in, like \"billgate-state.json\"",
    );

    let tls = match t.table(errors, "tls", TLS_KEYS) {
        Some(tls) => server_tls(errors, &tls).map(Some),
        None if t.get("tls").is_some() => None,
        None => Some(None),
    };

    if let (Some(listen), Some(admin)) = (listen, admin_listen) {
        if listen == admin && listen.port() != 0 {
            let key = if t.get("admin_listen").is_some() {
                "admin_listen"
            } else {
                "listen"
            };
            let message = format!(
                "listen and admin_listen are both {listen}: the admin API needs its own address"
            );
            report_at(errors, &t, key, message);
        }
    }
    let headers = [
        ("key_header", &key_header),
        ("origin_header", &origin_header),
        ("partner_header", &partner_header),
    ];
    for (i, (key, name)) in headers.iter().enumerate() {
        let Some(name) = name else { continue };
        let earlier = headers[..i]
            .iter()
            .find(|(_, other)| other.as_ref() == Some(name));
        if let Some((other, _)) = earlier {
            // Point at whichever of the two was written (a default has no place in the file).
            let at = if t.get(key).is_some() { key } else { other };
            let message = format!("{other} and {key} are both \"{name}\": each header has one job, so they must differ");
            report_at(errors, &t, at, message);
        }
    }
    Some(Server {
        listen: listen?,
        admin_listen: admin_listen?,
        key_header: key_header?,
        origin_header: origin_header?,
        partner_header: partner_header?,
        max_body_bytes: max_body_bytes?,
        access_log: access_log?,
        admin_token_file: admin_token_file?,
        state_file: state_file?,
        workers: workers?,
        listen_backlog: listen_backlog?,
        max_config_bytes: max_config_bytes?,
        tls: tls?,
    })
}

/// `[server.tls]`: `cert` and `key` required; `client_auth` only with a `client_ca` to verify
/// against, `optional` by default when there is one.
fn server_tls(errors: &mut Errors<'_>, t: &Table<'_, '_>) -> Option<ServerTls> {
    let before = errors.count();
    let file = |errors: &mut Errors<'_>, key: &str, expected: &str| {
        if t.get(key).is_none() {
            t.missing(errors, key, expected);
            return None;
        }
        t.file(errors, key, expected).flatten()
    };
    let cert = file(
        errors,
        "cert",
        "the path of the gateway's certificate chain, PEM, leaf first",
    );
    let key = file(
        errors,
        "key",
        "the path of the gateway's private key, PEM (PKCS#8, RSA or SEC1)",
    );
    let client_ca = t.file(
        errors,
        "client_ca",
        "the path of the CA certificates (PEM) partners' client certificates are verified against",
    );
    let client_auth = t.parse_or(
        errors,
        "client_auth",
        "\"optional\" or \"required\"",
        None,
        |s| match s {
            "optional" => Ok(Some(ClientAuth::Optional)),
            "required" => Ok(Some(ClientAuth::Required)),
            _ => Err(format!(
                "\"optional\" or \"required\", not \"{}\"",
                s.escape_debug()
            )),
        },
    );
    let client_auth = match (client_auth?, &client_ca) {
        (Some(auth), Some(Some(_))) => auth,
        (None, Some(Some(_))) => ClientAuth::Optional,
        (None, _) => ClientAuth::Off,
        (Some(auth), _) => {
            let message = format!(
                "client_auth = \"{}\" needs client_ca: the CA partners' certificates are verified against",
                auth.as_str()
            );
            report_at(errors, t, "client_auth", message);
            return None;
        }
    };
    if errors.count() != before {
        return None;
    }
    Some(ServerTls {
        cert: cert?,
        key: key?,
        client_ca: client_ca?,
        client_auth,
    })
}

/// `[biller]`, required for its `url` and `capacity`.
pub(crate) fn biller(errors: &mut Errors<'_>, root: &Table<'_, '_>) -> Option<Biller> {
    if root.get("biller").is_none() {
        let message = "missing required table [biller]: expected at least url = \"http://127.0.0.1:9000\" and capacity = \"400/s\"";
        errors.push(root.span.clone(), "biller", message);
        return None;
    }
    let t = root.table(errors, "biller", BILLER_KEYS)?;
    let url = t
        .required_string(
            errors,
            "url",
            "the biller's base URL like \"http://127.0.0.1:9000\"",
        )
        .and_then(|at| errors.parse(&at, biller_url));
    let timeout = t.parse_or(errors, "timeout", DURATION, secs(3), positive_duration);
    let connect_timeout = t.parse_or(
        errors,
        "connect_timeout",
        DURATION,
        secs(1),
        positive_duration,
    );
    let capacity = t
        .required_string(
            errors,
            "capacity",
            "everything all partners together may send, as a rate like \"400/s\"",
        )
        .and_then(|at| errors.parse(&at, capacity_rate));
    let max_in_flight = integer_or(errors, &t, "max_in_flight", u32::MAX.into(), 128);
    let payment_reserve = share_or(errors, &t, "payment_reserve", 0.2);
    let user_reserve = share_or(errors, &t, "user_reserve", 0.2);
    if let (Some(p), Some(u)) = (payment_reserve, user_reserve) {
        if p + u >= 1.0 {
            let message = format!(
                "payment_reserve ({p}) and user_reserve ({u}) add up to {} of the capacity, leaving nothing for scheduled polling; keep their sum below 1",
                p + u
            );
            let at = if t.get("user_reserve").is_some() {
                "user_reserve"
            } else {
                "payment_reserve"
            };
            report_at(errors, &t, at, message);
        }
    }
    let pause_partner_header = match t.string(errors, "pause_partner_header", HEADER) {
        Some(at) => errors.parse(&at, header_name).map(Some),
        None if t.get("pause_partner_header").is_some() => None,
        None => Some(None),
    };
    let empty = DeTable::new();
    let breaker = t
        .section(errors, "breaker", BREAKER_KEYS, &empty)
        .and_then(|b| breaker(errors, &b));
    let (ca_file, client_cert, client_key) = biller_tls(errors, &t, url.as_ref());
    Some(Biller {
        url: url?,
        timeout: timeout?,
        connect_timeout: connect_timeout?,
        capacity: capacity?,
        max_in_flight: u32::try_from(max_in_flight?).ok()?,
        payment_reserve: payment_reserve?,
        user_reserve: user_reserve?,
        pause_partner_header: pause_partner_header?,
        breaker: breaker?,
        ca_file: ca_file?,
        client_cert: client_cert?,
        client_key: client_key?,
    })
}

type MaybeFile = Option<Option<FileRef>>;

/// `ca_file`, `client_cert` and `client_key` of `[biller]`: files for TLS to the biller, so
/// only with an https `url`; a client certificate and its key go together.
fn biller_tls(
    errors: &mut Errors<'_>,
    t: &Table<'_, '_>,
    url: Option<&BillerUrl>,
) -> (MaybeFile, MaybeFile, MaybeFile) {
    let ca_file = t.file(
        errors,
        "ca_file",
        "the path of CA certificates (PEM) the biller's certificate is verified against, besides the system's",
    );
    let client_cert = t.file(
        errors,
        "client_cert",
        "the path of the gateway's client certificate chain for the biller, PEM, leaf first",
    );
    let client_key = t.file(
        errors,
        "client_key",
        "the path of the private key of client_cert, PEM (PKCS#8, RSA or SEC1)",
    );
    let before = errors.count();
    if let Some(url) = url.filter(|url| !url.tls) {
        for key in ["ca_file", "client_cert", "client_key"] {
            if t.get(key).is_some() {
                let message = format!(
                    "{key} is for TLS to the biller, and url is {url}: use an https:// url, or leave {key} out"
                );
                report_at(errors, t, key, message);
            }
        }
    } else {
        let pair = [("client_cert", "client_key"), ("client_key", "client_cert")];
        for (given, missing) in pair {
            if t.get(given).is_some() && t.get(missing).is_none() {
                let message = format!(
                    "{given} needs {missing}: a client certificate and its private key go together"
                );
                report_at(errors, t, given, message);
            }
        }
    }
    if errors.count() != before {
        return (None, None, None);
    }
    (ca_file, client_cert, client_key)
}

/// `capacity`: a rate whose burst is at most its count. The capacity is a ceiling over every
/// window of its period, so more than the count can never go at once; a larger burst would
/// promise what the budget cannot give.
fn capacity_rate(text: &str) -> Result<Rate, String> {
    let rate = parse_rate(text).map_err(|e| e.to_string())?;
    if rate.burst > rate.count {
        return Err(format!(
            "a capacity like \"400/s\" with a burst of at most its count; \"{}\" has a burst of {} over its count of {}: at most {} can ever pass in one {}",
            text.escape_debug(),
            rate.burst,
            rate.count,
            rate.count,
            match rate.period {
                Period::Second => "second",
                Period::Minute => "minute",
                Period::Hour => "hour",
            }
        ));
    }
    Ok(rate)
}

pub(crate) const CACHE_KEYS: &[&str] = &["max_entries", "max_bytes", "hit_cost"];

/// `[cache]`; every key has a default, so the table may be left out.
pub(crate) fn cache(errors: &mut Errors<'_>, root: &Table<'_, '_>) -> Option<Cache> {
    let empty = DeTable::new();
    let t = root.section(errors, "cache", CACHE_KEYS, &empty)?;
    let defaults = Cache::default();
    let max_entries = integer_or(
        errors,
        &t,
        "max_entries",
        100_000_000,
        defaults.max_entries as u64,
    );
    let max_bytes = integer_or(errors, &t, "max_bytes", 1 << 40, defaults.max_bytes);
    let hit_cost = integer_in(
        errors,
        &t,
        "hit_cost",
        (0, 1000),
        "a number of quota tokens from 0 to 1000, like 1",
        defaults.hit_cost.into(),
    )
    .and_then(|n| u32::try_from(n).ok());
    Some(Cache {
        max_entries: usize::try_from(max_entries?).ok()?,
        max_bytes: max_bytes?,
        hit_cost: hit_cost?,
    })
}

pub(crate) const FLEET_KEYS: &[&str] = &["redis", "instance", "timeout"];

/// `[fleet]`: `Some(None)` when absent (the gateway runs alone), `None` when wrong (reported).
pub(crate) fn fleet(errors: &mut Errors<'_>, root: &Table<'_, '_>) -> Option<Option<Fleet>> {
    if root.get("fleet").is_none() {
        return Some(None);
    }
    let t = root.table(errors, "fleet", FLEET_KEYS)?;
    const URL: &str = "a Redis URL like \"redis://127.0.0.1:6379/0\" or \"rediss://…\"";
    let redis = t.required_string(errors, "redis", URL).and_then(|at| {
        let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| at.value.starts_with(scheme));
        if scheme_ok && at.value.len() > at.value.find("//").unwrap_or(0) + 2 {
            Some(at.value.to_string())
        } else {
            errors.push(
                at.span,
                &at.path,
                format!("expected {URL}, found {:?}", at.value),
            );
            None
        }
    });
    const NAME: &str = "an instance name of letters, digits, '.', '_' or '-', at most 64 long";
    let instance = match t.string(errors, "instance", NAME) {
        Some(at) => {
            let fits = !at.value.is_empty()
                && at.value.len() <= 64
                && at
                    .value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if fits {
                Some(Some(at.value.to_string()))
            } else {
                errors.push(
                    at.span,
                    &at.path,
                    format!("expected {NAME}, found {:?}", at.value),
                );
                None
            }
        }
        None if t.get("instance").is_some() => None,
        None => Some(None),
    };
    let timeout = t.parse_or(
        errors,
        "timeout",
        DURATION,
        Duration::from_millis(250),
        positive_duration,
    );
    Some(Some(Fleet {
        redis: redis?,
        instance: instance?,
        timeout: timeout?,
    }))
}

pub(crate) const SUBSCRIPTIONS_KEYS: &[&str] = &[
    "store",
    "refresh",
    "capacity_share",
    "biller_token_file",
    "delivery_horizon",
    "first_retry",
    "per_host",
    "attempt_timeout",
    "keep_delivered",
    "keep_dead",
];

/// The most deliveries in flight to one callback host `per_host` may allow.
const MAX_PER_HOST: u64 = 256;

/// `[subscriptions]`: `Some(None)` when absent (the subscription API is off), `None` when
/// wrong (reported).
pub(crate) fn subscriptions(
    errors: &mut Errors<'_>,
    root: &Table<'_, '_>,
) -> Option<Option<Subscriptions>> {
    if root.get("subscriptions").is_none() {
        return Some(None);
    }
    let t = root.table(errors, "subscriptions", SUBSCRIPTIONS_KEYS)?;
    const STORE: &str =
        "a database URL like \"sqlite://billgate.db\" or \"postgres://user@host/billgate\"";
    let store = match t.string(errors, "store", STORE) {
        Some(at) => {
            let fits = ["sqlite://", "sqlite:", "postgres://", "postgresql://"]
                .iter()
                .any(|scheme| at.value.len() > scheme.len() && at.value.starts_with(scheme));
            if fits {
                Some(at.value.to_string())
            } else {
                errors.push(
                    at.span,
                    &at.path,
                    format!("expected {STORE}, found {:?}", at.value),
                );
                None
            }
        }
        None if t.get("store").is_some() => None,
        None => Some("sqlite://billgate.db".to_string()),
    };
    let refresh = t.parse_or(
        errors,
        "refresh",
        DURATION,
        Duration::from_secs(6 * 3600),
        positive_duration,
    );
    const SHARE: &str = "a share of the biller's capacity above 0 and at most 1, like 0.1";
    let capacity_share = match t.number(errors, "capacity_share", SHARE) {
        Some(at) if at.value > 0.0 && at.value <= 1.0 => Some(at.value),
        Some(at) => {
            let message = format!("expected {SHARE}; {} is outside it", at.value);
            errors.push(at.span, &at.path, message);
            None
        }
        None if t.get("capacity_share").is_some() => None,
        None => Some(0.1),
    };
    let biller_token_file = t.file(
        errors,
        "biller_token_file",
        "the path of a file holding the biller's bearer token",
    );
    let delivery_horizon = t.parse_or(
        errors,
        "delivery_horizon",
        DURATION,
        Duration::from_secs(24 * 3600),
        positive_duration,
    );
    let first_retry = t.parse_or(
        errors,
        "first_retry",
        DURATION,
        Duration::from_secs(5),
        positive_duration,
    );
    let per_host =
        integer_or(errors, &t, "per_host", MAX_PER_HOST, 4).and_then(|n| u32::try_from(n).ok());
    let attempt_timeout = t.parse_or(
        errors,
        "attempt_timeout",
        DURATION,
        Duration::from_secs(10),
        positive_duration,
    );
    let keep_delivered = t.parse_or(
        errors,
        "keep_delivered",
        DURATION,
        Duration::from_secs(7 * 24 * 3600),
        positive_duration,
    );
    let keep_dead = t.parse_or(
        errors,
        "keep_dead",
        DURATION,
        Duration::from_secs(30 * 24 * 3600),
        positive_duration,
    );
    Some(Some(Subscriptions {
        store: store?,
        refresh: refresh?,
        capacity_share: capacity_share?,
        biller_token_file: biller_token_file?,
        delivery_horizon: delivery_horizon?,
        first_retry: first_retry?,
        per_host: per_host?,
        attempt_timeout: attempt_timeout?,
        keep_delivered: keep_delivered?,
        keep_dead: keep_dead?,
    }))
}

fn breaker(errors: &mut Errors<'_>, t: &Table<'_, '_>) -> Option<BreakerConfig> {
    const SHARE: &str = "a share of failed calls above 0 and at most 1, like 0.5";
    let failure_rate = match t.number(errors, "failure_rate", SHARE) {
        Some(at) if at.value > 0.0 && at.value <= 1.0 => Some(at.value),
        Some(at) => {
            let message = format!("expected {SHARE}; {} is outside it", at.value);
            errors.push(at.span, &at.path, message);
            None
        }
        None if t.get("failure_rate").is_some() => None,
        None => Some(0.5),
    };
    let window = t.parse_or(errors, "window", DURATION, secs(10), positive_duration);
    let min_calls = integer_or(errors, t, "min_calls", u32::MAX.into(), 20);
    let open_for = t.parse_or(errors, "open_for", DURATION, secs(5), positive_duration);
    Some(BreakerConfig {
        failure_rate: failure_rate?,
        window: window?,
        min_calls: u32::try_from(min_calls?).ok()?,
        open_for: open_for?,
    })
}

/// A share of the capacity in `0..1` at `key`, `default` when absent.
fn share_or(errors: &mut Errors<'_>, t: &Table<'_, '_>, key: &str, default: f64) -> Option<f64> {
    const SHARE: &str = "a share of the capacity from 0 up to (not including) 1, like 0.2";
    match t.number(errors, key, SHARE) {
        Some(at) if (0.0..1.0).contains(&at.value) => Some(at.value),
        Some(at) => {
            let message = format!("expected {SHARE}; {} is outside it", at.value);
            errors.push(at.span, &at.path, message);
            None
        }
        None if t.get(key).is_some() => None,
        None => Some(default),
    }
}

/// A whole number in `1..=max` at `key`, `default` when absent.
fn integer_or(
    errors: &mut Errors<'_>,
    t: &Table<'_, '_>,
    key: &str,
    max: u64,
    default: u64,
) -> Option<u64> {
    let expected = format!("a whole number above 0, like {default}");
    integer_in(errors, t, key, (1, max), &expected, default)
}

/// The whole number at `key` within `range`, `default` when absent; `None` (and an error) when
/// present but not a whole number in range.
fn integer_in(
    errors: &mut Errors<'_>,
    t: &Table<'_, '_>,
    key: &str,
    range: (u64, u64),
    expected: &str,
    default: u64,
) -> Option<u64> {
    match t.integer(errors, key, range, expected) {
        Some(at) => Some(at.value),
        None if t.get(key).is_some() => None,
        None => Some(default),
    }
}

/// Reports a rule about `key` at its value, or at the table when it was left out.
fn report_at(errors: &mut Errors<'_>, t: &Table<'_, '_>, key: &str, message: String) {
    let span = t.get(key).map_or(t.span.clone(), |v| v.span());
    errors.push(span, &t.child(key), message);
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn header(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::error::{ConfigError, Source};

    fn run<T>(
        text: &str,
        f: impl FnOnce(&mut Errors<'_>, &Table<'_, '_>) -> T,
    ) -> (T, Vec<ConfigError>) {
        let doc = toml::de::DeTable::parse(text).expect("test documents are valid TOML");
        let mut errors = Errors::new(Source::new("t.toml", text));
        let root = Table::root(&mut errors, &doc, &["server", "biller"]);
        let out = f(&mut errors, &root);
        (out, errors.pushed())
    }

    fn paths(errors: &[ConfigError]) -> Vec<&str> {
        errors.iter().map(|e| e.key_path.as_str()).collect()
    }

    #[test]
    fn server_defaults() {
        let (server, errors) = run("", server);
        assert!(errors.is_empty(), "{errors:?}");
        let server = server.expect("defaults are valid");
        assert_eq!(server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(server.admin_listen.to_string(), "127.0.0.1:9100");
        assert_eq!(server.key_header, "x-api-key");
        assert_eq!(server.origin_header, "x-request-origin");
        assert_eq!(server.partner_header, "x-billgate-partner");
        assert_eq!(server.max_body_bytes, 1_048_576);
    }

    #[test]
    fn server_tls_needs_a_cert_and_a_key_and_a_ca_for_client_auth() {
        let (plain, errors) = run("", super::server);
        assert!(errors.is_empty() && plain.is_some_and(|s| s.tls.is_none()));

        let text =
            "[server.tls]\ncert = \"gw.pem\"\nkey = \"gw-key.pem\"\nclient_ca = \"ca.pem\"\n";
        let (server, errors) = run(text, super::server);
        assert!(errors.is_empty(), "{errors:?}");
        let tls = server.and_then(|s| s.tls).expect("valid");
        assert_eq!(tls.client_auth, ClientAuth::Optional);
        assert_eq!(tls.cert.path, std::path::PathBuf::from("gw.pem"));
        // A problem found reading the file later is placed at the key that named it.
        let error = tls.key.error("no private key in the file");
        assert_eq!((error.line, error.column), (3, 7));
        assert_eq!(error.key_path, "server.tls.key");
        assert_eq!(error.message, "gw-key.pem: no private key in the file");

        let text = "[server.tls]\ncert = \"\"\nclient_auth = \"required\"\n";
        let (server, errors) = run(text, super::server);
        assert!(server.is_none());
        assert_eq!(
            paths(&errors),
            [
                "server.tls.cert",
                "server.tls.key",
                "server.tls.client_auth"
            ]
        );
        assert!(errors[2].message.contains("needs client_ca"), "{errors:?}");

        let text = "[server.tls]\ncert = \"a\"\nkey = \"b\"\nclient_ca = \"c\"\nclient_auth = \"sometimes\"\n";
        let (_, errors) = run(text, super::server);
        assert_eq!(paths(&errors), ["server.tls.client_auth"]);
        assert_eq!(errors[0].line, 5);
    }

    #[test]
    fn server_rules() {
        let text = "[server]\nlisten = \"127.0.0.1:9100\"\nkey_header = \"X-Request-Origin\"\npartner_header = \"upgrade\"\nmax_body_bytes = 0\n";
        let (server, errors) = run(text, server);
        assert!(server.is_none());
        assert_eq!(
            paths(&errors),
            [
                "server.partner_header",
                "server.max_body_bytes",
                "server.listen",
                "server.key_header"
            ]
        );
        assert!(errors[2].message.contains("both 127.0.0.1:9100"));
        // origin_header was left out, so the clash is shown at key_header, which was written.
        assert_eq!(errors[3].line, 3);
    }

    #[test]
    fn biller_defaults_and_requirements() {
        let (read, errors) = run(
            "[biller]\nurl = \"http://b:1/x\"\ncapacity = \"10/s\"\n",
            biller,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let read = read.expect("valid");
        assert_eq!((read.timeout, read.connect_timeout), (secs(3), secs(1)));
        assert_eq!(read.max_in_flight, 128);
        assert_eq!(
            read.breaker,
            BreakerConfig {
                failure_rate: 0.5,
                window: secs(10),
                min_calls: 20,
                open_for: secs(5)
            }
        );

        let (_, errors) = run("[biller]\ntimeout = \"0s\"\n", biller);
        assert_eq!(
            paths(&errors),
            ["biller.url", "biller.timeout", "biller.capacity"]
        );
        let (_, errors) = run("", biller);
        assert_eq!(paths(&errors), ["biller"]);

        // The capacity is a ceiling: a burst may be less than the count, never more.
        let text = "[biller]\nurl = \"http://b:1\"\ncapacity = \"400/s burst 40\"\n";
        let (read, errors) = run(text, biller);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(read.map(|b| b.capacity.burst.get()), Some(40));
        let text = "[biller]\nurl = \"http://b:1\"\ncapacity = \"400/s burst 800\"\n";
        let (_, errors) = run(text, biller);
        assert_eq!(paths(&errors), ["biller.capacity"]);
        assert_eq!(errors[0].message, "expected a capacity like \"400/s\" with a burst of at most its count; \"400/s burst 800\" has a burst of 800 over its count of 400: at most 400 can ever pass in one second");
    }

    #[test]
    fn biller_tls_files_need_https_and_a_cert_goes_with_its_key() {
        let text = "[biller]\nurl = \"https://bills.internal\"\ncapacity = \"10/s\"\nca_file = \"ca.pem\"\nclient_cert = \"gw.pem\"\nclient_key = \"gw-key.pem\"\n";
        let (read, errors) = run(text, biller);
        assert!(errors.is_empty(), "{errors:?}");
        let read = read.expect("valid");
        assert!(read.url.tls);
        let path = |f: &Option<FileRef>| f.as_ref().map(|f| f.path.display().to_string());
        assert_eq!(path(&read.ca_file).as_deref(), Some("ca.pem"));
        assert_eq!(path(&read.client_cert).as_deref(), Some("gw.pem"));
        assert_eq!(path(&read.client_key).as_deref(), Some("gw-key.pem"));
        // A file found bad when the gateway reads it is reported at the key that named it.
        let error = read
            .ca_file
            .as_ref()
            .expect("given")
            .error("no certificate in the file");
        assert_eq!((error.line, error.column), (4, 11));
        assert_eq!(error.key_path, "biller.ca_file");
        assert_eq!(error.message, "ca.pem: no certificate in the file");

        // None of them is needed with https, and none is set by default.
        let (read, errors) = run(
            "[biller]\nurl = \"https://b\"\ncapacity = \"10/s\"\n",
            biller,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let read = read.expect("valid");
        assert!(read.ca_file.is_none() && read.client_cert.is_none() && read.client_key.is_none());

        // With http they would do nothing: each is refused where it is written.
        let text = "[biller]\nurl = \"http://b:1\"\ncapacity = \"10/s\"\nca_file = \"ca.pem\"\nclient_key = \"k.pem\"\n";
        let (read, errors) = run(text, biller);
        assert!(read.is_none());
        assert_eq!(paths(&errors), ["biller.ca_file", "biller.client_key"]);
        assert_eq!(
            errors[0].message,
            "ca_file is for TLS to the biller, and url is http://b:1: use an https:// url, or leave ca_file out"
        );
        assert_eq!((errors[1].line, errors[1].column), (5, 14));

        // A certificate without its key, or a key without its certificate.
        for (key, other) in [("client_cert", "client_key"), ("client_key", "client_cert")] {
            let text =
                format!("[biller]\nurl = \"https://b\"\ncapacity = \"10/s\"\n{key} = \"f.pem\"\n");
            let (read, errors) = run(&text, biller);
            assert!(read.is_none());
            assert_eq!(paths(&errors), [format!("biller.{key}").as_str()]);
            assert_eq!(
                errors[0].message,
                format!(
                    "{key} needs {other}: a client certificate and its private key go together"
                )
            );
            assert_eq!(errors[0].line, 4);
        }

        let text = "[biller]\nurl = \"https://b\"\ncapacity = \"10/s\"\nca_file = \"\"\nclient_cert = 3\nclient_key = \"k\"\n";
        let (_, errors) = run(text, biller);
        assert_eq!(paths(&errors), ["biller.ca_file", "biller.client_cert"]);
    }

    #[test]
    fn breaker_rules() {
        let text = "[biller]\nurl = \"http://b:1\"\ncapacity = \"1/s\"\n[biller.breaker]\nfailure_rate = 1.5\nmin_calls = 0\nwindow = 3\nopen_for = \"5s\"\n";
        let (_, errors) = run(text, biller);
        assert_eq!(
            paths(&errors),
            [
                "biller.breaker.failure_rate",
                "biller.breaker.window",
                "biller.breaker.min_calls"
            ]
        );
        assert!(errors[0].message.contains("1.5 is outside it"));
        let nan = "[biller]\nurl = \"http://b:1\"\ncapacity = \"1/s\"\nbreaker = { failure_rate = nan }\n";
        assert_eq!(paths(&run(nan, biller).1), ["biller.breaker.failure_rate"]);
        let one =
            "[biller]\nurl = \"http://b:1\"\ncapacity = \"1/s\"\nbreaker = { failure_rate = 1 }\n";
        let (read, errors) = run(one, biller);
        assert!(errors.is_empty());
        assert_eq!(read.map(|b| b.breaker.failure_rate), Some(1.0));
    }
}
