//! ConsumeQueues: per topic and queue, one 20-byte entry per record, derived from the
//! CommitLog. Kept in memory for reads and written to files (without fsync: they are
//! rebuilt from the CommitLog at every start).
//!
//! Entry layout: u64 log_offset, u32 size, u64 tags_hash, little-endian.

use crate::disk::{read_all, Disk, DiskFile, OpenMode};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const INDEX_ENTRY_LEN: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub log_offset: u64,
    pub size: u32,
    pub tags_hash: u64,
}

impl IndexEntry {
    pub fn offset_end(&self) -> u64 {
        self.log_offset + u64::from(self.size)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.log_offset.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.tags_hash.to_le_bytes());
    }
}

/// One queue's index in memory.
///
/// Invariant: `entries[i]` is the record with queue offset `first + i`, and log offsets
/// increase with `i`. Queue offsets below `first` were deleted by retention.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct QueueIndex {
    pub first: u64,
    pub entries: Vec<IndexEntry>,
    /// The sum of `entries`' sizes: the bytes of the log this queue's records take.
    pub bytes: u64,
    /// Bytes of every record indexed since the store opened, retention not subtracted
    /// (only differences mean anything: rates).
    pub appended_bytes: u64,
}

impl QueueIndex {
    /// Adds the entry of the record at `end()`.
    pub(crate) fn push(&mut self, entry: IndexEntry) {
        self.bytes += u64::from(entry.size);
        self.appended_bytes += u64::from(entry.size);
        self.entries.push(entry);
    }

    /// Removes the first `count` entries.
    fn drop_first(&mut self, count: usize) {
        let gone: u64 = self
            .entries
            .iter()
            .take(count)
            .map(|entry| u64::from(entry.size))
            .sum();
        self.bytes -= gone;
        self.entries.drain(..count);
    }

    /// The queue offset the next record gets.
    pub(crate) fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// One past the last queue offset whose record ends at or below `durable`.
    pub(crate) fn durable_end(&self, durable: u64) -> u64 {
        self.first
            + self
                .entries
                .partition_point(|entry| entry.offset_end() <= durable) as u64
    }

    /// The entry of the record at `queue_offset`, if the index holds it.
    pub(crate) fn get(&self, queue_offset: u64) -> Option<IndexEntry> {
        let index = usize::try_from(queue_offset.checked_sub(self.first)?).ok()?;
        self.entries.get(index).copied()
    }

    /// The entries from `queue_offset` on (empty outside the index).
    pub(crate) fn from(&self, queue_offset: u64) -> &[IndexEntry] {
        let start = queue_offset
            .saturating_sub(self.first)
            .min(self.entries.len() as u64) as usize;
        self.entries.get(start..).unwrap_or_default()
    }

    /// Applies the queue's first offset from the topics file to the index rebuilt from
    /// the log: entries below it were expired by retention (their segments may outlive
    /// a crash between persisting the offset and deleting the files); a queue with no
    /// record left resumes at it.
    pub(crate) fn apply_persisted_first(&mut self, first: u64) {
        if first <= self.first {
            return;
        }
        let expired = (first - self.first).min(self.entries.len() as u64) as usize;
        self.drop_first(expired);
        self.first = first;
    }

    /// Drops the entries of records that start below `log_start`; returns how many.
    pub(crate) fn trim_before(&mut self, log_start: u64) -> u64 {
        let count = self
            .entries
            .partition_point(|entry| entry.log_offset < log_start);
        self.drop_first(count);
        self.first += count as u64;
        count as u64
    }

    /// Drops the entries of records at or after `log_offset` (never written); returns how many.
    pub(crate) fn pop_from(&mut self, log_offset: u64) -> u64 {
        let keep = self
            .entries
            .partition_point(|entry| entry.log_offset < log_offset);
        let count = self.entries.len() - keep;
        let gone: u64 = self
            .entries
            .iter()
            .skip(keep)
            .map(|entry| u64::from(entry.size))
            .sum();
        self.bytes -= gone;
        self.appended_bytes = self.appended_bytes.saturating_sub(gone);
        self.entries.truncate(keep);
        count as u64
    }
}

/// One topic's queues in memory.
#[derive(Debug, Default)]
pub(crate) struct TopicQueues {
    pub queues: Vec<QueueIndex>,
    /// Round-robin cursor for sends that let the broker pick the queue.
    pub next_queue: u32,
}

