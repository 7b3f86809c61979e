//! One send's attempts: where each goes, what each failure means, and when to try
//! again within the send budget.
//!
//! Failures fall into three kinds:
//! - **not sent** (no route, no connection, a write that failed part-way) and
//!   **refused as not the master** (NOT_MASTER, SHUTTING_DOWN, TOO_MANY_CONNECTIONS):
//!   certainly not stored. The routes are marked stale and the send is tried again
//!   after a backoff, without using up an attempt, while the budget lasts.
//! - **unknown** (timeout, connection lost after the request was written): the
//!   message may be stored. It uses up an attempt; the retry carries the same producer
//!   id and sequence, so a broker that has it answers with the original.
//! - anything else is final (a refusal that retrying cannot change, or a stored
//!   status other than SEND_OK, unless `retry_when_not_stored_ok`).

use super::parts::{with_queue, Producer, Target};
use crate::ClientError;
use keel_protocol::{ErrorCode, Request, Response, SendStatus};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) type SendCallback = Box<dyn FnOnce(Result<Response, ClientError>) + Send>;

/// The first wait before trying again after a send that was not stored, and the
/// longest: a new master is found within this much of registering.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// One send's state across its attempts.
pub(super) struct Attempt {
    producer: Producer,
    request: Arc<Request>,
    deadline: Instant,
    /// Attempts that may still reach a broker (`retry_times_when_send_failed` + 1).
    attempts_left: u32,
    /// Attempts that reached a broker, or may have.
    attempts_made: u32,
    /// Tries that were certainly not stored (no route, no connection, NOT_MASTER).
    not_stored: u32,
    /// The broker the previous attempt failed on.
    last_failed: Option<SocketAddr>,
    /// Why the previous attempt failed.
    last_error: Option<ClientError>,
    /// The first attempt whose outcome is unknown (sent, answer lost): once there is
    /// one, a later refusal cannot make the send "failed".
    unknown: Option<String>,
    /// The previous attempt's answer when it was a status other than SEND_OK that
    /// `retry_when_not_stored_ok` retried.
    last_answer: Option<Response>,
    backoff: Duration,
    callback: SendCallback,
}

/// What a failure says about the send.
enum Failure {
    /// Certainly not stored, and another try (later, or elsewhere) may succeed.
    NotStored,
    /// Possibly stored.
    Unknown,
    /// Retryable broker refusal (storage failed, disk full, ...): an attempt used.
    Retryable,
    Final,
}

fn classify(error: &ClientError) -> Failure {
    match error {
        ClientError::Connect { .. } | ClientError::NoRoute(_) => Failure::NotStored,
        ClientError::Broker(refusal)
            if matches!(
                refusal.code,
                ErrorCode::NotMaster | ErrorCode::ShuttingDown | ErrorCode::TooManyConnections
            ) =>
        {
            Failure::NotStored
        }
        error if error.is_outcome_unknown() => Failure::Unknown,
        error if error.is_retryable() => Failure::Retryable,
        _ => Failure::Final,
    }
}

/// The status of a reply to SEND or SEND_BATCH.
fn status_of(response: &Response) -> Option<SendStatus> {
    match response {
        Response::SendResult(result) => Some(result.status),
        Response::SendBatchResult(result) => Some(result.status),
        _ => None,
    }
}

impl Attempt {
    pub(super) fn new(producer: Producer, request: Request, callback: SendCallback) -> Attempt {
        let options = &producer.inner.options;
        Attempt {
            deadline: Instant::now() + options.send_timeout,
            attempts_left: options.retry_times_when_send_failed + 1,
            producer,
            request: Arc::new(request),
            attempts_made: 0,
            not_stored: 0,
            last_failed: None,
            last_error: None,
            unknown: None,
            last_answer: None,
            backoff: BACKOFF_MIN,
            callback,
        }
    }

    pub(super) fn run(mut self) {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || self.attempts_left == 0 {
            return self.finish();
        }
        // Each attempt gets an equal share of what is left, so a lost reply or a master
        // that hangs leaves time for the retries (safe with idempotence: the broker
        // answers a retry of a stored message with the original).
        let share = remaining / self.attempts_left;
        let chosen = self.producer.choose(&self.request, self.last_failed, share);
        let (endpoint, queue) = match chosen {
            Ok(choice) => choice,
            Err(error) => return self.not_stored(error),
        };
        let address = endpoint.address;
        let connection = match self.producer.connection(&endpoint, share) {
            Ok(connection) => connection,
            Err(error) => {
                self.producer
                    .inner
                    .faults
                    .record(address, Duration::ZERO, true);
                self.last_failed = Some(address);
                // Nothing was sent. A refused login or a certificate that is not
                // trusted stays so: trying again only adds failed logins (and gets this
                // address locked out), so that is final.
                return match classify(&error) {
                    Failure::Final => self.give_up(error),
                    _ => self.not_stored(error),
                };
            }
        };
        self.attempts_left -= 1;
        self.attempts_made += 1;
        // A copy only when this attempt places the message on a queue.
        let placed = queue.map(|queue| with_queue(&self.request, queue));
        let shared = self.request.clone();
        let request = placed.as_ref().unwrap_or(&shared);
        let started = Instant::now();
        connection.clone().call_async(
            request,
            share,
            Box::new(move |outcome| {
                let outcome = match outcome {
                    Ok(Response::Error(error)) => Err(ClientError::Broker(error)),
                    other => other,
                };
                if let Err(error) = &outcome {
                    if error.breaks_connection() {
                        self.producer.drop_connection(&connection);
                    }
                }
                self.answered(address, started, outcome)
            }),
        );
    }

