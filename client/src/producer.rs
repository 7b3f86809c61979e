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
//!
//! Following a failover: a send that could not reach a master, or that a broker
//! refused as NOT_MASTER, was certainly not stored. It marks the topic's routes stale
//! (asked again of the name servers at once, at most every 100 ms) and is tried again
//! after a short backoff (20 ms doubling to 200 ms), as long as the send budget lasts:
//! such tries do not count against `retry_times_when_send_failed`, which bounds only
//! the attempts that reached a broker. A 3 s failover is then ridden through by a send
//! whose budget is longer, and the first send after the new master registers with the
//! name servers goes to it.

mod attempt;
#[cfg(test)]
mod tests;

use crate::connection::{Connection, ConnectionOptions};
use crate::routing::{pick, FaultTracker, Router};
use crate::{ClientError, Endpoint};
use attempt::Attempt;
use keel_protocol::now_ms;
use keel_protocol::{Message, Request, Response, SendBatchResult, SendResult, QUEUE_ID_ANY};
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
    /// With name servers: how long routes are cached before being asked again (a
    /// failed send asks again at once).
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
    Broker(Endpoint),
    NameServers(Router),
}

/// How long a failed connect to an address is remembered: sends in that time fail at
/// once with the same error instead of each trying. 50 ms after a refusal (a broker
/// restarting is back soon); a second after a connect that took long (a host that does
/// not answer: each try would wait out the connect timeout).
const CONNECT_FAILURE_MEMORY: Duration = Duration::from_millis(50);
const CONNECT_SLOW_FAILURE_MEMORY: Duration = Duration::from_secs(1);
const CONNECT_SLOW: Duration = Duration::from_millis(300);

struct Inner {
    target: Target,
    options: ProducerOptions,
    connections: Mutex<Connections>,
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

#[derive(Default)]
struct Connections {
    live: HashMap<SocketAddr, Arc<Connection>>,
    /// Until when a failed connect to each address is remembered, and why it failed.
    failed: HashMap<SocketAddr, (Instant, ClientError)>,
    /// Addresses a connect is under way to (by another send): one at a time each.
    connecting: std::collections::HashSet<SocketAddr>,
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
                connections: Mutex::new(Connections::default()),
                cursor: AtomicUsize::new(0),
            }),
        }
    }

    /// Connects to the broker at `address` (`host:port`).
    pub fn connect(address: &str, options: ProducerOptions) -> Result<Producer, ClientError> {
        let endpoint = Endpoint::resolve(address)?;
        let producer = Producer::new(Target::Broker(endpoint.clone()), options);
        producer.connection(&endpoint, producer.inner.options.connection.connect_timeout)?;
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

    /// The live connection to `endpoint`, reconnecting if the last one died (waiting
    /// at most `timeout` for the connect).
    fn connection(
        &self,
        endpoint: &Endpoint,
        timeout: Duration,
    ) -> Result<Arc<Connection>, ClientError> {
        let address = endpoint.address;
        {
            let mut connections = self.lock_connections();
            if let Some(connection) = connections
                .live
                .get(&address)
                .filter(|connection| !connection.is_closed())
            {
                return Ok(connection.clone());
            }
            if let Some((until, error)) = connections.failed.get(&address) {
                if Instant::now() < *until {
                    return Err(error.clone());
                }
            }
            // The lock is not held while connecting (a host that does not answer takes
            // a connect timeout): sends to other brokers and replies go on meanwhile.
            if !connections.connecting.insert(address) {
                return Err(ClientError::Connect {
                    address: endpoint.to_string(),
                    detail: "a connection to it is being made for another send; not sent".into(),
                });
            }
        }
        let mut options = self.inner.options.connection.clone();
        options.connect_timeout = options
            .connect_timeout
            .min(timeout.max(Duration::from_millis(1)));
        let started = Instant::now();
        let outcome = Connection::connect(endpoint.clone(), &options);
        let mut connections = self.lock_connections();
        connections.connecting.remove(&address);
        match outcome {
            Ok(connection) => {
                let connection = Arc::new(connection);
                connections.failed.remove(&address);
                connections.live.insert(address, connection.clone());
                Ok(connection)
            }
            Err(error) => {
                let memory = match started.elapsed() >= CONNECT_SLOW {
                    true => CONNECT_SLOW_FAILURE_MEMORY,
                    false => CONNECT_FAILURE_MEMORY,
                };
                connections
                    .failed
                    .insert(address, (Instant::now() + memory, error.clone()));
                Err(error)
            }
        }
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn drop_connection(&self, broken: &Arc<Connection>) {
        let mut connections = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let address = broken.address();
        if connections
            .live
            .get(&address)
            .is_some_and(|current| Arc::ptr_eq(current, broken))
        {
            connections.live.remove(&address);
        }
    }

    /// Where the next attempt of `request` goes, and the queue to give its messages
    /// (`None`: leave them as they are). `timeout` bounds asking the name servers.
    fn choose(
        &self,
        request: &Request,
        last_failed: Option<SocketAddr>,
        timeout: Duration,
    ) -> Result<(Endpoint, Option<u32>), ClientError> {
        let router = match &self.inner.target {
            Target::Broker(endpoint) => return Ok((endpoint.clone(), None)),
            Target::NameServers(router) => router,
        };
        let topic = topic_of(request);
        let masters = router
            .masters(topic, timeout)
            .map_err(|error| match error {
                ClientError::NoRoute(_) => error,
                other => ClientError::NoRoute(format!("asking the name servers: {other}")),
            })?;
        let avoid = self.inner.options.fault_avoidance;
        let (index, queue) = pick(&masters, &self.inner.cursor, last_failed, |address| {
            !avoid || self.inner.faults.available(address)
        })
        .ok_or_else(|| ClientError::NoRoute(format!("no master for topic {topic:?}")))?;
        let endpoint = masters
            .get(index)
            .map(|master| master.endpoint.clone())
            .ok_or_else(|| ClientError::NoRoute(format!("no master for topic {topic:?}")))?;
        Ok((endpoint, queue))
    }

    /// After a failure that says the routes may be out of date: ask again next time.
    fn routes_stale(&self, request: &Request) {
        if let Target::NameServers(router) = &self.inner.target {
            router.invalidate(topic_of(request));
        }
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
        Attempt::new(self.clone(), request, Box::new(callback)).run();
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
        let timeout = self.inner.options.send_timeout;
        let (endpoint, queue) = self.choose(&request, None, timeout)?;
        let placed = queue.map(|queue| with_queue(&request, queue));
        let connection = self
            .connection(&endpoint, timeout)
            .inspect_err(|_| self.routes_stale(&request))?;
        connection
            .send_oneway(placed.as_ref().unwrap_or(&request))
            .inspect_err(|_| {
                self.drop_connection(&connection);
                self.routes_stale(&request);
            })
    }
}

/// The topic a SEND or SEND_BATCH goes to.
fn topic_of(request: &Request) -> &str {
    match request {
        Request::Send(message) => message.topic.as_str(),
        Request::SendBatch(messages) => messages.first().map_or("", |m| m.topic.as_str()),
        _ => "",
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
