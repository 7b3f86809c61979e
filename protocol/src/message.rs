//! A message as a producer sends it, and a record as the CommitLog stores it.

use crate::wire::{bytes_of, put_bytes32, put_str16, str16_bytes, str16_len, Reader};
use crate::DecodeError;
use bytes::{BufMut, Bytes};

/// "KRL2" read as little-endian bytes: the second stored-record layout.
pub const RECORD_MAGIC: u32 = 0x324C_524B;
/// Bytes of a stored record before its topic: the header and the fixed-width fields.
pub const RECORD_FIXED_LEN: usize = 80;
/// Where a stored record's `store_timestamp_ms` (u64) sits, from the record's start.
pub const RECORD_STORE_TIMESTAMP_AT: usize = 40;
/// Upper bound on what a stored record adds to its payload (header, topic, tags, keys,
/// properties). The broker refuses a message whose record would be larger than
/// `max_message_bytes` plus this, so recovery can use the same bound to tell a
/// plausible record from garbage.
pub const RECORD_OVERHEAD_MAX: u32 = 256 * 1024;
pub const TOPIC_NAME_LEN_MAX: usize = 127;
/// A stored record's flag: this record is no message but the deletion of its topic.
/// Every record of the topic before it is no longer the topic's (recovery and slaves
/// drop them where they meet it); a record after it belongs to a topic of the same name
/// created again. Only the broker writes it: a producer's message has flags 0.
pub const RECORD_FLAG_TOPIC_DELETED: u32 = 1;
/// Queues a topic may have; every count or queue id read from a socket or a file is
/// checked against it before anything is sized by it.
pub const QUEUES_MAX: u32 = 1024;
const CRC_FIELD: std::ops::Range<usize> = 8..12;

const _: () = assert!(RECORD_STORE_TIMESTAMP_AT + 8 <= RECORD_FIXED_LEN);

/// A message in a SEND frame.
///
/// Body layout: topic str16, queue_id u32, born_timestamp_ms u64, producer_id u64,
/// sequence u64, flags u32, message_crc u32, then the tail shared byte for byte with the
/// stored record: tags str16, keys str16, properties (u16 count, count x (str16, str16)),
/// payload bytes32.
///
/// `message_crc` is the producer's end-to-end checksum over every field that makes the
/// message what it is: CRC32C of the body without its `queue_id` and `message_crc`
/// fields (topic, born_timestamp_ms, producer_id, sequence, flags, then the tail). The
/// queue is left out because it is a placement, not content: a producer's router may
/// place a sealed message on another queue for a retry, and the broker picks one for
/// `QUEUE_ID_ANY`. The broker checks the CRC before storing; consumers check it again
/// from the stored record (`Record::message_crc_matches`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub topic: String,
    /// A queue of the topic, or `QUEUE_ID_ANY` to let the broker pick.
    pub queue_id: u32,
    pub born_timestamp_ms: u64,
    /// 0 when the producer is not idempotent.
    pub producer_id: u64,
    pub sequence: u64,
    pub flags: u32,
    pub tags: String,
    pub keys: String,
    pub properties: Vec<(String, String)>,
    /// The producer's CRC32C over every other field (see the type's documentation).
    pub message_crc: u32,
    pub payload: Bytes,
}

impl Message {
    /// The value of property `name`, if set (`crate::names::property`).
    pub fn property(&self, name: &str) -> Option<&str> {
        crate::names::property(&self.properties, name)
    }

    /// A message for `topic` on any queue, sealed (its `message_crc` filled in).
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Message {
        Message {
            topic: topic.into(),
            queue_id: crate::QUEUE_ID_ANY,
            payload: payload.into(),
            ..Message::default()
        }
        .sealed()
    }

    pub fn with_tags(mut self, tags: impl Into<String>) -> Message {
        self.tags = tags.into();
        self.sealed()
    }

    pub fn with_keys(mut self, keys: impl Into<String>) -> Message {
        self.keys = keys.into();
        self.sealed()
    }

    pub fn with_queue(mut self, queue_id: u32) -> Message {
        self.queue_id = queue_id;
        self.sealed()
    }

    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Message {
        self.properties.push((key.into(), value.into()));
        self.sealed()
    }

