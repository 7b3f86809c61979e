//! Request frames (kinds below 0x80), sent by clients.

use crate::frame::{begin_frame, end_frame, Kind, RawFrame};
use crate::wire::{put_bytes32, put_str16, Reader};
use crate::{BrokerRole, DecodeError, Message};
use bytes::BufMut;

/// PULL: records of one queue from `queue_offset`, waiting up to `wait_ms` for new ones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PullRequest {
    /// Consumer group (informational for now; may be empty).
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub max_messages: u32,
    pub max_bytes: u32,
    /// Long-poll time when nothing is available; 0 answers at once.
    pub wait_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommitOffsetRequest {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    /// The next queue offset the group will consume (everything below is done).
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryOffsetRequest {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateTopicRequest {
    pub topic: String,
    pub queues: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListTopicsRequest {
    /// Only this topic; empty lists every topic.
    pub topic: String,
}

/// REGISTER_BROKER: a broker tells a name server who it is and what it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerRegistration {
    pub broker_name: String,
    pub broker_id: u32,
    pub role: BrokerRole,
    /// The broker's master epoch (a promoted slave's is higher than its old master's).
    pub epoch: u64,
    /// Client address, `host:port`.
    pub address: String,
    /// HA address (`host:port`) slaves connect to; empty for a slave.
    pub ha_address: String,
    /// Topics and their queue counts.
    pub topics: Vec<(String, u32)>,
}

/// HEARTBEAT: a consumer group member says it is alive and which queues it holds; the
/// answer is the queues it may consume.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeartbeatRequest {
    pub group: String,
    pub topic: String,
    pub member_id: String,
    /// Without a heartbeat for this long the member is gone and its queues move.
    pub session_timeout_ms: u32,
    /// Queues the member still holds (consuming, or committing before letting go).
    pub owned: Vec<u32>,
}

/// GROUP_COMMIT: a member commits a queue's offset; refused (NOT_OWNER) unless the
/// group gave that queue to this member.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupCommitRequest {
    pub group: String,
    pub topic: String,
    pub member_id: String,
    pub queue_id: u32,
    pub offset: u64,
}

/// SEND_BACK: a consumer could not handle a message; the broker stores it for the
/// group to consume again later (or dead-letters it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SendBackRequest {
    pub group: String,
    /// Times it was consumed and failed, this one included.
    pub reconsume_times: u32,
    /// Above this it goes to the group's dead-letter topic.
    pub max_reconsume_times: u32,
    pub reason: String,
    /// The topic it was first sent to and its message id there (log offset).
    pub origin_topic: String,
    pub origin_msg_id: u64,
    /// The message itself (its `topic` field is ignored).
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OffsetForTimeRequest {
    pub topic: String,
    pub queue_id: u32,
    pub timestamp_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ping,
    Send(Message),
    Pull(PullRequest),
    CommitOffset(CommitOffsetRequest),
    QueryOffset(QueryOffsetRequest),
    CreateTopic(CreateTopicRequest),
    ListTopics(ListTopicsRequest),
    Stats,
    /// Several messages stored all together or not at all, acknowledged once.
    SendBatch(Vec<Message>),
    /// Promote a slave to the given master role (operator command). Refused while the
    /// slave's master is alive unless `force`.
    Promote {
        role: BrokerRole,
        force: bool,
    },
    RegisterBroker(BrokerRegistration),
    /// Routes for a topic (empty: every broker), asked of a name server.
    GetRoutes(String),
    Heartbeat(HeartbeatRequest),
    GroupCommit(GroupCommitRequest),
    SendBack(SendBackRequest),
    /// The first queue offset stored at or after a time.
    OffsetForTime(OffsetForTimeRequest),
    /// Where a message is: by id (log offset), or by key when `key` is not empty.
    MessageInfo {
        msg_id: u64,
        key: String,
    },
    /// Authenticates the connection (once, first).
    Login(Login),
    /// Users, tokens and permissions: a JSON command (see docs/PROTOCOL.md).
    SecurityAdmin(SecretText),
    /// Consumer groups this broker knows (one group, or every group when empty): their
    /// live members and committed offsets.
    ListGroups(String),
    /// Each queue's range and size and each topic's recent append rate (one topic, or
    /// every topic when empty).
    TopicStats(String),
    /// Grows a topic to `queues` queues (never shrinks it: a queue holds messages).
    AddQueues(CreateTopicRequest),
    /// To a name server: every broker it knows, with when it last heard from each.
    GetBrokers,
    /// Deletes a topic with its messages and its groups' offsets. Refused while the
    /// topic is in use (live consumers, or messages stored in the last minute) unless
    /// `force`.
    DeleteTopic {
        topic: String,
        force: bool,
    },
    /// Deletes a consumer group's committed offsets (on every topic) and forgets its
    /// members. Refused while the group has live members unless `force`.
    DeleteGroup {
        group: String,
        force: bool,
    },
    /// Reads a consumer group's settings (`ordered: None`) or sets them. A group never
    /// set reads as the defaults (not ordered).
    GroupSettings {
        group: String,
        ordered: Option<bool>,
    },
    /// Commits or rolls back a transaction (a half message).
    EndTransaction(EndTransactionRequest),
    /// A transactional producer asks which of its group's open transactions the broker
    /// wants checked (at most `max`, 1 to `CHECKS_MAX`).
    CheckTransactions {
        producer_group: String,
        max: u16,
    },
    /// The open transactions of `producer_group` ("": of every group).
    ListTransactions {
        producer_group: String,
    },
}

