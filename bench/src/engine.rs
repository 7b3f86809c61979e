//! The load engine: connections driven by mio event loops (one thread by default), each
//! a closed loop with up to `window` requests in flight, speaking the wire protocol
//! directly. A reply is read where it lands, no thread is woken per reply, and a
//! request is a copy of a pre-encoded frame with its id patched: the engine costs the
//! machine little, so what the run measures is the broker.

use crate::report::{Recorder, Totals};
use bytes::BytesMut;
use keel_protocol::{
    decode_frame, Message, Request, Response, SendStatus, DEFAULT_MAX_FRAME_BYTES, FLAG_ONEWAY,
};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every connection sends.
#[derive(Clone)]
pub(crate) struct Plan {
    pub address: SocketAddr,
    pub connections: usize,
    pub threads: usize,
    /// Requests in flight per connection (1: a synchronous producer).
    pub window: usize,
    pub oneway: bool,
    /// Connection i sends to `topics[i % len]`.
    pub topics: Vec<String>,
    pub size: usize,
    /// Messages per request (SEND_BATCH above 1).
    pub batch: usize,
    /// Put the send time (us since the epoch) in the first 8 payload bytes (for the
    /// consumers' end-to-end latency); each request is then encoded afresh.
    pub stamp: bool,
    /// Requests each connection sends (`--count`), by connection index (`None`: until
    /// told to stop).
    pub requests_per_connection: Option<Vec<u64>>,
    /// Requests a second each connection may send (`--rate`); `None`: no limit.
    pub request_rate: Option<f64>,
}

/// After the stop, how long the engine waits for the answers still owed.
const DRAIN_MAX: Duration = Duration::from_secs(15);
/// Unsent bytes a oneway connection keeps queued.
const ONEWAY_BACKLOG: usize = 1 << 20;

/// Runs the plan until `stop` is set (or every connection sent its requests) and every
/// answer is in; the figures go to `totals` and `recorders` (one per thread).
pub(crate) fn run(
    plan: &Plan,
    totals: &Arc<Totals>,
    stop: &Arc<AtomicBool>,
    recorders: &[Arc<Recorder>],
) -> Result<(), String> {
    let threads = plan.threads.clamp(1, plan.connections);
    let mut handles = Vec::with_capacity(threads);
    for thread in 0..threads {
        let connections: Vec<usize> = (thread..plan.connections).step_by(threads).collect();
        let (plan, totals, stop) = (plan.clone(), totals.clone(), stop.clone());
        let recorder = recorders[thread % recorders.len()].clone();
        let handle = std::thread::Builder::new()
            .name(format!("bench-loop-{thread}"))
            .spawn(move || {
                let outcome = drive(&plan, &connections, &totals, &stop, &recorder);
                if let Err(error) = &outcome {
                    totals.end_early(error.clone());
                    stop.store(true, Ordering::Relaxed);
                }
            })
            .map_err(|e| format!("cannot start a load thread: {e}"))?;
        handles.push(handle);
    }
    for handle in handles {
        if handle.join().is_err() {
            totals.end_early("a load thread panicked".into());
        }
    }
    Ok(())
}

/// One connection of the engine.
struct Connection {
    socket: TcpStream,
    /// A whole request frame with request id 0, copied for every request.
    template: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    input: BytesMut,
    /// Requests sent and not answered, oldest first: (request id, when sent).
    in_flight: VecDeque<(u64, Instant)>,
    next_id: u64,
    requests_left: Option<u64>,
    /// Requests sent (for `--rate`'s pacing).
    requests_sent: u64,
    seed: usize,
    /// Messages per request.
    messages: u64,
    /// The poller reported a hang-up: read until EOF, not just until a short read.
    hangup_seen: bool,
    closed: bool,
}

