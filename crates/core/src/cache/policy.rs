//! Whether, and for how long, a biller answer may be kept: `Cache-Control` (RFC 9111 §5.2.2)
//! read as a shared cache reads it, capped by the route's `cache_for`.

use std::time::{Duration, SystemTime};

use http::header::{AGE, CACHE_CONTROL, DATE, EXPIRES, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderValue, StatusCode};

/// Why an answer was not stored. Every case still lets the answer be served to the request (and
/// any coalesced waiters) that fetched it; it just is not reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotStored {
    /// Not a `200 OK`: errors, redirects and "not found" are never reused.
    Status,
    /// `Cache-Control` forbids it (`no-store`, `no-cache`, `private`, a zero or unreadable
    /// `max-age`/`s-maxage`), `Expires` is not after `Date`, or the route's `cache_for` is zero.
    Directive,
    /// The answer carries `Vary`: it depends on request headers the key does not include.
    Varies,
    /// The answer sets a cookie, which must never be handed to another request.
    SetsCookie,
    /// Already stale on arrival: the biller's `Age` used up its lifetime, or the fetch took longer.
    Stale,
    /// The body is over `max_body_bytes`, or the entry is heavier than the cache can hold.
    TooLarge,
    /// A payment for the account was recorded at or after the request went to the biller, so the
    /// answer may predate it.
    Invalidated,
}

impl NotStored {
    /// A short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Status => "status",
            NotStored::Directive => "directive",
            NotStored::Varies => "varies",
            NotStored::SetsCookie => "sets_cookie",
            NotStored::Stale => "stale",
            NotStored::TooLarge => "too_large",
            NotStored::Invalidated => "invalidated",
        }
    }
}

/// How long an answer with these headers may be served from memory: `cache_for`, or less if
/// `s-maxage` (preferred, as for any shared cache) or `max-age` says so — or, without either,
/// `Expires` less `Date`. `None` means do not store: `no-store`, `no-cache` and `private` (bare
/// or with field names), a zero lifetime, a malformed `max-age`/`s-maxage`, an `Expires` that
/// is not an HTTP date later than `Date` (`Expires: 0` included), or a header that is not text.
///
/// The lifetime counts from when the answer was generated; subtract the biller's `Age` (see
/// [`initial_age`]) to get what is left of it.
pub fn freshness(headers: &HeaderMap, cache_for: Duration) -> Option<Duration> {
    let mut max_age: Option<u64> = None;
    let mut s_maxage: Option<u64> = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let text = value.to_str().ok()?;
        for directive in directives(text) {
            let (name, argument) = match directive.split_once('=') {
                Some((name, argument)) => (name.trim(), Some(argument.trim())),
                None => (directive, None),
            };
            let slot = if name.eq_ignore_ascii_case("no-store")
                || name.eq_ignore_ascii_case("no-cache")
                || name.eq_ignore_ascii_case("private")
            {
                return None;
            } else if name.eq_ignore_ascii_case("s-maxage") {
                &mut s_maxage
            } else if name.eq_ignore_ascii_case("max-age") {
                &mut max_age
            } else {
                continue;
            };
            // Conflicting copies: the shortest wins (RFC 9111 §4.2.1 lets a cache be cautious).
            let seconds = delta_seconds(argument?)?;
            *slot = Some(slot.map_or(seconds, |s| s.min(seconds)));
        }
    }
    // `max-age` and `s-maxage` override `Expires` (RFC 9111 §5.3).
    let limit = match (s_maxage.or(max_age), headers.get(EXPIRES)) {
        (Some(seconds), _) => Some(seconds),
        (None, Some(expires)) => Some(expires_after_date(expires, headers)?),
        (None, None) => None,
    };
    let lifetime = match limit {
        Some(seconds) => cache_for.min(Duration::from_secs(seconds)),
        None => cache_for,
    };
    (!lifetime.is_zero()).then_some(lifetime)
}

/// Seconds from `Date` to `Expires`; `None` (do not store) if either is missing or not a date,
/// or `Expires` is not later. An unreadable `Expires` thus reads as already expired, the
/// cautious reading RFC 9111 §5.3 asks for.
fn expires_after_date(expires: &HeaderValue, headers: &HeaderMap) -> Option<u64> {
    let expires = http_date(expires)?;
    let date = http_date(headers.get(DATE)?)?;
    let ahead = expires.duration_since(date).ok()?.as_secs();
    (ahead > 0).then_some(ahead)
}

