//! The HA stream on a socket: blocking reads and writes of the frames whose codec is
//! `keel_protocol::ha`.

use keel_protocol::ha::{HaFrame, HA_FRAME_HEADER_LEN};
use std::io::{Read, Write};

pub use keel_protocol::ha::HA_DATA_CHUNK_BYTES as DATA_CHUNK_BYTES;

/// Writes one frame (blocking).
pub fn write_frame(stream: &mut impl Write, frame: &HaFrame) -> std::io::Result<()> {
    let mut out = Vec::new();
    frame.encode(&mut out);
    stream.write_all(&out)
}

/// Reads one frame (blocking), refusing a length over the limit before allocating for it
/// and a frame whose CRC32C does not match.
pub fn read_frame(stream: &mut impl Read) -> std::io::Result<HaFrame> {
    let invalid = |error: keel_protocol::DecodeError| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string())
    };
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix)?;
    let length = u32::from_le_bytes(prefix);
    HaFrame::check_length(length).map_err(invalid)?;
    // Grown as bytes arrive, so a peer claiming a large frame and sending nothing does
    // not make us allocate it.
    let mut rest = Vec::with_capacity((length as usize).min(64 * 1024));
    stream.take(u64::from(length)).read_to_end(&mut rest)?;
    if rest.len() != length as usize {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("HA frame cut short: {} of {length} bytes", rest.len()),
        ));
    }
    debug_assert!(rest.len() + 4 >= HA_FRAME_HEADER_LEN);
    HaFrame::decode_checked(&rest).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_a_byte_stream_and_damage_is_refused() {
        let frame = HaFrame::Ack { flushed: 97 };
        let mut out = Vec::new();
        write_frame(&mut out, &frame).unwrap();
        assert_eq!(read_frame(&mut &out[..]).unwrap(), frame);
        let mut damaged = out.clone();
        damaged[9] ^= 1;
        assert!(read_frame(&mut &damaged[..]).is_err());
        assert!(read_frame(&mut &out[..out.len() - 1]).is_err());
        let huge = [0xFFu8, 0xFF, 0xFF, 0xFF, 0x04];
        assert!(read_frame(&mut &huge[..]).is_err());
    }
}
