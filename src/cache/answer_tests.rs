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
