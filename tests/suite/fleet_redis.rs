//! The fleet's Redis link against a real redis-server: the refill script's arithmetic, the
//! heartbeat and suspensions, NOSCRIPT after a flush or a restart, and a Redis that is down,
//! slow or silent.

use crate::redis_server;

use std::time::Duration;

use billgate::fleet::redis::{Beat, Grant, LinkError, RedisLink, Refill};
use redis_server::{Proxy, RedisServer};

const TIMEOUT: Duration = Duration::from_millis(500);
/// How long a test waits for something that takes real time (a refill, a reconnect).
const PATIENCE: Duration = Duration::from_secs(10);

fn link(url: &str) -> RedisLink {
    RedisLink::open(url, "test", TIMEOUT).expect("open")
}

/// A bucket of `burst` that never refills: its arithmetic is exact.
fn still(key: &str, burst: u64, want: u64) -> Refill {
    Refill {
        key: key.into(),
        per_second: 0.0,
        burst,
        want,
        give_back: 0,
        debt: 0,
    }
}

async fn one(link: &RedisLink, refill: Refill) -> Grant {
    let grants = link.refill(&[refill]).await.expect("refill");
    assert_eq!(grants.len(), 1);
    grants[0]
}

fn grant(granted: u64, left: f64) -> Grant {
    Grant { granted, left }
}

/// A plain command on a connection of its own, for what the tests do behind the link's back.
fn command<T: redis::FromRedisValue>(server: &RedisServer, cmd: &mut redis::Cmd) -> T {
    let client = redis::Client::open(server.url()).expect("client");
    let mut conn = client.get_connection().expect("connection");
    cmd.query(&mut conn).expect("command")
}

