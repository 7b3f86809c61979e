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

use crate::checkpoint::Checkpoint;
use crate::consume_queue::{IndexFiles, IndexUpdate};
use crate::disk::{DiskFile, OpenMode};
use crate::segment::segment_file_name;
use crate::store::{FlushMode, Store};
use crate::StoreError;
use std::sync::atomic::{AtomicU64, Ordering};
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
struct Batch {
    base: u64,
    bytes: Vec<u8>,
    segments_new: Vec<u64>,
    index: Vec<IndexUpdate>,
}

struct Flusher<'a> {
    store: &'a Store,
    syncer: &'a Syncer<'a>,
    /// The segment being written: base offset and file.
    active: Option<(u64, Arc<dyn DiskFile>)>,
    index_files: IndexFiles,
    written: u64,
    records_written: u64,
    space_check_due: Instant,
}

/// Files written but not yet fsynced, and how far the log had been written then.
#[derive(Default)]
struct Unsynced {
    files: Vec<Arc<dyn DiskFile>>,
    written: u64,
    records: u64,
}

/// Makes written bytes durable: fsyncs every file written since the last fsync, then
/// publishes the flushed offset. The flusher calls it after each write in sync mode
/// (group commit); in async mode a thread of its own calls it every `flush_interval_ms`,
/// so a long periodic fsync never holds up writes (and so acks).
struct Syncer<'a> {
    store: &'a Store,
    unsynced: Mutex<Unsynced>,
    /// One fsync round at a time; also guards the fault-injection count.
    round: Mutex<u64>,
    /// When the checkpoint is next due under load; held while the checkpoint is
    /// written, so its offset never goes down.
    checkpoint_due: Mutex<Instant>,
    /// The offset the checkpoint file holds.
    checkpoint_written: AtomicU64,
    stop: Mutex<bool>,
    wakeup: Condvar,
}

pub(crate) fn run(
    store: &Store,
    active: Option<(u64, Arc<dyn DiskFile>)>,
    index_files: IndexFiles,
) {
    let now = Instant::now();
    let syncer = Syncer {
        store,
        unsynced: Mutex::new(Unsynced {
            files: Vec::new(),
            written: store.offset_written(),
            records: store.progress.records_flushed.load(Ordering::Acquire),
        }),
        round: Mutex::new(0),
        checkpoint_due: Mutex::new(now),
        checkpoint_written: AtomicU64::new(store.offset_flushed()),
        stop: Mutex::new(false),
        wakeup: Condvar::new(),
    };
    let mut flusher = Flusher {
        store,
        syncer: &syncer,
        active,
        index_files,
        written: store.offset_written(),
        records_written: store.progress.records_flushed.load(Ordering::Acquire),
        space_check_due: now,
    };
    let outcome = std::thread::scope(|scope| {
        let periodic = (store.config.flush == FlushMode::Async).then(|| {
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
            store.checkpoint.write(Checkpoint {
                offset_flushed: written,
                clean: true,
            })
        })
    });
    if let Err(error) = outcome {
        syncer.poison(&error);
    }
}

