//! What the stand-in biller says: bills derived deterministically from the account number,
//! payment requests checked, receipts issued. No I/O, no clock but the wall time handed in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The billing period every bill is for.
const PERIOD: &str = "2026-10";
/// The due date every bill carries.
const DUE_DATE: &str = "2026-12-15";
/// The currency of bills, and of payments that name none.
pub(crate) const DEFAULT_CURRENCY: &str = "CNY";
/// The longest account number accepted.
const MAX_ACCOUNT_LEN: usize = 32;
/// The longest `bill_id` a payment may carry.
const MAX_BILL_ID_LEN: usize = 64;
/// The largest payment accepted, in cents (one million, less a cent).
const MAX_AMOUNT_CENTS: u64 = 99_999_999;

/// An amount of money as the API writes it: a decimal string, never a float.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Money {
    pub value: String,
    pub currency: String,
}

/// The answer to a bill inquiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum Bill {
    Due {
        account: String,
        biller: String,
        bill_id: String,
        period: &'static str,
        amount_due: Money,
        due_date: &'static str,
        status: &'static str,
    },
    NoBillDue {
        account: String,
        biller: String,
        status: &'static str,
    },
}

/// Whether `account` is 1–32 characters of `[A-Za-z0-9-]`.
pub(crate) fn valid_account(account: &str) -> bool {
    (1..=MAX_ACCOUNT_LEN).contains(&account.len())
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The bill for `account` (already validated): the same account always gets the same bill;
/// about one account in five has no bill due.
#[cfg(test)]
pub(crate) fn bill_for(account: &str, biller: &str) -> Bill {
    bill_issued(account, biller, 0, false)
}

/// The account's `issue`-th bill, `paid` or due: 0 is its first, the same for ever (about
/// one account in five has none); each later one is a new bill, for every account, with an id
/// and an amount of its own.
pub(crate) fn bill_issued(account: &str, biller: &str, issue: u32, paid: bool) -> Bill {
    let digest = Sha256::digest(account.as_bytes());
    let word = |bytes: &[u8]| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[..8]);
        u64::from_be_bytes(word)
    };
    if issue == 0 && word(&digest[..]) % 5 == 0 {
        return Bill::NoBillDue {
            account: account.to_owned(),
            biller: biller.to_owned(),
            status: "no_bill_due",
        };
    }
    let base = format!(
        "BILL-{}-{}",
        PERIOD.replace('-', ""),
        hex::encode_upper(&digest[16..20])
    );
    let (bill_id, amount) = if issue == 0 {
        (base, word(&digest[8..]))
    } else {
        let again = Sha256::digest(format!("{account}#{issue}").as_bytes());
        (format!("{base}-{issue}"), word(&again[..]))
    };
    Bill::Due {
        account: account.to_owned(),
        biller: biller.to_owned(),
        bill_id,
        period: PERIOD,
        amount_due: Money {
            // 10.00 to 999.99.
            value: format_cents(1_000 + amount % 99_000),
            currency: DEFAULT_CURRENCY.to_owned(),
        },
        due_date: DUE_DATE,
        status: if paid { "paid" } else { "due" },
    }
}

/// A payment as a partner sends it. Unknown fields are ignored, as most billers do.
#[derive(Debug, Deserialize)]
pub(crate) struct PaymentRequest {
    pub account: String,
    #[serde(default)]
    pub bill_id: Option<String>,
    pub amount: String,
    #[serde(default)]
    pub currency: Option<String>,
}

/// A payment that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Payment {
    pub account: String,
    pub bill_id: Option<String>,
    pub amount: String,
    pub currency: String,
}

/// The biller's acknowledgement of an accepted payment.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Receipt {
    pub receipt_id: String,
    pub account: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bill_id: Option<String>,
    pub amount: String,
    pub currency: String,
    pub status: &'static str,
    pub paid_at: String,
}

/// Parse and check a payment body; the error is the `detail` a partner reads.
pub(crate) fn parse_payment(body: &[u8]) -> Result<Payment, String> {
    let request: PaymentRequest =
        serde_json::from_slice(body).map_err(|e| format!("the payment is not valid JSON: {e}"))?;
    if !valid_account(&request.account) {
        return Err("`account` must be 1 to 32 characters of A-Z, a-z, 0-9 and '-'".to_owned());
    }
    if let Some(bill_id) = &request.bill_id {
        if bill_id.is_empty() || bill_id.len() > MAX_BILL_ID_LEN {
            return Err(format!(
                "`bill_id` must be 1 to {MAX_BILL_ID_LEN} characters"
            ));
        }
    }
    let cents = parse_amount(&request.amount).ok_or_else(|| {
        format!(
            "`amount` must be a decimal string above zero with at most two decimals, \
             up to {}, e.g. \"123.45\"",
            format_cents(MAX_AMOUNT_CENTS)
        )
    })?;
    let currency = request
        .currency
        .unwrap_or_else(|| DEFAULT_CURRENCY.to_owned());
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("`currency` must be a three-letter ISO 4217 code, e.g. \"CNY\"".to_owned());
    }
    Ok(Payment {
        account: request.account,
        bill_id: request.bill_id,
        amount: format_cents(cents),
        currency,
    })
}

