//! Why a replication session ended. Every session failure is one of these; the session
//! is retried (a slave reconnects with backoff, a master waits for the slave to).

use keel_storage::StoreError;
use std::fmt;

#[derive(Debug)]
pub enum ReplicationError {
    /// A socket step failed: the peer went away, timed out, or sent bytes that did not
    /// decode (a damaged frame fails its CRC32C here).
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The local store refused or failed a step.
    Store { context: String, source: StoreError },
    /// The peer broke the protocol: a frame or an offset that cannot come next.
    Protocol(String),
    /// The two logs cannot be matched without risking acknowledged records: nothing
    /// was changed, and the operator must act (the text says how).
    Diverged(String),
    /// The master refused this slave, with its reason.
    Refused(String),
}

impl ReplicationError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| ReplicationError::Io { context, source }
    }

    pub(crate) fn store(context: impl Into<String>) -> impl FnOnce(StoreError) -> Self {
        let context = context.into();
        move |source| ReplicationError::Store { context, source }
    }
}

impl fmt::Display for ReplicationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicationError::Io { context, source } => write!(f, "{context}: {source}"),
            ReplicationError::Store { context, source } => write!(f, "{context}: {source}"),
            ReplicationError::Protocol(detail) | ReplicationError::Diverged(detail) => {
                f.write_str(detail)
            }
            ReplicationError::Refused(reason) => write!(f, "the master refused: {reason}"),
        }
    }
}

impl std::error::Error for ReplicationError {}
