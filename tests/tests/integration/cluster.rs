//! Replication and failover with real processes on 127.0.0.1: a name server, sync
//! masters with one sync slave each, kill -9, SIGSTOP, promotion, and an old master
//! coming back.

use crate::harness::{drain, free_ports, wait_until, BrokerProcess, NameServerProcess};
use keel_client::{
    fetch_routes, BrokerRole, ClientError, Message, Producer, ProducerOptions, Record, SendStatus,
};
use keel_tests::{id_of, payload_for, Ledger, Outcome};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Config of a master of `name` on fixed ports (its address survives restarts);
/// `namesrv` is the TOML list's contents, e.g. `"a:1", "b:2"`.
pub(crate) fn master(
    role: &str,
    name: &str,
    port: u16,
    ha_port: u16,
    namesrv: Option<&str>,
) -> String {
    let namesrv = namesrv.unwrap_or_default();
    format!(
        "listen = \"127.0.0.1:{port}\"\nrole = \"{role}\"\nbroker_name = \"{name}\"\n\
         ha_port = {ha_port}\nnamesrv_addrs = [{namesrv}]\nregister_interval_ms = 300\n\
         ha_heartbeat_ms = 200\nslave_timeout_ms = 2000\n"
    )
}

/// Config of slave 1 of `name`, following the master whose HA port is `master_ha`.
pub(crate) fn slave(
    name: &str,
    port: u16,
    ha_port: u16,
    master_ha: u16,
    namesrv: Option<&str>,
) -> String {
    let namesrv = namesrv.unwrap_or_default();
    format!(
        "listen = \"127.0.0.1:{port}\"\nrole = \"slave\"\nbroker_id = 1\nbroker_name = \"{name}\"\n\
         ha_port = {ha_port}\nmaster_address = \"127.0.0.1:{master_ha}\"\n\
         namesrv_addrs = [{namesrv}]\nregister_interval_ms = 300\nha_heartbeat_ms = 200\n"
    )
}

fn stat_is(broker: &BrokerProcess, name: &str, value: u64) -> bool {
    broker.try_stat(name) == Some(value)
}

/// Whether `slave` serves all of `master`'s log: the master's whole log is confirmed
/// (with a sync master: a slave acknowledged it) and the slave's durable offset, capped
/// by what the master confirmed, reached it. Equal durable offsets alone are not
/// enough: under a sync master both lag together until the slave's ACK arrives.
fn caught_up(master: &BrokerProcess, slave: &BrokerProcess) -> bool {
    let written = master.try_stat("offset_flushed");
    written.is_some()
        && master.try_stat("offset_durable") == written
        && slave.try_stat("offset_durable") == written
}

fn send_status(producer: &Producer, id: &str) -> Result<SendStatus, ClientError> {
    producer
        .send(Message::new("replicated", payload_for(id, 256)))
        .map(|result| result.status)
}

/// The payload ids of `records`, sorted: a drain reads the queues in the order their
/// replies come.
fn payload_ids(records: &[Record]) -> Vec<String> {
    let mut ids: Vec<String> = records
        .iter()
        .map(|record| id_of(&record.payload).expect("intact payload"))
        .collect();
    ids.sort();
    ids
}

/// (queue, queue offset, log offset, payload) of every record: equal lists mean equal
/// histories.
fn history(records: &[Record]) -> Vec<(u32, u64, u64, Vec<u8>)> {
    let mut history: Vec<_> = records
        .iter()
        .map(|r| (r.queue_id, r.queue_offset, r.log_offset, r.payload.to_vec()))
        .collect();
    history.sort();
    history
}

