//! `billgate check`: what a valid configuration will do — partners, their quotas as shares of the
//! biller's capacity, routes — and the warnings that do not block it.

use std::fmt;

use super::diff::number;
use super::model::{AccountSource, Class, Config, Mode, Route, RouteClass};
use super::rate::Rate;
use super::values::format_duration;

/// All partners' quotas together may reach this many times the capacity before a warning.
const OVERCOMMIT_WARNING: f64 = 3.0;

/// The summary `billgate check` prints. `Display`: the tables, then the warnings.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// `http://host:port/base`, as configured.
    pub biller_url: String,
    pub capacity: Rate,
    /// SHA-256 of the configuration file, as the running gateway reports it.
    pub source_sha256: String,
    pub partners: Vec<PartnerSummary>,
    pub routes: Vec<Route>,
    pub warnings: Vec<Warning>,
}

/// One partner's row.
#[derive(Debug, Clone, PartialEq)]
pub struct PartnerSummary {
    pub id: String,
    pub mode: Mode,
    /// Per class (index [`Class::index`]); `None`: closed.
    pub quotas: [Option<Rate>; 3],
    /// Each open class's share of the biller's capacity (1.0 = all of it), by requests per second.
    pub shares: [Option<f64>; 3],
    pub per_account: Option<Rate>,
    pub keys: usize,
}

/// Something worth a second look that does not make the configuration invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub key_path: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warning: {}: {}", self.key_path, self.message)
    }
}

/// Summarises a valid configuration and lists its warnings.
pub fn check_report(config: &Config) -> CheckReport {
    let capacity = config.biller.capacity;
    let cap = capacity.per_second();
    let mut warnings = Vec::new();
    let mut warn = |key_path: String, message: String| warnings.push(Warning { key_path, message });
    let mut partners = Vec::new();
    let mut total = 0.0;
    for (i, p) in config.partners.iter().enumerate() {
        let quotas = p.quota.0;
        let shares = quotas.map(|q| q.map(|r| r.per_second() / cap));
        for class in Class::ALL {
            let Some(rate) = p.quota.get(class) else {
                continue;
            };
            total += rate.per_second();
            if rate.per_second() > cap {
                warn(
                    format!("partner[{i}].quota.{}", class.as_str()),
                    format!(
                        "partner \"{}\" may send {rate} of {}, more than the biller's whole capacity {capacity} ({})",
                        p.id,
                        class.as_str(),
                        percent(rate.per_second() / cap)
                    ),
                );
            }
        }
        if quotas.iter().all(Option::is_none) {
            warn(
                format!("partner[{i}].quota"),
                format!(
                    "partner \"{}\" has every class closed: all its requests are answered 403",
                    p.id
                ),
            );
        }
        if p.mode == Mode::Shadow {
            warn(
                format!("partner[{i}].mode"),
                format!("partner \"{}\" is in shadow mode: its over-quota requests are counted and reported, never rejected", p.id),
            );
        }
        partners.push(PartnerSummary {
            id: p.id.clone(),
            mode: p.mode,
            quotas,
            shares,
            per_account: p.per_account,
            keys: p.keys_sha256.len(),
        });
    }
    if total > OVERCOMMIT_WARNING * cap {
        warn(
            "partner".to_owned(),
            format!(
                "all partners' quotas add up to {}/s, {:.1}× the biller's capacity {capacity}: under load the shared biller budget, not the quotas, decides who is served",
                number(total),
                total / cap
            ),
        );
    }
    if config.routes.is_empty() {
        warn(
            "route".to_owned(),
            "no routes: every request is answered 404 and nothing reaches the biller".to_owned(),
        );
    }
    if config.partners.is_empty() {
        warn(
            "partner".to_owned(),
            "no partners: every request is answered 401".to_owned(),
        );
    }
    warnings.extend(config.warnings.iter().cloned());
    CheckReport {
        biller_url: config.biller.url.to_string(),
        capacity,
        source_sha256: config.source_sha256.clone(),
        partners,
        routes: config.routes.to_vec(),
        warnings,
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "biller {}, capacity {}", self.biller_url, self.capacity)?;
        writeln!(f, "configuration sha256 {}", self.source_sha256)?;
        writeln!(f)?;
        writeln!(f, "partners ({})", self.partners.len())?;
        let mut rows = vec![row(&[
            "id",
            "mode",
            "payment",
            "inquiry_user",
            "inquiry_scheduled",
            "per_account",
            "keys",
        ])];
        for p in &self.partners {
            let mut cells = vec![p.id.clone(), p.mode.as_str().to_owned()];
            for class in Class::ALL {
                cells.push(match (p.quotas[class.index()], p.shares[class.index()]) {
                    (Some(rate), Some(share)) => format!("{rate} ({})", percent(share)),
                    _ => "closed".to_owned(),
                });
            }
            cells.push(p.per_account.map_or("-".to_owned(), |r| r.to_string()));
            cells.push(p.keys.to_string());
            rows.push(cells);
        }
        table(f, &rows)?;
        writeln!(f)?;
        writeln!(f, "routes ({})", self.routes.len())?;
        let mut rows = vec![row(&[
            "name",
            "method",
            "path",
            "class",
            "account",
            "cache_for",
        ])];
        for r in &self.routes {
            rows.push(vec![
                r.name.clone(),
                r.method.to_string(),
                r.path.raw.clone(),
                match r.class {
                    RouteClass::Payment => "payment".to_owned(),
                    RouteClass::Inquiry => "inquiry".to_owned(),
                },
                match &r.account {
                    AccountSource::None => "-".to_owned(),
                    AccountSource::PathSegment => "path {account}".to_owned(),
                    AccountSource::Query(name) => format!("query {name}"),
                },
                r.cache_for.map_or("-".to_owned(), format_duration),
            ]);
        }
        table(f, &rows)?;
        writeln!(f)?;
        if self.warnings.is_empty() {
            return write!(f, "no warnings");
        }
        let plural = if self.warnings.len() == 1 { "" } else { "s" };
        write!(f, "{} warning{plural}", self.warnings.len())?;
        for w in &self.warnings {
            write!(f, "\n{w}")?;
        }
        Ok(())
    }
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// Left-aligned columns two spaces apart, indented by two.
fn table(f: &mut fmt::Formatter<'_>, rows: &[Vec<String>]) -> fmt::Result {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::from(" ");
        for (cell, width) in r.iter().zip(&widths) {
            line.push(' ');
            line.push_str(cell);
            line.push_str(&" ".repeat(width - cell.chars().count() + 1));
        }
        writeln!(f, "{}", line.trim_end())?;
    }
    Ok(())
}

