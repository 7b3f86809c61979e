//! A simulated disk for crash and fault tests (the model behind redb's `CrashBackend`
//! and LazyFS, a filesystem that forgets unsynced writes; docs/TESTING.md).
//!
//! Each file has a *live* image (what reads see) and a *durable* image (what survives a
//! crash): `sync_data` copies live to durable for that file; directory entries (creates,
//! renames, removes) become durable only on `sync_dir` of their directory. A crash keeps
//! the durable state, plus optionally a damaged piece of what was written but not synced
//! (`TailShape`). Faults: fail the n-th write or fsync with EIO or ENOSPC, or cap the
//! capacity so writes run out of space. After a failed fsync the data it covered is
//! lost even if a later fsync succeeds, as on Linux ("fsyncgate").

use crate::{Disk, DiskFile, OpenMode};
use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// What a crash leaves of bytes written after the last fsync of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailShape {
    /// Nothing: the file ends where it was last fsynced.
    Clean,
    /// A random-length prefix of the unsynced bytes.
    Torn,
    /// A random length of zeros (the size reached disk, the data did not).
    Zeros,
    /// A random length of random bytes.
    Garbage,
    /// All unsynced bytes, with random 4 KiB pages of them zeroed (out-of-order writeback).
    Holes,
}

impl TailShape {
    pub const ALL: [TailShape; 5] = [
        TailShape::Clean,
        TailShape::Torn,
        TailShape::Zeros,
        TailShape::Garbage,
        TailShape::Holes,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Eio,
    Enospc,
}

impl Fault {
    fn error(self) -> io::Error {
        match self {
            Fault::Eio => io::Error::from_raw_os_error(5),
            Fault::Enospc => io::Error::from_raw_os_error(28),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Dir,
    File(usize),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Ranges whose data a failed fsync dropped: never made durable afterwards.
    lost: Vec<(usize, usize)>,
}

#[derive(Default)]
struct SimState {
    inodes: Vec<Inode>,
    live: BTreeMap<PathBuf, Node>,
    durable: BTreeMap<PathBuf, Node>,
    operations: u64,
    crash_at: Option<(u64, TailShape, u64)>,
    image: Option<(BTreeMap<PathBuf, Node>, Vec<Inode>)>,
    writes: u64,
    syncs: u64,
    write_faults: Vec<(u64, Fault)>,
    sync_faults: Vec<(u64, Fault)>,
    capacity: Option<u64>,
    locks: HashSet<PathBuf>,
}

impl SimState {
    /// Inode `index`: every index the simulator hands out is one of its inodes.
    fn inode(&self, index: usize) -> &Inode {
        self.inodes
            .get(index)
            .unwrap_or_else(|| unreachable!("inode {index} of {}", self.inodes.len()))
    }

    fn inode_mut(&mut self, index: usize) -> &mut Inode {
        let count = self.inodes.len();
        self.inodes
            .get_mut(index)
            .unwrap_or_else(|| unreachable!("inode {index} of {count}"))
    }
}

/// A deterministic generator for crash shapes (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        if bound == 0 {
            0
        } else {
            (self.next() % bound as u64) as usize
        }
    }
}

fn is_root(path: &Path) -> bool {
    path.as_os_str().is_empty() || path == Path::new("/")
}

impl SimState {
    fn dir_exists(&self, path: &Path) -> bool {
        is_root(path) || self.live.get(path) == Some(&Node::Dir)
    }

    /// Counts a mutating operation; fails everything from the crash point on.
    fn tick(&mut self) -> io::Result<()> {
        if self.image.is_some() {
            return Err(io::Error::other("simulated crash: the disk is gone"));
        }
        self.operations += 1;
        if let Some((at, shape, seed)) = self.crash_at {
            if self.operations >= at {
                self.image = Some(self.crash_image(shape, seed));
                return Err(io::Error::other("simulated crash: the disk is gone"));
            }
        }
        Ok(())
    }

