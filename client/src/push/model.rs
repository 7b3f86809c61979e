//! The push consumer's types: what a handler returns, the options, a delivery, the
//! statistics, and the driver's state of each queue and its events.

use crate::connection::ConnectionOptions;
use crate::ClientError;
use keel_protocol::{Record, Response};
use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a handler says about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumeResult {
    Success,
    /// Deliver it again later (the reason is kept with the message), after the
    /// broker's delay for its attempt (`retry_delays_ms`).
    ReconsumeLater(String),
    /// Deliver it again after this delay (at most the broker's `max_delay_ms`; whole
    /// milliseconds), with the reason. An ordered group's member waits this long before
    /// handling it again in place.
    ReconsumeAfter(Duration, String),
}

/// What handlers may return: a `ConsumeResult`, or a `Result` whose `Err` means
/// "reconsume later".
pub trait IntoConsumeResult {
    fn into_consume_result(self) -> ConsumeResult;
}

impl IntoConsumeResult for ConsumeResult {
    fn into_consume_result(self) -> ConsumeResult {
        self
    }
}

impl<E: std::fmt::Display> IntoConsumeResult for Result<(), E> {
    fn into_consume_result(self) -> ConsumeResult {
        match self {
            Ok(()) => ConsumeResult::Success,
            Err(error) => ConsumeResult::ReconsumeLater(error.to_string()),
        }
    }
}

/// Where a group that never committed an offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest message still stored.
    Earliest,
    /// Only messages stored from now on.
    Latest,
    /// The first message stored at or after this time (ms since the Unix epoch).
    Timestamp(u64),
}

#[derive(Debug, Clone)]
pub struct PushConsumerOptions {
    /// This member's id in its group (default: host-pid-random, unique per consumer).
    pub member_id: Option<String>,
    /// Handler threads.
    pub threads: usize,
    /// Fetched but unfinished messages per queue before its pulls pause.
    pub max_in_flight_per_queue: usize,
    pub pull_batch: u32,
    pub long_poll: Duration,
    pub heartbeat_interval: Duration,
    /// Without a heartbeat for this long the broker gives this member's queues away.
    pub session_timeout: Duration,
    pub commit_interval: Duration,
    /// Failed attempts after which a message goes to the group's dead-letter topic.
    pub max_reconsume_times: u32,
    pub start_from: StartFrom,
    /// Only messages whose tags match, e.g. `"TagA || TagB"`; `None` or `"*"`: all.
    pub tag_filter: Option<String>,
    pub request_timeout: Duration,
    pub connection: ConnectionOptions,
    /// Slaves of the broker (`host:port`), read while the broker is unreachable: the
    /// group keeps consuming (and committing there) until the master is back, tried
    /// again every `primary_retry`. What was consumed on a slave may be delivered again
    /// after the switch back (at least once).
    pub fallback_brokers: Vec<String>,
    pub primary_retry: Duration,
    /// In an ordered group (`keel group create --ordered`): how many fetched messages
    /// of one message group are kept waiting behind the one being handled. Beyond it
    /// the group's messages are left on the broker and fetched again when it moves on,
    /// so a stuck message group holds at most this many places of its queue's window.
    pub max_buffered_per_message_group: usize,
    /// In an ordered group: how long a failed message waits before it is handled again
    /// (in place: no later message of its group overtakes it). After
    /// `max_reconsume_times` retries it goes to the dead-letter topic.
    pub ordered_retry_delay: Duration,
    /// Run the handler for at most this many messages, then for no more: messages
    /// fetched after that are left unhandled and uncommitted, for the group to consume
    /// later (for tools that take N messages and stop). `None`: no limit.
    pub max_messages: Option<u64>,
}

impl Default for PushConsumerOptions {
    fn default() -> PushConsumerOptions {
        PushConsumerOptions {
            member_id: None,
            threads: 4,
            max_in_flight_per_queue: 1000,
            pull_batch: 32,
            long_poll: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(1),
            session_timeout: Duration::from_secs(10),
            commit_interval: Duration::from_secs(1),
            max_reconsume_times: 16,
            start_from: StartFrom::Earliest,
            tag_filter: None,
            request_timeout: Duration::from_secs(5),
            connection: ConnectionOptions::default(),
            fallback_brokers: Vec::new(),
            primary_retry: Duration::from_secs(10),
            max_buffered_per_message_group: 64,
            ordered_retry_delay: Duration::from_secs(1),
            max_messages: None,
        }
    }
}

/// One message handed to the handler.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The stored record (for a redelivery, the copy in the group's retry topic).
    pub record: Record,
    /// The topic the message was sent to.
    pub topic: String,
    /// The message's id where it was first stored (its id in `topic`).
    pub msg_id: String,
    /// How many times it failed before (0 on the first delivery).
    pub reconsume_times: u32,
}

/// Counters of a running consumer.
#[derive(Debug, Default)]
pub struct PushStats {
    pub handled: AtomicU64,
    pub sent_back: AtomicU64,
    pub redeliveries: AtomicU64,
    pub filtered: AtomicU64,
    /// Ordered groups: failed messages handled again in place.
    pub ordered_retries: AtomicU64,
    /// Ordered groups: times a message group had `max_buffered_per_message_group`
    /// messages waiting and its next ones were left on the broker for later.
    pub message_groups_parked: AtomicU64,
    /// The consumer is not connected to its broker (it is down, or the consumer reads
    /// a fallback slave meanwhile): a `DiscoveringPushConsumer` asks the name servers
    /// for the group's new master at once.
    pub broker_lost: std::sync::atomic::AtomicBool,
}

pub(crate) fn default_member_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        hasher.finish() as u32
    )
}

pub(crate) type QueueKey = (usize, u32);

