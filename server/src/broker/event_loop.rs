//! One event loop per core: accept, read frames, hand each request to the shard, write
//! the shard's answers.
//!
//! Loop 0 owns the listener and hands accepted connections to the loops in turn. Each
//! loop owns its connections (a `Slab`) and its `Shard` (what it owes them: pending
//! sends, long polls, reads, metadata replies). Storage threads wake the loop through
//! its `Waker` whenever the durable offset moves; answers are queued during the turn
//! and written at its end.

mod accept;
mod admission;

use crate::broker::connection::ReplyTo;
use crate::broker::connection::{Connection, WRITE_BACKLOG_MAX};
use crate::broker::security_jobs::{Done, Job, SecurityLink};
use crate::broker::shard::Shard;
use crate::context::Broker;
use keel_net::nonblocking::{FirstByte, ReadOutcome, READ_CHUNK};
use keel_protocol::{ErrorCode, RawFrame, Request, Response};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const WAKER: Token = Token(usize::MAX);
const LISTENER: Token = Token(usize::MAX - 1);
/// Frames decoded from one connection per turn before other connections get a turn.
const FRAMES_PER_TURN: usize = 512;
const POLL_TIMEOUT_MAX: Duration = Duration::from_millis(200);
/// How long a connection closed after an error keeps reading (and dropping) input, and
/// how much of it: enough for a client to finish writing a frame the broker refused
/// and read the ERROR that says why.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_MAX_BYTES: u64 = 64 << 20;

/// What `decode_and_dispatch` left behind.
enum Decoded {
    /// No whole frame is buffered.
    Drained,
    /// Frames are left for the next turn.
    BudgetSpent,
    /// The connection is closing, gone, throttled or paused: leave it alone.
    Stopped,
}

/// The error code that answers a frame the decoder refused.
fn decode_error_code(error: &keel_protocol::DecodeError) -> ErrorCode {
    match error {
        keel_protocol::DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
        keel_protocol::DecodeError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
        keel_protocol::DecodeError::UnknownKind(_) => ErrorCode::UnknownKind,
        _ => ErrorCode::MalformedFrame,
    }
}

/// An accepted connection, with its place in the client port's census.
pub type Accepted = (TcpStream, SocketAddr, keel_net::Ticket);

/// Where loop 0 sends accepted connections for another loop.
pub struct Handoff {
    pub sender: Sender<Accepted>,
    pub waker: Arc<Waker>,
}

pub struct EventLoop {
    index: usize,
    poll: Poll,
    broker: Arc<Broker>,
    shard: Shard,
    listener: Option<TcpListener>,
    handoffs: Vec<Handoff>,
    next_handoff: usize,
    incoming: Receiver<Accepted>,
    connections: Slab<Connection>,
    /// Bytes in this loop's connections' read buffers (incomplete frames, mostly).
    buffered_bytes: usize,
    /// This loop's share of `partial_frames_max_bytes`.
    buffered_bytes_max: usize,
    /// Connections to read again this turn (budget spent, or output drained).
    ready: Vec<usize>,
    /// Connections with output queued this turn.
    dirty: Vec<usize>,
    /// Connections not read because the storage backlog is over its bound.
    throttled: Vec<usize>,
    /// Connections not read until fewer of their reads are in flight.
    paused: Vec<usize>,
    drain_deadline: Option<Instant>,
    idle_check_due: Instant,
    /// Reused for every socket read of this loop.
    scratch: Vec<u8>,
    /// Whether storage progress concerns this loop (it has replies or pulls waiting):
    /// storage listeners skip waking a loop that has nothing waiting.
    waiting: Arc<std::sync::atomic::AtomicBool>,
    /// Logins and security admin requests go to the security thread through it.
    security: SecurityLink,
}

