//! The store: append, read, topics, offsets, and the threads that make them durable.

use crate::checkpoint::{Checkpoint, CheckpointFile};
use crate::consume_queue::{IndexEntry, IndexFiles, IndexUpdate, QueueIndex, TopicQueues};
use crate::disk::{Disk, DiskFile, RealDisk};
use crate::fs_util::create_dir_all_synced;
use crate::meta::{load_offsets, Meta};
use crate::recovery::RecoveryReport;
use crate::segment::SegmentSet;
use crate::startup::{apply_topics_file, open_segments, reconcile_index_files, recover_log};
use crate::{AppendError, StoreError};
use keel_protocol::{encode_record, validate_topic, Message, RecordMeta, QUEUE_ID_ANY};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// A send is durable once fsynced (group commit).
    Sync,
    /// A send is durable once written to the page cache; fsync every `flush_interval_ms`.
    Async,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub segment_size_bytes: u64,
    pub flush: FlushMode,
    pub flush_interval_ms: u64,
    pub default_queues: u32,
    /// Largest record recovery accepts as plausible.
    pub max_record_bytes: u32,
    /// Refuse appends while the file system has less free space than this.
    pub disk_min_free_bytes: u64,
    /// Delete segments whose newest record is older than this (0 = keep forever).
    pub retention_ms: u64,
    /// Delete the oldest segments while the log is larger than this (0 = no limit).
    pub retention_bytes: u64,
    pub retention_check_interval_ms: u64,
    /// Fault injection: sleep this long before every log fsync (0 = off).
    pub fault_fsync_delay_ms: u64,
    /// Fault injection: the n-th fsync of the log fails with EIO (0 = off).
    pub fault_fsync_fail_at: u64,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            segment_size_bytes: 1 << 30,
            flush: FlushMode::Sync,
            flush_interval_ms: 500,
            default_queues: 4,
            max_record_bytes: keel_protocol::DEFAULT_MAX_MESSAGE_BYTES + (1 << 20),
            disk_min_free_bytes: 0,
            retention_ms: 0,
            retention_bytes: 0,
            retention_check_interval_ms: 10_000,
            fault_fsync_delay_ms: 0,
            fault_fsync_fail_at: 0,
        }
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    Found,
    NoNewMessages,
    OffsetOutOfRange,
    /// Below the first offset retention kept.
    OffsetExpired,
}

/// Records read from one queue, as stored bytes back to back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRead {
    pub status: ReadStatus,
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
    pub record_count: u32,
    pub records: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub offset_appended: u64,
    pub offset_written: u64,
    pub offset_flushed: u64,
    pub records_appended: u64,
    pub records_flushed: u64,
    pub fsyncs: u64,
    pub segments: u64,
    pub topics: u64,
    pub poisoned: bool,
    pub disk_full: bool,
    /// First log offset still stored.
    pub log_start: u64,
    /// Idempotent producers remembered (for deduplication).
    pub producers: u64,
}

/// Append-side state, under one mutex. Appends are memory copies only.
///
/// Invariant: `pending_base + pending.len() == offset_end`, and
/// `segment_active_base <= offset_end`.
pub(crate) struct AppendState {
    pub offset_end: u64,
    pub pending: Vec<u8>,
    pub pending_base: u64,
    pub pending_index: Vec<IndexUpdate>,
    pub segment_active_base: u64,
    /// Segments started by appends that the flusher has not created yet.
    pub segments_new: Vec<u64>,
    pub topics: BTreeMap<String, TopicQueues>,
    pub records_appended: u64,
    pub flusher_waiting: bool,
    pub shutting_down: bool,
    /// Incremented by each disk-full rollback.
    pub generation: u64,
    /// First log offset still stored (the first segment's base; retention moves it).
    pub log_start: u64,
    /// Store timestamp of the newest record of each segment, by base offset.
    pub segment_newest_ms: BTreeMap<u64, u64>,
    /// Set by `truncate_to`: the flusher restarts writing at this offset.
    pub flusher_reset: Option<u64>,
    /// Idempotent producers' recent sequences.
    pub producers: crate::producers::Producers,
}