impl TopicQueues {
    pub(crate) fn with_queues(count: u32) -> TopicQueues {
        TopicQueues {
            queues: (0..count).map(|_| QueueIndex::default()).collect(),
            next_queue: 0,
        }
    }

    pub(crate) fn queue_count(&self) -> u32 {
        u32::try_from(self.queues.len()).unwrap_or(u32::MAX)
    }
}

/// The `queue_id` of an update that is no entry but a topic's deletion: the flusher
/// removes the topic's ConsumeQueue files, in order with the entries around it.
pub(crate) const DROP_TOPIC: u32 = u32::MAX;

/// An entry the flusher must write to a ConsumeQueue file.
pub(crate) struct IndexUpdate {
    /// Shared by the updates of one topic (no allocation per record).
    pub topic: std::sync::Arc<str>,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub entry: IndexEntry,
}

/// Consecutive entries of one queue, written with one `pwrite`.
struct Run<'u> {
    topic: &'u str,
    queue_id: u32,
    first: u64,
    bytes: Vec<u8>,
}

/// The ConsumeQueue files, written by the flusher thread only. Each queue has one
/// file, named by the queue offset of its first entry.
pub(crate) struct IndexFiles {
    disk: Arc<dyn Disk>,
    root: PathBuf,
    /// Open files by topic, then queue id.
    open: HashMap<String, HashMap<u32, OpenIndexFile>>,
}

/// An open ConsumeQueue file: the queue offset of its first entry, and the file.
type OpenIndexFile = (u64, Arc<dyn DiskFile>);

/// Directory of one queue's ConsumeQueue file.
pub(crate) fn index_dir(root: &Path, topic: &str, queue_id: u32) -> PathBuf {
    root.join(topic).join(queue_id.to_string())
}

impl IndexFiles {
    pub(crate) fn new(disk: Arc<dyn Disk>, root: &Path) -> IndexFiles {
        IndexFiles {
            disk,
            root: root.to_path_buf(),
            open: HashMap::new(),
        }
    }

    /// The queue's file and the queue offset it starts at, opening (or creating) it.
    fn file(&mut self, topic: &str, queue_id: u32) -> io::Result<(u64, Arc<dyn DiskFile>)> {
        if let Some((base, file)) = self
            .open
            .get(topic)
            .and_then(|queues| queues.get(&queue_id))
        {
            return Ok((*base, file.clone()));
        }
        let dir = index_dir(&self.root, topic, queue_id);
        self.disk.create_dir_all(&dir)?;
        let base = self
            .disk
            .list(&dir)?
            .iter()
            .filter_map(|name| crate::segment::parse_segment_file_name(name))
            .max()
            .unwrap_or(0);
        let file = self.disk.open(
            &dir.join(crate::segment::segment_file_name(base)),
            OpenMode::Create,
        )?;
        self.open
            .entry(topic.to_string())
            .or_default()
            .insert(queue_id, (base, file.clone()));
        Ok((base, file))
    }

