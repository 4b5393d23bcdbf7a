//! One biller answer as kept in memory and served again: status, end-to-end headers, body, an
//! ETag for conditional requests (RFC 9110 §13.1.2), and the times that decide its age and
//! freshness.

use std::time::Duration;

use bytes::Bytes;
use governor::nanos::Nanos;
use http::header::{
    HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_LOCATION, CONTENT_TYPE, DATE, ETAG, EXPIRES, IF_NONE_MATCH, SET_COOKIE, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE, VARY,
};
use http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

/// The header that tells a partner how its answer was produced.
pub const CACHE_STATUS_HEADER: HeaderName = HeaderName::from_static("x-billgate-cache");

/// How an inquiry was answered: the value of [`CACHE_STATUS_HEADER`] and the `result` label of
/// `billgate_cache_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// From memory, without touching the biller.
    Hit,
    /// From another request's biller call that was in flight at the same time.
    Coalesced,
    /// From this request's own biller call.
    Miss,
}

impl CacheStatus {
    /// Every status, for binding metric handles up front.
    pub const ALL: [CacheStatus; 3] = [CacheStatus::Hit, CacheStatus::Coalesced, CacheStatus::Miss];

    /// `hit`, `coalesced` or `miss`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Miss => "miss",
        }
    }

    /// The header value (no allocation).
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// An answer kept for reuse. Shared as `Arc<CachedAnswer>`; nothing in it changes once built.
#[derive(Debug, Clone)]
pub struct CachedAnswer {
    /// The biller's status (always `200 OK` for a stored answer).
    pub status: StatusCode,
    /// End-to-end headers only, including `ETag`; hop-by-hop headers, `Content-Length`, `Age`
    /// and any `x-billgate-cache` the biller sent are dropped. Values are copied into their own
    /// allocations, so an answer never pins a connection's read buffer.
    pub headers: HeaderMap,
    /// The body, in its own allocation (for the same reason).
    pub body: Bytes,
    /// The biller's `ETag` if it sent a valid one, else a strong tag computed from the body, its
    /// `Content-Type` and its `Content-Encoding`: equal answers get equal tags on every replica.
    pub etag: HeaderValue,
    /// When the answer was fetched: the instant its request went to the biller, less any `Age`
    /// the biller reported. Its age counts from here, and a payment for the account recorded at
    /// or after it voids it.
    pub stored_at: Nanos,
    /// Served from memory only while the clock reads before this.
    pub fresh_until: Nanos,
}

impl CachedAnswer {
    /// Builds an answer from what the biller sent: drops hop-by-hop headers, copies the rest and
    /// the body, settles the ETag. `requested_at` is when the request went to the biller; the
    /// answer stays fresh for `lifetime` less the biller's `Age`. Builds any answer, cacheable or
    /// not (a zero `lifetime` gives one that is never fresh), so coalesced waiters can share it.
    pub fn build(
        requested_at: Nanos,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        lifetime: Duration,
    ) -> Self {
        let mut kept = end_to_end(headers);
        let etag = match kept.get(ETAG) {
            Some(tag) if opaque_tag(tag.as_bytes()).is_some() => tag.clone(),
            _ => {
                let tag = strong_etag(&kept, body);
                kept.insert(ETAG, tag.clone());
                tag
            }
        };
        let born = requested_at.saturating_sub(nanos(super::policy::initial_age(headers)));
        CachedAnswer {
            status,
            headers: kept,
            body: Bytes::copy_from_slice(body),
            etag,
            stored_at: born,
            fresh_until: later(born, lifetime),
        }
    }

    /// Whole seconds since the answer was fetched: the `Age` header's value.
    pub fn age(&self, now: Nanos) -> u64 {
        crate::clock::since(now, self.stored_at).as_secs()
    }

    /// Whether the answer may still be served from memory at `now`.
    pub fn is_fresh(&self, now: Nanos) -> bool {
        now < self.fresh_until
    }

