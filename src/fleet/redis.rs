//! The fleet's Redis I/O: token-bucket refills, heartbeats and fleet-wide suspensions, each one
//! Lua script in one round trip. No policy: what to ask for and what to do with the answer is
//! the caller's, and the caller runs this in the background, never on a request's path.
//!
//! Keys, all under `billgate:{prefix}:`: `b:{key}` one bucket (a hash `tokens`, `at`, expiring
//! once it would be full again anyway), `beats` (a sorted set: instance → ms of its last beat),
//! `info` (a hash: instance → its JSON), `suspensions` (a hash: partner → JSON), `lifted` (a
//! hash: partner → the JSON of its suspension last lifted). Time is always
//! Redis's (`TIME` inside the scripts): one clock for the whole fleet.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisResult, Script, ServerErrorKind, Value};

/// A Lua script: its source (for EVAL) and its SHA1 (for EVALSHA).
struct Lua {
    code: &'static str,
    script: LazyLock<Script>,
}

static REFILL: Lua = Lua {
    code: include_str!("scripts/refill.lua"),
    script: LazyLock::new(|| Script::new(include_str!("scripts/refill.lua"))),
};
static HEARTBEAT: Lua = Lua {
    code: include_str!("scripts/heartbeat.lua"),
    script: LazyLock::new(|| Script::new(include_str!("scripts/heartbeat.lua"))),
};
static SUSPEND: Lua = Lua {
    code: include_str!("scripts/suspend.lua"),
    script: LazyLock::new(|| Script::new(include_str!("scripts/suspend.lua"))),
};
static LEAD: Lua = Lua {
    code: include_str!("scripts/lead.lua"),
    script: LazyLock::new(|| Script::new(include_str!("scripts/lead.lua"))),
};

/// Calls in a row that fail without an answer from Redis (timeouts, a connection that cannot be
/// made) before the connection is dropped and a new one made: redis-rs reconnects on its own
/// only when the socket reports an error, not when a silent peer lets every call time out.
const FRESH_AFTER: u32 = 3;

/// A connection to the fleet's Redis: one multiplexed, auto-reconnecting connection (redis's
/// ConnectionManager), every call bounded by `timeout`; a call never waits for a reconnect
/// longer than that.
#[derive(Clone)]
pub struct RedisLink {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Made at the first call (not in `open`, which may run outside a runtime), and again after
    /// [`FRESH_AFTER`] failures.
    manager: ArcSwapOption<ConnectionManager>,
    failures: AtomicU32,
    /// `billgate:{prefix}:`, before every key.
    prefix: String,
    timeout: Duration,
}

/// Why a call to Redis failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("invalid Redis URL: {0}")]
    Url(String),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply from Redis: {0}")]
    Reply(String),
}

/// One bucket's refill: its key (the module prefixes it), its fleet-wide rate and burst, and
/// what the instance asks.
#[derive(Debug, Clone)]
pub struct Refill {
    pub key: String,
    /// Tokens added per second (the quota's count / period); may be fractional (2/min =
    /// 0.0333…). A value that is negative, NaN or infinite counts as 0.
    pub per_second: f64,
    /// The bucket's capacity.
    pub burst: u64,
    /// Tokens to take now (0 = only renew).
    pub want: u64,
    /// Unspent tokens the instance gives back (added, capped at burst).
    pub give_back: u64,
    /// Tokens the instance spent without a lease (while it held none); subtracted, taking
    /// the bucket down to empty, never lower.
    pub debt: u64,
}

/// What one [`Refill`] got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grant {
    pub granted: u64,
    /// Tokens left in the bucket after the grant.
    pub left: f64,
}

/// One instance's heartbeat.
pub struct Beat<'a> {
    pub instance: &'a str,
    /// JSON the instance publishes about itself (config hash, shares…), stored verbatim.
    pub info: &'a str,
    /// Instances not heard from for this long are not listed as alive.
    pub alive_within: Duration,
}

