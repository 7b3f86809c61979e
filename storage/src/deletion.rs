//! Deleted topics in the catalog.
//!
//! A topic is deleted by a record in the log (`RECORD_FLAG_TOPIC_DELETED`): recovery and
//! slaves drop the topic where they meet it, so every copy of the log agrees. Around it:
//!
//! - While the record may not be durable, the deletion is *pending*: the topic's
//!   records are kept aside (`Retired`) with its offsets, so a disk-full rollback that
//!   discards the record puts the topic back as it was, and the metadata written
//!   meanwhile still holds the topic and its offsets (a crash before the record is on
//!   disk finds it as it was). A master refuses to make the topic again meanwhile.
//! - Once the record is fsynced the deletion *settles*: its offset joins `deleted`,
//!   which the topics file holds as `!name offset` lines. A line is thus never written
//!   for a record that is not on disk, and a topics file without the line predates the
//!   deletion (recovery then ignores the file's line for the topic and its offsets).
//! - The deleted records stay findable by their end (`retired_ending_at`) while the
//!   log holds them: replication proves a shared history by the record that ends
//!   where a log ends.

use crate::catalog::{Catalog, PendingDeletion, RecordFacts, Retired};
use crate::consume_queue::{IndexEntry, QueueIndex, TopicQueues, DROP_TOPIC};
use crate::meta::OffsetKey;

impl Catalog {
    /// Files the deletion record `facts`: the topic and its records go (retired). A
    /// record found by recovery is durable; otherwise the deletion is pending.
    pub(crate) fn delete_topic(&mut self, facts: &RecordFacts<'_>, durable: bool) {
        let (name, at) = (facts.topic, facts.log_offset);
        if let Some(topic) = self.topics.remove(name) {
            // `records` counts the log's records (a counter of appends): a deletion does
            // not lower it.
            for (queue_id, queue) in topic.queues.into_iter().enumerate() {
                // Kept even when empty while pending: an undo restores every queue.
                if !queue.entries.is_empty() || !durable {
                    self.retired.push(Retired {
                        topic: name.to_string(),
                        deleted_at: at,
                        queue_id: queue_id as u32,
                        first: queue.first,
                        entries: queue.entries,
                    });
                }
            }
        }
        self.retired.push(Retired {
            topic: name.to_string(),
            deleted_at: at,
            queue_id: DROP_TOPIC,
            first: 0,
            entries: vec![facts.index_entry()],
        });
        if durable {
            self.note_deleted(name, at);
        } else {
            self.pending.push(PendingDeletion {
                topic: name.to_string(),
                at,
                end: facts.offset_end(),
                offsets: Vec::new(),
            });
        }
    }

    /// The topics of the pending deletions as the topics file had them (name, first
    /// offset of each queue), for the metadata written while they are pending: a crash
    /// before the record is on disk finds the topic as it was. A name made again (on a
    /// slave) is left to its new topic.
    pub(crate) fn pending_topic_lines(&self) -> Vec<(String, Vec<u64>)> {
        let mut lines = Vec::new();
        for deletion in &self.pending {
            if self.topics.contains_key(&deletion.topic) {
                continue;
            }
            let mut firsts: Vec<u64> = Vec::new();
            for retired in self.retired.iter().filter(|r| {
                r.topic == deletion.topic && r.deleted_at == deletion.at && r.queue_id != DROP_TOPIC
            }) {
                let slot = retired.queue_id as usize;
                if firsts.len() <= slot {
                    firsts.resize(slot + 1, 0);
                }
                if let Some(first) = firsts.get_mut(slot) {
                    *first = retired.first;
                }
            }
            if !firsts.is_empty() {
                lines.push((deletion.topic.clone(), firsts));
            }
        }
        lines
    }

    /// Gives the newest pending deletion the offsets its topic had.
    pub(crate) fn note_pending_offsets(&mut self, offsets: Vec<(OffsetKey, u64)>) {
        if let Some(pending) = self.pending.last_mut() {
            pending.offsets = offsets;
        }
    }

    /// Adds a durable deletion of `name` at `at` to `deleted`.
    pub(crate) fn note_deleted(&mut self, name: &str, at: u64) {
        let offsets = self.deleted.entry(name.to_string()).or_default();
        if let Err(index) = offsets.binary_search(&at) {
            offsets.insert(index, at);
        }
    }