    /// Whether one `If-None-Match` value matches this answer's ETag: `*`, or a list of entity
    /// tags any of which equals it by weak comparison (`W/` ignored). A malformed list matches
    /// only through the tags before the fault.
    pub fn matches_if_none_match(&self, header: &HeaderValue) -> bool {
        let Some(ours) = opaque_tag(self.etag.as_bytes()) else {
            return false;
        };
        let list = header.as_bytes().trim_ascii();
        list == b"*" || EntityTags(list).any(|theirs| theirs == ours)
    }

    /// Whether a request's headers make this a `304 Not Modified`: any `If-None-Match` line
    /// matches. (`If-Modified-Since` is ignored, as RFC 9110 §13.1.3 says when `If-None-Match`
    /// is present; without it there is no match.)
    pub fn is_not_modified(&self, request: &HeaderMap) -> bool {
        request
            .get_all(IF_NONE_MATCH)
            .iter()
            .any(|v| self.matches_if_none_match(v))
    }

    /// The headers of a full answer from memory: the stored ones, `Age` and `x-billgate-cache`.
    pub fn headers_for(&self, now: Nanos, status: CacheStatus) -> HeaderMap {
        let mut headers = self.headers.clone();
        headers.insert(AGE, HeaderValue::from(self.age(now)));
        headers.insert(CACHE_STATUS_HEADER, status.header_value());
        headers
    }

    /// The headers of a `304 Not Modified` for this answer: those RFC 9110 §15.4.5 says a 304
    /// carries (`Cache-Control`, `Content-Location`, `Date`, `ETag`, `Expires`, `Vary`), plus
    /// `Age` and `x-billgate-cache`.
    pub fn not_modified_headers(&self, now: Nanos, status: CacheStatus) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(8);
        for name in [CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, VARY] {
            for value in self.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(AGE, HeaderValue::from(self.age(now)));
        headers.insert(CACHE_STATUS_HEADER, status.header_value());
        headers
    }

    /// An estimate of the bytes this answer holds: body, header names and values, and the
    /// fixed size of the structures around them.
    pub(super) fn weight(&self) -> usize {
        let per_header =
            std::mem::size_of::<HeaderName>() + std::mem::size_of::<HeaderValue>() + 32;
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + per_header)
            .sum();
        std::mem::size_of::<Self>() + self.body.len() + headers
    }
}

/// `d` as [`Nanos`], saturating (governor's conversion panics past 584 years).
pub(super) fn nanos(d: Duration) -> Nanos {
    Nanos::from(crate::clock::nanos(d))
}

/// `at + d`, saturating.
pub(super) fn later(at: Nanos, d: Duration) -> Nanos {
    Nanos::from(at.as_u64().saturating_add(nanos(d).as_u64()))
}

/// Headers that describe one connection (RFC 9110 §7.6.1), plus those the gateway sets itself.
const NOT_KEPT: [HeaderName; 10] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    CONTENT_LENGTH,
    AGE,
    CACHE_STATUS_HEADER,
];

/// The end-to-end headers of `headers`, values copied into their own allocations.
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named_by_connection = |name: &HeaderName| {
        headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
    };
    let mut kept = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if NOT_KEPT.contains(name)
            || *name == SET_COOKIE
            || name.as_str().starts_with("proxy-")
            || named_by_connection(name)
        {
            continue;
        }
        if let Ok(copy) = HeaderValue::from_bytes(value.as_bytes()) {
            kept.append(name.clone(), copy);
        }
    }
    kept
}

/// A strong ETag: the first 128 bits of SHA-256 over the content type, content coding and
/// body, as 32 hex digits in quotes.
fn strong_etag(headers: &HeaderMap, body: &[u8]) -> HeaderValue {
    let mut hash = Sha256::new();
    for name in [CONTENT_TYPE, CONTENT_ENCODING] {
        for value in headers.get_all(name) {
            hash.update(value.as_bytes());
        }
        hash.update([0]);
    }
    hash.update(body);
    let digest = hash.finalize();
    let tag = format!("\"{}\"", hex::encode(&digest[..16]));
    // Hex digits and quotes are always a valid header value; the fallback is never taken.
    HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// The opaque part of one entity tag (`"x"` or `W/"x"`), quotes included; `None` if malformed.
fn opaque_tag(tag: &[u8]) -> Option<&[u8]> {
    let mut tags = EntityTags(tag.trim_ascii());
    let first = tags.next()?;
    tags.0.is_empty().then_some(first)
}

/// The entity tags of an `If-None-Match`-style list, each as its quoted opaque part; stops at
/// the first malformed element.
struct EntityTags<'a>(&'a [u8]);

