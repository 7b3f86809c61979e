//! `keel-bench chaos`: a local cluster under load, its masters, slaves and controller
//! leader killed (kill -9) and paused (SIGSTOP) at random, and the ledger at the end.
//!
//! Three `keeld namesrv` processes that are also controller voters, and one group of
//! three replicas (a `sync_master` and two slaves), in a temporary directory on
//! 127.0.0.1. Producers through the name servers record what every send was told. Each
//! round faults the master (sometimes with the controller leader, sometimes by pausing
//! it past the master timeout), measures how long until the first `SEND_OK` after the
//! fault, brings the victims back (they rejoin as slaves), and waits for all three
//! replicas to be in the SyncStateSet again. At the end everything acknowledged must be
//! readable from the last master: lost must be 0.

use crate::ledger::{id_of, payload_for, read_all, Ledger, Outcome};
use clap::Parser;
use keel_client::{Message, Producer, ProducerOptions, SendStatus};
use keel_controller_api::api::{ClusterView, GroupStatus};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const GROUP: &str = "chaos";
const TOPIC: &str = "chaos";

#[derive(Parser, Debug)]
#[command(
    name = "keel-bench chaos",
    about = "Kill and pause the masters, slaves and controller leader of a local cluster under \
             load, and check that nothing acknowledged is lost"
)]
pub struct ChaosArgs {
    /// Faults of the master to inject (each one a failover).
    #[arg(long, default_value_t = 10)]
    failovers: usize,
    /// The controllers' master timeout (--controller-master-timeout-ms).
    #[arg(long, default_value_t = 2000)]
    master_timeout_ms: u64,
    /// Producer threads (through the name servers, idempotent).
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Seed of the fault schedule (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// keeld binary (default: next to this binary, then PATH).
    #[arg(long)]
    keeld: Option<PathBuf>,
    /// Keep the directory (data and logs) even after a clean run.
    #[arg(long)]
    keep: bool,
}

pub fn main_entry(args: impl Iterator<Item = String>) -> ExitCode {
    let args = match ChaosArgs::try_parse_from(args) {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            return match error.use_stderr() {
                true => ExitCode::from(2),
                false => ExitCode::SUCCESS,
            };
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("keel-bench chaos: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A small deterministic generator for the fault schedule.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// `count` distinct ports on 127.0.0.1 that were free a moment ago; each listener is held
/// until all are picked (ports picked and released one by one can come back twice).
fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("no free port: {e}"))?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("no free port: {e}"))
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) has no memory effects; the pid is our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
}

/// A process of the cluster, restartable with the same arguments.
struct Node {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// The address from its ready line.
    address: String,
}

impl Node {
    fn spawn(&mut self, keeld: &Path, ready_prefix: &str) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let mut command = Command::new(keeld);
        // The cluster goes with this tool, even if this tool is killed outright.
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", keeld.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(left) {
                Ok(line) => {
                    if let Some(address) = line.strip_prefix(ready_prefix) {
                        self.address = address.trim().to_string();
                        self.child = Some(child);
                        return Ok(());
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{} did not start (log: {})",
                        self.name,
                        self.log.display()
                    ));
                }
            }
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Cluster {
    keeld: PathBuf,
    voters: Vec<Node>,
    controllers: Vec<String>,
    replicas: Vec<Node>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.voters.iter_mut().chain(self.replicas.iter_mut()) {
            node.kill9();
        }
    }
}

