//! The push consumer: register a handler, and the consumer does the rest.
//!
//! - **Group membership.** The consumer heartbeats its group on the broker for the topic
//!   and for the group's retry topic, reporting the queues it holds; the broker answers
//!   with the queues it may consume (spread over the live members, rebalanced as they
//!   come and go). A queue taken away is let go only after what was fetched from it is
//!   finished and committed; commits of a queue the member no longer owns are refused by
//!   the broker (NOT_OWNER), so two members never commit the same queue.
//! - **Fetching.** One long-polling PULL per owned queue, paused while the queue has
//!   `max_in_flight_per_queue` messages fetched and not finished (flow control).
//! - **Handling.** A pool of `threads` workers runs the handler. `Success` finishes the
//!   message; `ReconsumeLater`, an `Err` or a panic sends it back to the broker, which
//!   delivers it again to the group after a growing delay, and to the group's dead-letter
//!   topic after `max_reconsume_times` attempts. A message that could not be sent back
//!   stays unfinished and is handed to the handler again locally.
//! - **Offsets.** The committed offset of a queue is the lowest offset still unfinished,
//!   committed every `commit_interval`, when a queue is let go, and at shutdown: a crash
//!   redelivers what was in flight and never skips.
//! - **Checks.** Each record's CRC32C, its place (topic, queue, offset) and the
//!   producer's message CRC32C are verified before the handler; a damaged record is
//!   reported (`errors()`, log) and never finished, so the queue stops there instead of
//!   skipping it.

use crate::connection::{Connection, ConnectionOptions};
use crate::{resolve, ClientError};
use keel_protocol::{
    retry_topic, ErrorCode, GroupCommitRequest, HeartbeatRequest, ListTopicsRequest,
    OffsetForTimeRequest, PullRequest, PullStatus, QueryOffsetRequest, Record, Request, Response,
    SendBackRequest, SendStatus,
};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a handler says about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumeResult {
    Success,
    /// Deliver it again later (the reason is kept with the message).
    ReconsumeLater(String),
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
}

/// `TagA || TagB` as a set; `None` matches everything.
fn parse_filter(filter: Option<&str>) -> Option<BTreeSet<String>> {
    let filter = filter?.trim();
    if filter.is_empty() || filter == "*" {
        return None;
    }
    Some(
        filter
            .split("||")
            .map(|tag| tag.trim().to_string())
            .filter(|tag| !tag.is_empty())
            .collect(),
    )
}

