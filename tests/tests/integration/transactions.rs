//! Transactions (issue 21, part 3) with a real broker: a committed half message reaches
//! its topic once, a rolled-back one never; an open transaction survives kill -9 and is
//! ended through a check of its producer group; one nobody ends is rolled back by the
//! broker after its checks ran out.

use crate::harness::{drain, wait_until, BrokerProcess};
use keel_client::{LocalTransactionState, Message, TransactionOutcome, TransactionProducer};
use keel_protocol::names::property;
use keel_protocol::TxAction;
use keel_tests::{id_of, payload_for};
use std::time::Duration;

const FAST_CHECKS: &str = "transaction_check_delay_ms = 500\n\
                           transaction_check_interval_ms = 300\n\
                           transaction_check_max = 3";

fn ids(address: &str, topic: &str) -> Vec<String> {
    drain(address, topic)
        .iter()
        .map(|record| id_of(&record.payload).expect("an intact payload"))
        .collect()
}

#[test]
fn a_commit_shows_once_a_rollback_never_and_an_open_one_is_checked_across_kill_9() {
    let mut broker = BrokerProcess::start(FAST_CHECKS);
    broker.admin().create_topic("paid", 2).unwrap();
    let never = |_: &Message, _: u64| LocalTransactionState::Unknown;
    let producer =
        TransactionProducer::connect(&broker.address, "payments", Default::default(), never)
            .unwrap();
    let send = |id: &str, state| {
        producer
            .send_in_transaction(Message::new("paid", payload_for(id, 64)), |_| state)
            .unwrap()
    };
    let committed = send("c-1", LocalTransactionState::Commit);
    assert!(matches!(committed, TransactionOutcome::Committed { .. }));
    let rolled = send("r-1", LocalTransactionState::Rollback);
    assert!(matches!(rolled, TransactionOutcome::RolledBack { .. }));
    let TransactionOutcome::Open {
        transaction_id: open,
        ..
    } = send("o-1", LocalTransactionState::Unknown)
    else {
        panic!("left open");
    };
    assert_eq!(ids(&broker.address, "paid"), vec!["c-1"]);
    // Ending it again the same way is answered ALREADY; the other way is refused.
    let admin = broker.admin();
    let TransactionOutcome::Committed { transaction_id } = committed else {
        unreachable!()
    };
    let again = admin
        .end_transaction(keel_protocol::EndTransactionRequest {
            producer_group: "payments".into(),
            topic: "paid".into(),
            transaction_id,
            action: TxAction::Commit,
        })
        .unwrap();
    assert!(again.already);
    let refused = admin
        .end_transaction(keel_protocol::EndTransactionRequest {
            producer_group: "payments".into(),
            topic: "paid".into(),
            transaction_id,
            action: TxAction::Rollback,
        })
        .unwrap_err();
    assert!(refused.to_string().contains("already ended"), "{refused}");
    let listed = admin.list_transactions(Some("payments")).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].transaction_id, open);
    assert_eq!(listed[0].topic, "paid");
    drop(producer);
    // The producer is gone, and so is the broker: the open transaction is in the log.
    broker.kill9();
    broker.spawn();
    assert_eq!(
        broker.admin().list_transactions(None).unwrap()[0].transaction_id,
        open
    );
    // A new producer of the group is asked, and commits it: it shows once.
    let checker = TransactionProducer::connect(
        &broker.address,
        "payments",
        Default::default(),
        move |message: &Message, id| {
            assert_eq!(message.topic, "paid");
            assert_eq!(id, open);
            LocalTransactionState::Commit
        },
    )
    .unwrap();
    wait_until("the check committed it", Duration::from_secs(20), || {
        checker.checks_answered() == 1
    });
    let mut seen = ids(&broker.address, "paid");
    seen.sort();
    assert_eq!(seen, vec!["c-1", "o-1"]);
    let stored = drain(&broker.address, "paid");
    let o1 = stored
        .iter()
        .find(|r| id_of(&r.payload).as_deref() == Some("o-1"))
        .unwrap();
    assert_eq!(
        o1.property(property::TRANSACTION_ID),
        Some(format!("{open:016X}").as_str())
    );
    // And after another kill -9 the commit is not made twice.
    drop(checker);
    broker.kill9();
    broker.spawn();
    assert!(broker.admin().list_transactions(None).unwrap().is_empty());
    let mut seen = ids(&broker.address, "paid");
    seen.sort();
    assert_eq!(seen, vec!["c-1", "o-1"]);
}

