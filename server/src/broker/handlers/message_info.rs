//! MESSAGE_INFO: everything the broker knows of one message. By id it reads the record
//! where the id says (the id is its log offset) and the broker's copy topics (retries,
//! dead letters); by key it scans the log. Either reads the disk, so it runs on the
//! slow requests' threads (`workers.rs`), a few at a time.

use crate::broker::connection::ReplyTo;
use crate::broker::shard::Shard;
use crate::broker::workers::Pool;
use crate::context::{Broker, Ha};
use crate::error::Refusal;
use keel_protocol::names::{property, HALF_OP_TOPIC, HALF_TOPIC};
use keel_protocol::{message_id, own_topic, OwnTopic, Record, Response};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Message lookups running (each reads the whole log).
static LOOKUPS: AtomicUsize = AtomicUsize::new(0);
const LOOKUPS_MAX: usize = 2;

/// One of the `LOOKUPS_MAX` lookups that may run at once, given back when dropped (a
/// lookup that panics included).
struct LookupPermit;

impl LookupPermit {
    fn take() -> Result<LookupPermit, Refusal> {
        if LOOKUPS.fetch_add(1, Ordering::AcqRel) >= LOOKUPS_MAX {
            LOOKUPS.fetch_sub(1, Ordering::AcqRel);
            let detail = format!("{LOOKUPS_MAX} message lookups are running; try again shortly");
            return Err(Refusal::internal(detail));
        }
        Ok(LookupPermit)
    }
}

