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
    InvalidQueueId {
        topic: String,
        queue_id: u32,
        queues: u32,
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
            StoreError::InvalidQueueId {
                topic,
                queue_id,
                queues,
            } => write!(
                f,
                "queue {queue_id} does not exist in topic {topic:?} (it has {queues} queues)"
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
}

impl fmt::Display for AppendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppendError::InvalidTopic(detail) => write!(f, "invalid topic: {detail}"),
            AppendError::TopicNotFound(topic) => write!(f, "topic {topic:?} does not exist"),
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
        }
    }
}
