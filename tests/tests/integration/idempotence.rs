//! An idempotent producer never stores a message twice: not when a reply is lost and
//! the send retried, not when the retry crosses a broker restart. Without idempotence
//! the same faults store duplicates, counted here.

use crate::harness::{drain, free_port, wait_until, BrokerProcess, DroppingProxy};
use keel_client::{Message, Producer, ProducerOptions, SendStatus};
use keel_tests::{id_of, payload_for};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

const MESSAGES: usize = 60;

/// Sends MESSAGES through a proxy dropping every 6th reply; returns (copies stored of
/// each id, replies dropped).
fn send_through_lossy_network(idempotent: bool) -> (HashMap<String, usize>, u64) {
    let broker = BrokerProcess::start("");
    let proxy = DroppingProxy::start(&broker.address);
    proxy.drop_every.store(6, Ordering::SeqCst);
    let options = ProducerOptions {
        send_timeout: Duration::from_millis(900),
        idempotent,
        ..ProducerOptions::default()
    };
    let producer = Producer::connect(&proxy.address, options).unwrap();
    for index in 0..MESSAGES {
        let id = format!("m{index}");
        let result = producer
            .send(Message::new("lossy", payload_for(&id, 200)))
            .unwrap_or_else(|error| panic!("{id}: {error}"));
        assert_eq!(result.status, SendStatus::SendOk);
    }
    let mut copies: HashMap<String, usize> = HashMap::new();
    for record in drain(&broker.address, "lossy") {
        *copies.entry(id_of(&record.payload).unwrap()).or_default() += 1;
    }
    (copies, proxy.dropped.load(Ordering::SeqCst))
}

#[test]
fn lost_replies_store_nothing_twice_with_an_idempotent_producer() {
    let (copies, dropped) = send_through_lossy_network(true);
    assert!(dropped >= 5, "the proxy dropped {dropped} replies");
    assert_eq!(copies.len(), MESSAGES);
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    assert_eq!(duplicates, 0, "{dropped} replies dropped");

    let (copies, dropped) = send_through_lossy_network(false);
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    eprintln!(
        "without idempotence: {dropped} replies dropped, {duplicates} duplicates stored \
         (with it: 0)"
    );
    assert_eq!(copies.len(), MESSAGES);
    assert!(duplicates > 0, "the fault must show without idempotence");
}

#[test]
fn a_retry_across_a_broker_restart_is_recognised() {
    let port = free_port();
    let mut broker = BrokerProcess::start(&format!("listen = \"127.0.0.1:{port}\""));
    let proxy = DroppingProxy::start(&broker.address);
    let options = ProducerOptions {
        send_timeout: Duration::from_secs(9),
        ..ProducerOptions::default()
    };
    let producer = Producer::connect(&proxy.address, options).unwrap();
    for index in 0..10 {
        let message = Message::new("restart", payload_for(&format!("before{index}"), 100));
        assert_eq!(producer.send(message).unwrap().status, SendStatus::SendOk);
    }
    // The reply to this one is lost; the broker is killed and restarted before the
    // producer's retry reaches it.
    proxy.drop_next.store(true, Ordering::SeqCst);
    let sending = {
        let producer = producer.clone();
        std::thread::spawn(move || {
            producer.send(Message::new("restart", payload_for("the-one", 100)))
        })
    };
    wait_until("the reply dropped", Duration::from_secs(10), || {
        proxy.dropped.load(Ordering::SeqCst) == 1
    });
    broker.kill9();
    broker.spawn();
    let result = sending.join().unwrap().expect("the retry succeeds");
    assert_eq!(result.status, SendStatus::SendOk);
    assert_eq!(broker.stat("sends_deduplicated"), 1);
    let records = drain(&broker.address, "restart");
    let ids: Vec<String> = records
        .iter()
        .map(|record| id_of(&record.payload).unwrap())
        .collect();
    assert_eq!(ids.iter().filter(|id| *id == "the-one").count(), 1);
    assert_eq!(ids.len(), 11);
    let original = records
        .iter()
        .find(|record| id_of(&record.payload).as_deref() == Some("the-one"))
        .unwrap();
    assert_eq!(
        result.log_offset, original.log_offset,
        "the original message id"
    );
}

#[test]
fn a_reused_sequence_that_is_not_a_retry_is_refused_and_stores_nothing() {
    use keel_client::{ClientError, Connection, ConnectionOptions, ErrorCode};
    use keel_protocol::{Request, Response};
    let broker = BrokerProcess::start("");
    let connection = Connection::connect(
        keel_client::resolve(&broker.address).unwrap(),
        &ConnectionOptions::default(),
    )
    .unwrap();
    let send = |topic: &str, payload: &str, sequence: u64| {
        let mut message = Message::new(topic, payload.to_string());
        message.producer_id = 0x5EED;
        message.sequence = sequence;
        match connection
            .call(&Request::Send(message.sealed()), Duration::from_secs(5))
            .unwrap()
        {
            Response::SendResult(result) => Ok(result),
            Response::Error(error) => Err(ClientError::Broker(error)),
            other => panic!("unexpected {other:?}"),
        }
    };
    let original = send("orders", "the original", 1).expect("stored");
    // The very same message again is a retry: the original's answer, nothing stored.
    let retry = send("orders", "the original", 1).expect("a retry");
    assert_eq!(retry.log_offset, original.log_offset);
    assert_eq!(broker.stat("sends_deduplicated"), 1);
    // Another payload, or another topic, under the same sequence is not a retry.
    for (topic, payload) in [("orders", "something else"), ("payments", "the original")] {
        match send(topic, payload, 1) {
            Err(ClientError::Broker(error)) => {
                assert_eq!(error.code, ErrorCode::SequenceMismatch, "{error}")
            }
            other => panic!("{topic}/{payload}: {other:?}"),
        }
    }
    // Sequence 0 is not a sequence (idempotent producers number from 1).
    for _ in 0..2 {
        match send("orders", "zero", 0) {
            Err(ClientError::Broker(error)) => {
                assert_eq!(error.code, ErrorCode::InvalidArgument, "{error}")
            }
            other => panic!("sequence 0: {other:?}"),
        }
    }
    assert_eq!(
        broker.stat("records_appended"),
        1,
        "only the original is stored"
    );
    assert!(
        broker.admin().list_topics(Some("payments")).is_err(),
        "no topic was created"
    );
}
