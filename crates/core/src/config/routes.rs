//! `[[route]]`: each route checked on its own, then the rules between routes (unique names, no
//! two routes a request could match both of).

use std::collections::HashMap;

use http::Method;

use super::check::Warning;
use super::fields::{At, Errors, Table};
use super::model::{AccountSource, CacheScope, PathTemplate, Route, RouteClass, Segment};
use super::template::parse_template;
use super::values::positive_duration;

pub(crate) const ROUTE_KEYS: &[&str] = &[
    "name",
    "method",
    "path",
    "account_query",
    "class",
    "cache_for",
    "cache_scope",
    "account_field",
];

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// What one `[[route]]` item yielded: the route if it is valid, and its name and its method and
/// path (even when something else in it is wrong) for the rules between routes.
struct Read {
    route: Option<Route>,
    name: Option<At<String>>,
    shape: Option<At<(Method, PathTemplate)>>,
}

/// Every `[[route]]`, in file order; `None` when any has an error (all reported).
pub(crate) fn routes(errors: &mut Errors<'_>, root: &Table<'_, '_>) -> Option<Vec<Route>> {
    let items = root.tables(errors, "route", ROUTE_KEYS);
    let read: Vec<Option<Read>> = items
        .iter()
        .map(|item| item.as_ref().map(|t| route(errors, t)))
        .collect();
    // Each rule between routes looks a route up among the earlier ones by a key, so a file of
    // many routes is checked in linear time.
    let mut names: HashMap<&str, &At<String>> = HashMap::new();
    for later in read.iter().flatten().filter_map(|r| r.name.as_ref()) {
        let Some(first) = names.get(later.value.as_str()) else {
            names.insert(&later.value, later);
            continue;
        };
        let message = format!(
            "the route name \"{}\" is already used by {} at {}; route names must be unique",
            later.value,
            first.path.trim_end_matches(".name"),
            errors.source.location(first.span.start)
        );
        errors.push(later.span.clone(), &later.path, message);
    }
    let mut shapes: HashMap<_, &At<(Method, PathTemplate)>> = HashMap::new();
    for later in read.iter().flatten().filter_map(|r| r.shape.as_ref()) {
        let (method, path) = &later.value;
        let key = (method, shape_key(path));
        let Some(first) = shapes.get(&key) else {
            shapes.insert(key, later);
            continue;
        };
        let message = format!(
            "{method} {} matches the same requests as {} ({} {}) at {}; a request must match one route only",
            path.raw,
            first.path.trim_end_matches(".path"),
            first.value.0,
            first.value.1.raw,
            errors.source.location(first.span.start)
        );
        errors.push(later.span.clone(), &later.path, message);
    }
    let routes: Option<Vec<Route>> = read
        .iter()
        .map(|r| r.as_ref().and_then(|r| r.route.clone()))
        .collect();
    if routes.is_some() && errors.count() == 0 {
        let shapes: Vec<&At<(Method, PathTemplate)>> = read
            .iter()
            .flatten()
            .filter_map(|r| r.shape.as_ref())
            .collect();
        let names: Vec<&str> = read
            .iter()
            .flatten()
            .filter_map(|r| r.name.as_ref().map(|n| n.value.as_str()))
            .collect();
        shadowed(errors, &shapes, &names);
    }
    routes
}

/// The most segment comparisons spent looking for shadowed routes: far beyond any real
/// configuration, and a bound for a generated one.
const SHADOW_BUDGET: usize = 4_000_000;

/// Warns of each route no request can reach because an earlier route of the same method
/// matches every path it matches: `GET /v1/bills/{account}` before `GET /v1/bills/summary`
/// takes `/v1/bills/summary` for an account. Routes match in file order, so the literal one
/// has to come first. (Twins, matching exactly the same paths, are errors, found before.)
fn shadowed(errors: &mut Errors<'_>, shapes: &[&At<(Method, PathTemplate)>], names: &[&str]) {
    let mut groups: HashMap<(&Method, usize), Vec<usize>> = HashMap::new();
    let mut budget = SHADOW_BUDGET;
    for (later, shape) in shapes.iter().enumerate() {
        let (method, path) = &shape.value;
        let group = groups.entry((method, path.segments.len())).or_default();
        let cost = group.len() * path.segments.len().max(1);
        if cost > budget {
            let message = format!(
                "too many routes to look for shadowed ones past route[{later}]: the later routes were not checked"
            );
            errors.warnings.push(Warning {
                key_path: format!("route[{later}]"),
                message,
            });
            return;
        }
        budget -= cost;
        let first = group
            .iter()
            .copied()
            .find(|&earlier| covers(&shapes[earlier].value.1, path));
        if let Some(earlier) = first {
            let by = shapes[earlier];
            let message = format!(
                "route[{later}] \"{}\" ({method} {}, at {}) is never matched: route[{earlier}] \"{}\" ({} {}, at {}) comes before it and matches every request it would; move route[{later}] above it",
                names.get(later).copied().unwrap_or_default(),
                path.raw,
                errors.source.location(shape.span.start),
                names.get(earlier).copied().unwrap_or_default(),
                by.value.0,
                by.value.1.raw,
                errors.source.location(by.span.start),
            );
            errors.warnings.push(Warning {
                key_path: format!("route[{later}].path"),
                message,
            });
        }
        group.push(later);
    }
}