    /// Delivered at `at_ms` (ms since the Unix epoch), not before: the broker stores it
    /// at once and hands it to consumers from then on (property `KEEL_DELIVER_AT`). A
    /// time in the past is delivered at once; one beyond the broker's `max_delay_ms` is
    /// refused.
    pub fn with_deliver_at(mut self, at_ms: u64) -> Message {
        let name = crate::names::property::DELIVER_AT;
        self.properties.retain(|(key, _)| key != name);
        self.properties.push((name.to_string(), at_ms.to_string()));
        self.sealed()
    }

    /// In message group `group` (property `KEEL_MESSAGE_GROUP`): the messages of one
    /// group go to one queue (when the producer leaves the queue to the broker) and a
    /// consumer group marked ordered handles them one at a time, in the order stored.
    pub fn with_message_group(mut self, group: impl Into<String>) -> Message {
        let name = crate::names::property::MESSAGE_GROUP;
        self.properties.retain(|(key, _)| key != name);
        self.properties.push((name.to_string(), group.into()));
        self.sealed()
    }

    /// The message group, if the message has one.
    pub fn message_group(&self) -> Option<&str> {
        self.property(crate::names::property::MESSAGE_GROUP)
    }

    /// Delivered `delay` from now, by this host's clock (`with_deliver_at`).
    pub fn with_delay(self, delay: std::time::Duration) -> Message {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.with_deliver_at(crate::now_ms().saturating_add(delay_ms))
    }

    /// Fills in `message_crc` for the fields as they are now. Whoever changes a field
    /// of a sealed message (a producer numbering it, the broker making a retry copy)
    /// seals it again.
    pub fn sealed(mut self) -> Message {
        self.seal();
        self
    }

    pub fn seal(&mut self) {
        self.message_crc = self.compute_crc();
    }

    /// The `message_crc` this message's fields call for.
    pub fn compute_crc(&self) -> u32 {
        message_crc(&Covered {
            topic: &self.topic,
            born_timestamp_ms: self.born_timestamp_ms,
            producer_id: self.producer_id,
            sequence: self.sequence,
            flags: self.flags,
            tags: &self.tags,
            keys: &self.keys,
            properties: &self.properties,
            payload: &self.payload,
        })
    }

    /// Whether `message_crc` matches the fields (the end-to-end check).
    pub fn crc_matches(&self) -> bool {
        self.compute_crc() == self.message_crc
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) {
        put_str16(out, &self.topic);
        out.put_u32_le(self.queue_id);
        out.put_u64_le(self.born_timestamp_ms);
        out.put_u64_le(self.producer_id);
        out.put_u64_le(self.sequence);
        out.put_u32_le(self.flags);
        out.put_u32_le(self.message_crc);
        self.encode_tail(out);
    }

    fn encode_tail(&self, out: &mut Vec<u8>) {
        self.encode_tail_head(out);
        put_bytes32(out, &self.payload);
    }

    /// The tail up to the payload: tags, keys, properties.
    fn encode_tail_head(&self, out: &mut Vec<u8>) {
        encode_tail_head(&self.tags, &self.keys, &self.properties, out);
    }

    fn tail_len(&self) -> usize {
        let properties: usize = self
            .properties
            .iter()
            .take(usize::from(u16::MAX))
            .map(|(key, value)| str16_len(key).saturating_add(str16_len(value)))
            .sum();
        str16_len(&self.tags)
            .saturating_add(str16_len(&self.keys))
            .saturating_add(2)
            .saturating_add(properties)
            .saturating_add(4)
            .saturating_add(self.payload.len())
    }

    /// Size of the stored record this message becomes.
    pub fn record_len(&self) -> usize {
        RECORD_FIXED_LEN
            .saturating_add(str16_len(&self.topic))
            .saturating_add(self.tail_len())
    }

