//! The controller port's frames: the checksummed envelope of `keel_protocol::envelope`
//! (`u32 length` (bytes after itself, 5..=16 MiB) `| u32 crc32c` (of kind and body) `| u8
//! kind | body`, little-endian, like the HA stream). The body is JSON (serde_json) of the
//! request or reply for `kind`. A frame out of bounds or whose CRC does not match ends
//! the connection; nothing is allocated before the length is checked.

use std::io::{self, Read, Write};

/// Largest frame accepted (a snapshot chunk or a batch of log entries fits well inside).
pub const MAX_FRAME_BYTES: u32 = 16 << 20;

pub const APPEND_ENTRIES: u8 = 0x01;
pub const VOTE: u8 = 0x02;
pub const INSTALL_SNAPSHOT: u8 = 0x03;
/// The cluster token (the body, as bytes), first on a connection to a controller that
/// requires it; answered REPLY `{}` or ERROR.
pub const LOGIN: u8 = 0x04;
pub const BROKER_HEARTBEAT: u8 = 0x10;
pub const DESCRIBE: u8 = 0x11;
pub const ELECT: u8 = 0x12;
/// A reply: the body is the JSON of the request kind's answer.
pub const REPLY: u8 = 0x80;
/// A refusal of the frame itself (unknown kind, undecodable body): the body is text.
pub const ERROR: u8 = 0xFF;

/// Reads one frame from a blocking stream.
pub fn read_frame(stream: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    keel_net::envelope::read(stream, MAX_FRAME_BYTES)
}

/// Writes one frame to a blocking stream and flushes it.
pub fn write_frame(stream: &mut impl Write, kind: u8, body: &[u8]) -> io::Result<()> {
    keel_net::envelope::write(stream, kind, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_damage_is_refused() {
        let mut frame = Vec::new();
        write_frame(&mut frame, DESCRIBE, b"{}").unwrap();
        let (kind, body) = read_frame(&mut &frame[..]).unwrap();
        assert_eq!((kind, body.as_slice()), (DESCRIBE, &b"{}"[..]));
        for bit in 0..(frame.len() * 8) {
            let mut damaged = frame.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(read_frame(&mut &damaged[..]).is_err(), "bit {bit}");
        }
        let huge = (MAX_FRAME_BYTES + 1).to_le_bytes();
        assert!(read_frame(&mut &huge[..]).is_err());
        assert!(read_frame(&mut &4u32.to_le_bytes()[..]).is_err());
    }
}
