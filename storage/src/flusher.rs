//! The flusher thread: writes what the appenders buffered and fsyncs it (group commit).
//!
//! One `write` + one `fdatasync` covers every record appended while the previous fsync
//! ran, so with many senders one fsync acknowledges many records. In async mode the
//! bytes are written at once (a send is acknowledged when written) and a syncer thread
//! fsyncs them every `flush_interval_ms`, so a long periodic fsync never stalls writes.
//!
//! A failed write or fsync poisons the log: the flushed offset never moves again, the
//! appenders refuse new records, and the failed fsync is never retried (after an fsync
//! error the kernel may have dropped the dirty pages, so a later "successful" fsync would
//! prove nothing).
//!
//! The flusher sees the store only through `FlushTarget`: the batches appenders hand
//! over, the offsets it publishes, and the files it writes.

use crate::checkpoint::{Checkpoint, CheckpointFile};
use crate::config::{FlushMode, StoreConfig};
use crate::consume_queue::{IndexFiles, IndexUpdate};
use crate::disk::{Disk, DiskFile, OpenMode};
use crate::segment::{segment_file_name, SegmentSet};
use crate::state::Progress;
use crate::StoreError;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Under load the checkpoint is rewritten at most this often (each write is an fsync of
/// its own); records carry `flushed_before` in between.
pub(crate) const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);
/// Once appends stop, the checkpoint catches up with the flushed offset after this long
/// (debounced, so a trickle of single sends does not pay a second fsync each).
pub(crate) const CHECKPOINT_IDLE_DELAY: Duration = Duration::from_millis(20);
const SPACE_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// After ENOSPC, writes resume only with this much room above the reserve.
const RESUME_MARGIN_BYTES: u64 = 4 << 20;

fn is_disk_full(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::StorageFull || error.raw_os_error() == Some(28)
}

/// Bytes taken from the appenders in one go.
pub(crate) struct Batch {
    pub base: u64,
    pub bytes: Vec<u8>,
    pub segments_new: Vec<u64>,
    pub index: Vec<IndexUpdate>,
}

/// What the appenders have for the flusher.
pub(crate) enum Taken {
    Batch(Batch),
    /// Nothing was appended for `idle_wait`.
    Idle,
    /// `truncate_to` cut the log: writing restarts at `to`, with `records` records.
    Reset {
        to: u64,
        records: u64,
    },
    /// Shutting down, everything taken.
    Shutdown,
}

/// What the flusher needs of the store, and nothing more.
pub(crate) trait FlushTarget: Sync {
    fn config(&self) -> &StoreConfig;
    /// The fsync rounds' shared state (a truncation takes it too).
    fn sync_shared(&self) -> &SyncShared;
    fn disk(&self) -> &dyn Disk;
    fn progress(&self) -> &Progress;
    fn segments(&self) -> &SegmentSet;
    fn checkpoint(&self) -> &CheckpointFile;
    /// Waits up to `idle_wait` for appended bytes and takes them (`spare` becomes the
    /// appenders' next buffer).
    fn take(&self, spare: &mut Vec<u8>, idle_wait: Duration) -> Taken;
    /// After ENOSPC: forgets every append from `to` on (none of it reached the disk).
    fn roll_back_appends(&self, to: u64, segment_active_base: u64);
    /// The disk is (or is no longer) too full to take appends.
    fn set_disk_full(&self, full: bool);
    /// Writes failed: poisons the log and wakes whoever waits on it.
    fn poison(&self, error: &StoreError);
    fn notify_listeners(&self);
    fn notify_write_listeners(&self);
}

/// What fsync rounds share with whoever must not run beside one (`truncate_to`).
///
/// Lock order: `round`, then `unsynced`. `round` is held across an fsync round and
/// every checkpoint write; never by an event loop.
#[derive(Default)]
pub(crate) struct SyncShared {
    pub round: Mutex<SyncRound>,
    pub unsynced: Mutex<Unsynced>,
}

/// The state of fsync rounds and of the checkpoint file.
pub(crate) struct SyncRound {
    /// Rounds run so far (the fault-injection count).
    #[cfg(any(test, feature = "fault-injection"))]
    pub count: u64,
    /// When the checkpoint is next due under load.
    pub checkpoint_due: Instant,
    /// The offset the checkpoint file holds.
    pub checkpoint_written: u64,
}