fn default_member_id() -> String {
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

type QueueKey = (usize, u32);

enum Event {
    Pulled(QueueKey, u64, Result<Response, ClientError>),
    /// A worker did not run a job because its queue was taken away meanwhile.
    Skipped(QueueKey, u64),
    Committed(QueueKey, u64, Result<Response, ClientError>),
    Handled(QueueKey, Box<Delivery>, ConsumeResult),
    SentBack(QueueKey, Box<Delivery>, Result<Response, ClientError>),
}

struct Job {
    key: QueueKey,
    delivery: Delivery,
}

/// Queues taken away from this member: workers skip their jobs.
type Revoked = Arc<Mutex<BTreeSet<QueueKey>>>;

struct QueueState {
    next_pull: u64,
    /// Offsets fetched and not finished.
    in_flight: BTreeSet<u64>,
    /// Offsets fetched but not handled because the queue was taken away: never
    /// committed past, handled by the next owner.
    skipped: BTreeSet<u64>,
    pulling: bool,
    /// Taken away by a rebalance: finish, commit, let go.
    revoked: bool,
    committed: Option<u64>,
    /// A commit of this offset is on its way.
    committing: Option<u64>,
    paused_until: Option<Instant>,
}

impl QueueState {
    fn commit_point(&self) -> u64 {
        let unfinished = self
            .in_flight
            .first()
            .into_iter()
            .chain(self.skipped.first());
        unfinished.copied().min().unwrap_or(self.next_pull)
    }
}

pub struct PushConsumer {
    stop: Arc<AtomicBool>,
    driver: Option<JoinHandle<Result<(), ClientError>>>,
    errors: Arc<Mutex<Vec<ClientError>>>,
    stats: Arc<PushStats>,
    member_id: String,
}

impl PushConsumer {
    /// Joins `group` on the broker at `address` and consumes `topic` (and the group's
    /// retry topic) with `handler` until `shutdown`.
    pub fn start<F, R>(
        address: &str,
        group: &str,
        topic: &str,
        options: PushConsumerOptions,
        handler: F,
    ) -> Result<PushConsumer, ClientError>
    where
        F: Fn(&Delivery) -> R + Send + Sync + 'static,
        R: IntoConsumeResult,
    {
        keel_protocol::validate_topic(group)
            .map_err(|detail| ClientError::InvalidArgument(format!("invalid group: {detail}")))?;
        keel_protocol::validate_topic(topic)
            .map_err(|detail| ClientError::InvalidArgument(format!("invalid topic: {detail}")))?;
        if options.threads == 0 || options.max_in_flight_per_queue == 0 {
            return Err(ClientError::InvalidArgument(
                "threads and max_in_flight_per_queue must be at least 1".into(),
            ));
        }
        let mut addresses = vec![resolve(address)?];
        for fallback in &options.fallback_brokers {
            addresses.push(resolve(fallback)?);
        }
        let (connection, current) = connect_first(&addresses, &options.connection)?;
        let member_id = options.member_id.clone().unwrap_or_else(default_member_id);
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(PushStats::default());
        let (events, event_receiver) = mpsc::channel();
        let (jobs, job_receiver) = mpsc::channel::<Job>();
        let job_receiver = Arc::new(Mutex::new(job_receiver));
        let handler = Arc::new(handler);
        let revoked: Revoked = Arc::new(Mutex::new(BTreeSet::new()));
        let tickets = Arc::new(options.max_messages.map(AtomicU64::new));
        let mut workers = Vec::with_capacity(options.threads);
        for index in 0..options.threads {
            let (jobs, events, handler, revoked, tickets) = (
                job_receiver.clone(),
                events.clone(),
                handler.clone(),
                revoked.clone(),
                tickets.clone(),
            );
            let worker = std::thread::Builder::new()
                .name(format!("keel-consume-{index}"))
                .spawn(move || work(&jobs, &events, handler.as_ref(), &revoked, &tickets))
                .map_err(|e| ClientError::InvalidArgument(format!("cannot start a worker: {e}")))?;
            workers.push(worker);
        }
        let mut driver = Driver {
            addresses,
            current,
            primary_retry_due: Instant::now() + options.primary_retry,
            connection,
            group: group.to_string(),
            topics: vec![topic.to_string(), retry_topic(group)],
            member_id: member_id.clone(),
            filter: parse_filter(options.tag_filter.as_deref()),
            options,
            queues: HashMap::new(),
            revoked,
            events,
            event_receiver,
            jobs: Some(jobs),
            stop: stop.clone(),
            errors: errors.clone(),
            stats: stats.clone(),
            heartbeat_due: Instant::now(),
            commit_due: Instant::now(),
        };
        let driver = std::thread::Builder::new()
            .name("keel-consumer".into())
            .spawn(move || {
                let outcome = driver.run();
                drop(driver);
                for worker in workers {
                    let _ = worker.join();
                }
                outcome
            })
            .map_err(|e| ClientError::InvalidArgument(format!("cannot start the consumer: {e}")))?;
        Ok(PushConsumer {
            stop,
            driver: Some(driver),
            errors,
            stats,
            member_id,
        })
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    pub fn stats(&self) -> &PushStats {
        &self.stats
    }

    /// Errors the consumer could not handle by itself (an offset deleted by retention,
    /// a damaged record), oldest first. Each is also logged.
    pub fn errors(&self) -> Vec<ClientError> {
        self.errors
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Stops fetching, waits for the handlers to finish what they have (up to 30 s),
    /// commits, and leaves the group so its queues move at once.
    pub fn shutdown(mut self) -> Result<(), ClientError> {
        self.stop.store(true, Ordering::Release);
        match self.driver.take().map(JoinHandle::join) {
            Some(Ok(outcome)) => outcome,
            Some(Err(_)) => Err(ClientError::InvalidArgument(
                "the consumer thread panicked".into(),
            )),
            None => Ok(()),
        }
    }
}

impl Drop for PushConsumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
    }
}

/// Takes one of the handler runs `max_messages` allows; false once none is left.
fn take_ticket(tickets: &Option<AtomicU64>) -> bool {
    tickets.as_ref().is_none_or(|left| {
        left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    })
}

fn work<F, R>(
    jobs: &Mutex<Receiver<Job>>,
    events: &Sender<Event>,
    handler: &F,
    revoked: &Revoked,
    tickets: &Option<AtomicU64>,
) where
    F: Fn(&Delivery) -> R,
    R: IntoConsumeResult,
{
    loop {
        let job = {
            let receiver = jobs.lock().unwrap_or_else(|poison| poison.into_inner());
            receiver.recv()
        };
        let Ok(job) = job else { return };
        let skip = revoked
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .contains(&job.key);
        // Unhandled either way: never finished, so never committed past.
        if skip || !take_ticket(tickets) {
            let offset = job.delivery.record.queue_offset;
            if events.send(Event::Skipped(job.key, offset)).is_err() {
                return;
            }
            continue;
        }
        let outcome = match catch_unwind(AssertUnwindSafe(|| handler(&job.delivery))) {
            Ok(result) => result.into_consume_result(),
            Err(panic) => {
                let detail = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "handler panicked".into());
                ConsumeResult::ReconsumeLater(format!("handler panicked: {detail}"))
            }
        };
        if events
            .send(Event::Handled(job.key, Box::new(job.delivery), outcome))
            .is_err()
        {
            return;
        }
    }
}