#[test]
fn a_sync_master_answers_slave_statuses_and_never_send_ok_without_its_slave() {
    let [master_port, master_ha, slave_port, slave_ha] = free_ports();
    // Heartbeats every second: a stalled slave stays connected (5 s) past the 2 s slave
    // timeout, so its stall shows as FLUSH_SLAVE_TIMEOUT.
    let slow = |config: String| config.replace("ha_heartbeat_ms = 200", "ha_heartbeat_ms = 1000");
    let master = BrokerProcess::start(&slow(master(
        "sync_master",
        "solo",
        master_port,
        master_ha,
        None,
    )));
    let mut follower =
        BrokerProcess::start(&slow(slave("solo", slave_port, slave_ha, master_ha, None)));
    wait_until("the slave in sync", Duration::from_secs(20), || {
        stat_is(&master, "slaves_in_sync", 1)
    });
    // Each of the 3 attempts may wait 3 s, more than the 2 s slave timeout, so the
    // broker's FLUSH_SLAVE_TIMEOUT arrives before the client gives up on an attempt.
    let options = ProducerOptions {
        send_timeout: Duration::from_secs(9),
        ..ProducerOptions::default()
    };
    let producer = Producer::connect(&master.address, options).unwrap();
    let mut sent = 0usize;
    let mut send = |expect: &[SendStatus], what: &str| {
        let id = format!("m{sent}");
        sent += 1;
        let status = send_status(&producer, &id).unwrap();
        assert!(expect.contains(&status), "{what}: got {status}");
        status
    };
    for _ in 0..20 {
        send(&[SendStatus::SendOk], "slave in sync");
    }

    // Slave killed: stored here, but answered SLAVE_NOT_AVAILABLE at once, never SEND_OK.
    follower.kill9();
    wait_until(
        "the master to see the slave gone",
        Duration::from_secs(10),
        || stat_is(&master, "slaves_connected", 0),
    );
    for _ in 0..20 {
        let started = Instant::now();
        send(&[SendStatus::SlaveNotAvailable], "slave killed");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "answered at once"
        );
    }
    // A slave is a reader: it refuses sends with NOT_MASTER.
    follower.spawn();
    let refused = Producer::connect(&follower.address, ProducerOptions::default())
        .unwrap()
        .send(Message::new("replicated", "x"));
    match refused {
        Err(ClientError::Broker(error)) => {
            assert_eq!(error.code, keel_client::ErrorCode::NotMaster)
        }
        other => panic!("a slave must refuse sends: {other:?}"),
    }
    // Restarted: it catches up (including what was stored while it was away) and
    // SEND_OK resumes.
    wait_until("the slave back in sync", Duration::from_secs(20), || {
        stat_is(&master, "slaves_in_sync", 1)
    });
    send(&[SendStatus::SendOk], "slave back");

    // Slave stalled (SIGSTOP): no ack arrives, FLUSH_SLAVE_TIMEOUT after slave_timeout_ms
    // (or SLAVE_NOT_AVAILABLE once the master stops counting it in sync). Never SEND_OK.
    crate::harness::signal(follower.pid(), libc::SIGSTOP);
    let first = send(
        &[SendStatus::FlushSlaveTimeout, SendStatus::SlaveNotAvailable],
        "slave stopped",
    );
    assert_eq!(
        first,
        SendStatus::FlushSlaveTimeout,
        "the slave was in sync when stopped"
    );
    for _ in 0..3 {
        send(
            &[SendStatus::FlushSlaveTimeout, SendStatus::SlaveNotAvailable],
            "slave stopped",
        );
    }
    crate::harness::signal(follower.pid(), libc::SIGCONT);
    wait_until("the slave in sync again", Duration::from_secs(20), || {
        stat_is(&master, "slaves_in_sync", 1)
    });
    send(&[SendStatus::SendOk], "slave resumed");

    // Everything stored on the master is on the slave, in the same places.
    wait_until("the slave caught up", Duration::from_secs(20), || {
        stat_is(&follower, "lag_behind_master_bytes", 0)
            && follower.try_stat("offset_durable") == master.try_stat("offset_flushed")
    });
    let on_master = drain(&master.address, "replicated");
    let on_slave = drain(&follower.address, "replicated");
    assert_eq!(on_master.len(), sent);
    assert_eq!(history(&on_slave), history(&on_master));
}

