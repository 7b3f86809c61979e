//! What the store knows about every stored record, in memory: each queue's index
//! entries, each segment's newest store time, and the idempotent producers' table.
//!
//! One routine, `Catalog::note`, files a record there, whether it was just appended, applied
//! from a master's stream, or found by recovery; so the three cannot drift apart.

use crate::consume_queue::{IndexEntry, IndexUpdate, QueueIndex, TopicQueues};
use crate::meta::OffsetKey;
use crate::producers::{Producers, StoredAt};
use crate::StoreError;
use keel_protocol::{Record, QUEUES_MAX, RECORD_FLAG_TOPIC_DELETED};
use std::collections::BTreeMap;

/// The facts of one stored record that the catalog keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordFacts<'a> {
    pub topic: &'a str,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub log_offset: u64,
    pub size: u32,
    pub tags_hash: u64,
    pub store_timestamp_ms: u64,
    pub producer_id: u64,
    pub sequence: u64,
    pub message_crc: u32,
    /// Base offset of the segment holding the record.
    pub segment_base: u64,
    /// The record deletes its topic (`RECORD_FLAG_TOPIC_DELETED`) instead of holding a
    /// message.
    pub deletes_topic: bool,
}

impl<'a> RecordFacts<'a> {
    /// The facts of a decoded record that sits in the segment starting at `segment_base`.
    pub(crate) fn of_record(record: &'a Record, segment_base: u64) -> RecordFacts<'a> {
        RecordFacts {
            topic: &record.topic,
            queue_id: record.queue_id,
            queue_offset: record.queue_offset,
            log_offset: record.log_offset,
            size: record.total_size,
            tags_hash: record.tags_hash(),
            store_timestamp_ms: record.store_timestamp_ms,
            producer_id: record.producer_id,
            sequence: record.sequence,
            message_crc: record.message_crc,
            segment_base,
            deletes_topic: record.flags & RECORD_FLAG_TOPIC_DELETED != 0,
        }
    }

    pub(crate) fn offset_end(&self) -> u64 {
        self.log_offset + u64::from(self.size)
    }

    /// The ConsumeQueue entry the flusher writes for the record (`topic` is the
    /// record's topic name, shared); for a topic's deletion, the order to remove its
    /// files.
    pub(crate) fn index_update(&self, topic: std::sync::Arc<str>) -> IndexUpdate {
        debug_assert_eq!(&*topic, self.topic);
        IndexUpdate {
            topic,
            queue_id: if self.deletes_topic {
                crate::consume_queue::DROP_TOPIC
            } else {
                self.queue_id
            },
            queue_offset: self.queue_offset,
            entry: self.index_entry(),
        }
    }

    pub(crate) fn index_entry(&self) -> IndexEntry {
        IndexEntry {
            log_offset: self.log_offset,
            size: self.size,
            tags_hash: self.tags_hash,
        }
    }
}

/// How a topic the catalog has not seen yet comes about.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NewTopic {
    /// It must exist already (a live append checked that).
    Known,
    /// With this many queues, grown to hold the record's queue (a master's stream).
    WithQueues(u32),
    /// Recovery: queues as the records show them; a queue's first record may start
    /// above offset 0 only when retention deleted the log's start (`log_start > 0`).
    Recovered { log_start: u64 },
}

#[derive(Default)]
pub(crate) struct Catalog {
    pub topics: BTreeMap<String, TopicQueues>,
    /// Store timestamp of the newest record of each segment, by base offset.
    pub segment_newest_ms: BTreeMap<u64, u64>,
    /// Idempotent producers' recent sequences.
    pub producers: Producers,
    /// Records in the log (the indexes' and the retired ones): a deletion does not
    /// lower it, a truncation does.
    pub records: u64,
    /// Deleted topics whose deletion record is durable: the log offsets of those
    /// records, oldest first (see `deletion.rs`). Written to the topics file.
    pub deleted: BTreeMap<String, Vec<u64>>,
    /// Deletions whose record may not be durable yet (undone if a disk-full rollback
    /// discards the record).
    pub pending: Vec<PendingDeletion>,
    /// Records still in the log that no queue holds (a deleted topic's, and deletion
    /// records), by deleted queue: replication proves a shared history by the record
    /// that ends where a log ends, whichever record that is.
    pub retired: Vec<Retired>,
}

