//! Prometheus text exposition of the broker's counters (served by `serve.rs`).

use crate::context::Broker;
use keel_storage::histogram::HistogramSnapshot;
use std::fmt::Write as _;

/// What each STATS value is in Prometheus: its family, type, unit scale, labels and
/// help. A value not listed here is exported as a gauge `keel_<name>`, so that no
/// counter disappears from /metrics when one is added to STATS.
struct Mapping {
    stat: &'static str,
    family: &'static str,
    kind: Kind,
    /// Labels of this sample, as `name="value"` pairs.
    labels: &'static str,
    /// Multiplies the value (microseconds and milliseconds to seconds).
    scale: f64,
    help: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

const fn map(
    stat: &'static str,
    family: &'static str,
    kind: Kind,
    labels: &'static str,
    help: &'static str,
) -> Mapping {
    Mapping {
        stat,
        family,
        kind,
        labels,
        scale: 1.0,
        help,
    }
}

const fn scaled(mut mapping: Mapping, scale: f64) -> Mapping {
    mapping.scale = scale;
    mapping
}

use Kind::{Counter, Gauge};

const SENDS: &str = "Messages answered, by outcome (send_ok: durable as configured; oneway: no answer; deduplicated: an idempotent retry answered with the original).";
const OFFSETS: &str = "CommitLog end at each stage, in bytes: appended in memory, written to the page cache, fsynced, durable (acknowledged and served).";
const LOGINS: &str = "LOGIN requests by outcome.";
const CPU: &str = "CPU time the broker process used since it started, all threads.";

const MAPPINGS: &[Mapping] = &[
    scaled(
        map(
            "uptime_ms",
            "keel_uptime_seconds",
            Gauge,
            "",
            "Seconds since the broker started.",
        ),
        1e-3,
    ),
    scaled(
        map(
            "cpu_user_us",
            "keel_cpu_seconds_total",
            Counter,
            "mode=\"user\"",
            CPU,
        ),
        1e-6,
    ),
    scaled(
        map(
            "cpu_system_us",
            "keel_cpu_seconds_total",
            Counter,
            "mode=\"system\"",
            CPU,
        ),
        1e-6,
    ),
    map(
        "flush_sync",
        "keel_flush_sync",
        Gauge,
        "",
        "1 when SEND_OK waits for fsync (flush = \"sync\"), 0 for async.",
    ),
    map(
        "offset_appended",
        "keel_log_offset_bytes",
        Gauge,
        "stage=\"appended\"",
        OFFSETS,
    ),
    map(
        "offset_written",
        "keel_log_offset_bytes",
        Gauge,
        "stage=\"written\"",
        OFFSETS,
    ),
    map(
        "offset_flushed",
        "keel_log_offset_bytes",
        Gauge,
        "stage=\"flushed\"",
        OFFSETS,
    ),
    map(
        "offset_durable",
        "keel_log_offset_bytes",
        Gauge,
        "stage=\"durable\"",
        OFFSETS,
    ),
    map(
        "log_start",
        "keel_log_start_bytes",
        Gauge,
        "",
        "First CommitLog offset still stored (retention deleted what is before).",
    ),
    map(
        "records_appended",
        "keel_records_appended_total",
        Counter,
        "",
        "Records appended to the CommitLog.",
    ),
    map(
        "records_flushed",
        "keel_records_flushed_total",
        Counter,
        "",
        "Records fsynced.",
    ),
    map(
        "fsyncs",
        "keel_fsyncs_total",
        Counter,
        "",
        "Group commits (fsync rounds of the CommitLog).",
    ),
    map(
        "records_per_fsync",
        "keel_records_per_fsync_average",
        Gauge,
        "",
        "Records covered by one fsync, on average since the start.",
    ),
    map(
        "segments",
        "keel_segments",
        Gauge,
        "",
        "CommitLog segment files.",
    ),
    map(
        "topics",
        "keel_topics",
        Gauge,
        "",
        "Topics, the broker's own included.",
    ),
    map(
        "storage_poisoned",
        "keel_storage_poisoned",
        Gauge,
        "",
        "1 while writes are refused after a failed write or fsync (restart needed).",
    ),
    map(
        "disk_full",
        "keel_disk_full",
        Gauge,
        "",
        "1 while sends are refused for lack of disk space.",
    ),
    map(
        "connections",
        "keel_connections",
        Gauge,
        "",
        "Open client connections.",
    ),
    map(
        "connections_total",
        "keel_connections_accepted_total",
        Counter,
        "",
        "Client connections accepted.",
    ),
    map(
        "pending_acks",
        "keel_pending_acks",
        Gauge,
        "",
        "Sends stored and waiting for their fsync (or a slave).",
    ),
    map(
        "parked_pulls",
        "keel_parked_pulls",
        Gauge,
        "",
        "Long-polling PULLs waiting for messages.",
    ),
    map(
        "sends_ok",
        "keel_sends_total",
        Counter,
        "outcome=\"send_ok\"",
        SENDS,
    ),
    map(
        "sends_flush_disk_timeout",
        "keel_sends_total",
        Counter,
        "outcome=\"flush_disk_timeout\"",
        SENDS,
    ),
    map(
        "sends_flush_slave_timeout",
        "keel_sends_total",
        Counter,
        "outcome=\"flush_slave_timeout\"",
        SENDS,
    ),
    map(
        "sends_slave_not_available",
        "keel_sends_total",
        Counter,
        "outcome=\"slave_not_available\"",
        SENDS,
    ),
    map(
        "sends_failed",
        "keel_sends_total",
        Counter,
        "outcome=\"failed\"",
        SENDS,
    ),
    map(
        "sends_outcome_unknown",
        "keel_sends_total",
        Counter,
        "outcome=\"outcome_unknown\"",
        SENDS,
    ),
    map(
        "sends_oneway",
        "keel_sends_total",
        Counter,
        "outcome=\"oneway\"",
        SENDS,
    ),
    map(
        "sends_deduplicated",
        "keel_sends_total",
        Counter,
        "outcome=\"deduplicated\"",
        SENDS,
    ),
    map(
        "producers",
        "keel_idempotent_producers",
        Gauge,
        "",
        "Idempotent producers remembered.",
    ),
    map(
        "consumer_groups",
        "keel_consumer_groups",
        Gauge,
        "",
        "(group, topic) pairs with live members.",
    ),
    map(
        "pulls",
        "keel_pulls_total",
        Counter,
        "",
        "PULL requests served.",
    ),
    map(
        "messages_pulled",
        "keel_messages_pulled_total",
        Counter,
        "",
        "Messages served to consumers.",
    ),
    map(
        "protocol_errors",
        "keel_protocol_errors_total",
        Counter,
        "",
        "Connections closed for a protocol error (logged with the peer).",
    ),
    map(
        "logins_ok",
        "keel_logins_total",
        Counter,
        "outcome=\"ok\"",
        LOGINS,
    ),
    map(
        "logins_failed",
        "keel_logins_total",
        Counter,
        "outcome=\"failed\"",
        LOGINS,
    ),
    map(
        "unauthenticated_requests",
        "keel_unauthenticated_requests_total",
        Counter,
        "",
        "Requests refused for want of a login, and connections that never logged in.",
    ),
    map(
        "permission_denied",
        "keel_permission_denied_total",
        Counter,
        "",
        "Requests refused PERMISSION_DENIED.",
    ),
    map(
        "tls_handshake_failures",
        "keel_tls_handshake_failures_total",
        Counter,
        "",
        "Client connections that failed TLS.",
    ),
    map(
        "security_version",
        "keel_security_version",
        Gauge,
        "",
        "Changes made to users, tokens and permissions.",
    ),
    map(
        "epoch",
        "keel_epoch",
        Gauge,
        "",
        "The broker's master epoch.",
    ),
    scaled(
        map(
            "controller_last_answer_ms",
            "keel_controller_last_answer_age_seconds",
            Gauge,
            "",
            "Seconds since the controller last answered this broker's heartbeat.",
        ),
        1e-3,
    ),
    map(
        "controller_master_id",
        "keel_controller_master_id",
        Gauge,
        "",
        "The broker id the controller names master (18446744073709551615: none).",
    ),
    map(
        "controller_master_epoch",
        "keel_controller_master_epoch",
        Gauge,
        "",
        "The master epoch the controller decided.",
    ),
    map(
        "controller_sss_size",
        "keel_controller_sync_state_set_size",
        Gauge,
        "",
        "Replicas in the group's SyncStateSet.",
    ),
    map(
        "controller_sss_epoch",
        "keel_controller_sync_state_set_epoch",
        Gauge,
        "",
        "The SyncStateSet's epoch.",
    ),
    map(
        "controller_elections",
        "keel_controller_elections_total",
        Counter,
        "",
        "Elections of this group so far.",
    ),
    map(
        "controller_lease_valid",
        "keel_controller_lease_valid",
        Gauge,
        "",
        "1 while this master may acknowledge sends.",
    ),
    map(
        "slaves_connected",
        "keel_slaves_connected",
        Gauge,
        "",
        "Slaves connected to this master.",
    ),
    map(
        "slaves_in_sync",
        "keel_slaves_in_sync",
        Gauge,
        "",
        "Slaves in sync with this master.",
    ),
    map(
        "slave_acked_offset",
        "keel_slave_acked_offset_bytes",
        Gauge,
        "",
        "The highest offset a slave reported fsynced.",
    ),
    map(
        "slave_lag_bytes",
        "keel_slave_lag_bytes",
        Gauge,
        "",
        "Bytes the best slave is behind this master.",
    ),
    map(
        "master_connected",
        "keel_master_connected",
        Gauge,
        "",
        "1 while this slave is connected to its master.",
    ),
    map(
        "master_epoch",
        "keel_master_epoch",
        Gauge,
        "",
        "The master's epoch at this slave's last handshake.",
    ),
    map(
        "master_confirmed_offset",
        "keel_master_confirmed_offset_bytes",
        Gauge,
        "",
        "The offset the master confirmed to producers.",
    ),
    map(
        "lag_behind_master_bytes",
        "keel_master_lag_bytes",
        Gauge,
        "",
        "Bytes this slave is behind its master.",
    ),
];

/// Text for a label value: `\`, `"` and newlines escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition, each family once with its HELP and TYPE and all of its
/// samples together.
#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: f64) {
        match labels.is_empty() {
            true => {
                let _ = writeln!(self.out, "{name} {value}");
            }
            false => {
                let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
            }
        }
    }

    /// Counters without labels: (name, help, value).
    fn counters(&mut self, counters: &[(&str, &str, &std::sync::atomic::AtomicU64)]) {
        for (name, help, value) in counters {
            self.family(name, "counter", help);
            let value = value.load(std::sync::atomic::Ordering::Relaxed);
            self.sample(name, "", value as f64);
        }
    }

    fn histogram(&mut self, name: &str, help: &str, series: &[(String, HistogramSnapshot)]) {
        self.family(name, "histogram", help);
        for (labels, snapshot) in series {
            let comma = if labels.is_empty() { "" } else { "," };
            for (bound, count) in &snapshot.cumulative {
                let _ = writeln!(
                    self.out,
                    "{name}_bucket{{{labels}{comma}le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                self.out,
                "{name}_bucket{{{labels}{comma}le=\"+Inf\"}} {}",
                snapshot.count
            );
            let braces = |labels: &str| match labels.is_empty() {
                true => String::new(),
                false => format!("{{{labels}}}"),
            };
            let _ = writeln!(self.out, "{name}_sum{} {}", braces(labels), snapshot.sum);
            let _ = writeln!(
                self.out,
                "{name}_count{} {}",
                braces(labels),
                snapshot.count
            );
        }
    }
}

