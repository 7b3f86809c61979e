//! A stalled disk (fsync delayed by fault injection) answers FLUSH_DISK_TIMEOUT, never
//! SEND_OK, and consumers are not served the record until it is really fsynced.

use crate::harness::{drain, wait_until, BrokerProcess};
use keel_client::{Message, Producer, ProducerOptions, SendStatus};
use std::time::Duration;

#[test]
fn stalled_fsync_answers_flush_disk_timeout() {
    let broker = BrokerProcess::start("fault_fsync_delay_ms = 1500\nsync_flush_timeout_ms = 200");
    let options = ProducerOptions {
        send_timeout: Duration::from_secs(10),
        ..ProducerOptions::default()
    };
    let producer = Producer::connect(&broker.address, options).expect("producer");
    let result = producer
        .send(Message::new("slow", "stuck behind a slow disk"))
        .expect("stored");
    assert_eq!(result.status, SendStatus::FlushDiskTimeout);
    // Written but not durable: not visible to consumers yet.
    let queues = &broker.admin().list_topics(Some("slow")).expect("list")[0].queues;
    assert_eq!(
        queues[result.queue_id as usize].max_offset, 0,
        "served before fsync"
    );
    assert_eq!(broker.stat("sends_flush_disk_timeout"), 1);
    assert_eq!(broker.stat("sends_ok"), 0);
    // Once the slow fsync completes, it is durable and consumable.
    wait_until("the slow fsync", Duration::from_secs(10), || {
        broker.stat("offset_durable") == broker.stat("offset_appended")
    });
    let records = drain(&broker.address, "slow");
    assert_eq!(records.len(), 1);
    assert_eq!(&records[0].payload[..], b"stuck behind a slow disk");
}

#[test]
fn a_stalled_read_of_the_log_never_holds_up_sends_on_the_same_event_loop() {
    // One event loop serves every connection; every read of the log's files stalls 2 s.
    let broker = BrokerProcess::start("event_loops = 1\nfault_read_delay_ms = 2000");
    let producer =
        Producer::connect(&broker.address, ProducerOptions::default()).expect("producer");
    producer
        .send(Message::new("cold", "read me").with_queue(0))
        .expect("stored");
    let pulled = {
        let address = broker.address.clone();
        std::thread::spawn(move || {
            let connection = keel_client::Connection::connect(
                keel_client::resolve(&address).unwrap(),
                &keel_client::ConnectionOptions::default(),
            )
            .unwrap();
            let pull = keel_protocol::Request::Pull(keel_protocol::PullRequest {
                group: String::new(),
                topic: "cold".into(),
                queue_id: 0,
                queue_offset: 0,
                max_messages: 1,
                max_bytes: 1 << 20,
                wait_ms: 0,
            });
            let answer = connection.call(&pull, Duration::from_secs(30));
            (answer, std::time::Instant::now())
        })
    };
    // While that read stalls, sends on the same loop are answered.
    wait_until("the pull to be in flight", Duration::from_secs(5), || {
        broker.stat("pulls") == 1
    });
    let mut last_send = std::time::Instant::now();
    for index in 0..20 {
        let result = producer
            .send(Message::new("hot", format!("send {index}")))
            .expect("send");
        assert_eq!(result.status, SendStatus::SendOk);
        last_send = std::time::Instant::now();
    }
    let (answer, pulled_at) = pulled.join().expect("pull");
    match answer.expect("pull answered") {
        keel_protocol::Response::PullResult(result) => assert_eq!(result.record_count, 1),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        last_send < pulled_at,
        "the sends waited for the stalled read: the loop blocked on the disk"
    );
}
