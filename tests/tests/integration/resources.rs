//! Resource abuse: floods and abrupt clients do not grow the broker without bound.

use crate::harness::{wait_until, BrokerProcess};
use keel_client::{Message, Producer, ProducerOptions};
use keel_protocol::Request;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn oneway_flood_against_a_slow_disk_is_held_back_not_buffered() {
    const LIMIT: u64 = 64 * 1024;
    let broker = BrokerProcess::start(&format!(
        "fault_fsync_delay_ms = 20\nappend_backlog_max_bytes = {LIMIT}"
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let monitor = {
        let (admin, stop, worst) = (broker.admin(), stop.clone(), worst.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let stats: std::collections::HashMap<String, u64> =
                    admin.stats().expect("stats").into_iter().collect();
                let backlog = stats["offset_appended"].saturating_sub(stats["offset_written"]);
                worst.fetch_max(backlog, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let producers: Vec<_> = (0..4)
        .map(|index| {
            let address = broker.address.clone();
            std::thread::spawn(move || {
                let producer =
                    Producer::connect(&address, ProducerOptions::default()).expect("producer");
                for sequence in 0..2000 {
                    let payload = vec![b'x'; 1000];
                    producer
                        .send_oneway(
                            Message::new("flood", payload).with_keys(format!("{index}-{sequence}")),
                        )
                        .expect("oneway");
                }
            })
        })
        .collect();
    for producer in producers {
        producer.join().expect("producer");
    }
    wait_until("the flood to be stored", Duration::from_secs(60), || {
        broker.stat("records_appended") == 8000
    });
    stop.store(true, Ordering::Relaxed);
    monitor.join().expect("monitor");
    let worst = worst.load(Ordering::Relaxed);
    // Each connection may add the frame it was decoding when the bound was crossed.
    assert!(
        worst <= LIMIT + 4 * 2048,
        "backlog reached {worst} bytes, bound {LIMIT}"
    );
    assert!(
        worst > 0,
        "the monitor never saw a backlog; the test proves nothing"
    );
}

#[test]
fn many_abrupt_disconnects_leave_the_broker_healthy() {
    let broker = BrokerProcess::start("");
    for index in 0..200 {
        let mut stream = TcpStream::connect(&broker.address).expect("connect");
        let mut frame = Vec::new();
        Request::Send(Message::new("t", format!("abrupt-{index}"))).encode(index, 0, &mut frame);
        // Write a random-length prefix of a valid frame and drop the connection.
        let cut = (index as usize * 7919) % frame.len();
        let _ = stream.write_all(&frame[..cut]);
    }
    broker.admin().ping().expect("still serving");
    assert_eq!(
        broker.stat("records_appended"),
        0,
        "no partial frame may be stored"
    );
    wait_until("connections to be reaped", Duration::from_secs(10), || {
        broker.stat("connections") <= 2
    });
}

#[test]
fn a_client_that_goes_silent_mid_frame_is_disconnected_after_the_idle_timeout() {
    let broker = BrokerProcess::start(
        "connection_idle_timeout_ms = 300\nlong_poll_max_ms = 300\nsync_flush_timeout_ms = 300\nslave_timeout_ms = 300",
    );
    let mut slow = TcpStream::connect(&broker.address).expect("connect");
    slow.write_all(&[200, 0, 0])
        .expect("three bytes of a length prefix, then nothing");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let closed = matches!(std::io::Read::read(&mut slow, &mut byte), Ok(0));
    assert!(closed, "the silent connection was not closed");
    broker.admin().ping().expect("still serving others");
}

#[test]
fn connections_over_max_connections_are_refused_with_an_error_frame() {
    let broker = BrokerProcess::start("max_connections = 3");
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&broker.address).expect("connect"))
        .collect();
    wait_until("three connections", Duration::from_secs(10), || {
        // The admin connection used to read stats is itself refused once full, so
        // probe with a fresh raw connection until the refusal frame appears.
        let mut probe = TcpStream::connect(&broker.address).expect("connect");
        probe
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut header = [0u8; 16];
        if std::io::Read::read_exact(&mut probe, &mut header).is_err() {
            return false;
        }
        let mut body = vec![0u8; u32::from_le_bytes(header[..4].try_into().unwrap()) as usize - 12];
        std::io::Read::read_exact(&mut probe, &mut body).expect("error body");
        header[5] == keel_protocol::Kind::Error as u8
            && u16::from_le_bytes([body[0], body[1]])
                == keel_protocol::ErrorCode::TooManyConnections as u16
    });
    drop(held);
    wait_until("room again", Duration::from_secs(10), || {
        broker.admin().ping().is_ok()
    });
}

#[test]
fn prometheus_metrics_follow_the_conventions_and_the_dashboard_names_real_ones() {
    let broker = BrokerProcess::start("metrics_listen = \"127.0.0.1:0\"");
    let producer =
        Producer::connect(&broker.address, ProducerOptions::default()).expect("producer");
    producer.send(Message::new("metered", "one")).expect("send");
    broker
        .admin()
        .commit_offset("readers", "metered", 0, 0)
        .expect("commit");
    let log = broker.log();
    let address = log
        .lines()
        .find_map(|line| line.split("Prometheus metrics on http://").nth(1))
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .expect("the metrics address is logged")
        .to_string();
    let get = |path: &str| {
        let mut stream = TcpStream::connect(&address).expect("connect");
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").expect("request");
        let mut response = String::new();
        std::io::Read::read_to_string(&mut stream, &mut response).expect("response");
        response
    };
    let response = get("/metrics");
    assert!(response.starts_with("HTTP/1.0 200 OK"), "{response}");
    let body = response
        .split_once("\r\n\r\n")
        .expect("a body")
        .1
        .to_string();
    assert!(get("/other").starts_with("HTTP/1.0 404"));

    // The conventions, checked here (and by promtool below when it is available):
    // every family has HELP and TYPE before its samples, a family's samples are
    // together, counters end in _total, histograms' buckets only grow up to +Inf.
    let mut families: Vec<(String, String)> = Vec::new();
    let mut current = String::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(
                !families.iter().any(|(known, _)| *known == name),
                "family {name} appears twice"
            );
            current = name;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(name, current, "TYPE without its HELP");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} lacks _total");
            }
            families.push((name.to_string(), kind.to_string()));
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| *base == current)
                .unwrap_or(name);
            assert_eq!(base, current, "sample {line} outside its family");
        }
    }
    let value = |sample: &str| -> f64 {
        body.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {sample} in\n{body}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("keel_records_appended_total"), 1.0);
    assert_eq!(value("keel_sends_total{outcome=\"send_ok\"}"), 1.0);
    assert_eq!(
        value("keel_send_duration_seconds_count{outcome=\"send_ok\"}"),
        1.0
    );
    assert_eq!(
        value("keel_send_duration_seconds_bucket{outcome=\"send_ok\",le=\"+Inf\"}"),
        1.0
    );
    assert!(value("keel_fsync_duration_seconds_count") >= 1.0);
    assert!(value("keel_records_per_fsync_sum") >= 1.0);
    assert_eq!(value("keel_role{role=\"master\"}"), 1.0);
    assert!(body.contains("keel_queue_max_offset{topic=\"metered\",queue=\""));
    assert!(
        body.contains("internal=\"true\""),
        "the broker's % topics are labelled"
    );
    assert_eq!(
        value("keel_consumer_lag_messages{group=\"readers\",topic=\"metered\",queue=\"0\",internal=\"false\"}"),
        body.lines()
            .find_map(|line| {
                line.strip_prefix("keel_queue_max_offset{topic=\"metered\",queue=\"0\",internal=\"false\"} ")
            })
            .unwrap()
            .parse::<f64>()
            .unwrap()
    );

    let lag_seconds = value(
        "keel_consumer_lag_seconds{group=\"readers\",topic=\"metered\",queue=\"0\",internal=\"false\"}",
    );
    assert!(lag_seconds >= 0.0, "{lag_seconds}");

    // promtool, when the machine has it (CI fetches Debian's): no errors, no lint.
    let promtool = std::env::var("KEEL_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    match std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            let output = child.wait_with_output().unwrap();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                output.status.success() && said.trim().is_empty(),
                "promtool: {said}"
            );
        }
        Err(_) => crate::harness::tool_missing(&format!("promtool not found ({promtool})")),
    }

    // The Grafana dashboard is JSON whose queries name families served here.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/keel.json"),
    )
    .expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    let mut named = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("keel_") {
                    continue;
                }
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix))
                    .filter(|base| {
                        families
                            .iter()
                            .any(|(name, kind)| name == base && kind == "histogram")
                    })
                    .unwrap_or(word);
                assert!(
                    families.iter().any(|(name, _)| name == base),
                    "the dashboard's {word} is not served (panel {})",
                    panel["title"]
                );
                named += 1;
            }
        }
    }
    assert!(named >= 10, "the dashboard names {named} metrics");
}