/// The fleet as Redis saw it at one heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    /// Redis's clock (TIME) in ms since the epoch when the script ran.
    pub now_ms: u64,
    /// Instances whose last heartbeat is within `alive_within`, this one included, sorted by id.
    pub instances: Vec<Member>,
    /// Every fleet-wide suspension: (partner id, JSON as given to `set_suspension`), sorted.
    pub suspensions: Vec<(String, String)>,
    /// What this instance's name held before this beat: the info, and milliseconds since that
    /// beat. `None`: the name was not there.
    pub before: Option<(String, u64)>,
}

/// One live instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: String,
    /// Milliseconds since its last heartbeat.
    pub since_ms: u64,
    /// Its info JSON, verbatim.
    pub info: String,
}

impl RedisLink {
    /// Parses the URL (redis://, rediss://, redis+unix://…, whatever redis-rs accepts) and
    /// starts connecting in the background. Returns Err(Url) at once for a URL redis-rs refuses.
    /// Does not block or fail when the server is down: the first calls then fail with
    /// Timeout/Redis errors, and later calls succeed once the server is up. Calls must run on a
    /// tokio runtime.
    pub fn open(url: &str, prefix: &str, timeout: Duration) -> Result<RedisLink, LinkError> {
        let client = redis::Client::open(url).map_err(|e| LinkError::Url(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // One quick retry; after that the next call starts a new attempt (redis-rs
            // reconnects when a call meets a broken connection).
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(timeout / 2);
        Ok(RedisLink {
            inner: Arc::new(Inner {
                client,
                config,
                manager: ArcSwapOption::empty(),
                failures: AtomicU32::new(0),
                prefix: format!("billgate:{prefix}:"),
                timeout,
            }),
        })
    }

    /// Refills many buckets in one round trip (a pipeline of EVALSHA of the refill script,
    /// falling back to EVAL on NOSCRIPT, e.g. after a Redis restart). The grants come in
    /// `batch`'s order.
    pub async fn refill(&self, batch: &[Refill]) -> Result<Vec<Grant>, LinkError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.call(async |conn: &mut ConnectionManager| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for refill in batch {
                pipe.add_command(self.refill_invocation(refill).eval_sha());
            }
            let mut replies: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
            if replies.len() != batch.len() {
                return Err(LinkError::Reply(format!(
                    "{} replies to {} refills",
                    replies.len(),
                    batch.len()
                )));
            }
            // The script is gone from Redis's cache (a restart, SCRIPT FLUSH): send it whole,
            // only for those that did not run, so none is applied twice.
            let missing: Vec<usize> = replies
                .iter()
                .enumerate()
                .filter(|(_, reply)| is_noscript(reply))
                .map(|(i, _)| i)
                .collect();
            if !missing.is_empty() {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for &i in &missing {
                    pipe.add_command(self.refill_invocation(&batch[i]).eval());
                }
                let again: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
                if again.len() != missing.len() {
                    return Err(LinkError::Reply("short reply to EVAL".into()));
                }
                for (i, reply) in missing.into_iter().zip(again) {
                    replies[i] = reply;
                }
            }
            replies.into_iter().map(|reply| grant(reply?)).collect()
        })
        .await
    }

    /// Writes this instance's heartbeat and reads the fleet: one script, one round trip.
    pub async fn heartbeat(&self, beat: &Beat<'_>) -> Result<Fleet, LinkError> {
        let alive_ms = u64::try_from(beat.alive_within.as_millis()).unwrap_or(u64::MAX);
        let invocation = Invocation {
            lua: &HEARTBEAT,
            keys: vec![self.key("beats"), self.key("info"), self.key("suspensions")],
            args: vec![
                beat.instance.to_owned(),
                beat.info.to_owned(),
                alive_ms.to_string(),
            ],
        };
        self.call(async |conn: &mut ConnectionManager| {
            let reply = run(conn, &invocation).await?;
            fleet(reply)
        })
        .await
    }

