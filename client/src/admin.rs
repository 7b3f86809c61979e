//! Topic and broker administration: create and list topics, read and set consumer
//! group offsets, read stats.

use crate::connection::{Connection, ConnectionOptions};
use crate::{ClientError, Endpoint};
use keel_protocol::{
    CommitOffsetRequest, CreateTopicRequest, ListTopicsRequest, QueryOffsetRequest, Request,
    Response, TopicCreated, TopicDeleted, TopicInfo,
};
use std::time::Duration;

pub struct Admin {
    connection: Connection,
    timeout: Duration,
}

impl Admin {
    pub fn connect(address: &str) -> Result<Admin, ClientError> {
        Admin::connect_with(address, &ConnectionOptions::default())
    }

    /// Connects with TLS and a login when `options` has them.
    pub fn connect_with(address: &str, options: &ConnectionOptions) -> Result<Admin, ClientError> {
        let connection = Connection::connect(Endpoint::resolve(address)?, options)?;
        Ok(Admin {
            connection,
            timeout: Duration::from_secs(10),
        })
    }

    /// Waits at most `timeout` for each answer from now on (10 s by default).
    pub fn with_timeout(mut self, timeout: Duration) -> Admin {
        self.timeout = timeout;
        self
    }

    /// The principal this connection logged in as, if it did.
    pub fn principal(&self) -> Option<&str> {
        self.connection.principal()
    }

    /// A users, tokens or permissions request (needs `admin:security`).
    pub fn security(
        &self,
        command: &keel_security::SecurityCommand,
    ) -> Result<keel_security::SecurityReply, ClientError> {
        match self.call(Request::SecurityAdmin(keel_protocol::SecretText(
            command.to_json(),
        )))? {
            Response::SecurityResult(json) => {
                keel_security::SecurityReply::from_json(&json.0).map_err(ClientError::Protocol)
            }
            other => Err(unexpected(&other, "SECURITY_ADMIN")),
        }
    }

    fn call(&self, request: Request) -> Result<Response, ClientError> {
        match self.connection.call(&request, self.timeout)? {
            Response::Error(error) => Err(ClientError::Broker(error)),
            response => Ok(response),
        }
    }

    pub fn ping(&self) -> Result<(), ClientError> {
        match self.call(Request::Ping)? {
            Response::Pong => Ok(()),
            other => Err(unexpected(&other, "PING")),
        }
    }

    /// Creates a topic (returned with `created = false` if it already existed).
    pub fn create_topic(&self, topic: &str, queues: u32) -> Result<TopicCreated, ClientError> {
        match self.call(Request::CreateTopic(CreateTopicRequest {
            topic: topic.into(),
            queues,
        }))? {
            Response::TopicCreated(created) => Ok(created),
            other => Err(unexpected(&other, "CREATE_TOPIC")),
        }
    }

    /// Every topic (or only `topic`) with each queue's offsets.
    pub fn list_topics(&self, topic: Option<&str>) -> Result<Vec<TopicInfo>, ClientError> {
        let request = Request::ListTopics(ListTopicsRequest {
            topic: topic.unwrap_or_default().into(),
        });
        match self.call(request)? {
            Response::TopicList(topics) => Ok(topics),
            other => Err(unexpected(&other, "LIST_TOPICS")),
        }
    }