#[test]
fn an_old_master_returning_after_a_promotion_cannot_fork_the_history() {
    let [m_port, m_ha, s_port, s_ha] = free_ports();
    let mut old = BrokerProcess::start(&master("async_master", "fork", m_port, m_ha, None));
    let mut new = BrokerProcess::start(&slave("fork", s_port, s_ha, m_ha, None));
    wait_until("the slave connected", Duration::from_secs(20), || {
        stat_is(&old, "slaves_in_sync", 1)
    });
    let producer = Producer::connect(&old.address, ProducerOptions::default()).unwrap();
    for index in 0..50 {
        assert_eq!(
            send_status(&producer, &format!("a{index}")).unwrap(),
            SendStatus::SendOk
        );
    }
    wait_until("the slave caught up", Duration::from_secs(20), || {
        new.try_stat("offset_flushed") == old.try_stat("offset_flushed")
    });
    // The slave dies; the (async) master takes 20 more the slave never sees, then dies.
    new.kill9();
    for index in 0..20 {
        assert_eq!(
            send_status(&producer, &format!("b{index}")).unwrap(),
            SendStatus::SendOk
        );
    }
    drop(producer);
    old.kill9();

    // The slave comes back, its master is gone: it is promoted and takes new sends.
    new.spawn();
    let (epoch, log_end) = new.admin().promote(BrokerRole::AsyncMaster).unwrap();
    assert_eq!(epoch, 2);
    assert!(log_end > 0);
    assert_eq!(new.stat("role"), BrokerRole::AsyncMaster as u64);
    let producer = Producer::connect(&new.address, ProducerOptions::default()).unwrap();
    for index in 0..10 {
        assert_eq!(
            send_status(&producer, &format!("c{index}")).unwrap(),
            SendStatus::SendOk
        );
    }
    let promoted = drain(&new.address, "replicated");
    let ids = payload_ids(&promoted);
    assert_eq!(ids.len(), 60);
    assert!(ids.iter().all(|id| !id.starts_with('b')));

    // The old master returns as a slave of the new one: its 20 records of the old epoch
    // that the new master never had are cut (proved by the epochs and the CRC of the
    // record where the logs part), and it follows the new history.
    old.reconfigure(&slave("fork", m_port, m_ha, s_ha, None));
    old.spawn();
    wait_until("the old master following", Duration::from_secs(20), || {
        // Served up to what the new master confirmed: everything, once caught up.
        stat_is(&old, "master_connected", 1) && caught_up(&new, &old)
    });
    assert!(
        old.log().contains("records) to match master epoch 2"),
        "{}",
        old.log()
    );
    let followed = drain(&old.address, "replicated");
    assert_eq!(
        payload_ids(&followed),
        payload_ids(&drain(&new.address, "replicated")),
        "stats of the old master: {:?}",
        old.admin().stats()
    );
    assert!(history(&followed) == history(&drain(&new.address, "replicated")));

    // A broker with an unrelated history is refused, and its log left alone.
    let mut stranger = {
        let [port, ha] = free_ports();
        BrokerProcess::start(&master("master", "fork", port, ha, None))
    };
    let strange = Producer::connect(&stranger.address, ProducerOptions::default()).unwrap();
    for index in 0..5 {
        send_status(&strange, &format!("z{index}")).unwrap();
    }
    drop(strange);
    stranger.terminate();
    let [port, ha] = free_ports();
    stranger.reconfigure(&slave("fork", port, ha, s_ha, None));
    stranger.spawn();
    wait_until("the refusal", Duration::from_secs(20), || {
        stranger.log().contains("the master refused")
            || stranger.log().contains("is not this log's")
    });
    assert_eq!(stranger.stat("master_connected"), 0);
    assert_eq!(
        payload_ids(&drain(&stranger.address, "replicated")).len(),
        5
    );
}

const PRODUCERS: usize = 4;

