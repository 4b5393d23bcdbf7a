//! `[[partner]]`: each partner checked on its own, then the rules between partners (unique ids,
//! each key hash naming one partner only).

use std::collections::HashMap;

use super::fields::{At, Errors, Table};
use super::model::{
    Class, ClassQuotas, Mode, Partner, PartnerWebhooks, SecretSource, DEFAULT_MAX_SUBSCRIPTIONS,
    DEFAULT_MAX_TRACKED_ACCOUNTS,
};
use super::rate::{parse_rate, Rate};

pub(crate) const PARTNER_KEYS: &[&str] = &[
    "id",
    "keys_sha256",
    "client_cert_sha256",
    "quota",
    "per_account",
    "max_tracked_accounts",
    "mode",
    "max_subscriptions",
    "webhook_prefixes",
    "webhook_secret_file",
    "webhook_secret_env",
];
pub(crate) const QUOTA_KEYS: &[&str] = &[
    "payment",
    "inquiry_user",
    "inquiry_scheduled",
    "subscription",
];

/// The most subscriptions one partner may be allowed: each is a row and a refresh.
const MAX_SUBSCRIPTIONS_CEILING: u64 = 100_000_000;

/// The most bill accounts one partner may track: each costs memory, and beyond this a number is
/// a typo rather than a plan.
const MAX_TRACKED_CEILING: u64 = 10_000_000;

const RATE: &str = "a rate like \"50/s\"";

/// What one `[[partner]]` item yielded: the partner if it is valid, and its id and key hashes
/// (even when something else in it is wrong) for the rules between partners.
struct Read {
    partner: Option<Partner>,
    id: Option<(String, At<()>)>,
    keys: Vec<([u8; 32], At<()>)>,
    certificates: Vec<([u8; 32], At<()>)>,
}

/// Every `[[partner]]`, in file order; `None` when any has an error (all reported).
/// `subscriptions`: whether `[subscriptions]` is there, which a partner that may subscribe
/// needs.
pub(crate) fn partners(
    errors: &mut Errors<'_>,
    root: &Table<'_, '_>,
    subscriptions: bool,
) -> Option<Vec<Partner>> {
    let items = root.tables(errors, "partner", PARTNER_KEYS);
    let read: Vec<Option<Read>> = items
        .iter()
        .map(|item| item.as_ref().map(|t| partner(errors, t, subscriptions)))
        .collect();

    let mut ids: HashMap<&str, &At<()>> = HashMap::new();
    let mut hashes: HashMap<[u8; 32], &At<()>> = HashMap::new();
    let mut certificates: HashMap<[u8; 32], &At<()>> = HashMap::new();
    for item in read.iter().flatten() {
        if let Some((id, at)) = &item.id {
            if let Some(first) = ids.get(id.as_str()) {
                let message = format!(
                    "the partner id \"{id}\" is already used by {} at {}; ids must be unique",
                    first.path.trim_end_matches(".id"),
                    errors.source.location(first.span.start)
                );
                errors.push(at.span.clone(), &at.path, message);
            } else {
                ids.insert(id, at);
            }
        }
        once_each(errors, &mut hashes, &item.keys, "key hash", "key");
        once_each(
            errors,
            &mut certificates,
            &item.certificates,
            "certificate fingerprint",
            "certificate",
        );
    }
    read.into_iter()
        .map(|r| r.and_then(|r| r.partner))
        .collect()
}

/// Reports each digest of `listed` already in `seen` (at both places: one `thing` must
/// identify one partner), and adds the others to it.
fn once_each<'r>(
    errors: &mut Errors<'_>,
    seen: &mut HashMap<[u8; 32], &'r At<()>>,
    listed: &'r [([u8; 32], At<()>)],
    what: &str,
    thing: &str,
) {
    for (digest, at) in listed {
        if let Some(first) = seen.get(digest) {
            let message = format!(
                "this {what} is also at {} ({}); one {thing} must identify one partner",
                first.path,
                errors.source.location(first.span.start)
            );
            errors.push(at.span.clone(), &at.path, message);
        } else {
            seen.insert(*digest, at);
        }
    }
}

