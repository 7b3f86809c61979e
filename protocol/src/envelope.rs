//! The checksummed envelope of the HA stream and of the controller port, a pure codec:
//!
//! ```text
//! u32 length (bytes after itself, 5..=max) | u32 crc32c (of kind and body) | u8 kind | body
//! ```
//!
//! Little-endian. A frame outside its bounds, or whose CRC does not match, is refused
//! before its kind is looked at; nothing is allocated before the length is checked (the
//! blocking reader is `keel_net::envelope`).

use crate::DecodeError;

/// Bytes before the kind: the length prefix and the CRC.
pub const HEADER_LEN: usize = 8;
/// The smallest length prefix: the CRC and the kind.
pub const MIN_LENGTH: u32 = 5;

/// Starts a frame of `kind` at the end of `out`; the body follows, then `seal`.
pub fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    out.push(kind);
    start
}

/// Fills in the length and CRC of the frame begun at `start`, now that its body is in
/// `out`.
pub fn seal(out: &mut [u8], start: usize) {
    let Some(frame) = out.get_mut(start..) else {
        return;
    };
    let length = u32::try_from(frame.len().saturating_sub(4)).unwrap_or(u32::MAX);
    let crc = frame.get(HEADER_LEN..).map_or(0, crc32c::crc32c);
    if let Some(field) = frame.get_mut(..4) {
        field.copy_from_slice(&length.to_le_bytes());
    }
    if let Some(field) = frame.get_mut(4..HEADER_LEN) {
        field.copy_from_slice(&crc.to_le_bytes());
    }
}

/// The whole frame for `kind` and `body`.
pub fn encode(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN.saturating_add(1).saturating_add(body.len()));
    let start = begin(&mut out, kind);
    out.extend_from_slice(body);
    seal(&mut out, start);
    out
}

/// Checks a length prefix before anything is read for its frame; the bytes that follow
/// it, as a `usize`.
pub fn check_length(length: u32, max: u32) -> Result<usize, DecodeError> {
    if length < MIN_LENGTH {
        return Err(DecodeError::FrameTooShort {
            length,
            min: MIN_LENGTH,
        });
    }
    if length > max {
        return Err(DecodeError::FrameTooLarge {
            length: u64::from(length),
            max,
        });
    }
    usize::try_from(length).map_err(|_| DecodeError::FrameTooLarge {
        length: u64::from(length),
        max,
    })
}

/// Splits what follows a length prefix into kind and body, checking the CRC.
pub fn open(after_length: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    let Some((crc, kind_and_body)) = after_length.split_first_chunk::<4>() else {
        return Err(DecodeError::Truncated {
            field: "crc",
            need: 4,
            have: after_length.len(),
        });
    };
    let stored = u32::from_le_bytes(*crc);
    let computed = crc32c::crc32c(kind_and_body);
    if stored != computed {
        return Err(DecodeError::ChecksumMismatch { stored, computed });
    }
    let Some((kind, body)) = kind_and_body.split_first() else {
        return Err(DecodeError::Truncated {
            field: "kind",
            need: 1,
            have: 0,
        });
    };
    Ok((*kind, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_any_flipped_bit_is_refused() {
        let frame = encode(0x11, b"{}");
        let length = u32::from_le_bytes(frame[..4].try_into().unwrap());
        assert_eq!(check_length(length, 1 << 20).unwrap(), frame.len() - 4);
        assert_eq!(open(&frame[4..]).unwrap(), (0x11, &b"{}"[..]));
        for bit in 32..(frame.len() * 8) {
            let mut damaged = frame.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(open(&damaged[4..]).is_err(), "bit {bit}");
        }
        assert!(check_length(4, 1 << 20).is_err());
        assert!(check_length((1 << 20) + 1, 1 << 20).is_err());
        assert!(open(&[]).is_err());
        assert!(open(&crc32c::crc32c(&[]).to_le_bytes()).is_err());
    }
}
