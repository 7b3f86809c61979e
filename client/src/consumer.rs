//! The pull consumer: fetch, verify, handle, and only then commit.
//!
//! One PULL is kept in flight per queue (long polling), so a queue with new records is
//! served as soon as they are durable, whatever the other queues do. Records of a queue
//! are handled in order. The committed offset of a queue only moves past a record after
//! the handler returned `Ok` for it; a record whose handler failed is handed to the
//! handler again after `retry_backoff` (records after it wait), so nothing is skipped.
//! Every record's CRC32C (whole record) and the producer's payload CRC32C are checked
//! before the handler sees it; a mismatch stops the consumer with `ClientError::Corrupt`.

use crate::admin::unexpected;
use crate::connection::{Connection, ConnectionOptions};
use crate::records::checked_records;
use crate::{ClientError, Endpoint};
use keel_protocol::{
    CommitOffsetRequest, ListTopicsRequest, PullRequest, PullStatus, QueryOffsetRequest, Record,
    Request, Response,
};
use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Records per PULL.
    pub pull_batch: u32,
    pub pull_max_bytes: u32,
    /// Long-poll time of a PULL that finds nothing.
    pub long_poll: Duration,
    /// Wait before a record whose handler failed is handled again.
    pub retry_backoff: Duration,
    /// Time allowed for a request beyond its long-poll wait.
    pub request_timeout: Duration,
    pub connection: ConnectionOptions,
    /// Commit the offsets `poll` advanced (true); false: only `commit` does, and a
    /// consumer that never calls it reads without moving its group (a peek).
    pub auto_commit: bool,
}

impl Default for ConsumerOptions {
    fn default() -> ConsumerOptions {
        ConsumerOptions {
            pull_batch: 64,
            pull_max_bytes: 1 << 20,
            long_poll: Duration::from_millis(1000),
            retry_backoff: Duration::from_millis(1000),
            request_timeout: Duration::from_secs(5),
            connection: ConnectionOptions::default(),
            auto_commit: true,
        }
    }
}

/// What one `poll` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// Records the handler accepted.
    pub handled: u64,
    /// Handler failures (each such record will be handed over again).
    pub failed: u64,
}

struct QueueCursor {
    /// Next queue offset to hand to the handler; everything below is done.
    offset: u64,
    /// Offset last committed to the broker.
    committed: Option<u64>,
    /// Records fetched but not yet handled, in order.
    buffered: VecDeque<Record>,
    in_flight: bool,
    /// Do not pull or handle this queue before this instant (after a handler failure).
    resume_at: Option<Instant>,
    /// A damaged record follows the buffered ones; reported once they are handled.
    corrupt: Option<ClientError>,
}

type PullOutcome = (u32, Result<Response, ClientError>);

/// Consumes one topic, all of its queues, for one consumer group.
pub struct Consumer {
    connection: Connection,
    group: String,
    topic: String,
    options: ConsumerOptions,
    queues: Vec<QueueCursor>,
    sender: mpsc::Sender<PullOutcome>,
    receiver: mpsc::Receiver<PullOutcome>,
}

