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
