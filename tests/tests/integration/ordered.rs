//! Ordered consumption by message group (issue 21, part 2) with real brokers: a message
//! group's messages go to one queue and are handled one at a time in the order stored;
//! a stuck group does not stop the others; a failed message keeps its place, then is
//! dead-lettered; members joining and leaving never hold one message group at once; the
//! group's setting survives kill -9 and reaches a promoted slave.

use crate::cli::keel;
use crate::cluster::{master, slave};
use crate::harness::{drain, free_ports, wait_until, BrokerProcess};
use keel_client::{
    BrokerRole, ConsumeResult, Delivery, Message, Producer, ProducerOptions, PushConsumer,
    PushConsumerOptions,
};
use keel_protocol::names::{message_group_queue, property};
use keel_tests::{id_of, payload_for};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Message `seq` of message group `group`: payload id `GROUP-SEQ`.
fn grouped(topic: &str, group: &str, seq: u32) -> Message {
    Message::new(topic, payload_for(&format!("{group}-{seq}"), 64)).with_message_group(group)
}

/// (message group, sequence) of a delivery, from its payload id.
fn parse(delivery: &Delivery) -> (String, u32) {
    let id = id_of(&delivery.record.payload).expect("an intact payload");
    let (group, seq) = id.rsplit_once('-').expect("GROUP-SEQ");
    (group.to_string(), seq.parse().expect("a sequence"))
}

/// What the handlers saw, checked as they ran: one message of a message group at a
/// time, and no message handled (for the first time) before every earlier message of
/// its group was.
#[derive(Default)]
struct Watch {
    /// message group -> the member handling one of its messages now.
    holder: HashMap<String, usize>,
    /// message group -> sequences handled successfully.
    done: HashMap<String, BTreeSet<u32>>,
    violations: Vec<String>,
}

impl Watch {
    fn enter(&mut self, member: usize, group: &str, seq: u32) {
        if let Some(other) = self.holder.insert(group.to_string(), member) {
            self.violations.push(format!(
                "{group}-{seq} started on member {member} while member {other} held {group}"
            ));
        }
        let done = self.done.entry(group.to_string()).or_default();
        if done.contains(&seq) && done.last().is_some_and(|last| *last > seq) {
            self.violations.push(format!(
                "{group}-{seq} handled again after {group}-{} was",
                done.last().copied().unwrap_or_default()
            ));
        }
        if !done.contains(&seq) {
            if let Some(missing) = (0..seq).find(|earlier| !done.contains(earlier)) {
                self.violations
                    .push(format!("{group}-{seq} handled before {group}-{missing}"));
            }
        }
    }

    fn leave(&mut self, group: &str, seq: u32, succeeded: bool) {
        self.holder.remove(group);
        if succeeded {
            self.done.entry(group.to_string()).or_default().insert(seq);
        }
    }

    fn finished(&self, group: &str) -> usize {
        self.done.get(group).map_or(0, BTreeSet::len)
    }
}

fn options(member: &str) -> PushConsumerOptions {
    PushConsumerOptions {
        member_id: Some(member.to_string()),
        threads: 4,
        pull_batch: 16,
        max_buffered_per_message_group: 4,
        ordered_retry_delay: Duration::from_millis(100),
        heartbeat_interval: Duration::from_millis(200),
        session_timeout: Duration::from_secs(3),
        long_poll: Duration::from_millis(200),
        ..PushConsumerOptions::default()
    }
}