#[test]
fn a_killed_sync_master_loses_no_acknowledged_message_and_producers_fail_over() {
    // Two name servers: brokers register with both, producers ask either; the first
    // one is killed mid-test.
    let mut namesrv = NameServerProcess::start(3000);
    let namesrv2 = NameServerProcess::start(3000);
    let both = format!("\"{}\", \"{}\"", namesrv.address, namesrv2.address);
    let ns = Some(both.as_str());
    let ports: [u16; 8] = free_ports();
    let (a, a_ha, a1, a1_ha, b, b_ha, b1, b1_ha) = (
        ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], ports[6], ports[7],
    );
    let mut master_a = BrokerProcess::start(&master("sync_master", "broker-a", a, a_ha, ns));
    let slave_a = BrokerProcess::start(&slave("broker-a", a1, a1_ha, a_ha, ns));
    let master_b = BrokerProcess::start(&master("sync_master", "broker-b", b, b_ha, ns));
    let _slave_b = BrokerProcess::start(&slave("broker-b", b1, b1_ha, b_ha, ns));
    for broker in [&master_a, &master_b] {
        broker.admin().create_topic("replicated", 4).unwrap();
        wait_until("a slave in sync", Duration::from_secs(20), || {
            stat_is(broker, "slaves_in_sync", 1)
        });
    }
    let name_servers = vec![namesrv.address.clone(), namesrv2.address.clone()];
    let next = AtomicUsize::new(0);
    wait_until("both masters routed", Duration::from_secs(20), || {
        fetch_routes(
            &name_servers,
            &next,
            "replicated",
            Duration::from_secs(1),
            None,
        )
        .map(|routes| {
            routes
                .iter()
                .filter(|r| r.role.is_master() && r.topic_queues == 4)
                .count()
                == 2
        })
        .unwrap_or(false)
    });

    // Producers over both masters, through the name server.
    let ledger = Arc::new(Ledger::new());
    let stop = Arc::new(AtomicBool::new(false));
    let ok_times = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let threads: Vec<_> = (0..PRODUCERS)
        .map(|index| {
            let (ledger, stop, ok_times, name_servers) = (
                ledger.clone(),
                stop.clone(),
                ok_times.clone(),
                name_servers.clone(),
            );
            std::thread::spawn(move || {
                let options = ProducerOptions {
                    route_refresh: Duration::from_millis(500),
                    ..ProducerOptions::default()
                };
                let addresses: Vec<&str> = name_servers.iter().map(String::as_str).collect();
                let producer = Producer::with_name_servers(&addresses, options).unwrap();
                let mut sequence = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("p{index}-s{sequence}");
                    sequence += 1;
                    let outcome = match send_status(&producer, &id) {
                        Ok(SendStatus::SendOk) => {
                            ok_times.lock().unwrap().push(Instant::now());
                            Outcome::Ok
                        }
                        other => Outcome::of_status(other.as_ref().copied()),
                    };
                    ledger.sent(&id, outcome);
                }
            })
        })
        .collect();
    wait_until("load on both masters", Duration::from_secs(20), || {
        master_a.try_stat("sends_ok").unwrap_or(0) > 200
            && master_b.try_stat("sends_ok").unwrap_or(0) > 200
    });
    // The first name server dies too: routes come from the second.
    namesrv.kill9();
    let killed_at = Instant::now();
    master_a.kill9();
    let acked_before_kill = ledger.ok_count();
    wait_until(
        "sends succeeding after the kill",
        Duration::from_secs(20),
        || {
            ok_times
                .lock()
                .unwrap()
                .iter()
                .filter(|at| **at > killed_at + Duration::from_millis(100))
                .count()
                > 500
        },
    );
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    let times = ok_times.lock().unwrap().clone();
    let first_after = times
        .iter()
        .filter(|at| **at > killed_at)
        .min()
        .map(|at| at.duration_since(killed_at));
    let mut sorted = times.clone();
    sorted.sort();
    let longest_gap = sorted
        .windows(2)
        .filter(|pair| pair[1] > killed_at)
        .map(|pair| pair[1].duration_since(pair[0]))
        .max()
        .unwrap_or_default();
    eprintln!(
        "failover: {acked_before_kill} acked before the kill, first SEND_OK {first_after:?} after \
         it, longest gap between acks {longest_gap:?}"
    );
    assert!(
        longest_gap < Duration::from_secs(5),
        "sends stalled {longest_gap:?} after the master died"
    );

    // Every SEND_OK that went to broker-a is on its slave alone: promote it and read
    // both brokers.
    slave_a.admin().promote(BrokerRole::AsyncMaster).unwrap();
    for broker in [&slave_a, &master_b] {
        for record in drain(&broker.address, "replicated") {
            ledger.read(&id_of(&record.payload).expect("intact payload"));
        }
    }
    let report = ledger.report();
    eprintln!("ledger after kill -9 of a sync master and promotion of its slave: {report}");
    assert!(report.is_clean(), "{report}");
    // Every SEND_OK the producers saw is in the ledger's count (no throughput bar: a
    // loaded machine sends less, and that is not a failure).
    assert_eq!(report.ok, times.len(), "{report}");

    // The old master cannot come back as a master: the name server knows the newer one.
    let status = master_a.spawn_expect_failure();
    assert!(!status.success());
    assert!(
        master_a.log().contains("newer master"),
        "{}",
        master_a.log()
    );
    // As a slave of the promoted one it truncates to the common prefix and follows.
    master_a.reconfigure(&slave("broker-a", a, a_ha, a1_ha, ns));
    master_a.spawn();
    wait_until("the old master following", Duration::from_secs(30), || {
        stat_is(&master_a, "master_connected", 1) && caught_up(&slave_a, &master_a)
    });
    let followed = drain(&master_a.address, "replicated");
    let promoted = drain(&slave_a.address, "replicated");
    // (Before every drain had a group of its own, both drains here started at the end
    // the first drain of slave_a committed, and compared two empty lists.)
    assert!(!promoted.is_empty(), "broker-a's records were read above");
    assert!(history(&followed) == history(&promoted));
}

