//! The HA stream's frames, between a master and its slaves (`ha_port`): a pure codec,
//! like the client frames. The blocking socket I/O lives in the `replication` crate.
//!
//! ```text
//! frame: the envelope of `crate::envelope`:
//!        u32 length (bytes after itself) | u32 crc32c (of kind and body) | u8 kind | body
//! 0x01 HELLO    slave -> master  u16 version=1, str16 broker_name, u32 broker_id,
//!                                u64 log_end, record_id last_record, epochs
//! 0x02 WELCOME  master -> slave  u64 start, record_id proof, u64 epoch, epochs
//! 0x03 REFUSE   master -> slave  str16 reason
//! 0x04 DATA     master -> slave  u64 offset, u64 confirmed, u64 master_end, bytes (rest)
//! 0x05 ACK      slave -> master  u64 flushed
//! 0x06 META     master -> slave  u32 n, n x (str16 topic, u32 queues),
//!                                u32 m, m x (str16 group, str16 topic, u32 queue, u64 offset)
//! 0x07 AUTH     slave -> master  str16 token (first, when the master requires one)
//! 0x08 SECURITY master -> slave  u64 version, bytes32 state (JSON: users, tokens, acls)
//! record_id: u64 start, u32 size, u32 crc (all zero: no record)
//! epochs:    u32 n, n x (u64 epoch, u64 start)
//! ```
//!
//! Every frame carries a CRC32C: a damaged frame (a bad NIC, a middlebox) ends the
//! connection instead of moving a slave's confirmed offset or its data.
//!
//! DATA carries raw CommitLog bytes starting at `offset` (chunks may cut a record; the
//! slave completes it from the next chunk). `confirmed` is the master's durable offset:
//! what it has acknowledged to producers. An empty DATA is a heartbeat. WELCOME's
//! `start` is where streaming begins: the slave's end, or a shorter common prefix the
//! slave must first truncate to, proved by `proof`, the master's record ending there.

use crate::envelope;
use crate::wire::{put_str16, Reader};
use crate::DecodeError;
use bytes::BufMut;

pub const HA_VERSION: u16 = 1;
/// Largest DATA payload a master sends.
pub const HA_DATA_CHUNK_BYTES: usize = 1 << 20;
/// Largest frame either side accepts (META with many offsets included).
pub const HA_FRAME_BYTES_MAX: u32 = 16 << 20;
/// Bytes of a frame before its kind: the length prefix and the CRC.
pub const HA_FRAME_HEADER_LEN: usize = envelope::HEADER_LEN;

/// A master term: every master start and every promotion begins one at the log's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    pub epoch: u64,
    /// Log offset of the first record written in this epoch.
    pub start: u64,
}

/// Identifies one stored record: where it starts, its size and its CRC32C. Two logs
/// whose records at the same offset have the same identity hold the same record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordId {
    pub start: u64,
    pub size: u32,
    pub crc: u32,
}

impl RecordId {
    pub fn end(&self) -> u64 {
        self.start.saturating_add(u64::from(self.size))
    }
}

#[derive(Clone, PartialEq, Eq)]
pub enum HaFrame {
    Hello {
        broker_name: String,
        broker_id: u32,
        log_end: u64,
        last_record: RecordId,
        epochs: Vec<Epoch>,
    },
    Welcome {
        start: u64,
        proof: RecordId,
        epoch: u64,
        epochs: Vec<Epoch>,
    },
    Refuse {
        reason: String,
    },
    Data {
        offset: u64,
        confirmed: u64,
        master_end: u64,
        bytes: Vec<u8>,
    },
    Ack {
        flushed: u64,
    },
    Meta {
        topics: Vec<(String, u32)>,
        offsets: Vec<(String, String, u32, u64)>,
    },
    /// The slave's cluster token (never shown by `Debug`).
    Auth {
        token: String,
    },
    /// The master's users, tokens and permissions, for a slave to enforce once promoted.
    Security {
        version: u64,
        state: Vec<u8>,
    },
}