#[test]
fn an_ordered_group_takes_each_message_group_in_order_one_at_a_time_and_a_stuck_one_stops_no_other()
{
    let broker = BrokerProcess::start("");
    let admin = broker.admin();
    admin.create_topic("fifo", 2).unwrap();
    assert!(admin.group_settings("fifo-g", Some(true)).unwrap().ordered);
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    let (groups, per_group) = (8u32, 40u32);
    for seq in 0..per_group {
        for group in 0..groups {
            producer
                .send(grouped("fifo", &format!("g{group}"), seq))
                .unwrap();
        }
    }
    let watch = Arc::new(Mutex::new(Watch::default()));
    let stuck = Arc::new(AtomicBool::new(true));
    let (seen, hold) = (watch.clone(), stuck.clone());
    let consumer = PushConsumer::start(
        &broker.address,
        "fifo-g",
        "fifo",
        options("m0"),
        move |delivery: &Delivery| {
            let (group, seq) = parse(delivery);
            seen.lock().unwrap().enter(0, &group, seq);
            // Slow enough that a second message of a group, if handed out, would overlap.
            std::thread::sleep(Duration::from_millis(2));
            let until = Instant::now() + Duration::from_secs(60);
            while group == "g0" && hold.load(Ordering::Acquire) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            seen.lock().unwrap().leave(&group, seq, true);
            ConsumeResult::Success
        },
    )
    .unwrap();
    // g0 is stuck in its first message; the other seven, four of them on g0's queue,
    // go on to the end.
    wait_until(
        "every message group but the stuck one finished",
        Duration::from_secs(60),
        || {
            let watch = watch.lock().unwrap();
            (1..groups).all(|g| watch.finished(&format!("g{g}")) == per_group as usize)
        },
    );
    assert_eq!(watch.lock().unwrap().finished("g0"), 0, "g0 is stuck");
    assert!(
        consumer
            .stats()
            .message_groups_parked
            .load(Ordering::Relaxed)
            > 0,
        "g0's line (4 places) filled, so its later messages were left on the broker"
    );
    stuck.store(false, Ordering::Release);
    wait_until("g0 finished", Duration::from_secs(60), || {
        watch.lock().unwrap().finished("g0") == per_group as usize
    });
    consumer.shutdown().unwrap();
    let violations = watch.lock().unwrap().violations.clone();
    assert!(violations.is_empty(), "{violations:#?}");
    // Each group's messages are in the one queue its name hashes to.
    for record in drain(&broker.address, "fifo") {
        let group = record.property(property::MESSAGE_GROUP).unwrap();
        assert_eq!(record.queue_id, message_group_queue(group, 2), "{group}");
    }
}

#[test]
fn a_failed_ordered_message_keeps_its_place_then_goes_to_the_dead_letters_and_its_group_goes_on() {
    let broker = BrokerProcess::start("");
    let admin = broker.admin();
    admin.create_topic("fifo-retry", 1).unwrap();
    admin.group_settings("fifo-r", Some(true)).unwrap();
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    for seq in 0..5 {
        producer.send(grouped("fifo-retry", "a", seq)).unwrap();
        producer.send(grouped("fifo-retry", "b", seq)).unwrap();
    }
    // (id, attempt) in the order the handler ran them.
    let runs = Arc::new(Mutex::new(Vec::<(String, u32)>::new()));
    let watch = Arc::new(Mutex::new(Watch::default()));
    let (log, seen) = (runs.clone(), watch.clone());
    let consumer = PushConsumer::start(
        &broker.address,
        "fifo-r",
        "fifo-retry",
        PushConsumerOptions {
            max_reconsume_times: 2,
            ..options("m0")
        },
        move |delivery: &Delivery| {
            let (group, seq) = parse(delivery);
            let attempt = delivery.reconsume_times;
            seen.lock().unwrap().enter(0, &group, seq);
            log.lock()
                .unwrap()
                .push((format!("{group}-{seq}"), attempt));
            // a-1 fails twice, then works; b-1 always fails (3 attempts, then the DLQ).
            let fails = (group == "a" && seq == 1 && attempt < 2) || (group == "b" && seq == 1);
            // b-1 is never done, but its group moves on after it is dead-lettered.
            let done = !fails || (group == "b" && seq == 1 && attempt == 2);
            seen.lock().unwrap().leave(&group, seq, done);
            match fails {
                true => ConsumeResult::ReconsumeLater(format!("{group}-{seq} failed")),
                false => ConsumeResult::Success,
            }
        },
    )
    .unwrap();
    wait_until("both groups finished", Duration::from_secs(30), || {
        let watch = watch.lock().unwrap();
        watch.finished("a") == 5 && watch.finished("b") == 5
    });
    consumer.shutdown().unwrap();
    let violations = watch.lock().unwrap().violations.clone();
    assert!(violations.is_empty(), "{violations:#?}");
    let runs = runs.lock().unwrap().clone();
    let of = |group: &str| -> Vec<(String, u32)> {
        runs.iter()
            .filter(|(id, _)| id.starts_with(group))
            .cloned()
            .collect()
    };
    let expected = |group: &str| -> Vec<(String, u32)> {
        let mut runs = vec![(format!("{group}-0"), 0)];
        runs.extend((0..3).map(|attempt| (format!("{group}-1"), attempt)));
        runs.extend((2..5).map(|seq| (format!("{group}-{seq}"), 0)));
        runs
    };
    assert_eq!(of("a-"), expected("a"), "a-1 retried in place");
    assert_eq!(of("b-"), expected("b"), "b-1 tried 3 times, then b-2");
    let dead = drain(&broker.address, &keel_protocol::dlq_topic("fifo-r"));
    let dead: Vec<String> = dead.iter().filter_map(|r| id_of(&r.payload)).collect();
    assert_eq!(dead, vec!["b-1".to_string()]);
}

