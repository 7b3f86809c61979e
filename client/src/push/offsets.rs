//! Offsets: a queue's committed offset is its lowest unfinished offset, committed
//! every `commit_interval` (asynchronously), when the queue is let go and at shutdown
//! (waiting for the answer). A commit refused as NOT_OWNER drops the queue at once.

use super::driver::Driver;
use super::model::{Event, QueueKey};
use crate::ClientError;
use keel_protocol::{ErrorCode, GroupCommitRequest, Request, Response};

impl Driver {
    /// Commits a queue's position and waits for the answer (when letting a queue go,
    /// and at shutdown).
    pub(super) fn commit(&mut self, key: QueueKey) {
        let Some(request) = self.commit_request(key) else {
            return;
        };
        let point = match &request {
            Request::GroupCommit(commit) => commit.offset,
            _ => return,
        };
        let outcome = self.call(request);
        self.on_committed(key, point, outcome);
    }

    pub(super) fn commit_request(&self, key: QueueKey) -> Option<Request> {
        let queue = self.queues.get(&key)?;
        let point = queue.commit_point();
        if queue.committed == Some(point) || queue.committing == Some(point) {
            return None;
        }
        Some(Request::GroupCommit(GroupCommitRequest {
            group: self.group.clone(),
            topic: self.topics[key.0].clone(),
            member_id: self.member_id.clone(),
            queue_id: key.1,
            offset: point,
        }))
    }

    pub(super) fn on_committed(
        &mut self,
        key: QueueKey,
        point: u64,
        outcome: Result<Response, ClientError>,
    ) {
        if let Some(queue) = self.queues.get_mut(&key) {
            if queue.committing == Some(point) {
                queue.committing = None;
            }
        }
        match outcome {
            Ok(Response::Error(error)) => {
                self.on_committed(key, point, Err(ClientError::Broker(error)))
            }
            Ok(_) => {
                if let Some(queue) = self.queues.get_mut(&key) {
                    queue.committed = Some(queue.committed.map_or(point, |c| c.max(point)));
                }
            }
            Err(ClientError::Broker(error)) if error.code == ErrorCode::NotOwner => {
                // Another member has the queue: stop at once; what is in flight here
                // will be redelivered there (at least once, never skipped).
                log::warn!("consumer {}: {}", self.member_id, error.message);
                self.forget(key);
            }
            // A lost connection is said by the reconnect, once per wait.
            Err(error @ (ClientError::ConnectionClosed(_) | ClientError::Connect { .. })) => {
                log::debug!("consumer {}: commit failed: {error}", self.member_id)
            }
            Err(error) => log::warn!("consumer {}: commit failed: {error}", self.member_id),
        }
    }

    /// The periodic commit: one request per queue that moved, answered asynchronously
    /// (the broker fsyncs offsets before answering; the loop does not wait for it).
    pub(super) fn commit_all_async(&mut self) {
        // Nothing to send on a dead connection: the positions are kept and committed
        // once reconnected.
        if self.connection.is_closed() {
            return;
        }
        let keys: Vec<QueueKey> = self.queues.keys().copied().collect();
        for key in keys {
            let Some(request) = self.commit_request(key) else {
                continue;
            };
            let Request::GroupCommit(commit) = &request else {
                continue;
            };
            let point = commit.offset;
            if let Some(queue) = self.queues.get_mut(&key) {
                queue.committing = Some(point);
            }
            let events = self.events.clone();
            self.connection.call_async(
                &request,
                self.options.request_timeout,
                Box::new(move |outcome| {
                    let _ = events.send(Event::Committed(key, point, outcome));
                }),
            );
        }
    }

    pub(super) fn commit_all(&mut self) {
        let keys: Vec<QueueKey> = self.queues.keys().copied().collect();
        for key in keys {
            self.commit(key);
        }
    }
}
