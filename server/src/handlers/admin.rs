//! Topics, plain consumer offsets, and promotion: requests of operators and of the
//! simpler clients.

use crate::connection::ReplyTo;
use crate::error::Refusal;
use crate::handlers::send;
use crate::shard::Shard;
use keel_protocol::{
    BrokerRole, CommitOffsetRequest, CreateTopicRequest, ErrorCode, ListTopicsRequest,
    QueryOffsetRequest, QueueInfo, Response, TopicCreated, TopicInfo,
};

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

/// PROMOTE: a slave becomes a master. Done on a thread of its own (it stops the
/// replication threads and fsyncs), answered when finished.
pub(crate) fn on_promote(shard: &mut Shard, to: ReplyTo, role: BrokerRole, force: bool) {
    shard.reply_from_thread(
        to,
        "keel-promote",
        move |broker| match crate::cluster::promote(broker, role, force) {
            Ok((epoch, log_end)) => Response::Promoted { epoch, log_end },
            Err(refusal) => refusal.response(),
        },
    );
}