impl AppendState {
    /// Drops every record at or after log offset `to` from the queue indexes and ends
    /// the log there; returns how many records went.
    pub(crate) fn forget_from(&mut self, to: u64) -> u64 {
        let mut dropped = 0u64;
        for topic in self.topics.values_mut() {
            for queue in &mut topic.queues {
                dropped += queue.pop_from(to);
            }
        }
        self.records_appended -= dropped;
        self.offset_end = to;
        self.producers.forget_from(to);
        dropped
    }
}

/// Offsets published by the flusher. Invariant: `flushed <= written <= offset_end`.
#[derive(Default)]
pub(crate) struct Progress {
    /// Mirror of `AppendState::offset_end`, readable without the append lock.
    pub appended: AtomicU64,
    /// End of the bytes handed to a `write` (they may be in the file even when it
    /// failed). Invariant: `written <= attempted <= appended`.
    pub attempted: AtomicU64,
    pub written: AtomicU64,
    pub flushed: AtomicU64,
    pub records_flushed: AtomicU64,
    pub fsyncs: AtomicU64,
    pub poisoned: AtomicBool,
    /// Appends are refused: ENOSPC happened, or free space is below the reserve.
    pub disk_full: AtomicBool,
    /// Mirror of `AppendState::generation`.
    pub generation: AtomicU64,
    /// Replication's cap on the durable offset (see `Store::set_durable_cap`).
    pub durable_cap: AtomicU64,
}

type Listener = Arc<dyn Fn() + Send + Sync>;

pub struct Store {
    pub(crate) config: StoreConfig,
    pub(crate) state: Mutex<AppendState>,
    pub(crate) flusher_wakeup: Condvar,
    pub(crate) progress: Progress,
    pub(crate) segments: SegmentSet,
    pub(crate) meta: Meta,
    pub(crate) checkpoint: CheckpointFile,
    listeners: Mutex<Vec<Listener>>,
    /// Called after each write, before its fsync (replication streams from there).
    write_listeners: Mutex<Vec<Listener>>,
    /// `rollbacks[g]`: the offset generation `g` was rolled back to.
    rollbacks: Mutex<Vec<u64>>,
    pub(crate) retention: crate::retention::Retention,
    threads: Mutex<Vec<JoinHandle<()>>>,
    recovery: RecoveryReport,
    pub(crate) epochs: Mutex<Vec<crate::epochs::Epoch>>,
    /// Where this broker appended as a master (see `own_writes`); persisted before it
    /// changes what recovery would trust.
    pub(crate) own_writes: Mutex<crate::own_writes::OwnWrites>,
    pub(crate) disk: Arc<dyn Disk>,
    _lock: Box<dyn std::any::Any + Send + Sync>,
}

impl Store {
    /// Opens the data directory, recovers the log, and starts the flusher and metadata
    /// threads.
    pub fn open(config: StoreConfig) -> Result<Arc<Store>, StoreError> {
        Store::open_with_disk(config, Arc::new(RealDisk))
    }

