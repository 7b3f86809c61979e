//! Delivery at any time: a hierarchical timer made of CommitLog records.
//!
//! A message due later waits in one of `TIMER_LEVELS` queues of `%SCHEDULE%` (from
//! queue `TIMER_FIRST_QUEUE`). Level `k` holds every record for the same time after its
//! store, `timer_hold_ms(k)` (100 ms << k), so each level is in time order and only its
//! head is ever looked at. A record goes to the highest level whose hold fits in the time
//! left; when it leaves the level, it is stored in its topic if due by then, or copied
//! to the level that fits what is left. A delay of `d` is copied at most once per set
//! bit of `d / 100 ms` (at most 25 times, 5 or 6 for an hour); a record left with under
//! 100 ms waits in level 0 until exactly its time.
//!
//! - **Never early**: a message is stored in its topic only once the broker's clock
//!   has passed its `KEEL_DELIVER_AT`.
//! - **Never lost**: pending timers are ordinary records. How far each level was
//!   handled is a committed offset (group `%SCHEDULER%`), moved only after what it
//!   produced is durable, and replicated like every offset.
//! - **Never twice**: a crash between the copy and the commit handles the same records
//!   again. Their copies carry producer id `TIMER_PRODUCER_ID + level` and the source
//!   record's log offset + 1 as sequence, and nothing in them depends on the clock (the
//!   level is the queue, outside `message_crc`), so the store takes them for the
//!   duplicates they are.
//! - **Retention never deletes a pending timer**: no level holds a record longer than a
//!   quarter of `retention_hours`. A longer wait is copied forward within the same
//!   level, so every pending timer lives in a segment younger than the retention.
//!   `retention_bytes` deletes by size and can delete one; that is logged and counted.

use crate::context::Broker;
use keel_protocol::names::{
    property, timer_hold_ms, TIMER_FIRST_QUEUE, TIMER_LEVELS, TIMER_TICK_MS,
};
use keel_protocol::{now_ms, Message, Record, QUEUE_ID_ANY, SCHEDULE_TOPIC};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Producer id of the copies made from timer level 0 (level k: + k), above the fixed
/// retry levels' ids.
pub const TIMER_PRODUCER_ID: u64 = 0x5C4E_D01E_D0D0_0000 + 64;
/// Whether a record is one of the timer's own copies (a message moving between levels,
/// or delivered by the timer), by its producer id.
pub fn is_timer_copy(producer_id: u64) -> bool {
    (TIMER_PRODUCER_ID..TIMER_PRODUCER_ID + u64::from(TIMER_LEVELS)).contains(&producer_id)
}

/// What a copy may add to the record it is made of: `KEEL_ORIGIN_MSG_ID` and its value
/// (16 hex digits), with their lengths. A delayed SEND keeps this room.
pub const COPY_GROWTH_BYTES: usize = 2 + 18 + 2 + 16;

/// Records handled per level per round: fewer than the 1,024 sequences per producer the
/// store remembers, so a redone round is recognised as such.
const BATCH: u32 = 256;

/// The group under which delivery progress is committed (the timer's levels and the
/// fixed retry levels).
pub const SCHEDULER_GROUP: &str = "%SCHEDULER%";

/// The level a record due at `due` waits in when stored at `now`: the highest whose
/// hold fits in the time left (level 0 when under 100 ms are left, or none). `top` is the
/// highest level allowed.
pub fn level_for(due: u64, now: u64, top: u32) -> u32 {
    let ticks = due.saturating_sub(now) / TIMER_TICK_MS;
    match ticks {
        0 => 0,
        ticks => (63 - ticks.leading_zeros()).min(top),
    }
}

/// When a record stored at `stored` in `level` leaves it: after the level's hold, or at
/// `due` if that is sooner (under 100 ms left, or due already). A function of the stored
/// record alone: where a message waits never depends on when it is looked at, and every
/// record of a level but the sub-100 ms ones leaves in the order it was stored.
pub fn leaves_at(due: u64, stored: u64, level: u32) -> u64 {
    stored.saturating_add(timer_hold_ms(level)).min(due)
}

/// The highest level: its hold fits in a quarter of the retention, so a pending timer
/// is always copied forward before retention could delete it.
pub fn top_level(retention_ms: u64) -> u32 {
    let mut level = TIMER_LEVELS - 1;
    while retention_ms > 0 && level > 0 && timer_hold_ms(level) > retention_ms / 4 {
        level -= 1;
    }
    level
}

