//! keel-bench's command line: the load's shape, an OMB workload taken into it, and
//! how every connection reaches the broker.

use crate::workload;
use clap::{Parser, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Clone)]
#[command(
    name = "keel-bench",
    version,
    about = "Load generator for keel: throughput, latency percentiles, and the broker's CPU per message",
    after_help = "Also: `keel-bench chaos` starts a local cluster (three name servers that are \
                  controller voters, a sync master and two slaves on 127.0.0.1), runs load \
                  while it kills (kill -9) and pauses (SIGSTOP) the brokers and the \
                  controller leader, and checks that every acknowledged message can be read \
                  at the end (`keel-bench chaos --help`)."
)]
pub(crate) struct Args {
    /// Target a running broker instead of starting one.
    #[arg(long)]
    pub(crate) broker: Option<String>,
    /// With --broker on this machine: its process id, to measure its CPU from /proc
    /// (otherwise it is read from the broker's STATS).
    #[arg(long)]
    pub(crate) broker_pid: Option<u32>,
    /// Connections (producers).
    #[arg(long, default_value_t = 64)]
    pub(crate) producers: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub(crate) size: usize,
    /// sync: one request in flight per connection (a synchronous producer); async: up
    /// to --window; oneway: no answers.
    #[arg(long, value_enum, default_value_t = Mode::Sync)]
    pub(crate) mode: Mode,
    /// loop: event loops speaking the protocol (measures the broker); client: a thread
    /// per producer through the client library (measures what an application sees).
    #[arg(long, value_enum, default_value_t = Engine::Loop)]
    pub(crate) engine: Engine,
    /// Event-loop threads of the loop engine.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Flush mode of the broker this tool starts (ignored with --broker).
    #[arg(long, value_enum, default_value_t = Flush::Sync)]
    pub(crate) flush: Flush,
    /// Run for this many seconds.
    #[arg(long, conflicts_with = "count")]
    pub(crate) duration: Option<f64>,
    /// Send this many messages in total, then stop.
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// Messages per request (SEND_BATCH when above 1; sync and async modes). Latency is
    /// then per batch.
    #[arg(long, default_value_t = 1)]
    pub(crate) batch: usize,
    /// Async mode: requests in flight per connection.
    #[arg(long, default_value_t = 64)]
    pub(crate) window: usize,
    #[arg(long, default_value = "bench")]
    pub(crate) topic: String,
    /// Before the load, time this many 4 KiB append + fdatasync rounds in the data directory.
    #[arg(long, default_value_t = 0)]
    pub(crate) probe_fsync: u32,
    /// Print one JSON object on stdout instead of the report (the lines a second still
    /// go to stderr).
    #[arg(long)]
    pub(crate) json: bool,
    /// Also write seconds.csv, summary.json and report.svg (throughput over time, latency
    /// distribution) into this directory.
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// keeld binary for the self-started broker (default: next to this binary, then PATH).
    #[arg(long)]
    pub(crate) keeld: Option<PathBuf>,
    /// Also run push consumers: this many members in each of --subscriptions groups on
    /// each topic; report their throughput and the latency from send to handler.
    #[arg(long, default_value_t = 0)]
    pub(crate) consumers: usize,
    /// Topics the producers spread over (producer i sends to topic i mod N): --topic
    /// itself when 1, else TOPIC-0 .. TOPIC-(N-1).
    #[arg(long, default_value_t = 1)]
    pub(crate) topics: usize,
    /// Queues of each topic this run creates (a topic that exists keeps its own).
    #[arg(long, default_value_t = 8)]
    pub(crate) queues: u32,
    /// Send at most this many messages a second over all producers (0: as fast as
    /// they go). Each producer paces its share.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Consumer groups on each topic (each gets every message), of --consumers members.
    #[arg(long, default_value_t = 1)]
    pub(crate) subscriptions: usize,
    /// Run an OpenMessaging Benchmark workload file (topics, partitionsPerTopic,
    /// messageSize, producersPerTopic, producerRate, subscriptionsPerTopic,
    /// consumerPerSubscription, testDurationMinutes); the flags it sets are refused
    /// beside it.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "producers", "size", "duration", "count", "consumers", "topics", "queues", "rate",
        "subscriptions",
    ])]
    pub(crate) workload: Option<PathBuf>,
    /// Also write the result as OpenMessaging Benchmark writes its own (TestResult
    /// field names, latencies in milliseconds, one entry a second), to compare with
    /// published OMB runs and feed their chart scripts.
    #[arg(long, value_name = "FILE")]
    pub(crate) omb_json: Option<PathBuf>,
    /// The workload's name (from --workload).
    #[arg(skip)]
    pub(crate) workload_name: Option<String>,
    /// TLS to --broker, trusting the CA in FILE (needs --engine client).
    #[arg(long, value_name = "FILE", requires = "broker")]
    pub(crate) tls_ca: Option<PathBuf>,
    /// Log in with the token in FILE on every connection (needs --engine client).
    #[arg(long, value_name = "FILE", requires = "broker")]
    pub(crate) token_file: Option<PathBuf>,
}