/// An HTTP date (RFC 9110 §5.6.7): IMF-fixdate or either obsolete form, which a recipient must
/// accept; a weekday that does not match the date, a leap second or a year before 1970 does not
/// read.
fn http_date(value: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?).ok()
}

/// The biller's `Age` in seconds: how old the answer already was when it arrived (zero if absent
/// or unreadable).
pub fn initial_age(headers: &HeaderMap) -> Duration {
    let seconds = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(delta_seconds)
        .unwrap_or(0);
    Duration::from_secs(seconds)
}

/// How long an answer may be kept, or why it may not: status, `Vary`, `Set-Cookie`, then
/// [`freshness`].
pub(super) fn lifetime(
    status: StatusCode,
    headers: &HeaderMap,
    cache_for: Duration,
) -> Result<Duration, NotStored> {
    if status != StatusCode::OK {
        return Err(NotStored::Status);
    }
    if headers.contains_key(VARY) {
        return Err(NotStored::Varies);
    }
    if headers.contains_key(SET_COOKIE) {
        return Err(NotStored::SetsCookie);
    }
    freshness(headers, cache_for).ok_or(NotStored::Directive)
}

/// `delta-seconds` (RFC 9111 §1.2.2), also accepted quoted; values past 2³¹ saturate there.
fn delta_seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    const CAP: u64 = 1 << 31;
    Some(digits.parse::<u64>().map_or(CAP, |s| s.min(CAP)))
}