#[test]
fn a_group_reads_from_the_slave_while_its_master_is_down() {
    let [m_port, m_ha, s_port, s_ha] = free_ports();
    let mut primary = BrokerProcess::start(&master("async_master", "reads", m_port, m_ha, None));
    let follower = BrokerProcess::start(&slave("reads", s_port, s_ha, m_ha, None));
    let producer = Producer::connect(&primary.address, ProducerOptions::default()).unwrap();
    for index in 0..100 {
        send_status(&producer, &format!("r{index}")).unwrap();
    }
    wait_until("the slave caught up", Duration::from_secs(20), || {
        caught_up(&primary, &follower)
    });
    drop(producer);
    primary.kill9();

    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let options = keel_client::PushConsumerOptions {
        fallback_brokers: vec![follower.address.clone()],
        primary_retry: Duration::from_millis(500),
        heartbeat_interval: Duration::from_millis(100),
        long_poll: Duration::from_millis(300),
        ..keel_client::PushConsumerOptions::default()
    };
    let consumer = {
        let seen = seen.clone();
        keel_client::PushConsumer::start(
            &primary.address.replace("127.0.0.1:0", "127.0.0.1:1"),
            "readers",
            "replicated",
            keel_client::PushConsumerOptions { ..options.clone() },
            move |delivery: &keel_client::Delivery| {
                seen.lock()
                    .unwrap()
                    .push(id_of(&delivery.record.payload).unwrap());
                keel_client::ConsumeResult::Success
            },
        )
        .unwrap()
    };
    wait_until(
        "everything read from the slave",
        Duration::from_secs(20),
        || seen.lock().unwrap().len() == 100,
    );
    // The master returns: what is sent to it reaches the group (through the slave, which
    // follows it again, or from the master once the consumer is back on it).
    primary.spawn();
    let producer = Producer::connect(&primary.address, ProducerOptions::default()).unwrap();
    for index in 100..110 {
        send_status(&producer, &format!("r{index}")).unwrap();
    }
    wait_until(
        "the new messages from the master",
        Duration::from_secs(20),
        || {
            let seen = seen.lock().unwrap();
            (100..110).all(|index| seen.contains(&format!("r{index}")))
        },
    );
    assert!(consumer.errors().is_empty(), "{:?}", consumer.errors());
    consumer.shutdown().unwrap();
}

