//! The validated configuration: the types a running gateway is built from. Every value here has
//! been checked; nothing downstream re-validates.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;

use super::check::Warning;
use super::error::ConfigError;
use super::rate::Rate;
use crate::ids::{PerPartner, PerRoute};

/// A whole, validated `config.toml`.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub biller: Biller,
    pub cache: Cache,
    /// `[fleet]`: absent for a gateway that runs alone.
    pub fleet: Option<Fleet>,
    /// `[subscriptions]`: absent, the subscription API is off (`/v1/subscriptions` answers
    /// 404 like any path no route names).
    pub subscriptions: Option<Subscriptions>,
    pub routes: PerRoute<Route>,
    pub partners: PerPartner<Partner>,
    /// SHA-256 of the file's bytes, hex: tells operators which configuration is running.
    pub source_sha256: String,
    /// SHA-256 of what every instance of a fleet must agree on: the configuration without
    /// `[server]` and `[fleet]` (each instance's own listeners and name), its comments and
    /// layout, written out again in one canonical form. Hex.
    pub fleet_sha256: String,
    /// What reading the file found worth a second look without making it invalid (a route no
    /// request can reach), located; `billgate check` lists them with its own.
    pub warnings: Vec<Warning>,
}

/// `[server]`
#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Where partners put their API key. Default `x-api-key`.
    pub key_header: HeaderName,
    /// `user` here marks a person waiting; anything else is scheduled polling.
    /// Default `x-request-origin`.
    pub origin_header: HeaderName,
    /// The trusted header naming the partner to the biller. Default `x-billgate-partner`.
    pub partner_header: HeaderName,
    /// Request bodies above this many bytes are refused with 413. Default 1 MiB.
    pub max_body_bytes: u64,
    /// One structured log line per request (target `billgate::access`). Default true.
    pub access_log: bool,
    /// A file holding the admin bearer token (the environment variable `BILLGATE_ADMIN_TOKEN`
    /// is used when this is absent). Without either, the mutating admin endpoints are off.
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Where suspensions are kept so they survive a restart. Without it they live in memory.
    pub state_file: Option<std::path::PathBuf>,
    /// Threads serving partner connections, each with its own runtime and its own connections
    /// to the biller. Default: one per CPU.
    pub workers: Option<usize>,
    /// Connections the kernel may hold ready for the acceptor to take: a reconnect storm past
    /// it has its handshakes dropped, and those partners retry a second or more later. Default
    /// 4096; Linux caps it at `net.core.somaxconn`.
    pub listen_backlog: u32,
    /// The largest configuration file read, in bytes: a reload reads at most the running
    /// configuration's value, and a file larger than its own value is refused. Default 8 MiB.
    pub max_config_bytes: u64,
    /// `[server.tls]`: TLS on the partner listener; plain HTTP without it.
    pub tls: Option<ServerTls>,
}

/// `[server.tls]`: the gateway's certificate and key, and how partners' client certificates
/// are asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerTls {
    /// PEM chain, leaf first.
    pub cert: FileRef,
    /// PEM private key: PKCS#8, RSA or SEC1.
    pub key: FileRef,
    /// PEM CA certificates partners' client certificates are verified against.
    pub client_ca: Option<FileRef>,
    pub client_auth: ClientAuth,
}

/// Whether a partner must present a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// None is asked for (no `client_ca`).
    Off,
    /// Asked for and verified when given; a partner may still come with a key alone.
    Optional,
    /// A handshake without a verified client certificate fails.
    Required,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Off => "off",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        }
    }
}

impl Server {
    /// The number of worker threads to start.
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}

/// `[biller]`
#[derive(Debug, Clone)]
pub struct Biller {
    pub url: BillerUrl,
    /// How long the biller may take to answer (to the response head). Default 3s.
    pub timeout: Duration,
    /// How long connecting to the biller may take. Default 1s.
    pub connect_timeout: Duration,
    /// Everything all partners together may send.
    pub capacity: Rate,
    /// Hard cap on requests at the biller at once. Default 128.
    pub max_in_flight: u32,
    /// Share of `capacity` (and of the in-flight limit) that only payments may use. Default 0.2.
    pub payment_reserve: f64,
    /// Further share that scheduled polling may not use (kept for user inquiries and payments).
    /// Default 0.2: polling may use at most 1 − 0.2 − 0.2 = 60% of the capacity.
    pub user_reserve: f64,
    /// A header by which the biller, answering 429/503 with `Retry-After`, names the partner to
    /// pause; without it (or when absent from the answer) the whole class is paused.
    pub pause_partner_header: Option<HeaderName>,
    pub breaker: BreakerConfig,
    /// PEM CA certificates trusted for the biller's certificate besides the system's roots
    /// (https only).
    pub ca_file: Option<FileRef>,
    /// The gateway's client certificate chain for the biller, PEM, leaf first (https only;
    /// given together with `client_key`).
    pub client_cert: Option<FileRef>,
    /// The private key of `client_cert`, PEM: PKCS#8, RSA or SEC1.
    pub client_key: Option<FileRef>,
}

