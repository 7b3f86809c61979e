//! keel-bench: N producer connections sending fixed-size messages, with throughput and
//! a latency histogram (send call to SEND_OK); optionally a consumer group on the same
//! topic, with the end-to-end latency from send to handler. Starts its own keeld in a temporary
//! directory unless `--broker` names a running one.

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use keel_client::{
    Admin, ConsumeResult, Delivery, Message, Producer, ProducerOptions, PushConsumer,
    PushConsumerOptions, SendStatus, StartFrom,
};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "keel-bench",
    version,
    about = "Load generator for keel with latency histograms"
)]
struct Args {
    /// Target a running broker instead of starting one.
    #[arg(long)]
    broker: Option<String>,
    /// Producer connections (one thread each).
    #[arg(long, default_value_t = 64)]
    producers: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long, value_enum, default_value_t = Mode::Sync)]
    mode: Mode,
    /// Flush mode of the broker this tool starts (ignored with --broker).
    #[arg(long, value_enum, default_value_t = Flush::Sync)]
    flush: Flush,
    /// Run for this many seconds.
    #[arg(long, conflicts_with = "count")]
    duration: Option<f64>,
    /// Send this many messages in total, then stop.
    #[arg(long)]
    count: Option<u64>,
    /// Messages per request (SEND_BATCH when above 1; sync and async modes). Latency is
    /// then per batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Async mode: requests in flight per connection.
    #[arg(long, default_value_t = 64)]
    window: usize,
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Before the load, time this many 4 KiB append + fdatasync rounds in the data directory.
    #[arg(long, default_value_t = 0)]
    probe_fsync: u32,
    /// Print one JSON object on stdout instead of the report.
    #[arg(long)]
    json: bool,
    /// keeld binary for the self-started broker (default: next to this binary, then PATH).
    #[arg(long)]
    keeld: Option<PathBuf>,
    /// Also run this many push consumers of one group on the topic, and report their
    /// throughput and the end-to-end latency from send to handler.
    #[arg(long, default_value_t = 0)]
    consumers: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Mode {
    Sync,
    Async,
    Oneway,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Flush {
    Sync,
    Async,
}

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    ok: AtomicU64,
    not_ok: AtomicU64,
    errors: AtomicU64,
    /// Failures and non-OK statuses by kind, for the report.
    kinds: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Why the run ended early (the broker went away), if it did.
    ended_early: Mutex<Option<String>>,
}

impl Totals {
    fn count_kind(&self, kind: String, messages: u64) {
        *self
            .kinds
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .entry(kind)
            .or_default() += messages;
    }

    fn kinds(&self) -> Vec<(String, u64)> {
        self.kinds
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .map(|(kind, count)| (kind.clone(), *count))
            .collect()
    }

    fn end_early(&self, why: String) {
        self.ended_early
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get_or_insert(why);
    }

    fn ended_early(&self) -> Option<String> {
        self.ended_early
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }
}

