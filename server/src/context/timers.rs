//! What the timer (`broker/timer.rs`) reports: how late its deliveries were, how many
//! it made, and any pending timer that retention deleted (Prometheus).

use keel_storage::histogram::Histogram;
use std::sync::atomic::AtomicU64;

/// Lateness bounds, in seconds: 10 ms to an hour.
pub const LATENESS_SECONDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

pub struct TimerStats {
    /// From a message's `KEEL_DELIVER_AT` to its store in its topic.
    pub lateness: Histogram,
    /// Messages the timer stored in their topics.
    pub delivered: AtomicU64,
    /// Pending timers deleted by retention (`retention_bytes`) before their time.
    pub lost_to_retention: AtomicU64,
    /// Due messages that could not be stored: their topic was deleted (and
    /// `auto_create_topics` is off), or they no longer fit `max_message_bytes`.
    pub dropped: AtomicU64,
}

impl Default for TimerStats {
    fn default() -> TimerStats {
        TimerStats {
            lateness: Histogram::new(LATENESS_SECONDS),
            delivered: AtomicU64::new(0),
            lost_to_retention: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }
}