/// The comma-separated directives of one `Cache-Control` line, trimmed, empty ones skipped.
/// Commas inside quoted strings do not split (`no-cache="a, b"` is one directive).
fn directives(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let mut escaped = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let directive = rest[..end].trim();
        rest = rest.get(end + 1..).unwrap_or("");
        if !directive.is_empty() {
            return Some(directive);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn with(lines: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(CACHE_CONTROL, HeaderValue::from_static(line));
        }
        h
    }

    #[test]
    fn no_header_keeps_for_cache_for() {
        assert_eq!(freshness(&HeaderMap::new(), MINUTE), Some(MINUTE));
        assert_eq!(freshness(&HeaderMap::new(), Duration::ZERO), None);
    }

    #[test]
    fn the_shorter_of_max_age_and_cache_for_wins() {
        let secs = |n| Some(Duration::from_secs(n));
        assert_eq!(freshness(&with(&["max-age=10"]), MINUTE), secs(10));
        assert_eq!(freshness(&with(&["public, Max-Age=600"]), MINUTE), secs(60));
        assert_eq!(freshness(&with(&["max-age=\"5\""]), MINUTE), secs(5));
        // s-maxage is for shared caches, which billgate is.
        assert_eq!(
            freshness(&with(&["max-age=5, s-maxage=30"]), MINUTE),
            secs(30)
        );
        // Conflicting copies over two lines: the shortest.
        assert_eq!(
            freshness(&with(&["max-age=30", "max-age=20"]), MINUTE),
            secs(20)
        );
        assert_eq!(
            freshness(&with(&["max-age=99999999999999"]), MINUTE),
            secs(60)
        );
    }

    #[test]
    fn forbidding_directives_mean_do_not_store() {
        for line in [
            "no-store",
            "No-Cache",
            "private",
            "max-age=60, private",
            "no-cache=\"set-cookie\"",
            "private=\"x\", max-age=60",
            "max-age=0",
            "s-maxage=0, max-age=60",
            "max-age=soon",
            "max-age",
            "max-age=-1",
        ] {
            assert_eq!(freshness(&with(&[line]), MINUTE), None, "{line}");
        }
    }

    #[test]
    fn expires_counts_only_without_max_age() {
        let dated = |expires: &'static str, cc: Option<&'static str>| {
            let mut h = HeaderMap::new();
            h.insert(
                DATE,
                HeaderValue::from_static("Tue, 01 Sep 2026 10:00:00 GMT"),
            );
            h.insert(EXPIRES, HeaderValue::from_static(expires));
            if let Some(cc) = cc {
                h.insert(CACHE_CONTROL, HeaderValue::from_static(cc));
            }
            freshness(&h, MINUTE)
        };
        let secs = |n| Some(Duration::from_secs(n));
        assert_eq!(dated("Tue, 01 Sep 2026 10:00:30 GMT", None), secs(30));
        assert_eq!(dated("Wed, 02 Sep 2026 10:00:00 GMT", None), secs(60));
        assert_eq!(dated("Tue, 01 Sep 2026 10:00:00 GMT", None), None);
        assert_eq!(dated("Tue, 01 Sep 2026 09:00:00 GMT", None), None);
        assert_eq!(dated("0", None), None, "an invalid date is in the past");
        assert_eq!(
            dated("0", Some("max-age=20")),
            secs(20),
            "max-age overrides"
        );
        let mut undated = HeaderMap::new();
        undated.insert(
            EXPIRES,
            HeaderValue::from_static("Tue, 01 Sep 2026 10:00:30 GMT"),
        );
        assert_eq!(freshness(&undated, MINUTE), None);
    }

    /// `Expires` less `Date`, uncapped by `cache_for`.
    fn expires_since(expires: &'static str, date: &'static str) -> Option<Duration> {
        let mut h = HeaderMap::new();
        h.insert(DATE, HeaderValue::from_static(date));
        h.insert(EXPIRES, HeaderValue::from_static(expires));
        freshness(&h, Duration::MAX)
    }

    const EPOCH: &str = "Thu, 01 Jan 1970 00:00:00 GMT";

    #[test]
    fn dates_read_in_the_three_forms() {
        let secs = |n| Some(Duration::from_secs(n));
        assert_eq!(
            expires_since("Sun, 06 Nov 1994 08:49:37 GMT", EPOCH),
            secs(784_111_777)
        );
        assert_eq!(
            expires_since("Tue, 29 Feb 2028 23:59:59 GMT", EPOCH),
            secs(1_835_481_599)
        );
        // The obsolete RFC 850 and asctime forms, which a recipient must accept.
        assert_eq!(
            expires_since("Sunday, 06-Nov-94 08:49:37 GMT", EPOCH),
            secs(784_111_777)
        );
        assert_eq!(
            expires_since("Sun Nov  6 08:49:37 1994", EPOCH),
            secs(784_111_777)
        );
        assert_eq!(
            expires_since("Sun, 06 Nov 1994 08:49:38 GMT", "Sun Nov  6 08:49:37 1994"),
            secs(1)
        );
    }

    #[test]
    fn anything_else_is_no_date_and_so_expired() {
        for text in [
            "0",
            "",
            "-1",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
            "Mon, 06 Nov 1994 08:49:37 GMT",
            "Tue, 29 Feb 2028 23:59:60 GMT",
            "Fri, 31 Dec 1969 23:59:59 GMT",
        ] {
            assert_eq!(expires_since(text, EPOCH), None, "Expires: {text}");
            assert_eq!(
                expires_since("Sun, 06 Nov 1994 08:49:37 GMT", text),
                None,
                "Date: {text}"
            );
        }
    }

    #[test]
    fn commas_inside_quotes_do_not_split() {
        let h = with(&["community=\"a, max-age=1\", max-age=40"]);
        assert_eq!(freshness(&h, MINUTE), Some(Duration::from_secs(40)));
        let parts: Vec<&str> = directives(" a , ,b=\"x,\\\"y\",c").collect();
        assert_eq!(parts, ["a", "b=\"x,\\\"y\"", "c"]);
    }

    #[test]
    fn only_plain_200s_without_vary_or_cookies_are_kept() {
        let ok = HeaderMap::new();
        assert_eq!(lifetime(StatusCode::OK, &ok, MINUTE), Ok(MINUTE));
        for status in [
            StatusCode::NOT_FOUND,
            StatusCode::BAD_GATEWAY,
            StatusCode::NO_CONTENT,
        ] {
            assert_eq!(lifetime(status, &ok, MINUTE), Err(NotStored::Status));
        }
        let mut vary = HeaderMap::new();
        vary.insert(VARY, HeaderValue::from_static("accept-language"));
        assert_eq!(
            lifetime(StatusCode::OK, &vary, MINUTE),
            Err(NotStored::Varies)
        );
        let mut cookie = HeaderMap::new();
        cookie.insert(SET_COOKIE, HeaderValue::from_static("s=1"));
        assert_eq!(
            lifetime(StatusCode::OK, &cookie, MINUTE),
            Err(NotStored::SetsCookie)
        );
        let no_store = with(&["no-store"]);
        assert_eq!(
            lifetime(StatusCode::OK, &no_store, MINUTE),
            Err(NotStored::Directive)
        );
    }

    #[test]
    fn reads_the_billers_age() {
        let mut h = HeaderMap::new();
        assert_eq!(initial_age(&h), Duration::ZERO);
        h.insert(AGE, HeaderValue::from_static("7"));
        assert_eq!(initial_age(&h), Duration::from_secs(7));
        h.insert(AGE, HeaderValue::from_static("old"));
        assert_eq!(initial_age(&h), Duration::ZERO);
    }
}
