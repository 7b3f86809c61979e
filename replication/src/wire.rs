//! The HA stream on a socket: blocking reads and writes of the frames whose codec is
//! `keel_protocol::ha`.

use keel_protocol::ha::{HaFrame, HA_FRAME_BYTES_MAX};
use std::io::{Read, Write};

pub use keel_protocol::ha::HA_DATA_CHUNK_BYTES as DATA_CHUNK_BYTES;

/// Writes one frame (blocking).
pub fn write_frame(stream: &mut impl Write, frame: &HaFrame) -> std::io::Result<()> {
    let mut out = Vec::new();
    frame.encode(&mut out);
    stream.write_all(&out)
}

/// Reads one frame (blocking), refusing a length over the limit before allocating for it
/// and a frame whose CRC32C does not match (`keel_net::envelope`).
pub fn read_frame(stream: &mut impl Read) -> std::io::Result<HaFrame> {
    let rest = keel_net::envelope::read_raw(stream, HA_FRAME_BYTES_MAX)?;
    HaFrame::decode_checked(&rest)
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string()))
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