    /// Takes or renews `role` for `instance` for `ttl`: true when this instance holds it now.
    pub async fn lead(&self, role: &str, instance: &str, ttl: Duration) -> Result<bool, LinkError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let invocation = Invocation {
            lua: &LEAD,
            keys: vec![self.key(&format!("leader:{role}"))],
            args: vec![instance.to_owned(), ttl_ms.to_string()],
        };
        self.call(async |conn: &mut ConnectionManager| {
            let reply = run(conn, &invocation).await?;
            match reply {
                Value::Int(held) => Ok(held == 1),
                other => Err(LinkError::Reply(format!("lead: {other:?}"))),
            }
        })
        .await
    }

    /// Sets (`lift` false) or lifts `partner`'s fleet-wide suspension, `json` as its instance
    /// knows it. False: the suspension to set is the one last lifted, and was not set (an
    /// instance that was away brought back one lifted meanwhile).
    pub async fn set_suspension(
        &self,
        partner: &str,
        json: &str,
        lift: bool,
    ) -> Result<bool, LinkError> {
        let mode = if lift { "lift" } else { "set" };
        let invocation = Invocation {
            lua: &SUSPEND,
            keys: vec![self.key("suspensions"), self.key("lifted")],
            args: vec![partner.to_owned(), mode.to_owned(), json.to_owned()],
        };
        self.call(async |conn: &mut ConnectionManager| {
            let reply = run(conn, &invocation).await?;
            match reply {
                Value::Int(done) => Ok(done == 1),
                other => Err(LinkError::Reply(format!("suspend: {other:?}"))),
            }
        })
        .await
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.inner.prefix)
    }

    fn refill_invocation(&self, refill: &Refill) -> Invocation {
        let per_second = if refill.per_second.is_finite() && refill.per_second > 0.0 {
            refill.per_second
        } else {
            0.0
        };
        Invocation {
            lua: &REFILL,
            keys: vec![self.key(&format!("b:{}", refill.key))],
            args: vec![
                // Rust prints the shortest string that reads back as the same f64, and never
                // in exponent form: Lua's tonumber reads it exactly.
                per_second.to_string(),
                refill.burst.to_string(),
                refill.want.to_string(),
                refill.give_back.to_string(),
                refill.debt.to_string(),
            ],
        }
    }

    /// Runs `op` on the connection, bounded by the timeout; makes the connection if there is
    /// none, and drops it after [`FRESH_AFTER`] failures in a row that got no answer from Redis.
    async fn call<T>(
        &self,
        op: impl AsyncFnOnce(&mut ConnectionManager) -> Result<T, LinkError>,
    ) -> Result<T, LinkError> {
        let inner = &self.inner;
        let result = match self.manager() {
            Ok(mut conn) => match tokio::time::timeout(inner.timeout, op(&mut conn)).await {
                Ok(result) => result,
                Err(_) => Err(LinkError::Timeout(inner.timeout)),
            },
            Err(e) => Err(e),
        };
        let unanswered = match &result {
            Ok(_) => false,
            Err(LinkError::Timeout(_)) => true,
            Err(LinkError::Redis(e)) => e.is_timeout() || !answered(e.kind()),
            Err(LinkError::Url(_) | LinkError::Reply(_)) => false,
        };
        if !unanswered {
            inner.failures.store(0, Ordering::Relaxed);
        } else if inner.failures.fetch_add(1, Ordering::Relaxed) + 1 >= FRESH_AFTER {
            inner.failures.store(0, Ordering::Relaxed);
            inner.manager.store(None);
        }
        // redis-rs reports its own response timeout as an I/O error; it is ours too.
        match result {
            Err(LinkError::Redis(e)) if e.is_timeout() => Err(LinkError::Timeout(inner.timeout)),
            other => other,
        }
    }

    /// The connection manager, made (without connecting: it connects at its first command) when
    /// there is none.
    fn manager(&self) -> Result<ConnectionManager, LinkError> {
        let inner = &self.inner;
        if let Some(manager) = inner.manager.load_full() {
            return Ok((*manager).clone());
        }
        let manager =
            ConnectionManager::new_lazy_with_config(inner.client.clone(), inner.config.clone())?;
        inner.manager.store(Some(Arc::new(manager.clone())));
        Ok(manager)
    }
}

