use std::fmt;
use std::io;
use std::path::PathBuf;

/// Failures opening or running the store.
#[derive(Debug)]
pub enum StoreError {
    Io {
        context: String,
        source: io::Error,
    },
    /// Another process holds the data directory.
    Locked {
        path: PathBuf,
    },
    /// Durable data is damaged; the broker must not start on it.
    Corruption {
        path: PathBuf,
        position: u64,
        detail: String,
    },
    InvalidTopic(String),
    TopicNotFound(String),
    /// The topic's deletion is not yet durable: it cannot be made again before.
    TopicBeingDeleted(String),
    InvalidQueueId {
        topic: String,
        queue_id: u32,
        queues: u32,
    },
    /// The log offset asked for was deleted by retention.
    BelowLogStart {
        offset: u64,
        log_start: u64,
    },
    InvalidArgument(String),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> StoreError {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { context, source } => write!(f, "{context}: {source}"),
            StoreError::Locked { path } => write!(
                f,
                "data directory is in use by another keeld (lock held on {})",
                path.display()
            ),
            StoreError::Corruption {
                path,
                position,
                detail,
            } => write!(
                f,
                "corruption in {} at byte {position}: {detail}",
                path.display()
            ),
            StoreError::InvalidTopic(detail) => write!(f, "invalid topic: {detail}"),
            StoreError::TopicNotFound(topic) => write!(f, "topic {topic:?} does not exist"),
            StoreError::TopicBeingDeleted(topic) => write!(f, "{}", being_deleted(topic)),
            StoreError::InvalidQueueId {
                topic,
                queue_id,
                queues,
            } => write!(
                f,
                "queue {queue_id} does not exist in topic {topic:?} (it has {queues} queues)"
            ),
            StoreError::BelowLogStart { offset, log_start } => write!(
                f,
                "log offset {offset} was deleted by retention (the log starts at {log_start})"
            ),
            StoreError::InvalidArgument(detail) => f.write_str(detail),
        }
    }
}

impl std::error::Error for StoreError {}

/// Why an append was refused. Nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendError {
    InvalidTopic(String),
    TopicNotFound(String),
    /// The topic's deletion is not yet durable: it cannot be made again before.
    TopicBeingDeleted(String),
    InvalidQueueId {
        queue_id: u32,
        queues: u32,
    },
    /// A write or fsync failed earlier; the log takes no writes until restarted.
    StorageFailed,
    /// The disk is full, or free space is below `disk_min_free_bytes`.
    DiskFull,
    ShuttingDown,
    /// An idempotent producer's sequence is older than the window the broker keeps:
    /// whether it was stored cannot be told, so it is not stored again.
    SequenceTooOld {
        producer_id: u64,
        sequence: u64,
        oldest: u64,
    },
    /// The (producer id, sequence) is stored with another message: not a retry.
    SequenceMismatch {
        producer_id: u64,
        sequence: u64,
        detail: String,
    },
    /// A producer id with sequence 0: idempotent producers number from 1.
    SequenceZero {
        producer_id: u64,
    },
    /// The stored record would be larger than recovery accepts as plausible.
    RecordTooLarge {
        size: u64,
        max: u32,
    },
}

impl fmt::Display for AppendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppendError::InvalidTopic(detail) => write!(f, "invalid topic: {detail}"),
            AppendError::TopicNotFound(topic) => write!(f, "topic {topic:?} does not exist"),
            AppendError::TopicBeingDeleted(topic) => write!(f, "{}", being_deleted(topic)),
            AppendError::InvalidQueueId { queue_id, queues } => {
                write!(
                    f,
                    "queue {queue_id} does not exist (the topic has {queues} queues)"
                )
            }
            AppendError::StorageFailed => {
                f.write_str("storage failed (a write or fsync error); restart required")
            }
            AppendError::DiskFull => f.write_str(
                "the disk is full (or below disk_min_free_bytes); writes resume when space is freed",
            ),
            AppendError::ShuttingDown => f.write_str("broker is shutting down"),
            AppendError::SequenceTooOld {
                producer_id,
                sequence,
                oldest,
            } => write!(
                f,
                "producer {producer_id:016x} sequence {sequence} is older than the oldest one \
                 this broker remembers ({oldest}); it may already be stored and is not stored again"
            ),
            AppendError::SequenceMismatch {
                producer_id,
                sequence,
                detail,
            } => write!(
                f,
                "producer {producer_id:016x} sequence {sequence} {detail}; a sequence may be \
                 reused only to retry the very same message"
            ),
            AppendError::SequenceZero { producer_id } => write!(
                f,
                "producer {producer_id:016x} sent sequence 0; idempotent producers number \
                 their messages from 1 (or send producer id 0 to opt out)"
            ),
            AppendError::RecordTooLarge { size, max } => write!(
                f,
                "the message would be stored as a record of {size} bytes, more than the \
                 {max} this broker accepts (max_message_bytes + headers, tags, keys and properties)"
            ),
        }
    }
}

fn being_deleted(topic: &str) -> String {
    format!(
        "topic {topic:?} is being deleted (its deletion is not yet on disk): it can be made \
         again in a moment; nothing was stored"
    )
}
