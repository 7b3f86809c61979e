//! The checks every record gets on arrival, before any handler sees it (shared by the
//! pull `Consumer` and the `PushConsumer`).

use keel_protocol::{decode_record, PullResult, Record};

/// The records of a PULL_RESULT for `topic`/`queue_id` asked from `from`, each checked:
/// its CRC32C over the whole record, that it is the queue offset expected next of this
/// topic and queue, and the producer's `message_crc` over its fields. Returns the
/// intact records before the first bad one, and the bad one's queue offset and what is
/// wrong with it, if any: a consumer hands over the first and stops at the second.
pub(crate) fn checked_records(
    pull: &PullResult,
    topic: &str,
    queue_id: u32,
    from: u64,
) -> (Vec<Record>, Option<(u64, String)>) {
    let mut records = Vec::with_capacity(pull.record_count.min(4096) as usize);
    let mut position = 0usize;
    for index in 0..pull.record_count {
        let expected = from + records.len() as u64;
        let Some(rest) = pull.records.get(position..) else {
            return (records, Some((expected, "the reply ends early".into())));
        };
        let record = match decode_record(rest) {
            Ok(record) => record,
            Err(error) => return (records, Some((expected, error.to_string()))),
        };
        let problem = if record.queue_offset != expected
            || record.queue_id != queue_id
            || record.topic != topic
        {
            Some(format!(
                "expected {topic}/{queue_id} offset {expected} at position {index}, found \
                 {}/{} offset {}",
                record.topic, record.queue_id, record.queue_offset
            ))
        } else if !record.message_crc_matches() {
            Some(format!(
                "the producer's message CRC32C 0x{:08X} does not match the stored fields",
                record.message_crc
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return (records, Some((expected, problem)));
        }
        position += record.total_size as usize;
        records.push(record);
    }
    (records, None)
}