fn drive(
    plan: &Plan,
    indexes: &[usize],
    totals: &Totals,
    stop: &AtomicBool,
    recorder: &Recorder,
) -> Result<(), String> {
    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut connections = Vec::with_capacity(indexes.len());
    for (token, index) in indexes.iter().enumerate() {
        let socket = std::net::TcpStream::connect(plan.address)
            .map_err(|e| format!("the broker went away: connect to {}: {e}", plan.address))?;
        socket
            .set_nodelay(true)
            .and_then(|()| socket.set_nonblocking(true))
            .map_err(|e| format!("socket: {e}"))?;
        let mut socket = TcpStream::from_std(socket);
        poll.registry()
            .register(
                &mut socket,
                Token(token),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register: {e}"))?;
        connections.push(Connection {
            socket,
            template: encode_request(plan, *index, 0),
            output: Vec::with_capacity(64 << 10),
            written: 0,
            input: BytesMut::with_capacity(64 << 10),
            in_flight: VecDeque::with_capacity(plan.window),
            next_id: 1,
            requests_left: plan
                .requests_per_connection
                .as_ref()
                .map(|shares| shares.get(*index).copied().unwrap_or(0)),
            requests_sent: 0,
            seed: *index,
            messages: plan.batch as u64,
            hangup_seen: false,
            closed: false,
        });
    }
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 256 << 10];
    let messages = plan.batch as u64;
    let pace = plan.request_rate.map(|rate| Pace {
        started: Instant::now(),
        rate,
    });
    for connection in &mut connections {
        fill(plan, pace.as_ref(), connection, stop, totals);
        flush(connection, totals);
    }
    let mut drain_deadline: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) && drain_deadline.is_none() {
            drain_deadline = Some(Instant::now() + DRAIN_MAX);
        }
        let owed = connections
            .iter()
            .any(|c| !c.closed && (!c.in_flight.is_empty() || c.written < c.output.len()));
        let more = !stop.load(Ordering::Relaxed)
            && connections
                .iter()
                .any(|c| !c.closed && c.requests_left != Some(0));
        if !owed && !more {
            return Ok(());
        }
        if drain_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            let unanswered: usize = connections.iter().map(|c| c.in_flight.len()).sum();
            if unanswered > 0 {
                totals.count_failure("NO_ANSWER_AFTER_STOP", unanswered as u64 * messages);
            }
            return Ok(());
        }
        // Paced: wake when the next request of any connection is due.
        let timeout = match &pace {
            Some(pace) => connections
                .iter()
                .filter(|c| !c.closed)
                .map(|c| {
                    pace.due(c.requests_sent)
                        .saturating_duration_since(Instant::now())
                })
                .min()
                .unwrap_or(POLL_MAX)
                .min(POLL_MAX),
            None => POLL_MAX,
        };
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(format!("poll: {error}")),
        }
        for event in events.iter() {
            let Some(connection) = connections.get_mut(event.token().0) else {
                continue;
            };
            if connection.closed {
                continue;
            }
            if event.is_read_closed() || event.is_error() {
                connection.hangup_seen = true;
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                read_replies(plan, connection, &mut scratch, totals, recorder);
            }
            if !connection.closed {
                fill(plan, pace.as_ref(), connection, stop, totals);
                flush(connection, totals);
            }
        }
        if pace.is_some() {
            for connection in connections.iter_mut().filter(|c| !c.closed) {
                fill(plan, pace.as_ref(), connection, stop, totals);
                flush(connection, totals);
            }
        }
    }
}

/// The longest the engine sleeps in `poll`.
const POLL_MAX: Duration = Duration::from_millis(50);

/// `--rate`: each connection's k-th request is due `k / rate` seconds after the start.
struct Pace {
    started: Instant,
    rate: f64,
}

impl Pace {
    fn due(&self, requests_sent: u64) -> Instant {
        self.started + Duration::from_secs_f64(requests_sent as f64 / self.rate)
    }
}

/// A request frame of `plan`'s shape, with `request_id`.
fn encode_request(plan: &Plan, seed: usize, request_id: u64) -> Vec<u8> {
    let mut payload = payload_of(plan.size, seed);
    if plan.stamp {
        let now = crate::shared::now_us().to_le_bytes();
        let length = payload.len().min(8);
        payload[..length].copy_from_slice(&now[..length]);
    }
    let topic = &plan.topics[seed % plan.topics.len()];
    let message = Message::new(topic.as_str(), payload).sealed();
    let request = match plan.batch {
        1 => Request::Send(message),
        batch => Request::SendBatch(vec![message; batch]),
    };
    let flags = if plan.oneway { FLAG_ONEWAY } else { 0 };
    let mut frame = Vec::new();
    request.encode(request_id, flags, &mut frame);
    frame
}

pub(crate) fn payload_of(size: usize, seed: usize) -> Vec<u8> {
    (0..size)
        .map(|index| b'a' + ((index * 31 + seed * 7) % 26) as u8)
        .collect()
}

