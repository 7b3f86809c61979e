//! Offline tools for operators (`keel admin verify | dump | truncate`): they read a data
//! directory while keeld is stopped. Only `truncate` changes anything, and only when
//! asked to discard data deliberately.

use crate::catalog::Catalog;
use crate::checkpoint::{read_checkpoint, Checkpoint, CheckpointFile};
use crate::disk::{read_all, Disk, FileReader, OpenMode, RealDisk};
use crate::meta::{load_offsets, load_topics};
use crate::recovery::{recover, Evidence, Repair};
use crate::segment::list_segments;
use crate::StoreError;
use keel_protocol::{decode_record, peek_record_header, Record, RECORD_FIXED_LEN};
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;

/// What `verify` found. `corruption` set means keeld will refuse to start.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub segments: usize,
    pub records: u64,
    pub offset_end: u64,
    pub checkpoint: Option<u64>,
    pub clean_shutdown: bool,
    /// Bytes keeld would cut as a torn tail at its next start, and why.
    pub torn_tail_bytes: u64,
    pub torn_tail_reason: Option<String>,
    pub corruption: Option<String>,
    /// Queue lengths per topic, from the log.
    pub topics: BTreeMap<String, Vec<u64>>,
    /// ConsumeQueue files that disagree with the log (keeld rewrites them at start).
    pub stale_index_files: Vec<String>,
    /// Problems with the topics or offsets files.
    pub metadata_errors: Vec<String>,
    /// On a corrupt log: what lies past the valid prefix (`offset_end`).
    pub damage: Option<Damage>,
}

/// The part of a corrupt log past its valid prefix: the intact records found there by
/// scanning every byte for a record whose CRC32C and position check out, and the bytes
/// that are not one. `keel admin truncate` at the valid prefix's end discards both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Damage {
    /// The first log offset that is not a valid record (the valid prefix's end).
    pub at: u64,
    /// Where the log's bytes end (the last segment's base plus its length).
    pub log_bytes_end: u64,
    /// The first intact record after `at`, if any.
    pub resumes_at: Option<u64>,
    /// Intact records after `at`, and their bytes.
    pub records_after: u64,
    pub record_bytes_after: u64,
    /// Intact records after `at`, per topic.
    pub topics_after: BTreeMap<String, u64>,
}

impl Damage {
    /// Bytes past `at` that are not an intact record.
    pub fn unreadable_bytes(&self) -> u64 {
        (self.log_bytes_end.saturating_sub(self.at)).saturating_sub(self.record_bytes_after)
    }
}

impl VerifyReport {
    /// True when keeld would start without refusing.
    pub fn starts(&self) -> bool {
        self.corruption.is_none() && self.metadata_errors.is_empty()
    }
}

fn offline_lock(
    disk: &dyn Disk,
    data_dir: &Path,
) -> Result<Box<dyn std::any::Any + Send + Sync>, StoreError> {
    let path = data_dir.join("LOCK");
    if !disk.is_dir(data_dir) {
        return Err(StoreError::InvalidArgument(format!(
            "{} is not a directory",
            data_dir.display()
        )));
    }
    if !disk.exists(&path) {
        return Err(StoreError::InvalidArgument(format!(
            "{} is not a keel data directory (no LOCK file)",
            data_dir.display()
        )));
    }
    disk.lock(&path).map_err(|error| match error.kind() {
        std::io::ErrorKind::WouldBlock => StoreError::Locked { path },
        _ => StoreError::io("lock the data directory", error),
    })
}

/// Holds a data directory's lock for an offline tool, so that no broker starts on it
/// meanwhile; `Locked` when a broker runs on it. A directory that was never a broker's
/// (no LOCK file yet) needs no lock: `None`.
pub fn lock_if_used(
    data_dir: &Path,
) -> Result<Option<Box<dyn std::any::Any + Send + Sync>>, StoreError> {
    if !RealDisk.exists(&data_dir.join("LOCK")) {
        return Ok(None);
    }
    offline_lock(&RealDisk, data_dir).map(Some)
}

/// Checks every record and index of a stopped broker's data directory, changing nothing.
pub fn verify(data_dir: &Path, max_record_bytes: u32) -> Result<VerifyReport, StoreError> {
    verify_on(&RealDisk, data_dir, max_record_bytes)
}

