//! Handling: the worker threads run the handler; a failure sends the message back to
//! the broker for a later retry (or the dead-letter topic), and a message that could
//! not be sent back is handled again here.

use super::driver::Driver;
use super::model::{ConsumeResult, Delivery, Event, IntoConsumeResult, Job, QueueKey, Revoked};
use crate::ClientError;
use keel_protocol::names::property;
use keel_protocol::{Record, Request, Response, SendBackRequest, SendStatus};
use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Mutex;
use std::time::Duration;

/// `TagA || TagB` as a set; `None` matches everything.
pub(super) fn parse_filter(filter: Option<&str>) -> Option<BTreeSet<String>> {
    let filter = filter?.trim();
    if filter.is_empty() || filter == "*" {
        return None;
    }
    Some(
        filter
            .split("||")
            .map(|tag| tag.trim().to_string())
            .filter(|tag| !tag.is_empty())
            .collect(),
    )
}

pub(super) fn matches_filter(filter: Option<&BTreeSet<String>>, tags: &str) -> bool {
    filter.is_none_or(|wanted| {
        tags.split_whitespace().any(|tag| wanted.contains(tag)) || wanted.contains(tags)
    })
}

/// A record as the handler sees it: for a retry copy, the original topic and id.
pub(super) fn delivery_of(record: Record, topic: &str) -> Delivery {
    use keel_protocol::names::property as names;
    let property = |name: &str| record.property(name).map(str::to_string);
    let reconsume_times = property(names::RECONSUME_TIMES)
        .and_then(|times| times.parse().ok())
        .unwrap_or(0);
    let origin_topic = property(names::ORIGIN_TOPIC).unwrap_or_else(|| topic.to_string());
    let msg_id = property(names::ORIGIN_MSG_ID).unwrap_or_else(|| record.message_id());
    Delivery {
        topic: if record.topic.starts_with('%') {
            origin_topic
        } else {
            record.topic.clone()
        },
        msg_id,
        reconsume_times,
        record,
    }
}

/// Takes one of the handler runs `max_messages` allows; false once none is left.
pub(super) fn take_ticket(tickets: &Option<AtomicU64>) -> bool {
    tickets.as_ref().is_none_or(|left| {
        left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    })
}

pub(super) fn work<F, R>(
    jobs: &Mutex<Receiver<Job>>,
    events: &Sender<Event>,
    handler: &F,
    revoked: &Revoked,
    tickets: &Option<AtomicU64>,
    lease_term: &AtomicU64,
) where
    F: Fn(&Delivery) -> R,
    R: IntoConsumeResult,
{
    loop {
        let job = {
            let receiver = jobs.lock().unwrap_or_else(|poison| poison.into_inner());
            receiver.recv()
        };
        let Ok(job) = job else { return };
        let skip = revoked
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .contains(&job.key);
        if !skip && job.lease.is_some_and(|lease| !lease.holds(lease_term)) {
            if events
                .send(Event::NotStarted(job.key, Box::new(job.delivery)))
                .is_err()
            {
                return;
            }
            continue;
        }
        // Unhandled either way: never finished, so never committed past.
        if skip || !take_ticket(tickets) {
            let offset = job.delivery.record.queue_offset;
            if events.send(Event::Skipped(job.key, offset)).is_err() {
                return;
            }
            continue;
        }
        let outcome = match catch_unwind(AssertUnwindSafe(|| handler(&job.delivery))) {
            Ok(result) => result.into_consume_result(),
            Err(panic) => {
                let detail = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "handler panicked".into());
                ConsumeResult::ReconsumeLater(format!("handler panicked: {detail}"))
            }
        };
        if events
            .send(Event::Handled(job.key, Box::new(job.delivery), outcome))
            .is_err()
        {
            return;
        }
    }
}

