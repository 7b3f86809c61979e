//! SEND and SEND_BATCH: check, append (a memory copy), and leave the answer pending
//! until the records are durable by this broker's standard.

use crate::broker::connection::ReplyTo;
use crate::broker::shard::{Acked, PendingSend, Shard};
use crate::error::Refusal;
use keel_protocol::{now_ms, BrokerRole, ErrorCode, Message, SendResult, SendStatus};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A client's SEND or SEND_BATCH (all or nothing). Topics holding `%` are the broker's
/// own (`%RETRY%g`, ...): clients reach them through SEND_BACK only.
pub(crate) fn on_send(
    shard: &mut Shard,
    to: ReplyTo,
    oneway: bool,
    messages: Vec<Message>,
    batch: bool,
) {
    if let Some(message) = messages.iter().find(|m| reserved_topic(&m.topic)) {
        let refusal = reserved_topic_refusal(&message.topic);
        return refuse(shard, to, oneway, messages.len(), refusal);
    }
    append_and_wait(shard, to, oneway, messages, batch);
}

/// Whether a client may not name this topic.
pub(crate) fn reserved_topic(topic: &str) -> bool {
    topic.contains(keel_protocol::RESERVED_TOPIC_PREFIX)
}

pub(crate) fn reserved_topic_refusal(topic: &str) -> Refusal {
    Refusal::new(
        ErrorCode::InvalidTopic,
        format!(
            "topic {topic:?}: '%' is reserved for the broker's own topics; consumers reach \
             retry topics through SEND_BACK"
        ),
    )
}

fn refuse(shard: &mut Shard, to: ReplyTo, oneway: bool, messages: usize, refusal: Refusal) {
    shard
        .broker
        .counters
        .sends_failed
        .fetch_add(messages as u64, Ordering::Relaxed);
    if !oneway {
        shard.reply(to, refusal.response());
    }
}

/// Appends `messages` (after the checks any send gets) and leaves the answer pending
/// until they are durable. SEND_BACK stores its copies through here too.
pub(crate) fn append_and_wait(
    shard: &mut Shard,
    to: ReplyTo,
    oneway: bool,
    messages: Vec<Message>,
    batch: bool,
) {
    let broker = shard.broker.clone();
    let appended = match refusal(shard, &messages, batch) {
        Some(refusal) => Err(refusal),
        None => broker
            .store
            .append_batch(&messages, broker.config.auto_create_topics, now_ms())
            .map_err(Refusal::from),
    };
    let count = messages.len() as u64;
    let appended = match appended {
        Ok(appended) => appended,
        Err(refusal) => return refuse(shard, to, oneway, messages.len(), refusal),
    };
    let (Some(first), Some(last)) = (appended.first().copied(), appended.last().copied()) else {
        return;
    };
    let counters = &broker.counters;
    if last.duplicate {
        counters
            .sends_deduplicated
            .fetch_add(count, Ordering::Relaxed);
    }
    if oneway {
        counters.sends_oneway.fetch_add(count, Ordering::Relaxed);
        return;
    }
    let result = if batch {
        Acked::Batch(
            appended
                .iter()
                .map(|one| (one.queue_id, one.queue_offset, one.log_offset))
                .collect(),
        )
    } else {
        Acked::One(SendResult {
            status: SendStatus::SendOk,
            queue_id: last.queue_id,
            queue_offset: last.queue_offset,
            log_offset: last.log_offset,
        })
    };
    let config = &broker.config;
    let wait_slave = broker.role() == BrokerRole::SyncMaster;
    let now = Instant::now();
    let send = PendingSend {
        to,
        result,
        messages: count,
        log_offset: first.log_offset,
        offset_end: last.offset_end,
        generation: last.generation,
        deadline: now + Duration::from_millis(config.sync_flush_timeout_ms),
        wait_slave,
        arrived: now,
        no_slave: wait_slave && !broker.slave_in_sync(),
        slave_deadline: now + Duration::from_millis(config.slave_timeout_ms),
        retry: last.duplicate,
    };
    shard.expect_send(send);
}

/// Why these messages cannot be taken, checked before any is stored.
fn refusal(shard: &Shard, messages: &[Message], batch: bool) -> Option<Refusal> {
    let broker = &shard.broker;
    if broker.is_shutting_down() {
        return Some(Refusal::new(
            ErrorCode::ShuttingDown,
            "the broker is shutting down",
        ));
    }
    if let Some(refusal) = not_master(shard) {
        return Some(refusal);
    }
    let max_message_bytes = broker.config.max_message_bytes;
    messages.iter().enumerate().find_map(|(index, message)| {
        // Which message, for the text: formatted only for a refusal.
        let which = || match batch {
            true => format!("message {index} of the batch: "),
            false => String::new(),
        };
        if message.payload.len() > max_message_bytes as usize {
            let size = message.payload.len();
            Some(Refusal::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "{}payload of {size} bytes exceeds max_message_bytes {max_message_bytes}",
                    which()
                ),
            ))
        } else if message.flags != 0 {
            Some(Refusal::invalid(format!(
                "{}flags is 0x{:08X}; every flag bit is reserved and must be 0",
                which(),
                message.flags
            )))
        } else if message.compute_crc() != message.message_crc {
            let computed = message.compute_crc();
            Some(Refusal::new(
                ErrorCode::MessageCrcMismatch,
                format!(
                    "{}the message's CRC32C is 0x{computed:08X}, the producer sent 0x{:08X}: \
                     it was damaged on the way (topic, tags, keys, properties, numbers or \
                     payload)",
                    which(),
                    message.message_crc
                ),
            ))
        } else {
            None
        }
    })
}

/// A slave takes no writes: they go to its master (its data arrives from there). A
/// master fenced by a name server takes none either.
pub(crate) fn not_master(shard: &Shard) -> Option<Refusal> {
    let broker = &shard.broker;
    if let Some(reason) = broker.fenced() {
        return Some(Refusal::new(ErrorCode::NotMaster, reason));
    }
    if broker.role().is_master() {
        return None;
    }
    let master = match broker.ha() {
        crate::context::Ha::Slave(slave) => slave.master().to_string(),
        _ => broker
            .config
            .master_address
            .clone()
            .unwrap_or_else(|| "?".into()),
    };
    Some(Refusal::new(
        ErrorCode::NotMaster,
        format!(
            "this broker is a slave of {} (HA address {master}); send to its master",
            broker.config.broker_name
        ),
    ))
}
