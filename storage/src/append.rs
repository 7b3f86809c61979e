//! Appends: a message becomes a record at the log's end, in memory, under the append
//! lock; the flusher makes it durable. Idempotent producers' retries are recognised
//! here, and a disk-full rollback discards what never reached the disk.

use crate::catalog::{NewTopic, RecordFacts};
use crate::consume_queue::TopicQueues;
use crate::producers::{Producers, Seen, StoredAt};
use crate::state::AppendState;
use crate::store::Store;
use crate::AppendError;
use keel_protocol::names::{message_group_queue, property::MESSAGE_GROUP};
use keel_protocol::{
    encode_record, validate_topic, Message, RecordMeta, QUEUE_ID_ANY, RECORD_FLAG_TOPIC_DELETED,
};
use std::sync::atomic::Ordering;

/// What deleting a topic removed, and what its answer waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicDeletion {
    pub queues: u32,
    /// Messages the topic still held (retention had not deleted).
    pub messages: u64,
    /// Bytes of the log those messages take (freed when retention deletes their
    /// segments: the log is shared by every topic).
    pub bytes: u64,
    /// The deletion record is durable once the durable offset reaches this.
    pub offset_end: u64,
    /// Append generation (see `AppendResult::generation`).
    pub generation: u64,
    /// The topics and offsets files without the topic once this version is persisted.
    pub meta_version: u64,
}

/// Where an appended record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    pub queue_id: u32,
    pub queue_offset: u64,
    pub log_offset: u64,
    /// The record is durable once the durable offset reaches this.
    pub offset_end: u64,
    /// Append generation: a disk-full rollback discards later appends of older ones.
    pub generation: u64,
    /// An idempotent producer's retry of a message already stored: nothing new was
    /// stored; the fields say where the original is.
    pub duplicate: bool,
}

impl Store {
    /// Appends one message. A memory copy under the append lock; never touches the disk.
    pub fn append(
        &self,
        message: &Message,
        auto_create: bool,
        store_timestamp_ms: u64,
    ) -> Result<AppendResult, AppendError> {
        let mut appended = None;
        self.append_all(
            std::slice::from_ref(message),
            auto_create,
            store_timestamp_ms,
            |result| appended = Some(result),
        )?;
        appended.ok_or(AppendError::StorageFailed)
    }

    /// Appends several messages all together or not at all: each is checked before any
    /// is appended, and they take consecutive positions in the log. The batch is durable
    /// once the durable offset reaches the last one's `offset_end`.
    pub fn append_batch(
        &self,
        messages: &[Message],
        auto_create: bool,
        store_timestamp_ms: u64,
    ) -> Result<Vec<AppendResult>, AppendError> {
        let mut appended = Vec::with_capacity(messages.len());
        self.append_all(messages, auto_create, store_timestamp_ms, |result| {
            appended.push(result)
        })?;
        Ok(appended)
    }

    fn append_all(
        &self,
        messages: &[Message],
        auto_create: bool,
        store_timestamp_ms: u64,
        mut each: impl FnMut(AppendResult),
    ) -> Result<(), AppendError> {
        for message in messages {
            self.check(message)?;
        }
        let mut state = self.lock_state();
        // An idempotent producer's retry: answer with where the original is, whatever
        // the store's state now (the caller learns from the durable offset whether it
        // is durable; refusing would claim it is not stored).
        if let Some(originals) = retry_of(&state.catalog.producers, messages)? {
            for at in originals {
                each(AppendResult {
                    queue_id: at.queue_id,
                    queue_offset: at.queue_offset,
                    log_offset: at.log_offset,
                    offset_end: at.offset_end,
                    generation: state.generation,
                    duplicate: true,
                });
            }
            return Ok(());
        }
        self.check_writable(&state)?;
        for message in messages {
            let queues = match state.catalog.topics.get(&message.topic) {
                Some(topic) => topic.queue_count(),
                None if state.catalog.deletion_pending(&message.topic) => {
                    return Err(AppendError::TopicBeingDeleted(message.topic.clone()));
                }
                None if auto_create => self.config.default_queues,
                None => return Err(AppendError::TopicNotFound(message.topic.clone())),
            };
            if message.queue_id != QUEUE_ID_ANY && message.queue_id >= queues {
                return Err(AppendError::InvalidQueueId {
                    queue_id: message.queue_id,
                    queues,
                });
            }
        }
        let mut created = false;
        for message in messages {
            each(self.append_checked(&mut state, message, store_timestamp_ms, &mut created));
        }
        state.check_invariants();
        if state.flusher_waiting {
            self.flusher_wakeup.notify_one();
        }
        drop(state);
        if created {
            self.meta.bump();
        }
        Ok(())
    }

