//! Start-up: rebuild the store's in-memory state from the data directory.

use crate::catalog::Catalog;
use crate::checkpoint::Checkpoint;
use crate::config::StoreConfig;
use crate::consume_queue::{IndexFiles, QueueIndex, TopicQueues};
use crate::disk::{Disk, DiskFile, OpenMode};
use crate::meta::TopicsFile;
use crate::recovery::{recover, RecoveryReport, Repair};
use crate::segment::SegmentSet;
use crate::StoreError;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// What recovery rebuilt from the CommitLog.
pub(crate) struct RecoveredLog {
    /// Every valid record, filed (queue indexes, segment times, producers).
    pub catalog: Catalog,
    pub segment_paths: Vec<(u64, PathBuf)>,
    pub report: RecoveryReport,
}

/// Verifies the log (truncating a torn tail) and rebuilds the queue indexes from it.
pub(crate) fn recover_log(
    disk: &dyn Disk,
    config: &StoreConfig,
    checkpoint: Option<Checkpoint>,
    own_writes: &crate::own_writes::OwnWrites,
) -> Result<RecoveredLog, StoreError> {
    let mut catalog = Catalog::default();
    let log_dir = config.data_dir.join("commitlog");
    let evidence = crate::recovery::Evidence {
        checkpoint: checkpoint.map(|c| c.offset_flushed),
        own_writes,
    };
    let (segment_paths, mut report) = recover(
        disk,
        &log_dir,
        evidence,
        config.max_record_bytes,
        Repair::TruncateTornTail,
        |record| record.file_in(&mut catalog),
    )?;
    report.clean_shutdown = checkpoint.is_some_and(|c| c.clean);
    Ok(RecoveredLog {
        catalog,
        segment_paths,
        report,
    })
}

/// Adds the topics file's topics (queue counts, and each queue's first offset after
/// retention) to the topics rebuilt from the log.
///
/// The log's deletion records decide what is deleted. The file's `!name offset` lines,
/// written only once such a record was fsynced, tell whether the file knew of the
/// deletion: when it does not, the file (and the offsets file, written before it)
/// predates the deletion: its line for the topic is the deleted topic's, left out, and
/// the names of such topics are returned so their consumer offsets are dropped too. A
/// line whose record the log does not hold (fsynced data lost, or cut by `keel admin
/// truncate`) is dropped: the topic's records are there again, and kept.
pub(crate) fn apply_topics_file(
    file: TopicsFile,
    catalog: &mut Catalog,
    log_start: u64,
) -> Vec<String> {
    let in_file = file.latest_deletions();
    let predates = |name: &str| match catalog.latest_deletion(name) {
        Some(in_log) => in_file.get(name).is_none_or(|known| *known < in_log),
        None => false,
    };
    let stale: Vec<String> = catalog
        .deleted
        .keys()
        .filter(|name| predates(name))
        .cloned()
        .collect();
    for (name, queues, firsts) in file.topics {
        if stale.contains(&name) {
            continue;
        }
        let topic = catalog.topics.entry(name).or_default();
        if topic.queues.len() < queues as usize {
            topic
                .queues
                .resize_with(queues as usize, QueueIndex::default);
        }
        for (queue, first) in topic.queues.iter_mut().zip(firsts) {
            queue.apply_persisted_first(first);
        }
    }
    for (name, offsets) in &file.deleted {
        let held = catalog.deleted.get(name);
        let lost = offsets
            .iter()
            .filter(|at| **at >= log_start && held.is_none_or(|held| !held.contains(at)))
            .count();
        if lost > 0 && catalog.topics.contains_key(name) {
            log::warn!(
                "the topics file says topic {name} was deleted, but the log does not hold \
                 that deletion: the topic's messages are kept"
            );
        }
    }
    stale
}

/// Rewrites every ConsumeQueue file that disagrees with the rebuilt index.
pub(crate) fn reconcile_index_files(
    index_files: &mut IndexFiles,
    topics: &BTreeMap<String, TopicQueues>,
) -> Result<(), StoreError> {
    let removed = index_files
        .remove_other_topics(topics)
        .map_err(|e| StoreError::io("remove a deleted topic's consume queue files", e))?;
    if removed > 0 {
        log::info!("removed the consume queue files of {removed} deleted topic(s)");
    }
    let mut rewritten = 0;
    for (name, topic) in topics {
        for (queue_id, queue) in topic.queues.iter().enumerate() {
            let changed = index_files.reconcile(name, queue_id as u32, queue);
            let changed = changed
                .map_err(|e| StoreError::io(format!("write consume queue {name}/{queue_id}"), e))?;
            rewritten += usize::from(changed);
        }
    }
    if rewritten > 0 {
        log::info!("rebuilt {rewritten} consume queue file(s) from the commit log");
    }
    Ok(())
}

pub(crate) type ActiveSegment = Option<(u64, Arc<dyn DiskFile>)>;

/// Opens every segment for reading (and the last for writing).
pub(crate) fn open_segments(
    disk: &dyn Disk,
    paths: &[(u64, PathBuf)],
) -> Result<(SegmentSet, ActiveSegment), StoreError> {
    let segments = SegmentSet::default();
    let mut active = None;
    for (base, path) in paths {
        let file = disk
            .open(path, OpenMode::ReadWrite)
            .map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
        segments.push(*base, file.clone());
        active = Some((*base, file));
    }
    Ok((segments, active))
}