/// Calls `op` until it succeeds, every 10 ms, for at most [`PATIENCE`].
async fn until_ok<T>(mut op: impl AsyncFnMut() -> Result<T, LinkError>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match op().await {
            Ok(value) => return value,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("still failing: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[tokio::test]
async fn a_fresh_bucket_grants_up_to_its_burst_then_nothing() {
    let server = RedisServer::start();
    let link = link(&server.url());
    assert_eq!(one(&link, still("k", 10, 4)).await, grant(4, 6.0));
    assert_eq!(one(&link, still("k", 10, 10)).await, grant(6, 0.0));
    assert_eq!(one(&link, still("k", 10, 1)).await, grant(0, 0.0));
    // Asking more than the burst of a full bucket gets the burst.
    assert_eq!(one(&link, still("big", 5, 100)).await, grant(5, 0.0));
    // Asking nothing renews and reports.
    assert_eq!(one(&link, still("idle", 3, 0)).await, grant(0, 3.0));
}

#[tokio::test]
async fn given_back_tokens_are_capped_at_the_burst() {
    let server = RedisServer::start();
    let link = link(&server.url());
    assert_eq!(one(&link, still("k", 5, 4)).await, grant(4, 1.0));
    let back = Refill {
        give_back: 2,
        ..still("k", 5, 0)
    };
    assert_eq!(one(&link, back).await, grant(0, 3.0));
    let too_much = Refill {
        give_back: 100,
        ..still("k", 5, 0)
    };
    assert_eq!(one(&link, too_much).await, grant(0, 5.0));
    assert_eq!(one(&link, still("k", 5, 10)).await, grant(5, 0.0));
}

#[tokio::test]
async fn debt_empties_the_bucket_and_no_further() {
    let server = RedisServer::start();
    let link = link(&server.url());
    let owe = |debt| Refill {
        debt,
        ..still("k", 5, 0)
    };
    assert_eq!(one(&link, owe(3)).await, grant(0, 2.0));
    assert_eq!(one(&link, owe(4)).await, grant(0, 0.0));
    assert_eq!(one(&link, owe(100)).await, grant(0, 0.0));
    // Debt and a want in the same call: the debt is counted first.
    let both = Refill {
        debt: 1,
        ..still("k2", 5, 5)
    };
    assert_eq!(one(&link, both).await, grant(4, 0.0));
    assert_eq!(one(&link, still("k", 5, 1)).await, grant(0, 0.0));
}

#[tokio::test]
async fn an_indebted_bucket_grants_again_once_it_has_refilled() {
    let server = RedisServer::start();
    let link = link(&server.url());
    let fast = |want, debt| Refill {
        key: "fast".into(),
        per_second: 1000.0,
        burst: 5,
        want,
        give_back: 0,
        debt,
    };
    // A fresh bucket is full (5) before the debt is subtracted: empty after, not below.
    assert_eq!(one(&link, fast(0, 100)).await, grant(0, 0.0));
    // 1000/s: a token takes 1 ms of Redis's clock.
    let got = until_ok(async || match one(&link, fast(1, 0)).await {
        Grant { granted: 1, left } => Ok(left),
        other => Err(LinkError::Reply(format!("not yet: {other:?}"))),
    })
    .await;
    assert!((0.0..=4.0).contains(&got), "left {got}");
}

#[tokio::test]
async fn a_slow_bucket_refills_by_fractions() {
    let server = RedisServer::start();
    let link = link(&server.url());
    // 2 a minute: one token every 30 s.
    let slow = |want| Refill {
        key: "slow".into(),
        per_second: 2.0 / 60.0,
        burst: 2,
        want,
        give_back: 0,
        debt: 0,
    };
    let first = one(&link, slow(2)).await;
    assert_eq!(first.granted, 2);
    let second = one(&link, slow(1)).await;
    assert_eq!(second.granted, 0);
    // A few ms of Redis's clock at 1/30 per second: a sliver, never a token.
    assert!(
        second.left >= first.left && second.left < 0.01,
        "{first:?} then {second:?}"
    );
}

#[tokio::test]
async fn a_batch_is_answered_in_order_each_refill_seeing_those_before_it() {
    let server = RedisServer::start();
    let link = link(&server.url());
    let grants = link
        .refill(&[
            still("a", 1, 5),
            still("b", 7, 3),
            still("c", 4, 4),
            still("a", 1, 1),
            still("b", 7, 5),
        ])
        .await
        .expect("refill");
    assert_eq!(
        grants,
        vec![
            grant(1, 0.0),
            grant(3, 4.0),
            grant(4, 0.0),
            grant(0, 0.0),
            grant(4, 0.0),
        ]
    );
    assert_eq!(link.refill(&[]).await.expect("empty batch"), vec![]);
}

#[tokio::test]
async fn buckets_are_kept_under_the_prefix_until_they_would_be_full_again() {
    let server = RedisServer::start();
    let link = link(&server.url());
    let other = RedisLink::open(&server.url(), "other", TIMEOUT).expect("open");
    let tenth = Refill {
        per_second: 0.01,
        ..still("k", 10, 10)
    };
    assert_eq!(one(&link, tenth.clone()).await.granted, 10);
    // Another prefix is another fleet: its bucket of the same key is full.
    assert_eq!(one(&other, tenth).await.granted, 10);
    // 2 × 10 / 0.01 per second = 2000 s.
    let ttl: i64 = command(&server, redis::cmd("PTTL").arg("billgate:test:b:k"));
    assert!((1_990_000..=2_000_000).contains(&ttl), "PTTL {ttl}");
    // A fast bucket is kept a minute at least.
    let fast = Refill {
        per_second: 1000.0,
        ..still("fast", 10, 1)
    };
    one(&link, fast).await;
    let ttl: i64 = command(&server, redis::cmd("PTTL").arg("billgate:test:b:fast"));
    assert!((59_000..=60_000).contains(&ttl), "PTTL {ttl}");
}

#[tokio::test]
async fn refills_go_on_after_the_scripts_are_flushed_or_redis_restarts() {
    let mut server = RedisServer::start();
    let link = link(&server.url());
    assert_eq!(one(&link, still("k", 10, 3)).await, grant(3, 7.0));
    let () = command(&server, redis::cmd("SCRIPT").arg("FLUSH"));
    assert_eq!(
        link.refill(&[still("k", 10, 3), still("j", 2, 1)])
            .await
            .expect("refill after SCRIPT FLUSH"),
        vec![grant(3, 4.0), grant(1, 1.0)]
    );
    let () = command(&server, redis::cmd("SCRIPT").arg("FLUSH"));
    let beat = Beat {
        instance: "a",
        info: "{}",
        alive_within: Duration::from_secs(1),
    };
    let fleet = link.heartbeat(&beat).await.expect("heartbeat after flush");
    assert_eq!(fleet.instances.len(), 1);

    // An empty Redis, without the scripts, and the link's connection broken.
    server.restart();
    let after = until_ok(async || link.refill(&[still("k", 10, 3)]).await).await;
    assert_eq!(after, vec![grant(3, 7.0)]);
}

#[tokio::test]
async fn heartbeats_list_the_live_instances_with_their_info() {
    let server = RedisServer::start();
    let link = link(&server.url());
    let beat = |instance, info| Beat {
        instance,
        info,
        alive_within: Duration::from_millis(200),
    };
    let first = link.heartbeat(&beat("b", r#"{"b":1}"#)).await.expect("b");
    assert_eq!(first.instances.len(), 1);
    assert_eq!(first.instances[0].id, "b");
    assert!(first.suspensions.is_empty());
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    assert!(
        first.now_ms.abs_diff(wall) < 60_000,
        "Redis's clock {}",
        first.now_ms
    );

    let fleet = link.heartbeat(&beat("a", r#"{"a":2}"#)).await.expect("a");
    let ids: Vec<_> = fleet.instances.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(fleet.instances[0].info, r#"{"a":2}"#);
    assert_eq!(fleet.instances[0].since_ms, 0);
    assert_eq!(fleet.instances[1].info, r#"{"b":1}"#);
    assert_eq!(fleet.instances[1].since_ms, fleet.now_ms - first.now_ms);

    // Only a beats from now on: b drops out once its beat is 200 ms old.
    let fleet = until_ok(async || {
        let fleet = link.heartbeat(&beat("a", r#"{"a":3}"#)).await?;
        match fleet.instances.len() {
            1 => Ok(fleet),
            _ => Err(LinkError::Reply("b still listed".into())),
        }
    })
    .await;
    assert_eq!(fleet.instances[0].id, "a");
    assert_eq!(fleet.instances[0].info, r#"{"a":3}"#);
    assert!(fleet.now_ms - first.now_ms > 200);

    // b is back with its next beat.
    let fleet = link.heartbeat(&beat("b", r#"{"b":4}"#)).await.expect("b");
    let ids: Vec<_> = fleet.instances.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
}

#[tokio::test]
async fn suspensions_are_seen_in_every_heartbeat_until_cleared() {
    let server = RedisServer::start();
    let link = link(&server.url());
    let other = RedisLink::open(&server.url(), "test", TIMEOUT).expect("open");
    let beat = Beat {
        instance: "a",
        info: "{}",
        alive_within: Duration::from_secs(5),
    };
    let json = r#"{"until_ms":1,"reason":"abuse"}"#;
    assert!(link
        .set_suspension("wallet-a", json, false)
        .await
        .expect("set"));
    assert!(link
        .set_suspension("bank-b", "{}", false)
        .await
        .expect("set"));
    let fleet = other.heartbeat(&beat).await.expect("beat");
    assert_eq!(
        fleet.suspensions,
        vec![
            ("bank-b".to_string(), "{}".to_string()),
            ("wallet-a".to_string(), json.to_string())
        ]
    );
    assert!(link
        .set_suspension("bank-b", "{}", true)
        .await
        .expect("lift"));
    assert!(link
        .set_suspension("never-set", "{}", true)
        .await
        .expect("lift"));
    let fleet = other.heartbeat(&beat).await.expect("beat");
    assert_eq!(
        fleet.suspensions,
        vec![("wallet-a".to_string(), json.to_string())]
    );
    // The suspension lifted, set again (an instance that was away kept it): refused. Another
    // suspension of the same partner is set.
    assert!(!link
        .set_suspension("bank-b", "{}", false)
        .await
        .expect("stale"));
    let again = r#"{"reason":"again"}"#;
    assert!(link
        .set_suspension("bank-b", again, false)
        .await
        .expect("new"));
    let fleet = other.heartbeat(&beat).await.expect("beat");
    assert_eq!(
        fleet.suspensions,
        vec![
            ("bank-b".to_string(), again.to_string()),
            ("wallet-a".to_string(), json.to_string())
        ]
    );
}

#[test]
fn open_refuses_a_bad_url_and_needs_no_runtime_or_server() {
    assert!(matches!(
        RedisLink::open("http://127.0.0.1:1/", "test", TIMEOUT),
        Err(LinkError::Url(_))
    ));
    assert!(RedisLink::open("redis://127.0.0.1:1/", "test", TIMEOUT).is_ok());
}

#[tokio::test]
async fn a_redis_that_is_down_fails_calls_until_it_is_up() {
    let mut server = RedisServer::start();
    server.kill();
    let link = link(&server.url());
    let beat = Beat {
        instance: "a",
        info: "{}",
        alive_within: Duration::from_secs(1),
    };
    for _ in 0..5 {
        assert!(link.refill(&[still("k", 3, 1)]).await.is_err());
        assert!(link.heartbeat(&beat).await.is_err());
        assert!(link.set_suspension("p", "{}", true).await.is_err());
    }
    server.restart();
    let grants = until_ok(async || link.refill(&[still("k", 3, 1)]).await).await;
    assert_eq!(grants, vec![grant(1, 2.0)]);
    link.heartbeat(&beat).await.expect("heartbeat once up");
}

#[tokio::test]
async fn a_slow_redis_is_waited_for_within_the_timeout_and_not_beyond() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr());
    proxy.set_delay(Duration::from_millis(50));
    let patient = link(&proxy.url());
    let hasty = RedisLink::open(&proxy.url(), "test", Duration::from_millis(20)).expect("open");
    assert_eq!(
        until_ok(async || patient.refill(&[still("k", 3, 1)]).await).await,
        vec![grant(1, 2.0)]
    );
    // Connected, every answer takes 100 ms: 5 times the hasty link's timeout.
    for _ in 0..3 {
        match hasty.refill(&[still("h", 3, 1)]).await {
            Err(LinkError::Timeout(t)) => assert_eq!(t, Duration::from_millis(20)),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    assert_eq!(
        patient.refill(&[still("k", 3, 1)]).await.expect("refill"),
        vec![grant(1, 1.0)]
    );
}

#[tokio::test]
async fn a_silent_redis_times_calls_out_and_they_succeed_once_it_answers() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr());
    let link = link(&proxy.url());
    let beat = Beat {
        instance: "a",
        info: "{}",
        alive_within: Duration::from_secs(60),
    };
    assert_eq!(one(&link, still("k", 10, 1)).await, grant(1, 9.0));
    proxy.set_stalled(true);
    // More calls than it takes the link to give up on its connection and make another one.
    for _ in 0..4 {
        assert!(matches!(
            link.refill(&[still("k", 10, 1)]).await,
            Err(LinkError::Timeout(_))
        ));
        assert!(matches!(
            link.heartbeat(&beat).await,
            Err(LinkError::Timeout(_))
        ));
    }
    proxy.set_stalled(false);
    until_ok(async || link.heartbeat(&beat).await).await;
    let grants = link.refill(&[still("k", 10, 0)]).await.expect("refill");
    // The stalled calls may or may not have reached Redis: between 1 and 5 tokens are taken, of 10.
    assert_eq!(grants[0].granted, 0);
    assert!((5.0..=9.0).contains(&grants[0].left), "{grants:?}");
}

#[tokio::test]
async fn a_rate_that_is_no_number_counts_as_zero() {
    let server = RedisServer::start();
    let link = link(&server.url());
    for (key, per_second) in [("nan", f64::NAN), ("inf", f64::INFINITY), ("neg", -1.0)] {
        let odd = Refill {
            per_second,
            ..still(key, 3, 1)
        };
        assert_eq!(one(&link, odd).await, grant(1, 2.0), "{key}");
    }
}

#[tokio::test]
async fn a_tls_url_is_accepted_and_a_plain_server_refused_without_a_panic() {
    let server = RedisServer::start();
    let link = link(&format!("rediss://127.0.0.1:{}/", server.port()));
    // rustls (with ring, the only provider built) handshakes with a server that speaks no TLS.
    assert!(link.refill(&[still("k", 3, 1)]).await.is_err());
}
