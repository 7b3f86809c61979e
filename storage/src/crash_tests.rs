//! Crash-point sweep on the simulated disk (docs/TESTING.md, 1 and 2).
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

fn config(flush: FlushMode, retention: bool) -> StoreConfig {
    let mut config = StoreConfig::new("/sim/data");
    if retention {
        config.retention_bytes = 3000;
        config.retention_check_interval_ms = 3_600_000;
    }
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

/// What a run left behind for the check.
struct Outcome {
    appended: Vec<Appended>,
    /// Offset fsynced when the store stopped: everything acked ends at or below it.
    flushed: u64,
    /// Highest log start retention reached: records below it may be gone.
    expired_below: u64,
}

/// Runs random appends on `disk` (with retention passes when `retention`) until done or
/// the disk crashed.
fn run(disk: &SimDisk, flush: FlushMode, retention: bool, seed: u64) -> Outcome {
    let Ok(store) = Store::open_with_disk(config(flush, retention), Arc::new(disk.clone())) else {
        return Outcome {
            appended: Vec::new(),
            flushed: 0,
            expired_below: 0,
        };
    };
    let mut expired_below = 0;
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
        if retention && index % 8 == 7 {
            let _ = store.apply_retention(index);
            expired_below = expired_below.max(store.stats().log_start);
        }
    }
    if let Some(last) = appended.last() {
        wait_for(&store, last.offset_end);
    }
    store.shutdown();
    Outcome {
        appended,
        flushed: store.offset_flushed(),
        expired_below,
    }
}

