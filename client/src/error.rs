use keel_protocol::ErrorResponse;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// Not sent, so not carried out (nothing stored): the connection could not be
    /// made, had closed before, or failed while the request was written (the broker
    /// holds at most a prefix of its frame, which it never decodes).
    Connect {
        address: String,
        detail: String,
    },
    /// The connection failed or was closed while the request was in flight: its outcome
    /// is unknown. (A request on a connection already closed is not sent: `Connect`.)
    ConnectionClosed(String),
    /// No answer within the time allowed; the request's outcome is unknown.
    Timeout,
    /// The broker refused the request (nothing was stored).
    Broker(ErrorResponse),
    /// The broker's bytes did not decode.
    Protocol(String),
    /// The consumer's offset was deleted by retention; the queue now starts at
    /// `min_offset`. Moving on (and losing what was in between) is the caller's choice:
    /// `Consumer::seek`, or `keel offsets reset`.
    OffsetExpired {
        queue_id: u32,
        offset: u64,
        min_offset: u64,
    },
    /// A send may or may not be stored: an attempt reached the broker (or may have)
    /// and its answer was lost, and no later attempt settled it. Retry it with the same
    /// producer id and sequence (the broker that has it answers with the original);
    /// never resend it as a new message, which could store it twice.
    OutcomeUnknown(String),
    /// A record failed its CRC32C check on arrival.
    Corrupt {
        queue_id: u32,
        queue_offset: u64,
        detail: String,
    },
    InvalidArgument(String),
    /// The TLS handshake failed for a reason retrying cannot change (a certificate from
    /// a CA not trusted, expired, for another name; TLS on one end only): not sent.
    Tls {
        address: String,
        detail: String,
    },
    /// No broker to send to: the name servers know no master for the topic, or none
    /// of them answered. Nothing was sent.
    NoRoute(String),
    /// The request's frame is over the broker's frame limit
    /// (`ConnectionOptions::max_request_bytes`): refused before sending, nothing stored.
    /// Retrying cannot help; send a smaller message.
    TooLarge {
        bytes: u64,
        max: u32,
    },
}

impl ClientError {
    /// Whether retrying the same request may succeed (possibly storing it twice).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::ConnectionClosed(_)
            | ClientError::Timeout
            | ClientError::NoRoute(_) => true,
            ClientError::Broker(error) => error.code.is_retryable(),
            ClientError::Protocol(_)
            | ClientError::OutcomeUnknown(_)
            | ClientError::Corrupt { .. }
            | ClientError::OffsetExpired { .. }
            | ClientError::InvalidArgument(_)
            | ClientError::Tls { .. }
            | ClientError::TooLarge { .. } => false,
        }
    }

    /// Whether the request may have been carried out although this error came back:
    /// it was sent and no answer that settles it arrived. (`Connect` and `Broker` errors
    /// mean it was not carried out.)
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout
                | ClientError::ConnectionClosed(_)
                | ClientError::Protocol(_)
                | ClientError::OutcomeUnknown(_)
        )
    }

    /// The stable name of a refusal that is certain (nothing stored): the broker's
    /// error code, or `MESSAGE_TOO_LARGE` for a request refused before sending.
    pub fn code_name(&self) -> Option<&'static str> {
        match self {
            ClientError::Broker(error) => Some(error.code.name()),
            ClientError::TooLarge { .. } => Some(keel_protocol::ErrorCode::MessageTooLarge.name()),
            _ => None,
        }
    }

    /// Whether the connection should be dropped and a new one made.
    pub(crate) fn breaks_connection(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::ConnectionClosed(_)
                | ClientError::Protocol(_)
        )
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { address, detail } => {
                write!(f, "cannot connect to {address}: {detail}")
            }
            ClientError::ConnectionClosed(detail) => write!(f, "connection closed: {detail}"),
            ClientError::Timeout => f.write_str("timed out waiting for the broker"),
            ClientError::OutcomeUnknown(detail) => write!(f, "outcome unknown: {detail}"),
            ClientError::Broker(error) => write!(f, "broker error {error}"),
            ClientError::Protocol(detail) => write!(f, "protocol error: {detail}"),
            ClientError::OffsetExpired { queue_id, offset, min_offset } => write!(
                f,
                "offset {offset} of queue {queue_id} was deleted by retention; the queue now starts at {min_offset}"
            ),
            ClientError::Corrupt {
                queue_id,
                queue_offset,
                detail,
            } => {
                write!(
                    f,
                    "corrupt record at queue {queue_id} offset {queue_offset}: {detail}"
                )
            }
            ClientError::InvalidArgument(detail) => f.write_str(detail),
            ClientError::NoRoute(detail) => write!(f, "no route: {detail}; not sent"),
            ClientError::Tls { address, detail } => {
                write!(f, "TLS handshake with {address} failed: {detail}; not sent")
            }
            ClientError::TooLarge { bytes, max } => write!(
                f,
                "MESSAGE_TOO_LARGE: the request is {bytes} bytes, over the broker's frame \
                 limit of {max} (max_frame_bytes); not sent"
            ),
        }
    }
}

impl std::error::Error for ClientError {}
