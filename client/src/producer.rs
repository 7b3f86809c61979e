//! The producer: sync, async and oneway sends, with retries inside one send budget.
//!
//! Like RocketMQ: a failed or timed-out send is retried (`retry_times_when_send_failed`
//! = 2, so 3 attempts) and every attempt shares one `send_timeout_ms` budget: each
//! attempt may take an equal share of what is left, so the first cannot eat it all; a stored-but-not-OK status
//! (`FLUSH_DISK_TIMEOUT`, ...) is returned to the caller, not retried, unless
//! `retry_when_not_stored_ok` is set (the retry may then store the message twice).
//! Oneway sends are never retried. After the last attempt fails the producer logs an
//! alarm at error level.
//!
//! Given name servers (`Producer::with_name_servers`) instead of one broker, a producer
//! spreads a topic's sends over every (master, queue) pair; a retry goes to another
//! master than the one that just failed (unless it is the only one), each attempt gets
//! an equal share of what is left of the budget, and a master that failed or answered
//! slowly is avoided for a while (latency fault avoidance, on by default).

use crate::connection::{Connection, ConnectionOptions};
use crate::routing::{pick, FaultTracker, Router};
use crate::{resolve, ClientError};
use keel_protocol::now_ms;
use keel_protocol::{
    Message, Request, Response, SendBatchResult, SendResult, SendStatus, QUEUE_ID_ANY,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// Budget for one send, all attempts included. Each attempt waits at most an equal
    /// share of what is left (1 s of the default 3 s for the first of 3 attempts), so a
    /// lost reply leaves time to retry. To receive a broker's `FLUSH_DISK_TIMEOUT` or
    /// `FLUSH_SLAVE_TIMEOUT` instead of a client timeout, make that share longer than
    /// the broker's `sync_flush_timeout_ms` / `slave_timeout_ms`.
    pub send_timeout: Duration,
    /// Retries after a failed attempt (sync and async); 2 means up to 3 attempts.
    pub retry_times_when_send_failed: u32,
    /// Also retry when the broker stored the message but answered a non-OK status.
    pub retry_when_not_stored_ok: bool,
    pub connection: ConnectionOptions,
    /// With name servers: avoid a master that failed or answered slowly for a while.
    pub fault_avoidance: bool,
    /// How long a master that failed a send is avoided.
    pub fault_isolation: Duration,
    /// With name servers: how long routes are cached before being asked again.
    pub route_refresh: Duration,
    /// Number each message (producer id + sequence) so that a broker answers a retry
    /// of a message it already stored with the original's SEND_OK instead of storing
    /// it twice. Deduplication is per broker: a retry that lands on another master
    /// (failover) is stored there too.
    /// The id is random per `Producer` and sequences start at 1, so deduplication
    /// covers retries by this producer, not a resend by a restarted process.
    pub idempotent: bool,
}

impl Default for ProducerOptions {
    fn default() -> ProducerOptions {
        ProducerOptions {
            send_timeout: Duration::from_millis(3000),
            retry_times_when_send_failed: 2,
            retry_when_not_stored_ok: false,
            connection: ConnectionOptions::default(),
            fault_avoidance: true,
            fault_isolation: Duration::from_secs(30),
            route_refresh: Duration::from_secs(30),
            idempotent: true,
        }
    }
}

/// Where sends go.
enum Target {
    Broker(SocketAddr),
    NameServers(Router),
}

struct Inner {
    target: Target,
    options: ProducerOptions,
    connections: Mutex<HashMap<SocketAddr, Arc<Connection>>>,
    faults: FaultTracker,
    cursor: AtomicUsize,
    /// Idempotence: this producer's id, and the next sequence.
    producer_id: u64,
    sequence: AtomicU64,
}

/// Sends messages to one broker, or to every master a name server knows. Cheap to
/// clone; clones share the connections.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

/// The answer to an async send, for callers that prefer waiting to a callback.
pub struct SendHandle {
    receiver: mpsc::Receiver<Result<SendResult, ClientError>>,
}

impl SendHandle {
    /// Waits for the outcome (bounded by the producer's send budget).
    pub fn wait(self) -> Result<SendResult, ClientError> {
        self.receiver.recv().unwrap_or(Err(ClientError::Timeout))
    }
}

impl Producer {
    fn new(target: Target, options: ProducerOptions) -> Producer {
        let producer_id = if options.idempotent {
            random_producer_id()
        } else {
            0
        };
        Producer {
            inner: Arc::new(Inner {
                target,
                producer_id,
                sequence: AtomicU64::new(1),
                faults: FaultTracker::new(options.fault_isolation),
                options,
                connections: Mutex::new(HashMap::new()),
                cursor: AtomicUsize::new(0),
            }),
        }
    }

