//! The producer's parts: its options, where sends go, its connections (one per broker,
//! made outside the table's lock) and the choice of broker and queue for each attempt.

use crate::connection::{Connection, ConnectionOptions};
use crate::routing::{pick, pick_for_group, FaultTracker, Router};
use crate::{ClientError, Endpoint};
use keel_protocol::{Message, Request, SendResult, QUEUE_ID_ANY};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
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
pub(crate) enum Target {
    Broker(Endpoint),
    NameServers(Router),
}

/// How long a failed connect to an address is remembered: sends in that time fail at
/// once with the same error instead of each trying. 50 ms after a refusal (a broker
/// restarting is back soon); a second after a connect that took long (a host that does
/// not answer: each try would wait out the connect timeout).
pub(crate) const CONNECT_FAILURE_MEMORY: Duration = Duration::from_millis(50);
pub(crate) const CONNECT_SLOW_FAILURE_MEMORY: Duration = Duration::from_secs(1);
pub(crate) const CONNECT_SLOW: Duration = Duration::from_millis(300);

pub(crate) struct Inner {
    pub(crate) target: Target,
    pub(crate) options: ProducerOptions,
    pub(crate) connections: Mutex<Connections>,
    pub(crate) faults: FaultTracker,
    pub(crate) cursor: AtomicUsize,
    /// Idempotence: this producer's id, and the next sequence.
    pub(crate) producer_id: u64,
    pub(crate) sequence: AtomicU64,
}

/// Sends messages to one broker, or to every master a name server knows. Cheap to
/// clone; clones share the connections.
#[derive(Clone)]
pub struct Producer {
    pub(crate) inner: Arc<Inner>,
}

/// The answer to an async send, for callers that prefer waiting to a callback.
pub struct SendHandle {
    pub(crate) receiver: mpsc::Receiver<Result<SendResult, ClientError>>,
}

impl SendHandle {
    /// Waits for the outcome (bounded by the producer's send budget).
    pub fn wait(self) -> Result<SendResult, ClientError> {
        self.receiver.recv().unwrap_or(Err(ClientError::Timeout))
    }
}

#[derive(Default)]
pub(crate) struct Connections {
    pub(crate) live: HashMap<SocketAddr, Arc<Connection>>,
    /// Until when a failed connect to each address is remembered, and why it failed.
    pub(crate) failed: HashMap<SocketAddr, (Instant, ClientError)>,
    /// Addresses a connect is under way to (by another send): one at a time each.
    pub(crate) connecting: std::collections::HashSet<SocketAddr>,
}

impl Producer {
    pub(crate) fn new(target: Target, options: ProducerOptions) -> Producer {
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
    pub(crate) fn connection(
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

    pub(crate) fn lock_connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub(crate) fn drop_connection(&self, broken: &Arc<Connection>) {
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
    pub(crate) fn choose(
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
        let picked = match message_group_of(request) {
            Some(group) => Some(pick_for_group(&masters, group)?),
            None => pick(
                &masters.masters,
                &self.inner.cursor,
                last_failed,
                |address| !avoid || self.inner.faults.available(address),
            ),
        };
        let (index, queue) =
            picked.ok_or_else(|| ClientError::NoRoute(format!("no master for topic {topic:?}")))?;
        let endpoint = masters
            .masters
            .get(index)
            .map(|master| master.endpoint.clone())
            .ok_or_else(|| ClientError::NoRoute(format!("no master for topic {topic:?}")))?;
        Ok((endpoint, queue))
    }

    /// After a failure that says the routes may be out of date: ask again next time.
    pub(crate) fn routes_stale(&self, request: &Request) {
        if let Target::NameServers(router) = &self.inner.target {
            router.invalidate(topic_of(request));
        }
    }
}

/// The message group of a SEND, or of a SEND_BATCH's first message.
pub(crate) fn message_group_of(request: &Request) -> Option<&str> {
    match request {
        Request::Send(message) => message.message_group(),
        Request::SendBatch(messages) => messages.first()?.message_group(),
        _ => None,
    }
}

/// The topic a SEND or SEND_BATCH goes to.
pub(crate) fn topic_of(request: &Request) -> &str {
    match request {
        Request::Send(message) => message.topic.as_str(),
        Request::SendBatch(messages) => messages.first().map_or("", |m| m.topic.as_str()),
        _ => "",
    }
}

/// A producer id that no other producer is likely to have: 64 random bits (std's
/// hasher keys are random per process), never 0 and never one of the broker's own
/// (which it refuses).
pub(crate) fn random_producer_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    let id = hasher.finish().max(1);
    match keel_protocol::names::is_broker_producer_id(id) {
        true => id ^ (1 << 63),
        false => id,
    }
}

/// `request` with every message of it on `queue` (when given and the message left
/// the choice to the broker).
pub(crate) fn with_queue(request: &Request, queue: u32) -> Request {
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
