//! Request handlers: validate, act on the store, reply now or park the reply.

use crate::event_loop::{Acked, EventLoop, PendingMeta, PendingReply, PendingSend};
use crate::reader::{ReadJob, ReplyTo};
use keel_protocol::now_ms;
use keel_protocol::{
    validate_topic, BrokerRole, CommitOffsetRequest, CreateTopicRequest, ErrorCode,
    ListTopicsRequest, Message, PullRequest, QueryOffsetRequest, QueueInfo, Response, SendResult,
    SendStatus, TopicCreated, TopicInfo,
};
use keel_storage::{AppendError, StoreError};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Long-poll PULLs one connection may have waiting at once (parked or being read).
const PULLS_WAITING_PER_CONNECTION_MAX: usize = 1024;

fn append_error_code(error: &AppendError) -> ErrorCode {
    match error {
        AppendError::InvalidTopic(_) => ErrorCode::InvalidTopic,
        AppendError::TopicNotFound(_) => ErrorCode::TopicNotFound,
        AppendError::InvalidQueueId { .. } => ErrorCode::InvalidQueueId,
        AppendError::StorageFailed => ErrorCode::StorageFailed,
        AppendError::DiskFull => ErrorCode::DiskFull,
        AppendError::ShuttingDown => ErrorCode::ShuttingDown,
        AppendError::SequenceTooOld { .. } => ErrorCode::SequenceTooOld,
        AppendError::SequenceMismatch { .. } => ErrorCode::SequenceMismatch,
        AppendError::SequenceZero { .. } => ErrorCode::InvalidArgument,
        AppendError::RecordTooLarge { .. } => ErrorCode::MessageTooLarge,
    }
}

pub(crate) fn store_error_response(error: StoreError) -> Response {
    let code = match &error {
        StoreError::TopicNotFound(_) => ErrorCode::TopicNotFound,
        StoreError::InvalidTopic(_) => ErrorCode::InvalidTopic,
        StoreError::InvalidQueueId { .. } => ErrorCode::InvalidQueueId,
        StoreError::InvalidArgument(_) => ErrorCode::InvalidArgument,
        StoreError::Io { .. } | StoreError::Locked { .. } | StoreError::Corruption { .. } => {
            ErrorCode::Internal
        }
    };
    Response::error(code, error.to_string())
}

impl EventLoop {
    /// SEND (one message) or SEND_BATCH (several, all or nothing): check each, append,
    /// and park the reply until the last record is durable.
    pub(crate) fn on_send(
        &mut self,
        key: usize,
        request_id: u64,
        oneway: bool,
        messages: Vec<Message>,
        batch: bool,
    ) {
        let config = &self.broker.config;
        let appended = match self.refusal(&messages, batch) {
            Some(refusal) => Err(refusal),
            None => self
                .broker
                .store
                .append_batch(&messages, config.auto_create_topics, now_ms())
                .map_err(|error| (append_error_code(&error), error.to_string())),
        };
        let counters = &self.broker.counters;
        let count = messages.len() as u64;
        let appended = match appended {
            Ok(appended) => appended,
            Err((code, detail)) => {
                counters.sends_failed.fetch_add(count, Ordering::Relaxed);
                if !oneway {
                    self.reply(key, request_id, &Response::error(code, detail));
                }
                return;
            }
        };
        let Some(last) = appended.last().copied() else {
            return;
        };
        if last.duplicate {
            counters
                .sends_deduplicated
                .fetch_add(count, Ordering::Relaxed);
        }
        if oneway {
            counters.sends_oneway.fetch_add(count, Ordering::Relaxed);
            return;
        }
        let result = if batch {
            Acked::Batch(
                appended
                    .iter()
                    .map(|one| (one.queue_id, one.queue_offset, one.log_offset))
                    .collect(),
            )
        } else {
            Acked::One(SendResult {
                status: SendStatus::SendOk,
                queue_id: last.queue_id,
                queue_offset: last.queue_offset,
                log_offset: last.log_offset,
            })
        };
        counters.pending_sends.fetch_add(1, Ordering::Relaxed);
        let timeout = Duration::from_millis(self.broker.config.sync_flush_timeout_ms);
        let wait_slave = self.broker.role() == BrokerRole::SyncMaster;
        let no_slave = wait_slave && !self.broker.slave_in_sync();
        let slave_timeout = Duration::from_millis(self.broker.config.slave_timeout_ms);
        self.pending_sends.push_back(PendingSend {
            key,
            connection_id: self.connection_id(key),
            request_id,
            result,
            messages: count,
            log_offset: appended
                .first()
                .map_or(last.log_offset, |first| first.log_offset),
            offset_end: last.offset_end,
            generation: last.generation,
            deadline: Instant::now() + timeout,
            wait_slave,
            no_slave,
            slave_deadline: Instant::now() + slave_timeout,
        });
    }