/// The most transactions one CHECK_TRANSACTIONS may ask for.
pub const CHECKS_MAX: u16 = 64;

/// What END_TRANSACTION does with a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxAction {
    /// The half message becomes visible in its topic, once.
    Commit = 1,
    /// It never becomes visible (it stays in the log, resolved as rolled back).
    Rollback = 2,
}

impl TxAction {
    pub fn from_u8(value: u8) -> Option<TxAction> {
        match value {
            1 => Some(TxAction::Commit),
            2 => Some(TxAction::Rollback),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TxAction::Commit => "commit",
            TxAction::Rollback => "rollback",
        }
    }
}

pub(crate) fn decode_tx_action(reader: &mut Reader<'_>) -> Result<TxAction, DecodeError> {
    let value = reader.u8("action")?;
    TxAction::from_u8(value).ok_or(DecodeError::InvalidValue {
        field: "action",
        value: u64::from(value),
    })
}

/// END_TRANSACTION: the transaction is the half message's id (its log offset, as its
/// SEND_RESULT gave it), sent by `producer_group` to `topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndTransactionRequest {
    pub producer_group: String,
    pub topic: String,
    pub transaction_id: u64,
    pub action: TxAction,
}

/// Text that may hold a secret (a SECURITY_ADMIN command with a password, a
/// SECURITY_RESULT with a new token): `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretText({} bytes)", self.0.len())
    }
}

/// LOGIN's credentials. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Login {
    Password { user: String, password: String },
    Token(String),
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Login::Password { user, .. } => write!(f, "Password {{ user: {user:?}, .. }}"),
            Login::Token(_) => f.write_str("Token(..)"),
        }
    }
}

/// LOGIN mechanism codes.
pub const LOGIN_PASSWORD: u8 = 1;
pub const LOGIN_TOKEN: u8 = 2;

