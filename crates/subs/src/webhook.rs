//! What a webhook is made of, without sending it: the event as CloudEvents 1.0 structured
//! JSON, its signature the Standard Webhooks way, and when a failed delivery is tried again.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

/// One bill event to one subscription.
#[derive(Debug, Clone, Copy)]
pub struct BillEvent<'a> {
    /// The event's id: its dedup key, sent as `webhook-id` too.
    pub id: &'a str,
    /// The CloudEvents `source`, e.g. `billgate/bills.example:443`.
    pub source: &'a str,
    /// `bill.due`, `bill.changed` or `bill.paid`.
    pub kind: &'a str,
    pub account: &'a str,
    pub subscription_id: &'a str,
    pub bill_id: &'a str,
    pub status: &'a str,
    pub amount_due: &'a str,
    pub due_date: &'a str,
    /// When the change was seen, milliseconds since the Unix epoch.
    pub time_ms: i64,
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    account: &'a str,
    bill_id: &'a str,
    status: &'a str,
    amount_due: &'a str,
    due_date: &'a str,
    subscription_id: &'a str,
}

/// The event's body: CloudEvents 1.0 structured JSON, the same bytes for the same event.
pub fn bill_event(event: &BillEvent<'_>) -> String {
    let body = CloudEvent {
        specversion: "1.0",
        id: event.id,
        source: event.source,
        kind: event.kind,
        subject: event.account,
        time: rfc3339(event.time_ms),
        datacontenttype: "application/json",
        data: Data {
            account: event.account,
            bill_id: event.bill_id,
            status: event.status,
            amount_due: event.amount_due,
            due_date: event.due_date,
            subscription_id: event.subscription_id,
        },
    };
    serde_json::to_string(&body).unwrap_or_default()
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC (a time before 1970 or past 9999 as the
/// epoch: no event carries one).
fn rfc3339(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// Why a secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    #[error("the environment variable is not set")]
    Unset,
    #[error("it is empty")]
    Empty,
    #[error("it starts with whsec_ but the rest is not base64")]
    NotBase64,
}

/// A partner's signing secret: the key bytes, and the HMAC keyed with them. Its `Debug` never
/// shows them.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
    mac: Hmac<Sha256>,
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.key == other.key
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.key.len())
    }
}

impl Secret {
    /// A secret as Standard Webhooks writes one, `whsec_` and the key in base64; any other
    /// text (trimmed) is the key's bytes as they are.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SecretError::Empty);
        }
        match text.strip_prefix("whsec_") {
            Some(encoded) => {
                let key = STANDARD
                    .decode(encoded)
                    .map_err(|_| SecretError::NotBase64)?;
                Secret::from_key(key)
            }
            None => Secret::from_key(text.as_bytes().to_vec()),
        }
    }

    fn from_key(key: Vec<u8>) -> Result<Secret, SecretError> {
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).map_err(|_| SecretError::Empty)?;
        Ok(Secret { key, mac })
    }

    /// The secret in the file at `path`.
    pub fn from_file(path: &std::path::Path) -> Result<Secret, SecretError> {
        let text = std::fs::read_to_string(path).map_err(SecretError::Read)?;
        Secret::parse(&text)
    }

    /// The secret in the environment variable `name`.
    pub fn from_env(name: &str) -> Result<Secret, SecretError> {
        let text = std::env::var(name).map_err(|_| SecretError::Unset)?;
        Secret::parse(&text)
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// `webhook-signature`'s value: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// Whether `signatures` (the header's space-separated list) holds a valid `v1` signature
    /// of `id.timestamp.body`, with `timestamp` within `tolerance_s` of `now_s`: what a partner
    /// checks. Compared in constant time.
    pub fn verify(
        &self,
        id: &str,
        timestamp: i64,
        body: &[u8],
        signatures: &str,
        now_s: i64,
        tolerance_s: i64,
    ) -> bool {
        if (now_s - timestamp).abs() > tolerance_s {
            return false;
        }
        signatures.split(' ').any(|signature| {
            let Some(encoded) = signature.strip_prefix("v1,") else {
                return false;
            };
            let Ok(tag) = STANDARD.decode(encoded) else {
                return false;
            };
            self.mac(id, timestamp, body).verify_slice(&tag).is_ok()
        })
    }
}