impl Default for SyncRound {
    fn default() -> SyncRound {
        SyncRound {
            #[cfg(any(test, feature = "fault-injection"))]
            count: 0,
            checkpoint_due: Instant::now(),
            checkpoint_written: 0,
        }
    }
}

impl SyncShared {
    pub(crate) fn new(flushed: u64, records: u64) -> SyncShared {
        SyncShared {
            round: Mutex::new(SyncRound {
                checkpoint_written: flushed,
                ..SyncRound::default()
            }),
            unsynced: Mutex::new(Unsynced {
                files: Vec::new(),
                written: flushed,
                records,
            }),
        }
    }

    pub(crate) fn lock_round(&self) -> MutexGuard<'_, SyncRound> {
        self.round
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub(crate) fn lock_unsynced(&self) -> MutexGuard<'_, Unsynced> {
        self.unsynced
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// After `truncate_to` (with `round` held): nothing is unsynced, the log ends at
    /// `to`, and the checkpoint was moved back to it.
    pub(crate) fn reset(&self, round: &mut SyncRound, to: u64, records: u64) {
        let mut unsynced = self.lock_unsynced();
        unsynced.files.clear();
        unsynced.written = to;
        unsynced.records = records;
        round.checkpoint_written = round.checkpoint_written.min(to);
    }
}

struct Flusher<'a, T: FlushTarget> {
    target: &'a T,
    syncer: &'a Syncer<'a, T>,
    /// The segment being written: base offset and file.
    active: Option<(u64, Arc<dyn DiskFile>)>,
    index_files: IndexFiles,
    written: u64,
    records_written: u64,
    space_check_due: Instant,
    /// Log offset below which the page cache of the log was dropped.
    cache_dropped_to: u64,
}

/// The page cache behind the window is dropped in steps of at least this much.
const CACHE_DROP_STEP: u64 = 16 << 20;

/// Files written but not yet fsynced, and how far the log had been written then.
#[derive(Default)]
pub(crate) struct Unsynced {
    files: Vec<Arc<dyn DiskFile>>,
    pub written: u64,
    records: u64,
}

/// Makes written bytes durable: fsyncs every file written since the last fsync, then
/// publishes the flushed offset. The flusher calls it after each write in sync mode
/// (group commit); in async mode a thread of its own calls it every `flush_interval_ms`,
/// so a long periodic fsync never holds up writes (and so acks).
struct Syncer<'a, T: FlushTarget> {
    target: &'a T,
    shared: &'a SyncShared,
    stop: Mutex<bool>,
    wakeup: Condvar,
}

/// Runs the flusher (and in async mode the syncer) until shutdown or a failure.
pub(crate) fn run<T: FlushTarget>(
    target: &T,
    active: Option<(u64, Arc<dyn DiskFile>)>,
    index_files: IndexFiles,
) {
    let now = Instant::now();
    let progress = target.progress();
    let records = progress.records_flushed.load(Ordering::Acquire);
    let syncer = Syncer {
        target,
        shared: target.sync_shared(),
        stop: Mutex::new(false),
        wakeup: Condvar::new(),
    };
    let mut flusher = Flusher {
        target,
        syncer: &syncer,
        active,
        index_files,
        written: progress.written(),
        records_written: records,
        space_check_due: now,
        cache_dropped_to: 0,
    };
    let outcome = std::thread::scope(|scope| {
        let periodic = (target.config().flush == FlushMode::Async).then(|| {
            std::thread::Builder::new()
                .name("keel-syncer".into())
                .spawn_scoped(scope, || syncer.run_periodic())
        });
        let outcome = flusher.run();
        syncer.request_stop();
        if let Some(Ok(thread)) = periodic {
            let _ = thread.join();
        }
        // Final fsync and a clean checkpoint, once nothing else syncs.
        outcome.and_then(|()| syncer.sync()).and_then(|()| {
            let written = syncer.lock_unsynced().written;
            target.checkpoint().write(Checkpoint {
                offset_flushed: written,
                clean: true,
            })
        })
    });
    if let Err(error) = outcome {
        target.poison(&error);
    }
}