    /// Connects to the broker at `address` (`host:port`).
    pub fn connect(address: &str, options: ProducerOptions) -> Result<Producer, ClientError> {
        let address = resolve(address)?;
        let producer = Producer::new(Target::Broker(address), options);
        producer.connection(address)?;
        Ok(producer)
    }

    /// Sends through the masters the name servers (`host:port` each; any one that
    /// answers will do) know for each topic, failing over between them.
    pub fn with_name_servers(
        name_servers: &[&str],
        options: ProducerOptions,
    ) -> Result<Producer, ClientError> {
        if name_servers.is_empty() {
            return Err(ClientError::InvalidArgument("no name server given".into()));
        }
        let router = Router::new(
            name_servers.iter().map(|s| s.to_string()).collect(),
            options.route_refresh,
            options.connection.tls.clone(),
        );
        Ok(Producer::new(Target::NameServers(router), options))
    }

    pub fn options(&self) -> &ProducerOptions {
        &self.inner.options
    }

    /// The live connection to `address`, reconnecting if the last one died.
    fn connection(&self, address: SocketAddr) -> Result<Arc<Connection>, ClientError> {
        let mut connections = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(connection) = connections
            .get(&address)
            .filter(|connection| !connection.is_closed())
        {
            return Ok(connection.clone());
        }
        let connection = Arc::new(Connection::connect(
            address,
            &self.inner.options.connection,
        )?);
        connections.insert(address, connection.clone());
        Ok(connection)
    }

    fn drop_connection(&self, broken: &Arc<Connection>) {
        let mut connections = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let address = broken.address();
        if connections
            .get(&address)
            .is_some_and(|current| Arc::ptr_eq(current, broken))
        {
            connections.remove(&address);
        }
    }

    /// Where the next attempt of `request` goes, and the queue to give its messages
    /// (`None`: leave them as they are).
    fn choose(
        &self,
        request: &Request,
        last_failed: Option<SocketAddr>,
    ) -> Result<(SocketAddr, Option<u32>), ClientError> {
        let router = match &self.inner.target {
            Target::Broker(address) => return Ok((*address, None)),
            Target::NameServers(router) => router,
        };
        let topic = match request {
            Request::Send(message) => message.topic.as_str(),
            Request::SendBatch(messages) => messages.first().map_or("", |m| m.topic.as_str()),
            _ => "",
        };
        let masters = router.masters(topic)?;
        let avoid = self.inner.options.fault_avoidance;
        pick(&masters, &self.inner.cursor, last_failed, |address| {
            !avoid || self.inner.faults.available(address)
        })
        .ok_or_else(|| ClientError::InvalidArgument(format!("no master for topic {topic:?}")))
    }

    /// Stamps the birth time and, for an idempotent producer, the producer id and the
    /// next sequence, and seals the message again with them. Done once per message:
    /// every retry carries the same numbers and CRC. A message whose fields no longer
    /// match the CRC it was sealed with (changed afterwards without `seal`, or damaged
    /// in memory) is sent as it is, so the broker refuses it (MESSAGE_CRC_MISMATCH)
    /// rather than this producer vouching for it.
    fn prepare(&self, mut message: Message) -> Message {
        let intact = message.crc_matches();
        if message.born_timestamp_ms == 0 {
            message.born_timestamp_ms = now_ms();
        }
        if self.inner.producer_id != 0 && message.producer_id == 0 {
            message.producer_id = self.inner.producer_id;
            message.sequence = self.inner.sequence.fetch_add(1, Ordering::Relaxed);
        }
        if intact {
            message.seal();
        }
        message
    }

    /// This producer's id (0 when it is not idempotent).
    pub fn producer_id(&self) -> u64 {
        self.inner.producer_id
    }

    /// Sends and waits for the broker's answer: a `SendResult` whose status says how
    /// durable the message is, or an error when no attempt got it stored.
    pub fn send(&self, message: Message) -> Result<SendResult, ClientError> {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.send_async(message, move |outcome| {
            let _ = sender.send(outcome);
        });
        receiver.recv().unwrap_or(Err(ClientError::Timeout))
    }

    /// Sends in the background; `callback` gets the result or the final error. Retries
    /// happen from the error path, within the same budget. The callback runs on a client
    /// thread and must not block.
    pub fn send_async(
        &self,
        message: Message,
        callback: impl FnOnce(Result<SendResult, ClientError>) + Send + 'static,
    ) {
        self.start(Request::Send(self.prepare(message)), move |outcome| {
            callback(outcome.and_then(|response| match response {
                Response::SendResult(result) => Ok(result),
                other => Err(ClientError::Protocol(format!(
                    "{} in reply to SEND",
                    other.kind().name()
                ))),
            }))
        });
    }

