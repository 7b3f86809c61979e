//! Ordered consumer groups: per queue, one message of each message group at a time.
//!
//! The broker puts every message of a message group in one queue and gives a queue to
//! one member at a time; here, each message group of a queue has a line: its fetched
//! messages wait in queue order, and the next one goes to a worker only once the one
//! before it is finished (handled, or dead-lettered). Message groups do not wait for
//! each other: a slow one holds up only its own line.
//!
//! - **Bounded waiting.** A line keeps at most `max_buffered_per_message_group`
//!   messages. Past that, the group is *parked*: the queue's pulls leave its messages on
//!   the broker and go on for the others, and the group's own pulls fetch them again
//!   (from where it was parked) as its line drains, until they reach the queue's pulls
//!   and the group rejoins them. The committed offset never passes a parked group's
//!   first message left behind.
//! - **Retries in place.** A failed message is handled again after
//!   `ordered_retry_delay`, at the head of its line; after `max_reconsume_times`
//!   failures it goes to the group's dead-letter topic and the line moves on.
//! - **Fenced.** A worker starts a message only while this member's lease on the queue
//!   holds (3/4 of the session timeout after the last heartbeat that granted it was
//!   sent; the broker gives the queue away a whole timeout after it received it), so a
//!   member cut off from the broker stops starting messages before another member can
//!   be given the queue. A failed heartbeat or a lost connection ends every lease at
//!   once (the broker may have restarted or failed over and lost who held what); the
//!   next granting heartbeat renews them.

use super::driver::Driver;
use super::handling::{delivery_of, matches_filter};
use super::model::{Delivery, Event, Job, Lease, QueueKey};
use crate::ClientError;
use keel_protocol::names::property::MESSAGE_GROUP;
use keel_protocol::{PullRequest, PullStatus, Request, Response};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a parked group whose pull failed waits before the next.
const CATCH_UP_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);
/// How long it waits when its offset has expired (reported; an operator moves it).
const EXPIRED_BACKOFF: std::time::Duration = std::time::Duration::from_secs(30);

/// The line a message belongs to: its message group; messages without one share the
/// line "" (ordered by their queue, as a whole).
pub(super) fn line_of(delivery: &Delivery) -> String {
    delivery
        .record
        .property(MESSAGE_GROUP)
        .unwrap_or_default()
        .to_string()
}

