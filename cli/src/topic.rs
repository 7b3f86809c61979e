//! `keel topic create|update|delete|list|describe` and `keel stats`.

use crate::group::{group_lag, lag_seconds};
use crate::output::bytes_words;
use crate::output::duration_words;
use crate::output::json;
use crate::output::print_json;
use crate::prelude::*;
use crate::security::Target;
use crate::send::EXIT_UNKNOWN;

pub(crate) fn create_topic(
    broker: &Target,
    topic: &str,
    queues: u32,
) -> Result<ExitCode, ClientError> {
    let created = broker.admin()?.create_topic(topic, queues)?;
    if json() {
        print_json(&serde_json::json!({
            "topic": created.topic, "queues": created.queues, "created": created.created,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if created.created {
        "created"
    } else {
        "already exists with"
    };
    println!("topic {} {verb} {} queue(s)", created.topic, created.queues);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn add_queues(
    broker: &Target,
    topic: &str,
    queues: u32,
) -> Result<ExitCode, ClientError> {
    let grown = broker.admin()?.add_queues(topic, queues)?;
    if json() {
        print_json(&serde_json::json!({
            "topic": grown.topic, "queues": grown.queues, "added": grown.created,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    match grown.created {
        true => println!("topic {} now has {} queue(s)", grown.topic, grown.queues),
        false => println!(
            "topic {} already has {} queue(s)",
            grown.topic, grown.queues
        ),
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn delete_topic(
    broker: &Target,
    topic: &str,
    force: bool,
    yes: bool,
) -> Result<ExitCode, ClientError> {
    use std::io::IsTerminal;
    let admin = broker.admin()?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            eprintln!("keel: deleting topic {topic} needs --yes when stdin is not a terminal");
            return Ok(ExitCode::from(2));
        }
        let held = admin.list_topics(Some(topic))?;
        let messages: u64 = held
            .iter()
            .flat_map(|info| &info.queues)
            .map(|queue| queue.max_offset.saturating_sub(queue.min_offset))
            .sum();
        eprint!("delete topic {topic} and its {messages} message(s)? [y/N] ");
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("keel: nothing deleted");
            return Ok(ExitCode::FAILURE);
        }
    }
    let deleted = admin.delete_topic(topic, force)?;
    if json() {
        print_json(&serde_json::json!({
            "topic": deleted.topic, "queues": deleted.queues, "messages": deleted.messages,
            "bytes": deleted.bytes, "durable": deleted.durable,
        }));
    } else {
        println!(
            "deleted topic {}: {} queue(s), {} message(s), {}",
            deleted.topic,
            deleted.queues,
            deleted.messages,
            bytes_words(deleted.bytes)
        );
    }
    if deleted.durable {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "keel: the deletion of {} is in effect but was not confirmed durable in time: it holds \
         once its record is on disk; if the broker stops first, its log decides at the \
         restart (`keel topic list` tells)",
        deleted.topic
    );
    Ok(ExitCode::from(EXIT_UNKNOWN))
}

pub(crate) fn list_topics(broker: &Target, all: bool) -> Result<ExitCode, ClientError> {
    let topics = broker.admin()?.list_topics(None)?;
    let shown = topics
        .into_iter()
        .filter(|t| all || !t.topic.starts_with('%'));
    if json() {
        let topics: Vec<serde_json::Value> = shown.map(|topic| topic_json(&topic)).collect();
        print_json(&serde_json::json!({ "topics": topics }));
        return Ok(ExitCode::SUCCESS);
    }
    for topic in shown {
        let offsets: Vec<String> = topic
            .queues
            .iter()
            .map(|queue| format!("{}..{}", queue.min_offset, queue.max_offset))
            .collect();
        println!(
            "{} queues={} offsets=[{}]",
            topic.topic,
            topic.queues.len(),
            offsets.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn describe_topic(broker: &Target, topic: &str) -> Result<ExitCode, ClientError> {
    let admin = broker.admin()?;
    let Some(stats) = admin.topic_stats(Some(topic))?.into_iter().next() else {
        return Err(ClientError::InvalidArgument(format!("no topic {topic:?}")));
    };
    let groups: Vec<keel_protocol::GroupInfo> = admin
        .list_groups(None)?
        .into_iter()
        .filter(|group| group.topic == topic)
        .collect();
    let stored: u64 = stats
        .queues
        .iter()
        .map(|q| q.max_offset - q.min_offset.min(q.max_offset))
        .sum();
    let bytes: u64 = stats.queues.iter().map(|q| q.bytes).sum();
    let mut waits = Vec::with_capacity(groups.len());
    for group in &groups {
        let mut oldest = 0.0f64;
        for (queue, committed, end) in &group.queues {
            oldest = oldest.max(lag_seconds(&admin, topic, *queue, *committed, *end)?);
        }
        waits.push(oldest);
    }
    let summary = Described {
        stats: &stats,
        groups: &groups,
        waits: &waits,
        stored,
        bytes,
    };
    match json() {
        true => print_described_json(&summary),
        false => print_described(&summary),
    }
    Ok(ExitCode::SUCCESS)
}

/// What `keel topic describe` found.
struct Described<'a> {
    stats: &'a keel_protocol::TopicStats,
    groups: &'a [keel_protocol::GroupInfo],
    /// How long each group's oldest unconsumed message has waited, in seconds.
    waits: &'a [f64],
    stored: u64,
    bytes: u64,
}

/// `count` over the topic's window, a second.
fn per_second(stats: &keel_protocol::TopicStats, count: u64) -> f64 {
    match stats.window_ms {
        0 => 0.0,
        ms => count as f64 * 1000.0 / f64::from(ms),
    }
}

fn print_described_json(described: &Described<'_>) {
    let Described {
        stats,
        groups,
        waits,
        stored,
        bytes,
    } = described;
    let groups: Vec<serde_json::Value> = groups
        .iter()
        .zip(waits.iter())
        .map(|(group, wait)| {
            serde_json::json!({
                "group": group.group, "members": group.members, "lag": group_lag(group),
                "lag_seconds": wait,
            })
        })
        .collect();
    let queues: Vec<serde_json::Value> = stats
        .queues
        .iter()
        .enumerate()
        .map(|(queue, info)| {
            serde_json::json!({
                "queue": queue, "min_offset": info.min_offset,
                "max_offset": info.max_offset, "bytes": info.bytes,
            })
        })
        .collect();
    print_json(&serde_json::json!({
        "topic": stats.topic, "internal": stats.topic.starts_with('%'),
        "queues": queues, "messages_stored": stored, "bytes_stored": bytes,
        "window_ms": stats.window_ms, "window_messages": stats.window_messages,
        "window_bytes": stats.window_bytes,
        "messages_per_second": per_second(stats, stats.window_messages),
        "bytes_per_second": per_second(stats, stats.window_bytes),
        "groups": groups,
    }));
}

fn print_described(described: &Described<'_>) {
    let Described {
        stats,
        groups,
        waits,
        stored,
        bytes,
    } = described;
    println!(
        "topic {}: {} queue(s), {stored} message(s) stored in {}",
        stats.topic,
        stats.queues.len(),
        bytes_words(*bytes)
    );
    println!(
        "  in: {:.1} msg/s, {}/s over the last {:.0} s",
        per_second(stats, stats.window_messages),
        bytes_words(per_second(stats, stats.window_bytes) as u64),
        f64::from(stats.window_ms) / 1000.0
    );
    for (queue, range) in stats.queues.iter().enumerate() {
        println!(
            "  queue {queue}: offsets {}..{}, {}",
            range.min_offset,
            range.max_offset,
            bytes_words(range.bytes)
        );
    }
    for (group, wait) in groups.iter().zip(waits.iter()) {
        println!(
            "  group {}: {} live member(s), lag {} message(s), oldest waiting {}",
            group.group,
            group.members,
            group_lag(group),
            duration_words(*wait)
        );
    }
}

pub(crate) fn topic_json(topic: &keel_protocol::TopicInfo) -> serde_json::Value {
    let queues: Vec<serde_json::Value> = topic
        .queues
        .iter()
        .enumerate()
        .map(|(queue, info)| {
            serde_json::json!({
                "queue": queue, "min_offset": info.min_offset, "max_offset": info.max_offset,
            })
        })
        .collect();
    serde_json::json!({ "topic": topic.topic, "internal": topic.topic.starts_with('%'), "queues": queues })
}

pub(crate) fn stats(broker: &Target) -> Result<ExitCode, ClientError> {
    let admin = broker.admin()?;
    if json() {
        let stats: serde_json::Map<String, serde_json::Value> = admin
            .stats()?
            .into_iter()
            .map(|(name, value)| (name, serde_json::Value::from(value)))
            .collect();
        let topics: Vec<serde_json::Value> =
            admin.list_topics(None)?.iter().map(topic_json).collect();
        print_json(&serde_json::json!({ "stats": stats, "topics": topics }));
        return Ok(ExitCode::SUCCESS);
    }
    for (name, value) in admin.stats()? {
        println!("{name:<26} {value}");
    }
    // The broker's own topics only when they hold something (retries, dead letters).
    let topics = admin.list_topics(None)?.into_iter().filter(|topic| {
        !topic.topic.starts_with('%') || topic.queues.iter().any(|q| q.max_offset > q.min_offset)
    });
    for topic in topics {
        for (queue_id, queue) in topic.queues.iter().enumerate() {
            println!(
                "topic {} queue {queue_id}: offsets {}..{}",
                topic.topic, queue.min_offset, queue.max_offset
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