    /// `open` on any `Disk` (tests use `sim::SimDisk`).
    pub fn open_with_disk(
        config: StoreConfig,
        disk: Arc<dyn Disk>,
    ) -> Result<Arc<Store>, StoreError> {
        let disk_ref = disk.as_ref();
        let data_dir = &config.data_dir;
        create_dir_all_synced(disk_ref, data_dir)?;
        let lock = lock_data_dir(disk_ref, data_dir)?;
        for dir in ["commitlog", "consumequeue", "offsets"] {
            create_dir_all_synced(disk_ref, &data_dir.join(dir))?;
        }
        let (checkpoint_file, checkpoint) =
            CheckpointFile::open(disk_ref, &data_dir.join("checkpoint"))?;
        let own_writes = crate::own_writes::load(disk_ref, &data_dir.join("own_writes"))?;
        let mut recovered = recover_log(disk_ref, &config, checkpoint, &own_writes)?;
        let topics_path = data_dir.join("topics");
        let offsets_path = data_dir.join("offsets").join("consumer_offsets");
        apply_topics_file(disk_ref, &topics_path, &mut recovered.topics)?;
        let offsets = load_offsets(disk_ref, &offsets_path)?;
        let epochs = crate::epochs::load(disk_ref, &data_dir.join("epochs"))?;
        let mut index_files = IndexFiles::new(disk.clone(), &data_dir.join("consumequeue"));
        reconcile_index_files(&mut index_files, &recovered.topics)?;
        let (segments, active) = open_segments(disk_ref, &recovered.segment_paths)?;
        let offset_end = recovered.report.offset_end;
        // After a crash the recovered bytes may still be only in the page cache: make
        // them durable before anything is served or acknowledged on top of them.
        if let Some((_, file)) = &active {
            file.sync_data()
                .map_err(|e| StoreError::io("fsync the last segment after recovery", e))?;
        }
        checkpoint_file.write(Checkpoint {
            offset_flushed: offset_end,
            clean: false,
        })?;

        let records = recovered.report.records;
        let store = Arc::new(Store {
            state: Mutex::new(AppendState {
                offset_end,
                pending: Vec::with_capacity(1 << 20),
                pending_base: offset_end,
                pending_index: Vec::new(),
                segment_active_base: active.as_ref().map_or(offset_end, |(base, _)| *base),
                segments_new: Vec::new(),
                topics: recovered.topics,
                records_appended: records,
                flusher_waiting: false,
                shutting_down: false,
                generation: 0,
                log_start: recovered
                    .segment_paths
                    .first()
                    .map_or(offset_end, |(base, _)| *base),
                segment_newest_ms: recovered.segment_newest_ms,
                flusher_reset: None,
                producers: recovered.producers,
            }),
            flusher_wakeup: Condvar::new(),
            progress: Progress {
                appended: AtomicU64::new(offset_end),
                attempted: AtomicU64::new(offset_end),
                written: AtomicU64::new(offset_end),
                flushed: AtomicU64::new(offset_end),
                records_flushed: AtomicU64::new(records),
                durable_cap: AtomicU64::new(u64::MAX),
                ..Progress::default()
            },
            segments,
            meta: Meta::new(topics_path, offsets_path, offsets),
            checkpoint: checkpoint_file,
            listeners: Mutex::new(Vec::new()),
            write_listeners: Mutex::new(Vec::new()),
            rollbacks: Mutex::new(Vec::new()),
            retention: crate::retention::Retention::default(),
            threads: Mutex::new(Vec::new()),
            recovery: recovered.report,
            epochs: Mutex::new(epochs),
            own_writes: Mutex::new(own_writes),
            config,
            disk,
            _lock: lock,
        });
        store.meta.bump();
        store.start_threads(active, index_files)?;
        Ok(store)
    }

