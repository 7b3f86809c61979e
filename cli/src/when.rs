//! Times and durations on the command line: `--delay 30s`, `--deliver-at` in RFC 3339.

use std::time::Duration;

/// A duration with a unit: `250ms`, `30s`, `15m`, `2h`, `7d` (a bare number is seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let count: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: a number and a unit (250ms, 30s, 15m, 2h, 7d)"))?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m, h, d)")),
    };
    count
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// A point in time as ms since the Unix epoch: RFC 3339 (`2026-12-08T09:00:00Z`,
/// `2026-12-08T10:00:00.250+01:00`) or a plain number of ms.
pub(crate) fn parse_time(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| format!("{text:?} is too large"));
    }
    rfc3339(text).ok_or_else(|| {
        format!(
            "{text:?}: an RFC 3339 time (2026-12-08T09:00:00Z, ...+01:00) or ms since the epoch"
        )
    })
}

fn rfc3339(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let number = |from: usize, to: usize| -> Option<i64> {
        let part = text.get(from..to)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let separator = |at: usize, allowed: &[u8]| bytes.get(at).is_some_and(|b| allowed.contains(b));
    let shaped = [
        (4, &b"-"[..]),
        (7, b"-"),
        (10, b"Tt "),
        (13, b":"),
        (16, b":"),
    ]
    .iter()
    .all(|(at, allowed)| separator(*at, allowed));
    if !shaped {
        return None;
    }
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    let mut at = 19;
    let mut millis = 0i64;
    if separator(at, b".") {
        let end = text
            .get(at + 1..)?
            .find(|c: char| !c.is_ascii_digit())
            .map_or(text.len(), |found| at + 1 + found);
        let fraction = text.get(at + 1..end)?;
        if fraction.is_empty() {
            return None;
        }
        let padded: String = fraction.chars().chain("000".chars()).take(3).collect();
        millis = padded.parse().ok()?;
        at = end;
    }
    let offset_minutes = match text.get(at..)? {
        "Z" | "z" => 0,
        zone if zone.len() == 6 && (zone.starts_with('+') || zone.starts_with('-')) => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            if zone.as_bytes().get(3) != Some(&b':') {
                return None;
            }
            sign * (number(at + 1, at + 3)? * 60 + number(at + 4, at + 6)?)
        }
        _ => return None,
    };
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 61;
    if !valid {
        return None;
    }
    let days = keel_security::validity::days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds.checked_mul(1_000)?.checked_add(millis)?).ok()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn rfc3339_times_are_read_with_their_offset() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2026-12-07T14:28:24Z"), Ok(1_796_653_704_000));
        assert_eq!(
            parse_time("2026-12-07T15:28:24.5+01:00"),
            Ok(1_796_653_704_500)
        );
        assert_eq!(
            parse_time("2024-02-29T00:00:00-00:30"),
            Ok(1_709_166_600_000)
        );
        assert_eq!(parse_time("1796653704000"), Ok(1_796_653_704_000));
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-12-07T24:00:00Z",
            "2026-12-07T14:28:24",
            "2026-12-07T14:28:24+0100",
            "2026-12-07",
            "tomorrow",
            "",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