#[test]
fn long_polls_parked_per_connection_are_capped() {
    let broker = BrokerProcess::start("");
    broker.admin().create_topic("quiet", 1).expect("topic");
    let connection = keel_client::Connection::connect(
        broker
            .address
            .parse::<std::net::SocketAddr>()
            .expect("address"),
        &keel_client::ConnectionOptions::default(),
    )
    .expect("connect");
    let answered = Arc::new(AtomicU64::new(0));
    let pull = keel_protocol::Request::Pull(keel_protocol::PullRequest {
        group: String::new(),
        topic: "quiet".into(),
        queue_id: 0,
        queue_offset: 0,
        max_messages: 1,
        max_bytes: 1024,
        wait_ms: 20_000,
    });
    for _ in 0..1100 {
        let answered = answered.clone();
        connection.call_async(
            &pull,
            Duration::from_secs(30),
            Box::new(move |reply| {
                assert!(
                    matches!(reply, Ok(keel_protocol::Response::PullResult(_))),
                    "{reply:?}"
                );
                answered.fetch_add(1, Ordering::Relaxed);
            }),
        );
    }
    // 1,024 wait; the rest are answered at once instead of piling up.
    wait_until(
        "the pulls over the cap to be answered",
        Duration::from_secs(10),
        || answered.load(Ordering::Relaxed) == 76,
    );
    assert_eq!(broker.stat("parked_pulls"), 1024);
}

