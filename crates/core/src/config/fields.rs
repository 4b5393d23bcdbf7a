//! Typed reading of toml's spanned document, one key at a time: every unknown key, wrong type and
//! missing key becomes a located error and reading goes on, so one mistake never hides another.

use std::fmt::Display;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub(crate) use super::error::{At, Errors};
#[cfg(test)]
use super::error::{ConfigError, Source};

/// One table of the document, its keys checked against the expected ones.
pub(crate) struct Table<'t, 'i> {
    pub path: String,
    pub span: Range<usize>,
    table: &'t DeTable<'i>,
}

impl<'t, 'i> Table<'t, 'i> {
    /// The whole document.
    pub fn root(errors: &mut Errors<'_>, doc: &'t Spanned<DeTable<'i>>, expected: &[&str]) -> Self {
        let table = Table {
            path: String::new(),
            span: doc.span(),
            table: doc.get_ref(),
        };
        table.check_keys(errors, expected);
        table
    }

    /// `value` read as a table at `path`; `None` (reported) when it is not one.
    pub fn open(
        errors: &mut Errors<'_>,
        value: &'t Spanned<DeValue<'i>>,
        path: String,
        expected: &[&str],
    ) -> Option<Self> {
        match value.get_ref() {
            DeValue::Table(table) => {
                let table = Table {
                    path,
                    span: value.span(),
                    table,
                };
                table.check_keys(errors, expected);
                Some(table)
            }
            other => {
                let message = format!("expected a table, found {}", describe(other));
                errors.push(value.span(), &path, message);
                None
            }
        }
    }

    fn check_keys(&self, errors: &mut Errors<'_>, expected: &[&str]) {
        for key in self.table.keys() {
            let name: &str = key.get_ref();
            if expected.contains(&name) {
                continue;
            }
            let mut message = format!("unknown key `{name}`");
            if let Some(near) = expected.iter().find(|e| near_miss(name, e)) {
                message.push_str(&format!(" (did you mean `{near}`?)"));
            }
            message.push_str(&format!("; expected one of: {}", expected.join(", ")));
            errors.push(key.span(), &self.child(name), message);
        }
    }