/// Connects to the first address that answers; returns it and its index.
fn connect_first(
    addresses: &[SocketAddr],
    options: &ConnectionOptions,
) -> Result<(Connection, usize), ClientError> {
    let mut last = ClientError::InvalidArgument("no broker address".into());
    for (index, address) in addresses.iter().enumerate() {
        match Connection::connect(*address, options) {
            Ok(connection) => return Ok((connection, index)),
            Err(error) => last = error,
        }
    }
    Err(last)
}

struct Driver {
    /// The broker, then its slaves.
    addresses: Vec<SocketAddr>,
    /// Which of them the connection goes to.
    current: usize,
    primary_retry_due: Instant,
    connection: Connection,
    group: String,
    /// The subscribed topic, then the group's retry topic.
    topics: Vec<String>,
    member_id: String,
    filter: Option<BTreeSet<String>>,
    options: PushConsumerOptions,
    queues: HashMap<QueueKey, QueueState>,
    revoked: Revoked,
    events: Sender<Event>,
    event_receiver: Receiver<Event>,
    jobs: Option<Sender<Job>>,
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<ClientError>>>,
    stats: Arc<PushStats>,
    heartbeat_due: Instant,
    commit_due: Instant,
}

const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

impl Driver {
    fn run(&mut self) -> Result<(), ClientError> {
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if self.current > 0 && now >= self.primary_retry_due {
                self.reconnect_if_needed();
            }
            if now >= self.heartbeat_due {
                self.heartbeat_due = now + self.options.heartbeat_interval;
                if let Err(error) = self.heartbeat() {
                    log::warn!("consumer {}: heartbeat failed: {error}", self.member_id);
                    self.reconnect_if_needed();
                }
            }
            if now >= self.commit_due {
                self.commit_due = now + self.options.commit_interval;
                self.commit_all_async();
            }
            self.pull_ready();
            let wait = self
                .heartbeat_due
                .min(self.commit_due)
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            if let Ok(event) = self.event_receiver.recv_timeout(wait) {
                self.on_event(event);
                while let Ok(event) = self.event_receiver.try_recv() {
                    self.on_event(event);
                }
            }
        }
        self.finish()
    }

    /// Shutdown: no more pulls; let the handlers finish what they have, commit, leave.
    fn finish(&mut self) -> Result<(), ClientError> {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        // Jobs not started are skipped and records of pulls answered from now on are
        // dropped; the commits stay before them.
        let keys: Vec<QueueKey> = self.queues.keys().copied().collect();
        for key in keys {
            self.set_revoked(key, true);
        }
        while self
            .queues
            .values()
            .any(|queue| !queue.in_flight.is_empty())
            && Instant::now() < deadline
        {
            if let Ok(event) = self.event_receiver.recv_timeout(Duration::from_millis(50)) {
                self.on_event(event);
            }
        }
        self.commit_all();
        self.jobs = None;
        // Leave: report holding nothing, so the queues move now, not after the timeout.
        let keys: Vec<QueueKey> = self.queues.keys().copied().collect();
        for key in keys {
            self.forget(key);
        }
        let _ = self.heartbeat();
        Ok(())
    }

    /// Marks a queue taken away (or given back): workers skip (or run) its jobs.
    fn set_revoked(&mut self, key: QueueKey, revoked: bool) {
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        if queue.revoked == revoked {
            return;
        }
        queue.revoked = revoked;
        if !revoked && !queue.skipped.is_empty() {
            // Kept after all: fetch the skipped messages again (and what followed them).
            queue.next_pull = queue.commit_point();
            queue.skipped.clear();
        }
        let mut set = self
            .revoked
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if revoked {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }

    fn forget(&mut self, key: QueueKey) {
        self.queues.remove(&key);
        self.revoked
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(&key);
    }

    fn report(&self, error: ClientError) {
        log::error!(
            "consumer {} of group {}: {error}",
            self.member_id,
            self.group
        );
        let mut errors = self
            .errors
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if errors.len() < 1000 {
            errors.push(error);
        }
    }

    /// A new connection when the current one died (the master first, then its
    /// slaves), or back to the master once it answers again.
    fn reconnect_if_needed(&mut self) {
        let back_to_primary = self.current > 0 && Instant::now() >= self.primary_retry_due;
        if !self.connection.is_closed() && !back_to_primary {
            return;
        }
        if back_to_primary {
            self.primary_retry_due = Instant::now() + self.options.primary_retry;
            if !self.connection.is_closed() {
                let primary = Connection::connect(self.addresses[0], &self.options.connection);
                if let Ok(connection) = primary {
                    self.switch(connection, 0);
                }
                return;
            }
        }
        match connect_first(&self.addresses, &self.options.connection) {
            Ok((connection, index)) => self.switch(connection, index),
            Err(error) => log::warn!("consumer {}: reconnect failed: {error}", self.member_id),
        }
    }

    fn switch(&mut self, connection: Connection, index: usize) {
        if index != self.current {
            log::warn!(
                "consumer {}: now reading from {} ({})",
                self.member_id,
                self.addresses[index],
                if index == 0 {
                    "the broker"
                } else {
                    "a slave: its master is unreachable"
                }
            );
        }
        // Pulls in flight on the old connection end through their callbacks.
        self.connection = connection;
        self.current = index;
        self.heartbeat_due = Instant::now();
        for queue in self.queues.values_mut() {
            queue.pulling = false;
        }
    }

    fn call(&self, request: Request) -> Result<Response, ClientError> {
        match self
            .connection
            .call(&request, self.options.request_timeout)?
        {
            Response::Error(error) => Err(ClientError::Broker(error)),
            response => Ok(response),
        }
    }

    /// Heartbeats each topic; takes up granted queues, lets go of revoked ones.
    fn heartbeat(&mut self) -> Result<(), ClientError> {
        for topic_index in 0..self.topics.len() {
            let owned: Vec<u32> = self
                .queues
                .keys()
                .filter(|(t, _)| *t == topic_index)
                .map(|(_, q)| *q)
                .collect();
            let request = Request::Heartbeat(HeartbeatRequest {
                group: self.group.clone(),
                topic: self.topics[topic_index].clone(),
                member_id: self.member_id.clone(),
                session_timeout_ms: self.options.session_timeout.as_millis() as u32,
                owned: owned.clone(),
            });
            let assignment = match self.call(request)? {
                Response::Assignment(assignment) => assignment,
                other => {
                    return Err(ClientError::Protocol(format!(
                        "{} in reply to HEARTBEAT",
                        other.kind().name()
                    )))
                }
            };
            if self.stop.load(Ordering::Acquire) {
                continue;
            }
            let granted: BTreeSet<u32> = assignment.queues.iter().copied().collect();
            for queue_id in owned {
                if !granted.contains(&queue_id) {
                    let key = (topic_index, queue_id);
                    if self.queues.get(&key).is_some_and(|q| !q.revoked) {
                        log::info!(
                            "consumer {}: queue {queue_id} of {} moves to another member",
                            self.member_id,
                            self.topics[topic_index]
                        );
                    }
                    self.set_revoked(key, true);
                }
            }
            for queue_id in granted {
                let key = (topic_index, queue_id);
                match self.queues.get(&key) {
                    Some(_) => self.set_revoked(key, false),
                    None => {
                        let start = self.start_offset(topic_index, queue_id)?;
                        self.queues.insert(
                            key,
                            QueueState {
                                next_pull: start,
                                in_flight: BTreeSet::new(),
                                skipped: BTreeSet::new(),
                                pulling: false,
                                revoked: false,
                                committed: None,
                                committing: None,
                                paused_until: None,
                            },
                        );
                    }
                }
            }
        }
        self.release_revoked();
        Ok(())
    }

    /// Revoked queues with nothing in flight: commit and forget (the next heartbeat
    /// reports them let go).
    fn release_revoked(&mut self) {
        // A pull still in flight does not hold a queue back: its answer finds the queue
        // gone and is dropped.
        let done: Vec<QueueKey> = self
            .queues
            .iter()
            .filter(|(_, queue)| queue.revoked && queue.in_flight.is_empty())
            .map(|(key, _)| *key)
            .collect();
        if done.is_empty() {
            return;
        }
        for key in done {
            self.commit(key);
            self.forget(key);
        }
        // Tell the broker now, so the new owner can start.
        self.heartbeat_due = Instant::now();
    }

    /// The group's committed offset, or where `start_from` says for a new group.
    fn start_offset(&self, topic_index: usize, queue_id: u32) -> Result<u64, ClientError> {
        let topic = &self.topics[topic_index];
        let query = Request::QueryOffset(QueryOffsetRequest {
            group: self.group.clone(),
            topic: topic.clone(),
            queue_id,
        });
        if let Response::Offset(Some(offset)) = self.call(query)? {
            return Ok(offset);
        }
        // A retry topic is the group's own: all of it is for this group.
        let start_from = if topic_index == 0 {
            self.options.start_from
        } else {
            StartFrom::Earliest
        };
        let list = Request::ListTopics(ListTopicsRequest {
            topic: topic.clone(),
        });
        let bounds = match self.call(list)? {
            Response::TopicList(topics) => topics
                .into_iter()
                .find(|info| info.topic == *topic)
                .and_then(|info| info.queues.get(queue_id as usize).copied()),
            _ => None,
        };
        let Some(bounds) = bounds else {
            return Ok(0);
        };
        Ok(match start_from {
            StartFrom::Earliest => bounds.min_offset,
            StartFrom::Latest => bounds.max_offset,
            StartFrom::Timestamp(timestamp_ms) => {
                let request = Request::OffsetForTime(OffsetForTimeRequest {
                    topic: topic.clone(),
                    queue_id,
                    timestamp_ms,
                });
                match self.call(request)? {
                    Response::Offset(Some(offset)) => offset,
                    _ => bounds.min_offset,
                }
            }
        })
    }

    fn pull_ready(&mut self) {
        let now = Instant::now();
        let limit = self.options.max_in_flight_per_queue;
        let keys: Vec<QueueKey> = self
            .queues
            .iter()
            .filter(|(_, q)| {
                !q.pulling
                    && !q.revoked
                    && q.in_flight.len() < limit
                    && q.paused_until.is_none_or(|until| now >= until)
            })
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            let Some(queue) = self.queues.get_mut(&key) else {
                continue;
            };
            queue.pulling = true;
            queue.paused_until = None;
            let from = queue.next_pull;
            let request = Request::Pull(PullRequest {
                group: self.group.clone(),
                topic: self.topics[key.0].clone(),
                queue_id: key.1,
                queue_offset: from,
                max_messages: self.options.pull_batch,
                max_bytes: 4 << 20,
                wait_ms: self.options.long_poll.as_millis() as u32,
            });
            let events = self.events.clone();
            self.connection.call_async(
                &request,
                self.options.long_poll + self.options.request_timeout,
                Box::new(move |outcome| {
                    let _ = events.send(Event::Pulled(key, from, outcome));
                }),
            );
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Pulled(key, from, outcome) => self.on_pulled(key, from, outcome),
            Event::Committed(key, point, outcome) => self.on_committed(key, point, outcome),
            Event::Skipped(key, offset) => {
                if let Some(queue) = self.queues.get_mut(&key) {
                    queue.in_flight.remove(&offset);
                    queue.skipped.insert(offset);
                }
                self.release_revoked();
            }
            Event::Handled(key, delivery, outcome) => self.on_handled(key, delivery, outcome),
            Event::SentBack(key, delivery, outcome) => self.on_sent_back(key, delivery, outcome),
        }
    }

    fn pause(&mut self, key: QueueKey, for_how_long: Duration) {
        if let Some(queue) = self.queues.get_mut(&key) {
            queue.paused_until = Some(Instant::now() + for_how_long);
        }
    }

    fn on_pulled(&mut self, key: QueueKey, from: u64, outcome: Result<Response, ClientError>) {
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        queue.pulling = false;
        if queue.revoked {
            self.release_revoked();
            return;
        }
        if queue.next_pull != from {
            return;
        }
        let pull = match outcome {
            Ok(Response::PullResult(pull)) => pull,
            Ok(Response::Error(error)) => {
                log::warn!("consumer {}: pull refused: {error}", self.member_id);
                self.pause(key, Duration::from_secs(1));
                return;
            }
            Ok(other) => {
                self.report(ClientError::Protocol(format!(
                    "{} in reply to PULL",
                    other.kind().name()
                )));
                self.pause(key, Duration::from_secs(1));
                return;
            }
            Err(error) => {
                log::warn!("consumer {}: pull failed: {error}", self.member_id);
                self.reconnect_if_needed();
                self.pause(key, Duration::from_millis(200));
                return;
            }
        };
        match pull.status {
            PullStatus::Found => {}
            PullStatus::NoNewMessages => return,
            PullStatus::OffsetOutOfRange => {
                log::warn!(
                    "consumer {}: offset {from} of {}/{} is past the queue's end {}; continuing there",
                    self.member_id, self.topics[key.0], key.1, pull.max_offset
                );
                queue.next_pull = pull.max_offset;
                return;
            }
            PullStatus::OffsetExpired => {
                // Never a silent jump: the queue stops here until an operator moves it
                // (`keel offsets reset`) or the application decides.
                self.report(ClientError::OffsetExpired {
                    queue_id: key.1,
                    offset: from,
                    min_offset: pull.min_offset,
                });
                self.pause(key, Duration::from_secs(30));
                return;
            }
        }
        let (records, damaged) =
            crate::records::checked_records(&pull, &self.topics[key.0], key.1, from);
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        queue.next_pull = records.last().map_or(from, |r| r.queue_offset + 1);
        for record in records {
            if !matches_filter(self.filter.as_ref(), &record.tags) {
                self.stats.filtered.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            queue.in_flight.insert(record.queue_offset);
            let delivery = delivery_of(record, &self.topics[0]);
            if delivery.reconsume_times > 0 {
                self.stats.redeliveries.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(jobs) = &self.jobs {
                let _ = jobs.send(Job { key, delivery });
            }
        }
        if let Some((queue_offset, detail)) = damaged {
            // Not handed over and not skipped: the queue stops before it and the pull
            // is retried (a network error heals; damage on disk needs an operator).
            self.report(ClientError::Corrupt {
                queue_id: key.1,
                queue_offset,
                detail,
            });
            self.pause(key, Duration::from_secs(5));
        }
    }

    fn finish_message(&mut self, key: QueueKey, queue_offset: u64) {
        if let Some(queue) = self.queues.get_mut(&key) {
            queue.in_flight.remove(&queue_offset);
        }
        if self.queues.get(&key).is_some_and(|q| q.revoked) {
            self.release_revoked();
        }
    }

    fn on_handled(&mut self, key: QueueKey, delivery: Box<Delivery>, outcome: ConsumeResult) {
        let queue_offset = delivery.record.queue_offset;
        match outcome {
            ConsumeResult::Success => {
                self.stats.handled.fetch_add(1, Ordering::Relaxed);
                self.finish_message(key, queue_offset);
            }
            ConsumeResult::ReconsumeLater(reason) => self.send_back(key, delivery, reason),
        }
    }

    fn send_back(&mut self, key: QueueKey, delivery: Box<Delivery>, reason: String) {
        let record = &delivery.record;
        let mut message = record.to_message();
        message.topic = delivery.topic.clone();
        message.seal();
        let request = Request::SendBack(SendBackRequest {
            group: self.group.clone(),
            reconsume_times: delivery.reconsume_times + 1,
            max_reconsume_times: self.options.max_reconsume_times,
            reason,
            origin_topic: delivery.topic.clone(),
            origin_msg_id: u64::from_str_radix(&delivery.msg_id, 16).unwrap_or(record.log_offset),
            message,
        });
        let events = self.events.clone();
        self.connection.call_async(
            &request,
            self.options.request_timeout,
            Box::new(move |outcome| {
                let _ = events.send(Event::SentBack(key, delivery, outcome));
            }),
        );
    }

    fn on_sent_back(
        &mut self,
        key: QueueKey,
        delivery: Box<Delivery>,
        outcome: Result<Response, ClientError>,
    ) {
        match outcome {
            Ok(Response::SendResult(result)) if result.status == SendStatus::SendOk => {
                self.stats.sent_back.fetch_add(1, Ordering::Relaxed);
                self.finish_message(key, delivery.record.queue_offset);
            }
            other => {
                // Not stored durably for a retry: keep it unfinished and hand it to the
                // handler again here, after a pause.
                log::warn!(
                    "consumer {}: could not send {} back for a retry ({other:?}); handling it again locally",
                    self.member_id, delivery.msg_id
                );
                self.reconnect_if_needed();
                let jobs = self.jobs.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(1));
                    if let Some(jobs) = jobs {
                        let _ = jobs.send(Job {
                            key,
                            delivery: *delivery,
                        });
                    }
                });
            }
        }
    }

    /// Commits a queue's position and waits for the answer (when letting a queue go,
    /// and at shutdown).
    fn commit(&mut self, key: QueueKey) {
        let Some(request) = self.commit_request(key) else {
            return;
        };
        let point = match &request {
            Request::GroupCommit(commit) => commit.offset,
            _ => return,
        };
        let outcome = self.call(request);
        self.on_committed(key, point, outcome);
    }

    fn commit_request(&self, key: QueueKey) -> Option<Request> {
        let queue = self.queues.get(&key)?;
        let point = queue.commit_point();
        if queue.committed == Some(point) || queue.committing == Some(point) {
            return None;
        }
        Some(Request::GroupCommit(GroupCommitRequest {
            group: self.group.clone(),
            topic: self.topics[key.0].clone(),
            member_id: self.member_id.clone(),
            queue_id: key.1,
            offset: point,
        }))
    }

    fn on_committed(&mut self, key: QueueKey, point: u64, outcome: Result<Response, ClientError>) {
        if let Some(queue) = self.queues.get_mut(&key) {
            if queue.committing == Some(point) {
                queue.committing = None;
            }
        }
        match outcome {
            Ok(Response::Error(error)) => {
                self.on_committed(key, point, Err(ClientError::Broker(error)))
            }
            Ok(_) => {
                if let Some(queue) = self.queues.get_mut(&key) {
                    queue.committed = Some(queue.committed.map_or(point, |c| c.max(point)));
                }
            }
            Err(ClientError::Broker(error)) if error.code == ErrorCode::NotOwner => {
                // Another member has the queue: stop at once; what is in flight here
                // will be redelivered there (at least once, never skipped).
                log::warn!("consumer {}: {}", self.member_id, error.message);
                self.forget(key);
            }
            Err(error) => log::warn!("consumer {}: commit failed: {error}", self.member_id),
        }
    }

    /// The periodic commit: one request per queue that moved, answered asynchronously
    /// (the broker fsyncs offsets before answering; the loop does not wait for it).
    fn commit_all_async(&mut self) {
        let keys: Vec<QueueKey> = self.queues.keys().copied().collect();
        for key in keys {
            let Some(request) = self.commit_request(key) else {
                continue;
            };
            let Request::GroupCommit(commit) = &request else {
                continue;
            };
            let point = commit.offset;
            if let Some(queue) = self.queues.get_mut(&key) {
                queue.committing = Some(point);
            }
            let events = self.events.clone();
            self.connection.call_async(
                &request,
                self.options.request_timeout,
                Box::new(move |outcome| {
                    let _ = events.send(Event::Committed(key, point, outcome));
                }),
            );
        }
    }

    fn commit_all(&mut self) {
        let keys: Vec<QueueKey> = self.queues.keys().copied().collect();
        for key in keys {
            self.commit(key);
        }
    }
}