/// One command's reply, an error reply as an `Err`.
/// Runs a script by its digest, and by its text when Redis does not have it (a restarted or
/// flushed Redis).
async fn run(conn: &mut ConnectionManager, invocation: &Invocation) -> RedisResult<Value> {
    match send(conn, &invocation.eval_sha()).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            send(conn, &invocation.eval()).await
        }
        reply => reply,
    }
}

async fn send(conn: &mut ConnectionManager, cmd: &redis::Cmd) -> RedisResult<Value> {
    match conn.send_packed_command(cmd).await? {
        Value::ServerError(e) => Err(e.into()),
        value => Ok(value),
    }
}

/// Whether an error of this kind carries an answer from the server (the connection works).
fn answered(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::UnexpectedReturnType
    )
}

fn is_noscript(reply: &RedisResult<Value>) -> bool {
    match reply {
        Ok(Value::ServerError(e)) => e.kind() == Some(ServerErrorKind::NoScript),
        Err(e) => e.kind() == ErrorKind::Server(ServerErrorKind::NoScript),
        Ok(_) => false,
    }
}

/// A script with its keys and arguments, sent as EVALSHA or, when Redis lacks it, EVAL.
struct Invocation {
    lua: &'static Lua,
    keys: Vec<String>,
    args: Vec<String>,
}

impl Invocation {
    fn eval_sha(&self) -> redis::Cmd {
        self.command("EVALSHA", self.lua.script.get_hash())
    }

    fn eval(&self) -> redis::Cmd {
        self.command("EVAL", self.lua.code)
    }

    fn command(&self, name: &str, script: &str) -> redis::Cmd {
        let mut cmd = redis::cmd(name);
        cmd.arg(script)
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }
}

/// `{granted, "tokens left"}` from the refill script.
fn grant(reply: Value) -> Result<Grant, LinkError> {
    let items = array(reply, "refill")?;
    let [granted, left] = <[Value; 2]>::try_from(items)
        .map_err(|items| LinkError::Reply(format!("refill: {} items, not 2", items.len())))?;
    let granted = integer(&granted)
        .and_then(|g| u64::try_from(g).ok())
        .ok_or_else(|| LinkError::Reply(format!("refill: granted {granted:?}")))?;
    let left = text(&left)
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|f| f.is_finite())
        .ok_or_else(|| LinkError::Reply(format!("refill: left {left:?}")))?;
    Ok(Grant { granted, left })
}

/// `{now_ms, {id, since_ms, info, …}, {partner, json, …}, {before_info, before_since_ms}}` from
/// the heartbeat script.
fn fleet(reply: Value) -> Result<Fleet, LinkError> {
    let items = array(reply, "heartbeat")?;
    let [now, members, suspensions, before] = <[Value; 4]>::try_from(items)
        .map_err(|items| LinkError::Reply(format!("heartbeat: {} items, not 4", items.len())))?;
    let before = match <[Value; 2]>::try_from(array(before, "heartbeat before")?) {
        Ok([info, since]) => match (text(&info), integer(&since)) {
            (Some(info), Some(since)) => u64::try_from(since).ok().map(|since| (info, since)),
            _ => {
                return Err(LinkError::Reply(format!(
                    "heartbeat: before {info:?} {since:?}"
                )))
            }
        },
        Err(items) => {
            return Err(LinkError::Reply(format!(
                "heartbeat: before has {} items, not 2",
                items.len()
            )))
        }
    };
    let now_ms = integer(&now)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| LinkError::Reply(format!("heartbeat: now {now:?}")))?;

    let members = array(members, "heartbeat members")?;
    if !members.len().is_multiple_of(3) {
        return Err(LinkError::Reply("heartbeat: members not in threes".into()));
    }
    let mut instances = members
        .chunks_exact(3)
        .map(|member| {
            let bad = || LinkError::Reply(format!("heartbeat: member {member:?}"));
            Ok(Member {
                id: text(&member[0]).ok_or_else(bad)?,
                since_ms: integer(&member[1])
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(bad)?,
                info: text(&member[2]).ok_or_else(bad)?,
            })
        })
        .collect::<Result<Vec<_>, LinkError>>()?;
    instances.sort_by(|a, b| a.id.cmp(&b.id));

    let suspensions = match suspensions {
        // HGETALL may come as a map under RESP3.
        Value::Map(pairs) => pairs,
        other => {
            let flat = array(other, "heartbeat suspensions")?;
            if !flat.len().is_multiple_of(2) {
                return Err(LinkError::Reply(
                    "heartbeat: suspensions not in pairs".into(),
                ));
            }
            let mut flat = flat.into_iter();
            std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect()
        }
    };
    let mut suspensions = suspensions
        .into_iter()
        .map(|(partner, json)| match (text(&partner), text(&json)) {
            (Some(partner), Some(json)) => Ok((partner, json)),
            _ => Err(LinkError::Reply(format!(
                "heartbeat: suspension {partner:?} {json:?}"
            ))),
        })
        .collect::<Result<Vec<_>, LinkError>>()?;
    suspensions.sort();
    Ok(Fleet {
        now_ms,
        instances,
        suspensions,
        before,
    })
}

