//! `keel admin verify|dump|truncate`: offline tools for a stopped broker's data
//! directory (the only part of the CLI that reads one).

use crate::cluster::promote;
use crate::commands::AdminCommand;
use crate::output::escape;
use crate::output::json;
use crate::output::print_json;
use crate::prelude::*;
use crate::security::Target;

/// Plausibility bound on a stored record, as keeld computes it.
pub(crate) fn max_record_bytes(max_message_bytes: u32) -> u32 {
    max_message_bytes.saturating_add(keel_protocol::RECORD_OVERHEAD_MAX)
}

/// What an offline tool's failure looks like to the CLI.
fn storage_error(error: keel_storage::StoreError) -> ClientError {
    ClientError::InvalidArgument(error.to_string())
}

pub(crate) fn admin(broker: &Target, command: AdminCommand) -> Result<ExitCode, ClientError> {
    match command {
        AdminCommand::Promote { role, force } => promote(broker, &role, force),
        AdminCommand::Verify {
            data_dir,
            max_message_bytes,
        } => verify(&data_dir, max_message_bytes),
        AdminCommand::Dump {
            data_dir,
            from,
            count,
            payload,
        } => dump(&data_dir, from, count, payload),
        AdminCommand::Truncate {
            data_dir,
            offset,
            discard_acknowledged_messages,
            max_message_bytes,
        } => truncate(
            &data_dir,
            offset,
            discard_acknowledged_messages,
            max_message_bytes,
        ),
    }
}