impl<T: FlushTarget> Syncer<'_, T> {
    fn lock_unsynced(&self) -> MutexGuard<'_, Unsynced> {
        self.shared.lock_unsynced()
    }

    /// Records that `file` holds written bytes and that the log is written to `written`.
    fn note_written(&self, file: Option<&Arc<dyn DiskFile>>, written: u64, records: u64) {
        let mut unsynced = self.lock_unsynced();
        if let Some(file) = file {
            if !unsynced.files.iter().any(|known| same_file(known, file)) {
                unsynced.files.push(file.clone());
            }
        }
        unsynced.written = written;
        unsynced.records = records;
    }

    /// fsyncs every file written so far and publishes the flushed offset.
    fn sync(&self) -> Result<(), StoreError> {
        let mut round = self.shared.lock_round();
        let progress = self.target.progress();
        // A failed round already took its files off the list: a later round would find
        // nothing to fsync and "succeed". After a failure nothing is ever published.
        if progress.is_poisoned() {
            return Err(StoreError::io(
                "fsync the commit log",
                std::io::Error::other("the log is poisoned"),
            ));
        }
        #[cfg(any(test, feature = "fault-injection"))]
        {
            round.count += 1;
            let config = self.target.config();
            if config.fault_fsync_delay_ms > 0 {
                std::thread::sleep(Duration::from_millis(config.fault_fsync_delay_ms));
            }
            if round.count == config.fault_fsync_fail_at {
                let injected =
                    std::io::Error::other("injected fsync failure (fault_fsync_fail_at)");
                return Err(StoreError::io("fsync the commit log", injected));
            }
        }
        // Everything up to `written` was written before it was recorded, so the fsyncs
        // below, which start after, cover it.
        let (files, written, records) = {
            let mut unsynced = self.lock_unsynced();
            (
                std::mem::take(&mut unsynced.files),
                unsynced.written,
                unsynced.records,
            )
        };
        let started = std::time::Instant::now();
        for file in files {
            // Crash safety: once this returns, every byte written to this file so far is
            // on disk; only then may the flushed offset (and so any ack) move past it.
            file.sync_data()
                .map_err(|e| StoreError::io("fsync the commit log", e))?;
        }
        progress
            .timings
            .fsync_seconds
            .observe_duration(started.elapsed());
        progress.publish_flushed(written, records);
        self.target.notify_listeners();
        self.checkpoint_with(&mut round, false)
    }

    /// Writes the flushed offset to the checkpoint when it is behind, and either
    /// `idle` (appends stopped) or the interval passed since the last write.
    ///
    /// Crash safety: the checkpoint only ever names an offset already fsynced, so a
    /// crash leaves it at or below the log's durable end; a torn checkpoint fails its
    /// CRC and recovery falls back to the records' own evidence.
    fn checkpoint(&self, idle: bool) -> Result<(), StoreError> {
        let mut round = self.shared.lock_round();
        self.checkpoint_with(&mut round, idle)
    }

    /// `checkpoint`, with the round already held (so no truncation runs meanwhile and
    /// the checkpoint's offset never goes past the log's end).
    fn checkpoint_with(&self, round: &mut SyncRound, idle: bool) -> Result<(), StoreError> {
        let flushed = self.target.progress().flushed();
        if flushed <= round.checkpoint_written || !(idle || Instant::now() >= round.checkpoint_due)
        {
            return Ok(());
        }
        self.target.checkpoint().write(Checkpoint {
            offset_flushed: flushed,
            clean: false,
        })?;
        round.checkpoint_written = flushed;
        round.checkpoint_due = Instant::now() + CHECKPOINT_INTERVAL;
        Ok(())
    }

    /// Whether the checkpoint is behind the flushed offset.
    fn checkpoint_behind(&self) -> bool {
        self.shared.lock_round().checkpoint_written < self.target.progress().flushed()
    }

    /// Async mode: fsync every `flush_interval_ms` until asked to stop.
    fn run_periodic(&self) {
        let interval = Duration::from_millis(self.target.config().flush_interval_ms.max(1));
        loop {
            {
                let stop = self
                    .stop
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                if *stop {
                    return;
                }
                let (stop, _) = self
                    .wakeup
                    .wait_timeout(stop, interval)
                    .unwrap_or_else(|poison| poison.into_inner());
                if *stop {
                    return;
                }
            }
            if self.lock_unsynced().written <= self.target.progress().flushed() {
                continue;
            }
            // Each periodic round is already seconds of work apart: its checkpoint is
            // written at once, so an idle broker's checkpoint is current.
            if let Err(error) = self.sync().and_then(|()| self.checkpoint(true)) {
                self.target.poison(&error);
                return;
            }
        }
    }

    fn request_stop(&self) {
        *self
            .stop
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = true;
        self.wakeup.notify_all();
    }
}