impl Drop for LookupPermit {
    fn drop(&mut self) {
        LOOKUPS.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) fn on_message_info(shard: &mut Shard, to: ReplyTo, msg_id: u64, key: String) {
    let permit = match LookupPermit::take() {
        Ok(permit) => permit,
        Err(refusal) => return shard.reply(to, refusal.response()),
    };
    let offloaded = shard.offload(to, Pool::Slow, "a message lookup", move |broker| {
        let _permit = permit;
        match message_info(broker, msg_id, &key) {
            Ok(info) => Response::Info(info),
            Err(refusal) => refusal.response(),
        }
    });
    if let Err(refused) = offloaded {
        shard.reply(to, refused);
    }
}

type Info = Vec<(String, String)>;

/// `message_info` for the console (on the HTTP thread), within the same limit of
/// lookups at once.
pub(crate) fn lookup(broker: &Broker, msg_id: u64, key: &str) -> Result<Info, Refusal> {
    let _permit = LookupPermit::take()?;
    message_info(broker, msg_id, key)
}

fn internal(error: keel_storage::StoreError) -> Refusal {
    Refusal::internal(error.to_string())
}

/// Everything the broker knows of one message (by id, or the newest with `key`): where
/// it is stored, how durable, which groups consumed and committed it, its retries and
/// whether it was dead-lettered.
fn message_info(broker: &Broker, msg_id: u64, key: &str) -> Result<Info, Refusal> {
    let record = find(broker, msg_id, key)?;
    let mut info = placement(broker, &record);
    group_states(broker, &record, &mut info);
    copies(broker, &record, &mut info)?;
    delivery(broker, &record, &mut info)?;
    transaction(broker, &record, &mut info)?;
    Ok(info)
}

/// For a message that waited in the timer for a topic of its producer's: when it was
/// due, and whether (and as what, when) it was delivered. The delivered message is
/// looked for from its due time on in the queues of its topic: a few reads, not a scan.
fn delivery(broker: &Broker, record: &Record, info: &mut Info) -> Result<(), Refusal> {
    let (Some(topic), Some(due)) = (
        record.property(property::REAL_TOPIC),
        record.property(property::DELIVER_AT),
    ) else {
        return Ok(());
    };
    let Ok(due) = due.parse::<u64>() else {
        return Ok(());
    };
    if own_topic(topic).is_some() || crate::broker::timer::is_timer_copy(record.producer_id) {
        return Ok(()); // A retry (shown by `copies`), or one of the timer's own copies.
    }
    let id = record.message_id();
    if let Some(copy) = stored_from(broker, topic, due, property::ORIGIN_MSG_ID, &id)? {
        let late = copy.store_timestamp_ms.saturating_sub(due);
        let what = format!(
            "to {topic} as {} at {} ms ({late} ms after it was due at {due} ms)",
            copy.message_id(),
            copy.store_timestamp_ms
        );
        info.push(("delivered".into(), what));
        return Ok(());
    }
    let now = keel_protocol::now_ms();
    let state = match due > now {
        true => format!("not yet: due at {due} ms, in {} ms", due - now),
        false => format!(
            "due at {due} ms; not among the first 4096 records of each queue of {topic} \
             stored from then on (not delivered yet, or later than that)"
        ),
    };
    info.push(("delivered".into(), state));
    Ok(())
}

/// The first record of `topic` stored from `from_ms` on whose property `name` is
/// `value`: the first 4096 records of each queue from then, a few reads, not a scan.
fn stored_from(
    broker: &Broker,
    topic: &str,
    from_ms: u64,
    name: &str,
    value: &str,
) -> Result<Option<Record>, Refusal> {
    let store = &broker.store;
    let queues = store.topic_queues(topic).unwrap_or(0);
    for queue_id in 0..queues {
        let Ok(mut offset) = store.queue_offset_for_time(topic, queue_id, from_ms) else {
            continue;
        };
        for _ in 0..16 {
            let read = store
                .read_queue(topic, queue_id, offset, 256, 1 << 20)
                .map_err(internal)?;
            if read.record_count == 0 {
                break;
            }
            let mut rest = &read.records[..];
            while let Ok(copy) = keel_protocol::decode_record(rest) {
                rest = rest.get(copy.total_size as usize..).unwrap_or_default();
                offset = copy.queue_offset + 1;
                if copy.property(name) == Some(value) {
                    return Ok(Some(copy));
                }
            }
        }
    }
    Ok(None)
}

/// A half message: whether its transaction is open or how it ended, and as what it
/// was committed. A committed message: the half message it came from.
fn transaction(broker: &Broker, record: &Record, info: &mut Info) -> Result<(), Refusal> {
    use crate::broker::transactions::{end_of, held_open, outcome_of};
    if record.topic == HALF_OP_TOPIC {
        return Ok(());
    }
    if record.topic != HALF_TOPIC {
        let Some(half_id) = record.property(property::TRANSACTION_ID) else {
            return Ok(());
        };
        info.push((
            "transaction".into(),
            format!("committed: it is half message {half_id}'s commit"),
        ));
        let half = u64::from_str_radix(half_id, 16)
            .ok()
            .map(|id| broker.store.record_at(id))
            .transpose()
            .map_err(internal)?
            .flatten();
        if let Some(half) = half.filter(|half| half.topic == HALF_TOPIC) {
            info.push(("half_stored_ms".into(), half.store_timestamp_ms.to_string()));
        }
        return Ok(());
    }
    let Some(op) = end_of(broker, record)? else {
        let state = match held_open(broker, record.log_offset)? {
            Some(open) => format!(
                "open: {} check(s) so far, the next due at {} ms",
                open.checks, open.next_check_ms
            ),
            None => "open (no end in the log; the master holds its checks)".into(),
        };
        info.push(("transaction".into(), state));
        return Ok(());
    };
    let outcome = outcome_of(&op);
    let by = op.property(property::TRANSACTION_BY).unwrap_or("?");
    let what = match outcome {
        keel_protocol::TxAction::Commit => "committed",
        keel_protocol::TxAction::Rollback => "rolled back",
    };
    info.push(("transaction".into(), format!("{what} by {by}")));
    info.push((
        "transaction_ended_ms".into(),
        op.store_timestamp_ms.to_string(),
    ));
    if outcome == keel_protocol::TxAction::Commit {
        let topic = record.property(property::REAL_TOPIC).unwrap_or_default();
        let id = record.message_id();
        let found = stored_from(
            broker,
            topic,
            op.store_timestamp_ms,
            property::TRANSACTION_ID,
            &id,
        )?;
        let what = match found {
            Some(message) => format!("{} in {topic}", message.message_id()),
            None => format!("not found in {topic} from the commit on (its topic was deleted?)"),
        };
        info.push(("committed_as".into(), what));
    }
    Ok(())
}

/// The record with id `msg_id`, or (with `key`) the newest original carrying the key.
fn find(broker: &Broker, msg_id: u64, key: &str) -> Result<Record, Refusal> {
    let store = &broker.store;
    let record = if key.is_empty() {
        let record = store.record_at(msg_id).map_err(internal)?;
        if let Some(record) = record.as_ref().filter(|record| store.is_deleted(record)) {
            return Err(Refusal::invalid(format!(
                "no message has id {}: topic {:?} was deleted",
                message_id(msg_id),
                record.topic
            )));
        }
        record
    } else {
        let mut found: Option<Record> = None;
        store
            .scan(|record| {
                let is_copy = record.topic.starts_with('%');
                if !is_copy
                    && record.keys.split_whitespace().any(|k| k == key)
                    && !store.is_deleted(record)
                {
                    found = Some(record.clone());
                }
                true
            })
            .map_err(internal)?;
        found
    };
    record.ok_or_else(|| {
        Refusal::invalid(match key.is_empty() {
            true => format!("no message has id {}", message_id(msg_id)),
            false => format!("no message has key {key:?}"),
        })
    })
}

fn yes_no(yes: bool) -> String {
    if yes { "yes" } else { "no" }.to_string()
}

/// Where the record is and how durable.
fn placement(broker: &Broker, record: &Record) -> Info {
    let store = &broker.store;
    let end = record.log_offset + u64::from(record.total_size);
    let replicated = match broker.ha() {
        Ha::Master(master) => {
            let acked = master.slaves().iter().map(|s| s.acked).max().unwrap_or(0);
            yes_no(end <= acked)
        }
        Ha::Slave(_) => "yes (this broker is a slave)".into(),
        Ha::None => "no slaves (standalone)".into(),
    };
    let mut facts = vec![
        ("id".into(), record.message_id()),
        ("topic".into(), record.topic.clone()),
        ("queue".into(), record.queue_id.to_string()),
        ("queue_offset".into(), record.queue_offset.to_string()),
        ("log_offset".into(), record.log_offset.to_string()),
        ("size".into(), record.total_size.to_string()),
        ("tags".into(), record.tags.clone()),
        ("keys".into(), record.keys.clone()),
    ];
    facts.extend(
        record
            .properties
            .iter()
            .map(|(key, value)| (format!("property {key}"), value.clone())),
    );
    facts.extend([
        ("born_ms".into(), record.born_timestamp_ms.to_string()),
        ("stored_ms".into(), record.store_timestamp_ms.to_string()),
        (
            "message_crc_ok".into(),
            yes_no(record.message_crc_matches()),
        ),
        ("flushed".into(), yes_no(end <= store.offset_flushed())),
        ("replicated".into(), replicated),
        (
            "served_to_consumers".into(),
            yes_no(end <= store.offset_durable()),
        ),
    ]);
    facts
}

/// Each group's state for the record: committed offsets and what pulls delivered.
fn group_states(broker: &Broker, record: &Record, info: &mut Info) {
    let mut groups: std::collections::BTreeMap<String, (Option<u64>, Option<u64>)> =
        std::collections::BTreeMap::new();
    for (group, topic, queue, offset) in broker.store.consumer_offsets() {
        if topic == record.topic && queue == record.queue_id && !group.starts_with('%') {
            groups.entry(group).or_default().0 = Some(offset);
        }
    }
    for ((group, topic, queue), next) in broker
        .delivered
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .iter()
    {
        if *topic == record.topic && *queue == record.queue_id {
            groups.entry(group.clone()).or_default().1 = Some(*next);
        }
    }
    for (group, (committed, delivered)) in groups {
        let state = if committed.is_some_and(|c| c > record.queue_offset) {
            "consumed and committed"
        } else if delivered.is_some_and(|d| d > record.queue_offset) {
            "delivered, not committed yet"
        } else {
            "not delivered yet"
        };
        info.push((format!("group {group}"), state.into()));
    }
}

/// Retries and dead letters: the copies whose origin is the record. Only the broker's
/// own topics that hold copies are read (the schedule topic and the groups' retry and
/// dead-letter topics), through their queues: never the whole log.
fn copies(broker: &Broker, record: &Record, info: &mut Info) -> Result<(), Refusal> {
    let id = record.message_id();
    let mut retries = 0u32;
    let store = &broker.store;
    let holds_copies = |topic: &str| {
        matches!(
            own_topic(topic),
            Some(OwnTopic::Schedule | OwnTopic::Retry { .. } | OwnTopic::DeadLetter { .. })
        )
    };
    for (topic, queues) in store.topic_list() {
        if !holds_copies(&topic) {
            continue;
        }
        for queue_id in 0..queues {
            let mut offset = 0u64;
            loop {
                let read = match store.read_queue(&topic, queue_id, offset, 256, 1 << 20) {
                    Ok(read) => read,
                    Err(error) => return Err(internal(error)),
                };
                // Retention may have deleted the start: go on from the first kept.
                if offset < read.min_offset {
                    offset = read.min_offset;
                    continue;
                }
                if read.record_count == 0 {
                    break;
                }
                let mut rest = &read.records[..];
                let before = offset;
                while let Ok(copy) = keel_protocol::decode_record(rest) {
                    rest = rest.get(copy.total_size as usize..).unwrap_or_default();
                    offset = copy.queue_offset + 1;
                    note_copy(&copy, &id, &mut retries, info);
                }
                if offset == before {
                    break;
                }
            }
        }
    }
    info.push(("retries".into(), retries.to_string()));
    Ok(())
}

/// What `copy` says of the record with id `id`, if it is one of its copies.
fn note_copy(copy: &Record, id: &str, retries: &mut u32, info: &mut Info) {
    let get = |name: &str| copy.property(name);
    if get(property::ORIGIN_MSG_ID) != Some(id) {
        return;
    }
    let times = get(property::RECONSUME_TIMES).unwrap_or("?");
    let reason = get(property::REASON).unwrap_or("");
    match own_topic(&copy.topic) {
        Some(OwnTopic::DeadLetter { group }) => {
            let what = format!(
                "after {times} attempts, as {} ({reason})",
                copy.message_id()
            );
            info.push((format!("dead_lettered {group}"), what));
        }
        // The timer's own copies of a waiting message (moving between its levels).
        Some(OwnTopic::Schedule) if crate::broker::timer::is_timer_copy(copy.producer_id) => {}
        Some(OwnTopic::Schedule) => {
            *retries += 1;
            let due = get(property::DELIVER_AT).unwrap_or("?");
            info.push((
                format!("retry {retries}"),
                format!("attempt {times} failed ({reason}); redelivery due at {due} ms"),
            ));
        }
        Some(OwnTopic::Retry { group }) => {
            let what = format!("as {} (after {times} failures)", copy.message_id());
            info.push((format!("redelivered {group}"), what));
        }
        Some(OwnTopic::Reserved) | None => {}
    }
}