/// `message` as it waits in the timer: in `%SCHEDULE%` at its level, with where it goes,
/// sealed anew. Its producer id and sequence stay, and nothing in it depends on the
/// clock (the level is its queue, which `message_crc` leaves out), so a producer's retry
/// of the SEND makes the same message and is recognised.
pub fn waiting(mut message: Message, due: u64, level: u32) -> Message {
    let real_topic = std::mem::replace(&mut message.topic, SCHEDULE_TOPIC.to_string());
    let real_queue = std::mem::replace(&mut message.queue_id, TIMER_FIRST_QUEUE + level);
    message
        .properties
        .retain(|(key, _)| key != property::REAL_QUEUE);
    let mut set = |name: &str, value: String| {
        message.properties.retain(|(key, _)| key != name);
        message.properties.push((name.to_string(), value));
    };
    set(property::DELIVER_AT, due.to_string());
    set(property::REAL_TOPIC, real_topic);
    if real_queue != QUEUE_ID_ANY {
        set(property::REAL_QUEUE, real_queue.to_string());
    }
    message.seal();
    message
}

/// What a record leaving timer level `level` at `now` becomes: the message in its topic
/// when due, else a copy in the level that fits what is left. Numbered so that making
/// it twice stores it once, and sealed anew.
fn next_of(record: &Record, level: u32, now: u64, top: u32) -> Result<Message, String> {
    let due = number(record, property::DELIVER_AT)?;
    let mut message = record.to_message();
    message.producer_id = TIMER_PRODUCER_ID + u64::from(level);
    message.sequence = record.log_offset + 1;
    if message.property(property::ORIGIN_MSG_ID).is_none() {
        // The id the producer was given: `keel message show` finds every copy by it.
        let origin = (property::ORIGIN_MSG_ID.to_string(), record.message_id());
        message.properties.push(origin);
    }
    message.topic = record
        .property(property::REAL_TOPIC)
        .ok_or("no KEEL_REAL_TOPIC")?
        .to_string();
    message.queue_id = match message.property(property::REAL_QUEUE) {
        Some(queue) => queue.parse().map_err(|_| "a bad KEEL_REAL_QUEUE")?,
        None => QUEUE_ID_ANY,
    };
    if due > now {
        return Ok(waiting(message, due, level_for(due, now, top)));
    }
    message
        .properties
        .retain(|(key, _)| key != property::REAL_TOPIC && key != property::REAL_QUEUE);
    Ok(message.sealed())
}

/// What became of a record's one output.
enum Output {
    Stored(keel_storage::AppendResult),
    /// Stored already, by a run before a crash or a failover.
    Handled(String),
    /// It can never be stored: its topic is gone (or invalid), or it is too large.
    Dropped(String),
    /// Not now (the disk, a shutdown): the level is tried again.
    Again(String),
}

/// Stores a record's output. The timer's producer ids are its own (clients are refused
/// them) and each level makes its copies in the order of their sequences, so a copy
/// whose sequence is stored with another message, or is below the remembered window,
/// was made by an earlier run: handled. A delivery whose queue is gone (its topic was
/// deleted and made again with fewer) goes to any queue of the topic.
fn store_output(broker: &Broker, mut message: Message, delivered: bool, now: u64) -> Output {
    use keel_storage::AppendError;
    let auto_create = !delivered || broker.config.auto_create_topics;
    let mut outcome = broker.store.append(&message, auto_create, now);
    if let Err(AppendError::InvalidQueueId { .. }) = outcome {
        message.queue_id = QUEUE_ID_ANY;
        outcome = broker.store.append(&message, auto_create, now);
    }
    match outcome {
        Ok(appended) => Output::Stored(appended),
        Err(
            error @ (AppendError::SequenceMismatch { .. } | AppendError::SequenceTooOld { .. }),
        ) => Output::Handled(format!("made by an earlier run ({error})")),
        Err(
            error @ (AppendError::TopicNotFound(_)
            | AppendError::InvalidTopic(_)
            | AppendError::RecordTooLarge { .. }),
        ) => Output::Dropped(format!("{}: {error}", message.topic)),
        Err(error) => Output::Again(format!("store {}: {error}", message.topic)),
    }
}

fn number(record: &Record, name: &str) -> Result<u64, String> {
    record
        .property(name)
        .ok_or_else(|| format!("no {name}"))?
        .parse()
        .map_err(|_| format!("a bad {name}"))
}

/// What one round of a level did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Records handled.
    pub handled: usize,
    /// When the record now at the head leaves, if one is waiting: nothing can happen in
    /// the level before (the level is in time order), so it need not be read until then.
    pub head_leaves: Option<u64>,
    /// The progress to record once what the round stored is durable (`settle`).
    pub progress: Option<Progress>,
}

