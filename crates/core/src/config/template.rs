//! Route path templates such as `/v1/bills/{account}`, parsed into the segments the router
//! matches.

use super::model::{PathTemplate, Segment};

const EXPECTED: &str = "a path like \"/v1/bills/{account}\" (starting with '/', segments separated by single '/', each literal text or a whole-segment {name})";

/// Parses a template; the error completes "expected …" and says what is wrong.
///
/// `/` alone is the root path. A trailing `/` or a `//` is an empty segment and refused;
/// `{account}` may appear once and marks the bill account; other `{name}`s match any segment.
pub fn parse_template(raw: &str) -> Result<PathTemplate, String> {
    let bad = |why: String| format!("{EXPECTED}; {why}");
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(bad(format!("\"{raw}\" does not start with '/'")));
    };
    if let Some(c) = raw.chars().find(|c| matches!(c, '?' | '#')) {
        return Err(bad(format!(
            "'{c}' cannot appear in a route path (to read the account from a query parameter, use account_query)"
        )));
    }
    let mut segments = Vec::new();
    if rest.is_empty() {
        return Ok(PathTemplate {
            raw: raw.to_owned(),
            segments,
        });
    }
    for (i, text) in rest.split('/').enumerate() {
        let segment = parse_segment(text, i + 1).map_err(bad)?;
        let clash = segments.iter().any(|s| match (s, &segment) {
            (Segment::Account, Segment::Account) => true,
            (Segment::Param(a), Segment::Param(b)) => a == b,
            _ => false,
        });
        if clash {
            return Err(bad(match &segment {
                Segment::Account => {
                    "{account} appears twice: a route has at most one bill account".to_owned()
                }
                _ => format!("the parameter {text} appears twice"),
            }));
        }
        segments.push(segment);
    }
    Ok(PathTemplate {
        raw: raw.to_owned(),
        segments,
    })
}

fn parse_segment(text: &str, number: usize) -> Result<Segment, String> {
    if text.is_empty() {
        return Err(format!(
            "segment {number} is empty (a '//' or a trailing '/')"
        ));
    }
    if let Some(name) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "\"{text}\" is not a parameter: a name of letters, digits and '_' goes between the braces"
            ));
        }
        return Ok(if name == "account" {
            Segment::Account
        } else {
            Segment::Param(name.to_owned())
        });
    }
    if text.contains(['{', '}']) {
        return Err(format!(
            "\"{text}\" has a brace inside literal text: a parameter must be a whole segment, like \"/{{account}}\""
        ));
    }
    if let Some(c) = text.chars().find(|c| !is_path_char(*c)) {
        return Err(format!(
            "'{}' cannot appear in a path unencoded (write it percent-encoded)",
            c.escape_debug()
        ));
    }
    Ok(Segment::Literal(text.to_owned()))
}

/// RFC 3986 `pchar`: unreserved, sub-delims, ':', '@', and '%' of percent-encoding.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@%".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(raw: &str) -> Vec<Segment> {
        match parse_template(raw) {
            Ok(t) => t.segments,
            Err(e) => panic!("{raw}: {e}"),
        }
    }

    fn why(raw: &str) -> String {
        match parse_template(raw) {
            Ok(t) => panic!("{raw} parsed as {t:?}"),
            Err(e) => {
                assert!(e.starts_with("a path like"), "{e}");
                e
            }
        }
    }

    #[test]
    fn parses_literals_account_and_params() {
        assert_eq!(
            segments("/v1/bills/{account}"),
            vec![
                Segment::Literal("v1".into()),
                Segment::Literal("bills".into()),
                Segment::Account
            ]
        );
        assert_eq!(
            segments("/v1/{biller_id}/bills/{account}/pdf"),
            vec![
                Segment::Literal("v1".into()),
                Segment::Param("biller_id".into()),
                Segment::Literal("bills".into()),
                Segment::Account,
                Segment::Literal("pdf".into())
            ]
        );
        assert_eq!(segments("/"), vec![]);
        assert_eq!(segments("/a%20b"), vec![Segment::Literal("a%20b".into())]);
    }

    #[test]
    fn refuses_bad_templates_saying_why() {
        assert!(why("v1/bills").contains("does not start with '/'"));
        assert!(why("/v1//bills").contains("segment 2 is empty"));
        assert!(why("/v1/bills/").contains("segment 3 is empty"));
        assert!(why("/v1/{account").contains("brace inside literal text"));
        assert!(why("/v1/bill{account}").contains("brace inside literal text"));
        assert!(why("/v1/{}").contains("is not a parameter"));
        assert!(why("/v1/{a-b}").contains("is not a parameter"));
        assert!(why("/{account}/{account}").contains("at most one bill account"));
        assert!(why("/{id}/x/{id}").contains("the parameter {id} appears twice"));
        assert!(why("/v1/bills?account=1").contains("account_query"));
        assert!(why("/v1/a b").contains("' ' cannot appear"));
        assert!(why("").contains("does not start with '/'"));
    }
}
