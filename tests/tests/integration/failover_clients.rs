//! Clients through a failover under the controller: how soon `keel send --namesrv` and
//! the library's default producer see a SEND_OK after the election, and what
//! `keel cluster` shows of a killed replica.

use crate::controller::{wait_all_in_sync, Controllers, Group};
use crate::harness::{drain, wait_until};
use keel_client::{Message, Producer, ProducerOptions, SendStatus};
use keel_tests::{id_of, payload_for, Ledger};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A producer of the test's own: sends one message after another and notes when each
/// SEND_OK came, each message in the ledger.
struct Timed {
    oks: Arc<Mutex<Vec<Instant>>>,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Timed {
    /// The library's producer through the name servers, with its default options.
    fn library(name_servers: Vec<String>) -> Timed {
        let (oks, ledger, stop) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Ledger::new()),
            Arc::new(AtomicBool::new(false)),
        );
        let (times, book, halt) = (oks.clone(), ledger.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let addresses: Vec<&str> = name_servers.iter().map(String::as_str).collect();
            let producer =
                Producer::with_name_servers(&addresses, ProducerOptions::default()).unwrap();
            let mut sequence = 0u64;
            while !halt.load(Ordering::Relaxed) {
                let id = format!("lib-{sequence}");
                sequence += 1;
                let result = producer.send(Message::new("replicated", payload_for(&id, 100)));
                if matches!(&result, Ok(r) if r.status == SendStatus::SendOk) {
                    times.lock().unwrap().push(Instant::now());
                }
                book.sent(&id, keel_tests::Outcome::of(&result));
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Timed {
            oks,
            ledger,
            stop,
            thread: Some(thread),
        }
    }

    fn first_ok_after(&self, at: Instant) -> Option<Instant> {
        self.oks.lock().unwrap().iter().copied().find(|ok| *ok > at)
    }

    fn stop(mut self) -> Arc<Ledger> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.ledger.clone()
    }
}

/// `keel send --namesrv ...` fed a line every few milliseconds; when each SEND_OK line
/// came out.
struct CliSender {
    child: Child,
    oks: Arc<Mutex<Vec<Instant>>>,
    feeding: Arc<AtomicBool>,
}

