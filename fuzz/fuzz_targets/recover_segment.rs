//! Arbitrary bytes as the CommitLog: recovery must never panic, must agree with the
//! read-only `verify`, and must be idempotent (a second run cuts nothing more).
//!
//! Input: byte 0 chooses the checkpoint (bit 0: present; the next 2 bytes give its
//! offset); the rest is split into one or two segment files.

#![no_main]

use keel_storage::disk::{Disk, OpenMode};
use keel_storage::sim::SimDisk;
use keel_storage::{Store, StoreConfig, StoreError};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Arc;

fn write(disk: &SimDisk, path: &str, bytes: &[u8]) {
    let file = disk.open(Path::new(path), OpenMode::Create).expect("create");
    file.write_all_at(bytes, 0).expect("write");
    file.sync_data().expect("sync");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let disk = SimDisk::new();
    disk.create_dir_all(Path::new("/d/commitlog")).expect("dirs");
    write(&disk, "/d/LOCK", b"");
    let rest = if mode & 1 == 1 && rest.len() >= 2 {
        let offset = u64::from(u16::from_le_bytes([rest[0], rest[1]]));
        let mut checkpoint = [0u8; 16];
        checkpoint[..8].copy_from_slice(&offset.to_le_bytes());
        let crc = crc32c::crc32c(&checkpoint[..12]);
        checkpoint[12..].copy_from_slice(&crc.to_le_bytes());
        write(&disk, "/d/checkpoint", &checkpoint);
        &rest[2..]
    } else {
        rest
    };
    // Bit 1: split into two segments at a position chosen by bits 2..8.
    if mode & 2 == 2 && !rest.is_empty() {
        let split = (usize::from(mode >> 2) * rest.len() / 64).min(rest.len());
        write(&disk, "/d/commitlog/00000000000000000000", &rest[..split]);
        write(&disk, &format!("/d/commitlog/{split:020}"), &rest[split..]);
    } else {
        write(&disk, "/d/commitlog/00000000000000000000", rest);
    }

    let mut config = StoreConfig::new("/d");
    config.max_record_bytes = 1 << 16;
    let verdict = keel_storage::admin::verify_on(&disk, Path::new("/d"), config.max_record_bytes);
    let opened = Store::open_with_disk(config.clone(), Arc::new(disk.clone()));
    match (&verdict, &opened) {
        (Ok(report), Ok(_)) => assert!(report.corruption.is_none(), "verify saw corruption keeld accepted"),
        (Ok(report), Err(StoreError::Corruption { .. })) => {
            assert!(report.corruption.is_some() || !report.metadata_errors.is_empty(), "keeld refused what verify accepted")
        }
        _ => {}
    }
    let Ok(store) = opened else { return };
    let first = store.recovery_report().clone();
    store.shutdown();
    drop(store);
    let again = Store::open_with_disk(config, Arc::new(disk)).expect("a recovered log must open again");
    let second = again.recovery_report();
    assert_eq!(second.records, first.records);
    assert_eq!(second.offset_end, first.offset_end);
    assert_eq!(second.truncated_bytes, 0);
    again.shutdown();
});
