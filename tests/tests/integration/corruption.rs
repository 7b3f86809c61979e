//! Damaged bytes on disk: the consumer's CRC check catches them end to end, recovery
//! refuses to start on damaged acknowledged data, and cuts only a torn tail.

use crate::harness::BrokerProcess;
use keel_client::{ClientError, Consumer, ConsumerOptions, Message, Producer, ProducerOptions};
use std::os::unix::fs::FileExt;
use std::time::Duration;

fn flip_byte(path: &std::path::Path, position: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open segment");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, position).expect("read");
    byte[0] ^= 0x20;
    file.write_all_at(&byte, position).expect("write");
}

fn send_numbered(broker: &BrokerProcess, count: usize) -> Vec<keel_client::SendResult> {
    let producer =
        Producer::connect(&broker.address, ProducerOptions::default()).expect("producer");
    (0..count)
        .map(|index| {
            producer
                .send(Message::new("audit", format!("message number {index:04}")).with_queue(0))
                .expect("send")
        })
        .collect()
}

#[test]
fn a_byte_corrupted_on_disk_is_caught_by_the_consumer_not_handed_over() {
    let broker = BrokerProcess::start("");
    broker.admin().create_topic("audit", 1).expect("topic");
    let results = send_numbered(&broker, 10);
    // Last payload byte of message 5: its record ends where message 6 begins.
    flip_byte(&broker.first_segment(), results[6].log_offset - 1);
    let options = ConsumerOptions {
        long_poll: Duration::from_millis(100),
        ..ConsumerOptions::default()
    };
    let mut consumer =
        Consumer::connect(&broker.address, "auditors", "audit", options).expect("consumer");
    let mut handled = Vec::new();
    let error = loop {
        let outcome = consumer.poll(|record| {
            handled.push(record.queue_offset);
            Ok::<(), String>(())
        });
        match outcome {
            Ok(_) => assert!(
                handled.len() < 10,
                "the corrupt record was handed to the handler"
            ),
            Err(error) => break error,
        }
    };
    assert!(
        matches!(
            error,
            ClientError::Corrupt {
                queue_offset: 5,
                ..
            }
        ),
        "{error}"
    );
    assert!(handled.iter().all(|offset| *offset < 5), "{handled:?}");
    consumer.commit().expect("commit");
    let again = Consumer::connect(
        &broker.address,
        "auditors",
        "audit",
        ConsumerOptions::default(),
    )
    .expect("consumer");
    assert!(
        again.positions()[0] <= 5,
        "the committed offset passed the corrupt record"
    );
}

#[test]
fn keeld_refuses_to_start_on_a_bitflip_in_acknowledged_data() {
    let mut broker = BrokerProcess::start("");
    let results = send_numbered(&broker, 50);
    assert!(broker.terminate().success());
    flip_byte(&broker.first_segment(), results[20].log_offset + 80);
    let status = broker.spawn_expect_failure();
    assert_eq!(status.code(), Some(3), "{}", broker.log());
    let log = broker.log();
    assert!(log.contains("corruption in"), "{log}");
    assert!(log.contains("not a torn tail"), "{log}");
    assert!(
        log.contains("keel admin verify") && log.contains("keel admin truncate"),
        "{log}"
    );
    assert!(
        log.contains(&format!("log offset {}", results[20].log_offset)),
        "{log}"
    );
    // Nothing was cut: the damaged segment is as long as before.
    let end = results[49].log_offset + (results[49].log_offset - results[48].log_offset);
    assert_eq!(
        std::fs::metadata(broker.first_segment())
            .expect("segment")
            .len(),
        end
    );
}

#[test]
fn a_torn_tail_after_a_crash_is_truncated_and_the_rest_served() {
    let mut broker = BrokerProcess::start("");
    send_numbered(&broker, 30);
    broker.kill9();
    // What a crash in the middle of a write leaves: half a record, then zeros.
    let segment = broker.first_segment();
    let bytes = std::fs::read(&segment).expect("segment");
    let mut torn = bytes.clone();
    torn.extend_from_slice(&bytes[..60]);
    torn.extend_from_slice(&[0u8; 300]);
    std::fs::write(&segment, &torn).expect("write");
    broker.spawn();
    assert!(
        broker.log().contains("truncated a torn tail of 360 bytes"),
        "{}",
        broker.log()
    );
    assert_eq!(
        std::fs::metadata(&segment).expect("segment").len(),
        bytes.len() as u64
    );
    assert_eq!(crate::harness::drain(&broker.address, "audit").len(), 30);
}