pub(crate) enum Event {
    Pulled(QueueKey, u64, Result<Response, ClientError>),
    /// A pull for one parked message group (ordered groups): from which offset.
    CaughtUp(QueueKey, String, u64, Result<Response, ClientError>),
    /// A worker did not run a job because its queue was taken away meanwhile.
    Skipped(QueueKey, u64),
    /// A worker did not start a job of an ordered group: the lease had ended.
    NotStarted(QueueKey, Box<Delivery>),
    Committed(QueueKey, u64, Result<Response, ClientError>),
    Handled(QueueKey, Box<Delivery>, ConsumeResult),
    SentBack(QueueKey, Box<Delivery>, Result<Response, ClientError>),
}

pub(crate) struct Job {
    pub(crate) key: QueueKey,
    pub(crate) delivery: Delivery,
    /// Ordered groups: the member's lease on the queue when the job was handed out; a
    /// job not started while it holds is handed back (the broker may have given the
    /// queue away).
    pub(crate) lease: Option<Lease>,
}

/// An ordered queue's lease as a job carries it: it holds until `until`, and only while
/// the member's lease term is still `term` (the term moves on when a heartbeat fails or
/// the connection to the broker is lost: every lease ends at once).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    pub(crate) until: Instant,
    pub(crate) term: u64,
}

impl Lease {
    pub(crate) fn holds(&self, term: &AtomicU64) -> bool {
        Instant::now() < self.until && term.load(std::sync::atomic::Ordering::Acquire) == self.term
    }
}

/// Queues taken away from this member: workers skip their jobs.
pub(crate) type Revoked = Arc<Mutex<BTreeSet<QueueKey>>>;

pub(crate) struct QueueState {
    pub(crate) next_pull: u64,
    /// Offsets fetched and not finished.
    pub(crate) in_flight: BTreeSet<u64>,
    /// Offsets fetched but not handled because the queue was taken away: never
    /// committed past, handled by the next owner.
    pub(crate) skipped: BTreeSet<u64>,
    pub(crate) pulling: bool,
    /// Taken away by a rebalance: finish, commit, let go.
    pub(crate) revoked: bool,
    pub(crate) committed: Option<u64>,
    /// A commit of this offset is on its way.
    pub(crate) committing: Option<u64>,
    pub(crate) paused_until: Option<Instant>,
    /// Until when this member may start messages of the queue: the last heartbeat that
    /// granted it was sent then plus 3/4 of the session timeout (the broker gives the
    /// queue away only a whole timeout after it received that heartbeat).
    pub(crate) lease_until: Instant,
    /// Consumed in order (the group was ordered when the member took the queue; a
    /// change lets the queue go and takes it again in the new mode).
    pub(crate) ordered: bool,
    /// Ordered groups: each message group's line (empty otherwise).
    pub(crate) lines: std::collections::HashMap<String, Line>,
    /// Ordered groups: offset -> message group of each message handed to a worker.
    pub(crate) dispatched: std::collections::HashMap<u64, String>,
    /// Ordered groups: per message group, its first message left unhandled because the
    /// queue was being taken away. Kept after all, each such group fetches again from
    /// there with its own pulls (as a parked group), so no finished message comes again
    /// after a later one of its group.
    pub(crate) resume: std::collections::HashMap<String, u64>,
    /// This holding of the queue (a queue let go and granted again is a new one):
    /// retries made under an earlier holding are dropped.
    pub(crate) incarnation: u64,
}

/// Tells holdings of queues apart.
static INCARNATIONS: AtomicU64 = AtomicU64::new(0);

/// One message group of a queue in an ordered consumer group.
#[derive(Default)]
pub(crate) struct Line {
    /// A message of the group is with a worker (or waits for its retry): the next one
    /// waits.
    pub(crate) busy: bool,
    /// Fetched messages of the group, in queue order, waiting their turn.
    pub(crate) waiting: std::collections::VecDeque<Delivery>,
    /// The group's messages from this offset on were left on the broker (the line was
    /// full): fetched again by the group's own pulls before it rejoins the queue's.
    pub(crate) parked_from: Option<u64>,
    /// A pull of the parked group is on its way.
    pub(crate) catching_up: bool,
    /// The parked group's last pull failed: the next one not before then.
    pub(crate) catch_up_after: Option<Instant>,
}

impl Line {
    pub(crate) fn is_idle(&self) -> bool {
        !self.busy && self.waiting.is_empty() && self.parked_from.is_none()
    }
}

impl QueueState {
    pub(crate) fn new(next_pull: u64, ordered: bool) -> QueueState {
        QueueState {
            ordered,
            next_pull,
            in_flight: BTreeSet::new(),
            skipped: BTreeSet::new(),
            pulling: false,
            revoked: false,
            committed: None,
            committing: None,
            paused_until: None,
            lease_until: Instant::now(),
            lines: std::collections::HashMap::new(),
            dispatched: std::collections::HashMap::new(),
            resume: std::collections::HashMap::new(),
            incarnation: INCARNATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// A fetched message that will not be handled in this holding: never committed
    /// past; of an ordered group's `line`, where the line resumes if the queue is kept.
    pub(crate) fn leave(&mut self, offset: u64, line: Option<&str>) {
        self.in_flight.remove(&offset);
        self.skipped.insert(offset);
        if let Some(name) = line {
            let from = self.resume.entry(name.to_string()).or_insert(offset);
            *from = (*from).min(offset);
        }
    }

    pub(crate) fn commit_point(&self) -> u64 {
        let parked = self.lines.values().filter_map(|line| line.parked_from);
        let unfinished = self
            .in_flight
            .first()
            .into_iter()
            .chain(self.skipped.first())
            .copied()
            .chain(parked);
        unfinished.min().unwrap_or(self.next_pull)
    }
}