/// The records of one queue of a deleted topic (or, with `queue_id == DROP_TOPIC`, the
/// deletion record itself), which the log still holds.
#[derive(Debug)]
pub(crate) struct Retired {
    pub topic: String,
    /// Log offset of the deletion record.
    pub deleted_at: u64,
    pub queue_id: u32,
    /// Queue offset of the first entry (of `entries[0]`, or where it would be).
    pub first: u64,
    /// In log order.
    pub entries: Vec<IndexEntry>,
}

/// A deletion whose record may not be durable yet.
#[derive(Debug)]
pub(crate) struct PendingDeletion {
    pub topic: String,
    pub at: u64,
    pub end: u64,
    /// The topic's committed offsets, put back if the deletion is undone.
    pub offsets: Vec<(OffsetKey, u64)>,
}

impl Catalog {
    /// Files one stored record. Returns whether a topic or queue was created for it.
    /// Refused (the catalog unchanged) when its queue id is beyond `QUEUES_MAX`, its
    /// topic is not known where it must be, or it does not continue its queue.
    pub(crate) fn note(&mut self, facts: &RecordFacts<'_>, new: NewTopic) -> Result<bool, String> {
        if facts.queue_id >= QUEUES_MAX {
            // A valid CRC does not make the id plausible: it sizes the queue table.
            return Err(format!(
                "record of {} names queue {}, beyond the {QUEUES_MAX} queues a topic may have",
                facts.topic, facts.queue_id
            ));
        }
        if facts.deletes_topic {
            let durable = matches!(new, NewTopic::Recovered { .. });
            self.delete_topic(facts, durable);
            self.note_store_time(facts);
            return Ok(true);
        }
        let mut created = false;
        let topic = match (self.topics.get_mut(facts.topic), new) {
            (Some(topic), _) => topic,
            (None, NewTopic::Known) => {
                return Err(format!("topic {:?} does not exist", facts.topic));
            }
            (None, NewTopic::WithQueues(queues)) => {
                created = true;
                self.topics
                    .entry(facts.topic.to_string())
                    .or_insert_with(|| TopicQueues::with_queues(queues))
            }
            (None, NewTopic::Recovered { .. }) => {
                self.topics.entry(facts.topic.to_string()).or_default()
            }
        };
        let index = facts.queue_id as usize;
        if topic.queues.len() <= index {
            if matches!(new, NewTopic::Known) {
                return Err(format!(
                    "queue {} does not exist in topic {:?}",
                    facts.queue_id, facts.topic
                ));
            }
            topic.queues.resize_with(index + 1, QueueIndex::default);
            created = true;
        }
        let Some(queue) = topic.queues.get_mut(index) else {
            unreachable!("queue {index} was just made")
        };
        if let NewTopic::Recovered { log_start } = new {
            if queue.entries.is_empty() && queue.first == 0 && log_start > 0 {
                queue.first = facts.queue_offset;
            }
        }
        if queue.end() != facts.queue_offset {
            return Err(format!(
                "record of {}/{} at log offset {} has queue offset {} where {} was expected",
                facts.topic,
                facts.queue_id,
                facts.log_offset,
                facts.queue_offset,
                queue.end()
            ));
        }
        queue.push(facts.index_entry());
        self.note_store_time(facts);
        self.producers.record(
            facts.producer_id,
            facts.sequence,
            StoredAt {
                queue_id: facts.queue_id,
                queue_offset: facts.queue_offset,
                log_offset: facts.log_offset,
                offset_end: facts.offset_end(),
                message_crc: facts.message_crc,
            },
        );
        self.records += 1;
        Ok(created)
    }

