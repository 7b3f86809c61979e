//! SEND and SEND_BATCH: check, append (a memory copy), and leave the answer pending
//! until the records are durable by this broker's standard.

use crate::broker::connection::ReplyTo;
use crate::broker::shard::{Acked, PendingSend, Shard};
use crate::broker::timer;
use crate::error::Refusal;
use keel_protocol::names::property;
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

/// `messages` with each one a producer asked to deliver at a time (`KEEL_DELIVER_AT`,
/// after its CRC was checked) put in the timer instead (`timer.rs`). A time that is not
/// a number, or beyond `max_delay_ms`, refuses the whole send, as a topic or queue the
/// message could never be delivered to does.
fn delayed(
    broker: &crate::context::Broker,
    mut messages: Vec<Message>,
    batch: bool,
    now: u64,
) -> Result<Vec<Message>, Refusal> {
    let top = timer::top_level(broker.config.retention_hours.saturating_mul(3_600_000));
    for (index, message) in messages.iter_mut().enumerate() {
        if reserved_topic(&message.topic) {
            continue; // SEND_BACK's copies, placed already.
        }
        let Some(at) = message.property(property::DELIVER_AT) else {
            continue;
        };
        let which = || match batch {
            true => format!("message {index} of the batch: "),
            false => String::new(),
        };
        let due: u64 = at.parse().map_err(|_| {
            let detail = format!(
                "{}{} = {at:?} is not a time (ms since the Unix epoch)",
                which(),
                property::DELIVER_AT
            );
            Refusal::invalid(detail)
        })?;
        let max = broker.config.max_delay_ms;
        if due.saturating_sub(now) > max {
            let detail = format!(
                "{}{} is {} ms from now, beyond max_delay_ms ({max})",
                which(),
                property::DELIVER_AT,
                due - now
            );
            return Err(Refusal::invalid(detail));
        }
        deliverable(broker, message)
            .map_err(|refusal| Refusal::new(refusal.code, which() + &refusal.message))?;
        // The broker's own names: where it goes is the message's topic and queue, and
        // the id the copies name as their origin is the one this SEND is answered with.
        message.properties.retain(|(key, _)| {
            key != property::REAL_TOPIC
                && key != property::REAL_QUEUE
                && key != property::ORIGIN_MSG_ID
        });
        // Due already or not, it goes through the timer (a time past leaves at its next
        // round): a retry of this SEND makes the same record and is recognised.
        let level = timer::level_for(due, now, top);
        *message = timer::waiting(std::mem::take(message), due, level);
        // Room for what the timer adds to its copies (`KEEL_ORIGIN_MSG_ID`).
        let max = broker.store.config().max_record_bytes as usize;
        if message
            .record_len()
            .saturating_add(timer::COPY_GROWTH_BYTES)
            > max
        {
            let detail = format!(
                "{}a delayed message's record may be at most {} bytes (the timer adds a \
                 property to its copies), this one is {}",
                which(),
                max.saturating_sub(timer::COPY_GROWTH_BYTES),
                message.record_len()
            );
            return Err(Refusal::new(ErrorCode::MessageTooLarge, detail));
        }
    }
    Ok(messages)
}

/// `messages` with each half message (`KEEL_TRANSACTION`, after its CRC was checked)
/// put in `%HALF%` until its transaction ends (`broker/transactions.rs`). A half message
/// is sent alone, not delayed, to a topic and queue a send could reach now.
fn transactional(
    broker: &crate::context::Broker,
    mut messages: Vec<Message>,
    batch: bool,
) -> Result<Vec<Message>, Refusal> {
    use crate::broker::transactions;
    for message in messages.iter_mut() {
        if reserved_topic(&message.topic) {
            continue;
        }
        let Some(group) = transactions::producer_group_of(message) else {
            continue;
        };
        if batch {
            return Err(Refusal::invalid(format!(
                "a half message ({}) is sent alone, not in a SEND_BATCH",
                property::TRANSACTION
            )));
        }
        if let Some(refusal) = transactions::invalid_producer_group(group) {
            return Err(refusal);
        }
        if message.property(property::DELIVER_AT).is_some() {
            return Err(Refusal::invalid(format!(
                "a half message ({}) cannot be delayed ({}): delay the send after the \
                 commit instead",
                property::TRANSACTION,
                property::DELIVER_AT
            )));
        }
        if !transactions::has_room(broker) {
            return Err(Refusal::new(
                ErrorCode::Busy,
                format!(
                    "{} transactions are open on this broker; end some first",
                    transactions::OPEN_MAX
                ),
            ));
        }
        deliverable(broker, message)?;
        *message = transactions::half(std::mem::take(message));
        let max = broker.store.config().max_record_bytes as usize;
        let len = message.record_len();
        if len.saturating_add(transactions::COMMIT_GROWTH_BYTES) > max {
            return Err(Refusal::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "a half message's record may be at most {} bytes (its commit adds \
                     properties), this one is {len}",
                    max.saturating_sub(transactions::COMMIT_GROWTH_BYTES)
                ),
            ));
        }
    }
    Ok(messages)
}

/// Whether the topic of a delayed message can take it when it is due: refused now as a
/// send to it would be, not lost later. A topic that does not exist is created now (with
/// `auto_create_topics`), as a send to it would, so that consumers can subscribe to it
/// before its first message is due.
fn deliverable(broker: &crate::context::Broker, message: &Message) -> Result<(), Refusal> {
    let topic = &message.topic;
    let queues = match broker.store.topic_queues(topic) {
        Some(queues) => queues,
        None if broker.config.auto_create_topics => {
            let queues = broker.config.default_queues;
            broker
                .store
                .create_topic(topic, queues)
                .map_err(Refusal::from)?
                .0
        }
        None => {
            let detail = format!("topic {topic:?} does not exist");
            return Err(Refusal::new(ErrorCode::TopicNotFound, detail));
        }
    };
    if message.queue_id != keel_protocol::QUEUE_ID_ANY && message.queue_id >= queues {
        let detail = format!(
            "queue {} of topic {topic:?}, which has {queues} queues",
            message.queue_id
        );
        return Err(Refusal::new(ErrorCode::InvalidQueueId, detail));
    }
    Ok(())
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
    let now = now_ms();
    let total = messages.len();
    let appended = match refusal(shard, &messages, batch) {
        Some(refusal) => Err(refusal),
        None => transactional(&broker, messages, batch)
            .and_then(|messages| delayed(&broker, messages, batch, now))
            .and_then(|messages| {
                broker
                    .store
                    .append_batch(&messages, broker.config.auto_create_topics, now)
                    .map_err(Refusal::from)
            }),
    };
    let count = total as u64;
    let appended = match appended {
        Ok(appended) => appended,
        Err(refusal) => return refuse(shard, to, oneway, total, refusal),
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
        } else if keel_protocol::names::is_broker_producer_id(message.producer_id) {
            Some(Refusal::invalid(format!(
                "{}producer_id {:016x} is one of the broker's own (its scheduler's and timer's \
                 copies); pick another",
                which(),
                message.producer_id
            )))
        } else if let Some(detail) = message
            .property(property::MESSAGE_GROUP)
            .and_then(keel_protocol::names::invalid_message_group)
        {
            Some(Refusal::invalid(format!("{}{detail}", which())))
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
