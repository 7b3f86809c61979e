use std::fmt;

/// The frame version this side speaks (byte 4 of every frame).
pub const PROTOCOL_VERSION: u8 = 2;

/// Why a byte sequence is not a valid frame, body or record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The length prefix is larger than the configured maximum.
    FrameTooLarge {
        length: u64,
        max: u32,
    },
    /// The length prefix is smaller than the fixed header (`min` bytes after it).
    FrameTooShort {
        length: u32,
        min: u32,
    },
    UnsupportedVersion(u8),
    UnknownKind(u8),
    /// A field runs past the end of its enclosing buffer.
    Truncated {
        field: &'static str,
        need: usize,
        have: usize,
    },
    /// Bytes remain after the last field of a body.
    TrailingBytes {
        kind: &'static str,
        count: usize,
    },
    InvalidUtf8 {
        field: &'static str,
    },
    InvalidValue {
        field: &'static str,
        value: u64,
    },
    BadMagic {
        found: u32,
    },
    ChecksumMismatch {
        stored: u32,
        computed: u32,
    },
    /// The record's declared size disagrees with its fields.
    SizeMismatch {
        declared: u32,
        actual: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::FrameTooLarge { length, max } => {
                write!(f, "frame of {length} bytes exceeds max_frame_bytes {max}")
            }
            DecodeError::FrameTooShort { length, min } => {
                write!(
                    f,
                    "frame length {length} is shorter than its {min}-byte header"
                )
            }
            DecodeError::UnsupportedVersion(version) => {
                write!(
                    f,
                    "unsupported protocol version {version} (this side speaks {})",
                    PROTOCOL_VERSION
                )
            }
            DecodeError::UnknownKind(kind) => write!(f, "unknown frame kind 0x{kind:02X}"),
            DecodeError::Truncated { field, need, have } => {
                write!(f, "field {field} needs {need} bytes, {have} left")
            }
            DecodeError::TrailingBytes { kind, count } => {
                write!(f, "{count} unexpected trailing byte(s) after {kind} body")
            }
            DecodeError::InvalidUtf8 { field } => write!(f, "field {field} is not valid UTF-8"),
            DecodeError::InvalidValue { field, value } => {
                write!(f, "field {field} has invalid value {value}")
            }
            DecodeError::BadMagic { found } => write!(f, "bad record magic 0x{found:08X}"),
            DecodeError::ChecksumMismatch { stored, computed } => write!(
                f,
                "CRC32C mismatch: stored 0x{stored:08X}, computed 0x{computed:08X}"
            ),
            DecodeError::SizeMismatch { declared, actual } => {
                write!(
                    f,
                    "record declares {declared} bytes but its fields take {actual}"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}
