//! What `keel send` reads: each MESSAGE argument, each `--file`, or each line of
//! standard input as it arrives (a pipe fed line by line is sent line by line). A
//! reader thread turns the input into numbered items, at most a few ahead of the
//! sends, so memory stays bounded whatever the input's size.

use keel_client::ClientError;
use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::sync::mpsc::SyncSender;

/// Where the payloads come from.
pub(super) enum Source {
    Arguments(Vec<String>),
    Files(Vec<PathBuf>),
    Stdin,
}

/// How each piece of input becomes a message.
#[derive(Clone, Copy)]
pub(super) struct Decoding {
    /// Each piece is hexadecimal bytes.
    pub hex: bool,
    /// Each piece is a JSON object as `keel consume --json` prints a record.
    pub json: bool,
    /// A payload longer than this cannot be sent (the broker's frame limit): it is
    /// refused without being held in memory.
    pub max_bytes: u32,
}

/// One message of `keel send`: its payload, and what a `--json-input` line gives in
/// place of the flags.
#[derive(Default)]
pub(super) struct Outgoing {
    pub payload: Vec<u8>,
    pub keys: Option<String>,
    pub tags: Option<String>,
    pub properties: Option<Vec<(String, String)>>,
    pub queue: Option<u32>,
}

/// The `input`th piece of input (1-based: the line, argument or file number), or why
/// it cannot be sent (nothing was sent for it).
pub(super) struct Item {
    pub input: u64,
    pub outgoing: Result<Outgoing, ClientError>,
}

/// Reads `source` on a thread of its own and hands each piece to `items` (which
/// blocks while the sender is behind), `repeat` times each. Returns once started; the
/// channel closes at the end of the input.
pub(super) fn spawn(
    source: Source,
    decoding: Decoding,
    repeat: u64,
    items: SyncSender<Item>,
) -> Result<(), ClientError> {
    std::thread::Builder::new()
        .name("keel-send-input".into())
        .spawn(move || {
            let emit = |input: u64, piece: Result<Vec<u8>, ClientError>| -> bool {
                let outgoing = piece.and_then(|bytes| decode(bytes, decoding));
                match outgoing {
                    Ok(outgoing) if repeat > 1 => (0..repeat).all(|_| {
                        let copy = Outgoing {
                            payload: outgoing.payload.clone(),
                            keys: outgoing.keys.clone(),
                            tags: outgoing.tags.clone(),
                            properties: outgoing.properties.clone(),
                            queue: outgoing.queue,
                        };
                        items
                            .send(Item {
                                input,
                                outgoing: Ok(copy),
                            })
                            .is_ok()
                    }),
                    outgoing => items.send(Item { input, outgoing }).is_ok(),
                }
            };
            match source {
                Source::Arguments(messages) => {
                    for (index, message) in messages.into_iter().enumerate() {
                        if !emit(index as u64 + 1, Ok(message.into_bytes())) {
                            return;
                        }
                    }
                }
                Source::Files(files) => {
                    for (index, path) in files.iter().enumerate() {
                        if !emit(index as u64 + 1, read_file(path, decoding.max_bytes)) {
                            return;
                        }
                    }
                }
                Source::Stdin => read_lines(std::io::stdin().lock(), decoding.max_bytes, emit),
            }
        })
        .map(|_| ())
        .map_err(|error| ClientError::InvalidArgument(format!("cannot start reading: {error}")))
}

/// A whole file (or standard input, for "-") as one payload, refused unread past
/// `max_bytes`.
fn read_file(path: &PathBuf, max_bytes: u32) -> Result<Vec<u8>, ClientError> {
    let cannot = |error: std::io::Error| {
        ClientError::InvalidArgument(format!("cannot read {}: {error}", path.display()))
    };
    let mut reader: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(path).map_err(cannot)?)
    };
    let mut bytes = Vec::new();
    let limit = u64::from(max_bytes);
    reader
        .by_ref()
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > limit {
        let size = std::fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        return Err(ClientError::TooLarge {
            bytes: size,
            max: max_bytes,
        });
    }
    Ok(bytes)
}