/// The resident set size of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .expect("VmRSS")
        * 1024
}

#[test]
fn incomplete_frames_are_bounded_across_connections() {
    const BUDGET: u64 = 32 << 20;
    let broker = BrokerProcess::start(&format!("partial_frames_max_bytes = {BUDGET}"));
    let before = rss_bytes(broker.pid());
    let frame_max = 8u32 << 20;
    // 40 clients each send all but the last byte of a maximum-size frame, then wait.
    let mut clients = Vec::new();
    for _ in 0..40 {
        let mut stream = TcpStream::connect(&broker.address).expect("connect");
        let mut header = Vec::new();
        header.extend_from_slice(&(frame_max - 4).to_le_bytes());
        header.extend_from_slice(&[keel_protocol::PROTOCOL_VERSION, 0x02, 0, 0]);
        header.extend_from_slice(&[0; 8]);
        let chunk = vec![0u8; 1 << 20];
        let mut left = frame_max as usize - 1 - header.len();
        let _ = stream.write_all(&header);
        while left > 0 {
            let take = left.min(chunk.len());
            if stream.write_all(&chunk[..take]).is_err() {
                break;
            }
            left -= take;
        }
        clients.push(stream);
    }
    wait_until(
        "the broker to read what it holds",
        Duration::from_secs(20),
        || {
            broker
                .try_stat("protocol_errors")
                .is_some_and(|errors| errors >= 30)
        },
    );
    let grown = rss_bytes(broker.pid()).saturating_sub(before);
    // The budget, and what the allocator keeps around it; not 40 x 8 MiB.
    assert!(
        grown < 3 * BUDGET,
        "RSS grew by {grown} bytes holding incomplete frames (budget {BUDGET})"
    );
    // Those over the budget were told why before being closed.
    let mut told = 0;
    for stream in &mut clients {
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut header = [0u8; 16];
        if std::io::Read::read_exact(stream, &mut header).is_ok() {
            let mut body =
                vec![0u8; u32::from_le_bytes(header[..4].try_into().unwrap()) as usize - 12];
            std::io::Read::read_exact(stream, &mut body).expect("error body");
            assert_eq!(
                u16::from_le_bytes([body[0], body[1]]),
                keel_protocol::ErrorCode::Overloaded as u16
            );
            told += 1;
        }
    }
    assert!(told >= 30, "{told} connections were told OVERLOADED");
    broker.admin().ping().expect("still serving");
}

#[test]
fn idle_timeouts_shorter_than_what_the_broker_makes_clients_wait_are_refused() {
    let mut broker = BrokerProcess::start("");
    broker.kill9();
    broker.reconfigure("connection_idle_timeout_ms = 1000");
    assert_eq!(broker.spawn_expect_failure().code(), Some(2));
    let log = broker.log();
    assert!(
        log.contains("connection_idle_timeout_ms = 1000 is below long_poll_max_ms"),
        "{log}"
    );
}

#[test]
fn a_connection_waiting_for_an_answer_is_not_idle() {
    // A message lookup reads the whole log; every read of the log takes 400 ms here, so
    // the answer comes long after the idle timeout.
    let broker = BrokerProcess::start(
        "connection_idle_timeout_ms = 1000\nlong_poll_max_ms = 1000\nsync_flush_timeout_ms = 1000\n\
         slave_timeout_ms = 1000\nfault_read_delay_ms = 400\nsegment_size_bytes = 1048576",
    );
    let producer =
        Producer::connect(&broker.address, ProducerOptions::default()).expect("producer");
    let batch: Vec<Message> = (0..400)
        .map(|index| Message::new("looked-up", vec![b'x'; 10_000]).with_keys(format!("k{index}")))
        .collect();
    for chunk in batch.chunks(50) {
        producer.send_batch(chunk.to_vec()).expect("stored");
    }
    let started = std::time::Instant::now();
    let info = broker
        .admin()
        .message_info(0, Some("k399"))
        .expect("answered, not cut off as idle");
    assert!(
        started.elapsed() > Duration::from_millis(1500),
        "the lookup was too quick to show anything"
    );
    assert!(
        info.iter()
            .any(|(name, value)| name == "keys" && value == "k399"),
        "{info:?}"
    );
}
