//! `keel send` as a stream: a pipe fed line by line is sent line by line, Ctrl-C and
//! SIGTERM leave a record of every message sent (the printed SEND_OKs and unknowns
//! account for everything stored), and a message too large is refused for certain.

use crate::cli::{keel, KEEL};
use crate::harness::{drain, signal, wait_until, BrokerProcess};
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `keel send`: its stdin, and the stdout lines seen so far.
struct Sending {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Sending {
    fn start(broker: &str, args: &[&str]) -> Sending {
        let mut child = Command::new(KEEL)
            .arg("--broker")
            .arg(broker)
            .arg("send")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keel send");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                seen.lock().unwrap().push(line);
            }
        });
        Sending {
            stdin: child.stdin.take(),
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn printed(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Waits for the exit: its status code and standard error.
    fn finish(mut self) -> (Option<i32>, String, Vec<String>) {
        drop(self.stdin.take());
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        let status = self.child.wait().expect("keel send exits");
        // Its standard output ends with it: the reader has every line once it is done.
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the stdout reader");
        }
        let lines = self.lines.lock().unwrap().clone();
        (status.code(), stderr, lines)
    }
}

/// The `input=N` of a SEND_OK line, or the N of "input N:" in an error line.
fn input_of(line: &str) -> Option<u64> {
    if let Some(rest) = line.split(" input=").nth(1) {
        return rest.split_whitespace().next()?.parse().ok();
    }
    let rest = line.split("input ").nth(1)?;
    rest.split(':').next()?.parse().ok()
}

/// Interrupted half way through 200,000 lines: every message stored was either
/// printed SEND_OK or reported unknown, and nothing reported failed was stored.
fn interrupted_send_accounts_for_everything(mode: &str, stop: i32) {
    let broker = BrokerProcess::start("");
    let topic = format!("interrupted-{mode}-{stop}");
    broker.admin().create_topic(&topic, 4).expect("topic");
    let mut sending = Sending::start(&broker.address, &["-t", &topic, "--mode", mode]);
    let mut stdin = sending.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        for index in 1..=200_000u64 {
            if writeln!(stdin, "line-{index}").is_err() {
                return;
            }
        }
    });
    wait_until("answers printed", Duration::from_secs(60), || {
        sending.printed() >= 2000
    });
    signal(sending.child.id(), stop);
    let (code, stderr, lines) = sending.finish();
    let _ = writer.join();
    let ok: BTreeSet<u64> = lines
        .iter()
        .filter(|line| line.starts_with("SEND_OK"))
        .filter_map(|line| input_of(line))
        .collect();
    let unknown: BTreeSet<u64> = stderr
        .lines()
        .filter(|line| line.starts_with("UNKNOWN"))
        .filter_map(input_of)
        .collect();
    let failed: BTreeSet<u64> = stderr
        .lines()
        .filter(|line| line.starts_with("ERROR"))
        .filter_map(input_of)
        .collect();
    let stored: Vec<u64> = drain(&broker.address, &topic)
        .iter()
        .map(|record| {
            let payload = text(&record.payload);
            payload
                .strip_prefix("line-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected payload {payload:?}"))
        })
        .collect();
    let counted: HashMap<u64, usize> = stored.iter().fold(HashMap::new(), |mut counts, n| {
        *counts.entry(*n).or_default() += 1;
        counts
    });
    let what = format!("{mode} send stopped by signal {stop}");
    assert!(
        stderr.contains("interrupted by"),
        "{what}: no interruption line\n{stderr}"
    );
    assert!(
        stderr.contains("keel send: sent "),
        "{what}: no summary\n{stderr}"
    );
    assert!(ok.len() >= 2000, "{what}: {} SEND_OK", ok.len());
    for input in &ok {
        assert!(
            counted.contains_key(input),
            "{what}: input {input} got SEND_OK but is not stored"
        );
    }
    for input in counted.keys() {
        assert!(
            ok.contains(input) || unknown.contains(input),
            "{what}: input {input} is stored but was reported neither SEND_OK nor unknown\n{stderr}"
        );
        assert!(
            !failed.contains(input),
            "{what}: input {input} failed yet is stored"
        );
    }
    assert!(
        counted.values().all(|count| *count == 1),
        "{what}: a line stored twice"
    );
    let expected = match unknown.is_empty() {
        true => 128 + stop,
        false => 3,
    };
    assert_eq!(code, Some(expected), "{what}\n{stderr}");
    eprintln!(
        "{what}: {} stored, {} SEND_OK printed, {} unknown, exit {code:?}",
        stored.len(),
        ok.len(),
        unknown.len()
    );
}

