//! Retention: deletes the oldest segments by age and size on its own thread.
//!
//! A pass picks the segments to go (never the active one, never data not yet fsynced),
//! moves each queue's first offset past them in memory, waits until the new first
//! offsets are persisted in the topics file, and only then deletes the files. Readers
//! that selected records just before keep working: the handles of deleted files are
//! dropped only at the next pass.

use crate::store::Store;
use crate::StoreError;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Store {
    pub(crate) fn run_retention(&self) {
        let interval = Duration::from_millis(self.config.retention_check_interval_ms.max(1));
        while self.retention.wait(interval) {
            if let Err(error) = self.apply_retention(keel_protocol::now_ms()) {
                log::error!("retention: {error}; trying again at the next pass");
            }
        }
    }

    /// Deletes the oldest segments that are past `retention_ms` (by their newest record's
    /// store time, against `now_ms`) or that make the log larger than `retention_bytes`:
    /// never the active segment, never data not yet fsynced. Queues then start at their
    /// first surviving record; a consumer below that gets `OffsetExpired`. Returns the
    /// number of segment files deleted.
    pub fn apply_retention(&self, now_ms: u64) -> Result<usize, StoreError> {
        let config = &self.config;
        // Handles of files deleted by the previous pass: no read can still need them.
        let retired = std::mem::take(&mut *self.retention.lock_retired());
        self.segments.remove(&retired);
        let bases = self.segments.bases();
        let flushed = self.offset_flushed();
        let log_start = {
            let mut state = self.lock_state();
            let mut new_start = state.log_start;
            let mut total = state.offset_end - state.log_start;
            for (index, base) in bases.iter().enumerate() {
                let Some(next) = bases.get(index + 1) else {
                    break;
                };
                if *base < new_start {
                    continue;
                }
                if *next > state.segment_active_base || *next > flushed {
                    break;
                }
                let newest = state
                    .catalog
                    .segment_newest_ms
                    .get(base)
                    .copied()
                    .unwrap_or(0);
                let too_old =
                    config.retention_ms > 0 && newest.saturating_add(config.retention_ms) < now_ms;
                let too_big = config.retention_bytes > 0 && total > config.retention_bytes;
                if !too_old && !too_big {
                    break;
                }
                total -= next - base;
                new_start = *next;
            }
            if new_start > state.log_start {
                let mut expired = 0u64;
                for topic in state.catalog.topics.values_mut() {
                    for queue in &mut topic.queues {
                        expired += queue.trim_before(new_start);
                    }
                }
                state.log_start = new_start;
                state
                    .catalog
                    .segment_newest_ms
                    .retain(|base, _| *base >= new_start);
                state.catalog.forget_retired_before(new_start);
                drop(state);
                log::info!("retention: the log now starts at offset {new_start} ({expired} messages expired)");
                self.retention
                    .version
                    .store(self.meta.bump(), Ordering::Release);
            }
            new_start
        };
        // Crash safety: files go only once every queue's new first offset is on disk, so
        // a crash in between can never make expired records readable again.
        let version = self.retention.version.load(Ordering::Acquire);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.meta_persisted() < version {
            // Persisting is failing (a full or broken disk): keep the files for now.
            let failing = self.meta_failure().is_some();
            if failing
                || std::time::Instant::now() >= deadline
                || !self.retention.wait(Duration::from_millis(2))
            {
                return Ok(0);
            }
        }
        let dir = config.data_dir.join("commitlog");
        let doomed: Vec<u64> = bases.into_iter().filter(|base| *base < log_start).collect();
        for base in &doomed {
            let path = dir.join(crate::segment::segment_file_name(*base));
            self.disk
                .remove_file(&path)
                .map_err(|e| StoreError::io(format!("remove {}", path.display()), e))?;
        }
        if !doomed.is_empty() {
            crate::fs_util::sync_dir(self.disk.as_ref(), &dir)?;
            log::info!(
                "retention: deleted {} segment(s) before offset {log_start}",
                doomed.len()
            );
        }
        self.retention.lock_retired().extend(&doomed);
        Ok(doomed.len())
    }
}