#[test]
fn a_promoted_slave_recognises_retries_of_messages_its_master_stored() {
    let [m_port, m_ha, s_port, s_ha] = free_ports();
    let mut primary = BrokerProcess::start(&master("sync_master", "dedup", m_port, m_ha, None));
    let follower = BrokerProcess::start(&slave("dedup", s_port, s_ha, m_ha, None));
    wait_until("the slave in sync", Duration::from_secs(20), || {
        stat_is(&primary, "slaves_in_sync", 1)
    });
    // An idempotent producer's message, numbered by hand so its retry can be replayed
    // exactly against another broker.
    let numbered = || {
        let mut message = Message::new("replicated", payload_for("numbered", 128));
        message.producer_id = 0xABCD_EF01;
        message.sequence = 7;
        message.sealed()
    };
    let send = |address: &str| {
        let connection = keel_client::Connection::connect(
            keel_client::resolve(address).unwrap(),
            &keel_client::ConnectionOptions::default(),
        )
        .unwrap();
        match connection
            .call(
                &keel_protocol::Request::Send(numbered()),
                Duration::from_secs(5),
            )
            .unwrap()
        {
            keel_protocol::Response::SendResult(result) => result,
            other => panic!("unexpected {other:?}"),
        }
    };
    let original = send(&primary.address);
    assert_eq!(original.status, SendStatus::SendOk, "on the slave too");
    // The reply is "lost", the master dies, the slave is promoted, and the producer's
    // retry reaches the new master.
    primary.kill9();
    follower.admin().promote(BrokerRole::AsyncMaster).unwrap();
    let retry = send(&follower.address);
    assert_eq!(retry.status, SendStatus::SendOk);
    assert_eq!(
        retry.log_offset, original.log_offset,
        "the original message id"
    );
    assert_eq!(follower.stat("sends_deduplicated"), 1);
    let ids = payload_ids(&drain(&follower.address, "replicated"));
    assert_eq!(ids, vec!["numbered".to_string()]);
}

#[test]
fn a_cut_or_corrupted_replication_link_heals_without_losing_or_mixing_records() {
    let [m_port, m_ha, s_port, s_ha] = free_ports();
    let primary = BrokerProcess::start(&master("sync_master", "links", m_port, m_ha, None));
    let proxy = crate::harness::FaultProxy::start(&format!("127.0.0.1:{m_ha}"));
    let proxy_port: u16 = proxy.address.rsplit(':').next().unwrap().parse().unwrap();
    let follower = BrokerProcess::start(&slave("links", s_port, s_ha, proxy_port, None));
    wait_until("the slave in sync", Duration::from_secs(20), || {
        stat_is(&primary, "slaves_in_sync", 1)
    });
    let options = ProducerOptions {
        send_timeout: Duration::from_secs(12),
        ..ProducerOptions::default()
    };
    let producer = Producer::connect(&primary.address, options).unwrap();
    let mut acked = Vec::new();
    let mut statuses: HashMap<String, usize> = HashMap::new();
    // Each round: a fault (a flipped bit in the stream, or every connection cut), 60
    // sends, then the link must heal (the slave back in sync) before the next.
    for round in 0..5 {
        match round {
            1 | 3 => proxy.flip_a_bit_after(300 + 97 * round),
            2 | 4 => proxy.cut_all(),
            _ => {}
        }
        for index in 0..60 {
            let id = format!("l{round}-{index}");
            let status = send_status(&producer, &id).unwrap();
            *statuses.entry(status.to_string()).or_default() += 1;
            if status == SendStatus::SendOk {
                acked.push(id);
            }
        }
        wait_until("the link healed", Duration::from_secs(30), || {
            stat_is(&primary, "slaves_in_sync", 1)
                && follower.try_stat("offset_flushed") == primary.try_stat("offset_flushed")
        });
    }
    eprintln!("sends over a damaged replication link: {statuses:?}");
    assert!(proxy.flipped(), "the bit flips happened");
    // Caught up: the master's whole log is confirmed (the slave acknowledged it), and
    // the slave serves all of it (its cap is what the master confirmed). Equal durable
    // offsets alone are not enough: both lag together until the slave's ACK arrives.
    wait_until("the slave caught up", Duration::from_secs(30), || {
        stat_is(&follower, "master_connected", 1) && caught_up(&primary, &follower)
    });
    assert!(
        follower.log().contains("CRC32C mismatch"),
        "the damage was caught: {}",
        follower.log()
    );
    let on_slave = drain(&follower.address, "replicated");
    let on_master = drain(&primary.address, "replicated");
    let (slave_history, master_history) = (history(&on_slave), history(&on_master));
    if slave_history != master_history {
        let differs = |a: &[(u32, u64, u64, Vec<u8>)], b: &[(u32, u64, u64, Vec<u8>)]| {
            a.iter()
                .filter(|entry| !b.contains(entry))
                .map(|(queue, queue_offset, log_offset, payload)| {
                    (*queue, *queue_offset, *log_offset, id_of(payload))
                })
                .collect::<Vec<_>>()
        };
        panic!(
            "same records, same places: slave {} records, master {}; only on the slave: \
             {:?}; only on the master: {:?}\nslave log:\n{}\nmaster log:\n{}",
            slave_history.len(),
            master_history.len(),
            differs(&slave_history, &master_history),
            differs(&master_history, &slave_history),
            follower.log(),
            primary.log()
        );
    }
    let ids: std::collections::HashSet<String> = payload_ids(&on_slave).into_iter().collect();
    assert!(
        acked.iter().all(|id| ids.contains(id)),
        "every SEND_OK is on the slave"
    );
}

