//! State shared by every event loop.

use crate::config::Config;
use keel_storage::Store;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Default)]
pub struct Counters {
    pub connections: AtomicUsize,
    pub connections_total: AtomicU64,
    pub pending_sends: AtomicUsize,
    pub parked_pulls: AtomicUsize,
    pub sends_ok: AtomicU64,
    pub sends_flush_disk_timeout: AtomicU64,
    pub sends_failed: AtomicU64,
    pub sends_oneway: AtomicU64,
    pub pulls: AtomicU64,
    pub messages_pulled: AtomicU64,
    pub protocol_errors: AtomicU64,
}

pub struct Broker {
    pub config: Config,
    pub store: Arc<Store>,
    pub counters: Counters,
    pub started: Instant,
    shutting_down: AtomicBool,
}

impl Broker {
    pub fn new(config: Config, store: Arc<Store>) -> Broker {
        Broker {
            config,
            store,
            counters: Counters::default(),
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// The offset up to which sends are acked and pulls are served.
    pub fn offset_durable(&self) -> u64 {
        self.store.offset_durable()
    }

    /// Name/value pairs for the STATS frame and `keel stats`.
    pub fn stats(&self) -> Vec<(String, u64)> {
        let store = self.store.stats();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.counters;
        let average_batch = store.records_flushed.checked_div(store.fsyncs).unwrap_or(0);
        vec![
            (
                "uptime_ms".into(),
                self.started.elapsed().as_millis() as u64,
            ),
            (
                "flush_sync".into(),
                u64::from(self.config.flush == crate::config::Flush::Sync),
            ),
            ("offset_appended".into(), store.offset_appended),
            ("offset_written".into(), store.offset_written),
            ("offset_flushed".into(), store.offset_flushed),
            ("offset_durable".into(), self.offset_durable()),
            ("records_appended".into(), store.records_appended),
            ("records_flushed".into(), store.records_flushed),
            ("fsyncs".into(), store.fsyncs),
            ("records_per_fsync".into(), average_batch),
            ("segments".into(), store.segments),
            ("log_start".into(), store.log_start),
            ("topics".into(), store.topics),
            ("storage_poisoned".into(), u64::from(store.poisoned)),
            ("disk_full".into(), u64::from(store.disk_full)),
            (
                "connections".into(),
                counters.connections.load(Ordering::Relaxed) as u64,
            ),
            (
                "connections_total".into(),
                load(&counters.connections_total),
            ),
            (
                "pending_acks".into(),
                counters.pending_sends.load(Ordering::Relaxed) as u64,
            ),
            (
                "parked_pulls".into(),
                counters.parked_pulls.load(Ordering::Relaxed) as u64,
            ),
            ("sends_ok".into(), load(&counters.sends_ok)),
            (
                "sends_flush_disk_timeout".into(),
                load(&counters.sends_flush_disk_timeout),
            ),
            ("sends_failed".into(), load(&counters.sends_failed)),
            ("sends_oneway".into(), load(&counters.sends_oneway)),
            ("pulls".into(), load(&counters.pulls)),
            ("messages_pulled".into(), load(&counters.messages_pulled)),
            ("protocol_errors".into(), load(&counters.protocol_errors)),
        ]
    }
}