#[test]
fn a_message_that_fails_after_its_queue_was_taken_away_is_left_to_the_next_owner() {
    let broker = BrokerProcess::start("");
    let admin = broker.admin();
    admin.create_topic("fifo-handover", 1).unwrap();
    admin.group_settings("fifo-h", Some(true)).unwrap();
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    for seq in 0..3 {
        producer.send(grouped("fifo-handover", "h", seq)).unwrap();
    }
    let watch = Arc::new(Mutex::new(Watch::default()));
    let handler = |member: usize, seen: Arc<Mutex<Watch>>| {
        move |delivery: &Delivery| {
            let (group, seq) = parse(delivery);
            seen.lock().unwrap().enter(member, &group, seq);
            // The first member's h-0 runs past its lease (3/4 of 3 s) and fails.
            let fails = member == 0 && seq == 0;
            if fails {
                std::thread::sleep(Duration::from_millis(3_500));
            }
            seen.lock().unwrap().leave(&group, seq, !fails);
            match fails {
                true => ConsumeResult::ReconsumeLater("too slow".into()),
                false => ConsumeResult::Success,
            }
        }
    };
    let first = PushConsumer::start(
        &broker.address,
        "fifo-h",
        "fifo-handover",
        options("a-first"),
        handler(0, watch.clone()),
    )
    .unwrap();
    wait_until("h-0 started", Duration::from_secs(10), || {
        watch.lock().unwrap().holder.contains_key("h")
    });
    // Sorted first, the new member takes the only queue: the first one lets it go once
    // h-0 is over, and h-0 must reach the new owner.
    let second = PushConsumer::start(
        &broker.address,
        "fifo-h",
        "fifo-handover",
        options("0-second"),
        handler(1, watch.clone()),
    )
    .unwrap();
    wait_until(
        "the new owner handled all three",
        Duration::from_secs(30),
        || watch.lock().unwrap().finished("h") == 3,
    );
    second.shutdown().unwrap();
    first.shutdown().unwrap();
    let violations = watch.lock().unwrap().violations.clone();
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn members_joining_and_leaving_under_load_never_hold_one_message_group_at_once() {
    let broker = BrokerProcess::start("");
    let admin = broker.admin();
    admin.create_topic("fifo-members", 4).unwrap();
    admin.group_settings("fifo-m", Some(true)).unwrap();
    let (groups, per_group) = (16u32, 60u32);
    let address = broker.address.clone();
    let producing = std::thread::spawn(move || {
        let producer = Producer::connect(&address, ProducerOptions::default()).unwrap();
        for seq in 0..per_group {
            for group in 0..groups {
                producer
                    .send(grouped("fifo-members", &format!("m{group}"), seq))
                    .unwrap();
            }
            std::thread::sleep(Duration::from_millis(40));
        }
    });
    let watch = Arc::new(Mutex::new(Watch::default()));
    let start = |member: usize| {
        let seen = watch.clone();
        PushConsumer::start(
            &broker.address,
            "fifo-m",
            "fifo-members",
            options(&format!("member-{member}")),
            move |delivery: &Delivery| {
                let (group, seq) = parse(delivery);
                seen.lock().unwrap().enter(member, &group, seq);
                std::thread::sleep(Duration::from_millis(3));
                seen.lock().unwrap().leave(&group, seq, true);
                ConsumeResult::Success
            },
        )
        .unwrap()
    };
    // Members come and go while the producer sends (about 2.5 s of it).
    let first = start(0);
    std::thread::sleep(Duration::from_millis(500));
    let second = start(1);
    std::thread::sleep(Duration::from_millis(500));
    let third = start(2);
    std::thread::sleep(Duration::from_millis(500));
    first.shutdown().unwrap();
    let fourth = start(3);
    std::thread::sleep(Duration::from_millis(500));
    second.shutdown().unwrap();
    producing.join().unwrap();
    wait_until("every message handled", Duration::from_secs(60), || {
        let watch = watch.lock().unwrap();
        (0..groups).all(|g| watch.finished(&format!("m{g}")) == per_group as usize)
    });
    third.shutdown().unwrap();
    fourth.shutdown().unwrap();
    let violations = watch.lock().unwrap().violations.clone();
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn the_ordered_setting_survives_kill_9_reaches_a_promoted_slave_and_the_cli_speaks_it() {
    let [master_port, master_ha, slave_port, slave_ha] = free_ports();
    let mut old =
        BrokerProcess::start(&master("sync_master", "fifo", master_port, master_ha, None));
    let new = BrokerProcess::start(&slave("fifo", slave_port, slave_ha, master_ha, None));
    // A sync master answers SLAVE_NOT_AVAILABLE until its slave is there.
    wait_until("the slave in sync", Duration::from_secs(20), || {
        old.try_stat("slaves_in_sync") == Some(1)
    });
    let created = keel(
        &old.address,
        &["group", "create", "-g", "billing", "--ordered"],
        b"",
    );
    assert!(created.status.success(), "{created:?}");
    assert_eq!(
        String::from_utf8_lossy(&created.stdout),
        "group billing: ordered (each message group one message at a time, in order)\n"
    );
    let shown = keel(
        &old.address,
        &["--json", "group", "describe", "-g", "billing"],
        b"",
    );
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("\"ordered\":true"),
        "{shown:?}"
    );
    // Not a message group: refused by the CLI, and by the broker.
    let bad = keel(
        &old.address,
        &[
            "send",
            "-t",
            "bills",
            "--message-group",
            "x",
            "--mode",
            "async",
            "hi",
        ],
        b"",
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--message-group needs --mode sync"));
    let producer = Producer::connect(&old.address, ProducerOptions::default()).unwrap();
    let refused = producer
        .send(Message::new("bills", "x").with_property(property::MESSAGE_GROUP, "a\u{1}b"))
        .unwrap_err();
    assert!(
        refused.to_string().contains("control character"),
        "{refused}"
    );
    let sent = keel(
        &old.address,
        &[
            "send",
            "-t",
            "bills",
            "--message-group",
            "order-42",
            "one",
            "two",
        ],
        b"",
    );
    assert!(sent.status.success(), "{sent:?}");
    let queues = old.admin().list_topics(Some("bills")).unwrap()[0]
        .queues
        .len() as u32;
    let stored = drain(&old.address, "bills");
    assert_eq!(stored.len(), 2);
    assert!(stored
        .iter()
        .all(|record| record.queue_id == message_group_queue("order-42", queues)));
    // Durable when answered: kill -9 and it is still ordered.
    old.kill9();
    old.spawn();
    assert!(old.admin().group_settings("billing", None).unwrap().ordered);
    // And the slave has it (with the offsets' META frame): promoted, it says so too.
    wait_until("the setting on the slave", Duration::from_secs(20), || {
        new.admin()
            .group_settings("billing", None)
            .is_ok_and(|settings| settings.ordered)
    });
    old.kill9();
    new.admin().promote(BrokerRole::AsyncMaster).unwrap();
    assert!(new.admin().group_settings("billing", None).unwrap().ordered);
    let off = keel(
        &new.address,
        &["group", "create", "-g", "billing", "--ordered=false"],
        b"",
    );
    assert_eq!(
        String::from_utf8_lossy(&off.stdout),
        "group billing: concurrent (not ordered)\n"
    );
}

/// A raw member's heartbeat (no consumer behind it) in group restart-g on topic
/// restart: the queues it is granted.
fn heartbeat_as(address: &str, member: &str, owned: &[u32]) -> Vec<u32> {
    raw_heartbeat(address, ("restart-g", "restart"), member, 3_000, owned)
}

fn raw_heartbeat(
    address: &str,
    (group, topic): (&str, &str),
    member: &str,
    session_timeout_ms: u32,
    owned: &[u32],
) -> Vec<u32> {
    let connection = keel_client::Connection::connect(
        keel_client::resolve(address).unwrap(),
        &keel_client::ConnectionOptions::default(),
    )
    .unwrap();
    let request = keel_protocol::Request::Heartbeat(keel_protocol::HeartbeatRequest {
        group: group.into(),
        topic: topic.into(),
        member_id: member.into(),
        session_timeout_ms,
        owned: owned.to_vec(),
    });
    match connection.call(&request, Duration::from_secs(5)).unwrap() {
        keel_protocol::Response::Assignment(assignment) => assignment.queues,
        other => panic!("{other:?} in reply to HEARTBEAT"),
    }
}

#[test]
fn after_a_restart_a_queue_of_an_ordered_group_waits_for_its_old_owner_to_report() {
    let mut broker = BrokerProcess::start("");
    let admin = broker.admin();
    admin.create_topic("restart", 1).unwrap();
    admin.group_settings("restart-g", Some(true)).unwrap();
    // a holds the queue and has consumed from it.
    assert_eq!(heartbeat_as(&broker.address, "a", &[]), vec![0]);
    let connection = keel_client::Connection::connect(
        keel_client::resolve(&broker.address).unwrap(),
        &Default::default(),
    )
    .unwrap();
    let commit = keel_protocol::Request::GroupCommit(keel_protocol::GroupCommitRequest {
        group: "restart-g".into(),
        topic: "restart".into(),
        member_id: "a".into(),
        queue_id: 0,
        offset: 0,
    });
    let committed = connection.call(&commit, Duration::from_secs(5)).unwrap();
    assert!(
        !matches!(committed, keel_protocol::Response::Error(_)),
        "{committed:?}"
    );
    drop(connection);
    broker.kill9();
    broker.spawn();
    // b is back first; a, which may still be handling the queue's messages, has not
    // reported yet: the queue goes to neither until a reports or its timeout passes.
    assert!(heartbeat_as(&broker.address, "b", &[]).is_empty());
    // a reports it and keeps it; b gets nothing while a holds it.
    assert_eq!(heartbeat_as(&broker.address, "a", &[0]), vec![0]);
    assert!(heartbeat_as(&broker.address, "b", &[]).is_empty());
    // A queue nobody reports after a restart goes once the session timeout has passed.
    broker.kill9();
    broker.spawn();
    assert!(heartbeat_as(&broker.address, "b", &[]).is_empty());
    wait_until("the queue given away", Duration::from_secs(10), || {
        heartbeat_as(&broker.address, "b", &[]) == vec![0]
    });
}

#[test]
fn a_member_that_loses_its_broker_starts_no_ordered_message_until_a_heartbeat_grants_it_again() {
    // A fixed port: the consumer finds the broker again where it was.
    let port = crate::harness::free_port();
    let mut broker = BrokerProcess::start(&format!("listen = \"127.0.0.1:{port}\""));
    let admin = broker.admin();
    admin.create_topic("cut", 1).unwrap();
    admin.group_settings("cut-g", Some(true)).unwrap();
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    for seq in 0..3 {
        for group in ["a", "b", "c"] {
            producer.send(grouped("cut", group, seq)).unwrap();
        }
    }
    drop(producer);
    let watch = Arc::new(Mutex::new(Watch::default()));
    let down = Arc::new(AtomicBool::new(false));
    let hold = Arc::new(AtomicBool::new(true));
    let started_while_down = Arc::new(Mutex::new(Vec::new()));
    let (seen, is_down, held, wrong) = (
        watch.clone(),
        down.clone(),
        hold.clone(),
        started_while_down.clone(),
    );
    let consumer = PushConsumer::start(
        &broker.address,
        "cut-g",
        "cut",
        PushConsumerOptions {
            threads: 1,
            session_timeout: Duration::from_secs(20),
            ..options("m0")
        },
        move |delivery: &Delivery| {
            let (group, seq) = parse(delivery);
            if is_down.load(Ordering::Acquire) {
                wrong.lock().unwrap().push(format!("{group}-{seq}"));
            }
            seen.lock().unwrap().enter(0, &group, seq);
            let until = Instant::now() + Duration::from_secs(60);
            while seq == 0 && group == "a" && held.load(Ordering::Acquire) && Instant::now() < until
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            seen.lock().unwrap().leave(&group, seq, true);
            ConsumeResult::Success
        },
    )
    .unwrap();
    // a-0 is with the one worker; b-0 and c-0 were handed out behind it, under a lease
    // of 15 s (3/4 of the session timeout).
    wait_until("a-0 started", Duration::from_secs(20), || {
        watch.lock().unwrap().holder.contains_key("a")
    });
    std::thread::sleep(Duration::from_millis(300));
    broker.kill9();
    down.store(true, Ordering::Release);
    wait_until(
        "the consumer saw its broker go",
        Duration::from_secs(10),
        || consumer.stats().broker_lost.load(Ordering::Relaxed),
    );
    std::thread::sleep(Duration::from_millis(300));
    // The worker is free again, well inside the old lease: the broker that granted it
    // is gone (its successor may give the queue to another member), so nothing starts.
    hold.store(false, Ordering::Release);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        started_while_down.lock().unwrap().is_empty(),
        "started with no broker behind the lease: {:?}",
        started_while_down.lock().unwrap()
    );
    down.store(false, Ordering::Release);
    broker.spawn();
    wait_until("every message handled", Duration::from_secs(60), || {
        let watch = watch.lock().unwrap();
        ["a", "b", "c"].iter().all(|g| watch.finished(g) == 3)
    });
    consumer.shutdown().unwrap();
    let violations = watch.lock().unwrap().violations.clone();
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn a_queue_kept_after_all_hands_out_no_finished_message_again_after_a_later_one() {
    let broker = BrokerProcess::start("");
    let admin = broker.admin();
    admin.create_topic("kept", 1).unwrap();
    admin.group_settings("kept-g", Some(true)).unwrap();
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    for seq in 0..10 {
        for group in ["g0", "g1", "g2"] {
            producer.send(grouped("kept", group, seq)).unwrap();
        }
    }
    let watch = Arc::new(Mutex::new(Watch::default()));
    let handled = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let hold = Arc::new(AtomicBool::new(true));
    let (seen, count, held) = (watch.clone(), handled.clone(), hold.clone());
    // "m1": a raw member "m0" sorts first and is the queue's target while it lives.
    let consumer = PushConsumer::start(
        &broker.address,
        "kept-g",
        "kept",
        options("m1"),
        move |delivery: &Delivery| {
            let (group, seq) = parse(delivery);
            seen.lock().unwrap().enter(0, &group, seq);
            count.fetch_add(1, Ordering::Relaxed);
            let until = Instant::now() + Duration::from_secs(60);
            while (group.as_str(), seq) == ("g0", 0)
                && held.load(Ordering::Acquire)
                && Instant::now() < until
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            seen.lock().unwrap().leave(&group, seq, true);
            ConsumeResult::Success
        },
    )
    .unwrap();
    // g0-0 is stuck: nothing can be committed past it, while g1 and g2 finish.
    wait_until("g1 and g2 finished", Duration::from_secs(30), || {
        let watch = watch.lock().unwrap();
        watch.finished("g1") == 10 && watch.finished("g2") == 10
    });
    // m0 joins: the queue is taken from m1, which cannot let go (g0-0 is running).
    assert!(raw_heartbeat(&broker.address, ("kept-g", "kept"), "m0", 500, &[]).is_empty());
    std::thread::sleep(Duration::from_millis(600));
    // m0 goes silent and is dropped: m1 keeps the queue after all.
    wait_until("m1 holds the queue again", Duration::from_secs(10), || {
        admin
            .list_groups(Some("kept-g"))
            .unwrap()
            .iter()
            .any(|group| group.topic == "kept" && group.members == 1)
    });
    std::thread::sleep(Duration::from_millis(600));
    hold.store(false, Ordering::Release);
    wait_until("g0 finished", Duration::from_secs(30), || {
        watch.lock().unwrap().finished("g0") == 10
    });
    std::thread::sleep(Duration::from_millis(500));
    consumer.shutdown().unwrap();
    let violations = watch.lock().unwrap().violations.clone();
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(
        handled.load(Ordering::Relaxed),
        30,
        "each message handled once"
    );
}