    /// Why these messages cannot be taken, checked before any is stored.
    fn refusal(&self, messages: &[Message], batch: bool) -> Option<(ErrorCode, String)> {
        if self.broker.is_shutting_down() {
            return Some((
                ErrorCode::ShuttingDown,
                "the broker is shutting down".to_string(),
            ));
        }
        if let Some(refusal) = self.not_master() {
            return Some(refusal);
        }
        let max_message_bytes = self.broker.config.max_message_bytes;
        messages.iter().enumerate().find_map(|(index, message)| {
            let which = if batch { format!("message {index} of the batch: ") } else { String::new() };
            if message.payload.len() > max_message_bytes as usize {
                let size = message.payload.len();
                Some((ErrorCode::MessageTooLarge, format!("{which}payload of {size} bytes exceeds max_message_bytes {max_message_bytes}")))
            } else if message.flags != 0 {
                let detail = format!("{which}flags is 0x{:08X}; every flag bit is reserved and must be 0", message.flags);
                Some((ErrorCode::InvalidArgument, detail))
            } else if message.compute_crc() != message.message_crc {
                let computed = message.compute_crc();
                let detail = format!("{which}the message's CRC32C is 0x{computed:08X}, the producer sent 0x{:08X}: it was damaged on the way (topic, tags, keys, properties, numbers or payload)", message.message_crc);
                Some((ErrorCode::MessageCrcMismatch, detail))
            } else {
                None
            }
        })
    }

    /// A slave takes no writes: they go to its master (its data arrives from there).
    fn not_master(&self) -> Option<(ErrorCode, String)> {
        if let Some(reason) = self.broker.fenced() {
            return Some((ErrorCode::NotMaster, reason));
        }
        if self.broker.role().is_master() {
            return None;
        }
        let master = self.broker.config.master_address.as_deref().unwrap_or("?");
        Some((
            ErrorCode::NotMaster,
            format!(
                "this broker is a slave of {} (HA address {master}); send to its master",
                self.broker.config.broker_name
            ),
        ))
    }

    /// PROMOTE: a slave becomes a master. Done on a thread of its own (it stops the
    /// replication threads and fsyncs), answered when finished.
    pub(crate) fn on_promote(
        &mut self,
        key: usize,
        request_id: u64,
        role: BrokerRole,
        force: bool,
    ) {
        self.reply_from_thread(key, request_id, "keel-promote", move |broker| {
            match crate::cluster::promote(broker, role, force) {
                Ok((epoch, log_end)) => Response::Promoted { epoch, log_end },
                Err((code, detail)) => Response::error(code, detail),
            }
        });
    }

