//! A shard: what one event loop owes its connections between a decoded request and its
//! answer.
//!
//! The loop decodes a request and hands it to `Shard::dispatch` (`dispatch.rs`), which
//! calls its handler (`handlers/`). A handler acts on the store and answers at once or
//! leaves something pending here: a send waiting for the durable offset, a reply
//! waiting for metadata to reach the disk, a read at the reader threads, a long poll,
//! a reply computed on a thread. Each turn, `Shard::turn` answers what became known.
//! Every answer goes to the outbox, which the loop writes to its connections: a shard
//! never touches a socket, so handlers are tested without one (`shard_tests.rs`).

use crate::broker::connection::ReplyTo;
use crate::broker::reader::{ReadDone, ReadJob, ReadOutcome};
use crate::broker::workers::{guarded, internal, Pool, Pools};
use crate::context::Broker;
use keel_protocol::{ErrorCode, PullRequest, Response, SendBatchResult, SendResult, SendStatus};
use mio::Waker;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Reads of the log one connection may have at the reader threads at once (each may
/// hold up to 4 MiB of records); the loop leaves its further requests unread meanwhile.
pub(crate) const READS_IN_FLIGHT_PER_CONNECTION_MAX: usize = 8;

/// What a durable send is answered with: SEND_RESULT or SEND_BATCH_RESULT.
pub(crate) enum Acked {
    One(SendResult),
    /// (queue_id, queue_offset, log_offset) of each message of the batch.
    Batch(Vec<(u32, u64, u64)>),
}

impl Acked {
    /// The answer, with `status`. Takes the batch's positions: each send is answered once.
    fn response(&mut self, status: SendStatus) -> Response {
        match self {
            Acked::One(result) => Response::SendResult(SendResult {
                status,
                ..result.clone()
            }),
            Acked::Batch(messages) => Response::SendBatchResult(SendBatchResult {
                status,
                messages: std::mem::take(messages),
            }),
        }
    }
}

/// A send (or batch) waiting for the durable offset to reach `offset_end`.
pub(crate) struct PendingSend {
    pub to: ReplyTo,
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
    /// When it was handed to the store (for the latency histogram).
    pub arrived: Instant,
    /// A sync master had no slave in sync when this was stored: once it is locally
    /// durable, SLAVE_NOT_AVAILABLE at once.
    pub no_slave: bool,
    /// FLUSH_SLAVE_TIMEOUT past this.
    pub slave_deadline: Instant,
    /// An idempotent retry, answered with its original: it sits at the original's
    /// (older) position, so it is outside the rule that answers follow log order.
    pub retry: bool,
}

impl PendingSend {
    /// Where it sits in the log: a disk-full rollback starts a new generation at a
    /// lower offset, so the generation comes first.
    fn position(&self) -> (u64, u64) {
        (self.generation, self.offset_end)
    }
}

/// Sends waiting for durability, in log order, so the front is always the next to
/// complete and each turn looks at the front only.
#[derive(Default)]
pub(crate) struct PendingSends {
    queue: VecDeque<PendingSend>,
    /// Position of the last send (not a retry) answered: those go out in log order.
    answered: (u64, u64),
}

impl PendingSends {
    /// Appends arrive in log order and go to the back. An idempotent retry's answer
    /// waits for its original, which may be older than the back: it goes where its
    /// offset says, and times out no later than the send behind it (so deadlines stay
    /// ordered too, and the front's is the next due).
    fn insert(&mut self, mut send: PendingSend) {
        let at = self
            .queue
            .partition_point(|queued| queued.position() <= send.position());
        if let Some(behind) = self.queue.get(at) {
            send.deadline = send.deadline.min(behind.deadline);
            send.slave_deadline = send.slave_deadline.min(behind.slave_deadline);
        }
        self.queue.insert(at, send);
    }

    fn front(&self) -> Option<&PendingSend> {
        self.queue.front()
    }

    fn front_mut(&mut self) -> Option<&mut PendingSend> {
        self.queue.front_mut()
    }

    fn pop_front(&mut self) -> Option<PendingSend> {
        let send = self.queue.pop_front()?;
        if !send.retry {
            assert!(
                send.position() >= self.answered,
                "sends answered out of log order: {:?} after {:?}",
                send.position(),
                self.answered
            );
            self.answered = send.position();
        }
        Some(send)
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// A reply computed off the loop (a promotion, a lookup), sent once `outcome` is set.
pub(crate) struct PendingReply {
    pub to: ReplyTo,
    pub outcome: Arc<Mutex<Option<Response>>>,
}

/// A reply waiting for topics/offsets metadata `version` to be on disk.
pub(crate) struct PendingMeta {
    pub to: ReplyTo,
    pub version: u64,
    pub response: Response,
    pub deadline: Instant,
}

/// A PULL that found nothing and waits for new records or its deadline.
pub(crate) struct ParkedPull {
    pub to: ReplyTo,
    pub pull: PullRequest,
    pub deadline: Instant,
    /// Due (or readable), but its connection's reads are at their bound: it goes when
    /// one of them finishes, not at its deadline.
    pub deferred: bool,
}

/// What a connection waits for. A connection that waits for anything is not idle.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Waits {
    /// Pending sends, metadata replies and thread replies.
    answers: usize,
    /// PULLs parked or being read.
    pulls: usize,
    /// Reads at the reader threads (PULLs and lookups by time).
    reads: usize,
}

pub(crate) struct Shard {
    pub(crate) broker: Arc<Broker>,
    pending_sends: PendingSends,
    pending_meta: VecDeque<PendingMeta>,
    pending_replies: Vec<PendingReply>,
    parked_pulls: Vec<ParkedPull>,
    /// The reader threads and the slow requests' threads; how reads' answers come back.
    pools: Pools,
    reads_done: Receiver<ReadDone>,
    reads_done_sender: Sender<ReadDone>,
    /// Wakes the loop when a read or a thread finishes.
    waker: Arc<Waker>,
    /// Reads sent to the reader threads and not answered yet.
    reads_in_flight: usize,
    waits: HashMap<u64, Waits>,
    /// The durable offset parked pulls were last checked against.
    durable_seen: u64,
    /// Check the parked pulls next turn even if the durable offset did not move.
    recheck_parked: bool,
    drain_deadline: Option<Instant>,
    outbox: Vec<(ReplyTo, Response)>,
}

impl Shard {
    pub(crate) fn new(broker: Arc<Broker>, pools: Pools, waker: Arc<Waker>) -> Shard {
        let (reads_done_sender, reads_done) = std::sync::mpsc::channel();
        Shard {
            broker,
            pending_sends: PendingSends::default(),
            pending_meta: VecDeque::new(),
            pending_replies: Vec::new(),
            parked_pulls: Vec::new(),
            pools,
            reads_done,
            reads_done_sender,
            waker,
            reads_in_flight: 0,
            waits: HashMap::new(),
            durable_seen: 0,
            recheck_parked: false,
            drain_deadline: None,
            outbox: Vec::new(),
        }
    }

    /// Queues an answer for the loop to write.
    pub(crate) fn reply(&mut self, to: ReplyTo, response: Response) {
        self.outbox.push((to, response));
    }

    /// The answers queued since the last call, for the loop to write.
    pub(crate) fn outbox(&mut self) -> std::vec::Drain<'_, (ReplyTo, Response)> {
        self.outbox.drain(..)
    }

    pub(crate) fn outbox_is_empty(&self) -> bool {
        self.outbox.is_empty()
    }

    fn wait_for(&mut self, connection_id: u64, change: impl FnOnce(&mut Waits)) {
        let waits = self.waits.entry(connection_id).or_default();
        change(waits);
        if *waits == Waits::default() {
            self.waits.remove(&connection_id);
        }
    }

    fn waits(&self, connection_id: u64) -> Waits {
        self.waits.get(&connection_id).copied().unwrap_or_default()
    }

    /// Whether the connection waits for an answer (so it is not idle, however long).
    pub(crate) fn owes(&self, connection_id: u64) -> bool {
        self.waits.contains_key(&connection_id)
    }

    /// Whether the connection may start another read of the log.
    pub(crate) fn reads_room(&self, connection_id: u64) -> bool {
        self.waits(connection_id).reads < READS_IN_FLIGHT_PER_CONNECTION_MAX
    }

    /// PULLs of the connection parked or being read.
    pub(crate) fn pulls_waiting(&self, connection_id: u64) -> usize {
        self.waits(connection_id).pulls
    }

    /// The connection closed: nothing more is owed to it, and its long polls go.
    pub(crate) fn connection_closed(&mut self, connection_id: u64) {
        self.waits.remove(&connection_id);
        let before = self.parked_pulls.len();
        self.parked_pulls
            .retain(|pull| pull.to.connection_id != connection_id);
        let dropped = before - self.parked_pulls.len();
        self.broker
            .counters
            .parked_pulls
            .fetch_sub(dropped, Ordering::Relaxed);
    }

    /// A send whose answer waits for the durable offset.
    pub(crate) fn expect_send(&mut self, send: PendingSend) {
        self.broker
            .counters
            .pending_sends
            .fetch_add(1, Ordering::Relaxed);
        self.wait_for(send.to.connection_id, |waits| waits.answers += 1);
        self.pending_sends.insert(send);
    }

    /// A reply that waits until metadata `version` is on disk (or its deadline).
    pub(crate) fn expect_meta(&mut self, to: ReplyTo, version: u64, response: Response) {
        let timeout = std::time::Duration::from_millis(self.broker.config.sync_flush_timeout_ms);
        self.wait_for(to.connection_id, |waits| waits.answers += 1);
        self.pending_meta.push_back(PendingMeta {
            to,
            version,
            response,
            deadline: Instant::now() + timeout,
        });
    }

    /// Runs `work` on `pool` (it may block: a durability wait, a whole-log scan, a
    /// promotion) and answers `to` with its response once it is done, INTERNAL if it
    /// panicked. `Err` with the answer to give when the pool refused it (BUSY, or
    /// SHUTTING_DOWN): the caller replies, since only it knows what was done already.
    pub(crate) fn offload(
        &mut self,
        to: ReplyTo,
        pool: Pool,
        what: &'static str,
        work: impl FnOnce(&Broker) -> Response + Send + 'static,
    ) -> Result<(), Response> {
        let outcome = Arc::new(Mutex::new(None));
        let filled = outcome.clone();
        let broker = self.broker.clone();
        let waker = self.waker.clone();
        let workers = match pool {
            Pool::Slow => &self.pools.slow,
            Pool::Promote => &self.pools.promote,
        };
        let submitted = workers.submit(move || {
            let response = guarded(what, || work(&broker), |panic| internal(what, panic));
            *filled.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(response);
            let _ = waker.wake();
        });
        submitted.map_err(|refused| workers.refusal(refused))?;
        self.wait_for(to.connection_id, |waits| waits.answers += 1);
        self.pending_replies.push(PendingReply { to, outcome });
        Ok(())
    }

    /// A PULL of `to` begins: it is answered through `answer_read` with `pull` set.
    /// Returns how many of the connection's PULLs were waiting before it.
    pub(crate) fn begin_pull(&mut self, to: ReplyTo) -> usize {
        let before = self.pulls_waiting(to.connection_id);
        self.wait_for(to.connection_id, |waits| waits.pulls += 1);
        before
    }

    /// Hands a read of the log to the reader threads.
    pub(crate) fn submit_read(&mut self, to: ReplyTo, job: ReadJob) {
        let pull = matches!(job, ReadJob::Pull { .. });
        let broker = self.broker.clone();
        let done = self.reads_done_sender.clone();
        let waker = self.waker.clone();
        let submitted = self.pools.reads.submit(move || {
            let outcome = guarded(
                "a read",
                || crate::broker::reader::read(&broker, job),
                |panic| ReadOutcome::Reply(internal("the read", panic)),
            );
            let done_read = ReadDone {
                reply_to: to,
                pull,
                outcome,
            };
            // The loop may have stopped meanwhile; then nobody waits for this answer.
            if done.send(done_read).is_ok() {
                let _ = waker.wake();
            }
        });
        if let Err(refused) = submitted {
            let response = self.pools.reads.refusal(refused);
            self.answer_read(to, pull, response);
            return;
        }
        self.reads_in_flight += 1;
        self.wait_for(to.connection_id, |waits| waits.reads += 1);
        let reads = self.waits(to.connection_id).reads;
        assert!(
            reads <= READS_IN_FLIGHT_PER_CONNECTION_MAX,
            "{reads} reads in flight for one connection"
        );
    }

    /// Answers a read (a PULL's, when `pull`: the connection waits for one fewer).
    fn answer_read(&mut self, to: ReplyTo, pull: bool, response: Response) {
        if pull {
            self.wait_for(to.connection_id, |waits| {
                waits.pulls = waits.pulls.saturating_sub(1)
            });
        }
        self.reply(to, response);
    }

    /// An answer that was pending for `to` is known.
    fn settle(&mut self, to: ReplyTo, response: Response) {
        self.wait_for(to.connection_id, |waits| {
            waits.answers = waits.answers.saturating_sub(1)
        });
        self.reply(to, response);
    }

    /// Answers everything whose outcome became known: finished reads, durable (or
    /// failed, or timed-out) sends, persisted metadata, finished threads, parked pulls
    /// with new records or past their wait.
    pub(crate) fn turn(&mut self, now: Instant) {
        self.complete_reads();
        self.complete_sends(now);
        self.complete_meta(now);
        self.complete_replies();
        self.serve_parked_pulls(now);
    }

    /// When the next pending answer is due without any wake-up.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let send = self
            .pending_sends
            .front()
            .map(|send| match send.wait_slave {
                true => send.deadline.min(send.slave_deadline),
                false => send.deadline,
            });
        let meta = self.pending_meta.front().map(|meta| meta.deadline);
        let pulls = self
            .parked_pulls
            .iter()
            .filter(|pull| !pull.deferred)
            .map(|pull| pull.deadline)
            .min();
        [send, meta, pulls].into_iter().flatten().min()
    }

    /// Whether storage progress concerns this shard (it has answers pending).
    pub(crate) fn is_waiting(&self) -> bool {
        !self.pending_sends.is_empty()
            || !self.parked_pulls.is_empty()
            || !self.pending_meta.is_empty()
            || !self.pending_replies.is_empty()
            || self.drain_deadline.is_some()
    }

    /// Shutting down: long polls are answered now, sends by `deadline` at the latest.
    pub(crate) fn begin_drain(&mut self, now: Instant, deadline: Instant) {
        self.drain_deadline = Some(deadline);
        for pull in &mut self.parked_pulls {
            pull.deadline = now;
        }
    }

    /// True once nothing is pending: sends, metadata replies, parked pulls, replies of
    /// offloaded work and reads (a drain waits for them up to its deadline).
    pub(crate) fn drained(&self) -> bool {
        self.pending_sends.is_empty()
            && self.pending_meta.is_empty()
            && self.parked_pulls.is_empty()
            && self.pending_replies.is_empty()
            && self.reads_in_flight == 0
    }

    fn complete_replies(&mut self) {
        if self.pending_replies.is_empty() {
            return;
        }
        for reply in std::mem::take(&mut self.pending_replies) {
            let outcome = reply
                .outcome
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .take();
            match outcome {
                Some(response) => self.settle(reply.to, response),
                None => self.pending_replies.push(reply),
            }
        }
    }

    /// Answers every pending send whose fate is known: durable (`SEND_OK`), locally
    /// durable but not on a slave (`SLAVE_NOT_AVAILABLE`, `FLUSH_SLAVE_TIMEOUT`), past
    /// its deadline (`FLUSH_DISK_TIMEOUT`), or caught by a storage failure.
    fn complete_sends(&mut self, now: Instant) {
        let broker = self.broker.clone();
        let store = &broker.store;
        let counters = &broker.counters;
        let durable = broker.offset_durable();
        let local = store.offset_local_durable();
        let mut slave_connected: Option<bool> = None;
        let poisoned = store.is_poisoned();
        let draining_expired = self.drain_deadline.is_some_and(|deadline| now >= deadline);
        let lease_valid = broker.lease_valid();
        while let Some(front) = self.pending_sends.front_mut() {
            let messages = front.messages;
            let response = if store.is_discarded(front.generation, front.offset_end) {
                counters.sends_failed.fetch_add(messages, Ordering::Relaxed);
                Response::error(
                    ErrorCode::DiskFull,
                    "the disk filled up before this message was written; it was not stored",
                )
            } else if front.offset_end <= durable && !lease_valid {
                // Stored where it must be, but this master may have been replaced since
                // the controller last confirmed it: no SEND_OK until it does again. Past
                // the deadline the client retries (same producer id and sequence) and
                // whichever master holds it answers with the original.
                let deadline = if front.wait_slave {
                    front.slave_deadline
                } else {
                    front.deadline
                };
                if now < deadline && !draining_expired {
                    break;
                }
                counters
                    .sends_outcome_unknown
                    .fetch_add(messages, Ordering::Relaxed);
                front.result.response(SendStatus::OutcomeUnknown)
            } else if front.offset_end <= durable {
                counters.sends_ok.fetch_add(messages, Ordering::Relaxed);
                front.result.response(SendStatus::SendOk)
            } else if poisoned && front.log_offset < store.offset_attempted() {
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
                let connected = *slave_connected.get_or_insert_with(|| broker.slave_connected());
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
            counters.pending_sends.fetch_sub(1, Ordering::Relaxed);
            broker
                .send_latency
                .observe(&response, now.saturating_duration_since(send.arrived));
            self.settle(send.to, response);
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
            self.settle(meta.to, response);
        }
    }

    /// Answers (or parks) what the reader threads finished.
    fn complete_reads(&mut self) {
        let mut finished = false;
        while let Ok(done) = self.reads_done.try_recv() {
            finished = true;
            self.reads_in_flight = self.reads_in_flight.saturating_sub(1);
            let to = done.reply_to;
            self.wait_for(to.connection_id, |waits| {
                waits.reads = waits.reads.saturating_sub(1)
            });
            match done.outcome {
                ReadOutcome::Reply(response) => self.answer_read(to, done.pull, response),
                ReadOutcome::NothingYet { pull, deadline } => {
                    if self.pulls_waiting(to.connection_id) == 0 {
                        // The connection closed meanwhile.
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
                        to,
                        pull,
                        deadline,
                        deferred: false,
                    });
                    // Records may have arrived after the reader looked, and the loop
                    // may already have seen the durable offset they moved.
                    self.recheck_parked = true;
                }
            }
        }
        if finished && self.parked_pulls.iter().any(|pull| pull.deferred) {
            self.recheck_parked = true;
        }
    }

    /// Parked long polls whose queue has something new, or whose wait is over, go back
    /// to the reader threads. Which have something is checked in memory, for all of
    /// them under one lock, when the durable offset moved or a pull was just parked.
    fn serve_parked_pulls(&mut self, now: Instant) {
        if self.parked_pulls.is_empty() {
            self.recheck_parked = false;
            return;
        }
        let durable = self.broker.offset_durable();
        let look = durable != self.durable_seen || self.recheck_parked;
        self.durable_seen = durable;
        self.recheck_parked = false;
        let any_due = self.parked_pulls.iter().any(|pull| now >= pull.deadline);
        if !look && !any_due {
            return;
        }
        let readable = if look {
            self.broker.store.readable(
                self.parked_pulls
                    .iter()
                    .map(|p| (p.pull.topic.as_str(), p.pull.queue_id, p.pull.queue_offset)),
            )
        } else {
            vec![false; self.parked_pulls.len()]
        };
        for (mut pull, readable) in std::mem::take(&mut self.parked_pulls)
            .into_iter()
            .zip(readable)
        {
            let expired = now >= pull.deadline;
            if !readable && !expired {
                self.parked_pulls.push(pull);
                continue;
            }
            if !self.reads_room(pull.to.connection_id) {
                pull.deferred = true;
                self.parked_pulls.push(pull);
                continue;
            }
            self.broker
                .counters
                .parked_pulls
                .fetch_sub(1, Ordering::Relaxed);
            // Still counted in the connection's waiting pulls: it becomes a read.
            let long_poll_until = (!expired).then_some(pull.deadline);
            self.submit_read(
                pull.to,
                ReadJob::Pull {
                    pull: pull.pull,
                    long_poll_until,
                },
            );
        }
    }
}