    pub(crate) fn decode_body(body: &Bytes) -> Result<Message, DecodeError> {
        let mut reader = Reader::new(body);
        let topic = reader.str16("topic")?;
        let queue_id = reader.u32("queue_id")?;
        let born_timestamp_ms = reader.u64("born_timestamp_ms")?;
        let producer_id = reader.u64("producer_id")?;
        let sequence = reader.u64("sequence")?;
        let flags = reader.u32("flags")?;
        let message_crc = reader.u32("message_crc")?;
        let tail = decode_tail(&mut reader)?;
        reader.finish("SEND")?;
        let payload = body.slice(tail.payload_range);
        Ok(Message {
            topic,
            queue_id,
            born_timestamp_ms,
            producer_id,
            sequence,
            flags,
            tags: tail.tags,
            keys: tail.keys,
            properties: tail.properties,
            message_crc,
            payload,
        })
    }
}

/// The part of a message's tail before its payload: tags, keys, properties (shared byte
/// for byte by the SEND body and the stored record).
fn encode_tail_head(tags: &str, keys: &str, properties: &[(String, String)], out: &mut Vec<u8>) {
    put_str16(out, tags);
    put_str16(out, keys);
    let count = u16::try_from(properties.len()).unwrap_or(u16::MAX);
    out.put_u16_le(count);
    for (key, value) in properties.iter().take(usize::from(count)) {
        put_str16(out, key);
        put_str16(out, value);
    }
}

/// The fields `message_crc` covers, borrowed from a message or a stored record.
struct Covered<'a> {
    topic: &'a str,
    born_timestamp_ms: u64,
    producer_id: u64,
    sequence: u64,
    flags: u32,
    tags: &'a str,
    keys: &'a str,
    properties: &'a [(String, String)],
    payload: &'a [u8],
}

/// CRC32C over a SEND body without its `queue_id` and `message_crc` fields: the topic,
/// the numbers, then the tail (tags, keys, properties, payload), each encoded as on the
/// wire. Computed piece by piece, so nothing is allocated on the send path.
fn message_crc(covered: &Covered<'_>) -> u32 {
    fn str16(crc: u32, text: &str) -> u32 {
        let bytes = str16_bytes(text);
        let length = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        ::crc32c::crc32c_append(::crc32c::crc32c_append(crc, &length.to_le_bytes()), bytes)
    }
    let mut numbers = [0u8; 28];
    let mut fields = &mut numbers[..];
    fields.put_u64_le(covered.born_timestamp_ms);
    fields.put_u64_le(covered.producer_id);
    fields.put_u64_le(covered.sequence);
    fields.put_u32_le(covered.flags);
    let mut crc = str16(0, covered.topic);
    crc = ::crc32c::crc32c_append(crc, &numbers);
    crc = str16(crc, covered.tags);
    crc = str16(crc, covered.keys);
    let count = u16::try_from(covered.properties.len()).unwrap_or(u16::MAX);
    crc = ::crc32c::crc32c_append(crc, &count.to_le_bytes());
    for (key, value) in covered.properties.iter().take(usize::from(count)) {
        crc = str16(str16(crc, key), value);
    }
    let length = u32::try_from(covered.payload.len()).unwrap_or(u32::MAX);
    crc = ::crc32c::crc32c_append(crc, &length.to_le_bytes());
    ::crc32c::crc32c_append(crc, covered.payload)
}

struct Tail {
    tags: String,
    keys: String,
    properties: Vec<(String, String)>,
    payload_range: std::ops::Range<usize>,
}

fn decode_tail(reader: &mut Reader<'_>) -> Result<Tail, DecodeError> {
    let tags = reader.str16("tags")?;
    let keys = reader.str16("keys")?;
    let count = reader.u16("property_count")?;
    // Each property takes at least 4 bytes, so the count is bounded by the body
    // before anything is allocated for it.
    let bound = reader.remaining() / 4;
    let mut properties = Vec::with_capacity(usize::from(count).min(bound));
    for _ in 0..count {
        let key = reader.str16("property_key")?;
        let value = reader.str16("property_value")?;
        properties.push((key, value));
    }
    let payload = reader.bytes32("payload")?;
    let end = reader.position();
    let start = end.saturating_sub(payload.len());
    Ok(Tail {
        tags,
        keys,
        properties,
        payload_range: start..end,
    })
}

