//! Topic configuration and committed consumer offsets, persisted by their own thread.
//!
//! Callers change the in-memory state and get a version number; the metadata thread
//! writes both files atomically and publishes the highest version on disk, so a reply
//! that promises durability (topic created, offset committed) waits for that version
//! without any caller touching the disk.

use crate::disk::Disk;
use crate::fs_util::{read_sealed, seal_text, write_atomic};
use crate::StoreError;
use keel_protocol::validate_topic;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

pub(crate) type OffsetKey = (String, String, u32);

pub(crate) struct Meta {
    pub topics_path: PathBuf,
    pub offsets_path: PathBuf,
    pub offsets: Mutex<BTreeMap<OffsetKey, u64>>,
    version: AtomicU64,
    persisted: AtomicU64,
    pub failed: AtomicBool,
    /// Why the last persist failed, while it is failing: (disk full?, message).
    pub failure: Mutex<Option<(bool, String)>>,
    wakeup: Condvar,
    /// Guards the wait; true once shutdown was asked.
    stop: Mutex<bool>,
}

impl Meta {
    pub(crate) fn new(
        topics_path: PathBuf,
        offsets_path: PathBuf,
        offsets: BTreeMap<OffsetKey, u64>,
    ) -> Meta {
        Meta {
            topics_path,
            offsets_path,
            offsets: Mutex::new(offsets),
            version: AtomicU64::new(0),
            persisted: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            wakeup: Condvar::new(),
            stop: Mutex::new(false),
        }
    }

    /// Records that state changed (call after changing it) and returns the version that
    /// covers the change.
    pub(crate) fn bump(&self) -> u64 {
        let version = self.version.fetch_add(1, Ordering::AcqRel) + 1;
        let _guard = self
            .stop
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        self.wakeup.notify_one();
        version
    }

