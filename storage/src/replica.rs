//! What only replication needs from the store: the epoch history and which offsets this
//! broker appended itself, the identity of a record for proving where two logs meet,
//! records applied at the master's offsets on a slave, cutting a slave's log back to
//! the prefix it shares with its master, and the durable-offset cap.

use crate::catalog::{NewTopic, RecordFacts};
use crate::epochs::{self, Epoch};
use crate::flusher::FlushTarget;
use crate::state::AppendState;
use crate::store::Store;
use crate::StoreError;
use keel_protocol::{decode_record, peek_record_header, RECORD_FIXED_LEN};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub use keel_protocol::RecordId;

/// How long `truncate_to` waits for the flusher to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl Store {
    fn epochs_path(&self) -> std::path::PathBuf {
        self.config.data_dir.join("epochs")
    }

    /// The epoch history, oldest first (empty for a log no master ever wrote).
    pub fn epochs(&self) -> Vec<Epoch> {
        self.lock_epochs().clone()
    }

    /// The newest epoch number (0 when there is none).
    pub fn current_epoch(&self) -> u64 {
        self.lock_epochs().last().map_or(0, |e| e.epoch)
    }

    fn lock_epochs(&self) -> std::sync::MutexGuard<'_, Vec<Epoch>> {
        self.epochs
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Starts a new master epoch at the log's end and makes it durable. Called when a
    /// broker starts as a master and when a slave is promoted, before any append and
    /// while nothing appends (the disk writes happen without the append lock, which the
    /// event loops take). Epochs of the history that start past the end (learnt from a
    /// former master, never written here) are dropped first.
    pub fn begin_epoch(&self) -> Result<Epoch, StoreError> {
        self.begin_epoch_at_least(0)
    }

    /// `begin_epoch`, numbering the new epoch at least `minimum` (a controller assigns
    /// the number of an elected master's epoch: above every epoch of its group).
    pub fn begin_epoch_at_least(&self, minimum: u64) -> Result<Epoch, StoreError> {
        let end = self.lock_state().offset_end;
        // Crash safety: the own range is durable before any record is appended in the
        // epoch; a crash before the epoch is saved leaves a range that only claims
        // what this broker, restarting as a master, appends anyway.
        self.update_own_writes(|own| own.begin(end))?;
        let mut history = self.lock_epochs();
        let mut next = history.clone();
        next.retain(|e| e.start <= end);
        let epoch = Epoch {
            epoch: (history.last().map_or(0, |e| e.epoch) + 1).max(minimum),
            start: end,
        };
        next.push(epoch);
        epochs::save(self.disk.as_ref(), &self.epochs_path(), &next)?;
        *history = next;
        drop(history);
        assert_eq!(
            self.lock_state().offset_end,
            end,
            "begin_epoch runs while nothing appends"
        );
        Ok(epoch)
    }

    /// This broker follows a master from now on: what it appends from its log's end is
    /// the master's records, whose `flushed_before` values recovery must not trust here.
    /// Call before the first replicated append.
    pub fn follow_master(&self) -> Result<(), StoreError> {
        let end = self.lock_state().offset_end;
        self.update_own_writes(|own| own.end(end))
    }

    /// Where this broker appended as a master.
    pub fn own_writes(&self) -> crate::OwnWrites {
        self.lock_own_writes().clone()
    }

    fn lock_own_writes(&self) -> std::sync::MutexGuard<'_, crate::OwnWrites> {
        self.own_writes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Applies `change` and persists the ranges when it changed them.
    pub(crate) fn update_own_writes(
        &self,
        change: impl FnOnce(&mut crate::OwnWrites) -> bool,
    ) -> Result<(), StoreError> {
        let mut own = self.lock_own_writes();
        let mut next = own.clone();
        if change(&mut next) {
            let path = self.config.data_dir.join("own_writes");
            crate::own_writes::save(self.disk.as_ref(), &path, &next)?;
            *own = next;
        }
        Ok(())
    }

    /// Replaces the history with the master's (a slave follows its master's terms).
    pub fn adopt_epochs(&self, history: &[Epoch]) -> Result<(), StoreError> {
        epochs::validate_history(history).map_err(StoreError::InvalidArgument)?;
        let mut ours = self.lock_epochs();
        if ours.as_slice() == history {
            return Ok(());
        }
        epochs::save(self.disk.as_ref(), &self.epochs_path(), history)?;
        *ours = history.to_vec();
        Ok(())
    }

    /// The record that ends exactly at log offset `end`, if one does.
    pub fn record_ending_at(&self, end: u64) -> Result<Option<RecordId>, StoreError> {
        let Some(entry) = self.lock_state().catalog.record_ends_at(end) else {
            return Ok(None);
        };
        if end > self.offset_written() {
            return Ok(None);
        }
        let mut header = [0u8; 12];
        self.segments
            .read_at(entry.log_offset, &mut header)
            .map_err(|e| StoreError::io(format!("read the record at {}", entry.log_offset), e))?;
        Ok(peek_record_header(&header).map(|header| RecordId {
            start: entry.log_offset,
            size: header.total_size,
            crc: header.crc,
        }))
    }

    /// Slave side: appends whole records received from the master at the master's log
    /// offsets. Returns how many bytes of `bytes` were taken; a partial record at the
    /// end is left for the caller to complete. Each record's CRC is checked, and its log
    /// and queue offsets must continue this log exactly, or nothing more is taken.
    ///
    /// The records become durable through the flusher like any append; the slave
    /// reports `offset_flushed` back to its master.
    pub fn append_replicated(&self, bytes: &[u8]) -> Result<usize, StoreError> {
        if self.is_poisoned() {
            return Err(StoreError::io(
                "append replicated records",
                std::io::Error::other("the log is poisoned"),
            ));
        }
        let mut state = self.lock_state();
        if self.is_disk_full() {
            return Err(StoreError::io(
                "append replicated records",
                std::io::Error::from(std::io::ErrorKind::StorageFull),
            ));
        }
        let mut taken = 0usize;
        let mut created = false;
        while let Some(rest) = bytes.get(taken..) {
            let Some(header) = peek_record_header(rest) else {
                break;
            };
            let size = header.total_size;
            let max = self.config.max_record_bytes;
            if (size as usize) < RECORD_FIXED_LEN || size > max {
                return Err(StoreError::InvalidArgument(format!(
                    "the master sent a record of implausible size {size} at log offset {}",
                    state.offset_end
                )));
            }
            let Some(record_bytes) = rest.get(..size as usize) else {
                break;
            };
            created |= self.append_one_replicated(&mut state, record_bytes)?;
            taken += size as usize;
        }
        state.check_invariants();
        self.progress
            .appended
            .store(state.offset_end, Ordering::Release);
        if taken > 0 && state.flusher_waiting {
            self.flusher_wakeup.notify_one();
        }
        drop(state);
        if created {
            self.meta.bump();
        }
        Ok(taken)
    }

    /// Checks one whole record from the master and appends it; returns whether a topic
    /// or queue was created for it.
    fn append_one_replicated(
        &self,
        state: &mut AppendState,
        record_bytes: &[u8],
    ) -> Result<bool, StoreError> {
        let refused = |detail: String| StoreError::InvalidArgument(detail);
        let record = decode_record(record_bytes).map_err(|error| {
            refused(format!(
                "the master sent a damaged record at log offset {}: {error}",
                state.offset_end
            ))
        })?;
        if record.log_offset != state.offset_end {
            return Err(refused(format!(
                "the master sent a record for log offset {} but this log ends at {}",
                record.log_offset, state.offset_end
            )));
        }
        let size = u64::from(record.total_size);
        let segment_size = self.config.segment_size_bytes;
        let facts = RecordFacts::of_record(&record, state.segment_for(size, segment_size));
        let new_topic = NewTopic::WithQueues(self.config.default_queues);
        let created = state
            .catalog
            .note(&facts, new_topic)
            .map_err(|detail| refused(format!("the master sent an unusable record: {detail}")))?;
        if facts.deletes_topic {
            self.deletion_filed(state, &facts);
        }
        state.place(size, segment_size);
        state.pending.extend_from_slice(record_bytes);
        let index = facts.index_update(state.index_topic(&record.topic));
        state.appended(size, index);
        Ok(created)
    }

    /// A truncation cut the deletion of `topics`: once the topics file no longer says
    /// they are deleted (metadata `version`), the log is poisoned so the broker is
    /// restarted and recovery rebuilds them from their records.
    fn restart_for_undone_deletions(&self, topics: &[String], version: u64) {
        let started = Instant::now();
        while self.meta.persisted() < version && started.elapsed() < DRAIN_TIMEOUT {
            std::thread::sleep(Duration::from_millis(1));
        }
        let detail = format!(
            "the truncation removed the deletion of topic(s) {}, which the master never \
             made; restart the broker to rebuild them from the log",
            topics.join(", ")
        );
        log::error!("{detail}");
        FlushTarget::poison(
            self,
            &StoreError::io("truncate the log", std::io::Error::other(detail)),
        );
    }

    /// Slave side: cuts the log back to `to`, the end of a record (or the log start),
    /// after the master proved where the two histories part. Every record from `to` on
    /// is removed from the segment files (fsynced) and the indexes.
    ///
    /// The caller must be the only appender (a slave's replication thread) and must
    /// not append until this returns. A failure after the indexes were cut poisons the
    /// log (memory and disk disagree): restart the broker.
    pub fn truncate_to(&self, to: u64) -> Result<u64, StoreError> {
        let started = Instant::now();
        loop {
            let appended = self.progress.appended.load(Ordering::Acquire);
            if self.offset_written() == appended && self.offset_flushed() == appended {
                break;
            }
            if self.is_poisoned() || started.elapsed() > DRAIN_TIMEOUT {
                return Err(StoreError::io(
                    "truncate the log",
                    std::io::Error::other("the flusher did not drain the log in time"),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // No fsync round or checkpoint write runs beside the truncation, so neither
        // publishes the old end again once it is cut. Event loops never take this lock.
        let mut round = self.sync.lock_round();
        let (end, dropped, kept_base, undone) = self.truncate_in_memory(to)?;
        if end == to {
            return Ok(0);
        }
        let records = self.lock_state().catalog.records;
        self.sync.reset(&mut round, to, records);
        let outcome = self.truncate_files(to, kept_base);
        if outcome.is_ok() {
            round.checkpoint_written = to;
        }
        // The flusher (idle: everything was flushed) restarts from `to` in the kept
        // segment; wait until it has, so it never writes at the old end.
        self.lock_state().flusher_reset = Some(to);
        self.flusher_wakeup.notify_all();
        drop(round);
        if let Err(error) = outcome {
            FlushTarget::poison(self, &error);
            return Err(error);
        }
        while self.lock_state().flusher_reset.is_some() {
            if self.is_poisoned() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let version = self.meta.bump();
        self.notify_listeners();
        log::warn!(
            "truncated the log from {end} to {to}: {dropped} record(s) the master does not have were removed"
        );
        if !undone.is_empty() {
            self.restart_for_undone_deletions(&undone, version);
            return Err(StoreError::io(
                "truncate the log",
                std::io::Error::other("restart required to restore the topics"),
            ));
        }
        Ok(dropped)
    }

    /// The indexes and offsets of a truncation, under the append lock (memory only):
    /// readers stop seeing the records from `to` on, and retention keeps the segment
    /// holding `to`. Returns the old end, the records dropped, and the kept segment.
    fn truncate_in_memory(&self, to: u64) -> Result<(u64, u64, u64, Vec<String>), StoreError> {
        let mut state = self.lock_state();
        let end = state.offset_end;
        if to > end || to < state.log_start {
            return Err(StoreError::InvalidArgument(format!(
                "cannot truncate to {to}: the log holds [{}, {end})",
                state.log_start
            )));
        }
        if to == end {
            return Ok((end, 0, 0, Vec::new()));
        }
        if to != state.log_start && state.catalog.record_ends_at(to).is_none() {
            return Err(StoreError::InvalidArgument(format!(
                "cannot truncate to {to}: no record ends there"
            )));
        }
        let bases = self.segments.bases();
        let kept_base = bases
            .iter()
            .copied()
            .rev()
            .find(|base| *base < to || Some(base) == bases.first())
            .unwrap_or(to);
        // Everything is fsynced (the caller drained the flusher): every deletion settles
        // first. One in the cut part never happened on the master: its topic must come
        // back, which only recovery can do (its records are not in memory).
        let flushed = self.offset_flushed();
        state.catalog.settle_deletions(flushed);
        self.progress
            .deletions_pending
            .store(state.catalog.pending.len() as u64, Ordering::Release);
        let mut undone = Vec::new();
        for (name, offsets) in &mut state.catalog.deleted {
            if offsets.last().is_some_and(|at| *at >= to) {
                offsets.retain(|at| *at < to);
                undone.push(name.clone());
            }
        }
        state
            .catalog
            .deleted
            .retain(|_, offsets| !offsets.is_empty());
        let dropped = state.forget_from(to);
        state.pending.clear();
        state.pending_base = to;
        state.pending_index.clear();
        state.segments_new.clear();
        state.segment_active_base = kept_base;
        state
            .catalog
            .segment_newest_ms
            .retain(|base, _| *base <= kept_base);
        state.check_invariants();
        let progress = &self.progress;
        progress.appended.store(to, Ordering::Release);
        progress.attempted.store(to, Ordering::SeqCst);
        progress.written.store(to, Ordering::Release);
        progress.flushed.store(to, Ordering::Release);
        progress
            .records_flushed
            .store(state.catalog.records, Ordering::Release);
        // A cap set by replication must not let the cut records' offsets count as
        // confirmed when new records take them.
        let _ = progress
            .durable_cap
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cap| {
                (cap != u64::MAX && cap > to).then_some(to)
            });
        Ok((end, dropped, kept_base, undone))
    }

    /// The files of a truncation, without the append lock (the loops take it).
    ///
    /// Crash safety: the checkpoint moves back first. A crash before the files are
    /// cut leaves valid records past it, which recovery keeps (and the master has
    /// this slave cut again); a crash part way leaves a segment shorter than the
    /// next one's base past the checkpoint, which recovery cuts as a torn tail. A
    /// checkpoint still above `to` would make that look like corruption instead.
    /// The own ranges are cut next, before any replicated record can land at `to`:
    /// its `flushed_before` is the master's and must never count as this broker's.
    fn truncate_files(&self, to: u64, kept_base: u64) -> Result<(), StoreError> {
        self.checkpoint.write(crate::checkpoint::Checkpoint {
            offset_flushed: to,
            clean: false,
        })?;
        self.update_own_writes(|own| own.cut(to))?;
        let dir = self.config.data_dir.join("commitlog");
        let mut removed = Vec::new();
        for base in self.segments.bases() {
            if base < kept_base {
                continue;
            }
            let path = dir.join(crate::segment::segment_file_name(base));
            if base == kept_base {
                // The segment holding `to` (or the only one, emptied): cut it there.
                let file = self
                    .disk
                    .open(&path, crate::disk::OpenMode::ReadWrite)
                    .map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
                let length = to - base;
                let now = file
                    .len()
                    .map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?;
                if now > length {
                    file.set_len(length)
                        .and_then(|()| file.sync_data())
                        .map_err(|e| StoreError::io(format!("truncate {}", path.display()), e))?;
                }
            } else {
                self.disk
                    .remove_file(&path)
                    .map_err(|e| StoreError::io(format!("remove {}", path.display()), e))?;
                removed.push(base);
            }
        }
        crate::fs_util::sync_dir(self.disk.as_ref(), &dir)?;
        self.segments.remove(&removed);
        Ok(())
    }

    /// Caps the offset up to which sends are acknowledged and reads are served: a sync
    /// master sets it to what a slave has acknowledged, a slave to what its master
    /// confirmed. `u64::MAX` (the default) means no cap.
    pub fn set_durable_cap(&self, cap: u64) {
        self.progress.durable_cap.store(cap, Ordering::Release);
        self.notify_listeners();
    }

    /// Raises the cap (never lowers it).
    pub fn raise_durable_cap(&self, cap: u64) {
        if self.progress.durable_cap.fetch_max(cap, Ordering::AcqRel) < cap {
            self.notify_listeners();
        }
    }

    pub fn durable_cap(&self) -> u64 {
        self.progress.durable_cap.load(Ordering::Acquire)
    }
}
