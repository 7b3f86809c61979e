//! Store tests on a real temporary directory.

use crate::{FlushMode, ReadStatus, Store, StoreConfig, StoreError};
use keel_protocol::{decode_record, Message};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.segment_size_bytes = 4096;
    config
}

fn wait_durable(store: &Store, offset: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.offset_durable() < offset {
        assert!(
            Instant::now() < deadline,
            "offset {offset} never became durable"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn append_many(store: &Store, count: usize) -> u64 {
    let mut end = 0;
    for index in 0..count {
        let message = Message::new("orders", format!("payload-{index:05}").into_bytes())
            .with_queue((index % 2) as u32);
        end = store.append(&message, true, 1).unwrap().offset_end;
    }
    end
}

fn read_all(store: &Store, queue_id: u32) -> Vec<String> {
    let read = store
        .read_queue("orders", queue_id, 0, 10_000, u32::MAX)
        .unwrap();
    let mut position = 0;
    let mut payloads = Vec::new();
    for _ in 0..read.record_count {
        let record = decode_record(&read.records[position..]).unwrap();
        assert!(record.message_crc_matches());
        position += record.total_size as usize;
        payloads.push(String::from_utf8(record.payload.to_vec()).unwrap());
    }
    payloads
}

fn reopen(dir: &std::path::Path) -> Result<Arc<Store>, StoreError> {
    Store::open(config(dir))
}

#[test]
fn append_roll_read_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    let end = append_many(&store, 200);
    wait_durable(&store, end);
    assert!(store.stats().segments > 3, "small segments must roll");
    let even = read_all(&store, 0);
    assert_eq!(even.len(), 100);
    assert_eq!(even[3], "payload-00006");
    store.shutdown();
    drop(store);
    let store = reopen(dir.path()).unwrap();
    assert_eq!(store.recovery_report().records, 200);
    assert!(store.recovery_report().clean_shutdown);
    assert_eq!(read_all(&store, 1).len(), 100);
    let next = store
        .append(&Message::new("orders", "after").with_queue(0), true, 1)
        .unwrap();
    assert_eq!(next.queue_offset, 100);
    store.shutdown();
}

#[test]
fn reads_stop_at_the_durable_offset_and_past_the_end_is_explicit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.fault_fsync_delay_ms = 300;
    let store = Store::open(cfg).unwrap();
    let end = store
        .append(&Message::new("orders", "x").with_queue(0), true, 1)
        .unwrap()
        .offset_end;
    let read = store.read_queue("orders", 0, 0, 10, u32::MAX).unwrap();
    assert_eq!(
        read.status,
        ReadStatus::NoNewMessages,
        "not yet fsynced, not served"
    );
    wait_durable(&store, end);
    let read = store.read_queue("orders", 0, 0, 10, u32::MAX).unwrap();
    assert_eq!(read.status, ReadStatus::Found);
    let read = store.read_queue("orders", 0, 5, 10, u32::MAX).unwrap();
    assert_eq!(read.status, ReadStatus::OffsetOutOfRange);
    assert_eq!(read.max_offset, 1);
    store.shutdown();
}

/// Appends, then cuts the last segment to simulate a crash mid-write.
fn torn_store(dir: &std::path::Path, damage: impl Fn(&mut Vec<u8>)) -> (u64, std::path::PathBuf) {
    let store = reopen(dir).unwrap();
    let end = append_many(&store, 40);
    wait_durable(&store, end);
    store.shutdown();
    drop(store);
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    let last = segments.last().unwrap().clone();
    let mut bytes = std::fs::read(&last).unwrap();
    damage(&mut bytes);
    std::fs::write(&last, &bytes).unwrap();
    (end, last)
}

#[test]
fn torn_tail_after_the_checkpoint_is_truncated_and_recovery_is_idempotent() {
    for shape in ["cut", "zeros", "garbage"] {
        let dir = tempfile::tempdir().unwrap();
        let (_, _) = torn_store(dir.path(), |bytes| match shape {
            "cut" => {
                let head = bytes[..50].to_vec();
                bytes.extend_from_slice(&head)
            }
            "zeros" => bytes.extend_from_slice(&[0u8; 700]),
            _ => bytes.extend_from_slice(b"\x9f\x00\x00\x00garbage garbage garbage"),
        });
        let store = reopen(dir.path()).unwrap();
        let report = store.recovery_report().clone();
        assert_eq!(report.records, 40, "{shape}");
        assert!(report.truncated_bytes > 0, "{shape}");
        store.shutdown();
        drop(store);
        let again = reopen(dir.path()).unwrap();
        assert_eq!(
            again.recovery_report().truncated_bytes,
            0,
            "{shape}: second recovery is a no-op"
        );
        assert_eq!(again.recovery_report().records, 40);
        again.shutdown();
    }
}

#[test]
fn bitflip_in_fsynced_data_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (_, last) = torn_store(dir.path(), |bytes| {
        let middle = bytes.len() / 3;
        bytes[middle] ^= 0x10;
    });
    let size_before = std::fs::metadata(&last).unwrap().len();
    match reopen(dir.path()) {
        Err(StoreError::Corruption { detail, .. }) => {
            assert!(detail.contains("fsynced"), "{detail}")
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a bitflip in fsynced data must not be accepted"),
    }
    assert_eq!(
        std::fs::metadata(&last).unwrap().len(),
        size_before,
        "nothing truncated"
    );
}

#[test]
fn bitflip_without_checkpoint_but_valid_records_after_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _) = torn_store(dir.path(), |_| {});
    let first = dir.path().join("commitlog").join(format!("{:020}", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&first, &bytes).unwrap();
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    match reopen(dir.path()) {
        Err(StoreError::Corruption { detail, .. }) => {
            assert!(detail.contains("valid records follow"), "{detail}")
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(store) => panic!("accepted: {:?}", store.recovery_report()),
    }
}

#[test]
fn offsets_and_topics_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    store.create_topic("empty-topic", 8).unwrap();
    let end = append_many(&store, 10);
    wait_durable(&store, end);
    let version = store.commit_offset("group-a", "orders", 1, 3).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.meta_persisted() < version {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(store.commit_offset("group-a", "orders", 1, 99).is_err());
    store.shutdown();
    drop(store);
    let store = reopen(dir.path()).unwrap();
    assert_eq!(store.query_offset("group-a", "orders", 1), Some(3));
    assert_eq!(store.topic_queues("empty-topic"), Some(8));
    store.shutdown();
}

#[test]
fn second_open_of_a_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    assert!(matches!(reopen(dir.path()), Err(StoreError::Locked { .. })));
    store.shutdown();
}