/// Every record of every queue, in queue order, after checking the queues themselves.
fn read_everything(store: &Store, context: &str) -> Vec<keel_protocol::Record> {
    let mut records = Vec::new();
    for (topic, queues) in store.queue_offsets(None) {
        for (queue_id, (min_offset, max_offset)) in queues.iter().enumerate() {
            let read = store
                .read_queue(&topic, queue_id as u32, *min_offset, 100_000, u32::MAX)
                .expect("read queue");
            assert_eq!(
                u64::from(read.record_count),
                max_offset - min_offset,
                "{context}"
            );
            let mut position = 0;
            for queue_offset in *min_offset..*max_offset {
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

fn verify(image: &SimDisk, flush: FlushMode, retention: bool, outcome: &Outcome, context: &str) {
    let Outcome {
        appended,
        flushed,
        expired_below,
    } = outcome;
    let (flushed, expired_below) = (*flushed, *expired_below);
    let store = Store::open_with_disk(config(flush, retention), Arc::new(image.clone()))
        .unwrap_or_else(|error| panic!("{context}: recovery refused a crash image: {error}"));
    let report = store.recovery_report().clone();
    let by_offset: HashMap<u64, &Appended> = appended
        .iter()
        .map(|entry| (entry.log_offset, entry))
        .collect();
    for entry in appended
        .iter()
        .filter(|entry| entry.offset_end <= flushed && entry.log_offset >= expired_below)
    {
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
    // Queue offsets never go backwards: each queue ends at or after every acked record,
    // even when retention expired all of them (else offsets would be handed out twice).
    let ends: HashMap<(String, u32), u64> = store
        .queue_offsets(None)
        .into_iter()
        .flat_map(|(topic, queues)| {
            queues
                .into_iter()
                .enumerate()
                .map(move |(id, (_, end))| ((topic.clone(), id as u32), end))
        })
        .collect();
    for entry in appended.iter().filter(|entry| entry.offset_end <= flushed) {
        let end = ends
            .get(&(entry.topic.clone(), entry.queue_id))
            .copied()
            .unwrap_or(0);
        assert!(
            end > entry.queue_offset,
            "{context}: queue {}/{} ends at {end}, below acked offset {}",
            entry.topic,
            entry.queue_id,
            entry.queue_offset
        );
    }
    let records = read_everything(&store, context);
    if retention {
        // A crash after a queue's new start was persisted but before its segment was
        // deleted leaves records in the log below the start: expired, not served.
        assert!(records.len() as u64 <= report.records, "{context}");
    } else {
        assert_eq!(
            records.len() as u64,
            report.records,
            "{context}: records unreachable from the consume queues"
        );
    }
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
    let again = Store::open_with_disk(config(flush, retention), Arc::new(image.clone()))
        .unwrap_or_else(|error| panic!("{context}: second recovery failed: {error}"));
    let second = again.recovery_report();
    assert_eq!(
        (second.records, second.offset_end, second.truncated_bytes),
        (report.records, report.offset_end, 0),
        "{context}: recovery is not idempotent"
    );
    again.shutdown();
}

fn sweep(flush: FlushMode, retention: bool, points: u64) {
    // Calibrate: how many disk operations does a whole run take?
    let calibration = SimDisk::new();
    run(&calibration, flush, retention, 7);
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
            let outcome = run(&disk, flush, retention, seed);
            crashed += u64::from(disk.crashed());
            let image = disk.after_crash(shape, seed);
            let context = format!(
                "flush {flush:?}, retention {retention}, crash at operation {operation} of ~{total}, {shape:?}, seed {seed}"
            );
            verify(&image, flush, retention, &outcome, &context);
            runs += 1;
            operation += step;
        }
    }
    eprintln!("crash sweep ({flush:?}, retention {retention}): {runs} runs, {crashed} crashed mid-run, ~{total} operations per run");
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
    sweep(FlushMode::Sync, false, points());
}

#[test]
fn crash_sweep_with_retention() {
    sweep(FlushMode::Sync, true, points());
}

#[test]
fn crash_sweep_async_flush() {
    sweep(FlushMode::Async, false, points());
}

/// A slave cutting its log back (`truncate_to`) can crash at any disk operation: the
/// image must recover without being taken for corruption, keep every record below the
/// cut, and show nothing but original records above it.
#[test]
fn crash_sweep_truncation() {
    let mut runs = 0;
    for shape in TailShape::ALL {
        for point in 1..=24u64 {
            let disk = SimDisk::new();
            let seed = point * 31 + shape as u64;
            let outcome = run(&disk, FlushMode::Sync, false, 11);
            let base = disk.after_crash(TailShape::Clean, seed);
            let Some(cut) = outcome.appended.get(outcome.appended.len() / 3) else {
                continue;
            };
            let to = cut.offset_end;
            let store =
                Store::open_with_disk(config(FlushMode::Sync, false), Arc::new(base.clone()))
                    .expect("open the base image");
            base.crash_at(base.operations() + point, shape, seed);
            let _ = store.truncate_to(to);
            store.shutdown();
            drop(store);
            let image = base.after_crash(shape, seed);
            let context = format!("truncation to {to}, crash at operation +{point}, {shape:?}");
            let recovered = Store::open_with_disk(config(FlushMode::Sync, false), Arc::new(image))
                .unwrap_or_else(|error| panic!("{context}: recovery refused: {error}"));
            let records = read_everything(&recovered, &context);
            let by_offset: HashMap<u64, &Appended> = outcome
                .appended
                .iter()
                .map(|entry| (entry.log_offset, entry))
                .collect();
            for entry in outcome.appended.iter().filter(|e| e.offset_end <= to) {
                assert!(
                    records.iter().any(|r| r.log_offset == entry.log_offset),
                    "{context}: record at {} below the cut lost",
                    entry.log_offset
                );
            }
            for record in &records {
                let original = by_offset.get(&record.log_offset).unwrap_or_else(|| {
                    panic!("{context}: unknown record at {}", record.log_offset)
                });
                assert_eq!(&record.payload[..], &original.payload[..], "{context}");
            }
            recovered.shutdown();
            runs += 1;
        }
    }
    assert!(runs > 50, "{runs} runs");
}
