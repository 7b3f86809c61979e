//! keel frames from a blocking stream: the one reader of every blocking side (the name
//! server's connections, `call`'s replies, the client library's connections). The
//! broker's event loop reads its non-blocking sockets through
//! [`crate::nonblocking::FramedStream`], with the same codec.

use bytes::BytesMut;
use keel_protocol::{decode_frame, DecodeError, RawFrame};
use std::io::{self, Read};

/// What one read of a frame gave.
#[derive(Debug)]
pub enum Next {
    Frame(RawFrame),
    /// The peer closed the connection between frames.
    Closed,
    /// The bytes are not a frame (too large, bad header): answer and close.
    Bad(DecodeError),
}

/// Buffers a blocking stream's bytes into frames. A frame's memory grows with the bytes
/// that arrive, never with what a length prefix claims.
#[derive(Default)]
pub struct FrameReader {
    buffer: BytesMut,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Buffers one read of `stream`: the bytes read, 0 when the peer closed. Interrupted
    /// reads are retried; a timeout or `WouldBlock` is returned for the caller to take
    /// as a tick.
    pub fn read_some(&mut self, mut stream: impl Read) -> io::Result<usize> {
        let mut chunk = [0u8; 16 << 10];
        loop {
            match stream.read(&mut chunk) {
                Ok(read) => {
                    self.buffer
                        .extend_from_slice(chunk.get(..read).unwrap_or_default());
                    return Ok(read);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// The next whole frame of at most `max` bytes among those buffered, if one is.
    pub fn frame(&mut self, max: u32) -> Result<Option<RawFrame>, DecodeError> {
        decode_frame(&mut self.buffer, max)
    }

    /// Bytes buffered that are not a whole frame yet.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next frame of at most `max` bytes from `stream`, reading as needed.
    pub fn next(&mut self, mut stream: impl Read, max: u32) -> io::Result<Next> {
        loop {
            match self.frame(max) {
                Ok(Some(frame)) => return Ok(Next::Frame(frame)),
                Ok(None) => {}
                Err(error) => return Ok(Next::Bad(error)),
            }
            if self.read_some(&mut stream)? == 0 {
                if self.buffer.is_empty() {
                    return Ok(Next::Closed);
                }
                let detail = format!(
                    "connection closed inside a frame ({} bytes)",
                    self.buffer.len()
                );
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, detail));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_protocol::{Request, DEFAULT_MAX_FRAME_BYTES};

    #[test]
    fn frames_split_anywhere_are_read_whole_and_a_cut_one_is_an_error() {
        let mut bytes = Vec::new();
        Request::Ping.encode(7, 0, &mut bytes);
        Request::Stats.encode(8, 0, &mut bytes);
        // One byte per read: every split point.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let Some((first, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                out[0] = *first;
                self.0 = rest;
                Ok(1)
            }
        }
        let mut reader = FrameReader::new();
        let mut source = Trickle(&bytes);
        for id in [7, 8] {
            match reader.next(&mut source, DEFAULT_MAX_FRAME_BYTES).unwrap() {
                Next::Frame(frame) => assert_eq!(frame.request_id, id),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            reader.next(&mut source, DEFAULT_MAX_FRAME_BYTES),
            Ok(Next::Closed)
        ));
        // The second frame cut short: the first is read, then an error (not Closed).
        let mut cut = FrameReader::new();
        let mut source = &bytes[..bytes.len() - 1];
        let first = cut.next(&mut source, DEFAULT_MAX_FRAME_BYTES);
        assert!(matches!(first, Ok(Next::Frame(_))));
        assert!(cut.next(&mut source, DEFAULT_MAX_FRAME_BYTES).is_err());
        let mut small = FrameReader::new();
        assert!(matches!(small.next(&bytes[..], 8), Ok(Next::Bad(_))));
    }
}
