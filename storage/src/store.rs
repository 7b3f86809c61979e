//! The store's life: opening a data directory (recovery), the threads that make
//! appends durable and persist metadata, the durability offsets everyone reads, and
//! shutting down. What the store does lives beside it: `append` (appends), `read`
//! (reads), `offsets` (topics and consumer offsets), `replica` (what replication needs),
//! `retention` (deleting old segments).

use crate::checkpoint::{Checkpoint, CheckpointFile};
use crate::config::{FlushMode, StoreConfig};
use crate::consume_queue::IndexFiles;
use crate::disk::{Disk, DiskFile, RealDisk};
use crate::flusher::{Batch, FlushTarget, SyncShared, Taken};
use crate::fs_util::create_dir_all_synced;
use crate::meta::{load_offsets, load_topics, Meta};
use crate::recovery::RecoveryReport;
use crate::segment::SegmentSet;
use crate::startup::{apply_topics_file, open_segments, reconcile_index_files, recover_log};
use crate::state::{AppendState, Progress, RetentionControl};
use crate::StoreError;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

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

type Listener = Arc<dyn Fn() + Send + Sync>;

pub struct Store {
    pub(crate) config: StoreConfig,
    pub(crate) state: Mutex<AppendState>,
    pub(crate) flusher_wakeup: Condvar,
    pub(crate) progress: Progress,
    /// What fsync rounds share with a truncation (see `SyncShared`).
    pub(crate) sync: SyncShared,
    pub(crate) segments: SegmentSet,
    pub(crate) meta: Meta,
    pub(crate) checkpoint: CheckpointFile,
    listeners: Mutex<Vec<Listener>>,
    /// Called after each write, before its fsync (replication streams from there).
    write_listeners: Mutex<Vec<Listener>>,
    /// `rollbacks[g]`: the offset generation `g` was rolled back to.
    pub(crate) rollbacks: Mutex<Vec<u64>>,
    pub(crate) retention: RetentionControl,
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
        let topics_path = data_dir.join("topics");
        let offsets_path = data_dir.join("offsets").join("consumer_offsets");
        let topics_file = load_topics(disk_ref, &topics_path)?;
        let mut recovered = recover_log(disk_ref, &config, checkpoint, &own_writes)?;
        let log_start = recovered
            .segment_paths
            .first()
            .map_or(recovered.report.offset_end, |(base, _)| *base);
        let stale = apply_topics_file(topics_file, &mut recovered.catalog, log_start);
        let mut offsets = load_offsets(disk_ref, &offsets_path)?;
        // The offsets file was written before the log's deletion of these topics.
        offsets.retain(|(_, topic, _), _| !stale.contains(topic));
        let epochs = crate::epochs::load(disk_ref, &data_dir.join("epochs"))?;
        let mut index_files = IndexFiles::new(disk.clone(), &data_dir.join("consumequeue"));
        reconcile_index_files(&mut index_files, &recovered.catalog.topics)?;
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