fn partner(errors: &mut Errors<'_>, t: &Table<'_, '_>, subscriptions: bool) -> Read {
    let before = errors.count();
    let id = t
        .required_string(errors, "id", "a partner id like \"wallet-a\"")
        .and_then(|at| {
            let id = errors.parse(&at, partner_id)?;
            Some((id, place(&at)))
        });
    let listed = t.strings(
        errors,
        "keys_sha256",
        "key hashes as strings of 64 hex characters",
    );
    let listed_certificates = t.strings(
        errors,
        "client_cert_sha256",
        "certificate fingerprints as strings of 64 hex characters",
    );
    // A partner no request can be identified as is a mistake, not a state to run in.
    let never = "at least one key hash (`billgate hash-key` prints one) or client certificate fingerprint (`billgate hash-cert`); a partner without either can never be identified";
    let none_listed = |list: &Option<Vec<At<&str>>>| list.as_ref().is_none_or(Vec::is_empty);
    if errors.count() == before && none_listed(&listed) && none_listed(&listed_certificates) {
        match t.get("keys_sha256").or(t.get("client_cert_sha256")) {
            Some(value) => {
                let key = if t.get("keys_sha256").is_some() {
                    "keys_sha256"
                } else {
                    "client_cert_sha256"
                };
                errors.push(value.span(), &t.child(key), format!("expected {never}"));
            }
            None => t.missing(errors, "keys_sha256", never),
        }
    }
    let keys: Vec<([u8; 32], At<()>)> = listed
        .unwrap_or_default()
        .iter()
        .filter_map(|at| Some((errors.parse(at, key_hash)?, place(at))))
        .collect();
    let certificates: Vec<([u8; 32], At<()>)> = listed_certificates
        .unwrap_or_default()
        .iter()
        .filter_map(|at| Some((errors.parse(at, certificate_hash)?, place(at))))
        .collect();
    let mut subscription = None;
    let quota = match t.table(errors, "quota", QUOTA_KEYS) {
        Some(q) => {
            let mut rates = [None; 3];
            for class in Class::ALL {
                let rate = q.parse_or(errors, class.as_str(), RATE, None, |s| {
                    parse_rate(s).map(Some)
                });
                rates[class.index()] = rate.flatten();
            }
            subscription = q
                .parse_or(errors, "subscription", RATE, None, |s| {
                    parse_rate(s).map(Some)
                })
                .flatten()
                .map(|rate| {
                    (
                        rate,
                        q.child("subscription"),
                        q.get("subscription").map(|v| v.span()),
                    )
                });
            ClassQuotas(rates)
        }
        // Left out (or not a table, reported): every class is closed, never unlimited.
        None => ClassQuotas::default(),
    };
    let webhooks = webhooks(errors, t, subscription, subscriptions);
    let per_account = t.parse_or(errors, "per_account", RATE, None, |s| {
        parse_rate(s).map(Some)
    });
    let max_tracked = t.integer(
        errors,
        "max_tracked_accounts",
        (1, MAX_TRACKED_CEILING),
        "a number of bill accounts above 0, like 100000",
    );
    let mode = t.parse_or(
        errors,
        "mode",
        "\"enforce\" or \"shadow\"",
        Mode::Enforce,
        parse_mode,
    );

    let max_tracked_accounts = max_tracked
        .and_then(|at| usize::try_from(at.value).ok())
        .unwrap_or(DEFAULT_MAX_TRACKED_ACCOUNTS);
    let partner = match (errors.count() == before, &id, per_account, mode) {
        (true, Some((id, _)), Some(per_account), Some(mode)) => Some(Partner {
            id: id.clone(),
            keys_sha256: keys.iter().map(|(hash, _)| *hash).collect(),
            client_cert_sha256: certificates.iter().map(|(hash, _)| *hash).collect(),
            quota,
            per_account,
            max_tracked_accounts,
            mode,
            webhooks: webhooks.flatten(),
        }),
        _ => None,
    };
    Read {
        partner,
        id,
        keys,
        certificates,
    }
}