/// The biller's base URL, split for cheap per-request URI building: `http` or `https`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillerUrl {
    /// `host[:port]`, as sent in the request URI authority.
    pub authority: http::uri::Authority,
    /// A path prefix without a trailing slash (empty for none), prepended to every forwarded path.
    pub base_path: String,
    /// `https`: connections to the biller are TLS (HTTP/1.1 inside).
    pub tls: bool,
}

impl BillerUrl {
    /// The `host:port` a TCP connection goes to: the port written, or 443 for https and 80
    /// for http.
    pub fn host_port(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let port = self.authority.port_u16().unwrap_or(default);
        format!("{}:{}", self.authority.host(), port)
    }

    /// The name the biller's certificate must carry: the URL's host, an IPv6 address without
    /// its brackets.
    pub fn server_name(&self) -> &str {
        let host = self.authority.host();
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }
}

/// The URL as an operator writes it: `https://bills.internal:8443/ebpp`.
impl std::fmt::Display for BillerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority, self.base_path)
    }
}

/// `[fleet]`: quotas and the biller's capacity shared by every gateway instance that names the
/// same Redis (see `billgate_core::fleet`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// `redis://…` or `rediss://…` (TLS); checked further by the Redis client at start.
    pub redis: String,
    /// This instance's name in the fleet; default the host name and the process id.
    pub instance: Option<String>,
    /// How long a call to Redis may take before the instance treats Redis as down and falls
    /// back to its share. Default 250ms.
    pub timeout: Duration,
}

/// `[subscriptions]`: partners subscribe to bill accounts instead of polling them, and are told
/// by signed webhook when a bill appears, changes or is paid.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscriptions {
    /// Where subscriptions, known bills and pending deliveries live: `sqlite://billgate.db`
    /// (the default; created on first start) or `postgres://…` (for a fleet).
    pub store: String,
    /// Each subscribed account is asked about once per this period, spread evenly over it.
    /// Default 6h.
    pub refresh: Duration,
    /// The share of the biller's capacity the refresher may spend (0 < x ≤ 1). Default 0.1.
    pub capacity_share: f64,
    /// The bearer token the biller pushes bill events with (`POST /v1/bill-events` on the
    /// admin listener); without it that endpoint is off.
    pub biller_token_file: Option<FileRef>,
    /// How long a delivery is retried after its event, before it goes to the dead letters.
    /// Default 24h.
    pub delivery_horizon: Duration,
    /// The wait before a failed delivery's first retry; each later one waits twice the one
    /// before (with jitter), up to an hour. Default 5s.
    pub first_retry: Duration,
    /// Deliveries in flight at once to one callback host. Default 4.
    pub per_host: u32,
    /// How long one delivery attempt may take. Default 10s.
    pub attempt_timeout: Duration,
    /// How long a delivered webhook stays in the outbox after its answer. Default
    /// 168h.
    pub keep_delivered: Duration,
    /// How long a dead letter stays listed (and replayable) after it was given up.
    /// Default 720h.
    pub keep_dead: Duration,
}

/// Where a partner's webhook signing secret is read from: never the configuration itself.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretSource {
    /// `webhook_secret_file`.
    File(FileRef),
    /// `webhook_secret_env`: the name of an environment variable.
    Env(String),
}

/// A partner's side of `[subscriptions]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PartnerWebhooks {
    /// `quota.subscription`: the subscription API's own quota.
    pub quota: Rate,
    /// The most subscriptions the partner may hold. Default 10 000.
    pub max_subscriptions: u64,
    /// A callback must start with one of these.
    pub prefixes: Vec<String>,
    /// The signing secret.
    pub secret: SecretSource,
}

/// Default for [`PartnerWebhooks::max_subscriptions`].
pub const DEFAULT_MAX_SUBSCRIPTIONS: u64 = 10_000;

/// `[cache]`: the memory for inquiry answers of routes with `cache_for`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cache {
    /// Most answers kept at once. Default 100 000.
    pub max_entries: usize,
    /// Most bytes of answers kept at once. Default 64 MiB.
    pub max_bytes: u64,
    /// Tokens of the partner's class quota a cache hit costs. Default 1 (like any request), so a
    /// runaway poller is still throttled; 0 makes hits free.
    pub hit_cost: u32,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
            hit_cost: 1,
        }
    }
}