impl Syncer<'_> {
    fn lock_unsynced(&self) -> MutexGuard<'_, Unsynced> {
        self.unsynced
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
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

    /// After `truncate_to`: nothing is unsynced, the log ends at `written`, and the
    /// checkpoint (moved back by the truncation) holds at most that.
    fn reset(&self, written: u64, records: u64) {
        let mut unsynced = self.lock_unsynced();
        unsynced.files.clear();
        unsynced.written = written;
        unsynced.records = records;
        self.checkpoint_written.fetch_min(written, Ordering::AcqRel);
    }

    /// fsyncs every file written so far and publishes the flushed offset.
    fn sync(&self) -> Result<(), StoreError> {
        let mut round = self
            .round
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        // A failed round already took its files off the list: a later round would find
        // nothing to fsync and "succeed". After a failure nothing is ever published.
        if self.store.is_poisoned() {
            return Err(StoreError::io(
                "fsync the commit log",
                std::io::Error::other("the log is poisoned"),
            ));
        }
        let config = &self.store.config;
        if config.fault_fsync_delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(config.fault_fsync_delay_ms));
        }
        *round += 1;
        if *round == config.fault_fsync_fail_at {
            let injected = std::io::Error::other("injected fsync failure (fault_fsync_fail_at)");
            return Err(StoreError::io("fsync the commit log", injected));
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
        for file in files {
            // Crash safety: once this returns, every byte written to this file so far is
            // on disk; only then may the flushed offset (and so any ack) move past it.
            file.sync_data()
                .map_err(|e| StoreError::io("fsync the commit log", e))?;
        }
        let progress = &self.store.progress;
        progress.fsyncs.fetch_add(1, Ordering::AcqRel);
        progress
            .records_flushed
            .fetch_max(records, Ordering::AcqRel);
        progress.flushed.fetch_max(written, Ordering::AcqRel);
        self.store.notify_listeners();
        self.checkpoint(false)
    }

    /// Writes the flushed offset to the checkpoint when it is behind, and either
    /// `idle` (appends stopped) or the interval passed since the last write.
    ///
    /// Crash safety: the checkpoint only ever names an offset already fsynced, so a
    /// crash leaves it at or below the log's durable end; a torn checkpoint fails its
    /// CRC and recovery falls back to the records' own evidence.
    fn checkpoint(&self, idle: bool) -> Result<(), StoreError> {
        let mut due = self
            .checkpoint_due
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let flushed = self.store.offset_flushed();
        let written = self.checkpoint_written.load(Ordering::Acquire);
        if flushed <= written || !(idle || Instant::now() >= *due) {
            return Ok(());
        }
        self.store.checkpoint.write(Checkpoint {
            offset_flushed: flushed,
            clean: false,
        })?;
        self.checkpoint_written.store(flushed, Ordering::Release);
        *due = Instant::now() + CHECKPOINT_INTERVAL;
        Ok(())
    }

    /// Whether the checkpoint is behind the flushed offset.
    fn checkpoint_behind(&self) -> bool {
        self.checkpoint_written.load(Ordering::Acquire) < self.store.offset_flushed()
    }

    /// Async mode: fsync every `flush_interval_ms` until asked to stop.
    fn run_periodic(&self) {
        let interval = Duration::from_millis(self.store.config.flush_interval_ms.max(1));
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
            if self.lock_unsynced().written <= self.store.offset_flushed() {
                continue;
            }
            // Each periodic round is already seconds of work apart: its checkpoint is
            // written at once, so an idle broker's checkpoint is current.
            if let Err(error) = self.sync().and_then(|()| self.checkpoint(true)) {
                self.poison(&error);
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

    fn poison(&self, error: &StoreError) {
        log::error!("storage failed, the commit log is poisoned and takes no more writes: {error}");
        self.store.progress.poisoned.store(true, Ordering::Release);
        // Wake the flusher so it stops writing, and the loops so they answer.
        self.store.flusher_wakeup.notify_all();
        self.store.notify_listeners();
    }
}

impl Flusher<'_> {
    /// Writes what the appenders buffer until shutdown (`Ok`) or a failure (`Err`).
    fn run(&mut self) -> Result<(), StoreError> {
        let mut spare = Vec::with_capacity(1 << 20);
        loop {
            if self.store.is_poisoned() {
                // The syncer failed: nothing may be written (and so, in async mode, acked).
                return Err(StoreError::io(
                    "write the commit log",
                    std::io::Error::other("the log is poisoned"),
                ));
            }
            self.check_space();
            let Some(batch) = self.take(&mut spare) else {
                return Ok(());
            };
            if batch.bytes.is_empty() {
                // Idle: nothing was appended for a while.
                self.syncer.checkpoint(true)?;
                continue;
            }
            self.write(&batch)?;
            self.store.notify_write_listeners();
            if self.store.config.flush == FlushMode::Sync {
                self.syncer.sync()?;
            } else {
                self.store.notify_listeners();
            }
            spare = batch.bytes;
            spare.clear();
        }
    }

    /// Waits for appended bytes and takes them. An empty batch means "idle for a while"
    /// (the caller checks free space); `None` means shutting down with nothing left.
    fn take(&mut self, spare: &mut Vec<u8>) -> Option<Batch> {
        let store = self.store;
        let mut state = store.lock_state();
        loop {
            if let Some(to) = state.flusher_reset.take() {
                // `truncate_to` cut the log (everything had been written and fsynced).
                self.written = to;
                self.records_written = state.records_appended;
                self.active = store.segments.last();
                self.syncer.reset(to, self.records_written);
                store.flusher_wakeup.notify_all();
            }
            if !state.pending.is_empty() {
                let base = state.pending_base;
                let bytes = std::mem::replace(&mut state.pending, std::mem::take(spare));
                state.pending_base = state.offset_end;
                return Some(Batch {
                    base,
                    bytes,
                    segments_new: std::mem::take(&mut state.segments_new),
                    index: std::mem::take(&mut state.pending_index),
                });
            }
            if state.shutting_down {
                return None;
            }
            // Idle waits are bounded so the free-space check keeps running, and short
            // while the checkpoint lags, so it is written soon after appends stop.
            let wait = if self.syncer.checkpoint_behind() {
                CHECKPOINT_IDLE_DELAY
            } else {
                SPACE_CHECK_INTERVAL
            };
            state.flusher_waiting = true;
            let (guard, timeout) = store
                .flusher_wakeup
                .wait_timeout(state, wait)
                .unwrap_or_else(|poison| poison.into_inner());
            state = guard;
            state.flusher_waiting = false;
            if (timeout.timed_out() || store.is_poisoned())
                && state.pending.is_empty()
                && !state.shutting_down
            {
                return Some(Batch {
                    base: self.written,
                    bytes: Vec::new(),
                    segments_new: Vec::new(),
                    index: Vec::new(),
                });
            }
        }
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
        self.records_written += done.len() as u64;
        self.syncer
            .note_written(None, self.written, self.records_written);
        if let Err(error) = self.index_files.write(done.iter().copied()) {
            // ConsumeQueue files are rebuilt from the log at start-up; losing them is
            // not losing data, so this does not poison the log.
            log::warn!("writing consume queue files failed (rebuilt at next start): {error}");
        }
        self.store
            .progress
            .written
            .store(self.written, Ordering::Release);
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
            let chunk_end_offset = batch.base + chunk_end as u64;
            self.store
                .progress
                .attempted
                .fetch_max(chunk_end_offset, Ordering::AcqRel);
            file.write_all_at(&batch.bytes[position..chunk_end], offset - base)?;
            position = chunk_end;
            self.written = batch.base + position as u64;
            self.store
                .progress
                .written
                .store(self.written, Ordering::Release);
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
        self.store.roll_back_appends(self.written, active_base);
        self.store.notify_listeners();
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
        let config = &self.store.config;
        let free = match self.store.disk.free_bytes(&config.data_dir) {
            Ok(free) => free,
            Err(error) => {
                log::debug!(
                    "cannot read free space of {}: {error}",
                    config.data_dir.display()
                );
                return;
            }
        };
        let full_now = self.store.is_disk_full();
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
            self.store.progress.disk_full.store(full, Ordering::Release);
            self.store.notify_listeners();
        }
    }

    /// Creates the segment file that starts at `base`.
    ///
    /// Crash safety: the directory is fsynced after the create, so a crash leaves either
    /// no file or an empty one, which recovery accepts as the last segment.
    fn open_segment(&mut self, base: u64) -> std::io::Result<()> {
        let dir = self.store.config.data_dir.join("commitlog");
        let path = dir.join(segment_file_name(base));
        let file = self.store.disk.open(&path, OpenMode::CreateNew)?;
        self.store.disk.sync_dir(&dir)?;
        self.store.segments.push(base, file.clone());
        self.active = Some((base, file));
        Ok(())
    }
}

/// Whether two handles are the same open file (compares the data pointers only).
fn same_file(a: &Arc<dyn DiskFile>, b: &Arc<dyn DiskFile>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}
