//! Classification: which route a request's method and path match, and the bill account it names.

use http::Method;

use crate::config::{AccountSource, Route, RouteClass, Segment};
use crate::ids::{PerRoute, RouteId};

/// The routes of a snapshot, matched in configuration order.
pub struct Router {
    routes: PerRoute<Route>,
    /// Each route's template, compiled for matching (same order).
    compiled: Vec<Compiled>,
}

/// A template split into the text its leading literal segments spell, slashes included, and
/// the segments after them: `/v1/bills/{account}` is `"/v1/bills/"` then `[Account]`. A path
/// matches when it starts with the text and its rest matches the segments, so the literals
/// cost one comparison instead of one per segment.
struct Compiled {
    prefix: String,
    rest: Vec<Segment>,
}

impl Compiled {
    fn new(template: &[Segment]) -> Compiled {
        let literals: Vec<&str> = template
            .iter()
            .map_while(|segment| match segment {
                Segment::Literal(text) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        let rest = template[literals.len()..].to_vec();
        let mut prefix = format!("/{}", literals.join("/"));
        if !rest.is_empty() && !literals.is_empty() {
            prefix.push('/');
        }
        Compiled { prefix, rest }
    }

    /// `Some(account segment)` when `path` matches.
    #[inline]
    fn matches<'r>(&self, path: &'r str) -> Option<Option<&'r str>> {
        let rest = path.get(self.prefix.len()..)?;
        if !same(path.get(..self.prefix.len())?, &self.prefix) {
            return None;
        }
        if self.rest.is_empty() {
            // Only literals: the path ends here, or (after at least one literal) with one slash.
            let slash = rest == "/" && self.prefix.len() > 1;
            return (rest.is_empty() || slash).then_some(None);
        }
        match_parts(&self.rest, rest)
    }
}

/// A matched route and the account it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched<'r> {
    /// The route, by its place in the configuration.
    pub route: RouteId,
    pub class: RouteClass,
    /// The bill account, when the route says where it is and the request carries one fit to
    /// forward.
    pub account: Option<&'r str>,
    /// The request carries an account unfit to forward ([`account_ok`] says no): it is refused
    /// (`bad_account`) before any quota is spent or the biller asked.
    pub bad_account: bool,
}

/// The longest bill account forwarded, in bytes as the request carries it (escapes included).
/// Bill account numbers are a few dozen characters at most; anything longer is not one.
pub const MAX_ACCOUNT_LEN: usize = 64;

/// Whether an account as the request carries it (`raw`, percent-escapes and all) may be put
/// in front of the biller. Read with its escapes decoded, as the biller may decode them, it
/// must be valid UTF-8 with no `/` or `\\` (an escaped slash would make the biller see another
/// path, `%2F..%2F` climbing out of the bills), not be `.` or `..` nor hold `..`, hold no
/// control character, and be at most [`MAX_ACCOUNT_LEN`] bytes. A malformed escape is refused
/// too: what the biller makes of it is anyone's guess. Allocates nothing.
pub fn account_ok(raw: &str) -> bool {
    if raw.is_empty() || raw.len() > MAX_ACCOUNT_LEN {
        return false;
    }
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let bytes = raw.as_bytes();
    let mut decoded = [0u8; MAX_ACCOUNT_LEN];
    let (mut read, mut len) = (0, 0);
    while let Some(&b) = bytes.get(read) {
        let byte = if b == b'%' {
            let (Some(hi), Some(lo)) = (hex(bytes.get(read + 1)), hex(bytes.get(read + 2))) else {
                return false;
            };
            read += 3;
            (hi * 16 + lo) as u8
        } else {
            read += 1;
            b
        };
        if matches!(byte, b'/' | b'\\') {
            return false;
        }
        if let Some(slot) = decoded.get_mut(len) {
            *slot = byte;
            len += 1;
        }
    }
    let Ok(text) = std::str::from_utf8(decoded.get(..len).unwrap_or_default()) else {
        return false;
    };
    text != "." && !text.contains("..") && !text.chars().any(char::is_control)
}

impl Router {
    /// A router over `routes`, each template compiled once for matching.
    pub fn new(routes: PerRoute<Route>) -> Self {
        let compiled = routes
            .iter()
            .map(|r| Compiled::new(&r.path.segments))
            .collect();
        Router { routes, compiled }
    }

    /// The routes, in configuration order (a match's `route` indexes them).
    pub fn routes(&self) -> &PerRoute<Route> {
        &self.routes
    }

