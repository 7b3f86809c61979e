//! The checksummed envelope (`keel_protocol::envelope`) on a blocking stream: the HA
//! stream and the controller port's blocking clients.

use keel_protocol::envelope;
use std::io::{self, Read, Write};

/// What a frame's buffer starts with, whatever its length prefix claims: memory grows
/// with the bytes that arrive.
const INITIAL_BUFFER: usize = 64 << 10;

fn invalid(error: keel_protocol::DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

/// Reads one frame, refusing a length over `max` before allocating for it and a frame
/// whose CRC does not match. Returns the bytes after the length prefix, checked: open
/// them with `keel_protocol::envelope::open` (or the frame's own decoder).
pub fn read_raw(stream: &mut impl Read, max: u32) -> io::Result<Vec<u8>> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix)?;
    let length = envelope::check_length(u32::from_le_bytes(prefix), max).map_err(invalid)?;
    let mut rest = Vec::with_capacity(length.min(INITIAL_BUFFER));
    stream
        .take(u64::try_from(length).unwrap_or(u64::MAX))
        .read_to_end(&mut rest)?;
    if rest.len() != length {
        let detail = format!("frame cut short: {} of {length} bytes", rest.len());
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, detail));
    }
    envelope::open(&rest).map_err(invalid)?;
    Ok(rest)
}

/// Reads one frame: its kind and body.
pub fn read(stream: &mut impl Read, max: u32) -> io::Result<(u8, Vec<u8>)> {
    let rest = read_raw(stream, max)?;
    // `read_raw` checked the CRC and that a kind follows it.
    let kind = rest.get(4).copied().unwrap_or_default();
    Ok((kind, rest.get(5..).unwrap_or_default().to_vec()))
}

/// Writes one frame and flushes it.
pub fn write(stream: &mut impl Write, kind: u8, body: &[u8]) -> io::Result<()> {
    stream.write_all(&envelope::encode(kind, body))?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_a_byte_stream_and_damage_or_cuts_are_refused() {
        let mut out = Vec::new();
        write(&mut out, 0x05, b"body").unwrap();
        assert_eq!(read(&mut &out[..], 1024).unwrap(), (0x05, b"body".to_vec()));
        for bit in 0..(out.len() * 8) {
            let mut damaged = out.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(read(&mut &damaged[..], 1024).is_err(), "bit {bit}");
        }
        assert!(read(&mut &out[..out.len() - 1], 1024).is_err());
        assert!(read(&mut &out[..], 8).is_err());
        let huge = [0xFFu8, 0xFF, 0xFF, 0xFF, 0x04];
        assert!(read(&mut &huge[..], 1 << 24).is_err());
    }
}