impl<T: FlushTarget> Flusher<'_, T> {
    /// Writes what the appenders buffer until shutdown (`Ok`) or a failure (`Err`).
    fn run(&mut self) -> Result<(), StoreError> {
        let mut spare = Vec::with_capacity(1 << 20);
        loop {
            if self.target.progress().is_poisoned() {
                // The syncer failed: nothing may be written (and so, in async mode, acked).
                return Err(StoreError::io(
                    "write the commit log",
                    std::io::Error::other("the log is poisoned"),
                ));
            }
            self.check_space();
            // Idle waits are bounded so the free-space check keeps running, and short
            // while the checkpoint lags, so it is written soon after appends stop.
            let idle_wait = if self.syncer.checkpoint_behind() {
                CHECKPOINT_IDLE_DELAY
            } else {
                SPACE_CHECK_INTERVAL
            };
            let batch = match self.target.take(&mut spare, idle_wait) {
                Taken::Batch(batch) => batch,
                // Idle: nothing was appended for a while.
                Taken::Idle => {
                    self.syncer.checkpoint(true)?;
                    continue;
                }
                // The truncation reset the fsync rounds' state itself.
                Taken::Reset { to, records } => {
                    self.written = to;
                    self.records_written = records;
                    self.active = self.target.segments().last();
                    continue;
                }
                Taken::Shutdown => return Ok(()),
            };
            self.write(&batch)?;
            self.target.notify_write_listeners();
            if self.target.config().flush == FlushMode::Sync {
                self.syncer.sync()?;
            } else {
                self.target.notify_listeners();
            }
            self.drop_cache_behind();
            spare = batch.bytes;
            spare.clear();
        }
    }

    /// Drops the cached pages of fsynced log bytes older than `page_cache_window_bytes`
    /// (they are clean; a later read of them goes to the disk). The kernel then hands
    /// those pages to new writes: taking fresh pages instead costs several times more
    /// per byte written (seen in VMs, where a fresh page is first touched by the guest).
    fn drop_cache_behind(&mut self) {
        let window = self.target.config().page_cache_window_bytes;
        if window == 0 {
            return;
        }
        let until = self.target.progress().flushed().saturating_sub(window);
        if until < self.cache_dropped_to.saturating_add(CACHE_DROP_STEP) {
            return;
        }
        let from = self.cache_dropped_to;
        for (base, file) in self.target.segments().overlapping(from, until) {
            let start = from.saturating_sub(base);
            let end = until - base;
            if let Err(error) = file.drop_cache(start, end.saturating_sub(start)) {
                log::debug!("dropping cached log pages failed: {error}");
            }
        }
        self.cache_dropped_to = until;
    }

    /// Writes a batch to its segment files (creating rolled segments) and the
    /// ConsumeQueue files, then publishes the written offset. ENOSPC is not fatal: the
    /// part that fit is kept, the rest is discarded (see `on_disk_full`).
    fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
        assert_eq!(batch.base, self.written);
        let outcome = self.write_chunks(batch);
        // Chunks end at segment boundaries, which are record boundaries: `written` is
        // always the end of a whole record.
        let done: Vec<&IndexUpdate> = batch
            .index
            .iter()
            .filter(|update| update.entry.offset_end() <= self.written)
            .collect();
        // Messages, not a topic's deletion.
        let messages = done
            .iter()
            .filter(|update| update.queue_id != crate::consume_queue::DROP_TOPIC)
            .count();
        self.records_written += messages as u64;
        self.syncer
            .note_written(None, self.written, self.records_written);
        if let Err(error) = self.index_files.write(done.iter().copied()) {
            // ConsumeQueue files are rebuilt from the log at start-up; losing them is
            // not losing data, so this does not poison the log.
            log::warn!("writing consume queue files failed (rebuilt at next start): {error}");
        }
        self.target.progress().publish_written(self.written);
        match outcome {
            Ok(()) => Ok(()),
            Err(error) if is_disk_full(&error) => self.on_disk_full(&error),
            Err(error) => Err(StoreError::io("write the commit log", error)),
        }
    }

    fn write_chunks(&mut self, batch: &Batch) -> std::io::Result<()> {
        let mut position = 0usize;
        let mut rolls = batch.segments_new.iter().copied().peekable();
        while position < batch.bytes.len() || rolls.peek().is_some() {
            let offset = batch.base + position as u64;
            if rolls.peek() == Some(&offset) || self.active.is_none() {
                rolls.next_if_eq(&offset);
                self.open_segment(offset)?;
            }
            let chunk_end = match rolls.peek() {
                Some(next) => (next - batch.base) as usize,
                None => batch.bytes.len(),
            };
            assert!(chunk_end >= position);
            let Some((base, file)) = &self.active else {
                unreachable!("a segment was just opened")
            };
            // From here these bytes may be in the file whatever the write returns: a
            // send among them that fails is answered "outcome unknown", not "not stored".
            // A failure published before this (the syncer's, in async mode) has had
            // them answered "not stored": then they are not written at all.
            let progress = self.target.progress();
            progress.publish_attempted(batch.base + chunk_end as u64);
            if progress.is_poisoned() {
                return Err(std::io::Error::other("the log is poisoned"));
            }
            let Some(chunk) = batch.bytes.get(position..chunk_end) else {
                unreachable!(
                    "chunk {position}..{chunk_end} of a {}-byte batch",
                    batch.bytes.len()
                )
            };
            file.write_all_at(chunk, offset - base)?;
            position = chunk_end;
            self.written = batch.base + position as u64;
            progress.publish_written(self.written);
            self.syncer
                .note_written(Some(file), self.written, self.records_written);
        }
        Ok(())
    }

    /// ENOSPC: cut the partial record the failed write may have left, then have the
    /// store forget every append after `written` (none of it reached the disk, so none
    /// of it was acknowledged or served) and refuse appends until space is freed.
    fn on_disk_full(&mut self, error: &std::io::Error) -> Result<(), StoreError> {
        log::error!(
            "disk full writing the commit log at offset {}: {error}",
            self.written
        );
        let active_base = match &self.active {
            Some((base, file)) if *base <= self.written => {
                // Crash safety: only bytes past the last whole record are cut; a crash
                // before this leaves a torn tail that recovery cuts the same way.
                file.set_len(self.written - base)
                    .map_err(|e| StoreError::io("cut a partial record after ENOSPC", e))?;
                *base
            }
            Some((base, _)) => *base,
            None => self.written,
        };
        self.space_check_due = Instant::now() + SPACE_CHECK_INTERVAL;
        self.target.roll_back_appends(self.written, active_base);
        self.target.notify_listeners();
        Ok(())
    }

    /// Refuses appends while free space is below `disk_min_free_bytes`, and accepts them
    /// again once it is back above it (with a margin after a real ENOSPC).
    fn check_space(&mut self) {
        let now = Instant::now();
        if now < self.space_check_due {
            return;
        }
        self.space_check_due = now + SPACE_CHECK_INTERVAL;
        let config = self.target.config();
        let free = match self.target.disk().free_bytes(&config.data_dir) {
            Ok(free) => free,
            Err(error) => {
                log::debug!(
                    "cannot read free space of {}: {error}",
                    config.data_dir.display()
                );
                return;
            }
        };
        let full_now = self.target.progress().disk_full.load(Ordering::Acquire);
        let threshold = if full_now {
            config
                .disk_min_free_bytes
                .saturating_add(RESUME_MARGIN_BYTES)
        } else {
            config.disk_min_free_bytes
        };
        let full = free < threshold;
        if full != full_now {
            if full {
                log::error!(
                    "free space {free} bytes is below disk_min_free_bytes {}: refusing writes",
                    config.disk_min_free_bytes
                );
            } else {
                log::warn!("free space is back to {free} bytes: accepting writes again");
            }
            self.target.set_disk_full(full);
        }
    }

    /// Creates the segment file that starts at `base`.
    ///
    /// Crash safety: the directory is fsynced after the create, so a crash leaves either
    /// no file or an empty one, which recovery accepts as the last segment.
    fn open_segment(&mut self, base: u64) -> std::io::Result<()> {
        let dir = self.target.config().data_dir.join("commitlog");
        let path = dir.join(segment_file_name(base));
        let disk = self.target.disk();
        let file = disk.open(&path, OpenMode::CreateNew)?;
        disk.sync_dir(&dir)?;
        self.target.segments().push(base, file.clone());
        self.active = Some((base, file));
        Ok(())
    }
}

/// Whether two handles are the same open file (compares the data pointers only).
fn same_file(a: &Arc<dyn DiskFile>, b: &Arc<dyn DiskFile>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}