#[test]
fn a_transaction_nobody_ends_is_rolled_back_by_the_broker_when_its_checks_run_out() {
    let broker = BrokerProcess::start(FAST_CHECKS);
    let producer = TransactionProducer::connect(
        &broker.address,
        "shy",
        Default::default(),
        |_: &Message, _| LocalTransactionState::Unknown,
    )
    .unwrap();
    let outcome = producer
        .send_in_transaction(Message::new("never", payload_for("n-1", 64)), |_| {
            LocalTransactionState::Unknown
        })
        .unwrap();
    assert!(matches!(outcome, TransactionOutcome::Open { .. }));
    // 500 ms, then 3 checks 300 ms apart: then the broker's rollback.
    wait_until("the broker ended it", Duration::from_secs(20), || {
        broker.admin().list_transactions(None).unwrap().is_empty()
    });
    assert!(ids(&broker.address, "never").is_empty());
    let log = broker.log();
    assert!(log.contains("no end after 3 checks"), "{log}");
    // A half message that breaks the rules is refused, nothing stored.
    let producer = keel_client::Producer::connect(&broker.address, Default::default()).unwrap();
    let refused = producer
        .send(
            Message::new("never", "x")
                .with_property(property::TRANSACTION, "shy")
                .with_property(property::DELIVER_AT, "1"),
        )
        .unwrap_err();
    assert!(
        refused.to_string().contains("cannot be delayed"),
        "{refused}"
    );
}

/// A producer of `group` whose checker never decides, and a transaction it leaves open.
fn leave_open(producer: &TransactionProducer, topic: &str, id: &str) -> u64 {
    let outcome = producer
        .send_in_transaction(Message::new(topic, payload_for(id, 64)), |_| {
            LocalTransactionState::Unknown
        })
        .unwrap();
    match outcome {
        TransactionOutcome::Open {
            transaction_id,
            error: None,
        } => transaction_id,
        other => panic!("{id}: {other:?}"),
    }
}

fn undecided(address: &str, group: &str) -> TransactionProducer {
    let never = |_: &Message, _: u64| LocalTransactionState::Unknown;
    TransactionProducer::connect(address, group, Default::default(), never).unwrap()
}