/// The receipt for `payment`, numbered `sequence`, paid at `paid_at` (wall time).
pub(crate) fn receipt(payment: Payment, sequence: u64, paid_at: SystemTime) -> Receipt {
    Receipt {
        receipt_id: format!("RCPT-{sequence:09}"),
        account: payment.account,
        bill_id: payment.bill_id,
        amount: payment.amount,
        currency: payment.currency,
        status: "accepted",
        paid_at: rfc3339_utc(paid_at),
    }
}

/// `"123.45"`, `"7"` or `"0.5"` as cents; `None` unless positive with at most two decimals.
fn parse_amount(text: &str) -> Option<u64> {
    let (units, fraction) = match text.split_once('.') {
        Some((units, fraction)) => (units, fraction),
        None => (text, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if units.is_empty() || units.len() > 9 || !digits(units) || fraction.len() > 2 {
        return None;
    }
    if (text.contains('.') && fraction.is_empty()) || !digits(fraction) {
        return None;
    }
    let mut cents = units.parse::<u64>().ok()?.checked_mul(100)?;
    let mut scale = 10;
    for b in fraction.bytes() {
        cents += u64::from(b - b'0') * scale;
        scale /= 10;
    }
    (1..=MAX_AMOUNT_CENTS).contains(&cents).then_some(cents)
}

fn format_cents(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// `t` as RFC 3339 UTC to the second, e.g. `2026-10-05T08:30:00Z` (times before 1970 read as 1970).
pub(crate) fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's
/// `civil_from_days`, for non-negative days only.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_short_and_plain() {
        for ok in ["1", "ACC-1001", "a-B-9", &"9".repeat(32)] {
            assert!(valid_account(ok), "{ok}");
        }
        for bad in [
            "",
            &"9".repeat(33),
            "a b",
            "a/b",
            "a%20b",
            "é",
            "a_b",
            "a.b",
        ] {
            assert!(!valid_account(bad), "{bad}");
        }
    }

    #[test]
    fn the_same_account_gets_the_same_bill() {
        let bill = bill_for("ACC-1001", "City Water & Power");
        assert_eq!(bill, bill_for("ACC-1001", "City Water & Power"));
        let json = serde_json::to_value(&bill).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "account": "ACC-1001",
                "biller": "City Water & Power",
                "bill_id": "BILL-202610-2AE71495",
                "period": "2026-10",
                "amount_due": {"value": "375.81", "currency": "CNY"},
                "due_date": "2026-12-15",
                "status": "due",
            })
        );
    }

    #[test]
    fn about_one_account_in_five_has_no_bill_due() {
        let none = (0..10_000)
            .filter(|i| matches!(bill_for(&format!("ACC-{i}"), "x"), Bill::NoBillDue { .. }))
            .count();
        assert!((1_800..=2_200).contains(&none), "{none} of 10000");
        let json = serde_json::to_value(bill_for("ACC-1000", "W")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"account": "ACC-1000", "biller": "W", "status": "no_bill_due"})
        );
    }

    #[test]
    fn amounts_are_positive_decimals_with_two_places_at_most() {
        assert_eq!(parse_amount("123.45"), Some(12_345));
        assert_eq!(parse_amount("123.4"), Some(12_340));
        assert_eq!(parse_amount("7"), Some(700));
        assert_eq!(parse_amount("0.01"), Some(1));
        assert_eq!(parse_amount("999999.99"), Some(MAX_AMOUNT_CENTS));
        for bad in [
            "", "0", "0.00", "-1", "+1", "1.", ".5", "1.234", "1e3", "1,00", " 1", "1000000",
            "NaN", "１",
        ] {
            assert_eq!(parse_amount(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn payments_are_checked_and_normalised() {
        let ok = parse_payment(br#"{"account":"ACC-1","amount":"5.5","extra":true}"#);
        assert_eq!(
            ok,
            Ok(Payment {
                account: "ACC-1".into(),
                bill_id: None,
                amount: "5.50".into(),
                currency: "CNY".into(),
            })
        );
        for bad in [
            &br#"{"account":"ACC-1"}"#[..],
            br#"{"account":"ACC-1","amount":5.5}"#,
            br#"{"account":"a b","amount":"1"}"#,
            br#"{"account":"A","amount":"1","currency":"cny"}"#,
            br#"{"account":"A","amount":"1","bill_id":""}"#,
            br#"[1,2]"#,
            b"{",
            b"\xff\xfe",
        ] {
            assert!(
                parse_payment(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn receipts_carry_a_numbered_id_and_utc_time() {
        let payment = Payment {
            account: "A".into(),
            bill_id: Some("B".into()),
            amount: "1.00".into(),
            currency: "CNY".into(),
        };
        let at = UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let r = receipt(payment, 123, at);
        assert_eq!(r.receipt_id, "RCPT-000000123");
        assert_eq!(r.paid_at, "2026-09-21T14:13:20Z");
    }

    #[test]
    fn formats_rfc3339_across_leap_days_and_centuries() {
        let at = |secs: u64| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00Z"
        );
    }
}
