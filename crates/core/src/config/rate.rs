//! Rates (`"50/s"`, `"2/min"`, `"20/s burst 40"`) and durations (`"3s"`, `"250ms"`) as operators
//! write them in `config.toml`, parsed into values that cannot hold a bad quota.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

/// The period a rate is counted over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Second,
    Minute,
    Hour,
}

impl Period {
    /// The period's length.
    pub fn duration(self) -> Duration {
        Duration::from_secs(self.seconds())
    }

    /// The period's length in whole seconds (the `w` of a `RateLimit-Policy`).
    pub fn seconds(self) -> u64 {
        match self {
            Period::Second => 1,
            Period::Minute => 60,
            Period::Hour => 3600,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Period::Second => "s",
            Period::Minute => "min",
            Period::Hour => "h",
        }
    }
}

/// A validated rate: `count` per `period`, with up to `burst` at once.
///
/// Without an explicit `burst M`, the burst is `count`: a whole period's allowance may arrive at
/// once, as governor's quotas do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: NonZeroU32,
    pub period: Period,
    pub burst: NonZeroU32,
}

impl Rate {
    /// A rate of `count` per `period` with the default burst (`count`).
    pub fn new(count: NonZeroU32, period: Period) -> Self {
        Rate {
            count,
            period,
            burst: count,
        }
    }

    /// The sustained rate in requests per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.count.get()) / self.period.seconds() as f64
    }

    /// The interval after which one more request is allowed (the GCRA emission interval).
    pub fn replenish_interval(&self) -> Duration {
        self.period.duration() / self.count.get()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.period.suffix())?;
        if self.burst != self.count {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

/// Why a rate or duration string was refused; the message completes "expected …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

const RATE_EXPECTED: &str =
    "a rate like \"50/s\", \"2/min\", \"1000/h\" or \"20/s burst 40\" (a count above 0, a period of s, min or h, an optional burst above 0)";

/// Parses `N/s`, `N/min`, `N/h` with an optional `burst M`.
pub fn parse_rate(text: &str) -> Result<Rate, ParseError> {
    let bad = |why: &str| ParseError(format!("{RATE_EXPECTED}; {why}"));
    let mut words = text.split_whitespace();
    let head = words.next().ok_or_else(|| bad("found an empty string"))?;
    let (count, period) = head
        .split_once('/')
        .ok_or_else(|| bad(&format!("\"{head}\" has no '/'")))?;
    let count: u32 = count
        .parse()
        .map_err(|_| bad(&format!("\"{count}\" is not a whole number")))?;
    let count = NonZeroU32::new(count).ok_or_else(|| {
        bad("a count of 0 would close the class; leave the class out of `quota` to close it")
    })?;
    // Only the documented spellings: a reader of the file (or a tool) should never have to
    // guess whether "m" is a minute or "sec" means what "s" does.
    let period = match period {
        "s" => Period::Second,
        "min" => Period::Minute,
        "h" => Period::Hour,
        other => {
            let meant = match other.to_ascii_lowercase().as_str() {
                "s" | "sec" | "secs" | "second" | "seconds" => Some("s"),
                "m" | "min" | "mins" | "minute" | "minutes" => Some("min"),
                "h" | "hr" | "hrs" | "hour" | "hours" => Some("h"),
                _ => None,
            };
            let why = match meant {
                Some(period) => format!("\"{other}\" is not a period; write \"{count}/{period}\""),
                None => format!("\"{other}\" is not a period"),
            };
            return Err(bad(&why));
        }
    };
    let mut rate = Rate::new(count, period);
    match (words.next(), words.next(), words.next()) {
        (None, _, _) => {}
        (Some("burst"), Some(n), None) => {
            let burst: u32 = n
                .parse()
                .map_err(|_| bad(&format!("burst \"{n}\" is not a whole number")))?;
            rate.burst =
                NonZeroU32::new(burst).ok_or_else(|| bad("a burst of 0 admits nothing"))?;
        }
        (Some(word), _, _) => {
            return Err(bad(&format!("unexpected \"{word}\" after \"{head}\"")));
        }
    }
    Ok(rate)
}

const DURATION_EXPECTED: &str =
    "a duration like \"250ms\", \"3s\", \"5min\" or \"1h\" (a whole number and a unit of ms, s, min or h)";

/// Parses a duration: a whole number followed by `ms`, `s`, `min` (or `m`) or `h`.
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    let bad = |why: &str| ParseError(format!("{DURATION_EXPECTED}; {why}"));
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| bad(&format!("\"{text}\" has no unit")))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| bad(&format!("\"{text}\" does not start with a whole number")))?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" | "min" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        other => return Err(bad(&format!("\"{other}\" is not a unit"))),
    };
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        let r = parse_rate("50/s").unwrap();
        assert_eq!(
            (r.count.get(), r.period, r.burst.get()),
            (50, Period::Second, 50)
        );
        let r = parse_rate("2/min").unwrap();
        assert_eq!(
            (r.count.get(), r.period, r.burst.get()),
            (2, Period::Minute, 2)
        );
        assert_eq!(r.replenish_interval(), Duration::from_secs(30));
        let r = parse_rate("20/s burst 40").unwrap();
        assert_eq!((r.count.get(), r.burst.get()), (20, 40));
        assert_eq!(r.to_string(), "20/s burst 40");
        assert_eq!(parse_rate("1000/h").unwrap().to_string(), "1000/h");
    }

    #[test]
    fn refuses_bad_rates_saying_what_was_expected() {
        for bad in [
            "50/x",
            "",
            "50",
            "0/s",
            "-1/s",
            "x/s",
            "5/s burst",
            "5/s burst 0",
            "5/s flood 9",
        ] {
            let err = parse_rate(bad).unwrap_err();
            assert!(err.0.starts_with("a rate like"), "{bad}: {err}");
        }
        assert!(parse_rate("50/x")
            .unwrap_err()
            .0
            .contains("\"x\" is not a period"));
        // Only s, min and h: what the error lists is what is accepted.
        for (bad, meant) in [
            ("5/sec", "5/s"),
            ("5/second", "5/s"),
            ("5/S", "5/s"),
            ("5/m", "5/min"),
            ("5/minute", "5/min"),
            ("5/hour", "5/h"),
            ("5/Hours burst 9", "5/h"),
        ] {
            let err = parse_rate(bad).map(|r| r.to_string()).unwrap_err().0;
            assert!(
                err.ends_with(&format!("is not a period; write \"{meant}\"")),
                "{bad}: {err}"
            );
            assert!(err.starts_with("a rate like"), "{bad}: {err}");
        }
        assert!(parse_rate("5/MIN").is_err());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5min").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("3").is_err());
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("s").is_err());
    }
}
