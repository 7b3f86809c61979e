//! Topics, plain consumer offsets, and promotion: requests of operators and of the
//! simpler clients.

use crate::broker::connection::ReplyTo;
use crate::broker::handlers::send;
use crate::broker::shard::Shard;
use crate::broker::workers::Pool;
use crate::error::Refusal;
use keel_protocol::{
    BrokerRole, CommitOffsetRequest, CreateTopicRequest, ErrorCode, ListTopicsRequest,
    QueryOffsetRequest, QueueInfo, Response, TopicCreated, TopicDeleted, TopicInfo,
};
use std::time::{Duration, Instant};

/// Answered once the offset is on disk.
pub(crate) fn on_commit_offset(shard: &mut Shard, to: ReplyTo, commit: CommitOffsetRequest) {
    let store = &shard.broker.store;
    match store.commit_offset(&commit.group, &commit.topic, commit.queue_id, commit.offset) {
        Ok(version) => shard.expect_meta(to, version, Response::CommitOffsetOk),
        Err(error) => shard.reply(to, Refusal::from(error).response()),
    }
}

pub(crate) fn on_query_offset(shard: &mut Shard, to: ReplyTo, query: QueryOffsetRequest) {
    let offset = shard
        .broker
        .store
        .query_offset(&query.group, &query.topic, query.queue_id);
    shard.reply(to, Response::Offset(offset));
}

/// Answered once the topic is on disk.
pub(crate) fn on_create_topic(shard: &mut Shard, to: ReplyTo, create: CreateTopicRequest) {
    if send::reserved_topic(&create.topic) {
        let refusal = send::reserved_topic_refusal(&create.topic);
        return shard.reply(to, refusal.response());
    }
    if let Some(refusal) = send::not_master(shard) {
        return shard.reply(to, refusal.response());
    }
    match shard
        .broker
        .store
        .create_topic(&create.topic, create.queues)
    {
        Ok((queues, created, version)) => {
            let response = Response::TopicCreated(TopicCreated {
                topic: create.topic,
                queues,
                created,
            });
            shard.expect_meta(to, version, response);
        }
        Err(error) => shard.reply(to, Refusal::from(error).response()),
    }
}

/// ADD_QUEUES: answered once the new queue count is on disk; name servers hear of it
/// at once.
pub(crate) fn on_add_queues(shard: &mut Shard, to: ReplyTo, grow: CreateTopicRequest) {
    if send::reserved_topic(&grow.topic) {
        let refusal = send::reserved_topic_refusal(&grow.topic);
        return shard.reply(to, refusal.response());
    }
    if let Some(refusal) = send::not_master(shard) {
        return shard.reply(to, refusal.response());
    }
    match shard.broker.store.add_queues(&grow.topic, grow.queues) {
        Ok((queues, added, version)) => {
            if added {
                shard.broker.registration.notify();
            }
            let response = Response::TopicCreated(TopicCreated {
                topic: grow.topic,
                queues,
                created: added,
            });
            shard.expect_meta(to, version, response);
        }
        Err(error) => shard.reply(to, Refusal::from(error).response()),
    }
}

