//! Reads of the log for the event loops, on threads of their own.
//!
//! A PULL of a queue whose records left the page cache, or a lookup by time, may wait
//! on the disk; no event loop ever does. A loop sends a `ReadRequest` to the pool and
//! goes on serving its other connections; a reader thread does the `pread`s, builds
//! the answer, hands it back on the loop's channel and wakes the loop, which writes it.

use crate::broker::connection::ReplyTo;
use crate::context::Broker;
use crate::error::Refusal;
use keel_protocol::{OffsetForTimeRequest, PullRequest, PullResult, PullStatus, Response};
use keel_storage::{QueueRead, ReadStatus, StoreError};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Upper bound on the records of one PULL_RESULT (a single larger record still goes).
const PULL_BYTES_MAX: u32 = 4 << 20;
const PULL_MESSAGES_MAX: u32 = 4096;

pub(crate) enum ReadJob {
    /// `long_poll_until`: when set and nothing is there yet, the answer is
    /// `NothingYet` (the loop parks the pull) instead of NO_NEW_MESSAGES.
    Pull {
        pull: PullRequest,
        long_poll_until: Option<Instant>,
    },
    OffsetForTime(OffsetForTimeRequest),
}

pub(crate) enum ReadOutcome {
    Reply(Response),
    /// A long poll found nothing: park it until new records or its deadline.
    NothingYet {
        pull: PullRequest,
        deadline: Instant,
    },
}

pub(crate) struct ReadDone {
    pub reply_to: ReplyTo,
    /// A PULL's answer (the connection counts its waiting pulls).
    pub pull: bool,
    pub outcome: ReadOutcome,
}

/// Carries out one read of the log (on a reader thread: `Pools::reads`).
pub(crate) fn read(broker: &Broker, job: ReadJob) -> ReadOutcome {
    match job {
        ReadJob::Pull {
            pull,
            long_poll_until,
        } => read_pull(broker, pull, long_poll_until),
        ReadJob::OffsetForTime(query) => ReadOutcome::Reply(offset_for_time(broker, &query)),
    }
}

fn read_pull(broker: &Broker, pull: PullRequest, long_poll_until: Option<Instant>) -> ReadOutcome {
    let outcome = broker.store.read_queue(
        &pull.topic,
        pull.queue_id,
        pull.queue_offset,
        pull.max_messages.min(PULL_MESSAGES_MAX),
        pull.max_bytes.min(PULL_BYTES_MAX),
    );
    let nothing_yet = matches!(&outcome, Ok(read) if read.status == ReadStatus::NoNewMessages);
    match long_poll_until {
        Some(deadline) if nothing_yet && Instant::now() < deadline => {
            return ReadOutcome::NothingYet { pull, deadline };
        }
        _ => {}
    }
    note_delivered(broker, &pull, &outcome);
    ReadOutcome::Reply(pull_response(broker, outcome))
}

fn offset_for_time(broker: &Broker, query: &OffsetForTimeRequest) -> Response {
    match broker
        .store
        .queue_offset_for_time(&query.topic, query.queue_id, query.timestamp_ms)
    {
        Ok(offset) => Response::Offset(Some(offset)),
        Err(error) => Refusal::from(error).response(),
    }
}

/// Remembers how far a group was served (message lookups report it).
fn note_delivered(broker: &Broker, pull: &PullRequest, outcome: &Result<QueueRead, StoreError>) {
    let Ok(read) = outcome else { return };
    if pull.group.is_empty() || read.record_count == 0 {
        return;
    }
    let mut delivered = broker
        .delivered
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let key = (pull.group.clone(), pull.topic.clone(), pull.queue_id);
    // Bounded: group names come from clients.
    if delivered.len() >= 100_000 && !delivered.contains_key(&key) {
        return;
    }
    let next = delivered.entry(key).or_insert(0);
    *next = (*next).max(read.next_offset);
}

fn pull_response(broker: &Broker, outcome: Result<QueueRead, StoreError>) -> Response {
    let read = match outcome {
        Ok(read) => read,
        Err(error) => return Refusal::from(error).response(),
    };
    broker
        .counters
        .messages_pulled
        .fetch_add(u64::from(read.record_count), Ordering::Relaxed);
    let status = match read.status {
        ReadStatus::Found => PullStatus::Found,
        ReadStatus::NoNewMessages => PullStatus::NoNewMessages,
        ReadStatus::OffsetOutOfRange => PullStatus::OffsetOutOfRange,
        ReadStatus::OffsetExpired => PullStatus::OffsetExpired,
    };
    Response::PullResult(PullResult {
        status,
        next_offset: read.next_offset,
        min_offset: read.min_offset,
        max_offset: read.max_offset,
        record_count: read.record_count,
        records: read.records.into(),
    })
}