/// Queues requests until the window (or, oneway, the output backlog) is full, or
/// (paced) until the next request is not yet due.
fn fill(
    plan: &Plan,
    pace: Option<&Pace>,
    connection: &mut Connection,
    stop: &AtomicBool,
    totals: &Totals,
) {
    let messages = plan.batch as u64;
    loop {
        if stop.load(Ordering::Relaxed) || connection.requests_left == Some(0) {
            return;
        }
        if pace.is_some_and(|pace| pace.due(connection.requests_sent) > Instant::now()) {
            return;
        }
        let room = if plan.oneway {
            connection.output.len() - connection.written < ONEWAY_BACKLOG
        } else {
            connection.in_flight.len() < plan.window
        };
        if !room {
            return;
        }
        let id = connection.next_id;
        connection.next_id += 1;
        let start = connection.output.len();
        if plan.stamp {
            let frame = encode_request(plan, connection.seed, id);
            connection.output.extend_from_slice(&frame);
        } else {
            connection.output.extend_from_slice(&connection.template);
            // The request id: bytes 8..16 of the frame header.
            connection.output[start + 8..start + 16].copy_from_slice(&id.to_le_bytes());
        }
        if let Some(left) = &mut connection.requests_left {
            *left -= 1;
        }
        connection.requests_sent += 1;
        totals.sent.fetch_add(messages, Ordering::Relaxed);
        if !plan.oneway {
            connection.in_flight.push_back((id, Instant::now()));
        }
    }
}

/// Writes what is queued, until done or the socket is full.
fn flush(connection: &mut Connection, totals: &Totals) {
    while connection.written < connection.output.len() {
        match connection
            .socket
            .write(&connection.output[connection.written..])
        {
            Ok(0) => return close(connection, totals, "the broker closed the connection"),
            Ok(count) => connection.written += count,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return close(connection, totals, &format!("write failed: {error}")),
        }
    }
    if connection.written == connection.output.len() {
        connection.output.clear();
        connection.written = 0;
    } else if connection.written > (1 << 20) {
        connection.output.drain(..connection.written);
        connection.written = 0;
    }
}

/// Reads and settles every reply that arrived.
fn read_replies(
    plan: &Plan,
    connection: &mut Connection,
    scratch: &mut [u8],
    totals: &Totals,
    recorder: &Recorder,
) {
    loop {
        match connection.socket.read(scratch) {
            Ok(0) => return close(connection, totals, "the broker closed the connection"),
            Ok(count) => {
                connection.input.extend_from_slice(&scratch[..count]);
                if count < scratch.len() && !connection.hangup_seen {
                    break;
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return close(connection, totals, &format!("read failed: {error}")),
        }
    }
    let messages = plan.batch as u64;
    loop {
        let frame = match decode_frame(&mut connection.input, DEFAULT_MAX_FRAME_BYTES) {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(error) => return close(connection, totals, &format!("bad reply: {error}")),
        };
        let Some(position) = connection
            .in_flight
            .iter()
            .position(|(id, _)| *id == frame.request_id)
        else {
            // An error for no request: the broker is closing this connection.
            let detail = match Response::decode(&frame) {
                Ok(Response::Error(error)) => format!("the broker refused: {error}"),
                _ => format!("a reply to unknown request {}", frame.request_id),
            };
            return close(connection, totals, &detail);
        };
        let Some((_, sent)) = connection.in_flight.remove(position) else {
            return;
        };
        let micros = sent.elapsed().as_micros().max(1) as u64;
        match Response::decode(&frame) {
            Ok(Response::SendResult(result)) => {
                settle(result.status, micros, messages, totals, recorder)
            }
            Ok(Response::SendBatchResult(result)) => {
                settle(result.status, micros, messages, totals, recorder)
            }
            Ok(Response::Error(error)) => {
                totals.count_failure(error.code.name(), messages);
            }
            Ok(other) => totals.count_failure(other.kind().name(), messages),
            Err(error) => return close(connection, totals, &format!("bad reply: {error}")),
        }
    }
}

fn settle(status: SendStatus, micros: u64, messages: u64, totals: &Totals, recorder: &Recorder) {
    if status == SendStatus::SendOk {
        totals.ok.fetch_add(messages, Ordering::Relaxed);
        recorder.record(micros, messages);
    } else {
        totals.count_status(status.name(), messages);
    }
}

/// The connection is gone: what it was owed has an unknown outcome, and the run ends.
fn close(connection: &mut Connection, totals: &Totals, why: &str) {
    if connection.closed {
        return;
    }
    connection.closed = true;
    let unanswered = connection.in_flight.len() as u64 * connection.messages;
    connection.in_flight.clear();
    if unanswered > 0 {
        // The messages were counted as sent; their requests may or may not be stored.
        totals.count_failure("CONNECTION_LOST (outcome unknown)", unanswered);
    }
    totals.end_early(format!("the broker went away: {why}"));
}