    fn note_store_time(&mut self, facts: &RecordFacts<'_>) {
        let newest = self
            .segment_newest_ms
            .entry(facts.segment_base)
            .or_insert(0);
        *newest = (*newest).max(facts.store_timestamp_ms);
    }

    /// Forgets every record at or after log offset `to` (cut from the log); returns
    /// how many went.
    pub(crate) fn forget_from(&mut self, to: u64) -> u64 {
        let mut dropped = 0u64;
        for topic in self.topics.values_mut() {
            for queue in &mut topic.queues {
                dropped += queue.pop_from(to);
            }
        }
        dropped += self.forget_retired_from(to);
        self.records = self.records.saturating_sub(dropped);
        self.producers.forget_from(to);
        dropped
    }

    /// The index of one queue, or why there is none.
    pub(crate) fn queue(&self, topic: &str, queue_id: u32) -> Result<&QueueIndex, StoreError> {
        let queues = self
            .topics
            .get(topic)
            .ok_or_else(|| StoreError::TopicNotFound(topic.to_string()))?;
        queues
            .queues
            .get(queue_id as usize)
            .ok_or_else(|| StoreError::InvalidQueueId {
                topic: topic.to_string(),
                queue_id,
                queues: queues.queue_count(),
            })
    }

    /// Whether some record ends exactly at log offset `end`.
    pub(crate) fn record_ends_at(&self, end: u64) -> Option<IndexEntry> {
        if let Some(entry) = self.retired_ending_at(end) {
            return Some(entry);
        }
        self.topics
            .values()
            .flat_map(|topic| topic.queues.iter())
            .find_map(|queue| entry_ending_at(&queue.entries, end))
    }
}

/// The entry of `entries` (in log order) that ends exactly at log offset `end`.
pub(crate) fn entry_ending_at(entries: &[IndexEntry], end: u64) -> Option<IndexEntry> {
    let index = entries.partition_point(|entry| entry.offset_end() < end);
    entries
        .get(index)
        .filter(|entry| entry.offset_end() == end)
        .copied()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The facts of a 10-byte record (tests).
    pub(crate) fn facts(
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
        log_offset: u64,
    ) -> RecordFacts<'_> {
        RecordFacts {
            topic,
            queue_id,
            queue_offset,
            log_offset,
            size: 10,
            tags_hash: 0,
            store_timestamp_ms: 5,
            producer_id: 0,
            sequence: 0,
            message_crc: 0,
            segment_base: 0,
            deletes_topic: false,
        }
    }

    #[test]
    fn records_are_filed_once_in_order_and_refused_otherwise() {
        let mut catalog = Catalog::default();
        assert!(catalog.note(&facts("t", 0, 0, 0), NewTopic::Known).is_err());
        assert!(catalog
            .note(&facts("t", 1, 0, 0), NewTopic::WithQueues(2))
            .unwrap());
        assert_eq!(catalog.topics["t"].queue_count(), 2);
        assert!(
            catalog
                .note(&facts("t", 1, 5, 10), NewTopic::Known)
                .is_err(),
            "a gap"
        );
        assert!(!catalog
            .note(&facts("t", 1, 1, 10), NewTopic::Known)
            .unwrap());
        assert!(catalog
            .note(&facts("t", u32::MAX, 0, 20), NewTopic::WithQueues(2))
            .is_err());
        assert_eq!(catalog.records, 2);
        assert_eq!(catalog.record_ends_at(20).map(|e| e.log_offset), Some(10));
        assert_eq!(catalog.forget_from(10), 1);
        assert_eq!(catalog.records, 1);
        let mut recovered = Catalog::default();
        recovered
            .note(
                &facts("r", 3, 7, 100),
                NewTopic::Recovered { log_start: 50 },
            )
            .unwrap();
        assert_eq!(recovered.topics["r"].queues[3].first, 7);
    }
}
