//! Small file-system helpers with the crash-safety steps spelled out.

use crate::disk::{Disk, OpenMode};
use crate::StoreError;
use std::path::Path;

/// fsyncs a directory so that a create, rename or delete inside it survives a crash.
pub(crate) fn sync_dir(disk: &dyn Disk, dir: &Path) -> Result<(), StoreError> {
    disk.sync_dir(dir)
        .map_err(|e| StoreError::io(format!("fsync directory {}", dir.display()), e))
}

/// Creates `dir` and any missing parents, each made durable in its parent.
pub(crate) fn create_dir_all_synced(disk: &dyn Disk, dir: &Path) -> Result<(), StoreError> {
    if disk.is_dir(dir) {
        return Ok(());
    }
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|level| !disk.is_dir(level))
        .collect();
    disk.create_dir_all(dir)
        .map_err(|e| StoreError::io(format!("create {}", dir.display()), e))?;
    for level in missing.into_iter().rev() {
        if let Some(parent) = level.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            sync_dir(disk, parent)?;
        }
    }
    Ok(())
}

/// Replaces `path` with `contents` atomically (`keel_disk::replace_atomically`: the
/// one atomic replace of the workspace, which the crash sweep covers): a crash at any
/// point leaves either the old file or the new one, whole.
pub(crate) fn write_atomic(
    disk: &dyn Disk,
    path: &Path,
    contents: &[u8],
) -> Result<(), StoreError> {
    keel_disk::replace_atomically(disk, path, contents)
        .map_err(|e| StoreError::io(format!("replace {}", path.display()), e))
}

/// The body of a file written with `seal_text`, or `None` when there is no file. A
/// missing or wrong trailer is corruption, reported with `remedy` (what an operator
/// can do about this file).
pub(crate) fn read_sealed(
    disk: &dyn Disk,
    path: &Path,
    remedy: &str,
) -> Result<Option<String>, StoreError> {
    match disk
        .open(path, OpenMode::Read)
        .and_then(|file| crate::disk::read_all(file.as_ref()))
    {
        Ok(bytes) => match unseal_text(&bytes) {
            Some(body) => Ok(Some(body.to_string())),
            None => Err(StoreError::Corruption {
                path: path.to_path_buf(),
                position: 0,
                detail: format!("checksum trailer missing or wrong; {remedy}"),
            }),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(StoreError::io(format!("read {}", path.display()), error)),
    }
}

/// Appends a `crc32c XXXXXXXX` trailer line over everything before it.
pub(crate) fn seal_text(mut text: String) -> Vec<u8> {
    let crc = crc32c::crc32c(text.as_bytes());
    text.push_str(&format!("crc32c {crc:08x}\n"));
    text.into_bytes()
}

/// Checks and strips the trailer written by `seal_text`.
pub(crate) fn unseal_text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let body_end = text
        .trim_end_matches('\n')
        .rfind('\n')
        .map_or(0, |index| index + 1);
    let (body, trailer) = text.split_at(body_end);
    let stored = trailer.trim().strip_prefix("crc32c ")?;
    let stored = u32::from_str_radix(stored, 16).ok()?;
    (crc32c::crc32c(body.as_bytes()) == stored).then_some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_text_round_trips_and_detects_damage() {
        let sealed = seal_text("a 1\nb 2\n".to_string());
        assert_eq!(unseal_text(&sealed), Some("a 1\nb 2\n"));
        let mut damaged = sealed.clone();
        damaged[0] = b'c';
        assert_eq!(unseal_text(&damaged), None);
        assert_eq!(unseal_text(&seal_text(String::new())), Some(""));
        assert_eq!(unseal_text(b""), None);
    }
}