#[test]
fn the_operator_can_verify_then_deliberately_truncate_a_corrupt_log() {
    let mut broker = BrokerProcess::start("");
    let results = send_numbered(&broker, 50);
    assert!(broker.terminate().success());
    let data_dir = broker.dir.join("data");
    let healthy = keel_storage::admin::verify(&data_dir, 5 << 20).expect("verify");
    assert!(healthy.starts());
    assert_eq!(healthy.records, 50);
    assert!(healthy.clean_shutdown);

    flip_byte(&broker.first_segment(), results[30].log_offset + 90);
    let report = keel_storage::admin::verify(&data_dir, 5 << 20).expect("verify");
    assert!(!report.starts());
    let corruption = report.corruption.expect("corruption reported");
    assert!(
        corruption.contains(&format!("log offset {}", results[30].log_offset)),
        "{corruption}"
    );
    // The totals count the whole log: 30 records before the damage, the damaged one,
    // and the 19 intact ones after it that a truncation would discard.
    assert_eq!(report.records, 30);
    let damage = report.damage.expect("damage surveyed");
    assert_eq!(damage.at, results[30].log_offset);
    assert_eq!(damage.resumes_at, Some(results[31].log_offset));
    assert_eq!(damage.records_after, 19);
    assert_eq!(
        damage.unreadable_bytes(),
        results[31].log_offset - results[30].log_offset
    );
    assert_eq!(damage.topics_after.get("audit"), Some(&19));
    assert!(
        report.stale_index_files.is_empty(),
        "{:?}",
        report.stale_index_files
    );
    // verify changed nothing: keeld still refuses.
    assert_eq!(broker.spawn_expect_failure().code(), Some(3));

    // Truncating inside the damaged record is refused; at its start it works.
    assert!(keel_storage::admin::truncate(&data_dir, results[30].log_offset + 1, 5 << 20).is_err());
    assert!(keel_storage::admin::truncate(&data_dir, results[31].log_offset, 5 << 20).is_err());
    let discarded = keel_storage::admin::truncate(&data_dir, results[30].log_offset, 5 << 20)
        .expect("truncate");
    assert!(discarded > 0);
    broker.spawn();
    let records = crate::harness::drain(&broker.address, "audit");
    assert_eq!(records.len(), 30);
    assert_eq!(&records[29].payload[..], b"message number 0029");
}

#[test]
fn a_segment_cut_short_outside_keel_is_refused_and_verify_says_where_to_truncate() {
    // Cut inside a record (a partial record below the fsynced offset), or exactly at a
    // record boundary (records below the fsynced offset missing): both are refused.
    for (inside, message) in [
        (
            30,
            "not a torn tail because it lies below the last fsynced offset",
        ),
        (0, "acknowledged data is missing"),
    ] {
        let mut broker = BrokerProcess::start("");
        let results = send_numbered(&broker, 40);
        assert!(broker.terminate().success());
        let segment = broker.first_segment();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .expect("segment");
        file.set_len(results[25].log_offset + inside)
            .expect("truncate");
        assert_eq!(broker.spawn_expect_failure().code(), Some(3));
        assert!(broker.log().contains(message), "{}", broker.log());
        let data_dir = broker.dir.join("data");
        let report = keel_storage::admin::verify(&data_dir, 5 << 20).expect("verify");
        assert!(!report.starts());
        assert_eq!(
            report.offset_end, results[25].log_offset,
            "verify names where the valid records end"
        );
        keel_storage::admin::truncate(&data_dir, report.offset_end, 5 << 20).expect("truncate");
        broker.spawn();
        assert_eq!(crate::harness::drain(&broker.address, "audit").len(), 25);
    }
}

/// The checkpoint file's offset (u64 offset, u32 flags, u32 CRC32C of the first 12).
fn checkpoint_offset(broker: &BrokerProcess) -> Option<u64> {
    let bytes = std::fs::read(broker.dir.join("data").join("checkpoint")).ok()?;
    let crc = u32::from_le_bytes(bytes.get(12..16)?.try_into().ok()?);
    (crc32c::crc32c(bytes.get(..12)?) == crc)
        .then(|| u64::from_le_bytes(bytes[..8].try_into().unwrap()))
}

