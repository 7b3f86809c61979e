//! The delivery thread of `%SCHEDULE%`: each round it runs the timer's levels
//! (`timer.rs`: delayed messages and consumer retries), and drains the fixed retry
//! levels that brokers before the timer filled (queue = delay level), storing each due
//! message in the group's `%RETRY%<group>` topic.
//!
//! Durable by construction: waiting messages are ordinary records of the CommitLog, and
//! how far each level was delivered is a committed offset (group `%SCHEDULER%`), moved
//! only after the delivered copies are durable. A crash in between delivers a message
//! again from the same schedule record, which the delivered copy's producer id and
//! sequence (the schedule record's log offset) make a duplicate the store recognises.
//! Within a level every message has the same delay, so each queue is in time order and
//! only its head needs looking at.
//!
//! Runs on masters only; a slave receives the records and the progress through
//! replication and starts delivering when promoted.

use crate::broker::timer;
use crate::context::Broker;
use keel_protocol::names::{TIMER_FIRST_QUEUE, TIMER_LEVELS};
use keel_protocol::now_ms;
use keel_protocol::{Message, Record, SCHEDULE_TOPIC};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::broker::timer::SCHEDULER_GROUP;
/// Producer id of the copies delivered from level 0 (level n: + n); their sequence is
/// the schedule record's log offset + 1, increasing within a level.
const SCHEDULER_PRODUCER_ID: u64 = 0x5C4E_D01E_D0D0_0000;

pub use keel_protocol::names::property;

/// The message a due schedule record becomes: its real topic, scheduling properties
/// dropped, numbered so that delivering it twice stores it once, sealed anew.
fn delivered(record: &Record, real_topic: &str, level: u32) -> Message {
    let mut message = record.to_message();
    message.topic = real_topic.to_string();
    message
        .properties
        .retain(|(key, _)| key != property::DELIVER_AT && key != property::REAL_TOPIC);
    message.producer_id = SCHEDULER_PRODUCER_ID + u64::from(level);
    message.sequence = record.log_offset + 1;
    message.sealed()
}

/// Starts the delivery thread; it ends when the broker shuts down.
pub fn start(broker: Arc<Broker>) {
    let spawned = std::thread::Builder::new()
        .name("keel-schedule".into())
        .spawn(move || run(&broker));
    if let Err(error) = spawned {
        log::error!("cannot start the delayed-delivery thread: {error}");
    }
}

