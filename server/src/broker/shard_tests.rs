//! Handlers against a `Shard`, without sockets: requests go in through `dispatch`,
//! answers come out of the outbox, as the event loop would see them.

use crate::broker::connection::ReplyTo;
use crate::broker::shard::Shard;
use crate::broker::workers::Pools;
use crate::config::Config;
use crate::context::{Broker, Ha};
use keel_protocol::{
    BrokerRole, CreateTopicRequest, ErrorCode, GroupCommitRequest, HeartbeatRequest, Message,
    PullRequest, PullStatus, Request, Response, SendStatus,
};
use keel_storage::Store;
use mio::{Poll, Waker};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A shard of a standalone master on a temporary data directory, with its reader
/// threads. Stopped (store shut down, threads joined) on drop, before the directory goes.
struct Fixture {
    shard: Option<Shard>,
    pools: Option<Pools>,
    store: Arc<Store>,
    _poll: Poll,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(adjust: impl FnOnce(&mut Config)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        adjust(&mut config);
        let store = Store::open(config.store_config()).unwrap();
        store.begin_epoch().unwrap();
        let security = crate::context::security::Security::from_config(&config).unwrap();
        let broker = Arc::new(Broker::new(
            config,
            store.clone(),
            BrokerRole::Master,
            Ha::None,
            security,
        ));
        let pools = Pools::start(2).unwrap();
        let poll = Poll::new().unwrap();
        let waker =
            Arc::new(Waker::new(poll.registry(), crate::broker::event_loop::WAKER).unwrap());
        let shard = Shard::new(broker, pools.clone(), waker);
        Fixture {
            shard: Some(shard),
            pools: Some(pools),
            store,
            _poll: poll,
            _dir: dir,
        }
    }

    fn shard(&mut self) -> &mut Shard {
        self.shard.as_mut().unwrap()
    }

    fn request(&mut self, to: ReplyTo, request: Request) {
        self.shard().dispatch(to, false, request);
    }

    /// A 10 s long poll of queue 0 of `topic` from offset 0, run until it is parked.
    fn park_a_long_poll(&mut self, to: ReplyTo, topic: &str) {
        let pull = PullRequest {
            group: "g".into(),
            topic: topic.into(),
            queue_id: 0,
            queue_offset: 0,
            max_messages: 10,
            max_bytes: 1 << 20,
            wait_ms: 10_000,
        };
        self.request(to, Request::Pull(pull));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.shard().next_deadline().is_none() {
            assert!(Instant::now() < deadline, "the pull never parked");
            std::thread::sleep(Duration::from_millis(1));
            self.shard().turn(Instant::now());
        }
    }

    /// Runs turns until `count` answers came out (or fails after 10 s); returns them in
    /// the order the loop would write them.
    fn answers(&mut self, count: usize) -> Vec<(ReplyTo, Response)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut answers = Vec::new();
        loop {
            answers.extend(self.shard().outbox());
            if answers.len() >= count {
                assert_eq!(answers.len(), count, "more answers than requests");
                return answers;
            }
            assert!(Instant::now() < deadline, "only {} answers", answers.len());
            std::thread::sleep(Duration::from_millis(1));
            self.shard().turn(Instant::now());
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The shard holds the pools too: they stop once it is gone.
        self.shard.take();
        if let Some(pools) = self.pools.take() {
            pools.stop(Duration::from_secs(5));
        }
        self.store.shutdown();
    }
}

fn to(connection_id: u64, request_id: u64) -> ReplyTo {
    ReplyTo {
        key: connection_id as usize,
        connection_id,
        request_id,
    }
}

fn message(topic: &str, payload: &str) -> Message {
    Message::new(topic, payload.as_bytes().to_vec()).sealed()
}

fn create_topic(fixture: &mut Fixture, topic: &str) {
    let create = CreateTopicRequest {
        topic: topic.into(),
        queues: 1,
    };
    fixture.request(to(99, 1), Request::CreateTopic(create));
    let answer = fixture.answers(1);
    assert!(
        matches!(answer[0].1, Response::TopicCreated(_)),
        "{answer:?}"
    );
}