/// How every connection of this run reaches the broker (TLS, a login).
pub(crate) static CONNECTION: std::sync::OnceLock<keel_client::ConnectionOptions> =
    std::sync::OnceLock::new();

pub(crate) fn connection_options() -> keel_client::ConnectionOptions {
    CONNECTION.get().cloned().unwrap_or_default()
}

impl Args {
    pub(crate) fn connection(&self) -> Result<keel_client::ConnectionOptions, String> {
        let tls = match &self.tls_ca {
            Some(ca) => Some(keel_client::ClientTls::new(ca, None, None)?),
            None => None,
        };
        let credentials = match &self.token_file {
            Some(file) => Some(keel_client::Credentials::Token(
                keel_security::read_secret_file(file)?,
            )),
            None => None,
        };
        if (tls.is_some() || credentials.is_some()) && self.engine != Engine::Client {
            return Err(
                "--tls-ca and --token-file need --engine client (the loop engine \
                        speaks plaintext without a login)"
                    .into(),
            );
        }
        Ok(keel_client::ConnectionOptions {
            tls,
            credentials,
            ..keel_client::ConnectionOptions::default()
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub(crate) enum Mode {
    Sync,
    Async,
    Oneway,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub(crate) enum Engine {
    Loop,
    Client,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub(crate) enum Flush {
    Sync,
    Async,
}

impl Args {
    /// Takes the workload file's shape (when `--workload` names one). OMB's producers
    /// keep many sends in flight: unless --mode and --window say otherwise, so do
    /// these (async, with room for a quarter of a second of each producer's rate), so
    /// that the workload's rate is reached and not capped by round trips.
    pub(crate) fn apply_workload(
        &mut self,
        mode_given: bool,
        window_given: bool,
    ) -> Result<(), String> {
        let Some(path) = &self.workload else {
            return Ok(());
        };
        let (workload, warnings) = workload::Workload::load(path)?;
        for warning in warnings {
            eprintln!("keel-bench: workload: {warning}");
        }
        self.producers = workload.producers();
        self.topics = workload.topics;
        self.queues = workload.partitions_per_topic;
        self.size = workload.message_size;
        self.rate = workload.producer_rate;
        self.subscriptions = workload.subscriptions_per_topic;
        self.consumers = workload.consumer_per_subscription;
        self.duration = Some(workload.test_duration_minutes * 60.0);
        self.count = None;
        self.workload_name = Some(workload.name);
        if !mode_given {
            self.mode = Mode::Async;
        }
        if !window_given && self.rate > 0.0 {
            let per_producer = self.rate / self.producers.max(1) as f64;
            self.window = ((per_producer * 0.25).ceil() as usize).clamp(64, 8192);
        }
        Ok(())
    }

    /// The topics of the run: producer i sends to `topics[i % len]`.
    pub(crate) fn topic_names(&self) -> Vec<String> {
        match self.topics {
            1 => vec![self.topic.clone()],
            count => (0..count).map(|i| format!("{}-{i}", self.topic)).collect(),
        }
    }

    /// Requests a second each producer may send (`--rate`), when limited.
    pub(crate) fn request_rate(&self) -> Option<f64> {
        (self.rate > 0.0).then(|| self.rate / self.batch as f64 / self.producers as f64)
    }

    /// Requests in flight per connection.
    pub(crate) fn window(&self) -> usize {
        match self.mode {
            Mode::Sync => 1,
            Mode::Async | Mode::Oneway => self.window,
        }
    }
}
