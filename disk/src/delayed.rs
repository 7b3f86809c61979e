//! Fault injection (`fault_read_delay_ms`), in builds with the `fault-injection` feature.

use crate::{Disk, DiskFile, OpenMode};
use std::any::Any;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Fault injection (`fault_read_delay_ms`): a `Disk` whose file reads sleep once armed,
/// as a disk that stalls under a read would. Writes and syncs pass through.
pub struct DelayedReads {
    inner: Arc<dyn Disk>,
    delay: std::time::Duration,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

impl DelayedReads {
    /// Reads through `inner`; they sleep `delay` each once `arm` is called (start-up
    /// recovery reads at full speed).
    pub fn new(inner: Arc<dyn Disk>, delay: std::time::Duration) -> DelayedReads {
        DelayedReads {
            inner,
            delay,
            armed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// A switch that starts the delays.
    pub fn arm_switch(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.armed.clone()
    }
}

struct DelayedFile {
    inner: Arc<dyn DiskFile>,
    delay: std::time::Duration,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

impl DiskFile for DelayedFile {
    fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
        if self.armed.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep(self.delay);
        }
        self.inner.read_at(buffer, offset)
    }

    fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(bytes, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }

    fn set_len(&self, length: u64) -> io::Result<()> {
        self.inner.set_len(length)
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

impl Disk for DelayedReads {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>> {
        Ok(Arc::new(DelayedFile {
            inner: self.inner.open(path, mode)?,
            delay: self.delay,
            armed: self.armed.clone(),
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.inner.is_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }

    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.remove_dir(dir)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        self.inner.lock(path)
    }

    fn free_bytes(&self, dir: &Path) -> io::Result<u64> {
        self.inner.free_bytes(dir)
    }
}
