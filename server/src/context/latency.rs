//! Send latency by outcome, observed on the loops and read by `/metrics`.

use keel_storage::histogram::{Histogram, HistogramSnapshot};
use std::time::Duration;

/// Send latency by outcome (the labels of `keel_send_duration_seconds`).
pub struct SendLatency {
    by_outcome: Vec<(&'static str, Histogram)>,
}

impl Default for SendLatency {
    fn default() -> SendLatency {
        let outcomes = [
            "send_ok",
            "flush_disk_timeout",
            "flush_slave_timeout",
            "slave_not_available",
            "outcome_unknown",
            "failed",
        ];
        SendLatency {
            by_outcome: outcomes
                .into_iter()
                .map(|outcome| (outcome, Histogram::new(keel_storage::histogram::SECONDS)))
                .collect(),
        }
    }
}

impl SendLatency {
    /// Records the time from a send's arrival to `response`, under the response's
    /// outcome.
    pub fn observe(&self, response: &keel_protocol::Response, elapsed: Duration) {
        use keel_protocol::{Response, SendStatus};
        let outcome = match response {
            Response::SendResult(result) => status_name(result.status),
            Response::SendBatchResult(result) => status_name(result.status),
            _ => "failed",
        };
        fn status_name(status: SendStatus) -> &'static str {
            match status {
                SendStatus::SendOk => "send_ok",
                SendStatus::FlushDiskTimeout => "flush_disk_timeout",
                SendStatus::FlushSlaveTimeout => "flush_slave_timeout",
                SendStatus::SlaveNotAvailable => "slave_not_available",
                SendStatus::OutcomeUnknown => "outcome_unknown",
            }
        }
        if let Some((_, histogram)) = self.by_outcome.iter().find(|(name, _)| *name == outcome) {
            histogram.observe_duration(elapsed);
        }
    }

    pub fn snapshots(&self) -> Vec<(String, HistogramSnapshot)> {
        self.by_outcome
            .iter()
            .map(|(outcome, histogram)| (format!("outcome=\"{outcome}\""), histogram.snapshot()))
            .collect()
    }
}
