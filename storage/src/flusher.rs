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

/// Bytes taken from the appenders in one go.
struct Batch {
    base: u64,
    bytes: Vec<u8>,
    records: u64,
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
    };
    let mut spare = Vec::with_capacity(1 << 20);
    let outcome = loop {
        let Some(batch) = flusher.take(&mut spare) else {
            break flusher.finish();
        };
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
                    records: std::mem::take(&mut state.pending_records),
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
                    records: 0,
                    segments_new: Vec::new(),
                    index: Vec::new(),
                });
            }
            state.flusher_waiting = true;
            state = if unsynced {
                let wait = self.sync_due.saturating_duration_since(now);
                store
                    .flusher_wakeup
                    .wait_timeout(state, wait)
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|poison| poison.into_inner().0)
            } else {
                store
                    .flusher_wakeup
                    .wait(state)
                    .unwrap_or_else(|poison| poison.into_inner())
            };
            state.flusher_waiting = false;
        }
    }

    /// Writes a batch to its segment files (creating rolled segments) and the
    /// ConsumeQueue files, then publishes the written offset.
    fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
        assert_eq!(batch.base, self.written);
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
            file.write_all_at(&batch.bytes[position..chunk_end], offset - base)
                .map_err(|e| {
                    StoreError::io(format!("write segment {}", segment_file_name(*base)), e)
                })?;
            if !self
                .unsynced
                .iter()
                .any(|unsynced| same_file(unsynced, file))
            {
                self.unsynced.push(file.clone());
            }
            position = chunk_end;
        }
        self.written = batch.base + batch.bytes.len() as u64;
        self.records_written += batch.records;
        if let Err(error) = self.index_files.write(&batch.index) {
            // ConsumeQueue files are rebuilt from the log at start-up; losing them is
            // not losing data, so this does not poison the log.
            log::warn!("writing consume queue files failed (rebuilt at next start): {error}");
        }
        self.store
            .progress
            .written
            .store(self.written, Ordering::Release);
        Ok(())
    }

    /// Creates the segment file that starts at `base`.
    ///
    /// Crash safety: the directory is fsynced after the create, so a crash leaves either
    /// no file or an empty one, which recovery accepts as the last segment.
    fn open_segment(&mut self, base: u64) -> Result<(), StoreError> {
        let dir = self.store.config.data_dir.join("commitlog");
        let path = dir.join(segment_file_name(base));
        let file = self
            .store
            .disk
            .open(&path, OpenMode::CreateNew)
            .map_err(|e| StoreError::io(format!("create {}", path.display()), e))?;
        crate::fs_util::sync_dir(self.store.disk.as_ref(), &dir)?;
        self.store.segments.push(base, file.clone());
        self.active = Some((base, file));
        Ok(())
    }

    /// fsyncs every file written since the last fsync and publishes the flushed offset.
    fn sync(&mut self) -> Result<(), StoreError> {
        let delay = self.store.config.fsync_delay_ms;
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
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
