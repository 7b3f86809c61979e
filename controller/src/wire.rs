//! The controller port's frames: `u32 length` (bytes after itself, 5..=16 MiB) `| u32
//! crc32c` (of kind and body) `| u8 kind | body`, little-endian, like the HA stream. The
//! body is JSON (serde_json) of the request or reply for `kind`. A frame out of bounds or
//! whose CRC does not match ends the connection; nothing is allocated before the length
//! is checked.

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

fn invalid(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail)
}

/// The whole frame for `kind` and `body`.
pub fn encode(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(9 + body.len());
    let length = u32::try_from(5 + body.len()).unwrap_or(u32::MAX);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind]), body);
    frame.extend_from_slice(&length.to_le_bytes());
    frame.extend_from_slice(&crc.to_le_bytes());
    frame.push(kind);
    frame.extend_from_slice(body);
    frame
}

/// Checks a length prefix before anything is allocated for the frame.
pub fn check_length(length: u32) -> io::Result<usize> {
    if !(5..=MAX_FRAME_BYTES).contains(&length) {
        return Err(invalid(format!(
            "controller frame length {length} is outside 5..={MAX_FRAME_BYTES}"
        )));
    }
    usize::try_from(length).map_err(|_| invalid(format!("frame length {length}")))
}

/// Splits what follows the length prefix into kind and body, checking the CRC.
pub fn decode(after_length: &[u8]) -> io::Result<(u8, &[u8])> {
    let (crc, rest) = after_length
        .split_first_chunk::<4>()
        .ok_or_else(|| invalid("controller frame shorter than its CRC".into()))?;
    let stored = u32::from_le_bytes(*crc);
    let computed = crc32c::crc32c(rest);
    if stored != computed {
        return Err(invalid(format!(
            "controller frame CRC32C mismatch: stored {stored:08x}, computed {computed:08x}"
        )));
    }
    let (kind, body) = rest
        .split_first()
        .ok_or_else(|| invalid("controller frame without a kind".into()))?;
    Ok((*kind, body))
}

/// Reads one frame from a blocking stream.
pub fn read_frame(stream: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix)?;
    let length = check_length(u32::from_le_bytes(prefix))?;
    // Memory grows with the bytes that arrive, not with what the prefix claims.
    let mut rest = Vec::with_capacity(length.min(INITIAL_BUFFER));
    stream.take(length as u64).read_to_end(&mut rest)?;
    if rest.len() < length {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "controller frame cut short",
        ));
    }
    let (kind, body) = decode(&rest)?;
    Ok((kind, body.to_vec()))
}

/// What a frame's buffer starts with, whatever its length prefix says.
const INITIAL_BUFFER: usize = 64 << 10;

pub fn write_frame(stream: &mut impl Write, kind: u8, body: &[u8]) -> io::Result<()> {
    stream.write_all(&encode(kind, body))?;
    stream.flush()
}

/// Reads one frame from a Tokio stream.
pub async fn read_frame_async<S>(stream: &mut S) -> io::Result<(u8, Vec<u8>)>
where
    S: tokio::io::AsyncRead + Unpin,
{
    read_frame_async_within(stream, MAX_FRAME_BYTES).await
}

/// The largest frame a connection may send before its LOGIN.
pub const PRE_LOGIN_FRAME_BYTES: u32 = 4096;

/// `read_frame_async`, refusing a frame longer than `max` (at most `MAX_FRAME_BYTES`).
pub async fn read_frame_async_within<S>(stream: &mut S, max: u32) -> io::Result<(u8, Vec<u8>)>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await?;
    let claimed = u32::from_le_bytes(prefix);
    if claimed > max {
        return Err(invalid(format!(
            "controller frame length {claimed} is over {max} (before LOGIN)"
        )));
    }
    let length = check_length(claimed)?;
    let mut rest = Vec::with_capacity(length.min(INITIAL_BUFFER));
    (&mut *stream)
        .take(length as u64)
        .read_to_end(&mut rest)
        .await?;
    if rest.len() < length {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "controller frame cut short",
        ));
    }
    let (kind, body) = decode(&rest)?;
    Ok((kind, body.to_vec()))
}

pub async fn write_frame_async<S>(stream: &mut S, kind: u8, body: &[u8]) -> io::Result<()>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    stream.write_all(&encode(kind, body)).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_damage_is_refused() {
        let frame = encode(DESCRIBE, b"{}");
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