/// Broker-assigned fields of a stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    pub log_offset: u64,
    pub queue_offset: u64,
    pub queue_id: u32,
    pub store_timestamp_ms: u64,
    /// The log offset the broker had fsynced when it appended the record: a record that
    /// survives proves everything below this was durable (and may have been
    /// acknowledged), which recovery uses to tell damage from a torn tail.
    pub flushed_before: u64,
}

/// Appends the stored form of `message` to `out` and returns its length.
pub fn encode_record(message: &Message, meta: &RecordMeta, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    let total = message.record_len();
    out.reserve(total);
    out.put_u32_le(u32::try_from(total).unwrap_or(u32::MAX));
    out.put_u32_le(RECORD_MAGIC);
    out.put_u32_le(0);
    out.put_u64_le(meta.log_offset);
    out.put_u64_le(meta.queue_offset);
    out.put_u32_le(meta.queue_id);
    out.put_u64_le(message.born_timestamp_ms);
    out.put_u64_le(meta.store_timestamp_ms);
    out.put_u64_le(message.producer_id);
    out.put_u64_le(message.sequence);
    out.put_u32_le(message.flags);
    out.put_u32_le(message.message_crc);
    out.put_u64_le(meta.flushed_before);
    put_str16(out, &message.topic);
    message.encode_tail(out);
    let record = out.get_mut(start..).unwrap_or_default();
    let crc = record_crc(record);
    if let Some(field) = record.get_mut(CRC_FIELD) {
        field.copy_from_slice(&crc.to_le_bytes());
    }
    out.len().saturating_sub(start)
}

/// CRC32C over the whole record except its own CRC field.
fn record_crc(record: &[u8]) -> u32 {
    let head = record.get(..CRC_FIELD.start).unwrap_or_default();
    let rest = record.get(CRC_FIELD.end..).unwrap_or_default();
    ::crc32c::crc32c_append(::crc32c::crc32c(head), rest)
}

/// The first 12 bytes of a record: enough to know how far to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub total_size: u32,
    pub magic: u32,
    pub crc: u32,
}

/// Reads a record header, if 12 bytes are there. Validates nothing.
pub fn peek_record_header(bytes: &[u8]) -> Option<RecordHeader> {
    let mut reader = Reader::new(bytes);
    Some(RecordHeader {
        total_size: reader.u32("total_size").ok()?,
        magic: reader.u32("magic").ok()?,
        crc: reader.u32("record_crc").ok()?,
    })
}

/// A stored record, decoded and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub total_size: u32,
    pub log_offset: u64,
    pub queue_offset: u64,
    pub queue_id: u32,
    pub born_timestamp_ms: u64,
    pub store_timestamp_ms: u64,
    pub producer_id: u64,
    pub sequence: u64,
    pub flags: u32,
    pub message_crc: u32,
    /// What the broker had fsynced when it appended this record (see `RecordMeta`).
    pub flushed_before: u64,
    pub topic: String,
    pub tags: String,
    pub keys: String,
    pub properties: Vec<(String, String)>,
    pub payload: Bytes,
}

impl Record {
    /// The value of property `name`, if set (`crate::names::property`).
    pub fn property(&self, name: &str) -> Option<&str> {
        crate::names::property(&self.properties, name)
    }

    pub fn message_id(&self) -> String {
        crate::message_id(self.log_offset)
    }

    /// Whether the producer's `message_crc` matches the stored fields (the end-to-end
    /// check).
    pub fn message_crc_matches(&self) -> bool {
        let covered = Covered {
            topic: &self.topic,
            born_timestamp_ms: self.born_timestamp_ms,
            producer_id: self.producer_id,
            sequence: self.sequence,
            flags: self.flags,
            tags: &self.tags,
            keys: &self.keys,
            properties: &self.properties,
            payload: &self.payload,
        };
        message_crc(&covered) == self.message_crc
    }

    /// The message again, on any queue, without the original's producer id and sequence
    /// (they stay the original's: a copy is another message), sealed anew: what a copy
    /// of it (a retry, a dead letter, a redrive) starts from. Check
    /// `message_crc_matches` first: the new checksum vouches for the fields as they are.
    pub fn to_message(&self) -> Message {
        Message {
            topic: self.topic.clone(),
            queue_id: crate::QUEUE_ID_ANY,
            born_timestamp_ms: self.born_timestamp_ms,
            producer_id: 0,
            sequence: 0,
            flags: self.flags,
            tags: self.tags.clone(),
            keys: self.keys.clone(),
            properties: self.properties.clone(),
            message_crc: 0,
            payload: self.payload.clone(),
        }
        .sealed()
    }