pub fn verify_on(
    disk: &dyn Disk,
    data_dir: &Path,
    max_record_bytes: u32,
) -> Result<VerifyReport, StoreError> {
    let _lock = offline_lock(disk, data_dir)?;
    let checkpoint = read_checkpoint(disk, &data_dir.join("checkpoint"));
    let mut report = VerifyReport {
        checkpoint: checkpoint.map(|c| c.offset_flushed),
        clean_shutdown: checkpoint.is_some_and(|c| c.clean),
        ..VerifyReport::default()
    };
    let mut catalog = Catalog::default();
    let topics_file = load_topics(disk, &data_dir.join("topics"));
    let log_dir = data_dir.join("commitlog");
    let own_writes = crate::own_writes::load(disk, &data_dir.join("own_writes"))?;
    let evidence = Evidence {
        checkpoint: report.checkpoint,
        own_writes: &own_writes,
    };
    match recover(
        disk,
        &log_dir,
        evidence,
        max_record_bytes,
        Repair::ReadOnly,
        |record| record.file_in(&mut catalog),
    ) {
        Ok((_, recovery)) => {
            report.segments = recovery.segments;
            report.records = recovery.records;
            report.offset_end = recovery.offset_end;
            report.torn_tail_bytes = recovery.truncated_bytes;
            report.torn_tail_reason = recovery.truncation_reason;
        }
        Err(error @ StoreError::Corruption { .. }) => {
            report.corruption = Some(error.to_string());
            // Still say how far the valid records reach (judging nothing): when only
            // the end is missing or damaged, that is where `truncate` would cut.
            if let Ok((_, valid)) = recover(
                disk,
                &log_dir,
                evidence,
                max_record_bytes,
                Repair::MeasureValidPrefix,
                |_| Ok(()),
            ) {
                report.segments = valid.segments;
                report.records = valid.records;
                report.offset_end = valid.offset_end;
                report.damage = Some(survey_damage(
                    disk,
                    &log_dir,
                    valid.offset_end,
                    max_record_bytes,
                )?);
            }
        }
        Err(error) => return Err(error),
    }
    for (topic, queues) in &catalog.topics {
        report.topics.insert(
            topic.clone(),
            queues.queues.iter().map(|queue| queue.end()).collect(),
        );
    }
    let queues = catalog.topics.iter().flat_map(|(topic, queues)| {
        queues
            .queues
            .iter()
            .enumerate()
            .map(move |(queue_id, entries)| (topic, queue_id, entries))
    });
    // Past damage the index files rightly hold more than the valid prefix: comparing
    // them with it would call every index stale.
    let queues = queues.filter(|_| report.damage.is_none());
    for (topic, queue_id, entries) in queues {
        let path = data_dir
            .join("consumequeue")
            .join(topic)
            .join(queue_id.to_string())
            .join(format!("{:020}", entries.first));
        let mut expected = Vec::new();
        for entry in &entries.entries {
            entry.encode(&mut expected);
        }
        let on_disk = disk
            .open(&path, OpenMode::Read)
            .and_then(|file| read_all(file.as_ref()))
            .unwrap_or_default();
        if on_disk != expected {
            report.stale_index_files.push(format!(
                "{topic}/{queue_id}: {} entries on disk, {} in the log",
                on_disk.len() / crate::INDEX_ENTRY_LEN,
                entries.entries.len()
            ));
        }
    }
    if let Err(error) = topics_file {
        report.metadata_errors.push(error.to_string());
    }
    if let Err(error) = load_offsets(disk, &data_dir.join("offsets").join("consumer_offsets")) {
        report.metadata_errors.push(error.to_string());
    }
    Ok(report)
}

/// Scans the log from `at` (where its valid prefix ends) to its end for intact records.
fn survey_damage(
    disk: &dyn Disk,
    log_dir: &Path,
    at: u64,
    max_record_bytes: u32,
) -> Result<Damage, StoreError> {
    let mut damage = Damage {
        at,
        log_bytes_end: at,
        ..Damage::default()
    };
    let segments = list_segments(disk, log_dir)?;
    for (index, (base, path)) in segments.iter().enumerate() {
        let length = disk
            .open(path, OpenMode::Read)
            .and_then(|file| file.len())
            .map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?;
        let end = base.saturating_add(length);
        let next_base = segments.get(index + 1).map_or(u64::MAX, |(next, _)| *next);
        damage.log_bytes_end = damage.log_bytes_end.max(end);
        if end <= at {
            continue;
        }
        // A segment that overlaps the next one is scanned only up to it, so no record
        // is counted twice.
        let mut each = |record: &Record| {
            if record.log_offset >= next_base {
                return false;
            }
            damage.resumes_at.get_or_insert(record.log_offset);
            damage.records_after += 1;
            damage.record_bytes_after += u64::from(record.total_size);
            *damage.topics_after.entry(record.topic.clone()).or_default() += 1;
            true
        };
        let from = at.saturating_sub(*base);
        crate::recovery::scan_valid_records(disk, path, *base, from, max_record_bytes, &mut each)?;
    }
    Ok(damage)
}

/// One entry of `dump`: a record, or the first bytes that are not one.
pub enum DumpEntry {
    Record(Box<Record>),
    Bad { log_offset: u64, detail: String },
}