fn json_of(output: &std::process::Output) -> serde_json::Value {
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {output:?}"))
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn keel_tx_lists_commits_and_rolls_back_and_message_show_follows_a_commit() {
    // No check comes during the test: the operator ends them.
    let broker = BrokerProcess::start(
        "transaction_check_delay_ms = 120000\nmetrics_listen = \"127.0.0.1:0\"",
    );
    let keel = |args: &[&str]| crate::cli::keel(&broker.address, args, b"");
    let producer = undecided(&broker.address, "payments");
    let a = leave_open(&producer, "paid", "a");
    let b = leave_open(&producer, "paid", "b");
    let (a_hex, b_hex) = (format!("{a:016X}"), format!("{b:016X}"));
    let listed = stdout(&keel(&["tx", "list"]));
    for words in [&a_hex, &b_hex, "payments", "paid", "next_check", "in 1m"] {
        assert!(listed.contains(words), "{words}: {listed}");
    }
    let listed = json_of(&keel(&["--json", "tx", "list", "-g", "payments"]));
    assert_eq!(listed["transactions"][0]["transaction_id"], a_hex.as_str());
    assert_eq!(listed["transactions"][1]["checks"], 0);
    let none = json_of(&keel(&["--json", "tx", "list", "-g", "others"]));
    assert_eq!(none["transactions"].as_array().unwrap().len(), 0);
    // The operator commits a and rolls back b.
    let committed = keel(&["tx", "commit", &a_hex]);
    assert!(committed.status.success(), "{committed:?}");
    assert_eq!(
        stdout(&committed),
        format!("transaction {a_hex} committed: its message is in paid\n")
    );
    let rolled = json_of(&keel(&["--json", "tx", "rollback", &b_hex]));
    assert_eq!(rolled["outcome"], "rollback");
    assert_eq!(rolled["already"], false);
    assert_eq!(stdout(&keel(&["tx", "list"])), "no open transactions\n");
    // Asked again: not open any more; with its group and topic, answered "already".
    for (args, code, words) in [
        (vec!["tx", "commit", &a_hex], 1, "no open transaction"),
        (vec!["tx", "commit", "zz"], 1, "not a transaction id"),
        (vec!["tx", "commit", "+1"], 1, "not a transaction id"),
        (vec!["tx", "commit", &a_hex, "-g", "payments"], 2, "--topic"),
        (
            vec!["tx", "rollback", &a_hex, "-g", "payments", "-t", "paid"],
            1,
            "already ended by a commit",
        ),
        (
            vec!["tx", "commit", &b_hex, "-g", "payments", "-t", "other"],
            1,
            "no transaction",
        ),
    ] {
        let output = keel(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {output:?}");
        assert!(stderr.contains(words), "{args:?}: {stderr}");
    }
    let again = keel(&["tx", "commit", &a_hex, "-g", "payments", "-t", "paid"]);
    assert_eq!(
        stdout(&again),
        format!("transaction {a_hex} was already committed: its message is in paid\n")
    );
    // Only a's message reached the topic; its lifecycle and the half's point at each
    // other.
    let stored = drain(&broker.address, "paid");
    assert_eq!(stored.len(), 1);
    assert_eq!(id_of(&stored[0].payload).as_deref(), Some("a"));
    let message = stored[0].message_id();
    let half = json_of(&keel(&["--json", "message", "show", &a_hex]));
    assert_eq!(half["topic"], "%HALF%");
    assert_eq!(half["transaction"], "committed by END_TRANSACTION");
    assert_eq!(half["committed_as"], format!("{message} in paid"));
    let shown = json_of(&keel(&["--json", "message", "show", &message]));
    assert_eq!(
        shown["transaction"],
        format!("committed: it is half message {a_hex}'s commit")
    );
    assert!(shown["half_stored_ms"].as_str().is_some(), "{shown}");
    let rolled = json_of(&keel(&["--json", "message", "show", &b_hex]));
    assert_eq!(rolled["transaction"], "rolled back by END_TRANSACTION");
    assert!(rolled.get("committed_as").is_none(), "{rolled}");
    let c = leave_open(&producer, "paid", "c");
    let open = json_of(&keel(&["--json", "message", "show", &format!("{c:016X}")]));
    let state = open["transaction"].as_str().unwrap();
    assert!(state.starts_with("open: 0 check(s) so far"), "{state}");
    // The metrics count them.
    let http = crate::console::http_address(&broker);
    let (status, metrics) = crate::console::get(&http, "/metrics", None);
    assert_eq!(status, 200);
    for line in [
        "keel_transactions_open 1",
        "keel_transactions_committed_total 1",
        "keel_transactions_rolled_back_total 1",
        "keel_transactions_resolved_by_broker_total 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}: {metrics}");
    }
}

#[test]
fn a_commit_whose_message_was_lost_after_its_end_is_stored_again_once_at_the_next_start() {
    let mut broker = BrokerProcess::start("");
    let producer = undecided(&broker.address, "payments");
    let committed = producer
        .send_in_transaction(Message::new("redo", payload_for("r-1", 64)), |_| {
            LocalTransactionState::Commit
        })
        .unwrap();
    let TransactionOutcome::Committed { transaction_id } = committed else {
        panic!("{committed:?}");
    };
    drop(producer);
    let stored = drain(&broker.address, "redo");
    assert_eq!(stored.len(), 1);
    // The committed message is the log's last record: cut it off, as a crash (or a
    // slave that had only the op) would, leaving the end's op record last.
    broker.kill9();
    let data = broker.dir.join("data");
    keel_storage::admin::truncate(&data, stored[0].log_offset, 5 << 20).expect("truncate");
    broker.spawn();
    wait_until("the commit stored again", Duration::from_secs(20), || {
        drain(&broker.address, "redo").len() == 1
    });
    let log = broker.log();
    assert!(log.contains("stored now"), "{log}");
    let again = drain(&broker.address, "redo");
    assert_eq!(
        again[0].property(property::TRANSACTION_ID),
        Some(format!("{transaction_id:016X}").as_str())
    );
    // Made again at every start, it is stored once.
    broker.kill9();
    broker.spawn();
    wait_until("the transactions rebuilt", Duration::from_secs(20), || {
        broker.admin().list_transactions(None).is_ok()
    });
    assert_eq!(ids(&broker.address, "redo"), vec!["r-1"]);
}

#[test]
fn a_promoted_slave_knows_every_open_transaction_and_goes_on_checking_them() {
    use crate::cluster::{master, slave};
    use crate::harness::free_ports;
    let [master_port, master_ha, slave_port, slave_ha] = free_ports();
    // Checks start 3 s after each half message: none before the failover.
    let checks = "transaction_check_delay_ms = 3000\ntransaction_check_interval_ms = 300\n\
                  transaction_check_max = 5\n";
    let mut old = BrokerProcess::start(&format!(
        "{}{checks}",
        master("sync_master", "tx", master_port, master_ha, None)
    ));
    let new = BrokerProcess::start(&format!(
        "{}{checks}",
        slave("tx", slave_port, slave_ha, master_ha, None)
    ));
    wait_until("the slave in sync", Duration::from_secs(20), || {
        old.try_stat("slaves_in_sync") == Some(1)
    });
    let producer = undecided(&old.address, "payments");
    let committed = producer
        .send_in_transaction(Message::new("paid", payload_for("c-1", 64)), |_| {
            LocalTransactionState::Commit
        })
        .unwrap();
    assert!(matches!(committed, TransactionOutcome::Committed { .. }));
    let keep = leave_open(&producer, "paid", "keep");
    let drop_it = leave_open(&producer, "paid", "drop");
    drop(producer);
    // SEND_OK and TRANSACTION_ENDED from a sync master: the slave has them all.
    old.kill9();
    new.admin()
        .promote(keel_client::BrokerRole::AsyncMaster)
        .unwrap();
    let mut open: Vec<u64> = new
        .admin()
        .list_transactions(Some("payments"))
        .unwrap()
        .iter()
        .map(|tx| tx.transaction_id)
        .collect();
    open.sort();
    assert_eq!(open, vec![keep, drop_it]);
    // A producer of the group on the new master is asked about both.
    let checker = TransactionProducer::connect(
        &new.address,
        "payments",
        Default::default(),
        move |_: &Message, id| match id == keep {
            true => LocalTransactionState::Commit,
            false => LocalTransactionState::Rollback,
        },
    )
    .unwrap();
    wait_until("both checked", Duration::from_secs(30), || {
        checker.checks_answered() == 2
    });
    assert!(new.admin().list_transactions(None).unwrap().is_empty());
    let mut seen = ids(&new.address, "paid");
    seen.sort();
    assert_eq!(seen, vec!["c-1", "keep"]);
}
