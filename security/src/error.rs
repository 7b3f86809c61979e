//! Why a security operation was refused or failed. Each says whether anything changed:
//! only `Persist` may leave a change in memory that the file does not hold (the change
//! is then not applied either: state is swapped only after the write).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityError {
    /// A name, password, permission entry, command or state that does not validate.
    /// Nothing changed.
    Invalid(String),
    /// The user, token or entry the command names does not exist. Nothing changed.
    NotFound(String),
    /// The user the command would add exists already. Nothing changed.
    Exists(String),
    /// The security state file could not be read or written (`security.json`). On a
    /// write, nothing changed: the new state is used only once it is on disk.
    Persist(String),
    /// The system's random generator or the password hash failed. Nothing changed.
    Crypto(String),
}

impl SecurityError {
    /// Whether the request was at fault (a client error), not the broker.
    pub fn is_request_error(&self) -> bool {
        matches!(
            self,
            SecurityError::Invalid(_) | SecurityError::NotFound(_) | SecurityError::Exists(_)
        )
    }
}

impl fmt::Display for SecurityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecurityError::Invalid(detail)
            | SecurityError::NotFound(detail)
            | SecurityError::Exists(detail)
            | SecurityError::Persist(detail)
            | SecurityError::Crypto(detail) => f.write_str(detail),
        }
    }
}

impl std::error::Error for SecurityError {}

/// The callers that report errors as text keep doing so (`?` into `String`).
impl From<SecurityError> for String {
    fn from(error: SecurityError) -> String {
        error.to_string()
    }
}
