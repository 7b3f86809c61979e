//! What replication needs from the store: raw log bytes for a master to stream, records
//! applied at the master's offsets on a slave, the epoch history, and cutting a slave's
//! log back to the prefix it shares with its master.

use crate::consume_queue::{IndexEntry, IndexUpdate, QueueIndex, TopicQueues};
use crate::epochs::{self, Epoch};
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
        let end = self.lock_state().offset_end;
        // Crash safety: the own range is durable before any record is appended in the
        // epoch; a crash before the epoch is saved leaves a range that only claims
        // what this broker, restarting as a master, appends anyway.
        self.update_own_writes(|own| own.begin(end))?;
        let mut history = self.lock_epochs();
        let mut next = history.clone();
        next.retain(|e| e.start <= end);
        let epoch = Epoch {
            epoch: history.last().map_or(0, |e| e.epoch) + 1,
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

    /// Up to `max_bytes` of the log from `from`, within one segment and never past what
    /// is written. Empty when `from` is the written end.
    pub fn read_log(&self, from: u64, max_bytes: usize) -> Result<Vec<u8>, StoreError> {
        let written = self.offset_written();
        let log_start = self.lock_state().log_start;
        if from < log_start || from > written {
            return Err(StoreError::InvalidArgument(format!(
                "log offset {from} is outside the stored log [{log_start}, {written})"
            )));
        }
        let bases = self.segments.bases();
        let segment_end = bases
            .iter()
            .find(|base| **base > from)
            .map_or(written, |next| (*next).min(written));
        let length = (segment_end - from).min(max_bytes as u64) as usize;
        let mut bytes = vec![0u8; length];
        if length > 0 {
            self.segments
                .read_at(from, &mut bytes)
                .map_err(|e| StoreError::io(format!("read the commit log at {from}"), e))?;
        }
        Ok(bytes)
    }

    /// The record that ends exactly at log offset `end`, if one does.
    pub fn record_ending_at(&self, end: u64) -> Result<Option<RecordId>, StoreError> {
        let entry = {
            let state = self.lock_state();
            state
                .topics
                .values()
                .flat_map(|topic| topic.queues.iter())
                .find_map(|queue| {
                    let index = queue
                        .entries
                        .partition_point(|entry| entry.offset_end() < end);
                    queue
                        .entries
                        .get(index)
                        .filter(|entry| entry.offset_end() == end)
                        .copied()
                })
        };
        let Some(entry) = entry else {
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
        let max_record = self.config.max_record_bytes;
        while let Some(rest) = bytes.get(taken..) {
            let Some(header) = peek_record_header(rest) else {
                break;
            };
            if (header.total_size as usize) < RECORD_FIXED_LEN || header.total_size > max_record {
                return Err(StoreError::InvalidArgument(format!(
                    "the master sent a record of implausible size {} at log offset {}",
                    header.total_size, state.offset_end
                )));
            }
            if rest.len() < header.total_size as usize {
                break;
            }
            let record = decode_record(rest).map_err(|error| {
                StoreError::InvalidArgument(format!(
                    "the master sent a damaged record at log offset {}: {error}",
                    state.offset_end
                ))
            })?;
            let size = u64::from(record.total_size);
            if record.queue_id >= keel_protocol::QUEUES_MAX {
                return Err(StoreError::InvalidArgument(format!(
                    "the master sent a record for queue {} of {} at log offset {}, beyond \
                     the {} queues a topic may have",
                    record.queue_id,
                    record.topic,
                    record.log_offset,
                    keel_protocol::QUEUES_MAX
                )));
            }
            if record.log_offset != state.offset_end {
                return Err(StoreError::InvalidArgument(format!(
                    "the master sent a record for log offset {} but this log ends at {}",
                    record.log_offset, state.offset_end
                )));
            }
            let default_queues = self.config.default_queues;
            let topic = state.topics.entry(record.topic.clone()).or_insert_with(|| {
                created = true;
                TopicQueues::with_queues(default_queues)
            });
            while topic.queues.len() <= record.queue_id as usize {
                topic.queues.push(QueueIndex::default());
                created = true;
            }
            let queue = &mut topic.queues[record.queue_id as usize];
            if record.queue_offset != queue.end() {
                return Err(StoreError::InvalidArgument(format!(
                    "the master's record at log offset {} is queue offset {} of {}/{}, \
                     but that queue ends at {} here",
                    record.log_offset,
                    record.queue_offset,
                    record.topic,
                    record.queue_id,
                    queue.end()
                )));
            }
            let entry = IndexEntry {
                log_offset: record.log_offset,
                size: record.total_size,
                tags_hash: record.tags_hash(),
            };
            queue.entries.push(entry);
            let segment_used = state.offset_end - state.segment_active_base;
            if segment_used > 0 && segment_used + size > self.config.segment_size_bytes {
                state.segment_active_base = state.offset_end;
                let base = state.offset_end;
                state.segments_new.push(base);
            }
            state.pending_index.push(IndexUpdate {
                topic: record.topic.clone(),
                queue_id: record.queue_id,
                queue_offset: record.queue_offset,
                entry,
            });
            let active = state.segment_active_base;
            let newest = state.segment_newest_ms.entry(active).or_insert(0);
            *newest = (*newest).max(record.store_timestamp_ms);
            state
                .pending
                .extend_from_slice(&rest[..record.total_size as usize]);
            state.producers.record(
                record.producer_id,
                record.sequence,
                crate::producers::StoredAt {
                    queue_id: record.queue_id,
                    queue_offset: record.queue_offset,
                    log_offset: record.log_offset,
                    offset_end: record.log_offset + size,
                    message_crc: record.message_crc,
                },
            );
            state.offset_end += size;
            state.records_appended += 1;
            taken += record.total_size as usize;
        }
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

    /// Slave side: cuts the log back to `to`, the end of a record (or the log start),
    /// after the master proved where the two histories part. Every record from `to` on
    /// is removed from the segment files (fsynced) and the indexes.
    ///
    /// The caller must be the only appender (a slave's replication thread) and must
    /// not append until this returns.
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
        // In memory first, under the append lock (memory only): readers stop seeing the
        // records from `to` on, and retention keeps the segment holding `to`.
        let (end, dropped, records, kept_base) = {
            let mut state = self.lock_state();
            let end = state.offset_end;
            if to > end || to < state.log_start {
                return Err(StoreError::InvalidArgument(format!(
                    "cannot truncate to {to}: the log holds [{}, {end})",
                    state.log_start
                )));
            }
            if to == end {
                return Ok(0);
            }
            let on_boundary = to == state.log_start
                || state
                    .topics
                    .values()
                    .flat_map(|topic| topic.queues.iter())
                    .any(|queue| {
                        let index = queue.entries.partition_point(|e| e.offset_end() < to);
                        queue
                            .entries
                            .get(index)
                            .is_some_and(|e| e.offset_end() == to)
                    });
            if !on_boundary {
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
            let dropped = state.forget_from(to);
            state.pending.clear();
            state.pending_base = to;
            state.pending_index.clear();
            state.segments_new.clear();
            state.segment_active_base = kept_base;
            state.segment_newest_ms.retain(|base, _| *base <= kept_base);
            let progress = &self.progress;
            progress.appended.store(to, Ordering::Release);
            progress.attempted.store(to, Ordering::Release);
            progress.written.store(to, Ordering::Release);
            progress.flushed.store(to, Ordering::Release);
            progress
                .records_flushed
                .store(state.records_appended, Ordering::Release);
            // A cap set by replication must not let the cut records' offsets count as
            // confirmed when new records take them.
            let _ = progress
                .durable_cap
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cap| {
                    (cap != u64::MAX && cap > to).then_some(to)
                });
            (end, dropped, state.records_appended, kept_base)
        };
        // Then the disk, without the append lock (the loops take it).
        //
        // Crash safety: the checkpoint moves back first. A crash before the files are
        // cut leaves valid records past it, which recovery keeps (and the master has
        // this slave cut again); a crash part way leaves a segment shorter than the
        // next one's base past the checkpoint, which recovery cuts as a torn tail. A
        // checkpoint still above `to` would make that look like corruption instead.
        // The own ranges are cut next, before any replicated record can land at `to`:
        // its `flushed_before` is the master's and must never count as this broker's.
        self.checkpoint.write(crate::checkpoint::Checkpoint {
            offset_flushed: to,
            clean: false,
        })?;
        self.update_own_writes(|own| own.cut(to))?;
        let dir = self.config.data_dir.join("commitlog");
        let mut removed = Vec::new();
        for base in self.segments.bases() {
            let path = dir.join(crate::segment::segment_file_name(base));
            if base <= kept_base {
                if base < kept_base {
                    continue;
                }
                // The segment holding `to` (or the only one, emptied): cut it there.
                let file = self
                    .disk
                    .open(&path, crate::disk::OpenMode::ReadWrite)
                    .map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
                let length = to - base;
                if file
                    .len()
                    .map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?
                    > length
                {
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
        // The flusher (idle: everything was flushed) restarts from `to` in the kept
        // segment; wait until it has, so no fsync round publishes the old end again.
        self.lock_state().flusher_reset = Some(to);
        self.flusher_wakeup.notify_all();
        while self.lock_state().flusher_reset.is_some() {
            if self.is_poisoned() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        debug_assert_eq!(
            self.progress.records_flushed.load(Ordering::Acquire),
            records
        );
        self.meta.bump();
        self.notify_listeners();
        log::warn!(
            "truncated the log from {end} to {to}: {dropped} record(s) the master does not have were removed"
        );
        Ok(dropped)
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

    /// Each topic and its queue count.
    pub fn topic_list(&self) -> Vec<(String, u32)> {
        self.lock_state()
            .topics
            .iter()
            .map(|(name, topic)| (name.clone(), topic.queue_count()))
            .collect()
    }

    /// Every committed consumer offset: (group, topic, queue) -> offset.
    pub fn consumer_offsets(&self) -> Vec<(String, String, u32, u64)> {
        self.meta
            .offsets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .map(|((group, topic, queue), offset)| (group.clone(), topic.clone(), *queue, *offset))
            .collect()
    }

    /// Slave side: takes the master's consumer offsets (they overwrite local ones).
    /// Offsets for queues this log does not have yet are kept anyway.
    pub fn apply_consumer_offsets(&self, offsets: &[(String, String, u32, u64)]) {
        let mut changed = false;
        {
            let mut ours = self
                .meta
                .offsets
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            for (group, topic, queue, offset) in offsets {
                let key = (group.clone(), topic.clone(), *queue);
                if ours.get(&key) != Some(offset) {
                    ours.insert(key, *offset);
                    changed = true;
                }
            }
        }
        if changed {
            self.meta.bump();
        }
    }
}

impl Store {
    /// The record starting at `log_offset`, if one does (checked by its CRC and its own
    /// log offset field).
    pub fn record_at(&self, log_offset: u64) -> Result<Option<keel_protocol::Record>, StoreError> {
        let (log_start, written) = (self.lock_state().log_start, self.offset_written());
        if log_offset < log_start || log_offset >= written {
            return Ok(None);
        }
        let mut header = [0u8; 12];
        if self.segments.read_at(log_offset, &mut header).is_err() {
            return Ok(None);
        }
        let Some(header) = peek_record_header(&header) else {
            return Ok(None);
        };
        let size = header.total_size;
        if (size as usize) < RECORD_FIXED_LEN
            || size > self.config.max_record_bytes
            || log_offset + u64::from(size) > written
        {
            return Ok(None);
        }
        let mut bytes = vec![0u8; size as usize];
        self.segments
            .read_at(log_offset, &mut bytes)
            .map_err(|e| StoreError::io(format!("read the record at {log_offset}"), e))?;
        Ok(decode_record(&bytes)
            .ok()
            .filter(|record| record.log_offset == log_offset))
    }

    /// The first queue offset of a queue whose record was stored at or after
    /// `timestamp_ms` (the queue's durable end when none was).
    pub fn queue_offset_for_time(
        &self,
        topic: &str,
        queue_id: u32,
        timestamp_ms: u64,
    ) -> Result<u64, StoreError> {
        let durable = self.offset_durable();
        let (first, entries) = {
            let state = self.lock_state();
            let queue = state
                .topics
                .get(topic)
                .ok_or_else(|| StoreError::TopicNotFound(topic.to_string()))?
                .queues
                .get(queue_id as usize)
                .ok_or_else(|| StoreError::InvalidQueueId {
                    topic: topic.to_string(),
                    queue_id,
                    queues: state.topics.get(topic).map_or(0, |t| t.queue_count()),
                })?;
            let end = queue.durable_end(durable) - queue.first;
            (queue.first, queue.entries[..end as usize].to_vec())
        };
        // Store times grow with the log offset, so the queue is sorted by them.
        let (mut low, mut high) = (0usize, entries.len());
        while low < high {
            let middle = low + (high - low) / 2;
            let mut stamp = [0u8; 8];
            self.segments
                .read_at(
                    entries[middle].log_offset + keel_protocol::RECORD_STORE_TIMESTAMP_AT as u64,
                    &mut stamp,
                )
                .map_err(|e| StoreError::io("read a record's store time", e))?;
            if u64::from_le_bytes(stamp) < timestamp_ms {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok(first + low as u64)
    }

    /// Calls `each` for every record of the log, oldest first, until it returns false.
    /// Reads the whole log: for operator lookups on a thread of their own, never for
    /// the hot path.
    pub fn scan(
        &self,
        mut each: impl FnMut(&keel_protocol::Record) -> bool,
    ) -> Result<(), StoreError> {
        let mut position = self.lock_state().log_start;
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let chunk = match self.read_log(position, 1 << 20) {
                Ok(chunk) => chunk,
                // Retention deleted the segment under us: go on from the new start.
                Err(StoreError::InvalidArgument(_)) if carry.is_empty() => {
                    let start = self.lock_state().log_start;
                    if start <= position {
                        return Ok(());
                    }
                    position = start;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if chunk.is_empty() {
                return Ok(());
            }
            position += chunk.len() as u64;
            carry.extend_from_slice(&chunk);
            let mut used = 0usize;
            while let Some(header) = carry.get(used..).and_then(peek_record_header) {
                let size = header.total_size as usize;
                if size < RECORD_FIXED_LEN || carry.len() - used < size {
                    break;
                }
                if let Ok(record) = decode_record(&carry[used..]) {
                    if !each(&record) {
                        return Ok(());
                    }
                }
                used += size;
            }
            carry.drain(..used);
        }
    }
}
