//! Stable numeric codes carried on the wire. Never renumber; only add.

/// Answer to a SEND that was stored (RocketMQ's four statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum SendStatus {
    /// Stored, and durable by the broker's standard (fsynced when `flush = "sync"`).
    SendOk = 0,
    /// Written, but the fsync did not complete within `sync_flush_timeout_ms`.
    FlushDiskTimeout = 1,
    /// Written, but no slave acked it within `slave_timeout_ms`.
    FlushSlaveTimeout = 2,
    /// Written, but the sync master has no in-sync slave.
    SlaveNotAvailable = 3,
    /// The broker does not know whether the message is stored: it was handed to the
    /// disk, then a write or fsync failed. It may be in the log after a restart (and
    /// then be served), or not. Retry with the same producer id and sequence: the
    /// broker that has it answers with the original; one that does not stores it.
    OutcomeUnknown = 4,
}

impl SendStatus {
    pub const ALL: [SendStatus; 5] = [
        SendStatus::SendOk,
        SendStatus::FlushDiskTimeout,
        SendStatus::FlushSlaveTimeout,
        SendStatus::SlaveNotAvailable,
        SendStatus::OutcomeUnknown,
    ];

    pub fn from_u16(value: u16) -> Option<SendStatus> {
        SendStatus::ALL
            .into_iter()
            .find(|status| *status as u16 == value)
    }

    pub fn name(self) -> &'static str {
        match self {
            SendStatus::SendOk => "SEND_OK",
            SendStatus::FlushDiskTimeout => "FLUSH_DISK_TIMEOUT",
            SendStatus::FlushSlaveTimeout => "FLUSH_SLAVE_TIMEOUT",
            SendStatus::SlaveNotAvailable => "SLAVE_NOT_AVAILABLE",
            SendStatus::OutcomeUnknown => "OUTCOME_UNKNOWN",
        }
    }
}

impl std::fmt::Display for SendStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A broker's replication role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BrokerRole {
    /// Standalone master: no slaves.
    Master = 0,
    /// Acks after the local flush; slaves follow in the background.
    AsyncMaster = 1,
    /// Acks only after a slave fsynced the message too.
    SyncMaster = 2,
    /// Follows a master; serves reads, refuses sends.
    Slave = 3,
}

impl BrokerRole {
    pub const ALL: [BrokerRole; 4] = [
        BrokerRole::Master,
        BrokerRole::AsyncMaster,
        BrokerRole::SyncMaster,
        BrokerRole::Slave,
    ];

    pub fn from_u8(value: u8) -> Option<BrokerRole> {
        BrokerRole::ALL
            .into_iter()
            .find(|role| *role as u8 == value)
    }

    /// The name used in configuration files: `master`, `async_master`, ...
    pub fn name(self) -> &'static str {
        match self {
            BrokerRole::Master => "master",
            BrokerRole::AsyncMaster => "async_master",
            BrokerRole::SyncMaster => "sync_master",
            BrokerRole::Slave => "slave",
        }
    }

    pub fn from_name(name: &str) -> Option<BrokerRole> {
        BrokerRole::ALL.into_iter().find(|role| role.name() == name)
    }

    pub fn is_master(self) -> bool {
        self != BrokerRole::Slave
    }
}

impl std::fmt::Display for BrokerRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Outcome of a PULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PullStatus {
    /// One or more records are in the result.
    Found = 0,
    /// The requested offset is the end of the queue (after any long-poll wait).
    NoNewMessages = 1,
    /// The requested offset is past the end of the queue; see `max_offset`.
    OffsetOutOfRange = 2,
    /// The requested offset was deleted by retention; the queue now starts at
    /// `min_offset`. The broker never moves a consumer on by itself.
    OffsetExpired = 3,
}

impl PullStatus {
    pub fn from_u8(value: u8) -> Option<PullStatus> {
        match value {
            0 => Some(PullStatus::Found),
            1 => Some(PullStatus::NoNewMessages),
            2 => Some(PullStatus::OffsetOutOfRange),
            3 => Some(PullStatus::OffsetExpired),
            _ => None,
        }
    }
}

