//! What a store is opened with.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// A send is durable once fsynced (group commit).
    Sync,
    /// A send is durable once written to the page cache; fsync every `flush_interval_ms`.
    Async,
}

/// Default of `StoreConfig::page_cache_window_bytes`.
pub const DEFAULT_PAGE_CACHE_WINDOW_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub segment_size_bytes: u64,
    pub flush: FlushMode,
    pub flush_interval_ms: u64,
    pub default_queues: u32,
    /// Largest record recovery accepts as plausible (and appends accept at all).
    pub max_record_bytes: u32,
    /// Refuse appends while the file system has less free space than this.
    pub disk_min_free_bytes: u64,
    /// Delete segments whose newest record is older than this (0 = keep forever).
    pub retention_ms: u64,
    /// Delete the oldest segments while the log is larger than this (0 = no limit).
    pub retention_bytes: u64,
    pub retention_check_interval_ms: u64,
    /// Keep about this many of the newest fsynced log bytes in the page cache and drop
    /// older ones (0 = leave it all to the kernel). Tailing consumers read the newest
    /// bytes; new writes reuse the dropped pages, which costs far less than taking
    /// fresh ones.
    pub page_cache_window_bytes: u64,
    /// Fault injection: sleep this long before every log fsync (0 = off).
    #[cfg(any(test, feature = "fault-injection"))]
    pub fault_fsync_delay_ms: u64,
    /// Fault injection: the n-th fsync of the log fails with EIO (0 = off).
    #[cfg(any(test, feature = "fault-injection"))]
    pub fault_fsync_fail_at: u64,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            segment_size_bytes: 1 << 30,
            flush: FlushMode::Sync,
            flush_interval_ms: 500,
            default_queues: 4,
            max_record_bytes: keel_protocol::DEFAULT_MAX_MESSAGE_BYTES
                + keel_protocol::RECORD_OVERHEAD_MAX,
            disk_min_free_bytes: 0,
            retention_ms: 0,
            retention_bytes: 0,
            retention_check_interval_ms: 10_000,
            page_cache_window_bytes: DEFAULT_PAGE_CACHE_WINDOW_BYTES,
            #[cfg(any(test, feature = "fault-injection"))]
            fault_fsync_delay_ms: 0,
            #[cfg(any(test, feature = "fault-injection"))]
            fault_fsync_fail_at: 0,
        }
    }
}