    /// Deletes topic `name`: appends the record that says so (recovery and slaves drop
    /// the topic where they meet it), forgets the topic's records and its consumer
    /// offsets, and has the flusher remove its ConsumeQueue files. Memory only, like
    /// any append: the deletion is durable once the durable offset reaches
    /// `offset_end` and the metadata version `meta_version` is persisted.
    pub fn delete_topic(
        &self,
        name: &str,
        store_timestamp_ms: u64,
    ) -> Result<TopicDeletion, AppendError> {
        validate_topic(name).map_err(|detail| AppendError::InvalidTopic(detail.to_string()))?;
        let mut message = Message {
            topic: name.to_string(),
            queue_id: 0,
            born_timestamp_ms: store_timestamp_ms,
            flags: RECORD_FLAG_TOPIC_DELETED,
            ..Message::default()
        };
        message.message_crc = message.compute_crc();
        let record_len = message.record_len() as u64;
        let mut state = self.lock_state();
        self.check_writable(&state)?;
        let Some(topic) = state.catalog.topics.get(name) else {
            return Err(AppendError::TopicNotFound(name.to_string()));
        };
        let queues = topic.queue_count();
        let messages = topic.queues.iter().map(|q| q.entries.len() as u64).sum();
        let bytes = topic.queues.iter().map(|q| q.bytes).sum();
        let segment_base = state.segment_for(record_len, self.config.segment_size_bytes);
        let log_offset = state.offset_end;
        let meta = RecordMeta {
            log_offset,
            queue_offset: 0,
            queue_id: 0,
            store_timestamp_ms,
            flushed_before: self.offset_flushed(),
        };
        let written = encode_record(&message, &meta, &mut state.pending) as u64;
        assert_eq!(written, record_len);
        let facts = RecordFacts {
            topic: name,
            queue_id: 0,
            queue_offset: 0,
            log_offset,
            size: record_len as u32,
            tags_hash: 0,
            store_timestamp_ms,
            producer_id: 0,
            sequence: 0,
            message_crc: message.message_crc,
            segment_base,
            deletes_topic: true,
        };
        let filed = state.catalog.note(&facts, NewTopic::Known);
        assert!(filed.is_ok(), "{filed:?}");
        self.deletion_filed(&mut state, &facts);
        state.place(record_len, self.config.segment_size_bytes);
        let index = facts.index_update(state.index_topic(name));
        state.appended(record_len, index);
        self.progress
            .appended
            .store(state.offset_end, Ordering::Release);
        state.check_invariants();
        if state.flusher_waiting {
            self.flusher_wakeup.notify_one();
        }
        let (offset_end, generation) = (state.offset_end, state.generation);
        drop(state);
        Ok(TopicDeletion {
            queues,
            messages,
            bytes,
            offset_end,
            generation,
            meta_version: self.meta.bump(),
        })
    }

    /// After the catalog filed deletion record `facts` (pending), under the append
    /// lock: the topic's offsets go with it, kept with the pending deletion to put back
    /// if a rollback undoes it. A commit holds the append lock while it checks the
    /// queue and stores its offset: none of the deleted topic lands after this.
    pub(crate) fn deletion_filed(&self, state: &mut AppendState, facts: &RecordFacts<'_>) {
        let offsets = self.take_offsets_of(facts.topic);
        state.catalog.note_pending_offsets(offsets);
        self.progress
            .deletions_pending
            .store(state.catalog.pending.len() as u64, Ordering::Release);
        self.progress
            .deletion_end
            .fetch_max(facts.offset_end(), Ordering::AcqRel);
    }