impl Consumer {
    /// Connects and starts each queue at the group's committed offset, or at the
    /// beginning of the queue when the group never committed one.
    pub fn connect(
        address: &str,
        group: &str,
        topic: &str,
        options: ConsumerOptions,
    ) -> Result<Consumer, ClientError> {
        keel_protocol::validate_topic(group)
            .map_err(|detail| ClientError::InvalidArgument(format!("invalid group: {detail}")))?;
        let connection = Connection::connect(Endpoint::resolve(address)?, &options.connection)?;
        let timeout = options.request_timeout;
        let list = Request::ListTopics(ListTopicsRequest {
            topic: topic.to_string(),
        });
        let queue_count = match connection.call(&list, timeout)? {
            Response::TopicList(topics) => topics
                .into_iter()
                .find(|info| info.topic == topic)
                .map_or(0, |info| info.queues.len()),
            Response::Error(error) => return Err(ClientError::Broker(error)),
            other => return Err(unexpected(&other, "LIST_TOPICS")),
        };
        let mut queues = Vec::with_capacity(queue_count);
        for queue_id in 0..queue_count as u32 {
            let query = Request::QueryOffset(QueryOffsetRequest {
                group: group.into(),
                topic: topic.into(),
                queue_id,
            });
            let committed = match connection.call(&query, timeout)? {
                Response::Offset(offset) => offset,
                Response::Error(error) => return Err(ClientError::Broker(error)),
                other => return Err(unexpected(&other, "QUERY_OFFSET")),
            };
            queues.push(QueueCursor {
                offset: committed.unwrap_or(0),
                committed,
                buffered: VecDeque::new(),
                in_flight: false,
                resume_at: None,
                corrupt: None,
            });
        }
        let (sender, receiver) = mpsc::channel();
        Ok(Consumer {
            connection,
            group: group.into(),
            topic: topic.into(),
            options,
            queues,
            sender,
            receiver,
        })
    }

    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Moves a queue to `offset` (for example the `min_offset` of an `OffsetExpired`
    /// error, accepting that what lies before it is gone). Records buffered for the queue
    /// are dropped; the new position is committed at the next `poll` or `commit`.
    pub fn seek(&mut self, queue_id: u32, offset: u64) -> Result<(), ClientError> {
        let index = queue_id as usize;
        if index >= self.queues.len() {
            return Err(ClientError::InvalidArgument(format!(
                "queue {queue_id} does not exist"
            )));
        }
        // A pull in flight for this queue would deliver records from the old position.
        // Replies that arrive meanwhile are dropped; their queues are simply pulled again.
        while self.queues[index].in_flight {
            let wait = self.options.long_poll + self.options.request_timeout;
            let (id, _) = self
                .receiver
                .recv_timeout(wait)
                .map_err(|_| ClientError::Timeout)?;
            if let Some(queue) = self.queues.get_mut(id as usize) {
                queue.in_flight = false;
            }
        }
        let queue = &mut self.queues[index];
        queue.offset = offset;
        queue.buffered.clear();
        queue.corrupt = None;
        queue.resume_at = None;
        Ok(())
    }

    /// The next offset this consumer will hand over, per queue.
    pub fn positions(&self) -> Vec<u64> {
        self.queues.iter().map(|queue| queue.offset).collect()
    }

    /// Pulls what is available (waiting up to `long_poll` when nothing is), hands each
    /// record to `handler` in queue order, and commits the offsets it advanced. Returns
    /// after one round of replies.
    pub fn poll<E: std::fmt::Display>(
        &mut self,
        handler: impl FnMut(&Record) -> Result<(), E>,
    ) -> Result<PollOutcome, ClientError> {
        self.poll_at_most(u64::MAX, handler)
    }

    /// `poll`, handing over at most `limit` records; the rest stay buffered (and
    /// uncommitted) for the next call.
    pub fn poll_at_most<E: std::fmt::Display>(
        &mut self,
        limit: u64,
        mut handler: impl FnMut(&Record) -> Result<(), E>,
    ) -> Result<PollOutcome, ClientError> {
        self.issue_pulls();
        let wait = self.options.long_poll + self.options.request_timeout;
        let mut outcome = PollOutcome::default();
        let now = Instant::now();
        let ready = self.queues.iter().any(|queue| {
            !queue.buffered.is_empty() && queue.resume_at.is_none_or(|resume| now >= resume)
        });
        if !ready && self.queues.iter().any(|queue| queue.in_flight) {
            match self.receiver.recv_timeout(wait) {
                Ok(reply) => self.on_pull_reply(reply)?,
                Err(_) => return Err(ClientError::Timeout),
            }
        } else if !ready {
            // Every queue is backing off after a handler failure.
            std::thread::sleep(self.options.retry_backoff.min(Duration::from_millis(50)));
        }
        while let Ok(reply) = self.receiver.try_recv() {
            self.on_pull_reply(reply)?;
        }
        for queue_id in 0..self.queues.len() {
            self.handle_buffered(queue_id, limit, &mut handler, &mut outcome);
        }
        let committed = match self.options.auto_commit {
            true => self.commit(),
            false => Ok(()),
        };
        if let Err(error) = committed {
            // Positions are kept in memory and the commit is retried next round; a crash
            // before it succeeds redelivers, never skips.
            if !error.is_retryable() {
                return Err(error);
            }
            log::warn!("committing offsets failed ({error}); will retry");
        }
        let stuck = self
            .queues
            .iter()
            .position(|queue| queue.buffered.is_empty() && queue.corrupt.is_some());
        if let Some(error) = stuck.and_then(|index| self.queues[index].corrupt.clone()) {
            return Err(error);
        }
        Ok(outcome)
    }

    /// Keeps polling until `stop` returns true, then commits.
    pub fn run<E: std::fmt::Display>(
        &mut self,
        mut handler: impl FnMut(&Record) -> Result<(), E>,
        mut stop: impl FnMut(&PollOutcome) -> bool,
    ) -> Result<PollOutcome, ClientError> {
        let mut total = PollOutcome::default();
        loop {
            let round = self.poll(&mut handler)?;
            total.handled += round.handled;
            total.failed += round.failed;
            if stop(&total) {
                self.commit()?;
                return Ok(total);
            }
        }
    }

    fn issue_pulls(&mut self) {
        let now = Instant::now();
        for (queue_id, queue) in self.queues.iter_mut().enumerate() {
            let backing_off = queue.resume_at.is_some_and(|resume| now < resume);
            if queue.in_flight
                || !queue.buffered.is_empty()
                || backing_off
                || queue.corrupt.is_some()
            {
                continue;
            }
            queue.in_flight = true;
            let pull = Request::Pull(PullRequest {
                group: self.group.clone(),
                topic: self.topic.clone(),
                queue_id: queue_id as u32,
                queue_offset: queue.offset,
                max_messages: self.options.pull_batch,
                max_bytes: self.options.pull_max_bytes,
                wait_ms: self.options.long_poll.as_millis().min(u128::from(u32::MAX)) as u32,
            });
            let sender = self.sender.clone();
            let timeout = self.options.long_poll + self.options.request_timeout;
            self.connection.call_async(
                &pull,
                timeout,
                Box::new(move |reply| {
                    let _ = sender.send((queue_id as u32, reply));
                }),
            );
        }
    }

    fn on_pull_reply(&mut self, (queue_id, reply): PullOutcome) -> Result<(), ClientError> {
        let Some(queue) = self.queues.get_mut(queue_id as usize) else {
            return Ok(());
        };
        queue.in_flight = false;
        let pull = match reply? {
            Response::PullResult(pull) => pull,
            Response::Error(error) => return Err(ClientError::Broker(error)),
            other => return Err(unexpected(&other, "PULL")),
        };
        match pull.status {
            PullStatus::Found => {}
            PullStatus::NoNewMessages => return Ok(()),
            PullStatus::OffsetOutOfRange => {
                return Err(ClientError::InvalidArgument(format!(
                "offset {} of queue {queue_id} is past its end {}; the committed offset is wrong",
                queue.offset, pull.max_offset
            )))
            }
            // Never a silent jump: the application decides (`seek`) whether to skip.
            PullStatus::OffsetExpired => {
                return Err(ClientError::OffsetExpired {
                    queue_id,
                    offset: queue.offset,
                    min_offset: pull.min_offset,
                })
            }
        }
        // The intact records before a damaged one are handed over; the damaged one stops
        // this queue with its exact offset.
        let from = queue.offset + queue.buffered.len() as u64;
        let (records, damaged) = checked_records(&pull, &self.topic, queue_id, from);
        queue.buffered.extend(records);
        if let Some((queue_offset, detail)) = damaged {
            log::error!(
                "corrupt record in {}/{queue_id} at offset {queue_offset}: {detail}",
                self.topic
            );
            queue.corrupt = Some(ClientError::Corrupt {
                queue_id,
                queue_offset,
                detail,
            });
        }
        Ok(())
    }

    fn handle_buffered<E: std::fmt::Display>(
        &mut self,
        queue_id: usize,
        limit: u64,
        handler: &mut impl FnMut(&Record) -> Result<(), E>,
        outcome: &mut PollOutcome,
    ) {
        let Some(queue) = self.queues.get_mut(queue_id) else {
            return;
        };
        if queue
            .resume_at
            .is_some_and(|resume| Instant::now() < resume)
        {
            return;
        }
        queue.resume_at = None;
        while let Some(record) = queue.buffered.front() {
            if outcome.handled >= limit {
                return;
            }
            match handler(record) {
                Ok(()) => {
                    outcome.handled += 1;
                    queue.offset = record.queue_offset + 1;
                    queue.buffered.pop_front();
                }
                Err(error) => {
                    outcome.failed += 1;
                    log::warn!(
                        "handler failed for {} (queue {queue_id} offset {}): {error}; retrying in {:?}",
                        record.message_id(),
                        record.queue_offset,
                        self.options.retry_backoff
                    );
                    queue.resume_at = Some(Instant::now() + self.options.retry_backoff);
                    return;
                }
            }
        }
    }

    /// Commits every queue whose offset moved since its last commit, and waits until the
    /// broker has them on disk.
    pub fn commit(&mut self) -> Result<(), ClientError> {
        for queue_id in 0..self.queues.len() {
            let queue = &self.queues[queue_id];
            if queue.committed == Some(queue.offset)
                || (queue.committed.is_none() && queue.offset == 0)
            {
                continue;
            }
            let offset = queue.offset;
            let commit = Request::CommitOffset(CommitOffsetRequest {
                group: self.group.clone(),
                topic: self.topic.clone(),
                queue_id: queue_id as u32,
                offset,
            });
            match self
                .connection
                .call(&commit, self.options.request_timeout)?
            {
                Response::CommitOffsetOk => self.queues[queue_id].committed = Some(offset),
                Response::Error(error) => return Err(ClientError::Broker(error)),
                other => return Err(unexpected(&other, "COMMIT_OFFSET")),
            }
        }
        Ok(())
    }
}
