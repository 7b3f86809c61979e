//! The `keel` command line as a script uses it: bytes in and out unchanged, a summary,
//! exit statuses that say what happened, exact counts, and a refused promotion.

use crate::harness::{free_ports, wait_until, BrokerProcess};
use keel_client::{Admin, SendStatus};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub const KEEL: &str = env!("CARGO_BIN_EXE_keel-under-test");

/// Runs `keel --broker ADDRESS ARGS...` with `input` on standard input.
pub fn keel(broker: &str, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(KEEL)
        .arg("--broker")
        .arg(broker)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keel");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("keel output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn keel_send_takes_any_bytes_and_consume_gives_them_back_byte_for_byte() {
    let broker = BrokerProcess::start("");
    broker.admin().create_topic("bytes", 1).expect("topic");
    // A line that is not UTF-8 is a message like any other.
    let sent = keel(
        &broker.address,
        &["send", "--topic", "bytes"],
        b"ok1\n\xff\nok2\n",
    );
    assert_eq!(sent.status.code(), Some(0), "{}", text(&sent.stderr));
    assert_eq!(text(&sent.stdout).matches("SEND_OK").count(), 3);
    assert!(
        text(&sent.stderr).contains("sent 3, SEND_OK 3, failed 0, unknown 0"),
        "{}",
        text(&sent.stderr)
    );
    // Binary input as a file, and as hex.
    let binary: Vec<u8> = (0u8..=255).collect();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &binary).expect("write");
    let path = file.path().to_str().expect("path").to_string();
    let sent = keel(
        &broker.address,
        &["send", "--topic", "bytes", "--file", &path],
        b"",
    );
    assert_eq!(sent.status.code(), Some(0), "{}", text(&sent.stderr));
    let sent = keel(
        &broker.address,
        &["send", "--topic", "bytes", "--hex", "00 0a ff"],
        b"",
    );
    assert_eq!(sent.status.code(), Some(0), "{}", text(&sent.stderr));

    let hex = keel(
        &broker.address,
        &[
            "consume",
            "--topic",
            "bytes",
            "--group",
            "h",
            "--idle-ms",
            "300",
            "--quiet",
            "--hex",
        ],
        b"",
    );
    assert_eq!(hex.status.code(), Some(0), "{}", text(&hex.stderr));
    let lines: Vec<String> = text(&hex.stdout).lines().map(str::to_string).collect();
    let expected_binary: String = binary.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        lines,
        vec![
            "6f6b31".to_string(),
            "ff".to_string(),
            "6f6b32".to_string(),
            expected_binary,
            "000aff".to_string()
        ]
    );
    // Escaped text: never a replacement character.
    let escaped = keel(
        &broker.address,
        &[
            "consume",
            "--topic",
            "bytes",
            "--group",
            "e",
            "--idle-ms",
            "300",
            "--quiet",
        ],
        b"",
    );
    let shown = text(&escaped.stdout);
    assert!(shown.lines().nth(1) == Some("\\xff"), "{shown}");
    assert!(!shown.contains('\u{FFFD}'), "{shown}");
    assert!(shown.lines().nth(4) == Some("\\u{0}\\n\\xff"), "{shown}");
    // Raw: the payloads themselves, a newline after each.
    let raw = keel(
        &broker.address,
        &[
            "consume",
            "--topic",
            "bytes",
            "--group",
            "r",
            "--idle-ms",
            "300",
            "--raw",
        ],
        b"",
    );
    let mut expected = b"ok1\n\xff\nok2\n".to_vec();
    expected.extend_from_slice(&binary);
    expected.push(b'\n');
    expected.extend_from_slice(&[0x00, 0x0a, 0xff, b'\n']);
    assert_eq!(raw.stdout, expected);
}

#[test]
fn keel_send_says_what_was_not_stored_and_exits_non_zero() {
    let broker = BrokerProcess::start("auto_create_topics = false");
    broker.admin().create_topic("known", 1).expect("topic");
    let refused = keel(
        &broker.address,
        &["send", "--topic", "unknown", "a", "b"],
        b"",
    );
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("sent 2, SEND_OK 0, failed 2, unknown 0"),
        "{stderr}"
    );
    assert!(stderr.contains("TOPIC_NOT_FOUND"), "{stderr}");
    let bad_hex = keel(
        &broker.address,
        &["send", "--topic", "known", "--hex", "zz"],
        b"",
    );
    assert_eq!(bad_hex.status.code(), Some(1));
    assert!(text(&bad_hex.stderr).contains("not hexadecimal"));
    assert_eq!(broker.stat("records_appended"), 0);
}