    /// What to do with an attempt's outcome.
    fn answered(
        mut self,
        address: SocketAddr,
        started: Instant,
        outcome: Result<Response, ClientError>,
    ) {
        let failure = outcome.as_ref().err().map(classify);
        if matches!(self.producer.inner.target, Target::NameServers(_)) {
            let failed = matches!(
                failure,
                Some(Failure::NotStored | Failure::Unknown | Failure::Retryable)
            );
            self.producer
                .inner
                .faults
                .record(address, started.elapsed(), failed);
        }
        let error = match outcome {
            Ok(result) => return self.stored(address, result),
            Err(error) => error,
        };
        self.last_failed = Some(address);
        match failure.unwrap_or(Failure::Final) {
            Failure::NotStored => {
                // It reached no broker that could store it: give the attempt back.
                self.attempts_left += 1;
                self.attempts_made -= 1;
                self.not_stored(error)
            }
            Failure::Unknown => {
                if self.unknown.is_none() {
                    self.unknown = Some(format!(
                        "attempt {} to {address}: {error}",
                        self.attempts_made
                    ));
                }
                // The master may be gone: look again before the retry.
                self.producer.routes_stale(&self.request);
                self.retry_or_fail(error)
            }
            Failure::Retryable => self.retry_or_fail(error),
            Failure::Final => self.give_up(error),
        }
    }

    /// A reply with a send status.
    fn stored(mut self, address: SocketAddr, result: Response) {
        let not_ok = status_of(&result).filter(|status| *status != SendStatus::SendOk);
        match not_ok {
            Some(status)
                if self.producer.inner.options.retry_when_not_stored_ok
                    && self.attempts_left > 0 =>
            {
                log::warn!("send answered {status}, retrying as configured");
                // Stored by the master: a later refusal cannot make it "failed".
                if self.unknown.is_none() {
                    self.unknown = Some(format!(
                        "attempt {} to {address} answered {status} (stored, not yet durable \
                         to the broker's standard)",
                        self.attempts_made
                    ));
                }
                self.last_error = None;
                self.last_answer = Some(result);
                self.schedule(Instant::now());
            }
            _ => (self.callback)(Ok(result)),
        }
    }

    /// Certainly not stored: look up the routes again and try after a backoff, while
    /// the budget lasts.
    fn not_stored(mut self, error: ClientError) {
        self.not_stored += 1;
        self.producer.routes_stale(&self.request);
        let due = Instant::now() + self.backoff;
        if due >= self.deadline {
            return self.give_up(error);
        }
        if self.not_stored == 1 || self.not_stored.is_power_of_two() {
            log::debug!("send not stored ({error}); trying again");
        }
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.last_error = Some(error);
        self.schedule(due);
    }

    fn retry_or_fail(mut self, error: ClientError) {
        let time_left = Instant::now() < self.deadline;
        if error.is_retryable() && self.attempts_left > 0 && time_left {
            log::debug!(
                "send attempt {} failed ({error}); retrying",
                self.attempts_made
            );
            self.last_error = Some(error);
            return self.schedule(Instant::now());
        }
        self.give_up(error);
    }

    /// Runs the next try from the client's timer thread: never on a connection's
    /// reader thread, whose other replies would wait for it.
    fn schedule(self, due: Instant) {
        crate::timer::schedule(due, move || self.run());
    }

    /// The budget or the attempts ran out.
    fn finish(mut self) {
        if let Some(error) = self.last_error.take() {
            return self.give_up(error);
        }
        // The previous attempt was answered with a stored-but-not-durable status and
        // retried: that answer stands.
        if let Some(answer) = self.last_answer.take() {
            return (self.callback)(Ok(answer));
        }
        let error = match self.attempts_made {
            0 => ClientError::InvalidArgument(
                "the send budget (send_timeout) ran out before the first attempt; not sent".into(),
            ),
            _ => ClientError::Timeout,
        };
        self.give_up(error);
    }

    fn give_up(self, error: ClientError) {
        // An attempt that may have stored the message outweighs a later refusal: the
        // broker refused only that later attempt.
        let error = match &self.unknown {
            Some(first) if !matches!(error, ClientError::OutcomeUnknown(_)) => {
                ClientError::OutcomeUnknown(format!(
                    "{first}; {} attempt(s) in all, the last: {error}. Retry with the same \
                     producer id and sequence",
                    self.attempts_made
                ))
            }
            _ => error,
        };
        let target = match (&self.producer.inner.target, self.last_failed) {
            (_, Some(address)) => address.to_string(),
            (Target::Broker(endpoint), None) => endpoint.to_string(),
            (Target::NameServers(_), None) => "the topic's masters".to_string(),
        };
        log::error!(
            "ALARM: send to {target} failed after {} attempt(s) ({} not stored): {error}",
            self.attempts_made,
            self.not_stored
        );
        (self.callback)(Err(error));
    }
}