/// A level's progress, to be recorded once the log is durable up to `durable_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    queue: u32,
    next: u64,
    durable_at: u64,
}

/// Records the progress of a round of levels once everything they stored is durable by
/// this broker's standard (on a sync master: on a slave too), so that no failover can
/// find the progress without the records it counts. One wait for all the levels of a
/// round, not one per level.
pub fn settle(broker: &Broker, progress: &[Progress]) -> Result<(), String> {
    let store = &broker.store;
    let durable_at = progress.iter().map(|p| p.durable_at).max().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.offset_durable() < durable_at {
        if store.is_poisoned() || Instant::now() > deadline {
            return Err("what the timer stored did not become durable".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    progress
        .iter()
        .try_for_each(|p| commit(broker, p.queue, p.next))
}

/// Handles the records at the head of timer level `level` whose time has come.
pub fn run_level(broker: &Broker, level: u32) -> Result<Round, String> {
    let store = &broker.store;
    let queue = TIMER_FIRST_QUEUE + level;
    let committed = store.query_offset(SCHEDULER_GROUP, SCHEDULE_TOPIC, queue);
    let read = store
        .read_queue(
            SCHEDULE_TOPIC,
            queue,
            committed.unwrap_or(0),
            BATCH,
            1 << 20,
        )
        .map_err(|error| format!("read the timer: {error}"))?;
    let mut next = committed.unwrap_or(0);
    match read.status {
        keel_storage::ReadStatus::Found => {}
        keel_storage::ReadStatus::OffsetExpired => {
            let lost = read.min_offset.saturating_sub(next);
            log::error!(
                "{lost} pending timer(s) of level {level} were deleted by retention \
                 (retention_bytes) before their time"
            );
            broker
                .timers
                .lost_to_retention
                .fetch_add(lost, Ordering::Relaxed);
            return commit(broker, queue, read.min_offset).map(|()| Round::default());
        }
        _ => return Ok(Round::default()),
    }
    let now = now_ms();
    let top = top_level(broker.config.retention_hours.saturating_mul(3_600_000));
    let mut rest = &read.records[..];
    let mut last_end = 0u64;
    let mut count = 0usize;
    let mut head_leaves = None;
    while !rest.is_empty() {
        let record = keel_protocol::decode_record(rest)
            .map_err(|error| format!("a timer record does not decode: {error}"))?;
        rest = rest.get(record.total_size as usize..).unwrap_or_default();
        let leaves = match number(&record, property::DELIVER_AT) {
            Ok(due) => leaves_at(due, record.store_timestamp_ms, level),
            Err(why) => {
                log::error!("timer record {} skipped: {why}", record.message_id());
                next = record.queue_offset + 1;
                continue;
            }
        };
        if leaves > now {
            head_leaves = Some(leaves);
            break;
        }
        let message = match next_of(&record, level, now, top) {
            Ok(message) => message,
            Err(why) => {
                log::error!("timer record {} skipped: {why}", record.message_id());
                next = record.queue_offset + 1;
                continue;
            }
        };
        let delivered = message.topic != SCHEDULE_TOPIC;
        let appended = match store_output(broker, message, delivered, now) {
            Output::Stored(appended) => appended,
            Output::Handled(why) => {
                log::debug!("timer record {}: {why}", record.message_id());
                next = record.queue_offset + 1;
                count += 1;
                continue;
            }
            Output::Dropped(why) => {
                log::error!("timer record {} dropped: {why}", record.message_id());
                broker.timers.dropped.fetch_add(1, Ordering::Relaxed);
                next = record.queue_offset + 1;
                count += 1;
                continue;
            }
            Output::Again(why) => return Err(why),
        };
        if delivered && !appended.duplicate {
            let due = number(&record, property::DELIVER_AT).unwrap_or(now);
            // A time already past when it was sent is no lateness of the timer.
            if due >= record.born_timestamp_ms.min(record.store_timestamp_ms) {
                let late = Duration::from_millis(now.saturating_sub(due));
                broker.timers.lateness.observe_duration(late);
            }
            broker.timers.delivered.fetch_add(1, Ordering::Relaxed);
        }
        last_end = last_end.max(appended.offset_end);
        next = record.queue_offset + 1;
        count += 1;
    }
    let progress = (count > 0 || committed != Some(next)).then_some(Progress {
        queue,
        next,
        durable_at: last_end,
    });
    Ok(Round {
        handled: count,
        head_leaves,
        progress,
    })
}

fn commit(broker: &Broker, queue: u32, next: u64) -> Result<(), String> {
    broker
        .store
        .commit_offset(SCHEDULER_GROUP, SCHEDULE_TOPIC, queue, next)
        .map(|_| ())
        .map_err(|error| format!("record timer progress: {error}"))
}

/// Timers waiting in each level: (the level's hold in ms, records not handled yet).
pub fn pending(broker: &Broker) -> Vec<(u64, u64)> {
    let store = &broker.store;
    let ends: Vec<u64> = store
        .queue_offsets(Some(SCHEDULE_TOPIC))
        .into_iter()
        .next()
        .map(|(_, queues)| queues.into_iter().map(|(_, max)| max).collect())
        .unwrap_or_default();
    (0..TIMER_LEVELS)
        .map(|level| {
            let queue = TIMER_FIRST_QUEUE + level;
            let end = ends.get(queue as usize).copied().unwrap_or(0);
            let done = store
                .query_offset(SCHEDULER_GROUP, SCHEDULE_TOPIC, queue)
                .unwrap_or(0);
            (timer_hold_ms(level), end.saturating_sub(done))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_goes_to_the_highest_level_that_fits_and_never_leaves_it_early() {
        let now = 1_000_000;
        assert_eq!(level_for(now, now, 24), 0, "due now");
        assert_eq!(level_for(now - 5, now, 24), 0, "in the past");
        assert_eq!(leaves_at(now - 5, now, 0), now - 5, "leaves at once");
        assert_eq!(level_for(now + 40, now, 24), 0);
        assert_eq!(leaves_at(now + 40, now, 0), now + 40, "exactly at its time");
        assert_eq!(level_for(now + 250, now, 24), 1);
        assert_eq!(leaves_at(now + 250, now, 1), now + 200);
        assert_eq!(level_for(now + 3_600_000, now, 24), 15);
        assert_eq!(leaves_at(now + 3_600_000, now, 15), now + 3_276_800);
        // Capped by retention: the same level again, later.
        assert_eq!(level_for(now + 3_600_000, now, 10), 10);
        // Every delay from 1 ms to a week reaches its time in few steps, never before,
        // with each step handled up to 30 ms late.
        for delay in (1..200).chain((1..=7 * 24).map(|hours| hours * 3_600_000 + 17)) {
            let due = now + delay;
            let (mut stored, mut steps) = (now, 0);
            loop {
                let level = level_for(due, stored, 24);
                let leaves = leaves_at(due, stored, level);
                assert!(
                    leaves <= due,
                    "{delay}: level {level} leaves after its time"
                );
                let handled = leaves + 30;
                if handled >= due {
                    break;
                }
                stored = handled;
                steps += 1;
            }
            assert!(steps <= 25, "{delay}: {steps} steps");
        }
    }

    #[test]
    fn the_top_level_holds_at_most_a_quarter_of_the_retention() {
        assert_eq!(top_level(0), TIMER_LEVELS - 1);
        let retention = 72 * 3_600_000;
        let top = top_level(retention);
        assert!(timer_hold_ms(top) <= retention / 4);
        assert!(timer_hold_ms(top + 1) > retention / 4);
        assert_eq!(top_level(1), 0);
    }

    #[test]
    fn a_waiting_message_keeps_its_numbers_and_says_where_it_goes() {
        let mut message = Message::new("orders", "x");
        message.queue_id = 3;
        message.producer_id = 9;
        message.sequence = 4;
        let waiting = waiting(message.sealed(), 5_000, 2);
        assert_eq!(waiting.topic, SCHEDULE_TOPIC);
        assert_eq!(waiting.queue_id, TIMER_FIRST_QUEUE + 2);
        assert_eq!((waiting.producer_id, waiting.sequence), (9, 4));
        assert_eq!(waiting.property(property::REAL_TOPIC), Some("orders"));
        assert_eq!(waiting.property(property::REAL_QUEUE), Some("3"));
        assert_eq!(waiting.property(property::DELIVER_AT), Some("5000"));
        assert!(waiting.crc_matches());
        // Placed in another level (a retry arriving later): the same message.
        let mut original = Message::new("orders", "x");
        original.queue_id = 3;
        original.producer_id = 9;
        original.sequence = 4;
        let elsewhere = super::waiting(original.sealed(), 5_000, 7);
        assert_eq!(elsewhere.message_crc, waiting.message_crc);
        assert_eq!(elsewhere.queue_id, TIMER_FIRST_QUEUE + 7);
    }
}
