//! The workload: partners, their keys and accounts, gates built from them, and pre-generated
//! request lists laid out flat so the bench streams them instead of chasing pointers.

use std::sync::Arc;

use billgate::admission::{Decision, Gate, Reason, RequestParts, Suspensions};
use billgate::clock::Clock;
use billgate::config::{self, Config, Mode, Partner, Rate};
use http::Method;

/// Rates that never refuse within a benchmark run.
pub const HUGE: &str = "1000000000/s";
/// Rates that refuse everything after the first request, for an hour.
pub const SPENT: &str = "1/h";

/// A small, fast, seeded generator (splitmix64): the bench's own randomness, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Partner `p`'s API key: 31 bytes, like a real `bk_live_…` key.
pub fn key(p: usize) -> String {
    format!("bk_live_{p:06}_{:016x}", Rng::new(p as u64).next_u64())
}

/// The bill account number of account `j` of partner `p` (12 digits, unique).
pub fn account(p: usize, per_partner: usize, j: usize) -> String {
    let id = (p * per_partner + j) as u64;
    format!("{:012}", id.wrapping_mul(7919) % 1_000_000_000_000)
}

/// One request, inline: key and path bytes side by side, 96 bytes, no pointers.
#[derive(Clone)]
pub struct Req {
    key: [u8; 40],
    path: [u8; 40],
    key_len: u8,
    path_len: u8,
    /// The account number as a `u64`, for the baselines keyed by integers.
    pub account_u64: u64,
}

impl Req {
    pub fn new(key: &str, path: &str, account: &str) -> Req {
        let mut r = Req {
            key: [0; 40],
            path: [0; 40],
            key_len: key.len() as u8,
            path_len: path.len() as u8,
            account_u64: account.parse().unwrap_or(0),
        };
        r.key[..key.len()].copy_from_slice(key.as_bytes());
        r.path[..path.len()].copy_from_slice(path.as_bytes());
        r
    }

    pub fn key(&self) -> &[u8] {
        &self.key[..usize::from(self.key_len)]
    }

    /// The path, as the proxy hands it over: a `&str` already, nothing checked per request.
    pub fn path(&self) -> &str {
        let bytes = self
            .path
            .get(..usize::from(self.path_len))
            .unwrap_or_default();
        // SAFETY: `Req::new` copied exactly these bytes from a `&str` and nothing writes them
        // after, so they are valid UTF-8. Checking them again on every request would charge
        // the harness's own validation (about 60 instructions) to each decision timed, where
        // the proxy gets its path as a `&str` from the parsed request.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// The account: the path's last segment.
    pub fn account(&self) -> &str {
        let path = self.path();
        path.rsplit('/').next().unwrap_or(path)
    }

    /// The parts the proxy hands to `Gate::decide` for a scheduled bill inquiry.
    pub fn parts(&self) -> RequestParts<'_> {
        RequestParts {
            method: &Method::GET,
            path: self.path(),
            query: None,
            key: Some(self.key()),
            origin_user: false,
            certificate: None,
        }
    }
}

/// What a gate's quotas are set up to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Shape {
    /// Every quota huge: everything is admitted.
    Allow,
    /// The partner's scheduled-inquiry quota is spent: refused at the partner quota.
    DenyPartner,
    /// Partner quotas huge, every account's quota spent: refused at the per-account quota.
    DenyAccount,
}

/// `partners` partners tracking `per_partner` accounts each, quotas set up for `shape`.
pub fn config(partners: usize, per_partner: usize, shape: Shape) -> Config {
    let mut cfg = config::load_str(config::DEFAULT_CONFIG, "config.toml").expect("shipped config");
    let rate = |text: &str| -> Rate { config::parse_rate(text).expect("rate") };
    cfg.biller.capacity = rate(HUGE);
    cfg.biller.max_in_flight = 1_000;
    let scheduled = match shape {
        Shape::DenyPartner => rate(SPENT),
        _ => rate(HUGE),
    };
    let per_account = match shape {
        Shape::DenyAccount => rate(SPENT),
        _ => rate(HUGE),
    };
    cfg.partners = (0..partners)
        .map(|p| Partner {
            id: format!("partner-{p}"),
            keys_sha256: vec![sha256(&key(p))],
            client_cert_sha256: Vec::new(),
            quota: config::ClassQuotas([Some(rate(HUGE)), Some(rate(HUGE)), Some(scheduled)]),
            per_account: Some(per_account),
            max_tracked_accounts: (2 * per_partner).max(config::DEFAULT_MAX_TRACKED_ACCOUNTS),
            mode: Mode::Enforce,
            webhooks: None,
        })
        .collect();
    cfg
}

fn sha256(text: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).into()
}

/// A gate with `partners` partners and `accounts` tracked accounts in all (at least one per
/// partner), populated through `decide` itself so every account is in its partner's table.
pub struct Fixture {
    pub config: Config,
    pub gate: Arc<Gate>,
    pub partners: usize,
    pub per_partner: usize,
}

impl Fixture {
    pub fn new(partners: usize, accounts: usize, shape: Shape) -> Fixture {
        let per_partner = (accounts / partners).max(1);
        let cfg = config(partners, per_partner, shape);
        let gate = Arc::new(Gate::build(
            &cfg,
            None,
            &Clock::real(),
            &Suspensions::default(),
        ));
        for p in 0..partners {
            let key = key(p);
            for j in 0..per_partner {
                let path = format!("/v1/bills/{}", account(p, per_partner, j));
                let req = Req::new(&key, &path, "0");
                drop(gate.decide(&req.parts()));
            }
        }
        Fixture {
            config: cfg,
            gate,
            partners,
            per_partner,
        }
    }

    /// `len` requests for worker `worker` of `workers`: partners `p ≡ worker (mod workers)`
    /// when there are enough partners to go round (one hot partner otherwise), each request a
    /// uniformly random tracked account of a uniformly random such partner.
    pub fn requests(&self, worker: usize, workers: usize, len: usize) -> Vec<Req> {
        let mut rng = Rng::new(0x5eed ^ worker as u64);
        let keys: Vec<String> = (0..self.partners).map(key).collect();
        let mine: Vec<usize> = if self.partners >= workers {
            (0..self.partners)
                .filter(|p| p % workers == worker)
                .collect()
        } else {
            (0..self.partners).collect()
        };
        (0..len)
            .map(|_| {
                let p = mine[rng.below(mine.len())];
                let acct = account(p, self.per_partner, rng.below(self.per_partner));
                Req::new(&keys[p], &format!("/v1/bills/{acct}"), &acct)
            })
            .collect()
    }

    /// Panics unless every one of `requests` gets the decision `shape` promises.
    pub fn verify(&self, requests: &[Req], shape: Shape) {
        for req in requests.iter().take(2_000) {
            let got = match self.gate.decide(&req.parts()) {
                Decision::Admit(_) => None,
                Decision::Deny(d) => Some(d.reason),
            };
            let want = match shape {
                Shape::Allow => None,
                Shape::DenyPartner => Some(Reason::PartnerQuota),
                Shape::DenyAccount => Some(Reason::AccountQuota),
            };
            assert_eq!(got, want, "{shape:?} workload decided otherwise");
        }
    }
}
