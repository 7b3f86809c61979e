//! kill -9 of keeld in the middle of a sync-flush load, then restart: every message that
//! got SEND_OK is consumable, the log recovered, and new sends are accepted.

use crate::harness::{drain, wait_until, BrokerProcess};
use keel_client::{Message, Producer, ProducerOptions, SendStatus};
use keel_tests::{id_of, payload_for, Ledger, Outcome};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PRODUCERS: usize = 16;

/// Producers sending synchronously into `ledger` until `stop` is set.
fn load(
    address: &str,
    ledger: &Arc<Ledger>,
    stop: &Arc<AtomicBool>,
    tag: &str,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..PRODUCERS)
        .map(|index| {
            let (address, ledger, stop, tag) = (
                address.to_string(),
                ledger.clone(),
                stop.clone(),
                tag.to_string(),
            );
            std::thread::spawn(move || {
                let options = ProducerOptions {
                    send_timeout: Duration::from_millis(1000),
                    ..ProducerOptions::default()
                };
                let Ok(producer) = Producer::connect(&address, options) else {
                    return;
                };
                let mut sequence = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("{tag}-p{index}-s{sequence}");
                    sequence += 1;
                    let message = Message::new("ledger", payload_for(&id, 512));
                    let outcome = Outcome::of(&producer.send(message));
                    ledger.sent(&id, outcome);
                }
            })
        })
        .collect()
}

pub fn check_ledger(broker: &BrokerProcess, ledger: &Ledger) -> keel_tests::Report {
    for record in drain(&broker.address, "ledger") {
        let id = id_of(&record.payload)
            .unwrap_or_else(|| panic!("damaged payload at {}", record.queue_offset));
        ledger.read(&id);
    }
    ledger.report()
}

#[test]
fn kill_9_under_sync_flush_load_loses_no_acknowledged_message() {
    let mut broker = BrokerProcess::start("flush = \"sync\"");
    let ledger = Arc::new(Ledger::new());
    let stop = Arc::new(AtomicBool::new(false));
    let producers = load(&broker.address, &ledger, &stop, "before");
    wait_until("2000 acknowledged sends", Duration::from_secs(60), || {
        ledger.ok_count() >= 2000
    });
    broker.kill9();
    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.join().expect("producer");
    }

    broker.spawn();
    assert!(
        broker.log().contains("previous shutdown unclean"),
        "{}",
        broker.log()
    );
    let report = check_ledger(&broker, &ledger);
    eprintln!("kill -9 ledger: {report}");
    assert!(report.is_clean(), "{report}");
    assert!(report.duplicated.is_empty(), "{report}");

    // The recovered broker takes new sends and serves them after the old ones.
    let producer =
        Producer::connect(&broker.address, ProducerOptions::default()).expect("producer");
    let id = "after-restart";
    let result = producer
        .send(Message::new("ledger", payload_for(id, 512)))
        .expect("send after restart");
    assert_eq!(result.status, SendStatus::SendOk);
    let records = drain(&broker.address, "ledger");
    assert!(records
        .iter()
        .any(|record| id_of(&record.payload).as_deref() == Some(id)));
}
