//! The controller's Raft log, vote and state machine on disk.
//!
//! - `raft-log`: records `u32 length | u32 crc32c | JSON entry`, appended and fsynced
//!   before openraft is told they are stored. At start, a record cut short or failing
//!   its CRC at the very end of the file is a torn tail (cut); a bad record followed by
//!   more bytes is damage, and the controller refuses to start.
//! - `raft-vote`, `raft-purged`, `raft-snapshot`: small files replaced atomically
//!   (written to a temporary name, fsynced, renamed, the directory fsynced), each with
//!   a CRC32C.
//!
//! The state machine lives in memory, rebuilt from the snapshot and the log's entries
//! that openraft applies again after a restart.

use crate::config::TypeConfig;
use crate::state::{Applied, Groups};
use keel_disk::{Disk, DiskFile, OpenMode};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{self, Cursor};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

type NodeId = u64;
type StoreResult<T> = Result<T, StorageError<NodeId>>;

/// Largest log record accepted when reading the log back.
const MAX_RECORD_BYTES: usize = 16 << 20;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn invalid(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail)
}

/// Replaces `path` with `value` as JSON behind a CRC32C line, durably.
fn save_sealed<T: Serialize>(disk: &dyn Disk, path: &Path, value: &T) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(|e| invalid(e.to_string()))?;
    let mut bytes = format!("{:08x}\n", crc32c::crc32c(&body)).into_bytes();
    bytes.extend_from_slice(&body);
    keel_disk::replace_atomically(disk, path, &bytes)
}

/// The whole file at `path`; `None` when it does not exist.
fn read_file(disk: &dyn Disk, path: &Path) -> io::Result<Option<Vec<u8>>> {
    match disk.open(path, OpenMode::Read) {
        Ok(file) => keel_disk::read_all(file.as_ref()).map(Some),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Reads what `save_sealed` wrote; `None` when the file does not exist.
fn load_sealed<T: for<'de> Deserialize<'de>>(
    disk: &dyn Disk,
    path: &Path,
) -> io::Result<Option<T>> {
    let Some(bytes) = read_file(disk, path)? else {
        return Ok(None);
    };
    let damaged = || invalid(format!("{} is damaged (CRC32C mismatch)", path.display()));
    let (crc, body) = bytes.split_at_checked(9).ok_or_else(damaged)?;
    let stored = crc
        .get(..8)
        .and_then(|hex| std::str::from_utf8(hex).ok())
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or_else(damaged)?;
    if stored != crc32c::crc32c(body) {
        return Err(damaged());
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| invalid(format!("{}: {e}", path.display())))
}

fn encode_record(entry: &Entry<TypeConfig>) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(entry).map_err(|e| invalid(e.to_string()))?;
    let length = u32::try_from(body.len()).map_err(|_| invalid("entry too large".into()))?;
    let mut record = Vec::with_capacity(8 + body.len());
    record.extend_from_slice(&length.to_le_bytes());
    record.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    record.extend_from_slice(&body);
    Ok(record)
}

/// The entries of a log file, and the length of its valid prefix.
fn read_log(disk: &dyn Disk, path: &Path) -> io::Result<(Vec<Entry<TypeConfig>>, u64)> {
    let Some(bytes) = read_file(disk, path)? else {
        return Ok((Vec::new(), 0));
    };
    let mut entries = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let header = at.checked_add(8).and_then(|end| bytes.get(at..end));
        let Some((length, stored)) = header.and_then(|header| {
            let (length, stored) = header.split_first_chunk::<4>()?;
            let stored: [u8; 4] = stored.try_into().ok()?;
            Some((
                u32::from_le_bytes(*length) as usize,
                u32::from_le_bytes(stored),
            ))
        }) else {
            break;
        };
        let end = at
            .checked_add(8)
            .and_then(|start| start.checked_add(length));
        let body = end.and_then(|end| bytes.get(at + 8..end));
        let good =
            length <= MAX_RECORD_BYTES && body.is_some_and(|body| crc32c::crc32c(body) == stored);
        if !good {
            // Torn: nothing valid could follow. Damage: a whole record's worth of bytes
            // follows the bad one.
            if end.is_some_and(|end| end < bytes.len()) && length <= MAX_RECORD_BYTES {
                return Err(invalid(format!(
                    "{}: the record at byte {at} is damaged (CRC32C mismatch) and more \
                     records follow it; refusing to start on a damaged Raft log",
                    path.display()
                )));
            }
            break;
        }
        let body = body.unwrap_or_default();
        let entry = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("{}: the record at byte {at}: {e}", path.display())))?;
        entries.push(entry);
        at = end.unwrap_or(bytes.len());
    }
    Ok((entries, at as u64))
}