/// Whose cached answers a partner may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheScope {
    /// Each partner has its own (the default): no partner sees an answer fetched for another.
    Partner,
    /// Partners share answers for the same account.
    Shared,
}

/// `[biller.breaker]`
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Share of failed calls (0 < x ≤ 1) that opens the breaker. Default 0.5.
    pub failure_rate: f64,
    /// Rolling window the share is computed over. Default 10s.
    pub window: Duration,
    /// Calls needed in the window before the breaker may open. Default 20.
    pub min_calls: u32,
    /// How long the breaker stays open before half-open probes. Default 5s.
    pub open_for: Duration,
}

/// The class a route's requests belong to, as written in a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    Payment,
    Inquiry,
}

/// The class a request is admitted under: a route class, with inquiries split by origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Payment = 0,
    InquiryUser = 1,
    InquiryScheduled = 2,
}

impl Class {
    /// Every class, in priority order (payments first).
    pub const ALL: [Class; 3] = [Class::Payment, Class::InquiryUser, Class::InquiryScheduled];

    /// The name used in `quota`, metrics labels, problem bodies and `RateLimit` policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Payment => "payment",
            Class::InquiryUser => "inquiry_user",
            Class::InquiryScheduled => "inquiry_scheduled",
        }
    }

    /// Index into per-class arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One segment of a route's path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Must equal this text exactly.
    Literal(String),
    /// `{account}`: any non-empty segment; its value is the bill account.
    Account,
    /// `{name}`: any non-empty segment.
    Param(String),
}

/// A parsed path template such as `/v1/bills/{account}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    pub raw: String,
    pub segments: Vec<Segment>,
}

/// Where a route finds the bill account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountSource {
    None,
    /// The `{account}` segment of the path.
    PathSegment,
    /// A query parameter of this name.
    Query(String),
}

/// `[[route]]`
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub method: Method,
    pub path: PathTemplate,
    pub account: AccountSource,
    pub class: RouteClass,
    /// How long a fresh inquiry answer may be served from memory (used by the cache).
    pub cache_for: Option<Duration>,
    /// Whose cached answers are shared. Default per partner.
    pub cache_scope: CacheScope,
    /// For payment routes: the JSON body field naming the bill account, so a payment can
    /// invalidate that account's cached inquiry answers.
    pub account_field: Option<String>,
}

/// `mode` of a partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Over-quota requests are rejected.
    Enforce,
    /// Over-quota requests are counted and reported, and forwarded anyway.
    Shadow,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

/// A partner's quota per class; `None` means the class is closed to the partner (403).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClassQuotas(pub [Option<Rate>; 3]);

impl ClassQuotas {
    pub fn get(&self, class: Class) -> Option<Rate> {
        self.0[class.index()]
    }
}

/// `[[partner]]`
#[derive(Debug, Clone, PartialEq)]
pub struct Partner {
    pub id: String,
    /// SHA-256 digests of the partner's API keys (several, for rotation).
    pub keys_sha256: Vec<[u8; 32]>,
    /// SHA-256 digests of the partner's client certificates (DER), several for rotation. A
    /// partner that lists any is reached only from a connection that presented one of them.
    pub client_cert_sha256: Vec<[u8; 32]>,
    pub quota: ClassQuotas,
    /// How often one bill account may be asked about (inquiries only); `None`: no limit.
    pub per_account: Option<Rate>,
    /// The most bill accounts tracked at once for `per_account`. Default 100 000.
    pub max_tracked_accounts: usize,
    pub mode: Mode,
    /// May subscribe to bill accounts (`quota.subscription` set): its quota, limit, callback
    /// prefixes and signing secret. `None`: the subscription API is closed to it (403).
    pub webhooks: Option<PartnerWebhooks>,
}

/// Default for [`Partner::max_tracked_accounts`].
pub const DEFAULT_MAX_TRACKED_ACCOUNTS: usize = 100_000;

/// A file the configuration names (a certificate, a private key, a CA bundle), and where it was
/// named: the gateway reads it when it starts or reloads, and a file it cannot read or parse is
/// reported at the key's file:line:column like any other configuration error. A relative path
/// is taken from the gateway's working directory, as `admin_token_file` is.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRef {
    pub path: std::path::PathBuf,
    place: ConfigError,
}

impl FileRef {
    pub(crate) fn new(path: std::path::PathBuf, place: ConfigError) -> FileRef {
        FileRef { path, place }
    }

    /// A configuration error at the key that named this file: `message` says what is wrong
    /// with the file (the path is put before it).
    pub fn error(&self, message: impl std::fmt::Display) -> ConfigError {
        let mut error = self.place.clone();
        error.message = format!("{}: {message}", self.path.display());
        error
    }
}