impl<'a> Iterator for EntityTags<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self
            .0
            .iter()
            .position(|&b| !matches!(b, b' ' | b'\t' | b','));
        let rest = &self.0[start.unwrap_or(self.0.len())..];
        let rest = rest.strip_prefix(b"W/").unwrap_or(rest);
        self.0 = &[];
        let body = rest.strip_prefix(b"\"")?;
        let close = body.iter().position(|&b| b == b'"')?;
        // etagc: %x21 / %x23-7E / obs-text.
        if !body[..close]
            .iter()
            .all(|&b| b == 0x21 || b >= 0x23 && b != 0x7f)
        {
            return None;
        }
        let (tag, after) = rest.split_at(close + 2);
        let after_trimmed = after.trim_ascii_start();
        if !after_trimmed.is_empty() && !after_trimmed.starts_with(b",") {
            return None;
        }
        self.0 = after;
        Some(tag)
    }
}

#[cfg(test)]
mod tests {
    //! Answers as built and served again: header hygiene, ETags, `If-None-Match`, `Age`.

    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn at(secs: u64) -> Nanos {
        nanos(Duration::from_secs(secs))
    }

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h
    }

    fn answer(headers: &HeaderMap, body: &str) -> CachedAnswer {
        CachedAnswer::build(at(0), StatusCode::OK, headers, body.as_bytes(), MINUTE)
    }

    fn value(text: &'static str) -> HeaderValue {
        HeaderValue::from_static(text)
    }

    #[test]
    fn strong_etag_is_stable_for_a_body_and_differs_between_bodies() {
        let h = json_headers();
        let a = answer(&h, r#"{"account":"ACC-1","status":"due"}"#);
        let again = answer(&h, r#"{"account":"ACC-1","status":"due"}"#);
        let other = answer(&h, r#"{"account":"ACC-1","status":"no_bill_due"}"#);
        assert_eq!(a.etag, again.etag);
        assert_ne!(a.etag, other.etag);
        let tag = a.etag.to_str().expect("ascii");
        assert!(
            tag.len() == 34 && tag.starts_with('"') && tag.ends_with('"'),
            "{tag}"
        );
        assert!(!tag.starts_with("W/"), "strong");
        assert_eq!(a.headers.get(ETAG), Some(&a.etag));
        // Same bytes in another content type are another representation.
        let mut text = HeaderMap::new();
        text.insert(CONTENT_TYPE, value("text/plain"));
        assert_ne!(
            answer(&text, r#"{"account":"ACC-1","status":"due"}"#).etag,
            a.etag
        );
    }

    #[test]
    fn the_billers_etag_is_kept_unless_malformed() {
        let mut h = json_headers();
        h.insert(ETAG, value("W/\"v7\""));
        assert_eq!(answer(&h, "x").etag, value("W/\"v7\""));
        h.insert(ETAG, value("v7-unquoted"));
        let computed = answer(&h, "x");
        assert_ne!(computed.etag, value("v7-unquoted"));
        assert_eq!(computed.headers.get_all(ETAG).iter().count(), 1);
    }

    #[test]
    fn if_none_match_rules() {
        let mut h = json_headers();
        h.insert(ETAG, value("\"abc\""));
        let strong = answer(&h, "x");
        h.insert(ETAG, value("W/\"abc\""));
        let weak = answer(&h, "x");
        for a in [&strong, &weak] {
            for header in [
                "\"abc\"",
                "W/\"abc\"",
                "*",
                "  *  ",
                "\"zzz\", \"abc\"",
                "\"zzz\",W/\"abc\" ,\"yyy\"",
                ", \"abc\"",
            ] {
                assert!(a.matches_if_none_match(&value(header)), "{header}");
            }
            for header in [
                "\"abd\"",
                "abc",
                "\"ABC\"",
                "w/\"abc\"",
                "\"abc",
                "",
                "\"zzz\" \"abc\"",
                "\"bad\"x, \"abc\"",
                "**",
            ] {
                assert!(!a.matches_if_none_match(&value(header)), "{header}");
            }
        }
        // A comma is a legal character inside a tag.
        let mut h = json_headers();
        h.insert(ETAG, value("\"a,b\""));
        let commas = answer(&h, "x");
        assert!(commas.matches_if_none_match(&value("\"x\", \"a,b\"")));
        assert!(!commas.matches_if_none_match(&value("\"a\"")));
    }

    #[test]
    fn any_if_none_match_line_may_match() {
        let a = answer(&json_headers(), "x");
        let mut request = HeaderMap::new();
        assert!(!a.is_not_modified(&request));
        request.append(IF_NONE_MATCH, value("\"other\""));
        assert!(!a.is_not_modified(&request));
        request.append(IF_NONE_MATCH, a.etag.clone());
        assert!(a.is_not_modified(&request));
    }

    #[test]
    fn keeps_end_to_end_headers_only_in_their_own_memory() {
        let mut h = json_headers();
        h.insert(CONNECTION, value("keep-alive, x-hop"));
        h.insert("x-hop", value("1"));
        h.insert("keep-alive", value("timeout=5"));
        h.insert(TRANSFER_ENCODING, value("chunked"));
        h.insert(CONTENT_LENGTH, value("1"));
        h.insert(AGE, value("0"));
        h.insert(CACHE_STATUS_HEADER, value("hit"));
        h.insert("proxy-authenticate", value("Basic"));
        h.insert(DATE, value("Tue, 01 Sep 2026 10:00:00 GMT"));
        h.append("x-trace", value("a"));
        h.append("x-trace", value("b"));
        let buffer = Bytes::from_static(b"{\"bill\":1} and the rest of a read buffer");
        let a = CachedAnswer::build(at(0), StatusCode::OK, &h, &buffer[..10], MINUTE);
        let mut names: Vec<&str> = a.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "date", "etag", "x-trace"]);
        assert_eq!(a.headers.get_all("x-trace").iter().count(), 2);
        assert_eq!(a.body, "{\"bill\":1}");
        assert_ne!(a.body.as_ptr(), buffer.as_ptr(), "copied, not a view");
    }

    #[test]
    fn age_counts_from_the_request_and_the_billers_age() {
        let mut h = json_headers();
        let a = CachedAnswer::build(at(100), StatusCode::OK, &h, b"x", MINUTE);
        assert_eq!((a.stored_at, a.fresh_until), (at(100), at(160)));
        assert_eq!(a.age(at(100)), 0);
        assert_eq!(a.age(at(105) + Duration::from_millis(999)), 5);
        assert!(a.is_fresh(at(160).saturating_sub(Nanos::from(1))));
        assert!(!a.is_fresh(at(160)));
        h.insert(AGE, value("10"));
        let aged = CachedAnswer::build(at(100), StatusCode::OK, &h, b"x", MINUTE);
        assert_eq!((aged.stored_at, aged.fresh_until), (at(90), at(150)));
        assert_eq!(aged.age(at(100)), 10);
    }

    #[test]
    fn served_headers_carry_age_and_cache_status() {
        let mut h = json_headers();
        h.insert(CACHE_CONTROL, value("max-age=60"));
        h.insert("x-trace", value("t"));
        let a = CachedAnswer::build(at(0), StatusCode::OK, &h, b"x", MINUTE);
        let full = a.headers_for(at(7), CacheStatus::Hit);
        assert_eq!(full.get(AGE), Some(&value("7")));
        assert_eq!(full.get(CACHE_STATUS_HEADER), Some(&value("hit")));
        assert_eq!(full.get("x-trace"), Some(&value("t")));
        let not_modified = a.not_modified_headers(at(7), CacheStatus::Coalesced);
        let mut names: Vec<&str> = not_modified.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["age", "cache-control", "etag", "x-billgate-cache"]);
        assert_eq!(
            not_modified.get(CACHE_STATUS_HEADER),
            Some(&value("coalesced"))
        );
        assert_eq!(CacheStatus::Miss.header_value(), value("miss"));
    }
}
