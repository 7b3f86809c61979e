//! Response frames (kinds at or above 0x80), sent by the broker with the request's id.

use crate::frame::{begin_frame, end_frame, Kind, RawFrame};
use crate::wire::{put_bytes32, put_str16, Reader};
use crate::{decode_record, BrokerRole, DecodeError, ErrorCode, PullStatus, Record, SendStatus};
use bytes::{BufMut, Bytes};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    pub status: SendStatus,
    pub queue_id: u32,
    pub queue_offset: u64,
    /// CommitLog offset of the record; also its message id.
    pub log_offset: u64,
}

impl SendResult {
    pub fn message_id(&self) -> String {
        crate::message_id(self.log_offset)
    }
}

/// Where each message of a SEND_BATCH went, and how durable the whole batch is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendBatchResult {
    pub status: SendStatus,
    /// One (queue_id, queue_offset, log_offset) per message, in order.
    pub messages: Vec<(u32, u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullResult {
    pub status: PullStatus,
    /// The queue offset to pull next.
    pub next_offset: u64,
    /// The first queue offset still stored.
    pub min_offset: u64,
    /// One past the last durable queue offset.
    pub max_offset: u64,
    pub record_count: u32,
    /// `record_count` stored records, back to back, exactly as in the CommitLog.
    pub records: Bytes,
}

impl PullResult {
    /// Decodes and verifies (record CRC) every record in the result.
    pub fn decode_records(&self) -> Result<Vec<Record>, DecodeError> {
        let mut records = Vec::with_capacity(
            (self.record_count as usize).min(self.records.len() / crate::RECORD_FIXED_LEN),
        );
        let mut position = 0usize;
        for _ in 0..self.record_count {
            let rest = self.records.get(position..).unwrap_or_default();
            let record = decode_record(rest)?;
            position = position.saturating_add(record.total_size as usize);
            records.push(record);
        }
        if position != self.records.len() {
            return Err(DecodeError::TrailingBytes {
                kind: "PULL_RESULT",
                count: self.records.len().saturating_sub(position),
            });
        }
        Ok(records)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicCreated {
    pub topic: String,
    pub queues: u32,
    /// False when the topic already existed (its queue count is unchanged).
    pub created: bool,
}

/// GROUP_DELETED: what deleting a consumer group removed (durable before the answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDeleted {
    pub group: String,
    /// Committed offsets removed (one per topic and queue).
    pub offsets: u32,
    /// Live members forgotten (only with `force`).
    pub members: u32,
}

/// GROUP_SETTINGS_RESULT: a consumer group's settings (after the change, durable, when
/// the request set them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupSettings {
    pub group: String,
    /// Members consume each queue in order, one message of a message group at a time.
    pub ordered: bool,
}

/// TRANSACTION_ENDED: how a transaction ended (durable, on a slave too for a sync
/// master). `already`: it had ended so before this request (a retry, or the broker's
/// own resolution).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionEnded {
    pub transaction_id: u64,
    pub outcome: crate::TxAction,
    pub already: bool,
}

/// One entry of TRANSACTION_CHECKS: an open transaction the producer should check and
/// end, its `check`-th check (from 1), and the message as the producer sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionCheck {
    pub transaction_id: u64,
    pub check: u32,
    pub message: crate::Message,
}

/// One entry of TRANSACTIONS: an open transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpenTransaction {
    pub transaction_id: u64,
    pub producer_group: String,
    pub topic: String,
    /// When its half message was stored (ms since the epoch).
    pub stored_ms: u64,
    /// Checks asked of its producer group so far.
    pub checks: u32,
    /// When the next check is due (or, after the last one, when the broker resolves
    /// it as configured).
    pub next_check_ms: u64,
}

/// TOPIC_DELETED: what a deletion removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDeleted {
    pub topic: String,
    pub queues: u32,
    /// Messages the topic held.
    pub messages: u64,
    /// Bytes of the log they take (freed as retention deletes their segments).
    pub bytes: u64,
    /// True: the deletion is durable (and replicated as the broker's role requires).
    /// False: it is in effect on this broker but was not confirmed durable in time: it
    /// holds once its record is on disk; should the broker stop first, the log decides
    /// at the restart (outcome unknown).
    pub durable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueInfo {
    pub min_offset: u64,
    /// One past the last durable queue offset.
    pub max_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub topic: String,
    pub queues: Vec<QueueInfo>,
}

