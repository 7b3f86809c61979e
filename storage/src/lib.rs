//! keel storage: a segmented CommitLog, ConsumeQueues derived from it, a group-commit
//! flusher, start-up recovery, and durable topic and consumer-offset metadata.
//!
//! Threads: callers (the server's event loops) append under one mutex, which is a memory
//! copy only. The flusher thread writes and `fdatasync`s everything appended so far in
//! one go (group commit) and publishes `offset_written` / `offset_flushed` (with
//! `flush = "async"`, a syncer thread does the periodic fsync instead). The metadata
//! thread persists topics and consumer offsets; the retention thread deletes old
//! segments. They wake registered listeners (the loops' `mio::Waker`s) after each step,
//! so no caller ever waits on the disk.
//!
//! On disk:
//! ```text
//! DATA_DIR/LOCK                               held (flock) while a broker runs
//! DATA_DIR/epochs                             master epochs: which term wrote which offsets
//! DATA_DIR/own_writes                         log ranges this broker appended as a master
//! DATA_DIR/checkpoint                         last fsynced log offset (a hint for recovery)
//! DATA_DIR/commitlog/00000000000000000000     segments named by base offset
//! DATA_DIR/consumequeue/TOPIC/QUEUE/00000000000000000000   20-byte index entries
//! DATA_DIR/topics                             topic -> queue count
//! DATA_DIR/offsets/consumer_offsets           group, topic, queue -> committed offset
//! ```

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod admin;
mod append;
mod catalog;
mod checkpoint;
mod config;
mod consume_queue;
mod deletion;
pub mod disk;
pub mod epochs;
mod error;
mod flusher;
mod fs_util;
pub mod histogram;
mod meta;
mod offsets;
mod own_writes;
mod producers;
mod read;
mod recovery;
mod replica;
mod retention;
mod segment;
#[cfg(any(test, feature = "fault-injection"))]
pub use keel_disk::sim;
mod startup;
mod state;
mod store;

pub use append::{AppendResult, TopicDeletion};
pub use config::{FlushMode, StoreConfig, DEFAULT_PAGE_CACHE_WINDOW_BYTES};
pub use consume_queue::{IndexEntry, INDEX_ENTRY_LEN};
pub use epochs::Epoch;
pub use error::{AppendError, StoreError};
pub use offsets::{GROUP_ORDERED, SETTINGS_TOPIC};
pub use own_writes::OwnWrites;
pub use read::{QueueRead, QueueStat, ReadStatus};
pub use recovery::RecoveryReport;
pub use replica::RecordId;
pub use store::{Store, StoreStats};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod crash_tests;