/// `keel admin verify`: exit 0 when keeld would start on the directory.
fn verify(data_dir: &std::path::Path, max_message_bytes: u32) -> Result<ExitCode, ClientError> {
    let report = keel_storage::admin::verify(data_dir, max_record_bytes(max_message_bytes))
        .map_err(storage_error)?;
    if json() {
        print_verify_json(data_dir, &report);
    } else {
        print_verify(data_dir, &report);
    }
    Ok(if report.starts() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_verify_json(data_dir: &std::path::Path, report: &keel_storage::admin::VerifyReport) {
    let damage = report.damage.as_ref().map(|damage| {
        serde_json::json!({
            "at": damage.at, "resumes_at": damage.resumes_at,
            "unreadable_bytes": damage.unreadable_bytes(),
            "records_after": damage.records_after,
            "record_bytes_after": damage.record_bytes_after,
            "log_bytes_end": damage.log_bytes_end,
            "topics_after": damage.topics_after,
        })
    });
    print_json(&serde_json::json!({
        "data_dir": data_dir.display().to_string(),
        "segments": report.segments, "records": report.records,
        "offset_end": report.offset_end, "checkpoint": report.checkpoint,
        "clean_shutdown": report.clean_shutdown,
        "torn_tail_bytes": report.torn_tail_bytes,
        "torn_tail_reason": report.torn_tail_reason,
        "topics": report.topics,
        "stale_index_files": report.stale_index_files,
        "metadata_errors": report.metadata_errors,
        "corruption": report.corruption, "damage": damage,
        "starts": report.starts(),
    }));
}

fn print_verify(data_dir: &std::path::Path, report: &keel_storage::admin::VerifyReport) {
    println!("data directory   {}", data_dir.display());
    println!("segments         {}", report.segments);
    print_damage(report);
    let checkpoint = report
        .checkpoint
        .map_or("none".to_string(), |offset| offset.to_string());
    println!(
        "checkpoint       {checkpoint} (last fsynced offset), shutdown {}",
        if report.clean_shutdown {
            "clean"
        } else {
            "unclean"
        }
    );
    for (topic, queues) in &report.topics {
        match &report.damage {
            None => println!("topic {topic}: queue lengths {queues:?}"),
            Some(damage) => println!(
                "topic {topic}: queue lengths {queues:?} before the damage, {} intact record(s) after it",
                damage.topics_after.get(topic).copied().unwrap_or(0)
            ),
        }
    }
    if let Some(damage) = &report.damage {
        for (topic, count) in &damage.topics_after {
            if !report.topics.contains_key(topic) {
                println!(
                    "topic {topic}: none before the damage, {count} intact record(s) after it"
                );
            }
        }
    }
    if let Some(reason) = &report.torn_tail_reason {
        println!(
            "TORN TAIL        {} bytes would be cut at the next start: {reason}",
            report.torn_tail_bytes
        );
    }
    for stale in &report.stale_index_files {
        println!("STALE INDEX      {stale} (rebuilt from the log at the next start)");
    }
    for problem in &report.metadata_errors {
        println!("METADATA ERROR   {problem}");
    }
    if let Some(corruption) = &report.corruption {
        println!("CORRUPTION       {corruption}");
    }
    if report.starts() {
        println!("result           OK: keeld will start on this directory");
    } else {
        println!("result           keeld will REFUSE to start on this directory");
    }
}

/// The records `verify` counted, and where the damage is when there is some.
fn print_damage(report: &keel_storage::admin::VerifyReport) {
    match &report.damage {
        None => {
            println!("records          {} (all CRC32C-checked)", report.records);
            println!(
                "log end offset   {} (where the valid records end)",
                report.offset_end
            );
        }
        Some(damage) => {
            println!(
                "records          {} intact: {} before the damage, {} after it (all CRC32C-checked)",
                report.records + damage.records_after,
                report.records,
                damage.records_after
            );
            println!(
                "valid prefix     log offsets 0..{} (where the first bad record starts)",
                damage.at
            );
            let resumes = damage
                .resumes_at
                .map_or("no intact record follows".to_string(), |offset| {
                    format!("intact records resume at log offset {offset}")
                });
            println!(
                "damaged          {} byte(s) from log offset {} are no intact record; {resumes}",
                damage.unreadable_bytes(),
                damage.at
            );
            println!(
                "log bytes end    {} (the last segment's end)",
                damage.log_bytes_end
            );
            println!(
                "truncating       at {} discards {} intact record(s) ({} bytes) besides the damaged bytes",
                damage.at, damage.records_after, damage.record_bytes_after
            );
        }
    }
}

/// `keel admin dump`: `count` records from log offset `from`.
fn dump(
    data_dir: &std::path::Path,
    from: u64,
    count: u64,
    payload: bool,
) -> Result<ExitCode, ClientError> {
    let mut printed = 0u64;
    keel_storage::admin::dump(data_dir, from, |entry| {
        match entry {
            keel_storage::admin::DumpEntry::Record(record) => {
                print!(
                    "offset={} size={} topic={} queue={} queue_offset={} stored_ms={} tags={:?} keys={:?} properties={:?} payload_bytes={} message_crc_ok={}",
                    record.log_offset,
                    record.total_size,
                    record.topic,
                    record.queue_id,
                    record.queue_offset,
                    record.store_timestamp_ms,
                    record.tags,
                    record.keys,
                    record.properties,
                    record.payload.len(),
                    record.message_crc_matches()
                );
                if payload {
                    print!(" payload={}", escape(&record.payload));
                }
                println!();
            }
            keel_storage::admin::DumpEntry::Bad { log_offset, detail } => {
                println!("offset={log_offset} BAD: {detail}");
            }
        }
        printed += 1;
        printed < count
    })
    .map_err(storage_error)?;
    Ok(ExitCode::SUCCESS)
}

/// `keel admin truncate`: cuts the log at `offset`, once confirmed.
fn truncate(
    data_dir: &std::path::Path,
    offset: u64,
    discard_acknowledged_messages: bool,
    max_message_bytes: u32,
) -> Result<ExitCode, ClientError> {
    if !discard_acknowledged_messages {
        return Err(ClientError::InvalidArgument(
            "truncating discards every message from OFFSET on; pass --discard-acknowledged-messages to confirm".into(),
        ));
    }
    let discarded =
        keel_storage::admin::truncate(data_dir, offset, max_record_bytes(max_message_bytes))
            .map_err(storage_error)?;
    println!("truncated the log at offset {offset}: {discarded} bytes discarded");
    Ok(ExitCode::SUCCESS)
}