#[test]
fn async_flush_acks_when_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.flush = FlushMode::Async;
    cfg.flush_interval_ms = 50;
    let store = Store::open(cfg).unwrap();
    let end = append_many(&store, 20);
    wait_durable(&store, end);
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.offset_flushed() < end {
        assert!(Instant::now() < deadline, "the periodic fsync never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    store.shutdown();
}

mod faults {
    use crate::sim::{Fault, SimDisk, TailShape};
    use crate::{AppendError, ReadStatus, Store, StoreConfig};
    use keel_protocol::Message;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn config() -> StoreConfig {
        let mut config = StoreConfig::new("/sim/data");
        config.segment_size_bytes = 4096;
        config
    }

    fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn send(store: &Store, text: &str) -> Result<crate::AppendResult, AppendError> {
        store.append(
            &Message::new("t", text.as_bytes().to_vec()).with_queue(0),
            true,
            0,
        )
    }

    #[test]
    fn a_failed_fsync_poisons_the_log_and_is_never_retried_into_an_ack() {
        let disk = SimDisk::new();
        let store = Store::open_with_disk(config(), Arc::new(disk.clone())).unwrap();
        let first = send(&store, "before the failure").unwrap();
        wait_until("first fsync", || store.offset_durable() >= first.offset_end);
        let flushed_before = store.offset_flushed();
        disk.fail_sync(1, Fault::Eio);
        let doomed = send(&store, "covered by the failed fsync").unwrap();
        wait_until("poisoning", || store.is_poisoned());
        assert_eq!(
            send(&store, "after").unwrap_err(),
            AppendError::StorageFailed
        );
        // Nothing more ever becomes durable, so no ack and no consumer sees it.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(store.offset_flushed(), flushed_before);
        assert!(store.offset_durable() < doomed.offset_end);
        let read = store.read_queue("t", 0, 1, 10, u32::MAX).unwrap();
        assert_eq!(read.status, ReadStatus::NoNewMessages);
        store.shutdown();
        drop(store);
        // A restart recovers what was fsynced and takes writes again.
        let image = disk.after_crash(TailShape::Torn, 3);
        let store = Store::open_with_disk(config(), Arc::new(image)).unwrap();
        assert!(store.recovery_report().offset_end >= first.offset_end);
        let next = send(&store, "after restart").unwrap();
        wait_until("fsync after restart", || {
            store.offset_durable() >= next.offset_end
        });
        store.shutdown();
    }

    #[test]
    fn a_retry_of_a_stored_message_is_answered_with_the_original_after_poisoning() {
        let disk = SimDisk::new();
        let store = Store::open_with_disk(config(), Arc::new(disk.clone())).unwrap();
        let mut message = Message::new("t", b"durable before the failure".to_vec());
        message.producer_id = 9;
        message.sequence = 1;
        message.seal();
        let first = store.append(&message, true, 1).unwrap();
        wait_until("first fsync", || store.offset_durable() >= first.offset_end);
        disk.fail_sync(1, Fault::Eio);
        send(&store, "covered by the failed fsync").unwrap();
        wait_until("poisoning", || store.is_poisoned());
        // Refusing the retry would say "not stored" of a durable message.
        let retry = store.append(&message, true, 1).unwrap();
        assert!(retry.duplicate);
        assert_eq!(retry.log_offset, first.log_offset);
        assert!(store.offset_durable() >= retry.offset_end);
        // A new sequence is still refused.
        message.sequence = 2;
        message.seal();
        assert_eq!(
            store.append(&message, true, 1).unwrap_err(),
            AppendError::StorageFailed
        );
        store.shutdown();
    }

    #[test]
    fn a_deletion_the_full_disk_discarded_never_happened() {
        let disk = SimDisk::new();
        let mut cfg = config();
        cfg.disk_min_free_bytes = 0;
        let store = Store::open_with_disk(cfg, Arc::new(disk.clone())).unwrap();
        let kept = send(&store, "fits").unwrap();
        wait_until("first fsync", || store.offset_durable() >= kept.offset_end);
        let version = store.commit_offset("g", "t", 0, 1).unwrap();
        wait_until("offset on disk", || store.meta_persisted() >= version);
        let used: u64 = [
            "/sim/data/commitlog/00000000000000000000",
            "/sim/data/checkpoint",
            "/sim/data/topics",
            "/sim/data/offsets/consumer_offsets",
        ]
        .iter()
        .filter_map(|path| disk.read(std::path::Path::new(path)))
        .map(|bytes| bytes.len() as u64)
        .sum();
        disk.set_capacity(Some(used + 80 + 400));
        // A burst, then the deletion behind it: the disk fills before the deletion.
        for index in 0..20 {
            let filler = Message::new("filler", format!("filler {index} ......")).with_queue(0);
            let _ = store.append(&filler, true, 0);
        }
        match store.delete_topic("t", 0) {
            Ok(deletion) => {
                wait_until("disk full", || store.is_disk_full());
                assert!(store.is_discarded(deletion.generation, deletion.offset_end));
            }
            Err(error) => assert_eq!(error, AppendError::DiskFull),
        }
        // The topic is back as it was: its message and its group's offset.
        assert_eq!(store.topic_queues("t"), Some(4));
        let read = store.read_queue("t", 0, 0, 10, u32::MAX).unwrap();
        assert_eq!(read.record_count, 1);
        assert_eq!(store.query_offset("g", "t", 0), Some(1));
        store.shutdown();
    }

    #[test]
    fn enospc_discards_unwritten_appends_keeps_serving_and_resumes_when_space_frees() {
        let disk = SimDisk::new();
        let mut cfg = config();
        cfg.disk_min_free_bytes = 0;
        let store = Store::open_with_disk(cfg, Arc::new(disk.clone())).unwrap();
        let kept = send(&store, "fits").unwrap();
        wait_until("first fsync", || store.offset_durable() >= kept.offset_end);
        // Room for a little more than one more record in all files.
        let live: u64 = [
            "/sim/data/commitlog/00000000000000000000",
            "/sim/data/checkpoint",
            "/sim/data/topics",
            "/sim/data/offsets/consumer_offsets",
        ]
        .iter()
        .filter_map(|path| disk.read(std::path::Path::new(path)))
        .map(|bytes| bytes.len() as u64)
        .sum();
        let queue_files = 4 * 20;
        disk.set_capacity(Some(live + queue_files + 200));
        let results: Vec<_> = (0..20)
            .map(|index| send(&store, &format!("record number {index} of a burst")))
            .collect();
        wait_until("disk full", || store.is_disk_full());
        let appended: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
        let discarded: Vec<_> = appended
            .iter()
            .filter(|r| store.is_discarded(r.generation, r.offset_end))
            .collect();
        assert!(
            !discarded.is_empty(),
            "some of the burst must have been refused"
        );
        assert_eq!(
            send(&store, "while full").unwrap_err(),
            AppendError::DiskFull
        );
        // What was written (whole records only) stays readable and durable.
        let durable = store.offset_durable();
        for result in appended
            .iter()
            .filter(|r| !store.is_discarded(r.generation, r.offset_end))
        {
            wait_until("survivor fsync", || {
                store.offset_durable() >= result.offset_end
            });
        }
        let read = store.read_queue("t", 0, 0, 100, u32::MAX).unwrap();
        assert!(read.record_count >= 1);
        assert!(store.offset_durable() >= durable);
        let segment = disk
            .read(std::path::Path::new(
                "/sim/data/commitlog/00000000000000000000",
            ))
            .unwrap();
        assert_eq!(
            segment.len() as u64,
            store.offset_written(),
            "a partial record stayed in the file"
        );
        // Freeing space lets writes resume, at the offset where the discarded ones began.
        let rolled_back_to = store.offset_written();
        assert_eq!(
            rolled_back_to, discarded[0].log_offset,
            "discarded records start where writing stopped"
        );
        disk.set_capacity(None);
        wait_until("writes to resume", || !store.is_disk_full());
        let resumed = send(&store, "after space was freed").unwrap();
        assert_eq!(resumed.log_offset, rolled_back_to);
        wait_until("fsync after resume", || {
            store.offset_durable() >= resumed.offset_end
        });
        assert!(!store.is_discarded(resumed.generation, resumed.offset_end));
        store.shutdown();
        drop(store);
        let store =
            Store::open_with_disk(config(), Arc::new(disk.after_crash(TailShape::Clean, 1)))
                .unwrap();
        let read = store.read_queue("t", 0, 0, 100, u32::MAX).unwrap();
        let last = keel_protocol::decode_record(
            &read.records
                [read.records.len() - resumed.offset_end as usize + resumed.log_offset as usize..],
        )
        .unwrap();
        assert_eq!(&last.payload[..], b"after space was freed");
        store.shutdown();
    }
}

mod retention {
    use crate::{ReadStatus, Store, StoreConfig};
    use keel_protocol::Message;
    use std::time::{Duration, Instant};

    fn config(dir: &std::path::Path) -> StoreConfig {
        let mut config = StoreConfig::new(dir);
        config.segment_size_bytes = 4096;
        config.retention_check_interval_ms = 3_600_000;
        config
    }

    fn append(store: &Store, count: u64, store_ms: u64) -> u64 {
        let mut end = 0;
        for index in 0..count {
            let message = Message::new(
                "orders",
                format!("message {index:06} {}", "x".repeat(60)).into_bytes(),
            )
            .with_queue(0);
            end = store.append(&message, true, store_ms).unwrap().offset_end;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.offset_durable() < end {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        end
    }

    fn segment_files(dir: &std::path::Path) -> Vec<u64> {
        let mut bases: Vec<u64> = std::fs::read_dir(dir.join("commitlog"))
            .unwrap()
            .map(|entry| {
                entry
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .parse()
                    .unwrap()
            })
            .collect();
        bases.sort_unstable();
        bases
    }

    #[test]
    fn size_retention_deletes_old_segments_and_expired_offsets_are_explicit() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.retention_bytes = 8192;
        let store = Store::open(cfg.clone()).unwrap();
        append(&store, 200, 1);
        let before = segment_files(dir.path());
        assert!(before.len() >= 5, "{before:?}");
        let deleted = store.apply_retention(2).unwrap();
        assert!(deleted >= 2, "{deleted}");
        let after = segment_files(dir.path());
        assert_eq!(after.len(), before.len() - deleted);
        assert_eq!(
            after.last(),
            before.last(),
            "the active segment is never deleted"
        );
        let log_start = store.stats().log_start;
        assert_eq!(after[0], log_start);
        // Deleted files' handles are only dropped at the next pass.
        store.apply_retention(3).unwrap();

        let expired = store.read_queue("orders", 0, 0, 10, u32::MAX).unwrap();
        assert_eq!(expired.status, ReadStatus::OffsetExpired);
        assert!(expired.min_offset > 0);
        assert_eq!(expired.next_offset, 0, "never a silent jump");
        assert_eq!(expired.record_count, 0);
        let first = expired.min_offset;
        let read = store.read_queue("orders", 0, first, 10, u32::MAX).unwrap();
        assert_eq!(read.status, ReadStatus::Found);
        let record = keel_protocol::decode_record(&read.records).unwrap();
        assert_eq!(record.queue_offset, first);
        assert!(record.log_offset >= log_start);
        assert_eq!(store.queue_offsets(Some("orders"))[0].1[0], (first, 200));
        store.shutdown();
        drop(store);

        // After a restart the queue still starts there and ends at 200.
        let store = Store::open(cfg).unwrap();
        assert_eq!(store.queue_offsets(Some("orders"))[0].1[0], (first, 200));
        let next = store
            .append(
                &Message::new("orders", "after restart").with_queue(0),
                true,
                5,
            )
            .unwrap();
        assert_eq!(next.queue_offset, 200);
        assert_eq!(
            store
                .read_queue("orders", 0, 0, 1, u32::MAX)
                .unwrap()
                .status,
            ReadStatus::OffsetExpired
        );
        store.shutdown();
    }

    #[test]
    fn age_retention_keeps_segments_with_recent_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.retention_ms = 60_000;
        let store = Store::open(cfg.clone()).unwrap();
        let now = 10_000_000;
        append(&store, 150, now - 3_600_000);
        append(&store, 20, now - 1_000);
        let before = segment_files(dir.path());
        let deleted = store.apply_retention(now).unwrap();
        assert!(deleted >= 2, "{deleted} of {before:?}");
        // Every recent message is still there.
        let (first, end) = store.queue_offsets(Some("orders"))[0].1[0];
        assert_eq!(end, 170);
        assert!(
            first <= 150,
            "a segment with recent records was deleted: queue starts at {first}"
        );
        assert!(first > 0);
        store.shutdown();
        drop(store);
        // A queue whose every record expired keeps its end across a restart.
        cfg.retention_ms = 1;
        let store = Store::open(cfg.clone()).unwrap();
        let appended = store
            .append(
                &Message::new("orders", "rolls a new segment").with_queue(1),
                true,
                now,
            )
            .unwrap();
        // Retention never deletes data not yet fsynced: wait for the fsync, not a guess.
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.offset_flushed() < appended.offset_end {
            assert!(Instant::now() < deadline, "the append was never fsynced");
            std::thread::sleep(Duration::from_millis(1));
        }
        store.apply_retention(now + 10_000_000).unwrap();
        store.shutdown();
        drop(store);
        let store = Store::open(cfg).unwrap();
        let (first, end) = store.queue_offsets(Some("orders"))[0].1[0];
        assert_eq!(end, 170, "queue 0 must not restart at 0");
        assert!(first >= 150);
        let next = store
            .append(
                &Message::new("orders", "continues").with_queue(0),
                true,
                now,
            )
            .unwrap();
        assert_eq!(next.queue_offset, 170);
        store.shutdown();
    }
}

#[test]
fn a_damaged_topics_file_stops_the_start_with_a_remedy_and_deleting_it_recovers_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    let end = append_many(&store, 10);
    wait_durable(&store, end);
    store.shutdown();
    drop(store);
    let topics = dir.path().join("topics");
    let text = std::fs::read_to_string(&topics).unwrap();
    std::fs::write(&topics, text.replace("orders 4", "orders 5")).unwrap();
    match reopen(dir.path()) {
        Err(StoreError::Corruption { detail, .. }) => {
            assert!(detail.contains("delete it to go on"), "{detail}")
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a damaged topics file was accepted"),
    }
    std::fs::remove_file(&topics).unwrap();
    let store = reopen(dir.path()).unwrap();
    assert_eq!(read_all(&store, 0).len(), 5);
    assert_eq!(read_all(&store, 1).len(), 5);
    store.shutdown();
}

mod replica {
    use super::*;

    fn replicate(master: &Store, slave: &Store) {
        super::replica_copy(master, slave);
    }

    #[test]
    fn a_slave_copies_the_log_at_the_same_offsets_and_truncates_to_a_proven_prefix() {
        let (master_dir, slave_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = reopen(master_dir.path()).unwrap();
        let slave = reopen(slave_dir.path()).unwrap();
        let end = append_many(&master, 150);
        wait_durable(&master, end);
        replicate(&master, &slave);
        wait_durable(&slave, end);
        assert_eq!(read_all(&slave, 0), read_all(&master, 0));
        assert_eq!(read_all(&slave, 1), read_all(&master, 1));
        assert_eq!(
            slave.record_ending_at(end).unwrap(),
            master.record_ending_at(end).unwrap()
        );

        // The slave takes records the master will not keep, then is cut back.
        let mut extra = Vec::new();
        {
            let other_dir = tempfile::tempdir().unwrap();
            let other = reopen(other_dir.path()).unwrap();
            let other_end = append_many(&other, 160);
            wait_durable(&other, other_end);
            let mut from = end;
            while from < other_end {
                let chunk = other.read_log(from, 1 << 20).unwrap();
                from += chunk.len() as u64;
                extra.extend_from_slice(&chunk);
            }
            // Its threads stop before its directory goes (else they may write into it
            // while it is removed, and leave it behind).
            other.shutdown();
        }
        // Records 150..160 of a log with the same shape continue the slave's log.
        assert_eq!(slave.append_replicated(&extra).unwrap(), extra.len());
        let longer = slave.stats().offset_appended;
        assert!(longer > end);
        assert!(slave.truncate_to(end - 1).is_err(), "not a record boundary");
        assert_eq!(slave.truncate_to(end).unwrap(), 10);
        assert_eq!(slave.stats().offset_flushed, end);
        assert_eq!(read_all(&slave, 0).len(), 75);

        // Replication continues from the cut, across segment rolls, and survives a restart.
        let end2 = append_many(&master, 40);
        wait_durable(&master, end2);
        replicate(&master, &slave);
        wait_durable(&slave, end2);
        assert_eq!(read_all(&slave, 1), read_all(&master, 1));
        slave.shutdown();
        drop(slave);
        let slave = reopen(slave_dir.path()).unwrap();
        assert_eq!(slave.recovery_report().truncated_bytes, 0);
        assert_eq!(slave.stats().offset_appended, end2);
        assert_eq!(read_all(&slave, 0), read_all(&master, 0));
        slave.shutdown();
        master.shutdown();
    }

    #[test]
    fn a_damaged_or_misplaced_record_from_the_master_is_refused() {
        let (master_dir, slave_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = reopen(master_dir.path()).unwrap();
        let slave = reopen(slave_dir.path()).unwrap();
        let end = append_many(&master, 3);
        wait_durable(&master, end);
        let mut bytes = master.read_log(0, 1 << 20).unwrap();
        let second = bytes.len() / 3;
        assert!(
            slave.append_replicated(&bytes[second..]).is_err(),
            "wrong offset"
        );
        bytes[80] ^= 1;
        assert!(slave.append_replicated(&bytes).is_err(), "bad CRC");
        assert_eq!(slave.stats().offset_appended, 0);
        // Stopped before their directories go: their threads could still write there.
        slave.shutdown();
        master.shutdown();
    }

    #[test]
    fn epochs_begin_at_the_log_end_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path()).unwrap();
        assert_eq!(store.begin_epoch().unwrap().epoch, 1);
        let end = append_many(&store, 5);
        wait_durable(&store, end);
        let second = store.begin_epoch().unwrap();
        assert_eq!((second.epoch, second.start), (2, end));
        store.shutdown();
        drop(store);
        let store = reopen(dir.path()).unwrap();
        assert_eq!(store.epochs().len(), 2);
        assert_eq!(store.current_epoch(), 2);
        // Stopped before its directory is removed, or its threads may write into it.
        store.shutdown();
    }
}

#[test]
fn an_idempotent_retry_is_answered_with_the_original_after_restart_and_on_a_slave() {
    let (dir, slave_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = reopen(dir.path()).unwrap();
    let numbered = |sequence: u64, text: &str| {
        let mut message = Message::new("orders", text.as_bytes().to_vec());
        message.producer_id = 42;
        message.sequence = sequence;
        message
    };
    let first = store.append(&numbered(1, "one"), true, 1).unwrap();
    assert!(!first.duplicate);
    let again = store.append(&numbered(1, "one"), true, 1).unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.log_offset, again.queue_id, again.queue_offset),
        (first.log_offset, first.queue_id, first.queue_offset)
    );
    let batch = store
        .append_batch(&[numbered(2, "two"), numbered(3, "three")], true, 1)
        .unwrap();
    let batch_again = store
        .append_batch(&[numbered(2, "two"), numbered(3, "three")], true, 1)
        .unwrap();
    assert!(batch_again.iter().all(|result| result.duplicate));
    assert_eq!(batch_again[1].log_offset, batch[1].log_offset);
    // Another producer's sequence 1 is its own.
    let mut other = numbered(1, "other");
    other.producer_id = 43;
    assert!(!store.append(&other, true, 1).unwrap().duplicate);
    let end = store.stats().offset_appended;
    wait_durable(&store, end);

    // Rebuilt from the records at start-up...
    store.shutdown();
    drop(store);
    let store = reopen(dir.path()).unwrap();
    let after = store.append(&numbered(3, "three"), true, 1).unwrap();
    assert!(after.duplicate);
    assert_eq!(after.log_offset, batch[1].log_offset);
    assert_eq!(store.stats().offset_appended, end, "nothing stored twice");

    // ...and by a slave applying the stream (so a promoted slave deduplicates too).
    let slave = reopen(slave_dir.path()).unwrap();
    let bytes = store.read_log(0, 1 << 20).unwrap();
    assert_eq!(slave.append_replicated(&bytes).unwrap(), bytes.len());
    let on_slave = slave.append(&numbered(2, "two"), true, 1).unwrap();
    assert!(on_slave.duplicate);
    assert_eq!(on_slave.log_offset, batch[0].log_offset);
    // Stopped before their directories are removed, or their threads may write there.
    store.shutdown();
    slave.shutdown();
}