impl std::fmt::Debug for HaFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HaFrame::Auth { .. } => f.write_str("Auth { .. }"),
            HaFrame::Security { version, state } => write!(
                f,
                "Security {{ version: {version}, {} bytes }}",
                state.len()
            ),
            HaFrame::Hello {
                broker_name,
                broker_id,
                log_end,
                last_record,
                epochs,
            } => f
                .debug_struct("Hello")
                .field("broker_name", broker_name)
                .field("broker_id", broker_id)
                .field("log_end", log_end)
                .field("last_record", last_record)
                .field("epochs", epochs)
                .finish(),
            HaFrame::Welcome {
                start,
                proof,
                epoch,
                epochs,
            } => f
                .debug_struct("Welcome")
                .field("start", start)
                .field("proof", proof)
                .field("epoch", epoch)
                .field("epochs", epochs)
                .finish(),
            HaFrame::Refuse { reason } => f.debug_struct("Refuse").field("reason", reason).finish(),
            HaFrame::Data {
                offset,
                confirmed,
                master_end,
                bytes,
            } => write!(
                f,
                "Data {{ offset: {offset}, confirmed: {confirmed}, master_end: {master_end}, {} bytes }}",
                bytes.len()
            ),
            HaFrame::Ack { flushed } => write!(f, "Ack {{ flushed: {flushed} }}"),
            HaFrame::Meta { topics, offsets } => f
                .debug_struct("Meta")
                .field("topics", topics)
                .field("offsets", offsets)
                .finish(),
        }
    }
}

fn put_record_id(out: &mut Vec<u8>, id: &RecordId) {
    out.put_u64_le(id.start);
    out.put_u32_le(id.size);
    out.put_u32_le(id.crc);
}

fn put_count(out: &mut Vec<u8>, count: usize) {
    out.put_u32_le(u32::try_from(count).unwrap_or(u32::MAX));
}

fn put_epochs(out: &mut Vec<u8>, epochs: &[Epoch]) {
    put_count(out, epochs.len());
    for epoch in epochs {
        out.put_u64_le(epoch.epoch);
        out.put_u64_le(epoch.start);
    }
}

fn record_id(reader: &mut Reader<'_>) -> Result<RecordId, DecodeError> {
    Ok(RecordId {
        start: reader.u64("record_start")?,
        size: reader.u32("record_size")?,
        crc: reader.u32("record_crc")?,
    })
}

/// A count of items, each at least `item_len` bytes, checked against what is left
/// before anything is allocated.
fn count(
    reader: &mut Reader<'_>,
    field: &'static str,
    item_len: usize,
) -> Result<usize, DecodeError> {
    let count = reader.u32(field)? as usize;
    let need = count.saturating_mul(item_len);
    if need > reader.remaining() {
        return Err(DecodeError::Truncated {
            field,
            need,
            have: reader.remaining(),
        });
    }
    Ok(count)
}

fn epochs(reader: &mut Reader<'_>) -> Result<Vec<Epoch>, DecodeError> {
    let n = count(reader, "epochs", 16)?;
    let mut epochs = Vec::with_capacity(n);
    for _ in 0..n {
        epochs.push(Epoch {
            epoch: reader.u64("epoch")?,
            start: reader.u64("epoch_start")?,
        });
    }
    Ok(epochs)
}

impl HaFrame {
    pub fn kind(&self) -> u8 {
        match self {
            HaFrame::Hello { .. } => 0x01,
            HaFrame::Welcome { .. } => 0x02,
            HaFrame::Refuse { .. } => 0x03,
            HaFrame::Data { .. } => 0x04,
            HaFrame::Ack { .. } => 0x05,
            HaFrame::Meta { .. } => 0x06,
            HaFrame::Auth { .. } => 0x07,
            HaFrame::Security { .. } => 0x08,
        }
    }