    /// The offset `group` committed for a queue, if any.
    pub fn query_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
    ) -> Result<Option<u64>, ClientError> {
        let request = Request::QueryOffset(QueryOffsetRequest {
            group: group.into(),
            topic: topic.into(),
            queue_id,
        });
        match self.call(request)? {
            Response::Offset(offset) => Ok(offset),
            other => Err(unexpected(&other, "QUERY_OFFSET")),
        }
    }

    /// Consumer groups (`group`, or every group when `None`): live members and the
    /// committed offset and end of each queue they committed.
    pub fn list_groups(
        &self,
        group: Option<&str>,
    ) -> Result<Vec<keel_protocol::GroupInfo>, ClientError> {
        match self.call(Request::ListGroups(group.unwrap_or_default().to_string()))? {
            Response::GroupList(groups) => Ok(groups),
            other => Err(unexpected(&other, "LIST_GROUPS")),
        }
    }

    /// Grows `topic` to `queues` queues (durable when this returns); `created` in the
    /// answer says whether queues were added. Fewer than it has is refused.
    pub fn add_queues(&self, topic: &str, queues: u32) -> Result<TopicCreated, ClientError> {
        let request = Request::AddQueues(keel_protocol::CreateTopicRequest {
            topic: topic.to_string(),
            queues,
        });
        match self.call(request)? {
            Response::TopicCreated(grown) => Ok(grown),
            other => Err(unexpected(&other, "ADD_QUEUES")),
        }
    }

    /// Deletes `topic` with its messages and its groups' committed offsets. Refused
    /// (`TOPIC_IN_USE`) while a group has live members on it or messages were stored in
    /// it over the last minute, unless `force`. `durable` false in the answer: the
    /// deletion is in effect but was not confirmed durable in time (a crash may undo it).
    pub fn delete_topic(&self, topic: &str, force: bool) -> Result<TopicDeleted, ClientError> {
        let request = Request::DeleteTopic {
            topic: topic.to_string(),
            force,
        };
        match self.call(request)? {
            Response::TopicDeleted(deleted) => Ok(deleted),
            other => Err(unexpected(&other, "DELETE_TOPIC")),
        }
    }

    /// Deletes a consumer group's committed offsets (on every topic) and forgets its
    /// members, durably; refused (TOPIC_IN_USE) while it has live members unless
    /// `force`.
    pub fn delete_group(
        &self,
        group: &str,
        force: bool,
    ) -> Result<keel_protocol::GroupDeleted, ClientError> {
        let request = Request::DeleteGroup {
            group: group.to_string(),
            force,
        };
        match self.call(request)? {
            Response::GroupDeleted(deleted) => Ok(deleted),
            other => Err(unexpected(&other, "DELETE_GROUP")),
        }
    }

    /// A consumer group's settings (`ordered: None`), or sets them durably (on the
    /// master; they reach its slaves with the committed offsets).
    pub fn group_settings(
        &self,
        group: &str,
        ordered: Option<bool>,
    ) -> Result<keel_protocol::GroupSettings, ClientError> {
        let request = Request::GroupSettings {
            group: group.to_string(),
            ordered,
        };
        match self.call(request)? {
            Response::GroupSettings(settings) => Ok(settings),
            other => Err(unexpected(&other, "GROUP_SETTINGS")),
        }
    }

    /// The broker's open transactions (of `producer_group`, or of every group for
    /// `None`), oldest first, at most 10,000.
    pub fn list_transactions(
        &self,
        producer_group: Option<&str>,
    ) -> Result<Vec<keel_protocol::OpenTransaction>, ClientError> {
        let request = Request::ListTransactions {
            producer_group: producer_group.unwrap_or_default().to_string(),
        };
        match self.call(request)? {
            Response::Transactions(open) => Ok(open),
            other => Err(unexpected(&other, "LIST_TRANSACTIONS")),
        }
    }

    /// Commits or rolls back a transaction (an operator's end, or a producer's).
    /// `OutcomeUnknown` when the broker could not make the end durable in time (it may
    /// or may not have ended: ask again, an end that happened is answered `already`).
    pub fn end_transaction(
        &self,
        request: keel_protocol::EndTransactionRequest,
    ) -> Result<keel_protocol::TransactionEnded, ClientError> {
        match self.call(Request::EndTransaction(request)) {
            Ok(Response::TransactionEnded(ended)) => Ok(ended),
            Ok(other) => Err(unexpected(&other, "END_TRANSACTION")),
            Err(error) => Err(crate::transaction::end_error(error)),
        }
    }

    /// Each queue's range and size, and what each topic took in over the broker's last
    /// minute (`topic`, or every topic when `None`).
    pub fn topic_stats(
        &self,
        topic: Option<&str>,
    ) -> Result<Vec<keel_protocol::TopicStats>, ClientError> {
        match self.call(Request::TopicStats(topic.unwrap_or_default().to_string()))? {
            Response::TopicStats(topics) => Ok(topics),
            other => Err(unexpected(&other, "TOPIC_STATS")),
        }
    }

    /// The first queue offset stored at or after `timestamp_ms` (the queue's end when
    /// none was).
    pub fn offset_for_time(
        &self,
        topic: &str,
        queue_id: u32,
        timestamp_ms: u64,
    ) -> Result<u64, ClientError> {
        let request = Request::OffsetForTime(keel_protocol::OffsetForTimeRequest {
            topic: topic.into(),
            queue_id,
            timestamp_ms,
        });
        match self.call(request)? {
            Response::Offset(Some(offset)) => Ok(offset),
            other => Err(unexpected(&other, "OFFSET_FOR_TIME")),
        }
    }

    /// Sets the offset of `group` for a queue (durable when this returns).
    pub fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        offset: u64,
    ) -> Result<(), ClientError> {
        let request = Request::CommitOffset(CommitOffsetRequest {
            group: group.into(),
            topic: topic.into(),
            queue_id,
            offset,
        });
        match self.call(request)? {
            Response::CommitOffsetOk => Ok(()),
            other => Err(unexpected(&other, "COMMIT_OFFSET")),
        }
    }

    pub fn stats(&self) -> Result<Vec<(String, u64)>, ClientError> {
        match self.call(Request::Stats)? {
            Response::Stats(stats) => Ok(stats),
            other => Err(unexpected(&other, "STATS")),
        }
    }
}

