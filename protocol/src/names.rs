//! The names keel gives a meaning to inside topics and messages, in one place for every
//! side (broker, client library, CLI, console): the broker's own topics and the
//! properties it sets on the copies it stores.

/// Prefix of the broker's own topics; clients cannot send to or create them.
pub const RESERVED_TOPIC_PREFIX: char = '%';
/// Prefix of a group's retry topic (`%RETRY%GROUP`).
pub const RETRY_PREFIX: &str = "%RETRY%";
/// Prefix of a group's dead-letter topic (`%DLQ%GROUP`).
pub const DLQ_PREFIX: &str = "%DLQ%";
/// Where delayed messages wait: one queue per delay level.
pub const SCHEDULE_TOPIC: &str = "%SCHEDULE%";
/// Queues of `SCHEDULE_TOPIC`: the most delay levels `retry_delays_ms` may list.
pub const SCHEDULE_QUEUES: u32 = 64;

/// Where half messages (transactions not ended yet) are stored: one queue.
pub const HALF_TOPIC: &str = "%HALF%";
/// How transactions ended: one record per commit or rollback, naming its half message.
pub const HALF_OP_TOPIC: &str = "%HALF_OP%";
/// The producer id of committed transactions' messages (their sequence: the op
/// record's queue offset + 1), one of `BROKER_PRODUCER_IDS`.
pub const TRANSACTION_PRODUCER_ID: u64 = 0x5C4E_D01E_D0D0_0000 + 64 + TIMER_LEVELS as u64;

/// The timer's levels live in `SCHEDULE_TOPIC` from this queue on: level `k` is queue
/// `TIMER_FIRST_QUEUE + k` and holds each record `timer_hold_ms(k)`. (Queues below it
/// are the fixed retry levels of brokers before the timer; they are still drained.)
pub const TIMER_FIRST_QUEUE: u32 = 32;
/// Timer levels: the longest hold is `TIMER_TICK_MS << (TIMER_LEVELS - 1)` (19.4 days).
pub const TIMER_LEVELS: u32 = 25;
/// The shortest hold, and the finest step of the timer.
pub const TIMER_TICK_MS: u64 = 100;

/// The producer ids of the broker's own copies: the fixed retry levels' (64) and the
/// timer levels' (`TIMER_LEVELS`). Clients may not send under them (INVALID_ARGUMENT):
/// the timer's dedupe relies on being the only one numbering them.
pub const BROKER_PRODUCER_IDS: std::ops::Range<u64> =
    0x5C4E_D01E_D0D0_0000..TRANSACTION_PRODUCER_ID + 1;

/// Whether `producer_id` is one of the broker's own (`BROKER_PRODUCER_IDS`).
pub fn is_broker_producer_id(producer_id: u64) -> bool {
    BROKER_PRODUCER_IDS.contains(&producer_id)
}

/// How long timer level `level` holds a record before it is looked at again.
pub fn timer_hold_ms(level: u32) -> u64 {
    TIMER_TICK_MS << level.min(TIMER_LEVELS - 1)
}

/// A group's retry topic: failed messages come back here after their delay.
pub fn retry_topic(group: &str) -> String {
    format!("{RETRY_PREFIX}{group}")
}

/// A group's dead-letter topic: messages that failed `max_reconsume_times`.
pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_PREFIX}{group}")
}

/// What one of the broker's own topics is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnTopic<'a> {
    /// `%RETRY%GROUP`: the group's redeliveries.
    Retry { group: &'a str },
    /// `%DLQ%GROUP`: the group's dead letters.
    DeadLetter { group: &'a str },
    /// `%SCHEDULE%`: delayed copies waiting for their time.
    Schedule,
    /// Another name starting with `%` (reserved).
    Reserved,
}

/// `Some` for one of the broker's own topics (a name starting with `%`), `None` for a
/// user's topic.
pub fn own_topic(topic: &str) -> Option<OwnTopic<'_>> {
    if let Some(group) = topic.strip_prefix(RETRY_PREFIX) {
        return Some(OwnTopic::Retry { group });
    }
    if let Some(group) = topic.strip_prefix(DLQ_PREFIX) {
        return Some(OwnTopic::DeadLetter { group });
    }
    if topic == SCHEDULE_TOPIC {
        return Some(OwnTopic::Schedule);
    }
    topic
        .starts_with(RESERVED_TOPIC_PREFIX)
        .then_some(OwnTopic::Reserved)
}