    /// Runs `work` on a thread of its own (it may block: fsync, a whole-log scan) and
    /// answers the request with its response once it is done. Returns whether the
    /// thread started (if not, the request was answered with an error).
    pub(crate) fn reply_from_thread(
        &mut self,
        key: usize,
        request_id: u64,
        name: &str,
        work: impl FnOnce(&crate::broker::Broker) -> Response + Send + 'static,
    ) -> bool {
        let outcome = Arc::new(Mutex::new(None));
        let filled = outcome.clone();
        let broker = self.broker.clone();
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let response = work(&broker);
                *filled.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(response);
                // Wakes the loops, which then send the reply.
                broker.store.notify_listeners();
            });
        if let Err(error) = spawned {
            let detail = format!("cannot start a thread for this request: {error}");
            self.reply(
                key,
                request_id,
                &Response::error(ErrorCode::Internal, detail),
            );
            return false;
        }
        self.pending_replies.push(PendingReply {
            key,
            connection_id: self.connection_id(key),
            request_id,
            outcome,
        });
        true
    }

    /// PULL: checked here, read by a reader thread (the log may be on a slow disk),
    /// answered or parked as a long poll when it comes back.
    pub(crate) fn on_pull(&mut self, key: usize, request_id: u64, pull: PullRequest) {
        self.broker.counters.pulls.fetch_add(1, Ordering::Relaxed);
        if let Err(detail) = validate_topic(&pull.topic) {
            self.reply(
                key,
                request_id,
                &Response::error(ErrorCode::InvalidTopic, detail),
            );
            return;
        }
        if pull.max_messages == 0 || pull.max_bytes == 0 {
            let response = Response::error(
                ErrorCode::InvalidArgument,
                "max_messages and max_bytes must be at least 1",
            );
            self.reply(key, request_id, &response);
            return;
        }
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        // Beyond the cap a PULL is answered at once, as with wait_ms = 0: a client cannot
        // make the broker hold an unbounded number of waiting requests.
        let room = connection.pulls_waiting < PULLS_WAITING_PER_CONNECTION_MAX;
        connection.pulls_waiting += 1;
        let reply_to = ReplyTo {
            key,
            connection_id: connection.id,
            request_id,
        };
        let long_poll_until =
            (pull.wait_ms > 0 && room && !self.broker.is_shutting_down()).then(|| {
                let wait_ms = u64::from(pull.wait_ms).min(self.broker.config.long_poll_max_ms);
                Instant::now() + Duration::from_millis(wait_ms)
            });
        self.submit_read(
            reply_to,
            ReadJob::Pull {
                pull,
                long_poll_until,
            },
        );
    }

    fn park_meta(&mut self, key: usize, request_id: u64, version: u64, response: Response) {
        let timeout = Duration::from_millis(self.broker.config.sync_flush_timeout_ms);
        self.pending_meta.push_back(PendingMeta {
            key,
            connection_id: self.connection_id(key),
            request_id,
            version,
            response,
            deadline: Instant::now() + timeout,
        });
    }

    pub(crate) fn on_commit_offset(
        &mut self,
        key: usize,
        request_id: u64,
        commit: CommitOffsetRequest,
    ) {
        let store = &self.broker.store;
        match store.commit_offset(&commit.group, &commit.topic, commit.queue_id, commit.offset) {
            Ok(version) => self.park_meta(key, request_id, version, Response::CommitOffsetOk),
            Err(error) => self.reply(key, request_id, &store_error_response(error)),
        }
    }

    pub(crate) fn on_query_offset(
        &mut self,
        key: usize,
        request_id: u64,
        query: QueryOffsetRequest,
    ) {
        let offset = self
            .broker
            .store
            .query_offset(&query.group, &query.topic, query.queue_id);
        self.reply(key, request_id, &Response::Offset(offset));
    }

    pub(crate) fn on_create_topic(
        &mut self,
        key: usize,
        request_id: u64,
        create: CreateTopicRequest,
    ) {
        if let Some((code, detail)) = self.not_master() {
            self.reply(key, request_id, &Response::error(code, detail));
            return;
        }
        match self.broker.store.create_topic(&create.topic, create.queues) {
            Ok((queues, created, version)) => {
                let response = Response::TopicCreated(TopicCreated {
                    topic: create.topic,
                    queues,
                    created,
                });
                self.park_meta(key, request_id, version, response);
            }
            Err(error) => self.reply(key, request_id, &store_error_response(error)),
        }
    }

    pub(crate) fn on_list_topics(&mut self, key: usize, request_id: u64, list: ListTopicsRequest) {
        let only = (!list.topic.is_empty()).then_some(list.topic.as_str());
        let topics = self.broker.store.queue_offsets(only);
        if let (Some(topic), true) = (only, topics.is_empty()) {
            let response = Response::error(
                ErrorCode::TopicNotFound,
                format!("topic {topic:?} does not exist"),
            );
            self.reply(key, request_id, &response);
            return;
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
        self.reply(key, request_id, &Response::TopicList(topics));
    }
}