/// When a delivery that failed its `attempts`-th try goes again: exponential from `base`
/// (doubling, at most `cap` between two tries), with full jitter (`random` in [0, 1) picks
/// the wait between half and all of it, so receivers back from an outage are not hit by
/// every delivery at once). `None`: past `horizon_ms` after the event, the delivery is dead.
pub fn next_attempt(
    attempts: u32,
    created_ms: i64,
    now_ms: i64,
    base_ms: i64,
    cap_ms: i64,
    horizon_ms: i64,
    random: f64,
) -> Option<i64> {
    let exponent = attempts.saturating_sub(1).min(30);
    let full = base_ms.saturating_mul(1i64 << exponent).min(cap_ms).max(1);
    let jitter = random.clamp(0.0, 1.0);
    let wait = full / 2 + ((full - full / 2) as f64 * jitter) as i64;
    let at = now_ms.saturating_add(wait.max(1));
    (at <= created_ms.saturating_add(horizon_ms)).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Standard Webhooks' own example (its specification and libraries' tests).
    #[test]
    fn signs_as_the_specification_does() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let timestamp = 1_614_265_330;
        let signature = secret.sign(id, timestamp, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(secret.verify(id, timestamp, body, &signature, timestamp + 10, 300));
        let several = format!("v1,bm90LXRoaXM= {signature}");
        assert!(secret.verify(id, timestamp, body, &several, timestamp, 300));
        assert!(!secret.verify(id, timestamp, b"{\"test\": 1}", &signature, timestamp, 300));
        assert!(!secret.verify(id, timestamp, body, &signature, timestamp + 301, 300));
        let other = Secret::parse("whsec_c2VjcmV0LW9mLXdhbGxldC1h").unwrap();
        assert!(!other.verify(id, timestamp, body, &signature, timestamp, 300));
        assert_eq!(format!("{secret:?}"), "Secret(24 bytes)");
    }

    #[test]
    fn reads_secrets_and_refuses_empty_ones() {
        assert!(matches!(Secret::parse("  \n"), Err(SecretError::Empty)));
        assert!(matches!(
            Secret::parse("whsec_!!"),
            Err(SecretError::NotBase64)
        ));
        assert_eq!(Secret::parse("plain-bytes\n").unwrap().key, b"plain-bytes");
    }

    #[test]
    fn an_event_is_a_cloudevent() {
        let body = bill_event(&BillEvent {
            id: "evt_1",
            source: "billgate/bills.example",
            kind: "bill.paid",
            account: "100234",
            subscription_id: "sub_1",
            bill_id: "BILL-1",
            status: "paid",
            amount_due: "12.30",
            due_date: "2026-12-15",
            time_ms: 1_764_806_400_123,
        });
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["specversion"], "1.0");
        assert_eq!(value["type"], "bill.paid");
        assert_eq!(value["subject"], "100234");
        assert_eq!(value["time"], "2025-12-04T00:00:00.123Z");
        assert_eq!(value["data"]["amount_due"], "12.30");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn retries_back_off_with_jitter_until_the_horizon() {
        // base 1 s, cap 60 s, horizon 1 h: 0.5–1 s, 1–2 s, 2–4 s, …, at most 60 s.
        let at =
            |attempts, random| next_attempt(attempts, 0, 10_000, 1_000, 60_000, 3_600_000, random);
        assert_eq!(at(1, 0.0), Some(10_500));
        assert_eq!(at(1, 0.999_999), Some(10_999));
        assert_eq!(at(2, 0.0), Some(11_000));
        assert_eq!(at(3, 1.0), Some(14_000));
        assert_eq!(at(20, 1.0), Some(70_000));
        assert_eq!(
            next_attempt(3, 0, 3_599_000, 1_000, 60_000, 3_600_000, 0.5),
            None
        );
    }
}