/// A partner's subscription settings: `Some(None)` when it may not subscribe, `None` when
/// something is wrong (reported). A partner with `quota.subscription` needs `[subscriptions]`,
/// callback prefixes and a signing secret; the webhook keys without that quota are a mistake.
fn webhooks(
    errors: &mut Errors<'_>,
    t: &Table<'_, '_>,
    quota: Option<(Rate, String, Option<std::ops::Range<usize>>)>,
    subscriptions: bool,
) -> Option<Option<PartnerWebhooks>> {
    const PREFIX: &str = "callback URL prefixes like \"https://hooks.bank-b.example/billgate/\"";
    let before = errors.count();
    let max = t.integer(
        errors,
        "max_subscriptions",
        (1, MAX_SUBSCRIPTIONS_CEILING),
        "a number of subscriptions above 0, like 100000",
    );
    let prefixes: Vec<String> = t
        .strings(errors, "webhook_prefixes", PREFIX)
        .unwrap_or_default()
        .iter()
        .filter_map(|at| errors.parse(at, webhook_prefix))
        .collect();
    let file = t.file(
        errors,
        "webhook_secret_file",
        "the path of a file holding the webhook signing secret",
    )?;
    const ENV: &str = "the name of an environment variable holding the webhook signing secret, like \"BANK_B_WHSEC\"";
    let env = match t.string(errors, "webhook_secret_env", ENV) {
        Some(at) => errors.parse(&at, |name| {
            let fits = !name.is_empty()
                && name.len() <= 128
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if fits {
                Ok(name.to_string())
            } else {
                Err(format!("{ENV} (A-Z, 0-9 and '_')"))
            }
        }),
        None => None,
    };
    if errors.count() != before {
        return None;
    }
    let Some((rate, quota_path, quota_span)) = quota else {
        for key in [
            "max_subscriptions",
            "webhook_prefixes",
            "webhook_secret_file",
            "webhook_secret_env",
        ] {
            if let Some(value) = t.get(key) {
                let message = format!("{key} is set but quota.subscription is not: without that quota the partner cannot subscribe; add it, like subscription = \"5/s\", or take {key} out");
                errors.push(value.span(), &t.child(key), message);
            }
        }
        return if errors.count() == before {
            Some(None)
        } else {
            None
        };
    };
    let span = quota_span.unwrap_or(t.span.clone());
    if !subscriptions {
        let message = "quota.subscription needs a [subscriptions] table (where subscriptions are stored, how often accounts are refreshed); add one, or take the quota out";
        errors.push(span.clone(), &quota_path, message);
    }
    if prefixes.is_empty() {
        let message = format!("expected at least one of {PREFIX} in webhook_prefixes: a partner that may subscribe must say where its webhooks may go");
        match t.get("webhook_prefixes") {
            Some(value) => errors.push(value.span(), &t.child("webhook_prefixes"), message),
            None => t.missing(errors, "webhook_prefixes", &message),
        }
    }
    let secret = match (file, env) {
        (Some(file), None) => Some(SecretSource::File(file)),
        (None, Some(env)) => Some(SecretSource::Env(env)),
        (Some(_), Some(_)) => {
            let message = "webhook_secret_file or webhook_secret_env, not both";
            let span = t
                .get("webhook_secret_env")
                .map_or(span.clone(), |v| v.span());
            errors.push(span, &t.child("webhook_secret_env"), message);
            None
        }
        (None, None) => {
            t.missing(
                errors,
                "webhook_secret_file",
                "webhook_secret_file (or webhook_secret_env): the secret webhooks are signed with, read from a file or the environment, never written in this file",
            );
            None
        }
    };
    if errors.count() != before {
        return None;
    }
    Some(Some(PartnerWebhooks {
        quota: rate,
        max_subscriptions: max.map_or(DEFAULT_MAX_SUBSCRIPTIONS, |at| at.value),
        prefixes,
        secret: secret?,
    }))
}

/// A callback prefix: `http://` or `https://`, a host, and a path starting with `/` (so the
/// host cannot be extended: "https://hooks.example" would admit "https://hooks.example.evil/").
fn webhook_prefix(text: &str) -> Result<String, String> {
    const EXPECTED: &str = "a callback URL prefix like \"https://hooks.bank-b.example/billgate/\": http:// or https://, a host, and a path that starts with /";
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or_else(|| format!("{EXPECTED}; \"{}\" has neither scheme", text.escape_debug()))?;
    let Some(slash) = rest.find('/') else {
        return Err(format!(
            "{EXPECTED}; \"{}\" has no path after its host (end it with /)",
            text.escape_debug()
        ));
    };
    let authority = &rest[..slash];
    let fits = !authority.is_empty()
        && !authority.contains('@')
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'\\'))
        && text.parse::<http::Uri>().is_ok();
    if fits {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{EXPECTED}; \"{}\" is not one (no user info, query, fragment, spaces or backslashes)",
            text.escape_debug()
        ))
    }
}