    /// The first route matching `method` and `path`; `query` is the raw query string, if any.
    /// Allocates nothing: the account is a slice of the request's own path or query.
    pub fn find<'r>(
        &self,
        method: &Method,
        path: &'r str,
        query: Option<&'r str>,
    ) -> Option<Matched<'r>> {
        let compiled = self.routes.iter().zip(&self.compiled);
        compiled.enumerate().find_map(|(index, (route, template))| {
            if route.method != *method {
                return None;
            }
            let in_path = template.matches(path)?;
            let account = match &route.account {
                AccountSource::None => None,
                AccountSource::PathSegment => in_path,
                AccountSource::Query(name) => query.and_then(|q| query_value(q, name)),
            };
            let bad_account = account.is_some_and(|a| !account_ok(a));
            Some(Matched {
                route: RouteId::new(index),
                class: route.class,
                account: account.filter(|_| !bad_account),
                bad_account,
            })
        })
    }
}

/// The parts of a path between slashes, like `split('/')` but without its general searcher:
/// paths are short, so a plain byte loop finds each slash fastest.
struct Parts<'r> {
    rest: &'r str,
    next: Option<usize>,
}

impl<'r> Iterator for Parts<'r> {
    type Item = &'r str;

    #[inline]
    fn next(&mut self) -> Option<&'r str> {
        let start = self.next?;
        let tail = self.rest.as_bytes().get(start..)?;
        match find_slash(tail) {
            Some(len) => {
                self.next = Some(start + len + 1);
                self.rest.get(start..start + len)
            }
            None => {
                self.next = None;
                self.rest.get(start..)
            }
        }
    }
}

/// Eight bytes of `bytes` from `at`, little-endian (0 past the end: callers stay inside).
#[inline]
fn word_at(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at.wrapping_add(8))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}

/// Byte equality without a call to `memcmp`: route segments are a few bytes long. (Comparing
/// eight bytes at a time, as [`find_slash`] searches, ran 66 instructions fewer per decision
/// but measured 20 ns slower on an admitted one, in eight of nine interleaved rounds; the byte
/// loop stays.)
#[inline]
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

/// Where the first `/` in `bytes` is, eight bytes at a time: a word xor'ed with slashes has a
/// zero byte where the slash was, and the classic zero-byte test flags it (it may also flag
/// bytes above a true zero, never below, so the lowest flag is the first slash). The last
/// partial word is read as the final eight bytes, whose earlier bytes are known not to be
/// slashes.
#[inline]
fn find_slash(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const SLASHES: u64 = ONES * b'/' as u64;
    let first = |word: u64| {
        let x = word ^ SLASHES;
        let found = x.wrapping_sub(ONES) & !x & HIGHS;
        (found != 0).then(|| found.trailing_zeros() as usize / 8)
    };
    let Some(last) = bytes.len().checked_sub(8) else {
        return bytes.iter().position(|&b| b == b'/');
    };
    let mut at = 0;
    while at < last {
        if let Some(i) = first(word_at(bytes, at)) {
            return Some(at + i);
        }
        at += 8;
    }
    first(word_at(bytes, last)).map(|i| last + i)
}

/// Matches `path` against a template; `Some(account segment)` on a match.
#[cfg(test)]
fn match_path<'r>(template: &[Segment], path: &'r str) -> Option<Option<&'r str>> {
    Compiled::new(template).matches(path)
}

/// Matches `rest` (a path after its leading slash or literal prefix) against `template`.
#[inline]
fn match_parts<'r>(template: &[Segment], rest: &'r str) -> Option<Option<&'r str>> {
    let mut parts = Parts {
        rest,
        next: Some(0),
    };
    let mut account = None;
    for segment in template {
        let part = parts.next()?;
        match segment {
            Segment::Literal(text) => {
                if !same(part, text) {
                    return None;
                }
            }
            Segment::Account => {
                if part.is_empty() {
                    return None;
                }
                account = Some(part);
            }
            Segment::Param(_) => {
                if part.is_empty() {
                    return None;
                }
            }
        }
    }
    // A trailing slash is tolerated; any further segment is not.
    match parts.next() {
        None => Some(account),
        Some("") if parts.next().is_none() => Some(account),
        Some(_) => None,
    }
}