/// What a loop is given to run.
pub struct LoopParts {
    pub index: usize,
    pub poll: Poll,
    pub waker: Arc<Waker>,
    pub broker: Arc<Broker>,
    pub incoming: Receiver<Accepted>,
    pub waiting: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) pools: crate::broker::workers::Pools,
    /// Loops sharing `partial_frames_max_bytes`.
    pub loops: usize,
    pub(crate) security: SecurityLink,
}

impl EventLoop {
    pub fn new(parts: LoopParts) -> EventLoop {
        let LoopParts {
            index,
            poll,
            waker,
            broker,
            incoming,
            waiting,
            pools,
            loops,
            security,
        } = parts;
        let buffered_bytes_max =
            usize::try_from(broker.config.partial_frames_max_bytes / (loops.max(1) as u64))
                .unwrap_or(usize::MAX)
                .max(broker.config.max_frame_bytes as usize);
        EventLoop {
            index,
            poll,
            shard: Shard::new(broker.clone(), pools, waker),
            broker,
            listener: None,
            handoffs: Vec::new(),
            next_handoff: 0,
            incoming,
            connections: Slab::new(),
            buffered_bytes: 0,
            buffered_bytes_max,
            ready: Vec::new(),
            dirty: Vec::new(),
            throttled: Vec::new(),
            paused: Vec::new(),
            drain_deadline: None,
            idle_check_due: Instant::now(),
            scratch: vec![0u8; READ_CHUNK],
            waiting,
            security,
        }
    }

