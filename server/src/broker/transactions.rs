//! Transactions: half messages, how each ends (commit or rollback), and checks with the
//! producer group when none comes.
//!
//! - **A half message** is a SEND with `KEEL_TRANSACTION` (its producer group). It is
//!   stored at once in `%HALF%` (queue 0), with where it goes in `KEEL_REAL_TOPIC` and
//!   `KEEL_REAL_QUEUE`, and answered SEND_OK like any message: durable, on a slave too
//!   for a sync master. Consumers never see `%HALF%`.
//! - **The end** (END_TRANSACTION, or the broker when the checks ran out) is an op
//!   record in `%HALF_OP%` naming the half message, then, for a commit, the message in
//!   its topic. Both are ordinary records of the CommitLog, replicated like every other.
//! - **Exactly once in its topic.** The committed message carries producer id
//!   `TRANSACTION_PRODUCER_ID` and, as sequence, its op record's queue offset + 1, and is
//!   made only from the half record and that number, so making it twice stores it once.
//!   Ends are made one at a time (op, then message): a crash can leave only the last op
//!   without its message, and whoever serves as master next stores it again from the
//!   op (a duplicate if it was there).
//! - **State** is rebuilt from the log when a broker starts serving as master (start-up
//!   or promotion): the half messages from a committed progress offset on, minus the
//!   ops from theirs. The progress (group `%TRANSACTIONS%`) only passes half messages
//!   whose end is durable. What lives in memory only is how many checks each open
//!   transaction had: a broker that starts serving counts them again from zero.
//! - **Checks.** An open transaction is due for a check `transaction_check_delay_ms`
//!   after its half message was stored, then every `transaction_check_interval_ms`; a
//!   producer of its group asks for the due ones (CHECK_TRANSACTIONS) and ends them.
//!   After `transaction_check_max` checks the broker ends it as
//!   `transaction_unresolved` says (roll back by default), logged and counted.