/// GROUP_LIST: one (group, topic) a broker knows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupInfo {
    pub group: String,
    pub topic: String,
    /// Live members (heartbeating), 0 for a group that only committed offsets.
    pub members: u32,
    /// (queue id, committed offset, the queue's end) for each queue with a commit.
    pub queues: Vec<(u32, u64, u64)>,
}

/// TOPIC_STATS_RESULT: one topic's queues with their size, and how many messages and
/// bytes it took in over the broker's recent window.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicStats {
    pub topic: String,
    /// The window the counts below cover, in milliseconds (up to 60 000; shorter just
    /// after the broker started).
    pub window_ms: u32,
    /// Messages appended to the topic within the window.
    pub window_messages: u64,
    /// Bytes of the log those messages take.
    pub window_bytes: u64,
    pub queues: Vec<QueueStats>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub min_offset: u64,
    pub max_offset: u64,
    /// Bytes of the log the queue's stored records take.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// One broker in a name server's ROUTES answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerRoute {
    pub broker_name: String,
    pub broker_id: u32,
    pub role: BrokerRole,
    pub epoch: u64,
    pub address: String,
    pub ha_address: String,
    /// Queue count of the asked topic on this broker (0: it does not have the topic).
    pub topic_queues: u32,
}

/// One broker in a name server's BROKERS answer: its registration and liveness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerLiveness {
    pub broker_name: String,
    pub broker_id: u32,
    pub role: BrokerRole,
    pub epoch: u64,
    pub address: String,
    pub ha_address: String,
    /// Milliseconds since its last registration reached the name server.
    pub since_heard_ms: u64,
    /// Milliseconds between its last two registrations (0: heard once so far).
    pub interval_ms: u64,
    /// Milliseconds since the name server first heard from it (its age there).
    pub known_for_ms: u64,
    /// Topics it registered.
    pub topic_count: u32,
    /// False when a newer master of its broker name is known: it is not routed to.
    pub routed: bool,
}

impl BrokerLiveness {
    /// Whether the broker is late with its registrations: by more than two of its own
    /// intervals (and a second of slack), or by a quarter of the name server's
    /// `broker_timeout_ms` when it registered only once. A stale broker is paused, cut
    /// off or gone; the name server drops it after the timeout.
    pub fn is_stale(&self, broker_timeout_ms: u64) -> bool {
        let expected = match self.interval_ms {
            0 => broker_timeout_ms / 4,
            interval => interval.saturating_mul(2).saturating_add(1000),
        };
        self.since_heard_ms > expected
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Pong,
    SendResult(SendResult),
    PullResult(PullResult),
    CommitOffsetOk,
    /// The committed offset of a group, or `None` when it never committed one.
    Offset(Option<u64>),
    TopicCreated(TopicCreated),
    TopicList(Vec<TopicInfo>),
    Stats(Vec<(String, u64)>),
    SendBatchResult(SendBatchResult),
    /// A slave became master: its new epoch and where its log ends.
    Promoted {
        epoch: u64,
        log_end: u64,
    },
    Registered,
    Routes(Vec<BrokerRoute>),
    Assignment(Assignment),
    /// Named facts (MESSAGE_INFO): each a name and a text value, in order.
    Info(Vec<(String, String)>),
    /// LOGIN succeeded: the principal the connection now acts as.
    LoginOk(String),
    /// SECURITY_ADMIN's answer: JSON (see docs/PROTOCOL.md).
    SecurityResult(crate::SecretText),
    GroupList(Vec<GroupInfo>),
    TopicStats(Vec<TopicStats>),
    TopicDeleted(TopicDeleted),
    GroupDeleted(GroupDeleted),
    GroupSettings(GroupSettings),
    TransactionEnded(TransactionEnded),
    TransactionChecks(Vec<TransactionCheck>),
    Transactions(Vec<OpenTransaction>),
    /// BROKERS: the name server's broker timeout (ms) and every broker it knows.
    Brokers {
        broker_timeout_ms: u64,
        brokers: Vec<BrokerLiveness>,
    },
    Error(ErrorResponse),
}

/// ASSIGNMENT: the queues a group member may consume now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assignment {
    /// Changes whenever the group's membership changes.
    pub generation: u64,
    /// Queues of the topic on this broker.
    pub queue_count: u32,
    /// Live members of the group for this topic.
    pub members: u32,
    pub queues: Vec<u32>,
}