/// Whether every path `later` matches, `earlier` matches too (same number of segments): a
/// parameter of `earlier` takes any segment, its literals must be `later`'s literals.
fn covers(earlier: &PathTemplate, later: &PathTemplate) -> bool {
    earlier.segments.len() == later.segments.len()
        && earlier
            .segments
            .iter()
            .zip(&later.segments)
            .all(|pair| match pair {
                (Segment::Account | Segment::Param(_), _) => true,
                (Segment::Literal(a), Segment::Literal(b)) => a == b,
                (Segment::Literal(_), _) => false,
            })
}

fn route(errors: &mut Errors<'_>, t: &Table<'_, '_>) -> Read {
    let before = errors.count();
    let name = t
        .required_string(errors, "name", "a route name like \"bill-inquiry\"")
        .filter(|at| {
            let empty = at.value.trim().is_empty();
            if empty {
                let message = "expected a route name like \"bill-inquiry\"; it is empty";
                errors.push(at.span.clone(), &at.path, message);
            }
            !empty
        });
    let method = t
        .required_string(errors, "method", "an HTTP method like \"GET\"")
        .and_then(|at| errors.parse(&at, parse_method));
    let path_at = t.required_string(errors, "path", "a path like \"/v1/bills/{account}\"");
    let path = path_at
        .as_ref()
        .and_then(|at| errors.parse(at, parse_template));
    let query = t.parse_or(
        errors,
        "account_query",
        "a query parameter name like \"account\"",
        None,
        |s| query_name(s).map(Some),
    );
    let class = t
        .required_string(errors, "class", "a route class, \"payment\" or \"inquiry\"")
        .and_then(|at| errors.parse(&at, parse_class));
    let cache_for = t.parse_or(errors, "cache_for", "a duration like \"60s\"", None, |s| {
        positive_duration(s).map(Some)
    });

    let cache_scope = t.parse_or(
        errors,
        "cache_scope",
        "\"partner\" or \"shared\"",
        CacheScope::Partner,
        |s| match s {
            "partner" => Ok(CacheScope::Partner),
            "shared" => Ok(CacheScope::Shared),
            other => Err(format!(
                "\"partner\" (each partner its own answers) or \"shared\" (partners share answers); \"{}\" is neither",
                other.escape_debug()
            )),
        },
    );
    let account_field = t.parse_or(
        errors,
        "account_field",
        "a JSON field name like \"account\"",
        None,
        |s| {
            if s.is_empty() || s.len() > 64 {
                Err("a JSON field name like \"account\" (1 to 64 characters)".to_owned())
            } else {
                Ok(Some(s.to_owned()))
            }
        },
    );
    if let (Some(RouteClass::Inquiry), Some(Some(_)), Some(v)) =
        (class, &account_field, t.get("account_field"))
    {
        let message = "account_field names the account in a payment's JSON body; inquiry routes take it from {account} or account_query";
        errors.push(v.span(), &t.child("account_field"), message);
    }
    if let (Some(RouteClass::Payment), Some(v)) = (class, t.get("cache_scope")) {
        let message = "cache_scope only applies to inquiry routes: payments are never cached";
        errors.push(v.span(), &t.child("cache_scope"), message);
    }

    let name = name.map(|at| At {
        value: at.value.to_owned(),
        span: at.span,
        path: at.path,
    });
    let shape = match (method, path_at, path) {
        (Some(method), Some(at), Some(path)) => Some(At {
            value: (method, path),
            span: at.span,
            path: at.path,
        }),
        _ => None,
    };
    let has_account = shape
        .as_ref()
        .is_some_and(|s| s.value.1.segments.contains(&Segment::Account));
    if let (true, Some(Some(_)), Some(v)) = (has_account, &query, t.get("account_query")) {
        let message = "a route reads the bill account from {account} in its path or from account_query, not both; remove one";
        errors.push(v.span(), &t.child("account_query"), message);
    }
    if let (Some(RouteClass::Payment), Some(Some(_)), Some(v)) =
        (class, cache_for, t.get("cache_for"))
    {
        let message = "cache_for only applies to inquiry routes: payments are never cached; remove it or set class = \"inquiry\"";
        errors.push(v.span(), &t.child("cache_for"), message);
    }
    let route = match (
        &name,
        &shape,
        query,
        class,
        cache_for,
        cache_scope,
        account_field,
    ) {
        (
            Some(name),
            Some(shape),
            Some(query),
            Some(class),
            Some(cache_for),
            Some(cache_scope),
            Some(account_field),
        ) if errors.count() == before => {
            let account = match query {
                _ if has_account => AccountSource::PathSegment,
                Some(name) => AccountSource::Query(name),
                None => AccountSource::None,
            };
            Some(Route {
                name: name.value.clone(),
                method: shape.value.0.clone(),
                path: shape.value.1.clone(),
                account,
                class,
                cache_for,
                cache_scope,
                account_field,
            })
        }
        _ => None,
    };
    Read { route, name, shape }
}