impl Request {
    pub fn kind(&self) -> Kind {
        match self {
            Request::Ping => Kind::Ping,
            Request::Send(_) => Kind::Send,
            Request::Pull(_) => Kind::Pull,
            Request::CommitOffset(_) => Kind::CommitOffset,
            Request::QueryOffset(_) => Kind::QueryOffset,
            Request::CreateTopic(_) => Kind::CreateTopic,
            Request::ListTopics(_) => Kind::ListTopics,
            Request::Stats => Kind::Stats,
            Request::SendBatch(_) => Kind::SendBatch,
            Request::Promote { .. } => Kind::Promote,
            Request::RegisterBroker(_) => Kind::RegisterBroker,
            Request::GetRoutes(_) => Kind::GetRoutes,
            Request::Heartbeat(_) => Kind::Heartbeat,
            Request::GroupCommit(_) => Kind::GroupCommit,
            Request::SendBack(_) => Kind::SendBack,
            Request::OffsetForTime(_) => Kind::OffsetForTime,
            Request::MessageInfo { .. } => Kind::MessageInfo,
            Request::Login(_) => Kind::Login,
            Request::SecurityAdmin(_) => Kind::SecurityAdmin,
            Request::ListGroups(_) => Kind::ListGroups,
            Request::TopicStats(_) => Kind::TopicStats,
            Request::AddQueues(_) => Kind::AddQueues,
            Request::GetBrokers => Kind::GetBrokers,
            Request::DeleteTopic { .. } => Kind::DeleteTopic,
            Request::DeleteGroup { .. } => Kind::DeleteGroup,
            Request::GroupSettings { .. } => Kind::GroupSettings,
            Request::EndTransaction(_) => Kind::EndTransaction,
            Request::CheckTransactions { .. } => Kind::CheckTransactions,
            Request::ListTransactions { .. } => Kind::ListTransactions,
        }
    }

