//! The store's shared state: what appenders change under the append lock
//! (`AppendState`), and the offsets the flusher publishes for everyone (`Progress`).

use crate::catalog::Catalog;
use crate::consume_queue::IndexUpdate;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Append-side state, under one mutex. Appends are memory copies only.
///
/// Invariants (`check_invariants`): `pending_base + pending.len() == offset_end`;
/// `segment_active_base <= offset_end`; `log_start <= offset_end`.
pub(crate) struct AppendState {
    pub offset_end: u64,
    /// Appended bytes the flusher has not taken yet, from `pending_base`.
    pub pending: Vec<u8>,
    pub pending_base: u64,
    pub pending_index: Vec<IndexUpdate>,
    pub segment_active_base: u64,
    /// Segments started by appends that the flusher has not created yet.
    pub segments_new: Vec<u64>,
    pub catalog: Catalog,
    pub flusher_waiting: bool,
    pub shutting_down: bool,
    /// Incremented by each disk-full rollback.
    pub generation: u64,
    /// First log offset still stored (the first segment's base; retention moves it).
    pub log_start: u64,
    /// Set by `truncate_to`: the flusher restarts writing at this offset.
    pub flusher_reset: Option<u64>,
    /// The topic name of the last index update, shared by the next ones of that topic.
    pub index_topic: Option<std::sync::Arc<str>>,
}

impl AppendState {
    /// The segment a record of `record_len` bytes appended now goes to: the active one,
    /// or, when it would not fit there, a new one starting at the log's end.
    pub(crate) fn segment_for(&self, record_len: u64, segment_size_bytes: u64) -> u64 {
        let segment_used = self.offset_end - self.segment_active_base;
        if segment_used > 0 && segment_used + record_len > segment_size_bytes {
            self.offset_end
        } else {
            self.segment_active_base
        }
    }

    /// Places a record of `record_len` bytes at the log's end (rolling to a new segment
    /// as `segment_for` says) and returns its log offset.
    pub(crate) fn place(&mut self, record_len: u64, segment_size_bytes: u64) -> u64 {
        let base = self.segment_for(record_len, segment_size_bytes);
        if base != self.segment_active_base {
            self.segment_active_base = base;
            self.segments_new.push(base);
        }
        self.offset_end
    }

    /// Records that `record_len` bytes were added to `pending` at the log's end, with
    /// their index entry for the flusher.
    pub(crate) fn appended(&mut self, record_len: u64, index: IndexUpdate) {
        self.pending_index.push(index);
        self.offset_end += record_len;
    }

    /// Drops every record at or after log offset `to` from the indexes and ends the log
    /// there; returns how many records went.
    pub(crate) fn forget_from(&mut self, to: u64) -> u64 {
        let dropped = self.catalog.forget_from(to);
        self.offset_end = to;
        dropped
    }

    /// `topic` as a shared name for index updates: one allocation per run of records of
    /// a topic, not one per record.
    pub(crate) fn index_topic(&mut self, topic: &str) -> std::sync::Arc<str> {
        match &self.index_topic {
            Some(name) if **name == *topic => name.clone(),
            _ => {
                let name: std::sync::Arc<str> = topic.into();
                self.index_topic = Some(name.clone());
                name
            }
        }
    }

    pub(crate) fn check_invariants(&self) {
        assert_eq!(
            self.pending_base + self.pending.len() as u64,
            self.offset_end
        );
        assert!(self.segment_active_base <= self.offset_end);
        assert!(self.log_start <= self.offset_end);
    }
}

/// Offsets published by the flusher, readable without the append lock.
///
/// Invariant: `flushed <= written <= attempted <= appended`, and `flushed` and
/// `written` never go down but for a slave's `truncate_to` (which resets all of them).
#[derive(Default)]
pub(crate) struct Progress {
    /// Mirror of `AppendState::offset_end`.
    pub appended: AtomicU64,
    /// End of the bytes handed to a `write` (they may be in the file even when it
    /// failed).
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
    /// Deletions whose record is not yet known fsynced (`Catalog::pending`).
    pub deletions_pending: AtomicU64,
    /// The end of the newest deletion record appended (0: none since the start).
    pub deletion_end: AtomicU64,
    pub timings: crate::histogram::FlushTimings,
}

impl Progress {
    pub(crate) fn new(offset_end: u64, records: u64) -> Progress {
        Progress {
            appended: AtomicU64::new(offset_end),
            attempted: AtomicU64::new(offset_end),
            written: AtomicU64::new(offset_end),
            flushed: AtomicU64::new(offset_end),
            records_flushed: AtomicU64::new(records),
            durable_cap: AtomicU64::new(u64::MAX),
            timings: crate::histogram::FlushTimings::default(),
            ..Progress::default()
        }
    }

    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    pub(crate) fn flushed(&self) -> u64 {
        self.flushed.load(Ordering::Acquire)
    }

    /// Sequentially consistent with `publish_attempted`: the flusher publishes what it
    /// is about to write, then looks for a failure; an event loop looks for a failure,
    /// then reads what was attempted. So a send the loop calls "not stored" is never
    /// written after all.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    pub(crate) fn attempted(&self) -> u64 {
        self.attempted.load(Ordering::SeqCst)
    }

    /// Bytes up to `end` are about to be handed to a `write`.
    pub(crate) fn publish_attempted(&self, end: u64) {
        self.attempted.fetch_max(end, Ordering::SeqCst);
    }

    /// Bytes up to `written` are in the files (page cache).
    pub(crate) fn publish_written(&self, written: u64) {
        let before = self.written.swap(written, Ordering::AcqRel);
        assert!(
            before <= written,
            "written went from {before} down to {written}"
        );
        assert!(written <= self.attempted());
    }

    /// One fsync round made everything up to `flushed` (`records` records) durable.
    pub(crate) fn publish_flushed(&self, flushed: u64, records: u64) {
        assert!(
            flushed <= self.written(),
            "fsynced {flushed} past what was written"
        );
        self.fsyncs.fetch_add(1, Ordering::AcqRel);
        let before = self.records_flushed.fetch_max(records, Ordering::AcqRel);
        self.timings
            .records_per_fsync
            .observe(records.saturating_sub(before) as f64);
        // Rounds run one at a time (under `SyncRound`), each from what the one before
        // left: the durable offset an ack was given on never moves back.
        let before = self.flushed.swap(flushed, Ordering::AcqRel);
        assert!(
            before <= flushed,
            "flushed went from {before} down to {flushed}"
        );
    }
}

/// The retention thread's control: its stop switch and what it deleted.
#[derive(Default)]
pub(crate) struct RetentionControl {
    /// Metadata version that records the latest trim; files wait for it.
    pub version: AtomicU64,
    /// Segments whose files were deleted; their handles go at the next pass.
    pub retired: std::sync::Mutex<Vec<u64>>,
    pub stop: std::sync::Mutex<bool>,
    pub wakeup: std::sync::Condvar,
}

impl RetentionControl {
    pub(crate) fn lock_retired(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.retired
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Sleeps up to `pause`; false once asked to stop.
    pub(crate) fn wait(&self, pause: std::time::Duration) -> bool {
        let stop = self
            .stop
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if *stop {
            return false;
        }
        let (stop, _) = self
            .wakeup
            .wait_timeout(stop, pause)
            .unwrap_or_else(|poison| poison.into_inner());
        !*stop
    }

    pub(crate) fn request_stop(&self) {
        *self
            .stop
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = true;
        self.wakeup.notify_all();
    }
}