fn run(broker: &Broker) {
    let store = &broker.store;
    let levels = broker.config.retry_delays_ms.len() as u32;
    // When the head of each timer level leaves (0: unknown). Memory only, and only a
    // hint: it is learnt again by reading the level.
    let mut hints = vec![0u64; TIMER_LEVELS as usize];
    while !broker.is_shutting_down() {
        if !broker.role().is_master() || broker.fenced().is_some() {
            hints.fill(0);
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let Some(queues) = store.topic_queues(SCHEDULE_TOPIC) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let mut delivered_any = false;
        // Each queue's end, in one look: a queue with nothing past its progress is not
        // read (most are empty).
        let ends: Vec<u64> = store
            .queue_offsets(Some(SCHEDULE_TOPIC))
            .into_iter()
            .next()
            .map(|(_, queues)| queues.into_iter().map(|(_, end)| end).collect())
            .unwrap_or_default();
        let idle = |queue: u32| {
            let end = ends.get(queue as usize).copied().unwrap_or(0);
            end == 0 || store.query_offset(SCHEDULER_GROUP, SCHEDULE_TOPIC, queue) >= Some(end)
        };
        // The fixed retry levels of brokers before the timer: drained, never refilled.
        for level in 0..levels.min(queues).min(TIMER_FIRST_QUEUE) {
            if idle(level) {
                continue;
            }
            match deliver_level(broker, level) {
                Ok(count) => delivered_any |= count > 0,
                Err(error) => {
                    log::warn!("delayed delivery, level {level}: {error}");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        let now = now_ms();
        let mut progress = Vec::new();
        for level in 0..TIMER_LEVELS.min(queues.saturating_sub(TIMER_FIRST_QUEUE)) {
            let hint = hints.get_mut(level as usize);
            // The head of this level leaves later: nothing to read before then.
            if hint.as_ref().is_some_and(|leaves| now < **leaves) || idle(TIMER_FIRST_QUEUE + level)
            {
                continue;
            }
            match timer::run_level(broker, level) {
                Ok(round) => {
                    delivered_any |= round.handled > 0;
                    if let Some(hint) = hint {
                        *hint = round.head_leaves.unwrap_or(0);
                    }
                    progress.extend(round.progress);
                }
                Err(error) => {
                    log::warn!("timer level {level}: {error}");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        if let Err(error) = timer::settle(broker, &progress) {
            // Nothing recorded: the next round does these records again, and the store
            // recognises what they made.
            log::warn!("timer: {error}");
            hints.fill(0);
            std::thread::sleep(Duration::from_millis(500));
        }
        if !delivered_any {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Delivers the due messages at the head of one level; returns how many.
fn deliver_level(broker: &Broker, level: u32) -> Result<usize, DeliveryError> {
    let store = &broker.store;
    let committed = store.query_offset(SCHEDULER_GROUP, SCHEDULE_TOPIC, level);
    let read = store
        .read_queue(SCHEDULE_TOPIC, level, committed.unwrap_or(0), 64, 1 << 20)
        .map_err(DeliveryError::Read)?;
    let mut next = match read.status {
        keel_storage::ReadStatus::Found => committed.unwrap_or(0),
        keel_storage::ReadStatus::OffsetExpired => read.min_offset,
        _ => return Ok(0),
    };
    if read.status == keel_storage::ReadStatus::OffsetExpired {
        log::error!("delayed messages of level {level} were deleted by retention before delivery");
        commit(broker, level, next)?;
        return Ok(0);
    }
    let now = now_ms();
    let mut position = 0usize;
    let mut last_end = 0u64;
    let mut count = 0usize;
    while position < read.records.len() {
        let record = keel_protocol::decode_record(read.records.get(position..).unwrap_or_default())
            .map_err(DeliveryError::Undecodable)?;
        position += record.total_size as usize;
        let due = record
            .property(property::DELIVER_AT)
            .and_then(|at| at.parse::<u64>().ok())
            .unwrap_or(0);
        if due > now {
            break;
        }
        let Some(real_topic) = record.property(property::REAL_TOPIC) else {
            log::error!(
                "schedule record {} has no {} property; skipped",
                record.message_id(),
                property::REAL_TOPIC
            );
            next = record.queue_offset + 1;
            continue;
        };
        let appended = store
            .append(&delivered(&record, real_topic, level), true, now)
            .map_err(DeliveryError::Store)?;
        last_end = last_end.max(appended.offset_end);
        next = record.queue_offset + 1;
        count += 1;
    }
    if count == 0 && committed == Some(next) {
        return Ok(0);
    }
    // Progress moves only once what was delivered is durable.
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.offset_durable() < last_end {
        if store.is_poisoned() || Instant::now() > deadline {
            return Err(DeliveryError::NotDurable);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    commit(broker, level, next)?;
    Ok(count)
}

fn commit(broker: &Broker, level: u32, next: u64) -> Result<(), DeliveryError> {
    broker
        .store
        .commit_offset(SCHEDULER_GROUP, SCHEDULE_TOPIC, level, next)
        .map(|_| ())
        .map_err(DeliveryError::Commit)
}

/// Why a level's due messages were not delivered this time (it is tried again).
#[derive(Debug)]
enum DeliveryError {
    Read(keel_storage::StoreError),
    Undecodable(keel_protocol::DecodeError),
    Store(keel_storage::AppendError),
    NotDurable,
    Commit(keel_storage::StoreError),
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryError::Read(error) => write!(f, "read the schedule: {error}"),
            DeliveryError::Undecodable(error) => {
                write!(f, "a schedule record does not decode: {error}")
            }
            DeliveryError::Store(error) => write!(f, "store the due message: {error}"),
            DeliveryError::NotDurable => {
                f.write_str("the delivered messages did not become durable")
            }
            DeliveryError::Commit(error) => write!(f, "record delivery progress: {error}"),
        }
    }
}

/// When a message sent back `reconsume_times` times (1 = first failure) is due, and
/// on which level; `None` when it has no delay (redrive).
pub fn delay_for(delays_ms: &[u64], reconsume_times: u32) -> Option<(u32, u64)> {
    let level = reconsume_times.checked_sub(1)?;
    let level = level.min(delays_ms.len().saturating_sub(1) as u32);
    Some((
        level,
        now_ms() + delays_ms.get(level as usize).copied().unwrap_or(0),
    ))
}