    /// Appends this request as a whole frame.
    pub fn encode(&self, request_id: u64, flags: u16, out: &mut Vec<u8>) {
        let start = begin_frame(out, self.kind(), flags, request_id);
        match self {
            Request::Ping | Request::Stats | Request::GetBrokers => {}
            Request::Send(message) => message.encode_body(out),
            Request::Pull(pull) => {
                put_str16(out, &pull.group);
                put_str16(out, &pull.topic);
                out.put_u32_le(pull.queue_id);
                out.put_u64_le(pull.queue_offset);
                out.put_u32_le(pull.max_messages);
                out.put_u32_le(pull.max_bytes);
                out.put_u32_le(pull.wait_ms);
            }
            Request::CommitOffset(commit) => {
                put_str16(out, &commit.group);
                put_str16(out, &commit.topic);
                out.put_u32_le(commit.queue_id);
                out.put_u64_le(commit.offset);
            }
            Request::QueryOffset(query) => {
                put_str16(out, &query.group);
                put_str16(out, &query.topic);
                out.put_u32_le(query.queue_id);
            }
            Request::CreateTopic(create) | Request::AddQueues(create) => {
                put_str16(out, &create.topic);
                out.put_u32_le(create.queues);
            }
            Request::ListTopics(list) => put_str16(out, &list.topic),
            Request::Promote { role, force } => {
                out.put_u8(*role as u8);
                out.put_u8(u8::from(*force));
            }
            Request::DeleteTopic { topic, force } => {
                put_str16(out, topic);
                out.put_u8(u8::from(*force));
            }
            Request::DeleteGroup { group, force } => {
                put_str16(out, group);
                out.put_u8(u8::from(*force));
            }
            Request::EndTransaction(end) => {
                put_str16(out, &end.producer_group);
                put_str16(out, &end.topic);
                out.put_u64_le(end.transaction_id);
                out.put_u8(end.action as u8);
            }
            Request::CheckTransactions {
                producer_group,
                max,
            } => {
                put_str16(out, producer_group);
                out.put_u16_le(*max);
            }
            Request::ListTransactions { producer_group } => put_str16(out, producer_group),
            Request::GroupSettings { group, ordered } => {
                put_str16(out, group);
                match ordered {
                    None => out.put_u8(0),
                    Some(ordered) => {
                        out.put_u8(1);
                        out.put_u8(u8::from(*ordered));
                    }
                }
            }
            Request::RegisterBroker(registration) => {
                put_str16(out, &registration.broker_name);
                out.put_u32_le(registration.broker_id);
                out.put_u8(registration.role as u8);
                out.put_u64_le(registration.epoch);
                put_str16(out, &registration.address);
                put_str16(out, &registration.ha_address);
                out.put_u32_le(u32::try_from(registration.topics.len()).unwrap_or(u32::MAX));
                for (topic, queues) in &registration.topics {
                    put_str16(out, topic);
                    out.put_u32_le(*queues);
                }
            }
            Request::GetRoutes(topic) => put_str16(out, topic),
            Request::Heartbeat(heartbeat) => {
                put_str16(out, &heartbeat.group);
                put_str16(out, &heartbeat.topic);
                put_str16(out, &heartbeat.member_id);
                out.put_u32_le(heartbeat.session_timeout_ms);
                out.put_u32_le(u32::try_from(heartbeat.owned.len()).unwrap_or(u32::MAX));
                for queue in &heartbeat.owned {
                    out.put_u32_le(*queue);
                }
            }
            Request::GroupCommit(commit) => {
                put_str16(out, &commit.group);
                put_str16(out, &commit.topic);
                put_str16(out, &commit.member_id);
                out.put_u32_le(commit.queue_id);
                out.put_u64_le(commit.offset);
            }
            Request::SendBack(back) => {
                put_str16(out, &back.group);
                out.put_u32_le(back.reconsume_times);
                out.put_u32_le(back.max_reconsume_times);
                put_str16(out, &back.reason);
                put_str16(out, &back.origin_topic);
                out.put_u64_le(back.origin_msg_id);
                back.message.encode_body(out);
            }
            Request::OffsetForTime(query) => {
                put_str16(out, &query.topic);
                out.put_u32_le(query.queue_id);
                out.put_u64_le(query.timestamp_ms);
            }
            Request::MessageInfo { msg_id, key } => {
                out.put_u64_le(*msg_id);
                put_str16(out, key);
            }
            Request::Login(Login::Password { user, password }) => {
                out.put_u8(LOGIN_PASSWORD);
                put_str16(out, user);
                put_str16(out, password);
            }
            Request::Login(Login::Token(token)) => {
                out.put_u8(LOGIN_TOKEN);
                put_str16(out, "");
                put_str16(out, token);
            }
            Request::SecurityAdmin(json) => put_bytes32(out, json.0.as_bytes()),
            Request::ListGroups(group) => put_str16(out, group),
            Request::TopicStats(topic) => put_str16(out, topic),
            Request::SendBatch(messages) => {
                out.put_u16_le(u16::try_from(messages.len()).unwrap_or(u16::MAX));
                for message in messages.iter().take(usize::from(u16::MAX)) {
                    let length_at = out.len();
                    out.put_u32_le(0);
                    message.encode_body(out);
                    let length = out.len().saturating_sub(length_at).saturating_sub(4);
                    let length = u32::try_from(length).unwrap_or(u32::MAX).to_le_bytes();
                    if let Some(field) = out.get_mut(length_at..length_at.saturating_add(4)) {
                        field.copy_from_slice(&length);
                    }
                }
            }
        }
        end_frame(out, start);
    }

