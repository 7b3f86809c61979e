//! Frame header: length prefix, version, kind, flags, request id.

use crate::DecodeError;
use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use crate::error::PROTOCOL_VERSION;
pub const LENGTH_PREFIX_LEN: usize = 4;
pub const FRAME_HEADER_LEN: usize = 16;
/// The request must not be answered (oneway send). Errors are not answered either.
pub const FLAG_ONEWAY: u16 = 1;
/// Every flag bit a frame may carry; the others are reserved and must be 0.
pub const FLAGS_KNOWN: u16 = FLAG_ONEWAY;

const _: () = assert!(FRAME_HEADER_LEN == LENGTH_PREFIX_LEN + 12);

macro_rules! kinds {
    ($($name:ident = $code:literal, $text:literal;)*) => {
        /// Every frame kind. Requests are below 0x80, responses at or above.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Kind { $($name = $code,)* }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$name,)*];

            pub fn from_u8(code: u8) -> Option<Kind> {
                match code {
                    $($code => Some(Kind::$name),)*
                    _ => None,
                }
            }

            pub fn name(self) -> &'static str {
                match self { $(Kind::$name => $text,)* }
            }
        }
    };
}

kinds! {
    Ping = 0x01, "PING";
    Send = 0x02, "SEND";
    Pull = 0x03, "PULL";
    CommitOffset = 0x04, "COMMIT_OFFSET";
    QueryOffset = 0x05, "QUERY_OFFSET";
    CreateTopic = 0x06, "CREATE_TOPIC";
    ListTopics = 0x07, "LIST_TOPICS";
    Stats = 0x08, "STATS";
    SendBatch = 0x09, "SEND_BATCH";
    Promote = 0x0A, "PROMOTE";
    RegisterBroker = 0x0B, "REGISTER_BROKER";
    GetRoutes = 0x0C, "GET_ROUTES";
    Heartbeat = 0x0D, "HEARTBEAT";
    GroupCommit = 0x0E, "GROUP_COMMIT";
    SendBack = 0x0F, "SEND_BACK";
    OffsetForTime = 0x10, "OFFSET_FOR_TIME";
    MessageInfo = 0x11, "MESSAGE_INFO";
    Login = 0x12, "LOGIN";
    SecurityAdmin = 0x13, "SECURITY_ADMIN";
    ListGroups = 0x14, "LIST_GROUPS";
    TopicStats = 0x15, "TOPIC_STATS";
    AddQueues = 0x16, "ADD_QUEUES";
    GetBrokers = 0x17, "GET_BROKERS";
    DeleteTopic = 0x18, "DELETE_TOPIC";
    DeleteGroup = 0x19, "DELETE_GROUP";
    GroupSettings = 0x1A, "GROUP_SETTINGS";
    EndTransaction = 0x1B, "END_TRANSACTION";
    CheckTransactions = 0x1C, "CHECK_TRANSACTIONS";
    ListTransactions = 0x1D, "LIST_TRANSACTIONS";
    Pong = 0x81, "PONG";
    SendResult = 0x82, "SEND_RESULT";
    PullResult = 0x83, "PULL_RESULT";
    CommitOffsetOk = 0x84, "COMMIT_OFFSET_OK";
    Offset = 0x85, "OFFSET";
    TopicCreated = 0x86, "TOPIC_CREATED";
    TopicList = 0x87, "TOPIC_LIST";
    StatsResult = 0x88, "STATS_RESULT";
    SendBatchResult = 0x89, "SEND_BATCH_RESULT";
    Promoted = 0x8A, "PROMOTED";
    Registered = 0x8B, "REGISTERED";
    Routes = 0x8C, "ROUTES";
    Assignment = 0x8D, "ASSIGNMENT";
    Info = 0x8E, "INFO";
    LoginOk = 0x8F, "LOGIN_OK";
    SecurityResult = 0x90, "SECURITY_RESULT";
    GroupList = 0x91, "GROUP_LIST";
    TopicStatsResult = 0x92, "TOPIC_STATS_RESULT";
    Brokers = 0x93, "BROKERS";
    TopicDeleted = 0x94, "TOPIC_DELETED";
    GroupDeleted = 0x95, "GROUP_DELETED";
    GroupSettingsResult = 0x96, "GROUP_SETTINGS_RESULT";
    TransactionEnded = 0x97, "TRANSACTION_ENDED";
    TransactionChecks = 0x98, "TRANSACTION_CHECKS";
    Transactions = 0x99, "TRANSACTIONS";
    Error = 0xFF, "ERROR";
}

impl Kind {
    pub fn is_request(self) -> bool {
        (self as u8) < 0x80
    }
}

/// A whole frame whose header has been checked; the body is not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub kind: Kind,
    pub flags: u16,
    pub request_id: u64,
    pub body: Bytes,
}

impl RawFrame {
    pub fn is_oneway(&self) -> bool {
        self.flags & FLAG_ONEWAY != 0
    }
}

