//! Parsers for single values written as strings: addresses, header names, the biller's URL,
//! bounded durations. Each error completes "expected …" and then says what is wrong.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::HeaderName;
use http::Uri;
use rustls_pki_types::ServerName;

use super::model::BillerUrl;
use super::rate::parse_duration;

/// Headers that belong to one connection: a proxy drops them, so none can carry a key, an
/// origin or the partner's name.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The longest duration any setting accepts: beyond it a typo, not an intention.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// `ip:port`, e.g. `127.0.0.1:8080` or `[::1]:8080`. Host names are not resolved.
pub(crate) fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "an IP address and port like \"127.0.0.1:8080\" or \"[::1]:8080\"; \"{}\" is not one (host names are not resolved here)",
            text.escape_debug()
        )
    })
}

/// A header name, any case in, lowercase out; hop-by-hop headers are refused.
pub(crate) fn header_name(text: &str) -> Result<HeaderName, String> {
    const EXPECTED: &str =
        "an HTTP header name like \"x-api-key\" (letters, digits and '-', no spaces or ':')";
    let name = HeaderName::from_bytes(text.to_ascii_lowercase().as_bytes()).map_err(|_| {
        format!(
            "{EXPECTED}; \"{}\" is not a valid header name",
            text.escape_debug()
        )
    })?;
    if HOP_BY_HOP.contains(&name.as_str()) {
        return Err(format!(
            "{EXPECTED}; \"{name}\" is a hop-by-hop header, which proxies drop, so it cannot be used here"
        ));
    }
    Ok(name)
}

/// `http://host[:port][/base/path]` or `https://…`. The port defaults to 80 for http and 443
/// for https; with https the host is also the name the biller's certificate must carry, so it
/// must be a DNS name or an IP address.
pub(crate) fn biller_url(text: &str) -> Result<BillerUrl, String> {
    const EXPECTED: &str = "an http or https URL like \"http://127.0.0.1:9000\" or \"https://bills.internal:8443/ebpp\" (scheme://host:port with an optional base path)";
    let bad = |why: &str| format!("{EXPECTED}; {why}");
    if text.contains('#') {
        return Err(bad(
            "it has a fragment ('#…'), which is never sent to a server",
        ));
    }
    if !text.contains("://") {
        return Err(bad("it has no scheme; start it with http:// or https://"));
    }
    let uri: Uri = text.parse().map_err(|e| {
        bad(&format!(
            "\"{}\" is not a valid URL ({e})",
            text.escape_debug()
        ))
    })?;
    let tls = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => false,
        Some(s) if s.eq_ignore_ascii_case("https") => true,
        Some(s) => {
            return Err(bad(&format!(
                "the scheme \"{s}\" is neither http nor https"
            )))
        }
        None => return Err(bad("it has no scheme; start it with http:// or https://")),
    };
    let Some(authority) = uri.authority() else {
        return Err(bad("it has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(bad("it carries credentials (user@ or user:password@): billgate does not send them, and a password does not belong in this file"));
    }
    if authority.host().is_empty() {
        return Err(bad("it has no host"));
    }
    if authority.as_str().ends_with(':') || authority.port_u16() == Some(0) {
        return Err(bad("its port is empty or 0"));
    }
    if uri.query().is_some() {
        return Err(bad("it has a query ('?…'): each forwarded request keeps its own query, a base URL cannot add one"));
    }
    let url = BillerUrl {
        authority: authority.clone(),
        base_path: uri.path().trim_end_matches('/').to_owned(),
        tls,
    };
    // Checked here rather than when connecting: a host rustls cannot verify a certificate for
    // would otherwise fail every call, with the error far from this line.
    if tls && ServerName::try_from(url.server_name()).is_err() {
        return Err(bad(&format!(
            "\"{}\" is neither a DNS name nor an IP address, so no certificate can be checked against it",
            url.server_name().escape_debug()
        )));
    }
    Ok(url)
}

/// A duration above 0 and at most [`MAX_DURATION`].
pub(crate) fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text).map_err(|e| e.0)?;
    if duration.is_zero() {
        return Err(format!(
            "a duration above 0 like \"3s\" or \"250ms\"; \"{}\" is zero",
            text.escape_debug()
        ));
    }
    if duration > MAX_DURATION {
        return Err(format!(
            "a duration of at most 24h; \"{}\" is longer",
            text.escape_debug()
        ));
    }
    Ok(duration)
}