#[test]
fn a_send_is_answered_send_ok_only_once_durable() {
    let mut fixture = Fixture::new(|_| {});
    fixture.request(to(1, 7), Request::Send(message("orders", "one")));
    // Appended, not yet answered: the answer waits for the fsync.
    assert!(fixture.shard().outbox_is_empty());
    assert!(fixture.shard().owes(1));
    let answers = fixture.answers(1);
    let (reply_to, Response::SendResult(result)) = &answers[0] else {
        panic!("{answers:?}");
    };
    assert_eq!(*reply_to, to(1, 7));
    assert_eq!(result.status, SendStatus::SendOk);
    assert_eq!(result.queue_offset, 0);
    assert!(fixture.store.offset_flushed() > result.log_offset);
    assert!(!fixture.shard().owes(1), "nothing owed once answered");
}

#[test]
fn a_refused_send_is_answered_at_once_and_stores_nothing() {
    let mut fixture = Fixture::new(|_| {});
    let mut damaged = message("orders", "one");
    damaged.payload = b"One".to_vec().into();
    fixture.request(to(1, 1), Request::Send(damaged));
    fixture.request(to(1, 2), Request::Send(message("%RETRY%g", "sneaky")));
    let answers: Vec<_> = fixture.shard().outbox().collect();
    let codes: Vec<_> = answers
        .iter()
        .map(|(_, answer)| match answer {
            Response::Error(error) => error.code,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        vec![ErrorCode::MessageCrcMismatch, ErrorCode::InvalidTopic]
    );
    assert_eq!(fixture.store.stats().offset_appended, 0);
}

#[test]
fn a_long_poll_parks_until_a_send_gives_it_something() {
    let mut fixture = Fixture::new(|_| {});
    create_topic(&mut fixture, "orders");
    // The reader finds nothing and the pull parks: no answer, and the connection owes.
    fixture.park_a_long_poll(to(2, 1), "orders");
    assert!(fixture.shard().outbox_is_empty());
    assert_eq!(fixture.shard().pulls_waiting(2), 1);
    fixture.request(to(3, 1), Request::Send(message("orders", "for the poll")));
    let mut answers = fixture.answers(2);
    answers.sort_by_key(|(reply_to, _)| reply_to.connection_id);
    let Response::PullResult(result) = &answers[0].1 else {
        panic!("{answers:?}");
    };
    assert_eq!(result.status, PullStatus::Found);
    assert_eq!(result.record_count, 1);
    assert!(matches!(answers[1].1, Response::SendResult(_)));
    assert_eq!(fixture.shard().pulls_waiting(2), 0);
}

#[test]
fn sends_of_one_turn_share_their_fsyncs() {
    let mut fixture = Fixture::new(|_| {});
    let fsyncs_before = fixture.store.stats().fsyncs;
    let sends = 200;
    for index in 0..sends {
        let send = Request::Send(message("orders", &format!("m{index}")));
        fixture.request(to(1, index), send);
    }
    let answers = fixture.answers(sends as usize);
    let mut request_ids = Vec::new();
    for (reply_to, answer) in &answers {
        let Response::SendResult(result) = answer else {
            panic!("{answer:?}");
        };
        assert_eq!(result.status, SendStatus::SendOk);
        request_ids.push(reply_to.request_id);
    }
    // Answered in log order, which is the order they were sent in.
    assert_eq!(request_ids, (0..sends).collect::<Vec<_>>());
    let fsyncs = fixture.store.stats().fsyncs - fsyncs_before;
    eprintln!("{sends} sends made durable by {fsyncs} fsyncs");
    assert!(
        fsyncs < sends,
        "group commit: {fsyncs} fsyncs for {sends} sends"
    );
}

#[test]
fn a_retry_of_a_durable_message_is_not_held_behind_newer_sends() {
    // Slow fsyncs keep the newer send pending while the retry is answered.
    let mut fixture = Fixture::new(|config| config.fault_fsync_delay_ms = 200);
    let mut numbered = message("orders", "numbered");
    numbered.producer_id = 5;
    numbered.sequence = 1;
    numbered.seal();
    fixture.request(to(1, 1), Request::Send(numbered.clone()));
    fixture.answers(1);
    fixture.request(to(1, 2), Request::Send(message("orders", "newer")));
    fixture.request(to(1, 3), Request::Send(numbered));
    let answers = fixture.answers(2);
    let order: Vec<u64> = answers.iter().map(|(to, _)| to.request_id).collect();
    assert_eq!(
        order,
        vec![3, 2],
        "the retry's original is older: it goes first"
    );
    for (_, answer) in &answers {
        let Response::SendResult(result) = answer else {
            panic!("{answer:?}");
        };
        assert_eq!(result.status, SendStatus::SendOk);
    }
}

#[test]
fn a_retry_of_an_old_message_after_newer_sends_were_answered_is_answered() {
    // The retry sits at its original's older position, behind answers already given:
    // the shard must answer it (this once tripped the log-order assertion and killed
    // the event loop, when producers retried on a newly elected master).
    let mut fixture = Fixture::new(|_| {});
    let mut numbered = message("orders", "numbered");
    numbered.producer_id = 9;
    numbered.sequence = 1;
    numbered.seal();
    fixture.request(to(1, 1), Request::Send(numbered.clone()));
    fixture.answers(1);
    for request in 2..5 {
        fixture.request(to(1, request), Request::Send(message("orders", "newer")));
        fixture.answers(1);
    }
    fixture.request(to(1, 9), Request::Send(numbered));
    let answers = fixture.answers(1);
    let Response::SendResult(result) = &answers[0].1 else {
        panic!("{answers:?}");
    };
    assert_eq!(result.status, SendStatus::SendOk);
    assert_eq!(result.log_offset, 0, "the original's position");
    fixture.request(to(1, 10), Request::Send(message("orders", "after")));
    assert_eq!(fixture.answers(1).len(), 1);
}

#[test]
fn a_group_commit_is_answered_once_on_disk_and_fenced_by_ownership() {
    let mut fixture = Fixture::new(|_| {});
    create_topic(&mut fixture, "orders");
    let heartbeat = HeartbeatRequest {
        group: "g".into(),
        topic: "orders".into(),
        member_id: "m1".into(),
        session_timeout_ms: 30_000,
        owned: Vec::new(),
    };
    fixture.request(to(1, 1), Request::Heartbeat(heartbeat));
    let answers = fixture.answers(1);
    let Response::Assignment(assignment) = &answers[0].1 else {
        panic!("{answers:?}");
    };
    assert_eq!(assignment.queues, vec![0]);
    for index in 0..3 {
        fixture.request(to(1, 10 + index), Request::Send(message("orders", "m")));
    }
    fixture.answers(3);
    let commit = |member: &str| GroupCommitRequest {
        group: "g".into(),
        topic: "orders".into(),
        member_id: member.into(),
        queue_id: 0,
        offset: 3,
    };
    fixture.request(to(1, 2), Request::GroupCommit(commit("m1")));
    fixture.request(to(1, 3), Request::GroupCommit(commit("intruder")));
    let answers = fixture.answers(2);
    let by_request = |id: u64| {
        &answers
            .iter()
            .find(|(to, _)| to.request_id == id)
            .unwrap()
            .1
    };
    assert!(
        matches!(by_request(2), Response::CommitOffsetOk),
        "{answers:?}"
    );
    assert!(
        matches!(by_request(3), Response::Error(error) if error.code == ErrorCode::NotOwner),
        "{answers:?}"
    );
    assert_eq!(fixture.store.query_offset("g", "orders", 0), Some(3));
    assert!(fixture.store.meta_persisted() > 0);
}

#[test]
fn a_closed_connection_is_owed_nothing_and_its_long_polls_go() {
    let mut fixture = Fixture::new(|_| {});
    create_topic(&mut fixture, "orders");
    fixture.park_a_long_poll(to(4, 1), "orders");
    assert!(fixture.shard().owes(4));
    fixture.shard().connection_closed(4);
    assert!(!fixture.shard().owes(4));
    assert_eq!(fixture.shard().next_deadline(), None);
    assert!(fixture.shard().drained());
}
