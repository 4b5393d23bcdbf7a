//! Header hygiene between partner and biller: hop-by-hop headers dropped both ways, the
//! partner's key stripped, the trusted partner header set (and any copy the partner sent
//! removed), `x-forwarded-for` extended.

use std::net::IpAddr;

use bytes::BytesMut;
use http::header::Entry;
use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::HeaderMap;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1). Keep in step with
/// [`hop_by_hop`].
static HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// `name`'s place in [`HOP_BY_HOP`], if it is one: a match on the name's text, which compiles
/// to a switch on its length.
fn hop_by_hop(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "upgrade" => 7,
        _ => return None,
    })
}

/// Removes hop-by-hop headers, including any named in `Connection`. `Transfer-Encoding` is left
/// to hyper, which frames bodies itself. One pass over the names marks which are present, so a
/// message carrying none costs no lookups, and `Connection: keep-alive` no allocation.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let present = headers
        .keys()
        .filter_map(hop_by_hop)
        .fold(0u16, |mask, i| mask | 1 << i);
    if present == 0 {
        return;
    }
    // `Connection: keep-alive` or `close`, as nearly every peer sends it, names no other header:
    // no need to take it apart.
    let names_others = || {
        headers.get_all(CONNECTION).iter().any(|v| {
            let v = v.as_bytes();
            !v.eq_ignore_ascii_case(b"keep-alive") && !v.eq_ignore_ascii_case(b"close")
        })
    };
    if present & 1 != 0 && names_others() {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & 1 << i != 0 {
            headers.remove(name);
        }
    }
}

/// The partner's address as an `x-forwarded-for` value, made once per connection.
pub fn forwarded_for(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Prepares a partner's request headers for the biller.
pub fn to_biller(
    headers: &mut HeaderMap,
    key_header: &HeaderName,
    partner_header: &HeaderName,
    partner: &HeaderValue,
    host: &HeaderValue,
    peer: &HeaderValue,
) {
    strip_hop_by_hop(headers);
    // The request's framing is billgate's own: hyper frames exactly the body that is sent (a
    // payment's, read whole; none for an inquiry). A partner's `Content-Length` on a body
    // billgate does not forward would let the biller read billgate's next request as that
    // body.
    for framing in [CONTENT_LENGTH, TRANSFER_ENCODING, EXPECT] {
        headers.remove(framing);
    }
    headers.remove(key_header);
    // `insert` replaces every copy the partner may have sent.
    headers.insert(partner_header.clone(), partner.clone());
    headers.insert(HOST, host.clone());
    // One look-up for reading and writing it.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Occupied(mut sent) => {
            let before = sent.get().as_bytes();
            let value = if before.trim_ascii().is_empty() {
                Some(peer.clone())
            } else {
                let mut value = BytesMut::with_capacity(before.len() + 2 + peer.len());
                value.extend_from_slice(before);
                value.extend_from_slice(b", ");
                value.extend_from_slice(peer.as_bytes());
                HeaderValue::from_maybe_shared(value.freeze()).ok()
            };
            // `insert` replaces every copy the partner may have sent.
            if let Some(value) = value {
                sent.insert(value);
            }
        }
        Entry::Vacant(absent) => {
            absent.insert(peer.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_test_knows_every_hop_by_hop_name() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop(&HeaderName::from_static("x-api-key")), None);
        assert_eq!(hop_by_hop(&http::header::CONTENT_LENGTH), None);
    }

    #[test]
    fn a_plain_connection_header_goes_and_names_nothing_else() {
        for plain in ["keep-alive", "Keep-Alive", "close", "CLOSE"] {
            let mut h = HeaderMap::new();
            h.insert("connection", HeaderValue::from_static(plain));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert(
                "close",
                HeaderValue::from_static("a header named close stays"),
            );
            h.insert("content-type", HeaderValue::from_static("application/json"));
            strip_hop_by_hop(&mut h);
            assert!(h.get("connection").is_none(), "{plain}");
            assert!(h.get("keep-alive").is_none(), "{plain}");
            assert_eq!(h["close"], "a header named close stays", "{plain}");
            assert_eq!(h["content-type"], "application/json", "{plain}");
            assert_eq!(h.len(), 2, "{plain}");
        }
        // Two Connection headers, one plain: the other's names still go.
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("keep-alive"));
        h.append("connection", HeaderValue::from_static("x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x-end", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-hop").is_none());
        assert_eq!(h["x-end"], "2");
        assert_eq!(h.len(), 1);
    }

    /// [`to_biller`] for partner `wallet-a`, keyed by `x-api-key`, from `peer`.
    fn to_biller_from(h: &mut HeaderMap, host: &'static str, peer: &str) {
        to_biller(
            h,
            &HeaderName::from_static("x-api-key"),
            &HeaderName::from_static("x-billgate-partner"),
            &HeaderValue::from_static("wallet-a"),
            &HeaderValue::from_static(host),
            &forwarded_for(peer.parse().unwrap()),
        );
    }

    #[test]
    fn x_forwarded_for_is_the_peer_when_absent_or_blank() {
        for sent in [None, Some(""), Some("  ")] {
            let mut h = HeaderMap::new();
            if let Some(sent) = sent {
                h.insert("x-forwarded-for", HeaderValue::from_static(sent));
            }
            to_biller_from(&mut h, "biller:80", "10.0.0.7");
            let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
            assert_eq!(all, ["10.0.0.7"], "{sent:?}");
        }
        // Two copies sent: the first is extended, the second is gone.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        to_biller_from(&mut h, "biller:80", "10.0.0.7");
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["1.1.1.1, 10.0.0.7"]);
    }

    #[test]
    fn cleans_what_goes_to_the_biller() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("secret"));
        h.append("x-billgate-partner", HeaderValue::from_static("spoofed"));
        h.append("x-billgate-partner", HeaderValue::from_static("spoofed-2"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.1.1.1"));
        h.insert("accept", HeaderValue::from_static("application/json"));
        to_biller_from(&mut h, "127.0.0.1:9000", "127.0.0.1");
        assert!(h.get("x-api-key").is_none());
        assert_eq!(
            h.get_all("x-billgate-partner").iter().collect::<Vec<_>>(),
            ["wallet-a"]
        );
        assert!(h.get("connection").is_none());
        assert!(h.get("x-private").is_none());
        assert!(h.get("keep-alive").is_none());
        assert_eq!(h["x-forwarded-for"], "10.1.1.1, 127.0.0.1");
        assert_eq!(h["host"], "127.0.0.1:9000");
        assert_eq!(h["accept"], "application/json");
    }
}
