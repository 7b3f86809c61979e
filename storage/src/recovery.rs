//! Start-up recovery: verify every record, truncate a torn tail, refuse on corruption.
//!
//! The first record that fails a check (header, magic, size, CRC32C over the whole
//! record, or its stored offset disagreeing with where it sits) ends the valid log at
//! position `p`. What follows is a *torn tail* when nothing shows that `p` was fsynced
//! (and so may hold acknowledged data):
//! - with a checkpoint `c` (an offset known fsynced): `p >= c`;
//! - without one: no valid record exists anywhere after `p`;
//! - and in both cases, no valid record after `p` that this broker appended as a master
//!   carries `flushed_before > p` (it would prove `p` fsynced before it was appended;
//!   see `own_writes`).
//!
//! A torn tail is truncated (and later segments removed). Anything else is corruption:
//! recovery refuses, naming the file, the position and what is wrong, and never cuts the
//! log silently. Recovery is idempotent: after truncation a second run finds a clean log.

use crate::catalog::{Catalog, NewTopic, RecordFacts};
use crate::disk::{read_exact_at, Disk, FileReader, OpenMode};
use crate::own_writes::OwnWrites;
use crate::segment::list_segments;
use crate::StoreError;
use keel_protocol::{decode_record, peek_record_header, RECORD_FIXED_LEN, RECORD_MAGIC};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    pub offset_end: u64,
    pub checkpoint: Option<u64>,
    pub clean_shutdown: bool,
    /// Bytes cut from a torn tail (0 when the log ended cleanly).
    pub truncated_bytes: u64,
    /// Segments after the torn point that were deleted.
    pub removed_segments: usize,
    /// Why the tail was cut, when it was.
    pub truncation_reason: Option<String>,
}

/// A verified record, as recovery reports it to rebuild the indexes.
pub(crate) struct RecoveredRecord<'a> {
    /// Base offset of the first segment (above 0 once retention deleted the start).
    pub log_start: u64,
    pub facts: RecordFacts<'a>,
}

impl RecoveredRecord<'_> {
    /// Files the record in `catalog` as recovery found it (a deletion record drops its
    /// topic there).
    pub(crate) fn file_in(&self, catalog: &mut Catalog) -> Result<(), String> {
        let new = NewTopic::Recovered {
            log_start: self.log_start,
        };
        catalog.note(&self.facts, new).map(|_| ())
    }
}

/// Whether recovery may change the files (keeld) or only look (`keel admin verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    TruncateTornTail,
    /// Report what would be cut in `truncated_bytes`, change nothing.
    ReadOnly,
    /// Change nothing and judge nothing: find where the valid records end, as if every
    /// bad record were a torn tail (`keel admin verify` says so on a damaged log).
    MeasureValidPrefix,
}

/// What recovery knows about what was fsynced, besides the records themselves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Evidence<'a> {
    /// The checkpoint's offset, when the checkpoint is valid.
    pub checkpoint: Option<u64>,
    /// Where this broker's own records are (their `flushed_before` values count).
    pub own_writes: &'a OwnWrites,
}

struct BadRecord {
    position: u64,
    detail: String,
}

/// Recovery's progress lines (keeld's start only; `keel admin verify` prints its own).
struct Progress {
    segments: usize,
    started: std::time::Instant,
    shown: std::time::Instant,
    quiet: bool,
}

impl Progress {
    const INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

    fn new(segments: usize, repair: Repair) -> Progress {
        let quiet = repair != Repair::TruncateTornTail || segments == 0;
        if !quiet {
            log::info!("recovering the log: checking every record of {segments} segment(s)");
        }
        let now = std::time::Instant::now();
        Progress {
            segments,
            started: now,
            shown: now,
            quiet,
        }
    }