#[test]
fn keel_send_reports_an_unknown_outcome_as_unknown_not_failed() {
    // The broker takes the sends, then a double SIGTERM ends it while its fsync stalls:
    // nobody knows whether they are stored.
    let mut broker = BrokerProcess::start("fault_fsync_delay_ms = 3000");
    broker.admin().create_topic("maybe", 1).expect("topic");
    let address = broker.address.clone();
    let sender = std::thread::spawn(move || {
        let lines: Vec<u8> = (0..20)
            .flat_map(|i| format!("m{i}\n").into_bytes())
            .collect();
        keel(
            &address,
            &["send", "--topic", "maybe", "--mode", "async"],
            &lines,
        )
    });
    wait_until("the sends to be appended", Duration::from_secs(10), || {
        broker.try_stat("records_appended") == Some(20)
    });
    let pid = broker.pid();
    crate::harness::signal(pid, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    crate::harness::signal(pid, libc::SIGTERM);
    let sent = sender.join().expect("keel send");
    let stderr = text(&sent.stderr);
    assert_eq!(
        sent.status.code(),
        Some(3),
        "exit 3 = unknown outcome\n{stderr}"
    );
    assert!(stderr.contains("failed 0"), "{stderr}");
    assert!(!stderr.contains("unknown 0"), "{stderr}");
    assert!(stderr.contains("UNKNOWN"), "{stderr}");
    broker.kill9();
}

#[test]
fn subscribe_count_handles_exactly_n_and_commits_nothing_past_them() {
    let broker = BrokerProcess::start("");
    broker.admin().create_topic("many", 4).expect("topic");
    let lines: Vec<u8> = (0..500)
        .flat_map(|i| format!("m{i}\n").into_bytes())
        .collect();
    let sent = keel(
        &broker.address,
        &["send", "--topic", "many", "--mode", "async"],
        &lines,
    );
    assert_eq!(sent.status.code(), Some(0), "{}", text(&sent.stderr));
    let subscribed = keel(
        &broker.address,
        &[
            "subscribe",
            "--topic",
            "many",
            "--group",
            "three",
            "--count",
            "3",
        ],
        b"",
    );
    assert_eq!(
        subscribed.status.code(),
        Some(0),
        "{}",
        text(&subscribed.stderr)
    );
    let handled: Vec<(u32, u64)> = text(&subscribed.stdout)
        .lines()
        .map(|line| {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix(name))
                    .and_then(|value| value.parse::<u64>().ok())
                    .expect("field")
            };
            (field("queue=") as u32, field("offset="))
        })
        .collect();
    assert_eq!(handled.len(), 3, "{}", text(&subscribed.stdout));
    // Per queue, the committed offset covers only messages that were handled.
    let admin = Admin::connect(&broker.address).expect("admin");
    let mut committed_total = 0;
    for queue in 0..4u32 {
        let committed = admin
            .query_offset("three", "many", queue)
            .expect("offset")
            .unwrap_or(0);
        committed_total += committed;
        for offset in 0..committed {
            assert!(
                handled.contains(&(queue, offset)),
                "queue {queue} committed past unhandled offset {offset}: {handled:?}"
            );
        }
    }
    assert!(
        committed_total <= 3,
        "committed {committed_total} for 3 handled"
    );
}

#[test]
fn promoting_a_slave_whose_master_is_alive_is_refused_unless_forced() {
    let [m_port, m_ha, s_port, s_ha] = free_ports();
    let master = BrokerProcess::start(&crate::cluster::master(
        "sync_master",
        "alive",
        m_port,
        m_ha,
        None,
    ));
    let slave = BrokerProcess::start(&crate::cluster::slave("alive", s_port, s_ha, m_ha, None));
    wait_until("the slave in sync", Duration::from_secs(20), || {
        master.try_stat("slaves_in_sync") == Some(1)
    });
    let refused = keel(&slave.address, &["admin", "promote"], b"");
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stdout));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("is alive"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(slave.stat("role"), keel_client::BrokerRole::Slave as u64);
    // The master still takes sends, and the slave still follows it.
    let producer =
        keel_client::Producer::connect(&master.address, keel_client::ProducerOptions::default())
            .expect("producer");
    let result = producer
        .send(keel_client::Message::new("t", "still the master"))
        .expect("send");
    assert_eq!(result.status, SendStatus::SendOk);

    let forced = keel(&slave.address, &["admin", "promote", "--force"], b"");
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    assert_eq!(
        slave.stat("role"),
        keel_client::BrokerRole::AsyncMaster as u64
    );
}

