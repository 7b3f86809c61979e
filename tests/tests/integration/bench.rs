//! keel-bench tells a failed run from a clean one, and cleans up after itself.

use crate::harness::{signal, wait_until, BrokerProcess, KEELD};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const BENCH: &str = env!("CARGO_BIN_EXE_keel-bench-under-test");

/// Child processes of `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the comm may hold spaces, so read after its ')'.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if parent == Some(pid) {
            found.push(child);
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_run_whose_broker_dies_ends_with_a_partial_report_and_fails() {
    let mut broker = BrokerProcess::start("");
    let bench = Command::new(BENCH)
        .args([
            "--broker",
            &broker.address,
            "--producers",
            "4",
            "--duration",
            "30",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keel-bench");
    wait_until("load on the broker", Duration::from_secs(20), || {
        broker.try_stat("sends_ok").is_some_and(|ok| ok > 100)
    });
    let killed = Instant::now();
    broker.kill9();
    let output = bench.wait_with_output().expect("keel-bench output");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "the run went on against a dead broker"
    );
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("throughput:"), "a partial report: {stdout}");
    assert!(stdout.contains("ended early"), "{stdout}");
    assert!(stderr.contains("ended early"), "{stderr}");
    assert!(
        !stderr.contains("ALARM"),
        "one report, not a line per failure: {stderr}"
    );
}

