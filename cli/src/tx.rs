//! `keel tx list|commit|rollback`: an operator's view of a broker's open transactions,
//! and an operator's end of one whose producer cannot end it.

use crate::output::duration_words;
use crate::output::format_time;
use crate::output::json;
use crate::output::print_json;
use crate::prelude::*;
use crate::security::Target;
use keel_protocol::{EndTransactionRequest, OpenTransaction, TxAction};

#[derive(Subcommand)]
pub(crate) enum TxCommand {
    /// The broker's open transactions, oldest first: id, producer group, topic, when
    /// the half message was stored, checks so far and when the next is due.
    List {
        /// Only this producer group's.
        #[arg(short, long)]
        group: Option<String>,
    },
    /// Commit an open transaction: its message is stored in its topic, once. Exit 3
    /// when the broker could not confirm the end durable (ask again: an end that
    /// happened is answered "already").
    Commit(EndArgs),
    /// Roll back an open transaction: its message never reaches a consumer.
    Rollback(EndArgs),
}

#[derive(clap::Args)]
pub(crate) struct EndArgs {
    /// The transaction id (16 hex digits, as `keel tx list` shows it).
    id: String,
    /// Its producer group and topic: needed only for a transaction no longer open (to
    /// ask how it ended); an open one's are looked up.
    #[arg(short, long, requires = "topic")]
    group: Option<String>,
    #[arg(short, long, requires = "group")]
    topic: Option<String>,
}

pub(crate) fn tx(broker: &Target, command: TxCommand) -> Result<ExitCode, ClientError> {
    match command {
        TxCommand::List { group } => list(broker, group.as_deref()),
        TxCommand::Commit(args) => end(broker, args, TxAction::Commit),
        TxCommand::Rollback(args) => end(broker, args, TxAction::Rollback),
    }
}

fn list(broker: &Target, group: Option<&str>) -> Result<ExitCode, ClientError> {
    let open = broker.admin()?.list_transactions(group)?;
    let now = keel_protocol::now_ms();
    if json() {
        let open: Vec<serde_json::Value> = open
            .iter()
            .map(|tx| {
                serde_json::json!({
                    "transaction_id": keel_protocol::message_id(tx.transaction_id),
                    "producer_group": tx.producer_group, "topic": tx.topic,
                    "stored_ms": tx.stored_ms, "checks": tx.checks,
                    "next_check_ms": tx.next_check_ms,
                })
            })
            .collect();
        print_json(&serde_json::json!({ "transactions": open }));
        return Ok(ExitCode::SUCCESS);
    }
    if open.is_empty() {
        println!("no open transactions");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16}  {:<20} {:<20} {:<24} {:>6} {:>10}",
        "id", "producer_group", "topic", "stored", "checks", "next_check"
    );
    for tx in &open {
        println!(
            "{:<16}  {:<20} {:<20} {:<24} {:>6} {:>10}",
            keel_protocol::message_id(tx.transaction_id),
            tx.producer_group,
            tx.topic,
            format_time(tx.stored_ms),
            tx.checks,
            next_check(tx, now),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// When the next check is due, in words ("in 4.2s", "due").
fn next_check(tx: &OpenTransaction, now: u64) -> String {
    match tx.next_check_ms.checked_sub(now) {
        Some(wait) if wait > 0 => format!("in {}", duration_words(wait as f64 / 1000.0)),
        _ => "due".into(),
    }
}

fn end(broker: &Target, args: EndArgs, action: TxAction) -> Result<ExitCode, ClientError> {
    let hex = !args.id.is_empty() && args.id.bytes().all(|b| b.is_ascii_hexdigit());
    let transaction_id = u64::from_str_radix(&args.id, 16)
        .ok()
        .filter(|_| hex)
        .ok_or_else(|| {
            ClientError::InvalidArgument(format!(
                "{:?} is not a transaction id (16 hex digits, as `keel tx list` shows)",
                args.id
            ))
        })?;
    let admin = broker.admin()?;
    let (producer_group, topic) = match (args.group, args.topic) {
        (Some(group), Some(topic)) => (group, topic),
        _ => {
            let open = admin.list_transactions(None)?;
            let found = open
                .into_iter()
                .find(|tx| tx.transaction_id == transaction_id);
            match found {
                Some(tx) => (tx.producer_group, tx.topic),
                None => {
                    return Err(ClientError::InvalidArgument(format!(
                        "no open transaction {} on this broker (`keel tx list`); to ask how \
                         one that ended did, give --group and --topic",
                        keel_protocol::message_id(transaction_id)
                    )))
                }
            }
        }
    };
    let ended = admin.end_transaction(EndTransactionRequest {
        producer_group,
        topic: topic.clone(),
        transaction_id,
        action,
    })?;
    let id = keel_protocol::message_id(ended.transaction_id);
    if json() {
        print_json(&serde_json::json!({
            "transaction_id": id, "topic": topic, "outcome": ended.outcome.name(),
            "already": ended.already,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    let done = match ended.outcome {
        TxAction::Commit => format!("committed: its message is in {topic}"),
        TxAction::Rollback => "rolled back: its message never reaches a consumer".into(),
    };
    match ended.already {
        true => println!("transaction {id} was already {done}"),
        false => println!("transaction {id} {done}"),
    }
    Ok(ExitCode::SUCCESS)
}
