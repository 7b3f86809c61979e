//! `keel consume` (a pull consumer: print, then commit) and `keel subscribe` (a
//! member of a group).

use crate::output::json;
use crate::output::parse_time;
use crate::output::print_json;
use crate::output::record_json;
use crate::output::record_line;
use crate::output::write_raw;
use crate::output::PayloadFormat;
use crate::prelude::*;
use crate::security::Target;
use crate::signals;
use crate::SubscribeArgs;

/// What `keel consume` reads, from where, and whether it commits.
pub(crate) struct ConsumeShape<'a> {
    pub(crate) topic: &'a str,
    pub(crate) group: &'a str,
    pub(crate) count: Option<u64>,
    pub(crate) idle_ms: u64,
    pub(crate) quiet: bool,
    pub(crate) format: PayloadFormat,
    pub(crate) commit: bool,
    pub(crate) from: Option<&'a str>,
    pub(crate) queue: Option<u32>,
    pub(crate) offset: Option<u64>,
}

pub(crate) fn consume(broker: &Target, shape: &ConsumeShape<'_>) -> Result<ExitCode, ClientError> {
    let (topic, group, count, idle_ms, quiet, format) = (
        shape.topic,
        shape.group,
        shape.count,
        shape.idle_ms,
        shape.quiet,
        shape.format,
    );
    let options = ConsumerOptions {
        long_poll: Duration::from_millis(500),
        connection: broker.options.clone(),
        auto_commit: shape.commit && shape.queue.is_none(),
        ..ConsumerOptions::default()
    };
    let mut consumer = Consumer::connect(&broker.address, group, topic, options)?;
    if consumer.queue_count() == 0 {
        return Err(ClientError::InvalidArgument(format!(
            "topic {topic:?} has no queues"
        )));
    }
    let queues = consumer.queue_count() as u32;
    if let Some(only) = shape.queue {
        if only >= queues {
            return Err(ClientError::InvalidArgument(format!(
                "topic {topic:?} has queues 0 to {}, not {only}",
                queues - 1
            )));
        }
    }
    place(broker, shape, &mut consumer, queues)?;
    let only = shape.queue;
    let limit = count.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let mut last_progress = Instant::now();
    let print = |record: &Record| -> Result<(), String> {
        print_record(record, format, quiet);
        Ok(())
    };
    // With --queue the other queues' records are handed over too (and not printed):
    // the limit and the idle time count what was printed.
    let shown = std::cell::Cell::new(0u64);
    let print = |record: &Record| -> Result<(), String> {
        if only.is_some_and(|queue| queue != record.queue_id) || shown.get() >= limit {
            return Ok(());
        }
        shown.set(shown.get() + 1);
        print(record)
    };
    while printed < limit {
        let at_most = match only {
            Some(_) => u64::MAX,
            None => limit - printed,
        };
        let before = shown.get();
        let round = consumer.poll_at_most(at_most, &print).map_err(|error| match error {
            ClientError::OffsetExpired { .. } => ClientError::InvalidArgument(format!(
                "{error}. To skip the expired messages: keel offsets reset --group {group} --topic {topic} --to earliest"
            )),
            other => other,
        })?;
        let _ = round;
        printed = shown.get();
        if printed > before {
            last_progress = Instant::now();
        }
        if idle_ms > 0 && last_progress.elapsed() >= Duration::from_millis(idle_ms) {
            break;
        }
    }
    if shape.commit && shape.queue.is_none() {
        consumer.commit()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Moves the consumer to where `--from`, `--offset` and `--queue` say: a start per
/// queue, and every other queue to its end when one queue is asked for.
fn place(
    broker: &Target,
    shape: &ConsumeShape<'_>,
    consumer: &mut Consumer,
    queues: u32,
) -> Result<(), ClientError> {
    let topic = shape.topic;
    if shape.from.is_some() || shape.offset.is_some() {
        let admin = broker.admin()?;
        let info = admin.list_topics(Some(topic))?.into_iter().next();
        let stored = info.map(|info| info.queues).unwrap_or_default();
        for queue_id in 0..queues {
            let range = stored.get(queue_id as usize);
            let start = match (shape.offset, shape.from) {
                (Some(offset), _) if Some(queue_id) == shape.queue => offset,
                (Some(_), _) => continue,
                (None, Some("earliest")) => range.map_or(0, |q| q.min_offset),
                (None, Some("latest")) => range.map_or(0, |q| q.max_offset),
                (None, Some(time)) => {
                    let ms = parse_time(time).ok_or_else(|| {
                        ClientError::InvalidArgument(format!(
                            "--from takes earliest, latest, milliseconds since the epoch or an \
                             RFC 3339 time (2026-12-01T10:00:00Z), not {time:?}"
                        ))
                    })?;
                    admin.offset_for_time(topic, queue_id, ms)?
                }
                (None, None) => continue,
            };
            consumer.seek(queue_id, start)?;
        }
    }
    if let Some(only) = shape.queue {
        // Every other queue is moved to its end and never reaches the handler.
        let admin = broker.admin()?;
        let info = admin.list_topics(Some(topic))?.into_iter().next();
        let stored = info.map(|info| info.queues).unwrap_or_default();
        for queue_id in (0..queues).filter(|queue| *queue != only) {
            let end = stored.get(queue_id as usize).map_or(0, |q| q.max_offset);
            consumer.seek(queue_id, end)?;
        }
    }
    Ok(())
}

/// One record on stdout: JSON, the raw payload, or a line.
fn print_record(record: &Record, format: PayloadFormat, quiet: bool) {
    if json() {
        print_json(&record_json(record));
        return;
    }
    if format.raw {
        write_raw(&record.payload);
        return;
    }
    let payload = format.text(&record.payload);
    if quiet {
        println!("{payload}");
    } else {
        println!(
            "{}",
            record_line(record, "", &record.message_id(), "", &payload)
        );
    }
}

pub(crate) fn subscribe(broker: &Target, args: SubscribeArgs) -> Result<ExitCode, ClientError> {
    let SubscribeArgs {
        topic,
        group,
        from,
        tag_filter,
        threads,
        session_timeout_ms,
        max_reconsume_times,
        count,
        ordered,
        format,
    } = args;
    let (topic, group) = (topic.as_str(), group.as_str());
    let start_from = start_from(&from)?;
    if ordered {
        let admin = broker.admin()?;
        if !admin.group_settings(group, None)?.ordered {
            admin.group_settings(group, Some(true))?;
            eprintln!("keel subscribe: group {group} is now ordered");
        }
    }
    signals::install();
    let options = PushConsumerOptions {
        threads,
        session_timeout: Duration::from_millis(session_timeout_ms),
        heartbeat_interval: Duration::from_millis((session_timeout_ms / 4).clamp(100, 1000)),
        max_reconsume_times,
        start_from,
        tag_filter,
        long_poll: Duration::from_millis(1000),
        max_messages: count,
        connection: broker.options.clone(),
        ..PushConsumerOptions::default()
    };
    let handled = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = handled.clone();
    let out = std::sync::Mutex::new(());
    let consumer = PushConsumer::start(
        &broker.address,
        group,
        topic,
        options,
        move |delivery: &Delivery| {
            let _guard = out.lock();
            print_delivery(delivery, format);
            let _ = std::io::Write::flush(&mut std::io::stdout());
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ConsumeResult::Success
        },
    )?;
    eprintln!(
        "keel subscribe: member {} of group {group}",
        consumer.member_id()
    );
    let limit = count.unwrap_or(u64::MAX);
    while signals::received().is_none()
        && handled.load(std::sync::atomic::Ordering::Relaxed) < limit
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let errors = consumer.errors();
    consumer.shutdown()?;
    for error in &errors {
        eprintln!("keel subscribe: {error}");
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--from` of `keel subscribe`.
fn start_from(from: &str) -> Result<StartFrom, ClientError> {
    Ok(match from {
        "earliest" => StartFrom::Earliest,
        "latest" => StartFrom::Latest,
        other => StartFrom::Timestamp(parse_time(other).ok_or_else(|| {
            ClientError::InvalidArgument(format!(
                "--from takes earliest, latest, milliseconds since the epoch or an RFC 3339 \
                 time (2026-12-01T10:00:00Z), not {other:?}"
            ))
        })?),
    })
}

/// One delivery on stdout (JSON, the raw payload, or a line), for `keel subscribe`.
fn print_delivery(delivery: &Delivery, format: PayloadFormat) {
    let record = &delivery.record;
    if json() {
        let mut object = record_json(record);
        object["topic"] = delivery.topic.clone().into();
        object["msg_id"] = delivery.msg_id.clone().into();
        object["reconsume_times"] = delivery.reconsume_times.into();
        print_json(&object);
    } else if format.raw {
        write_raw(&record.payload);
    } else {
        println!(
            "{}",
            record_line(
                record,
                &format!("topic={} ", delivery.topic),
                &delivery.msg_id,
                &format!("reconsume={} ", delivery.reconsume_times),
                &format.text(&record.payload)
            )
        );
    }
}

pub(crate) fn property<'a>(record: &'a Record, name: &str) -> &'a str {
    record.property(name).unwrap_or_default()
}