    /// Sends several messages stored all together or not at all, with one reply for all
    /// of them (at most 65535 and `max_frame_bytes` in all). Retried like `send`.
    pub fn send_batch(&self, messages: Vec<Message>) -> Result<SendBatchResult, ClientError> {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.send_batch_async(messages, move |outcome| {
            let _ = sender.send(outcome);
        });
        receiver.recv().unwrap_or(Err(ClientError::Timeout))
    }

    /// `send_batch` in the background; the callback must not block.
    pub fn send_batch_async(
        &self,
        messages: Vec<Message>,
        callback: impl FnOnce(Result<SendBatchResult, ClientError>) + Send + 'static,
    ) {
        if messages.is_empty() || messages.len() > usize::from(u16::MAX) {
            return callback(Err(ClientError::InvalidArgument(format!(
                "a batch holds 1 to 65535 messages, not {}",
                messages.len()
            ))));
        }
        let messages = messages.into_iter().map(|m| self.prepare(m)).collect();
        self.start(Request::SendBatch(messages), move |outcome| {
            callback(outcome.and_then(|response| match response {
                Response::SendBatchResult(result) => Ok(result),
                other => Err(ClientError::Protocol(format!(
                    "{} in reply to SEND_BATCH",
                    other.kind().name()
                ))),
            }))
        });
    }

    fn start(
        &self,
        request: Request,
        callback: impl FnOnce(Result<Response, ClientError>) + Send + 'static,
    ) {
        let attempt = Attempt {
            producer: self.clone(),
            request: Arc::new(request),
            deadline: Instant::now() + self.inner.options.send_timeout,
            attempts_left: self.inner.options.retry_times_when_send_failed + 1,
            attempts_made: 0,
            last_failed: None,
            last_error: None,
            unknown: None,
            last_answer: None,
            callback: Box::new(callback),
        };
        attempt.run();
    }

    /// `send_async` with a handle to wait on instead of a callback.
    pub fn send_async_handle(&self, message: Message) -> SendHandle {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.send_async(message, move |outcome| {
            let _ = sender.send(outcome);
        });
        SendHandle { receiver }
    }

    /// Fire and forget: no answer is read and nothing is retried. Returns once the
    /// bytes are handed to the socket.
    pub fn send_oneway(&self, message: Message) -> Result<(), ClientError> {
        let request = Request::Send(self.prepare(message));
        let (address, queue) = self.choose(&request, None)?;
        let placed = queue.map(|queue| with_queue(&request, queue));
        let connection = self.connection(address)?;
        connection
            .send_oneway(placed.as_ref().unwrap_or(&request))
            .inspect_err(|_| self.drop_connection(&connection))
    }
}

type SendCallback = Box<dyn FnOnce(Result<Response, ClientError>) + Send>;

/// The status of a reply to SEND or SEND_BATCH.
fn status_of(response: &Response) -> Option<SendStatus> {
    match response {
        Response::SendResult(result) => Some(result.status),
        Response::SendBatchResult(result) => Some(result.status),
        _ => None,
    }
}

/// A producer id that no other producer is likely to have: 64 random bits (std's
/// hasher keys are random per process), never 0.
fn random_producer_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

/// `request` with every message of it on `queue` (when given and the message left
/// the choice to the broker).
fn with_queue(request: &Request, queue: u32) -> Request {
    let place = |message: &Message| {
        let mut message = message.clone();
        if message.queue_id == QUEUE_ID_ANY {
            message.queue_id = queue;
        }
        message
    };
    match request {
        Request::Send(message) => Request::Send(place(message)),
        Request::SendBatch(messages) => Request::SendBatch(messages.iter().map(place).collect()),
        other => other.clone(),
    }
}

/// One send's state across its attempts.
struct Attempt {
    producer: Producer,
    request: Arc<Request>,
    deadline: Instant,
    attempts_left: u32,
    attempts_made: u32,
    /// The broker the previous attempt failed on.
    last_failed: Option<SocketAddr>,
    /// Why the previous attempt failed.
    last_error: Option<ClientError>,
    /// The first attempt whose outcome is unknown (sent, answer lost): once there is
    /// one, a later refusal cannot make the send "failed".
    unknown: Option<String>,
    /// The previous attempt's answer when it was a status other than SEND_OK that
    /// `retry_when_not_stored_ok` retried.
    last_answer: Option<Response>,
    callback: SendCallback,
}

