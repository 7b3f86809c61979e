//! Handlers for consumer groups: heartbeats and fenced commits, messages sent back for
//! a later retry (or the dead-letter topic), start positions by time, and lookups of
//! where a message is.

use crate::broker::{Broker, Ha};
use crate::event_loop::EventLoop;
use crate::schedule::{self, property};
use keel_protocol::now_ms;
use keel_protocol::{
    dlq_topic, message_id, retry_topic, validate_topic, Assignment, ErrorCode, GroupCommitRequest,
    HeartbeatRequest, OffsetForTimeRequest, Record, Response, SendBackRequest, QUEUE_ID_ANY,
    SCHEDULE_TOPIC,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn counters_failed(broker: &Broker) {
    broker.counters.sends_failed.fetch_add(1, Ordering::Relaxed);
}

/// Message lookups running (each reads the whole log).
static LOOKUPS: AtomicUsize = AtomicUsize::new(0);
const LOOKUPS_MAX: usize = 2;

impl EventLoop {
    /// Refuses a send to (or creation of) a topic whose name holds `%`: the character
    /// marks the broker's own topics (`%RETRY%g`, ...). Returns whether it refused.
    pub(crate) fn reserved_topic(
        &mut self,
        key: usize,
        request_id: u64,
        oneway: bool,
        topic: &str,
    ) -> bool {
        if !topic.contains(keel_protocol::RESERVED_TOPIC_PREFIX) {
            return false;
        }
        self.broker
            .counters
            .sends_failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !oneway {
            let detail = format!(
                "topic {topic:?}: '%' is reserved for the broker's own topics; consumers \
                 reach retry topics through SEND_BACK"
            );
            self.reply(
                key,
                request_id,
                &Response::error(ErrorCode::InvalidTopic, detail),
            );
        }
        true
    }

    fn group_names_valid(&mut self, key: usize, request_id: u64, group: &str, topic: &str) -> bool {
        let invalid = validate_topic(group)
            .map_err(|detail| format!("invalid group: {detail}"))
            .and_then(|()| validate_topic(topic).map_err(|detail| detail.to_string()));
        match invalid {
            Ok(()) if !group.contains('%') => true,
            Ok(()) => {
                let detail = "a group name may not contain '%'";
                self.reply(
                    key,
                    request_id,
                    &Response::error(ErrorCode::InvalidTopic, detail),
                );
                false
            }
            Err(detail) => {
                self.reply(
                    key,
                    request_id,
                    &Response::error(ErrorCode::InvalidTopic, detail),
                );
                false
            }
        }
    }

    pub(crate) fn on_heartbeat(
        &mut self,
        key: usize,
        request_id: u64,
        heartbeat: HeartbeatRequest,
    ) {
        if !self.group_names_valid(key, request_id, &heartbeat.group, &heartbeat.topic) {
            return;
        }
        if heartbeat.member_id.is_empty() {
            let response = Response::error(ErrorCode::InvalidArgument, "member_id is empty");
            self.reply(key, request_id, &response);
            return;
        }
        let queue_count = self
            .broker
            .store
            .topic_queues(&heartbeat.topic)
            .unwrap_or(0);
        let Some(granted) = self.broker.groups.heartbeat(
            &heartbeat.group,
            &heartbeat.topic,
            &heartbeat.member_id,
            Duration::from_millis(u64::from(heartbeat.session_timeout_ms)),
            &heartbeat.owned,
            queue_count,
        ) else {
            let detail = "too many consumer groups on this broker; try again later";
            self.reply(
                key,
                request_id,
                &Response::error(ErrorCode::Internal, detail),
            );
            return;
        };
        let response = Response::Assignment(Assignment {
            generation: granted.generation,
            queue_count,
            members: granted.members,
            queues: granted.queues,
        });
        self.reply(key, request_id, &response);
    }

    pub(crate) fn on_group_commit(
        &mut self,
        key: usize,
        request_id: u64,
        commit: GroupCommitRequest,
    ) {
        if !self.group_names_valid(key, request_id, &commit.group, &commit.topic) {
            return;
        }
        if !self.broker.groups.owns(
            &commit.group,
            &commit.topic,
            &commit.member_id,
            commit.queue_id,
        ) {
            let detail = format!(
                "queue {} of {} belongs to another member of group {} now (or this member's \
                 session expired): stop consuming it",
                commit.queue_id, commit.topic, commit.group
            );
            self.reply(
                key,
                request_id,
                &Response::error(ErrorCode::NotOwner, detail),
            );
            return;
        }
        self.on_commit_offset(
            key,
            request_id,
            keel_protocol::CommitOffsetRequest {
                group: commit.group,
                topic: commit.topic,
                queue_id: commit.queue_id,
                offset: commit.offset,
            },
        );
    }

    /// SEND_BACK: stores the message for its group to consume again after the delay
    /// of its attempt, straight into the retry topic when it has none (a redrive), or
    /// into the dead-letter topic past `max_reconsume_times`. Answered like a SEND.
    pub(crate) fn on_send_back(&mut self, key: usize, request_id: u64, back: SendBackRequest) {
        if !self.group_names_valid(key, request_id, &back.group, &retry_topic(&back.group)) {
            return;
        }
        let mut message = back.message;
        // The consumer's copy is checked as it arrived; the broker's changes are sealed
        // below, so the stored copy's CRC vouches for what the broker made of it.
        if !message.crc_matches() {
            counters_failed(&self.broker);
            let detail = format!(
                "the message sent back does not match its CRC32C 0x{:08X}: it was damaged \
                 on the way",
                message.message_crc
            );
            self.reply(
                key,
                request_id,
                &Response::error(ErrorCode::MessageCrcMismatch, detail),
            );
            return;
        }
        let mut properties: Vec<(String, String)> = message
            .properties
            .into_iter()
            .filter(|(name, _)| !name.starts_with("KEEL_"))
            .collect();
        let mut set = |name: &str, value: String| properties.push((name.to_string(), value));
        set(property::ORIGIN_TOPIC, back.origin_topic);
        set(property::ORIGIN_MSG_ID, message_id(back.origin_msg_id));
        set(property::RECONSUME_TIMES, back.reconsume_times.to_string());
        if !back.reason.is_empty() {
            set(property::REASON, back.reason);
        }
        message.queue_id = QUEUE_ID_ANY;
        if back.reconsume_times > back.max_reconsume_times {
            // One queue: the dead letters of a group in the order they died.
            message.topic = dlq_topic(&back.group);
            message.queue_id = 0;
            set(property::DLQ_TIME, now_ms().to_string());
        } else {
            match schedule::delay_for(&self.broker.config.retry_delays_ms, back.reconsume_times) {
                None => message.topic = retry_topic(&back.group),
                Some((level, deliver_at)) => {
                    message.topic = SCHEDULE_TOPIC.to_string();
                    message.queue_id = level;
                    set(property::REAL_TOPIC, retry_topic(&back.group));
                    set(property::DELIVER_AT, deliver_at.to_string());
                }
            }
        }
        message.properties = properties;
        // A copy is another message: the original's numbers stay with the original.
        message.producer_id = 0;
        message.sequence = 0;
        message.seal();
        self.on_send(key, request_id, false, vec![message], false);
    }

    pub(crate) fn on_offset_for_time(
        &mut self,
        key: usize,
        request_id: u64,
        query: OffsetForTimeRequest,
    ) {
        // A binary search over store times: reads of the log, on a reader thread.
        let reply_to = crate::reader::ReplyTo {
            key,
            connection_id: self.connection_id(key),
            request_id,
        };
        self.submit_read(reply_to, crate::reader::ReadJob::OffsetForTime(query));
    }

    /// MESSAGE_INFO reads the whole log, so it runs on a thread of its own (at most
    /// `LOOKUPS_MAX` at once).
    pub(crate) fn on_message_info(
        &mut self,
        key: usize,
        request_id: u64,
        msg_id: u64,
        wanted: String,
    ) {
        if LOOKUPS.fetch_add(1, Ordering::AcqRel) >= LOOKUPS_MAX {
            LOOKUPS.fetch_sub(1, Ordering::AcqRel);
            let detail = format!("{LOOKUPS_MAX} message lookups are running; try again shortly");
            self.reply(
                key,
                request_id,
                &Response::error(ErrorCode::Internal, detail),
            );
            return;
        }
        let started = self.reply_from_thread(key, request_id, "keel-lookup", move |broker| {
            let response = match message_info(broker, msg_id, &wanted) {
                Ok(info) => Response::Info(info),
                Err((code, detail)) => Response::error(code, detail),
            };
            LOOKUPS.fetch_sub(1, Ordering::AcqRel);
            response
        });
        if !started {
            LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Everything the broker knows of one message (by id, or the newest with `key`): where
/// it is stored, how durable, which groups consumed and committed it, its retries and
/// whether it was dead-lettered.
fn message_info(
    broker: &Broker,
    msg_id: u64,
    key: &str,
) -> Result<Vec<(String, String)>, (ErrorCode, String)> {
    let store = &broker.store;
    let internal = |error: keel_storage::StoreError| (ErrorCode::Internal, error.to_string());
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
        return Err((ErrorCode::InvalidArgument, what));
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
