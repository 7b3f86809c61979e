//! When a certificate stops being valid: the `notAfter` of an X.509 certificate, read
//! from its DER with a minimal, bounds-checked walk (TBSCertificate: optional version,
//! serial, signature algorithm, issuer, then validity). rustls checks validity on every
//! handshake *with* the peer's clock; this lets keeld warn at start that its own
//! certificate has expired, instead of every client failing to connect.

/// One DER element: its tag and contents, and what follows it.
fn element(bytes: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let (&tag, rest) = bytes.split_first().ok_or("certificate: truncated tag")?;
    let (&first, rest) = rest.split_first().ok_or("certificate: truncated length")?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 4 {
            return Err(format!("certificate: length of {count} bytes"));
        }
        let digits = rest.get(..count).ok_or("certificate: truncated length")?;
        let length = digits
            .iter()
            .fold(0usize, |length, digit| (length << 8) | usize::from(*digit));
        (length, rest.get(count..).unwrap_or_default())
    };
    let contents = rest
        .get(..length)
        .ok_or_else(|| format!("certificate: element of {length} bytes runs past its end"))?;
    Ok((tag, contents, rest.get(length..).unwrap_or_default()))
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The certificate's `notAfter`, in seconds since the Unix epoch.
pub fn not_after(der: &[u8]) -> Result<i64, String> {
    let (tag, certificate, _) = element(der)?;
    if tag != SEQUENCE {
        return Err("certificate: not a SEQUENCE".into());
    }
    let (tag, tbs, _) = element(certificate)?;
    if tag != SEQUENCE {
        return Err("certificate: TBSCertificate is not a SEQUENCE".into());
    }
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == 0xA0 {
        rest = after; // [0] version
    }
    for _field in ["serial", "signature", "issuer"] {
        let (_, _, after) = element(rest)?;
        rest = after;
    }
    let (tag, validity, _) = element(rest)?;
    if tag != SEQUENCE {
        return Err("certificate: validity is not a SEQUENCE".into());
    }
    let (_, _, after_not_before) = element(validity)?;
    let (tag, time, _) = element(after_not_before)?;
    let text = std::str::from_utf8(time).map_err(|_| "certificate: notAfter is not text")?;
    match tag {
        UTC_TIME => parse_time(text, 2),
        GENERALIZED_TIME => parse_time(text, 4),
        other => Err(format!("certificate: notAfter has tag 0x{other:02x}")),
    }
}

/// `YYMMDDHHMMSSZ` (UTCTime, `year_digits` 2: 50-99 are 19xx) or `YYYYMMDDHHMMSSZ`.
fn parse_time(text: &str, year_digits: usize) -> Result<i64, String> {
    let bad = || format!("certificate: notAfter {text:?} is not a time");
    if text.len() != year_digits + 11 || !text.ends_with('Z') || !text.is_ascii() {
        return Err(bad());
    }
    let number = |from: usize, to: usize| -> Result<i64, String> {
        text.get(from..to)
            .and_then(|digits| digits.parse::<i64>().ok())
            .ok_or_else(bad)
    };
    let mut year = number(0, year_digits)?;
    if year_digits == 2 {
        year += if year >= 50 { 1900 } else { 2000 };
    }
    let at = year_digits;
    let (month, day) = (number(at, at + 2)?, number(at + 2, at + 4)?);
    let (hour, minute, second) = (
        number(at + 4, at + 6)?,
        number(at + 6, at + 8)?,
        number(at + 8, at + 10)?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(bad());
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
/// Also the CLI's, for `--deliver-at` times.
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_to_unix_seconds() {
        assert_eq!(parse_time("700101000000Z", 2), Ok(0));
        assert_eq!(parse_time("20000301000000Z", 4), Ok(951_868_800));
        assert_eq!(parse_time("491231235959Z", 2), Ok(2_524_607_999));
        assert!(parse_time("2000030100000Z", 4).is_err());
        assert!(parse_time("20001301000000Z", 4).is_err());
        assert!(parse_time("2000030100000ZZ", 4).is_err());
    }

    #[test]
    fn hostile_bytes_are_refused_without_panic() {
        for bytes in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 2, 3, 4, 5],
            &[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF],
            &[0x30, 0x03, 0x30, 0x01],
            &[0x04, 0x00],
        ] {
            assert!(not_after(bytes).is_err(), "{bytes:?}");
        }
    }
}
