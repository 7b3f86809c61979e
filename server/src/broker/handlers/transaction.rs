//! END_TRANSACTION, CHECK_TRANSACTIONS and LIST_TRANSACTIONS: answered on a
//! slow-request thread from the broker's open transactions (`broker/transactions.rs`),
//! never on the event loop (they read half messages and wait for durability).

use crate::broker::connection::ReplyTo;
use crate::broker::handlers::send;
use crate::broker::shard::Shard;
use crate::broker::transactions;
use crate::broker::transactions::invalid_producer_group;
use crate::broker::workers::Pool;
use crate::error::Refusal;
use keel_protocol::{EndTransactionRequest, Response};

fn run(
    shard: &mut Shard,
    to: ReplyTo,
    what: &'static str,
    work: impl FnOnce(&crate::context::Broker) -> Result<Response, Refusal> + Send + 'static,
) {
    if let Some(refusal) = send::not_master(shard) {
        return shard.reply(to, refusal.response());
    }
    let offloaded = shard.offload(to, Pool::Slow, what, move |broker| {
        work(broker).unwrap_or_else(Refusal::response)
    });
    if let Err(refused) = offloaded {
        shard.reply(to, refused);
    }
}

pub(crate) fn on_end_transaction(shard: &mut Shard, to: ReplyTo, end: EndTransactionRequest) {
    if let Some(refusal) = invalid_producer_group(&end.producer_group) {
        return shard.reply(to, refusal.response());
    }
    run(shard, to, "a transaction's end", move |broker| {
        transactions::end_transaction(broker, &end).map(Response::TransactionEnded)
    });
}

pub(crate) fn on_check_transactions(shard: &mut Shard, to: ReplyTo, group: String, max: u16) {
    if let Some(refusal) = invalid_producer_group(&group) {
        return shard.reply(to, refusal.response());
    }
    run(shard, to, "transaction checks", move |broker| {
        transactions::checks(broker, &group, max).map(Response::TransactionChecks)
    });
}

pub(crate) fn on_list_transactions(shard: &mut Shard, to: ReplyTo, group: String) {
    if !group.is_empty() {
        if let Some(refusal) = invalid_producer_group(&group) {
            return shard.reply(to, refusal.response());
        }
    }
    run(shard, to, "a transaction list", move |broker| {
        transactions::list(broker, &group).map(Response::Transactions)
    });
}