#[test]
fn an_interrupted_run_stops_its_broker_and_removes_its_directory() {
    let temp = tempfile::tempdir().expect("temporary directory");
    let mut bench = Command::new(BENCH)
        .args(["--keeld", KEELD, "--producers", "2", "--duration", "60"])
        .env("TMPDIR", temp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keel-bench");
    let mut broker_pid = None;
    wait_until(
        "keel-bench to start its broker",
        Duration::from_secs(30),
        || {
            broker_pid = children(bench.id()).into_iter().next();
            broker_pid.is_some()
        },
    );
    let broker_pid = broker_pid.expect("the broker");
    // Let the load start, then Ctrl-C.
    std::thread::sleep(Duration::from_millis(500));
    signal(bench.id(), libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = bench.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "keel-bench did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "an interrupted run is not a clean run");
    wait_until("its broker to be gone", Duration::from_secs(10), || {
        !alive(broker_pid)
    });
    let left: Vec<_> = std::fs::read_dir(temp.path())
        .expect("temp")
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert!(left.is_empty(), "keel-bench left {left:?} behind");
}

#[test]
fn chaos_fails_over_a_few_times_and_loses_nothing() {
    // The CI's bounded run of `keel-bench chaos` (the long runs are in the issue notes):
    // a cluster of three voters and three replicas, three master faults, the ledger.
    let temp = tempfile::tempdir().expect("temporary directory");
    let output = Command::new(BENCH)
        .args([
            "chaos",
            "--keeld",
            KEELD,
            "--failovers",
            "3",
            "--seed",
            "11",
        ])
        .env("TMPDIR", temp.path())
        .stdin(Stdio::null())
        .output()
        .expect("run keel-bench chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chaos failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("lost=0"), "{stdout}");
    assert!(stdout.contains("chaos: seed 11, 3 failovers"), "{stdout}");
    assert_eq!(
        std::fs::read_dir(temp.path()).unwrap().count(),
        0,
        "a clean run removes its directory"
    );
}

#[test]
fn count_means_exactly_that_many_and_json_has_the_consumers() {
    let broker = crate::harness::BrokerProcess::start("");
    let run = |args: &[&str]| -> serde_json::Value {
        let output = Command::new(BENCH)
            .args(["--broker", &broker.address, "--json", "--topic", "counted"])
            .args(args)
            .output()
            .expect("keel-bench");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim())
            .expect("one JSON object")
    };
    // 1003 over 7 connections, and over 4 client producers with batches of 10: exactly.
    let loop_run = run(&["--producers", "7", "--count", "1003"]);
    assert_eq!(loop_run["sent"], 1003);
    assert_eq!(loop_run["ok"], 1003);
    assert!(loop_run["consumers"].is_null());
    let client = run(&[
        "--engine",
        "client",
        "--producers",
        "4",
        "--batch",
        "10",
        "--count",
        "1003",
        "--consumers",
        "2",
    ]);
    assert_eq!(client["sent"], 1003);
    assert_eq!(client["ok"], 1003);
    assert_eq!(client["batch"], 10);
    let consumers = &client["consumers"];
    assert_eq!(consumers["members"], 2);
    assert_eq!(consumers["expected"], 1003);
    assert!(
        consumers["handled"].as_u64().unwrap() >= 1003,
        "{consumers}"
    );
    assert!(consumers["end_to_end_p99_us"].as_u64().unwrap() > 0);
    // The loop engine sends whole batches: a count that is not a multiple is refused.
    let refused = Command::new(BENCH)
        .args([
            "--broker",
            &broker.address,
            "--batch",
            "10",
            "--count",
            "1003",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a multiple of --batch"));
}

#[test]
fn an_omb_workload_runs_its_shape_at_its_rate_and_writes_omb_result_fields() {
    let broker = BrokerProcess::start("");
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("workload.yaml");
    std::fs::write(
        &workload,
        "name: two topics\ntopics: 2\npartitionsPerTopic: 3\nmessageSize: 64\n\
         producersPerTopic: 2\nproducerRate: 400\nsubscriptionsPerTopic: 2\n\
         consumerPerSubscription: 1\ntestDurationMinutes: 0.05\nkeyDistributor: \"NO_KEY\"\n",
    )
    .unwrap();
    let omb = dir.path().join("omb.json");
    let run = Command::new(BENCH)
        .args(["--broker", &broker.address, "--json", "--workload"])
        .arg(&workload)
        .arg("--omb-json")
        .arg(&omb)
        .output()
        .expect("keel-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    // A loaded test machine may stall the broker long enough to miss 400 a second by
    // more than 5%, which keel-bench reports as a failed run; the shape and the fields
    // are what this test checks (and below, that the pacing never sends more).
    assert!(
        run.status.success() || stderr.contains("the rate asked was missed"),
        "{stderr}"
    );
    assert!(stderr.contains("keyDistributor ignored"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["topics"], 2);
    assert_eq!(summary["queues"], 3);
    assert_eq!(summary["producers"], 4);
    // Paced at 400 a second: never more than the rate allows over the run (unpaced, the
    // four producers send thousands a second).
    let ok = summary["ok"].as_u64().unwrap();
    let elapsed = summary["elapsed_s"].as_f64().unwrap();
    assert!(
        ok > 0 && ok as f64 <= 400.0 * elapsed + 8.0,
        "{ok} in {elapsed} s"
    );
    assert_eq!(summary["consumers"]["handled"].as_u64(), Some(ok * 2));
    let admin = broker.admin();
    for topic in ["bench-0", "bench-1"] {
        assert_eq!(admin.list_topics(Some(topic)).unwrap()[0].queues.len(), 3);
    }
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&omb).unwrap()).unwrap();
    assert_eq!(result["workload"], "two topics");
    assert_eq!(result["driver"], "keel");
    assert_eq!(result["partitions"], 6);
    assert_eq!(result["producersPerTopic"], 2);
    assert_eq!(result["consumersPerTopic"], 2);
    for list in [
        "publishRate",
        "consumeRate",
        "backlog",
        "publishLatency99pct",
    ] {
        assert!(!result[list].as_array().unwrap().is_empty(), "{list}");
    }
    for number in [
        "aggregatedPublishLatency99pct",
        "aggregatedEndToEndLatency99pct",
    ] {
        assert!(result[number].as_f64().unwrap() > 0.0, "{number}");
    }

    // A bad file: exit 2, the line named, nothing run.
    std::fs::write(&workload, "topics: 2\npartitionsPerTopic: 0\n").unwrap();
    let bad = Command::new(BENCH)
        .args(["--broker", &broker.address, "--workload"])
        .arg(&workload)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line 2: partitionsPerTopic"));
}

/// A workload's rate is reached: its producers keep sends in flight (OMB's do), so one
/// producer makes 4,000 msg/s; a run that misses its rate by more than 5% (a sync
/// producer asked for 20,000 a second) says so and exits non-zero.
#[test]
fn a_workload_reaches_its_rate_and_a_missed_rate_fails_the_run() {
    let broker = BrokerProcess::start("");
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("rate.yaml");
    let write = |rate: u32| {
        std::fs::write(
            &workload,
            format!(
                "name: one producer\ntopics: 1\npartitionsPerTopic: 4\nmessageSize: 100\n\
                 producersPerTopic: 1\nproducerRate: {rate}\nsubscriptionsPerTopic: 1\n\
                 consumerPerSubscription: 0\ntestDurationMinutes: 0.05\n"
            ),
        )
        .unwrap();
    };
    write(4000);
    let run = Command::new(BENCH)
        .args(["--broker", &broker.address, "--json", "--workload"])
        .arg(&workload)
        .output()
        .expect("keel-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let rate = summary["msgs_per_sec"].as_f64().unwrap();
    assert!(rate >= 4000.0 * 0.95, "{rate} msg/s of 4000\n{stderr}");
    assert_eq!(summary["mode"], "async");

    write(20_000);
    let missed = Command::new(BENCH)
        .args(["--broker", &broker.address, "--mode", "sync", "--workload"])
        .arg(&workload)
        .output()
        .expect("keel-bench");
    let stderr = String::from_utf8_lossy(&missed.stderr);
    assert_eq!(missed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the rate asked was missed"), "{stderr}");
}