    /// Removes and returns every committed offset of `topic` (call under the append
    /// lock).
    pub(crate) fn take_offsets_of(&self, topic: &str) -> Vec<(crate::meta::OffsetKey, u64)> {
        let mut offsets = self.meta.lock_offsets();
        let keys: Vec<crate::meta::OffsetKey> = offsets
            .keys()
            .filter(|(_, of, _)| of == topic)
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|key| offsets.remove_entry(&key))
            .collect()
    }

    /// Settles the deletions whose record is fsynced (their `!name offset` line goes to
    /// the topics file). Returns the metadata version that covers them.
    pub fn settle_deletions(&self) -> u64 {
        self.settle_flushed_deletions();
        self.meta.bump()
    }

    /// Settles what is fsynced of the pending deletions; the metadata is written again
    /// when any settled. The flusher calls it after each fsync while any is pending.
    pub(crate) fn settle_flushed_deletions(&self) {
        if self.progress.deletions_pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let flushed = self.offset_flushed();
        let mut state = self.lock_state();
        let settled = state.catalog.settle_deletions(flushed);
        self.progress
            .deletions_pending
            .store(state.catalog.pending.len() as u64, Ordering::Release);
        drop(state);
        if settled {
            self.meta.bump();
        }
    }

    /// The end of the newest deletion record appended or replicated since the store
    /// opened (0: none): a master sends its slaves the metadata again once they have
    /// it, since the deletion dropped what they had of the topic.
    pub fn deletion_end(&self) -> u64 {
        self.progress.deletion_end.load(Ordering::Acquire)
    }

    /// Whether the log takes appends now (call under the append lock: a disk-full
    /// rollback also runs under it).
    fn check_writable(&self, state: &AppendState) -> Result<(), AppendError> {
        if state.shutting_down {
            return Err(AppendError::ShuttingDown);
        }
        if self.progress.disk_full.load(Ordering::Acquire) {
            return Err(AppendError::DiskFull);
        }
        if self.is_poisoned() {
            return Err(AppendError::StorageFailed);
        }
        Ok(())
    }

    /// What can be refused about a message on its own, before the append lock.
    fn check(&self, message: &Message) -> Result<(), AppendError> {
        validate_topic(&message.topic)
            .map_err(|detail| AppendError::InvalidTopic(detail.to_string()))?;
        if message.flags != 0 {
            // A flag would change what the record means to recovery (a deletion).
            return Err(AppendError::InvalidTopic(format!(
                "flags 0x{:08X}: a message's flags must be 0",
                message.flags
            )));
        }
        let size = message.record_len() as u64;
        if size > u64::from(self.config.max_record_bytes) {
            let max = self.config.max_record_bytes;
            return Err(AppendError::RecordTooLarge { size, max });
        }
        if message.producer_id != 0 && message.sequence == 0 {
            let producer_id = message.producer_id;
            return Err(AppendError::SequenceZero { producer_id });
        }
        Ok(())
    }

    /// Appends one message already checked by `append_all`, under the append lock.
    fn append_checked(
        &self,
        state: &mut AppendState,
        message: &Message,
        store_timestamp_ms: u64,
        created: &mut bool,
    ) -> AppendResult {
        let default_queues = self.config.default_queues;
        // The key is cloned only when the topic is created.
        if !state.catalog.topics.contains_key(&message.topic) {
            let queues = TopicQueues::with_queues(default_queues);
            state.catalog.topics.insert(message.topic.clone(), queues);
            *created = true;
        }
        let Some(topic) = state.catalog.topics.get_mut(&message.topic) else {
            unreachable!("the topic was just created")
        };
        let queue_id = if message.queue_id == QUEUE_ID_ANY {
            // A message group keeps one queue; the others take turns.
            match keel_protocol::names::property(&message.properties, MESSAGE_GROUP) {
                Some(group) => message_group_queue(group, topic.queue_count()),
                None => {
                    let queue_id = topic.next_queue % topic.queue_count().max(1);
                    topic.next_queue = topic.next_queue.wrapping_add(1);
                    queue_id
                }
            }
        } else {
            message.queue_id
        };
        let Some(queue) = topic.queues.get(queue_id as usize) else {
            unreachable!("queue {queue_id} of {} was checked before", message.topic)
        };
        let queue_offset = queue.end();
        let record_len = message.record_len() as u64;
        let segment_base = state.segment_for(record_len, self.config.segment_size_bytes);
        let log_offset = state.offset_end;
        let meta = RecordMeta {
            log_offset,
            queue_offset,
            queue_id,
            store_timestamp_ms,
            flushed_before: self.offset_flushed(),
        };
        let written = encode_record(message, &meta, &mut state.pending) as u64;
        assert_eq!(written, record_len);
        let facts = RecordFacts {
            topic: &message.topic,
            queue_id,
            queue_offset,
            log_offset,
            size: record_len as u32,
            tags_hash: keel_protocol::tags_hash(&message.tags),
            store_timestamp_ms,
            producer_id: message.producer_id,
            sequence: message.sequence,
            message_crc: message.message_crc,
            segment_base,
            deletes_topic: false,
        };
        // The topic and queue exist and the offset was just taken from the queue: the
        // catalog cannot refuse it.
        let filed = state.catalog.note(&facts, NewTopic::Known);
        assert!(filed.is_ok(), "{filed:?}");
        state.place(record_len, self.config.segment_size_bytes);
        let index = facts.index_update(state.index_topic(&message.topic));
        state.appended(record_len, index);
        self.progress
            .appended
            .store(state.offset_end, Ordering::Release);
        AppendResult {
            queue_id,
            queue_offset,
            log_offset,
            offset_end: state.offset_end,
            generation: state.generation,
            duplicate: false,
        }
    }

    /// Whether the append that returned (`generation`, `offset_end`) was discarded by a
    /// disk-full rollback: it was never written, so it must be answered as not stored.
    pub fn is_discarded(&self, generation: u64, offset_end: u64) -> bool {
        if generation == self.progress.generation.load(Ordering::Acquire) {
            return false;
        }
        let rollbacks = self
            .rollbacks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        rollbacks
            .get(generation as usize)
            .is_some_and(|to| offset_end > *to)
    }

    /// Forgets every append at or after log offset `to` (none of it reached the disk),
    /// after the flusher hit ENOSPC. Later appends start a new generation at `to`.
    pub(crate) fn roll_back_appends(&self, to: u64, segment_active_base: u64) {
        let mut state = self.lock_state();
        let state = &mut *state;
        assert!(to >= self.offset_written());
        assert!(to <= state.offset_end);
        state.pending.clear();
        state.pending_base = to;
        state.pending_index.clear();
        state.segments_new.clear();
        state.segment_active_base = segment_active_base;
        // A deletion among the discarded appends never happened: its topic and offsets
        // come back (its records below `to`).
        let undone = state.catalog.undo_deletions_from(to);
        self.progress
            .deletions_pending
            .store(state.catalog.pending.len() as u64, Ordering::Release);
        let dropped = state.forget_from(to);
        {
            let mut offsets = self.meta.lock_offsets();
            for deletion in &undone {
                log::error!(
                    "disk full: the deletion of topic {} was not written; the topic is back",
                    deletion.topic
                );
                offsets.extend(deletion.offsets.iter().cloned());
            }
        }
        state.check_invariants();
        self.rollbacks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(to);
        state.generation += 1;
        self.progress
            .generation
            .store(state.generation, Ordering::Release);
        self.progress.appended.store(to, Ordering::Release);
        // The partial record past `to` was cut from the file before this.
        self.progress.attempted.store(to, Ordering::Release);
        self.progress.disk_full.store(true, Ordering::Release);
        if !undone.is_empty() {
            self.meta.bump();
        }
        log::error!(
            "disk full: {dropped} record(s) after log offset {to} were not written and are refused"
        );
    }
}

