//! What a run counts and how it is reported: totals, latency histograms, a line a
//! second, the final report (text or JSON), and `--out`'s CSV and SVG.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Counts shared by every load thread.
#[derive(Default)]
pub(crate) struct Totals {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    /// Answered with a status other than SEND_OK (stored, not durable by the standard).
    pub not_ok: AtomicU64,
    /// Refused, lost, or not answered.
    pub errors: AtomicU64,
    /// Non-OK statuses and failures by kind, for the report.
    kinds: Mutex<BTreeMap<String, u64>>,
    /// Why the run ended early (the broker went away), if it did.
    ended_early: Mutex<Option<String>>,
}

impl Totals {
    pub(crate) fn count_status(&self, status: &str, messages: u64) {
        self.not_ok.fetch_add(messages, Ordering::Relaxed);
        *lock(&self.kinds).entry(status.to_string()).or_default() += messages;
    }

    pub(crate) fn count_failure(&self, kind: &str, messages: u64) {
        self.errors.fetch_add(messages, Ordering::Relaxed);
        *lock(&self.kinds).entry(kind.to_string()).or_default() += messages;
    }

    pub(crate) fn kinds(&self) -> Vec<(String, u64)> {
        lock(&self.kinds)
            .iter()
            .map(|(kind, count)| (kind.clone(), *count))
            .collect()
    }

    pub(crate) fn end_early(&self, why: String) {
        lock(&self.ended_early).get_or_insert(why);
    }

    pub(crate) fn ended_early(&self) -> Option<String> {
        lock(&self.ended_early).clone()
    }
}

/// Latencies of one load thread: the whole run, and the second in progress.
pub(crate) struct Recorder {
    histograms: Mutex<Recorded>,
}

struct Recorded {
    total: Histogram<u64>,
    second: Histogram<u64>,
    second_messages: u64,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            histograms: Mutex::new(Recorded {
                total: new_histogram(),
                second: new_histogram(),
                second_messages: 0,
            }),
        }
    }

    /// A request answered SEND_OK after `micros`, for `messages` messages.
    pub(crate) fn record(&self, micros: u64, messages: u64) {
        let micros = micros.clamp(1, 60_000_000);
        let mut recorded = lock(&self.histograms);
        let _ = recorded.total.record(micros);
        let _ = recorded.second.record(micros);
        recorded.second_messages += messages;
    }

    /// The second's latencies and SEND_OK messages so far; starts the next second.
    pub(crate) fn take_second(&self) -> (Histogram<u64>, u64) {
        let mut recorded = lock(&self.histograms);
        let second = std::mem::replace(&mut recorded.second, new_histogram());
        (second, std::mem::take(&mut recorded.second_messages))
    }

    pub(crate) fn total(&self) -> Histogram<u64> {
        lock(&self.histograms).total.clone()
    }
}

/// One second of the run.
#[derive(Debug, Clone)]
pub(crate) struct Second {
    pub at_s: f64,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub broker_cpu_us_per_msg: Option<f64>,
    /// The second's send latencies (for the OMB result's per-second lists).
    pub latency: Histogram<u64>,
    /// With consumers: deliveries a second, and the backlog (owed, not yet handled).
    pub consumed: Option<(f64, u64)>,
}

impl Second {
    pub(crate) fn line(&self) -> String {
        let mut line = format!(
            "{:>6.1}s {:>10.0} msgs/s {:>8.1} MB/s  p50 {:>6}us p99 {:>7}us max {:>7}us",
            self.at_s, self.msgs_per_sec, self.mb_per_sec, self.p50_us, self.p99_us, self.max_us
        );
        if let Some(cpu) = self.broker_cpu_us_per_msg {
            let _ = write!(line, "  broker {cpu:.2} us/msg");
        }
        line
    }
}

/// The figures of a whole run.
pub(crate) struct Summary {
    pub engine: &'static str,
    pub connections: usize,
    pub threads: usize,
    pub window: usize,
    pub size: usize,
    pub batch: usize,
    pub topics: usize,
    pub queues: u32,
    /// `--rate` (0: no limit).
    pub rate: f64,
    pub subscriptions: usize,
    /// The OMB workload's name, when it came from one.
    pub workload: Option<String>,
    pub mode: String,
    pub flush: String,
    pub role: String,
    pub slaves_in_sync: Option<u64>,
    pub elapsed_s: f64,
    pub sent: u64,
    pub ok: u64,
    pub not_ok: u64,
    pub errors: u64,
    pub kinds: Vec<(String, u64)>,
    pub ended_early: Option<String>,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency: Histogram<u64>,
    pub fsyncs: u64,
    pub records_per_fsync: f64,
    pub broker_cpu_us_per_msg: Option<f64>,
    pub bench_cpu_us_per_msg: f64,
    pub fsync_p50_us: Option<f64>,
    pub consumers: Option<ConsumerFigures>,
    pub seconds: Vec<Second>,
}