#[test]
fn json_output_has_stable_shapes_and_errors_are_one_line() {
    let broker = BrokerProcess::start("");
    let address = broker.address.clone();
    let json_lines = |output: &Output| -> Vec<serde_json::Value> {
        text(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
            .collect()
    };
    let created = keel(
        &address,
        &["--json", "topic", "create", "shapes", "--queues", "2"],
        b"",
    );
    assert_eq!(created.status.code(), Some(0), "{}", text(&created.stderr));
    // Sends: one object per message.
    let sent = keel(
        &address,
        &[
            "send",
            "--topic",
            "shapes",
            "--queue",
            "1",
            "--json",
            "-p",
            "color=red",
            "a",
            "b",
        ],
        b"",
    );
    assert_eq!(sent.status.code(), Some(0), "{}", text(&sent.stderr));
    let results = json_lines(&sent);
    assert_eq!(results.len(), 2);
    for (index, result) in results.iter().enumerate() {
        assert_eq!(result["status"], "SEND_OK");
        assert_eq!(result["queue"], 1);
        assert_eq!(result["offset"], index as u64);
        assert_eq!(result["msg_id"].as_str().unwrap().len(), 16);
    }
    let binary = keel(
        &address,
        &[
            "send", "--topic", "shapes", "--queue", "1", "--hex", "--json", "00ff10",
        ],
        b"",
    );
    assert_eq!(binary.status.code(), Some(0));
    // Records: one object per record, a binary payload as hex.
    let consumed = keel(
        &address,
        &[
            "--json",
            "consume",
            "--topic",
            "shapes",
            "--group",
            "g",
            "--idle-ms",
            "300",
        ],
        b"",
    );
    assert_eq!(
        consumed.status.code(),
        Some(0),
        "{}",
        text(&consumed.stderr)
    );
    let records = json_lines(&consumed);
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["payload"], "a");
    assert_eq!(records[2]["payload_hex"], "00ff10");
    assert_eq!(records[2]["topic"], "shapes");
    assert!(records[2]["properties"].is_object());
    // One object for the others.
    let one = |args: &[&str]| -> serde_json::Value {
        let output = keel(&address, args, b"");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&output.stderr)
        );
        let lines = json_lines(&output);
        assert_eq!(lines.len(), 1, "{args:?}");
        lines.into_iter().next().unwrap()
    };
    let stats = one(&["--json", "stats"]);
    assert_eq!(stats["stats"]["records_appended"], 3);
    let topics = one(&["--json", "topic", "list"]);
    let shapes = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "shapes")
        .unwrap();
    assert_eq!(shapes["queues"][1]["max_offset"], 3);
    let offsets = one(&[
        "--json", "offsets", "show", "--group", "g", "--topic", "shapes",
    ]);
    assert_eq!(offsets["queues"][1]["committed"], 3);
    assert_eq!(offsets["queues"][1]["lag"], 0);
    let id = records[0]["msg_id"].as_str().unwrap().to_string();
    let shown = one(&["--json", "message", "show", &id]);
    assert_eq!(shown["topic"], "shapes");
    assert_eq!(shown["properties"]["color"], "red", "{shown}");
    assert_eq!(records[0]["properties"]["color"], "red");
    let shown = one(&["--json", "message", "show", &id, "--payload"]);
    assert_eq!(shown["payload"], records[0]["payload"], "{shown}");
    let shown = one(&["--json", "message", "show", &id, "--payload", "--hex"]);
    let hex: String = records[0]["payload"]
        .as_str()
        .unwrap()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(shown["payload_hex"], hex.as_str(), "{shown}");
    let shown = keel(&address, &["message", "show", &id], b"");
    assert!(
        text(&shown.stdout).contains("property color"),
        "{}",
        text(&shown.stdout)
    );
    // Usage errors exit 2; a broker that is down is one line on stderr, no log lines.
    assert_eq!(keel(&address, &["send"], b"").status.code(), Some(2));
    let down = keel("127.0.0.1:1", &["send", "--topic", "t", "x"], b"");
    assert_eq!(down.status.code(), Some(1));
    let stderr = text(&down.stderr);
    assert!(
        !stderr.contains("ALARM") && !stderr.contains(" WARN "),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn consume_can_look_without_committing_from_a_position() {
    let broker = BrokerProcess::start("");
    let address = broker.address.clone();
    broker.admin().create_topic("peek", 2).unwrap();
    for queue in ["0", "1"] {
        let sent = keel(
            &address,
            &["send", "--topic", "peek", "--queue", queue, "a", "b", "c"],
            b"",
        );
        assert_eq!(sent.status.code(), Some(0));
    }
    let records = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["--json", "consume", "--topic", "peek", "--idle-ms", "300"];
        all.extend_from_slice(args);
        let output = keel(&address, &all, b"");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&output.stderr)
        );
        text(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let committed = |group: &str| {
        let admin = Admin::connect(&address).unwrap();
        [0, 1].map(|queue| admin.query_offset(group, "peek", queue).unwrap())
    };
    // A look moves nothing: the group has no offsets after it, and the next look
    // sees everything again.
    assert_eq!(records(&["--group", "g", "--no-commit"]).len(), 6);
    assert_eq!(committed("g"), [None, None]);
    assert_eq!(records(&["--group", "g", "--no-commit"]).len(), 6);
    // From a position.
    assert_eq!(
        records(&["--group", "g", "--no-commit", "--from", "latest"]).len(),
        0
    );
    assert_eq!(
        records(&[
            "--group",
            "g",
            "--no-commit",
            "--from",
            "2030-01-01T00:00:00Z"
        ])
        .len(),
        0
    );
    assert_eq!(
        records(&["--group", "g", "--no-commit", "--from", "0"]).len(),
        6
    );
    let one = records(&["--group", "g", "--queue", "1", "--offset", "1"]);
    assert_eq!(
        one.iter()
            .map(|r| (r["queue"].as_u64().unwrap(), r["offset"].as_u64().unwrap()))
            .collect::<Vec<_>>(),
        [(1, 1), (1, 2)]
    );
    assert_eq!(
        committed("g"),
        [None, None],
        "--queue looks without committing"
    );
    // The count counts what is printed, not the other queues' records.
    let two = records(&["--group", "g", "--queue", "1", "--offset", "0", "-n", "2"]);
    assert_eq!(two.len(), 2);
    assert!(two.iter().all(|r| r["queue"] == 1), "{two:?}");
    // A consume commits; a second one finds nothing new.
    assert_eq!(records(&["--group", "g"]).len(), 6);
    assert_eq!(committed("g"), [Some(3), Some(3)]);
    assert_eq!(records(&["--group", "g"]).len(), 0);
    let bad = keel(
        &address,
        &["consume", "--topic", "peek", "--from", "yesterday"],
        b"",
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("--from takes"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn shell_completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_keel()"),
        ("zsh", "#compdef keel"),
        ("fish", "complete -c keel"),
    ] {
        let output = keel("127.0.0.1:1", &["completions", shell], b"");
        assert_eq!(output.status.code(), Some(0));
        assert!(text(&output.stdout).contains(marker), "{shell}");
        assert!(text(&output.stdout).contains("consume"), "{shell}");
    }
}

#[test]
fn send_takes_properties_a_timeout_and_name_servers() {
    let namesrv = crate::harness::NameServerProcess::start(120_000);
    let broker = BrokerProcess::start(&format!(
        "namesrv_addrs = [\"{}\"]\nregister_interval_ms = 200",
        namesrv.address
    ));
    broker.admin().create_topic("props", 1).unwrap();
    wait_until("the broker registered", Duration::from_secs(20), || {
        keel(
            &broker.address,
            &["routes", "--namesrv", &namesrv.address, "--topic", "props"],
            b"",
        )
        .stdout
        .windows(5)
        .any(|w| w == b"props" || w == b"maste")
    });
    // Through the name servers (no --broker), with short flags and properties.
    let sent = keel(
        "127.0.0.1:1",
        &[
            "send",
            "--namesrv",
            &namesrv.address,
            "-t",
            "props",
            "-k",
            "order-1",
            "-p",
            "origin=cli",
            "-p",
            "note=a=b",
            "--timeout",
            "5000",
            "hello",
        ],
        b"",
    );
    assert_eq!(sent.status.code(), Some(0), "{}", text(&sent.stderr));
    let consumed = keel(
        &broker.address,
        &["--json", "consume", "-t", "props", "-g", "g", "-n", "1"],
        b"",
    );
    let record: serde_json::Value = serde_json::from_str(text(&consumed.stdout).trim()).unwrap();
    assert_eq!(record["keys"], "order-1");
    assert_eq!(record["properties"]["origin"], "cli");
    assert_eq!(record["properties"]["note"], "a=b");
    let bad = keel(
        &broker.address,
        &["send", "-t", "props", "-p", "novalue", "x"],
        b"",
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("is not KEY=VALUE"));
}

#[test]
fn group_list_and_describe_show_members_and_lag() {
    let broker = BrokerProcess::start("");
    let address = broker.address.clone();
    broker.admin().create_topic("work", 2).unwrap();
    let sent = keel(
        &address,
        &["send", "-t", "work", "--queue", "0", "a", "b", "c", "d"],
        b"",
    );
    assert_eq!(sent.status.code(), Some(0));
    broker
        .admin()
        .commit_offset("billing", "work", 0, 1)
        .unwrap();
    let listed = keel(&address, &["--json", "group", "list"], b"");
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed.stderr));
    let listed: serde_json::Value = serde_json::from_str(text(&listed.stdout).trim()).unwrap();
    let billing = listed["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "billing")
        .expect("billing listed");
    assert_eq!(billing["topic"], "work");
    assert_eq!(billing["lag"], 3);
    assert_eq!(billing["queues"][0]["end"], 4);
    let described = keel(&address, &["group", "describe", "-g", "billing"], b"");
    assert_eq!(described.status.code(), Some(0));
    assert!(
        text(&described.stdout).contains("queue 0: committed 1, end 4, lag 3"),
        "{}",
        text(&described.stdout)
    );
    let topic = keel(&address, &["topic", "describe", "work"], b"");
    assert_eq!(topic.status.code(), Some(0));
    let topic = text(&topic.stdout);
    assert!(
        topic.contains("topic work: 2 queue(s), 4 message(s) stored"),
        "{topic}"
    );
    assert!(
        topic.contains("group billing: 0 live member(s), lag 3"),
        "{topic}"
    );
    let json = keel(&address, &["--json", "topic", "describe", "work"], b"");
    let json: serde_json::Value = serde_json::from_str(text(&json.stdout).trim()).unwrap();
    assert_eq!(json["messages_stored"], 4);
    assert_eq!(json["groups"][0]["lag"], 3);
    assert!(json["groups"][0]["lag_seconds"].as_f64().unwrap() >= 0.0);
    // Size: what the queues' records take in the log; the four sends all fell within
    // the broker's last minute.
    let queue_bytes: u64 = json["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["bytes"].as_u64().unwrap())
        .sum();
    assert!(queue_bytes > 4 * 60, "{json}");
    assert_eq!(json["bytes_stored"].as_u64(), Some(queue_bytes));
    assert_eq!(json["queues"][1]["bytes"], 0);
    assert_eq!(json["window_messages"], 4, "{json}");
    assert_eq!(json["window_bytes"].as_u64(), Some(queue_bytes));
    assert!(topic.contains("  in: "), "{topic}");
    let unknown = keel(&address, &["group", "describe", "-g", "nobody"], b"");
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("knows no group"));
}

