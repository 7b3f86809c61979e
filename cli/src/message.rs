//! `keel dlq list|show|redrive` and `keel message show`.

use crate::commands::DlqCommand;
use crate::consume::property;
use crate::output::escape;
use crate::output::format_time;
use crate::output::json;
use crate::output::print_json;
use crate::output::record_json;
use crate::output::PayloadFormat;
use crate::prelude::*;
use crate::security::Target;
use keel_protocol::names::property as names;

pub(crate) fn dlq(broker: &Target, command: DlqCommand) -> Result<ExitCode, ClientError> {
    match command {
        DlqCommand::List { group } => {
            let admin = broker.admin()?;
            let (count, redriven) = admin.dlq_count(&group)?;
            if json() {
                print_json(&serde_json::json!({
                    "group": group, "topic": keel_protocol::dlq_topic(&group),
                    "dead_lettered": count, "redriven": redriven,
                }));
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{}: {count} dead-lettered message(s), {redriven} redriven so far",
                keel_protocol::dlq_topic(&group)
            );
        }
        DlqCommand::Show { group, count } => {
            for record in broker.admin()?.dlq_messages(&group, count)? {
                if json() {
                    print_json(&record_json(&record));
                    continue;
                }
                println!(
                    "id={} stored={} origin={}/{} attempts={} reason={:?} payload={}",
                    record.message_id(),
                    format_time(record.store_timestamp_ms),
                    property(&record, names::ORIGIN_TOPIC),
                    property(&record, names::ORIGIN_MSG_ID),
                    property(&record, names::RECONSUME_TIMES),
                    property(&record, names::REASON),
                    escape(&record.payload)
                );
            }
        }
        DlqCommand::Redrive { group, id } => {
            let redriven = broker.admin()?.redrive_dlq(&group, id.as_deref())?;
            for (from, to) in &redriven {
                println!("redriven {from} -> {to}");
            }
            println!(
                "{} message(s) redriven to {}",
                redriven.len(),
                keel_protocol::retry_topic(&group)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn message_show(
    broker: &Target,
    id: Option<&str>,
    key: Option<&str>,
    payload: Option<PayloadFormat>,
) -> Result<ExitCode, ClientError> {
    let msg_id = match (id, key) {
        (Some(id), None) => u64::from_str_radix(id, 16).map_err(|_| {
            ClientError::InvalidArgument(format!("{id:?} is not a message id (16 hex digits)"))
        })?,
        (None, Some(_)) => 0,
        _ => {
            return Err(ClientError::InvalidArgument(
                "give a message id or --key, not both".into(),
            ))
        }
    };
    let admin = broker.admin()?;
    let mut info = admin.message_info(msg_id, key)?;
    if let Some(format) = payload {
        info.push(message_payload(&admin, &info, format)?);
    }
    if json() {
        // The facts in order; a name that repeats (one per group) becomes a list.
        let mut object = serde_json::Map::new();
        let mut properties = serde_json::Map::new();
        for (name, value) in info {
            if let Some(key) = name.strip_prefix("property ") {
                properties.insert(key.to_string(), value.into());
                continue;
            }
            match object.get_mut(&name) {
                Some(serde_json::Value::Array(list)) => list.push(value.into()),
                Some(single) => {
                    let first = single.take();
                    *single = serde_json::Value::Array(vec![first, value.into()]);
                }
                None => {
                    object.insert(name, value.into());
                }
            }
        }
        object.insert("properties".into(), serde_json::Value::Object(properties));
        print_json(&serde_json::Value::Object(object));
        return Ok(ExitCode::SUCCESS);
    }
    for (name, value) in info {
        match value.parse::<u64>() {
            Ok(ms) if name.ends_with("_ms") && name != "size" => {
                println!("{name:<24} {value} ({})", format_time(ms))
            }
            _ => println!("{name:<24} {value}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The payload of the message the facts describe, read where they say it is: a fact
/// `payload` (escaped text), or `payload_hex`.
pub(crate) fn message_payload(
    admin: &keel_client::Admin,
    info: &[(String, String)],
    format: PayloadFormat,
) -> Result<(String, String), ClientError> {
    let fact = |name: &str| {
        info.iter()
            .find(|(fact, _)| fact == name)
            .map(|(_, value)| value.as_str())
    };
    let place = (
        fact("topic"),
        fact("queue").and_then(|q| q.parse::<u32>().ok()),
        fact("queue_offset").and_then(|o| o.parse::<u64>().ok()),
    );
    let (Some(topic), Some(queue), Some(offset)) = place else {
        return Err(ClientError::Protocol(
            "the broker did not say where the message is".into(),
        ));
    };
    let record = admin.record_at(topic, queue, offset)?.ok_or_else(|| {
        ClientError::InvalidArgument(
            "the message is not readable yet (not durable) or no longer (retention)".into(),
        )
    })?;
    let name = match format.hex {
        true => "payload_hex",
        false => "payload",
    };
    Ok((name.to_string(), format.text(&record.payload)))
}