#[test]
fn a_topic_deleted_on_a_sync_master_is_deleted_on_its_slave_and_stays_deleted_after_failover() {
    let [m_port, m_ha, s_port, s_ha] = free_ports();
    let mut primary = BrokerProcess::start(&master("sync_master", "del", m_port, m_ha, None));
    let mut follower = BrokerProcess::start(&slave("del", s_port, s_ha, m_ha, None));
    wait_until("the slave in sync", Duration::from_secs(20), || {
        stat_is(&primary, "slaves_in_sync", 1)
    });
    let producer = Producer::connect(&primary.address, ProducerOptions::default()).unwrap();
    for index in 0..20 {
        let topic = if index % 2 == 0 { "doomed" } else { "kept" };
        let sent = producer.send(Message::new(topic, payload_for(&format!("m{index}"), 64)));
        assert_eq!(sent.unwrap().status, SendStatus::SendOk);
    }
    let admin = primary.admin();
    admin.commit_offset("readers", "doomed", 0, 1).unwrap();
    let deleted = admin.delete_topic("doomed", true).unwrap();
    assert!(
        deleted.durable,
        "a sync master confirms it on the slave too"
    );
    assert_eq!(deleted.messages, 10);
    // The slave has the deletion record: the topic and its offsets are gone there.
    let on_slave = follower.admin();
    assert!(on_slave.list_topics(Some("doomed")).is_err());
    wait_until(
        "the slave drops the offsets",
        Duration::from_secs(10),
        || {
            on_slave
                .query_offset("readers", "doomed", 0)
                .unwrap()
                .is_none()
        },
    );
    // Made again on the master: the slave has the new topic's queues too.
    admin.create_topic("doomed", 3).unwrap();
    wait_until(
        "the new topic on the slave",
        Duration::from_secs(10),
        || {
            on_slave
                .list_topics(Some("doomed"))
                .is_ok_and(|topics| topics[0].queues.len() == 3)
        },
    );
    // Restarted, the slave still has it deleted; then its master dies and it takes over.
    follower.kill9();
    follower.spawn();
    wait_until("the slave in sync again", Duration::from_secs(20), || {
        stat_is(&primary, "slaves_in_sync", 1)
    });
    primary.kill9();
    follower.admin().promote(BrokerRole::AsyncMaster).unwrap();
    let promoted = follower.admin();
    // The topic made again, empty: none of the deleted messages came back.
    let doomed = &promoted.list_topics(Some("doomed")).unwrap()[0];
    assert_eq!(doomed.queues.len(), 3);
    assert!(
        doomed.queues.iter().all(|q| q.max_offset == 0),
        "{doomed:?}"
    );
    assert_eq!(drain(&follower.address, "kept").len(), 10);
    let producer = Producer::connect(&follower.address, ProducerOptions::default()).unwrap();
    let again = producer
        .send(Message::new("doomed", payload_for("fresh", 64)).with_queue(0))
        .unwrap();
    assert_eq!((again.status, again.queue_offset), (SendStatus::SendOk, 0));
}
