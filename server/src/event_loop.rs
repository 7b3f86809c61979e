//! One event loop per core: accept, read frames, dispatch, answer when durable.
//!
//! Loop 0 owns the listener and hands accepted connections to the loops in turn. Each
//! loop owns its connections (a `Slab`), its pending sends (ordered by log offset, so the
//! front is always the next to complete), its parked long-poll pulls and its pending
//! metadata replies. Storage threads wake the loop through its `Waker` whenever the
//! durable offset moves; replies are queued during the turn and written at its end.

use crate::broker::Broker;
use crate::connection::{Connection, ReadOutcome, READ_CHUNK, WRITE_BACKLOG_MAX};
use crate::reader::{ReadDone, ReadJob, ReadRequest, ReplyTo};
use keel_protocol::{
    decode_frame, ErrorCode, RawFrame, Request, Response, SendBatchResult, SendResult, SendStatus,
};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const WAKER: Token = Token(usize::MAX);
const LISTENER: Token = Token(usize::MAX - 1);
/// Frames decoded from one connection per turn before other connections get a turn.
const FRAMES_PER_TURN: usize = 512;
/// Reads of the log one connection may have at the reader threads at once (each may
/// hold up to 4 MiB of records); its further requests wait in its buffer meanwhile.
const READS_IN_FLIGHT_PER_CONNECTION_MAX: usize = 8;
const POLL_TIMEOUT_MAX: Duration = Duration::from_millis(200);

/// What a durable send is answered with: SEND_RESULT or SEND_BATCH_RESULT.
pub(crate) enum Acked {
    One(SendResult),
    /// (queue_id, queue_offset, log_offset) of each message of the batch.
    Batch(Vec<(u32, u64, u64)>),
}

impl Acked {
    fn response(&self, status: SendStatus) -> Response {
        match self {
            Acked::One(result) => Response::SendResult(SendResult {
                status,
                ..result.clone()
            }),
            Acked::Batch(messages) => Response::SendBatchResult(SendBatchResult {
                status,
                messages: messages.clone(),
            }),
        }
    }
}

/// A send (or batch) waiting for the durable offset to reach `offset_end`.
pub(crate) struct PendingSend {
    pub key: usize,
    pub connection_id: u64,
    pub request_id: u64,
    pub result: Acked,
    /// Messages answered by this reply (1, or the batch size).
    pub messages: u64,
    /// Where its first record starts: after a storage failure, whether any of it may
    /// have reached the file.
    pub log_offset: u64,
    pub offset_end: u64,
    pub generation: u64,
    /// FLUSH_DISK_TIMEOUT past this.
    pub deadline: Instant,
    /// Sent to a sync master: the reply also waits for a slave's fsync.
    pub wait_slave: bool,
    /// A sync master had no slave in sync when this was stored: once it is locally
    /// durable, SLAVE_NOT_AVAILABLE at once.
    pub no_slave: bool,
    /// FLUSH_SLAVE_TIMEOUT past this.
    pub slave_deadline: Instant,
}

/// A reply computed off the loop (a promotion), sent once `outcome` is filled in.
pub(crate) struct PendingReply {
    pub key: usize,
    pub connection_id: u64,
    pub request_id: u64,
    pub outcome: Arc<Mutex<Option<Response>>>,
}

/// A reply waiting for topics/offsets metadata `version` to be on disk.
pub(crate) struct PendingMeta {
    pub key: usize,
    pub connection_id: u64,
    pub request_id: u64,
    pub version: u64,
    pub response: Response,
    pub deadline: Instant,
}

/// A PULL that found nothing and waits for new records or its deadline.
pub(crate) struct ParkedPull {
    pub reply_to: ReplyTo,
    pub pull: keel_protocol::PullRequest,
    pub deadline: Instant,
}

