//! How the CLI prints: JSON or text, records, payloads, times and sizes; and how it
//! reads a time.

use crate::prelude::*;

/// `--json` was given.
pub(crate) static JSON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

pub(crate) fn json() -> bool {
    JSON.get().copied().unwrap_or(false)
}

/// Prints one JSON value on a line.
pub(crate) fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// A record as JSON (consume, subscribe, dlq list): the payload as text when it is UTF-8,
/// else as hex in `payload_hex`.
pub(crate) fn record_json(record: &Record) -> serde_json::Value {
    let properties: serde_json::Map<String, serde_json::Value> = record
        .properties
        .iter()
        .map(|(key, value)| (key.clone(), serde_json::Value::String(value.clone())))
        .collect();
    let mut object = serde_json::json!({
        "topic": record.topic,
        "queue": record.queue_id,
        "offset": record.queue_offset,
        "msg_id": record.message_id(),
        "store_timestamp_ms": record.store_timestamp_ms,
        "stored": format_time(record.store_timestamp_ms),
        "born_timestamp_ms": record.born_timestamp_ms,
        "tags": record.tags,
        "keys": record.keys,
        "properties": properties,
    });
    match std::str::from_utf8(&record.payload) {
        Ok(text) => object["payload"] = serde_json::Value::String(text.to_string()),
        Err(_) => {
            let hex: String = record.payload.iter().map(|b| format!("{b:02x}")).collect();
            object["payload_hex"] = serde_json::Value::String(hex);
        }
    }
    object
}

/// How payloads are printed: escaped text by default (valid UTF-8 as is, any other
/// byte as \xNN; never a replacement character).
#[derive(clap::Args, Clone, Copy, Default)]
pub(crate) struct PayloadFormat {
    /// Print each payload byte for byte (then a newline), nothing else.
    #[arg(long, conflicts_with = "hex")]
    pub(crate) raw: bool,
    /// Print payloads as hexadecimal.
    #[arg(long)]
    pub(crate) hex: bool,
}

impl PayloadFormat {
    pub(crate) fn text(self, payload: &[u8]) -> String {
        if self.hex {
            payload.iter().map(|byte| format!("{byte:02x}")).collect()
        } else {
            escape(payload)
        }
    }
}

/// Payload bytes as text: valid UTF-8 as it is except `\` and control characters,
/// every other byte as `\xNN`, so binary payloads print faithfully and unambiguously.
pub(crate) fn escape(payload: &[u8]) -> String {
    let mut out = String::with_capacity(payload.len());
    for chunk in payload.utf8_chunks() {
        for character in chunk.valid().chars() {
            match character {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// Milliseconds since the epoch as RFC 3339 in UTC with milliseconds
/// (`2026-12-01T10:00:00.000Z`), the inverse of `parse_time`'s RFC 3339 form.
pub fn format_time(ms: u64) -> String {
    let seconds = ms / 1000;
    let days = (seconds / 86_400) as i64;
    let clock = seconds % 86_400;
    // The civil date of a day count since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        clock / 3600,
        clock / 60 % 60,
        clock % 60,
        ms % 1000
    )
}

/// One record as `consume` and `subscribe` print it: where it is, when it was stored,
/// its tags, keys and properties, then the payload (`lead` comes first: subscribe's
/// topic, consume's nothing; `extra` before the payload: subscribe's reconsume count).
pub(crate) fn record_line(
    record: &Record,
    lead: &str,
    msg_id: &str,
    extra: &str,
    payload: &str,
) -> String {
    let properties: Vec<String> = record
        .properties
        .iter()
        .map(|(key, value)| format!("{}={}", escape(key.as_bytes()), escape(value.as_bytes())))
        .collect();
    format!(
        "{lead}queue={} offset={} id={msg_id} stored={} tags={:?} keys={:?} properties={{{}}} {extra}payload={payload}",
        record.queue_id,
        record.queue_offset,
        format_time(record.store_timestamp_ms),
        record.tags,
        record.keys,
        properties.join(", ")
    )
}

/// Writes a payload byte for byte and a newline (`--raw`).
pub(crate) fn write_raw(payload: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(payload).and_then(|()| out.write_all(b"\n"));
}

/// A `--from` time: milliseconds since the epoch, or RFC 3339 in UTC
/// (`2026-12-01T10:00:00Z`, with optional fractions of a second), years 1970 to 9999.
pub(crate) fn parse_time(text: &str) -> Option<u64> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().ok();
    }
    let digits = |part: &str, len: usize| -> Option<i64> {
        (part.len() == len && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
    };
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.split('-');
    let (year, month, day) = (
        digits(date.next()?, 4)?,
        digits(date.next()?, 2)?,
        digits(date.next()?, 2)?,
    );
    if date.next().is_some() {
        return None;
    }
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut clock = clock.split(':');
    let (hour, minute, second) = (
        digits(clock.next()?, 2)?,
        digits(clock.next()?, 2)?,
        digits(clock.next()?, 2)?,
    );
    if clock.next().is_some() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if year < 1970
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from 1970-01-01 to the date (proleptic Gregorian), the usual civil formula.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let millis: i64 = format!("{:0<3}", &fraction[..fraction.len().min(3)])
        .parse()
        .ok()?;
    let total = ((days * 24 + hour) * 60 + minute) * 60 + second;
    u64::try_from(total * 1000 + millis).ok()
}

/// A byte count as people read it: "512 B", "4.0 KiB", "1.5 MiB", "2.0 GiB".
pub(crate) fn bytes_words(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A wait as people read it: "0s", "4.2s", "3m12s", "2h05m", "3d04h".
pub(crate) fn duration_words(seconds: f64) -> String {
    let whole = seconds as u64;
    match whole {
        0 if seconds <= 0.0 => "0s".to_string(),
        0..60 => format!("{seconds:.1}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        3600..86_400 => format!("{}h{:02}m", whole / 3600, whole / 60 % 60),
        _ => format!("{}d{:02}h", whole / 86_400, whole / 3600 % 24),
    }
}
