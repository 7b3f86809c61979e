//! The checkpoint: the highest CommitLog offset known to be fsynced.
//!
//! Layout (16 bytes): u64 offset_flushed, u32 flags (bit 0 = clean shutdown), u32 CRC32C of
//! the first 12 bytes. Recovery never trusts it alone: it only decides whether a bad
//! record lies in data that was fsynced (corruption) or after it (a torn tail).

use crate::disk::{read_exact_at, Disk, DiskFile, OpenMode};
use crate::StoreError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const CHECKPOINT_LEN: usize = 16;
const FLAG_CLEAN: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub offset_flushed: u64,
    pub clean: bool,
}

pub(crate) struct CheckpointFile {
    path: PathBuf,
    file: Arc<dyn DiskFile>,
}

impl CheckpointFile {
    /// Opens (creating if missing) the checkpoint and reads what it holds, if valid.
    pub(crate) fn open(
        disk: &dyn Disk,
        path: &Path,
    ) -> Result<(CheckpointFile, Option<Checkpoint>), StoreError> {
        let existed = disk.exists(path);
        let file = disk
            .open(path, OpenMode::Create)
            .map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
        if !existed {
            if let Some(dir) = path.parent() {
                crate::fs_util::sync_dir(disk, dir)?;
            }
        }
        let mut bytes = [0u8; CHECKPOINT_LEN];
        let checkpoint = match read_exact_at(file.as_ref(), &mut bytes, 0) {
            Ok(()) => decode(&bytes),
            Err(_) => None,
        };
        Ok((
            CheckpointFile {
                path: path.to_path_buf(),
                file,
            },
            checkpoint,
        ))
    }

    /// Overwrites the checkpoint in place and fsyncs it.
    ///
    /// Crash safety: a torn write fails the CRC and reads back as "no checkpoint", which
    /// makes recovery stricter (any bad record followed by a good one is corruption),
    /// never looser.
    pub(crate) fn write(&self, checkpoint: Checkpoint) -> Result<(), StoreError> {
        let mut bytes = [0u8; CHECKPOINT_LEN];
        bytes[..8].copy_from_slice(&checkpoint.offset_flushed.to_le_bytes());
        let flags = if checkpoint.clean { FLAG_CLEAN } else { 0 };
        bytes[8..12].copy_from_slice(&flags.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..12]);
        bytes[12..].copy_from_slice(&crc.to_le_bytes());
        let context = |what: &str| format!("{what} {}", self.path.display());
        self.file
            .write_all_at(&bytes, 0)
            .map_err(|e| StoreError::io(context("write"), e))?;
        self.file
            .sync_data()
            .map_err(|e| StoreError::io(context("fsync"), e))
    }
}

fn decode(bytes: &[u8; CHECKPOINT_LEN]) -> Option<Checkpoint> {
    let offset_flushed = u64::from_le_bytes(bytes[0..8].try_into().ok()?);
    let flags = u32::from_le_bytes(bytes[8..12].try_into().ok()?);
    let crc = u32::from_le_bytes(bytes[12..16].try_into().ok()?);
    (crc32c::crc32c(&bytes[..12]) == crc).then_some(Checkpoint {
        offset_flushed,
        clean: flags & FLAG_CLEAN != 0,
    })
}

/// Reads the checkpoint without creating or changing anything (offline tools).
pub(crate) fn read_checkpoint(disk: &dyn Disk, path: &Path) -> Option<Checkpoint> {
    let file = disk.open(path, OpenMode::Read).ok()?;
    let mut bytes = [0u8; CHECKPOINT_LEN];
    read_exact_at(file.as_ref(), &mut bytes, 0).ok()?;
    decode(&bytes)
}
