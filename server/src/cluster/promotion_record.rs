//! The promotion record, `DATA_DIR/role`: written when `keel admin promote` makes a
//! slave a master, so that it stays one across restarts while its config still names
//! the master it replaced. Written, read and removed through keel-disk, so a crash
//! sweep covers it: after a crash at any point of a write, the record is the old one or
//! the new one, whole.

use keel_disk::{Disk, OpenMode};
use keel_protocol::BrokerRole;
use std::io;
use std::path::{Path, PathBuf};

/// What the record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PromotionRecord {
    pub role: BrokerRole,
    /// The `master_address` the broker was configured with when it was promoted (empty
    /// when it had none).
    pub promoted_from: String,
    pub epoch: u64,
}

pub(crate) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("role")
}

impl PromotionRecord {
    fn text(&self) -> String {
        format!(
            "# Written by `keel admin promote`: this slave became a master.\nrole = {}\npromoted_from = {}\nepoch = {}\n",
            self.role.name(),
            self.promoted_from,
            self.epoch
        )
    }

    /// Parses the text written by `write`; `None` when it does not name a master role.
    fn parse(text: &str) -> Option<PromotionRecord> {
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.trim().strip_prefix('='))
                .map(|value| value.trim().to_string())
        };
        let role = BrokerRole::from_name(&field("role")?)?;
        let promoted_from = field("promoted_from").unwrap_or_default();
        let epoch = field("epoch")
            .and_then(|epoch| epoch.parse().ok())
            .unwrap_or(0);
        Some(PromotionRecord {
            role,
            promoted_from,
            epoch,
        })
    }

    /// The record at `path`: `Ok(None)` when there is none. A record that does not
    /// parse is an error: the operator is told, and nothing is guessed.
    pub fn read(disk: &dyn Disk, path: &Path) -> io::Result<Option<PromotionRecord>> {
        if !disk.exists(path) {
            return Ok(None);
        }
        let file = disk.open(path, OpenMode::Read)?;
        let bytes = keel_disk::read_all(file.as_ref())?;
        let text = String::from_utf8_lossy(&bytes);
        match PromotionRecord::parse(&text) {
            Some(record) => Ok(Some(record)),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a promotion record", path.display()),
            )),
        }
    }

    /// Replaces the record at `path` atomically (a temporary file, fsynced, renamed,
    /// the directory fsynced).
    pub fn write(&self, disk: &dyn Disk, path: &Path) -> io::Result<()> {
        keel_disk::replace_atomically(disk, path, self.text().as_bytes())
    }

    /// Removes the record at `path`, durably.
    pub fn remove(disk: &dyn Disk, path: &Path) -> io::Result<()> {
        if !disk.exists(path) {
            return Ok(());
        }
        disk.remove_file(path)?;
        match path.parent() {
            Some(dir) => disk.sync_dir(dir),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_disk::sim::{SimDisk, TailShape};

    fn record(epoch: u64) -> PromotionRecord {
        PromotionRecord {
            role: BrokerRole::SyncMaster,
            promoted_from: "127.0.0.1:10912".into(),
            epoch,
        }
    }

    /// A promotion (a first record, then a newer one over it) cut by a crash at every
    /// point: after the restart the record is the one before or the one written, whole,
    /// and the one written when `write` returned.
    #[test]
    fn a_crash_at_any_point_of_a_write_leaves_the_old_record_or_the_new_one() {
        let dir = Path::new("/data");
        let path = path(dir);
        for previous in [None, Some(record(2))] {
            for step in 1u64.. {
                let disk = SimDisk::new();
                disk.create_dir_all(dir).unwrap();
                disk.sync_dir(Path::new("/")).unwrap();
                if let Some(previous) = &previous {
                    previous.write(&disk, &path).unwrap();
                }
                let mut crashed = false;
                for shape in [TailShape::Clean, TailShape::Torn, TailShape::Garbage] {
                    let disk = disk.after_crash(TailShape::Clean, 0);
                    disk.crash_at(disk.operations() + step, shape, step);
                    let written = record(3).write(&disk, &path);
                    crashed |= disk.crashed();
                    let after = PromotionRecord::read(&disk.after_crash(shape, step), &path)
                        .unwrap_or_else(|error| panic!("step {step} {shape:?}: {error}"));
                    match written {
                        Ok(()) => assert_eq!(after, Some(record(3)), "step {step} {shape:?}"),
                        Err(_) => assert!(
                            after == previous || after == Some(record(3)),
                            "step {step} {shape:?}: {after:?}"
                        ),
                    }
                }
                if !crashed {
                    // Past the write's last operation: every crash point was tried.
                    assert!(step > 3, "the write took {step} operations");
                    break;
                }
            }
        }
    }

    #[test]
    fn a_record_reads_back_as_written_and_a_damaged_one_is_an_error() {
        let disk = SimDisk::new();
        let dir = Path::new("/data");
        disk.create_dir_all(dir).unwrap();
        let path = path(dir);
        assert_eq!(PromotionRecord::read(&disk, &path).unwrap(), None);
        record(7).write(&disk, &path).unwrap();
        assert_eq!(
            PromotionRecord::read(&disk, &path).unwrap(),
            Some(record(7))
        );
        keel_disk::replace_atomically(&disk, &path, b"role = nonsense\n").unwrap();
        assert!(PromotionRecord::read(&disk, &path).is_err());
        PromotionRecord::remove(&disk, &path).unwrap();
        assert_eq!(PromotionRecord::read(&disk, &path).unwrap(), None);
    }
}