fn place<T>(at: &At<T>) -> At<()> {
    At {
        value: (),
        span: at.span.clone(),
        path: at.path.clone(),
    }
}

/// `[a-z0-9][a-z0-9_-]{0,62}`: it becomes a metrics label and appears in problem bodies.
fn partner_id(text: &str) -> Result<String, String> {
    let mut chars = text.chars();
    let valid = text.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "a partner id like \"wallet-a\" (1 to 63 of a-z, 0-9, '_', '-', starting with a letter or digit); \"{}\" is not one",
            text.escape_debug()
        ))
    }
}

/// A certificate's SHA-256: 64 hex characters, colons between bytes allowed (as `openssl x509
/// -fingerprint -sha256` prints it).
fn certificate_hash(text: &str) -> Result<[u8; 32], String> {
    const EXPECTED: &str =
        "a certificate's SHA-256 as 64 hex characters (`billgate hash-cert FILE.pem` prints it)";
    let digits: String = text.chars().filter(|&c| c != ':').collect();
    let length = digits.chars().count();
    if length != 64 {
        return Err(format!("{EXPECTED}; this one has {length} hex characters"));
    }
    if let Some(c) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "{EXPECTED}; '{}' is not a hex digit",
            c.escape_debug()
        ));
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(&digits, &mut digest).map_err(|e| format!("{EXPECTED}; {e}"))?;
    Ok(digest)
}