    /// Makes this loop the acceptor: it owns the listener and hands connections to all
    /// loops (itself included) round-robin.
    pub fn set_listener(
        &mut self,
        mut listener: TcpListener,
        handoffs: Vec<Handoff>,
    ) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        self.listener = Some(listener);
        self.handoffs = handoffs;
        Ok(())
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(error) = self.poll.poll(&mut events, Some(timeout)) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("event loop {} cannot poll: {error}", self.index);
                break;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(key) => {
                        if event.is_read_closed() || event.is_error() {
                            if let Some(connection) = self.connections.get_mut(key) {
                                connection.stream.note_hangup();
                            }
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.ready.push(key);
                        }
                        if event.is_writable() {
                            self.dirty.push(key);
                        }
                    }
                }
            }
            self.register_incoming();
            self.take_security_answers();
            self.read_ready();
            self.turn_end();
            if self.drained() {
                break;
            }
        }
        for mut connection in self.connections.drain() {
            let _ = connection.stream.flush();
            self.broker
                .counters
                .connections
                .fetch_sub(1, Ordering::Relaxed);
        }
        log::debug!("event loop {} stopped", self.index);
    }

    fn poll_timeout(&self) -> Duration {
        if !self.ready.is_empty() {
            return Duration::ZERO;
        }
        if !self.throttled.is_empty() {
            // The flusher wakes us as it drains; this bounds a missed wake-up.
            return Duration::from_millis(10);
        }
        let now = Instant::now();
        let due = match self.shard.next_deadline() {
            Some(deadline) => deadline.min(now + POLL_TIMEOUT_MAX),
            None => now + POLL_TIMEOUT_MAX,
        };
        due.saturating_duration_since(now)
    }

    /// Reads and dispatches every connection marked ready, within per-turn budgets.
    fn read_ready(&mut self) {
        let mut ready = std::mem::take(&mut self.ready);
        ready.sort_unstable();
        ready.dedup();
        for key in ready {
            self.read_and_dispatch(key);
            self.deliver_outbox();
            self.account_buffer(key);
            self.enforce_buffer_budget();
        }
    }

    /// Brings the loop's count of buffered input up to date for one connection.
    fn account_buffer(&mut self, key: usize) {
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        let now = connection.stream.buffered();
        self.buffered_bytes = self
            .buffered_bytes
            .saturating_sub(connection.buffered_accounted)
            .saturating_add(now);
        connection.buffered_accounted = now;
    }

    /// Bounds the input bytes held for incomplete frames: past this loop's share of
    /// `partial_frames_max_bytes`, the connection holding the most is closed, so slow
    /// or hostile senders of large frames cannot add up to unbounded memory.
    fn enforce_buffer_budget(&mut self) {
        while self.buffered_bytes > self.buffered_bytes_max {
            let largest = self
                .connections
                .iter()
                .filter(|(_, connection)| !connection.closing)
                .max_by_key(|(_, connection)| connection.stream.buffered())
                .map(|(key, connection)| (key, connection.stream.buffered()));
            let Some((key, held)) = largest.filter(|(_, held)| *held > 0) else {
                return;
            };
            let message = format!(
                "{held} bytes of an incomplete frame held while this broker's connections \
                 together hold more than partial_frames_max_bytes ({}); send smaller frames \
                 or send them faster",
                self.broker.config.partial_frames_max_bytes
            );
            self.fail_connection(key, 0, ErrorCode::Overloaded, &message);
            self.account_buffer(key);
        }
    }

    fn read_and_dispatch(&mut self, key: usize) {
        // Sporadic events for closed connections happen (mio); ignore them.
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        if connection.linger_until.is_some() {
            match connection
                .stream
                .discard_input(&mut self.scratch, LINGER_MAX_BYTES)
            {
                Ok(true) => {}
                Ok(false) | Err(_) => self.close(key),
            }
            return;
        }
        // A paused connection is read again once its reads come back (`turn_end`).
        if connection.closing
            || connection.reads_paused
            || connection.stream.pending_output() > WRITE_BACKLOG_MAX
        {
            return;
        }
        if self.broker.store.backlog_bytes() > self.broker.config.append_backlog_max_bytes {
            self.throttled.push(key);
            return;
        }
        // A TLS port: plaintext is told before any byte goes to rustls.
        let first = match connection.stream.is_tls() {
            true => connection.stream.check_first_bytes(),
            false => FirstByte::Fine,
        };
        match first {
            FirstByte::Fine => {}
            // Wait for more bytes (a ClientHello comes whole; a peer that sends fewer
            // than three bytes is closed by the login timeout or as idle).
            FirstByte::Undecided if !connection.read_closed && !connection.stream.hangup_seen() => {
                return
            }
            FirstByte::Undecided => {
                self.close(key);
                return;
            }
            FirstByte::PlaintextOnTls => {
                // Answered in plaintext: the peer speaks it, and reads why.
                let message = "this port speaks TLS only: connect with TLS (the CA of this \
                               broker's certificate)";
                connection.stream.drop_tls();
                self.fail_connection(key, 0, ErrorCode::TlsRequired, message);
                return;
            }
            // Told in `decode_and_dispatch`, on plaintext ports only.
            FirstByte::TlsOnPlaintext => {}
        }
        let outcome = if connection.read_closed {
            Ok(ReadOutcome::Drained)
        } else {
            connection.stream.fill(&mut self.scratch)
        };
        if connection.stream.tls_wants_write() {
            self.dirty.push(key);
        }
        let mut again = match outcome {
            Ok(ReadOutcome::Drained) => false,
            Ok(ReadOutcome::BudgetSpent) => true,
            Ok(ReadOutcome::Closed) => {
                connection.read_closed = true;
                false
            }
            Err(error) => {
                if connection.stream.is_tls() && error.kind() == io::ErrorKind::InvalidData {
                    self.broker
                        .counters
                        .tls_handshake_failures
                        .fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "connection {} from {}: {error}",
                        connection.id,
                        connection.peer()
                    );
                    // Write the alert rustls queued, then close.
                    let _ = connection.stream.flush();
                } else {
                    log::debug!(
                        "connection {} from {}: read failed: {error}",
                        connection.id,
                        connection.peer()
                    );
                }
                self.close(key);
                return;
            }
        };
        match self.decode_and_dispatch(key) {
            Decoded::Stopped => return,
            Decoded::BudgetSpent => again = true,
            Decoded::Drained => {}
        }
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        if connection.read_closed && !again {
            if connection.stream.buffered() > 0 {
                log::debug!(
                    "connection {} from {} closed mid-frame ({} bytes unread)",
                    connection.id,
                    connection.peer(),
                    connection.stream.buffered()
                );
            }
            connection.closing = true;
            self.dirty.push(key);
        }
        if again {
            self.ready.push(key);
        }
    }

    /// Decodes and dispatches the frames buffered for a connection, at most
    /// `FRAMES_PER_TURN` of them.
    fn decode_and_dispatch(&mut self, key: usize) -> Decoded {
        for _ in 0..FRAMES_PER_TURN {
            let Some(connection) = self.connections.get_mut(key) else {
                return Decoded::Stopped;
            };
            if connection.closing || connection.login_pending {
                return Decoded::Stopped;
            }
            // Before a login, only small frames: a stranger cannot make the broker
            // buffer megabytes.
            let max_frame_bytes = match connection.principal {
                Some(_) => self.broker.config.max_frame_bytes,
                None => self.broker.config.security.pre_auth_max_frame_bytes,
            };
            if connection.stream.buffered() == 0 {
                return Decoded::Drained;
            }
            // Bytes already read stay buffered until the flusher catches up.
            if self.broker.store.backlog_bytes() > self.broker.config.append_backlog_max_bytes {
                self.throttled.push(key);
                return Decoded::Stopped;
            }
            // A plaintext port: a TLS ClientHello is told before it is decoded as a
            // frame (whose length prefix it would make huge).
            if !connection.stream.is_tls() {
                match connection.stream.check_first_bytes() {
                    FirstByte::Fine => {}
                    FirstByte::Undecided => return Decoded::Drained,
                    FirstByte::TlsOnPlaintext | FirstByte::PlaintextOnTls => {
                        let message = "this port speaks plaintext, not TLS: TLS is not \
                                       configured on this broker ([security] tls_cert_file)";
                        self.fail_connection(key, 0, ErrorCode::MalformedFrame, message);
                        return Decoded::Stopped;
                    }
                }
            }
            // Reads in flight hold their results in memory: past a few, this
            // connection's requests wait until they are answered.
            if !self.shard.reads_room(connection.id) {
                connection.reads_paused = true;
                self.paused.push(key);
                return Decoded::Stopped;
            }
            match connection.stream.frame(max_frame_bytes) {
                Ok(Some(frame)) => {
                    let to = ReplyTo {
                        key,
                        connection_id: connection.id,
                        request_id: frame.request_id,
                    };
                    self.dispatch(to, frame);
                }
                Ok(None) => return Decoded::Drained,
                Err(error) => {
                    let request_id = connection.stream.head_request_id().unwrap_or(0);
                    let code = decode_error_code(&error);
                    self.fail_connection(key, request_id, code, &error.to_string());
                    return Decoded::Stopped;
                }
            }
        }
        match self.connections.get(key) {
            Some(connection) if connection.stream.buffered() > 0 => Decoded::BudgetSpent,
            _ => Decoded::Drained,
        }
    }

    /// Decodes a frame's request and hands it to the shard; a frame that is not a
    /// well-formed request closes the connection.
    fn dispatch(&mut self, to: ReplyTo, frame: RawFrame) {
        if !frame.kind.is_request() {
            let message = format!("{} is a response kind, not a request", frame.kind.name());
            self.fail_connection(to.key, to.request_id, ErrorCode::UnknownKind, &message);
            return;
        }
        match Request::decode(&frame) {
            Ok(request) => {
                // ONEWAY means something on SEND and SEND_BATCH only; elsewhere ignored.
                let oneway = frame.is_oneway()
                    && matches!(
                        frame.kind,
                        keel_protocol::Kind::Send | keel_protocol::Kind::SendBatch
                    );
                if self.admit(to, oneway, &request) {
                    self.shard.dispatch(to, oneway, request)
                }
            }
            Err(error) => {
                let message = format!("bad {} body: {error}", frame.kind.name());
                let code = ErrorCode::MalformedFrame;
                self.fail_connection(to.key, to.request_id, code, &message);
            }
        }
    }

    /// Completions, timeouts, parked pulls, idle connections, then every queued write.
    fn turn_end(&mut self) {
        // Wake-ups on while the checks below run: progress published before this
        // store is seen by the checks, progress after it wakes the loop.
        self.waiting.store(true, Ordering::SeqCst);
        // Pairs with the fence in the storage listener (a store-then-load on each side).
        std::sync::atomic::fence(Ordering::SeqCst);
        let now = Instant::now();
        if self.broker.is_shutting_down() && self.drain_deadline.is_none() {
            self.begin_drain(now);
        }
        if !self.throttled.is_empty()
            && self.broker.store.backlog_bytes() <= self.broker.config.append_backlog_max_bytes
        {
            self.ready.append(&mut self.throttled);
        }
        self.shard.turn(now);
        self.resume_paused();
        self.deliver_outbox();
        if now >= self.idle_check_due {
            self.close_idle(now);
            self.idle_check_due = now + Duration::from_secs(1);
        }
        self.write_dirty();
        assert!(
            self.shard.outbox_is_empty(),
            "answers left unwritten at the end of a turn"
        );
        let waiting =
            self.shard.is_waiting() || !self.throttled.is_empty() || self.drain_deadline.is_some();
        self.waiting.store(waiting, Ordering::SeqCst);
    }

    /// Connections paused for their reads in flight are read again once they may start
    /// another.
    fn resume_paused(&mut self) {
        let mut paused = std::mem::take(&mut self.paused);
        paused.retain(|key| {
            let Some(connection) = self.connections.get_mut(*key) else {
                return false;
            };
            if !self.shard.reads_room(connection.id) {
                return true;
            }
            connection.reads_paused = false;
            self.ready.push(*key);
            false
        });
        self.paused = paused;
    }

    /// Writes the shard's answers into their connections' buffers (an answer for a
    /// connection that closed, or whose slab key was reused, is dropped).
    fn deliver_outbox(&mut self) {
        for (to, response) in self.shard.outbox() {
            let Some(connection) = self.connections.get_mut(to.key) else {
                continue;
            };
            if connection.id != to.connection_id {
                continue;
            }
            response.encode(to.request_id, connection.stream.output());
            self.dirty.push(to.key);
        }
    }

    fn begin_drain(&mut self, now: Instant) {
        let timeout = Duration::from_millis(self.broker.config.shutdown_timeout_ms);
        let deadline = now + timeout;
        self.drain_deadline = Some(deadline);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.shard.begin_drain(now, deadline);
    }

    /// True once shutting down and every pending reply was answered and written.
    fn drained(&self) -> bool {
        let Some(deadline) = self.drain_deadline else {
            return false;
        };
        if Instant::now() >= deadline {
            return true;
        }
        self.shard.drained()
            && self
                .connections
                .iter()
                .all(|(_, connection)| connection.stream.pending_output() == 0)
    }

    fn close_idle(&mut self, now: Instant) {
        // Connections closed after an error linger a bounded time, idle timeout or not.
        let lingered: Vec<usize> = self
            .connections
            .iter()
            .filter(|(_, connection)| connection.linger_until.is_some_and(|until| now >= until))
            .map(|(key, _)| key)
            .collect();
        for key in lingered {
            self.close(key);
        }
        let idle_ms = self.broker.config.connection_idle_timeout_ms;
        if idle_ms == 0 {
            return;
        }
        let idle = Duration::from_millis(idle_ms);
        // A connection waiting for an answer is not idle, however long the wait.
        let stale: Vec<usize> = self
            .connections
            .iter()
            .filter(|(_, connection)| {
                now.duration_since(connection.stream.last_activity()) > idle
                    && !self.shard.owes(connection.id)
            })
            .map(|(key, _)| key)
            .collect();
        let login_timeout = Duration::from_millis(self.broker.config.security.login_timeout_ms);
        let silent: Vec<usize> = self
            .connections
            .iter()
            .filter(|(_, connection)| {
                connection.principal.is_none()
                    && !connection.closing
                    && !connection.login_pending
                    && now.duration_since(connection.connected_at) > login_timeout
            })
            .map(|(key, _)| key)
            .collect();
        for key in silent {
            self.broker
                .counters
                .unauthenticated_requests
                .fetch_add(1, Ordering::Relaxed);
            let message = "no LOGIN within login_timeout_ms";
            self.fail_connection(key, 0, ErrorCode::NotAuthenticated, message);
        }
        for key in stale {
            if let Some(connection) = self.connections.get(key) {
                log::debug!(
                    "closing idle connection {} from {}",
                    connection.id,
                    connection.peer()
                );
            }
            self.close(key);
        }
    }

    fn write_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for key in dirty.drain(..) {
            let Some(connection) = self.connections.get_mut(key) else {
                continue;
            };
            let backlogged = connection.stream.pending_output() > WRITE_BACKLOG_MAX;
            if let Err(error) = connection.stream.flush() {
                log::debug!(
                    "connection {} from {}: write failed: {error}",
                    connection.id,
                    connection.peer()
                );
                self.close(key);
                continue;
            }
            if connection.linger_until.is_some() {
                // Closed by `discard_input` (the peer's EOF) or by `close_idle`.
            } else if connection.closing && connection.stream.pending_output() == 0 {
                if connection.read_closed {
                    self.close(key);
                } else {
                    // The ERROR is out: shut our side and drop what the peer still
                    // sends until it closes (or `LINGER`), instead of a reset.
                    let _ = connection
                        .stream
                        .socket_mut()
                        .shutdown(std::net::Shutdown::Write);
                    connection.linger_until = Some(Instant::now() + LINGER);
                    self.ready.push(key);
                }
            } else if backlogged && connection.stream.pending_output() <= WRITE_BACKLOG_MAX {
                self.ready.push(key);
            }
        }
        self.dirty = dirty;
    }

    /// Answers a protocol violation with an error frame, then closes the connection once
    /// the frame is written. Other connections are unaffected.
    fn fail_connection(&mut self, key: usize, request_id: u64, code: ErrorCode, message: &str) {
        // Answers to the requests before the bad frame go first.
        self.deliver_outbox();
        self.broker
            .counters
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        log::warn!(
            "closing connection {} from {}: {code}: {message}",
            connection.id,
            connection.peer()
        );
        Response::error(code, message).encode(request_id, connection.stream.output());
        connection.closing = true;
        // Freed, not just emptied: the connection may linger a while (`LINGER`).
        connection.stream.drop_input();
        self.dirty.push(key);
    }

    /// Closes connection `key` once what it is owed is written, without an answer of
    /// its own (a oneway request refused).
    fn close_quietly(&mut self, key: usize) {
        self.deliver_outbox();
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        connection.closing = true;
        connection.stream.drop_input();
        self.dirty.push(key);
    }

    fn close(&mut self, key: usize) {
        if let Some(mut connection) = self.connections.try_remove(key) {
            self.buffered_bytes = self
                .buffered_bytes
                .saturating_sub(connection.buffered_accounted);
            let _ = self
                .poll
                .registry()
                .deregister(connection.stream.socket_mut());
            self.shard.connection_closed(connection.id);
            self.broker
                .counters
                .connections
                .fetch_sub(1, Ordering::Relaxed);
            log::debug!(
                "connection {} from {} closed",
                connection.id,
                connection.peer()
            );
        }
    }
}