#[test]
fn damage_to_the_last_acknowledged_record_of_an_idle_broker_is_refused_not_cut() {
    for cut in [false, true] {
        let mut broker = BrokerProcess::start("");
        let results = send_numbered(&broker, 40);
        let last = results.last().expect("sent").log_offset;
        let end = std::fs::metadata(broker.first_segment())
            .expect("segment")
            .len();
        // Idle: the checkpoint catches up with the fsynced end soon after appends stop.
        crate::harness::wait_until("the idle checkpoint", Duration::from_secs(5), || {
            checkpoint_offset(&broker) == Some(end)
        });
        broker.kill9();
        if cut {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(broker.first_segment())
                .expect("segment");
            file.set_len(last + 10).expect("cut");
        } else {
            flip_byte(&broker.first_segment(), last + 85);
        }
        let data_dir = broker.dir.join("data");
        let report = keel_storage::admin::verify(&data_dir, 5 << 20).expect("verify");
        assert!(
            !report.starts(),
            "verify must not call this a torn tail: {report:?}"
        );
        assert_eq!(
            broker.spawn_expect_failure().code(),
            Some(3),
            "{}",
            broker.log()
        );
        assert!(broker.log().contains("not a torn tail"), "{}", broker.log());
        assert_eq!(
            std::fs::metadata(broker.first_segment())
                .expect("segment")
                .len(),
            if cut { last + 10 } else { end },
            "nothing was cut"
        );
    }
}

#[test]
fn under_load_damage_behind_the_checkpoint_is_refused_when_later_records_prove_it_fsynced() {
    use keel_tests::{payload_for, Ledger, Outcome};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // Rounds until the kill leaves an acknowledged record past the (lagging) checkpoint,
    // with later records that carry proof it was fsynced: under load that is the rule.
    for round in 0..10 {
        let mut broker = BrokerProcess::start("");
        broker.admin().create_topic("ledger", 1).expect("topic");
        let ledger = Arc::new(Ledger::new());
        let acked: Arc<std::sync::Mutex<Vec<(u64, String)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..8)
            .map(|index| {
                let (address, ledger, acked, stop) = (
                    broker.address.clone(),
                    ledger.clone(),
                    acked.clone(),
                    stop.clone(),
                );
                std::thread::spawn(move || {
                    let producer =
                        Producer::connect(&address, ProducerOptions::default()).expect("producer");
                    let mut sequence = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("r{round}-p{index}-s{sequence}");
                        sequence += 1;
                        let result = producer.send(Message::new("ledger", payload_for(&id, 200)));
                        if let Ok(sent) = &result {
                            if sent.status == keel_client::SendStatus::SendOk {
                                acked.lock().unwrap().push((sent.log_offset, id.clone()));
                            }
                        }
                        ledger.sent(&id, Outcome::of(&result));
                    }
                })
            })
            .collect();
        crate::harness::wait_until("load", Duration::from_secs(30), || ledger.ok_count() > 500);
        broker.kill9();
        stop.store(true, Ordering::Relaxed);
        for producer in producers {
            producer.join().expect("producer");
        }
        let checkpoint = checkpoint_offset(&broker).unwrap_or(0);
        let segment = std::fs::read(broker.first_segment()).expect("segment");
        // Every intact record: (start, end, flushed_before).
        let mut records = Vec::new();
        let mut position = 0usize;
        while let Ok(record) = keel_protocol::decode_record(&segment[position..]) {
            let start = position as u64;
            position += record.total_size as usize;
            records.push((start, position as u64, record.flushed_before));
        }
        let acked = acked.lock().unwrap().clone();
        let target = acked.iter().map(|(offset, _)| *offset).find(|offset| {
            *offset >= checkpoint
                && records
                    .iter()
                    .any(|(start, _, flushed)| start > offset && flushed > offset)
        });
        let Some(target) = target else {
            eprintln!("round {round}: the checkpoint was current at the kill; again");
            continue;
        };
        flip_byte(&broker.first_segment(), target + 85);
        let status = broker.spawn_expect_failure();
        assert_eq!(status.code(), Some(3), "{}", broker.log());
        let log = broker.log();
        assert!(log.contains("shows the log was fsynced"), "{log}");
        assert!(log.contains(&format!("log offset {target}")), "{log}");
        return;
    }
    panic!("in 10 rounds no kill left an acknowledged record past the checkpoint");
}