    /// Appends the whole frame, length prefix and CRC included (`crate::envelope`).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = envelope::begin(out, self.kind());
        self.encode_body(out);
        envelope::seal(out, start);
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            HaFrame::Hello {
                broker_name,
                broker_id,
                log_end,
                last_record,
                epochs,
            } => {
                out.put_u16_le(HA_VERSION);
                put_str16(out, broker_name);
                out.put_u32_le(*broker_id);
                out.put_u64_le(*log_end);
                put_record_id(out, last_record);
                put_epochs(out, epochs);
            }
            HaFrame::Welcome {
                start,
                proof,
                epoch,
                epochs,
            } => {
                out.put_u64_le(*start);
                put_record_id(out, proof);
                out.put_u64_le(*epoch);
                put_epochs(out, epochs);
            }
            HaFrame::Refuse { reason } => put_str16(out, reason),
            HaFrame::Data {
                offset,
                confirmed,
                master_end,
                bytes,
            } => {
                out.put_u64_le(*offset);
                out.put_u64_le(*confirmed);
                out.put_u64_le(*master_end);
                out.put_slice(bytes);
            }
            HaFrame::Ack { flushed } => out.put_u64_le(*flushed),
            HaFrame::Auth { token } => put_str16(out, token),
            HaFrame::Security { version, state } => {
                out.put_u64_le(*version);
                crate::wire::put_bytes32(out, state);
            }
            HaFrame::Meta { topics, offsets } => {
                put_count(out, topics.len());
                for (topic, queues) in topics {
                    put_str16(out, topic);
                    out.put_u32_le(*queues);
                }
                put_count(out, offsets.len());
                for (group, topic, queue, offset) in offsets {
                    put_str16(out, group);
                    put_str16(out, topic);
                    out.put_u32_le(*queue);
                    out.put_u64_le(*offset);
                }
            }
        }
    }

    /// Checks a length prefix before anything is read for the frame: the bytes that
    /// follow it must hold at least the CRC and the kind, and at most
    /// `HA_FRAME_BYTES_MAX`.
    pub fn check_length(length: u32) -> Result<usize, DecodeError> {
        envelope::check_length(length, HA_FRAME_BYTES_MAX)
    }

    /// Decodes what follows a length prefix: the CRC32C, checked over the rest, then the
    /// kind and body.
    pub fn decode_checked(after_length: &[u8]) -> Result<HaFrame, DecodeError> {
        envelope::open(after_length)?;
        HaFrame::decode(after_length.get(4..).unwrap_or_default())
    }

    /// Decodes one frame body: the `kind` byte then its fields (the CRC is checked by
    /// `decode_checked`).
    pub fn decode(body: &[u8]) -> Result<HaFrame, DecodeError> {
        let mut reader = Reader::new(body);
        let kind = reader.u8("kind")?;
        let frame = match kind {
            0x01 => {
                let version = reader.u16("version")?;
                if version != HA_VERSION {
                    return Err(DecodeError::InvalidValue {
                        field: "version",
                        value: u64::from(version),
                    });
                }
                HaFrame::Hello {
                    broker_name: reader.str16("broker_name")?,
                    broker_id: reader.u32("broker_id")?,
                    log_end: reader.u64("log_end")?,
                    last_record: record_id(&mut reader)?,
                    epochs: epochs(&mut reader)?,
                }
            }
            0x02 => HaFrame::Welcome {
                start: reader.u64("start")?,
                proof: record_id(&mut reader)?,
                epoch: reader.u64("epoch")?,
                epochs: epochs(&mut reader)?,
            },
            0x03 => HaFrame::Refuse {
                reason: reader.str16("reason")?,
            },
            0x04 => {
                let offset = reader.u64("offset")?;
                let confirmed = reader.u64("confirmed")?;
                let master_end = reader.u64("master_end")?;
                let rest = reader.remaining();
                HaFrame::Data {
                    offset,
                    confirmed,
                    master_end,
                    bytes: reader.take("bytes", rest)?.to_vec(),
                }
            }
            0x05 => HaFrame::Ack {
                flushed: reader.u64("flushed")?,
            },
            0x07 => HaFrame::Auth {
                token: reader.str16("token")?,
            },
            0x08 => HaFrame::Security {
                version: reader.u64("version")?,
                state: reader.bytes32("state")?.to_vec(),
            },
            0x06 => {
                let n = count(&mut reader, "topics", 6)?;
                let mut topics = Vec::with_capacity(n);
                for _ in 0..n {
                    topics.push((reader.str16("topic")?, reader.u32("queues")?));
                }
                let m = count(&mut reader, "offsets", 16)?;
                let mut offsets = Vec::with_capacity(m);
                for _ in 0..m {
                    offsets.push((
                        reader.str16("group")?,
                        reader.str16("topic")?,
                        reader.u32("queue")?,
                        reader.u64("offset")?,
                    ));
                }
                HaFrame::Meta { topics, offsets }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        reader.finish("ha frame")?;
        Ok(frame)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    /// A whole encoded frame, decoded as the replication crate reads it.
    fn read(bytes: &[u8]) -> Result<HaFrame, DecodeError> {
        let length = u32::from_le_bytes(
            bytes
                .get(..4)
                .ok_or(DecodeError::Truncated {
                    field: "length",
                    need: 4,
                    have: bytes.len(),
                })?
                .try_into()
                .unwrap(),
        );
        HaFrame::check_length(length)?;
        let rest = bytes
            .get(4..4 + length as usize)
            .ok_or(DecodeError::Truncated {
                field: "frame",
                need: length as usize,
                have: bytes.len() - 4,
            })?;
        HaFrame::decode_checked(rest)
    }

    fn frames() -> Vec<HaFrame> {
        let id = RecordId {
            start: 7,
            size: 90,
            crc: 0xDEAD_BEEF,
        };
        let epochs = vec![
            Epoch { epoch: 1, start: 0 },
            Epoch {
                epoch: 3,
                start: 97,
            },
        ];
        vec![
            HaFrame::Hello {
                broker_name: "broker-a".into(),
                broker_id: 1,
                log_end: 97,
                last_record: id,
                epochs: epochs.clone(),
            },
            HaFrame::Welcome {
                start: 97,
                proof: id,
                epoch: 3,
                epochs,
            },
            HaFrame::Refuse {
                reason: "no".into(),
            },
            HaFrame::Data {
                offset: 97,
                confirmed: 50,
                master_end: 200,
                bytes: vec![1, 2, 3],
            },
            HaFrame::Ack { flushed: 97 },
            HaFrame::Meta {
                topics: vec![("orders".into(), 8)],
                offsets: vec![("g".into(), "orders".into(), 3, 12)],
            },
            HaFrame::Auth {
                token: "secret".into(),
            },
            HaFrame::Security {
                version: 4,
                state: b"{}".to_vec(),
            },
        ]
    }

    #[test]
    fn frames_round_trip_and_every_cut_is_refused_without_panic() {
        for frame in frames() {
            let mut out = Vec::new();
            frame.encode(&mut out);
            let decoded = read(&out).unwrap();
            assert_eq!(decoded, frame);
            for cut in 8..out.len() {
                let body = &out[8..cut];
                if let Ok(other) = HaFrame::decode(body) {
                    // Only DATA may be cut and stay valid (shorter bytes).
                    assert!(matches!(other, HaFrame::Data { .. }), "{other:?}");
                }
            }
        }
    }

    #[test]
    fn any_flipped_bit_is_caught() {
        for frame in frames() {
            let mut out = Vec::new();
            frame.encode(&mut out);
            for byte in 0..out.len() {
                for bit in 0..8 {
                    let mut damaged = out.clone();
                    damaged[byte] ^= 1 << bit;
                    let read = read(&damaged);
                    assert!(
                        read.is_err(),
                        "byte {byte} bit {bit} of {frame:?}: {read:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn hostile_lengths_and_counts_are_refused_before_allocating() {
        let huge = [0xFFu8, 0xFF, 0xFF, 0xFF, 0x04];
        assert!(read(&huge).is_err());
        // META claiming 4 billion topics in a 10-byte body.
        let mut body = vec![0x06];
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        body.extend_from_slice(&[0; 5]);
        assert!(HaFrame::decode(&body).is_err());
        assert!(HaFrame::decode(&[0x7F]).is_err());
    }
}
