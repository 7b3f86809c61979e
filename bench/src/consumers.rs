//! `--consumers N`: push consumer groups on the bench topics (`--subscriptions` groups
//! a topic, N members each), measuring the latency from send to handler (the payload
//! carries its send time).

use crate::report::{new_histogram, ConsumerFigures};
use crate::shared::now_us;
use hdrhistogram::Histogram;
use keel_client::{ConsumeResult, Delivery, PushConsumer, PushConsumerOptions, StartFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Push consumer groups on the bench topics, measuring send-to-handler latency.
pub(crate) struct Consumers {
    members: Vec<PushConsumer>,
    groups: usize,
    /// The run's group names (deleted at the end) and the broker they are on.
    names: Vec<String>,
    address: String,
    handled: Arc<AtomicU64>,
    last_handled: Arc<Mutex<Instant>>,
    latency: Arc<Mutex<Histogram<u64>>>,
}

impl Consumers {
    /// `per_group` members in each of `subscriptions` groups on each of `topics`.
    pub(crate) fn start(
        address: &str,
        topics: &[String],
        subscriptions: usize,
        per_group: usize,
    ) -> Result<Option<Consumers>, String> {
        if per_group == 0 {
            return Ok(None);
        }
        let run = format!("bench-{}-{}", std::process::id(), now_us());
        let handled = Arc::new(AtomicU64::new(0));
        let last_handled = Arc::new(Mutex::new(Instant::now()));
        let latency = Arc::new(Mutex::new(new_histogram()));
        let mut members = Vec::with_capacity(topics.len() * subscriptions * per_group);
        let mut names: Vec<String> = Vec::new();
        let groups = (0..subscriptions)
            .flat_map(|subscription| topics.iter().map(move |topic| (subscription, topic)));
        let members_of = groups.flat_map(|group| std::iter::repeat_n(group, per_group));
        for (subscription, topic) in members_of {
            let group = match subscriptions {
                1 => run.clone(),
                _ => format!("{run}-{subscription}"),
            };
            if !names.contains(&group) {
                names.push(group.clone());
            }
            let (handled, last, latency) = (handled.clone(), last_handled.clone(), latency.clone());
            let options = PushConsumerOptions {
                start_from: StartFrom::Latest,
                heartbeat_interval: Duration::from_millis(200),
                connection: crate::args::connection_options(),
                ..PushConsumerOptions::default()
            };
            let consumer =
                PushConsumer::start(address, &group, topic, options, move |d: &Delivery| {
                    let payload = &d.record.payload;
                    if payload.len() >= 8 {
                        let mut sent = [0u8; 8];
                        sent.copy_from_slice(&payload[..8]);
                        let micros = now_us().saturating_sub(u64::from_le_bytes(sent)).max(1);
                        let _ = latency
                            .lock()
                            .unwrap_or_else(|poison| poison.into_inner())
                            .record(micros.min(60_000_000));
                    }
                    handled.fetch_add(1, Ordering::Relaxed);
                    *last.lock().unwrap_or_else(|poison| poison.into_inner()) = Instant::now();
                    ConsumeResult::Success
                })
                .map_err(|e| format!("consumer: {e}"))?;
            members.push(consumer);
        }
        // Let the members join and split the queues before the load starts.
        std::thread::sleep(Duration::from_millis(1500));
        Ok(Some(Consumers {
            groups: topics.len() * subscriptions,
            names,
            address: address.to_string(),
            members,
            handled,
            last_handled,
            latency,
        }))
    }

    /// Deliveries handled so far, over every group.
    pub(crate) fn handled(&self) -> Arc<AtomicU64> {
        self.handled.clone()
    }

    /// Waits (up to 30 s) until `expected` messages were handled; returns the report.
    pub(crate) fn finish(self, expected: u64, started: Instant) -> ConsumerFigures {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.handled.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let handled = self.handled.load(Ordering::Relaxed);
        let last = *self
            .last_handled
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let seconds = last
            .saturating_duration_since(started)
            .as_secs_f64()
            .max(0.001);
        let latency = self
            .latency
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        let (members, groups) = (self.members.len(), self.groups);
        for member in self.members {
            let _ = member.shutdown();
        }
        delete_groups(&self.address, &self.names);
        ConsumerFigures {
            members,
            groups,
            handled,
            p75_us: latency.value_at_quantile(0.75),
            p95_us: latency.value_at_quantile(0.95),
            p9999_us: latency.value_at_quantile(0.9999),
            mean_us: latency.mean(),
            expected,
            msgs_per_sec: handled as f64 / seconds,
            p50_us: latency.value_at_quantile(0.5),
            p99_us: latency.value_at_quantile(0.99),
            p999_us: latency.value_at_quantile(0.999),
            max_us: latency.max(),
        }
    }
}

/// The run's groups are its own: deleted once its members left, so that they do not
/// stay behind with a lag that grows forever.
fn delete_groups(address: &str, names: &[String]) {
    let admin = match keel_client::Admin::connect_with(address, &crate::args::connection_options())
    {
        Ok(admin) => admin,
        Err(error) => {
            log::warn!("cannot delete this run's consumer groups: {error}");
            return;
        }
    };
    for name in names {
        // Forced: its members just left, but stay "live" until their session times out.
        if let Err(error) = admin.delete_group(name, true) {
            log::warn!("cannot delete consumer group {name}: {error}");
        }
    }
}
