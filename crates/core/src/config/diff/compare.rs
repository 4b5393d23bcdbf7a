//! Comparing two validated configurations, section by section, into the parts of a
//! [`ConfigDiff`](super::ConfigDiff).

use std::collections::{BTreeMap, HashSet};

use super::{show, Commitment, PartnerChange, PartnerDiff, RouteDiff, SettingChange};
use crate::config::model::{
    AccountSource, BillerUrl, Class, Config, FileRef, Partner, Route, RouteClass,
};
use crate::config::rate::Rate;
use crate::config::values::format_duration;

impl Commitment {
    pub(super) fn of(config: &Config) -> Self {
        let quota_per_second = config
            .partners
            .iter()
            .flat_map(|p| p.quota.0.iter().flatten())
            .map(Rate::per_second)
            .sum();
        Commitment {
            quota_per_second,
            capacity: config.biller.capacity,
        }
    }
}

pub(super) fn partners(old: &[Partner], new: &[Partner]) -> Vec<PartnerDiff> {
    let mut by_id: BTreeMap<&str, (Option<&Partner>, Option<&Partner>)> = BTreeMap::new();
    for p in old {
        by_id.entry(&p.id).or_default().0 = Some(p);
    }
    for p in new {
        by_id.entry(&p.id).or_default().1 = Some(p);
    }
    by_id
        .into_values()
        .filter_map(|pair| match pair {
            (None, Some(new)) => Some(PartnerDiff::Added(new.clone())),
            (Some(old), None) => Some(PartnerDiff::Removed(old.clone())),
            (Some(old), Some(new)) => {
                let changes = partner_changes(old, new);
                (!changes.is_empty()).then(|| PartnerDiff::Changed {
                    id: new.id.clone(),
                    changes,
                })
            }
            (None, None) => None,
        })
        .collect()
}

fn partner_changes(old: &Partner, new: &Partner) -> Vec<PartnerChange> {
    let mut changes = Vec::new();
    for class in Class::ALL {
        let (o, n) = (old.quota.get(class), new.quota.get(class));
        if o != n {
            changes.push(PartnerChange::Quota {
                class,
                old: o,
                new: n,
            });
        }
    }
    if old.per_account != new.per_account {
        changes.push(PartnerChange::PerAccount {
            old: old.per_account,
            new: new.per_account,
        });
    }
    if old.mode != new.mode {
        changes.push(PartnerChange::Mode {
            old: old.mode,
            new: new.mode,
        });
    }
    let old_keys: HashSet<&[u8; 32]> = old.keys_sha256.iter().collect();
    let new_keys: HashSet<&[u8; 32]> = new.keys_sha256.iter().collect();
    let added: Vec<[u8; 32]> = (new.keys_sha256.iter())
        .filter(|k| !old_keys.contains(k))
        .copied()
        .collect();
    let removed: Vec<[u8; 32]> = (old.keys_sha256.iter())
        .filter(|k| !new_keys.contains(k))
        .copied()
        .collect();
    if !added.is_empty() || !removed.is_empty() {
        changes.push(PartnerChange::Keys {
            added,
            removed,
            before: old.keys_sha256.len(),
            after: new.keys_sha256.len(),
        });
    }
    if old.max_tracked_accounts != new.max_tracked_accounts {
        changes.push(PartnerChange::MaxTrackedAccounts {
            old: old.max_tracked_accounts,
            new: new.max_tracked_accounts,
        });
    }
    if old.webhooks != new.webhooks {
        changes.push(PartnerChange::Webhooks {
            old: describe_webhooks(old.webhooks.as_ref()),
            new: describe_webhooks(new.webhooks.as_ref()),
        });
    }
    changes
}

/// A partner's subscription settings in words, for the diff.
fn describe_webhooks(webhooks: Option<&crate::config::PartnerWebhooks>) -> String {
    let Some(w) = webhooks else {
        return "closed".to_owned();
    };
    let secret = match &w.secret {
        crate::config::SecretSource::File(file) => format!("secret from {}", file.path.display()),
        crate::config::SecretSource::Env(name) => format!("secret from ${name}"),
    };
    format!(
        "{} up to {}, callbacks under {}, {secret}",
        w.quota,
        w.max_subscriptions,
        w.prefixes.join(" ")
    )
}

pub(super) fn routes(old: &[Route], new: &[Route]) -> Vec<RouteDiff> {
    let mut by_name: BTreeMap<&str, (Option<&Route>, Option<&Route>)> = BTreeMap::new();
    for r in old {
        by_name.entry(&r.name).or_default().0 = Some(r);
    }
    for r in new {
        by_name.entry(&r.name).or_default().1 = Some(r);
    }
    let mut diffs: Vec<RouteDiff> = by_name
        .values()
        .filter_map(|pair| match *pair {
            (None, Some(new)) => Some(RouteDiff::Added(new.clone())),
            (Some(old), None) => Some(RouteDiff::Removed(old.clone())),
            (Some(old), Some(new)) => {
                let changes = route_changes(old, new);
                (!changes.is_empty()).then(|| RouteDiff::Changed {
                    name: new.name.clone(),
                    changes,
                })
            }
            (None, None) => None,
        })
        .collect();
    // The first matching route wins, so the order of the routes in both files matters.
    let in_both = |routes: &[Route], other: &[Route]| -> Vec<String> {
        (routes.iter())
            .filter(|r| other.iter().any(|o| o.name == r.name))
            .map(|r| r.name.clone())
            .collect()
    };
    let (old_order, new_order) = (in_both(old, new), in_both(new, old));
    if old_order != new_order {
        diffs.push(RouteDiff::Reordered {
            old: old_order,
            new: new_order,
        });
    }
    diffs
}