fn array(value: Value, what: &str) -> Result<Vec<Value>, LinkError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        Value::ServerError(e) => Err(redis::RedisError::from(e).into()),
        other => Err(LinkError::Reply(format!("{what}: {other:?}"))),
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(other)?.trim().parse().ok(),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_reads_the_scripts_reply() {
        let reply = Value::Array(vec![Value::Int(3), Value::BulkString(b"-1.5".to_vec())]);
        assert_eq!(
            grant(reply).ok(),
            Some(Grant {
                granted: 3,
                left: -1.5
            })
        );
    }

    #[test]
    fn grant_refuses_what_is_not_the_scripts_reply() {
        for reply in [
            Value::Int(1),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Int(-1), Value::BulkString(b"0".to_vec())]),
            Value::Array(vec![Value::Int(1), Value::BulkString(b"NaN".to_vec())]),
            Value::Array(vec![Value::Int(1), Value::BulkString(b"x".to_vec())]),
        ] {
            assert!(matches!(grant(reply), Err(LinkError::Reply(_))));
        }
    }

    #[test]
    fn fleet_reads_the_scripts_reply() {
        let s = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            Value::Int(1_700_000_000_000),
            Value::Array(vec![
                s("b"),
                Value::Int(5),
                s("{}"),
                s("a"),
                Value::Int(0),
                s("{\"x\":1}"),
            ]),
            Value::Array(vec![s("p"), s("{\"until\":1}")]),
            Value::Array(vec![s("{\"run\":\"r1\"}"), Value::Int(240)]),
        ]);
        let fleet = fleet(reply).ok();
        assert_eq!(
            fleet,
            Some(Fleet {
                now_ms: 1_700_000_000_000,
                instances: vec![
                    Member {
                        id: "a".into(),
                        since_ms: 0,
                        info: "{\"x\":1}".into()
                    },
                    Member {
                        id: "b".into(),
                        since_ms: 5,
                        info: "{}".into()
                    },
                ],
                suspensions: vec![("p".into(), "{\"until\":1}".into())],
                before: Some(("{\"run\":\"r1\"}".into(), 240)),
            })
        );
        // A name not there before: no `before`.
        let first = Value::Array(vec![
            Value::Int(1),
            Value::Array(vec![]),
            Value::Array(vec![]),
            Value::Array(vec![s(""), Value::Int(-1)]),
        ]);
        assert_eq!(super::fleet(first).ok().and_then(|f| f.before), None);
        let short = Value::Array(vec![Value::Int(1), Value::Array(vec![s("a")]), Value::Nil]);
        assert!(matches!(super::fleet(short), Err(LinkError::Reply(_))));
    }
}
