//! Reads: what the indexes say (memory only, under the append lock), and the records
//! behind them (`pread`s, never under a lock an event loop takes). Everything here that
//! reads the disk is for reader threads, replication threads and operator lookups, not
//! for an event loop.

use crate::consume_queue::{IndexEntry, TopicQueues};
use crate::store::Store;
use crate::StoreError;
use keel_protocol::{decode_record, peek_record_header, Record, RECORD_FIXED_LEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    Found,
    NoNewMessages,
    OffsetOutOfRange,
    /// Below the first offset retention kept.
    OffsetExpired,
}

/// One queue's stored range and size (`Store::queue_stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStat {
    pub min_offset: u64,
    pub max_offset: u64,
    /// Bytes of the log the queue's stored records take (headers included).
    pub bytes: u64,
    /// Bytes of every record the queue got since the store opened (for rates).
    pub appended_bytes: u64,
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

impl Store {
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
            let queue = state.catalog.queue(topic, queue_id)?;
            max_offset = queue.durable_end(durable);
            min_offset = queue.first;
            let mut bytes = 0u64;
            if queue_offset >= min_offset && queue_offset < max_offset {
                let count = (max_offset - queue_offset).min(u64::from(max_messages.max(1)));
                for entry in queue.from(queue_offset).iter().take(count as usize) {
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
        while let Some(&first) = entries.get(index) {
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
            let Some(run) = out.get_mut(run_start..position) else {
                unreachable!("run {run_start}..{position} of {total} bytes")
            };
            self.segments.read_at(first.log_offset, run).map_err(|e| {
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
                |(topic, queue_id, offset)| match state.catalog.queue(topic, queue_id) {
                    Ok(queue) => queue.durable_end(durable) > offset || queue.first > offset,
                    Err(_) => true,
                },
            )
            .collect()
    }

    /// For each topic (or just `only`), each queue's (min, max) durable queue offsets.
    pub fn queue_offsets(&self, only: Option<&str>) -> Vec<(String, Vec<(u64, u64)>)> {
        self.queue_stats(only)
            .into_iter()
            .map(|(name, queues)| {
                let ranges = queues
                    .iter()
                    .map(|q| (q.min_offset, q.max_offset))
                    .collect();
                (name, ranges)
            })
            .collect()
    }

    /// Each queue's first and end offsets (as `queue_offsets`) and the bytes of the log
    /// its stored records take, per topic (`only` one). Memory only.
    pub fn queue_stats(&self, only: Option<&str>) -> Vec<(String, Vec<QueueStat>)> {
        let durable = self.offset_durable();
        let state = self.lock_state();
        state
            .catalog
            .topics
            .iter()
            .filter(|(name, _)| only.is_none_or(|only| only == name.as_str()))
            .map(|(name, topic)| {
                let queues = topic
                    .queues
                    .iter()
                    .map(|queue| QueueStat {
                        min_offset: queue.first,
                        max_offset: queue.durable_end(durable),
                        bytes: queue.bytes,
                        appended_bytes: queue.appended_bytes,
                    })
                    .collect();
                (name.clone(), queues)
            })
            .collect()
    }

    /// Queue count of a topic, if it exists.
    pub fn topic_queues(&self, name: &str) -> Option<u32> {
        self.lock_state()
            .catalog
            .topics
            .get(name)
            .map(TopicQueues::queue_count)
    }

    /// Each topic and its queue count.
    pub fn topic_list(&self) -> Vec<(String, u32)> {
        self.lock_state()
            .catalog
            .topics
            .iter()
            .map(|(name, topic)| (name.clone(), topic.queue_count()))
            .collect()
    }

    /// Up to `max_bytes` of the log from `from`, within one segment and never past what
    /// is written. Empty when `from` is the written end.
    pub fn read_log(&self, from: u64, max_bytes: usize) -> Result<Vec<u8>, StoreError> {
        let written = self.offset_written();
        let log_start = self.lock_state().log_start;
        if from < log_start {
            return Err(StoreError::BelowLogStart {
                offset: from,
                log_start,
            });
        }
        if from > written {
            return Err(StoreError::InvalidArgument(format!(
                "log offset {from} is past what is written ({written})"
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

    /// Whether `record` is no message any more: a deletion record, or a record of a
    /// topic deleted after it.
    pub fn is_deleted(&self, record: &keel_protocol::Record) -> bool {
        if record.flags & keel_protocol::RECORD_FLAG_TOPIC_DELETED != 0 {
            return true;
        }
        let state = self.lock_state();
        let catalog = &state.catalog;
        catalog
            .latest_deletion(&record.topic)
            .is_some_and(|at| record.log_offset < at)
            || catalog
                .pending
                .iter()
                .any(|p| p.topic == record.topic && record.log_offset < p.at)
    }

    /// The record starting at `log_offset`, if one does (checked by its CRC and its own
    /// log offset field).
    pub fn record_at(&self, log_offset: u64) -> Result<Option<Record>, StoreError> {
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
        let (mut low, mut high) = {
            let state = self.lock_state();
            let queue = state.catalog.queue(topic, queue_id)?;
            (queue.first, queue.durable_end(durable))
        };
        // Store times grow with the log offset, so the queue is sorted by them. Each
        // probe holds the append lock only to look up one entry: the queue's index is
        // never copied, and appends wait for no read of the disk.
        let entry_of = |queue_offset: u64| -> Result<Option<IndexEntry>, StoreError> {
            let state = self.lock_state();
            Ok(state.catalog.queue(topic, queue_id)?.get(queue_offset))
        };
        while low < high {
            let middle = low + (high - low) / 2;
            // An entry retention deleted meanwhile is older than everything left.
            let older = match entry_of(middle)? {
                None => true,
                Some(entry) => match self.store_time_of(entry.log_offset) {
                    Ok(stamp) => stamp < timestamp_ms,
                    Err(_) if entry_of(middle)?.is_none() => true,
                    Err(error) => return Err(error),
                },
            };
            if older {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok(low)
    }

    /// The store time of the durable record at `queue_offset` of a queue (`None` when
    /// there is none: past the end, or removed by retention). One small read of the log:
    /// for metrics and operator views, never for an event loop.
    pub fn queue_store_time(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
    ) -> Result<Option<u64>, StoreError> {
        let durable = self.offset_durable();
        let entry = {
            let state = self.lock_state();
            let queue = state.catalog.queue(topic, queue_id)?;
            if queue_offset >= queue.durable_end(durable) {
                return Ok(None);
            }
            queue.get(queue_offset)
        };
        let Some(entry) = entry else { return Ok(None) };
        match self.store_time_of(entry.log_offset) {
            Ok(stamp) => Ok(Some(stamp)),
            // Retention may have deleted the segment since the lookup.
            Err(_) if self.lock_state().log_start > entry.log_offset => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The store time of the record at `log_offset`, read from the log.
    fn store_time_of(&self, log_offset: u64) -> Result<u64, StoreError> {
        let mut stamp = [0u8; 8];
        let at = log_offset + keel_protocol::RECORD_STORE_TIMESTAMP_AT as u64;
        self.segments
            .read_at(at, &mut stamp)
            .map_err(|e| StoreError::io("read a record's store time", e))?;
        Ok(u64::from_le_bytes(stamp))
    }

    /// Calls `each` for every record of the log, oldest first, until it returns false.
    /// Reads the whole log: for operator lookups on a thread of their own, never for
    /// the hot path.
    pub fn scan(&self, mut each: impl FnMut(&Record) -> bool) -> Result<(), StoreError> {
        let mut position = self.lock_state().log_start;
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let chunk = match self.read_log(position, 1 << 20) {
                Ok(chunk) => chunk,
                // Retention deleted the segment under us: go on from the new start.
                Err(StoreError::BelowLogStart { log_start, .. }) if carry.is_empty() => {
                    position = log_start;
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
                if let Ok(record) = decode_record(carry.get(used..).unwrap_or_default()) {
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
