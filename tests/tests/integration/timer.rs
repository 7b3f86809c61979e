//! Delivery at a time (issue 21, part 1) with real processes: a delayed message is
//! invisible until its time, then delivered once; never early, never lost, never twice,
//! across kill -9 and a failover to a slave.

use crate::cluster::{master, slave};
use crate::harness::{free_ports, wait_until, BrokerProcess};
use keel_client::{
    BrokerRole, ClientError, Consumer, ConsumerOptions, ErrorCode, Message, Producer,
    ProducerOptions, Record, SendStatus,
};
use keel_protocol::names::property;
use keel_protocol::now_ms;
use keel_tests::{id_of, payload_for};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A message `id` for `topic`, due at `due`.
fn delayed(topic: &str, id: &str, due: u64) -> Message {
    Message::new(topic, payload_for(id, 128)).with_deliver_at(due)
}

/// What a consumer of `topic` received by `deadline` or once it has `want` records:
/// each record with the wall-clock time it was handed over.
fn receive(address: &str, topic: &str, want: usize, within: Duration) -> Vec<(Record, u64)> {
    let options = ConsumerOptions {
        long_poll: Duration::from_millis(100),
        ..ConsumerOptions::default()
    };
    let group = format!("timer-{}-{}", std::process::id(), now_ms());
    let mut consumer = Consumer::connect(address, &group, topic, options).unwrap();
    let mut received = Vec::new();
    let deadline = Instant::now() + within;
    while received.len() < want && Instant::now() < deadline {
        let polled = consumer.poll(|record| {
            received.push((record.clone(), now_ms()));
            Ok::<(), String>(())
        });
        if let Err(error) = polled {
            // A broker restarting or failing over: try again.
            eprintln!("poll: {error}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    received
}

/// Each payload id once, none handed over or stored before its `KEEL_DELIVER_AT`.
fn check_on_time_and_once(received: &[(Record, u64)]) -> HashMap<String, u64> {
    let mut seen = HashMap::new();
    for (record, at) in received {
        let id = id_of(&record.payload).expect("an intact payload");
        let due: u64 = record
            .property(property::DELIVER_AT)
            .expect("a delivered message keeps its delivery time")
            .parse()
            .unwrap();
        assert!(
            record.store_timestamp_ms >= due && *at >= due,
            "{id} early: due {due}, stored {}, received {at}",
            record.store_timestamp_ms
        );
        assert!(seen.insert(id.clone(), due).is_none(), "{id} twice");
    }
    seen
}

#[test]
fn a_delayed_message_is_invisible_until_its_time_then_delivered_once() {
    let broker = BrokerProcess::start("max_delay_ms = 60000");
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    let start = now_ms();
    let mut ids = Vec::new();
    for (index, delay) in [1_500u64, 2_000, 2_500, 3_000, 700].iter().enumerate() {
        let id = format!("d{index}");
        let sent = producer.send(delayed("later", &id, start + delay)).unwrap();
        assert_eq!(sent.status, SendStatus::SendOk);
        ids.push((id, sent.log_offset));
    }
    // Due already: delivered at once.
    let past = producer
        .send(delayed("later", "past", start - 10_000))
        .unwrap();
    assert_eq!(past.status, SendStatus::SendOk);
    // Beyond max_delay_ms: refused, so not stored.
    match producer.send(delayed("later", "too-far", start + 120_000)) {
        Err(ClientError::Broker(error)) => {
            assert_eq!(error.code, ErrorCode::InvalidArgument);
            assert!(error.message.contains("max_delay_ms"), "{}", error.message);
        }
        other => panic!("a time beyond max_delay_ms must be refused: {other:?}"),
    }
    // Before the first is due, only the past one is there.
    let early = receive(&broker.address, "later", 2, Duration::from_millis(400));
    assert_eq!(early.len(), 1, "only the one due already");
    assert_eq!(id_of(&early[0].0.payload).as_deref(), Some("past"));

    let received = receive(&broker.address, "later", 6, Duration::from_secs(15));
    let seen = check_on_time_and_once(&received);
    assert_eq!(seen.len(), 6, "{seen:?}");
    let lateness: Vec<u64> = received
        .iter()
        .filter(|(record, _)| id_of(&record.payload).as_deref() != Some("past"))
        .map(|(record, _)| record.store_timestamp_ms - seen[&id_of(&record.payload).unwrap()])
        .collect();
    assert!(lateness.iter().all(|late| *late < 1_000), "{lateness:?}");

    // Its lifecycle tells both times and what it became.
    let (_, offset) = &ids[0];
    let info = broker.admin().message_info(*offset, None).unwrap();
    let delivered = info
        .iter()
        .find(|(key, _)| key == "delivered")
        .map(|(_, value)| value.clone())
        .unwrap_or_else(|| panic!("{info:?}"));
    assert!(delivered.starts_with("to later as "), "{delivered}");
    // Nothing more comes (no duplicate from the timer's levels).
    std::thread::sleep(Duration::from_millis(500));
    let again = receive(&broker.address, "later", 7, Duration::from_secs(1));
    assert_eq!(again.len(), 6);
}

#[test]
fn pending_timers_survive_kill_9_and_are_delivered_once_never_early() {
    let mut broker = BrokerProcess::start("");
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    let start = now_ms();
    let count = 200u64;
    for index in 0..count {
        // Due from 0.5 s to 4.5 s: some before the kill, most after the restart.
        let due = start + 500 + index * 20;
        let sent = producer
            .send(delayed("kill", &format!("k{index}"), due))
            .unwrap();
        assert_eq!(sent.status, SendStatus::SendOk);
    }
    drop(producer);
    std::thread::sleep(Duration::from_millis(1_500));
    broker.kill9();
    std::thread::sleep(Duration::from_millis(1_000));
    broker.spawn();
    let received = receive(
        &broker.address,
        "kill",
        count as usize,
        Duration::from_secs(30),
    );
    let seen = check_on_time_and_once(&received);
    assert_eq!(seen.len() as u64, count, "lost: {:?}", {
        let mut missing: Vec<u64> = (0..count)
            .filter(|index| !seen.contains_key(&format!("k{index}")))
            .collect();
        missing.truncate(10);
        missing
    });
    // Nothing more after all are in (a redone round is recognised).
    std::thread::sleep(Duration::from_millis(500));
    let again = receive(
        &broker.address,
        "kill",
        count as usize + 1,
        Duration::from_secs(1),
    );
    assert_eq!(again.len() as u64, count);
}

#[test]
fn a_promoted_slave_delivers_what_its_dead_master_had_pending() {
    let [master_port, master_ha, slave_port, slave_ha] = free_ports();
    let mut old = BrokerProcess::start(&master(
        "sync_master",
        "timers",
        master_port,
        master_ha,
        None,
    ));
    let new = BrokerProcess::start(&slave("timers", slave_port, slave_ha, master_ha, None));
    wait_until("the slave in sync", Duration::from_secs(20), || {
        old.try_stat("slaves_in_sync") == Some(1)
    });
    let producer = Producer::connect(&old.address, ProducerOptions::default()).unwrap();
    let start = now_ms();
    let count = 100u64;
    for index in 0..count {
        let due = start + 1_000 + index * 30;
        let sent = producer
            .send(delayed("failover", &format!("f{index}"), due))
            .unwrap();
        // SEND_OK from a sync master: the slave has it.
        assert_eq!(sent.status, SendStatus::SendOk);
    }
    drop(producer);
    // Some were delivered by the master, most not; then it dies.
    std::thread::sleep(Duration::from_millis(1_500));
    old.kill9();
    new.admin().promote(BrokerRole::AsyncMaster).unwrap();
    let received = receive(
        &new.address,
        "failover",
        count as usize,
        Duration::from_secs(30),
    );
    let seen = check_on_time_and_once(&received);
    assert_eq!(seen.len() as u64, count);
}

#[test]
fn keel_send_delay_and_deliver_at_and_their_mistakes() {
    let broker = BrokerProcess::start("");
    let keel = |args: &[&str]| crate::cli::keel(&broker.address, args, b"");
    let sent = keel(&[
        "--json",
        "send",
        "-t",
        "cli-later",
        "--delay",
        "1s",
        "hello",
    ]);
    assert!(sent.status.success(), "{sent:?}");
    let reply: serde_json::Value =
        serde_json::from_slice(&sent.stdout).unwrap_or_else(|e| panic!("{e}: {sent:?}"));
    assert_eq!(reply["status"], "SEND_OK");
    assert!(String::from_utf8_lossy(&sent.stderr).contains("timer"));
    let received = receive(&broker.address, "cli-later", 1, Duration::from_secs(10));
    check_on_time_and_once_raw(&received);
    assert_eq!(received.len(), 1);
    assert_eq!(&received[0].0.payload[..], b"hello");
    // An RFC 3339 time in the past: delivered at once.
    let past = keel(&[
        "send",
        "-t",
        "cli-later",
        "--deliver-at",
        "2020-01-01T00:00:00Z",
        "old",
    ]);
    assert!(past.status.success(), "{past:?}");
    // Mistakes are told before anything is sent (exit 2), or by the broker (exit 1).
    for (args, code, words) in [
        (
            vec!["send", "-t", "x", "--delay", "3 weeks", "m"],
            2,
            "unit",
        ),
        (
            vec!["send", "-t", "x", "--deliver-at", "tomorrow", "m"],
            2,
            "RFC 3339",
        ),
        (
            vec!["send", "-t", "x", "--delay", "8d", "m"],
            1,
            "max_delay_ms",
        ),
    ] {
        let output = keel(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(words), "{args:?}: {stderr}");
    }
}

/// Every record once and none before its time (payloads without an id).
fn check_on_time_and_once_raw(received: &[(Record, u64)]) {
    for (record, at) in received {
        let due: u64 = record
            .property(property::DELIVER_AT)
            .unwrap()
            .parse()
            .unwrap();
        assert!(record.store_timestamp_ms >= due && *at >= due);
    }
}

/// A producer's retry of a delayed SEND, arriving when the time left calls for another
/// level, is recognised: answered with the original's place, delivered once.
#[test]
fn a_retried_delayed_send_is_recognised_in_any_level() {
    let broker = BrokerProcess::start("");
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    let due = now_ms() + 1_000; // level 3 (800 ms) now, level 2 in 300 ms
    let mut message = delayed("retried", "r0", due);
    // Numbered and stamped once, as the client library does for its own retries.
    message.producer_id = 0x00AB_CDEF;
    message.sequence = 1;
    message.born_timestamp_ms = now_ms();
    let message = message.sealed();
    let first = producer.send(message.clone()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let retry = producer.send(message).unwrap();
    assert_eq!(retry.status, SendStatus::SendOk);
    assert_eq!(
        (retry.queue_id, retry.log_offset),
        (first.queue_id, first.log_offset),
        "answered with the original"
    );
    assert_eq!(broker.stat("sends_deduplicated"), 1);
    let received = receive(&broker.address, "retried", 2, Duration::from_secs(4));
    assert_eq!(check_on_time_and_once(&received).len(), 1);
}

/// The broker's own names and numbers are not a producer's to set: its producer ids are
/// refused (the timer's dedupe relies on them), its `KEEL_REAL_*` properties dropped (a
/// bogus queue would otherwise stop the timer's level at delivery).
#[test]
fn a_producer_cannot_pose_as_the_timer() {
    let broker = BrokerProcess::start("");
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    let mut posing = delayed("own", "p0", now_ms() + 200);
    posing.producer_id = 0x5C4E_D01E_D0D0_0040;
    posing.sequence = 1;
    match producer.send(posing.sealed()) {
        Err(ClientError::Broker(error)) => assert_eq!(error.code, ErrorCode::InvalidArgument),
        other => panic!("the timer's producer id must be refused: {other:?}"),
    }
    let bogus = delayed("own", "p1", now_ms() + 200)
        .with_property(property::REAL_QUEUE, "999")
        .with_property(property::REAL_TOPIC, "elsewhere");
    assert_eq!(producer.send(bogus).unwrap().status, SendStatus::SendOk);
    // And the level goes on: a later message of the same level arrives too.
    let after = delayed("own", "p2", now_ms() + 250);
    assert_eq!(producer.send(after).unwrap().status, SendStatus::SendOk);
    let received = receive(&broker.address, "own", 2, Duration::from_secs(5));
    let seen = check_on_time_and_once(&received);
    assert!(
        seen.contains_key("p1") && seen.contains_key("p2"),
        "{seen:?}"
    );
    assert!(received
        .iter()
        .all(|(record, _)| record.property(property::REAL_QUEUE).is_none()));
}