/// Calls `each` for the records from log offset `from` on, in log order, until it
/// returns false, the log ends, or a bad record (reported, then the dump stops).
pub fn dump(
    data_dir: &Path,
    from: u64,
    mut each: impl FnMut(DumpEntry) -> bool,
) -> Result<(), StoreError> {
    let disk = RealDisk;
    let _lock = offline_lock(&disk, data_dir)?;
    for (base, path) in list_segments(&disk, &data_dir.join("commitlog"))? {
        let file = disk
            .open(&path, OpenMode::Read)
            .map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
        let length = file
            .len()
            .map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?;
        if base + length <= from {
            continue;
        }
        let mut reader = BufReader::with_capacity(
            1 << 20,
            FileReader {
                file: file.as_ref(),
                position: 0,
            },
        );
        let mut position = 0u64;
        let mut bytes = Vec::new();
        while position < length {
            let log_offset = base + position;
            let bad = |detail: String| DumpEntry::Bad { log_offset, detail };
            bytes.resize(12.min((length - position) as usize), 0);
            reader
                .read_exact(&mut bytes)
                .map_err(|e| StoreError::io("read", e))?;
            let Some(header) = peek_record_header(&bytes) else {
                each(bad("incomplete record header".into()));
                return Ok(());
            };
            let size = u64::from(header.total_size);
            if size < RECORD_FIXED_LEN as u64 || size > length - position {
                each(bad(format!("implausible record size {size}")));
                return Ok(());
            }
            bytes.resize(size as usize, 0);
            if let Some(rest) = bytes.get_mut(12..) {
                reader
                    .read_exact(rest)
                    .map_err(|e| StoreError::io("read", e))?;
            }
            if log_offset >= from {
                let entry = match decode_record(&bytes) {
                    Ok(record) => DumpEntry::Record(Box::new(record)),
                    Err(error) => {
                        each(bad(error.to_string()));
                        return Ok(());
                    }
                };
                if !each(entry) {
                    return Ok(());
                }
            }
            position += size;
        }
    }
    Ok(())
}

/// Cuts the log at `offset` on purpose, discarding it and everything after it, and
/// records `offset` as the fsynced end. `offset` must be a record boundary with only
/// valid records before it. Returns the number of bytes discarded.
pub fn truncate(data_dir: &Path, offset: u64, max_record_bytes: u32) -> Result<u64, StoreError> {
    let disk = RealDisk;
    let _lock = offline_lock(&disk, data_dir)?;
    let log_dir = data_dir.join("commitlog");
    let segments = list_segments(&disk, &log_dir)?;
    // Walk the records up to `offset`: every one before it must be valid, and
    // `offset` must be where one ends.
    let mut at = segments.first().map_or(0, |(base, _)| *base);
    for (base, path) in &segments {
        if at >= offset || *base != at {
            break;
        }
        let file = disk
            .open(path, OpenMode::Read)
            .map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
        let bytes = read_all(file.as_ref())
            .map_err(|e| StoreError::io(format!("read {}", path.display()), e))?;
        let mut position = 0usize;
        while at < offset && position < bytes.len() {
            let record = decode_record(bytes.get(position..).unwrap_or_default()).map_err(|error| {
                StoreError::InvalidArgument(format!("the record at log offset {at} is damaged ({error}): truncate at {at} or before"))
            })?;
            if record.total_size > max_record_bytes {
                return Err(StoreError::InvalidArgument(format!(
                    "implausible record at log offset {at}"
                )));
            }
            position += record.total_size as usize;
            at += u64::from(record.total_size);
        }
    }
    if at != offset {
        return Err(StoreError::InvalidArgument(format!(
            "log offset {offset} is not where a record ends (valid records end at {at})"
        )));
    }
    let mut discarded = 0u64;
    for (base, path) in segments.iter().rev() {
        let file = disk
            .open(path, OpenMode::ReadWrite)
            .map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
        let length = file.len().map_err(|e| StoreError::io("stat", e))?;
        if *base >= offset && Some(*base) != segments.first().map(|(first, _)| *first) {
            discarded += length;
            disk.remove_file(path)
                .map_err(|e| StoreError::io(format!("remove {}", path.display()), e))?;
        } else if base + length > offset {
            discarded += base + length - offset;
            file.set_len(offset - base)
                .map_err(|e| StoreError::io(format!("truncate {}", path.display()), e))?;
            file.sync_data()
                .map_err(|e| StoreError::io(format!("fsync {}", path.display()), e))?;
        }
    }
    crate::fs_util::sync_dir(&disk, &log_dir)?;
    let (checkpoint, _) = CheckpointFile::open(&disk, &data_dir.join("checkpoint"))?;
    checkpoint.write(Checkpoint {
        offset_flushed: offset,
        clean: false,
    })?;
    let own_path = data_dir.join("own_writes");
    let mut own_writes = crate::own_writes::load(&disk, &own_path)?;
    if own_writes.cut(offset) {
        crate::own_writes::save(&disk, &own_path, &own_writes)?;
    }
    Ok(discarded)
}