use crate::config::Unresolved;
use crate::context::transactions::{Ended, Open, State};
use crate::context::Broker;
use crate::error::Refusal;
use keel_protocol::names::{property, HALF_OP_TOPIC, HALF_TOPIC, TRANSACTION_PRODUCER_ID};
use keel_protocol::{
    now_ms, ErrorCode, Message, OpenTransaction, Record, TransactionCheck, TransactionEnded,
    TxAction, QUEUE_ID_ANY,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The group under which the scan progress of `%HALF%` and `%HALF_OP%` is committed.
pub const TRANSACTIONS_GROUP: &str = "%TRANSACTIONS%";

/// Open transactions one broker holds at most: a half message beyond is refused (BUSY).
pub const OPEN_MAX: usize = 1_000_000;

/// What the committed message adds to its half record's size: `KEEL_TRANSACTION_ID`
/// and `KEEL_ORIGIN_MSG_ID` with 16 hex digits each (a half SEND keeps this room).
pub const COMMIT_GROWTH_BYTES: usize = 2 * (2 + 22 + 2 + 16);

/// Records read per scan step.
const BATCH: u32 = 256;

/// Why a producer group's name is refused, if it is.
pub(crate) fn invalid_producer_group(group: &str) -> Option<Refusal> {
    match keel_protocol::validate_topic(group) {
        Ok(()) if !group.contains('%') => None,
        Ok(()) => Some(Refusal::invalid(
            "a producer group name may not contain '%'",
        )),
        Err(detail) => Some(Refusal::invalid(format!(
            "invalid producer group: {detail}"
        ))),
    }
}

/// Whether a SEND is a half message, and of which producer group.
pub fn producer_group_of(message: &Message) -> Option<&str> {
    message.property(property::TRANSACTION)
}

/// `message` as it waits for its end: in `%HALF%`, with where it goes, sealed anew.
pub fn half(mut message: Message) -> Message {
    let real_topic = std::mem::replace(&mut message.topic, HALF_TOPIC.to_string());
    let real_queue = std::mem::replace(&mut message.queue_id, 0);
    message.properties.retain(|(key, _)| {
        key != property::REAL_TOPIC
            && key != property::REAL_QUEUE
            && key != property::ORIGIN_MSG_ID
            && key != property::TRANSACTION_ID
    });
    message
        .properties
        .push((property::REAL_TOPIC.to_string(), real_topic));
    if real_queue != QUEUE_ID_ANY {
        message
            .properties
            .push((property::REAL_QUEUE.to_string(), real_queue.to_string()));
    }
    message.seal();
    message
}

/// The message a committed half record becomes, numbered by its op record (`op_offset`):
/// nothing in it depends on when it is made, so making it again stores it once.
fn committed(half: &Record, op_offset: u64) -> Result<Message, String> {
    let mut message = half.to_message();
    message.topic = half
        .property(property::REAL_TOPIC)
        .ok_or("no KEEL_REAL_TOPIC")?
        .to_string();
    message.queue_id = match half.property(property::REAL_QUEUE) {
        Some(queue) => queue.parse().map_err(|_| "a bad KEEL_REAL_QUEUE")?,
        None => QUEUE_ID_ANY,
    };
    let id = half.message_id();
    message.properties.retain(|(key, _)| {
        key != property::REAL_TOPIC && key != property::REAL_QUEUE && key != property::TRANSACTION
    });
    message
        .properties
        .push((property::TRANSACTION_ID.to_string(), id.clone()));
    message
        .properties
        .push((property::ORIGIN_MSG_ID.to_string(), id));
    message.producer_id = TRANSACTION_PRODUCER_ID;
    message.sequence = op_offset + 1;
    Ok(message.sealed())
}

/// The message a producer's checker is shown: as the producer sent it.
fn as_sent(half: &Record) -> Message {
    let mut message = half.to_message();
    if let Some(topic) = half.property(property::REAL_TOPIC) {
        message.topic = topic.to_string();
    }
    message.queue_id = half
        .property(property::REAL_QUEUE)
        .and_then(|queue| queue.parse().ok())
        .unwrap_or(QUEUE_ID_ANY);
    message
        .properties
        .retain(|(key, _)| key != property::REAL_TOPIC && key != property::REAL_QUEUE);
    message.sealed()
}

fn op_record(half: &Record, action: TxAction, by: &str) -> Message {
    let mut op = Message::new(HALF_OP_TOPIC, Vec::new());
    op.queue_id = 0;
    op.properties = vec![
        (property::TRANSACTION_ID.to_string(), half.message_id()),
        (
            property::HALF_OFFSET.to_string(),
            half.queue_offset.to_string(),
        ),
        (
            property::TRANSACTION_OUTCOME.to_string(),
            action.name().to_string(),
        ),
        (property::TRANSACTION_BY.to_string(), by.to_string()),
    ];
    op.sealed()
}

fn store_error(what: &str, error: impl std::fmt::Display) -> Refusal {
    Refusal::new(ErrorCode::StorageFailed, format!("{what}: {error}"))
}

/// Reads one queue's records from `from` (never past the durable offset): the records,
/// where to read next, and the queue's first offset when `from` was older.
fn read(broker: &Broker, topic: &str, from: u64) -> Result<(Vec<Record>, u64), Refusal> {
    use keel_storage::ReadStatus;
    let read = broker
        .store
        .read_queue(topic, 0, from, BATCH, 4 << 20)
        .map_err(|error| store_error(&format!("read {topic}"), error))?;
    match read.status {
        ReadStatus::Found => {}
        ReadStatus::OffsetExpired => {
            log::error!(
                "{topic}: {} record(s) from {from} were deleted by retention before the \
                 transactions they hold ended",
                read.min_offset.saturating_sub(from)
            );
            return Ok((Vec::new(), read.min_offset));
        }
        _ => return Ok((Vec::new(), from)),
    }
    let mut rest = &read.records[..];
    let mut records = Vec::new();
    let mut next = from;
    while !rest.is_empty() {
        let record = keel_protocol::decode_record(rest)
            .map_err(|error| Refusal::internal(format!("a record of {topic}: {error}")))?;
        rest = rest.get(record.total_size as usize..).unwrap_or_default();
        next = record.queue_offset + 1;
        records.push(record);
    }
    Ok((records, next))
}

impl State {
    /// Takes in the half messages stored since the last look.
    fn scan_halves(&mut self, broker: &Broker) -> Result<(), Refusal> {
        let config = &broker.config;
        loop {
            let (records, next) = read(broker, HALF_TOPIC, self.half_next)?;
            self.half_next = next;
            if records.is_empty() {
                return Ok(());
            }
            for record in records {
                if self.ended.contains_key(&record.queue_offset) {
                    continue;
                }
                let Some(group) = record.property(property::TRANSACTION) else {
                    log::error!("half message {} has no producer group", record.message_id());
                    continue;
                };
                let open = Open {
                    half_offset: record.queue_offset,
                    producer_group: group.to_string(),
                    topic: record
                        .property(property::REAL_TOPIC)
                        .unwrap_or_default()
                        .to_string(),
                    stored_ms: record.store_timestamp_ms,
                    checks: 0,
                    next_check_ms: record
                        .store_timestamp_ms
                        .saturating_add(config.transaction_check_delay_ms),
                    wanted: false,
                };
                self.open.insert(record.log_offset, open);
            }
        }
    }

    /// Takes in the op records stored since the last look: their transactions ended.
    fn scan_ops(&mut self, broker: &Broker) -> Result<(), Refusal> {
        loop {
            let (records, next) = read(broker, HALF_OP_TOPIC, self.op_next)?;
            self.op_next = next;
            if records.is_empty() {
                return Ok(());
            }
            for op in records {
                let id = op
                    .property(property::TRANSACTION_ID)
                    .and_then(|id| u64::from_str_radix(id, 16).ok());
                let half_offset = op
                    .property(property::HALF_OFFSET)
                    .and_then(|offset| offset.parse::<u64>().ok());
                let (Some(id), Some(half_offset)) = (id, half_offset) else {
                    log::error!("op record {} names no transaction", op.message_id());
                    continue;
                };
                self.open.remove(&id);
                let end = op.log_offset + u64::from(op.total_size);
                self.ended.entry(half_offset).or_insert(Ended {
                    op_offset: op.queue_offset,
                    op_end: end,
                });
            }
        }
    }

    /// Rebuilds what is held from the log, and stores again the message of the last
    /// commit if a crash or failover lost it.
    fn load(&mut self, broker: &Broker) -> Result<(), Refusal> {
        let store = &broker.store;
        for topic in [HALF_TOPIC, HALF_OP_TOPIC] {
            store
                .create_topic(topic, 1)
                .map_err(|error| store_error(&format!("create {topic}"), error))?;
        }
        let progress = |topic| {
            store
                .query_offset(TRANSACTIONS_GROUP, topic, 0)
                .unwrap_or(0)
        };
        *self = State {
            half_next: progress(HALF_TOPIC),
            op_next: progress(HALF_OP_TOPIC),
            ..State::default()
        };
        self.committed = (self.half_next, self.op_next);
        self.scan_halves(broker)?;
        self.scan_ops(broker)?;
        // The last end of all, wherever the progress is (it may have passed the op while
        // the message was lost after it: a slave that had the op, not the message).
        if let Some(op) = last_op(broker)? {
            if outcome_of(&op) == TxAction::Commit {
                redo(broker, &op)?;
            }
        }
        self.loaded = true;
        log::info!(
            "transactions: {} open, read from {HALF_TOPIC} {} and {HALF_OP_TOPIC} {}",
            self.open.len(),
            self.committed.0,
            self.committed.1
        );
        Ok(())
    }

    fn ready(&mut self, broker: &Broker) -> Result<(), Refusal> {
        if !self.loaded {
            self.load(broker)?;
        }
        self.scan_halves(broker)?;
        self.scan_ops(broker)?;
        update_open(broker, self);
        Ok(())
    }

    /// Ends `id`: its op record, then for a commit its message; the answer waits for
    /// their durability. `Ok(None)` when it is not open (ended before, or unknown).
    fn end(
        &mut self,
        broker: &Broker,
        id: u64,
        action: TxAction,
        by: &str,
    ) -> Result<Option<u64>, Refusal> {
        let Some(open) = self.open.get(&id) else {
            return Ok(None);
        };
        let half_offset = open.half_offset;
        let half = broker
            .store
            .record_at(id)
            .map_err(|error| store_error("read the half message", error))?
            .filter(|record| record.topic == HALF_TOPIC)
            .ok_or_else(|| {
                Refusal::internal(format!("half message {id:016X} is not in the log"))
            })?;
        let now = now_ms();
        let store = &broker.store;
        let op = store
            .append(&op_record(&half, action, by), true, now)
            .map_err(Refusal::from)?;
        let mut durable_at = op.offset_end;
        if action == TxAction::Commit {
            let message = committed(&half, op.queue_offset).map_err(Refusal::internal)?;
            match store_commit(broker, &message, now) {
                Ok(appended) => {
                    durable_at = durable_at.max(appended.map_or(0, |a| a.offset_end));
                }
                Err(refusal) => {
                    // The op is stored: whoever serves next stores the message from it
                    // (`redo`); until then this broker refuses more ends.
                    self.loaded = false;
                    return Err(refusal);
                }
            }
            broker
                .transactions
                .stats
                .committed
                .fetch_add(1, Ordering::Relaxed);
        } else {
            broker
                .transactions
                .stats
                .rolled_back
                .fetch_add(1, Ordering::Relaxed);
        }
        self.open.remove(&id);
        // The progress passes it once the op and the committed message are durable.
        self.ended.insert(
            half_offset,
            Ended {
                op_offset: op.queue_offset,
                op_end: durable_at,
            },
        );
        self.op_next = self.op_next.max(op.queue_offset + 1);
        Ok(Some(durable_at))
    }

    /// The progress that may be committed: nothing at or past an open transaction or
    /// an end not durable yet.
    fn progress(&mut self, durable: u64) -> (u64, u64) {
        let open = self.open.values().map(|open| open.half_offset).min();
        let pending = self
            .ended
            .iter()
            .filter(|(_, ended)| ended.op_end > durable)
            .map(|(half, _)| *half)
            .min();
        let half = [open, pending, Some(self.half_next)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.half_next);
        self.ended = self.ended.split_off(&half);
        let op = self
            .ended
            .values()
            .map(|ended| ended.op_offset)
            .min()
            .unwrap_or(self.op_next)
            .min(self.op_next);
        (half, op)
    }
}

/// Stores a committed message: a duplicate (made before a crash) counts as stored.
/// `Ok(None)`: it can never be stored (its topic is gone and `auto_create_topics` is
/// off, or it no longer fits): the transaction stays committed, logged and counted.
fn store_commit(
    broker: &Broker,
    message: &Message,
    now: u64,
) -> Result<Option<keel_storage::AppendResult>, Refusal> {
    use keel_storage::AppendError;
    let store = &broker.store;
    let mut attempt = message.clone();
    let mut outcome = store.append(&attempt, broker.config.auto_create_topics, now);
    if let Err(AppendError::InvalidQueueId { .. }) = outcome {
        // Its queue is gone (the topic was made again with fewer): any queue.
        attempt.queue_id = QUEUE_ID_ANY;
        attempt.seal();
        outcome = store.append(&attempt, broker.config.auto_create_topics, now);
    }
    match outcome {
        Ok(appended) => Ok(Some(appended)),
        Err(
            error @ (AppendError::TopicNotFound(_)
            | AppendError::InvalidTopic(_)
            | AppendError::RecordTooLarge { .. }),
        ) => {
            log::error!(
                "a committed transaction's message cannot be stored in {}: {error}",
                message.topic
            );
            broker
                .transactions
                .stats
                .dropped
                .fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }
        Err(error) => {
            let refusal = Refusal::from(error);
            Err(Refusal::new(
                refusal.code,
                format!(
                    "store the committed message in {}: {}",
                    message.topic, refusal.message
                ),
            ))
        }
    }
}

/// The last record of `%HALF_OP%` (durable), if any.
fn last_op(broker: &Broker) -> Result<Option<Record>, Refusal> {
    let store = &broker.store;
    let ends = store
        .read_queue(HALF_OP_TOPIC, 0, 0, 1, 1)
        .map_err(|error| store_error(&format!("read {HALF_OP_TOPIC}"), error))?;
    let Some(last) = ends.max_offset.checked_sub(1) else {
        return Ok(None);
    };
    if last < ends.min_offset {
        return Ok(None);
    }
    let (records, _) = read(broker, HALF_OP_TOPIC, last)?;
    Ok(records.into_iter().next())
}

/// Stores again the message of a commit whose op is the last one (a crash may have
/// come between them).
fn redo(broker: &Broker, op: &Record) -> Result<(), Refusal> {
    let Some(id) = op
        .property(property::TRANSACTION_ID)
        .and_then(|id| u64::from_str_radix(id, 16).ok())
    else {
        return Ok(());
    };
    let Some(half) = broker
        .store
        .record_at(id)
        .map_err(|error| store_error("read the half message", error))?
    else {
        log::error!("committed transaction {id:016X}: its half message is gone");
        return Ok(());
    };
    let message = committed(&half, op.queue_offset).map_err(Refusal::internal)?;
    let appended = store_commit(broker, &message, now_ms())?;
    if appended.is_some_and(|appended| !appended.duplicate) {
        log::warn!(
            "transaction {id:016X}: its commit was recorded but its message was not stored \
             (a crash or failover between them): stored now"
        );
    }
    Ok(())
}

/// Waits until the log is durable up to `at` by this broker's standard.
fn wait_durable(broker: &Broker, at: u64) -> Result<(), Refusal> {
    let store = &broker.store;
    let deadline = Instant::now() + Duration::from_millis(broker.config.sync_flush_timeout_ms);
    while store.offset_durable() < at {
        if store.is_poisoned() {
            return Err(Refusal::new(
                ErrorCode::StorageFailed,
                "the log could not be made durable",
            ));
        }
        if Instant::now() > deadline {
            return Err(Refusal::new(
                ErrorCode::StorageFailed,
                "the end of the transaction did not become durable in time: it may or may \
                 not have ended; ask again (END_TRANSACTION is answered ALREADY if it did)",
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// END_TRANSACTION, on a slow-request thread.
pub fn end_transaction(
    broker: &Broker,
    request: &keel_protocol::EndTransactionRequest,
) -> Result<TransactionEnded, Refusal> {
    let id = request.transaction_id;
    let transactions = &broker.transactions;
    let mut state = transactions.lock();
    state.ready(broker)?;
    if let Some(open) = state.open.get(&id) {
        if open.producer_group != request.producer_group || open.topic != request.topic {
            return Err(not_found(id, "of that producer group and topic"));
        }
        let durable_at = state
            .end(broker, id, request.action, "END_TRANSACTION")?
            .unwrap_or(0);
        update_open(broker, &state);
        drop(state);
        wait_durable(broker, durable_at)?;
        return Ok(TransactionEnded {
            transaction_id: id,
            outcome: request.action,
            already: false,
        });
    }
    drop(state);
    // Not open: ended before (a retry, or the broker's own end), or not a transaction.
    let outcome = past_outcome(broker, id, request)?;
    if outcome != request.action {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            format!(
                "transaction {id:016X} was already ended by a {}; it cannot be {}",
                outcome.name(),
                match request.action {
                    TxAction::Commit => "committed",
                    TxAction::Rollback => "rolled back",
                }
            ),
        ));
    }
    Ok(TransactionEnded {
        transaction_id: id,
        outcome,
        already: true,
    })
}

fn not_found(id: u64, what: &str) -> Refusal {
    Refusal::new(
        ErrorCode::InvalidArgument,
        format!("no transaction {id:016X} {what} on this broker"),
    )
}

/// How an ended transaction ended, from its op record.
fn past_outcome(
    broker: &Broker,
    id: u64,
    request: &keel_protocol::EndTransactionRequest,
) -> Result<TxAction, Refusal> {
    let half = broker
        .store
        .record_at(id)
        .map_err(|error| store_error("read the half message", error))?
        .filter(|record| {
            record.topic == HALF_TOPIC
                && record.property(property::TRANSACTION) == Some(request.producer_group.as_str())
                && record.property(property::REAL_TOPIC) == Some(request.topic.as_str())
        })
        .ok_or_else(|| not_found(id, "of that producer group and topic"))?;
    if let Some(op) = end_of(broker, &half)? {
        return Ok(outcome_of(&op));
    }
    // An end made by an earlier request whose answer timed out may not be durable yet
    // (the scan reads only what is): wait for everything appended, and look again.
    let appended = broker.store.offset_appended();
    if broker.store.offset_durable() < appended {
        wait_durable(broker, appended)?;
        if let Some(op) = end_of(broker, &half)? {
            return Ok(outcome_of(&op));
        }
    }
    Err(not_found(id, "that ended (its end was not found)"))
}

/// How an op record ended its transaction.
pub fn outcome_of(op: &Record) -> TxAction {
    match op.property(property::TRANSACTION_OUTCOME) {
        Some("commit") => TxAction::Commit,
        _ => TxAction::Rollback,
    }
}

/// The op record that ended the transaction of `half`, if one is durable: a scan of
/// `%HALF_OP%` from the first record kept.
pub fn end_of(broker: &Broker, half: &Record) -> Result<Option<Record>, Refusal> {
    let hex = half.message_id();
    let mut from = 0;
    loop {
        let (records, next) = read(broker, HALF_OP_TOPIC, from)?;
        if records.is_empty() {
            if next > from {
                from = next; // Retention deleted the start: go on from the first kept.
                continue;
            }
            return Ok(None);
        }
        if let Some(op) = records
            .into_iter()
            .find(|op| op.property(property::TRANSACTION_ID) == Some(hex.as_str()))
        {
            return Ok(Some(op));
        }
        from = next;
    }
}

/// An open transaction as LIST_TRANSACTIONS shows it, if this broker holds it open now
/// (a master's state; a slave, or a master still rebuilding it, holds none).
pub fn held_open(broker: &Broker, id: u64) -> Result<Option<OpenTransaction>, Refusal> {
    let mut state = broker.transactions.lock();
    if !state.loaded {
        return Ok(None);
    }
    state.ready(broker)?; // Held: takes in what is new, loads nothing.
    Ok(state.open.get(&id).map(|open| listed(id, open)))
}

fn listed(id: u64, open: &Open) -> OpenTransaction {
    OpenTransaction {
        transaction_id: id,
        producer_group: open.producer_group.clone(),
        topic: open.topic.clone(),
        stored_ms: open.stored_ms,
        checks: open.checks,
        next_check_ms: open.next_check_ms,
    }
}

fn update_open(broker: &Broker, state: &State) {
    broker
        .transactions
        .stats
        .open
        .store(state.open.len() as u64, Ordering::Relaxed);
}

/// CHECK_TRANSACTIONS, on a slow-request thread: the due checks of `producer_group`.
pub fn checks(
    broker: &Broker,
    producer_group: &str,
    max: u16,
) -> Result<Vec<TransactionCheck>, Refusal> {
    let mut state = broker.transactions.lock();
    state.ready(broker)?;
    let now = now_ms();
    let interval = broker.config.transaction_check_interval_ms;
    let taken: Vec<(u64, u32)> = state
        .open
        .iter_mut()
        .filter(|(_, open)| open.wanted && open.producer_group == producer_group)
        .take(usize::from(max))
        .map(|(id, open)| {
            open.wanted = false;
            open.next_check_ms = now.saturating_add(interval);
            (*id, open.checks)
        })
        .collect();
    drop(state);
    let mut checks = Vec::with_capacity(taken.len());
    for (id, check) in taken {
        let Some(half) = broker
            .store
            .record_at(id)
            .map_err(|error| store_error("read a half message", error))?
        else {
            continue;
        };
        checks.push(TransactionCheck {
            transaction_id: id,
            check,
            message: as_sent(&half),
        });
    }
    broker
        .transactions
        .stats
        .checks
        .fetch_add(checks.len() as u64, Ordering::Relaxed);
    Ok(checks)
}

/// LIST_TRANSACTIONS, on a slow-request thread (at most 10,000, oldest first).
pub fn list(broker: &Broker, producer_group: &str) -> Result<Vec<OpenTransaction>, Refusal> {
    let mut state = broker.transactions.lock();
    state.ready(broker)?;
    Ok(state
        .open
        .iter()
        .filter(|(_, open)| producer_group.is_empty() || open.producer_group == producer_group)
        .take(10_000)
        .map(|(id, open)| listed(*id, open))
        .collect())
}

/// Whether one more half message may be taken.
pub fn has_room(broker: &Broker) -> bool {
    (broker.transactions.stats.open.load(Ordering::Relaxed) as usize) < OPEN_MAX
}

/// One round of the transactions thread: new half messages and ends taken in, checks
/// made due, transactions whose checks ran out ended, the progress committed.
fn round(broker: &Broker) -> Result<(), Refusal> {
    let mut state = broker.transactions.lock();
    state.ready(broker)?;
    let now = now_ms();
    let config = &broker.config;
    let mut give_up = Vec::new();
    for (id, open) in state.open.iter_mut() {
        if open.next_check_ms > now {
            continue;
        }
        if open.checks >= config.transaction_check_max {
            give_up.push(*id);
            continue;
        }
        // Counted whether or not a producer takes it: a group with no producer left
        // runs out of checks too.
        open.checks += 1;
        open.wanted = true;
        open.next_check_ms = now.saturating_add(config.transaction_check_interval_ms);
    }
    let action = match config.transaction_unresolved {
        Unresolved::Rollback => TxAction::Rollback,
        Unresolved::Commit => TxAction::Commit,
    };
    let mut durable_at = 0;
    for id in give_up {
        let by = format!(
            "broker: no end after {} checks (transaction_unresolved = {})",
            config.transaction_check_max,
            action.name()
        );
        if let Some(at) = state.end(broker, id, action, &by)? {
            log::warn!("transaction {id:016X}: {by}");
            broker
                .transactions
                .stats
                .resolved_by_broker
                .fetch_add(1, Ordering::Relaxed);
            durable_at = durable_at.max(at);
        }
    }
    update_open(broker, &state);
    let progress = state.progress(broker.store.offset_durable());
    if progress != state.committed {
        let store = &broker.store;
        store
            .commit_offset(TRANSACTIONS_GROUP, HALF_TOPIC, 0, progress.0)
            .and_then(|_| store.commit_offset(TRANSACTIONS_GROUP, HALF_OP_TOPIC, 0, progress.1))
            .map_err(|error| store_error("record the transactions' progress", error))?;
        state.committed = progress;
    }
    drop(state);
    if durable_at > 0 {
        wait_durable(broker, durable_at)?;
    }
    Ok(())
}

/// Starts the transactions thread; it ends when the broker shuts down.
pub fn start(broker: Arc<Broker>) {
    let spawned = std::thread::Builder::new()
        .name("keel-transactions".into())
        .spawn(move || {
            while !broker.is_shutting_down() {
                if !broker.role().is_master() || broker.fenced().is_some() {
                    broker.transactions.invalidate();
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                if let Err(refusal) = round(&broker) {
                    log::error!("transactions: {}", refusal.message);
                    broker.transactions.invalidate();
                    std::thread::sleep(Duration::from_secs(1));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    if let Err(error) = spawned {
        log::error!("cannot start the transactions thread: {error}");
    }
}
