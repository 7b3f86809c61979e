//! Delivery at any time: a hierarchical timer made of CommitLog records.
//!
//! A message due later waits in one of `TIMER_LEVELS` queues of `%SCHEDULE%` (from
//! queue `TIMER_FIRST_QUEUE`). Level `k` holds every record for the same time,
//! `timer_hold_ms(k)` (100 ms << k), so each level is in time order and only its head
//! is ever looked at. A record goes to the highest level whose hold fits in the time
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
//!   record's log offset + 1 as sequence, so the store takes them for the duplicates
//!   they are.
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

/// Records handled per level per round: far fewer than the 1,024 sequences per producer
/// the store remembers, so a redone round is always recognised.
const BATCH: u32 = 64;

/// The group under which delivery progress is committed (the timer's levels and the
/// fixed retry levels).
pub const SCHEDULER_GROUP: &str = "%SCHEDULER%";

/// Where a record with `due` waits when placed at `now`: its level and when it leaves
/// it. `None` when it is due already. `top` is the highest level allowed.
fn place(due: u64, now: u64, top: u32) -> Option<(u32, u64)> {
    let left = due.checked_sub(now).filter(|left| *left > 0)?;
    if left < TIMER_TICK_MS {
        return Some((0, due));
    }
    let ticks = left / TIMER_TICK_MS;
    let level = (63 - ticks.leading_zeros()).min(top);
    Some((level, now.saturating_add(timer_hold_ms(level))))
}

/// Where a record due at `due` waits, placed as of `anchor`: `place`, or level 0 until
/// `due` when it is due by then (it leaves at the next round). A function of the
/// record alone, never of the clock: a SEND retried, or a level's round redone after a
/// crash, makes the very same record, which the store recognises as the one it has.
pub fn place_at(due: u64, anchor: u64, top: u32) -> (u32, u64) {
    place(due, anchor, top).unwrap_or((0, due))
}