/// Damage judged by the evidence recovery has: the checkpoint, and `flushed_before` in
/// later records this broker appended itself (docs/TESTING.md, 4).
mod evidence {
    use super::*;
    use crate::checkpoint::{Checkpoint, CheckpointFile};
    use crate::disk::RealDisk;

    /// A log of `count` records, each appended once the one before it was fsynced (so
    /// each carries the previous one's end as `flushed_before`). `own`: appended as a
    /// master; otherwise as a slave's copy. Then the checkpoint is set back to 0, as a
    /// checkpoint lagging under load would be. Returns each record's start.
    fn log_with_lagging_checkpoint(dir: &std::path::Path, count: usize, own: bool) -> Vec<u64> {
        let mut config = config(dir);
        config.segment_size_bytes = 1 << 20;
        let store = Store::open(config).unwrap();
        if own {
            store.begin_epoch().unwrap();
        } else {
            store.follow_master().unwrap();
        }
        let mut starts = Vec::new();
        for index in 0..count {
            let appended = store
                .append(
                    &Message::new("orders", format!("record {index}")).with_queue(0),
                    true,
                    1,
                )
                .unwrap();
            wait_durable(&store, appended.offset_end);
            starts.push(appended.log_offset);
        }
        store.shutdown();
        drop(store);
        let (checkpoint, _) = CheckpointFile::open(&RealDisk, &dir.join("checkpoint")).unwrap();
        checkpoint
            .write(Checkpoint {
                offset_flushed: 0,
                clean: false,
            })
            .unwrap();
        starts
    }