    fn start_threads(
        self: &Arc<Store>,
        active: Option<(u64, Arc<dyn DiskFile>)>,
        index_files: IndexFiles,
    ) -> Result<(), StoreError> {
        let spawn = |name: &str, work: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(work)
                .map_err(|e| StoreError::io(format!("spawn the {name} thread"), e))
        };
        let (flusher, meta) = (self.clone(), self.clone());
        let mut threads = vec![
            spawn(
                "keel-flusher",
                Box::new(move || crate::flusher::run(&flusher, active, index_files)),
            )?,
            spawn("keel-meta", Box::new(move || meta.run_meta()))?,
        ];
        if self.config.retention_ms > 0 || self.config.retention_bytes > 0 {
            let retention = self.clone();
            threads.push(spawn(
                "keel-retention",
                Box::new(move || retention.run_retention()),
            )?);
        }
        self.threads().extend(threads);
        Ok(())
    }

    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Registers a callback run (on a storage thread) whenever an offset advances or the
    /// log is poisoned. It must not block: a `mio::Waker::wake` is the intended use.
    pub fn add_listener(&self, listener: Arc<dyn Fn() + Send + Sync>) {
        self.listeners
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(listener);
    }

    /// Registers a callback run on the flusher thread after every write to the segment
    /// files, before the fsync that follows (so a master streams to its slaves while
    /// it fsyncs). It must not block.
    pub fn add_write_listener(&self, listener: Arc<dyn Fn() + Send + Sync>) {
        self.write_listeners
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(listener);
    }

    pub(crate) fn notify_write_listeners(&self) {
        let listeners = self
            .write_listeners
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        for listener in listeners {
            listener();
        }
    }

    pub fn notify_listeners(&self) {
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        for listener in listeners {
            listener();
        }
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, AppendState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn threads(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Bytes appended but not yet written to the segment files: memory the flusher
    /// still has to drain. Callers stop taking input while it is too large.
    pub fn backlog_bytes(&self) -> u64 {
        let appended = self.progress.appended.load(Ordering::Acquire);
        appended.saturating_sub(self.offset_written())
    }

    pub fn offset_written(&self) -> u64 {
        self.progress.written.load(Ordering::Acquire)
    }

    /// End of the bytes handed to the file system so far. After a storage failure, a
    /// record that starts below it may be in the log after a restart (its outcome is
    /// unknown); one at or past it was never written (it is not stored).
    pub fn offset_attempted(&self) -> u64 {
        self.progress.attempted.load(Ordering::Acquire)
    }

    pub fn offset_flushed(&self) -> u64 {
        self.progress.flushed.load(Ordering::Acquire)
    }

    /// Highest offset durable by this broker's standard: the local durable offset,
    /// capped by replication (a slave's acknowledgement on a sync master, the master's
    /// confirmation on a slave). Sends at or below it are acked and consumers are
    /// served up to it.
    pub fn offset_durable(&self) -> u64 {
        self.offset_local_durable().min(self.durable_cap())
    }

    /// Highest offset durable on this machine: fsynced with `flush = "sync"`, written
    /// to the page cache with `flush = "async"`.
    pub fn offset_local_durable(&self) -> u64 {
        match self.config.flush {
            FlushMode::Sync => self.offset_flushed(),
            FlushMode::Async => self.offset_written(),
        }
    }

    /// True while appends are refused for lack of space.
    pub fn is_disk_full(&self) -> bool {
        self.progress.disk_full.load(Ordering::Acquire)
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
        let dropped = state.forget_from(to);
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
        log::error!(
            "disk full: {dropped} record(s) after log offset {to} were not written and are refused"
        );
    }

    /// True once a write or fsync failed: nothing more will become durable.
    pub fn is_poisoned(&self) -> bool {
        self.progress.poisoned.load(Ordering::Acquire)
    }

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
        if self.is_poisoned() {
            return Err(AppendError::StorageFailed);
        }
        for message in messages {
            validate_topic(&message.topic)
                .map_err(|detail| AppendError::InvalidTopic(detail.to_string()))?;
            let size = message.record_len() as u64;
            if size > u64::from(self.config.max_record_bytes) {
                let max = self.config.max_record_bytes;
                return Err(AppendError::RecordTooLarge { size, max });
            }
            if message.producer_id != 0 && message.sequence == 0 {
                let producer_id = message.producer_id;
                return Err(AppendError::SequenceZero { producer_id });
            }
        }
        let mut state = self.lock_state();
        if state.shutting_down {
            return Err(AppendError::ShuttingDown);
        }
        // Checked under the lock: a disk-full rollback also runs under it.
        if self.progress.disk_full.load(Ordering::Acquire) {
            return Err(AppendError::DiskFull);
        }
        for message in messages {
            let queues = match state.topics.get(&message.topic) {
                Some(topic) => topic.queue_count(),
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
        // An idempotent producer's retry: answer with where the original is.
        if let Some(originals) = retry_of(&state.producers, messages)? {
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
        let mut created = false;
        for message in messages {
            each(self.append_checked(&mut state, message, store_timestamp_ms, &mut created));
        }
        assert_eq!(
            state.pending_base + state.pending.len() as u64,
            state.offset_end
        );
        if state.flusher_waiting {
            self.flusher_wakeup.notify_one();
        }
        drop(state);
        if created {
            self.meta.bump();
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
        let topic = state
            .topics
            .entry(message.topic.clone())
            .or_insert_with(|| {
                *created = true;
                TopicQueues::with_queues(default_queues)
            });
        let queues = topic.queue_count();
        let queue_id = if message.queue_id == QUEUE_ID_ANY {
            let queue_id = topic.next_queue % queues.max(1);
            topic.next_queue = topic.next_queue.wrapping_add(1);
            queue_id
        } else {
            message.queue_id
        };
        let queue = &mut topic.queues[queue_id as usize];
        let record_len = message.record_len() as u64;
        let segment_used = state.offset_end - state.segment_active_base;
        if segment_used > 0 && segment_used + record_len > self.config.segment_size_bytes {
            state.segment_active_base = state.offset_end;
            state.segments_new.push(state.offset_end);
        }
        let meta = RecordMeta {
            log_offset: state.offset_end,
            queue_offset: queue.end(),
            queue_id,
            store_timestamp_ms,
            flushed_before: self.offset_flushed(),
        };
        let written = encode_record(message, &meta, &mut state.pending) as u64;
        assert_eq!(written, record_len);
        let newest = state
            .segment_newest_ms
            .entry(state.segment_active_base)
            .or_insert(0);
        *newest = (*newest).max(store_timestamp_ms);
        let entry = IndexEntry {
            log_offset: meta.log_offset,
            size: record_len as u32,
            tags_hash: keel_protocol::tags_hash(&message.tags),
        };
        queue.entries.push(entry);
        state.pending_index.push(IndexUpdate {
            topic: message.topic.clone(),
            queue_id,
            queue_offset: meta.queue_offset,
            entry,
        });
        state.offset_end += record_len;
        self.progress
            .appended
            .store(state.offset_end, Ordering::Release);
        state.records_appended += 1;
        let offset_end = state.offset_end;
        state.producers.record(
            message.producer_id,
            message.sequence,
            crate::producers::StoredAt {
                queue_id,
                queue_offset: meta.queue_offset,
                log_offset: meta.log_offset,
                offset_end,
                message_crc: message.message_crc,
            },
        );
        AppendResult {
            queue_id,
            queue_offset: meta.queue_offset,
            log_offset: meta.log_offset,
            offset_end,
            generation: state.generation,
            duplicate: false,
        }
    }

    /// Creates a topic. Returns its queue count, whether it was created now, and the
    /// metadata version that must be persisted before the creation is durable.
    pub fn create_topic(&self, name: &str, queues: u32) -> Result<(u32, bool, u64), StoreError> {
        validate_topic(name).map_err(|detail| StoreError::InvalidTopic(detail.to_string()))?;
        if queues == 0 || queues > keel_protocol::QUEUES_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "queue count {queues} is outside 1..={}",
                keel_protocol::QUEUES_MAX
            )));
        }
        let mut state = self.lock_state();
        if let Some(topic) = state.topics.get(name) {
            let count = topic.queue_count();
            drop(state);
            return Ok((count, false, self.meta.bump()));
        }
        state
            .topics
            .insert(name.to_string(), TopicQueues::with_queues(queues));
        drop(state);
        Ok((queues, true, self.meta.bump()))
    }

    /// Highest metadata version (topics, offsets) that is on disk.
    pub fn meta_persisted(&self) -> u64 {
        self.meta.persisted()
    }

    /// While topics and offsets cannot be persisted: whether the disk is full, and why.
    pub fn meta_failure(&self) -> Option<(bool, String)> {
        if !self.meta.failed.load(Ordering::Acquire) {
            return None;
        }
        self.meta
            .failure
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Queue count of a topic, if it exists.
    pub fn topic_queues(&self, name: &str) -> Option<u32> {
        self.lock_state()
            .topics
            .get(name)
            .map(TopicQueues::queue_count)
    }

    /// For each topic (or just `only`), each queue's (min, max) durable queue offsets.
    pub fn queue_offsets(&self, only: Option<&str>) -> Vec<(String, Vec<(u64, u64)>)> {
        let durable = self.offset_durable();
        let state = self.lock_state();
        state
            .topics
            .iter()
            .filter(|(name, _)| only.is_none_or(|only| only == name.as_str()))
            .map(|(name, topic)| {
                let queues = topic
                    .queues
                    .iter()
                    .map(|queue| (queue.first, queue.durable_end(durable)))
                    .collect();
                (name.clone(), queues)
            })
            .collect()
    }

    /// For each (topic, queue, queue offset) a long poll waits on: whether a read from
    /// there would now find something (new durable records, or the offset expired).
    /// Memory only, one lock for all of them; an unknown topic or queue counts as
    /// something to read (the read reports it).
    pub fn readable<'a>(
        &self,
        waiting: impl IntoIterator<Item = (&'a str, u32, u64)>,
    ) -> Vec<bool> {
        let durable = self.offset_durable();
        let state = self.lock_state();
        waiting
            .into_iter()
            .map(
                |(topic, queue_id, offset)| match queue_of(&state, topic, queue_id) {
                    Ok(queue) => queue.durable_end(durable) > offset || queue.first > offset,
                    Err(_) => true,
                },
            )
            .collect()
    }

    /// Reads up to `max_messages` records (and about `max_bytes`, at least one record) of
    /// a queue from `queue_offset`, never past the durable offset. It reads the disk:
    /// never call it on an event loop.
    pub fn read_queue(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
        max_messages: u32,
        max_bytes: u32,
    ) -> Result<QueueRead, StoreError> {
        let durable = self.offset_durable();
        let mut selected: Vec<IndexEntry> = Vec::new();
        let max_offset;
        let min_offset;
        {
            let state = self.lock_state();
            let queue = queue_of(&state, topic, queue_id)?;
            max_offset = queue.durable_end(durable);
            min_offset = queue.first;
            let mut bytes = 0u64;
            if queue_offset >= min_offset && queue_offset < max_offset {
                let count = (max_offset - queue_offset).min(u64::from(max_messages.max(1)));
                for entry in &queue.from(queue_offset)[..count as usize] {
                    if !selected.is_empty() && bytes + u64::from(entry.size) > u64::from(max_bytes)
                    {
                        break;
                    }
                    bytes += u64::from(entry.size);
                    selected.push(*entry);
                }
            }
        }
        let status = if queue_offset < min_offset {
            ReadStatus::OffsetExpired
        } else if queue_offset > max_offset {
            ReadStatus::OffsetOutOfRange
        } else if selected.is_empty() {
            ReadStatus::NoNewMessages
        } else {
            ReadStatus::Found
        };
        let records = self.read_entries(&selected)?;
        let record_count = selected.len() as u32;
        let next_offset = if matches!(
            status,
            ReadStatus::OffsetOutOfRange | ReadStatus::OffsetExpired
        ) {
            queue_offset
        } else {
            queue_offset + u64::from(record_count)
        };
        Ok(QueueRead {
            status,
            next_offset,
            min_offset,
            max_offset,
            record_count,
            records,
        })
    }

    /// Reads the records behind index entries, one `pread` per run of adjacent records
    /// in one segment.
    fn read_entries(&self, entries: &[IndexEntry]) -> Result<Vec<u8>, StoreError> {
        let total: u64 = entries.iter().map(|entry| u64::from(entry.size)).sum();
        let mut out = vec![0u8; total as usize];
        let mut run_start = 0usize;
        let mut position = 0usize;
        let mut index = 0usize;
        while index < entries.len() {
            let first = entries[index];
            let base = self.segments.base_of(first.log_offset);
            let mut end = first.offset_end();
            let mut next = index + 1;
            while let Some(entry) = entries.get(next) {
                if entry.log_offset != end || self.segments.base_of(entry.log_offset) != base {
                    break;
                }
                end = entry.offset_end();
                next += 1;
            }
            let length = (end - first.log_offset) as usize;
            position += length;
            self.segments
                .read_at(first.log_offset, &mut out[run_start..position])
                .map_err(|e| {
                    StoreError::io(
                        format!("read the commit log at offset {}", first.log_offset),
                        e,
                    )
                })?;
            run_start = position;
            index = next;
        }
        Ok(out)
    }

    /// Records that `group` has consumed `topic`/`queue_id` below `offset`. Returns the
    /// metadata version to wait for before telling the consumer it is durable.
    pub fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        offset: u64,
    ) -> Result<u64, StoreError> {
        validate_topic(group)
            .map_err(|detail| StoreError::InvalidTopic(format!("invalid group name: {detail}")))?;
        {
            let state = self.lock_state();
            let queue = queue_of(&state, topic, queue_id)?;
            if offset > queue.end() {
                return Err(StoreError::InvalidArgument(format!(
                    "offset {offset} is past the end of {topic}/{queue_id} ({})",
                    queue.end()
                )));
            }
        }
        let mut offsets = self
            .meta
            .offsets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        offsets.insert((group.to_string(), topic.to_string(), queue_id), offset);
        drop(offsets);
        Ok(self.meta.bump())
    }

    pub fn query_offset(&self, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
        let offsets = self
            .meta
            .offsets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        offsets
            .get(&(group.to_string(), topic.to_string(), queue_id))
            .copied()
    }

    pub fn stats(&self) -> StoreStats {
        let state = self.lock_state();
        StoreStats {
            offset_appended: state.offset_end,
            offset_written: self.offset_written(),
            offset_flushed: self.offset_flushed(),
            records_appended: state.records_appended,
            records_flushed: self.progress.records_flushed.load(Ordering::Acquire),
            fsyncs: self.progress.fsyncs.load(Ordering::Acquire),
            segments: self.segments.count() as u64,
            topics: state.topics.len() as u64,
            poisoned: self.is_poisoned(),
            log_start: state.log_start,
            disk_full: self.is_disk_full(),
            producers: state.producers.len() as u64,
        }
    }

    /// Stops taking appends, flushes everything appended, writes a clean checkpoint and
    /// joins the storage threads. Idempotent.
    pub fn shutdown(&self) {
        {
            let mut state = self.lock_state();
            state.shutting_down = true;
            self.flusher_wakeup.notify_all();
        }
        self.meta.request_stop();
        self.retention.request_stop();
        let threads: Vec<_> = self.threads().drain(..).collect();
        for thread in threads {
            if thread.join().is_err() {
                log::error!("a storage thread panicked during shutdown");
            }
        }
    }

    fn run_meta(&self) {
        while let Some(version) = self.meta.wait_for_work() {
            let topics: Vec<(String, Vec<u64>)> = {
                let state = self.lock_state();
                state
                    .topics
                    .iter()
                    .map(|(name, topic)| {
                        (
                            name.clone(),
                            topic.queues.iter().map(|queue| queue.first).collect(),
                        )
                    })
                    .collect()
            };
            match self.meta.write_files(self.disk.as_ref(), &topics) {
                Ok(()) => self.meta.publish(version),
                Err(error) => {
                    let disk_full = matches!(&error, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull);
                    *self
                        .meta
                        .failure
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner()) =
                        Some((disk_full, error.to_string()));
                    self.meta.failed.store(true, Ordering::Release);
                    self.notify_listeners();
                    if self.meta.stop_requested() {
                        log::error!("persisting topics and offsets failed at shutdown: {error}");
                        return;
                    }
                    // Each attempt writes a whole new file and fsyncs it before the
                    // rename, so a later success does prove the new contents durable.
                    log::error!("persisting topics and offsets failed: {error}; retrying in 1 s");
                    self.meta.pause_before_retry(Duration::from_secs(1));
                    continue;
                }
            }
            self.meta.failed.store(false, Ordering::Release);
            *self
                .meta
                .failure
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()) = None;
            self.notify_listeners();
        }
    }
}

