//! Group membership: heartbeats report the queues held and take what the broker
//! grants; a queue taken away is let go once finished and committed; where a new queue
//! starts; and which broker (the master, or a slave while it is unreachable) serves.

use super::driver::Driver;
use super::model::{QueueKey, QueueState, StartFrom};
use crate::connection::{Connection, ConnectionOptions};
use crate::{ClientError, Endpoint};
use keel_protocol::{
    HeartbeatRequest, ListTopicsRequest, OffsetForTimeRequest, QueryOffsetRequest, Request,
    Response,
};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Connects to the first address that answers; returns it and its index.
pub(super) fn connect_first(
    addresses: &[Endpoint],
    options: &ConnectionOptions,
) -> Result<(Connection, usize), ClientError> {
    let mut last = ClientError::InvalidArgument("no broker address".into());
    for (index, address) in addresses.iter().enumerate() {
        match Connection::connect(address.clone(), options) {
            Ok(connection) => return Ok((connection, index)),
            Err(error) => last = error,
        }
    }
    Err(last)
}

impl Driver {
    /// Heartbeats each topic; takes up granted queues, lets go of revoked ones.
    pub(super) fn heartbeat(&mut self) -> Result<(), ClientError> {
        self.read_settings()?;
        // The broker clamps a session timeout to 300 s: the lease never outlives that.
        let lease = self.options.session_timeout.min(Duration::from_secs(300)) * 3 / 4;
        for topic_index in 0..self.topics.len() {
            let sent = Instant::now();
            let owned: Vec<u32> = self
                .queues
                .keys()
                .filter(|(t, _)| *t == topic_index)
                .map(|(_, q)| *q)
                .collect();
            let request = Request::Heartbeat(HeartbeatRequest {
                group: self.group.clone(),
                topic: self.topics[topic_index].clone(),
                member_id: self.member_id.clone(),
                session_timeout_ms: self.options.session_timeout.as_millis() as u32,
                owned: owned.clone(),
            });
            let assignment = match self.call(request)? {
                Response::Assignment(assignment) => assignment,
                other => {
                    return Err(ClientError::Protocol(format!(
                        "{} in reply to HEARTBEAT",
                        other.kind().name()
                    )))
                }
            };
            if self.stop.load(Ordering::Acquire) {
                continue;
            }
            let granted: BTreeSet<u32> = assignment.queues.iter().copied().collect();
            for queue_id in owned {
                if !granted.contains(&queue_id) {
                    let key = (topic_index, queue_id);
                    if self.queues.get(&key).is_some_and(|q| !q.revoked) {
                        log::info!(
                            "consumer {}: queue {queue_id} of {} moves to another member",
                            self.member_id,
                            self.topics[topic_index]
                        );
                    }
                    self.set_revoked(key, true);
                }
            }
            for queue_id in granted {
                let key = (topic_index, queue_id);
                match self.queues.get(&key) {
                    // Let go to be taken again in the group's new mode.
                    Some(queue) if queue.ordered != self.ordered => {}
                    Some(_) => self.set_revoked(key, false),
                    None => {
                        let start = self.start_offset(topic_index, queue_id)?;
                        self.queues
                            .insert(key, QueueState::new(start, self.ordered));
                    }
                }
                if let Some(queue) = self.queues.get_mut(&key) {
                    queue.lease_until = sent + lease;
                }
                self.dispatch_ordered(key);
            }
        }
        self.release_revoked();
        Ok(())
    }

    /// Whether the group is ordered, as the broker says now. A change lets every
    /// queue go (what is with the workers finishes and is committed) to be taken again
    /// in the new mode. Not knowing fails the heartbeat: a member that cannot tell
    /// whether its group is ordered takes no queue.
    fn read_settings(&mut self) -> Result<(), ClientError> {
        let request = Request::GroupSettings {
            group: self.group.clone(),
            ordered: None,
        };
        let settings = match self.call(request)? {
            Response::GroupSettings(settings) => settings,
            other => {
                return Err(ClientError::Protocol(format!(
                    "{} in reply to GROUP_SETTINGS",
                    other.kind().name()
                )))
            }
        };
        if settings.ordered != self.ordered {
            log::info!(
                "consumer {}: group {} is {}",
                self.member_id,
                self.group,
                if settings.ordered {
                    "ordered"
                } else {
                    "no longer ordered"
                }
            );
            self.ordered = settings.ordered;
            let keys: Vec<QueueKey> = self.queues.keys().copied().collect();
            for key in keys {
                self.set_revoked(key, true);
            }
        }
        Ok(())
    }

