//! ConsumeQueues: per topic and queue, one 20-byte entry per record, derived from the
//! CommitLog. Kept in memory for reads and written to files (without fsync: they are
//! rebuilt from the CommitLog at every start).
//!
//! Entry layout: u64 log_offset, u32 size, u64 tags_hash, little-endian.

use crate::disk::{read_all, Disk, DiskFile, OpenMode};
use std::collections::HashMap;
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

/// One topic's queues in memory. Invariant: in each queue, entry `i` is the record with
/// queue offset `i`, and log offsets increase with `i`.
#[derive(Debug, Default)]
pub(crate) struct TopicQueues {
    pub queues: Vec<Vec<IndexEntry>>,
    /// Round-robin cursor for sends that let the broker pick the queue.
    pub next_queue: u32,
}

impl TopicQueues {
    pub(crate) fn with_queues(count: u32) -> TopicQueues {
        TopicQueues {
            queues: (0..count).map(|_| Vec::new()).collect(),
            next_queue: 0,
        }
    }

    pub(crate) fn queue_count(&self) -> u32 {
        u32::try_from(self.queues.len()).unwrap_or(u32::MAX)
    }
}

/// Adds a record found by recovery to the index of its queue. Queue offsets must follow
/// each other without gaps, in log order.
pub(crate) fn index_recovered(
    topics: &mut std::collections::BTreeMap<String, TopicQueues>,
    record: crate::recovery::RecoveredRecord,
) -> Result<(), String> {
    let topic = topics.entry(record.topic.clone()).or_default();
    let index = record.queue_id as usize;
    if topic.queues.len() <= index {
        topic.queues.resize_with(index + 1, Vec::new);
    }
    let queue = &mut topic.queues[index];
    if queue.len() as u64 != record.queue_offset {
        return Err(format!(
            "record of {}/{} has queue offset {} but {} records of that queue precede it",
            record.topic,
            record.queue_id,
            record.queue_offset,
            queue.len()
        ));
    }
    queue.push(IndexEntry {
        log_offset: record.log_offset,
        size: record.size,
        tags_hash: record.tags_hash,
    });
    Ok(())
}

/// An entry the flusher must write to a ConsumeQueue file.
pub(crate) struct IndexUpdate {
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub entry: IndexEntry,
}

/// The ConsumeQueue files, written by the flusher thread only.
pub(crate) struct IndexFiles {
    disk: Arc<dyn Disk>,
    root: PathBuf,
    open: HashMap<(String, u32), Arc<dyn DiskFile>>,
}

impl IndexFiles {
    pub(crate) fn new(disk: Arc<dyn Disk>, root: &Path) -> IndexFiles {
        IndexFiles {
            disk,
            root: root.to_path_buf(),
            open: HashMap::new(),
        }
    }

    fn path(&self, topic: &str, queue_id: u32) -> PathBuf {
        self.root
            .join(topic)
            .join(queue_id.to_string())
            .join(crate::segment::segment_file_name(0))
    }

    fn file(&mut self, topic: &str, queue_id: u32) -> io::Result<&Arc<dyn DiskFile>> {
        let key = (topic.to_string(), queue_id);
        if !self.open.contains_key(&key) {
            let path = self.path(topic, queue_id);
            if let Some(dir) = path.parent() {
                self.disk.create_dir_all(dir)?;
            }
            let file = self.disk.open(&path, OpenMode::Create)?;
            self.open.insert(key.clone(), file);
        }
        self.open
            .get(&key)
            .ok_or_else(|| io::Error::other("index file vanished"))
    }

    /// Writes a batch of entries, one `pwrite` per run of consecutive entries of a queue.
    pub(crate) fn write<'u>(
        &mut self,
        updates: impl IntoIterator<Item = &'u IndexUpdate>,
    ) -> io::Result<()> {
        let mut runs: HashMap<(&str, u32), (u64, Vec<u8>)> = HashMap::new();
        let mut order: Vec<(&str, u32)> = Vec::new();
        for update in updates {
            let key = (update.topic.as_str(), update.queue_id);
            let run = runs.entry(key).or_insert_with(|| {
                order.push(key);
                (update.queue_offset, Vec::new())
            });
            debug_assert_eq!(
                run.0 + (run.1.len() / INDEX_ENTRY_LEN) as u64,
                update.queue_offset
            );
            update.entry.encode(&mut run.1);
        }
        for key in order {
            let Some((first, bytes)) = runs.get(&key) else {
                continue;
            };
            let position = first * INDEX_ENTRY_LEN as u64;
            self.file(key.0, key.1)?.write_all_at(bytes, position)?;
        }
        Ok(())
    }

    /// Makes the file of one queue hold exactly `entries` (used after recovery).
    /// Returns whether it had to be rewritten.
    pub(crate) fn reconcile(
        &mut self,
        topic: &str,
        queue_id: u32,
        entries: &[IndexEntry],
    ) -> io::Result<bool> {
        let mut expected = Vec::with_capacity(entries.len() * INDEX_ENTRY_LEN);
        for entry in entries {
            entry.encode(&mut expected);
        }
        let path = self.path(topic, queue_id);
        let current = self
            .disk
            .open(&path, OpenMode::Read)
            .and_then(|file| read_all(file.as_ref()));
        if current.ok().as_deref() == Some(&expected[..]) {
            return Ok(false);
        }
        let file = self.file(topic, queue_id)?;
        file.set_len(0)?;
        file.write_all_at(&expected, 0)?;
        Ok(true)
    }
}
