//! The consumer's driver thread: its state, its loop, and the way out.

use super::model::{
    Delivery, Event, Job, PushConsumerOptions, PushStats, QueueKey, QueueState, Revoked,
};
use crate::connection::Connection;
use crate::ClientError;
use keel_protocol::{Request, Response};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(super) struct Driver {
    /// The broker, then its slaves.
    pub(super) addresses: Vec<crate::Endpoint>,
    /// Which of them the connection goes to.
    pub(super) current: usize,
    pub(super) primary_retry_due: Instant,
    pub(super) connection: Connection,
    pub(super) group: String,
    /// The subscribed topic, then the group's retry topic.
    pub(super) topics: Vec<String>,
    pub(super) member_id: String,
    pub(super) filter: Option<BTreeSet<String>>,
    pub(super) options: PushConsumerOptions,
    pub(super) queues: HashMap<QueueKey, QueueState>,
    pub(super) revoked: Revoked,
    pub(super) events: Sender<Event>,
    pub(super) event_receiver: Receiver<Event>,
    pub(super) jobs: Option<Sender<Job>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) errors: Arc<Mutex<Vec<ClientError>>>,
    pub(super) stats: Arc<PushStats>,
    pub(super) heartbeat_due: Instant,
    pub(super) commit_due: Instant,
    /// While the broker is unreachable: no reconnect before `due`; the delay doubles
    /// with each failure up to `RECONNECT_MAX` and is reset by a success.
    pub(super) reconnect_due: Instant,
    pub(super) reconnect_delay: Duration,
    /// The group is ordered (its GROUP_SETTINGS, read with each heartbeat).
    pub(super) ordered: bool,
    /// Ordered groups: failed messages waiting to be handled again, and when.
    pub(super) retries: Vec<Retry>,
    /// Ordered groups: the term of the member's leases, moved on to end them all at
    /// once (workers read it before they start a job).
    pub(super) lease_term: Arc<AtomicU64>,
}

/// An ordered group's failed message waiting to be handled again: when, its queue and
/// the holding of it (`QueueState::incarnation`) it was made under.
pub(super) type Retry = (Instant, QueueKey, u64, Box<Delivery>);

/// The first and the longest wait between reconnects.
pub(super) const RECONNECT_MIN: Duration = Duration::from_millis(100);
pub(super) const RECONNECT_MAX: Duration = Duration::from_secs(5);

const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

impl Driver {
    pub(super) fn run(&mut self) -> Result<(), ClientError> {
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let lost = self.current > 0 || self.connection.is_closed();
            self.stats.broker_lost.store(lost, Ordering::Relaxed);
            if self.connection.is_closed() {
                self.end_leases("the connection to the broker was lost");
            }
            if self.current > 0 && now >= self.primary_retry_due {
                self.reconnect_if_needed();
            }
            if now >= self.heartbeat_due {
                self.heartbeat_due = now + self.options.heartbeat_interval;
                if let Err(error) = self.heartbeat() {
                    log::warn!("consumer {}: heartbeat failed: {error}", self.member_id);
                    self.end_leases("a heartbeat failed");
                    self.reconnect_if_needed();
                }
            }
            if now >= self.commit_due {
                self.commit_due = now + self.options.commit_interval;
                self.commit_all_async();
            }
            self.pull_ready();
            self.run_due_retries();
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
    pub(super) fn finish(&mut self) -> Result<(), ClientError> {
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

    /// Ordered groups: no message starts until a heartbeat grants the queues again.
    /// The broker may have restarted or failed over, and its new self may give the
    /// queues to another member before this one reports them, so a lease is not
    /// trusted past the moment the broker was out of reach.
    pub(super) fn end_leases(&mut self, why: &str) {
        let now = Instant::now();
        let mut ended = 0;
        for queue in self.queues.values_mut().filter(|queue| queue.ordered) {
            if queue.lease_until > now {
                queue.lease_until = now;
                ended += 1;
            }
        }
        if ended > 0 {
            self.lease_term.fetch_add(1, Ordering::AcqRel);
            log::info!(
                "consumer {}: {why}: no ordered message starts until a heartbeat grants                  its {ended} queue(s) again",
                self.member_id
            );
        }
    }

    pub(super) fn on_event(&mut self, event: Event) {
        match event {
            Event::Pulled(key, from, outcome) => self.on_pulled(key, from, outcome),
            Event::Committed(key, point, outcome) => self.on_committed(key, point, outcome),
            Event::CaughtUp(key, group, from, outcome) => {
                self.on_caught_up(key, group, from, outcome)
            }
            Event::Skipped(key, offset) => {
                if let Some(queue) = self.queues.get_mut(&key) {
                    let line = queue.dispatched.get(&offset).cloned();
                    queue.leave(offset, line.as_deref());
                }
                self.free_line(key, offset);
                self.release_revoked();
            }
            Event::NotStarted(key, delivery) => self.not_started(key, delivery),
            Event::Handled(key, delivery, outcome) => self.on_handled(key, delivery, outcome),
            Event::SentBack(key, delivery, outcome) => self.on_sent_back(key, delivery, outcome),
        }
    }

    pub(super) fn call(&self, request: Request) -> Result<Response, ClientError> {
        match self
            .connection
            .call(&request, self.options.request_timeout)?
        {
            Response::Error(error) => Err(ClientError::Broker(error)),
            response => Ok(response),
        }
    }

    pub(super) fn report(&self, error: ClientError) {
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
}