/// The first non-empty value of `name` in a raw query string.
fn query_value<'r>(query: &'r str, name: &str) -> Option<&'r str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name && !value.is_empty()).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CacheScope, PathTemplate};

    fn route(
        name: &str,
        method: Method,
        segments: Vec<Segment>,
        account: AccountSource,
        class: RouteClass,
    ) -> Route {
        Route {
            name: name.into(),
            method,
            path: PathTemplate {
                raw: String::new(),
                segments,
            },
            account,
            class,
            cache_for: None,
            cache_scope: CacheScope::Partner,
            account_field: None,
        }
    }

    fn router() -> Router {
        use Segment::*;
        Router::new(
            vec![
                route(
                    "bill",
                    Method::GET,
                    vec![Literal("v1".into()), Literal("bills".into()), Account],
                    AccountSource::PathSegment,
                    RouteClass::Inquiry,
                ),
                route(
                    "pay",
                    Method::POST,
                    vec![Literal("v1".into()), Literal("payments".into())],
                    AccountSource::None,
                    RouteClass::Payment,
                ),
                route(
                    "lookup",
                    Method::GET,
                    vec![Literal("v1".into()), Literal("lookup".into())],
                    AccountSource::Query("acct".into()),
                    RouteClass::Inquiry,
                ),
                route(
                    "stmt",
                    Method::GET,
                    vec![
                        Literal("v1".into()),
                        Param("id".into()),
                        Literal("statement".into()),
                    ],
                    AccountSource::None,
                    RouteClass::Inquiry,
                ),
            ]
            .into(),
        )
    }

    #[test]
    fn matches_method_path_and_account() {
        let r = router();
        let m = r.find(&Method::GET, "/v1/bills/12345", None).unwrap();
        assert_eq!(
            (m.route, m.class, m.account),
            (RouteId::new(0), RouteClass::Inquiry, Some("12345"))
        );
        assert_eq!(
            r.find(&Method::GET, "/v1/bills/12345/", None)
                .unwrap()
                .account,
            Some("12345")
        );
        assert_eq!(
            r.find(&Method::POST, "/v1/payments", None).unwrap().route,
            RouteId::new(1)
        );
        assert_eq!(
            r.find(&Method::GET, "/v1/stmt-9/statement", None)
                .unwrap()
                .route,
            RouteId::new(3)
        );
        assert_eq!(
            r.find(&Method::GET, "/v1/bills/é42", None).unwrap().account,
            Some("é42")
        );
    }

    #[test]
    fn refuses_what_does_not_match() {
        let r = router();
        assert_eq!(r.find(&Method::POST, "/v1/bills/12345", None), None);
        assert_eq!(r.find(&Method::GET, "/v1/bills/", None), None);
        assert_eq!(r.find(&Method::GET, "/v1/bills", None), None);
        assert_eq!(r.find(&Method::GET, "/v1/bills/1/2", None), None);
        assert_eq!(r.find(&Method::GET, "v1/bills/1", None), None);
        assert_eq!(r.find(&Method::GET, "/v2/bills/1", None), None);
        assert_eq!(r.find(&Method::GET, "/v1/bills/1//", None), None);
        assert_eq!(r.find(&Method::GET, "/v1/bill/1", None), None);
        assert_eq!(r.find(&Method::GET, "/v1/billsx/1", None), None);
        assert_eq!(r.find(&Method::GET, "/", None), None);
        assert_eq!(r.find(&Method::GET, "", None), None);
        assert_eq!(r.find(&Method::GET, "/v1//statement", None), None);
    }

    /// The matcher as first written, on `split('/')`: the fast one must agree with it.
    fn reference<'r>(template: &[Segment], path: &'r str) -> Option<Option<&'r str>> {
        let mut parts = path.strip_prefix('/')?.split('/');
        let mut account = None;
        for segment in template {
            let part = parts.next()?;
            match segment {
                Segment::Literal(text) if part != text => return None,
                Segment::Account | Segment::Param(_) if part.is_empty() => return None,
                Segment::Account => account = Some(part),
                _ => {}
            }
        }
        match parts.next() {
            None => Some(account),
            Some("") if parts.next().is_none() => Some(account),
            Some(_) => None,
        }
    }

    #[test]
    fn agrees_with_split_on_every_small_path() {
        use Segment::*;
        let templates = [
            vec![Literal("v1".into()), Literal("bills".into()), Account],
            vec![
                Literal("v1".into()),
                Param("id".into()),
                Literal("s".into()),
            ],
            vec![Account],
            vec![],
            vec![Literal("v1".into())],
            vec![Literal("v1".into()), Literal("s".into())],
            vec![Param("p".into()), Literal("s".into()), Account],
        ];
        let pieces = ["", "/", "v1", "bills", "s", "42", "v1/", "/bills", "v1s"];
        let mut paths = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = paths
                .iter()
                .flat_map(|p| pieces.iter().map(move |x| format!("{p}/{x}")))
                .collect();
            paths.extend(longer);
        }
        for template in &templates {
            for path in &paths {
                assert_eq!(
                    match_path(template, path),
                    reference(template, path),
                    "{path:?}"
                );
            }
        }
    }

    #[test]
    fn equality_and_the_word_wise_slash_search_agree_with_the_byte_loops() {
        let text: Vec<u8> = (0..40).map(|i| b'a' + (i % 26) as u8).collect();
        for len in 0..=text.len() {
            let a = std::str::from_utf8(&text[..len]).unwrap();
            assert!(same(a, a));
            assert_eq!(find_slash(a.as_bytes()), None, "{a}");
            for at in 0..len {
                let mut other = text[..len].to_vec();
                other[at] ^= 0x20;
                let b = std::str::from_utf8(&other).unwrap();
                assert!(!same(a, b), "{a} {b}");
                // A slash at `at`, and another later: the first is found.
                let mut slashed = text[..len].to_vec();
                slashed[at] = b'/';
                if at + 3 < len {
                    slashed[at + 3] = b'/';
                }
                assert_eq!(find_slash(&slashed), Some(at), "{slashed:?}");
                // Bytes one off a slash, and bytes with the high bit, are not slashes.
                slashed[at] = b'.';
                assert_eq!(
                    find_slash(&slashed),
                    slashed.iter().position(|&b| b == b'/')
                );
                slashed[at] = 0xaf;
                assert_eq!(
                    find_slash(&slashed),
                    slashed.iter().position(|&b| b == b'/')
                );
            }
            assert!(!same(a, &format!("{a}x")));
        }
        // A byte just below a slash's value right before one: the borrow must not hide it.
        assert_eq!(find_slash(b"abcdef\x2e/zz"), Some(7));
        assert_eq!(find_slash(b"........./"), Some(9));
        assert_eq!(find_slash(b"\x00/......"), Some(1));
    }

    #[test]
    fn accounts_unfit_for_the_biller_are_flagged_not_forwarded() {
        for good in [
            "12345",
            "ACC-1_2.3",
            "é42",
            "%41CC",
            "a.b",
            "a%2Eb",
            &"9".repeat(64),
        ] {
            assert!(account_ok(good), "{good}");
        }
        let long = "9".repeat(65);
        for bad in [
            "a%2Fb", "a%2fb", "%2F", "..", ".", "%2E%2E", ".%2e", "a..b", "a%5Cb", "a\\b", "%00",
            "a%0Ab", "%1B[2J", "%7F", "%C2%85", "%FF", "%E6%B0", "%", "%4", "%zz", "", &long,
        ] {
            assert!(!account_ok(bad), "{bad}");
        }
        let r = router();
        let m = r
            .find(&Method::GET, "/v1/bills/..%2F..%2Fadmin", None)
            .unwrap();
        assert_eq!(
            (m.route, m.account, m.bad_account),
            (RouteId::new(0), None, true)
        );
        let m = r.find(&Method::GET, "/v1/lookup", Some("acct=..")).unwrap();
        assert_eq!((m.account, m.bad_account), (None, true));
        let m = r.find(&Method::GET, "/v1/bills/778", None).unwrap();
        assert_eq!((m.account, m.bad_account), (Some("778"), false));
        // A route without an account has nothing to refuse.
        let m = r.find(&Method::GET, "/v1/%2E%2E/statement", None).unwrap();
        assert_eq!((m.route, m.bad_account), (RouteId::new(3), false));
    }

    #[test]
    fn finds_the_account_in_the_query() {
        let r = router();
        assert_eq!(
            r.find(&Method::GET, "/v1/lookup", Some("x=1&acct=778"))
                .unwrap()
                .account,
            Some("778")
        );
        assert_eq!(
            r.find(&Method::GET, "/v1/lookup", Some("acct="))
                .unwrap()
                .account,
            None
        );
        assert_eq!(
            r.find(&Method::GET, "/v1/lookup", None).unwrap().account,
            None
        );
    }
}
