//! Topics and committed consumer offsets: changed in memory by callers, persisted by
//! the metadata thread (`run_meta`), which callers wait on through version numbers.

use crate::consume_queue::TopicQueues;
use crate::store::Store;
use crate::StoreError;
use keel_protocol::{validate_topic, QUEUES_MAX};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The pseudo-topic under which a group's settings are kept in the offsets table: the
/// entry (`%SETTINGS%GROUP`, `%SETTINGS%`, 0) holds its flags.
pub const SETTINGS_TOPIC: &str = "%SETTINGS%";
/// Group flag: an ordered group (members consume each message group one at a time).
pub const GROUP_ORDERED: u64 = 1;

fn settings_key(group: &str) -> crate::meta::OffsetKey {
    (
        format!("{SETTINGS_TOPIC}{group}"),
        SETTINGS_TOPIC.to_string(),
        0,
    )
}

impl Store {
    /// Creates a topic. Returns its queue count, whether it was created now, and the
    /// metadata version that must be persisted before the creation is durable.
    pub fn create_topic(&self, name: &str, queues: u32) -> Result<(u32, bool, u64), StoreError> {
        self.make_topic(name, queues, false)
    }

    /// `create_topic` on a slave, for a topic its master has: the stream already put
    /// any deletion of the name before, so a pending one does not stand in the way.
    pub fn create_topic_from_master(
        &self,
        name: &str,
        queues: u32,
    ) -> Result<(u32, bool, u64), StoreError> {
        self.make_topic(name, queues, true)
    }

