//! Records that pass their CRC but carry hostile fields: queue ids up to u32::MAX,
//! queue and log offsets that do not follow, any `flushed_before`, topic names that are
//! not names, queue counts of billions in the topics file. Recovery (keeld's and
//! `verify`'s) and a slave applying the same bytes must refuse or accept them without
//! panicking or sizing anything by them.
//!
//! Input: byte 0 holds switches (checkpoint, own writes, topics file); then records of
//! 40 input bytes each: queue_id u32 (used as given when bit 1 of `how` is set, else
//! modulo 8: a store rightly creates a file per queue, and a thousand of them make a
//! run slow), queue_offset u64, log_offset u64 (used as given when bit 0 of `how` is
//! set, else the record's real position), flushed_before u64, producer_id u32,
//! sequence u32, `how` u8, topic u8 (index into a few names), payload length u16
//! (bounded by what is left).

#![no_main]

use keel_protocol::{encode_record, Message, RecordMeta};
use keel_storage::disk::{Disk, OpenMode};
use keel_storage::sim::SimDisk;
use keel_storage::{Store, StoreConfig};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Arc;

const TOPICS: [&str; 5] = ["orders", "%SCHEDULE%", "a", "..", "x/y"];

fn write(disk: &SimDisk, path: &str, bytes: &[u8]) {
    let file = disk.open(Path::new(path), OpenMode::Create).expect("create");
    file.write_all_at(bytes, 0).expect("write");
    file.sync_data().expect("sync");
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// CRC-valid records built from the input.
fn records(mut input: &[u8]) -> Vec<u8> {
    let mut log = Vec::new();
    while input.len() >= 40 {
        let (spec, rest) = input.split_at(40);
        input = rest;
        let how = spec[36];
        let queue_id = match u32::from_le_bytes(field(spec, 0)) {
            hostile if how & 2 == 2 => hostile,
            small => small % 8,
        };
        let queue_offset = u64::from_le_bytes(field(spec, 4));
        let claimed_log_offset = u64::from_le_bytes(field(spec, 12));
        let flushed_before = u64::from_le_bytes(field(spec, 20));
        let producer_id = u64::from(u32::from_le_bytes(field(spec, 28)));
        let sequence = u64::from(u32::from_le_bytes(field(spec, 32)));
        let topic = TOPICS[usize::from(spec[37]) % TOPICS.len()];
        let length = usize::from(u16::from_le_bytes(field(spec, 38))).min(input.len()).min(512);
        let (payload, rest) = input.split_at(length);
        input = rest;
        let mut message = Message::new(topic, payload.to_vec()).with_queue(queue_id);
        message.producer_id = producer_id;
        message.sequence = sequence;
        let meta = RecordMeta {
            log_offset: if how & 1 == 1 { claimed_log_offset } else { log.len() as u64 },
            queue_offset,
            queue_id,
            store_timestamp_ms: u64::from(how),
            flushed_before,
        };
        encode_record(&message.sealed(), &meta, &mut log);
    }
    log
}

fuzz_target!(|data: &[u8]| {
    let Some((&switches, rest)) = data.split_first() else { return };
    let log = records(rest);
    let disk = SimDisk::new();
    disk.create_dir_all(Path::new("/d/commitlog")).expect("dirs");
    write(&disk, "/d/LOCK", b"");
    write(&disk, "/d/commitlog/00000000000000000000", &log);
    if switches & 1 == 1 {
        let mut checkpoint = [0u8; 16];
        let offset = (log.len() as u64).saturating_mul(u64::from(switches >> 4)) / 16;
        checkpoint[..8].copy_from_slice(&offset.to_le_bytes());
        let crc = crc32c::crc32c(&checkpoint[..12]);
        checkpoint[12..].copy_from_slice(&crc.to_le_bytes());
        write(&disk, "/d/checkpoint", &checkpoint);
    }
    if switches & 2 == 2 {
        let text = "0 open\n".to_string();
        let crc = crc32c::crc32c(text.as_bytes());
        write(&disk, "/d/own_writes", format!("{text}crc32c {crc:08x}\n").as_bytes());
    }
    if switches & 4 == 4 {
        // A sealed topics file claiming a hostile queue count.
        let count = u32::from_le_bytes([switches, rest.first().copied().unwrap_or(0), 0xFF, 0xFF]);
        let text = format!("# keel topics v1\norders {count}\n");
        let crc = crc32c::crc32c(text.as_bytes());
        write(&disk, "/d/topics", format!("{text}crc32c {crc:08x}\n").as_bytes());
    }
    let mut config = StoreConfig::new("/d");
    config.max_record_bytes = 1 << 16;
    let _ = keel_storage::admin::verify_on(&disk, Path::new("/d"), config.max_record_bytes);
    if let Ok(store) = Store::open_with_disk(config.clone(), Arc::new(disk.clone())) {
        store.shutdown();
    }

    // A slave applying the same bytes from its master.
    let slave_disk = SimDisk::new();
    let mut slave_config = StoreConfig::new("/s");
    slave_config.max_record_bytes = 1 << 16;
    let slave = Store::open_with_disk(slave_config, Arc::new(slave_disk)).expect("empty slave");
    let _ = slave.append_replicated(&log);
    slave.shutdown();
});