/// 64 hex characters. The value is never repeated in the message: it may be a key pasted by
/// mistake.
fn key_hash(text: &str) -> Result<[u8; 32], String> {
    const EXPECTED: &str = "a key's SHA-256 as 64 hex characters (`billgate hash-key` prints it)";
    let raw_key_hint =
        "if this is a key itself, take it out of the file: only its hash belongs here";
    let length = text.chars().count();
    if length != 64 {
        return Err(format!(
            "{EXPECTED}; this one is {length} characters long; {raw_key_hint}"
        ));
    }
    if let Some(c) = text.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "{EXPECTED}; '{}' is not a hex digit; {raw_key_hint}",
            c.escape_debug()
        ));
    }
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text, &mut hash).map_err(|e| format!("{EXPECTED}; {e}"))?;
    Ok(hash)
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    match text {
        "enforce" => Ok(Mode::Enforce),
        "shadow" => Ok(Mode::Shadow),
        other => Err(format!(
            "\"enforce\" (reject over-quota requests) or \"shadow\" (count and report them, never reject); \"{}\" is neither",
            other.escape_debug()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::error::{ConfigError, Source};
    use crate::config::load::hash_key;

    fn run(text: &str) -> (Option<Vec<Partner>>, Vec<ConfigError>) {
        let doc = toml::de::DeTable::parse(text).expect("test documents are valid TOML");
        let mut errors = Errors::new(Source::new("t.toml", text));
        let root = Table::root(&mut errors, &doc, &["partner"]);
        let partners = partners(&mut errors, &root, true);
        (partners, errors.pushed())
    }

    fn paths(errors: &[ConfigError]) -> Vec<&str> {
        errors.iter().map(|e| e.key_path.as_str()).collect()
    }

    #[test]
    fn reads_partners_with_defaults() {
        let key = hash_key("k");
        let text = format!("[[partner]]\nid = \"wallet-a\"\nkeys_sha256 = [\"{key}\"]\nquota = {{ payment = \"200/s\", inquiry_scheduled = \"20/s burst 40\" }}\n\n[[partner]]\nid = \"b\"\nkeys_sha256 = [\"{b}\"]\nmode = \"shadow\"\nper_account = \"2/min\"\nmax_tracked_accounts = 10\n[partner.quota]\ninquiry_user = \"5/s\"\n", b = hash_key("kb"));
        let (partners, errors) = run(&text);
        assert!(errors.is_empty(), "{errors:#?}");
        let p = partners.unwrap_or_default();
        assert_eq!(hex::encode(p[0].keys_sha256[0]), key);
        assert_eq!(
            p[0].quota.get(Class::Payment).map(|r| r.to_string()),
            Some("200/s".into())
        );
        assert_eq!(p[0].quota.get(Class::InquiryUser), None);
        assert_eq!((p[0].mode, p[0].per_account), (Mode::Enforce, None));
        assert_eq!(p[0].max_tracked_accounts, DEFAULT_MAX_TRACKED_ACCOUNTS);
        assert_eq!((p[1].mode, p[1].max_tracked_accounts), (Mode::Shadow, 10));
        assert_eq!(
            p[1].quota.get(Class::InquiryUser).map(|r| r.to_string()),
            Some("5/s".into())
        );
        assert_eq!(hex::encode(p[1].keys_sha256[0]), hash_key("kb"));
    }

    #[test]
    fn a_partner_without_a_key_is_an_error() {
        for (keys, path) in [
            ("", "partner[0].keys_sha256"),
            ("keys_sha256 = []\n", "partner[0].keys_sha256"),
        ] {
            let text = format!("[[partner]]\nid = \"p\"\n{keys}quota = {{ payment = \"1/s\" }}\n");
            let (partners, errors) = run(&text);
            assert!(partners.is_none(), "{keys:?}");
            assert_eq!(paths(&errors), [path], "{keys:?}");
            assert!(
                errors[0].message.contains("can never be identified"),
                "{}",
                errors[0].message
            );
        }
    }

    #[test]
    fn a_partner_may_be_identified_by_certificates_alone_and_each_names_one_partner() {
        let fingerprint = "AB:".repeat(31) + "AB";
        let other = "cd".repeat(32);
        let text = format!(
            "[[partner]]\nid = \"bank-b\"\nclient_cert_sha256 = [\"{fingerprint}\", \"{other}\"]\n"
        );
        let (partners, errors) = run(&text);
        assert!(errors.is_empty(), "{errors:#?}");
        let p = partners.unwrap_or_default();
        assert!(p[0].keys_sha256.is_empty());
        assert_eq!(p[0].client_cert_sha256, vec![[0xab; 32], [0xcd; 32]]);

        let text = format!("[[partner]]\nid = \"a\"\nclient_cert_sha256 = [\"{other}\"]\n\n[[partner]]\nid = \"b\"\nclient_cert_sha256 = [\"abc\", \"{}\"]\n", other.to_uppercase());
        let (partners, errors) = run(&text);
        assert!(partners.is_none());
        assert_eq!(
            paths(&errors),
            [
                "partner[1].client_cert_sha256[0]",
                "partner[1].client_cert_sha256[1]"
            ]
        );
        assert!(
            errors[0].message.contains("hash-cert"),
            "{}",
            errors[0].message
        );
        assert!(
            errors[1]
                .message
                .contains("partner[0].client_cert_sha256[0]"),
            "{}",
            errors[1].message
        );
        assert_eq!((errors[1].line, errors[1].column), (7, 30));
    }

    #[test]
    fn one_bad_partner_does_not_hide_another() {
        let text = "[[partner]]\nid = 5\nkeys_sha256 = [\"5555555555555555555555555555555555555555555555555555555555555555\"]\n\n[[partner]]\nid = \"ok\"\nkeys_sha256 = [\"0000000000000000000000000000000000000000000000000000000000000000\"]\n\n[[partner]]\nid = \"c\"\nquota = { payment = \"50/x\", inquiry_user = \"1/s\", polling = \"1/s\" }\nmode = \"Enforce\"\nmax_tracked_accounts = 0\nkeys_sha256 = [\"my-secret-key\"]\n";
        let (partners, errors) = run(text);
        assert!(partners.is_none());
        assert_eq!(
            paths(&errors),
            [
                "partner[0].id",
                "partner[2].keys_sha256[0]",
                "partner[2].quota.polling",
                "partner[2].quota.payment",
                "partner[2].max_tracked_accounts",
                "partner[2].mode"
            ]
        );
        assert!(!errors[1].message.contains("my-secret-key"));
        assert!(errors[1].message.contains("only its hash belongs here"));
    }

    #[test]
    fn duplicate_ids_and_key_hashes_name_both_places() {
        let (a, b) = (hash_key("a"), hash_key("b"));
        let text = format!("[[partner]]\nid = \"p\"\nkeys_sha256 = [\"{a}\", \"{b}\"]\n\n[[partner]]\nid = \"p\"\nkeys_sha256 = [\"{}\"]\n\n[[partner]]\nid = \"q\"\nkeys_sha256 = [\"{a}\", \"{a}\"]\n", b.to_uppercase());
        let (_, errors) = run(&text);
        assert_eq!(
            paths(&errors),
            [
                "partner[1].id",
                "partner[1].keys_sha256[0]",
                "partner[2].keys_sha256[0]",
                "partner[2].keys_sha256[1]"
            ]
        );
        assert!(errors[0]
            .message
            .contains("already used by partner[0] at t.toml:2:6"));
        assert!(errors[1]
            .message
            .contains("also at partner[0].keys_sha256[1] (t.toml:3:"));
        assert!(errors[3]
            .message
            .contains("also at partner[0].keys_sha256[0]"));
    }

    #[test]
    fn single_values() {
        assert!(partner_id("wallet-a").is_ok());
        assert!(partner_id("0_bank").is_ok());
        assert!(partner_id(&"a".repeat(63)).is_ok());
        for bad in ["", "Wallet", "-a", "a b", "é", &"a".repeat(64)] {
            assert!(partner_id(bad).is_err(), "{bad}");
        }
        assert!(key_hash(&"A".repeat(64)).is_ok());
        assert!(key_hash(&"g".repeat(64)).is_err_and(|e| e.contains("'g' is not a hex digit")));
        assert!(key_hash("abc").is_err_and(|e| e.contains("3 characters long")));
        assert!(parse_mode("shadow").is_ok());
        assert!(parse_mode("SHADOW").is_err());
    }

    #[test]
    fn reads_webhook_settings_and_their_rules() {
        let key = hash_key("k");
        let text = format!("[[partner]]\nid = \"bank-b\"\nkeys_sha256 = [\"{key}\"]\nquota = {{ subscription = \"5/s\" }}\nmax_subscriptions = 100\nwebhook_prefixes = [\"https://hooks.bank-b.example/billgate/\", \"http://127.0.0.1:9/x/\"]\nwebhook_secret_env = \"BANK_B_WHSEC\"\n");
        let (partners, errors) = run(&text);
        assert!(errors.is_empty(), "{errors:#?}");
        let partners = partners.unwrap_or_default();
        let webhooks = partners[0].webhooks.clone().expect("may subscribe");
        assert_eq!(webhooks.quota, parse_rate("5/s").unwrap());
        assert_eq!(webhooks.max_subscriptions, 100);
        assert_eq!(webhooks.prefixes.len(), 2);
        assert_eq!(webhooks.secret, SecretSource::Env("BANK_B_WHSEC".into()));

        for (line, path, says) in [
            ("webhook_prefixes = [\"https://hooks.example\"]\nwebhook_secret_env = \"S\"", "partner[0].webhook_prefixes[0]", "no path after its host"),
            ("webhook_prefixes = [\"https://me@hooks.example/x/\"]\nwebhook_secret_env = \"S\"", "partner[0].webhook_prefixes[0]", "no user info"),
            ("webhook_prefixes = [\"ftp://hooks.example/x/\"]\nwebhook_secret_env = \"S\"", "partner[0].webhook_prefixes[0]", "has neither scheme"),
            ("webhook_prefixes = []\nwebhook_secret_env = \"S\"", "partner[0].webhook_prefixes", "at least one"),
            ("webhook_prefixes = [\"https://h/x/\"]", "partner[0].webhook_secret_file", "never written in this file"),
            ("webhook_prefixes = [\"https://h/x/\"]\nwebhook_secret_env = \"S\"\nwebhook_secret_file = \"s\"", "partner[0].webhook_secret_env", "not both"),
            ("webhook_prefixes = [\"https://h/x/\"]\nwebhook_secret_env = \"lower\"", "partner[0].webhook_secret_env", "A-Z, 0-9"),
        ] {
            let text = format!("[[partner]]\nid = \"bank-b\"\nkeys_sha256 = [\"{key}\"]\nquota = {{ subscription = \"5/s\" }}\n{line}\n");
            let (partners, errors) = run(&text);
            assert!(partners.is_none(), "{line}");
            assert_eq!(paths(&errors), [path], "{line}: {errors:#?}");
            assert!(errors[0].message.contains(says), "{line}: {}", errors[0].message);
        }

        // Without [subscriptions], the quota itself is refused.
        let doc = toml::de::DeTable::parse(&text).expect("valid TOML");
        let mut errors = Errors::new(Source::new("t.toml", &text));
        let root = Table::root(&mut errors, &doc, &["partner"]);
        assert!(super::partners(&mut errors, &root, false).is_none());
        let pushed = errors.pushed();
        assert_eq!(paths(&pushed), ["partner[0].quota.subscription"]);
        assert!(pushed[0].message.contains("needs a [subscriptions] table"));
    }
}
