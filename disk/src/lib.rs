//! The seam between keel and the file system.
//!
//! Every durable file keel writes goes through `Disk` and `DiskFile`: the CommitLog and
//! its metadata (the storage crate), `security.json`, a slave's `role` record and the
//! controller's Raft files (`replace_atomically`). Tests run them on `sim::SimDisk`,
//! which models what survives a crash and injects I/O errors (with the
//! `fault-injection` feature). `RealDisk` is the production implementation over
//! `std::fs`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::any::Any;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    Read,
    ReadWrite,
    /// Read-write, created empty if missing.
    Create,
    /// Read-write, must not exist yet.
    CreateNew,
}

#[allow(clippy::len_without_is_empty)]
pub trait DiskFile: Send + Sync {
    /// Reads up to `buffer.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync: the file's bytes and size are durable once this returns Ok.
    fn sync_data(&self) -> io::Result<()>;
    fn set_len(&self, length: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    /// Asks the kernel to drop the (clean) cached pages of `[offset, offset + length)`.
    /// Only a hint: it never changes the file, and may do nothing.
    fn drop_cache(&self, offset: u64, length: u64) -> io::Result<()> {
        let _ = (offset, length);
        Ok(())
    }
}

pub trait Disk: Send + Sync {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>>;
    /// Names of the entries of a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    fn is_dir(&self, path: &Path) -> bool;
    fn exists(&self, path: &Path) -> bool;
    /// fsync of a directory: creates, renames and removes inside it become durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, dir: &Path) -> io::Result<()>;
    /// An exclusive lock held until the returned guard is dropped; `WouldBlock` if taken.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>>;
    /// Bytes available to this process on the file system holding `dir`.
    fn free_bytes(&self, dir: &Path) -> io::Result<u64>;
}

/// Reads exactly `buffer.len()` bytes at `offset`.
pub fn read_exact_at(
    file: &dyn DiskFile,
    mut buffer: &mut [u8],
    mut offset: u64,
) -> io::Result<()> {
    while !buffer.is_empty() {
        match file.read_at(buffer, offset) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(count) => {
                buffer = buffer.get_mut(count..).unwrap_or_default();
                offset += count as u64;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Reads a whole file.
pub fn read_all(file: &dyn DiskFile) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; file.len()? as usize];
    read_exact_at(file, &mut bytes, 0)?;
    Ok(bytes)
}

/// The real file system.
pub struct RealDisk;

impl DiskFile for File {
    fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buffer, offset)
    }

    fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, bytes, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&self, length: u64) -> io::Result<()> {
        File::set_len(self, length)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn drop_cache(&self, offset: u64, length: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(length)) =
            (libc::off_t::try_from(offset), libc::off_t::try_from(length))
        else {
            return Ok(());
        };
        // SAFETY: posix_fadvise only reads its arguments; the descriptor is ours.
        let status = unsafe {
            libc::posix_fadvise(self.as_raw_fd(), offset, length, libc::POSIX_FADV_DONTNEED)
        };
        match status {
            0 => Ok(()),
            code => Err(io::Error::from_raw_os_error(code)),
        }
    }
}

/// The mode of every file the broker creates in its data directory (owner only).
pub const FILE_MODE: u32 = 0o600;
/// The mode of every directory it creates there.
pub const DIR_MODE: u32 = 0o700;

#[cfg(any(test, feature = "fault-injection"))]
mod delayed;
#[cfg(any(test, feature = "fault-injection"))]
pub mod sim;
#[cfg(any(test, feature = "fault-injection"))]
pub use delayed::DelayedReads;

impl Disk for RealDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = OpenOptions::new();
        // What the broker creates only its own user reads: messages are private data.
        options.read(true).mode(FILE_MODE);
        match mode {
            OpenMode::Read => {}
            OpenMode::ReadWrite => {
                options.write(true);
            }
            OpenMode::Create => {
                options.write(true).create(true).truncate(false);
            }
            OpenMode::CreateNew => {
                options.write(true).create_new(true);
            }
        }
        Ok(Arc::new(options.open(path)?))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        fs::remove_dir(dir)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .mode(FILE_MODE)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(fs::TryLockError::WouldBlock) => Err(io::Error::from(io::ErrorKind::WouldBlock)),
            Err(fs::TryLockError::Error(error)) => Err(error),
        }
    }

    fn free_bytes(&self, dir: &Path) -> io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
        let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `path` is a valid C string and `stats` is a writable statvfs buffer.
        let result = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: statvfs returned 0, so it filled the buffer.
        let stats = unsafe { stats.assume_init() };
        // The field widths differ between platforms; on some they are already u64.
        #[allow(clippy::useless_conversion)]
        let free = u64::from(stats.f_bavail).saturating_mul(u64::from(stats.f_frsize));
        Ok(free)
    }
}

/// Replaces `path` with `contents` so that a crash at any point leaves the old file or
/// the new one, whole: a temporary file beside it (mode 0600) is written and fsynced,
/// renamed over it, and the directory fsynced.
pub fn replace_atomically(disk: &dyn Disk, path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let temporary = path.with_file_name(name);
    let context = |what: &str, error: io::Error| {
        io::Error::new(
            error.kind(),
            format!("{what} {}: {error}", temporary.display()),
        )
    };
    let file = disk
        .open(&temporary, OpenMode::Create)
        .map_err(|e| context("create", e))?;
    file.set_len(0).map_err(|e| context("truncate", e))?;
    file.write_all_at(contents, 0)
        .map_err(|e| context("write", e))?;
    file.sync_data().map_err(|e| context("fsync", e))?;
    drop(file);
    disk.rename(&temporary, path)
        .map_err(|e| io::Error::new(e.kind(), format!("rename to {}: {e}", path.display())))?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => disk.sync_dir(dir),
        _ => Ok(()),
    }
}