/// Whether `messages` (one send, or a batch stored whole or not at all) is an idempotent
/// producer's retry of messages already stored: `Some` with where each original is,
/// `None` when they are all new. A sequence stored with another message, a batch that
/// mixes stored and new sequences or repeats one, and a sequence older than the window
/// are refused: none of them is a retry the broker can answer truthfully.
fn retry_of(
    producers: &Producers,
    messages: &[Message],
) -> Result<Option<Vec<StoredAt>>, AppendError> {
    // A producer's batch numbers its messages in order; anything else is checked for
    // repeats with a set (never pairwise: a batch may hold 65535 messages).
    let in_order = messages
        .iter()
        .zip(messages.iter().skip(1))
        .all(|(a, b)| a.producer_id == b.producer_id && a.sequence < b.sequence);
    let mut numbers = std::collections::HashSet::new();
    let mut originals = Vec::new();
    let mut new = 0usize;
    for message in messages {
        if message.producer_id == 0 {
            new += 1;
            continue;
        }
        let (producer_id, sequence) = (message.producer_id, message.sequence);
        let mismatch = |detail: String| AppendError::SequenceMismatch {
            producer_id,
            sequence,
            detail,
        };
        if !in_order && !numbers.insert((producer_id, sequence)) {
            return Err(mismatch("appears twice in one batch".into()));
        }
        match producers.seen(producer_id, sequence) {
            Seen::New => new += 1,
            Seen::Duplicate(at) if at.message_crc != message.message_crc => {
                return Err(mismatch(format!(
                    "is already stored at log offset {} with another message (message_crc \
                     {:08x}, this one {:08x})",
                    at.log_offset, at.message_crc, message.message_crc
                )));
            }
            Seen::Duplicate(at) => originals.push(at),
            Seen::TooOld { oldest } => {
                return Err(AppendError::SequenceTooOld {
                    producer_id,
                    sequence,
                    oldest,
                })
            }
        }
    }
    match (new, originals.len()) {
        (_, 0) => Ok(None),
        (0, _) => Ok(Some(originals)),
        _ => Err(AppendError::SequenceMismatch {
            producer_id: messages.first().map_or(0, |m| m.producer_id),
            sequence: messages.first().map_or(0, |m| m.sequence),
            detail: format!(
                "starts a batch that mixes {} stored and {new} new messages",
                originals.len()
            ),
        }),
    }
}