        // A deletion below the log's start has nothing left to delete: forgotten (the
        // topics file keeps the others).
        recovered.catalog.deleted.retain(|_, offsets| {
            offsets.retain(|at| *at >= log_start);
            !offsets.is_empty()
        });
        let records = recovered.catalog.records;
        let state = AppendState {
            offset_end,
            pending: Vec::with_capacity(1 << 20),
            pending_base: offset_end,
            pending_index: Vec::new(),
            segment_active_base: active.as_ref().map_or(offset_end, |(base, _)| *base),
            segments_new: Vec::new(),
            catalog: recovered.catalog,
            flusher_waiting: false,
            shutting_down: false,
            generation: 0,
            log_start,
            flusher_reset: None,
            index_topic: None,
        };
        state.check_invariants();
        let store = Arc::new(Store {
            state: Mutex::new(state),
            flusher_wakeup: Condvar::new(),
            progress: Progress::new(offset_end, records),
            sync: SyncShared::new(offset_end, records),
            segments,
            meta: Meta::new(topics_path, offsets_path, offsets),
            checkpoint: checkpoint_file,
            listeners: Mutex::new(Vec::new()),
            write_listeners: Mutex::new(Vec::new()),
            rollbacks: Mutex::new(Vec::new()),
            retention: RetentionControl::default(),
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
                Box::new(move || crate::flusher::run(flusher.as_ref(), active, index_files)),
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
        self.progress.written()
    }

    /// End of the records appended so far (in memory, not yet written or durable).
    pub fn offset_appended(&self) -> u64 {
        self.progress.appended.load(Ordering::Acquire)
    }

    /// End of the bytes handed to the file system so far. After a storage failure, a
    /// record that starts below it may be in the log after a restart (its outcome is
    /// unknown); one at or past it was never written (it is not stored).
    pub fn offset_attempted(&self) -> u64 {
        self.progress.attempted()
    }

    pub fn offset_flushed(&self) -> u64 {
        self.progress.flushed()
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

    /// True once a write or fsync failed: nothing more will become durable.
    pub fn is_poisoned(&self) -> bool {
        self.progress.is_poisoned()
    }

    /// Group commit timings: fsync durations and records per fsync.
    pub fn flush_timings(&self) -> &crate::histogram::FlushTimings {
        &self.progress.timings
    }

    pub fn stats(&self) -> StoreStats {
        let state = self.lock_state();
        StoreStats {
            offset_appended: state.offset_end,
            offset_written: self.offset_written(),
            offset_flushed: self.offset_flushed(),
            records_appended: state.catalog.records,
            records_flushed: self.progress.records_flushed.load(Ordering::Acquire),
            fsyncs: self.progress.fsyncs.load(Ordering::Acquire),
            segments: self.segments.count() as u64,
            topics: state.catalog.topics.len() as u64,
            poisoned: self.is_poisoned(),
            log_start: state.log_start,
            disk_full: self.is_disk_full(),
            producers: state.catalog.producers.len() as u64,
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
}

/// The flusher's view of the store.
impl FlushTarget for Store {
    fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn sync_shared(&self) -> &SyncShared {
        &self.sync
    }

    fn disk(&self) -> &dyn Disk {
        self.disk.as_ref()
    }

    fn progress(&self) -> &Progress {
        &self.progress
    }

    fn segments(&self) -> &SegmentSet {
        &self.segments
    }

    fn checkpoint(&self) -> &CheckpointFile {
        &self.checkpoint
    }

    fn take(&self, spare: &mut Vec<u8>, idle_wait: Duration) -> Taken {
        let mut state = self.lock_state();
        loop {
            if let Some(to) = state.flusher_reset.take() {
                return Taken::Reset {
                    to,
                    records: state.catalog.records,
                };
            }
            if !state.pending.is_empty() {
                let base = state.pending_base;
                let bytes = std::mem::replace(&mut state.pending, std::mem::take(spare));
                state.pending_base = state.offset_end;
                state.check_invariants();
                return Taken::Batch(Batch {
                    base,
                    bytes,
                    segments_new: std::mem::take(&mut state.segments_new),
                    index: std::mem::take(&mut state.pending_index),
                });
            }
            if state.shutting_down {
                return Taken::Shutdown;
            }
            state.flusher_waiting = true;
            let (guard, timeout) = self
                .flusher_wakeup
                .wait_timeout(state, idle_wait)
                .unwrap_or_else(|poison| poison.into_inner());
            state = guard;
            state.flusher_waiting = false;
            if (timeout.timed_out() || self.is_poisoned())
                && state.pending.is_empty()
                && state.flusher_reset.is_none()
                && !state.shutting_down
            {
                return Taken::Idle;
            }
        }
    }

    fn roll_back_appends(&self, to: u64, segment_active_base: u64) {
        Store::roll_back_appends(self, to, segment_active_base)
    }

    fn set_disk_full(&self, full: bool) {
        self.progress.disk_full.store(full, Ordering::Release);
        self.notify_listeners();
    }

    fn poison(&self, error: &StoreError) {
        log::error!("storage failed, the commit log is poisoned and takes no more writes: {error}");
        self.progress.poison();
        // Wake the flusher so it stops writing, and the loops so they answer.
        self.flusher_wakeup.notify_all();
        self.notify_listeners();
    }

    fn notify_listeners(&self) {
        self.settle_flushed_deletions();
        Store::notify_listeners(self)
    }

    fn notify_write_listeners(&self) {
        let listeners = self
            .write_listeners
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        for listener in listeners {
            listener();
        }
    }
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