/// A share as a percentage with one decimal; a sliver that would round to 0 shows as `<0.1%`.
fn percent(share: f64) -> String {
    if share > 0.0 && share < 0.0005 {
        "<0.1%".to_owned()
    } else {
        format!("{:.1}%", share * 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::{hash_key, load_str};

    fn report(partners: &str) -> CheckReport {
        let text = format!("[biller]\nurl = \"http://127.0.0.1:9000\"\ncapacity = \"100/s\"\n[[route]]\nname = \"r\"\nmethod = \"GET\"\npath = \"/b/{{account}}\"\nclass = \"inquiry\"\n{partners}");
        match load_str(&text, "t.toml") {
            Ok(config) => check_report(&config),
            Err(e) => panic!("{e}"),
        }
    }

    fn warned(report: &CheckReport) -> Vec<&str> {
        report
            .warnings
            .iter()
            .map(|w| w.key_path.as_str())
            .collect()
    }

    #[test]
    fn shares_and_closed_classes() {
        let key = hash_key("k");
        let r = report(&format!("[[partner]]\nid = \"a\"\nkeys_sha256 = [\"{key}\"]\nquota = {{ payment = \"50/s\", inquiry_user = \"60/min\" }}\n"));
        let p = &r.partners[0];
        assert_eq!(p.shares, [Some(0.5), Some(0.01), None]);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let shown = r.to_string();
        assert!(
            shown.contains("50/s (50.0%)  60/min (1.0%)  closed"),
            "{shown}"
        );
        assert!(shown.ends_with("no warnings"));
        assert_eq!(percent(0.0001), "<0.1%");
    }

    #[test]
    fn warnings_that_do_not_block() {
        let r = report(&format!("[[partner]]\nid = \"a\"\nkeys_sha256 = [\"{}\"]\nmode = \"shadow\"\nquota = {{ payment = \"150/s\", inquiry_user = \"100/s\", inquiry_scheduled = \"100/s\" }}\n\n[[partner]]\nid = \"b\"\nkeys_sha256 = [\"{}\"]\n", hash_key("ka"), hash_key("kb")));
        assert_eq!(
            warned(&r),
            [
                "partner[0].quota.payment",
                "partner[0].mode",
                "partner[1].quota",
                "partner"
            ]
        );
        assert!(r.warnings[0]
            .message
            .contains("more than the biller's whole capacity 100/s (150.0%)"));
        assert!(r.warnings[3].message.contains("add up to 350/s, 3.5×"));
        assert!(r
            .to_string()
            .contains("4 warnings\nwarning: partner[0].quota.payment: "));
    }

    #[test]
    fn empty_configurations_are_noted() {
        let config = load_str(
            "[biller]\nurl = \"http://b:1\"\ncapacity = \"1/s\"\n",
            "t.toml",
        );
        let r = config.map(|c| check_report(&c)).map_err(|e| e.to_string());
        let paths = r.map(|r| warned(&r).join(" "));
        assert_eq!(paths, Ok("route partner".to_owned()));
    }
}
