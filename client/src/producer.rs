//! The producer: sync, async and oneway sends, with retries inside one send budget.
//!
//! Like RocketMQ: a failed or timed-out send is retried (`retry_times_when_send_failed`
//! = 2, so 3 attempts) and every attempt shares one `send_timeout_ms` budget: each
//! attempt may take an equal share of what is left, so the first cannot eat it all; a stored-but-not-OK status
//! (`FLUSH_DISK_TIMEOUT`, ...) is returned to the caller, not retried, unless
//! `retry_when_not_stored_ok` is set (the retry may then store the message twice).
//! Oneway sends are never retried. After the last attempt fails the producer logs an
//! alarm at error level.
//!
//! Given name servers (`Producer::with_name_servers`) instead of one broker, a producer
//! spreads a topic's sends over every (master, queue) pair; a retry goes to another
//! master than the one that just failed (unless it is the only one), each attempt gets
//! an equal share of what is left of the budget, and a master that failed or answered
//! slowly is avoided for a while (latency fault avoidance, on by default).
//!
//! Following a failover: a send that could not reach a master, or that a broker
//! refused as NOT_MASTER, was certainly not stored. It marks the topic's routes stale
//! (asked again of the name servers at once, at most every 100 ms) and is tried again
//! after a short backoff (20 ms doubling to 200 ms), as long as the send budget lasts:
//! such tries do not count against `retry_times_when_send_failed`, which bounds only
//! the attempts that reached a broker. A 3 s failover is then ridden through by a send
//! whose budget is longer, and the first send after the new master registers with the
//! name servers goes to it.

mod attempt;
mod parts;
#[cfg(test)]
mod tests;

use crate::ClientError;
use attempt::Attempt;
use keel_protocol::now_ms;
use keel_protocol::{Message, Request, Response, SendBatchResult, SendResult};
use parts::with_queue;
pub use parts::{Producer, ProducerOptions, SendHandle};
use std::sync::atomic::Ordering;
use std::sync::mpsc;

impl Producer {
    /// Stamps the birth time and, for an idempotent producer, the producer id and the
    /// next sequence, and seals the message again with them. Done once per message:
    /// every retry carries the same numbers and CRC. A message whose fields no longer
    /// match the CRC it was sealed with (changed afterwards without `seal`, or damaged
    /// in memory) is sent as it is, so the broker refuses it (MESSAGE_CRC_MISMATCH)
    /// rather than this producer vouching for it.
    fn prepare(&self, mut message: Message) -> Message {
        let intact = message.crc_matches();
        if message.born_timestamp_ms == 0 {
            message.born_timestamp_ms = now_ms();
        }
        if self.inner.producer_id != 0 && message.producer_id == 0 {
            message.producer_id = self.inner.producer_id;
            message.sequence = self.inner.sequence.fetch_add(1, Ordering::Relaxed);
        }
        if intact {
            message.seal();
        }
        message
    }

    /// This producer's id (0 when it is not idempotent).
    pub fn producer_id(&self) -> u64 {
        self.inner.producer_id
    }

    /// Sends and waits for the broker's answer: a `SendResult` whose status says how
    /// durable the message is, or an error when no attempt got it stored.
    pub fn send(&self, message: Message) -> Result<SendResult, ClientError> {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.send_async(message, move |outcome| {
            let _ = sender.send(outcome);
        });
        receiver.recv().unwrap_or(Err(ClientError::Timeout))
    }

    /// Sends in the background; `callback` gets the result or the final error. Retries
    /// happen from the error path, within the same budget. The callback runs on a client
    /// thread and must not block.
    pub fn send_async(
        &self,
        message: Message,
        callback: impl FnOnce(Result<SendResult, ClientError>) + Send + 'static,
    ) {
        self.start(Request::Send(self.prepare(message)), move |outcome| {
            callback(outcome.and_then(|response| match response {
                Response::SendResult(result) => Ok(result),
                other => Err(ClientError::Protocol(format!(
                    "{} in reply to SEND",
                    other.kind().name()
                ))),
            }))
        });
    }

    /// Sends several messages stored all together or not at all, with one reply for all
    /// of them (at most 65535 and `max_frame_bytes` in all). Retried like `send`.
    pub fn send_batch(&self, messages: Vec<Message>) -> Result<SendBatchResult, ClientError> {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.send_batch_async(messages, move |outcome| {
            let _ = sender.send(outcome);
        });
        receiver.recv().unwrap_or(Err(ClientError::Timeout))
    }

    /// `send_batch` in the background; the callback must not block.
    pub fn send_batch_async(
        &self,
        messages: Vec<Message>,
        callback: impl FnOnce(Result<SendBatchResult, ClientError>) + Send + 'static,
    ) {
        if messages.is_empty() || messages.len() > usize::from(u16::MAX) {
            return callback(Err(ClientError::InvalidArgument(format!(
                "a batch holds 1 to 65535 messages, not {}",
                messages.len()
            ))));
        }
        let messages = messages.into_iter().map(|m| self.prepare(m)).collect();
        self.start(Request::SendBatch(messages), move |outcome| {
            callback(outcome.and_then(|response| match response {
                Response::SendBatchResult(result) => Ok(result),
                other => Err(ClientError::Protocol(format!(
                    "{} in reply to SEND_BATCH",
                    other.kind().name()
                ))),
            }))
        });
    }

    fn start(
        &self,
        request: Request,
        callback: impl FnOnce(Result<Response, ClientError>) + Send + 'static,
    ) {
        Attempt::new(self.clone(), request, Box::new(callback)).run();
    }

    /// `send_async` with a handle to wait on instead of a callback.
    pub fn send_async_handle(&self, message: Message) -> SendHandle {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.send_async(message, move |outcome| {
            let _ = sender.send(outcome);
        });
        SendHandle { receiver }
    }

    /// Fire and forget: no answer is read and nothing is retried. Returns once the
    /// bytes are handed to the socket.
    pub fn send_oneway(&self, message: Message) -> Result<(), ClientError> {
        let request = Request::Send(self.prepare(message));
        let timeout = self.inner.options.send_timeout;
        let (endpoint, queue) = self.choose(&request, None, timeout)?;
        let placed = queue.map(|queue| with_queue(&request, queue));
        let connection = self
            .connection(&endpoint, timeout)
            .inspect_err(|_| self.routes_stale(&request))?;
        connection
            .send_oneway(placed.as_ref().unwrap_or(&request))
            .inspect_err(|_| {
                self.drop_connection(&connection);
                self.routes_stale(&request);
            })
    }
}