/// Properties the broker sets on the messages it stores for redelivery (SEND_BACK's
/// copies, the scheduler's deliveries, dead letters).
pub mod property {
    /// Every property the broker sets starts with this; a producer's own `KEEL_*`
    /// properties are not copied by SEND_BACK.
    pub const PREFIX: &str = "KEEL_";
    /// When a message is due (ms since the epoch): set by a producer on a SEND to
    /// deliver it later, kept on the message delivered.
    pub const DELIVER_AT: &str = "KEEL_DELIVER_AT";
    /// Where a delayed copy goes when due.
    pub const REAL_TOPIC: &str = "KEEL_REAL_TOPIC";
    /// The queue a delayed message goes to when due, when its producer chose one.
    pub const REAL_QUEUE: &str = "KEEL_REAL_QUEUE";
    /// How many times the message was consumed and sent back.
    pub const RECONSUME_TIMES: &str = "KEEL_RECONSUME_TIMES";
    /// The topic the message was first stored in.
    pub const ORIGIN_TOPIC: &str = "KEEL_ORIGIN_TOPIC";
    /// The id (16 hex digits) of the message as first stored.
    pub const ORIGIN_MSG_ID: &str = "KEEL_ORIGIN_MSG_ID";
    /// Why the consumer sent it back (its handler's error).
    pub const REASON: &str = "KEEL_REASON";
    /// When it was dead-lettered (ms since the epoch).
    pub const DLQ_TIME: &str = "KEEL_DLQ_TIME";
    /// The message group (set by a producer): the messages of one group go to one queue
    /// (`message_group_queue`) and an ordered consumer group takes them one at a time.
    pub const MESSAGE_GROUP: &str = "KEEL_MESSAGE_GROUP";
    /// On a SEND: the message is a transaction's half message, of this producer group
    /// (stored at once, visible only once committed).
    pub const TRANSACTION: &str = "KEEL_TRANSACTION";
    /// On an op record of `%HALF_OP%` and on a committed message: the transaction (the
    /// half message's id, 16 hex digits).
    pub const TRANSACTION_ID: &str = "KEEL_TRANSACTION_ID";
    /// On an op record: "commit" or "rollback".
    pub const TRANSACTION_OUTCOME: &str = "KEEL_TRANSACTION_OUTCOME";
    /// On an op record: who ended it ("END_TRANSACTION", or "broker: ..." when the
    /// checks ran out).
    pub const TRANSACTION_BY: &str = "KEEL_TRANSACTION_BY";
    /// On an op record: the half message's queue offset in `%HALF%`.
    pub const HALF_OFFSET: &str = "KEEL_HALF_OFFSET";
    /// On the message of a SEND_BACK: redeliver it after this many ms (decimal, at most
    /// `max_delay_ms`) instead of its attempt's `retry_delays_ms` level. Not stored.
    pub const RETRY_DELAY_MS: &str = "KEEL_RETRY_DELAY_MS";
}

/// The longest message group, in bytes.
pub const MESSAGE_GROUP_MAX_BYTES: usize = 255;

/// The queue of a topic with `queue_count` queues that the messages of `group` go to
/// when their producer leaves the choice to the broker: CRC32C of the group's UTF-8
/// bytes, modulo the queue count. Every side computes it the same way (docs/PROTOCOL.md).
pub fn message_group_queue(group: &str, queue_count: u32) -> u32 {
    crc32c::crc32c(group.as_bytes())
        .checked_rem(queue_count)
        .unwrap_or(0)
}

/// The weight of broker `broker_name` for message group `group` when a client routes
/// over several brokers: CRC32C of the broker name's bytes, one 0x00 byte, then the
/// group's bytes. The group goes to the broker with the highest weight (the smaller
/// name on a tie), then to its queue `message_group_queue`; a broker that leaves moves
/// only its own groups (rendezvous hashing).
pub fn message_group_broker_weight(group: &str, broker_name: &str) -> u32 {
    let name = crc32c::crc32c_append(crc32c::crc32c(broker_name.as_bytes()), &[0]);
    crc32c::crc32c_append(name, group.as_bytes())
}

/// Why a message group is refused, if it is: empty, longer than
/// `MESSAGE_GROUP_MAX_BYTES`, or holding a control character.
pub fn invalid_message_group(group: &str) -> Option<String> {
    if group.is_empty() {
        return Some("the message group is empty".into());
    }
    if group.len() > MESSAGE_GROUP_MAX_BYTES {
        return Some(format!(
            "the message group is {} bytes, more than {MESSAGE_GROUP_MAX_BYTES}",
            group.len()
        ));
    }
    if group.chars().any(char::is_control) {
        return Some("the message group holds a control character".into());
    }
    None
}

/// The value of property `name` in `properties`, if set (the first, if set twice).
pub fn property<'a>(properties: &'a [(String, String)], name: &str) -> Option<&'a str> {
    properties
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_topics_are_told_apart_from_users() {
        assert_eq!(own_topic("orders"), None);
        assert_eq!(
            own_topic(&retry_topic("g")),
            Some(OwnTopic::Retry { group: "g" })
        );
        assert_eq!(
            own_topic(&dlq_topic("g")),
            Some(OwnTopic::DeadLetter { group: "g" })
        );
        assert_eq!(own_topic(SCHEDULE_TOPIC), Some(OwnTopic::Schedule));
        assert_eq!(own_topic("%SCHEDULER%"), Some(OwnTopic::Reserved));
        let properties = vec![(property::REASON.to_string(), "boom".to_string())];
        assert_eq!(property(&properties, property::REASON), Some("boom"));
        assert_eq!(property(&properties, property::DLQ_TIME), None);
    }

    #[test]
    fn a_message_group_has_one_queue_and_bad_groups_are_named() {
        // CRC32C("order-42") = 0xF2452E86, the example docs/PROTOCOL.md gives.
        assert_eq!(crc32c::crc32c(b"order-42"), 0xF245_2E86);
        assert_eq!(message_group_queue("order-42", 8), 6);
        assert_eq!(message_group_queue("anything", 0), 0);
        // The weights docs/PROTOCOL.md gives: "order-42" goes to broker-a of the two.
        let a = message_group_broker_weight("order-42", "broker-a");
        let b = message_group_broker_weight("order-42", "broker-b");
        assert_eq!((a, b), (0xF087_5B0D, 0xA891_A113));
        assert_eq!(
            message_group_broker_weight("order-42", "broker-a"),
            crc32c::crc32c(b"broker-a\0order-42")
        );
        assert!(invalid_message_group("").is_some());
        assert!(invalid_message_group(&"g".repeat(256)).is_some());
        assert!(invalid_message_group("a\nb").is_some());
        assert_eq!(invalid_message_group("order-42"), None);
    }
}