fn route_changes(old: &Route, new: &Route) -> Vec<SettingChange> {
    let mut changes = Vec::new();
    let mut compare = |key: &str, old: String, new: String| {
        if old != new {
            changes.push(SettingChange {
                key: key.to_owned(),
                old,
                new,
                note: None,
            });
        }
    };
    compare("method", old.method.to_string(), new.method.to_string());
    compare("path", old.path.raw.clone(), new.path.raw.clone());
    compare("class", route_class(old.class), route_class(new.class));
    compare("account", account(&old.account), account(&new.account));
    compare("cache_for", cache_for(old), cache_for(new));
    changes
}

pub(super) fn route_class(class: RouteClass) -> String {
    match class {
        RouteClass::Payment => "payment".to_owned(),
        RouteClass::Inquiry => "inquiry".to_owned(),
    }
}

pub(super) fn account(source: &AccountSource) -> String {
    match source {
        AccountSource::None => "none".to_owned(),
        AccountSource::PathSegment => "path {account}".to_owned(),
        AccountSource::Query(name) => format!("query {name}"),
    }
}

pub(super) fn cache_for(route: &Route) -> String {
    route.cache_for.map_or("none".to_owned(), format_duration)
}

/// Collects changed settings of one section, each as an operator writes it.
struct Settings(Vec<SettingChange>);

impl Settings {
    fn compare<T: PartialEq>(&mut self, key: &str, old: T, new: T, show: impl Fn(T) -> String) {
        if old != new {
            self.0.push(SettingChange {
                key: key.to_owned(),
                old: show(old),
                new: show(new),
                note: None,
            });
        }
    }

    fn note(&mut self, key: &str, note: String) {
        if let Some(change) = self.0.iter_mut().find(|c| c.key == key) {
            change.note = Some(note);
        }
    }
}

pub(super) fn server(old: &Config, new: &Config) -> Vec<SettingChange> {
    let (o, n) = (&old.server, &new.server);
    let mut s = Settings(Vec::new());
    let restart = "the listener is bound at start: takes effect on restart".to_owned();
    s.compare("listen", o.listen, n.listen, |a| a.to_string());
    s.note("listen", restart.clone());
    s.compare("admin_listen", o.admin_listen, n.admin_listen, |a| {
        a.to_string()
    });
    s.note("admin_listen", restart);
    s.compare("key_header", &o.key_header, &n.key_header, |h| {
        h.to_string()
    });
    s.compare("origin_header", &o.origin_header, &n.origin_header, |h| {
        h.to_string()
    });
    s.compare(
        "partner_header",
        &o.partner_header,
        &n.partner_header,
        |h| h.to_string(),
    );
    s.compare("max_body_bytes", o.max_body_bytes, n.max_body_bytes, |b| {
        b.to_string()
    });
    s.compare("access_log", o.access_log, n.access_log, |b| b.to_string());
    s.compare("workers", o.workers, n.workers, |w| {
        w.map_or("one per CPU".to_owned(), |w| w.to_string())
    });
    s.note(
        "workers",
        "worker threads start with the process: takes effect on restart".to_owned(),
    );
    s.compare("listen_backlog", o.listen_backlog, n.listen_backlog, |b| {
        b.to_string()
    });
    s.note(
        "listen_backlog",
        "the listener is bound at start: takes effect on restart".to_owned(),
    );
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map_or("none".to_owned(), |p| p.display().to_string())
    };
    s.compare(
        "admin_token_file",
        &o.admin_token_file,
        &n.admin_token_file,
        path,
    );
    s.compare("state_file", &o.state_file, &n.state_file, path);
    s.note(
        "state_file",
        "suspensions are read from it at start: takes effect on restart".to_owned(),
    );
    // `[fleet]` is joined at start; shown with the server's settings, as each instance's own.
    let (of, nf) = (old.fleet.as_ref(), new.fleet.as_ref());
    let joined = "the fleet is joined at start: takes effect on restart".to_owned();
    s.compare(
        "fleet.redis",
        of.map(|f| &f.redis),
        nf.map(|f| &f.redis),
        |r| r.map_or("none (alone)".to_owned(), |r| r.clone()),
    );
    s.note("fleet.redis", joined.clone());
    s.compare(
        "fleet.instance",
        of.and_then(|f| f.instance.as_ref()),
        nf.and_then(|f| f.instance.as_ref()),
        |i| i.map_or("host name and pid".to_owned(), |i| i.clone()),
    );
    s.note("fleet.instance", joined.clone());
    s.compare(
        "fleet.timeout",
        of.map(|f| f.timeout),
        nf.map(|f| f.timeout),
        |t| t.map_or("none".to_owned(), format_duration),
    );
    s.note("fleet.timeout", joined);
    // `[subscriptions]`: the store is opened and the refresher and deliverer started at start.
    let summary = |c: &Config| {
        c.subscriptions.as_ref().map_or("off".to_owned(), |s| {
            format!(
                "store {}, refresh {}, capacity_share {}, delivery_horizon {}, first_retry {}, per_host {}, attempt_timeout {}, keep_delivered {}, keep_dead {}",
                s.store,
                format_duration(s.refresh),
                s.capacity_share,
                format_duration(s.delivery_horizon),
                format_duration(s.first_retry),
                s.per_host,
                format_duration(s.attempt_timeout),
                format_duration(s.keep_delivered),
                format_duration(s.keep_dead)
            )
        })
    };
    s.compare("subscriptions", summary(old), summary(new), |t| t.clone());
    s.note(
        "subscriptions",
        "the store and the subscription workers start with the process: takes effect on restart"
            .to_owned(),
    );
    s.0
}