    /// Marks a queue taken away (or given back): workers skip (or run) its jobs.
    pub(super) fn set_revoked(&mut self, key: QueueKey, revoked: bool) {
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        if queue.revoked == revoked {
            return;
        }
        queue.revoked = revoked;
        if revoked {
            self.let_go_of_lines(key);
        }
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        if !revoked && !queue.skipped.is_empty() {
            if queue.ordered {
                // Kept after all: each message group left behind fetches again from its
                // first message left, with its own pulls; what others finished stays
                // finished.
                for (name, from) in std::mem::take(&mut queue.resume) {
                    let line = queue.lines.entry(name).or_default();
                    line.parked_from = Some(line.parked_from.map_or(from, |at| at.min(from)));
                }
            } else {
                // Kept after all: fetch the skipped messages again (and what followed).
                queue.next_pull = queue.commit_point();
            }
            queue.skipped.clear();
        }
        let mut set = self
            .revoked
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if revoked {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }

    pub(super) fn forget(&mut self, key: QueueKey) {
        self.queues.remove(&key);
        self.revoked
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(&key);
    }

    /// Revoked queues with nothing in flight: commit and forget (the next heartbeat
    /// reports them let go).
    pub(super) fn release_revoked(&mut self) {
        // A pull still in flight does not hold a queue back: its answer finds the queue
        // gone and is dropped.
        let done: Vec<QueueKey> = self
            .queues
            .iter()
            .filter(|(_, queue)| queue.revoked && queue.in_flight.is_empty())
            .map(|(key, _)| *key)
            .collect();
        if done.is_empty() {
            return;
        }
        for key in done {
            self.commit(key);
            self.forget(key);
        }
        // Tell the broker now, so the new owner can start.
        self.heartbeat_due = Instant::now();
    }

    /// The group's committed offset, or where `start_from` says for a new group.
    pub(super) fn start_offset(
        &self,
        topic_index: usize,
        queue_id: u32,
    ) -> Result<u64, ClientError> {
        let topic = &self.topics[topic_index];
        let query = Request::QueryOffset(QueryOffsetRequest {
            group: self.group.clone(),
            topic: topic.clone(),
            queue_id,
        });
        if let Response::Offset(Some(offset)) = self.call(query)? {
            return Ok(offset);
        }
        // A retry topic is the group's own: all of it is for this group. And
        // `start_from` is where a new *group* starts: a queue added to a topic the group
        // already consumes (it committed on another queue) is read from its start, or
        // what was sent to it before this member saw it would be skipped.
        let group_exists = || -> Result<bool, ClientError> {
            Ok(match self.call(Request::ListGroups(self.group.clone()))? {
                Response::GroupList(groups) => groups
                    .iter()
                    .any(|info| info.topic == *topic && !info.queues.is_empty()),
                _ => false,
            })
        };
        let start_from = if topic_index != 0
            || self.options.start_from == StartFrom::Earliest
            || group_exists()?
        {
            StartFrom::Earliest
        } else {
            self.options.start_from
        };
        let list = Request::ListTopics(ListTopicsRequest {
            topic: topic.clone(),
        });
        let bounds = match self.call(list)? {
            Response::TopicList(topics) => topics
                .into_iter()
                .find(|info| info.topic == *topic)
                .and_then(|info| info.queues.get(queue_id as usize).copied()),
            _ => None,
        };
        let Some(bounds) = bounds else {
            return Ok(0);
        };
        Ok(match start_from {
            StartFrom::Earliest => bounds.min_offset,
            StartFrom::Latest => bounds.max_offset,
            StartFrom::Timestamp(timestamp_ms) => {
                let request = Request::OffsetForTime(OffsetForTimeRequest {
                    topic: topic.clone(),
                    queue_id,
                    timestamp_ms,
                });
                match self.call(request)? {
                    Response::Offset(Some(offset)) => offset,
                    _ => bounds.min_offset,
                }
            }
        })
    }

    /// A new connection when the current one died (the master first, then its
    /// slaves), or back to the master once it answers again.
    pub(super) fn reconnect_if_needed(&mut self) {
        let back_to_primary = self.current > 0 && Instant::now() >= self.primary_retry_due;
        if !self.connection.is_closed() && !back_to_primary {
            return;
        }
        if back_to_primary {
            self.primary_retry_due = Instant::now() + self.options.primary_retry;
            if !self.connection.is_closed() {
                let primary =
                    Connection::connect(self.addresses[0].clone(), &self.options.connection);
                if let Ok(connection) = primary {
                    self.switch(connection, 0);
                }
                return;
            }
        }
        let now = Instant::now();
        if now < self.reconnect_due {
            return;
        }
        match connect_first(&self.addresses, &self.options.connection) {
            Ok((connection, index)) => {
                self.reconnect_delay = super::driver::RECONNECT_MIN;
                self.switch(connection, index)
            }
            Err(error) => {
                // Said once per doubling of the wait, then every RECONNECT_MAX: a broker
                // that is down does not flood the log.
                log::warn!(
                    "consumer {}: reconnect failed: {error}; next try in {} ms",
                    self.member_id,
                    self.reconnect_delay.as_millis()
                );
                self.reconnect_due = now + self.reconnect_delay;
                self.reconnect_delay = (self.reconnect_delay * 2).min(super::driver::RECONNECT_MAX);
            }
        }
    }

    pub(super) fn switch(&mut self, connection: Connection, index: usize) {
        if index != self.current {
            log::warn!(
                "consumer {}: now reading from {} ({})",
                self.member_id,
                self.addresses[index],
                if index == 0 {
                    "the broker"
                } else {
                    "a slave: its master is unreachable"
                }
            );
        }
        // Pulls in flight on the old connection end through their callbacks.
        self.connection = connection;
        self.current = index;
        self.heartbeat_due = Instant::now();
        for queue in self.queues.values_mut() {
            queue.pulling = false;
        }
    }
}
