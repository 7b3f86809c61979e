//! Consumer groups: heartbeats (membership and queue assignment), commits fenced by
//! queue ownership, and messages sent back for a later retry or the dead-letter topic.

use crate::broker::connection::ReplyTo;
use crate::broker::handlers::{admin, send};
use crate::broker::shard::Shard;
use crate::broker::{schedule, timer};
use crate::error::Refusal;
use keel_protocol::names::property;
use keel_protocol::{
    dlq_topic, message_id, now_ms, retry_topic, validate_topic, Assignment, CommitOffsetRequest,
    ErrorCode, GroupCommitRequest, GroupSettings, HeartbeatRequest, Response, SendBackRequest,
    QUEUE_ID_ANY,
};
use keel_storage::GROUP_ORDERED;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Why a group or topic name is refused, if it is.
fn invalid_names(group: &str, topic: &str) -> Option<Refusal> {
    invalid_group(group).or_else(|| {
        let detail = validate_topic(topic).err()?;
        Some(Refusal::new(ErrorCode::InvalidTopic, detail.to_string()))
    })
}

/// Why a group name is refused, if it is ('%' names are the broker's own).
fn invalid_group(group: &str) -> Option<Refusal> {
    let detail = match validate_topic(group) {
        Ok(()) if !group.contains('%') => return None,
        Ok(()) => "a group name may not contain '%'".to_string(),
        Err(detail) => format!("invalid group: {detail}"),
    };
    Some(Refusal::new(ErrorCode::InvalidTopic, detail))
}

pub(crate) fn on_heartbeat(shard: &mut Shard, to: ReplyTo, heartbeat: HeartbeatRequest) {
    if let Some(refusal) = invalid_names(&heartbeat.group, &heartbeat.topic) {
        return shard.reply(to, refusal.response());
    }
    if heartbeat.member_id.is_empty() {
        return shard.reply(to, Refusal::invalid("member_id is empty").response());
    }
    let broker = &shard.broker;
    let queue_count = broker.store.topic_queues(&heartbeat.topic).unwrap_or(0);
    // An ordered group that consumed the topic before this broker started serving may
    // have members still handling queues they have not reported yet.
    let hold_unreported = broker.store.group_flags(&heartbeat.group) & GROUP_ORDERED != 0
        && (0..queue_count).any(|queue| {
            let store = &broker.store;
            store
                .query_offset(&heartbeat.group, &heartbeat.topic, queue)
                .is_some()
        });
    let granted = broker.groups.heartbeat(
        &heartbeat.group,
        &heartbeat.topic,
        &heartbeat.member_id,
        Duration::from_millis(u64::from(heartbeat.session_timeout_ms)),
        &heartbeat.owned,
        queue_count,
        hold_unreported,
    );
    let response = match granted {
        Some(granted) => Response::Assignment(Assignment {
            generation: granted.generation,
            queue_count,
            members: granted.members,
            queues: granted.queues,
        }),
        None => {
            Refusal::internal("too many consumer groups on this broker; try again later").response()
        }
    };
    shard.reply(to, response);
}

/// DELETE_GROUP: the group's committed offsets go (on every topic), and its members
/// with them. Refused while it has live members unless forced (forced, members that go
/// on running join again and commit again). Answered once the offsets file no longer
/// holds them.
pub(crate) fn on_delete_group(shard: &mut Shard, to: ReplyTo, group: &str, force: bool) {
    if let Some(refusal) = invalid_group(group) {
        return shard.reply(to, refusal.response());
    }
    if let Some(refusal) = send::not_master(shard) {
        return shard.reply(to, refusal.response());
    }
    let broker = shard.broker.clone();
    let live = broker.groups.live_members(group);
    if !live.is_empty() && !force {
        let on: Vec<String> = live
            .iter()
            .map(|(topic, members)| format!("{members} on {topic}"))
            .collect();
        let detail = format!(
            "group {group} has live members ({}); stop them first, or force the deletion \
             (running members join again and commit again)",
            on.join(", ")
        );
        return shard.reply(to, Refusal::new(ErrorCode::TopicInUse, detail).response());
    }
    let members = broker.groups.forget(group);
    broker
        .delivered
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .retain(|(name, _, _), _| name != group);
    let (offsets, version) = broker.store.delete_group_offsets(group);
    log::info!("deleted group {group}: {offsets} committed offset(s), {members} member(s)");
    let deleted = keel_protocol::GroupDeleted {
        group: group.to_string(),
        offsets,
        members: u32::try_from(members).unwrap_or(u32::MAX),
    };
    shard.expect_meta(to, version, Response::GroupDeleted(deleted));
}

/// GROUP_SETTINGS: a group's settings, read (answered at once) or changed (answered
/// once the offsets file holding them is durable; they reach slaves with the offsets).
pub(crate) fn on_group_settings(
    shard: &mut Shard,
    to: ReplyTo,
    group: &str,
    ordered: Option<bool>,
) {
    if let Some(refusal) = invalid_group(group) {
        return shard.reply(to, refusal.response());
    }
    let store = &shard.broker.store;
    let Some(ordered) = ordered else {
        let settings = GroupSettings {
            group: group.to_string(),
            ordered: store.group_flags(group) & GROUP_ORDERED != 0,
        };
        return shard.reply(to, Response::GroupSettings(settings));
    };
    if let Some(refusal) = send::not_master(shard) {
        return shard.reply(to, refusal.response());
    }
    let store = &shard.broker.store;
    let flags = match ordered {
        true => store.group_flags(group) | GROUP_ORDERED,
        false => store.group_flags(group) & !GROUP_ORDERED,
    };
    match store.set_group_flags(group, flags) {
        Ok(version) => {
            log::info!("group {group}: ordered = {ordered}");
            let settings = GroupSettings {
                group: group.to_string(),
                ordered,
            };
            shard.expect_meta(to, version, Response::GroupSettings(settings));
        }
        Err(error) => shard.reply(to, Refusal::from(error).response()),
    }
}