struct LogInner {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    file: Arc<dyn DiskFile>,
    /// Where the next record is written: the end of the valid records.
    end: u64,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
}

impl LogInner {
    fn log_path(&self) -> PathBuf {
        self.dir.join("raft-log")
    }

    /// Writes the whole log anew (after a truncation or a purge), durably.
    fn rewrite(&mut self) -> io::Result<()> {
        let mut bytes = Vec::new();
        for entry in self.entries.values() {
            bytes.extend_from_slice(&encode_record(entry)?);
        }
        keel_disk::replace_atomically(self.disk.as_ref(), &self.log_path(), &bytes)?;
        self.file = self.disk.open(&self.log_path(), OpenMode::ReadWrite)?;
        self.end = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        Ok(())
    }

    /// Appends `entries` durably (written, then fdatasync'd) before they count.
    fn write_entries(&mut self, entries: Vec<Entry<TypeConfig>>) -> io::Result<()> {
        let mut bytes = Vec::new();
        for entry in &entries {
            bytes.extend(encode_record(entry)?);
        }
        self.file.write_all_at(&bytes, self.end)?;
        self.file.sync_data()?;
        self.end = self
            .end
            .saturating_add(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
        for entry in entries {
            self.entries.insert(entry.log_id.index, entry);
        }
        Ok(())
    }
}

/// The Raft log and vote. Cloned handles share one log.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        LogStore::open_on(Arc::new(keel_disk::RealDisk), dir)
    }

    /// `open` on `disk` (the crash sweep's simulated one).
    pub fn open_on(disk: Arc<dyn Disk>, dir: &Path) -> io::Result<LogStore> {
        // The directory's own entry made durable too: without it a crash soon after the
        // first start could take the directory, and the entries acknowledged in it.
        let made = !disk.is_dir(dir);
        disk.create_dir_all(dir)?;
        if made {
            if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                disk.sync_dir(parent)?;
            }
        }
        let path = dir.join("raft-log");
        let (entries, valid) = read_log(disk.as_ref(), &path)?;
        let existed = disk.exists(&path);
        let file = disk.open(&path, OpenMode::Create)?;
        if !existed {
            disk.sync_dir(dir)?;
        }
        if file.len()? > valid {
            log::warn!(
                "{}: cutting a torn tail after byte {valid} (an append that was never \
                 acknowledged)",
                path.display()
            );
            file.set_len(valid)?;
            file.sync_data()?;
        }
        let last_purged: Option<LogId<NodeId>> =
            load_sealed(disk.as_ref(), &dir.join("raft-purged"))?;
        let vote = load_sealed(disk.as_ref(), &dir.join("raft-vote"))?;
        let entries = entries
            .into_iter()
            .filter(|entry| last_purged.is_none_or(|purged| entry.log_id.index > purged.index))
            .map(|entry| (entry.log_id.index, entry))
            .collect();
        Ok(LogStore {
            inner: Arc::new(Mutex::new(LogInner {
                disk,
                dir: dir.to_path_buf(),
                file,
                end: valid,
                entries,
                last_purged,
                vote,
            })),
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let inner = lock(&self.inner);
        Ok(inner
            .entries
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let inner = lock(&self.inner);
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|entry| entry.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        let mut inner = lock(&self.inner);
        save_sealed(inner.disk.as_ref(), &inner.dir.join("raft-vote"), vote)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        Ok(lock(&self.inner).vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = lock(&self.inner);
        if let Err(error) = inner.write_entries(entries.into_iter().collect()) {
            let detail = error.to_string();
            callback.log_io_completed(Err(io::Error::new(error.kind(), detail)));
            return Err(StorageIOError::write_logs(&error).into());
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let mut inner = lock(&self.inner);
        inner.entries.retain(|index, _| *index < log_id.index);
        inner
            .rewrite()
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let mut inner = lock(&self.inner);
        save_sealed(inner.disk.as_ref(), &inner.dir.join("raft-purged"), &log_id)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        inner.last_purged = Some(log_id);
        inner.entries.retain(|index, _| *index > log_id.index);
        inner
            .rewrite()
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

/// The state the controller's decisions are read from, shared with the server.
#[derive(Debug, Default)]
pub struct MachineState {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    pub groups: Groups,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

#[derive(Clone)]
pub struct StateMachine {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    pub state: Arc<Mutex<MachineState>>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    groups: Groups,
}

impl StateMachine {
    pub fn open(dir: &Path) -> io::Result<StateMachine> {
        StateMachine::open_on(Arc::new(keel_disk::RealDisk), dir)
    }

    /// `open` on `disk`.
    pub fn open_on(disk: Arc<dyn Disk>, dir: &Path) -> io::Result<StateMachine> {
        let mut state = MachineState::default();
        let snapshot = load_sealed::<StoredSnapshot>(disk.as_ref(), &dir.join("raft-snapshot"))?;
        if let Some(snapshot) = snapshot {
            let body: SnapshotBody = serde_json::from_slice(&snapshot.data)
                .map_err(|e| invalid(format!("raft-snapshot: {e}")))?;
            state.last_applied = body.last_applied;
            state.membership = body.membership;
            state.groups = body.groups;
            state.snapshot = Some(snapshot);
        }
        Ok(StateMachine {
            disk,
            dir: dir.to_path_buf(),
            state: Arc::new(Mutex::new(state)),
        })
    }

    fn install(&self, snapshot: StoredSnapshot) -> io::Result<()> {
        let body: SnapshotBody = serde_json::from_slice(&snapshot.data)
            .map_err(|e| invalid(format!("snapshot: {e}")))?;
        save_sealed(
            self.disk.as_ref(),
            &self.dir.join("raft-snapshot"),
            &snapshot,
        )?;
        let mut state = lock(&self.state);
        state.last_applied = body.last_applied;
        state.membership = body.membership;
        state.groups = body.groups;
        state.snapshot = Some(snapshot);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let (meta, data) = {
            let mut state = lock(&self.state);
            let body = SnapshotBody {
                last_applied: state.last_applied,
                membership: state.membership.clone(),
                groups: state.groups.clone(),
            };
            let data =
                serde_json::to_vec(&body).map_err(|e| StorageIOError::read_state_machine(&e))?;
            state.snapshots_built += 1;
            let snapshot_id = match state.last_applied {
                Some(id) => format!(
                    "{}-{}-{}",
                    id.leader_id.term, id.index, state.snapshots_built
                ),
                None => format!("empty-{}", state.snapshots_built),
            };
            let meta = SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.membership.clone(),
                snapshot_id,
            };
            (meta, data)
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        save_sealed(self.disk.as_ref(), &self.dir.join("raft-snapshot"), &stored)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        lock(&self.state).snapshot = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, openraft::BasicNode>,
    )> {
        let state = lock(&self.state);
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = lock(&self.state);
        let mut answers = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => answers.push(Applied::Done),
                EntryPayload::Normal(command) => {
                    let applied = state.groups.apply(&command);
                    log::info!("controller applied {command:?}: {applied:?}");
                    answers.push(applied);
                }
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    answers.push(Applied::Done);
                }
            }
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        self.install(stored)
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        let state = lock(&self.state);
        Ok(state.snapshot.as_ref().map(|stored| Snapshot {
            meta: stored.meta.clone(),
            snapshot: Box::new(Cursor::new(stored.data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn write_log(dir: &Path, entries: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        for index in 1..=entries {
            bytes.extend(encode_record(&entry(index)).unwrap());
        }
        std::fs::write(dir.join("raft-log"), &bytes).unwrap();
        bytes
    }

    #[test]
    fn a_torn_tail_is_cut_and_damage_before_valid_records_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = write_log(dir.path(), 3);
        // Half a record at the end: an append that was never acknowledged.
        let mut torn = bytes.clone();
        torn.extend_from_slice(&encode_record(&entry(4)).unwrap()[..10]);
        std::fs::write(dir.path().join("raft-log"), &torn).unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(lock(&store.inner).entries.len(), 3);
        drop(store);
        assert_eq!(
            std::fs::metadata(dir.path().join("raft-log"))
                .unwrap()
                .len(),
            bytes.len() as u64
        );
        // A flipped byte in the first record, with two valid records after it.
        let mut damaged = bytes.clone();
        damaged[12] ^= 0x01;
        std::fs::write(dir.path().join("raft-log"), &damaged).unwrap();
        let error = LogStore::open(dir.path()).err().expect("refused");
        assert!(error.to_string().contains("damaged"), "{error}");
        // A flipped byte in the last record is a torn tail: cut.
        let mut last = bytes.clone();
        let end = last.len() - 2;
        last[end] ^= 0x01;
        std::fs::write(dir.path().join("raft-log"), &last).unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(lock(&store.inner).entries.len(), 2);
    }

    #[test]
    fn a_damaged_vote_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-vote");
        let disk = keel_disk::RealDisk;
        save_sealed(&disk, &path, &Vote::<NodeId>::new(3, 1)).unwrap();
        let vote: Option<Vote<NodeId>> = load_sealed(&disk, &path).unwrap();
        assert_eq!(vote, Some(Vote::new(3, 1)));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert!(load_sealed::<Vote<NodeId>>(&disk, &path).is_err());
    }

    /// The Raft log through every crash point of its appends and a rewrite: after the
    /// restart it opens, holds every append that returned (was acknowledged to Raft), and
    /// its entries are a prefix of what was written, in order.
    #[test]
    fn a_crash_at_any_point_keeps_every_acknowledged_entry() {
        use keel_disk::sim::{SimDisk, TailShape};
        let dir = Path::new("/raft");
        for step in 1u64.. {
            let disk = SimDisk::new();
            disk.create_dir_all(Path::new("/")).unwrap();
            let store = LogStore::open_on(Arc::new(disk.clone()), dir).unwrap();
            let from = disk.operations();
            disk.crash_at(from + step, TailShape::Torn, step);
            let mut acknowledged = 0u64;
            let mut truncated = false;
            {
                let mut inner = lock(&store.inner);
                for index in 1..=6 {
                    if inner.write_entries(vec![entry(index)]).is_err() {
                        break;
                    }
                    acknowledged = index;
                }
                if acknowledged == 6 {
                    // A truncation rewrites the file: keep 1..=4.
                    inner.entries.retain(|index, _| *index < 5);
                    truncated = inner.rewrite().is_ok();
                }
            }
            let crashed = disk.crashed();
            let restarted = disk.after_crash(TailShape::Torn, step);
            let reopened = LogStore::open_on(Arc::new(restarted), dir)
                .unwrap_or_else(|error| panic!("step {step}: the log does not open: {error}"));
            let indexes: Vec<u64> = lock(&reopened.inner).entries.keys().copied().collect();
            let prefix = |n: u64| (1..=n).collect::<Vec<u64>>();
            if truncated {
                assert_eq!(
                    indexes,
                    prefix(4),
                    "step {step}: the truncation was acknowledged"
                );
            } else if acknowledged == 6 {
                // A rewrite cut short: the old file or the new one, whole.
                assert!(
                    indexes == prefix(6) || indexes == prefix(4),
                    "step {step}: {indexes:?}"
                );
            } else {
                let n = indexes.len() as u64;
                assert_eq!(indexes, prefix(n), "step {step}: not a prefix");
                assert!(
                    n >= acknowledged,
                    "step {step}: {acknowledged} acknowledged, {indexes:?}"
                );
            }
            if !crashed {
                assert!(step > 6, "the appends took {step} operations");
                return;
            }
        }
    }
}
