//! keel-bench: N connections sending fixed-size messages to a keel broker, with
//! throughput, latency percentiles, records per fsync and the broker's CPU per message;
//! a line a second while it runs; optionally a consumer group on the same topic, with
//! the end-to-end latency from send to handler. Starts its own keeld in a temporary
//! directory unless `--broker` names a running one.
//!
//! Two engines: `loop` (the default) drives every connection from a few mio event loops
//! and speaks the wire protocol directly, so it costs the machine little and the figures
//! are the broker's; `client` runs one thread per producer through the client library,
//! as an application would.

mod args;
pub mod chaos;
mod client_engine;
mod consumers;
mod engine;
pub mod ledger;
mod report;
mod shared;
mod workload;

use consumers::Consumers;
use keel_client::Admin;
use report::{new_histogram, Recorder, Second, Summary, Totals};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use args::connection_options;
use args::{Args, Engine, Mode, CONNECTION};
use shared::{install_interrupt_handler, interrupted, keeld_binary};

/// The `keel-bench` command: parses the arguments, runs, and returns the exit status.
/// The binary is `src/main.rs`; the integration tests run this same entry point.
pub fn main_entry() -> ExitCode {
    // The producer's per-send ALARM lines would drown the report: failures are counted
    // and reported by kind at the end instead.
    let chaos = std::env::args().nth(1).as_deref() == Some("chaos");
    // Under chaos every failover makes each producer warn: the rounds' lines say it.
    let quiet = match chaos {
        true => "warn,keel_client=off",
        false => "warn,keel_client::producer=off",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(quiet)).init();
    install_interrupt_handler();
    if chaos {
        let args = std::iter::once("keel-bench chaos".to_string()).chain(std::env::args().skip(2));
        return chaos::main_entry(args);
    }
    let matches = <Args as clap::CommandFactory>::command().get_matches();
    let mut args = match <Args as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(error) => error.exit(),
    };
    let given =
        |name: &str| matches.value_source(name) == Some(clap::parser::ValueSource::CommandLine);
    if let Err(error) = args.apply_workload(given("mode"), given("window")) {
        eprintln!("keel-bench: {error}");
        return ExitCode::from(2);
    }
    match args.connection() {
        Ok(options) => {
            let _ = CONNECTION.set(options);
        }
        Err(error) => {
            eprintln!("keel-bench: {error}");
            return ExitCode::from(2);
        }
    }
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
fn run(args: &Args) -> Result<Verdict, String> {
    if args.producers == 0
        || args.size == 0
        || args.window == 0
        || args.batch == 0
        || args.threads == 0
        || args.topics == 0
        || args.subscriptions == 0
        || args.batch > 65535
    {
        return Err(
            "--producers, --size, --window, --threads, --batch, --topics and --subscriptions \
             must be at least 1 (--batch at most 65535)"
                .into(),
        );
    }
    if args.queues == 0 || args.queues > keel_protocol::QUEUES_MAX {
        return Err(format!(
            "--queues must be from 1 to {}",
            keel_protocol::QUEUES_MAX
        ));
    }
    if !args.rate.is_finite() || args.rate < 0.0 {
        return Err("--rate must be 0 (no limit) or a positive number of messages a second".into());
    }
    if args.topics > args.producers {
        return Err(format!(
            "--topics {} needs at least as many --producers ({}): each topic needs one",
            args.topics, args.producers
        ));
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
    let broker_pid = own_broker.as_ref().map(Child::id).or(args.broker_pid);
    let outcome = load(args, &address, broker_pid, fsync_p50_us);
    if let Some(child) = own_broker {
        stop_broker(child);
    }
    outcome
}

fn load(
    args: &Args,
    address: &str,
    broker_pid: Option<u32>,
    fsync_p50_us: Option<f64>,
) -> Result<Verdict, String> {
    let admin = Admin::connect_with(address, &connection_options()).map_err(|e| e.to_string())?;
    let topics = args.topic_names();
    for topic in &topics {
        admin
            .create_topic(topic, args.queues)
            .map_err(|e| e.to_string())?;
    }
    let before = stats(&admin);
    let group = Consumers::start(address, &topics, args.subscriptions, args.consumers)?;
    let consumed = group.as_ref().map(Consumers::handled);
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let broker_cpu = BrokerCpu::new(broker_pid, address);
    let cpu_before = broker_cpu.sample();
    let own_before = own_cpu_us();
    let started = Instant::now();
    let (threads, recorders) = start_engine(args, address, &totals, &stop)?;
    let deadline = args
        .count
        .is_none()
        .then(|| started + Duration::from_secs_f64(args.duration.unwrap_or(10.0).max(0.1)));
    let mut seconds = Vec::new();
    let mut tick = Ticker::new(started, cpu_before, totals.ok.load(Ordering::Relaxed));
    while !threads.iter().all(|thread| thread.is_finished()) {
        if interrupted() {
            totals.end_early("interrupted".into());
            stop.store(true, Ordering::Relaxed);
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            stop.store(true, Ordering::Relaxed);
        }
        if let Some(second) = tick.due(args, &recorders, &broker_cpu, &totals, consumed.as_deref())
        {
            eprintln!("{}", second.line());
            seconds.push(second);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for thread in threads {
        if thread.join().is_err() {
            totals.end_early("a load thread panicked".into());
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = broker_cpu.sample();
    let own_used = own_cpu_us().saturating_sub(own_before);
    let mut latency = new_histogram();
    for recorder in &recorders {
        latency.add(recorder.total()).map_err(|e| e.to_string())?;
    }
    let expected = totals.ok.load(Ordering::Relaxed) * args.subscriptions as u64;
    let consumed = group.map(|group| group.finish(expected, started));
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
    let per_message = |micros: u64| micros as f64 / counted.max(1) as f64;
    let broker_cpu_us_per_msg = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => Some(per_message(after.saturating_sub(before))),
        _ => None,
    };
    let flush = match (&args.broker, after.get("flush_sync")) {
        (_, Some(1)) => "sync".to_string(),
        (_, Some(_)) => "async".to_string(),
        (Some(_), None) => "unknown".to_string(),
        (None, None) => format!("{:?}", args.flush).to_lowercase(),
    };
    let role = after
        .get("role")
        .and_then(|role| keel_client::BrokerRole::from_u8(*role as u8))
        .map_or("unknown".to_string(), |role| role.to_string());
    let summary = Summary {
        engine: match args.engine {
            Engine::Loop => "loop",
            Engine::Client => "client",
        },
        connections: args.producers,
        threads: match args.engine {
            Engine::Loop => args.threads.clamp(1, args.producers),
            Engine::Client => args.producers,
        },
        window: args.window(),
        size: args.size,
        batch: args.batch,
        topics: topics.len(),
        queues: args.queues,
        rate: args.rate,
        subscriptions: args.subscriptions,
        workload: args.workload_name.clone(),
        mode: format!("{:?}", args.mode).to_lowercase(),
        flush,
        role,
        slaves_in_sync: after.get("slaves_in_sync").copied(),
        elapsed_s: elapsed,
        sent,
        ok,
        not_ok: totals.not_ok.load(Ordering::Relaxed),
        errors: totals.errors.load(Ordering::Relaxed),
        kinds: totals.kinds(),
        ended_early: totals.ended_early(),
        msgs_per_sec: counted as f64 / elapsed,
        mb_per_sec: counted as f64 / elapsed * args.size as f64 / 1e6,
        latency,
        fsyncs,
        records_per_fsync,
        broker_cpu_us_per_msg,
        bench_cpu_us_per_msg: per_message(own_used),
        fsync_p50_us,
        consumers: consumed,
        seconds,
    };
    if args.json {
        println!("{}", summary.json());
    } else {
        print!("{}", summary.text());
    }
    if let Some(dir) = &args.out {
        summary.write_out(dir)?;
    }
    if let Some(path) = &args.omb_json {
        let json =
            serde_json::to_string_pretty(&summary.omb_result()).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n").map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    let failed = summary.not_ok + summary.errors;
    let missed = rate_missed(args.rate, summary.msgs_per_sec).filter(|_| !interrupted());
    Ok(match (summary.ended_early, failed) {
        (Some(why), _) => Verdict::Failed(format!("the run ended early: {why}")),
        (None, 0) if missed.is_some() => Verdict::Failed(missed.unwrap_or_default()),
        (None, 0) => Verdict::Clean,
        (None, failed) => Verdict::Failed(format!(
            "{failed} message(s) were not answered SEND_OK (see the report): not a clean run"
        )),
    })
}

/// Why a rate-limited run does not count: it sent more than 5% below the rate asked
/// (a workload's `producerRate`, or `--rate`), so its figures are not those of that
/// load.
fn rate_missed(rate: f64, achieved: f64) -> Option<String> {
    (rate > 0.0 && achieved < rate * 0.95).then(|| {
        format!(
            "the rate asked was missed: {achieved:.0} of {rate:.0} msg/s ({:.1}%), so these \
             figures are not those of that load; raise --window or --producers",
            achieved * 100.0 / rate
        )
    })
}

type LoadThreads = Vec<std::thread::JoinHandle<()>>;

/// Starts the load: the loop engine's threads, or one thread per producer.
fn start_engine(
    args: &Args,
    address: &str,
    totals: &Arc<Totals>,
    stop: &Arc<AtomicBool>,
) -> Result<(LoadThreads, Vec<Arc<Recorder>>), String> {
    // `--count` is exact: shares that differ by at most one, the first ones larger.
    let share = |total: u64, index: usize| {
        let connections = args.producers as u64;
        total / connections + u64::from((index as u64) < total % connections)
    };
    match args.engine {
        Engine::Loop => {
            let socket_address = std::net::ToSocketAddrs::to_socket_addrs(address)
                .map_err(|e| format!("resolve {address}: {e}"))?
                .next()
                .ok_or_else(|| format!("{address} resolves to nothing"))?;
            let plan = engine::Plan {
                address: socket_address,
                connections: args.producers,
                threads: args.threads.clamp(1, args.producers),
                window: args.window(),
                oneway: args.mode == Mode::Oneway,
                topics: args.topic_names(),
                size: args.size,
                batch: args.batch,
                stamp: args.consumers > 0,
                request_rate: args.request_rate(),
                requests_per_connection: match args.count {
                    Some(count) => {
                        let batch = args.batch as u64;
                        if count % batch != 0 {
                            return Err(format!(
                                "--count {count} is not a multiple of --batch {batch}: the \
                                 loop engine sends whole batches (or use --engine client)"
                            ));
                        }
                        Some(
                            (0..args.producers)
                                .map(|index| share(count / batch, index))
                                .collect(),
                        )
                    }
                    None => None,
                },
            };
            let recorders: Vec<Arc<Recorder>> = (0..plan.threads)
                .map(|_| Arc::new(Recorder::new()))
                .collect();
            let (totals, stop, shared) = (totals.clone(), stop.clone(), recorders.clone());
            let thread = std::thread::Builder::new()
                .name("bench-engine".into())
                .spawn(move || {
                    if let Err(error) = engine::run(&plan, &totals, &stop, &shared) {
                        totals.end_early(error);
                        stop.store(true, Ordering::Relaxed);
                    }
                })
                .map_err(|e| format!("cannot start the load: {e}"))?;
            Ok((vec![thread], recorders))
        }
        Engine::Client => {
            let recorder = Arc::new(Recorder::new());
            let shape = client_engine::Shape {
                mode: args.mode,
                size: args.size,
                stamp: args.consumers > 0,
                window: args.window(),
                batch: args.batch,
                request_rate: args.request_rate(),
            };
            let topics = args.topic_names();
            let threads = (0..args.producers)
                .map(|index| {
                    let (address, totals, stop) =
                        (address.to_string(), totals.clone(), stop.clone());
                    let topic = topics[index % topics.len()].clone();
                    let recorder = recorder.clone();
                    let count = args.count.map(|count| share(count, index));
                    std::thread::spawn(move || {
                        let outcome = client_engine::producer_loop(
                            index, &address, &topic, shape, count, &totals, &stop, &recorder,
                        );
                        if let Err(error) = outcome {
                            // A producer that cannot even connect: the broker is gone.
                            totals.end_early(error);
                            stop.store(true, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            Ok((threads, vec![recorder]))
        }
    }
}

/// The line a second: throughput and latency of that second, and the broker's CPU.
struct Ticker {
    started: Instant,
    next: Instant,
    cpu: Option<u64>,
    ok: u64,
    consumed: u64,
}

impl Ticker {
    fn new(started: Instant, cpu: Option<u64>, ok: u64) -> Ticker {
        Ticker {
            started,
            next: started + Duration::from_secs(1),
            cpu,
            ok,
            consumed: 0,
        }
    }

    fn due(
        &mut self,
        args: &Args,
        recorders: &[Arc<Recorder>],
        broker_cpu: &BrokerCpu,
        totals: &Totals,
        consumed: Option<&std::sync::atomic::AtomicU64>,
    ) -> Option<Second> {
        let now = Instant::now();
        if now < self.next {
            return None;
        }
        let span = (now - (self.next - Duration::from_secs(1))).as_secs_f64();
        self.next += Duration::from_secs(1);
        let mut latency = new_histogram();
        for recorder in recorders {
            let (second, _) = recorder.take_second();
            let _ = latency.add(second);
        }
        let counted = match args.mode {
            Mode::Oneway => totals.sent.load(Ordering::Relaxed),
            _ => totals.ok.load(Ordering::Relaxed),
        };
        let messages = counted.saturating_sub(self.ok);
        self.ok = counted;
        let cpu = broker_cpu.sample();
        let broker_cpu_us_per_msg = match (self.cpu, cpu) {
            (Some(before), Some(after)) if messages > 0 => {
                Some(after.saturating_sub(before) as f64 / messages as f64)
            }
            _ => None,
        };
        self.cpu = cpu;
        let msgs_per_sec = messages as f64 / span.max(1e-3);
        let consumed = consumed.map(|handled| {
            let handled = handled.load(Ordering::Relaxed);
            let this_second = handled.saturating_sub(self.consumed);
            self.consumed = handled;
            let backlog = (counted * args.subscriptions as u64).saturating_sub(handled);
            (this_second as f64 / span.max(1e-3), backlog)
        });
        Some(Second {
            at_s: (now - self.started).as_secs_f64(),
            msgs_per_sec,
            mb_per_sec: msgs_per_sec * args.size as f64 / 1e6,
            p50_us: latency.value_at_quantile(0.5),
            p99_us: latency.value_at_quantile(0.99),
            max_us: latency.max(),
            broker_cpu_us_per_msg,
            latency,
            consumed,
        })
    }
}

/// Where the broker's CPU time comes from: /proc of its pid (when this tool started it,
/// or `--broker-pid`), else its STATS (`cpu_user_us` + `cpu_system_us`).
enum BrokerCpu {
    Proc(u32),
    Stats(Admin),
    Unknown,
}

impl BrokerCpu {
    fn new(pid: Option<u32>, address: &str) -> BrokerCpu {
        match pid {
            Some(pid) => BrokerCpu::Proc(pid),
            None => match Admin::connect_with(address, &connection_options()) {
                Ok(admin) => BrokerCpu::Stats(admin),
                Err(_) => BrokerCpu::Unknown,
            },
        }
    }

    /// CPU microseconds the broker used so far (user + system).
    fn sample(&self) -> Option<u64> {
        match self {
            BrokerCpu::Proc(pid) => proc_cpu_us(*pid),
            BrokerCpu::Stats(admin) => {
                let stats: std::collections::HashMap<String, u64> =
                    admin.stats().ok()?.into_iter().collect();
                Some(stats.get("cpu_user_us")? + stats.get("cpu_system_us")?)
            }
            BrokerCpu::Unknown => None,
        }
    }
}

/// utime + stime of a process, from /proc/PID/stat, in microseconds.
fn proc_cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its ')' are plain.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * 1_000_000 / hz)
}

/// CPU microseconds this process used so far (every thread, user + system).
fn own_cpu_us() -> u64 {
    // SAFETY: getrusage writes only into the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0;
        }
        usage
    };
    let micros =
        |time: libc::timeval| (time.tv_sec.max(0) as u64) * 1_000_000 + time.tv_usec.max(0) as u64;
    micros(usage.ru_utime) + micros(usage.ru_stime)
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

fn start_broker(args: &Args, dir: &std::path::Path) -> Result<(Child, String), String> {
    let binary = keeld_binary(args.keeld.as_ref());
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
