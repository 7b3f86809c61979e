//! Consumer groups against real keeld processes: queues shared and moved when a member
//! is killed, failed messages retried with delays and dead-lettered, pending retries
//! surviving a broker restart, start positions, and message lookups.

use crate::harness::{wait_until, BrokerProcess};
use keel_client::{
    Admin, ClientError, ConsumeResult, Delivery, Message, Producer, ProducerOptions, PushConsumer,
    PushConsumerOptions, StartFrom,
};
use keel_tests::{id_of, payload_for};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CONSUMER: &str = env!("CARGO_BIN_EXE_consumer-under-test");

/// What consumer processes handled: (member, payload id, queue).
type Handled = Arc<Mutex<Vec<(usize, String, u32)>>>;

/// A `consumer-under-test` process; what it handles is appended to `handled`.
struct ConsumerProcess {
    child: Child,
}

impl ConsumerProcess {
    fn start(broker: &str, group: &str, topic: &str, member: usize, handled: &Handled) -> Self {
        let mut child = Command::new(CONSUMER)
            .args([broker, group, topic, "1500", "2"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn consumer-under-test");
        let stdout = child.stdout.take().expect("stdout");
        let handled = handled.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("handled ") {
                    let mut fields = rest.split(' ');
                    let id = fields.next().unwrap_or("?").to_string();
                    let queue = fields
                        .next()
                        .and_then(|q| q.parse().ok())
                        .unwrap_or(u32::MAX);
                    handled.lock().unwrap().push((member, id, queue));
                }
            }
        });
        ConsumerProcess { child }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        crate::harness::signal(self.child.id(), libc::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn send_all(producer: &Producer, topic: &str, ids: impl Iterator<Item = String>) {
    let batch: Vec<Message> = ids
        .map(|id| Message::new(topic, payload_for(&id, 128)))
        .collect();
    for chunk in batch.chunks(100) {
        let result = producer.send_batch(chunk.to_vec()).expect("send batch");
        assert_eq!(result.status, keel_client::SendStatus::SendOk);
    }
}

#[test]
fn a_group_of_three_shares_eight_queues_and_a_killed_member_skips_nothing() {
    let broker = BrokerProcess::start("");
    broker.admin().create_topic("work", 8).unwrap();
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    send_all(&producer, "work", (0..4000).map(|i| format!("w{i}")));

    let handled: Handled = Arc::new(Mutex::new(Vec::new()));
    let mut members: Vec<ConsumerProcess> = (0..3)
        .map(|member| ConsumerProcess::start(&broker.address, "workers", "work", member, &handled))
        .collect();
    wait_until("every member consuming", Duration::from_secs(30), || {
        let handled = handled.lock().unwrap();
        (0..3).all(|member| handled.iter().filter(|(m, _, _)| *m == member).count() >= 200)
    });
    // One member dies mid-stream, with messages fetched and not committed.
    members[1].kill9();
    let handled_at_kill = handled.lock().unwrap().len();
    let killed_queues: BTreeSet<u32> = handled
        .lock()
        .unwrap()
        .iter()
        .filter(|(member, _, _)| *member == 1)
        .map(|(_, _, queue)| *queue)
        .collect();
    assert!(!killed_queues.is_empty(), "the killed member had queues");
    send_all(&producer, "work", (4000..6000).map(|i| format!("w{i}")));
    let expected: BTreeSet<String> = (0..6000).map(|i| format!("w{i}")).collect();
    wait_until("every message handled", Duration::from_secs(60), || {
        let seen: BTreeSet<String> = handled
            .lock()
            .unwrap()
            .iter()
            .map(|(_, id, _)| id.clone())
            .collect();
        expected.is_subset(&seen)
    });
    for (index, member) in members.iter_mut().enumerate() {
        if index != 1 {
            member.terminate();
        }
    }
    let handled = handled.lock().unwrap().clone();
    // The killed member's queues moved to the others.
    let moved: BTreeSet<u32> = handled[handled_at_kill..]
        .iter()
        .filter(|(member, _, queue)| *member != 1 && killed_queues.contains(queue))
        .map(|(_, _, queue)| *queue)
        .collect();
    assert_eq!(
        moved, killed_queues,
        "every queue of the killed member was taken over"
    );
    let unique: BTreeSet<&String> = handled.iter().map(|(_, id, _)| id).collect();
    let redeliveries = handled.len() - unique.len();
    eprintln!(
        "group of 3 over 8 queues, one member killed: {} messages, {} handled, \
         {redeliveries} redelivered (at least once, none skipped)",
        expected.len(),
        handled.len()
    );
    assert_eq!(unique.len(), expected.len(), "nothing unexpected");
    // Offsets committed up to the end of every queue: nothing left behind.
    let admin = broker.admin();
    let ends = admin.list_topics(Some("work")).unwrap()[0].queues.clone();
    for (queue_id, queue) in ends.iter().enumerate() {
        let committed = admin
            .query_offset("workers", "work", queue_id as u32)
            .unwrap();
        assert_eq!(committed, Some(queue.max_offset), "queue {queue_id}");
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Deliveries seen by an in-process consumer: payload id -> (reconsume_times, when).
type Seen = Arc<Mutex<BTreeMap<String, Vec<(u32, Instant)>>>>;

fn options(max_reconsume_times: u32) -> PushConsumerOptions {
    PushConsumerOptions {
        max_reconsume_times,
        heartbeat_interval: Duration::from_millis(100),
        session_timeout: Duration::from_millis(1500),
        commit_interval: Duration::from_millis(100),
        long_poll: Duration::from_millis(300),
        ..PushConsumerOptions::default()
    }
}

#[test]
fn failed_messages_come_back_after_their_delays_and_end_in_the_dead_letter_queue() {
    let broker = BrokerProcess::start("retry_delays_ms = [300, 600, 900]");
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    for id in ["flaky", "doomed", "panicky", "fine"] {
        producer
            .send(Message::new("jobs", payload_for(id, 64)).with_keys(id))
            .unwrap();
    }
    let seen: Seen = Arc::new(Mutex::new(BTreeMap::new()));
    let succeed_doomed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler = {
        let (seen, succeed_doomed) = (seen.clone(), succeed_doomed.clone());
        move |delivery: &Delivery| -> ConsumeResult {
            let id = id_of(&delivery.record.payload).expect("intact payload");
            assert_eq!(
                delivery.topic, "jobs",
                "the original topic, also on redelivery"
            );
            let attempts = {
                let mut seen = seen.lock().unwrap();
                let entry = seen.entry(id.clone()).or_default();
                entry.push((delivery.reconsume_times, Instant::now()));
                entry.len()
            };
            match id.as_str() {
                "flaky" if attempts <= 3 => {
                    ConsumeResult::ReconsumeLater(format!("try {attempts}"))
                }
                "doomed" if !succeed_doomed.load(std::sync::atomic::Ordering::SeqCst) => {
                    ConsumeResult::ReconsumeLater("always fails".into())
                }
                "panicky" if attempts == 1 => panic!("handler bug"),
                _ => ConsumeResult::Success,
            }
        }
    };
    let consumer =
        PushConsumer::start(&broker.address, "billing", "jobs", options(3), handler).unwrap();
    let admin = Admin::connect(&broker.address).unwrap();
    wait_until(
        "flaky to succeed and doomed to die",
        Duration::from_secs(30),
        || {
            let flaky_done = seen
                .lock()
                .unwrap()
                .get("flaky")
                .is_some_and(|d| d.len() == 4);
            flaky_done && admin.dlq_count("billing").unwrap().0 == 1
        },
    );
    {
        let seen = seen.lock().unwrap();
        // flaky: delivered 4 times, attempts numbered 0..3, each after at least its delay.
        let flaky = &seen["flaky"];
        let attempts: Vec<u32> = flaky.iter().map(|(times, _)| *times).collect();
        assert_eq!(attempts, vec![0, 1, 2, 3]);
        for (pair, delay_ms) in flaky.windows(2).zip([300u64, 600, 900]) {
            let gap = pair[1].1.duration_since(pair[0].1);
            assert!(
                gap >= Duration::from_millis(delay_ms),
                "redelivered after {gap:?} < {delay_ms} ms"
            );
        }
        // doomed: the first delivery and 3 retries, then the dead-letter queue.
        assert_eq!(seen["doomed"].len(), 4);
        // A panic counts as "reconsume later".
        assert_eq!(seen["panicky"].len(), 2);
        assert_eq!(seen["fine"].len(), 1);
    }
    let dead = admin.dlq_messages("billing", 10).unwrap();
    assert_eq!(dead.len(), 1);
    let property = |name: &str| {
        dead[0]
            .properties
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_default()
    };
    assert_eq!(id_of(&dead[0].payload).as_deref(), Some("doomed"));
    assert_eq!(property("KEEL_ORIGIN_TOPIC"), "jobs");
    assert_eq!(property("KEEL_RECONSUME_TIMES"), "4");
    assert_eq!(property("KEEL_REASON"), "always fails");

    // Where is it? The lookup by key tells the whole story.
    let info: HashMap<String, String> = admin
        .message_info(0, Some("doomed"))
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(info["topic"], "jobs");
    assert_eq!(info["retries"], "3");
    assert!(info.contains_key("dead_lettered billing"), "{info:?}");
    let flaky_info: HashMap<String, String> = admin
        .message_info(0, Some("flaky"))
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        flaky_info["group billing"], "consumed and committed",
        "{flaky_info:?}"
    );

    // Redrive: the message comes back to the group (attempts reset) and now succeeds.
    succeed_doomed.store(true, std::sync::atomic::Ordering::SeqCst);
    let redriven = admin.redrive_dlq("billing", None).unwrap();
    assert_eq!(redriven.len(), 1);
    wait_until(
        "the redriven message handled",
        Duration::from_secs(10),
        || seen.lock().unwrap()["doomed"].len() == 5,
    );
    assert_eq!(seen.lock().unwrap()["doomed"][4].0, 0, "attempts reset");
    assert!(
        admin.redrive_dlq("billing", None).unwrap().is_empty(),
        "redriven once"
    );
    assert!(consumer.errors().is_empty(), "{:?}", consumer.errors());
    consumer.shutdown().unwrap();
}

#[test]
fn retries_pending_at_a_broker_restart_are_delivered_after_it() {
    let mut broker = BrokerProcess::start("retry_delays_ms = [1500]");
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    for index in 0..5 {
        producer
            .send(Message::new("later", payload_for(&format!("r{index}"), 64)))
            .unwrap();
    }
    let seen: Seen = Arc::new(Mutex::new(BTreeMap::new()));
    let record = |seen: &Seen, delivery: &Delivery| {
        let id = id_of(&delivery.record.payload).unwrap();
        seen.lock()
            .unwrap()
            .entry(id)
            .or_default()
            .push((delivery.reconsume_times, Instant::now()));
    };
    let first = {
        let seen = seen.clone();
        PushConsumer::start(
            &broker.address,
            "g",
            "later",
            options(16),
            move |d: &Delivery| {
                record(&seen, d);
                ConsumeResult::ReconsumeLater("not now".into())
            },
        )
        .unwrap()
    };
    wait_until("every message failed once", Duration::from_secs(10), || {
        seen.lock().unwrap().len() == 5
            && first
                .stats()
                .sent_back
                .load(std::sync::atomic::Ordering::Relaxed)
                == 5
    });
    first.shutdown().unwrap();
    // The retries wait in the broker; it is killed and restarted before they are due.
    broker.kill9();
    broker.spawn();
    let second = {
        let seen = seen.clone();
        PushConsumer::start(
            &broker.address,
            "g",
            "later",
            options(16),
            move |d: &Delivery| {
                record(&seen, d);
                ConsumeResult::Success
            },
        )
        .unwrap()
    };
    wait_until(
        "every retry delivered after the restart",
        Duration::from_secs(20),
        || seen.lock().unwrap().values().all(|d| d.len() == 2),
    );
    for deliveries in seen.lock().unwrap().values() {
        assert_eq!(deliveries[1].0, 1, "the redelivery is attempt 1");
    }
    second.shutdown().unwrap();
}

#[test]
fn a_new_group_starts_where_it_is_told() {
    let broker = BrokerProcess::start("");
    broker.admin().create_topic("feed", 2).unwrap();
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    send_all(&producer, "feed", (0..10).map(|i| format!("old{i}")));
    std::thread::sleep(Duration::from_millis(20));
    let cut = now_ms();
    std::thread::sleep(Duration::from_millis(20));
    send_all(&producer, "feed", (0..10).map(|i| format!("mid{i}")));
    let start = |group: &str, from: StartFrom, seen: &Arc<Mutex<Vec<String>>>| {
        let seen = seen.clone();
        let options = PushConsumerOptions {
            start_from: from,
            ..options(16)
        };
        PushConsumer::start(
            &broker.address,
            group,
            "feed",
            options,
            move |d: &Delivery| {
                seen.lock().unwrap().push(id_of(&d.record.payload).unwrap());
                ConsumeResult::Success
            },
        )
        .unwrap()
    };
    let (earliest, latest, timed) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let consumers = [
        start("from-earliest", StartFrom::Earliest, &earliest),
        start("from-latest", StartFrom::Latest, &latest),
        start("from-time", StartFrom::Timestamp(cut), &timed),
    ];
    // The groups hold their queues (each has committed its start on both) before the
    // new messages are sent.
    let admin = broker.admin();
    wait_until("the groups joined", Duration::from_secs(10), || {
        earliest.lock().unwrap().len() == 20
            && timed.lock().unwrap().len() == 10
            && (0..2).all(|queue| {
                admin
                    .query_offset("from-latest", "feed", queue)
                    .unwrap()
                    .is_some()
            })
    });
    send_all(&producer, "feed", (0..5).map(|i| format!("new{i}")));
    wait_until("the new messages", Duration::from_secs(10), || {
        earliest.lock().unwrap().len() == 25
            && latest.lock().unwrap().len() == 5
            && timed.lock().unwrap().len() == 15
    });
    assert!(latest
        .lock()
        .unwrap()
        .iter()
        .all(|id| id.starts_with("new")));
    assert!(timed
        .lock()
        .unwrap()
        .iter()
        .all(|id| !id.starts_with("old")));
    for consumer in consumers {
        consumer.shutdown().unwrap();
    }
}

#[test]
fn a_push_consumer_behind_retention_reports_it_and_does_not_jump() {
    let broker = BrokerProcess::start(
        "segment_size_bytes = 16384\nretention_bytes = 32768\nretention_check_interval_ms = 50\nretention_hours = 0",
    );
    let admin = broker.admin();
    admin.create_topic("events", 1).unwrap();
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    producer.send(Message::new("events", "event 0")).unwrap();
    // The group consumed the first message and committed, long ago.
    admin.commit_offset("slow", "events", 0, 1).unwrap();
    for index in 1..400 {
        producer
            .send(Message::new(
                "events",
                format!("event {index} {}", "x".repeat(200)),
            ))
            .unwrap();
    }
    wait_until(
        "retention to delete old segments",
        Duration::from_secs(20),
        || admin.list_topics(Some("events")).unwrap()[0].queues[0].min_offset > 1,
    );
    let handled = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = handled.clone();
    let consumer = PushConsumer::start(
        &broker.address,
        "slow",
        "events",
        options(16),
        move |_: &Delivery| {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ConsumeResult::Success
        },
    )
    .unwrap();
    wait_until("the explicit error", Duration::from_secs(10), || {
        !consumer.errors().is_empty()
    });
    let errors = consumer.errors();
    assert!(
        matches!(
            errors[0],
            ClientError::OffsetExpired {
                queue_id: 0,
                offset: 1,
                ..
            }
        ),
        "{errors:?}"
    );
    assert_eq!(
        handled.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no silent jump"
    );
    consumer.shutdown().unwrap();
    assert_eq!(
        admin.query_offset("slow", "events", 0).unwrap(),
        Some(1),
        "offset kept"
    );
}

#[test]
fn a_handler_may_give_its_own_retry_delay_and_a_bad_one_is_refused() {
    let broker = BrokerProcess::start("retry_delays_ms = [300]\nmax_delay_ms = 60000");
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    for id in ["later", "level"] {
        producer
            .send(Message::new("waits", payload_for(id, 64)))
            .unwrap();
    }
    let seen: Seen = Arc::new(Mutex::new(BTreeMap::new()));
    let handler = {
        let seen = seen.clone();
        move |delivery: &Delivery| -> ConsumeResult {
            let id = id_of(&delivery.record.payload).expect("intact payload");
            let mut seen = seen.lock().unwrap();
            let entry = seen.entry(id.clone()).or_default();
            entry.push((delivery.reconsume_times, Instant::now()));
            match (id.as_str(), entry.len()) {
                ("later", 1) => {
                    ConsumeResult::ReconsumeAfter(Duration::from_millis(2500), "busy".into())
                }
                ("level", 1) => ConsumeResult::ReconsumeLater("busy".into()),
                _ => ConsumeResult::Success,
            }
        }
    };
    let consumer =
        PushConsumer::start(&broker.address, "waiter", "waits", options(3), handler).unwrap();
    wait_until("both handled twice", Duration::from_secs(30), || {
        let seen = seen.lock().unwrap();
        ["later", "level"]
            .iter()
            .all(|id| seen.get(*id).is_some_and(|d| d.len() == 2))
    });
    consumer.shutdown().unwrap();
    let seen = seen.lock().unwrap();
    let gap = |id: &str| seen[id][1].1.duration_since(seen[id][0].1);
    // The handler's delay, not the level's 300 ms; the level's for the other.
    assert!(
        gap("later") >= Duration::from_millis(2500),
        "{:?}",
        gap("later")
    );
    assert!(
        gap("level") >= Duration::from_millis(300),
        "{:?}",
        gap("level")
    );
    assert!(
        gap("level") < Duration::from_millis(2500),
        "{:?}",
        gap("level")
    );
    assert_eq!(seen["later"][1].0, 1, "counted as an attempt");
    // A delay that is not a number, or beyond max_delay_ms, is refused.
    let admin = Admin::connect(&broker.address).unwrap();
    for (delay, words) in [("soon", "not a whole number"), ("60001", "beyond")] {
        let refused = admin
            .send_back(keel_protocol::SendBackRequest {
                group: "waiter".into(),
                reconsume_times: 1,
                max_reconsume_times: 3,
                reason: String::new(),
                origin_topic: "waits".into(),
                origin_msg_id: 0,
                message: Message::new("waits", "x")
                    .with_property(keel_protocol::names::property::RETRY_DELAY_MS, delay),
            })
            .unwrap_err();
        assert!(refused.to_string().contains(words), "{refused}");
    }
}