    /// Decodes the body of a request frame. A response kind is `UnknownKind` here.
    pub fn decode(frame: &RawFrame) -> Result<Request, DecodeError> {
        let mut reader = Reader::new(&frame.body);
        let request = match frame.kind {
            Kind::Ping => Request::Ping,
            Kind::Stats => Request::Stats,
            Kind::Send => return Message::decode_body(&frame.body).map(Request::Send),
            Kind::SendBatch => {
                let count = reader.u16("message_count")?;
                if count == 0 {
                    return Err(DecodeError::InvalidValue {
                        field: "message_count",
                        value: 0,
                    });
                }
                // Each message takes at least its 4-byte length: bounded before allocating.
                let mut messages =
                    Vec::with_capacity(usize::from(count).min(reader.remaining() / 4));
                for _ in 0..count {
                    let length = reader.u32("message_length")?;
                    let start = reader.position();
                    let body = reader.take("message", length as usize)?;
                    let end = start.saturating_add(body.len());
                    messages.push(Message::decode_body(&frame.body.slice(start..end))?);
                }
                Request::SendBatch(messages)
            }
            Kind::Pull => Request::Pull(PullRequest {
                group: reader.str16("group")?,
                topic: reader.str16("topic")?,
                queue_id: reader.u32("queue_id")?,
                queue_offset: reader.u64("queue_offset")?,
                max_messages: reader.u32("max_messages")?,
                max_bytes: reader.u32("max_bytes")?,
                wait_ms: reader.u32("wait_ms")?,
            }),
            Kind::CommitOffset => Request::CommitOffset(CommitOffsetRequest {
                group: reader.str16("group")?,
                topic: reader.str16("topic")?,
                queue_id: reader.u32("queue_id")?,
                offset: reader.u64("offset")?,
            }),
            Kind::QueryOffset => Request::QueryOffset(QueryOffsetRequest {
                group: reader.str16("group")?,
                topic: reader.str16("topic")?,
                queue_id: reader.u32("queue_id")?,
            }),
            Kind::CreateTopic => Request::CreateTopic(CreateTopicRequest {
                topic: reader.str16("topic")?,
                queues: reader.u32("queues")?,
            }),
            Kind::GetBrokers => Request::GetBrokers,
            Kind::AddQueues => Request::AddQueues(CreateTopicRequest {
                topic: reader.str16("topic")?,
                queues: reader.u32("queues")?,
            }),
            Kind::ListTopics => Request::ListTopics(ListTopicsRequest {
                topic: reader.str16("topic")?,
            }),
            Kind::Promote => Request::Promote {
                role: decode_role(&mut reader)?,
                force: decode_force(&mut reader)?,
            },
            Kind::DeleteTopic => Request::DeleteTopic {
                topic: reader.str16("topic")?,
                force: decode_force(&mut reader)?,
            },
            Kind::DeleteGroup => Request::DeleteGroup {
                group: reader.str16("group")?,
                force: decode_force(&mut reader)?,
            },
            Kind::EndTransaction => Request::EndTransaction(EndTransactionRequest {
                producer_group: reader.str16("producer_group")?,
                topic: reader.str16("topic")?,
                transaction_id: reader.u64("transaction_id")?,
                action: decode_tx_action(&mut reader)?,
            }),
            Kind::CheckTransactions => {
                let producer_group = reader.str16("producer_group")?;
                let max = reader.u16("max")?;
                if !(1..=CHECKS_MAX).contains(&max) {
                    return Err(DecodeError::InvalidValue {
                        field: "max",
                        value: u64::from(max),
                    });
                }
                Request::CheckTransactions {
                    producer_group,
                    max,
                }
            }
            Kind::ListTransactions => Request::ListTransactions {
                producer_group: reader.str16("producer_group")?,
            },
            Kind::GroupSettings => {
                let group = reader.str16("group")?;
                let ordered = match decode_flag(&mut reader, "change")? {
                    false => None,
                    true => Some(decode_flag(&mut reader, "ordered")?),
                };
                Request::GroupSettings { group, ordered }
            }
            Kind::RegisterBroker => {
                let broker_name = reader.str16("broker_name")?;
                let broker_id = reader.u32("broker_id")?;
                let role = decode_role(&mut reader)?;
                let epoch = reader.u64("epoch")?;
                let address = reader.str16("address")?;
                let ha_address = reader.str16("ha_address")?;
                let count = reader.u32("topic_count")?;
                // Each topic takes at least 6 bytes: bounded before allocating.
                let mut topics = Vec::with_capacity((count as usize).min(reader.remaining() / 6));
                for _ in 0..count {
                    topics.push((reader.str16("topic")?, reader.u32("queues")?));
                }
                Request::RegisterBroker(BrokerRegistration {
                    broker_name,
                    broker_id,
                    role,
                    epoch,
                    address,
                    ha_address,
                    topics,
                })
            }
            Kind::GetRoutes => Request::GetRoutes(reader.str16("topic")?),
            Kind::Heartbeat => {
                let group = reader.str16("group")?;
                let topic = reader.str16("topic")?;
                let member_id = reader.str16("member_id")?;
                let session_timeout_ms = reader.u32("session_timeout_ms")?;
                let owned = reader.u32_list("owned_count", "queue_id")?;
                Request::Heartbeat(HeartbeatRequest {
                    group,
                    topic,
                    member_id,
                    session_timeout_ms,
                    owned,
                })
            }
            Kind::GroupCommit => Request::GroupCommit(GroupCommitRequest {
                group: reader.str16("group")?,
                topic: reader.str16("topic")?,
                member_id: reader.str16("member_id")?,
                queue_id: reader.u32("queue_id")?,
                offset: reader.u64("offset")?,
            }),
            Kind::SendBack => {
                let group = reader.str16("group")?;
                let reconsume_times = reader.u32("reconsume_times")?;
                let max_reconsume_times = reader.u32("max_reconsume_times")?;
                let reason = reader.str16("reason")?;
                let origin_topic = reader.str16("origin_topic")?;
                let origin_msg_id = reader.u64("origin_msg_id")?;
                let start = reader.position().min(frame.body.len());
                let message = Message::decode_body(&frame.body.slice(start..))?;
                return Ok(Request::SendBack(SendBackRequest {
                    group,
                    reconsume_times,
                    max_reconsume_times,
                    reason,
                    origin_topic,
                    origin_msg_id,
                    message,
                }));
            }
            Kind::OffsetForTime => Request::OffsetForTime(OffsetForTimeRequest {
                topic: reader.str16("topic")?,
                queue_id: reader.u32("queue_id")?,
                timestamp_ms: reader.u64("timestamp_ms")?,
            }),
            Kind::MessageInfo => Request::MessageInfo {
                msg_id: reader.u64("msg_id")?,
                key: reader.str16("key")?,
            },
            Kind::Login => {
                let mechanism = reader.u8("mechanism")?;
                let user = reader.str16("user")?;
                let secret = reader.str16("secret")?;
                match mechanism {
                    LOGIN_PASSWORD => Request::Login(Login::Password {
                        user,
                        password: secret,
                    }),
                    LOGIN_TOKEN => Request::Login(Login::Token(secret)),
                    other => {
                        return Err(DecodeError::InvalidValue {
                            field: "mechanism",
                            value: u64::from(other),
                        })
                    }
                }
            }
            Kind::ListGroups => Request::ListGroups(reader.str16("group")?),
            Kind::TopicStats => Request::TopicStats(reader.str16("topic")?),
            Kind::SecurityAdmin => {
                let bytes = reader.bytes32("command")?;
                let json = std::str::from_utf8(bytes)
                    .map_err(|_| DecodeError::InvalidUtf8 { field: "command" })?;
                Request::SecurityAdmin(SecretText(json.to_string()))
            }
            other => return Err(DecodeError::UnknownKind(other as u8)),
        };
        reader.finish(frame.kind.name())?;
        Ok(request)
    }
}

/// A `force` byte: 0 or 1, anything else refused.
fn decode_force(reader: &mut Reader<'_>) -> Result<bool, DecodeError> {
    decode_flag(reader, "force")
}

/// A u8 that must be 0 (false) or 1 (true).
pub(crate) fn decode_flag(
    reader: &mut Reader<'_>,
    field: &'static str,
) -> Result<bool, DecodeError> {
    match reader.u8(field)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(DecodeError::InvalidValue {
            field,
            value: u64::from(other),
        }),
    }
}

pub(crate) fn decode_role(reader: &mut Reader<'_>) -> Result<BrokerRole, DecodeError> {
    let role = reader.u8("role")?;
    BrokerRole::from_u8(role).ok_or(DecodeError::InvalidValue {
        field: "role",
        value: u64::from(role),
    })
}
