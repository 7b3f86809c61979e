//! Crash-point sweep on the simulated disk (RELIABILITY.md tests 1 and 2).
//!
//! For each crash point k, tail shape and flush mode: run random appends (small
//! segments, so rolls happen) until the disk "crashes" at its k-th mutating operation,
//! then recover from the crash image and check:
//! - recovery accepts the image (a crash never looks like corruption);
//! - every record at or below the offset fsynced before the crash is present, intact;
//! - every visible record is one that was appended there (nothing invalid visible);
//! - the ConsumeQueues agree with the CommitLog;
//! - recovering the same image again gives the same log and cuts nothing more.
//!
//! `KEEL_CRASH_POINTS` raises the number of crash points (default 120 per mode and
//! shape combination group, about 1,200 runs in all).

use crate::sim::{SimDisk, TailShape};
use crate::{FlushMode, ReadStatus, Store, StoreConfig};
use keel_protocol::{decode_record, Message};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Appended {
    topic: String,
    queue_id: u32,
    queue_offset: u64,
    log_offset: u64,
    offset_end: u64,
    payload: Vec<u8>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn config(flush: FlushMode) -> StoreConfig {
    let mut config = StoreConfig::new("/sim/data");
    config.segment_size_bytes = 2048;
    config.default_queues = 3;
    config.flush = flush;
    config.flush_interval_ms = 3;
    config
}

fn wait_for(store: &Store, offset: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.offset_durable() < offset && !store.is_poisoned() {
        assert!(
            Instant::now() < deadline,
            "offset {offset} never became durable"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Runs random appends on `disk` until done or the disk crashed. Returns what was
/// appended and the flushed offset when the store stopped.
fn run(disk: &SimDisk, flush: FlushMode, seed: u64) -> (Vec<Appended>, u64) {
    let Ok(store) = Store::open_with_disk(config(flush), Arc::new(disk.clone())) else {
        return (Vec::new(), 0);
    };
    let mut rng = Rng(seed | 1);
    let mut appended = Vec::new();
    for index in 0..48u64 {
        let topic = if rng.below(2) == 0 { "alpha" } else { "beta" };
        let length = 1 + rng.below(300) as usize;
        let payload: Vec<u8> = (0..length)
            .map(|byte| (seed as usize + index as usize * 7 + byte) as u8)
            .collect();
        let message = Message::new(topic, payload.clone()).with_queue(rng.below(3) as u32);
        let Ok(result) = store.append(&message, true, index) else {
            break;
        };
        appended.push(Appended {
            topic: topic.to_string(),
            queue_id: result.queue_id,
            queue_offset: result.queue_offset,
            log_offset: result.log_offset,
            offset_end: result.offset_end,
            payload,
        });
        if rng.below(4) == 0 {
            wait_for(&store, result.offset_end);
        }
    }
    if let Some(last) = appended.last() {
        wait_for(&store, last.offset_end);
    }
    store.shutdown();
    let flushed = store.offset_flushed();
    (appended, flushed)
}

/// Every record of every queue, in queue order, after checking the queues themselves.
fn read_everything(store: &Store, context: &str) -> Vec<keel_protocol::Record> {
    let mut records = Vec::new();
    for (topic, queues) in store.queue_offsets(None) {
        for (queue_id, (_, max_offset)) in queues.iter().enumerate() {
            let read = store
                .read_queue(&topic, queue_id as u32, 0, 100_000, u32::MAX)
                .expect("read queue");
            assert_eq!(u64::from(read.record_count), *max_offset, "{context}");
            let mut position = 0;
            for queue_offset in 0..u64::from(read.record_count) {
                let record = decode_record(&read.records[position..]).unwrap_or_else(|error| {
                    panic!(
                        "{context}: record {topic}/{queue_id}/{queue_offset} undecodable: {error}"
                    )
                });
                assert_eq!(
                    (record.topic.as_str(), record.queue_id, record.queue_offset),
                    (topic.as_str(), queue_id as u32, queue_offset),
                    "{context}: consume queue disagrees with the log"
                );
                position += record.total_size as usize;
                records.push(record);
            }
        }
    }
    records
}

fn verify(image: &SimDisk, flush: FlushMode, appended: &[Appended], flushed: u64, context: &str) {
    let store = Store::open_with_disk(config(flush), Arc::new(image.clone()))
        .unwrap_or_else(|error| panic!("{context}: recovery refused a crash image: {error}"));
    let report = store.recovery_report().clone();
    let by_offset: HashMap<u64, &Appended> = appended
        .iter()
        .map(|entry| (entry.log_offset, entry))
        .collect();
    for entry in appended.iter().filter(|entry| entry.offset_end <= flushed) {
        let read = store.read_queue(
            &entry.topic,
            entry.queue_id,
            entry.queue_offset,
            1,
            u32::MAX,
        );
        let read = read.unwrap_or_else(|error| {
            panic!(
                "{context}: acked record at {} lost: {error}",
                entry.log_offset
            )
        });
        assert_eq!(
            read.status,
            ReadStatus::Found,
            "{context}: acked record at {} lost",
            entry.log_offset
        );
        let record = decode_record(&read.records).expect("decodes");
        assert_eq!(record.log_offset, entry.log_offset, "{context}");
        assert_eq!(
            &record.payload[..],
            &entry.payload[..],
            "{context}: acked record changed"
        );
    }
    let records = read_everything(&store, context);
    assert_eq!(
        records.len() as u64,
        report.records,
        "{context}: records unreachable from the consume queues"
    );
    for record in &records {
        let entry = by_offset.get(&record.log_offset).unwrap_or_else(|| {
            panic!(
                "{context}: a record nobody wrote is visible at {}",
                record.log_offset
            )
        });
        assert_eq!(&record.payload[..], &entry.payload[..], "{context}");
        assert_eq!(
            (record.queue_id, record.queue_offset),
            (entry.queue_id, entry.queue_offset),
            "{context}"
        );
    }
    store.shutdown();
    drop(store);
    let again = Store::open_with_disk(config(flush), Arc::new(image.clone()))
        .unwrap_or_else(|error| panic!("{context}: second recovery failed: {error}"));
    let second = again.recovery_report();
    assert_eq!(
        (second.records, second.offset_end, second.truncated_bytes),
        (report.records, report.offset_end, 0),
        "{context}: recovery is not idempotent"
    );
    again.shutdown();
}

fn sweep(flush: FlushMode, points: u64) {
    // Calibrate: how many disk operations does a whole run take?
    let calibration = SimDisk::new();
    run(&calibration, flush, 7);
    let total = calibration.operations().max(1);
    let step = (total / points).max(1);
    let mut runs = 0;
    let mut crashed = 0;
    for (shape_index, shape) in TailShape::ALL.into_iter().enumerate() {
        let mut operation = 1 + shape_index as u64 % step;
        while operation <= total + 5 {
            let seed = operation * 131 + shape_index as u64;
            let disk = SimDisk::new();
            disk.crash_at(operation, shape, seed);
            let (appended, flushed) = run(&disk, flush, seed);
            crashed += u64::from(disk.crashed());
            let image = disk.after_crash(shape, seed);
            let context = format!("flush {flush:?}, crash at operation {operation} of ~{total}, {shape:?}, seed {seed}");
            verify(&image, flush, &appended, flushed, &context);
            runs += 1;
            operation += step;
        }
    }
    eprintln!("crash sweep ({flush:?}): {runs} runs, {crashed} crashed mid-run, ~{total} operations per run");
    assert!(
        crashed * 2 > runs,
        "most runs must crash mid-run to test anything"
    );
}

fn points() -> u64 {
    std::env::var("KEEL_CRASH_POINTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(60)
}

#[test]
fn crash_sweep_sync_flush() {
    sweep(FlushMode::Sync, points());
}

#[test]
fn crash_sweep_async_flush() {
    sweep(FlushMode::Async, points());
}