/// A duration as an operator would write it: `60s`, `250ms`, `5min`, `1h`.
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_owned(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) && ms > 60_000 => format!("{}min", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_error(text: &str) -> String {
        match biller_url(text) {
            Ok(url) => panic!("{text} parsed as {url:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn biller_urls() {
        let url = biller_url("http://127.0.0.1:9000").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (url.authority.as_str(), url.base_path.as_str()),
            ("127.0.0.1:9000", "")
        );
        let url =
            biller_url("http://bills.internal:8080/ebpp/v2/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url.base_path, "/ebpp/v2");
        assert_eq!(url.host_port(), "bills.internal:8080");
        let url = biller_url("http://bills.internal").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url.host_port(), "bills.internal:80");
        assert!(!url.tls);
        assert!(url_error("http://me:pw@bills:9000").contains("credentials"));
        assert!(url_error("http://bills:9000/?a=1").contains("query"));
        assert!(url_error("http://bills:9000/#top").contains("fragment"));
        assert!(url_error("127.0.0.1:9000").starts_with("an http or https URL like"));
        assert!(url_error("bills/path").contains("no scheme"));
        assert!(url_error("127.0.0.1:9000").contains("no scheme"));
        assert!(url_error("ftp://bills:21").contains("\"ftp\" is neither http nor https"));
        assert!(url_error("http://bills:/x").contains("port"));
        assert!(url_error("http://bills:0").contains("port"));
        assert!(url_error("http:// bills").contains("not a valid URL"));
    }

    #[test]
    fn https_biller_urls_default_to_443_and_name_their_host() {
        let url = biller_url("https://bills.internal/ebpp/").unwrap_or_else(|e| panic!("{e}"));
        assert!(url.tls);
        assert_eq!(url.host_port(), "bills.internal:443");
        assert_eq!(url.server_name(), "bills.internal");
        assert_eq!(url.base_path, "/ebpp");
        assert_eq!(url.to_string(), "https://bills.internal/ebpp");
        let url = biller_url("HTTPS://127.0.0.1:8443").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (url.tls, url.host_port().as_str(), url.server_name()),
            (true, "127.0.0.1:8443", "127.0.0.1")
        );
        let url = biller_url("https://[::1]:8443").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (url.host_port().as_str(), url.server_name()),
            ("[::1]:8443", "::1")
        );
        let url = biller_url("http://bills:9000/x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url.to_string(), "http://bills:9000/x");
        // A host no certificate can name fails here, not at every call.
        assert_eq!(
            url_error("https://bills..internal:443"),
            "an http or https URL like \"http://127.0.0.1:9000\" or \"https://bills.internal:8443/ebpp\" (scheme://host:port with an optional base path); \"bills..internal\" is neither a DNS name nor an IP address, so no certificate can be checked against it"
        );
        assert!(url_error("https://me@bills").contains("credentials"));
    }

    #[test]
    fn header_names() {
        assert_eq!(
            header_name("X-Api-Key").map(|h| h.to_string()),
            Ok("x-api-key".into())
        );
        assert!(header_name("x api key").is_err_and(|e| e.contains("not a valid header name")));
        assert!(header_name("").is_err());
        assert!(header_name("Connection").is_err_and(|e| e.contains("hop-by-hop")));
        assert!(header_name("te").is_err_and(|e| e.contains("hop-by-hop")));
    }

    #[test]
    fn addresses_and_durations() {
        assert!(socket_addr("127.0.0.1:8080").is_ok());
        assert!(socket_addr("[::1]:8080").is_ok());
        assert!(socket_addr("localhost:8080").is_err_and(|e| e.contains("not resolved")));
        assert_eq!(positive_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(positive_duration("0s").is_err_and(|e| e.contains("is zero")));
        assert!(positive_duration("25h").is_err_and(|e| e.contains("at most 24h")));
        assert!(positive_duration("99999999999999h").is_err());
        assert!(positive_duration("3 days").is_err_and(|e| e.starts_with("a duration like")));
        assert_eq!(format_duration(Duration::from_secs(60)), "60s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5min");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }
}
