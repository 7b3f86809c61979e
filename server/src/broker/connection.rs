//! One client connection: its socket and its read and write buffers.

use bytes::BytesMut;
use keel_security::rustls::ServerConnection;
use keel_security::Principal;
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

/// Bytes read from one connection in one loop turn before other connections get theirs.
const READ_BUDGET_PER_TURN: usize = 1 << 20;
/// Size of the loop's scratch read buffer.
pub const READ_CHUNK: usize = 64 * 1024;
/// Above this much unsent output, the connection's input is not processed until the
/// client reads (a consumer that does not read its pulls cannot grow our memory).
pub const WRITE_BACKLOG_MAX: usize = 16 << 20;

/// Which request of which connection an answer is for. Slab keys are reused, so the
/// connection's id tells whether the connection is still the one that asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplyTo {
    pub key: usize,
    pub connection_id: u64,
    pub request_id: u64,
}

pub enum ReadOutcome {
    /// Drained until `WouldBlock`.
    Drained,
    /// Stopped at the per-turn budget; more may be waiting.
    BudgetSpent,
    /// The peer closed its side.
    Closed,
}

pub struct Connection {
    /// Unique for the broker's lifetime: slab keys are reused, ids are not.
    pub id: u64,
    pub socket: TcpStream,
    pub peer: SocketAddr,
    pub read_buffer: BytesMut,
    pub write_buffer: Vec<u8>,
    pub write_position: usize,
    /// Send the queued output, then close (after a protocol error or EOF).
    pub closing: bool,
    /// The peer closed its side; no more input will come.
    pub read_closed: bool,
    pub last_activity: Instant,
    /// How much of `read_buffer` the loop's buffered-bytes total counts.
    pub buffered_accounted: usize,
    /// Its input waits until fewer of its reads are in flight (the shard counts them).
    pub reads_paused: bool,
    /// The poller reported the peer's hang-up (or an error): read until EOF, not just
    /// until a short read.
    pub hangup_seen: bool,
    /// TLS state, on a TLS port.
    pub tls: Option<Box<ServerConnection>>,
    /// Whether the first byte has been looked at (plaintext on a TLS port and a TLS
    /// handshake on a plaintext port are answered with a clear error).
    pub first_byte_checked: bool,
    /// Who the connection acts as; `None` until it logs in (`auth = "required"`).
    pub principal: Option<Principal>,
    /// The security state's version when `principal` was last checked.
    pub principal_version: u64,
    /// A LOGIN is being checked: no more input is read until it is answered.
    pub login_pending: bool,
    pub connected_at: Instant,
    /// Closing after an error: the ERROR is written and our side shut down; input is
    /// read and dropped until the peer closes or this deadline, so that the close does
    /// not reset the connection (a reset can destroy the ERROR before the client
    /// reads it, when the client is still writing a large frame).
    pub linger_until: Option<Instant>,
    /// Bytes dropped while lingering.
    pub discarded: u64,
}

/// What the first bytes of a connection show about its protocol.
pub enum FirstByte {
    Fine,
    /// Too few bytes yet to tell.
    Undecided,
    /// Plaintext on a TLS port.
    PlaintextOnTls,
    /// A TLS handshake on a plaintext port.
    TlsOnPlaintext,
}

impl Connection {
    pub fn new(
        id: u64,
        socket: TcpStream,
        peer: SocketAddr,
        tls: Option<Box<ServerConnection>>,
        principal: Option<Principal>,
    ) -> Connection {
        Connection {
            tls,
            first_byte_checked: false,
            principal,
            principal_version: 0,
            login_pending: false,
            connected_at: Instant::now(),
            id,
            socket,
            peer,
            read_buffer: BytesMut::with_capacity(READ_CHUNK),
            write_buffer: Vec::new(),
            write_position: 0,
            closing: false,
            read_closed: false,
            last_activity: Instant::now(),
            buffered_accounted: 0,
            reads_paused: false,
            hangup_seen: false,
            linger_until: None,
            discarded: 0,
        }
    }

    /// Over TLS, or from loopback: where a password may travel.
    pub fn is_secure(&self) -> bool {
        // An IPv4 peer of a dual-stack listener shows as ::ffff:127.0.0.1.
        keel_net::is_secure(self.peer.ip(), self.tls.is_some())
    }

    /// Looks at the first bytes once enough have arrived: on a TLS port by peeking at
    /// the socket, on a plaintext port in the read buffer (before the first frame is
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
            keel_security::is_tls_client_hello(&self.read_buffer)
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
    pub fn tls_wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Reads until `WouldBlock`, EOF, or the per-turn budget. `scratch` is the loop's
    /// reusable read buffer: only the bytes received are copied out of it.
    pub fn fill_read_buffer(&mut self, scratch: &mut [u8]) -> io::Result<ReadOutcome> {
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
                    self.read_buffer.extend_from_slice(read);
                    budget -= count;
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
    /// decrypt to into `read_buffer`. A TLS error (plaintext, a bad certificate, a
    /// forged record) is an error: the connection is closed after its alert is sent.
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
                        let start = self.read_buffer.len();
                        self.read_buffer.resize(start.saturating_add(available), 0);
                        if let Some(fresh) = self.read_buffer.get_mut(start..) {
                            tls.reader().read_exact(fresh)?;
                        }
                    }
                    if state.peer_has_closed() && count == 0 && !blocked {
                        return Ok(ReadOutcome::Closed);
                    }
                }
                Err(error) => {
                    // Send the alert that says why, then give up on the connection.
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

    /// While lingering: reads and drops input until `WouldBlock`. `Ok(false)` when
    /// the connection should be closed now (the peer closed, or sent too much).
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

    pub fn pending_output(&self) -> usize {
        self.write_buffer.len() - self.write_position + usize::from(self.tls_wants_write())
    }

    /// Writes queued output until done or `WouldBlock`.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.tls.is_some() {
            return self.flush_through_tls();
        }
        while let Some(unsent) = self
            .write_buffer
            .get(self.write_position..)
            .filter(|unsent| !unsent.is_empty())
        {
            match self.socket.write(unsent) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(count) => {
                    self.write_position += count;
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
        if self.write_position == self.write_buffer.len() {
            self.write_buffer.clear();
            self.write_position = 0;
        } else if self.write_position > self.write_buffer.len() / 2 {
            self.write_buffer.drain(..self.write_position);
            self.write_position = 0;
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
                .write_buffer
                .get(self.write_position..)
                .filter(|unsent| !unsent.is_empty())
            {
                let count = tls.writer().write(unsent)?;
                self.write_position += count;
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