#[test]
fn subscribe_backs_off_while_the_broker_is_down() {
    use std::io::{BufRead, BufReader};
    let mut broker = BrokerProcess::start("");
    broker.admin().create_topic("down", 8).unwrap();
    let mut child = Command::new(KEEL)
        .args([
            "--broker",
            &broker.address,
            "subscribe",
            "--topic",
            "down",
            "--group",
            "g",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let sent = keel(&broker.address, &["send", "-t", "down", "hello"], b"");
    assert_eq!(sent.status.code(), Some(0));
    let line = lines.next().unwrap().unwrap();
    assert!(line.contains("payload=hello"), "{line}");
    broker.kill9();
    std::thread::sleep(Duration::from_secs(4));
    crate::harness::signal(child.id(), libc::SIGKILL);
    let output = child.wait_with_output().unwrap();
    let stderr = text(&output.stderr);
    let complaints = stderr
        .lines()
        .filter(|line| line.contains("consumer"))
        .count();
    // Backing off from 100 ms to 5 s: about a handful of lines in 4 s, not 8 queues x
    // 5 pulls a second.
    assert!(complaints <= 20, "{complaints} lines in 4 s:\n{stderr}");
    assert!(stderr.contains("next try in"), "{stderr}");
}

#[test]
fn offsets_reset_moves_by_a_shift_or_to_a_time_and_a_dry_run_changes_nothing() {
    let broker = BrokerProcess::start("");
    let address = broker.address.clone();
    broker.admin().create_topic("ledger", 2).unwrap();
    let first = keel(
        &address,
        &["send", "-t", "ledger", "--queue", "0", "a", "b", "c"],
        b"",
    );
    assert_eq!(first.status.code(), Some(0));
    std::thread::sleep(Duration::from_millis(20));
    let between = keel_protocol::now_ms();
    std::thread::sleep(Duration::from_millis(20));
    let later = keel(
        &address,
        &["send", "-t", "ledger", "--queue", "0", "d", "e"],
        b"",
    );
    assert_eq!(later.status.code(), Some(0));
    let admin = broker.admin();
    admin.commit_offset("audit", "ledger", 0, 5).unwrap();
    let committed = |queue| admin.query_offset("audit", "ledger", queue).unwrap();

    let dry = keel(
        &address,
        &[
            "--json",
            "offsets",
            "reset",
            "-g",
            "audit",
            "-t",
            "ledger",
            "--shift",
            "-2",
            "--dry-run",
        ],
        b"",
    );
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry.stderr));
    let dry: serde_json::Value = serde_json::from_str(text(&dry.stdout).trim()).unwrap();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["queues"][0]["from"], 5);
    assert_eq!(dry["queues"][0]["to"], 3);
    // Queue 1 never committed and holds nothing: a shift back stays at 0, clamped.
    assert_eq!(dry["queues"][1]["from"], serde_json::Value::Null);
    assert_eq!(dry["queues"][1]["to"], 0);
    assert_eq!(committed(0), Some(5), "a dry run changes nothing");
    assert_eq!(committed(1), None);

    let shifted = keel(
        &address,
        &[
            "offsets", "reset", "-g", "audit", "-t", "ledger", "--queue", "0", "--shift", "-10",
        ],
        b"",
    );
    assert_eq!(shifted.status.code(), Some(0), "{}", text(&shifted.stderr));
    assert!(
        text(&shifted.stdout)
            .contains("queue 0: moved audit from 5 to 0 (clamped to the stored 0..5)"),
        "{}",
        text(&shifted.stdout)
    );
    assert_eq!(committed(0), Some(0));
    assert_eq!(committed(1), None, "--queue moves only that queue");

    let rfc3339 = keel_cli::format_time(between);
    let to_time = keel(
        &address,
        &[
            "offsets", "reset", "-g", "audit", "-t", "ledger", "--queue", "0", "--to", &rfc3339,
        ],
        b"",
    );
    assert_eq!(to_time.status.code(), Some(0), "{}", text(&to_time.stderr));
    assert_eq!(
        committed(0),
        Some(3),
        "the first message stored after {rfc3339}"
    );

    let bad = keel(
        &address,
        &[
            "offsets", "reset", "-g", "audit", "-t", "ledger", "--to", "soon",
        ],
        b"",
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).starts_with("keel: --to takes"),
        "{}",
        text(&bad.stderr)
    );
    let neither = keel(
        &address,
        &["offsets", "reset", "-g", "audit", "-t", "ledger"],
        b"",
    );
    assert_eq!(neither.status.code(), Some(2));

    // A live member would commit over a reset: refused unless --force.
    let member = keel_client::PushConsumer::start(
        &address,
        "audit",
        "ledger",
        keel_client::PushConsumerOptions::default(),
        |_: &keel_client::Delivery| keel_client::ConsumeResult::Success,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while admin
        .list_groups(Some("audit"))
        .unwrap()
        .iter()
        .all(|g| g.members == 0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the member never showed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = keel(
        &address,
        &[
            "offsets", "reset", "-g", "audit", "-t", "ledger", "--to", "latest",
        ],
        b"",
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("live member"),
        "{}",
        text(&refused.stderr)
    );
    member.shutdown().unwrap();
}

#[test]
fn queues_added_to_a_topic_are_used_at_once_and_a_running_group_misses_nothing_on_them() {
    let mut broker = BrokerProcess::start("");
    let address = broker.address.clone();
    broker.admin().create_topic("grow", 2).unwrap();
    // A group that starts from the latest offset, already consuming the topic.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let handled = seen.clone();
    let member = keel_client::PushConsumer::start(
        &address,
        "tail",
        "grow",
        keel_client::PushConsumerOptions {
            start_from: keel_client::StartFrom::Latest,
            ..keel_client::PushConsumerOptions::default()
        },
        move |delivery: &keel_client::Delivery| {
            handled
                .lock()
                .unwrap()
                .push(delivery.record.payload.to_vec());
            keel_client::ConsumeResult::Success
        },
    )
    .unwrap();
    let admin = broker.admin();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // It commits its start on the old queues, and a message sent now reaches it.
    while seen.lock().unwrap().is_empty()
        || admin.query_offset("tail", "grow", 0).unwrap().is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the member never consumed"
        );
        let _ = keel(
            &address,
            &["send", "-t", "grow", "--queue", "0", "warm"],
            b"",
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let grown = keel(
        &address,
        &["--json", "topic", "update", "grow", "--queues", "4"],
        b"",
    );
    assert_eq!(grown.status.code(), Some(0), "{}", text(&grown.stderr));
    let grown: serde_json::Value = serde_json::from_str(text(&grown.stdout).trim()).unwrap();
    assert_eq!(
        (grown["queues"].clone(), grown["added"].clone()),
        (4.into(), true.into())
    );
    // Sent to a new queue before the member's next heartbeat shows it the queue.
    let sent = keel(
        &address,
        &["send", "-t", "grow", "--queue", "3", "n1", "n2", "n3"],
        b"",
    );
    assert_eq!(sent.status.code(), Some(0), "{}", text(&sent.stderr));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = seen.lock().unwrap().clone();
        if [b"n1", b"n2", b"n3"]
            .iter()
            .all(|p| got.iter().any(|g| g == *p))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new queue's messages missed: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    member.shutdown().unwrap();

    let same = keel(&address, &["topic", "update", "grow", "--queues", "4"], b"");
    assert!(
        text(&same.stdout).contains("already has 4 queue(s)"),
        "{}",
        text(&same.stdout)
    );
    let fewer = keel(&address, &["topic", "update", "grow", "--queues", "3"], b"");
    assert_eq!(fewer.status.code(), Some(1));
    assert!(
        text(&fewer.stderr).contains("not removed"),
        "{}",
        text(&fewer.stderr)
    );
    let missing = keel(
        &address,
        &["topic", "update", "nosuch", "--queues", "3"],
        b"",
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("does not exist"),
        "{}",
        text(&missing.stderr)
    );
    // Durable: after a restart the topic still has its four queues.
    assert!(broker.terminate().success());
    broker.spawn();
    assert_eq!(
        broker.admin().list_topics(Some("grow")).unwrap()[0]
            .queues
            .len(),
        4
    );
}

#[test]
fn routes_show_when_each_broker_was_last_heard_and_warn_about_a_stale_one() {
    let namesrv = crate::harness::NameServerProcess::start(120_000);
    let config = |name: &str| {
        format!(
            "broker_name = \"{name}\"\nnamesrv_addrs = [\"{}\"]\nregister_interval_ms = 200",
            namesrv.address
        )
    };
    let busy = BrokerProcess::start(&config("busy"));
    let paused = BrokerProcess::start(&config("paused"));
    busy.admin().create_topic("feed", 3).unwrap();
    let sent = keel(
        &busy.address,
        &["send", "-t", "feed", "a", "b", "c", "d"],
        b"",
    );
    assert_eq!(sent.status.code(), Some(0));
    let listed = || {
        let output = keel(
            "127.0.0.1:1",
            &[
                "--json",
                "routes",
                "--namesrv",
                &namesrv.address,
                "-t",
                "feed",
            ],
            b"",
        );
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        let json: serde_json::Value = serde_json::from_str(text(&output.stdout).trim()).unwrap();
        (json, text(&output.stderr))
    };
    let find = |json: &serde_json::Value, name: &str| {
        json["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|route| route["broker_name"] == name)
            .cloned()
    };
    wait_until(
        "both registered twice, the topic too",
        Duration::from_secs(20),
        || {
            let (json, _) = listed();
            let heard_twice =
                |name| find(&json, name).is_some_and(|r| r["interval_ms"].as_u64() > Some(0));
            heard_twice("busy")
                && heard_twice("paused")
                && find(&json, "busy").is_some_and(|r| r["topic_queues"] == 3)
        },
    );
    let (json, stderr) = listed();
    let route = find(&json, "busy").unwrap();
    assert_eq!(route["stale"], false);
    assert_eq!(route["routed"], true);
    assert!(route["since_heard_ms"].as_u64().unwrap() < 5_000, "{route}");
    assert!(route["known_for_ms"].as_u64().unwrap() >= route["interval_ms"].as_u64().unwrap());
    // The broker's own count of its intake over its last minute: the 4 sends.
    assert!(
        route["messages_per_second"].as_f64().unwrap() > 0.0,
        "{route}"
    );
    assert!(!stderr.contains("WARNING"), "{stderr}");

    // A paused broker stops registering: its route goes stale, and it does not answer.
    crate::harness::signal(paused.pid(), libc::SIGSTOP);
    // Stale past two registration intervals and a second (200 ms each here).
    let mut last = (serde_json::Value::Null, String::new());
    wait_until(
        "the paused broker's route goes stale",
        Duration::from_secs(20),
        || {
            last = listed();
            find(&last.0, "paused").is_some_and(|route| route["stale"] == true)
        },
    );
    let (json, stderr) = last;
    crate::harness::signal(paused.pid(), libc::SIGCONT);
    let route = find(&json, "paused").unwrap();
    assert_eq!(route["stale"], true, "{route}");
    assert_eq!(route["messages_per_second"], serde_json::Value::Null);
    assert!(
        stderr.contains("WARNING paused master at") && stderr.contains("its route is stale"),
        "{stderr}"
    );
    assert_eq!(find(&json, "busy").unwrap()["stale"], false);
    let human = keel(
        "127.0.0.1:1",
        &["routes", "--namesrv", &namesrv.address],
        b"",
    );
    assert!(
        text(&human.stdout).contains("last_heard"),
        "{}",
        text(&human.stdout)
    );
}

#[test]
fn topic_delete_refuses_a_topic_in_use_deletes_with_force_and_stays_deleted_after_kill9() {
    let mut broker = BrokerProcess::start("");
    let address = broker.address.clone();
    let admin = broker.admin();
    admin.create_topic("doomed", 2).unwrap();
    let sent = keel(&address, &["send", "-t", "doomed", "a", "b", "c"], b"");
    assert_eq!(sent.status.code(), Some(0), "{}", text(&sent.stderr));
    let sent = keel(&address, &["send", "-t", "kept", "k1", "k2"], b"");
    assert_eq!(sent.status.code(), Some(0), "{}", text(&sent.stderr));
    admin.commit_offset("readers", "doomed", 0, 1).unwrap();
    admin.commit_offset("readers", "kept", 0, 1).unwrap();

    // A script without --yes is told so (usage, exit 2), and nothing goes.
    let unconfirmed = keel(&address, &["topic", "delete", "doomed"], b"");
    assert_eq!(unconfirmed.status.code(), Some(2));
    assert!(text(&unconfirmed.stderr).contains("--yes"));
    // Messages stored in the last minute: in use.
    let refused = keel(&address, &["topic", "delete", "doomed", "--yes"], b"");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("in use") && stderr.contains("3 message(s) stored"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(
        admin.list_topics(Some("doomed")).unwrap()[0].queues.len(),
        2
    );

    let appended = || {
        admin
            .stats()
            .unwrap()
            .into_iter()
            .find(|(name, _)| name == "records_appended")
            .unwrap()
            .1
    };
    let before = appended();
    let deleted = keel(
        &address,
        &["--json", "topic", "delete", "doomed", "--yes", "--force"],
        b"",
    );
    assert_eq!(
        appended(),
        before,
        "a counter: a deletion does not lower it"
    );
    assert_eq!(deleted.status.code(), Some(0), "{}", text(&deleted.stderr));
    let deleted: serde_json::Value = serde_json::from_str(text(&deleted.stdout).trim()).unwrap();
    assert_eq!(deleted["topic"], "doomed");
    assert_eq!(deleted["queues"], 2);
    assert_eq!(deleted["messages"], 3);
    assert_eq!(deleted["durable"], true);
    assert!(deleted["bytes"].as_u64().unwrap() > 0);

    let internal = keel(&address, &["topic", "delete", "%DLQ%readers", "--yes"], b"");
    assert_eq!(internal.status.code(), Some(1));
    assert!(text(&internal.stderr).contains("the broker's own topics"));
    let again = keel(&address, &["topic", "delete", "doomed", "--yes"], b"");
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("does not exist"));
    let consumed = keel(
        &address,
        &["consume", "-t", "doomed", "--no-commit", "--idle-ms", "300"],
        b"",
    );
    assert_eq!(
        consumed.status.code(),
        Some(1),
        "{}",
        text(&consumed.stdout)
    );
    assert_eq!(admin.query_offset("readers", "doomed", 0).unwrap(), None);

    // kill -9: the deletion was acknowledged, so it holds; the other topic is whole.
    broker.kill9();
    broker.spawn();
    let admin = broker.admin();
    assert!(admin.list_topics(Some("doomed")).is_err());
    assert_eq!(admin.query_offset("readers", "doomed", 0).unwrap(), None);
    assert_eq!(admin.query_offset("readers", "kept", 0).unwrap(), Some(1));
    let kept = keel(
        &broker.address,
        &[
            "consume",
            "-t",
            "kept",
            "--no-commit",
            "--idle-ms",
            "300",
            "--quiet",
        ],
        b"",
    );
    assert_eq!(
        text(&kept.stdout).lines().count(),
        2,
        "{}",
        text(&kept.stdout)
    );
    // Created again, it starts empty at offset 0.
    let sent = keel(
        &broker.address,
        &["--json", "send", "-t", "doomed", "--queue", "0", "fresh"],
        b"",
    );
    assert_eq!(sent.status.code(), Some(0), "{}", text(&sent.stderr));
    let sent: serde_json::Value = serde_json::from_str(text(&sent.stdout).trim()).unwrap();
    assert_eq!(sent["offset"], 0, "{sent}");
}

#[test]
fn send_shows_progress_while_answers_come_and_a_summary_at_the_end() {
    let broker = BrokerProcess::start("");
    let sent = keel(
        &broker.address,
        &[
            "send",
            "-t",
            "progress",
            "--repeat",
            "300",
            "--progress",
            "--progress-interval",
            "1",
            "x",
        ],
        b"",
    );
    assert_eq!(sent.status.code(), Some(0), "{}", text(&sent.stderr));
    assert_eq!(text(&sent.stdout).lines().count(), 300);
    let stderr = text(&sent.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let progress: Vec<&&str> = lines.iter().filter(|l| l.contains("answered")).collect();
    assert!(!progress.is_empty(), "{stderr}");
    assert!(
        progress
            .iter()
            .all(|l| l.contains("/300 answered") && l.contains("0 not SEND_OK")),
        "{stderr}"
    );
    assert_eq!(
        lines.last().copied(),
        Some("keel send: sent 300, SEND_OK 300, failed 0, unknown 0")
    );
    // Not asked, and standard error not a terminal: no progress lines.
    let quiet = keel(
        &broker.address,
        &["send", "-t", "progress", "--repeat", "50", "x"],
        b"",
    );
    assert_eq!(
        text(&quiet.stderr).lines().count(),
        1,
        "{}",
        text(&quiet.stderr)
    );
}

#[test]
fn records_consumed_as_json_send_again_with_their_own_keys_tags_and_properties() {
    let broker = BrokerProcess::start("");
    let address = broker.address.clone();
    broker.admin().create_topic("source", 1).unwrap();
    for args in [
        vec![
            "send", "-t", "source", "-k", "k1", "--tags", "A", "-p", "x=1", "one",
        ],
        vec![
            "send", "-t", "source", "-k", "k2", "-p", "y=2", "-p", "z=3", "two",
        ],
        vec!["send", "-t", "source", "--hex", "00ff"],
    ] {
        let sent = keel(&address, &args, b"");
        assert_eq!(sent.status.code(), Some(0), "{}", text(&sent.stderr));
    }
    let consume = |topic: &str| {
        let out = keel(
            &address,
            &[
                "--json",
                "consume",
                "-t",
                topic,
                "--no-commit",
                "--idle-ms",
                "300",
            ],
            b"",
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        out.stdout
    };
    let records = consume("source");
    // Each line a message of its own, keys, tags and properties included.
    let copied = keel(&address, &["send", "-t", "copy", "--json-input"], &records);
    assert_eq!(copied.status.code(), Some(0), "{}", text(&copied.stderr));
    let shape = |bytes: &[u8]| -> Vec<serde_json::Value> {
        text(bytes)
            .lines()
            .map(|line| {
                let record: serde_json::Value = serde_json::from_str(line).unwrap();
                serde_json::json!([
                    record["payload"],
                    record["payload_hex"],
                    record["keys"],
                    record["tags"],
                    record["properties"]
                ])
            })
            .collect()
    };
    assert_eq!(shape(&consume("copy")), shape(&records));
    assert_eq!(shape(&records).len(), 3);
    // A line that is not a message: usage-like refusal, nothing sent.
    let bad = keel(
        &address,
        &["send", "-t", "copy", "--json-input", r#"{"keys":"k"}"#],
        b"",
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("give \"payload\""),
        "{}",
        text(&bad.stderr)
    );
}