    pub(crate) fn lock_offsets(&self) -> std::sync::MutexGuard<'_, BTreeMap<OffsetKey, u64>> {
        self.offsets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub(crate) fn lock_failure(&self) -> std::sync::MutexGuard<'_, Option<(bool, String)>> {
        self.failure
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub(crate) fn stop_requested(&self) -> bool {
        *self
            .stop
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Sleeps up to `pause` before a retry, returning early when shutdown is asked.
    pub(crate) fn pause_before_retry(&self, pause: std::time::Duration) {
        let stop = self
            .stop
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if !*stop {
            let _ = self.wakeup.wait_timeout(stop, pause);
        }
    }

    pub(crate) fn persisted(&self) -> u64 {
        self.persisted.load(Ordering::Acquire)
    }

    pub(crate) fn request_stop(&self) {
        *self
            .stop
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = true;
        self.wakeup.notify_one();
    }

    /// Waits until there is something to persist; returns the version to persist, or
    /// `None` when asked to stop and nothing is left.
    pub(crate) fn wait_for_work(&self) -> Option<u64> {
        let mut stop = self
            .stop
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        loop {
            let version = self.version.load(Ordering::Acquire);
            if version > self.persisted() {
                return Some(version);
            }
            if *stop {
                return None;
            }
            stop = self
                .wakeup
                .wait(stop)
                .unwrap_or_else(|poison| poison.into_inner());
        }
    }

    pub(crate) fn publish(&self, version: u64) {
        self.persisted.fetch_max(version, Ordering::AcqRel);
    }

    /// Writes the offsets file, then the topics file (each atomically): a topics file
    /// that records a deletion proves the offsets file no longer holds the topic's.
    pub(crate) fn write_files(
        &self,
        disk: &dyn Disk,
        topics: &[(String, Vec<u64>)],
        deleted: &BTreeMap<String, Vec<u64>>,
        offsets: &BTreeMap<OffsetKey, u64>,
    ) -> Result<(), StoreError> {
        let mut text = String::from("# keel consumer offsets v1: group topic queue offset\n");
        for ((group, topic, queue), offset) in offsets {
            text.push_str(&format!("{group} {topic} {queue} {offset}\n"));
        }
        write_atomic(disk, &self.offsets_path, &seal_text(text))?;
        let mut text = String::from(
            "# keel topics v1: name queues [first offset of each queue, after retention]\n\
             # and !name offset: the topic was deleted by the record at that log offset\n",
        );
        for (name, firsts) in topics {
            if firsts.iter().all(|first| *first == 0) {
                text.push_str(&format!("{name} {}\n", firsts.len()));
            } else {
                let firsts: Vec<String> = firsts.iter().map(u64::to_string).collect();
                text.push_str(&format!("{name} {} {}\n", firsts.len(), firsts.join(",")));
            }
        }
        for (name, offsets) in deleted {
            for at in offsets {
                text.push_str(&format!("{DELETED_MARK}{name} {at}\n"));
            }
        }
        write_atomic(disk, &self.topics_path, &seal_text(text))
    }
}

/// Starts a topics file line that records a deletion (no topic name has it).
const DELETED_MARK: char = '!';

/// What an operator can do about a damaged topics file.
const TOPICS_REMEDY: &str = "restore the file from a backup, or delete it to go on: topics are \
    rebuilt from the log, but a topic without messages is forgotten, a topic keeps only the \
    queues that hold messages, and a queue whose messages all expired restarts at offset 0";
/// What an operator can do about a damaged offsets file.
const OFFSETS_REMEDY: &str = "restore the file from a backup, or delete it to go on: every \
    consumer group then starts again from the first stored message (redelivery, no loss)";

fn bad_line(path: &Path, line: &str) -> StoreError {
    StoreError::Corruption {
        path: path.to_path_buf(),
        position: 0,
        detail: format!("unreadable line {line:?}"),
    }
}

/// A topic as the topics file stores it: name, queue count, each queue's first offset.
pub(crate) type TopicLine = (String, u32, Vec<u64>);

/// What the topics file holds: its topics, and the deleted topics with the log offsets
/// of their deletion records (oldest first).
#[derive(Debug, Default)]
pub(crate) struct TopicsFile {
    pub topics: Vec<TopicLine>,
    pub deleted: BTreeMap<String, Vec<u64>>,
}

impl TopicsFile {
    /// Each deleted topic's latest deletion.
    pub(crate) fn latest_deletions(&self) -> BTreeMap<String, u64> {
        self.deleted
            .iter()
            .filter_map(|(name, offsets)| Some((name.clone(), *offsets.iter().max()?)))
            .collect()
    }
}

pub(crate) fn load_topics(disk: &dyn Disk, path: &Path) -> Result<TopicsFile, StoreError> {
    let Some(body) = read_sealed(disk, path, TOPICS_REMEDY)? else {
        return Ok(TopicsFile::default());
    };
    let mut file = TopicsFile::default();
    for line in body
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
    {
        let mut fields = line.split(' ');
        let (Some(name), Some(queues), firsts, None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad_line(path, line));
        };
        if let Some(name) = name.strip_prefix(DELETED_MARK) {
            let (Ok(at), None, Ok(())) = (queues.parse(), firsts, validate_topic(name)) else {
                return Err(bad_line(path, line));
            };
            file.deleted.entry(name.to_string()).or_default().push(at);
            continue;
        }
        let queues: u32 = queues.parse().map_err(|_| bad_line(path, line))?;
        if queues > keel_protocol::QUEUES_MAX {
            return Err(bad_line(path, line));
        }
        let firsts: Vec<u64> = match firsts {
            None => vec![0; queues as usize],
            Some(list) => list
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| bad_line(path, line))?,
        };
        if firsts.len() != queues as usize {
            return Err(bad_line(path, line));
        }
        file.topics.push((name.to_string(), queues, firsts));
    }
    Ok(file)
}

pub(crate) fn load_offsets(
    disk: &dyn Disk,
    path: &Path,
) -> Result<BTreeMap<OffsetKey, u64>, StoreError> {
    let Some(body) = read_sealed(disk, path, OFFSETS_REMEDY)? else {
        return Ok(BTreeMap::new());
    };
    let mut offsets = BTreeMap::new();
    for line in body
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
    {
        let fields: Vec<&str> = line.split(' ').collect();
        let [group, topic, queue, offset] = fields[..] else {
            return Err(bad_line(path, line));
        };
        let queue = queue.parse().map_err(|_| bad_line(path, line))?;
        let offset = offset.parse().map_err(|_| bad_line(path, line))?;
        offsets.insert((group.to_string(), topic.to_string(), queue), offset);
    }
    Ok(offsets)
}
