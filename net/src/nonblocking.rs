//! keel frames on a non-blocking socket, with TLS when the listener has it: the reader
//! and writer of the broker's event loop. The blocking sides read with
//! [`crate::framed::FrameReader`]; both decode with `keel_protocol::decode_frame`, so a
//! keel frame is taken off a socket by this crate alone.
//!
//! A stream reads until the socket would block, the peer closes, or a per-turn budget
//! is spent (one busy client cannot starve the others of a loop), and buffers only the
//! bytes that arrived: memory follows what was sent, never what a length prefix claims.
//! Output is queued and written until the socket would block.

use bytes::BytesMut;
use keel_protocol::{decode_frame, peek_request_id, DecodeError, RawFrame};
use keel_security::rustls::ServerConnection;
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

/// Bytes read from one connection in one loop turn before other connections get theirs.
pub const READ_BUDGET_PER_TURN: usize = 1 << 20;
/// The size of a loop's scratch read buffer.
pub const READ_CHUNK: usize = 64 * 1024;

/// What one `fill` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Drained until `WouldBlock`.
    Drained,
    /// Stopped at the per-turn budget; more may be waiting.
    BudgetSpent,
    /// The peer closed its side.
    Closed,
}

/// What the first bytes of a connection show about its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstByte {
    Fine,
    /// Too few bytes yet to tell.
    Undecided,
    /// Plaintext on a TLS port.
    PlaintextOnTls,
    /// A TLS handshake on a plaintext port.
    TlsOnPlaintext,
}

/// One non-blocking connection's socket, TLS state and buffers.
pub struct FramedStream {
    socket: TcpStream,
    peer: SocketAddr,
    tls: Option<Box<ServerConnection>>,
    input: BytesMut,
    output: Vec<u8>,
    written: usize,
    first_byte_checked: bool,
    hangup_seen: bool,
    last_activity: Instant,
    discarded: u64,
}

impl FramedStream {
    /// `tls` is the server side of a handshake not yet begun, on a TLS listener.
    pub fn new(
        socket: TcpStream,
        peer: SocketAddr,
        tls: Option<Box<ServerConnection>>,
    ) -> FramedStream {
        FramedStream {
            socket,
            peer,
            tls,
            input: BytesMut::with_capacity(READ_CHUNK),
            output: Vec::new(),
            written: 0,
            first_byte_checked: false,
            hangup_seen: false,
            last_activity: Instant::now(),
            discarded: 0,
        }
    }

    #[inline]
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The socket, to register it with a poller or shut it down.
    #[inline]
    pub fn socket_mut(&mut self) -> &mut TcpStream {
        &mut self.socket
    }

    #[inline]
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Over TLS, or from loopback: where a password may travel.
    #[inline]
    pub fn is_secure(&self) -> bool {
        crate::is_secure(self.peer.ip(), self.tls.is_some())
    }

    /// Gives up TLS before any byte reached it, so that plaintext on a TLS port is
    /// answered in the plaintext its peer speaks.
    #[inline]
    pub fn drop_tls(&mut self) {
        self.tls = None;
    }

    /// The poller reported the peer's hang-up (or an error): read until EOF, not just
    /// until a short read.
    #[inline]
    pub fn note_hangup(&mut self) {
        self.hangup_seen = true;
    }

    #[inline]
    pub fn hangup_seen(&self) -> bool {
        self.hangup_seen
    }

    /// When bytes last moved either way.
    #[inline]
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// Input bytes buffered that are not a whole frame yet (or not decoded yet).
    #[inline]
    pub fn buffered(&self) -> usize {
        self.input.len()
    }

    /// The next whole frame of at most `max` bytes among those buffered, if one is.
    #[inline]
    pub fn frame(&mut self, max: u32) -> Result<Option<RawFrame>, DecodeError> {
        decode_frame(&mut self.input, max)
    }

    /// The request id of the frame at the head of the input, when its header is there
    /// (to name it in the ERROR that refuses it).
    #[inline]
    pub fn head_request_id(&self) -> Option<u64> {
        peek_request_id(&self.input)
    }

    /// Forgets the buffered input (the connection is closing) and its memory.
    #[inline]
    pub fn drop_input(&mut self) {
        self.input = BytesMut::new();
    }