pub(crate) fn on_group_commit(shard: &mut Shard, to: ReplyTo, commit: GroupCommitRequest) {
    if let Some(refusal) = invalid_names(&commit.group, &commit.topic) {
        return shard.reply(to, refusal.response());
    }
    let owner = shard.broker.groups.owns(
        &commit.group,
        &commit.topic,
        &commit.member_id,
        commit.queue_id,
    );
    if !owner {
        let detail = format!(
            "queue {} of {} belongs to another member of group {} now (or this member's \
             session expired): stop consuming it",
            commit.queue_id, commit.topic, commit.group
        );
        return shard.reply(to, Refusal::new(ErrorCode::NotOwner, detail).response());
    }
    let commit = CommitOffsetRequest {
        group: commit.group,
        topic: commit.topic,
        queue_id: commit.queue_id,
        offset: commit.offset,
    };
    admin::on_commit_offset(shard, to, commit);
}

/// The delay a SEND_BACK's message asks for (`KEEL_RETRY_DELAY_MS`), if any.
fn retry_delay(message: &keel_protocol::Message, max_ms: u64) -> Result<Option<u64>, Refusal> {
    let Some(text) = message.property(property::RETRY_DELAY_MS) else {
        return Ok(None);
    };
    match text.parse::<u64>() {
        Ok(delay) if delay <= max_ms => Ok(Some(delay)),
        Ok(delay) => Err(Refusal::invalid(format!(
            "{} = {delay} is beyond the timer's horizon (max_delay_ms = {max_ms})",
            property::RETRY_DELAY_MS
        ))),
        Err(_) => Err(Refusal::invalid(format!(
            "{} = {text:?} is not a whole number of milliseconds",
            property::RETRY_DELAY_MS
        ))),
    }
}

/// SEND_BACK: stores the message for its group to consume again after the delay of
/// its attempt, straight into the retry topic when it has none (a redrive), or into
/// the dead-letter topic past `max_reconsume_times`. Answered like a SEND.
pub(crate) fn on_send_back(shard: &mut Shard, to: ReplyTo, back: SendBackRequest) {
    if let Some(refusal) = invalid_names(&back.group, &retry_topic(&back.group)) {
        return shard.reply(to, refusal.response());
    }
    let mut message = back.message;
    // The consumer's copy is checked as it arrived; the broker's changes are sealed
    // below, so the stored copy's CRC vouches for what the broker made of it.
    if !message.crc_matches() {
        shard
            .broker
            .counters
            .sends_failed
            .fetch_add(1, Ordering::Relaxed);
        let detail = format!(
            "the message sent back does not match its CRC32C 0x{:08X}: it was damaged on \
             the way",
            message.message_crc
        );
        let refusal = Refusal::new(ErrorCode::MessageCrcMismatch, detail);
        return shard.reply(to, refusal.response());
    }
    let explicit = match retry_delay(&message, shard.broker.config.max_delay_ms) {
        Ok(delay) => delay,
        Err(refusal) => return shard.reply(to, refusal.response()),
    };
    let mut properties: Vec<(String, String)> = message
        .properties
        .into_iter()
        .filter(|(name, _)| !name.starts_with(property::PREFIX))
        .collect();
    let mut set = |name: &str, value: String| properties.push((name.to_string(), value));
    set(property::ORIGIN_TOPIC, back.origin_topic);
    set(property::ORIGIN_MSG_ID, message_id(back.origin_msg_id));
    set(property::RECONSUME_TIMES, back.reconsume_times.to_string());
    if !back.reason.is_empty() {
        set(property::REASON, back.reason);
    }
    message.queue_id = QUEUE_ID_ANY;
    let mut due = None;
    if back.reconsume_times > back.max_reconsume_times {
        // One queue: the dead letters of a group in the order they died.
        message.topic = dlq_topic(&back.group);
        message.queue_id = 0;
        set(property::DLQ_TIME, now_ms().to_string());
    } else {
        message.topic = retry_topic(&back.group);
        let delays = &shard.broker.config.retry_delays_ms;
        due = match explicit {
            Some(delay) => Some(now_ms().saturating_add(delay)),
            None => schedule::delay_for(delays, back.reconsume_times).map(|(_, at)| at),
        };
    }
    message.properties = properties;
    // A copy is another message: the original's numbers stay with the original.
    message.producer_id = 0;
    message.sequence = 0;
    let retention_ms = shard
        .broker
        .config
        .retention_hours
        .saturating_mul(3_600_000);
    let top = timer::top_level(retention_ms);
    // The retry waits in the timer until its delay has passed.
    let now = now_ms();
    let message = match due.filter(|due| *due > now) {
        Some(due) => timer::waiting(message, due, timer::level_for(due, now, top)),
        None => message.sealed(),
    };
    send::append_and_wait(shard, to, false, vec![message], false);
}