    fn crash_image(&self, shape: TailShape, seed: u64) -> (BTreeMap<PathBuf, Node>, Vec<Inode>) {
        let mut rng = Rng(seed | 1);
        let mut entries = BTreeMap::new();
        let mut inodes = Vec::new();
        for (path, node) in &self.durable {
            let reachable = path
                .ancestors()
                .skip(1)
                .all(|dir| is_root(dir) || self.durable.get(dir) == Some(&Node::Dir));
            if !reachable {
                continue;
            }
            let Node::File(index) = node else {
                entries.insert(path.clone(), Node::Dir);
                continue;
            };
            let inode = self.inode(*index);
            let mut bytes = inode.durable.clone();
            let unsynced = inode.live.get(bytes.len()..).unwrap_or_default();
            let cut = rng.below(unsynced.len() + 1);
            match shape {
                TailShape::Clean => {}
                TailShape::Torn => bytes.extend_from_slice(unsynced.get(..cut).unwrap_or_default()),
                TailShape::Zeros => bytes.resize(bytes.len() + cut, 0),
                TailShape::Garbage => bytes.extend((0..cut).map(|_| rng.next() as u8)),
                TailShape::Holes => {
                    let start = bytes.len();
                    bytes.extend_from_slice(unsynced);
                    let mut page = start - start % 4096;
                    while page < bytes.len() {
                        if rng.below(3) == 0 {
                            let end = (page + 4096).min(bytes.len());
                            if let Some(hole) = bytes.get_mut(page.max(start)..end) {
                                hole.fill(0);
                            }
                        }
                        page += 4096;
                    }
                }
            }
            inodes.push(Inode {
                live: bytes.clone(),
                durable: bytes,
                lost: Vec::new(),
            });
            entries.insert(path.clone(), Node::File(inodes.len() - 1));
        }
        (entries, inodes)
    }

    fn live_bytes(&self) -> u64 {
        let linked: HashSet<usize> = self
            .live
            .values()
            .filter_map(|node| match node {
                Node::File(index) => Some(*index),
                Node::Dir => None,
            })
            .collect();
        linked
            .iter()
            .map(|index| self.inode(*index).live.len() as u64)
            .sum()
    }

    fn fault(faults: &[(u64, Fault)], count: u64) -> Option<Fault> {
        faults
            .iter()
            .find(|(nth, _)| *nth == count)
            .map(|(_, fault)| *fault)
    }
}

/// The simulated disk. Cheap to share: clones see the same state.
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn lock_state(&self) -> MutexGuard<'_, SimState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Crash at the `operation`-th mutating operation (1-based): it and everything after
    /// fail, and the crash image is taken with `shape` (random parts from `seed`).
    pub fn crash_at(&self, operation: u64, shape: TailShape, seed: u64) {
        self.lock_state().crash_at = Some((operation, shape, seed));
    }

    /// Fails the `nth` write (1-based, counted from now on) with `fault`.
    pub fn fail_write(&self, nth: u64, fault: Fault) {
        let mut state = self.lock_state();
        let at = state.writes + nth;
        state.write_faults.push((at, fault));
    }

    /// Fails the `nth` file fsync (1-based, counted from now on) with `fault`.
    pub fn fail_sync(&self, nth: u64, fault: Fault) {
        let mut state = self.lock_state();
        let at = state.syncs + nth;
        state.sync_faults.push((at, fault));
    }

    /// Limits the bytes all files may hold; writes past it fail with ENOSPC (after
    /// writing what fits, as a short write would). `None` removes the limit.
    pub fn set_capacity(&self, capacity: Option<u64>) {
        self.lock_state().capacity = capacity;
    }

    /// Mutating operations so far.
    pub fn operations(&self) -> u64 {
        self.lock_state().operations
    }

    pub fn crashed(&self) -> bool {
        self.lock_state().image.is_some()
    }

    /// The disk as a restarted machine sees it: the crash image if a crash happened,
    /// else a crash now with `shape`.
    pub fn after_crash(&self, shape: TailShape, seed: u64) -> SimDisk {
        let state = self.lock_state();
        let (entries, inodes) = state
            .image
            .clone()
            .unwrap_or_else(|| state.crash_image(shape, seed));
        SimDisk {
            state: Arc::new(Mutex::new(SimState {
                inodes,
                durable: entries.clone(),
                live: entries,
                ..SimState::default()
            })),
        }
    }

    /// Live contents of a file (for tests that inspect or damage it).
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock_state();
        match state.live.get(path) {
            Some(Node::File(index)) => Some(state.inode(*index).live.clone()),
            _ => None,
        }
    }

    /// Replaces a file's contents, live and durable (damage done "on the platter").
    pub fn write_durable(&self, path: &Path, bytes: &[u8]) {
        let mut state = self.lock_state();
        if let Some(Node::File(index)) = state.live.get(path).copied() {
            let inode = state.inode_mut(index);
            inode.live = bytes.to_vec();
            inode.durable = bytes.to_vec();
        }
    }
}