/// Codes carried by an ERROR frame: the request was not carried out (nothing stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame or its body does not follow the format. The connection is closed.
    MalformedFrame = 1,
    /// The frame's version byte is not one this broker speaks. The connection is closed.
    UnsupportedVersion = 2,
    /// The frame's kind is not a request kind. The connection is closed.
    UnknownKind = 3,
    /// The length prefix exceeds `max_frame_bytes`. The connection is closed.
    FrameTooLarge = 4,
    /// The payload exceeds `max_message_bytes`.
    MessageTooLarge = 5,
    /// The message's fields do not match the `message_crc` the producer sent with them.
    MessageCrcMismatch = 6,
    /// The topic does not exist and `auto_create_topics` is off.
    TopicNotFound = 7,
    /// The topic name is empty, too long, or has characters outside `[A-Za-z0-9_.-]`.
    InvalidTopic = 8,
    /// The queue id is not one of the topic's queues.
    InvalidQueueId = 9,
    /// A write or fsync failed; the broker refuses writes until restarted.
    StorageFailed = 10,
    /// The disk is full or below the configured reserve.
    DiskFull = 11,
    /// The broker is stopping and takes no new writes.
    ShuttingDown = 12,
    /// This broker is not a master (reserved for replication).
    NotMaster = 13,
    /// An unexpected broker-side failure; the message says what.
    Internal = 14,
    /// A field has a value outside its allowed range (e.g. zero queues).
    InvalidArgument = 15,
    /// The broker has reached `max_connections`. The connection is closed.
    TooManyConnections = 16,
    /// A consumer committed (or asked about) a queue its group gave to another member:
    /// it must stop consuming that queue.
    NotOwner = 17,
    /// An idempotent producer's (producer id, sequence) is already stored with a
    /// different message (another topic or other contents): this is not a retry.
    SequenceMismatch = 18,
    /// The sequence is older than the window the broker remembers for this producer:
    /// it cannot tell whether it is stored, so it stores nothing now.
    SequenceTooOld = 19,
    /// The broker refused this connection's input to bound its memory (more bytes of
    /// incomplete frames than `partial_frames_max_bytes` across connections, this one
    /// holding the most). The connection is closed.
    Overloaded = 20,
    /// LOGIN failed: unknown user or token, revoked token, or wrong password (one code
    /// for all). The connection is closed.
    AuthenticationFailed = 21,
    /// The request needs a login first (`auth = "required"`), or the credential it
    /// logged in with was revoked. The connection is closed.
    NotAuthenticated = 22,
    /// The principal lacks the permission the request needs. Nothing was done; the
    /// connection stays open.
    PermissionDenied = 23,
    /// Too many failed logins from this address lately; wait and retry. The connection
    /// is closed.
    TooManyLoginFailures = 24,
    /// TLS is needed: plaintext reached a TLS port, or a password came over plaintext
    /// from another host. The connection is closed.
    TlsRequired = 25,
    /// DELETE_TOPIC without `force` of a topic in use: a consumer group has live
    /// members on it, or messages were stored in it in the last minute. Nothing was
    /// deleted.
    TopicInUse = 26,
    /// The broker's queue of this kind of work (reads, slow requests, promotions,
    /// logins) is full: nothing was done; retry shortly. The connection stays open.
    Busy = 27,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 27] = [
        ErrorCode::MalformedFrame,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownKind,
        ErrorCode::FrameTooLarge,
        ErrorCode::MessageTooLarge,
        ErrorCode::MessageCrcMismatch,
        ErrorCode::TopicNotFound,
        ErrorCode::InvalidTopic,
        ErrorCode::InvalidQueueId,
        ErrorCode::StorageFailed,
        ErrorCode::DiskFull,
        ErrorCode::ShuttingDown,
        ErrorCode::NotMaster,
        ErrorCode::Internal,
        ErrorCode::InvalidArgument,
        ErrorCode::TooManyConnections,
        ErrorCode::NotOwner,
        ErrorCode::SequenceMismatch,
        ErrorCode::SequenceTooOld,
        ErrorCode::Overloaded,
        ErrorCode::AuthenticationFailed,
        ErrorCode::NotAuthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::TooManyLoginFailures,
        ErrorCode::TlsRequired,
        ErrorCode::TopicInUse,
        ErrorCode::Busy,
    ];

    pub fn from_u16(value: u16) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| *code as u16 == value)
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "MALFORMED_FRAME",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::UnknownKind => "UNKNOWN_KIND",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorCode::MessageCrcMismatch => "MESSAGE_CRC_MISMATCH",
            ErrorCode::TopicNotFound => "TOPIC_NOT_FOUND",
            ErrorCode::InvalidTopic => "INVALID_TOPIC",
            ErrorCode::InvalidQueueId => "INVALID_QUEUE_ID",
            ErrorCode::StorageFailed => "STORAGE_FAILED",
            ErrorCode::DiskFull => "DISK_FULL",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::NotMaster => "NOT_MASTER",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::TooManyConnections => "TOO_MANY_CONNECTIONS",
            ErrorCode::NotOwner => "NOT_OWNER",
            ErrorCode::SequenceMismatch => "SEQUENCE_MISMATCH",
            ErrorCode::SequenceTooOld => "SEQUENCE_TOO_OLD",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::AuthenticationFailed => "AUTHENTICATION_FAILED",
            ErrorCode::NotAuthenticated => "NOT_AUTHENTICATED",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::TooManyLoginFailures => "TOO_MANY_LOGIN_FAILURES",
            ErrorCode::TlsRequired => "TLS_REQUIRED",
            ErrorCode::TopicInUse => "TOPIC_IN_USE",
            ErrorCode::Busy => "BUSY",
        }
    }

    /// Whether the broker closes the connection after this error (docs/PROTOCOL.md,
    /// the error table's "connection" column).
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::MalformedFrame
                | ErrorCode::UnsupportedVersion
                | ErrorCode::UnknownKind
                | ErrorCode::FrameTooLarge
                | ErrorCode::TooManyConnections
                | ErrorCode::Overloaded
                | ErrorCode::AuthenticationFailed
                | ErrorCode::NotAuthenticated
                | ErrorCode::TooManyLoginFailures
                | ErrorCode::TlsRequired
        )
    }

    /// Whether a producer may retry the same send (on this or another broker).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::StorageFailed
                | ErrorCode::DiskFull
                | ErrorCode::ShuttingDown
                | ErrorCode::NotMaster
                | ErrorCode::Internal
                | ErrorCode::TooManyConnections
                | ErrorCode::Overloaded
                | ErrorCode::Busy
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u16)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn no_duplicate_codes() {
        let errors: HashSet<u16> = ErrorCode::ALL.iter().map(|code| *code as u16).collect();
        assert_eq!(errors.len(), ErrorCode::ALL.len());
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(code as u16), Some(code));
        }
        let statuses: HashSet<u16> = SendStatus::ALL.iter().map(|s| *s as u16).collect();
        assert_eq!(statuses.len(), SendStatus::ALL.len());
        for status in SendStatus::ALL {
            assert_eq!(SendStatus::from_u16(status as u16), Some(status));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(SendStatus::from_u16(5), None);
    }
}