    /// The log offset of the latest durable deletion of `name`.
    pub(crate) fn latest_deletion(&self, name: &str) -> Option<u64> {
        self.deleted
            .get(name)
            .and_then(|offsets| offsets.last().copied())
    }

    /// Whether a deletion of `name` is pending (a master does not make it again
    /// before that deletion is durable).
    pub(crate) fn deletion_pending(&self, name: &str) -> bool {
        self.pending.iter().any(|pending| pending.topic == name)
    }

    /// Settles the pending deletions whose record is fsynced (below `flushed`).
    /// Returns whether any settled.
    pub(crate) fn settle_deletions(&mut self, flushed: u64) -> bool {
        let (settled, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|pending| pending.end <= flushed);
        self.pending = pending;
        for deletion in &settled {
            self.note_deleted(&deletion.topic, deletion.at);
        }
        !settled.is_empty()
    }

    /// A disk-full rollback discards every append from `to`: each pending deletion
    /// among them is undone, its topic put back (its records below `to`; the caller
    /// cuts the rest with `forget_from`). Returns the undone deletions, whose offsets
    /// the caller puts back.
    pub(crate) fn undo_deletions_from(&mut self, to: u64) -> Vec<PendingDeletion> {
        let (mut undone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|pending| pending.at >= to);
        self.pending = kept;
        // Newest first: of two deletions of a topic, the older one's topic is the one
        // that was there before both.
        undone.sort_by_key(|deletion| std::cmp::Reverse(deletion.at));
        for deletion in &undone {
            let mut topic = TopicQueues::default();
            let mut index = 0;
            while let Some(retired) = self.retired.get(index) {
                if retired.topic != deletion.topic || retired.deleted_at != deletion.at {
                    index += 1;
                    continue;
                }
                let retired = self.retired.swap_remove(index);
                if retired.queue_id == DROP_TOPIC {
                    continue;
                }
                let slot = retired.queue_id as usize;
                if topic.queues.len() <= slot {
                    topic.queues.resize_with(slot + 1, QueueIndex::default);
                }
                let mut queue = QueueIndex {
                    first: retired.first,
                    ..QueueIndex::default()
                };
                for entry in retired.entries {
                    queue.push(entry);
                }
                if let Some(place) = topic.queues.get_mut(slot) {
                    *place = queue;
                }
            }
            if topic.queues.is_empty() {
                // The deletion of a topic this log never had (a slave's): nothing to
                // put back.
                continue;
            }
            // A topic of the name made on a slave after the discarded deletion was
            // discarded with it.
            if let Some(replaced) = self.topics.insert(deletion.topic.clone(), topic) {
                let gone: usize = replaced.queues.iter().map(|q| q.entries.len()).sum();
                self.records = self.records.saturating_sub(gone as u64);
            }
        }
        undone
    }

    /// Forgets retired records at or after `to` (cut from the log), and the deleted
    /// queues whose deletion record went with them. Returns how many records went.
    pub(crate) fn forget_retired_from(&mut self, to: u64) -> u64 {
        let mut dropped = 0u64;
        self.retired.retain_mut(|retired| {
            let keep = retired.entries.partition_point(|e| e.log_offset < to);
            if retired.queue_id != DROP_TOPIC {
                dropped += (retired.entries.len() - keep) as u64;
            }
            retired.entries.truncate(keep);
            retired.deleted_at < to
        });
        dropped
    }

    /// Forgets retired records below `log_start` (retention deleted them).
    pub(crate) fn forget_retired_before(&mut self, log_start: u64) {
        self.retired.retain_mut(|retired| {
            let gone = retired
                .entries
                .partition_point(|e| e.log_offset < log_start);
            retired.entries.drain(..gone);
            retired.first += gone as u64;
            !retired.entries.is_empty() || retired.deleted_at >= log_start
        });
    }