struct SimFile {
    disk: SimDisk,
    inode: usize,
    writable: bool,
}

impl DiskFile for SimFile {
    fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
        let state = self.disk.lock_state();
        let live = &state.inode(self.inode).live;
        let start = (offset as usize).min(live.len());
        let available = live.get(start..).unwrap_or_default();
        let count = buffer.len().min(available.len());
        for (into, from) in buffer.iter_mut().zip(available) {
            *into = *from;
        }
        Ok(count)
    }

    fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        let mut state = self.disk.lock_state();
        state.tick()?;
        state.writes += 1;
        if let Some(fault) = SimState::fault(&state.write_faults, state.writes) {
            return Err(fault.error());
        }
        let start = offset as usize;
        let mut end = start + bytes.len();
        let mut short = false;
        if let Some(capacity) = state.capacity {
            let current = state.inode(self.inode).live.len();
            let growth = end.saturating_sub(current) as u64;
            let room = capacity.saturating_sub(state.live_bytes());
            if growth > room {
                end = (current.max(start) + room as usize).min(end);
                short = true;
            }
        }
        let inode = state.inode_mut(self.inode);
        if inode.live.len() < end {
            inode.live.resize(end, 0);
        }
        if let Some(written) = inode.live.get_mut(start..end) {
            for (into, from) in written.iter_mut().zip(bytes) {
                *into = *from;
            }
        }
        if short {
            return Err(Fault::Enospc.error());
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.disk.lock_state();
        state.tick()?;
        state.syncs += 1;
        let fault = SimState::fault(&state.sync_faults, state.syncs);
        let inode = state.inode_mut(self.inode);
        if let Some(fault) = fault {
            // The kernel drops the dirty data and reports the error once.
            let start = inode.durable.len().min(inode.live.len());
            inode.lost.push((start, inode.live.len()));
            return Err(fault.error());
        }
        let mut durable = inode.live.clone();
        for (start, end) in &inode.lost {
            let end = (*end).min(durable.len());
            let start = (*start).min(end);
            let old = inode
                .durable
                .get(start..end.min(inode.durable.len()))
                .unwrap_or_default()
                .to_vec();
            if let Some(lost) = durable.get_mut(start..end) {
                lost.fill(0);
                for (into, from) in lost.iter_mut().zip(&old) {
                    *into = *from;
                }
            }
        }
        inode.durable = durable;
        Ok(())
    }

    fn set_len(&self, length: u64) -> io::Result<()> {
        let mut state = self.disk.lock_state();
        state.tick()?;
        state.inode_mut(self.inode).live.resize(length as usize, 0);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.disk.lock_state().inode(self.inode).live.len() as u64)
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} does not exist", path.display()),
    )
}