/// Whether `messages` (one send, or a batch stored whole or not at all) is an idempotent
/// producer's retry of messages already stored: `Some` with where each original is,
/// `None` when they are all new. A sequence stored with another message, a batch that
/// mixes stored and new sequences or repeats one, and a sequence older than the window
/// are refused: none of them is a retry the broker can answer truthfully.
fn retry_of(
    producers: &crate::producers::Producers,
    messages: &[Message],
) -> Result<Option<Vec<crate::producers::StoredAt>>, AppendError> {
    use crate::producers::Seen;
    // A producer's batch numbers its messages in order; anything else is checked for
    // repeats with a set (never pairwise: a batch may hold 65535 messages).
    let in_order = messages.windows(2).all(|pair| {
        pair[0].producer_id == pair[1].producer_id && pair[0].sequence < pair[1].sequence
    });
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

/// The index of one queue, or why there is none.
fn queue_of<'a>(
    state: &'a AppendState,
    topic: &str,
    queue_id: u32,
) -> Result<&'a QueueIndex, StoreError> {
    let queues = state
        .topics
        .get(topic)
        .ok_or_else(|| StoreError::TopicNotFound(topic.to_string()))?;
    queues
        .queues
        .get(queue_id as usize)
        .ok_or_else(|| StoreError::InvalidQueueId {
            topic: topic.to_string(),
            queue_id,
            queues: queues.queue_count(),
        })
}

fn lock_data_dir(
    disk: &dyn Disk,
    data_dir: &std::path::Path,
) -> Result<Box<dyn std::any::Any + Send + Sync>, StoreError> {
    let path = data_dir.join("LOCK");
    match disk.lock(&path) {
        Ok(guard) => Ok(guard),
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
            Err(StoreError::Locked { path })
        }
        Err(error) => Err(StoreError::io(format!("lock {}", path.display()), error)),
    }
}