/// One family's samples before they are written.
struct Family {
    name: String,
    kind: Kind,
    help: &'static str,
    /// (labels, value)
    samples: Vec<(&'static str, f64)>,
}

/// Every STATS value under its Prometheus name, the role as a label, each queue's
/// stored range and each group's lag, and the latency histograms.
pub fn render(broker: &Broker) -> String {
    let stats = broker.stats();
    let mut families: Vec<Family> = Vec::new();
    for (stat, value) in &stats {
        let (family, kind, labels, scale, help) = match MAPPINGS.iter().find(|m| m.stat == stat) {
            Some(m) => (m.family.to_string(), m.kind, m.labels, m.scale, m.help),
            None if stat == "role" => continue,
            // Not in the table (yet): a gauge under its STATS name.
            None => (
                format!("keel_{stat}"),
                Gauge,
                "",
                1.0,
                "A STATS value (see docs/OPERATIONS.md, Metrics).",
            ),
        };
        let sample = (labels, *value as f64 * scale);
        match families.iter_mut().find(|known| known.name == family) {
            Some(known) => known.samples.push(sample),
            None => families.push(Family {
                name: family,
                kind,
                help,
                samples: vec![sample],
            }),
        }
    }
    // Families of other roles (a slave's on a master, the controller's without one) are
    // described without samples, so dashboards and alerts find every name.
    for mapping in MAPPINGS {
        if !families.iter().any(|known| known.name == mapping.family) {
            families.push(Family {
                name: mapping.family.to_string(),
                kind: mapping.kind,
                help: mapping.help,
                samples: Vec::new(),
            });
        }
    }
    let mut out = Exposition::default();
    for family in &families {
        out.family(&family.name, family.kind.name(), family.help);
        for (labels, value) in &family.samples {
            out.sample(&family.name, labels, *value);
        }
    }
    out.family(
        "keel_role",
        "gauge",
        "1 for this broker's role: master, async_master, sync_master or slave.",
    );
    out.sample(
        "keel_role",
        &format!("role=\"{}\"", broker.role().name()),
        1.0,
    );

    let offsets = broker.store.queue_stats(None);
    let queue_labels = |topic: &str, queue: usize| {
        format!(
            "topic=\"{}\",queue=\"{queue}\",internal=\"{}\"",
            label_value(topic),
            topic.starts_with('%')
        )
    };
    type Pick = fn(&keel_storage::QueueStat) -> u64;
    let families: [(&str, &str, Pick); 3] = [
        (
            "keel_queue_min_offset",
            "The first queue offset still stored, per queue (internal: the broker's own % topics).",
            |queue| queue.min_offset,
        ),
        (
            "keel_queue_max_offset",
            "The queue offset the next message will get, per queue.",
            |queue| queue.max_offset,
        ),
        (
            "keel_queue_stored_bytes",
            "Bytes of the log a queue's stored records take (headers included).",
            |queue| queue.bytes,
        ),
    ];
    for (name, help, pick) in families {
        out.family(name, "gauge", help);
        for (topic, queues) in &offsets {
            for (queue_id, queue) in queues.iter().enumerate() {
                out.sample(name, &queue_labels(topic, queue_id), pick(queue) as f64);
            }
        }
    }
    out.family(
        "keel_consumer_lag_messages",
        "gauge",
        "Messages of a queue a consumer group has not committed yet.",
    );
    let positions: Vec<(String, String, f64, f64)> = broker
        .consumer_positions()
        .into_iter()
        .map(|(group, topic, queue, committed, max)| {
            let labels = format!(
                "group=\"{}\",topic=\"{}\",queue=\"{queue}\",internal=\"{}\"",
                label_value(&group),
                label_value(&topic),
                group.starts_with('%') || topic.starts_with('%')
            );
            let seconds = broker.lag_seconds(&topic, queue, committed, max);
            (labels, topic, max.saturating_sub(committed) as f64, seconds)
        })
        .collect();
    for (labels, _, messages, _) in &positions {
        out.sample("keel_consumer_lag_messages", labels, *messages);
    }
    out.family(
        "keel_consumer_lag_seconds",
        "gauge",
        "How long the oldest message of a queue a consumer group has not committed has been stored (0 when none is left).",
    );
    for (labels, _, _, seconds) in &positions {
        out.sample("keel_consumer_lag_seconds", labels, *seconds);
    }

    let latency = broker.send_latency.snapshots();
    out.histogram(
        "keel_send_duration_seconds",
        "From a send's storing (in the page cache) to its answer, by outcome; sends refused before they were stored are not counted.",
        &latency,
    );
    let timings = broker.store.flush_timings();
    out.histogram(
        "keel_fsync_duration_seconds",
        "How long each group commit's fsyncs took.",
        &[(String::new(), timings.fsync_seconds.snapshot())],
    );
    out.histogram(
        "keel_records_per_fsync",
        "Records each group commit made durable.",
        &[(String::new(), timings.records_per_fsync.snapshot())],
    );
    let acks = match broker.ha() {
        crate::context::Ha::Master(master) => vec![(String::new(), master.ack_seconds.snapshot())],
        _ => Vec::new(),
    };
    out.histogram(
        "keel_replication_ack_duration_seconds",
        "On a master: from sending log bytes to a slave to its ack of their fsync.",
        &acks,
    );
    timer_metrics(broker, &mut out);
    transaction_metrics(broker, &mut out);
    out.family(
        "keel_group_queues_withheld",
        "gauge",
        "Queues of a group (and topic) its member asked for and was given nothing: another member has not let them go yet, or (an ordered group after a restart or promotion) they wait for their old owner to report.",
    );
    for (group, topic, queues) in broker.groups.withheld() {
        let labels = format!(
            "group=\"{}\",topic=\"{}\"",
            label_value(&group),
            label_value(&topic)
        );
        out.sample("keel_group_queues_withheld", &labels, queues as f64);
    }
    out.out
}

/// Transactions: how many are open, how they ended, the checks asked.
fn transaction_metrics(broker: &Broker, out: &mut Exposition) {
    let stats = &broker.transactions.stats;
    out.family(
        "keel_transactions_open",
        "gauge",
        "Transactions whose half message is stored and not ended (on a master).",
    );
    out.sample(
        "keel_transactions_open",
        "",
        stats.open.load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    let counters = [
        (
            "keel_transactions_committed_total",
            "Transactions committed (by END_TRANSACTION or by the broker).",
            &stats.committed,
        ),
        (
            "keel_transactions_rolled_back_total",
            "Transactions rolled back (by END_TRANSACTION or by the broker).",
            &stats.rolled_back,
        ),
        (
            "keel_transactions_resolved_by_broker_total",
            "Transactions the broker ended as transaction_unresolved says, after transaction_check_max checks.",
            &stats.resolved_by_broker,
        ),
        (
            "keel_transaction_checks_total",
            "Checks handed to producers (CHECK_TRANSACTIONS).",
            &stats.checks,
        ),
        (
            "keel_transactions_dropped_total",
            "Committed transactions whose message could not be stored: its topic was deleted (auto_create_topics off), or it no longer fits.",
            &stats.dropped,
        ),
    ];
    out.counters(&counters);
}

/// The timer: what waits in each level, how late deliveries were, what it delivered.
fn timer_metrics(broker: &Broker, out: &mut Exposition) {
    out.family(
        "keel_timer_pending",
        "gauge",
        "Messages waiting in the timer, by the hold of their level (a message waits in the level whose hold fits its time left).",
    );
    for (hold_ms, pending) in crate::broker::timer::pending(broker) {
        let labels = format!("hold_seconds=\"{}\"", hold_ms as f64 / 1000.0);
        out.sample("keel_timer_pending", &labels, pending as f64);
    }
    let timers = &broker.timers;
    out.histogram(
        "keel_timer_lateness_seconds",
        "From a delayed message's delivery time to its storing in its topic.",
        &[(String::new(), timers.lateness.snapshot())],
    );
    let counters = [
        (
            "keel_timer_delivered_total",
            "Delayed messages (and retries) the timer stored in their topics.",
            &timers.delivered,
        ),
        (
            "keel_timer_lost_to_retention_total",
            "Pending timers that retention (retention_bytes) deleted before their time.",
            &timers.lost_to_retention,
        ),
        (
            "keel_timer_dropped_total",
            "Due messages the timer could not store: their topic was deleted (auto_create_topics off), or they no longer fit.",
            &timers.dropped,
        ),
    ];
    out.counters(&counters);
}