/// Each line (bytes up to a newline, the newline not included) as it arrives; a line
/// longer than `max_bytes` is refused and skipped without being held whole.
fn read_lines(
    mut input: impl BufRead,
    max_bytes: u32,
    mut emit: impl FnMut(u64, Result<Vec<u8>, ClientError>) -> bool,
) {
    let limit = max_bytes as usize;
    let mut number = 0u64;
    loop {
        let mut line = Vec::new();
        let mut skipped = 0u64;
        let ended = loop {
            let available = match input.fill_buf() {
                Ok(available) => available,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    let error = format!("cannot read standard input: {error}");
                    emit(number + 1, Err(ClientError::InvalidArgument(error)));
                    return;
                }
            };
            if available.is_empty() {
                break true;
            }
            let (piece, found) = match available.iter().position(|byte| *byte == b'\n') {
                Some(at) => (&available[..at], Some(at + 1)),
                None => (available, None),
            };
            if skipped == 0 && line.len() + piece.len() <= limit {
                line.extend_from_slice(piece);
            } else {
                skipped += (line.len() + piece.len()) as u64;
                line = Vec::new();
            }
            let consumed = found.unwrap_or(available.len());
            input.consume(consumed);
            if found.is_some() {
                break false;
            }
        };
        if ended && line.is_empty() && skipped == 0 {
            // The end of the input (after a last newline, or an empty input).
            return;
        }
        number += 1;
        let piece = match skipped {
            0 => Ok(line),
            bytes => Err(ClientError::TooLarge {
                bytes,
                max: max_bytes,
            }),
        };
        if !emit(number, piece) || ended {
            return;
        }
    }
}

/// A piece of input as a message: as it is, hex-decoded, or read as a JSON object.
fn decode(bytes: Vec<u8>, decoding: Decoding) -> Result<Outgoing, ClientError> {
    if decoding.json {
        return from_json(&bytes);
    }
    let payload = match decoding.hex {
        true => {
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ClientError::InvalidArgument("--hex input is not text".into()))?;
            decode_hex(text)?
        }
        false => bytes,
    };
    Ok(Outgoing {
        payload,
        ..Outgoing::default()
    })
}

/// A `--json-input` object: "payload" or "payload_hex", and optionally "keys",
/// "tags", "properties" and "queue".
fn from_json(line: &[u8]) -> Result<Outgoing, ClientError> {
    let bad = |why: String| ClientError::InvalidArgument(format!("--json-input: {why}"));
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| bad(format!("not JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let text = |name: &str| -> Result<Option<String>, ClientError> {
        match object.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(bad(format!("\"{name}\" must be a string"))),
        }
    };
    let payload = match (text("payload")?, text("payload_hex")?) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(hex)) => decode_hex(&hex).map_err(|e| bad(e.to_string()))?,
        _ => {
            return Err(bad(
                "give \"payload\" or \"payload_hex\" (one of them)".into()
            ))
        }
    };
    let properties = match object.get("properties") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Object(map)) => Some(
            map.iter()
                .map(|(key, value)| match value {
                    serde_json::Value::String(value) => Ok((key.clone(), value.clone())),
                    _ => Err(bad(format!("property {key:?} must be a string"))),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(bad("\"properties\" must be an object".into())),
    };
    let queue = match object.get("queue") {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .and_then(|queue| u32::try_from(queue).ok())
                .ok_or_else(|| bad("\"queue\" must be a queue number".into()))?,
        ),
    };
    Ok(Outgoing {
        payload,
        keys: text("keys")?,
        tags: text("tags")?,
        properties,
        queue,
    })
}

/// "68 69", "6869" or "68:69" as bytes.
fn decode_hex(text: &str) -> Result<Vec<u8>, ClientError> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|byte| !byte.is_ascii_whitespace() && *byte != b':')
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err(ClientError::InvalidArgument(format!(
            "--hex: {text:?} has an odd number of hex digits"
        )));
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| {
                    ClientError::InvalidArgument(format!("--hex: {text:?} is not hexadecimal"))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: u32) -> Vec<Result<Vec<u8>, String>> {
        let mut out = Vec::new();
        read_lines(input, max, |number, piece| {
            assert_eq!(number as usize, out.len() + 1);
            out.push(piece.map_err(|e| e.to_string()));
            true
        });
        out
    }

    #[test]
    fn lines_split_at_newlines_and_long_lines_are_refused_unheld() {
        assert!(lines(b"", 10).is_empty());
        assert_eq!(
            lines(b"a\n\nb", 10),
            vec![Ok(b"a".to_vec()), Ok(vec![]), Ok(b"b".to_vec())]
        );
        assert_eq!(lines(b"a\n", 10), vec![Ok(b"a".to_vec())]);
        let out = lines(b"short\nmuch too long a line\nok\n", 8);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], Ok(b"short".to_vec()));
        assert!(out[1].as_ref().unwrap_err().contains("MESSAGE_TOO_LARGE"));
        assert_eq!(out[2], Ok(b"ok".to_vec()));
    }

    #[test]
    fn json_lines_take_the_place_of_the_flags() {
        let out = from_json(br#"{"payload_hex":"6869","keys":"k","queue":2}"#).unwrap();
        assert_eq!(
            (out.payload, out.keys, out.queue),
            (b"hi".to_vec(), Some("k".into()), Some(2))
        );
        assert!(from_json(b"[1]").is_err());
        assert!(from_json(br#"{"payload":"a","payload_hex":"61"}"#).is_err());
    }
}
