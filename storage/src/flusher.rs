//! The flusher thread: writes what the appenders buffered and fsyncs it (group commit).
//!
//! One `write` + one `fdatasync` covers every record appended while the previous fsync
//! ran, so with many senders one fsync acknowledges many records. In async mode the
//! bytes are written at once (a send is acknowledged when written) and fsynced every
//! `flush_interval_ms`.
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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);
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
    /// The segment being written: base offset and file.
    active: Option<(u64, Arc<dyn DiskFile>)>,
    /// Files written since the last fsync.
    unsynced: Vec<Arc<dyn DiskFile>>,
    index_files: IndexFiles,
    written: u64,
    records_written: u64,
    sync_due: Instant,
    checkpoint_due: Instant,
    space_check_due: Instant,
    /// Log fsyncs so far (for fault injection).
    syncs: u64,
}

pub(crate) fn run(
    store: &Store,
    active: Option<(u64, Arc<dyn DiskFile>)>,
    index_files: IndexFiles,
) {
    let now = Instant::now();
    let mut flusher = Flusher {
        store,
        active,
        unsynced: Vec::new(),
        index_files,
        written: store.offset_written(),
        records_written: store.progress.records_flushed.load(Ordering::Acquire),
        sync_due: now,
        checkpoint_due: now,
        space_check_due: now,
        syncs: 0,
    };
    let mut spare = Vec::with_capacity(1 << 20);
    let outcome = loop {
        flusher.check_space();
        let Some(batch) = flusher.take(&mut spare) else {
            break flusher.finish();
        };
        if batch.bytes.is_empty() && flusher.written == store.offset_flushed() {
            continue;
        }
        let result = flusher.write(&batch).and_then(|()| {
            if flusher.sync_needed() {
                flusher.sync()
            } else {
                store.notify_listeners();
                Ok(())
            }
        });
        if let Err(error) = result {
            break Err(error);
        }
        spare = batch.bytes;
        spare.clear();
    };
    if let Err(error) = outcome {
        log::error!("storage failed, the commit log is poisoned and takes no more writes: {error}");
        store.progress.poisoned.store(true, Ordering::Release);
        store.notify_listeners();
    }
}

impl Flusher<'_> {
    fn interval(&self) -> Duration {
        Duration::from_millis(self.store.config.flush_interval_ms.max(1))
    }

    fn sync_needed(&self) -> bool {
        self.store.config.flush == FlushMode::Sync || Instant::now() >= self.sync_due
    }

    /// Waits for appended bytes (or, in async mode, for a periodic fsync to be due) and
    /// takes them. `None` when shutting down with nothing left to write.
    fn take(&mut self, spare: &mut Vec<u8>) -> Option<Batch> {
        let store = self.store;
        let mut state = store.lock_state();
        loop {
            if !state.pending.is_empty() {
                let base = state.pending_base;
                let bytes = std::mem::replace(&mut state.pending, std::mem::take(spare));
                state.pending_base = state.offset_end;
                let batch = Batch {
                    base,
                    bytes,
                    segments_new: std::mem::take(&mut state.segments_new),
                    index: std::mem::take(&mut state.pending_index),
                };
                return Some(batch);
            }
            if state.shutting_down {
                return None;
            }
            let unsynced = self.written > store.offset_flushed();
            let now = Instant::now();
            if unsynced && now >= self.sync_due {
                return Some(Batch {
                    base: self.written,
                    bytes: Vec::new(),
                    segments_new: Vec::new(),
                    index: Vec::new(),
                });
            }
            // Idle waits are bounded so the free-space check keeps running.
            let wait = if unsynced {
                self.sync_due.saturating_duration_since(now)
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
            if timeout.timed_out() && state.pending.is_empty() && !state.shutting_down {
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
            file.write_all_at(&batch.bytes[position..chunk_end], offset - base)?;
            if !self
                .unsynced
                .iter()
                .any(|unsynced| same_file(unsynced, file))
            {
                self.unsynced.push(file.clone());
            }
            position = chunk_end;
            self.written = batch.base + position as u64;
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

    /// fsyncs every file written since the last fsync and publishes the flushed offset.
    fn sync(&mut self) -> Result<(), StoreError> {
        let config = &self.store.config;
        if config.fault_fsync_delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(config.fault_fsync_delay_ms));
        }
        self.syncs += 1;
        if self.syncs == config.fault_fsync_fail_at {
            let injected = std::io::Error::other("injected fsync failure (fault_fsync_fail_at)");
            return Err(StoreError::io("fsync the commit log", injected));
        }
        for file in self.unsynced.drain(..) {
            // Crash safety: once this returns, every byte written to this file so far is
            // on disk; only then may the flushed offset (and so any ack) move past it.
            file.sync_data()
                .map_err(|e| StoreError::io("fsync the commit log", e))?;
        }
        let progress = &self.store.progress;
        progress.fsyncs.fetch_add(1, Ordering::AcqRel);
        progress
            .records_flushed
            .store(self.records_written, Ordering::Release);
        progress.flushed.store(self.written, Ordering::Release);
        self.sync_due = Instant::now() + self.interval();
        self.store.notify_listeners();
        if Instant::now() >= self.checkpoint_due {
            self.store.checkpoint.write(Checkpoint {
                offset_flushed: self.written,
                clean: false,
            })?;
            self.checkpoint_due = Instant::now() + CHECKPOINT_INTERVAL;
        }
        Ok(())
    }

    /// Final fsync and a clean checkpoint at shutdown.
    fn finish(&mut self) -> Result<(), StoreError> {
        self.sync()?;
        self.store.checkpoint.write(Checkpoint {
            offset_flushed: self.written,
            clean: true,
        })
    }
}

/// Whether two handles are the same open file (compares the data pointers only).
fn same_file(a: &Arc<dyn DiskFile>, b: &Arc<dyn DiskFile>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}