/// What `decode_and_dispatch` left behind.
enum Decoded {
    /// No whole frame is buffered.
    Drained,
    /// Frames are left for the next turn.
    BudgetSpent,
    /// The connection is closing, gone, or throttled: leave it alone.
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

/// Where loop 0 sends accepted connections for another loop.
pub struct Handoff {
    pub sender: Sender<(TcpStream, SocketAddr)>,
    pub waker: Arc<Waker>,
}

pub struct EventLoop {
    pub(crate) index: usize,
    poll: Poll,
    pub(crate) broker: Arc<Broker>,
    listener: Option<TcpListener>,
    handoffs: Vec<Handoff>,
    next_handoff: usize,
    incoming: Receiver<(TcpStream, SocketAddr)>,
    pub(crate) connections: Slab<Connection>,
    pub(crate) pending_sends: VecDeque<PendingSend>,
    pub(crate) pending_replies: Vec<PendingReply>,
    pub(crate) pending_meta: VecDeque<PendingMeta>,
    pub(crate) parked_pulls: Vec<ParkedPull>,
    /// Where reads of the log go (the reader threads), and how their answers come back.
    reads: Sender<ReadRequest>,
    reads_done: Receiver<ReadDone>,
    reads_done_sender: Sender<ReadDone>,
    waker: Arc<Waker>,
    /// Reads sent to the reader threads and not answered yet.
    pub(crate) reads_in_flight: usize,
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
    durable_seen: u64,
    drain_deadline: Option<Instant>,
    idle_check_due: Instant,
    /// Reused for every socket read of this loop.
    scratch: Vec<u8>,
    /// Whether storage progress concerns this loop (it has replies or pulls waiting):
    /// storage listeners skip waking a loop that has nothing waiting.
    waiting: Arc<std::sync::atomic::AtomicBool>,
}

/// What a loop is given to run.
pub struct LoopParts {
    pub index: usize,
    pub poll: Poll,
    pub waker: Arc<Waker>,
    pub broker: Arc<Broker>,
    pub incoming: Receiver<(TcpStream, SocketAddr)>,
    pub waiting: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) reads: Sender<ReadRequest>,
    /// Loops sharing `partial_frames_max_bytes`.
    pub loops: usize,
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
            reads,
            loops,
        } = parts;
        let (reads_done_sender, reads_done) = std::sync::mpsc::channel();
        let buffered_bytes_max =
            usize::try_from(broker.config.partial_frames_max_bytes / (loops.max(1) as u64))
                .unwrap_or(usize::MAX)
                .max(broker.config.max_frame_bytes as usize);
        EventLoop {
            index,
            poll,
            broker,
            listener: None,
            handoffs: Vec::new(),
            next_handoff: 0,
            incoming,
            connections: Slab::new(),
            pending_sends: VecDeque::new(),
            pending_replies: Vec::new(),
            pending_meta: VecDeque::new(),
            parked_pulls: Vec::new(),
            reads,
            reads_done,
            reads_done_sender,
            waker,
            reads_in_flight: 0,
            buffered_bytes: 0,
            buffered_bytes_max,
            ready: Vec::new(),
            dirty: Vec::new(),
            throttled: Vec::new(),
            durable_seen: 0,
            drain_deadline: None,
            idle_check_due: Instant::now(),
            scratch: vec![0u8; READ_CHUNK],
            waiting,
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
            self.read_ready();
            self.turn_end();
            if self.drained() {
                break;
            }
        }
        for mut connection in self.connections.drain() {
            let _ = connection.flush();
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
        let mut due = now + POLL_TIMEOUT_MAX;
        if let Some(send) = self.pending_sends.front() {
            due = due.min(send.deadline);
            if send.wait_slave {
                due = due.min(send.slave_deadline);
            }
        }
        if let Some(meta) = self.pending_meta.front() {
            due = due.min(meta.deadline);
        }
        for pull in &self.parked_pulls {
            due = due.min(pull.deadline);
        }
        due.saturating_duration_since(now)
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let (mut socket, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // EMFILE and friends: keep serving the connections we have.
                    log::warn!("accept failed: {error}");
                    return;
                }
            };
            let counters = &self.broker.counters;
            if counters.connections.load(Ordering::Relaxed) >= self.broker.config.max_connections {
                log::warn!("refusing connection from {peer}: max_connections reached");
                let mut frame = Vec::new();
                Response::error(ErrorCode::TooManyConnections, "max_connections reached")
                    .encode(0, &mut frame);
                let _ = io::Write::write(&mut socket, &frame);
                continue;
            }
            let _ = socket.set_nodelay(true);
            let target = self.next_handoff % self.handoffs.len().max(1);
            self.next_handoff = self.next_handoff.wrapping_add(1);
            match self.handoffs.get(target) {
                Some(handoff) if target != self.index => {
                    if handoff.sender.send((socket, peer)).is_ok() {
                        let _ = handoff.waker.wake();
                    }
                }
                _ => self.register(socket, peer),
            }
        }
    }

    fn register_incoming(&mut self) {
        while let Ok((socket, peer)) = self.incoming.try_recv() {
            self.register(socket, peer);
        }
    }

    fn register(&mut self, mut socket: TcpStream, peer: SocketAddr) {
        if self.drain_deadline.is_some() {
            return;
        }
        let counters = &self.broker.counters;
        let id = counters.connections_total.fetch_add(1, Ordering::Relaxed);
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(error) = self
            .poll
            .registry()
            .register(&mut socket, Token(key), interest)
        {
            log::warn!("cannot register connection from {peer}: {error}");
            return;
        }
        entry.insert(Connection::new(id, socket, peer));
        counters.connections.fetch_add(1, Ordering::Relaxed);
        log::debug!("connection {id} from {peer} on loop {}", self.index);
    }

    /// Reads and dispatches every connection marked ready, within per-turn budgets.
    fn read_ready(&mut self) {
        let mut ready = std::mem::take(&mut self.ready);
        ready.sort_unstable();
        ready.dedup();
        for key in ready {
            self.on_readable(key);
        }
    }

    fn on_readable(&mut self, key: usize) {
        self.read_and_dispatch(key);
        self.account_buffer(key);
        self.enforce_buffer_budget();
    }

    /// Brings the loop's count of buffered input up to date for one connection.
    fn account_buffer(&mut self, key: usize) {
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        let now = connection.read_buffer.len();
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
                .max_by_key(|(_, connection)| connection.read_buffer.len())
                .map(|(key, connection)| (key, connection.read_buffer.len()));
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
        if connection.closing || connection.pending_output() > WRITE_BACKLOG_MAX {
            return;
        }
        if self.broker.store.backlog_bytes() > self.broker.config.append_backlog_max_bytes {
            self.throttled.push(key);
            return;
        }
        let outcome = if connection.read_closed {
            Ok(ReadOutcome::Drained)
        } else {
            connection.fill_read_buffer(&mut self.scratch)
        };
        let mut again = match outcome {
            Ok(ReadOutcome::Drained) => false,
            Ok(ReadOutcome::BudgetSpent) => true,
            Ok(ReadOutcome::Closed) => {
                connection.read_closed = true;
                false
            }
            Err(error) => {
                log::debug!(
                    "connection {} from {}: read failed: {error}",
                    connection.id,
                    connection.peer
                );
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
            if !connection.read_buffer.is_empty() {
                log::debug!(
                    "connection {} from {} closed mid-frame ({} bytes unread)",
                    connection.id,
                    connection.peer,
                    connection.read_buffer.len()
                );
            }
            connection.closing = true;
            self.mark_dirty(key);
        }
        if again {
            self.ready.push(key);
        }
    }

    /// Decodes and dispatches the frames buffered for a connection, at most
    /// `FRAMES_PER_TURN` of them.
    fn decode_and_dispatch(&mut self, key: usize) -> Decoded {
        let max_frame_bytes = self.broker.config.max_frame_bytes;
        for _ in 0..FRAMES_PER_TURN {
            let Some(connection) = self.connections.get_mut(key) else {
                return Decoded::Stopped;
            };
            if connection.closing {
                return Decoded::Stopped;
            }
            if connection.read_buffer.is_empty() {
                return Decoded::Drained;
            }
            // Bytes already read stay buffered until the flusher catches up.
            if self.broker.store.backlog_bytes() > self.broker.config.append_backlog_max_bytes {
                self.throttled.push(key);
                return Decoded::Stopped;
            }
            // Reads in flight hold their results in memory: past a few, this
            // connection's requests wait until they are answered (`complete_reads`).
            if connection.reads_in_flight >= READS_IN_FLIGHT_PER_CONNECTION_MAX {
                connection.reads_paused = true;
                return Decoded::Stopped;
            }
            match decode_frame(&mut connection.read_buffer, max_frame_bytes) {
                Ok(Some(frame)) => self.dispatch(key, frame),
                Ok(None) => return Decoded::Drained,
                Err(error) => {
                    let request_id =
                        keel_protocol::peek_request_id(&connection.read_buffer).unwrap_or(0);
                    let code = decode_error_code(&error);
                    self.fail_connection(key, request_id, code, &error.to_string());
                    return Decoded::Stopped;
                }
            }
        }
        match self.connections.get(key) {
            Some(connection) if !connection.read_buffer.is_empty() => Decoded::BudgetSpent,
            _ => Decoded::Drained,
        }
    }

    /// Decodes and carries out one request. Replies are queued, never written here.
    fn dispatch(&mut self, key: usize, frame: RawFrame) {
        if !frame.kind.is_request() {
            let message = format!("{} is a response kind, not a request", frame.kind.name());
            self.fail_connection(key, frame.request_id, ErrorCode::UnknownKind, &message);
            return;
        }
        let request = match Request::decode(&frame) {
            Ok(request) => request,
            Err(error) => {
                let message = format!("bad {} body: {error}", frame.kind.name());
                self.fail_connection(key, frame.request_id, ErrorCode::MalformedFrame, &message);
                return;
            }
        };
        let request_id = frame.request_id;
        match request {
            Request::Ping => self.reply(key, request_id, &Response::Pong),
            Request::Send(message) => {
                if self.reserved_topic(key, request_id, frame.is_oneway(), &message.topic) {
                    return;
                }
                self.on_send(key, request_id, frame.is_oneway(), vec![message], false)
            }
            Request::SendBatch(messages) => {
                if let Some(message) = messages.iter().find(|m| m.topic.contains('%')) {
                    let topic = message.topic.clone();
                    self.reserved_topic(key, request_id, frame.is_oneway(), &topic);
                    return;
                }
                self.on_send(key, request_id, frame.is_oneway(), messages, true)
            }
            Request::Heartbeat(heartbeat) => self.on_heartbeat(key, request_id, heartbeat),
            Request::GroupCommit(commit) => self.on_group_commit(key, request_id, commit),
            Request::SendBack(back) => self.on_send_back(key, request_id, back),
            Request::OffsetForTime(query) => self.on_offset_for_time(key, request_id, query),
            Request::MessageInfo {
                msg_id,
                key: wanted,
            } => self.on_message_info(key, request_id, msg_id, wanted),
            Request::Pull(pull) => self.on_pull(key, request_id, pull),
            Request::CommitOffset(commit) => self.on_commit_offset(key, request_id, commit),
            Request::QueryOffset(query) => self.on_query_offset(key, request_id, query),
            Request::CreateTopic(create) => {
                if self.reserved_topic(key, request_id, false, &create.topic) {
                    return;
                }
                self.on_create_topic(key, request_id, create)
            }
            Request::ListTopics(list) => self.on_list_topics(key, request_id, list),
            Request::Stats => {
                let stats = self.broker.stats();
                self.reply(key, request_id, &Response::Stats(stats));
            }
            Request::Promote { role, force } => self.on_promote(key, request_id, role, force),
            Request::RegisterBroker(_) | Request::GetRoutes(_) => {
                let response = Response::error(
                    ErrorCode::InvalidArgument,
                    format!(
                        "{} is for a name server (keeld namesrv), not a broker",
                        frame.kind.name()
                    ),
                );
                self.reply(key, request_id, &response);
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
        self.complete_reads();
        self.complete_sends(now);
        self.complete_meta(now);
        self.complete_replies();
        self.serve_parked_pulls(now);
        if now >= self.idle_check_due {
            self.close_idle(now);
            self.idle_check_due = now + Duration::from_secs(1);
        }
        self.write_dirty();
        let waiting = !self.pending_sends.is_empty()
            || !self.parked_pulls.is_empty()
            || !self.pending_meta.is_empty()
            || !self.pending_replies.is_empty()
            || !self.throttled.is_empty()
            || self.drain_deadline.is_some();
        self.waiting.store(waiting, Ordering::SeqCst);
    }

    fn begin_drain(&mut self, now: Instant) {
        let timeout = Duration::from_millis(self.broker.config.shutdown_timeout_ms);
        self.drain_deadline = Some(now + timeout);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        for pull in &mut self.parked_pulls {
            pull.deadline = now;
        }
    }

    /// True once shutting down and every pending reply was answered and written.
    fn drained(&self) -> bool {
        let Some(deadline) = self.drain_deadline else {
            return false;
        };
        if Instant::now() >= deadline {
            return true;
        }
        self.pending_sends.is_empty()
            && self.pending_meta.is_empty()
            && self.parked_pulls.is_empty()
            && self.reads_in_flight == 0
            && self
                .connections
                .iter()
                .all(|(_, connection)| connection.pending_output() == 0)
    }

    fn close_idle(&mut self, now: Instant) {
        let idle_ms = self.broker.config.connection_idle_timeout_ms;
        if idle_ms == 0 {
            return;
        }
        let idle = Duration::from_millis(idle_ms);
        // A connection waiting for an answer is not idle, however long the wait.
        let mut waiting: std::collections::HashSet<u64> = std::collections::HashSet::new();
        waiting.extend(self.pending_sends.iter().map(|send| send.connection_id));
        waiting.extend(self.pending_meta.iter().map(|meta| meta.connection_id));
        waiting.extend(self.pending_replies.iter().map(|reply| reply.connection_id));
        let stale: Vec<usize> = self
            .connections
            .iter()
            .filter(|(_, connection)| {
                now.duration_since(connection.last_activity) > idle
                    && connection.pulls_waiting == 0
                    && !waiting.contains(&connection.id)
            })
            .map(|(key, _)| key)
            .collect();
        for key in stale {
            if let Some(connection) = self.connections.get(key) {
                log::debug!(
                    "closing idle connection {} from {}",
                    connection.id,
                    connection.peer
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
            let backlogged = connection.pending_output() > WRITE_BACKLOG_MAX;
            if let Err(error) = connection.flush() {
                log::debug!(
                    "connection {} from {}: write failed: {error}",
                    connection.id,
                    connection.peer
                );
                self.close(key);
                continue;
            }
            if connection.closing && connection.pending_output() == 0 {
                self.close(key);
            } else if backlogged && connection.pending_output() <= WRITE_BACKLOG_MAX {
                self.ready.push(key);
            }
        }
        self.dirty = dirty;
    }

    /// Queues a response frame on a connection, if it still exists.
    pub(crate) fn reply(&mut self, key: usize, request_id: u64, response: &Response) {
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        response.encode(request_id, &mut connection.write_buffer);
        self.mark_dirty(key);
    }

    /// Queues a response for the connection with `connection_id`, if it is still open.
    pub(crate) fn reply_if_open(
        &mut self,
        key: usize,
        connection_id: u64,
        request_id: u64,
        response: &Response,
    ) {
        if self
            .connections
            .get(key)
            .is_some_and(|connection| connection.id == connection_id)
        {
            self.reply(key, request_id, response);
        }
    }

    fn mark_dirty(&mut self, key: usize) {
        self.dirty.push(key);
    }

    pub(crate) fn connection_id(&self, key: usize) -> u64 {
        self.connections
            .get(key)
            .map_or(u64::MAX, |connection| connection.id)
    }

    /// Answers a protocol violation with an error frame, then closes the connection once
    /// the frame is written. Other connections are unaffected.
    pub(crate) fn fail_connection(
        &mut self,
        key: usize,
        request_id: u64,
        code: ErrorCode,
        message: &str,
    ) {
        self.broker
            .counters
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        if let Some(connection) = self.connections.get(key) {
            log::warn!(
                "closing connection {} from {}: {code}: {message}",
                connection.id,
                connection.peer
            );
        }
        self.reply(key, request_id, &Response::error(code, message));
        if let Some(connection) = self.connections.get_mut(key) {
            connection.closing = true;
            connection.read_buffer.clear();
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut connection) = self.connections.try_remove(key) {
            self.buffered_bytes = self
                .buffered_bytes
                .saturating_sub(connection.buffered_accounted);
            let _ = self.poll.registry().deregister(&mut connection.socket);
            self.broker
                .counters
                .connections
                .fetch_sub(1, Ordering::Relaxed);
            log::debug!(
                "connection {} from {} closed",
                connection.id,
                connection.peer
            );
        }
    }

    fn complete_replies(&mut self) {
        if self.pending_replies.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending_replies);
        for reply in pending {
            let outcome = reply
                .outcome
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .take();
            match outcome {
                Some(response) => {
                    self.reply_if_open(reply.key, reply.connection_id, reply.request_id, &response)
                }
                None => self.pending_replies.push(reply),
            }
        }
    }

    /// Answers every pending send whose fate is known: durable (`SEND_OK`), locally
    /// durable but not on a slave (`SLAVE_NOT_AVAILABLE`, `FLUSH_SLAVE_TIMEOUT`), past
    /// its deadline (`FLUSH_DISK_TIMEOUT`), or caught by a storage failure (error).
    fn complete_sends(&mut self, now: Instant) {
        let durable = self.broker.offset_durable();
        let local = self.broker.store.offset_local_durable();
        let mut slave_connected: Option<bool> = None;
        let poisoned = self.broker.store.is_poisoned();
        let draining_expired = self.drain_deadline.is_some_and(|deadline| now >= deadline);
        while let Some(front) = self.pending_sends.front() {
            let counters = &self.broker.counters;
            let messages = front.messages;
            let response = if self
                .broker
                .store
                .is_discarded(front.generation, front.offset_end)
            {
                counters.sends_failed.fetch_add(messages, Ordering::Relaxed);
                Response::error(
                    ErrorCode::DiskFull,
                    "the disk filled up before this message was written; it was not stored",
                )
            } else if front.offset_end <= durable {
                counters.sends_ok.fetch_add(messages, Ordering::Relaxed);
                front.result.response(SendStatus::SendOk)
            } else if poisoned && front.log_offset < self.broker.store.offset_attempted() {
                // Handed to the file system before the failure: it may be in the log
                // after a restart, or not. Never "not stored".
                counters
                    .sends_outcome_unknown
                    .fetch_add(messages, Ordering::Relaxed);
                front.result.response(SendStatus::OutcomeUnknown)
            } else if poisoned {
                counters.sends_failed.fetch_add(messages, Ordering::Relaxed);
                Response::error(
                    ErrorCode::StorageFailed,
                    "the commit log failed to write or fsync before this message was \
                     written; it was not stored. Restart required",
                )
            } else if front.wait_slave && front.offset_end <= local {
                // On disk here; the slave is the question. A send that found a slave in
                // sync waits for its ack until the slave timeout, unless every slave
                // disconnected meanwhile.
                let connected =
                    *slave_connected.get_or_insert_with(|| self.broker.slave_connected());
                if front.no_slave || !connected {
                    counters
                        .sends_slave_not_available
                        .fetch_add(messages, Ordering::Relaxed);
                    front.result.response(SendStatus::SlaveNotAvailable)
                } else if now >= front.slave_deadline || draining_expired {
                    counters
                        .sends_flush_slave_timeout
                        .fetch_add(messages, Ordering::Relaxed);
                    front.result.response(SendStatus::FlushSlaveTimeout)
                } else {
                    break;
                }
            } else if now >= front.deadline || draining_expired {
                counters
                    .sends_flush_disk_timeout
                    .fetch_add(messages, Ordering::Relaxed);
                front.result.response(SendStatus::FlushDiskTimeout)
            } else {
                break;
            };
            let Some(send) = self.pending_sends.pop_front() else {
                break;
            };
            self.broker
                .counters
                .pending_sends
                .fetch_sub(1, Ordering::Relaxed);
            self.reply_if_open(send.key, send.connection_id, send.request_id, &response);
        }
    }

    fn complete_meta(&mut self, now: Instant) {
        let persisted = self.broker.store.meta_persisted();
        let failure = self.broker.store.meta_failure();
        while let Some(front) = self.pending_meta.front() {
            let response = if front.version <= persisted {
                front.response.clone()
            } else if let Some((disk_full, detail)) = &failure {
                // Answer now rather than at the deadline: the operator must free space
                // or fix the disk; the broker keeps retrying in the background.
                let code = if *disk_full {
                    ErrorCode::DiskFull
                } else {
                    ErrorCode::Internal
                };
                Response::error(code, format!("could not persist to disk: {detail}"))
            } else if now >= front.deadline {
                Response::error(
                    ErrorCode::Internal,
                    "metadata was not persisted in time; see the broker log",
                )
            } else {
                break;
            };
            let Some(meta) = self.pending_meta.pop_front() else {
                break;
            };
            self.reply_if_open(meta.key, meta.connection_id, meta.request_id, &response);
        }
    }

    /// Parked long polls whose queue has something new, or whose wait is over, go back
    /// to the reader threads. Which have something is checked in memory, for all of
    /// them under one lock, and only when the durable offset moved.
    fn serve_parked_pulls(&mut self, now: Instant) {
        if self.parked_pulls.is_empty() {
            return;
        }
        let durable = self.broker.offset_durable();
        let advanced = durable != self.durable_seen;
        self.durable_seen = durable;
        let any_due = self.parked_pulls.iter().any(|pull| now >= pull.deadline);
        if !advanced && !any_due {
            return;
        }
        let readable = if advanced {
            self.broker.store.readable(
                self.parked_pulls
                    .iter()
                    .map(|p| (p.pull.topic.as_str(), p.pull.queue_id, p.pull.queue_offset)),
            )
        } else {
            vec![false; self.parked_pulls.len()]
        };
        let parked = std::mem::take(&mut self.parked_pulls);
        for (pull, readable) in parked.into_iter().zip(readable) {
            let expired = now >= pull.deadline;
            if !readable && !expired {
                self.parked_pulls.push(pull);
                continue;
            }
            self.broker
                .counters
                .parked_pulls
                .fetch_sub(1, Ordering::Relaxed);
            // Still counted in the connection's `pulls_waiting`: it becomes a read.
            let long_poll_until = (!expired).then_some(pull.deadline);
            self.submit_read(
                pull.reply_to,
                ReadJob::Pull {
                    pull: pull.pull,
                    long_poll_until,
                },
            );
        }
    }

    /// Hands a read of the log to the reader threads.
    pub(crate) fn submit_read(&mut self, reply_to: ReplyTo, job: ReadJob) {
        let pull = matches!(job, ReadJob::Pull { .. });
        let request = ReadRequest {
            reply_to,
            job,
            done: self.reads_done_sender.clone(),
            waker: self.waker.clone(),
        };
        if self.reads.send(request).is_err() {
            let response = Response::error(ErrorCode::Internal, "the reader threads stopped");
            self.answer_read(reply_to, pull, &response);
            return;
        }
        self.reads_in_flight += 1;
        if let Some(connection) = self.open_connection(reply_to) {
            connection.reads_in_flight += 1;
        }
    }

    /// The connection a reply is for, if it is still the one that asked.
    fn open_connection(&mut self, reply_to: ReplyTo) -> Option<&mut Connection> {
        self.connections
            .get_mut(reply_to.key)
            .filter(|connection| connection.id == reply_to.connection_id)
    }

    /// Answers (or parks) what the reader threads finished.
    fn complete_reads(&mut self) {
        while let Ok(done) = self.reads_done.try_recv() {
            self.reads_in_flight = self.reads_in_flight.saturating_sub(1);
            let reply_to = done.reply_to;
            if let Some(connection) = self.open_connection(reply_to) {
                connection.reads_in_flight = connection.reads_in_flight.saturating_sub(1);
                if connection.reads_paused {
                    connection.reads_paused = false;
                    self.ready.push(reply_to.key);
                }
            }
            match done.outcome {
                crate::reader::ReadOutcome::Reply(response) => {
                    self.answer_read(reply_to, done.pull, &response)
                }
                crate::reader::ReadOutcome::NothingYet { pull, deadline } => {
                    if self.open_connection(reply_to).is_none() {
                        continue;
                    }
                    let deadline = match self.drain_deadline {
                        Some(_) => Instant::now(),
                        None => deadline,
                    };
                    self.broker
                        .counters
                        .parked_pulls
                        .fetch_add(1, Ordering::Relaxed);
                    self.parked_pulls.push(ParkedPull {
                        reply_to,
                        pull,
                        deadline,
                    });
                }
            }
        }
    }

    /// Answers a read (a PULL's, when `pull`: the connection waits for one fewer).
    fn answer_read(&mut self, reply_to: ReplyTo, pull: bool, response: &Response) {
        if pull {
            self.finish_pull_wait(reply_to);
        }
        self.reply_if_open(
            reply_to.key,
            reply_to.connection_id,
            reply_to.request_id,
            response,
        );
    }

    /// A PULL of this connection got its answer.
    fn finish_pull_wait(&mut self, reply_to: ReplyTo) {
        if let Some(connection) = self.open_connection(reply_to) {
            connection.pulls_waiting = connection.pulls_waiting.saturating_sub(1);
        }
    }
}
