//! One client connection: its socket and its read and write buffers.

use bytes::BytesMut;
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
}

impl Connection {
    pub fn new(id: u64, socket: TcpStream, peer: SocketAddr) -> Connection {
        Connection {
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
        }
    }

    /// Reads until `WouldBlock`, EOF, or the per-turn budget. `scratch` is the loop's
    /// reusable read buffer: only the bytes received are copied out of it.
    pub fn fill_read_buffer(&mut self, scratch: &mut [u8]) -> io::Result<ReadOutcome> {
        let mut budget = READ_BUDGET_PER_TURN;
        loop {
            if budget == 0 {
                return Ok(ReadOutcome::BudgetSpent);
            }
            let length = scratch.len().min(budget);
            match self.socket.read(&mut scratch[..length]) {
                Ok(0) => return Ok(ReadOutcome::Closed),
                Ok(count) => {
                    self.read_buffer.extend_from_slice(&scratch[..count]);
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

    pub fn pending_output(&self) -> usize {
        self.write_buffer.len() - self.write_position
    }

    /// Writes queued output until done or `WouldBlock`.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.write_position < self.write_buffer.len() {
            match self.socket.write(&self.write_buffer[self.write_position..]) {
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
        if self.write_position == self.write_buffer.len() {
            self.write_buffer.clear();
            self.write_position = 0;
        } else if self.write_position > self.write_buffer.len() / 2 {
            self.write_buffer.drain(..self.write_position);
            self.write_position = 0;
        }
        Ok(())
    }
}