/// The anchor of a message a producer sends with a delivery time: its born time (the
/// same in every retry), or just before `due` when the producer's clock is ahead.
pub fn anchor_of(message: &Message, due: u64) -> u64 {
    message.born_timestamp_ms.min(due.saturating_sub(1))
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

/// `message` as it waits in the timer: in `%SCHEDULE%` at its level, with where it goes
/// and when it leaves the level, sealed anew. Its producer id and sequence stay, so a
/// producer's retry of the SEND is recognised.
pub fn waiting(mut message: Message, due: u64, level: u32, leaves_at: u64) -> Message {
    let real_topic = std::mem::replace(&mut message.topic, SCHEDULE_TOPIC.to_string());
    let real_queue = std::mem::replace(&mut message.queue_id, TIMER_FIRST_QUEUE + level);
    let mut set = |name: &str, value: String| {
        message.properties.retain(|(key, _)| key != name);
        message.properties.push((name.to_string(), value));
    };
    set(property::DELIVER_AT, due.to_string());
    set(property::REAL_TOPIC, real_topic);
    if real_queue != QUEUE_ID_ANY {
        set(property::REAL_QUEUE, real_queue.to_string());
    }
    set(property::TIMER_AT, leaves_at.to_string());
    message.seal();
    message
}

/// What a record leaving timer level `level` (at `left`, handled at `now`) becomes: the
/// message in its topic when due, else a copy at a lower level placed as of `left`.
/// Numbered so that making it twice stores it once, and sealed anew.
fn next_of(
    record: &Record,
    level: u32,
    (left, now): (u64, u64),
    top: u32,
) -> Result<Message, String> {
    let due = number(record, property::DELIVER_AT)?;
    let mut message = record.to_message();
    message.producer_id = TIMER_PRODUCER_ID + u64::from(level);
    message.sequence = record.log_offset + 1;
    if message.property(property::ORIGIN_MSG_ID).is_none() {
        // The id the producer was given: `keel message show` finds every copy by it.
        let origin = (property::ORIGIN_MSG_ID.to_string(), record.message_id());
        message.properties.push(origin);
    }
    match (due > now).then(|| place_at(due, left, top)) {
        Some((next, leaves_at)) => {
            let queue = message.property(property::REAL_QUEUE).map(str::to_string);
            let mut copy = message;
            copy.topic = record
                .property(property::REAL_TOPIC)
                .ok_or("no KEEL_REAL_TOPIC")?
                .to_string();
            copy.queue_id = match queue {
                Some(queue) => queue.parse().map_err(|_| "a bad KEEL_REAL_QUEUE")?,
                None => QUEUE_ID_ANY,
            };
            Ok(waiting(copy, due, next, leaves_at))
        }
        None => {
            message.topic = record
                .property(property::REAL_TOPIC)
                .ok_or("no KEEL_REAL_TOPIC")?
                .to_string();
            message.queue_id = match message.property(property::REAL_QUEUE) {
                Some(queue) => queue.parse().map_err(|_| "a bad KEEL_REAL_QUEUE")?,
                None => QUEUE_ID_ANY,
            };
            message.properties.retain(|(key, _)| {
                key != property::REAL_TOPIC
                    && key != property::REAL_QUEUE
                    && key != property::TIMER_AT
            });
            Ok(message.sealed())
        }
    }
}

fn number(record: &Record, name: &str) -> Result<u64, String> {
    record
        .property(name)
        .ok_or_else(|| format!("no {name}"))?
        .parse()
        .map_err(|_| format!("a bad {name}"))
}

/// When a record leaves its level: its `KEEL_TIMER_AT`, or for a record of the fixed
/// retry levels (no such property) its due time.
fn leaves_at(record: &Record) -> Result<u64, String> {
    number(record, property::TIMER_AT).or_else(|_| number(record, property::DELIVER_AT))
}

/// Handles the records at the head of timer level `level` whose time has come;
/// returns how many.
pub fn run_level(broker: &Broker, level: u32) -> Result<usize, String> {
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
            return commit(broker, queue, read.min_offset).map(|()| 0);
        }
        _ => return Ok(0),
    }
    let now = now_ms();
    let top = top_level(broker.config.retention_hours.saturating_mul(3_600_000));
    let mut rest = &read.records[..];
    let mut last_end = 0u64;
    let mut count = 0usize;
    while !rest.is_empty() {
        let record = keel_protocol::decode_record(rest)
            .map_err(|error| format!("a timer record does not decode: {error}"))?;
        rest = rest.get(record.total_size as usize..).unwrap_or_default();
        let leaves = match leaves_at(&record) {
            Ok(at) => at,
            Err(why) => {
                log::error!("timer record {} skipped: {why}", record.message_id());
                next = record.queue_offset + 1;
                continue;
            }
        };
        if leaves > now {
            break;
        }
        let message = match next_of(&record, level, (leaves, now), top) {
            Ok(message) => message,
            Err(why) => {
                log::error!("timer record {} skipped: {why}", record.message_id());
                next = record.queue_offset + 1;
                continue;
            }
        };
        let delivered = message.topic != SCHEDULE_TOPIC;
        let appended = match store.append(&message, true, now) {
            Ok(appended) => appended,
            // This record's one output is stored already, made by a run before a crash
            // or a failover that handled it later, or earlier: it was handled.
            Err(keel_storage::AppendError::SequenceMismatch { .. }) => {
                next = record.queue_offset + 1;
                count += 1;
                continue;
            }
            Err(error) => return Err(format!("store {}: {error}", message.topic)),
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
    if count == 0 && committed == Some(next) {
        return Ok(0);
    }
    // Progress moves only once what was made from it is durable by this broker's
    // standard (on a sync master: on a slave too), so that no failover can find the
    // progress without the records it counts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.offset_durable() < last_end {
        if store.is_poisoned() || Instant::now() > deadline {
            return Err("what the timer stored did not become durable".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    commit(broker, queue, next)?;
    Ok(count)
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
    fn a_record_goes_to_the_highest_level_that_fits_and_never_leaves_it_late_or_early() {
        let now = 1_000_000;
        assert_eq!(place(now, now, 24), None, "due now");
        assert_eq!(place(now - 5, now, 24), None, "in the past");
        assert_eq!(place(now + 40, now, 24), Some((0, now + 40)));
        assert_eq!(place(now + 100, now, 24), Some((0, now + 100)));
        assert_eq!(place(now + 250, now, 24), Some((1, now + 200)));
        assert_eq!(place(now + 3_600_000, now, 24), Some((15, now + 3_276_800)));
        // Capped by retention: the same level again, later.
        assert_eq!(place(now + 3_600_000, now, 10), Some((10, now + 102_400)));
        // Every delay from 1 ms to a week reaches its time in few steps, never before.
        for delay in (1..200).chain((1..=7 * 24).map(|hours| hours * 3_600_000 + 17)) {
            let due = now + delay;
            let (mut at, mut steps) = (now, 0);
            while let Some((level, leaves)) = place(due, at, 24) {
                assert!(leaves <= due && leaves > at, "{delay}: level {level}");
                at = leaves;
                steps += 1;
            }
            assert_eq!(at, due, "{delay}");
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
        let waiting = waiting(message.sealed(), 5_000, 2, 1_400);
        assert_eq!(waiting.topic, SCHEDULE_TOPIC);
        assert_eq!(waiting.queue_id, TIMER_FIRST_QUEUE + 2);
        assert_eq!((waiting.producer_id, waiting.sequence), (9, 4));
        assert_eq!(waiting.property(property::REAL_TOPIC), Some("orders"));
        assert_eq!(waiting.property(property::REAL_QUEUE), Some("3"));
        assert_eq!(waiting.property(property::DELIVER_AT), Some("5000"));
        assert_eq!(waiting.property(property::TIMER_AT), Some("1400"));
        assert!(waiting.crc_matches());
    }
}