/// Takes one whole frame off the front of `buffer`.
///
/// `Ok(None)` means more bytes are needed. A length prefix over `max_frame_bytes`, a
/// wrong version, an unknown kind or a reserved flag bit is reported as soon as the
/// bytes that show it have arrived, before anything is allocated for the body; the bad
/// frame stays in `buffer` (`peek_request_id` reads its id).
pub fn decode_frame(
    buffer: &mut BytesMut,
    max_frame_bytes: u32,
) -> Result<Option<RawFrame>, DecodeError> {
    let Some(prefix) = buffer.get(..LENGTH_PREFIX_LEN) else {
        return Ok(None);
    };
    let mut length_bytes = [0u8; 4];
    length_bytes.copy_from_slice(prefix);
    let length = u32::from_le_bytes(length_bytes);
    let frame_len = u64::from(length).saturating_add(LENGTH_PREFIX_LEN as u64);
    if frame_len > u64::from(max_frame_bytes) {
        return Err(DecodeError::FrameTooLarge {
            length: frame_len,
            max: max_frame_bytes,
        });
    }
    if (length as usize) < FRAME_HEADER_LEN.saturating_sub(LENGTH_PREFIX_LEN) {
        return Err(DecodeError::FrameTooShort { length, min: 12 });
    }
    if let Some(&version) = buffer.get(4) {
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
    }
    let kind = match buffer.get(5) {
        Some(&code) => Some(Kind::from_u8(code).ok_or(DecodeError::UnknownKind(code))?),
        None => None,
    };
    if let (Some(&low), Some(&high)) = (buffer.get(6), buffer.get(7)) {
        let flags = u16::from_le_bytes([low, high]);
        if flags & !FLAGS_KNOWN != 0 {
            return Err(DecodeError::InvalidValue {
                field: "flags",
                value: u64::from(flags),
            });
        }
    }
    let frame_len = usize::try_from(frame_len).map_err(|_| DecodeError::FrameTooLarge {
        length: frame_len,
        max: max_frame_bytes,
    })?;
    let (Some(kind), true) = (kind, buffer.len() >= frame_len) else {
        return Ok(None);
    };
    let mut frame = buffer.split_to(frame_len).freeze();
    frame.advance(6);
    let flags = frame.get_u16_le();
    let request_id = frame.get_u64_le();
    Ok(Some(RawFrame {
        kind,
        flags,
        request_id,
        body: frame,
    }))
}

/// The request id of the frame at the front of `buffer`, once its 16-byte header has
/// arrived (whether or not the frame is valid): an error about it can then say which
/// request it answers.
pub fn peek_request_id(buffer: &[u8]) -> Option<u64> {
    let bytes = buffer.get(8..FRAME_HEADER_LEN)?;
    let mut id = [0u8; 8];
    id.copy_from_slice(bytes);
    Some(u64::from_le_bytes(id))
}

/// Appends the header of a frame to `out` and returns where the frame starts; the body
/// is written next, then `end_frame` fills in the length.
pub(crate) fn begin_frame(out: &mut Vec<u8>, kind: Kind, flags: u16, request_id: u64) -> usize {
    let start = out.len();
    out.put_u32_le(0);
    out.put_u8(PROTOCOL_VERSION);
    out.put_u8(kind as u8);
    out.put_u16_le(flags);
    out.put_u64_le(request_id);
    start
}

pub(crate) fn end_frame(out: &mut [u8], start: usize) {
    let length = out
        .len()
        .saturating_sub(start)
        .saturating_sub(LENGTH_PREFIX_LEN);
    let length = u32::try_from(length).unwrap_or(u32::MAX);
    if let Some(prefix) = out.get_mut(start..start.saturating_add(LENGTH_PREFIX_LEN)) {
        prefix.copy_from_slice(&length.to_le_bytes());
    }
}

/// Appends a whole frame with an already-encoded body.
pub fn encode_frame(out: &mut Vec<u8>, kind: Kind, flags: u16, request_id: u64, body: &[u8]) {
    let start = begin_frame(out, kind, flags, request_id);
    out.put_slice(body);
    end_frame(out, start);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn no_duplicate_kinds_in_table() {
        let codes: HashSet<u8> = Kind::ALL.iter().map(|kind| *kind as u8).collect();
        assert_eq!(codes.len(), Kind::ALL.len());
        for kind in Kind::ALL {
            assert_eq!(Kind::from_u8(*kind as u8), Some(*kind));
        }
    }

    #[test]
    fn oversized_prefix_rejected_before_body_arrives() {
        let mut buffer = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        let error = decode_frame(&mut buffer, 1024).unwrap_err();
        assert!(matches!(error, DecodeError::FrameTooLarge { .. }));
    }

    #[test]
    fn partial_frame_waits() {
        let mut out = Vec::new();
        encode_frame(&mut out, Kind::Ping, 0, 7, &[]);
        let mut buffer = BytesMut::from(&out[..10]);
        assert_eq!(decode_frame(&mut buffer, 1024).unwrap(), None);
        buffer.extend_from_slice(&out[10..]);
        let frame = decode_frame(&mut buffer, 1024).unwrap().unwrap();
        assert_eq!(frame.kind, Kind::Ping);
        assert_eq!(frame.request_id, 7);
        assert!(buffer.is_empty());
    }

    #[test]
    fn bad_version_and_kind_rejected_early() {
        let mut buffer = BytesMut::from(&[16, 0, 0, 0, 9][..]);
        assert_eq!(
            decode_frame(&mut buffer, 1024),
            Err(DecodeError::UnsupportedVersion(9))
        );
        let mut buffer = BytesMut::from(&[16, 0, 0, 0, PROTOCOL_VERSION, 0x42][..]);
        assert_eq!(
            decode_frame(&mut buffer, 1024),
            Err(DecodeError::UnknownKind(0x42))
        );
    }
}