    /// Where answers are queued; `flush` writes them.
    #[inline]
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.output
    }

    /// Looks at the first bytes once enough have arrived: on a TLS port by peeking at
    /// the socket, on a plaintext port in the input (before the first frame is
    /// decoded). `Undecided` until enough bytes are there.
    pub fn check_first_bytes(&mut self) -> FirstByte {
        if self.first_byte_checked {
            return FirstByte::Fine;
        }
        let verdict = if self.tls.is_some() {
            let mut first = [0u8; 3];
            match self.socket.peek(&mut first) {
                Ok(count) => keel_security::could_be_tls(first.get(..count).unwrap_or_default())
                    .map(|tls| !tls),
                Err(_) => Some(false),
            }
        } else {
            keel_security::is_tls_client_hello(&self.input)
        };
        match verdict {
            None => FirstByte::Undecided,
            Some(false) => {
                self.first_byte_checked = true;
                FirstByte::Fine
            }
            Some(true) if self.tls.is_some() => FirstByte::PlaintextOnTls,
            Some(true) => FirstByte::TlsOnPlaintext,
        }
    }

    /// Whether TLS has records waiting to be written (a handshake step, say).
    #[inline]
    pub fn tls_wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Reads until `WouldBlock`, EOF, or the per-turn budget. `scratch` is the loop's
    /// reusable read buffer: only the bytes received are copied out of it.
    pub fn fill(&mut self, scratch: &mut [u8]) -> io::Result<ReadOutcome> {
        if self.tls.is_some() {
            return self.fill_from_tls();
        }
        let mut budget = READ_BUDGET_PER_TURN;
        loop {
            if budget == 0 {
                return Ok(ReadOutcome::BudgetSpent);
            }
            let length = scratch.len().min(budget);
            let Some(space) = scratch.get_mut(..length) else {
                return Ok(ReadOutcome::BudgetSpent);
            };
            match self.socket.read(space) {
                Ok(0) => return Ok(ReadOutcome::Closed),
                Ok(count) => {
                    let read = space.get(..count).unwrap_or_default();
                    self.input.extend_from_slice(read);
                    budget = budget.saturating_sub(count);
                    self.last_activity = Instant::now();
                    // A short read emptied the socket's receive queue: bytes (or a
                    // hang-up) arriving later raise a new readiness event, so the read
                    // that would only say WouldBlock is skipped. A hang-up the poller
                    // already reported raises none: then read on to the EOF.
                    if count < length && !self.hangup_seen {
                        return Ok(ReadOutcome::Drained);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(ReadOutcome::Drained)
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// Reads TLS records until `WouldBlock`, EOF or the budget, and moves what they
    /// decrypt to into the input. A TLS error (plaintext, a bad certificate, a forged
    /// record) is an error, after the alert that says why is sent.
    fn fill_from_tls(&mut self) -> io::Result<ReadOutcome> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(ReadOutcome::Drained);
        };
        let mut budget = READ_BUDGET_PER_TURN;
        loop {
            if budget == 0 {
                return Ok(ReadOutcome::BudgetSpent);
            }
            let (count, blocked) = match tls.read_tls(&mut self.socket) {
                Ok(count) => (count, false),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => (0, true),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            match tls.process_new_packets() {
                Ok(state) => {
                    let available = state.plaintext_bytes_to_read();
                    if available > 0 {
                        let start = self.input.len();
                        self.input.resize(start.saturating_add(available), 0);
                        if let Some(fresh) = self.input.get_mut(start..) {
                            tls.reader().read_exact(fresh)?;
                        }
                    }
                    if state.peer_has_closed() && count == 0 && !blocked {
                        return Ok(ReadOutcome::Closed);
                    }
                }
                Err(error) => {
                    let _ = tls.write_tls(&mut self.socket);
                    return Err(keel_security::tls_error(error));
                }
            }
            if blocked {
                return Ok(ReadOutcome::Drained);
            }
            if count == 0 {
                return Ok(ReadOutcome::Closed);
            }
            budget = budget.saturating_sub(count);
            self.last_activity = Instant::now();
        }
    }

    /// While lingering after an error: reads and drops input until `WouldBlock`.
    /// `Ok(false)` when the connection should be closed now (the peer closed, or sent
    /// more than `max_bytes` in all).
    pub fn discard_input(&mut self, scratch: &mut [u8], max_bytes: u64) -> io::Result<bool> {
        loop {
            match self.socket.read(scratch) {
                Ok(0) => return Ok(false),
                Ok(count) => {
                    self.discarded = self.discarded.saturating_add(count as u64);
                    if self.discarded > max_bytes {
                        return Ok(false);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// Bytes queued and not written yet (TLS records waiting count as one).
    #[inline]
    pub fn pending_output(&self) -> usize {
        self.output.len().saturating_sub(self.written) + usize::from(self.tls_wants_write())
    }

    /// Writes queued output until done or `WouldBlock`.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.tls.is_some() {
            return self.flush_through_tls();
        }
        while let Some(unsent) = self
            .output
            .get(self.written..)
            .filter(|unsent| !unsent.is_empty())
        {
            match self.socket.write(unsent) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(count) => {
                    self.written = self.written.saturating_add(count);
                    self.last_activity = Instant::now();
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
        self.compact_written();
        Ok(())
    }

    fn compact_written(&mut self) {
        if self.written >= self.output.len() {
            self.output.clear();
            self.written = 0;
        } else if self.written > self.output.len() / 2 {
            self.output.drain(..self.written);
            self.written = 0;
        }
    }

    /// Seals queued output into TLS records (rustls holds a bounded amount) and writes
    /// them until done or `WouldBlock`.
    fn flush_through_tls(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        loop {
            let mut progress = false;
            if let Some(unsent) = self
                .output
                .get(self.written..)
                .filter(|unsent| !unsent.is_empty())
            {
                let count = tls.writer().write(unsent)?;
                self.written = self.written.saturating_add(count);
                progress |= count > 0;
            }
            if tls.wants_write() {
                match tls.write_tls(&mut self.socket) {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                    Ok(_) => {
                        progress = true;
                        self.last_activity = Instant::now();
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => return Err(error),
                }
            }
            if !progress {
                break;
            }
        }
        self.compact_written();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_protocol::{Request, DEFAULT_MAX_FRAME_BYTES};

    /// A connected pair on loopback: the mio side and a blocking std side.
    fn pair() -> (FramedStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (
            FramedStream::new(TcpStream::from_std(server), peer, None),
            client,
        )
    }

    fn fill_until(stream: &mut FramedStream, want: usize) -> ReadOutcome {
        let mut scratch = vec![0u8; READ_CHUNK];
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let outcome = stream.fill(&mut scratch).unwrap();
            if stream.buffered() >= want || outcome == ReadOutcome::Closed {
                return outcome;
            }
            assert!(Instant::now() < deadline, "the bytes never came");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn frames_arrive_in_pieces_answers_go_out_and_a_close_is_seen() {
        let (mut stream, mut client) = pair();
        assert!(stream.is_secure(), "a loopback peer");
        let mut bytes = Vec::new();
        Request::Ping.encode(7, 0, &mut bytes);
        Request::Stats.encode(8, 0, &mut bytes);
        let (head, tail) = bytes.split_at(5);
        client.write_all(head).unwrap();
        fill_until(&mut stream, head.len());
        assert_eq!(stream.check_first_bytes(), FirstByte::Fine);
        assert!(stream.frame(DEFAULT_MAX_FRAME_BYTES).unwrap().is_none());
        client.write_all(tail).unwrap();
        fill_until(&mut stream, bytes.len());
        for id in [7, 8] {
            let frame = stream.frame(DEFAULT_MAX_FRAME_BYTES).unwrap().unwrap();
            assert_eq!(frame.request_id, id);
        }
        assert_eq!(stream.buffered(), 0);

        stream.output().extend_from_slice(b"answer");
        assert_eq!(stream.pending_output(), 6);
        stream.flush().unwrap();
        assert_eq!(stream.pending_output(), 0);
        let mut answer = [0u8; 6];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"answer");

        drop(client);
        assert_eq!(fill_until(&mut stream, usize::MAX), ReadOutcome::Closed);
    }

    #[test]
    fn a_length_prefix_over_the_limit_is_refused_before_its_body_and_named() {
        let (mut stream, mut client) = pair();
        let mut bytes = Vec::new();
        Request::Ping.encode(42, 0, &mut bytes);
        client.write_all(&bytes).unwrap();
        fill_until(&mut stream, bytes.len());
        assert!(matches!(
            stream.frame(8),
            Err(DecodeError::FrameTooLarge { .. })
        ));
        assert_eq!(stream.head_request_id(), Some(42));
        stream.drop_input();
        assert_eq!(stream.buffered(), 0);
    }

    #[test]
    fn a_tls_handshake_on_a_plaintext_port_is_told_before_it_is_decoded() {
        let (mut stream, mut client) = pair();
        // A TLS record header: handshake (22), version 3.1, then a ClientHello (1).
        client
            .write_all(&[22, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3])
            .unwrap();
        fill_until(&mut stream, 11);
        assert_eq!(stream.check_first_bytes(), FirstByte::TlsOnPlaintext);
    }
}