    /// The retired record that ends at log offset `end`, if one does.
    pub(crate) fn retired_ending_at(&self, end: u64) -> Option<IndexEntry> {
        self.retired
            .iter()
            .find_map(|retired| crate::catalog::entry_ending_at(&retired.entries, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::NewTopic;

    fn facts(topic: &str, queue_offset: u64, log_offset: u64, deletes: bool) -> RecordFacts<'_> {
        RecordFacts {
            deletes_topic: deletes,
            ..crate::catalog::tests::facts(topic, 0, queue_offset, log_offset)
        }
    }

    #[test]
    fn a_pending_deletion_settles_when_fsynced_or_is_undone_by_a_rollback() {
        let mut catalog = Catalog::default();
        for index in 0..3 {
            let record = facts("t", index, index * 10, false);
            catalog.note(&record, NewTopic::WithQueues(2)).unwrap();
        }
        catalog
            .note(&facts("t", 0, 30, true), NewTopic::Known)
            .unwrap();
        assert!(catalog.topics.is_empty());
        assert_eq!(
            catalog.records, 3,
            "a counter of the log's records: not lowered"
        );
        assert!(catalog.deletion_pending("t"));
        assert_eq!(
            catalog.retired_ending_at(20).map(|e| e.log_offset),
            Some(10)
        );
        assert_eq!(
            catalog.retired_ending_at(40).map(|e| e.log_offset),
            Some(30)
        );
        assert!(
            !catalog.settle_deletions(35),
            "the record is not all fsynced"
        );

        // Discarded from 25: the topic comes back with its records below 25 and both
        // queues; the cut record goes with forget_from.
        let undone = catalog.undo_deletions_from(25);
        assert_eq!(undone.len(), 1);
        catalog.forget_from(25);
        assert_eq!(catalog.topics["t"].queue_count(), 2);
        assert_eq!(catalog.topics["t"].queues[0].end(), 3);
        assert_eq!(catalog.records, 3);
        assert!(catalog.retired.is_empty() && catalog.pending.is_empty());

        catalog
            .note(&facts("t", 0, 30, true), NewTopic::Known)
            .unwrap();
        assert!(catalog.settle_deletions(40));
        assert_eq!(catalog.latest_deletion("t"), Some(30));
        assert!(
            catalog.undo_deletions_from(0).is_empty(),
            "settled: for good"
        );
        catalog.forget_retired_before(15);
        assert_eq!(catalog.retired_ending_at(20), None, "retention took it");
        assert_eq!(
            catalog.retired_ending_at(30).map(|e| e.log_offset),
            Some(20)
        );
        catalog.forget_retired_from(30);
        assert_eq!(catalog.retired_ending_at(40), None, "a truncation took it");
        assert!(catalog.retired.is_empty());
    }

    fn three_records_then_deleted_at(catalog: &mut Catalog, topic: &str, from: u64) {
        for index in 0..3 {
            let record = facts(topic, index, from + index * 10, false);
            catalog.note(&record, NewTopic::WithQueues(1)).unwrap();
        }
        catalog
            .note(&facts(topic, 0, from + 30, true), NewTopic::Known)
            .unwrap();
    }

    #[test]
    fn an_undone_deletion_puts_back_the_topic_that_was_there_before_it() {
        // Retention took the first record while the deletion was pending: the queue
        // comes back starting at offset 1, its other records where they were.
        let mut catalog = Catalog::default();
        three_records_then_deleted_at(&mut catalog, "t", 0);
        assert_eq!(
            catalog.pending_topic_lines(),
            vec![("t".to_string(), vec![0])]
        );
        catalog.forget_retired_before(10);
        catalog.undo_deletions_from(30);
        let queue = &catalog.topics["t"].queues[0];
        assert_eq!((queue.first, queue.end()), (1, 3));
        assert_eq!(queue.get(1).map(|e| e.log_offset), Some(10));

        // Two pending deletions of a topic made again between them (a slave), both
        // discarded: the topic from before the first comes back.
        let mut catalog = Catalog::default();
        three_records_then_deleted_at(&mut catalog, "t", 0);
        catalog
            .note(&facts("t", 0, 40, false), NewTopic::WithQueues(1))
            .unwrap();
        catalog
            .note(&facts("t", 0, 50, true), NewTopic::Known)
            .unwrap();
        catalog.undo_deletions_from(30);
        catalog.forget_from(30);
        assert_eq!(catalog.topics["t"].queues[0].end(), 3);
        assert_eq!(catalog.records, 3);

        // The deletion of a topic this log never had: nothing comes back.
        let mut catalog = Catalog::default();
        catalog
            .note(&facts("never", 0, 0, true), NewTopic::WithQueues(1))
            .unwrap();
        catalog.undo_deletions_from(0);
        assert!(catalog.topics.is_empty());
    }
}
