//! Retention through the real keeld: old segments go, and a consumer behind them gets an
//! explicit OFFSET_EXPIRED, never a silent jump, until it chooses to move on.

use crate::harness::{wait_until, BrokerProcess};
use keel_client::{ClientError, Consumer, ConsumerOptions, Message, Producer, ProducerOptions};
use std::time::Duration;

#[test]
fn a_consumer_behind_retention_gets_an_explicit_error_and_moves_on_only_when_told() {
    let broker = BrokerProcess::start(
        "segment_size_bytes = 16384\nretention_bytes = 32768\nretention_check_interval_ms = 50\nretention_hours = 0",
    );
    let admin = broker.admin();
    admin.create_topic("events", 1).expect("topic");
    let producer =
        Producer::connect(&broker.address, ProducerOptions::default()).expect("producer");
    // The slow group reads the first few messages and commits, then falls behind.
    producer
        .send(Message::new("events", "event 0"))
        .expect("send");
    let options = ConsumerOptions {
        long_poll: Duration::from_millis(100),
        ..ConsumerOptions::default()
    };
    let mut slow =
        Consumer::connect(&broker.address, "slow", "events", options.clone()).expect("consumer");
    let mut seen = 0;
    while seen == 0 {
        seen += slow.poll(|_| Ok::<(), String>(())).expect("poll").handled;
    }
    for index in 1..400 {
        producer
            .send(Message::new(
                "events",
                format!("event {index} {}", "x".repeat(200)),
            ))
            .expect("send");
    }
    wait_until(
        "retention to delete old segments",
        Duration::from_secs(20),
        || admin.list_topics(Some("events")).expect("list")[0].queues[0].min_offset > 1,
    );
    let min_offset = admin.list_topics(Some("events")).expect("list")[0].queues[0].min_offset;
    assert!(broker.stat("log_start") > 0);

    // Explicit error, with the numbers to decide on; the position does not move.
    let error = loop {
        match slow.poll(|_| Ok::<(), String>(())) {
            Ok(_) => continue,
            Err(error) => break error,
        }
    };
    let ClientError::OffsetExpired {
        queue_id: 0,
        offset: 1,
        min_offset: reported,
    } = error
    else {
        panic!("expected OffsetExpired, got {error}");
    };
    assert!(reported >= min_offset);
    assert!(
        matches!(
            slow.poll(|_| Ok::<(), String>(())),
            Err(ClientError::OffsetExpired { .. })
        ),
        "still no silent jump"
    );
    assert_eq!(
        admin.query_offset("slow", "events", 0).expect("query"),
        Some(1)
    );

    // Moving on is the application's decision.
    slow.seek(0, reported).expect("seek");
    let mut first = None;
    while first.is_none() {
        slow.poll(|record| {
            first.get_or_insert(record.queue_offset);
            Ok::<(), String>(())
        })
        .expect("poll after seek");
    }
    assert_eq!(first, Some(reported));

    // Or an operator's, for a whole group: keel offsets reset uses the same request.
    admin
        .commit_offset("other", "events", 0, reported)
        .expect("reset");
    let other = Consumer::connect(&broker.address, "other", "events", options).expect("consumer");
    assert_eq!(other.positions(), vec![reported]);
}