impl Response {
    pub fn kind(&self) -> Kind {
        match self {
            Response::Pong => Kind::Pong,
            Response::SendResult(_) => Kind::SendResult,
            Response::PullResult(_) => Kind::PullResult,
            Response::CommitOffsetOk => Kind::CommitOffsetOk,
            Response::Offset(_) => Kind::Offset,
            Response::TopicCreated(_) => Kind::TopicCreated,
            Response::TopicList(_) => Kind::TopicList,
            Response::Stats(_) => Kind::StatsResult,
            Response::SendBatchResult(_) => Kind::SendBatchResult,
            Response::Promoted { .. } => Kind::Promoted,
            Response::Registered => Kind::Registered,
            Response::Routes(_) => Kind::Routes,
            Response::Assignment(_) => Kind::Assignment,
            Response::Info(_) => Kind::Info,
            Response::LoginOk(_) => Kind::LoginOk,
            Response::SecurityResult(_) => Kind::SecurityResult,
            Response::GroupList(_) => Kind::GroupList,
            Response::TopicStats(_) => Kind::TopicStatsResult,
            Response::Brokers { .. } => Kind::Brokers,
            Response::TopicDeleted(_) => Kind::TopicDeleted,
            Response::GroupDeleted(_) => Kind::GroupDeleted,
            Response::GroupSettings(_) => Kind::GroupSettingsResult,
            Response::TransactionEnded(_) => Kind::TransactionEnded,
            Response::TransactionChecks(_) => Kind::TransactionChecks,
            Response::Transactions(_) => Kind::Transactions,
            Response::Error(_) => Kind::Error,
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error(ErrorResponse {
            code,
            message: message.into(),
        })
    }

    /// Appends this response as a whole frame.
    pub fn encode(&self, request_id: u64, out: &mut Vec<u8>) {
        let start = begin_frame(out, self.kind(), 0, request_id);
        match self {
            Response::Pong | Response::CommitOffsetOk | Response::Registered => {}
            Response::Promoted { epoch, log_end } => {
                out.put_u64_le(*epoch);
                out.put_u64_le(*log_end);
            }
            Response::Assignment(assignment) => {
                out.put_u64_le(assignment.generation);
                out.put_u32_le(assignment.queue_count);
                out.put_u32_le(assignment.members);
                out.put_u32_le(u32::try_from(assignment.queues.len()).unwrap_or(u32::MAX));
                for queue in &assignment.queues {
                    out.put_u32_le(*queue);
                }
            }
            Response::LoginOk(principal) => put_str16(out, principal),
            Response::SecurityResult(json) => put_bytes32(out, json.0.as_bytes()),
            Response::Brokers {
                broker_timeout_ms,
                brokers,
            } => {
                out.put_u64_le(*broker_timeout_ms);
                out.put_u32_le(u32::try_from(brokers.len()).unwrap_or(u32::MAX));
                for broker in brokers {
                    put_str16(out, &broker.broker_name);
                    out.put_u32_le(broker.broker_id);
                    out.put_u8(broker.role as u8);
                    out.put_u64_le(broker.epoch);
                    put_str16(out, &broker.address);
                    put_str16(out, &broker.ha_address);
                    out.put_u64_le(broker.since_heard_ms);
                    out.put_u64_le(broker.interval_ms);
                    out.put_u64_le(broker.known_for_ms);
                    out.put_u32_le(broker.topic_count);
                    out.put_u8(u8::from(broker.routed));
                }
            }
            Response::TopicStats(topics) => {
                out.put_u32_le(u32::try_from(topics.len()).unwrap_or(u32::MAX));
                for topic in topics {
                    put_str16(out, &topic.topic);
                    out.put_u32_le(topic.window_ms);
                    out.put_u64_le(topic.window_messages);
                    out.put_u64_le(topic.window_bytes);
                    out.put_u32_le(u32::try_from(topic.queues.len()).unwrap_or(u32::MAX));
                    for queue in &topic.queues {
                        out.put_u64_le(queue.min_offset);
                        out.put_u64_le(queue.max_offset);
                        out.put_u64_le(queue.bytes);
                    }
                }
            }
            Response::GroupList(groups) => {
                out.put_u32_le(u32::try_from(groups.len()).unwrap_or(u32::MAX));
                for group in groups {
                    put_str16(out, &group.group);
                    put_str16(out, &group.topic);
                    out.put_u32_le(group.members);
                    out.put_u32_le(u32::try_from(group.queues.len()).unwrap_or(u32::MAX));
                    for (queue, committed, end) in &group.queues {
                        out.put_u32_le(*queue);
                        out.put_u64_le(*committed);
                        out.put_u64_le(*end);
                    }
                }
            }
            Response::Info(entries) => {
                let count = u16::try_from(entries.len()).unwrap_or(u16::MAX);
                out.put_u16_le(count);
                for (name, value) in entries.iter().take(usize::from(count)) {
                    put_str16(out, name);
                    put_str16(out, value);
                }
            }
            Response::Routes(routes) => {
                out.put_u32_le(u32::try_from(routes.len()).unwrap_or(u32::MAX));
                for route in routes {
                    put_str16(out, &route.broker_name);
                    out.put_u32_le(route.broker_id);
                    out.put_u8(route.role as u8);
                    out.put_u64_le(route.epoch);
                    put_str16(out, &route.address);
                    put_str16(out, &route.ha_address);
                    out.put_u32_le(route.topic_queues);
                }
            }
            Response::SendResult(result) => {
                out.put_u16_le(result.status as u16);
                out.put_u32_le(result.queue_id);
                out.put_u64_le(result.queue_offset);
                out.put_u64_le(result.log_offset);
            }
            Response::PullResult(pull) => {
                encode_pull_header(out, pull);
                out.put_slice(&pull.records);
            }
            Response::Offset(offset) => {
                out.put_u8(u8::from(offset.is_some()));
                out.put_u64_le(offset.unwrap_or(0));
            }
            Response::TopicCreated(created) => {
                put_str16(out, &created.topic);
                out.put_u32_le(created.queues);
                out.put_u8(u8::from(created.created));
            }
            Response::GroupDeleted(deleted) => {
                put_str16(out, &deleted.group);
                out.put_u32_le(deleted.offsets);
                out.put_u32_le(deleted.members);
            }
            Response::TransactionEnded(ended) => {
                out.put_u64_le(ended.transaction_id);
                out.put_u8(ended.outcome as u8);
                out.put_u8(u8::from(ended.already));
            }
            Response::TransactionChecks(checks) => {
                out.put_u16_le(u16::try_from(checks.len()).unwrap_or(u16::MAX));
                for check in checks.iter().take(usize::from(u16::MAX)) {
                    out.put_u64_le(check.transaction_id);
                    out.put_u32_le(check.check);
                    let mut body = Vec::new();
                    check.message.encode_body(&mut body);
                    out.put_u32_le(u32::try_from(body.len()).unwrap_or(u32::MAX));
                    out.put_slice(&body);
                }
            }
            Response::Transactions(open) => {
                out.put_u32_le(u32::try_from(open.len()).unwrap_or(u32::MAX));
                for tx in open {
                    out.put_u64_le(tx.transaction_id);
                    put_str16(out, &tx.producer_group);
                    put_str16(out, &tx.topic);
                    out.put_u64_le(tx.stored_ms);
                    out.put_u32_le(tx.checks);
                    out.put_u64_le(tx.next_check_ms);
                }
            }
            Response::GroupSettings(settings) => {
                put_str16(out, &settings.group);
                out.put_u8(u8::from(settings.ordered));
            }
            Response::TopicDeleted(deleted) => {
                put_str16(out, &deleted.topic);
                out.put_u32_le(deleted.queues);
                out.put_u64_le(deleted.messages);
                out.put_u64_le(deleted.bytes);
                out.put_u8(u8::from(deleted.durable));
            }
            Response::TopicList(topics) => {
                out.put_u32_le(u32::try_from(topics.len()).unwrap_or(u32::MAX));
                for topic in topics {
                    put_str16(out, &topic.topic);
                    out.put_u32_le(u32::try_from(topic.queues.len()).unwrap_or(u32::MAX));
                    for queue in &topic.queues {
                        out.put_u64_le(queue.min_offset);
                        out.put_u64_le(queue.max_offset);
                    }
                }
            }
            Response::Stats(entries) => {
                let count = u16::try_from(entries.len()).unwrap_or(u16::MAX);
                out.put_u16_le(count);
                for (name, value) in entries.iter().take(usize::from(count)) {
                    put_str16(out, name);
                    out.put_u64_le(*value);
                }
            }
            Response::SendBatchResult(batch) => {
                out.put_u16_le(batch.status as u16);
                let count = u16::try_from(batch.messages.len()).unwrap_or(u16::MAX);
                out.put_u16_le(count);
                for (queue_id, queue_offset, log_offset) in
                    batch.messages.iter().take(usize::from(count))
                {
                    out.put_u32_le(*queue_id);
                    out.put_u64_le(*queue_offset);
                    out.put_u64_le(*log_offset);
                }
            }
            Response::Error(error) => {
                out.put_u16_le(error.code as u16);
                put_str16(out, &error.message);
            }
        }
        end_frame(out, start);
    }

    /// Decodes the body of a response frame. A request kind is `UnknownKind` here.
    pub fn decode(frame: &RawFrame) -> Result<Response, DecodeError> {
        let mut reader = Reader::new(&frame.body);
        let response = match frame.kind {
            Kind::Pong => Response::Pong,
            Kind::CommitOffsetOk => Response::CommitOffsetOk,
            Kind::Registered => Response::Registered,
            Kind::Promoted => Response::Promoted {
                epoch: reader.u64("epoch")?,
                log_end: reader.u64("log_end")?,
            },
            Kind::Assignment => {
                let generation = reader.u64("generation")?;
                let queue_count = reader.u32("queue_count")?;
                let members = reader.u32("members")?;
                let queues = reader.u32_list("assigned_count", "queue_id")?;
                Response::Assignment(Assignment {
                    generation,
                    queue_count,
                    members,
                    queues,
                })
            }
            Kind::LoginOk => Response::LoginOk(reader.str16("principal")?),
            Kind::Brokers => {
                let broker_timeout_ms = reader.u64("broker_timeout_ms")?;
                let count = reader.u32("broker_count")?;
                // Each broker takes at least 50 bytes: bounded before allocating.
                let mut brokers = Vec::with_capacity((count as usize).min(reader.remaining() / 50));
                for _ in 0..count {
                    brokers.push(BrokerLiveness {
                        broker_name: reader.str16("broker_name")?,
                        broker_id: reader.u32("broker_id")?,
                        role: crate::request::decode_role(&mut reader)?,
                        epoch: reader.u64("epoch")?,
                        address: reader.str16("address")?,
                        ha_address: reader.str16("ha_address")?,
                        since_heard_ms: reader.u64("since_heard_ms")?,
                        interval_ms: reader.u64("interval_ms")?,
                        known_for_ms: reader.u64("known_for_ms")?,
                        topic_count: reader.u32("topic_count")?,
                        routed: match reader.u8("routed")? {
                            0 => false,
                            1 => true,
                            other => {
                                return Err(DecodeError::InvalidValue {
                                    field: "routed",
                                    value: u64::from(other),
                                })
                            }
                        },
                    });
                }
                Response::Brokers {
                    broker_timeout_ms,
                    brokers,
                }
            }
            Kind::TopicStatsResult => {
                let count = reader.u32("topic_count")?;
                // Each topic takes at least 26 bytes, each queue 24: bounded before
                // allocating.
                let mut topics = Vec::with_capacity((count as usize).min(reader.remaining() / 26));
                for _ in 0..count {
                    let topic = reader.str16("topic")?;
                    let window_ms = reader.u32("window_ms")?;
                    let window_messages = reader.u64("window_messages")?;
                    let window_bytes = reader.u64("window_bytes")?;
                    let queue_count = reader.u32("queue_count")?;
                    let mut queues =
                        Vec::with_capacity((queue_count as usize).min(reader.remaining() / 24));
                    for _ in 0..queue_count {
                        queues.push(QueueStats {
                            min_offset: reader.u64("min_offset")?,
                            max_offset: reader.u64("max_offset")?,
                            bytes: reader.u64("bytes")?,
                        });
                    }
                    topics.push(TopicStats {
                        topic,
                        window_ms,
                        window_messages,
                        window_bytes,
                        queues,
                    });
                }
                Response::TopicStats(topics)
            }
            Kind::GroupList => {
                let count = reader.u32("group_count")?;
                // Each group takes at least 12 bytes, each queue 20: bounded before
                // allocating.
                let mut groups = Vec::with_capacity((count as usize).min(reader.remaining() / 12));
                for _ in 0..count {
                    let group = reader.str16("group")?;
                    let topic = reader.str16("topic")?;
                    let members = reader.u32("members")?;
                    let queue_count = reader.u32("queue_count")?;
                    let mut queues =
                        Vec::with_capacity((queue_count as usize).min(reader.remaining() / 20));
                    for _ in 0..queue_count {
                        queues.push((
                            reader.u32("queue_id")?,
                            reader.u64("committed")?,
                            reader.u64("end")?,
                        ));
                    }
                    groups.push(GroupInfo {
                        group,
                        topic,
                        members,
                        queues,
                    });
                }
                Response::GroupList(groups)
            }
            Kind::SecurityResult => {
                let bytes = reader.bytes32("result")?;
                let json = std::str::from_utf8(bytes)
                    .map_err(|_| DecodeError::InvalidUtf8 { field: "result" })?;
                Response::SecurityResult(crate::SecretText(json.to_string()))
            }
            Kind::Info => {
                let count = reader.u16("info_count")?;
                let mut entries =
                    Vec::with_capacity(usize::from(count).min(reader.remaining() / 4));
                for _ in 0..count {
                    let name = reader.str16("info_name")?;
                    entries.push((name, reader.str16("info_value")?));
                }
                Response::Info(entries)
            }
            Kind::Routes => {
                let count = reader.u32("broker_count")?;
                // Each route takes at least 27 bytes: bounded before allocating.
                let mut routes = Vec::with_capacity((count as usize).min(reader.remaining() / 27));
                for _ in 0..count {
                    routes.push(BrokerRoute {
                        broker_name: reader.str16("broker_name")?,
                        broker_id: reader.u32("broker_id")?,
                        role: crate::request::decode_role(&mut reader)?,
                        epoch: reader.u64("epoch")?,
                        address: reader.str16("address")?,
                        ha_address: reader.str16("ha_address")?,
                        topic_queues: reader.u32("topic_queues")?,
                    });
                }
                Response::Routes(routes)
            }
            Kind::SendResult => {
                let status = reader.u16("status")?;
                let status = SendStatus::from_u16(status).ok_or(DecodeError::InvalidValue {
                    field: "status",
                    value: u64::from(status),
                })?;
                Response::SendResult(SendResult {
                    status,
                    queue_id: reader.u32("queue_id")?,
                    queue_offset: reader.u64("queue_offset")?,
                    log_offset: reader.u64("log_offset")?,
                })
            }
            Kind::PullResult => {
                let status = reader.u8("status")?;
                let status = PullStatus::from_u8(status).ok_or(DecodeError::InvalidValue {
                    field: "status",
                    value: u64::from(status),
                })?;
                let next_offset = reader.u64("next_offset")?;
                let min_offset = reader.u64("min_offset")?;
                let max_offset = reader.u64("max_offset")?;
                let record_count = reader.u32("record_count")?;
                let start = reader.position();
                let records = frame.body.slice(start.min(frame.body.len())..);
                return Ok(Response::PullResult(PullResult {
                    status,
                    next_offset,
                    min_offset,
                    max_offset,
                    record_count,
                    records,
                }));
            }
            Kind::Offset => {
                let found = reader.u8("found")?;
                let offset = reader.u64("offset")?;
                match found {
                    0 => Response::Offset(None),
                    1 => Response::Offset(Some(offset)),
                    other => {
                        return Err(DecodeError::InvalidValue {
                            field: "found",
                            value: u64::from(other),
                        })
                    }
                }
            }
            Kind::TopicCreated => Response::TopicCreated(TopicCreated {
                topic: reader.str16("topic")?,
                queues: reader.u32("queues")?,
                created: reader.u8("created")? != 0,
            }),
            Kind::GroupDeleted => Response::GroupDeleted(GroupDeleted {
                group: reader.str16("group")?,
                offsets: reader.u32("offsets")?,
                members: reader.u32("members")?,
            }),
            Kind::TransactionEnded => Response::TransactionEnded(TransactionEnded {
                transaction_id: reader.u64("transaction_id")?,
                outcome: crate::request::decode_tx_action(&mut reader)?,
                already: crate::request::decode_flag(&mut reader, "already")?,
            }),
            Kind::TransactionChecks => {
                let count = reader.u16("count")?;
                // Each entry takes at least 16 bytes: bounded before allocating.
                let mut checks =
                    Vec::with_capacity(usize::from(count).min(reader.remaining() / 16));
                for _ in 0..count {
                    let transaction_id = reader.u64("transaction_id")?;
                    let check = reader.u32("check")?;
                    let body = crate::wire::bytes_of(reader.bytes32("message")?);
                    checks.push(TransactionCheck {
                        transaction_id,
                        check,
                        message: crate::Message::decode_body(&body)?,
                    });
                }
                Response::TransactionChecks(checks)
            }
            Kind::Transactions => {
                let count = reader.u32("count")?;
                // Each entry takes at least 32 bytes: bounded before allocating.
                let mut open = Vec::with_capacity((count as usize).min(reader.remaining() / 32));
                for _ in 0..count {
                    open.push(OpenTransaction {
                        transaction_id: reader.u64("transaction_id")?,
                        producer_group: reader.str16("producer_group")?,
                        topic: reader.str16("topic")?,
                        stored_ms: reader.u64("stored_ms")?,
                        checks: reader.u32("checks")?,
                        next_check_ms: reader.u64("next_check_ms")?,
                    });
                }
                Response::Transactions(open)
            }
            Kind::GroupSettingsResult => Response::GroupSettings(GroupSettings {
                group: reader.str16("group")?,
                ordered: crate::request::decode_flag(&mut reader, "ordered")?,
            }),
            Kind::TopicDeleted => Response::TopicDeleted(TopicDeleted {
                topic: reader.str16("topic")?,
                queues: reader.u32("queues")?,
                messages: reader.u64("messages")?,
                bytes: reader.u64("bytes")?,
                durable: reader.u8("durable")? != 0,
            }),
            Kind::TopicList => Response::TopicList(decode_topic_list(&mut reader)?),
            Kind::StatsResult => {
                let count = reader.u16("stat_count")?;
                let mut entries =
                    Vec::with_capacity(usize::from(count).min(reader.remaining() / 10));
                for _ in 0..count {
                    let name = reader.str16("stat_name")?;
                    entries.push((name, reader.u64("stat_value")?));
                }
                Response::Stats(entries)
            }
            Kind::SendBatchResult => {
                let status = reader.u16("status")?;
                let status = SendStatus::from_u16(status).ok_or(DecodeError::InvalidValue {
                    field: "status",
                    value: u64::from(status),
                })?;
                let count = reader.u16("message_count")?;
                let mut messages =
                    Vec::with_capacity(usize::from(count).min(reader.remaining() / 20));
                for _ in 0..count {
                    messages.push((
                        reader.u32("queue_id")?,
                        reader.u64("queue_offset")?,
                        reader.u64("log_offset")?,
                    ));
                }
                Response::SendBatchResult(SendBatchResult { status, messages })
            }
            Kind::Error => {
                let code = reader.u16("error_code")?;
                let code = ErrorCode::from_u16(code).ok_or(DecodeError::InvalidValue {
                    field: "error_code",
                    value: u64::from(code),
                })?;
                Response::Error(ErrorResponse {
                    code,
                    message: reader.str16("error_message")?,
                })
            }
            other => return Err(DecodeError::UnknownKind(other as u8)),
        };
        reader.finish(frame.kind.name())?;
        Ok(response)
    }
}

/// Appends the fixed part of a PULL_RESULT body (the records follow it).
pub(crate) fn encode_pull_header(out: &mut Vec<u8>, pull: &PullResult) {
    out.put_u8(pull.status as u8);
    out.put_u64_le(pull.next_offset);
    out.put_u64_le(pull.min_offset);
    out.put_u64_le(pull.max_offset);
    out.put_u32_le(pull.record_count);
}

fn decode_topic_list(reader: &mut Reader<'_>) -> Result<Vec<TopicInfo>, DecodeError> {
    let count = reader.u32("topic_count")?;
    let mut topics = Vec::with_capacity((count as usize).min(reader.remaining() / 6));
    for _ in 0..count {
        let topic = reader.str16("topic")?;
        let queue_count = reader.u32("queue_count")?;
        let mut queues = Vec::with_capacity((queue_count as usize).min(reader.remaining() / 16));
        for _ in 0..queue_count {
            queues.push(QueueInfo {
                min_offset: reader.u64("min_offset")?,
                max_offset: reader.u64("max_offset")?,
            });
        }
        topics.push(TopicInfo { topic, queues });
    }
    Ok(topics)
}