pub(super) fn biller(old: &Config, new: &Config) -> Vec<SettingChange> {
    let (o, n) = (&old.biller, &new.biller);
    let mut s = Settings(Vec::new());
    s.compare("url", &o.url, &n.url, BillerUrl::to_string);
    s.compare("timeout", o.timeout, n.timeout, format_duration);
    s.compare(
        "connect_timeout",
        o.connect_timeout,
        n.connect_timeout,
        format_duration,
    );
    s.compare("capacity", o.capacity, n.capacity, |r| r.to_string());
    s.note(
        "capacity",
        show::movement(Some(o.capacity), Some(n.capacity)),
    );
    s.compare("max_in_flight", o.max_in_flight, n.max_in_flight, |m| {
        m.to_string()
    });
    s.compare(
        "payment_reserve",
        o.payment_reserve,
        n.payment_reserve,
        |r| r.to_string(),
    );
    s.compare("user_reserve", o.user_reserve, n.user_reserve, |r| {
        r.to_string()
    });
    let header =
        |h: &Option<http::HeaderName>| h.as_ref().map_or("none".to_owned(), |h| h.to_string());
    s.compare(
        "pause_partner_header",
        &o.pause_partner_header,
        &n.pause_partner_header,
        header,
    );
    // Compared by path: where in the file a key sits is no change. The files are read again
    // at every reload, so new contents at the same path take effect without showing here.
    let path = |f: &Option<FileRef>| f.as_ref().map(|f| f.path.clone());
    let shown =
        |p: Option<std::path::PathBuf>| p.map_or("none".to_owned(), |p| p.display().to_string());
    for (key, old, new) in [
        ("ca_file", &o.ca_file, &n.ca_file),
        ("client_cert", &o.client_cert, &n.client_cert),
        ("client_key", &o.client_key, &n.client_key),
    ] {
        s.compare(key, path(old), path(new), shown);
    }
    let (ob, nb) = (&o.breaker, &n.breaker);
    s.compare(
        "breaker.failure_rate",
        ob.failure_rate,
        nb.failure_rate,
        |r| r.to_string(),
    );
    s.compare("breaker.window", ob.window, nb.window, format_duration);
    s.compare("breaker.min_calls", ob.min_calls, nb.min_calls, |m| {
        m.to_string()
    });
    s.compare(
        "breaker.open_for",
        ob.open_for,
        nb.open_for,
        format_duration,
    );
    s.0
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;

    fn changes(old: &str, new: &str) -> Vec<(String, String, String)> {
        let load = |text: &str| load_str(text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        super::biller(&load(old), &load(new))
            .into_iter()
            .map(|c| (c.key, c.old, c.new))
            .collect()
    }

    #[test]
    fn biller_tls_files_are_compared_by_path_not_by_place() {
        let old = "[biller]\nurl = \"https://b\"\ncapacity = \"10/s\"\nca_file = \"ca.pem\"\n";
        // The same file, written further down: no change.
        let moved = "[biller]\nurl = \"https://b\"\n\ncapacity = \"10/s\"\nca_file = \"ca.pem\"\n";
        assert_eq!(changes(old, moved), []);
        let new = "[biller]\nurl = \"https://b:8443\"\ncapacity = \"10/s\"\nca_file = \"ca-2.pem\"\nclient_cert = \"gw.pem\"\nclient_key = \"gw.key\"\n";
        let owned = |(k, o, n): (&str, &str, &str)| (k.to_owned(), o.to_owned(), n.to_owned());
        assert_eq!(
            changes(old, new),
            [
                ("url", "https://b", "https://b:8443"),
                ("ca_file", "ca.pem", "ca-2.pem"),
                ("client_cert", "none", "gw.pem"),
                ("client_key", "none", "gw.key"),
            ]
            .map(owned)
        );
    }
}