    fn flip(dir: &std::path::Path, position: u64) {
        let path = dir.join("commitlog").join(format!("{:020}", 0));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[position as usize] ^= 0x04;
        std::fs::write(&path, &bytes).unwrap();
    }

    #[test]
    fn damage_a_later_own_record_proves_fsynced_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let starts = log_with_lagging_checkpoint(dir.path(), 10, true);
        flip(dir.path(), starts[5] + 90);
        match reopen(dir.path()) {
            Err(StoreError::Corruption { detail, .. }) => {
                assert!(detail.contains("shows the log was fsynced"), "{detail}");
                assert!(
                    detail.contains(&format!("log offset {}", starts[5])),
                    "{detail}"
                );
            }
            Err(other) => panic!("expected corruption, got {other}"),
            Ok(store) => panic!("cut as a torn tail: {:?}", store.recovery_report()),
        }
    }

    #[test]
    fn a_slaves_copies_prove_nothing_about_its_own_disk() {
        // The same damage in records a slave received: the flushed_before values are its
        // master's, so only the checkpoint counts and the tail is cut (the master still
        // has it and sends it again).
        let dir = tempfile::tempdir().unwrap();
        let starts = log_with_lagging_checkpoint(dir.path(), 10, false);
        flip(dir.path(), starts[5] + 90);
        let store = reopen(dir.path()).unwrap();
        assert_eq!(store.recovery_report().records, 5);
        assert!(store.recovery_report().truncated_bytes > 0);
        store.shutdown();
    }

    #[test]
    fn the_stated_window_the_last_records_with_nothing_after_them() {
        // The newest record past the checkpoint, with no later record to vouch for it,
        // cannot be told from a torn tail: it is cut. This is the window OPERATIONS.md
        // states (at most what was fsynced after the last checkpoint write and before
        // the crash, with nothing appended after it reaching the disk).
        let dir = tempfile::tempdir().unwrap();
        let starts = log_with_lagging_checkpoint(dir.path(), 10, true);
        flip(dir.path(), starts[9] + 90);
        let store = reopen(dir.path()).unwrap();
        assert_eq!(store.recovery_report().records, 9);
        store.shutdown();
    }

    #[test]
    fn an_idle_stores_checkpoint_catches_up_with_the_flushed_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path()).unwrap();
        let end = append_many(&store, 20);
        wait_durable(&store, end);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let checkpoint =
                crate::checkpoint::read_checkpoint(&RealDisk, &dir.path().join("checkpoint"));
            if checkpoint.map(|c| c.offset_flushed) == Some(end) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "checkpoint stayed at {checkpoint:?}, flushed {end}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        store.shutdown();
    }
}