    /// The key path of `key` in this table.
    pub fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn get(&self, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v)
    }

    /// Reports `key` as missing; `expected` says what it should hold.
    pub fn missing(&self, errors: &mut Errors<'_>, key: &str, expected: &str) {
        let message = format!("missing required key `{key}`: expected {expected}");
        errors.push(self.span.clone(), &self.child(key), message);
    }

    /// The string at `key`, if present and a string (a wrong type is reported).
    pub fn string(
        &self,
        errors: &mut Errors<'_>,
        key: &str,
        expected: &str,
    ) -> Option<At<&'t str>> {
        let value = self.get(key)?;
        as_string(errors, value, self.child(key), expected)
    }

    /// The path at `key` as a [`FileRef`]: `Some(None)` when absent, `None` when wrong (an
    /// empty string or not a string; reported).
    pub fn file(
        &self,
        errors: &mut Errors<'_>,
        key: &str,
        expected: &str,
    ) -> Option<Option<super::model::FileRef>> {
        match self.string(errors, key, expected) {
            Some(at) if at.value.trim().is_empty() => {
                errors.push(
                    at.span,
                    &at.path,
                    format!("expected {expected}, found an empty string"),
                );
                None
            }
            Some(at) => {
                let place = errors.source.error(at.span.clone(), &at.path, "");
                Some(Some(super::model::FileRef::new(
                    std::path::PathBuf::from(at.value),
                    place,
                )))
            }
            None if self.get(key).is_some() => None,
            None => Some(None),
        }
    }

    /// Like [`Table::string`], reporting a missing key too.
    pub fn required_string(
        &self,
        errors: &mut Errors<'_>,
        key: &str,
        expected: &str,
    ) -> Option<At<&'t str>> {
        if self.get(key).is_none() {
            self.missing(errors, key, expected);
            return None;
        }
        self.string(errors, key, expected)
    }

    /// The string at `key` parsed, or `default` when the key is absent; `None` when it is
    /// present but wrong (reported). `expected` is what a wrong type is told it should be.
    pub fn parse_or<T, E: Display>(
        &self,
        errors: &mut Errors<'_>,
        key: &str,
        expected: &str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        if self.get(key).is_none() {
            return Some(default);
        }
        let at = self.string(errors, key, expected)?;
        errors.parse(&at, parse)
    }

    /// The sub-table at `key`, or `empty` standing in for it when absent (so defaults apply);
    /// `None` when `key` holds something else (reported).
    pub fn section(
        &self,
        errors: &mut Errors<'_>,
        key: &str,
        expected: &[&str],
        empty: &'t DeTable<'i>,
    ) -> Option<Self> {
        if self.get(key).is_some() {
            return self.table(errors, key, expected);
        }
        Some(Table {
            path: self.child(key),
            span: self.span.clone(),
            table: empty,
        })
    }

    /// The whole number at `key`, which must lie in `min..=max`.
    pub fn integer(
        &self,
        errors: &mut Errors<'_>,
        key: &str,
        (min, max): (u64, u64),
        expected: &str,
    ) -> Option<At<u64>> {
        let value = self.get(key)?;
        let path = self.child(key);
        let DeValue::Integer(int) = value.get_ref() else {
            let message = format!("expected {expected}, found {}", describe(value.get_ref()));
            errors.push(value.span(), &path, message);
            return None;
        };
        let number = i128::from_str_radix(int.as_str(), int.radix()).ok();
        match number.and_then(|n| u64::try_from(n).ok()) {
            Some(n) if (min..=max).contains(&n) => Some(At {
                value: n,
                span: value.span(),
                path,
            }),
            _ => {
                let message = format!("expected {expected}; {int} is not between {min} and {max}");
                errors.push(value.span(), &path, message);
                None
            }
        }
    }

    /// The boolean at `key`, `default` when absent; `None` when present but not a boolean.
    pub fn boolean_or(&self, errors: &mut Errors<'_>, key: &str, default: bool) -> Option<bool> {
        let Some(value) = self.get(key) else {
            return Some(default);
        };
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                let message = format!("expected true or false, found {}", describe(other));
                errors.push(value.span(), &self.child(key), message);
                None
            }
        }
    }

    /// The number (float or integer) at `key`.
    pub fn number(&self, errors: &mut Errors<'_>, key: &str, expected: &str) -> Option<At<f64>> {
        let value = self.get(key)?;
        let path = self.child(key);
        let number = match value.get_ref() {
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            other => {
                let message = format!("expected {expected}, found {}", describe(other));
                errors.push(value.span(), &path, message);
                return None;
            }
        };
        let Some(number) = number else {
            errors.push(value.span(), &path, format!("expected {expected}"));
            return None;
        };
        Some(At {
            value: number,
            span: value.span(),
            path,
        })
    }

    /// The array of strings at `key`; `None` when absent, every bad item reported.
    pub fn strings(
        &self,
        errors: &mut Errors<'_>,
        key: &str,
        expected: &str,
    ) -> Option<Vec<At<&'t str>>> {
        let value = self.get(key)?;
        let path = self.child(key);
        let DeValue::Array(items) = value.get_ref() else {
            let message = format!(
                "expected an array of {expected}, found {}",
                describe(value.get_ref())
            );
            errors.push(value.span(), &path, message);
            return Some(Vec::new());
        };
        let strings = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| as_string(errors, item, format!("{path}[{i}]"), expected))
            .collect();
        Some(strings)
    }

    /// The table at `key` (inline or not), its keys checked.
    pub fn table(&self, errors: &mut Errors<'_>, key: &str, expected: &[&str]) -> Option<Self> {
        let value = self.get(key)?;
        Table::open(errors, value, self.child(key), expected)
    }

    /// The array of tables at `key` (`[[key]]`), each item opened on its own: an item that is
    /// not a table is reported and given as `None`, keeping the others' indexes.
    pub fn tables(
        &self,
        errors: &mut Errors<'_>,
        key: &str,
        expected: &[&str],
    ) -> Vec<Option<Self>> {
        let Some(value) = self.get(key) else {
            return Vec::new();
        };
        let path = self.child(key);
        let DeValue::Array(items) = value.get_ref() else {
            let message = format!(
                "expected an array of tables, written [[{path}]] before each item, found {}",
                describe(value.get_ref())
            );
            errors.push(value.span(), &path, message);
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| Table::open(errors, item, format!("{path}[{i}]"), expected))
            .collect()
    }
}

