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

//!
//! Inside, one driver thread (`driver.rs`) owns the state of every queue and reacts to
//! events: membership (`membership.rs`), fetching (`fetch.rs`), handling and sending
//! back (`handling.rs`), and committing (`offsets.rs`).

mod discovery;
mod driver;
mod fetch;
mod handling;
mod membership;
mod offsets;

use crate::connection::ConnectionOptions;
use crate::{ClientError, Endpoint};
pub use discovery::{DiscoveringPushConsumer, DiscoveryOptions};
use driver::Driver;
use handling::{parse_filter, work};
use keel_protocol::{retry_topic, Record, Response};
use membership::connect_first;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
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
    /// The consumer is not connected to its broker (it is down, or the consumer reads
    /// a fallback slave meanwhile): a `DiscoveringPushConsumer` asks the name servers
    /// for the group's new master at once.
    pub broker_lost: std::sync::atomic::AtomicBool,
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
        let mut addresses = vec![Endpoint::resolve(address)?];
        for fallback in &options.fallback_brokers {
            addresses.push(Endpoint::resolve(fallback)?);
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
            reconnect_due: Instant::now(),
            reconnect_delay: driver::RECONNECT_MIN,
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

#[cfg(test)]
mod tests {
    use super::handling::{matches_filter, parse_filter};
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
