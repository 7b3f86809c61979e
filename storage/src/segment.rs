//! CommitLog segment files: naming, listing and the shared read handles.

use crate::StoreError;
use std::fs::File;
use std::os::unix::fs::FileExt;
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
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| StoreError::io(format!("list {}", dir.display()), e))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("list {}", dir.display()), e))?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_segment_file_name) {
            Some(base) => segments.push((base, entry.path())),
            None => log::warn!(
                "ignoring unexpected file {} in the commitlog directory",
                entry.path().display()
            ),
        }
    }
    segments.sort_unstable_by_key(|(base, _)| *base);
    Ok(segments)
}

/// An open segment. Readers use `pread`; only the flusher writes.
pub(crate) struct Segment {
    pub base_offset: u64,
    pub file: Arc<File>,
}

/// Every segment's read handle, shared by the flusher (which adds) and readers.
#[derive(Default)]
pub(crate) struct SegmentSet {
    segments: RwLock<Vec<Segment>>,
}

impl SegmentSet {
    pub(crate) fn push(&self, base_offset: u64, file: Arc<File>) {
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
        segment
            .file
            .read_exact_at(buffer, offset - segment.base_offset)
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

    pub(crate) fn count(&self) -> usize {
        self.segments
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .len()
    }
}
