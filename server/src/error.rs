//! The server's errors: a refused request (`Refusal`, the error frame that answers it)
//! and why keeld could not run (`BrokerError`).

use keel_protocol::{ErrorCode, Response};
use keel_replication::ReplicationError;
use keel_storage::{AppendError, StoreError};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A request refused: the code and text of the ERROR frame that answers it. For a
/// send, nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::InvalidArgument, message)
    }

    pub fn internal(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::Internal, message)
    }

    pub fn response(self) -> Response {
        Response::error(self.code, self.message)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<AppendError> for Refusal {
    fn from(error: AppendError) -> Refusal {
        let code = match &error {
            AppendError::InvalidTopic(_) => ErrorCode::InvalidTopic,
            AppendError::TopicNotFound(_) => ErrorCode::TopicNotFound,
            AppendError::TopicBeingDeleted(_) => ErrorCode::TopicInUse,
            AppendError::InvalidQueueId { .. } => ErrorCode::InvalidQueueId,
            AppendError::StorageFailed => ErrorCode::StorageFailed,
            AppendError::DiskFull => ErrorCode::DiskFull,
            AppendError::ShuttingDown => ErrorCode::ShuttingDown,
            AppendError::SequenceTooOld { .. } => ErrorCode::SequenceTooOld,
            AppendError::SequenceMismatch { .. } => ErrorCode::SequenceMismatch,
            AppendError::SequenceZero { .. } => ErrorCode::InvalidArgument,
            AppendError::RecordTooLarge { .. } => ErrorCode::MessageTooLarge,
        };
        Refusal::new(code, error.to_string())
    }
}

impl From<StoreError> for Refusal {
    fn from(error: StoreError) -> Refusal {
        let code = match &error {
            StoreError::TopicNotFound(_) => ErrorCode::TopicNotFound,
            StoreError::TopicBeingDeleted(_) => ErrorCode::TopicInUse,
            StoreError::InvalidTopic(_) => ErrorCode::InvalidTopic,
            StoreError::InvalidQueueId { .. } => ErrorCode::InvalidQueueId,
            StoreError::InvalidArgument(_) | StoreError::BelowLogStart { .. } => {
                ErrorCode::InvalidArgument
            }
            StoreError::Io { .. } | StoreError::Locked { .. } | StoreError::Corruption { .. } => {
                ErrorCode::Internal
            }
        };
        Refusal::new(code, error.to_string())
    }
}

/// Why keeld could not start, or why it stopped with an error.
#[derive(Debug)]
pub enum BrokerError {
    /// The client port could not be bound or listened on.
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// The data directory could not be opened: locked, damaged, or unreadable.
    OpenStore {
        data_dir: PathBuf,
        source: StoreError,
    },
    /// A step of the store failed (recording an epoch, creating a topic).
    Store { context: String, source: StoreError },
    /// A thread, poller, socket or file the broker needs could not be made.
    Setup {
        context: String,
        source: std::io::Error,
    },
    /// Replication could not start.
    Replication(ReplicationError),
    /// The name servers know a newer master of this broker name: starting as a master
    /// would fork the history.
    Superseded(String),
    /// A certificate, key, token file or the security state could not be used.
    Security(String),
    /// The commit log failed while running: what was appended past `offset_flushed`
    /// was not made durable.
    StorageFailed {
        offset_flushed: u64,
        records_flushed: u64,
        unflushed_bytes: u64,
    },
}

impl BrokerError {
    pub(crate) fn setup(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| BrokerError::Setup { context, source }
    }

    pub(crate) fn store(context: impl Into<String>) -> impl FnOnce(StoreError) -> Self {
        let context = context.into();
        move |source| BrokerError::Store { context, source }
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerError::Listen { address, source } => {
                write!(f, "cannot listen on {address}: {source}")
            }
            BrokerError::OpenStore {
                data_dir,
                source: source @ StoreError::Corruption { .. },
            } => write!(
                f,
                "cannot open the data directory {dir}: {source}. Next: `keel admin verify \
                 {dir}` says what is damaged; to accept losing every message from the damaged \
                 record on, `keel admin truncate {dir} --offset <its log offset> \
                 --discard-acknowledged-messages` (docs/OPERATIONS.md, \"Offline tools\")",
                dir = data_dir.display()
            ),
            BrokerError::OpenStore { data_dir, source } => write!(
                f,
                "cannot open the data directory {}: {source}",
                data_dir.display()
            ),
            BrokerError::Store { context, source } => write!(f, "{context}: {source}"),
            BrokerError::Setup { context, source } => write!(f, "{context}: {source}"),
            BrokerError::Replication(error) => write!(f, "cannot start replication: {error}"),
            BrokerError::Superseded(detail) => f.write_str(detail),
            BrokerError::Security(detail) => write!(f, "security: {detail}"),
            BrokerError::StorageFailed {
                offset_flushed,
                records_flushed,
                unflushed_bytes,
            } => write!(
                f,
                "stopped after a storage failure: the log is durable only up to offset \
                 {offset_flushed} ({records_flushed} records); {unflushed_bytes} bytes \
                 appended after it were not made durable. Restart keeld to recover (see \
                 docs/OPERATIONS.md, \"Recovery\")"
            ),
        }
    }
}

impl std::error::Error for BrokerError {}

/// keeld's exit statuses (docs/OPERATIONS.md, "Running keeld"): systemd restarts on 1,
/// and not on 3, which a restart would only repeat.
pub mod exit {
    /// Stopped cleanly.
    pub const OK: u8 = 0;
    /// Failed: cannot listen, a storage failure while running, a peer refused it.
    pub const FAILURE: u8 = 1;
    /// The configuration (file, flags, certificates) is not usable.
    pub const CONFIG: u8 = 2;
    /// Refuses to start on damaged acknowledged data: an operator must look
    /// (`keel admin verify`, then `keel admin truncate` if the loss is accepted).
    pub const CORRUPT_DATA: u8 = 3;
}

impl BrokerError {
    /// The exit status for this error.
    pub fn exit_status(&self) -> u8 {
        match self {
            BrokerError::OpenStore {
                source: StoreError::Corruption { .. },
                ..
            } => exit::CORRUPT_DATA,
            BrokerError::Security(_) => exit::CONFIG,
            _ => exit::FAILURE,
        }
    }
}
