//! 10,000 messages per send mode, every one consumed back exactly once, byte for byte.

use crate::harness::{drain, wait_until, BrokerProcess};
use keel_client::{Message, Producer, ProducerOptions, SendStatus};
use keel_tests::{id_of, payload_for, Ledger, Outcome};
use std::sync::Arc;
use std::time::Duration;

const MESSAGES: usize = 10_000;
const PRODUCERS: usize = 8;
const SIZE: usize = 200;

#[derive(Clone, Copy)]
enum Mode {
    Sync,
    Async,
    Oneway,
}

fn send_all(broker: &BrokerProcess, topic: &str, mode: Mode, ledger: &Arc<Ledger>) {
    let threads: Vec<_> = (0..PRODUCERS)
        .map(|producer_index| {
            let address = broker.address.clone();
            let topic = topic.to_string();
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                let producer =
                    Producer::connect(&address, ProducerOptions::default()).expect("connect");
                let mut handles = Vec::new();
                for sequence in 0..MESSAGES / PRODUCERS {
                    let id = format!("p{producer_index}-s{sequence}");
                    let message =
                        Message::new(topic.as_str(), payload_for(&id, SIZE)).with_keys(id.as_str());
                    match mode {
                        Mode::Sync => {
                            let outcome = producer.send(message);
                            assert_eq!(
                                outcome.as_ref().map(|r| r.status),
                                Ok(SendStatus::SendOk),
                                "{id}"
                            );
                            ledger.sent(&id, Outcome::Ok);
                        }
                        Mode::Async => handles.push((id, producer.send_async_handle(message))),
                        Mode::Oneway => {
                            producer.send_oneway(message).expect("oneway send");
                            // Oneway sends get no answer; the test counts them as sent
                            // and requires every one to arrive on a healthy broker.
                            ledger.sent(&id, Outcome::Ok);
                        }
                    }
                }
                for (id, handle) in handles {
                    let outcome = handle.wait();
                    assert_eq!(
                        outcome.as_ref().map(|r| r.status),
                        Ok(SendStatus::SendOk),
                        "{id}"
                    );
                    ledger.sent(&id, Outcome::Ok);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("producer thread");
    }
}

fn round_trip(mode: Mode, flush: &str) {
    let broker = BrokerProcess::start(&format!("flush = \"{flush}\"\nflush_interval_ms = 50"));
    let ledger = Arc::new(Ledger::new());
    send_all(&broker, "orders", mode, &ledger);
    if matches!(mode, Mode::Oneway) {
        wait_until("oneway sends to be stored", Duration::from_secs(30), || {
            broker.stat("records_appended") >= MESSAGES as u64
        });
        wait_until(
            "oneway sends to be durable",
            Duration::from_secs(30),
            || broker.stat("offset_durable") == broker.stat("offset_appended"),
        );
    }
    let records = drain(&broker.address, "orders");
    for record in &records {
        assert!(record.message_crc_matches());
        let id = id_of(&record.payload)
            .unwrap_or_else(|| panic!("payload damaged at offset {}", record.queue_offset));
        assert_eq!(record.keys, id);
        ledger.read(&id);
    }
    let report = ledger.report();
    assert!(report.is_clean(), "{report}");
    assert!(report.duplicated.is_empty(), "{report}");
    assert_eq!(report.ok, MESSAGES);
    assert_eq!(report.read, MESSAGES, "{report}");
    assert!(
        broker.stat("segments") > 1,
        "small segments must have rolled"
    );
}

#[test]
fn sync_sends_with_sync_flush_all_consumed_exactly_once() {
    round_trip(Mode::Sync, "sync");
}

#[test]
fn async_sends_all_consumed_exactly_once() {
    round_trip(Mode::Async, "sync");
}

#[test]
fn oneway_sends_all_consumed_exactly_once() {
    round_trip(Mode::Oneway, "sync");
}

#[test]
fn sync_sends_with_async_flush_all_consumed_exactly_once() {
    round_trip(Mode::Sync, "async");
}

#[test]
fn long_poll_pull_is_answered_when_a_message_arrives() {
    let broker = BrokerProcess::start("");
    broker.admin().create_topic("events", 1).expect("create");
    let options = keel_client::ConsumerOptions {
        long_poll: Duration::from_secs(10),
        ..Default::default()
    };
    let mut consumer =
        keel_client::Consumer::connect(&broker.address, "g", "events", options).expect("consumer");
    let address = broker.address.clone();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let producer = Producer::connect(&address, ProducerOptions::default()).expect("producer");
        producer
            .send(Message::new("events", "wake up"))
            .expect("send")
    });
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    while got.is_empty() {
        consumer
            .poll(|record| {
                got.push(record.payload.clone());
                Ok::<(), String>(())
            })
            .expect("poll");
    }
    assert_eq!(&got[0][..], b"wake up");
    assert!(sender.join().is_ok());
    // Answered on arrival, long before the 10 s long-poll would have expired.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn handler_failure_redelivers_and_commits_only_after_success() {
    let broker = BrokerProcess::start("");
    broker.admin().create_topic("jobs", 1).expect("create");
    let producer =
        Producer::connect(&broker.address, ProducerOptions::default()).expect("producer");
    for index in 0..3 {
        producer
            .send(Message::new("jobs", format!("job-{index}")))
            .expect("send");
    }
    let options = keel_client::ConsumerOptions {
        retry_backoff: Duration::from_millis(50),
        long_poll: Duration::from_millis(100),
        ..Default::default()
    };
    let mut consumer =
        keel_client::Consumer::connect(&broker.address, "workers", "jobs", options.clone())
            .expect("consumer");
    let mut seen = Vec::new();
    let mut failures_left = 2;
    consumer
        .run(
            |record| {
                let text = String::from_utf8_lossy(&record.payload).to_string();
                seen.push(text.clone());
                if text == "job-1" && failures_left > 0 {
                    failures_left -= 1;
                    return Err("transient failure");
                }
                Ok(())
            },
            |total| total.handled == 3,
        )
        .expect("run");
    assert_eq!(seen, ["job-0", "job-1", "job-1", "job-1", "job-2"]);
    // The committed offset covers all three; a new consumer of the group gets nothing.
    let consumer = keel_client::Consumer::connect(&broker.address, "workers", "jobs", options)
        .expect("consumer");
    assert_eq!(consumer.positions(), vec![3]);
}