/// The percentiles every report gives, as (label, quantile).
const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("p99.99", 0.9999),
];

fn option_json(value: Option<f64>) -> String {
    value.map_or("null".to_string(), |value| format!("{value:.2}"))
}

impl Summary {
    fn quantile(&self, q: f64) -> u64 {
        self.latency.value_at_quantile(q)
    }

    fn min_us(&self) -> u64 {
        if self.latency.is_empty() {
            0
        } else {
            self.latency.min()
        }
    }

    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "keel-bench ({} engine): {} connections on {} thread(s), window {}, {} B x {} per \
             request, {} send; broker flush {}, role {}{}; {:.2} s",
            self.engine,
            self.connections,
            self.threads,
            self.window,
            self.size,
            self.batch,
            self.mode,
            self.flush,
            self.role,
            self.slaves_in_sync
                .map_or(String::new(), |n| format!(", {n} slave(s) in sync")),
            self.elapsed_s
        );
        let _ = writeln!(
            out,
            "{}{} topic(s) of {} queue(s){}",
            self.workload
                .as_ref()
                .map_or(String::new(), |name| format!("workload {name:?}: ")),
            self.topics,
            self.queues,
            match self.rate {
                0.0 => String::new(),
                rate => format!(", paced at {rate:.0} msgs/s"),
            }
        );
        let _ = writeln!(
            out,
            "sent {}  SEND_OK {}  other status {}  errors {}",
            self.sent, self.ok, self.not_ok, self.errors
        );
        for (kind, count) in &self.kinds {
            let _ = writeln!(out, "  {count} x {kind}");
        }
        if let Some(why) = &self.ended_early {
            let _ = writeln!(
                out,
                "the run ended early ({why}): the figures cover what ran until then"
            );
        }
        let _ = writeln!(
            out,
            "throughput: {:.0} msgs/s, {:.1} MB/s",
            self.msgs_per_sec, self.mb_per_sec
        );
        if self.mode != "oneway" {
            let mut line = format!("latency (us): min {}", self.min_us());
            for (label, q) in PERCENTILES {
                let _ = write!(line, "  {label} {}", self.quantile(q));
            }
            let _ = writeln!(out, "{line}  max {}", self.latency.max());
        }
        let _ = writeln!(
            out,
            "broker: {} fsyncs, {:.1} records per fsync{}",
            self.fsyncs,
            self.records_per_fsync,
            self.broker_cpu_us_per_msg
                .map_or(String::new(), |cpu| format!(
                    ", CPU {cpu:.2} us per message"
                ))
        );
        let _ = writeln!(
            out,
            "keel-bench itself: CPU {:.2} us per message",
            self.bench_cpu_us_per_msg
        );
        if let Some(report) = &self.consumers {
            let _ = writeln!(out, "{}", report.line());
        }
        if let Some(p50) = self.fsync_p50_us {
            let _ = writeln!(out, "disk: fdatasync of a 4 KiB append, median {p50:.1} us");
        }
        out
    }

    pub(crate) fn json(&self) -> String {
        let kinds: Vec<String> = self
            .kinds
            .iter()
            .map(|(kind, count)| format!("{kind:?}:{count}"))
            .collect();
        let seconds: Vec<String> = self
            .seconds
            .iter()
            .map(|s| {
                format!(
                    "{{\"at_s\":{:.1},\"msgs_per_sec\":{:.1},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"broker_cpu_us_per_msg\":{}}}",
                    s.at_s,
                    s.msgs_per_sec,
                    s.p50_us,
                    s.p99_us,
                    s.max_us,
                    option_json(s.broker_cpu_us_per_msg)
                )
            })
            .collect();
        let mut json = String::from("{");
        let mut field = |name: &str, value: String| {
            if json.len() > 1 {
                json.push(',');
            }
            let _ = write!(json, "\"{name}\":{value}");
        };
        field("engine", format!("{:?}", self.engine));
        field("producers", self.connections.to_string());
        field("connections", self.connections.to_string());
        field("threads", self.threads.to_string());
        field("window", self.window.to_string());
        field("size", self.size.to_string());
        field("batch", self.batch.to_string());
        field("topics", self.topics.to_string());
        field("queues", self.queues.to_string());
        field("rate", format!("{:.1}", self.rate));
        field("subscriptions", self.subscriptions.to_string());
        field(
            "workload",
            self.workload
                .as_ref()
                .map_or("null".to_string(), |name| format!("{name:?}")),
        );
        field("mode", format!("{:?}", self.mode));
        field("flush", format!("{:?}", self.flush));
        field("role", format!("{:?}", self.role));
        field(
            "slaves_in_sync",
            self.slaves_in_sync
                .map_or("null".to_string(), |n| n.to_string()),
        );
        field("elapsed_s", format!("{:.3}", self.elapsed_s));
        field("sent", self.sent.to_string());
        field("ok", self.ok.to_string());
        field("not_ok", self.not_ok.to_string());
        field("errors", self.errors.to_string());
        field("failures", format!("{{{}}}", kinds.join(",")));
        field(
            "ended_early",
            self.ended_early
                .as_ref()
                .map_or("null".to_string(), |why| format!("{why:?}")),
        );
        field("msgs_per_sec", format!("{:.1}", self.msgs_per_sec));
        field("mb_per_sec", format!("{:.2}", self.mb_per_sec));
        field("min_us", self.min_us().to_string());
        field("p50_us", self.quantile(0.5).to_string());
        field("p90_us", self.quantile(0.9).to_string());
        field("p99_us", self.quantile(0.99).to_string());
        field("p999_us", self.quantile(0.999).to_string());
        field("p9999_us", self.quantile(0.9999).to_string());
        field("max_us", self.latency.max().to_string());
        field("fsyncs", self.fsyncs.to_string());
        field(
            "records_per_fsync",
            format!("{:.1}", self.records_per_fsync),
        );
        field(
            "broker_cpu_us_per_msg",
            option_json(self.broker_cpu_us_per_msg),
        );
        field(
            "bench_cpu_us_per_msg",
            format!("{:.2}", self.bench_cpu_us_per_msg),
        );
        field("fsync_p50_us", option_json(self.fsync_p50_us));
        field(
            "consumers",
            self.consumers
                .as_ref()
                .map_or("null".to_string(), |figures| figures.json()),
        );
        field("per_second", format!("[{}]", seconds.join(",")));
        json.push('}');
        json
    }

    /// `--omb-json`: the run as OpenMessaging Benchmark's `TestResult` (its field names;
    /// latencies in milliseconds; the lists have one entry a second where OMB's have one
    /// every 10 s). End-to-end figures need consumers (`--consumers`).
    pub(crate) fn omb_result(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let ms = |micros: f64| micros / 1000.0;
        let mut result = Map::new();
        let mut put = |name: &str, value: Value| {
            result.insert(name.to_string(), value);
        };
        put(
            "workload",
            json!(self.workload.clone().unwrap_or_else(|| format!(
                "{} topic(s) / {} queue(s) / {} B",
                self.topics, self.queues, self.size
            ))),
        );
        put("driver", json!("keel"));
        put("messageSize", json!(self.size));
        put("topics", json!(self.topics));
        put(
            "partitions",
            json!(self.topics as u64 * u64::from(self.queues)),
        );
        put(
            "producersPerTopic",
            json!(self.connections / self.topics.max(1)),
        );
        let consumers_per_topic = self
            .consumers
            .as_ref()
            .map_or(0, |figures| figures.members / self.topics.max(1));
        put("consumersPerTopic", json!(consumers_per_topic));
        put(
            "publishRate",
            json!(self
                .seconds
                .iter()
                .map(|s| s.msgs_per_sec)
                .collect::<Vec<_>>()),
        );
        put(
            "publishErrorRate",
            json!(self.seconds.iter().map(|_| 0.0).collect::<Vec<f64>>()),
        );
        let consumed: Vec<(f64, u64)> = self.seconds.iter().filter_map(|s| s.consumed).collect();
        put(
            "consumeRate",
            json!(consumed.iter().map(|(rate, _)| *rate).collect::<Vec<_>>()),
        );
        put(
            "backlog",
            json!(consumed
                .iter()
                .map(|(_, backlog)| *backlog)
                .collect::<Vec<_>>()),
        );
        let per_second = |quantile: Option<f64>| -> Value {
            json!(self
                .seconds
                .iter()
                .map(|s| ms(match quantile {
                    Some(q) => s.latency.value_at_quantile(q) as f64,
                    None => s.latency.mean(),
                }))
                .collect::<Vec<_>>())
        };
        const QUANTILES: [(&str, f64); 8] = [
            ("50pct", 0.5),
            ("75pct", 0.75),
            ("95pct", 0.95),
            ("99pct", 0.99),
            ("999pct", 0.999),
            ("9999pct", 0.9999),
            ("99999pct", 0.99999),
            ("Max", 1.0),
        ];
        put("publishLatencyAvg", per_second(None));
        for (suffix, q) in QUANTILES {
            put(&format!("publishLatency{suffix}"), per_second(Some(q)));
        }
        put(
            "aggregatedPublishLatencyAvg",
            json!(ms(self.latency.mean())),
        );
        let mut quantiles = Map::new();
        for (suffix, q) in QUANTILES {
            let value = ms(self.latency.value_at_quantile(q) as f64);
            put(&format!("aggregatedPublishLatency{suffix}"), json!(value));
            if q < 1.0 {
                let percent = format!("{:.4}", q * 100.0);
                let percent = percent.trim_end_matches('0').trim_end_matches('.');
                quantiles.insert(percent.to_string(), json!(value));
            }
        }
        put(
            "aggregatedPublishLatencyQuantiles",
            Value::Object(quantiles),
        );
        if let Some(figures) = &self.consumers {
            put("aggregatedEndToEndLatencyAvg", json!(ms(figures.mean_us)));
            let figures_us = [
                ("50pct", figures.p50_us),
                ("75pct", figures.p75_us),
                ("95pct", figures.p95_us),
                ("99pct", figures.p99_us),
                ("999pct", figures.p999_us),
                ("9999pct", figures.p9999_us),
                ("Max", figures.max_us),
            ];
            for (suffix, micros) in figures_us {
                put(
                    &format!("aggregatedEndToEndLatency{suffix}"),
                    json!(ms(micros as f64)),
                );
            }
        }
        Value::Object(result)
    }

    /// `--out DIR`: `seconds.csv` (a row a second), `summary.json`, and `report.svg`
    /// (throughput over time, and the latency distribution).
    pub(crate) fn write_out(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut csv = String::from(
            "at_s,msgs_per_sec,mb_per_sec,p50_us,p99_us,max_us,broker_cpu_us_per_msg\n",
        );
        for s in &self.seconds {
            let _ = writeln!(
                csv,
                "{:.1},{:.1},{:.2},{},{},{},{}",
                s.at_s,
                s.msgs_per_sec,
                s.mb_per_sec,
                s.p50_us,
                s.p99_us,
                s.max_us,
                s.broker_cpu_us_per_msg
                    .map_or(String::new(), |cpu| format!("{cpu:.2}"))
            );
        }
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))
        };
        write("seconds.csv", &csv)?;
        write("summary.json", &self.json())?;
        write("report.svg", &self.svg())
    }

    /// Two plots in one SVG: messages per second over the run, and latency at each
    /// percentile (log scale).
    fn svg(&self) -> String {
        let throughput: Vec<(f64, f64)> = self
            .seconds
            .iter()
            .map(|s| (s.at_s, s.msgs_per_sec))
            .collect();
        let mut percentiles = vec![("min".to_string(), self.min_us() as f64)];
        percentiles.extend(
            PERCENTILES
                .iter()
                .map(|(label, q)| (label.to_string(), self.quantile(*q) as f64)),
        );
        percentiles.push(("max".to_string(), self.latency.max() as f64));
        let title = format!(
            "keel-bench: {} connections, window {}, {} B x {}, flush {}",
            self.connections, self.window, self.size, self.batch, self.flush
        );
        let mut svg = String::new();
        let _ = write!(
            svg,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"640\" \
             font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"900\" height=\"640\" \
             fill=\"white\"/>\n<text x=\"450\" y=\"24\" text-anchor=\"middle\" \
             font-size=\"15\">{}</text>\n",
            escape(&title)
        );
        plot(
            &mut svg,
            (70.0, 50.0, 800.0, 230.0),
            "messages per second (SEND_OK)",
            "seconds",
            &throughput,
            false,
        );
        let points: Vec<(f64, f64)> = percentiles
            .iter()
            .enumerate()
            .map(|(index, (_, micros))| (index as f64, micros.max(1.0)))
            .collect();
        plot(
            &mut svg,
            (70.0, 360.0, 800.0, 230.0),
            "latency, microseconds (log scale)",
            "",
            &points,
            true,
        );
        let step = 800.0 / (percentiles.len() - 1) as f64;
        for (index, (label, _)) in percentiles.iter().enumerate() {
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"610\" text-anchor=\"middle\">{}</text>",
                70.0 + index as f64 * step,
                escape(label)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line plot of `points` in the box (x, y, width, height), with its title, a few
/// labelled y gridlines, and (unless `log`) x labels.
fn plot(
    svg: &mut String,
    (left, top, width, height): (f64, f64, f64, f64),
    title: &str,
    x_label: &str,
    points: &[(f64, f64)],
    log: bool,
) {
    let _ = writeln!(
        svg,
        "<text x=\"{left}\" y=\"{}\" font-size=\"13\">{}</text>\n<rect x=\"{left}\" y=\"{top}\" \
         width=\"{width}\" height=\"{height}\" fill=\"none\" stroke=\"#999\"/>",
        top - 8.0,
        escape(title)
    );
    if points.is_empty() {
        return;
    }
    let scale = |value: f64| if log { value.max(1.0).log10() } else { value };
    let x_min = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let y_max = points
        .iter()
        .map(|p| scale(p.1))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let y_min = if log {
        points
            .iter()
            .map(|p| scale(p.1))
            .fold(f64::INFINITY, f64::min)
            .floor()
    } else {
        0.0
    };
    let x_span = (x_max - x_min).max(1e-9);
    let y_span = (y_max - y_min).max(1e-9);
    let at = |(x, y): (f64, f64)| {
        (
            left + (x - x_min) / x_span * width,
            top + height - (scale(y) - y_min) / y_span * height,
        )
    };
    for step in 0..=4 {
        let value = y_min + y_span * f64::from(step) / 4.0;
        let y = top + height - height * f64::from(step) / 4.0;
        let shown = if log { 10f64.powf(value) } else { value };
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + width,
            left - 6.0,
            y + 4.0,
            human(shown)
        );
    }
    if !x_label.is_empty() {
        for step in 0..=4 {
            let value = x_min + x_span * f64::from(step) / 4.0;
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{value:.0}</text>",
                left + width * f64::from(step) / 4.0,
                top + height + 16.0
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            left + width / 2.0,
            top + height + 32.0,
            escape(x_label)
        );
    }
    let path: Vec<String> = points
        .iter()
        .map(|point| {
            let (x, y) = at(*point);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let _ = writeln!(
        svg,
        "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>",
        path.join(" ")
    );
}

fn human(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.0}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// What the consumers of a run did.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerFigures {
    pub members: usize,
    /// Consumer groups (subscriptions times topics).
    pub groups: usize,
    pub handled: u64,
    pub expected: u64,
    pub msgs_per_sec: f64,
    /// Send-to-handler latency.
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub p75_us: u64,
    pub p95_us: u64,
    pub p9999_us: u64,
    pub mean_us: f64,
}

impl ConsumerFigures {
    pub(crate) fn line(&self) -> String {
        format!(
            "consumers: {} in {} group(s) handled {} of {} deliveries owed, {:.0} msgs/s; \
             send-to-handler latency (us): p50 {}  p99 {}  p99.9 {}  max {}",
            self.members,
            self.groups,
            self.handled,
            self.expected,
            self.msgs_per_sec,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )
    }

    pub(crate) fn json(&self) -> String {
        format!(
            "{{\"members\":{},\"groups\":{},\"handled\":{},\"expected\":{},\"msgs_per_sec\":{:.1},\
             \"end_to_end_p50_us\":{},\"end_to_end_p99_us\":{},\"end_to_end_p999_us\":{},\
             \"end_to_end_max_us\":{}}}",
            self.members,
            self.groups,
            self.handled,
            self.expected,
            self.msgs_per_sec,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )
    }
}

#[cfg(test)]
mod tests;
