//! Which parts of the log this broker appended itself, as a master.
//!
//! Every record carries `flushed_before`: what the broker that appended it had fsynced
//! at that moment. On a broker's own records that is proof about its own disk (every
//! byte below it was fsynced, so may have been acknowledged), which recovery uses to
//! tell damage from a torn tail. A slave's records are its master's, byte for byte, and
//! their values say nothing about the slave's disk; recovery must not use them there.
//!
//! A range opens when this broker begins a master epoch (at its log end) and closes
//! when it starts following a master; a truncation cuts the ranges with the log.
//!
//! File `DATA_DIR/own_writes`: one line `START END` per range, oldest first (`END` is
//! `open` while the broker is still the one appending), then a `crc32c` trailer;
//! replaced atomically. No file: no range, so no record's value is trusted (the
//! checkpoint alone decides, as it did before this file existed).

use crate::disk::Disk;
use crate::fs_util::{read_sealed, seal_text, write_atomic};
use crate::StoreError;
use std::path::Path;

/// Log ranges `[start, end)` this broker appended as a master; `end` is `None` while
/// the range is still growing.
///
/// Invariant: ranges are sorted, do not overlap, and only the last may be open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnWrites {
    ranges: Vec<(u64, Option<u64>)>,
}

impl OwnWrites {
    /// Whether the record at `log_offset` was appended here, as a master.
    pub fn contains(&self, log_offset: u64) -> bool {
        self.ranges
            .iter()
            .any(|(start, end)| log_offset >= *start && end.is_none_or(|end| log_offset < end))
    }

    /// This broker starts appending as a master at `at`. Returns whether anything changed.
    pub(crate) fn begin(&mut self, at: u64) -> bool {
        if self.ranges.last().is_some_and(|(_, end)| end.is_none()) {
            return false;
        }
        self.cut(at);
        self.ranges.push((at, None));
        self.check_invariants();
        true
    }

    /// This broker stops appending as a master (it follows one) at `at`.
    pub(crate) fn end(&mut self, at: u64) -> bool {
        let Some(last) = self.ranges.last_mut() else {
            return false;
        };
        if last.1.is_some() {
            return false;
        }
        last.1 = Some(at.max(last.0));
        self.ranges
            .retain(|(start, end)| end.is_none_or(|end| end > *start));
        self.check_invariants();
        true
    }

    /// The log was cut back to `to`: nothing at or past it was appended here.
    pub(crate) fn cut(&mut self, to: u64) -> bool {
        let before = self.ranges.clone();
        self.ranges.retain(|(start, _)| *start < to);
        if let Some(last) = self.ranges.last_mut() {
            last.1 = Some(last.1.map_or(to, |end| end.min(to)));
        }
        self.check_invariants();
        self.ranges != before
    }

    fn check_invariants(&self) {
        for (first, second) in self.ranges.iter().zip(self.ranges.iter().skip(1)) {
            let Some(first_end) = first.1 else {
                panic!("only the last range may be open: {:?}", self.ranges)
            };
            assert!(first.0 < first_end);
            assert!(first_end <= second.0);
        }
    }
}

/// What an operator can do about a damaged own-writes file.
const REMEDY: &str = "restore the file from a backup, or delete it while keeld is stopped \
    (recovery then judges damage by the checkpoint alone)";

pub(crate) fn load(disk: &dyn Disk, path: &Path) -> Result<OwnWrites, StoreError> {
    let Some(text) = read_sealed(disk, path, REMEDY)? else {
        return Ok(OwnWrites::default());
    };
    let damaged = |detail: String| StoreError::Corruption {
        path: path.to_path_buf(),
        position: 0,
        detail: format!("{detail}; {REMEDY}"),
    };
    let mut ranges: Vec<(u64, Option<u64>)> = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let start = fields.next().and_then(|field| field.parse::<u64>().ok());
        let end = match fields.next() {
            Some("open") => Some(None),
            Some(field) => field.parse::<u64>().ok().map(Some),
            None => None,
        };
        let (Some(start), Some(end), None) = (start, end, fields.next()) else {
            return Err(damaged(format!("bad line {line:?}")));
        };
        let follows = ranges
            .last()
            .is_none_or(|(_, previous)| previous.is_some_and(|previous| previous <= start));
        if end.is_some_and(|end| end <= start) || !follows {
            return Err(damaged(format!("line {line:?} is out of order")));
        }
        ranges.push((start, end));
    }
    Ok(OwnWrites { ranges })
}

pub(crate) fn save(disk: &dyn Disk, path: &Path, own: &OwnWrites) -> Result<(), StoreError> {
    let mut text = String::new();
    for (start, end) in &own.ranges {
        match end {
            Some(end) => text.push_str(&format!("{start} {end}\n")),
            None => text.push_str(&format!("{start} open\n")),
        }
    }
    write_atomic(disk, path, &seal_text(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::OpenMode;

    #[test]
    fn ranges_follow_a_brokers_terms_and_truncations() {
        let mut own = OwnWrites::default();
        assert!(!own.contains(0));
        assert!(own.begin(0));
        assert!(!own.begin(50), "already appending");
        assert!(own.contains(10_000));
        assert!(own.end(100));
        assert!(own.contains(99));
        assert!(!own.contains(100));
        // A slave of another master from 100 on, cut back to 80, promoted at 150.
        assert!(own.cut(80));
        assert!(!own.contains(80));
        assert!(own.begin(150));
        assert!(own.contains(79));
        assert!(!own.contains(120));
        assert!(own.contains(150));
    }

    #[test]
    fn the_file_round_trips_and_refuses_damage() {
        let disk = crate::sim::SimDisk::new();
        let path = Path::new("/own_writes");
        disk.create_dir_all(Path::new("/")).unwrap();
        assert_eq!(load(&disk, path).unwrap(), OwnWrites::default());
        let mut own = OwnWrites::default();
        own.begin(0);
        own.end(100);
        own.begin(150);
        save(&disk, path, &own).unwrap();
        assert_eq!(load(&disk, path).unwrap(), own);
        let file = disk.open(path, OpenMode::ReadWrite).unwrap();
        file.write_all_at(b"9", 0).unwrap();
        assert!(load(&disk, path).is_err());
    }
}