#[test]
fn ctrl_c_during_an_async_send_leaves_a_record_of_every_stored_message() {
    interrupted_send_accounts_for_everything("async", libc::SIGINT);
}

#[test]
fn sigterm_during_an_async_send_leaves_a_record_of_every_stored_message() {
    interrupted_send_accounts_for_everything("async", libc::SIGTERM);
}

#[test]
fn ctrl_c_and_sigterm_during_a_sync_send_print_the_answer_in_flight() {
    interrupted_send_accounts_for_everything("sync", libc::SIGINT);
    interrupted_send_accounts_for_everything("sync", libc::SIGTERM);
}

/// Each line from a pipe is sent (and answered) before the next one is written.
#[test]
fn a_pipe_fed_line_by_line_is_sent_line_by_line() {
    let broker = BrokerProcess::start("");
    for mode in ["sync", "async"] {
        let mut sending = Sending::start(&broker.address, &["-t", "piped", "--mode", mode]);
        let mut stdin = sending.stdin.take().expect("stdin");
        for index in 1..=5 {
            writeln!(stdin, "piped-{index}").expect("write a line");
            stdin.flush().expect("flush");
            let deadline = Instant::now() + Duration::from_secs(10);
            while sending.printed() < index {
                assert!(
                    Instant::now() < deadline,
                    "{mode}: line {index} was not sent before the next one"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let lines = sending.lines.lock().unwrap().clone();
            assert!(
                lines[index - 1].starts_with("SEND_OK")
                    && lines[index - 1].ends_with(&format!("input={index}")),
                "{lines:?}"
            );
        }
        drop(stdin);
        let (code, stderr, _) = sending.finish();
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stderr.contains("sent 5, SEND_OK 5"), "{stderr}");
    }
}

/// `keel --json send --file PATH`, which must exit 1: its one JSON answer.
fn refused_as_json(broker: &str, path: &str) -> serde_json::Value {
    let sent = keel(
        broker,
        &["--json", "send", "-t", "big", "--file", path],
        b"",
    );
    let stdout = text(&sent.stdout);
    let stderr = text(&sent.stderr);
    assert_eq!(sent.status.code(), Some(1), "{stdout}{stderr}");
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

/// A message over the frame limit is a certain refusal: MESSAGE_TOO_LARGE, exit 1,
/// nothing stored, no retry; when the broker's own limit is lower, its FRAME_TOO_LARGE
/// is reported as not stored after one attempt, never as a reset or an unknown outcome.
#[test]
fn a_send_over_the_frame_limit_is_refused_for_certain_in_one_attempt() {
    let broker = BrokerProcess::start("");
    let temp = tempfile::tempdir().expect("temp dir");
    let ten = temp.path().join("ten-megabytes.bin");
    std::fs::write(&ten, vec![7u8; 10_000_000]).expect("write");
    let path = ten.display().to_string();
    let answer = refused_as_json(&broker.address, &path);
    assert_eq!(answer["status"], "ERROR");
    assert_eq!(answer["error_code"], "MESSAGE_TOO_LARGE");
    assert_eq!(answer["stored"], false);
    assert_eq!(broker.stat("protocol_errors"), 0, "nothing was sent");
    let text_mode = keel(
        &broker.address,
        &["send", "-t", "big", "--file", &path],
        b"",
    );
    let stderr = text(&text_mode.stderr);
    assert_eq!(text_mode.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ERROR (not stored) input 1: MESSAGE_TOO_LARGE"),
        "{stderr}"
    );

    // A broker whose limit is below the client's default refuses it itself.
    let small = BrokerProcess::start("max_message_bytes = 4194304\nmax_frame_bytes = 4456448");
    let six = temp.path().join("six-megabytes.bin");
    std::fs::write(&six, vec![7u8; 6_000_000]).expect("write");
    let path = six.display().to_string();
    let answer = refused_as_json(&small.address, &path);
    assert_eq!(answer["error_code"], "FRAME_TOO_LARGE", "{answer}");
    assert_eq!(answer["stored"], false);
    assert_eq!(small.stat("protocol_errors"), 1, "exactly one attempt");
    assert_eq!(small.stat("records_appended"), 0);
}