impl Admin {
    /// Where a message is (by id, or the newest with `key` when given): stored,
    /// flushed, replicated, consumed by which groups, retried, dead-lettered.
    pub fn message_info(
        &self,
        msg_id: u64,
        key: Option<&str>,
    ) -> Result<Vec<(String, String)>, ClientError> {
        let request = Request::MessageInfo {
            msg_id,
            key: key.unwrap_or_default().to_string(),
        };
        match self.call(request)? {
            Response::Info(info) => Ok(info),
            other => Err(unexpected(&other, "MESSAGE_INFO")),
        }
    }

    /// Sends a message back to `group` through SEND_BACK (as a consumer does with a
    /// failed one). `reconsume_times` 0 delivers it to the group's retry topic at once
    /// (a redrive).
    pub fn send_back(
        &self,
        request: keel_protocol::SendBackRequest,
    ) -> Result<keel_protocol::SendResult, ClientError> {
        match self.call(Request::SendBack(request))? {
            Response::SendResult(result) => Ok(result),
            other => Err(unexpected(&other, "SEND_BACK")),
        }
    }

    /// Every record of `topic` from each queue's start (at most `limit`); none when the
    /// topic does not exist.
    pub fn read_topic(
        &self,
        topic: &str,
        limit: u64,
    ) -> Result<Vec<keel_protocol::Record>, ClientError> {
        let topics = match self.list_topics(Some(topic)) {
            Ok(topics) => topics,
            Err(ClientError::Broker(error))
                if error.code == keel_protocol::ErrorCode::TopicNotFound =>
            {
                return Ok(Vec::new())
            }
            Err(error) => return Err(error),
        };
        let mut records = Vec::new();
        for info in topics {
            for (queue_id, queue) in info.queues.iter().enumerate() {
                let mut offset = queue.min_offset;
                while offset < queue.max_offset && (records.len() as u64) < limit {
                    let pull = Request::Pull(keel_protocol::PullRequest {
                        group: String::new(),
                        topic: topic.to_string(),
                        queue_id: queue_id as u32,
                        queue_offset: offset,
                        max_messages: 256,
                        max_bytes: 4 << 20,
                        wait_ms: 0,
                    });
                    let result = match self.call(pull)? {
                        Response::PullResult(result) => result,
                        other => return Err(unexpected(&other, "PULL")),
                    };
                    let batch = result
                        .decode_records()
                        .map_err(|error| ClientError::Protocol(error.to_string()))?;
                    if batch.is_empty() {
                        break;
                    }
                    offset = result.next_offset;
                    records.extend(batch);
                }
            }
        }
        records.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(records)
    }

    /// A PULL of one record of a queue at `queue_offset`.
    fn pull_one(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
    ) -> Result<keel_protocol::PullResult, ClientError> {
        let pull = Request::Pull(keel_protocol::PullRequest {
            group: String::new(),
            topic: topic.to_string(),
            queue_id,
            queue_offset,
            max_messages: 1,
            max_bytes: 1,
            wait_ms: 0,
        });
        match self.call(pull)? {
            Response::PullResult(result) => Ok(result),
            other => Err(unexpected(&other, "PULL")),
        }
    }

    /// The record at `queue_offset` of a queue, if it is stored (and durable).
    pub fn record_at(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
    ) -> Result<Option<keel_protocol::Record>, ClientError> {
        let records = self
            .pull_one(topic, queue_id, queue_offset)?
            .decode_records()
            .map_err(|error| ClientError::Protocol(error.to_string()))?;
        Ok(records
            .into_iter()
            .next()
            .filter(|record| record.queue_offset == queue_offset))
    }

    /// The store time of the message at `queue_offset` of a queue (the first one still
    /// stored when retention removed it), or `None` when there is none yet.
    pub fn store_time_at(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
    ) -> Result<Option<u64>, ClientError> {
        let mut result = self.pull_one(topic, queue_id, queue_offset)?;
        if result.status == keel_protocol::PullStatus::OffsetExpired {
            result = self.pull_one(topic, queue_id, result.min_offset)?;
        }
        let records = result
            .decode_records()
            .map_err(|error| ClientError::Protocol(error.to_string()))?;
        Ok(records.first().map(|record| record.store_timestamp_ms))
    }