impl Attempt {
    fn run(mut self) {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || self.attempts_left == 0 {
            if let Some(error) = self.last_error.take() {
                return self.give_up(error);
            }
            // The previous attempt was answered with a stored-but-not-durable status and
            // retried: that answer stands.
            if let Some(answer) = self.last_answer.take() {
                return (self.callback)(Ok(answer));
            }
            let error = match self.attempts_made {
                0 => ClientError::InvalidArgument(
                    "the send budget (send_timeout) ran out before the first attempt; not sent"
                        .into(),
                ),
                _ => ClientError::Timeout,
            };
            return self.give_up(error);
        }
        // Each attempt gets an equal share of what is left, so a lost reply or a master
        // that hangs leaves time for the retries (safe with idempotence: the broker
        // answers a retry of a stored message with the original).
        let attempt_timeout = remaining / self.attempts_left;
        self.attempts_left -= 1;
        self.attempts_made += 1;
        let (address, queue) = match self.producer.choose(&self.request, self.last_failed) {
            Ok(choice) => choice,
            Err(error) => return self.retry_or_fail(error),
        };
        let connection = match self.producer.connection(address) {
            Ok(connection) => connection,
            Err(error) => {
                self.producer
                    .inner
                    .faults
                    .record(address, Duration::ZERO, true);
                self.last_failed = Some(address);
                return self.retry_or_fail(error);
            }
        };
        // A copy only when this attempt places the message on a queue.
        let placed = queue.map(|queue| with_queue(&self.request, queue));
        let shared = self.request.clone();
        let request = placed.as_ref().unwrap_or(&shared);
        let started = Instant::now();
        connection.clone().call_async(
            request,
            attempt_timeout,
            Box::new(move |outcome| {
                let outcome = match outcome {
                    Ok(Response::Error(error)) => Err(ClientError::Broker(error)),
                    other => other,
                };
                let failed = outcome.as_ref().is_err_and(ClientError::is_retryable);
                if matches!(self.producer.inner.target, Target::NameServers(_)) {
                    self.producer
                        .inner
                        .faults
                        .record(address, started.elapsed(), failed);
                }
                let not_ok = outcome
                    .as_ref()
                    .ok()
                    .and_then(status_of)
                    .filter(|status| *status != SendStatus::SendOk);
                match outcome {
                    Ok(result)
                        if not_ok.is_some()
                            && self.producer.inner.options.retry_when_not_stored_ok
                            && self.attempts_left > 0 =>
                    {
                        let status = not_ok.unwrap_or(SendStatus::SendOk);
                        log::warn!("send answered {status}, retrying as configured");
                        // Stored by the master: a later refusal cannot make it "failed".
                        if self.unknown.is_none() {
                            self.unknown = Some(format!(
                                "attempt {} to {address} answered {status} (stored, not yet \
                                 durable to the broker's standard)",
                                self.attempts_made
                            ));
                        }
                        self.last_error = None;
                        self.last_answer = Some(result);
                        self.run()
                    }
                    Ok(result) => (self.callback)(Ok(result)),
                    Err(error) => {
                        if error.breaks_connection() {
                            self.producer.drop_connection(&connection);
                        }
                        if error.is_outcome_unknown() && self.unknown.is_none() {
                            self.unknown = Some(format!(
                                "attempt {} to {address}: {error}",
                                self.attempts_made
                            ));
                        }
                        self.last_failed = Some(address);
                        self.retry_or_fail(error)
                    }
                }
            }),
        );
    }

    fn retry_or_fail(mut self, error: ClientError) {
        let time_left = Instant::now() < self.deadline;
        if error.is_retryable() && self.attempts_left > 0 && time_left {
            log::debug!(
                "send attempt {} failed ({error}); retrying",
                self.attempts_made
            );
            // A fresh connection attempt happens on the retry; back off briefly so a
            // broker that just refused a connection is not hammered.
            if matches!(error, ClientError::Connect { .. }) {
                std::thread::sleep(
                    Duration::from_millis(50)
                        .min(self.deadline.saturating_duration_since(Instant::now())),
                );
            }
            self.last_error = Some(error);
            return self.run();
        }
        self.give_up(error);
    }

    fn give_up(self, error: ClientError) {
        // An attempt that may have stored the message outweighs a later refusal: the
        // broker refused only that later attempt.
        let error = match &self.unknown {
            Some(first) if !matches!(error, ClientError::OutcomeUnknown(_)) => {
                ClientError::OutcomeUnknown(format!(
                    "{first}; {} attempt(s) in all, the last: {error}. Retry with the same \
                     producer id and sequence",
                    self.attempts_made
                ))
            }
            _ => error,
        };
        let target = match (&self.producer.inner.target, self.last_failed) {
            (_, Some(address)) | (&Target::Broker(address), None) => address.to_string(),
            (Target::NameServers(_), None) => "the topic's masters".to_string(),
        };
        log::error!(
            "ALARM: send to {target} failed after {} attempt(s): {error}",
            self.attempts_made
        );
        (self.callback)(Err(error));
    }
}