fn as_string<'t>(
    errors: &mut Errors<'_>,
    value: &'t Spanned<DeValue<'_>>,
    path: String,
    expected: &str,
) -> Option<At<&'t str>> {
    match value.get_ref() {
        DeValue::String(s) => Some(At {
            value: s.as_ref(),
            span: value.span(),
            path,
        }),
        other => {
            let message = format!("expected {expected}, found {}", describe(other));
            errors.push(value.span(), &path, message);
            None
        }
    }
}

/// "an integer (8080)", "a table", … for "found …" in a type error.
fn describe(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("a string (\"{}\")", s.escape_debug()),
        DeValue::Integer(i) => format!("an integer ({i})"),
        DeValue::Float(f) => format!("a float ({f})"),
        DeValue::Boolean(b) => format!("a boolean ({b})"),
        DeValue::Datetime(d) => format!("a datetime ({d})"),
        DeValue::Array(_) => "an array".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

/// Whether `typed` is one edit (insert, delete, substitute or swap of neighbours) from `known`.
fn near_miss(typed: &str, known: &str) -> bool {
    let a: Vec<char> = typed.chars().collect();
    let b: Vec<char> = known.chars().collect();
    if a == b || a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let (ra, rb) = (&a[prefix..], &b[prefix..]);
    match ra.len().cmp(&rb.len()) {
        std::cmp::Ordering::Less => ra == &rb[1..],
        std::cmp::Ordering::Greater => &ra[1..] == rb,
        std::cmp::Ordering::Equal => {
            ra[1..] == rb[1..]
                || (ra.len() >= 2 && ra[0] == rb[1] && ra[1] == rb[0] && ra[2..] == rb[2..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, check: impl FnOnce(&mut Errors<'_>, &Table<'_, '_>)) -> Vec<ConfigError> {
        let doc = DeTable::parse(text).expect("test documents are valid TOML");
        let mut errors = Errors::new(Source::new("t.toml", text));
        let root = Table::root(&mut errors, &doc, &["a", "b", "c", "per_account"]);
        check(&mut errors, &root);
        errors.pushed()
    }

    #[test]
    fn unknown_keys_are_each_reported_with_the_expected_ones() {
        let errors = read("per_acount = 1\nzzz = 2\n", |_, _| {});
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].key_path, "per_acount");
        assert!(errors[0].message.contains("did you mean `per_account`?"));
        assert!(errors[0]
            .message
            .ends_with("expected one of: a, b, c, per_account"));
        assert_eq!((errors[1].line, errors[1].column), (2, 1));
    }

    #[test]
    fn wrong_types_and_ranges_are_reported() {
        let errors = read(
            "a = \"x\"\nb = 99999999999999999999999999\nc = [1, \"s\"]\n",
            |e, t| {
                assert!(t.integer(e, "a", (1, 10), "a count").is_none());
                assert!(t.integer(e, "b", (1, 10), "a count").is_none());
                let list = t.strings(e, "c", "strings").unwrap_or_default();
                assert_eq!(list.len(), 1);
                assert_eq!(list[0].path, "c[1]");
            },
        );
        assert_eq!(errors.len(), 3);
        assert_eq!(
            errors[0].message,
            "expected a count, found a string (\"x\")"
        );
        assert!(errors[1].message.contains("is not between 1 and 10"));
        assert_eq!((errors[2].key_path.as_str(), errors[2].column), ("c[0]", 6));
    }

    #[test]
    fn missing_keys_point_at_the_table() {
        let errors = read("[a]\nx = 1\n", |e, t| {
            let a = Table::open(e, t.get("a").expect("a exists"), "a".into(), &["x"]);
            let a = a.expect("a is a table");
            assert!(a.required_string(e, "url", "a URL").is_none());
        });
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key_path, "a.url");
        assert_eq!(
            (errors[0].line, errors[0].column, errors[0].width),
            (1, 1, 3)
        );
    }

    #[test]
    fn near_misses() {
        assert!(near_miss("per_acount", "per_account"));
        assert!(near_miss("qouta", "quota"));
        assert!(near_miss("mod", "mode"));
        assert!(near_miss("mdoe", "mode"));
        assert!(!near_miss("mode", "mode"));
        assert!(!near_miss("id", "url"));
    }
}