fn matches_filter(filter: Option<&BTreeSet<String>>, tags: &str) -> bool {
    filter.is_none_or(|wanted| {
        tags.split_whitespace().any(|tag| wanted.contains(tag)) || wanted.contains(tags)
    })
}

/// A record as the handler sees it: for a retry copy, the original topic and id.
fn delivery_of(record: Record, topic: &str) -> Delivery {
    let property = |name: &str| {
        record
            .properties
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let reconsume_times = property("KEEL_RECONSUME_TIMES")
        .and_then(|times| times.parse().ok())
        .unwrap_or(0);
    let origin_topic = property("KEEL_ORIGIN_TOPIC").unwrap_or_else(|| topic.to_string());
    let msg_id = property("KEEL_ORIGIN_MSG_ID").unwrap_or_else(|| record.message_id());
    Delivery {
        topic: if record.topic.starts_with('%') {
            origin_topic
        } else {
            record.topic.clone()
        },
        msg_id,
        reconsume_times,
        record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_filters_match_any_listed_tag() {
        let filter = parse_filter(Some("TagA || TagB"));
        assert!(matches_filter(filter.as_ref(), "TagA"));
        assert!(matches_filter(filter.as_ref(), "TagB"));
        assert!(!matches_filter(filter.as_ref(), "TagC"));
        assert!(!matches_filter(filter.as_ref(), ""));
        assert!(matches_filter(parse_filter(Some("*")).as_ref(), "anything"));
        assert!(matches_filter(parse_filter(None).as_ref(), ""));
    }

    #[test]
    fn errors_and_panics_mean_reconsume_later() {
        assert_eq!(
            Ok::<(), String>(()).into_consume_result(),
            ConsumeResult::Success
        );
        assert_eq!(
            Err::<(), _>("boom").into_consume_result(),
            ConsumeResult::ReconsumeLater("boom".into())
        );
    }
}
