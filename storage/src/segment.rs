//! CommitLog segment files: naming, listing and the shared read handles.

use crate::disk::{read_exact_at, Disk, DiskFile};
use crate::StoreError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Segment file name: the base offset in 20 decimal digits.
pub(crate) fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}")
}

pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    if name.len() != 20 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// Segment files in `dir`, sorted by base offset. Other names are ignored with a warning.
pub(crate) fn list_segments(
    disk: &dyn Disk,
    dir: &Path,
) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let names = disk
        .list(dir)
        .map_err(|e| StoreError::io(format!("list {}", dir.display()), e))?;
    let mut segments = Vec::new();
    for name in names {
        match parse_segment_file_name(&name) {
            Some(base) => segments.push((base, dir.join(&name))),
            None => log::warn!("ignoring unexpected file {name} in {}", dir.display()),
        }
    }
    segments.sort_unstable_by_key(|(base, _)| *base);
    Ok(segments)
}

/// An open segment. Readers use `pread`; only the flusher writes.
pub(crate) struct Segment {
    pub base_offset: u64,
    pub file: Arc<dyn DiskFile>,
}

/// Every segment's read handle, shared by the flusher (which adds) and readers.
#[derive(Default)]
pub(crate) struct SegmentSet {
    segments: RwLock<Vec<Segment>>,
}

impl SegmentSet {
    pub(crate) fn push(&self, base_offset: u64, file: Arc<dyn DiskFile>) {
        let mut segments = self
            .segments
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        assert!(segments
            .last()
            .is_none_or(|last| last.base_offset < base_offset));
        segments.push(Segment { base_offset, file });
    }

    /// Reads `buffer.len()` bytes at log offset `offset`. The range never spans segments
    /// because a record never does and callers only coalesce adjacent records of one file.
    pub(crate) fn read_at(&self, offset: u64, buffer: &mut [u8]) -> std::io::Result<()> {
        let segments = self
            .segments
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        let index = segments.partition_point(|segment| segment.base_offset <= offset);
        let Some(segment) = index.checked_sub(1).and_then(|i| segments.get(i)) else {
            return Err(std::io::Error::other(format!(
                "no segment holds offset {offset}"
            )));
        };
        read_exact_at(segment.file.as_ref(), buffer, offset - segment.base_offset)
    }

    /// Base offset of the segment holding `offset`.
    pub(crate) fn base_of(&self, offset: u64) -> Option<u64> {
        let segments = self
            .segments
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        let index = segments.partition_point(|segment| segment.base_offset <= offset);
        index
            .checked_sub(1)
            .and_then(|i| segments.get(i))
            .map(|segment| segment.base_offset)
    }

    /// Base offsets of every segment, oldest first.
    pub(crate) fn bases(&self) -> Vec<u64> {
        let segments = self
            .segments
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        segments.iter().map(|segment| segment.base_offset).collect()
    }

    /// The newest segment's base offset and handle.
    pub(crate) fn last(&self) -> Option<(u64, Arc<dyn DiskFile>)> {
        let segments = self
            .segments
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        segments
            .last()
            .map(|segment| (segment.base_offset, segment.file.clone()))
    }

    /// Every segment holding some of log offsets `[from, to)`: (base, file).
    pub(crate) fn overlapping(&self, from: u64, to: u64) -> Vec<(u64, Arc<dyn DiskFile>)> {
        let segments = self
            .segments
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        let first = segments
            .partition_point(|segment| segment.base_offset <= from)
            .saturating_sub(1);
        segments
            .iter()
            .skip(first)
            .take_while(|segment| segment.base_offset < to)
            .map(|segment| (segment.base_offset, segment.file.clone()))
            .collect()
    }

    /// Forgets the handles of deleted segments.
    pub(crate) fn remove(&self, bases: &[u64]) {
        let mut segments = self
            .segments
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        segments.retain(|segment| !bases.contains(&segment.base_offset));
    }

    pub(crate) fn count(&self) -> usize {
        self.segments
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .len()
    }
}