    fn make_topic(
        &self,
        name: &str,
        queues: u32,
        from_master: bool,
    ) -> Result<(u32, bool, u64), StoreError> {
        validate_topic(name).map_err(|detail| StoreError::InvalidTopic(detail.to_string()))?;
        if queues == 0 || queues > QUEUES_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "queue count {queues} is outside 1..={QUEUES_MAX}"
            )));
        }
        let mut state = self.lock_state();
        if let Some(topic) = state.catalog.topics.get(name) {
            let count = topic.queue_count();
            drop(state);
            return Ok((count, false, self.meta.bump()));
        }
        if !from_master && state.catalog.deletion_pending(name) {
            return Err(StoreError::TopicBeingDeleted(name.to_string()));
        }
        state
            .catalog
            .topics
            .insert(name.to_string(), TopicQueues::with_queues(queues));
        drop(state);
        Ok((queues, true, self.meta.bump()))
    }

    /// Grows topic `name` to `queues` queues. Returns its queue count, whether queues
    /// were added, and the metadata version that must be persisted before that is
    /// durable. Fewer queues than it has is refused: a queue holds messages.
    pub fn add_queues(&self, name: &str, queues: u32) -> Result<(u32, bool, u64), StoreError> {
        if queues == 0 || queues > QUEUES_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "queue count {queues} is outside 1..={QUEUES_MAX}"
            )));
        }
        let mut state = self.lock_state();
        let Some(topic) = state.catalog.topics.get_mut(name) else {
            return Err(StoreError::TopicNotFound(name.to_string()));
        };
        let count = topic.queue_count();
        if queues < count {
            return Err(StoreError::InvalidArgument(format!(
                "topic {name:?} has {count} queues; queues can be added, not removed (each \
                 holds messages)"
            )));
        }
        let added = queues > count;
        topic
            .queues
            .resize_with(queues as usize, crate::consume_queue::QueueIndex::default);
        drop(state);
        Ok((queues, added, self.meta.bump()))
    }

    /// Records that `group` has consumed `topic`/`queue_id` below `offset`. Returns the
    /// metadata version to wait for before telling the consumer it is durable.
    pub fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        offset: u64,
    ) -> Result<u64, StoreError> {
        validate_topic(group)
            .map_err(|detail| StoreError::InvalidTopic(format!("invalid group name: {detail}")))?;
        // The append lock is held until the offset is stored: a topic deleted meanwhile
        // (its offsets dropped under this lock) never gets it back.
        let state = self.lock_state();
        let queue = state.catalog.queue(topic, queue_id)?;
        if offset > queue.end() {
            return Err(StoreError::InvalidArgument(format!(
                "offset {offset} is past the end of {topic}/{queue_id} ({})",
                queue.end()
            )));
        }
        self.meta
            .lock_offsets()
            .insert((group.to_string(), topic.to_string(), queue_id), offset);
        drop(state);
        Ok(self.meta.bump())
    }

    /// Removes every committed offset of `group` (on every topic, and its dead-letter
    /// redrive position). Returns how many went, and the metadata version to wait for
    /// before saying it is durable.
    pub fn delete_group_offsets(&self, group: &str) -> (u32, u64) {
        let redrive = format!("%REDRIVE%{group}");
        let removed = {
            let mut offsets = self.meta.lock_offsets();
            let before = offsets.len();
            let settings = settings_key(group);
            offsets.retain(|key, _| key.0 != group && key.0 != redrive && *key != settings);
            before - offsets.len()
        };
        (u32::try_from(removed).unwrap_or(u32::MAX), self.meta.bump())
    }

    /// A consumer group's settings flags (`GROUP_ORDERED`, ...; 0 for a group never set).
    pub fn group_flags(&self, group: &str) -> u64 {
        self.meta
            .lock_offsets()
            .get(&settings_key(group))
            .copied()
            .unwrap_or(0)
    }

    /// Sets a consumer group's settings flags. Returns the metadata version to wait for
    /// before saying they are durable. They are kept with the committed offsets (same
    /// file, same fsync, the same META frame to slaves, deleted with the group).
    pub fn set_group_flags(&self, group: &str, flags: u64) -> Result<u64, StoreError> {
        validate_topic(group)
            .map_err(|detail| StoreError::InvalidTopic(format!("invalid group name: {detail}")))?;
        let mut offsets = self.meta.lock_offsets();
        match flags {
            0 => offsets.remove(&settings_key(group)),
            flags => offsets.insert(settings_key(group), flags),
        };
        drop(offsets);
        Ok(self.meta.bump())
    }

    pub fn query_offset(&self, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
        self.meta
            .lock_offsets()
            .get(&(group.to_string(), topic.to_string(), queue_id))
            .copied()
    }

    /// Every committed consumer offset: (group, topic, queue) -> offset.
    pub fn consumer_offsets(&self) -> Vec<(String, String, u32, u64)> {
        self.meta
            .lock_offsets()
            .iter()
            .map(|((group, topic, queue), offset)| (group.clone(), topic.clone(), *queue, *offset))
            .collect()
    }

    /// Slave side: takes the master's consumer offsets, all of them: they replace the
    /// local ones (a group deleted on the master is deleted here too). Offsets for
    /// queues this log does not have yet are kept anyway.
    pub fn apply_consumer_offsets(&self, offsets: &[(String, String, u32, u64)]) {
        let mut changed = false;
        {
            let mut ours = self.meta.lock_offsets();
            let theirs: std::collections::BTreeMap<_, _> = offsets
                .iter()
                .map(|(group, topic, queue, offset)| {
                    ((group.clone(), topic.clone(), *queue), *offset)
                })
                .collect();
            if *ours != theirs {
                *ours = theirs;
                changed = true;
            }
        }
        if changed {
            self.meta.bump();
        }
    }

    /// Highest metadata version (topics, offsets) that is on disk.
    pub fn meta_persisted(&self) -> u64 {
        self.meta.persisted()
    }

    /// While topics and offsets cannot be persisted: whether the disk is full, and why.
    pub fn meta_failure(&self) -> Option<(bool, String)> {
        if !self.meta.failed.load(Ordering::Acquire) {
            return None;
        }
        self.meta.lock_failure().clone()
    }

    /// The metadata thread: persists topics and offsets whenever their version moves.
    pub(crate) fn run_meta(&self) {
        while let Some(version) = self.meta.wait_for_work() {
            // Topics and deletions in one snapshot. A pending deletion's topic and
            // offsets are still written: until its record is on disk a crash brings the
            // topic back as it was.
            let (mut topics, deleted, pending_offsets): (Vec<(String, Vec<u64>)>, _, _) = {
                let state = self.lock_state();
                let deleted = state.catalog.deleted.clone();
                let pending_offsets: Vec<_> = state
                    .catalog
                    .pending
                    .iter()
                    .filter(|deletion| !state.catalog.topics.contains_key(&deletion.topic))
                    .flat_map(|deletion| deletion.offsets.iter().cloned())
                    .collect();
                let mut topics: Vec<(String, Vec<u64>)> = state.catalog.pending_topic_lines();
                topics.extend(state.catalog.topics.iter().map(|(name, topic)| {
                    (
                        name.clone(),
                        topic.queues.iter().map(|queue| queue.first).collect(),
                    )
                }));
                (topics, deleted, pending_offsets)
            };
            topics.sort();
            let mut offsets = self.meta.lock_offsets().clone();
            offsets.extend(pending_offsets);
            match self
                .meta
                .write_files(self.disk.as_ref(), &topics, &deleted, &offsets)
            {
                Ok(()) => self.meta.publish(version),
                Err(error) => {
                    let disk_full = matches!(&error, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull);
                    *self.meta.lock_failure() = Some((disk_full, error.to_string()));
                    self.meta.failed.store(true, Ordering::Release);
                    self.notify_listeners();
                    if self.meta.stop_requested() {
                        log::error!("persisting topics and offsets failed at shutdown: {error}");
                        return;
                    }
                    // Each attempt writes a whole new file and fsyncs it before the
                    // rename, so a later success does prove the new contents durable.
                    log::error!("persisting topics and offsets failed: {error}; retrying in 1 s");
                    self.meta.pause_before_retry(Duration::from_secs(1));
                    continue;
                }
            }
            self.meta.failed.store(false, Ordering::Release);
            *self.meta.lock_failure() = None;
            self.notify_listeners();
        }
    }
}
