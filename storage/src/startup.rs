//! Start-up: rebuild the store's in-memory state from the data directory.

use crate::checkpoint::Checkpoint;
use crate::consume_queue::{index_recovered, IndexFiles, QueueIndex, TopicQueues};
use crate::disk::{Disk, DiskFile, OpenMode};
use crate::meta::load_topics;
use crate::recovery::{recover, RecoveryReport, Repair};
use crate::segment::SegmentSet;
use crate::store::StoreConfig;
use crate::StoreError;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// What recovery rebuilt from the CommitLog.
pub(crate) struct RecoveredLog {
    pub topics: BTreeMap<String, TopicQueues>,
    /// Store time of the newest record of each segment (for retention by age).
    pub segment_newest_ms: BTreeMap<u64, u64>,
    pub segment_paths: Vec<(u64, PathBuf)>,
    pub report: RecoveryReport,
    /// Idempotent producers' recent sequences, from the records.
    pub producers: crate::producers::Producers,
}

/// Verifies the log (truncating a torn tail) and rebuilds the queue indexes from it.
pub(crate) fn recover_log(
    disk: &dyn Disk,
    config: &StoreConfig,
    checkpoint: Option<Checkpoint>,
    own_writes: &crate::own_writes::OwnWrites,
) -> Result<RecoveredLog, StoreError> {
    let mut topics: BTreeMap<String, TopicQueues> = BTreeMap::new();
    let mut segment_newest_ms: BTreeMap<u64, u64> = BTreeMap::new();
    let mut producers = crate::producers::Producers::default();
    let on_record = |record: crate::recovery::RecoveredRecord| {
        let newest = segment_newest_ms.entry(record.segment_base).or_insert(0);
        *newest = (*newest).max(record.store_timestamp_ms);
        producers.record(
            record.producer_id,
            record.sequence,
            crate::producers::StoredAt {
                queue_id: record.queue_id,
                queue_offset: record.queue_offset,
                log_offset: record.log_offset,
                offset_end: record.log_offset + u64::from(record.size),
                message_crc: record.message_crc,
            },
        );
        index_recovered(&mut topics, record)
    };
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
        on_record,
    )?;
    report.clean_shutdown = checkpoint.is_some_and(|c| c.clean);
    Ok(RecoveredLog {
        topics,
        segment_newest_ms,
        segment_paths,
        report,
        producers,
    })
}

/// Adds the topics file's topics (queue counts, and each queue's first offset after
/// retention) to the topics rebuilt from the log.
pub(crate) fn apply_topics_file(
    disk: &dyn Disk,
    path: &std::path::Path,
    topics: &mut BTreeMap<String, TopicQueues>,
) -> Result<(), StoreError> {
    for (name, queues, firsts) in load_topics(disk, path)? {
        let topic = topics.entry(name).or_default();
        if topic.queues.len() < queues as usize {
            topic
                .queues
                .resize_with(queues as usize, QueueIndex::default);
        }
        for (queue, first) in topic.queues.iter_mut().zip(firsts) {
            crate::retention::apply_persisted_first(queue, first);
        }
    }
    Ok(())
}

/// Rewrites every ConsumeQueue file that disagrees with the rebuilt index.
pub(crate) fn reconcile_index_files(
    index_files: &mut IndexFiles,
    topics: &BTreeMap<String, TopicQueues>,
) -> Result<(), StoreError> {
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