/// Ids and counts that passed a CRC still size nothing unbounded.
mod hostile {
    use super::*;
    use keel_protocol::{encode_record, RecordMeta};

    fn record_with_queue(queue_id: u32) -> Vec<u8> {
        let message = Message::new("orders", "x").with_queue(queue_id);
        let meta = RecordMeta {
            log_offset: 0,
            queue_offset: 0,
            queue_id,
            store_timestamp_ms: 1,
            flushed_before: 0,
        };
        let mut bytes = Vec::new();
        encode_record(&message, &meta, &mut bytes);
        bytes
    }

    #[test]
    fn a_crc_valid_record_naming_queue_u32_max_is_refused_not_allocated_for() {
        let dir = tempfile::tempdir().unwrap();
        reopen(dir.path()).unwrap().shutdown();
        let segment = dir.path().join("commitlog").join(format!("{:020}", 0));
        std::fs::write(&segment, record_with_queue(u32::MAX)).unwrap();
        std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
        match reopen(dir.path()) {
            Err(StoreError::Corruption { detail, .. }) => {
                assert!(detail.contains("beyond the 1024 queues"), "{detail}")
            }
            Err(other) => panic!("expected corruption, got {other}"),
            Ok(_) => panic!("accepted queue u32::MAX"),
        }
        let slave_dir = tempfile::tempdir().unwrap();
        let slave = reopen(slave_dir.path()).unwrap();
        let refused = slave.append_replicated(&record_with_queue(u32::MAX));
        assert!(
            matches!(refused, Err(StoreError::InvalidArgument(_))),
            "{refused:?}"
        );
        assert!(slave.append_replicated(&record_with_queue(1023)).is_ok());
        slave.shutdown();
    }

