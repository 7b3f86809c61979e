//! MESSAGE_INFO: everything the broker knows of one message. It reads the whole log, so
//! it runs on a thread of its own, a few at a time.

use crate::broker::{Broker, Ha};
use crate::connection::ReplyTo;
use crate::error::Refusal;
use crate::schedule::{self, property};
use crate::shard::Shard;
use keel_protocol::{message_id, Record, Response, SCHEDULE_TOPIC};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Message lookups running (each reads the whole log).
static LOOKUPS: AtomicUsize = AtomicUsize::new(0);
const LOOKUPS_MAX: usize = 2;

pub(crate) fn on_message_info(shard: &mut Shard, to: ReplyTo, msg_id: u64, key: String) {
    if LOOKUPS.fetch_add(1, Ordering::AcqRel) >= LOOKUPS_MAX {
        LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        let detail = format!("{LOOKUPS_MAX} message lookups are running; try again shortly");
        return shard.reply(to, Refusal::internal(detail).response());
    }
    let started = shard.reply_from_thread(to, "keel-lookup", move |broker| {
        let response = match message_info(broker, msg_id, &key) {
            Ok(info) => Response::Info(info),
            Err(refusal) => refusal.response(),
        };
        LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        response
    });
    if !started {
        LOOKUPS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything the broker knows of one message (by id, or the newest with `key`): where
/// it is stored, how durable, which groups consumed and committed it, its retries and
/// whether it was dead-lettered.
fn message_info(broker: &Broker, msg_id: u64, key: &str) -> Result<Vec<(String, String)>, Refusal> {
    let store = &broker.store;
    let internal = |error: keel_storage::StoreError| Refusal::internal(error.to_string());
    let record = if key.is_empty() {
        store.record_at(msg_id).map_err(internal)?
    } else {
        // The newest original (not a retry copy) carrying the key.
        let mut found: Option<Record> = None;
        store
            .scan(|record| {
                let is_copy = record.topic.starts_with('%');
                if !is_copy && record.keys.split_whitespace().any(|k| k == key) {
                    found = Some(record.clone());
                }
                true
            })
            .map_err(internal)?;
        found
    };
    let Some(record) = record else {
        let what = if key.is_empty() {
            format!("no message has id {}", message_id(msg_id))
        } else {
            format!("no message has key {key:?}")
        };
        return Err(Refusal::invalid(what));
    };
    let id = record.message_id();
    let end = record.log_offset + u64::from(record.total_size);
    let stats = store.stats();
    let yes_no = |yes: bool| if yes { "yes" } else { "no" }.to_string();
    let mut info: Vec<(String, String)> = vec![
        ("id".into(), id.clone()),
        ("topic".into(), record.topic.clone()),
        ("queue".into(), record.queue_id.to_string()),
        ("queue_offset".into(), record.queue_offset.to_string()),
        ("log_offset".into(), record.log_offset.to_string()),
        ("size".into(), record.total_size.to_string()),
        ("tags".into(), record.tags.clone()),
        ("keys".into(), record.keys.clone()),
        ("born_ms".into(), record.born_timestamp_ms.to_string()),
        ("stored_ms".into(), record.store_timestamp_ms.to_string()),
        (
            "message_crc_ok".into(),
            yes_no(record.message_crc_matches()),
        ),
        ("flushed".into(), yes_no(end <= stats.offset_flushed)),
    ];
    let replicated = match broker.ha() {
        Ha::Master(master) => {
            let acked = master.slaves().iter().map(|s| s.acked).max().unwrap_or(0);
            yes_no(end <= acked)
        }
        Ha::Slave(_) => "yes (this broker is a slave)".into(),
        Ha::None => "no slaves (standalone)".into(),
    };
    info.push(("replicated".into(), replicated));
    info.push((
        "served_to_consumers".into(),
        yes_no(end <= store.offset_durable()),
    ));

    // Groups: committed offsets and what pulls delivered, for this queue.
    let mut groups: std::collections::BTreeMap<String, (Option<u64>, Option<u64>)> =
        std::collections::BTreeMap::new();
    for (group, topic, queue, offset) in store.consumer_offsets() {
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

    // Retries and dead letters: copies whose origin is this message.
    let mut retries = 0u32;
    store
        .scan(|copy| {
            if schedule::get(&copy.properties, property::ORIGIN_MSG_ID) != Some(id.as_str()) {
                return true;
            }
            let times = schedule::get(&copy.properties, property::RECONSUME_TIMES).unwrap_or("?");
            let reason = schedule::get(&copy.properties, property::REASON).unwrap_or("");
            if copy.topic.starts_with("%DLQ%") {
                let group = copy.topic.trim_start_matches("%DLQ%");
                info.push((
                    format!("dead_lettered {group}"),
                    format!(
                        "after {times} attempts, as {} ({reason})",
                        copy.message_id()
                    ),
                ));
            } else if copy.topic == SCHEDULE_TOPIC {
                retries += 1;
                let due = schedule::get(&copy.properties, property::DELIVER_AT).unwrap_or("?");
                info.push((
                    format!("retry {retries}"),
                    format!("attempt {times} failed ({reason}); redelivery due at {due} ms"),
                ));
            } else if copy.topic.starts_with("%RETRY%") {
                info.push((
                    format!("redelivered {}", copy.topic.trim_start_matches("%RETRY%")),
                    format!("as {} (after {times} failures)", copy.message_id()),
                ));
            }
            true
        })
        .map_err(internal)?;
    info.push(("retries".into(), retries.to_string()));
    Ok(info)
}
