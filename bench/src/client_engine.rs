//! `--engine client`: one thread per producer through the client library, as an
//! application sends (blocking `send`, or `send_async` with a window).

use crate::args::Mode;
use crate::engine::payload_of;
use crate::report::{Recorder, Totals};
use crate::shared::now_us;
use keel_client::{ClientError, Message, Producer, ProducerOptions, SendStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// What each producer sends.
#[derive(Clone, Copy)]
pub(crate) struct Shape {
    pub mode: Mode,
    pub size: usize,
    pub window: usize,
    pub batch: usize,
    /// Put the send time (us since the epoch) in the first 8 payload bytes.
    pub stamp: bool,
    /// Requests a second this producer may send (`--rate`); `None`: no limit.
    pub request_rate: Option<f64>,
}

/// One producer thread: sends until `stop` (or `count` messages), recording into
/// `recorder`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn producer_loop(
    index: usize,
    address: &str,
    topic: &str,
    shape: Shape,
    count: Option<u64>,
    totals: &Arc<Totals>,
    stop: &AtomicBool,
    recorder: &Arc<Recorder>,
) -> Result<(), String> {
    let options = ProducerOptions {
        connection: crate::args::connection_options(),
        ..ProducerOptions::default()
    };
    let producer = Producer::connect(address, options)
        .map_err(|e| format!("the broker went away: producer {index}: {e}"))?;
    let payload = payload_of(shape.size, index);
    let histogram = recorder.clone();
    let in_flight = Arc::new((Mutex::new(0usize), Condvar::new()));
    let mut sent = 0u64;
    let (begun, mut requests) = (Instant::now(), 0u64);
    while !stop.load(Ordering::Relaxed)
        && count.is_none_or(|count| sent < count)
        && totals.ended_early().is_none()
    {
        if let Some(rate) = shape.request_rate {
            // Paced: the k-th request is due k / rate seconds after the start.
            let due = begun + std::time::Duration::from_secs_f64(requests as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep((due - now).min(std::time::Duration::from_millis(50)));
                continue;
            }
            requests += 1;
        }
        let payload = if shape.stamp {
            let mut stamped = payload.clone();
            let now = now_us().to_le_bytes();
            let length = stamped.len().min(8);
            stamped[..length].copy_from_slice(&now[..length]);
            stamped
        } else {
            payload.clone()
        };
        // The last request carries what is left of the count.
        let this_batch = count.map_or(shape.batch as u64, |count| {
            (count - sent).min(shape.batch as u64)
        });
        let batch = this_batch;
        let messages: Vec<Message> = (0..this_batch)
            .map(|_| Message::new(topic, payload.clone()))
            .collect();
        sent += batch;
        totals.sent.fetch_add(batch, Ordering::Relaxed);
        let started = Instant::now();
        match shape.mode {
            Mode::Sync if shape.batch > 1 => {
                let outcome = producer.send_batch(messages);
                record(
                    totals,
                    &histogram,
                    started,
                    outcome.map(|result| result.status),
                    batch,
                );
            }
            Mode::Sync => {
                let outcome = messages
                    .into_iter()
                    .next()
                    .map(|message| producer.send(message));
                let outcome = outcome.unwrap_or(Err(ClientError::Timeout));
                record(
                    totals,
                    &histogram,
                    started,
                    outcome.map(|result| result.status),
                    1,
                );
            }
            Mode::Async => {
                let (lock, available) = &*in_flight;
                let mut count = lock.lock().unwrap_or_else(|poison| poison.into_inner());
                while *count >= shape.window {
                    count = available
                        .wait(count)
                        .unwrap_or_else(|poison| poison.into_inner());
                }
                *count += 1;
                drop(count);
                let (totals, histogram, in_flight) =
                    (totals.clone(), histogram.clone(), in_flight.clone());
                let done = move |status: Result<SendStatus, ClientError>| {
                    record(&totals, &histogram, started, status, batch);
                    let (lock, available) = &*in_flight;
                    *lock.lock().unwrap_or_else(|poison| poison.into_inner()) -= 1;
                    available.notify_one();
                };
                if shape.batch > 1 {
                    producer.send_batch_async(messages, move |outcome| {
                        done(outcome.map(|result| result.status))
                    });
                } else if let Some(message) = messages.into_iter().next() {
                    producer.send_async(message, move |outcome| {
                        done(outcome.map(|result| result.status))
                    });
                }
            }
            Mode::Oneway => {
                for message in messages {
                    if let Err(error) = producer.send_oneway(message) {
                        totals.count_failure("ONEWAY_NOT_SENT", 1);
                        if matches!(error, ClientError::Connect { .. }) {
                            totals.end_early(format!("the broker went away: {error}"));
                        }
                    }
                }
            }
        }
    }
    let (lock, available) = &*in_flight;
    let mut count = lock.lock().unwrap_or_else(|poison| poison.into_inner());
    while *count > 0 {
        count = available
            .wait(count)
            .unwrap_or_else(|poison| poison.into_inner());
    }
    drop(count);
    Ok(())
}

fn record(
    totals: &Totals,
    recorder: &Recorder,
    started: Instant,
    outcome: Result<SendStatus, ClientError>,
    messages: u64,
) {
    let micros = started.elapsed().as_micros().max(1) as u64;
    match outcome {
        Ok(SendStatus::SendOk) => {
            totals.ok.fetch_add(messages, Ordering::Relaxed);
            recorder.record(micros, messages);
        }
        Ok(status) => totals.count_status(status.name(), messages),
        Err(error) => {
            let kind = match &error {
                ClientError::Broker(refusal) => refusal.code.name(),
                ClientError::Connect { .. } => "CANNOT_CONNECT",
                other if other.is_outcome_unknown() => "OUTCOME_UNKNOWN",
                _ => "CLIENT_ERROR",
            };
            if matches!(error, ClientError::Connect { .. }) {
                totals.end_early(format!("the broker went away: {error}"));
            }
            totals.count_failure(kind, messages);
        }
    }
}