impl Driver {
    /// Takes a message fetched by the queue's pulls into its line, or leaves it on the
    /// broker when its group is parked or its line is full.
    pub(super) fn accept_ordered(&mut self, key: QueueKey, delivery: Delivery) {
        let limit = self.options.max_buffered_per_message_group.max(1);
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        let offset = delivery.record.queue_offset;
        let line = queue.lines.entry(line_of(&delivery)).or_default();
        if line.parked_from.is_some() {
            return; // fetched again by the group's own pulls
        }
        if line.waiting.len() >= limit {
            line.parked_from = Some(offset);
            self.stats
                .message_groups_parked
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.in_flight.insert(offset);
        line.waiting.push_back(delivery);
    }

    /// Hands the head of every line that is free to the workers (while the lease
    /// holds), and sends the pulls of parked groups whose line has room again.
    pub(super) fn dispatch_ordered(&mut self, key: QueueKey) {
        let now = Instant::now();
        let limit = self.options.max_buffered_per_message_group.max(1);
        let term = self.lease_term.load(Ordering::Acquire);
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        if !queue.ordered || queue.revoked || now >= queue.lease_until {
            return;
        }
        let lease = Some(Lease {
            until: queue.lease_until,
            term,
        });
        let mut catch_up = Vec::new();
        for (name, line) in queue.lines.iter_mut() {
            if !line.busy {
                if let Some(delivery) = line.waiting.pop_front() {
                    line.busy = true;
                    queue
                        .dispatched
                        .insert(delivery.record.queue_offset, name.clone());
                    if let Some(jobs) = &self.jobs {
                        let _ = jobs.send(Job {
                            key,
                            delivery,
                            lease,
                        });
                    }
                }
            }
            if let Some(from) = line.parked_from {
                let backed_off = line.catch_up_after.is_some_and(|after| now < after);
                if !line.catching_up && !backed_off && line.waiting.len() <= limit / 2 {
                    line.catching_up = true;
                    catch_up.push((name.clone(), from));
                }
            }
        }
        queue.lines.retain(|_, line| !line.is_idle());
        for (name, from) in catch_up {
            self.pull_parked(key, name, from);
        }
    }

    fn pull_parked(&mut self, key: QueueKey, group: String, from: u64) {
        let request = Request::Pull(PullRequest {
            group: self.group.clone(),
            topic: self.topics[key.0].clone(),
            queue_id: key.1,
            queue_offset: from,
            max_messages: self.options.pull_batch.max(64),
            max_bytes: 4 << 20,
            wait_ms: 0,
        });
        let events = self.events.clone();
        self.connection.call_async(
            &request,
            self.options.request_timeout,
            Box::new(move |outcome| {
                let _ = events.send(Event::CaughtUp(key, group, from, outcome));
            }),
        );
    }

    /// A parked group's pull: its messages go into its line (up to the limit), the
    /// others' are dropped (the queue's pulls took them); reaching the queue's pulls
    /// ends the parking.
    pub(super) fn on_caught_up(
        &mut self,
        key: QueueKey,
        group: String,
        from: u64,
        outcome: Result<Response, ClientError>,
    ) {
        let limit = self.options.max_buffered_per_message_group.max(1);
        let topic = self.topics[key.0].clone();
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        let Some(line) = queue.lines.get_mut(&group) else {
            return;
        };
        line.catching_up = false;
        if queue.revoked || line.parked_from != Some(from) {
            return; // let go, or started again from the commit point meanwhile
        }
        // A failed pull is tried again after a pause, not on every event of the queue.
        line.catch_up_after = Some(Instant::now() + CATCH_UP_BACKOFF);
        let pull = match outcome {
            Ok(Response::PullResult(pull)) => pull,
            Ok(Response::Error(error)) => {
                log::warn!("consumer {}: pull refused: {error}", self.member_id);
                return;
            }
            Ok(other) => {
                let kind = other.kind().name();
                self.report(ClientError::Protocol(format!("{kind} in reply to PULL")));
                return;
            }
            Err(error) => {
                log::debug!("consumer {}: pull failed: {error}", self.member_id);
                return self.reconnect_if_needed();
            }
        };
        let mut parked_from = match pull.status {
            PullStatus::Found => Some(from),
            // Nothing at or past `from` (none there yet, or past the queue's end): the
            // queue's pulls are there too.
            PullStatus::NoNewMessages | PullStatus::OffsetOutOfRange => None,
            PullStatus::OffsetExpired => {
                // Never a silent jump, as for the queue's own pulls: the group waits
                // there until an operator moves the offsets.
                line.catch_up_after = Some(Instant::now() + EXPIRED_BACKOFF);
                return self.report(ClientError::OffsetExpired {
                    queue_id: key.1,
                    offset: from,
                    min_offset: pull.min_offset,
                });
            }
        };
        line.catch_up_after = None;
        let (records, damaged) = crate::records::checked_records(&pull, &topic, key.1, from);
        let mut full = false;
        for record in records {
            let offset = record.queue_offset;
            if offset >= queue.next_pull {
                parked_from = None; // caught up: the queue's pulls take it from here
                break;
            }
            parked_from = Some(offset + 1);
            let delivery = delivery_of(record, &self.topics[0]);
            if line_of(&delivery) != group
                || !matches_filter(self.filter.as_ref(), &delivery.record.tags)
                || queue.in_flight.contains(&offset)
            {
                continue;
            }
            if line.waiting.len() >= limit {
                parked_from = Some(offset);
                full = true;
                break;
            }
            queue.in_flight.insert(offset);
            line.waiting.push_back(delivery);
        }
        let damaged = damaged.filter(|_| !full);
        if let Some((queue_offset, _)) = &damaged {
            // Not passed: the group waits there (a network error heals on the next
            // pull; damage on disk needs an operator).
            parked_from = Some(*queue_offset);
        } else if parked_from.is_some_and(|at| at >= queue.next_pull) {
            parked_from = None;
        }
        line.parked_from = parked_from;
        if let Some((queue_offset, detail)) = damaged {
            // Its next pull waits for the next event of the queue, not sent at once.
            return self.report(ClientError::Corrupt {
                queue_id: key.1,
                queue_offset,
                detail,
            });
        }
        self.dispatch_ordered(key);
    }

    /// A failed message of an ordered group: handled again at the head of its line
    /// after `ordered_retry_delay`, or dead-lettered after `max_reconsume_times`.
    pub(super) fn retry_ordered(
        &mut self,
        key: QueueKey,
        mut delivery: Box<Delivery>,
        delay: Option<Duration>,
        reason: String,
    ) {
        let Some(incarnation) = self
            .queues
            .get(&key)
            .filter(|queue| !queue.revoked)
            .map(|queue| queue.incarnation)
        else {
            // Let go meanwhile: the next owner handles it again, in its place.
            return self.leave_for_next_owner(key, delivery.record.queue_offset);
        };
        if delivery.reconsume_times >= self.options.max_reconsume_times {
            // SEND_BACK with one more attempt than allowed: the dead-letter topic. The
            // line moves on once it is stored there.
            return self.send_back(key, delivery, None, reason);
        }
        log::debug!(
            "consumer {}: {} failed ({reason}); handled again in place",
            self.member_id,
            delivery.msg_id
        );
        delivery.reconsume_times += 1;
        self.stats.ordered_retries.fetch_add(1, Ordering::Relaxed);
        let due = Instant::now() + delay.unwrap_or(self.options.ordered_retry_delay);
        self.retries.push((due, key, incarnation, delivery));
    }

    /// Retries whose time came: to the workers (the line stays busy meanwhile).
    pub(super) fn run_due_retries(&mut self) {
        if self.retries.is_empty() {
            return;
        }
        let now = Instant::now();
        let term = self.lease_term.load(Ordering::Acquire);
        let retries = std::mem::take(&mut self.retries);
        for (due, key, incarnation, delivery) in retries {
            // Made under an earlier holding of the queue: that holding's next owner (or
            // this member, fetching again from the committed offset) has the message.
            let queue = self
                .queues
                .get(&key)
                .filter(|queue| queue.incarnation == incarnation);
            if queue.is_some_and(|queue| queue.revoked) {
                self.leave_for_next_owner(key, delivery.record.queue_offset);
                continue;
            }
            match queue.map(|queue| queue.lease_until) {
                None => {} // the queue is gone: its next owner has the message
                Some(until) if due <= now && now < until => {
                    if let Some(jobs) = &self.jobs {
                        let _ = jobs.send(Job {
                            key,
                            delivery: *delivery,
                            lease: Some(Lease { until, term }),
                        });
                    }
                }
                Some(_) => self.retries.push((due, key, incarnation, delivery)),
            }
        }
    }

    /// A message of a queue being let go that will not be handled here: left unfinished
    /// (never committed past) for the next owner, its line freed so the queue can go.
    fn leave_for_next_owner(&mut self, key: QueueKey, offset: u64) {
        if let Some(queue) = self.queues.get_mut(&key) {
            let name = queue.dispatched.remove(&offset);
            queue.leave(offset, name.as_deref());
            if let Some(line) = name.and_then(|name| queue.lines.get_mut(&name)) {
                line.busy = false;
            }
        }
        self.release_revoked();
    }

    /// A message of an ordered group is finished: its line is free for the next.
    pub(super) fn free_line(&mut self, key: QueueKey, offset: u64) {
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        if let Some(name) = queue.dispatched.remove(&offset) {
            if let Some(line) = queue.lines.get_mut(&name) {
                line.busy = false;
            }
            self.dispatch_ordered(key);
        }
    }

    /// A job the worker did not start because the lease had ended: back to the head
    /// of its line, for when the lease is renewed.
    pub(super) fn not_started(&mut self, key: QueueKey, delivery: Box<Delivery>) {
        let offset = delivery.record.queue_offset;
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        let Some(name) = queue.dispatched.remove(&offset) else {
            return;
        };
        if queue.revoked {
            queue.leave(offset, Some(&name));
            if let Some(line) = queue.lines.get_mut(&name) {
                line.busy = false;
            }
            return self.release_revoked();
        }
        let line = queue.lines.entry(name).or_default();
        line.busy = false;
        line.waiting.push_front(*delivery);
    }

    /// A queue taken away: what waits in its lines (and its retries) is left for the
    /// next owner; the messages with workers finish.
    pub(super) fn let_go_of_lines(&mut self, key: QueueKey) {
        let retries = std::mem::take(&mut self.retries);
        let (theirs, others): (Vec<_>, Vec<_>) =
            retries.into_iter().partition(|(_, at, _, _)| *at == key);
        self.retries = others;
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        let mut left: Vec<(u64, Option<String>)> = Vec::new();
        for (_, _, _, delivery) in theirs {
            let offset = delivery.record.queue_offset;
            left.push((offset, queue.dispatched.remove(&offset)));
        }
        for (name, line) in queue.lines.iter_mut() {
            for delivery in line.waiting.drain(..) {
                left.push((delivery.record.queue_offset, Some(name.clone())));
            }
            if let Some(from) = line.parked_from.take() {
                left.push((from, Some(name.clone())));
            }
        }
        for (offset, line) in left {
            queue.leave(offset, line.as_deref());
        }
        let dispatched: std::collections::HashSet<&String> = queue.dispatched.values().collect();
        queue.lines.retain(|name, _| dispatched.contains(name));
        for line in queue.lines.values_mut() {
            line.busy = true;
        }
    }
}