    #[test]
    fn a_topics_file_claiming_billions_of_queues_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        reopen(dir.path()).unwrap().shutdown();
        let sealed = crate::fs_util::seal_text("# keel topics v1\norders 4294967295\n".into());
        std::fs::write(dir.path().join("topics"), sealed).unwrap();
        assert!(matches!(
            reopen(dir.path()),
            Err(StoreError::Corruption { .. })
        ));
    }
}

#[test]
fn a_reused_sequence_with_another_message_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    let numbered = |topic: &str, text: &str, sequence: u64| {
        let mut message = Message::new(topic, text.as_bytes().to_vec());
        message.producer_id = 7;
        message.sequence = sequence;
        message.sealed()
    };
    store
        .append(&numbered("orders", "one", 1), true, 1)
        .unwrap();
    for other in [numbered("orders", "uno", 1), numbered("payments", "one", 1)] {
        let refused = store.append(&other, true, 1);
        assert!(
            matches!(refused, Err(crate::AppendError::SequenceMismatch { .. })),
            "{refused:?}"
        );
    }
    assert!(matches!(
        store.append(&numbered("orders", "zero", 0), true, 1),
        Err(crate::AppendError::SequenceZero { .. })
    ));
    // A batch repeating a sequence, or mixing a stored one with new ones, is no retry.
    let repeated = [numbered("orders", "a", 5), numbered("orders", "b", 5)];
    assert!(store.append_batch(&repeated, true, 1).is_err());
    let mixed = [numbered("orders", "one", 1), numbered("orders", "two", 2)];
    assert!(store.append_batch(&mixed, true, 1).is_err());
    assert_eq!(store.stats().records_appended, 1);
    assert_eq!(store.topic_queues("payments"), None);
    store.shutdown();
}