fn parse_method(text: &str) -> Result<Method, String> {
    let upper = text.trim().to_ascii_uppercase();
    match METHODS.iter().find(|m| **m == upper) {
        Some(m) => Method::from_bytes(m.as_bytes()).map_err(|e| e.to_string()),
        None => Err(format!(
            "an HTTP method, one of {}; \"{}\" is not one",
            METHODS.join(", "),
            text.escape_debug()
        )),
    }
}

fn parse_class(text: &str) -> Result<RouteClass, String> {
    const EXPECTED: &str = "a route class, \"payment\" or \"inquiry\"";
    match text {
        "payment" => Ok(RouteClass::Payment),
        "inquiry" => Ok(RouteClass::Inquiry),
        "inquiry_user" | "inquiry_scheduled" => Err(format!(
            "{EXPECTED}; \"{text}\" is a quota class: a route says \"inquiry\" and the request's origin header splits it into inquiry_user or inquiry_scheduled"
        )),
        other => Err(format!("{EXPECTED}; \"{}\" is not one", other.escape_debug())),
    }
}

fn query_name(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "a query parameter name like \"account\" (letters, digits, '-', '.', '_', '~'); \"{}\" is not one",
            text.escape_debug()
        ))
    }
}

/// What a template matches, whatever its parameters are called: its literals in their places,
/// `None` where it has a parameter. Two templates with the same key match the same paths.
fn shape_key(template: &PathTemplate) -> Vec<Option<&str>> {
    template
        .segments
        .iter()
        .map(|segment| match segment {
            Segment::Literal(text) => Some(text.as_str()),
            Segment::Account | Segment::Param(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::error::{ConfigError, Source};
    use std::time::Duration;

    fn run(text: &str) -> (Option<Vec<Route>>, Vec<ConfigError>) {
        let doc = toml::de::DeTable::parse(text).expect("test documents are valid TOML");
        let mut errors = Errors::new(Source::new("t.toml", text));
        let root = Table::root(&mut errors, &doc, &["route"]);
        let routes = routes(&mut errors, &root);
        (routes, errors.pushed())
    }

    fn only_error(text: &str) -> ConfigError {
        let (_, mut errors) = run(text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors.remove(0)
    }

    #[test]
    fn reads_routes() {
        let text = "[[route]]\nname = \"inq\"\nmethod = \"get\"\npath = \"/v1/bills/{account}\"\nclass = \"inquiry\"\ncache_for = \"60s\"\n\n[[route]]\nname = \"q\"\nmethod = \"POST\"\npath = \"/v1/pay\"\naccount_query = \"acct\"\nclass = \"payment\"\n";
        let (routes, errors) = run(text);
        assert!(errors.is_empty(), "{errors:#?}");
        let routes = routes.unwrap_or_default();
        assert_eq!(routes[0].method, Method::GET);
        assert_eq!(routes[0].account, AccountSource::PathSegment);
        assert_eq!(routes[0].cache_for, Some(Duration::from_secs(60)));
        assert_eq!(routes[1].account, AccountSource::Query("acct".into()));
        assert_eq!(routes[1].class, RouteClass::Payment);
    }

    #[test]
    fn rules_within_a_route() {
        let base = "[[route]]\nname = \"r\"\nmethod = \"GET\"\nclass = \"inquiry\"\n";
        let e = only_error(&format!(
            "{base}path = \"/b/{{account}}\"\naccount_query = \"a\"\n"
        ));
        assert_eq!((e.key_path.as_str(), e.line), ("route[0].account_query", 6));
        let e = only_error("[[route]]\nname = \"r\"\nmethod = \"POST\"\npath = \"/p\"\nclass = \"payment\"\ncache_for = \"5s\"\n");
        assert_eq!(e.key_path, "route[0].cache_for");
        let e = only_error(&format!("{base}path = \"/b\"\naccount_query = \"a&b\"\n"));
        assert_eq!(e.key_path, "route[0].account_query");
        let e = only_error(
            "[[route]]\nname = \"r\"\nmethod = \"FETCH\"\npath = \"/b\"\nclass = \"inquiry\"\n",
        );
        assert!(e.message.contains("\"FETCH\" is not one"));
        let e = only_error(
            "[[route]]\nname = \"r\"\nmethod = \"GET\"\npath = \"/b\"\nclass = \"inquiry_user\"\n",
        );
        assert!(e.message.contains("is a quota class"));
        let e = only_error(
            "[[route]]\nname = \" \"\nmethod = \"GET\"\npath = \"/b\"\nclass = \"inquiry\"\n",
        );
        assert!(e.message.contains("it is empty"));
    }

    #[test]
    fn every_broken_route_is_reported() {
        let text = "[[route]]\nname = \"a\"\n\n[[route]]\nname = \"b\"\nmethod = \"GET\"\npath = \"/x\"\nclass = \"inquiry\"\n\n[[route]]\nname = \"c\"\nmethod = 7\npath = \"x\"\nclass = \"inquiry\"\n";
        let (_, errors) = run(text);
        let paths: Vec<&str> = errors.iter().map(|e| e.key_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "route[0].method",
                "route[0].path",
                "route[0].class",
                "route[2].method",
                "route[2].path"
            ]
        );
    }

    #[test]
    fn rules_between_routes() {
        let r = |name: &str, method: &str, path: &str| {
            format!("[[route]]\nname = \"{name}\"\nmethod = \"{method}\"\npath = \"{path}\"\nclass = \"inquiry\"\n")
        };
        let e = only_error(&(r("a", "GET", "/x") + &r("a", "POST", "/x")));
        assert_eq!((e.key_path.as_str(), e.line), ("route[1].name", 7));
        assert!(
            e.message.contains("already used by route[0] at t.toml:2:8"),
            "{}",
            e.message
        );
        let e = only_error(&(r("a", "GET", "/b/{account}") + &r("b", "get", "/b/{id}")));
        assert_eq!(e.key_path, "route[1].path");
        let twin =
            "GET /b/{id} matches the same requests as route[0] (GET /b/{account}) at t.toml:4:8";
        assert!(e.message.contains(twin), "{}", e.message);
        let (routes, errors) = run(&(r("a", "GET", "/b/{account}") + &r("b", "GET", "/b/x")));
        assert!(errors.is_empty() && routes.is_some());
    }

    fn warnings(text: &str) -> Vec<Warning> {
        let doc = toml::de::DeTable::parse(text).expect("test documents are valid TOML");
        let mut errors = Errors::new(Source::new("t.toml", text));
        let root = Table::root(&mut errors, &doc, &["route"]);
        let routes = routes(&mut errors, &root);
        assert!(routes.is_some() && errors.count() == 0);
        errors.warnings
    }

    #[test]
    fn a_route_shadowed_by_an_earlier_one_is_a_warning_naming_both() {
        let r = |name: &str, method: &str, path: &str| {
            format!("[[route]]\nname = \"{name}\"\nmethod = \"{method}\"\npath = \"{path}\"\nclass = \"inquiry\"\n")
        };
        let text =
            r("inquiry", "GET", "/v1/bills/{account}") + &r("summary", "GET", "/v1/bills/summary");
        let found = warnings(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key_path, "route[1].path");
        assert_eq!(
            found[0].message,
            "route[1] \"summary\" (GET /v1/bills/summary, at t.toml:9:8) is never matched: route[0] \"inquiry\" (GET /v1/bills/{account}, at t.toml:4:8) comes before it and matches every request it would; move route[1] above it"
        );

        // The literal first is the intended order: no warning. Nor for another method, another
        // length, a different literal, or a later route more general than an earlier one.
        for text in [
            r("summary", "GET", "/v1/bills/summary") + &r("inquiry", "GET", "/v1/bills/{account}"),
            r("inquiry", "GET", "/v1/bills/{account}") + &r("summary", "POST", "/v1/bills/summary"),
            r("inquiry", "GET", "/v1/bills/{account}") + &r("deep", "GET", "/v1/bills/x/y"),
            r("a", "GET", "/v1/{x}/a") + &r("b", "GET", "/v1/bills/b"),
            r("a", "GET", "/v1/bills/{account}/a") + &r("b", "GET", "/v1/{x}/{account}/a"),
        ] {
            assert_eq!(warnings(&text), [], "{text}");
        }
        // Any parameter shadows, {account} or not, at any depth.
        let text = r("a", "GET", "/{v}/bills/{id}") + &r("b", "GET", "/v2/bills/{account}");
        assert_eq!(warnings(&text).len(), 1);
    }

    #[test]
    fn a_table_instead_of_an_array_of_tables_is_explained() {
        let e = only_error("[route]\nname = \"a\"\n");
        assert_eq!(e.key_path, "route");
        assert!(e.message.contains("[[route]]"));
    }
}