impl Cluster {
    fn start(dir: &Path, keeld: PathBuf, master_timeout_ms: u64) -> Result<Cluster, String> {
        // Every port of the cluster at once: controller, name-server, then two per replica.
        let ports = free_ports(12)?;
        let controllers: Vec<String> = ports[..3]
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let peers = controllers
            .iter()
            .enumerate()
            .map(|(index, address)| format!("{}={address}", index + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            keeld,
            voters: Vec::new(),
            controllers,
            replicas: Vec::new(),
        };
        for id in 1..=3u64 {
            let args = vec![
                "namesrv".into(),
                "--listen".into(),
                format!("127.0.0.1:{}", ports[2 + id as usize]),
                "--broker-timeout-ms".into(),
                "3000".into(),
                "--controller-id".into(),
                id.to_string(),
                "--controller-peers".into(),
                peers.clone(),
                "--controller-dir".into(),
                dir.join(format!("controller-{id}")).display().to_string(),
                "--controller-master-timeout-ms".into(),
                master_timeout_ms.to_string(),
                "--controller-raft-heartbeat-ms".into(),
                "100".into(),
            ];
            let mut voter = Node {
                name: format!("voter {id}"),
                args,
                log: dir.join(format!("namesrv-{id}.log")),
                child: None,
                address: String::new(),
            };
            voter.spawn(&cluster.keeld, "keeld namesrv listening on ")?;
            cluster.voters.push(voter);
        }
        let quoted = |items: Vec<String>| {
            items
                .iter()
                .map(|item| format!("\"{item}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let namesrv_list = quoted(cluster.voters.iter().map(|v| v.address.clone()).collect());
        let controller_list = quoted(cluster.controllers.clone());
        for id in 0..3u32 {
            let (port, ha_port) = (ports[6 + 2 * id as usize], ports[7 + 2 * id as usize]);
            let role = match id {
                0 => "role = \"sync_master\"\n".to_string(),
                _ => format!(
                    "role = \"slave\"\nbroker_id = {id}\nmaster_address = \"127.0.0.1:{}\"\n",
                    ports[7]
                ),
            };
            let config = dir.join(format!("replica-{id}.toml"));
            let text = format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{role}broker_name = \
                 \"{GROUP}\"\nha_port = {ha_port}\ncontroller_addrs = [{controller_list}]\n\
                 controller_heartbeat_ms = 200\ncontroller_lease_ms = {}\n\
                 namesrv_addrs = [{namesrv_list}]\nregister_interval_ms = 300\n\
                 ha_heartbeat_ms = 200\nslave_timeout_ms = 2000\nsegment_size_bytes = 4194304\n",
                dir.join(format!("replica-{id}")).display(),
                (master_timeout_ms / 2).max(201)
            );
            std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
            let mut replica = Node {
                name: format!("replica {id}"),
                args: vec!["--config".into(), config.display().to_string()],
                log: dir.join(format!("replica-{id}.log")),
                child: None,
                address: String::new(),
            };
            replica.spawn(&cluster.keeld, "keeld listening on ")?;
            cluster.replicas.push(replica);
        }
        Ok(cluster)
    }

    fn view(&self) -> Option<ClusterView> {
        keel_controller_api::client::describe(
            &self.controllers,
            Duration::from_millis(500),
            &keel_net::Dial::default(),
        )
        .ok()
    }

    fn group(&self) -> Option<GroupStatus> {
        self.view()?
            .groups
            .into_iter()
            .find(|group| group.view.group == GROUP)
    }

    fn leader_voter(&self) -> Option<usize> {
        let leader = self.view()?.leader?;
        usize::try_from(leader).ok()?.checked_sub(1)
    }

    /// Waits until the group has a master and all three replicas in its SSS.
    fn settle(&self, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(group) = self.group() {
                if let (Some(master), 3) = (group.view.master, group.view.sss.len()) {
                    return Ok(master as usize);
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the group did not settle within {timeout:?}: {:?}",
                    self.group().map(|g| g.view)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Producers through the name servers, each message's outcome in the ledger, and when
/// each SEND_OK came (the controller's fault tests use it too).
pub struct Load {
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    oks: Arc<Mutex<Vec<Instant>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(name_servers: Vec<String>, topic: &str, producers: usize, size: usize) -> Load {
        let ledger = Arc::new(Ledger::new());
        let stop = Arc::new(AtomicBool::new(false));
        let oks = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..producers)
            .map(|index| {
                let (ledger, stop, oks, name_servers) = (
                    ledger.clone(),
                    stop.clone(),
                    oks.clone(),
                    name_servers.clone(),
                );
                let topic = topic.to_string();
                std::thread::spawn(move || {
                    let options = ProducerOptions {
                        route_refresh: Duration::from_millis(300),
                        send_timeout: Duration::from_secs(4),
                        ..ProducerOptions::default()
                    };
                    let addresses: Vec<&str> = name_servers.iter().map(String::as_str).collect();
                    let producer = loop {
                        match Producer::with_name_servers(&addresses, options.clone()) {
                            Ok(producer) => break producer,
                            Err(_) if !stop.load(Ordering::Relaxed) => {
                                std::thread::sleep(Duration::from_millis(100))
                            }
                            Err(_) => return,
                        }
                    };
                    let mut sequence = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("p{index}-s{sequence}");
                        sequence += 1;
                        let message = Message::new(topic.as_str(), payload_for(&id, size));
                        let result = producer.send(message);
                        if matches!(&result, Ok(r) if r.status == SendStatus::SendOk) {
                            if let Ok(mut oks) = oks.lock() {
                                oks.push(Instant::now());
                            }
                        }
                        ledger.sent(&id, Outcome::of(&result));
                        if result.is_err() {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
            })
            .collect();
        Load {
            ledger,
            stop,
            oks,
            threads,
        }
    }

    /// SEND_OKs that arrived after `at`.
    pub fn oks_after(&self, at: Instant) -> usize {
        self.oks
            .lock()
            .map_or(0, |oks| oks.iter().filter(|t| **t > at).count())
    }

    /// The first SEND_OK that arrived after `at`.
    pub fn first_ok_after(&self, at: Instant) -> Option<Instant> {
        self.oks
            .lock()
            .ok()?
            .iter()
            .filter(|t| **t > at)
            .min()
            .copied()
    }

    /// Stops the producers; the ledger of what every send was told.
    pub fn stop(self) -> Arc<Ledger> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
        self.ledger
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillMaster,
    KillMasterAndControllerLeader,
    PauseMaster,
    KillMasterAndASlave,
}

impl Fault {
    fn pick(dice: &mut Dice) -> Fault {
        match dice.below(10) {
            0..=4 => Fault::KillMaster,
            5 | 6 => Fault::KillMasterAndControllerLeader,
            7 | 8 => Fault::PauseMaster,
            _ => Fault::KillMasterAndASlave,
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn run(args: &ChaosArgs) -> Result<bool, String> {
    if args.failovers == 0 || args.producers == 0 || args.size < 16 || args.master_timeout_ms < 500
    {
        return Err(
            "--failovers and --producers must be at least 1, --size at least 16, \
             --master-timeout-ms at least 500"
                .into(),
        );
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    let temp = tempfile::Builder::new()
        .prefix("keel-chaos-")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;
    let dir = temp.path().to_path_buf();
    eprintln!(
        "keel-bench chaos: seed {seed}, {} failovers, master timeout {} ms, data and logs in {}",
        args.failovers,
        args.master_timeout_ms,
        dir.display()
    );
    let keeld = crate::shared::keeld_binary(args.keeld.as_ref());
    let mut cluster = Cluster::start(&dir, keeld.clone(), args.master_timeout_ms)?;
    let mut master = cluster.settle(Duration::from_secs(30))?;
    let name_servers: Vec<String> = cluster.voters.iter().map(|v| v.address.clone()).collect();
    let load = Load::start(name_servers, TOPIC, args.producers, args.size);
    let mut dice = Dice(seed);
    let mut times: Vec<Duration> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let grace = Duration::from_millis(args.master_timeout_ms / 4);
    for round in 1..=args.failovers {
        if crate::shared::interrupted() {
            problems.push("interrupted".into());
            break;
        }
        std::thread::sleep(Duration::from_millis(300 + dice.below(700)));
        let fault = Fault::pick(&mut dice);
        let faulted_at = Instant::now();
        let mut paused = false;
        let mut killed_voter = None;
        match fault {
            Fault::KillMaster => cluster.replicas[master].kill9(),
            Fault::KillMasterAndControllerLeader => {
                cluster.replicas[master].kill9();
                if let Some(leader) = cluster.leader_voter() {
                    cluster.voters[leader].kill9();
                    killed_voter = Some(leader);
                }
            }
            Fault::PauseMaster => {
                if let Some(child) = &cluster.replicas[master].child {
                    signal(child, libc::SIGSTOP);
                    paused = true;
                }
            }
            Fault::KillMasterAndASlave => {
                cluster.replicas[master].kill9();
                // The other slave of the SSS survives to be elected; the killed one
                // restarts at once (with min_insync_replicas = 2 the new master
                // acknowledges nothing until a second replica follows it).
                let slave = (master + 1 + dice.below(2) as usize) % 3;
                cluster.replicas[slave].kill9();
                let keeld = cluster.keeld.clone();
                cluster.replicas[slave].spawn(&keeld, "keeld listening on ")?;
            }
        }
        // The new master: another broker named by the controller, and a SEND_OK after.
        let deadline = faulted_at + Duration::from_secs(30);
        let new_master = loop {
            let named = cluster
                .group()
                .and_then(|g| g.view.master)
                .map(|m| m as usize);
            if let Some(next) = named.filter(|next| *next != master) {
                if let Some(first) = load.first_ok_after(faulted_at + grace) {
                    times.push(first.duration_since(faulted_at));
                    break Some(next);
                }
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = times.last().copied().unwrap_or_default();
        match new_master {
            Some(next) => eprintln!(
                "round {round}: {fault:?} of master {master}: broker {next} took over, first \
                 SEND_OK {:.2} s after the fault",
                took.as_secs_f64()
            ),
            None => {
                problems.push(format!("round {round}: {fault:?}: no failover within 30 s"));
                eprintln!("round {round}: {fault:?} of master {master}: no failover within 30 s");
            }
        }
        // Bring the victims back: a paused master is resumed (it finds itself deposed and
        // refuses sends), then restarted to rejoin as a slave.
        if paused {
            if let Some(child) = &cluster.replicas[master].child {
                signal(child, libc::SIGCONT);
            }
            std::thread::sleep(Duration::from_millis(500));
            cluster.replicas[master].kill9();
        }
        let keeld = cluster.keeld.clone();
        if let Some(voter) = killed_voter {
            cluster.voters[voter].spawn(&keeld, "keeld namesrv listening on ")?;
        }
        cluster.replicas[master].spawn(&keeld, "keeld listening on ")?;
        match cluster.settle(Duration::from_secs(60)) {
            Ok(next) => master = next,
            Err(error) => {
                problems.push(format!("round {round}: {error}"));
                break;
            }
        }
    }
    let ledger = load.stop();
    let reader = &cluster.replicas[master].address;
    let records = read_all(reader, TOPIC, "chaos-check", Duration::from_secs(120))?;
    let mut damaged = 0;
    for record in &records {
        match id_of(&record.payload) {
            Some(id) => ledger.read(&id),
            None => damaged += 1,
        }
    }
    let report = ledger.report();
    times.sort();
    println!("chaos: seed {seed}, {} failovers", times.len());
    println!("ledger: {report}");
    if damaged > 0 {
        println!("damaged payloads read: {damaged}");
    }
    println!(
        "failover time to the first SEND_OK: min {:.2} s, p50 {:.2} s, p90 {:.2} s, max {:.2} s",
        percentile(&times, 0.0).as_secs_f64(),
        percentile(&times, 0.5).as_secs_f64(),
        percentile(&times, 0.9).as_secs_f64(),
        percentile(&times, 1.0).as_secs_f64()
    );
    for problem in &problems {
        println!("problem: {problem}");
    }
    let clean = report.is_clean() && damaged == 0 && problems.is_empty();
    drop(cluster);
    if args.keep || !clean {
        let kept = temp.keep();
        println!("data and logs kept in {}", kept.display());
    }
    Ok(clean)
}
