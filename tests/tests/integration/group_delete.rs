//! `keel group delete`: refused while the group has live members unless forced, durable
//! (gone after kill -9), followed by slaves, and keel-bench leaves no group behind.

use crate::cli::keel;
use crate::cluster::{master, slave};
use crate::harness::{free_ports, wait_until, BrokerProcess};
use keel_client::{Admin, ConsumeResult, Delivery, Message, Producer, ProducerOptions};
use keel_client::{PushConsumer, PushConsumerOptions};
use std::process::Command;
use std::time::Duration;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn committed(admin: &Admin, group: &str, topic: &str) -> Vec<Option<u64>> {
    (0..2)
        .map(|queue| admin.query_offset(group, topic, queue).expect("query"))
        .collect()
}

#[test]
fn a_group_with_live_members_is_deleted_only_when_forced_and_stays_deleted_after_kill9() {
    let mut broker = BrokerProcess::start("");
    let admin = broker.admin();
    admin.create_topic("deleted-group", 2).unwrap();
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    for index in 0..20 {
        producer
            .send(Message::new("deleted-group", format!("m{index}")))
            .unwrap();
    }
    let options = PushConsumerOptions {
        heartbeat_interval: Duration::from_millis(200),
        commit_interval: Duration::from_millis(100),
        ..PushConsumerOptions::default()
    };
    let consumer = PushConsumer::start(
        &broker.address,
        "doomed",
        "deleted-group",
        options,
        |_: &Delivery| ConsumeResult::Success,
    )
    .unwrap();
    wait_until("the group committed", Duration::from_secs(20), || {
        committed(&admin, "doomed", "deleted-group")
            .iter()
            .flatten()
            .sum::<u64>()
            == 20
    });
    let refused = keel(&broker.address, &["group", "delete", "-g", "doomed"], b"");
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("TOPIC_IN_USE") && stderr.contains("live members"),
        "{stderr}"
    );
    assert_eq!(
        committed(&admin, "doomed", "deleted-group")
            .iter()
            .flatten()
            .count(),
        2,
        "a refused deletion deleted nothing"
    );
    consumer.shutdown().unwrap();
    let forced = keel(
        &broker.address,
        &["--json", "group", "delete", "-g", "doomed", "--force"],
        b"",
    );
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&forced.stdout).expect("JSON");
    assert_eq!(answer["offsets"], 2, "{answer}");
    assert_eq!(
        committed(&admin, "doomed", "deleted-group"),
        vec![None, None]
    );
    let listed = admin.list_groups(None).unwrap();
    assert!(listed.iter().all(|g| g.group != "doomed"), "{listed:?}");
    // The answer came once the deletion was on disk.
    broker.kill9();
    broker.spawn();
    let admin = broker.admin();
    assert_eq!(
        committed(&admin, "doomed", "deleted-group"),
        vec![None, None]
    );
}

#[test]
fn a_slave_deletes_a_group_its_master_deleted() {
    let [m_port, m_ha, s_port, s_ha] = free_ports();
    let primary = BrokerProcess::start(&master("async_master", "groups", m_port, m_ha, None));
    let follower = BrokerProcess::start(&slave("groups", s_port, s_ha, m_ha, None));
    let admin = primary.admin();
    admin.create_topic("followed", 2).unwrap();
    let producer = Producer::connect(&primary.address, ProducerOptions::default()).unwrap();
    producer
        .send(Message::new("followed", "one").with_queue(0))
        .unwrap();
    admin
        .commit_offset("followed-group", "followed", 0, 1)
        .unwrap();
    let on_slave = follower.admin();
    wait_until("the slave has the offset", Duration::from_secs(20), || {
        on_slave.query_offset("followed-group", "followed", 0).ok() == Some(Some(1))
    });
    assert_eq!(
        admin.delete_group("followed-group", false).unwrap().offsets,
        1
    );
    wait_until("the slave deleted it too", Duration::from_secs(20), || {
        on_slave.query_offset("followed-group", "followed", 0).ok() == Some(None)
    });
    // A slave refuses the deletion itself: its offsets are the master's.
    let refused = on_slave.delete_group("other", false);
    assert!(
        matches!(&refused, Err(keel_client::ClientError::Broker(e)) if e.code == keel_client::ErrorCode::NotMaster),
        "{refused:?}"
    );
}

#[test]
fn keel_bench_deletes_the_groups_of_its_run() {
    let broker = BrokerProcess::start("");
    let run = Command::new(crate::bench::BENCH)
        .args([
            "--broker",
            &broker.address,
            "--count",
            "200",
            "--producers",
            "2",
        ])
        .args(["--consumers", "1", "--json"])
        .output()
        .expect("keel-bench");
    assert!(run.status.success(), "{}", text(&run.stderr));
    let groups = broker.admin().list_groups(None).unwrap();
    assert!(
        groups.iter().all(|g| !g.group.starts_with("bench-")),
        "keel-bench left groups behind: {groups:?}"
    );
}