#[test]
fn batched_sends_are_stored_together_and_consumed_exactly_once() {
    let broker = BrokerProcess::start("");
    let ledger = Arc::new(Ledger::new());
    let threads: Vec<_> = (0..4)
        .map(|producer_index| {
            let (address, ledger) = (broker.address.clone(), ledger.clone());
            std::thread::spawn(move || {
                let producer =
                    Producer::connect(&address, ProducerOptions::default()).expect("connect");
                for batch_index in 0..25 {
                    let ids: Vec<String> = (0..100)
                        .map(|index| format!("b{producer_index}-{batch_index}-{index}"))
                        .collect();
                    let messages = ids
                        .iter()
                        .map(|id| {
                            Message::new("batched", payload_for(id, SIZE)).with_keys(id.as_str())
                        })
                        .collect();
                    let result = producer.send_batch(messages).expect("batch");
                    assert_eq!(result.status, SendStatus::SendOk);
                    assert_eq!(result.messages.len(), 100);
                    // A batch takes consecutive positions in the log.
                    assert!(result.messages.windows(2).all(|pair| pair[0].2 < pair[1].2));
                    for id in &ids {
                        ledger.sent(id, Outcome::Ok);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("producer");
    }
    for record in drain(&broker.address, "batched") {
        ledger.read(&id_of(&record.payload).expect("intact payload"));
    }
    let report = ledger.report();
    assert!(
        report.is_clean() && report.duplicated.is_empty(),
        "{report}"
    );
    assert_eq!((report.ok, report.read), (MESSAGES, MESSAGES));
    assert_eq!(broker.stat("sends_ok"), MESSAGES as u64);
}

#[test]
fn a_batch_with_one_bad_message_stores_nothing() {
    let broker = BrokerProcess::start("");
    broker.admin().create_topic("strict", 2).expect("topic");
    let producer =
        Producer::connect(&broker.address, ProducerOptions::default()).expect("producer");
    let mut tampered = Message::new("strict", "tampered");
    tampered.message_crc ^= 1;
    let bad_crc = vec![
        Message::new("strict", "fine"),
        tampered,
        Message::new("strict", "also fine"),
    ];
    let bad_queue = vec![
        Message::new("strict", "fine"),
        Message::new("strict", "no such queue").with_queue(7),
    ];
    let bad_topic = vec![
        Message::new("strict", "fine"),
        Message::new("../nope", "bad topic"),
    ];
    for (batch, code) in [
        (bad_crc, keel_client::ErrorCode::MessageCrcMismatch),
        (bad_queue, keel_client::ErrorCode::InvalidQueueId),
        (bad_topic, keel_client::ErrorCode::InvalidTopic),
    ] {
        match producer.send_batch(batch) {
            Err(keel_client::ClientError::Broker(error)) => assert_eq!(error.code, code, "{error}"),
            other => panic!("expected {code}, got {other:?}"),
        }
    }
    assert_eq!(
        broker.stat("records_appended"),
        0,
        "nothing of a refused batch is stored"
    );
    assert!(producer.send_batch(Vec::new()).is_err());
}
