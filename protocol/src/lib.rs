//! keel's wire format: frames, messages, stored records, status and error codes.
//!
//! A pure codec: no sockets, threads or clocks (`now_ms` is there for its callers). The
//! replication stream's frames are in [`ha`]. The bytes a consumer receives for a
//! record are exactly the bytes the broker stored in its CommitLog, so the record
//! layout is defined here once and shared by `storage`, `server` and `client`.
//!
//! Every integer is little-endian with an explicit width.
//!
//! ```text
//! Frame
//! +---------+---------+------+---------+------------+------------------+
//! | length  | version | kind | flags   | request_id | body             |
//! | u32     | u8 = 2  | u8   | u16     | u64        | length - 12 B    |
//! +---------+---------+------+---------+------------+------------------+
//!  0         4         5      6         8            16
//! `length` counts the bytes after itself (12 + body). flags bit 0 = ONEWAY; the other
//! bits are reserved and must be 0.
//!
//! Stored record (the CommitLog entry, also what PULL returns)
//!  0 u32 total_size     whole record, this field included
//!  4 u32 magic          0x324C_524B ("KRL2" read as bytes)
//!  8 u32 record_crc     CRC32C of bytes [0..8) followed by [12..total_size)
//! 12 u64 log_offset     position of this record in the CommitLog
//! 20 u64 queue_offset   index of this record in its ConsumeQueue
//! 28 u32 queue_id
//! 32 u64 born_timestamp_ms, 40 u64 store_timestamp_ms
//! 48 u64 producer_id,       56 u64 sequence
//! 64 u32 flags,             68 u32 message_crc (the producer's, over its fields)
//! 72 u64 flushed_before (log offset the broker had fsynced when it appended this)
//! 80 topic str16, tags str16, keys str16, properties, payload bytes32
//! ```
//!
//! `docs/PROTOCOL.md` describes every frame byte by byte.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![deny(clippy::arithmetic_side_effects)]

mod codes;
pub mod envelope;
mod error;
mod frame;
pub mod ha;
mod message;
pub mod names;
mod permission;
mod request;
mod response;
mod waits;
pub mod wire;

pub use codes::{BrokerRole, ErrorCode, PullStatus, SendStatus};
pub use error::DecodeError;
pub use frame::{
    decode_frame, encode_frame, peek_request_id, Kind, RawFrame, FLAGS_KNOWN, FLAG_ONEWAY,
    FRAME_HEADER_LEN, LENGTH_PREFIX_LEN, PROTOCOL_VERSION,
};
pub use ha::{Epoch, HaFrame, RecordId};
pub use message::{
    decode_record, encode_record, peek_record_header, tags_hash, validate_topic, Message, Record,
    RecordHeader, RecordMeta, QUEUES_MAX, RECORD_FIXED_LEN, RECORD_FLAG_TOPIC_DELETED,
    RECORD_MAGIC, RECORD_OVERHEAD_MAX, RECORD_STORE_TIMESTAMP_AT, TOPIC_NAME_LEN_MAX,
};
pub use request::{
    BrokerRegistration, CommitOffsetRequest, CreateTopicRequest, GroupCommitRequest,
    HeartbeatRequest, ListTopicsRequest, Login, OffsetForTimeRequest, PullRequest,
    QueryOffsetRequest, Request, SecretText, SendBackRequest, LOGIN_PASSWORD, LOGIN_TOKEN,
};
pub use request::{EndTransactionRequest, TxAction, CHECKS_MAX};
pub use response::{
    Assignment, BrokerLiveness, BrokerRoute, ErrorResponse, GroupDeleted, GroupInfo, GroupSettings,
    OpenTransaction, PullResult, QueueInfo, QueueStats, Response, SendBatchResult, SendResult,
    TopicCreated, TopicDeleted, TopicInfo, TopicStats, TransactionCheck, TransactionEnded,
};
pub use waits::Wait;

/// Default upper bound on a whole frame (length prefix included).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 8 * 1024 * 1024;
/// Default upper bound on one message's payload.
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 4 * 1024 * 1024;
/// `queue_id` value in a SEND meaning "the broker picks the queue".
pub const QUEUE_ID_ANY: u32 = u32::MAX;

/// CRC32C (Castagnoli), the checksum used everywhere in keel.
pub fn crc32c(bytes: &[u8]) -> u32 {
    ::crc32c::crc32c(bytes)
}

pub use names::{
    dlq_topic, own_topic, retry_topic, OwnTopic, RESERVED_TOPIC_PREFIX, SCHEDULE_QUEUES,
    SCHEDULE_TOPIC,
};

/// The wall clock in milliseconds since the Unix epoch, for the timestamps the protocol
/// carries (born and store times, due times). The one clock read of the workspace: the
/// codec itself never calls it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Message id as shown to users: the record's CommitLog offset in 16 hex digits.
pub fn message_id(log_offset: u64) -> String {
    format!("{log_offset:016X}")
}

#[cfg(test)]
mod proptests;
