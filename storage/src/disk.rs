//! The file-system seam is the `keel-disk` crate (shared with the security state and
//! the controller's files); this module re-exports it for the store.

pub use keel_disk::*;
use std::io;

/// `std::io::Read` over a `DiskFile` from a position, for `BufReader`.
pub(crate) struct FileReader<'a> {
    pub file: &'a dyn DiskFile,
    pub position: u64,
}

impl io::Read for FileReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.file.read_at(buffer, self.position)?;
        self.position += count as u64;
        Ok(count)
    }
}