    /// Before segment `index` (base `base`) is read, with `records` read so far.
    fn segment(&mut self, index: usize, base: u64, records: u64) {
        if self.quiet || self.shown.elapsed() < Self::INTERVAL {
            return;
        }
        self.shown = std::time::Instant::now();
        log::info!(
            "recovering the log: segment {} of {} (log offset {base}), {records} records \
             checked in {:.1} s",
            index + 1,
            self.segments,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// Scans `dir`, calls `on_record` for every valid record in log order, truncates a torn
/// tail, and returns the surviving segments (base, path) with the report.
pub(crate) fn recover(
    disk: &dyn Disk,
    dir: &Path,
    evidence: Evidence<'_>,
    max_record_bytes: u32,
    repair: Repair,
    mut on_record: impl FnMut(RecoveredRecord<'_>) -> Result<(), String>,
) -> Result<(Vec<(u64, PathBuf)>, RecoveryReport), StoreError> {
    let checkpoint = match repair {
        Repair::MeasureValidPrefix => None,
        _ => evidence.checkpoint,
    };
    let segments = list_segments(disk, dir)?;
    let mut report = RecoveryReport {
        checkpoint,
        ..RecoveryReport::default()
    };
    let log_start = segments.first().map_or(0, |(base, _)| *base);
    let mut expected_base = log_start;
    let mut kept = Vec::new();
    // A large log takes a while to check: say so at the start and every few seconds,
    // so an operator whose broker does not answer yet knows why.
    let mut progress = Progress::new(segments.len(), repair);
    for (index, (base, path)) in segments.iter().enumerate() {
        progress.segment(index, *base, report.records);
        kept.push((*base, path.clone()));
        let (valid_len, bad) = scan_segment(
            disk,
            path,
            *base,
            log_start,
            max_record_bytes,
            &mut on_record,
            &mut report,
        )?;
        expected_base = base + valid_len;
        let bad = match (bad, segments.get(index + 1)) {
            (Some(bad), _) => Some(bad),
            (None, Some((next_base, next_path))) if *next_base < expected_base => {
                return Err(StoreError::Corruption {
                    path: next_path.clone(),
                    position: 0,
                    detail: format!(
                        "segment starts at log offset {next_base}, inside the previous one (which ends at {expected_base})"
                    ),
                });
            }
            // The next segment starts later than this one ends: this segment lost its
            // tail (a crash during a roll leaves exactly this), judged like a bad record.
            (None, Some((next_base, _))) if *next_base > expected_base => Some(BadRecord {
                position: valid_len,
                detail: format!("segment ends at log offset {expected_base} but the next one starts at {next_base}"),
            }),
            (None, _) => None,
        };
        let Some(bad) = bad else { continue };
        let later = segments.get(index + 1..).unwrap_or_default();
        let position_global = base + bad.position;
        let why = match repair {
            Repair::MeasureValidPrefix => None,
            _ => why_not_torn(
                disk,
                (path, *base, bad.position),
                later,
                evidence.own_writes,
                checkpoint,
                max_record_bytes,
            )?,
        };
        if let Some(why) = why {
            return Err(StoreError::Corruption {
                path: path.clone(),
                position: bad.position,
                detail: format!(
                    "{} (log offset {position_global}); this is not a torn tail because {why}. \
                     The broker will not start on a damaged log: restore the segment, or move the \
                     damaged data aside deliberately",
                    bad.detail
                ),
            });
        }
        match repair {
            Repair::TruncateTornTail => {
                truncate_tail(disk, path, bad.position, later, &mut report)?
            }
            Repair::ReadOnly | Repair::MeasureValidPrefix => {
                report.truncated_bytes += torn_len(disk, path, bad.position, later)
            }
        }
        report.truncation_reason = Some(format!("{} at log offset {position_global}", bad.detail));
        break;
    }
    report.segments = kept.len();
    report.offset_end = expected_base;
    if let Some(flushed) = checkpoint {
        if report.offset_end < flushed {
            return Err(StoreError::Corruption {
                path: dir.to_path_buf(),
                position: report.offset_end,
                detail: format!(
                    "the log ends at offset {} but the checkpoint says {flushed} was fsynced: \
                     acknowledged data is missing",
                    report.offset_end
                ),
            });
        }
    }
    Ok((kept, report))
}

/// Verifies the records of one segment. Returns the length of its valid prefix and the
/// first bad record, if any.
#[allow(clippy::too_many_arguments)]
fn scan_segment(
    disk: &dyn Disk,
    path: &Path,
    base: u64,
    log_start: u64,
    max_record_bytes: u32,
    on_record: &mut impl FnMut(RecoveredRecord<'_>) -> Result<(), String>,
    report: &mut RecoveryReport,
) -> Result<(u64, Option<BadRecord>), StoreError> {
    let (file, length) = open_for_read(disk, path)?;
    let mut reader = BufReader::with_capacity(
        1 << 20,
        FileReader {
            file: file.as_ref(),
            position: 0,
        },
    );
    let mut record = Vec::new();
    let mut position = 0u64;
    let read_error = |e| StoreError::io(format!("read {}", path.display()), e);
    while position < length {
        let bad = |detail: String| Ok((position, Some(BadRecord { position, detail })));
        let remaining = length - position;
        if remaining < 12 {
            return bad(format!("incomplete record header ({remaining} bytes)"));
        }
        record.resize(12, 0);
        reader.read_exact(&mut record).map_err(read_error)?;
        let Some(header) = peek_record_header(&record) else {
            return bad("unreadable header".into());
        };
        if header.magic != RECORD_MAGIC {
            let what = if record.iter().all(|b| *b == 0) {
                "zero-filled bytes"
            } else {
                "bad record magic"
            };
            return bad(what.to_string());
        }
        let size = u64::from(header.total_size);
        if size < RECORD_FIXED_LEN as u64 || size > u64::from(max_record_bytes) {
            return bad(format!("implausible record size {size}"));
        }
        if size > remaining {
            return bad(format!(
                "record of {size} bytes runs past the end of the file ({remaining} left)"
            ));
        }
        record.resize(size as usize, 0);
        if let Some(rest) = record.get_mut(12..) {
            reader.read_exact(rest).map_err(read_error)?;
        }
        let decoded = match decode_record(&record) {
            Ok(decoded) => decoded,
            Err(error) => return bad(error.to_string()),
        };
        if decoded.log_offset != base + position {
            return bad(format!(
                "record claims log offset {} but sits at {}",
                decoded.log_offset,
                base + position
            ));
        }
        let recovered = RecoveredRecord {
            log_start,
            facts: RecordFacts::of_record(&decoded, base),
        };
        if let Err(detail) = on_record(recovered) {
            return Err(StoreError::Corruption {
                path: path.to_path_buf(),
                position,
                detail,
            });
        }
        report.records += 1;
        position += size;
    }
    Ok((position, None))
}

/// Opens a file to read and returns it with its length.
fn open_for_read(
    disk: &dyn Disk,
    path: &Path,
) -> Result<(std::sync::Arc<dyn crate::disk::DiskFile>, u64), StoreError> {
    let file = disk
        .open(path, OpenMode::Read)
        .map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
    let length = file
        .len()
        .map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?;
    Ok((file, length))
}

/// Why the bad record at `bad` (segment path, its base, position in it) cannot be a
/// torn tail, or `None` when it can: the checkpoint says it was fsynced, or (with no
/// checkpoint) valid records follow it, or a later record of this broker's own says
/// the log was fsynced past it before that record was appended.
fn why_not_torn(
    disk: &dyn Disk,
    bad: (&Path, u64, u64),
    later: &[(u64, PathBuf)],
    own_writes: &OwnWrites,
    checkpoint: Option<u64>,
    max_record_bytes: u32,
) -> Result<Option<String>, StoreError> {
    let (path, base, position) = bad;
    let at = base + position;
    if let Some(flushed) = checkpoint.filter(|flushed| at < *flushed) {
        return Ok(Some(format!(
            "it lies below the last fsynced offset {flushed}"
        )));
    }
    // Stop at the first valid record when that alone decides (no checkpoint), else at
    // the first own record proving `at` fsynced; otherwise every later byte is looked at.
    let mut follows = false;
    let mut proof: Option<(u64, u64)> = None;
    let mut look = |record: &keel_protocol::Record| {
        follows = true;
        if own_writes.contains(record.log_offset) && record.flushed_before > at {
            proof = Some((record.log_offset, record.flushed_before));
            return false;
        }
        checkpoint.is_some()
    };
    let mut going =
        scan_valid_records(disk, path, base, position + 1, max_record_bytes, &mut look)?;
    for (later_base, later_path) in later {
        if !going {
            break;
        }
        going = scan_valid_records(
            disk,
            later_path,
            *later_base,
            0,
            max_record_bytes,
            &mut look,
        )?;
    }
    Ok(match (proof, checkpoint.is_none() && follows) {
        (Some((offset, flushed)), _) => Some(format!(
            "the record at log offset {offset}, appended after it, shows the log was fsynced \
             up to {flushed} when it was appended"
        )),
        (None, true) => Some("valid records follow it".to_string()),
        (None, false) => None,
    })
}

/// Calls `each` for every valid record (CRC and position consistent) that starts at or
/// after `from` in one segment, until it returns false. Returns whether to go on.
pub(crate) fn scan_valid_records(
    disk: &dyn Disk,
    path: &Path,
    base: u64,
    from: u64,
    max_record_bytes: u32,
    each: &mut impl FnMut(&keel_protocol::Record) -> bool,
) -> Result<bool, StoreError> {
    let (file, length) = open_for_read(disk, path)?;
    const STEP: u64 = 4 << 20;
    let overlap = u64::from(max_record_bytes);
    let mut window = Vec::new();
    let mut start = from;
    while start < length {
        let window_len = (length - start).min(STEP + overlap);
        window.resize(window_len as usize, 0);
        read_exact_at(file.as_ref(), &mut window, start)
            .map_err(|e| StoreError::io(format!("read {}", path.display()), e))?;
        let candidates = window_len.min(STEP) as usize;
        let magic = RECORD_MAGIC.to_le_bytes();
        for index in 0..candidates {
            if window.get(index + 4..index + 8) != Some(&magic[..]) {
                continue;
            }
            if let Ok(record) = decode_record(window.get(index..).unwrap_or_default()) {
                if record.log_offset == base + start + index as u64 && !each(&record) {
                    return Ok(false);
                }
            }
        }
        start += STEP;
    }
    Ok(true)
}

/// Bytes a torn tail at `position` would cut, this segment and the later ones.
fn torn_len(disk: &dyn Disk, path: &Path, position: u64, later: &[(u64, PathBuf)]) -> u64 {
    let length = |path: &Path| {
        disk.open(path, OpenMode::Read)
            .and_then(|file| file.len())
            .unwrap_or(0)
    };
    let rest: u64 = later.iter().map(|(_, later_path)| length(later_path)).sum();
    length(path).saturating_sub(position) + rest
}

/// Cuts the torn tail at `position` and deletes the segments after it.
///
/// Crash safety: the truncation is fsynced before later segments are removed, and the
/// directory after; a crash in between leaves a state this same recovery handles again.
fn truncate_tail(
    disk: &dyn Disk,
    path: &Path,
    position: u64,
    later: &[(u64, PathBuf)],
    report: &mut RecoveryReport,
) -> Result<(), StoreError> {
    let context = |what: &str, path: &Path| format!("{what} {}", path.display());
    let file = disk
        .open(path, OpenMode::ReadWrite)
        .map_err(|e| StoreError::io(context("open", path), e))?;
    let length = file
        .len()
        .map_err(|e| StoreError::io(context("stat", path), e))?;
    report.truncated_bytes += length - position;
    file.set_len(position)
        .map_err(|e| StoreError::io(context("truncate", path), e))?;
    file.sync_data()
        .map_err(|e| StoreError::io(context("fsync", path), e))?;
    for (_, later_path) in later {
        let later_file = disk
            .open(later_path, OpenMode::Read)
            .map_err(|e| StoreError::io(context("open", later_path), e))?;
        report.truncated_bytes += later_file.len().unwrap_or(0);
        disk.remove_file(later_path)
            .map_err(|e| StoreError::io(context("remove", later_path), e))?;
        report.removed_segments += 1;
    }
    if let Some(dir) = path.parent() {
        crate::fs_util::sync_dir(disk, dir)?;
    }
    Ok(())
}
