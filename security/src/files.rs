//! Durable replacement of the small files outside the CommitLog: `security.json`, a
//! slave's promotion record (`role`) and the controller's Raft files. All go through
//! `keel_disk::replace_atomically`, the one atomic replace of the workspace, which the
//! storage crash sweep and the security state's own sweep cover.

use std::path::Path;

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, whole
/// (on the real disk; mode 0600: password hashes, promotion records and Raft state are
/// not for others to read).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    keel_disk::replace_atomically(&keel_disk::RealDisk, path, bytes)
}