/// The `keel-bench` command: parses the arguments, runs, and returns the exit status.
/// The binary is `src/main.rs`; the integration tests run this same entry point.
pub fn main_entry() -> ExitCode {
    // The producer's per-send ALARM lines would drown the report: failures are counted
    // and reported by kind at the end instead.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,keel_client::producer=off"),
    )
    .init();
    let args = Args::parse();
    install_interrupt_handler();
    match run(&args) {
        Ok(Verdict::Clean) => ExitCode::SUCCESS,
        Ok(Verdict::Failed(why)) => {
            eprintln!("keel-bench: {why}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("keel-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Whether a run measured what it set out to: every request answered SEND_OK.
enum Verdict {
    Clean,
    /// The report was printed, but it is not a clean measurement (why).
    Failed(String),
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C or SIGTERM ends the run early, with a report, and the broker this tool
/// started is stopped and its directory removed.
fn install_interrupt_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn run(args: &Args) -> Result<Verdict, String> {
    if args.producers == 0
        || args.size == 0
        || args.window == 0
        || args.batch == 0
        || args.batch > 65535
    {
        return Err(
            "--producers, --size, --window and --batch must be at least 1 (--batch at most 65535)"
                .into(),
        );
    }
    if args.batch > 1 && args.mode == Mode::Oneway {
        return Err("--batch works with --mode sync or async".into());
    }
    let temp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let fsync_p50_us = (args.probe_fsync > 0)
        .then(|| probe_fsync(temp.path(), args.probe_fsync))
        .transpose()?;
    let mut own_broker = None;
    let address = match &args.broker {
        Some(address) => address.clone(),
        None => {
            let (child, address) = start_broker(args, temp.path())?;
            own_broker = Some(child);
            address
        }
    };
    let outcome = load(args, &address, fsync_p50_us);
    if let Some(child) = own_broker {
        stop_broker(child);
    }
    outcome
}

fn load(args: &Args, address: &str, fsync_p50_us: Option<f64>) -> Result<Verdict, String> {
    let admin = Admin::connect(address).map_err(|e| e.to_string())?;
    admin
        .create_topic(&args.topic, 8)
        .map_err(|e| e.to_string())?;
    let before = stats(&admin);
    let group = Consumers::start(address, &args.topic, args.consumers)?;
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let per_producer = args
        .count
        .map(|count| count.div_ceil(args.producers as u64));
    let started = Instant::now();
    let threads: Vec<_> = (0..args.producers)
        .map(|index| {
            let (address, totals, stop) = (address.to_string(), totals.clone(), stop.clone());
            let shape = Shape {
                mode: args.mode,
                size: args.size,
                stamp: args.consumers > 0,
                window: args.window,
                batch: args.batch,
            };
            let topic = args.topic.clone();
            std::thread::spawn(move || {
                let outcome =
                    producer_loop(index, &address, &topic, shape, per_producer, &totals, &stop);
                if let Err(error) = &outcome {
                    // A producer that cannot even connect: the broker is gone.
                    totals.end_early(error.clone());
                    stop.store(true, Ordering::Relaxed);
                }
                outcome
            })
        })
        .collect();
    let deadline = args
        .count
        .is_none()
        .then(|| started + Duration::from_secs_f64(args.duration.unwrap_or(10.0).max(0.1)));
    while !threads.iter().all(|thread| thread.is_finished()) {
        if interrupted() {
            totals.end_early("interrupted".into());
            stop.store(true, Ordering::Relaxed);
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut histogram = new_histogram();
    for thread in threads {
        match thread.join() {
            Ok(Ok(local)) => histogram.add(&local).map_err(|e| e.to_string())?,
            Ok(Err(_)) => {}
            Err(_) => totals.end_early("a producer thread panicked".into()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let consumed = group.map(|group| group.finish(totals.ok.load(Ordering::Relaxed), started));
    let after = stats(&admin);
    let delta = |name: &str| {
        after
            .get(name)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(name).copied().unwrap_or(0))
    };
    let fsyncs = delta("fsyncs");
    let records_per_fsync = if fsyncs > 0 {
        delta("records_flushed") as f64 / fsyncs as f64
    } else {
        0.0
    };
    let sent = totals.sent.load(Ordering::Relaxed);
    let ok = totals.ok.load(Ordering::Relaxed);
    let counted = if args.mode == Mode::Oneway { sent } else { ok };
    let msgs_per_sec = counted as f64 / elapsed;
    let mb_per_sec = msgs_per_sec * args.size as f64 / 1e6;
    let quantile = |q: f64| histogram.value_at_quantile(q);
    let flush = if args.broker.is_some() {
        "external".to_string()
    } else {
        format!("{:?}", args.flush).to_lowercase()
    };
    let ended_early = totals.ended_early();
    let kinds = totals.kinds();
    if args.json {
        let kinds_json: Vec<String> = kinds
            .iter()
            .map(|(kind, count)| format!("{kind:?}:{count}"))
            .collect();
        println!(
            "{{\"producers\":{},\"size\":{},\"batch\":{},\"mode\":\"{}\",\"flush\":\"{flush}\",\"elapsed_s\":{elapsed:.3},\"sent\":{sent},\"ok\":{ok},\"not_ok\":{},\"errors\":{},\"failures\":{{{}}},\"ended_early\":{},\"msgs_per_sec\":{msgs_per_sec:.1},\"mb_per_sec\":{mb_per_sec:.2},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"fsyncs\":{fsyncs},\"records_per_fsync\":{records_per_fsync:.1},\"fsync_p50_us\":{}}}",
            args.producers,
            args.size,
            args.batch,
            format!("{:?}", args.mode).to_lowercase(),
            totals.not_ok.load(Ordering::Relaxed),
            totals.errors.load(Ordering::Relaxed),
            kinds_json.join(","),
            ended_early
                .as_ref()
                .map_or("null".to_string(), |why| format!("{why:?}")),
            quantile(0.5),
            quantile(0.99),
            quantile(0.999),
            histogram.max(),
            fsync_p50_us.map_or("null".to_string(), |value| format!("{value:.1}")),
        );
    } else {
        println!(
            "keel-bench: {} producers, {} B, {:?} send, flush {flush}, {elapsed:.2} s",
            args.producers, args.size, args.mode
        );
        println!(
            "sent {sent}  SEND_OK {ok}  other status {}  errors {}",
            totals.not_ok.load(Ordering::Relaxed),
            totals.errors.load(Ordering::Relaxed)
        );
        for (kind, count) in &kinds {
            println!("  {count} x {kind}");
        }
        if let Some(why) = &ended_early {
            println!("the run ended early ({why}): the figures cover what ran until then");
        }
        println!("throughput: {msgs_per_sec:.0} msgs/s, {mb_per_sec:.1} MB/s");
        if args.mode != Mode::Oneway {
            println!(
                "latency (us): p50 {}  p99 {}  p99.9 {}  max {}",
                quantile(0.5),
                quantile(0.99),
                quantile(0.999),
                histogram.max()
            );
        }
        println!("broker: {fsyncs} fsyncs, {records_per_fsync:.1} records per fsync");
        if let Some(report) = &consumed {
            println!("{report}");
        }
        if let Some(p50) = fsync_p50_us {
            println!("disk: fdatasync of a 4 KiB append, median {p50:.1} us");
        }
    }
    let failed = totals.not_ok.load(Ordering::Relaxed) + totals.errors.load(Ordering::Relaxed);
    Ok(match (ended_early, failed) {
        (Some(why), _) => Verdict::Failed(format!("the run ended early: {why}")),
        (None, 0) => Verdict::Clean,
        (None, failed) => Verdict::Failed(format!(
            "{failed} message(s) were not answered SEND_OK (see the report): not a clean run"
        )),
    })
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// A push consumer group on the bench topic, measuring send-to-handler latency.
struct Consumers {
    members: Vec<PushConsumer>,
    handled: Arc<AtomicU64>,
    last_handled: Arc<Mutex<Instant>>,
    latency: Arc<Mutex<Histogram<u64>>>,
}

impl Consumers {
    fn start(address: &str, topic: &str, count: usize) -> Result<Option<Consumers>, String> {
        if count == 0 {
            return Ok(None);
        }
        let group = format!("bench-{}-{}", std::process::id(), now_us());
        let handled = Arc::new(AtomicU64::new(0));
        let last_handled = Arc::new(Mutex::new(Instant::now()));
        let latency = Arc::new(Mutex::new(new_histogram()));
        let mut members = Vec::with_capacity(count);
        for _ in 0..count {
            let (handled, last, latency) = (handled.clone(), last_handled.clone(), latency.clone());
            let options = PushConsumerOptions {
                start_from: StartFrom::Latest,
                heartbeat_interval: Duration::from_millis(200),
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
            members,
            handled,
            last_handled,
            latency,
        }))
    }

    /// Waits (up to 30 s) until `expected` messages were handled; returns the report.
    fn finish(self, expected: u64, started: Instant) -> String {
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
        let members = self.members.len();
        for member in self.members {
            let _ = member.shutdown();
        }
        format!(
            "consumers: {members} in one group handled {handled} of {expected} SEND_OK messages, \
             {:.0} msgs/s; send-to-handler latency (us): p50 {}  p99 {}  p99.9 {}  max {}",
            handled as f64 / seconds,
            latency.value_at_quantile(0.5),
            latency.value_at_quantile(0.99),
            latency.value_at_quantile(0.999),
            latency.max()
        )
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// What each producer sends.
#[derive(Clone, Copy)]
struct Shape {
    mode: Mode,
    size: usize,
    window: usize,
    batch: usize,
    /// Put the send time (us since the epoch) in the first 8 payload bytes.
    stamp: bool,
}

fn producer_loop(
    index: usize,
    address: &str,
    topic: &str,
    shape: Shape,
    count: Option<u64>,
    totals: &Arc<Totals>,
    stop: &AtomicBool,
) -> Result<Histogram<u64>, String> {
    let producer = Producer::connect(address, ProducerOptions::default())
        .map_err(|e| format!("producer {index}: {e}"))?;
    let payload = bytes_of(shape.size, index);
    let histogram = Arc::new(Mutex::new(new_histogram()));
    let in_flight = Arc::new((Mutex::new(0usize), Condvar::new()));
    let batch = shape.batch as u64;
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed)
        && count.is_none_or(|count| sent < count)
        && totals.ended_early().is_none()
    {
        let payload = if shape.stamp {
            let mut stamped = payload.clone();
            let now = now_us().to_le_bytes();
            let length = stamped.len().min(8);
            stamped[..length].copy_from_slice(&now[..length]);
            stamped
        } else {
            payload.clone()
        };
        let messages: Vec<Message> = (0..shape.batch)
            .map(|_| Message::new(topic, payload.clone()))
            .collect();
        sent += batch;
        totals.sent.fetch_add(batch, Ordering::Relaxed);
        let started = Instant::now();
        match shape.mode {
            Mode::Sync if shape.batch > 1 => {
                let outcome = producer.send_batch(messages);
                record(
                    totals,
                    &histogram,
                    started,
                    outcome.map(|result| result.status),
                    batch,
                );
            }
            Mode::Sync => {
                let outcome = messages
                    .into_iter()
                    .next()
                    .map(|message| producer.send(message));
                let outcome = outcome.unwrap_or(Err(keel_client::ClientError::Timeout));
                record(
                    totals,
                    &histogram,
                    started,
                    outcome.map(|result| result.status),
                    1,
                );
            }
            Mode::Async => {
                let (lock, available) = &*in_flight;
                let mut count = lock.lock().unwrap_or_else(|poison| poison.into_inner());
                while *count >= shape.window {
                    count = available
                        .wait(count)
                        .unwrap_or_else(|poison| poison.into_inner());
                }
                *count += 1;
                drop(count);
                let (totals, histogram, in_flight) =
                    (totals.clone(), histogram.clone(), in_flight.clone());
                let done = move |status: Result<SendStatus, keel_client::ClientError>| {
                    record(&totals, &histogram, started, status, batch);
                    let (lock, available) = &*in_flight;
                    *lock.lock().unwrap_or_else(|poison| poison.into_inner()) -= 1;
                    available.notify_one();
                };
                if shape.batch > 1 {
                    producer.send_batch_async(messages, move |outcome| {
                        done(outcome.map(|result| result.status))
                    });
                } else if let Some(message) = messages.into_iter().next() {
                    producer.send_async(message, move |outcome| {
                        done(outcome.map(|result| result.status))
                    });
                }
            }
            Mode::Oneway => {
                for message in messages {
                    if let Err(error) = producer.send_oneway(message) {
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                        totals.count_kind(format!("ONEWAY_NOT_SENT ({error})"), 1);
                        if matches!(error, keel_client::ClientError::Connect { .. }) {
                            totals.end_early(format!("the broker went away: {error}"));
                        }
                    }
                }
            }
        }
    }
    let (lock, available) = &*in_flight;
    let mut count = lock.lock().unwrap_or_else(|poison| poison.into_inner());
    while *count > 0 {
        count = available
            .wait(count)
            .unwrap_or_else(|poison| poison.into_inner());
    }
    drop(count);
    let histogram = histogram
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .clone();
    Ok(histogram)
}

fn record(
    totals: &Totals,
    histogram: &Mutex<Histogram<u64>>,
    started: Instant,
    outcome: Result<SendStatus, keel_client::ClientError>,
    messages: u64,
) {
    let micros = started.elapsed().as_micros().max(1) as u64;
    match outcome {
        Ok(SendStatus::SendOk) => {
            totals.ok.fetch_add(messages, Ordering::Relaxed);
            let _ = histogram
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .record(micros.min(60_000_000));
        }
        Ok(status) => {
            totals.not_ok.fetch_add(messages, Ordering::Relaxed);
            totals.count_kind(status.name().to_string(), messages);
        }
        Err(error) => {
            totals.errors.fetch_add(messages, Ordering::Relaxed);
            let kind = match &error {
                keel_client::ClientError::Broker(refusal) => refusal.code.name().to_string(),
                keel_client::ClientError::Connect { .. } => "CANNOT_CONNECT".to_string(),
                other if other.is_outcome_unknown() => "OUTCOME_UNKNOWN".to_string(),
                _ => "CLIENT_ERROR".to_string(),
            };
            if matches!(error, keel_client::ClientError::Connect { .. }) {
                totals.end_early(format!("the broker went away: {error}"));
            }
            totals.count_kind(kind, messages);
        }
    }
}

fn bytes_of(size: usize, seed: usize) -> Vec<u8> {
    (0..size)
        .map(|index| b'a' + ((index * 31 + seed * 7) % 26) as u8)
        .collect()
}

fn stats(admin: &Admin) -> std::collections::HashMap<String, u64> {
    admin
        .stats()
        .map(|stats| stats.into_iter().collect())
        .unwrap_or_default()
}

/// Median latency of a 4 KiB append + fdatasync in `dir`, in microseconds.
fn probe_fsync(dir: &std::path::Path, rounds: u32) -> Result<f64, String> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).map_err(|e| format!("fsync probe: {e}"))?;
    let block = vec![0x5au8; 4096];
    let mut samples = Vec::with_capacity(rounds as usize);
    for _ in 0..rounds {
        let started = Instant::now();
        file.write_all(&block)
            .map_err(|e| format!("fsync probe: {e}"))?;
        file.sync_data().map_err(|e| format!("fsync probe: {e}"))?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

fn keeld_binary(args: &Args) -> PathBuf {
    if let Some(path) = &args.keeld {
        return path.clone();
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("keeld")));
    match sibling {
        Some(path) if path.exists() => path,
        _ => PathBuf::from("keeld"),
    }
}

fn start_broker(args: &Args, dir: &std::path::Path) -> Result<(Child, String), String> {
    let binary = keeld_binary(args);
    let flush = format!("{:?}", args.flush).to_lowercase();
    let mut command = Command::new(&binary);
    // The broker goes with this tool, even if this tool is killed outright.
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = command
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--flush")
        .arg(&flush)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {} (build it, or pass --keeld or --broker): {e}",
                binary.display()
            )
        })?;
    let stdout = child.stdout.take().ok_or("no stdout from keeld")?;
    let mut lines = BufReader::new(stdout).lines();
    let address = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(address) = line.strip_prefix("keeld listening on ") {
                    break address.trim().to_string();
                }
            }
            _ => {
                let _ = child.kill();
                return Err("keeld exited before it was ready".into());
            }
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((child, address))
}

fn stop_broker(mut child: Child) {
    // SAFETY: kill(2) has no memory effects; the pid is our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