    /// A group's dead-lettered messages, oldest first.
    pub fn dlq_messages(
        &self,
        group: &str,
        limit: u64,
    ) -> Result<Vec<keel_protocol::Record>, ClientError> {
        self.read_topic(&keel_protocol::dlq_topic(group), limit)
    }

    /// (messages in the group's dead-letter queue, how many were redriven).
    pub fn dlq_count(&self, group: &str) -> Result<(u64, u64), ClientError> {
        let topic = keel_protocol::dlq_topic(group);
        let count = match self.list_topics(Some(&topic)) {
            Ok(topics) => topics
                .iter()
                .flat_map(|info| info.queues.iter())
                .map(|queue| queue.max_offset - queue.min_offset)
                .sum(),
            Err(ClientError::Broker(error))
                if error.code == keel_protocol::ErrorCode::TopicNotFound =>
            {
                0
            }
            Err(error) => return Err(error),
        };
        let redriven = self
            .query_offset(&redrive_group(group), &topic, 0)?
            .unwrap_or(0);
        Ok((count, redriven))
    }

    /// Delivers dead-lettered messages to the group again, through its retry topic (so
    /// only that group sees them) with the attempt count reset: the ones not redriven
    /// yet, or only message `only` (a DLQ message id). Returns (DLQ id, new id) pairs.
    pub fn redrive_dlq(
        &self,
        group: &str,
        only: Option<&str>,
    ) -> Result<Vec<(String, String)>, ClientError> {
        let topic = keel_protocol::dlq_topic(group);
        let done_group = redrive_group(group);
        let from = self.query_offset(&done_group, &topic, 0)?.unwrap_or(0);
        use keel_protocol::names::property as names;
        let property = |record: &keel_protocol::Record, name: &str| {
            record.property(name).unwrap_or_default().to_string()
        };
        let mut redriven = Vec::new();
        for record in self.read_topic(&topic, u64::MAX)? {
            let selected = match only {
                Some(id) => record.message_id().eq_ignore_ascii_case(id),
                None => record.queue_offset >= from,
            };
            if !selected {
                continue;
            }
            let origin_topic = property(&record, names::ORIGIN_TOPIC);
            let origin = u64::from_str_radix(&property(&record, names::ORIGIN_MSG_ID), 16)
                .unwrap_or(record.log_offset);
            let mut message = record.to_message();
            message.topic = origin_topic.clone();
            message.seal();
            let result = self.send_back(keel_protocol::SendBackRequest {
                group: group.to_string(),
                reconsume_times: 0,
                max_reconsume_times: 0,
                reason: "redriven from the dead-letter queue".into(),
                origin_topic,
                origin_msg_id: origin,
                message,
            })?;
            if result.status != keel_protocol::SendStatus::SendOk {
                return Err(ClientError::InvalidArgument(format!(
                    "redriving {} was answered {}; stopped (it may be stored)",
                    record.message_id(),
                    result.status
                )));
            }
            if only.is_none() {
                self.commit_offset(&done_group, &topic, 0, record.queue_offset + 1)?;
            }
            redriven.push((record.message_id(), result.message_id()));
        }
        Ok(redriven)
    }

    /// Promotes the slave this admin is connected to into a master with `role`
    /// (async_master, sync_master or master). Returns its new epoch and log end. The
    /// slave refuses while it is still connected to a live master.
    pub fn promote(&self, role: keel_protocol::BrokerRole) -> Result<(u64, u64), ClientError> {
        self.promote_with(role, false)
    }

    /// `promote`, also while the master is alive (`force`): the old master keeps taking
    /// sends until a name server fences it, and what it stores meanwhile that the slave
    /// never received is cut when it rejoins as a slave.
    pub fn force_promote(
        &self,
        role: keel_protocol::BrokerRole,
    ) -> Result<(u64, u64), ClientError> {
        self.promote_with(role, true)
    }

    fn promote_with(
        &self,
        role: keel_protocol::BrokerRole,
        force: bool,
    ) -> Result<(u64, u64), ClientError> {
        match self.call(Request::Promote { role, force })? {
            Response::Promoted { epoch, log_end } => Ok((epoch, log_end)),
            other => Err(unexpected(&other, "PROMOTE")),
        }
    }
}

pub(crate) fn unexpected(response: &Response, request: &str) -> ClientError {
    ClientError::Protocol(format!("{} in reply to {request}", response.kind().name()))
}

/// The group under which redrives of `group`'s dead-letter queue remember their position.
fn redrive_group(group: &str) -> String {
    format!("%REDRIVE%{group}")
}