impl CliSender {
    fn start(name_servers: &[String]) -> CliSender {
        let mut child = Command::new(crate::cli::KEEL)
            .args([
                "send",
                "-t",
                "cli-sends",
                "--namesrv",
                &name_servers.join(","),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn keel send");
        let mut stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let oks = Arc::new(Mutex::new(Vec::new()));
        let feeding = Arc::new(AtomicBool::new(true));
        let seen = oks.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("SEND_OK") {
                    seen.lock().unwrap().push(Instant::now());
                }
            }
        });
        let on = feeding.clone();
        std::thread::spawn(move || {
            let mut index = 0u64;
            while on.load(Ordering::Relaxed) {
                use std::io::Write;
                if writeln!(stdin, "cli-{index}").is_err() {
                    return;
                }
                index += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        CliSender {
            child,
            oks,
            feeding,
        }
    }

    fn first_ok_after(&self, at: Instant) -> Option<Instant> {
        self.oks.lock().unwrap().iter().copied().find(|ok| *ok > at)
    }
}

impl Drop for CliSender {
    fn drop(&mut self) {
        self.feeding.store(false, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `q` quantile of `values` (sorted here).
fn quantile(values: &mut [Duration], q: f64) -> Duration {
    values.sort();
    let index = ((values.len() as f64 - 1.0) * q).round() as usize;
    values.get(index).copied().unwrap_or_default()
}

/// kill -9 of the master, again and again: both a `keel send --namesrv` and the
/// library's default producer see their first SEND_OK after each failover within a
/// second of the election (as seen by polling the controllers: the election may have
/// been a little earlier). Default controller heartbeats on the brokers. Rounds:
/// `KEEL_FAILOVERS` (3 by default); nothing acknowledged is lost.
#[test]
fn producers_follow_a_failover_within_a_second_of_the_election() {
    let rounds: usize = std::env::var("KEEL_FAILOVERS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(3);
    let controllers = Controllers::start();
    let mut group = Group::start_with(&controllers, "");
    let name_servers: Vec<String> = controllers
        .voters
        .iter()
        .map(|v| v.namesrv.clone())
        .collect();
    let library = Timed::library(name_servers.clone());
    let cli = CliSender::start(&name_servers);
    let (mut elections, mut cli_after, mut library_after) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let master = controllers
            .group()
            .and_then(|g| g.view.master)
            .expect("a master") as usize;
        let warm = Instant::now();
        wait_until(
            "both producers acknowledged",
            Duration::from_secs(30),
            || library.first_ok_after(warm).is_some() && cli.first_ok_after(warm).is_some(),
        );
        let killed_at = Instant::now();
        group.replicas[master].kill9();
        // The election, as soon as the controllers show it.
        let deadline = Instant::now() + Duration::from_secs(30);
        let elected_at = loop {
            let view = controllers.group();
            if view.is_some_and(|g| g.view.master.is_some_and(|m| m as usize != master)) {
                break Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "no election; controllers:\n{}",
                controllers.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        wait_until(
            "SEND_OKs after the election",
            Duration::from_secs(30),
            || {
                library.first_ok_after(elected_at).is_some()
                    && cli.first_ok_after(elected_at).is_some()
            },
        );
        // Answers already on their way from the old master do not count.
        let after = |first: Option<Instant>| {
            first
                .map(|at| at.saturating_duration_since(elected_at))
                .unwrap_or_default()
        };
        let (by_cli, by_library) = (
            after(cli.first_ok_after(killed_at + Duration::from_millis(200))),
            after(library.first_ok_after(killed_at + Duration::from_millis(200))),
        );
        eprintln!(
            "failover {round}: elected {:?} after the kill; first SEND_OK {by_cli:?} (keel send) \
             and {by_library:?} (library) after the election",
            elected_at.duration_since(killed_at)
        );
        elections.push(elected_at.duration_since(killed_at));
        cli_after.push(by_cli);
        library_after.push(by_library);
        // The killed master comes back as a slave, and all three are in sync again.
        group.replicas[master].spawn();
        wait_all_in_sync(&controllers, |g| g.view.master.is_some());
    }
    let ledger = library.stop();
    drop(cli);
    let summary = |name: &str, values: &mut Vec<Duration>| {
        eprintln!(
            "{name} over {rounds} failovers: p50 {:?}, p90 {:?}, max {:?}",
            quantile(values, 0.5),
            quantile(values, 0.9),
            quantile(values, 1.0)
        );
    };
    summary("election after the kill", &mut elections);
    summary(
        "keel send's first SEND_OK after the election",
        &mut cli_after,
    );
    summary(
        "the library's first SEND_OK after the election",
        &mut library_after,
    );
    for (name, values) in [("keel send", &cli_after), ("the library", &library_after)] {
        for (round, value) in values.iter().enumerate() {
            assert!(
                *value < Duration::from_secs(1),
                "failover {round}: {name}'s first SEND_OK came {value:?} after the election"
            );
        }
    }
    let master = controllers
        .group()
        .and_then(|g| g.view.master)
        .expect("a master") as usize;
    for record in drain(&group.replicas[master].address, "replicated") {
        ledger.read(&id_of(&record.payload).expect("intact payload"));
    }
    let report = ledger.report();
    eprintln!("ledger after {rounds} failovers: {report}");
    assert!(report.is_clean(), "{report}");
}

/// `keel cluster` after kill -9 of the master: the killed replica shows as unreachable
/// (never as a master, in the table or in --json), and at no moment do two replicas
/// claim to be master.
#[test]
fn keel_cluster_shows_a_killed_replica_as_unreachable_never_as_master() {
    let controllers = Controllers::start();
    let mut group = Group::start(&controllers);
    let list = controllers.addresses().join(",");
    let cluster = |json: bool| {
        let mut command = Command::new(crate::cli::KEEL);
        if json {
            command.arg("--json");
        }
        let output = command
            .args(["cluster", "--controllers", &list])
            .output()
            .expect("keel cluster");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let replicas = |text: &str| -> Vec<serde_json::Value> {
        let view: serde_json::Value = serde_json::from_str(text).expect("JSON");
        view["groups"][0]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let before = replicas(&cluster(true));
    assert!(before.iter().all(|r| r["reachable"] == true), "{before:?}");
    group.replicas[0].kill9();
    let mut unreachable_seen = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = replicas(&cluster(true));
        let masters = now.iter().filter(|r| r["is_master"] == true).count();
        assert!(masters <= 1, "two replicas claim to be master: {now:?}");
        let killed = now.iter().find(|r| r["broker_id"] == 0).expect("replica 0");
        if killed["reachable"] == false {
            assert_eq!(killed["is_master"], false, "{killed}");
            unreachable_seen = true;
        }
        let elected = controllers
            .group()
            .is_some_and(|g| g.view.master.is_some_and(|m| m != 0));
        if unreachable_seen && elected {
            break;
        }
        assert!(Instant::now() < deadline, "no failover shown: {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let table = cluster(false);
    let row = table
        .lines()
        .find(|line| line.trim_start().starts_with("0 "))
        .unwrap_or_else(|| panic!("no row for replica 0:\n{table}"));
    assert!(row.contains("unreachable"), "{table}");
    let masters = table
        .lines()
        .filter(|line| line.split_whitespace().nth(1) == Some("master"))
        .count();
    assert_eq!(masters, 1, "{table}");
}