/// A disk whose directory fsyncs block while `held`: a truncation waiting on one must
/// not hold the lock the event loops take.
/// A real disk whose `sync_dir` calls from one thread (the truncation's) wait while
/// `held`: another thread's (the metadata thread's, say) must not pass for it.
struct GatedDisk {
    inner: crate::disk::RealDisk,
    held: std::sync::Mutex<bool>,
    released: std::sync::Condvar,
    waiting: std::sync::atomic::AtomicBool,
    gated: std::sync::Mutex<Option<std::thread::ThreadId>>,
}

impl crate::disk::Disk for GatedDisk {
    fn open(
        &self,
        path: &std::path::Path,
        mode: crate::disk::OpenMode,
    ) -> std::io::Result<Arc<dyn crate::disk::DiskFile>> {
        self.inner.open(path, mode)
    }
    fn list(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn create_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn is_dir(&self, path: &std::path::Path) -> bool {
        self.inner.is_dir(path)
    }
    fn exists(&self, path: &std::path::Path) -> bool {
        self.inner.exists(path)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        let gated = *self.gated.lock().unwrap() == Some(std::thread::current().id());
        let mut held = self.held.lock().unwrap();
        while *held && gated {
            self.waiting
                .store(true, std::sync::atomic::Ordering::SeqCst);
            held = self.released.wait(held).unwrap();
        }
        self.inner.sync_dir(dir)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.inner.remove_dir(dir)
    }
    fn lock(
        &self,
        path: &std::path::Path,
    ) -> std::io::Result<Box<dyn std::any::Any + Send + Sync>> {
        self.inner.lock(path)
    }
    fn free_bytes(&self, dir: &std::path::Path) -> std::io::Result<u64> {
        self.inner.free_bytes(dir)
    }
}

#[test]
fn a_slaves_truncation_does_its_disk_work_without_the_append_lock() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(GatedDisk {
        inner: crate::disk::RealDisk,
        held: std::sync::Mutex::new(false),
        released: std::sync::Condvar::new(),
        waiting: std::sync::atomic::AtomicBool::new(false),
        gated: std::sync::Mutex::new(None),
    });
    let store = Store::open_with_disk(config(dir.path()), disk.clone()).unwrap();
    let middle = {
        let end = append_many(&store, 10);
        wait_durable(&store, end);
        store.stats().offset_appended
    };
    let end = append_many(&store, 10);
    wait_durable(&store, end);
    *disk.held.lock().unwrap() = true;
    let truncating = {
        let (store, disk) = (store.clone(), disk.clone());
        std::thread::spawn(move || {
            *disk.gated.lock().unwrap() = Some(std::thread::current().id());
            store.truncate_to(middle)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !disk.waiting.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the truncation never reached its fsync"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // The truncation is stuck on the disk; what a loop does still answers at once.
    let (sender, receiver) = std::sync::mpsc::channel();
    let reader = store.clone();
    std::thread::spawn(move || {
        let _ = sender.send((reader.stats(), reader.queue_offsets(None)));
    });
    let answered = receiver.recv_timeout(Duration::from_secs(5));
    *disk.held.lock().unwrap() = false;
    disk.released.notify_all();
    let (stats, _) = answered.expect("stats waited for the truncation's fsync");
    assert_eq!(stats.offset_appended, middle, "readers see the cut at once");
    assert_eq!(truncating.join().unwrap().unwrap(), 10);
    store.shutdown();
}

mod deletion {
    use super::*;

    fn wait_meta(store: &Store, version: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.meta_persisted() < version {
            assert!(Instant::now() < deadline, "metadata never persisted");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Deletes `orders` and waits until the deletion is durable.
    fn delete_orders(store: &Store) -> crate::TopicDeletion {
        let deletion = store.delete_topic("orders", 2).unwrap();
        wait_durable(store, deletion.offset_end);
        wait_meta(store, deletion.meta_version);
        deletion
    }

    fn setup(store: &Store) {
        let end = append_many(store, 20);
        let other = Message::new("other", "kept").with_queue(0);
        let end = end.max(store.append(&other, true, 1).unwrap().offset_end);
        wait_durable(store, end);
        wait_meta(
            store,
            store.commit_offset("group-a", "orders", 1, 3).unwrap(),
        );
        wait_meta(
            store,
            store.commit_offset("group-a", "other", 0, 1).unwrap(),
        );
    }

    fn payloads_of_other(store: &Store) -> u64 {
        store
            .read_queue("other", 0, 0, 100, u32::MAX)
            .unwrap()
            .record_count as u64
    }

    #[test]
    fn a_deleted_topic_stays_deleted_after_restart_and_on_a_slave_and_can_be_made_again() {
        let (dir, slave_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = reopen(dir.path()).unwrap();
        setup(&store);
        let deletion = delete_orders(&store);
        assert_eq!((deletion.queues, deletion.messages), (4, 20));
        assert!(deletion.bytes > 20 * 60, "{deletion:?}");
        assert_eq!(store.topic_queues("orders"), None);
        assert_eq!(store.query_offset("group-a", "orders", 1), None);
        assert_eq!(store.query_offset("group-a", "other", 0), Some(1));
        // Replication still finds the records that end a log, deleted or deleting.
        let deleting = store
            .record_ending_at(deletion.offset_end)
            .unwrap()
            .unwrap();
        assert!(store.record_ending_at(deleting.start).unwrap().is_some());
        assert!(matches!(
            store.delete_topic("orders", 3),
            Err(crate::AppendError::TopicNotFound(_))
        ));
        assert!(
            !dir.path().join("consumequeue").join("orders").exists(),
            "the flusher removes the deleted topic's consume queue files"
        );
        // Made again: it starts over at offset 0.
        let again = Message::new("orders", "second life").with_queue(0);
        let appended = store.append(&again, true, 4).unwrap();
        assert_eq!(appended.queue_offset, 0);
        wait_durable(&store, appended.offset_end);

        // A slave fed the same log drops the topic where the deletion is, then takes
        // the new one.
        let slave = reopen(slave_dir.path()).unwrap();
        super::replica_copy(&store, &slave);
        wait_durable(&slave, appended.offset_end);
        assert_eq!(read_all(&slave, 0), vec!["second life".to_string()]);
        assert_eq!(payloads_of_other(&slave), 1);
        slave.shutdown();
        drop(slave);

        store.shutdown();
        drop(store);
        let store = reopen(dir.path()).unwrap();
        assert_eq!(read_all(&store, 0), vec!["second life".to_string()]);
        assert_eq!(read_all(&store, 1), Vec::<String>::new());
        assert_eq!(store.query_offset("group-a", "orders", 1), None);
        assert_eq!(payloads_of_other(&store), 1);
        store.shutdown();
        drop(store);
        let slave = reopen(slave_dir.path()).unwrap();
        assert_eq!(read_all(&slave, 0), vec!["second life".to_string()]);
        slave.shutdown();
    }

    #[test]
    fn a_crash_before_the_topics_file_knew_of_the_deletion_still_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path()).unwrap();
        setup(&store);
        let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        let (topics, offsets) = (read("topics"), read("offsets/consumer_offsets"));
        delete_orders(&store);
        store.shutdown();
        drop(store);
        // The deletion record is in the log; the metadata files are as they were
        // before it (a crash before the metadata thread wrote them).
        std::fs::write(dir.path().join("topics"), topics).unwrap();
        std::fs::write(dir.path().join("offsets/consumer_offsets"), offsets).unwrap();
        let store = reopen(dir.path()).unwrap();
        assert_eq!(store.topic_queues("orders"), None, "the log decides");
        assert_eq!(store.query_offset("group-a", "orders", 1), None);
        assert_eq!(store.query_offset("group-a", "other", 0), Some(1));
        assert_eq!(payloads_of_other(&store), 1);
        store.shutdown();
    }

    #[test]
    fn a_deletion_the_log_lost_is_undone_and_the_topic_keeps_its_messages() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path()).unwrap();
        setup(&store);
        let deletion = delete_orders(&store);
        store.shutdown();
        drop(store);
        let text = String::from_utf8(std::fs::read(dir.path().join("topics")).unwrap()).unwrap();
        let at: u64 = text
            .lines()
            .find_map(|line| line.strip_prefix("!orders "))
            .unwrap_or_else(|| panic!("{text}"))
            .parse()
            .unwrap();
        assert!(at < deletion.offset_end);
        // The log without its deletion record (fsynced data lost, or cut by `keel admin
        // truncate`): the file's line alone deletes nothing.
        let log = dir.path().join("commitlog");
        let mut segments: Vec<_> = std::fs::read_dir(&log)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        segments.sort();
        let last = segments.last().unwrap();
        let base: u64 = last.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(last).unwrap();
        file.set_len(at - base).unwrap();
        std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
        let store = reopen(dir.path()).unwrap();
        // Rebuilt from its records: the queues that hold messages (the topics file no
        // longer had its queue count).
        assert_eq!(store.topic_queues("orders"), Some(2));
        assert_eq!(read_all(&store, 0).len() + read_all(&store, 1).len(), 20);
        assert_eq!(payloads_of_other(&store), 1);
        // And new messages of it continue its queues; a restart keeps them all.
        let more = Message::new("orders", "after").with_queue(0);
        let appended = store.append(&more, true, 9).unwrap();
        assert_eq!(appended.queue_offset, 10);
        wait_durable(&store, appended.offset_end);
        store.shutdown();
        drop(store);
        let store = reopen(dir.path()).unwrap();
        assert_eq!(read_all(&store, 0).len(), 11);
        store.shutdown();
    }

    #[test]
    fn a_topic_is_not_made_again_before_its_deletion_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path()).unwrap();
        setup(&store);
        let deletion = store.delete_topic("orders", 2).unwrap();
        // Until the record is fsynced and settled, the name is taken by the deletion
        // (a race with the flusher: either refused as being deleted, or settled already).
        match store.create_topic("orders", 2) {
            Err(StoreError::TopicBeingDeleted(_)) => {}
            Ok((_, true, _)) => assert!(store.offset_flushed() >= deletion.offset_end),
            other => panic!("{other:?}"),
        }
        wait_durable(&store, deletion.offset_end);
        wait_meta(&store, store.settle_deletions());
        let text = String::from_utf8(std::fs::read(dir.path().join("topics")).unwrap()).unwrap();
        assert!(text.contains("!orders "), "settled into the file: {text}");
        let again = Message::new("orders", "new").with_queue(0);
        assert_eq!(store.append(&again, true, 3).unwrap().queue_offset, 0);
        store.shutdown();
    }
}

/// Copies the master's written log into the slave, in chunks that cut records.
fn replica_copy(master: &Store, slave: &Store) {
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let from = slave.stats().offset_appended + carry.len() as u64;
        let chunk = master.read_log(from, 1000).unwrap();
        if chunk.is_empty() {
            break;
        }
        carry.extend_from_slice(&chunk);
        let taken = slave.append_replicated(&carry).unwrap();
        carry.drain(..taken);
    }
    assert!(carry.is_empty());
}