/// DELETE_TOPIC: refused while the topic is in use unless forced. The deletion takes
/// effect at once (its record appended, the topic and its offsets forgotten, name
/// servers told); the answer comes from a thread once the record is durable (on a
/// slave too, for a sync master) and the metadata files no longer hold the topic, or
/// says it is not confirmed when that takes longer than the flush timeouts.
pub(crate) fn on_delete_topic(shard: &mut Shard, to: ReplyTo, topic: String, force: bool) {
    if send::reserved_topic(&topic) {
        // The broker's own topics (retries, dead letters, the schedule) go with their
        // groups' state; they are not deleted one by one.
        let detail = format!(
            "topic {topic:?}: '%' marks the broker's own topics (retries, dead letters, the \
             schedule), which are not deleted; `keel dlq redrive` empties a dead-letter queue"
        );
        return shard.reply(to, Refusal::new(ErrorCode::InvalidTopic, detail).response());
    }
    if let Some(refusal) = send::not_master(shard) {
        return shard.reply(to, refusal.response());
    }
    if !force {
        if let Some(why) = in_use(&shard.broker, &topic) {
            let detail = format!(
                "topic {topic:?} is in use: {why}; nothing was deleted (stop them, or force \
                 the deletion)"
            );
            return shard.reply(to, Refusal::new(ErrorCode::TopicInUse, detail).response());
        }
    }
    let deletion = match shard
        .broker
        .store
        .delete_topic(&topic, keel_protocol::now_ms())
    {
        Ok(deletion) => deletion,
        Err(error) => return shard.reply(to, Refusal::from(error).response()),
    };
    shard.broker.registration.notify();
    shard.broker.rates.forget(&topic);
    log::warn!(
        "topic {topic} deleted ({} message(s), {} byte(s){})",
        deletion.messages,
        deletion.bytes,
        if force { ", forced" } else { "" }
    );
    // If the wait for durability cannot be queued, the deletion stands (in memory,
    // its record on its way to the disk): say so rather than an error ("not done").
    let not_waited = Response::TopicDeleted(TopicDeleted {
        topic: topic.clone(),
        queues: deletion.queues,
        messages: deletion.messages,
        bytes: deletion.bytes,
        durable: false,
    });
    let offloaded = shard.offload(to, Pool::Slow, "a topic deletion", move |broker| {
        let config = &broker.config;
        let timeout = config.sync_flush_timeout_ms.max(config.slave_timeout_ms);
        let deadline = Instant::now() + Duration::from_millis(timeout);
        let store = &broker.store;
        let pause = || std::thread::sleep(Duration::from_millis(1));
        // First the record (on the slave too, for a sync master), then the topics file
        // that says so: written once the record is on disk.
        let mut settled: Option<u64> = None;
        let durable = loop {
            if store.is_discarded(deletion.generation, deletion.offset_end) {
                return Response::error(
                    ErrorCode::DiskFull,
                    format!(
                        "the disk filled up before the deletion of {topic:?} was written: \
                         nothing was deleted (the topic is back as it was)"
                    ),
                );
            }
            if store.is_poisoned() || Instant::now() >= deadline {
                break false;
            }
            let version = match settled {
                Some(version) => version,
                None if broker.offset_durable() >= deletion.offset_end
                    && store.offset_flushed() >= deletion.offset_end =>
                {
                    *settled.insert(store.settle_deletions().max(deletion.meta_version))
                }
                None => {
                    pause();
                    continue;
                }
            };
            if store.meta_persisted() >= version {
                break true;
            }
            pause();
        };
        Response::TopicDeleted(TopicDeleted {
            topic,
            queues: deletion.queues,
            messages: deletion.messages,
            bytes: deletion.bytes,
            durable,
        })
    });
    if offloaded.is_err() {
        shard.reply(to, not_waited);
    }
}

/// Why `topic` is in use, if it is: groups with live members on it, or messages
/// stored in it over the last minute.
fn in_use(broker: &crate::context::Broker, topic: &str) -> Option<String> {
    let mut reasons = Vec::new();
    let live = broker.groups.live_on(topic);
    if !live.is_empty() {
        let groups: Vec<String> = live
            .iter()
            .map(|(group, members)| format!("{group} ({members} live member(s))"))
            .collect();
        reasons.push(format!("consumer group(s) {}", groups.join(", ")));
    }
    if let Some(stats) = broker.topic_stats(topic).first() {
        if stats.window_messages > 0 {
            reasons.push(format!(
                "{} message(s) stored in the last {} s",
                stats.window_messages,
                stats.window_ms.div_ceil(1000)
            ));
        }
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

pub(crate) fn on_list_topics(shard: &mut Shard, to: ReplyTo, list: ListTopicsRequest) {
    let only = (!list.topic.is_empty()).then_some(list.topic.as_str());
    let topics = shard.broker.store.queue_offsets(only);
    if let (Some(topic), true) = (only, topics.is_empty()) {
        let detail = format!("topic {topic:?} does not exist");
        return shard.reply(
            to,
            Refusal::new(ErrorCode::TopicNotFound, detail).response(),
        );
    }
    let topics = topics
        .into_iter()
        .map(|(topic, queues)| TopicInfo {
            topic,
            queues: queues
                .into_iter()
                .map(|(min_offset, max_offset)| QueueInfo {
                    min_offset,
                    max_offset,
                })
                .collect(),
        })
        .collect();
    shard.reply(to, Response::TopicList(topics));
}

/// PROMOTE: a slave becomes a master. Done on the slow requests' threads (it stops the
/// replication threads and fsyncs), answered when finished.
pub(crate) fn on_promote(shard: &mut Shard, to: ReplyTo, role: BrokerRole, force: bool) {
    let offloaded =
        shard.offload(
            to,
            Pool::Promote,
            "a promotion",
            move |broker| match crate::cluster::promote(broker, role, force) {
                Ok((epoch, log_end)) => Response::Promoted { epoch, log_end },
                Err(refusal) => refusal.response(),
            },
        );
    if let Err(refused) = offloaded {
        shard.reply(to, refused);
    }
}