impl Disk for SimDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>> {
        let mut state = self.lock_state();
        let existing = state.live.get(path).copied();
        let inode = match (existing, mode) {
            (Some(Node::Dir), _) => {
                return Err(io::Error::other(format!(
                    "{} is a directory",
                    path.display()
                )))
            }
            (Some(Node::File(_)), OpenMode::CreateNew) => {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists))
            }
            (Some(Node::File(index)), _) => index,
            (None, OpenMode::Read | OpenMode::ReadWrite) => return Err(not_found(path)),
            (None, OpenMode::Create | OpenMode::CreateNew) => {
                if !path.parent().is_none_or(|parent| state.dir_exists(parent)) {
                    return Err(not_found(path));
                }
                state.tick()?;
                state.inodes.push(Inode::default());
                let index = state.inodes.len() - 1;
                state.live.insert(path.to_path_buf(), Node::File(index));
                index
            }
        };
        Ok(Arc::new(SimFile {
            disk: self.clone(),
            inode,
            writable: mode != OpenMode::Read,
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock_state();
        if !state.dir_exists(dir) {
            return Err(not_found(dir));
        }
        let names = state
            .live
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| {
                path.file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .collect();
        Ok(names)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock_state();
        let missing: Vec<PathBuf> = dir
            .ancestors()
            .filter(|path| !state.dir_exists(path))
            .map(Path::to_path_buf)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        state.tick()?;
        for path in missing {
            if matches!(state.live.get(&path), Some(Node::File(_))) {
                return Err(io::Error::other(format!("{} is a file", path.display())));
            }
            state.live.insert(path, Node::Dir);
        }
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.lock_state().dir_exists(path)
    }

    fn exists(&self, path: &Path) -> bool {
        let state = self.lock_state();
        is_root(path) || state.live.contains_key(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock_state();
        if !state.dir_exists(dir) {
            return Err(not_found(dir));
        }
        state.tick()?;
        let state = &mut *state;
        state.durable.retain(|path, _| path.parent() != Some(dir));
        for (path, node) in &state.live {
            if path.parent() == Some(dir) {
                state.durable.insert(path.clone(), *node);
            }
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock_state();
        let node = *state.live.get(from).ok_or_else(|| not_found(from))?;
        state.tick()?;
        state.live.remove(from);
        state.live.insert(to.to_path_buf(), node);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock_state();
        match state.live.get(path) {
            Some(Node::File(_)) => {}
            _ => return Err(not_found(path)),
        }
        state.tick()?;
        state.live.remove(path);
        Ok(())
    }

    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock_state();
        if state.live.get(dir) != Some(&Node::Dir) {
            return Err(not_found(dir));
        }
        if state.live.keys().any(|path| path.parent() == Some(dir)) {
            return Err(io::Error::other(format!("{} is not empty", dir.display())));
        }
        state.tick()?;
        state.live.remove(dir);
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let mut state = self.lock_state();
        if !state.locks.insert(path.to_path_buf()) {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        Ok(Box::new(SimLock {
            disk: self.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn free_bytes(&self, _dir: &Path) -> io::Result<u64> {
        let state = self.lock_state();
        Ok(state.capacity.map_or(u64::MAX, |capacity| {
            capacity.saturating_sub(state.live_bytes())
        }))
    }
}

struct SimLock {
    disk: SimDisk,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.disk.lock_state().locks.remove(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_data_and_unsynced_creates_vanish_in_a_crash() {
        let disk = SimDisk::new();
        disk.create_dir_all(Path::new("/d")).unwrap();
        disk.sync_dir(Path::new("/")).unwrap();
        let kept = disk
            .open(Path::new("/d/kept"), OpenMode::CreateNew)
            .unwrap();
        disk.sync_dir(Path::new("/d")).unwrap();
        kept.write_all_at(b"durable", 0).unwrap();
        kept.sync_data().unwrap();
        kept.write_all_at(b" and not", 7).unwrap();
        let lost = disk
            .open(Path::new("/d/lost"), OpenMode::CreateNew)
            .unwrap();
        lost.write_all_at(b"never named durably", 0).unwrap();
        lost.sync_data().unwrap();
        let after = disk.after_crash(TailShape::Clean, 1);
        assert_eq!(after.read(Path::new("/d/kept")).unwrap(), b"durable");
        assert_eq!(after.read(Path::new("/d/lost")), None);
        let torn = disk
            .after_crash(TailShape::Torn, 7)
            .read(Path::new("/d/kept"))
            .unwrap();
        assert!(torn.starts_with(b"durable") && torn.len() <= 15);
    }

    #[test]
    fn a_failed_fsync_loses_its_data_even_if_a_later_fsync_succeeds() {
        let disk = SimDisk::new();
        let file = disk.open(Path::new("/f"), OpenMode::CreateNew).unwrap();
        disk.sync_dir(Path::new("/")).unwrap();
        file.write_all_at(b"aaaa", 0).unwrap();
        disk.fail_sync(1, Fault::Eio);
        assert!(file.sync_data().is_err());
        file.sync_data().unwrap();
        assert_eq!(
            disk.after_crash(TailShape::Clean, 1)
                .read(Path::new("/f"))
                .unwrap(),
            [0, 0, 0, 0]
        );
    }

    #[test]
    fn capacity_gives_short_writes_and_enospc() {
        let disk = SimDisk::new();
        disk.set_capacity(Some(10));
        let file = disk.open(Path::new("/f"), OpenMode::CreateNew).unwrap();
        let error = file.write_all_at(&[1u8; 16], 0).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(28));
        assert_eq!(file.len().unwrap(), 10);
        assert_eq!(disk.free_bytes(Path::new("/")).unwrap(), 0);
    }
}