impl Driver {
    pub(super) fn on_handled(
        &mut self,
        key: QueueKey,
        delivery: Box<Delivery>,
        outcome: ConsumeResult,
    ) {
        let queue_offset = delivery.record.queue_offset;
        match outcome {
            ConsumeResult::Success => {
                self.stats.handled.fetch_add(1, Ordering::Relaxed);
                self.finish_message(key, queue_offset);
            }
            ConsumeResult::ReconsumeLater(reason) => self.reconsume(key, delivery, None, reason),
            ConsumeResult::ReconsumeAfter(delay, reason) => {
                self.reconsume(key, delivery, Some(delay), reason)
            }
        }
    }

    fn reconsume(
        &mut self,
        key: QueueKey,
        delivery: Box<Delivery>,
        delay: Option<Duration>,
        reason: String,
    ) {
        // A queue already forgotten (NOT_OWNER) of an ordered group: not sent back,
        // where it would come after its group's later messages.
        match self
            .queues
            .get(&key)
            .map_or(self.ordered, |queue| queue.ordered)
        {
            true => self.retry_ordered(key, delivery, delay, reason),
            false => self.send_back(key, delivery, delay, reason),
        }
    }

    pub(super) fn finish_message(&mut self, key: QueueKey, queue_offset: u64) {
        if let Some(queue) = self.queues.get_mut(&key) {
            queue.in_flight.remove(&queue_offset);
        }
        self.free_line(key, queue_offset);
        if self.queues.get(&key).is_some_and(|q| q.revoked) {
            self.release_revoked();
        }
    }

    pub(super) fn send_back(
        &mut self,
        key: QueueKey,
        delivery: Box<Delivery>,
        delay: Option<Duration>,
        reason: String,
    ) {
        let record = &delivery.record;
        let mut message = record.to_message();
        message.topic = delivery.topic.clone();
        // A producer's own property of that name is not a consumer's request.
        message
            .properties
            .retain(|(name, _)| name != property::RETRY_DELAY_MS);
        if let Some(delay) = delay {
            let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            message
                .properties
                .push((property::RETRY_DELAY_MS.to_string(), ms.to_string()));
        }
        message.seal();
        let request = Request::SendBack(SendBackRequest {
            group: self.group.clone(),
            reconsume_times: delivery.reconsume_times + 1,
            max_reconsume_times: self.options.max_reconsume_times,
            reason,
            origin_topic: delivery.topic.clone(),
            origin_msg_id: u64::from_str_radix(&delivery.msg_id, 16).unwrap_or(record.log_offset),
            message,
        });
        let events = self.events.clone();
        self.connection.call_async(
            &request,
            self.options.request_timeout,
            Box::new(move |outcome| {
                let _ = events.send(Event::SentBack(key, delivery, outcome));
            }),
        );
    }

    pub(super) fn on_sent_back(
        &mut self,
        key: QueueKey,
        delivery: Box<Delivery>,
        outcome: Result<Response, ClientError>,
    ) {
        match outcome {
            Ok(Response::SendResult(result)) if result.status == SendStatus::SendOk => {
                self.stats.sent_back.fetch_add(1, Ordering::Relaxed);
                self.finish_message(key, delivery.record.queue_offset);
            }
            other => {
                // Not stored durably for a retry: keep it unfinished and hand it to the
                // handler again here, after a pause.
                log::warn!(
                    "consumer {}: could not send {} back for a retry ({other:?}); handling it again locally",
                    self.member_id, delivery.msg_id
                );
                self.reconnect_if_needed();
                if let Some(queue) = self.queues.get(&key).filter(|queue| queue.ordered) {
                    // In its place, when the lease holds (a retry of its line).
                    let due = std::time::Instant::now() + Duration::from_secs(1);
                    return self.retries.push((due, key, queue.incarnation, delivery));
                }
                let jobs = self.jobs.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(1));
                    if let Some(jobs) = jobs {
                        let _ = jobs.send(Job {
                            key,
                            delivery: *delivery,
                            lease: None,
                        });
                    }
                });
            }
        }
    }
}