    /// Hash of the tags as stored in ConsumeQueue entries (0 for no tags).
    pub fn tags_hash(&self) -> u64 {
        tags_hash(&self.tags)
    }
}

/// Hash of a tag string for ConsumeQueue entries: CRC32C widened to u64, 0 when empty.
pub fn tags_hash(tags: &str) -> u64 {
    if tags.is_empty() {
        0
    } else {
        u64::from(crate::crc32c(tags.as_bytes()))
    }
}

/// Decodes and verifies the record at the start of `bytes` (trailing bytes are left).
///
/// Checks, in order: the header is present, the magic, the declared size against the
/// buffer, the CRC32C over the whole record, then that the fields fill exactly the
/// declared size. Never panics on any input.
pub fn decode_record(bytes: &[u8]) -> Result<Record, DecodeError> {
    let header = peek_record_header(bytes).ok_or(DecodeError::Truncated {
        field: "record_header",
        need: 12,
        have: bytes.len(),
    })?;
    if header.magic != RECORD_MAGIC {
        return Err(DecodeError::BadMagic {
            found: header.magic,
        });
    }
    let total = header.total_size as usize;
    if total < RECORD_FIXED_LEN {
        return Err(DecodeError::SizeMismatch {
            declared: header.total_size,
            actual: RECORD_FIXED_LEN,
        });
    }
    let record = bytes.get(..total).ok_or(DecodeError::Truncated {
        field: "record",
        need: total,
        have: bytes.len(),
    })?;
    let computed = record_crc(record);
    if computed != header.crc {
        return Err(DecodeError::ChecksumMismatch {
            stored: header.crc,
            computed,
        });
    }
    let mut reader = Reader::new(record);
    reader.take("record_header", 12)?;
    let log_offset = reader.u64("log_offset")?;
    let queue_offset = reader.u64("queue_offset")?;
    let queue_id = reader.u32("queue_id")?;
    let born_timestamp_ms = reader.u64("born_timestamp_ms")?;
    let store_timestamp_ms = reader.u64("store_timestamp_ms")?;
    let producer_id = reader.u64("producer_id")?;
    let sequence = reader.u64("sequence")?;
    let flags = reader.u32("flags")?;
    let message_crc = reader.u32("message_crc")?;
    let flushed_before = reader.u64("flushed_before")?;
    let topic = reader.str16("topic")?;
    let tail = decode_tail(&mut reader)?;
    if reader.remaining() != 0 {
        return Err(DecodeError::SizeMismatch {
            declared: header.total_size,
            actual: reader.position(),
        });
    }
    let payload = record
        .get(tail.payload_range)
        .map(bytes_of)
        .unwrap_or_default();
    Ok(Record {
        total_size: header.total_size,
        log_offset,
        queue_offset,
        queue_id,
        born_timestamp_ms,
        store_timestamp_ms,
        producer_id,
        sequence,
        flags,
        message_crc,
        flushed_before,
        topic,
        tags: tail.tags,
        keys: tail.keys,
        properties: tail.properties,
        payload,
    })
}

/// Why a topic name is refused, or `Ok` when it is usable.
///
/// A topic becomes a directory name, so only `[A-Za-z0-9_.-]` is allowed, not `.` or
/// `..`, at most 127 bytes.
pub fn validate_topic(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("topic name is empty");
    }
    if topic.len() > TOPIC_NAME_LEN_MAX {
        return Err("topic name is longer than 127 bytes");
    }
    if topic == "." || topic == ".." {
        return Err("topic name cannot be '.' or '..'");
    }
    // '%' starts the broker's own topics (%RETRY%group, %DLQ%group, %SCHEDULE%):
    // clients may read them but not send to or create them.
    let allowed =
        |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' || c == '%';
    if !topic.chars().all(allowed) {
        return Err("topic name may only contain A-Z a-z 0-9 _ . - (and % for the broker's own)");
    }
    Ok(())
}