    /// Writes a batch of entries, one `pwrite` per run of consecutive entries of a
    /// queue. A topic's deletion (`DROP_TOPIC`) removes its files after the entries
    /// before it and before those after it.
    pub(crate) fn write<'u>(
        &mut self,
        updates: impl IntoIterator<Item = &'u IndexUpdate>,
    ) -> io::Result<()> {
        // Runs in order of first appearance; a batch touches few queues, so they are
        // found by a short scan (from the last one used) rather than by hashing.
        let mut runs: Vec<Run<'u>> = Vec::new();
        let mut last = 0usize;
        for update in updates {
            if update.queue_id == DROP_TOPIC {
                self.write_runs(std::mem::take(&mut runs))?;
                last = 0;
                self.remove_topic(&update.topic)?;
                continue;
            }
            let same =
                |run: &Run<'_>| run.queue_id == update.queue_id && *run.topic == *update.topic;
            let found = match runs.get(last) {
                Some(run) if same(run) => Some(last),
                _ => runs.iter().position(same),
            };
            let index = found.unwrap_or_else(|| {
                runs.push(Run {
                    topic: &update.topic,
                    queue_id: update.queue_id,
                    first: update.queue_offset,
                    bytes: Vec::new(),
                });
                runs.len() - 1
            });
            last = index;
            let Some(run) = runs.get_mut(index) else {
                unreachable!("run {index} was just found or made")
            };
            debug_assert_eq!(
                run.first + (run.bytes.len() / INDEX_ENTRY_LEN) as u64,
                update.queue_offset
            );
            update.entry.encode(&mut run.bytes);
        }
        self.write_runs(runs)
    }

    fn write_runs(&mut self, runs: Vec<Run<'_>>) -> io::Result<()> {
        for run in runs {
            let (base, file) = self.file(run.topic, run.queue_id)?;
            if run.first >= base {
                file.write_all_at(&run.bytes, (run.first - base) * INDEX_ENTRY_LEN as u64)?;
            }
        }
        Ok(())
    }

    /// Removes every ConsumeQueue file of `topic` (a deleted topic; files only, the
    /// index of the log is the truth and is rebuilt at start-up).
    pub(crate) fn remove_topic(&mut self, topic: &str) -> io::Result<()> {
        self.open.remove(topic);
        let dir = self.root.join(topic);
        if !self.disk.is_dir(&dir) {
            return Ok(());
        }
        for queue in self.disk.list(&dir)? {
            let queue_dir = dir.join(&queue);
            if self.disk.is_dir(&queue_dir) {
                for file in self.disk.list(&queue_dir)? {
                    self.disk.remove_file(&queue_dir.join(file))?;
                }
                self.disk.remove_dir(&queue_dir)?;
            } else {
                self.disk.remove_file(&queue_dir)?;
            }
        }
        self.disk.remove_dir(&dir)
    }

    /// Removes the files of every topic not in `topics` (a topic deleted before a
    /// crash left them). Returns how many topics' files went.
    pub(crate) fn remove_other_topics(
        &mut self,
        topics: &BTreeMap<String, TopicQueues>,
    ) -> io::Result<usize> {
        let mut removed = 0;
        if !self.disk.is_dir(&self.root) {
            return Ok(0);
        }
        for name in self.disk.list(&self.root)? {
            if !topics.contains_key(&name) {
                self.remove_topic(&name)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Makes one queue's files hold exactly its index: a single file named by
    /// `queue.first`. Returns whether anything had to change.
    pub(crate) fn reconcile(
        &mut self,
        topic: &str,
        queue_id: u32,
        queue: &QueueIndex,
    ) -> io::Result<bool> {
        let mut expected = Vec::with_capacity(queue.entries.len() * INDEX_ENTRY_LEN);
        for entry in &queue.entries {
            entry.encode(&mut expected);
        }
        let dir = index_dir(&self.root, topic, queue_id);
        self.disk.create_dir_all(&dir)?;
        let name = crate::segment::segment_file_name(queue.first);
        let mut changed = false;
        for other in self
            .disk
            .list(&dir)?
            .into_iter()
            .filter(|other| *other != name)
        {
            self.disk.remove_file(&dir.join(other))?;
            changed = true;
        }
        if let Some(queues) = self.open.get_mut(topic) {
            queues.remove(&queue_id);
        }
        let path = dir.join(&name);
        // An empty queue needs no file (the flusher creates one with the first entry).
        if expected.is_empty() && !self.disk.exists(&path) {
            return Ok(changed);
        }
        let current = self
            .disk
            .open(&path, OpenMode::Read)
            .and_then(|file| read_all(file.as_ref()));
        if current.ok().as_deref() == Some(&expected[..]) {
            return Ok(changed);
        }
        let file = self.disk.open(&path, OpenMode::Create)?;
        file.set_len(0)?;
        file.write_all_at(&expected, 0)?;
        Ok(true)
    }
}

#[cfg(test)]
mod bytes_tests {
    use super::{IndexEntry, QueueIndex};

    fn entry(log_offset: u64, size: u32) -> IndexEntry {
        IndexEntry {
            log_offset,
            size,
            tags_hash: 0,
        }
    }

    #[test]
    fn a_queue_counts_the_bytes_of_the_entries_it_holds() {
        let mut queue = QueueIndex::default();
        let mut at = 0;
        for size in [100, 200, 300, 400, 500] {
            queue.push(entry(at, size));
            at += u64::from(size) * 2;
        }
        let held =
            |queue: &QueueIndex| -> u64 { queue.entries.iter().map(|e| u64::from(e.size)).sum() };
        assert_eq!(queue.bytes, 1500);
        assert_eq!(queue.trim_before(600), 2);
        assert_eq!((queue.bytes, held(&queue)), (1200, 1200));
        queue.apply_persisted_first(3);
        assert_eq!((queue.bytes, held(&queue)), (900, 900));
        assert_eq!(queue.pop_from(1800), 1);
        assert_eq!((queue.bytes, held(&queue)), (400, 400));
        // Rates count what came in, retention aside; a cut (never written) takes back.
        assert_eq!(queue.appended_bytes, 1000);
    }
}
