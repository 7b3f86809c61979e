//! `keel group list|describe|delete` and `keel offsets show|reset`.

use crate::commands::GroupCommand;
use crate::commands::OffsetsCommand;
use crate::output::duration_words;
use crate::output::json;
use crate::output::parse_time;
use crate::output::print_json;
use crate::prelude::*;
use crate::security::Target;

pub(crate) fn delete_group(
    broker: &Target,
    group: &str,
    force: bool,
) -> Result<ExitCode, ClientError> {
    let deleted = broker.admin()?.delete_group(group, force)?;
    if json() {
        print_json(&serde_json::json!({
            "group": deleted.group, "offsets": deleted.offsets, "members": deleted.members,
        }));
    } else {
        println!(
            "deleted group {}: {} committed offset(s), {} live member(s) forgotten",
            deleted.group, deleted.offsets, deleted.members
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn group(broker: &Target, command: GroupCommand) -> Result<ExitCode, ClientError> {
    let (filter, describe) = match &command {
        GroupCommand::List => (None, false),
        GroupCommand::Describe { group } => (Some(group.as_str()), true),
        GroupCommand::Delete { group, force } => return delete_group(broker, group, *force),
        GroupCommand::Create { group, ordered } => {
            return create_group(broker, group, ordered.unwrap_or(false))
        }
    };
    let admin = broker.admin()?;
    let groups = admin.list_groups(filter)?;
    let ordered = match filter {
        Some(group) => admin.group_settings(group, None)?.ordered,
        None => false,
    };
    if describe && ordered && groups.is_empty() {
        let group = filter.unwrap_or_default();
        match json() {
            true => {
                print_json(&serde_json::json!({ "group": group, "ordered": true, "groups": [] }))
            }
            false => println!("group {group}: ordered; no live member, no committed offset yet"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    if describe && groups.is_empty() {
        return Err(ClientError::InvalidArgument(format!(
            "this broker knows no group {:?} (no live member, no committed offset)",
            filter.unwrap_or_default()
        )));
    }
    // Each queue's lag in seconds: how long its oldest uncommitted message has waited.
    let mut waits: Vec<Vec<f64>> = Vec::with_capacity(groups.len());
    for info in &groups {
        let mut each = Vec::with_capacity(info.queues.len());
        for (queue, committed, end) in &info.queues {
            each.push(lag_seconds(&admin, &info.topic, *queue, *committed, *end)?);
        }
        waits.push(each);
    }
    if json() {
        print_groups_json(&groups, &waits, filter.map(|_| ordered));
    } else if describe {
        if ordered {
            println!(
                "group {}: ordered (by message group)",
                filter.unwrap_or_default()
            );
        }
        print_group_details(&groups, &waits);
    } else {
        print_group_table(&groups, &waits);
    }
    Ok(ExitCode::SUCCESS)
}

/// Messages a group has not committed, over its queues.
pub(crate) fn group_lag(group: &keel_protocol::GroupInfo) -> u64 {
    group
        .queues
        .iter()
        .map(|(_, committed, end)| end.saturating_sub(*committed))
        .sum()
}

/// The longest of a group's queues' waits.
fn oldest(waits: &[f64]) -> f64 {
    waits.iter().copied().fold(0.0, f64::max)
}

/// `keel group create`: the group's settings, durable on the master when answered.
fn create_group(broker: &Target, group: &str, ordered: bool) -> Result<ExitCode, ClientError> {
    let settings = broker.admin()?.group_settings(group, Some(ordered))?;
    if json() {
        print_json(&serde_json::json!({
            "group": settings.group, "ordered": settings.ordered,
        }));
    } else {
        println!(
            "group {}: {}",
            settings.group,
            match settings.ordered {
                true => "ordered (each message group one message at a time, in order)",
                false => "concurrent (not ordered)",
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `ordered`: the group's setting, for `describe`; `None` for `list`.
fn print_groups_json(
    groups: &[keel_protocol::GroupInfo],
    waits: &[Vec<f64>],
    ordered: Option<bool>,
) {
    let groups: Vec<serde_json::Value> = groups
        .iter()
        .zip(waits)
        .map(|(info, waits)| {
            let queues: Vec<serde_json::Value> = info
                .queues
                .iter()
                .zip(waits)
                .map(|((queue, committed, end), wait)| {
                    serde_json::json!({
                        "queue": queue, "committed": committed, "end": end,
                        "lag": end.saturating_sub(*committed), "lag_seconds": wait,
                    })
                })
                .collect();
            serde_json::json!({
                "group": info.group, "topic": info.topic, "members": info.members,
                "lag": group_lag(info), "lag_seconds": oldest(waits), "queues": queues,
            })
        })
        .collect();
    match ordered {
        Some(ordered) => print_json(&serde_json::json!({ "ordered": ordered, "groups": groups })),
        None => print_json(&serde_json::json!({ "groups": groups })),
    }
}

fn print_group_details(groups: &[keel_protocol::GroupInfo], waits: &[Vec<f64>]) {
    for (info, waits) in groups.iter().zip(waits) {
        println!(
            "group {} on {}: {} live member(s), lag {} message(s), oldest waiting {}",
            info.group,
            info.topic,
            info.members,
            group_lag(info),
            duration_words(oldest(waits))
        );
        for ((queue, committed, end), wait) in info.queues.iter().zip(waits) {
            println!(
                "  queue {queue}: committed {committed}, end {end}, lag {} ({})",
                end.saturating_sub(*committed),
                duration_words(*wait)
            );
        }
    }
}

fn print_group_table(groups: &[keel_protocol::GroupInfo], waits: &[Vec<f64>]) {
    println!(
        "{:<24} {:<24} {:>7} {:>10} {:>10}",
        "group", "topic", "members", "lag", "lag_time"
    );
    for (info, waits) in groups
        .iter()
        .zip(waits)
        .filter(|(info, _)| !info.group.starts_with('%'))
    {
        println!(
            "{:<24} {:<24} {:>7} {:>10} {:>10}",
            info.group,
            info.topic,
            info.members,
            group_lag(info),
            duration_words(oldest(waits))
        );
    }
}

/// Seconds since the oldest message of a queue a group has not committed was stored
/// (0 when it committed everything).
pub(crate) fn lag_seconds(
    admin: &keel_client::Admin,
    topic: &str,
    queue: u32,
    committed: u64,
    end: u64,
) -> Result<f64, ClientError> {
    if committed >= end {
        return Ok(0.0);
    }
    Ok(match admin.store_time_at(topic, queue, committed)? {
        Some(stored_ms) => keel_protocol::now_ms().saturating_sub(stored_ms) as f64 / 1000.0,
        None => 0.0,
    })
}

/// One queue's planned reset: (queue, committed before, target, clamped, its range).
type Move = (u32, Option<u64>, u64, bool, keel_protocol::QueueInfo);

pub(crate) fn offsets(broker: &Target, command: OffsetsCommand) -> Result<ExitCode, ClientError> {
    let admin = broker.admin()?;
    let (group, topic) = match &command {
        OffsetsCommand::Show { group, topic } | OffsetsCommand::Reset { group, topic, .. } => {
            (group.clone(), topic.clone())
        }
    };
    let (group, topic) = (group.as_str(), topic.as_str());
    let info = admin.list_topics(Some(topic))?.into_iter().next();
    let queues = info.map(|info| info.queues).unwrap_or_default();
    match command {
        OffsetsCommand::Show { .. } => show_offsets(&admin, group, topic, &queues)?,
        OffsetsCommand::Reset {
            to,
            shift,
            queue,
            dry_run,
            force,
            ..
        } => {
            let members = reset_allowed(&admin, group, topic, &queues, queue, force || dry_run)?;
            let moves = reset_moves(&admin, group, topic, &queues, queue, to.as_deref(), shift)?;
            for (queue_id, _, target, _, _) in &moves {
                if !dry_run {
                    admin.commit_offset(group, topic, *queue_id, *target)?;
                }
            }
            print_moves(group, topic, &moves, dry_run, members);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `keel offsets show`: each queue's committed offset, stored range and lag.
fn show_offsets(
    admin: &keel_client::Admin,
    group: &str,
    topic: &str,
    queues: &[keel_protocol::QueueInfo],
) -> Result<(), ClientError> {
    let mut rows = Vec::new();
    for (queue_id, queue) in queues.iter().enumerate() {
        let committed = admin.query_offset(group, topic, queue_id as u32)?;
        let lag = queue
            .max_offset
            .saturating_sub(committed.unwrap_or(queue.min_offset));
        if json() {
            rows.push(serde_json::json!({
                "queue": queue_id, "committed": committed,
                "min_offset": queue.min_offset, "max_offset": queue.max_offset,
                "lag": lag,
                "expired": committed.is_some_and(|offset| offset < queue.min_offset),
            }));
            continue;
        }
        let state = match committed {
            Some(offset) if offset < queue.min_offset => {
                " (EXPIRED: below the first stored offset)"
            }
            _ => "",
        };
        let committed = committed.map_or("none".to_string(), |offset| offset.to_string());
        println!(
            "queue {queue_id}: committed {committed}, stored {}..{}, lag {lag}{state}",
            queue.min_offset, queue.max_offset
        );
    }
    if json() {
        print_json(&serde_json::json!({ "group": group, "topic": topic, "queues": rows }));
    }
    Ok(())
}

/// Refuses a reset of a topic that does not exist, of a queue it lacks, or (unless
/// `forced`) while the group has live members on it. Returns the live members.
fn reset_allowed(
    admin: &keel_client::Admin,
    group: &str,
    topic: &str,
    queues: &[keel_protocol::QueueInfo],
    queue: Option<u32>,
    forced: bool,
) -> Result<u32, ClientError> {
    if queues.is_empty() {
        return Err(ClientError::InvalidArgument(format!("no topic {topic:?}")));
    }
    if let Some(only) = queue.filter(|only| *only as usize >= queues.len()) {
        return Err(ClientError::InvalidArgument(format!(
            "topic {topic:?} has queues 0 to {}, not {only}",
            queues.len() - 1
        )));
    }
    let members = admin
        .list_groups(Some(group))?
        .iter()
        .filter(|info| info.topic == topic)
        .map(|info| info.members)
        .sum::<u32>();
    if members > 0 && !forced {
        return Err(ClientError::InvalidArgument(format!(
            "group {group} has {members} live member(s) on {topic}: they commit their own \
                     positions over a reset. Stop them first, or pass --force"
        )));
    }
    Ok(members)
}

/// Where each queue's committed offset goes: `to` (earliest, latest, an offset or a
/// time) or the committed offset moved by `shift`, clamped to what is stored.
fn reset_moves(
    admin: &keel_client::Admin,
    group: &str,
    topic: &str,
    queues: &[keel_protocol::QueueInfo],
    queue: Option<u32>,
    to: Option<&str>,
    shift: Option<i64>,
) -> Result<Vec<Move>, ClientError> {
    let time = match to {
        Some("earliest" | "latest") | None => None,
        Some(text) if text.bytes().all(|b| b.is_ascii_digit()) => None,
        Some(text) => Some(parse_time(text).ok_or_else(|| {
            ClientError::InvalidArgument(format!(
                "--to takes earliest, latest, an offset or an RFC 3339 time \
                         (2026-12-01T10:00:00Z), not {text:?}"
            ))
        })?),
    };
    let mut moves = Vec::new();
    for (queue_id, info) in queues.iter().enumerate() {
        if queue.is_some_and(|only| only as usize != queue_id) {
            continue;
        }
        let queue_id = queue_id as u32;
        let committed = admin.query_offset(group, topic, queue_id)?;
        let wanted = match (to, shift, time) {
            (_, _, Some(ms)) => i128::from(admin.offset_for_time(topic, queue_id, ms)?),
            (Some("earliest"), _, _) => i128::from(info.min_offset),
            (Some("latest"), _, _) => i128::from(info.max_offset),
            (Some(number), _, _) => number.parse::<u64>().map(i128::from).map_err(|_| {
                ClientError::InvalidArgument(format!("--to {number:?} is not an offset"))
            })?,
            (None, Some(by), _) => {
                i128::from(committed.unwrap_or(info.min_offset)) + i128::from(by)
            }
            (None, None, _) => {
                return Err(ClientError::InvalidArgument("give --to or --shift".into()))
            }
        };
        let (low, high) = (info.min_offset, info.max_offset.max(info.min_offset));
        let target = wanted.clamp(i128::from(low), i128::from(high)) as u64;
        moves.push((
            queue_id,
            committed,
            target,
            wanted != i128::from(target),
            *info,
        ));
    }
    Ok(moves)
}

fn print_moves(group: &str, topic: &str, moves: &[Move], dry_run: bool, members: u32) {
    if json() {
        let rows: Vec<serde_json::Value> = moves
            .iter()
            .map(|(queue_id, from, to, clamped, info)| {
                serde_json::json!({
                    "queue": queue_id, "from": from, "to": to, "clamped": clamped,
                    "min_offset": info.min_offset, "max_offset": info.max_offset,
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "group": group, "topic": topic, "dry_run": dry_run,
            "live_members": members, "queues": rows,
        }));
        return;
    }
    let verb = if dry_run { "would move" } else { "moved" };
    for (queue_id, from, to, clamped, info) in moves {
        let from = from.map_or("none".to_string(), |offset| offset.to_string());
        let clamped = if *clamped {
            format!(
                " (clamped to the stored {}..{})",
                info.min_offset, info.max_offset
            )
        } else {
            String::new()
        };
        println!("queue {queue_id}: {verb} {group} from {from} to {to}{clamped}");
    }
    if dry_run {
        eprintln!("keel offsets reset: dry run, nothing changed");
    } else if members > 0 {
        eprintln!(
            "keel offsets reset: {group} has {members} live member(s); they may commit over this"
        );
    }
}
