//! Fetching: one long-polling PULL per owned queue, paused while the queue has
//! `max_in_flight_per_queue` messages unfinished; what comes back is checked and handed
//! to the workers.

use super::driver::Driver;
use super::handling::{delivery_of, matches_filter};
use super::model::{Event, Job, QueueKey};
use crate::ClientError;
use keel_protocol::{PullRequest, PullResult, PullStatus, Request, Response};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl Driver {
    pub(super) fn pull_ready(&mut self) {
        let now = Instant::now();
        let limit = self.options.max_in_flight_per_queue;
        let keys: Vec<QueueKey> = self
            .queues
            .iter()
            .filter(|(_, q)| {
                !q.pulling
                    && !q.revoked
                    && q.in_flight.len() < limit
                    && q.paused_until.is_none_or(|until| now >= until)
            })
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            let Some(queue) = self.queues.get_mut(&key) else {
                continue;
            };
            queue.pulling = true;
            queue.paused_until = None;
            let from = queue.next_pull;
            let request = Request::Pull(PullRequest {
                group: self.group.clone(),
                topic: self.topics[key.0].clone(),
                queue_id: key.1,
                queue_offset: from,
                max_messages: self.options.pull_batch,
                max_bytes: 4 << 20,
                wait_ms: self.options.long_poll.as_millis() as u32,
            });
            let events = self.events.clone();
            self.connection.call_async(
                &request,
                self.options.long_poll + self.options.request_timeout,
                Box::new(move |outcome| {
                    let _ = events.send(Event::Pulled(key, from, outcome));
                }),
            );
        }
    }

    pub(super) fn pause(&mut self, key: QueueKey, for_how_long: Duration) {
        if let Some(queue) = self.queues.get_mut(&key) {
            queue.paused_until = Some(Instant::now() + for_how_long);
        }
    }

    pub(super) fn on_pulled(
        &mut self,
        key: QueueKey,
        from: u64,
        outcome: Result<Response, ClientError>,
    ) {
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        queue.pulling = false;
        if queue.revoked {
            self.release_revoked();
            return;
        }
        if queue.next_pull != from {
            return;
        }
        if let Some(pull) = self.found(key, from, outcome) {
            self.hand_over(key, from, &pull);
        }
    }

    /// The records a PULL found, or `None` after acting on any other answer: a
    /// refusal or a failure pauses the queue, an offset past the end moves it there,
    /// an expired offset stops it (reported, never skipped silently).
    fn found(
        &mut self,
        key: QueueKey,
        from: u64,
        outcome: Result<Response, ClientError>,
    ) -> Option<PullResult> {
        let pull = match outcome {
            Ok(Response::PullResult(pull)) => pull,
            Ok(Response::Error(error)) => {
                log::warn!("consumer {}: pull refused: {error}", self.member_id);
                self.pause(key, Duration::from_secs(1));
                return None;
            }
            Ok(other) => {
                let kind = other.kind().name();
                self.report(ClientError::Protocol(format!("{kind} in reply to PULL")));
                self.pause(key, Duration::from_secs(1));
                return None;
            }
            Err(error) => {
                // The reconnect says why, once per wait; pulls wait as long as it does.
                log::debug!("consumer {}: pull failed: {error}", self.member_id);
                self.reconnect_if_needed();
                let wait = self.reconnect_delay.max(Duration::from_millis(200));
                self.pause(key, wait);
                return None;
            }
        };
        match pull.status {
            PullStatus::Found => Some(pull),
            PullStatus::NoNewMessages => None,
            PullStatus::OffsetOutOfRange => {
                log::warn!(
                    "consumer {}: offset {from} of {}/{} is past the queue's end {}; \
                     continuing there",
                    self.member_id,
                    self.topics[key.0],
                    key.1,
                    pull.max_offset
                );
                if let Some(queue) = self.queues.get_mut(&key) {
                    queue.next_pull = pull.max_offset;
                }
                None
            }
            PullStatus::OffsetExpired => {
                // Never a silent jump: the queue stops here until an operator moves it
                // (`keel offsets reset`) or the application decides.
                self.report(ClientError::OffsetExpired {
                    queue_id: key.1,
                    offset: from,
                    min_offset: pull.min_offset,
                });
                self.pause(key, Duration::from_secs(30));
                None
            }
        }
    }

    /// Checks the records of a PULL and hands those that pass the tag filter to the
    /// workers; a damaged record stops the queue before it.
    fn hand_over(&mut self, key: QueueKey, from: u64, pull: &PullResult) {
        let (records, damaged) =
            crate::records::checked_records(pull, &self.topics[key.0], key.1, from);
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        queue.next_pull = records.last().map_or(from, |r| r.queue_offset + 1);
        for record in records {
            if !matches_filter(self.filter.as_ref(), &record.tags) {
                self.stats.filtered.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // Fetched again after a queue was kept (`set_revoked`): a message still
            // with a worker is not handed out twice.
            let Some(queue) = self.queues.get_mut(&key) else {
                return;
            };
            if queue.in_flight.contains(&record.queue_offset) {
                continue;
            }
            let delivery = delivery_of(record, &self.topics[0]);
            if delivery.reconsume_times > 0 {
                self.stats.redeliveries.fetch_add(1, Ordering::Relaxed);
            }
            if queue.ordered {
                self.accept_ordered(key, delivery);
                continue;
            }
            queue.in_flight.insert(delivery.record.queue_offset);
            if let Some(jobs) = &self.jobs {
                let _ = jobs.send(Job {
                    key,
                    delivery,
                    lease: None,
                });
            }
        }
        self.dispatch_ordered(key);
        if let Some((queue_offset, detail)) = damaged {
            // Not handed over and not skipped: the queue stops before it and the pull
            // is retried (a network error heals; damage on disk needs an operator).
            self.report(ClientError::Corrupt {
                queue_id: key.1,
                queue_offset,
                detail,
            });
            self.pause(key, Duration::from_secs(5));
        }
    }
}
