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
mod model;
mod offsets;
mod ordered;

use crate::{ClientError, Endpoint};
pub use discovery::{DiscoveringPushConsumer, DiscoveryOptions};
use driver::Driver;
use handling::{parse_filter, work};
use keel_protocol::retry_topic;
use membership::connect_first;
use model::{default_member_id, Job, Revoked};
pub use model::{
    ConsumeResult, Delivery, IntoConsumeResult, PushConsumerOptions, PushStats, StartFrom,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

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
        let lease_term = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::with_capacity(options.threads);
        for index in 0..options.threads {
            let (jobs, events, handler, revoked, tickets, term) = (
                job_receiver.clone(),
                events.clone(),
                handler.clone(),
                revoked.clone(),
                tickets.clone(),
                lease_term.clone(),
            );
            let worker = std::thread::Builder::new()
                .name(format!("keel-consume-{index}"))
                .spawn(move || work(&jobs, &events, handler.as_ref(), &revoked, &tickets, &term))
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
            ordered: false,
            retries: Vec::new(),
            lease_term,
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
