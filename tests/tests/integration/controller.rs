//! Automatic failover: three `keeld namesrv` processes that are also controller voters
//! (openraft), one broker group of three replicas, real processes on 127.0.0.1, kill -9
//! and SIGSTOP. The controller elects a new master from the SyncStateSet without any
//! command; nothing acknowledged is lost.

use crate::harness::{drain, drain_as, free_ports, signal, wait_until, BrokerProcess};
use keel_bench::chaos::Load;
use keel_client::{Message, Producer, ProducerOptions, SendStatus};
use keel_controller_api::api::ClusterView;
use keel_tests::{id_of, payload_for, Ledger};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::KEELD;
const GROUP: &str = "g";
const MASTER_TIMEOUT_MS: u64 = 2000;

/// One `keeld namesrv` with a controller voter; its state survives restarts.
pub(crate) struct Voter {
    pub(crate) id: u64,
    pub(crate) child: Option<Child>,
    pub(crate) namesrv: String,
    pub(crate) controller: String,
    pub(crate) peers: String,
    pub(crate) dir: std::path::PathBuf,
}

impl Voter {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("namesrv.log"))
            .expect("log");
        let listen = self.namesrv.clone();
        let mut child = Command::new(KEELD)
            .args([
                "namesrv",
                "--listen",
                &listen,
                "--broker-timeout-ms",
                "3000",
            ])
            .args(["--controller-id", &self.id.to_string()])
            .args(["--controller-peers", &self.peers])
            .arg("--controller-dir")
            .arg(self.dir.join("controller"))
            .args([
                "--controller-master-timeout-ms",
                &MASTER_TIMEOUT_MS.to_string(),
            ])
            .args(["--controller-raft-heartbeat-ms", "100"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn keeld namesrv");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let address = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(address) = line.strip_prefix("keeld namesrv listening on ") {
                        break address.trim().to_string();
                    }
                }
                _ => panic!("keeld namesrv {} did not start: {}", self.id, self.log()),
            }
        };
        self.namesrv = address;
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("namesrv.log")).unwrap_or_default()
    }
}

impl Drop for Voter {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub(crate) struct Controllers {
    pub(crate) voters: Vec<Voter>,
    pub(crate) _temp: tempfile::TempDir,
}

impl Controllers {
    pub(crate) fn start() -> Controllers {
        let temp = tempfile::tempdir().expect("temporary directory");
        // Name-server ports are picked with the controller ports: one bound to port 0 by
        // the first voter could take a port the third has been given.
        let [c1, c2, c3, n1, n2, n3] = free_ports();
        let (ports, namesrv_ports) = ([c1, c2, c3], [n1, n2, n3]);
        let peers = ports
            .iter()
            .enumerate()
            .map(|(index, port)| format!("{}=127.0.0.1:{port}", index + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut voters: Vec<Voter> = ports
            .iter()
            .enumerate()
            .map(|(index, port)| {
                let dir = temp.path().join(format!("voter-{}", index + 1));
                std::fs::create_dir_all(&dir).expect("voter dir");
                Voter {
                    id: index as u64 + 1,
                    child: None,
                    namesrv: format!("127.0.0.1:{}", namesrv_ports[index]),
                    controller: format!("127.0.0.1:{port}"),
                    peers: peers.clone(),
                    dir,
                }
            })
            .collect();
        for voter in &mut voters {
            voter.spawn();
        }
        let controllers = Controllers {
            voters,
            _temp: temp,
        };
        wait_until("a controller leader", Duration::from_secs(20), || {
            controllers.view().is_some_and(|view| view.leader.is_some())
        });
        controllers
    }

    pub(crate) fn addresses(&self) -> Vec<String> {
        self.voters.iter().map(|v| v.controller.clone()).collect()
    }

    /// The TOML list of controller addresses, and of name servers.
    pub(crate) fn toml(&self) -> (String, String) {
        let list = |items: Vec<String>| {
            items
                .iter()
                .map(|item| format!("\"{item}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        (
            list(self.addresses()),
            list(self.voters.iter().map(|v| v.namesrv.clone()).collect()),
        )
    }

    pub(crate) fn view(&self) -> Option<ClusterView> {
        keel_controller_api::client::describe(
            &self.addresses(),
            Duration::from_millis(500),
            &keel_net::Dial::default(),
        )
        .ok()
    }

    pub(crate) fn group(&self) -> Option<keel_controller_api::api::GroupStatus> {
        self.view()?
            .groups
            .into_iter()
            .find(|group| group.view.group == GROUP)
    }

    pub(crate) fn leader_index(&self) -> Option<usize> {
        let leader = self.view()?.leader?;
        self.voters.iter().position(|voter| voter.id == leader)
    }

    pub(crate) fn logs(&self) -> String {
        self.voters
            .iter()
            .map(|voter| format!("--- voter {}\n{}", voter.id, voter.log()))
            .collect()
    }
}

/// A replica of `GROUP` on fixed ports; 0 is configured `sync_master`, others slaves of
/// 0; `extra` is more configuration (the controller heartbeat among it).
pub(crate) fn replica_with(
    controllers: &Controllers,
    id: u32,
    ports: &[(u16, u16)],
    extra: &str,
) -> String {
    let (controller_list, namesrv_list) = controllers.toml();
    let (port, ha_port) = ports[id as usize];
    let role = if id == 0 {
        "role = \"sync_master\"\n".to_string()
    } else {
        format!(
            "role = \"slave\"\nbroker_id = {id}\nmaster_address = \"127.0.0.1:{}\"\n",
            ports[0].1
        )
    };
    format!(
        "listen = \"127.0.0.1:{port}\"\n{role}broker_name = \"{GROUP}\"\nha_port = {ha_port}\n\
         controller_addrs = [{controller_list}]\n{extra}\
         namesrv_addrs = [{namesrv_list}]\nregister_interval_ms = 300\nha_heartbeat_ms = 200\n\
         slave_timeout_ms = 2000\n"
    )
}

pub(crate) struct Group {
    pub(crate) replicas: Vec<BrokerProcess>,
}

impl Group {
    /// Three replicas, all in the SyncStateSet, with a topic.
    pub(crate) fn start(controllers: &Controllers) -> Group {
        Group::start_with(controllers, "controller_heartbeat_ms = 200\n")
    }

    /// `start`, with `extra` configuration on every replica.
    pub(crate) fn start_with(controllers: &Controllers, extra: &str) -> Group {
        let picked: [u16; 6] = free_ports();
        let ports: Vec<(u16, u16)> = picked.chunks(2).map(|p| (p[0], p[1])).collect();
        let replicas: Vec<BrokerProcess> = (0..3)
            .map(|id| BrokerProcess::start(&replica_with(controllers, id, &ports, extra)))
            .collect();
        replicas[0].admin().create_topic("replicated", 4).unwrap();
        wait_all_in_sync(controllers, |g| g.view.master == Some(0));
        Group { replicas }
    }
}

/// Waits until all three replicas are in the SyncStateSet and `also` holds of the group.
pub(crate) fn wait_all_in_sync(
    controllers: &Controllers,
    also: impl Fn(&keel_controller_api::api::GroupStatus) -> bool,
) {
    wait_until(
        "all three in the SyncStateSet",
        Duration::from_secs(30),
        || {
            controllers
                .group()
                .is_some_and(|g| g.view.sss.len() == 3 && also(&g))
        },
    );
}

/// Producers through the name servers on "replicated", with their ledger.
fn load(controllers: &Controllers, producers: usize) -> Load {
    let name_servers = controllers
        .voters
        .iter()
        .map(|v| v.namesrv.clone())
        .collect();
    Load::start(name_servers, "replicated", producers, 200)
}

/// Reads the topic from `broker` into the ledger and checks it: nothing acknowledged
/// lost, nothing duplicated or unexpected.
fn check_ledger(ledger: &Ledger, broker: &BrokerProcess, what: &str) {
    for record in drain(&broker.address, "replicated") {
        ledger.read(&id_of(&record.payload).expect("intact payload"));
    }
    let report = ledger.report();
    eprintln!("ledger after {what}: {report}");
    assert!(report.is_clean(), "{report}");
    assert!(report.ok > 100, "{report}");
}

/// Every record of the topic, read with a group of its own (a drain commits offsets).
fn history(broker: &BrokerProcess) -> Vec<(u32, u64, u64, Vec<u8>)> {
    static DRAINS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let group = format!("history-{}", DRAINS.fetch_add(1, Ordering::Relaxed));
    let mut history: Vec<_> = drain_as(&broker.address, "replicated", &group)
        .into_iter()
        .map(|r| (r.queue_id, r.queue_offset, r.log_offset, r.payload.to_vec()))
        .collect();
    history.sort();
    history
}

/// Waits until `slave` follows `master` and serves all of its log (which the master has
/// confirmed), then checks they hold the same records at the same places.
fn converge(slave: &BrokerProcess, master: &BrokerProcess) {
    wait_until(
        "the slave following and caught up",
        Duration::from_secs(30),
        || {
            let end = master.try_stat("offset_flushed");
            slave.try_stat("master_connected") == Some(1)
                && end.is_some()
                && master.try_stat("offset_durable") == end
                && slave.try_stat("offset_durable") == end
        },
    );
    assert_same_history(slave, master);
}

/// Both replicas hold the same records at the same places; on a difference, says which.
fn assert_same_history(a: &BrokerProcess, b: &BrokerProcess) {
    let (left, right) = (history(a), history(b));
    if left != right {
        let only = |x: &[(u32, u64, u64, Vec<u8>)], y: &[(u32, u64, u64, Vec<u8>)]| {
            x.iter()
                .filter(|entry| !y.contains(entry))
                .map(|(queue, offset, log_offset, payload)| {
                    (*queue, *offset, *log_offset, id_of(payload))
                })
                .take(10)
                .collect::<Vec<_>>()
        };
        panic!(
            "histories differ: {} vs {} records; only in the first: {:?}; only in the second: \
             {:?}\nfirst log:\n{}\nsecond log:\n{}",
            left.len(),
            right.len(),
            only(&left, &right),
            only(&right, &left),
            a.log(),
            b.log()
        );
    }
}

fn failover_under_load(kill_the_controller_leader: bool) {
    let mut controllers = Controllers::start();
    let mut group = Group::start(&controllers);
    let load = load(&controllers, 4);
    wait_until("load on the master", Duration::from_secs(20), || {
        group.replicas[0].try_stat("sends_ok").unwrap_or(0) > 200
    });
    let killed_at = Instant::now();
    group.replicas[0].kill9();
    if kill_the_controller_leader {
        let leader = controllers.leader_index().expect("a leader");
        controllers.voters[leader].kill9();
    }
    wait_until(
        "sends succeeding on a new master",
        Duration::from_secs(30),
        || load.oks_after(killed_at) > 300,
    );
    // Answers the old master sent just before it died may still be arriving: the new
    // master cannot answer within a fraction of the master timeout.
    let first = load
        .first_ok_after(killed_at + Duration::from_millis(MASTER_TIMEOUT_MS / 4))
        .map(|at| at.duration_since(killed_at))
        .expect("a SEND_OK after the kill");
    let ledger = load.stop();
    let view = controllers.group().expect("the group");
    eprintln!(
        "failover (controller leader killed too: {kill_the_controller_leader}): first SEND_OK \
         {first:?} after the kill; group now {:?}",
        view.view
    );
    assert!(
        first < Duration::from_secs(10),
        "first SEND_OK only {first:?} after the kill; controllers:\n{}",
        controllers.logs()
    );
    let new_master = view.view.master.expect("a master") as usize;
    assert_ne!(new_master, 0);
    assert!(view.view.master_epoch > 1);
    check_ledger(&ledger, &group.replicas[new_master], "a failover");
    let other = 3 - new_master;
    converge(&group.replicas[other], &group.replicas[new_master]);

    // Every voter killed and restarted: the decisions survive.
    let before = controllers.group().expect("the group");
    let term = controllers.view().expect("a view").term;
    for voter in &mut controllers.voters {
        voter.kill9();
    }
    for voter in &mut controllers.voters {
        if voter.child.is_none() {
            voter.spawn();
        }
    }
    wait_until(
        "the group known after the restart",
        Duration::from_secs(20),
        || controllers.group().is_some_and(|g| g.view.master.is_some()),
    );
    let after = controllers.group().expect("the group after a restart");
    assert_eq!(after.view.master, before.view.master);
    assert_eq!(after.view.master_epoch, before.view.master_epoch);
    assert!(after.view.sss_epoch >= before.view.sss_epoch);
    assert_eq!(after.elections, before.elections);
    assert!(controllers.view().expect("a view").term >= term);

    // The old master comes back as the new master's slave and converges.
    group.replicas[0].spawn();
    converge(&group.replicas[0], &group.replicas[new_master]);
    assert!(group.replicas[0]
        .log()
        .contains("the controller names another master"));
}

#[test]
fn a_killed_sync_master_is_replaced_from_its_sync_state_set_without_a_command() {
    failover_under_load(false);
}

#[test]
fn a_failover_completes_when_the_controller_leader_is_killed_during_it() {
    failover_under_load(true);
}

#[test]
fn a_paused_master_is_replaced_and_never_acknowledges_after_the_new_master_began() {
    let controllers = Controllers::start();
    let group = Group::start(&controllers);
    let load = load(&controllers, 2);
    // A producer bound to the first master, whatever the routes say: when each of its
    // SEND_OKs arrived.
    let old_address = group.replicas[0].address.clone();
    let stop_direct = Arc::new(AtomicBool::new(false));
    let direct_oks = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let direct = {
        let (stop, oks) = (stop_direct.clone(), direct_oks.clone());
        std::thread::spawn(move || {
            let options = ProducerOptions {
                send_timeout: Duration::from_secs(3),
                ..ProducerOptions::default()
            };
            let mut index = 0;
            while !stop.load(Ordering::Relaxed) {
                let Ok(producer) = Producer::connect(&old_address, options.clone()) else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                while !stop.load(Ordering::Relaxed) {
                    index += 1;
                    let message = Message::new("direct", payload_for(&format!("d{index}"), 50));
                    match producer.send(message) {
                        Ok(r) if r.status == SendStatus::SendOk => {
                            oks.lock().unwrap().push(Instant::now())
                        }
                        Ok(_) => {}
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(20));
                            break;
                        }
                    }
                }
            }
        })
    };
    wait_until("load on the master", Duration::from_secs(20), || {
        group.replicas[0].try_stat("sends_ok").unwrap_or(0) > 100
    });
    let old_pid = group.replicas[0].pid();
    signal(old_pid, libc::SIGSTOP);
    let stopped_at = Instant::now();
    wait_until("a new master elected", Duration::from_secs(20), || {
        controllers
            .group()
            .is_some_and(|g| g.view.master.is_some_and(|m| m != 0))
    });
    let new_master = controllers.group().unwrap().view.master.unwrap() as usize;
    let producer = Producer::connect(
        &group.replicas[new_master].address,
        ProducerOptions::default(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !producer
        .send(Message::new("direct", payload_for("first-on-new", 50)))
        .is_ok_and(|r| r.status == SendStatus::SendOk)
    {
        if Instant::now() > deadline {
            panic!(
                "no SEND_OK on the new master {new_master}; its log:\n{}\nothers:\n{}\n{}\ncontrollers:\n{}",
                group.replicas[new_master].log(),
                group.replicas[1].log(),
                group.replicas[2].log(),
                controllers.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let new_first_ok = Instant::now();
    signal(old_pid, libc::SIGCONT);
    // Resumed, its lease has lapsed and the controller names another master: it is
    // fenced, and what it had pending is never acknowledged.
    wait_until("the old master fenced", Duration::from_secs(10), || {
        group.replicas[0]
            .log()
            .contains("refusing sends from now on")
    });
    std::thread::sleep(Duration::from_secs(3));
    stop_direct.store(true, Ordering::Relaxed);
    direct.join().unwrap();
    let late: Vec<Duration> = direct_oks
        .lock()
        .unwrap()
        .iter()
        .filter(|at| **at > new_first_ok)
        .map(|at| at.duration_since(stopped_at))
        .collect();
    assert!(
        late.is_empty(),
        "the deposed master acknowledged sends after the new master's first SEND_OK: {late:?}"
    );
    let ledger = load.stop();
    for (index, replica) in group.replicas.iter().enumerate() {
        if replica.try_stat("sends_ok").is_none() {
            eprintln!(
                "replica {index} does not answer; its log:\n{}",
                replica.log()
            );
        }
    }
    check_ledger(&ledger, &group.replicas[new_master], "a paused master");
    // Without a restart, it becomes a slave of the new master and converges.
    converge(&group.replicas[0], &group.replicas[new_master]);
    assert!(
        group.replicas[0].log().contains("demoted: now a slave of"),
        "{}",
        group.replicas[0].log()
    );
    wait_until(
        "all three in the SyncStateSet again",
        Duration::from_secs(30),
        || controllers.group().is_some_and(|g| g.view.sss.len() == 3),
    );
    assert_same_history(&group.replicas[0], &group.replicas[new_master]);
    let refused = producer_to(&group.replicas[0]).send(Message::new("direct", "to a slave"));
    assert!(
        matches!(&refused, Err(keel_client::ClientError::Broker(e)) if e.code == keel_protocol::ErrorCode::NotMaster),
        "{refused:?}"
    );
}

/// SIGSTOPs replica 2 until the controller drops it from the SSS, and checks that the
/// master (0) still acknowledges, with replica 1 alone; returns the paused pid.
fn pause_slave_2_out_of_the_sss(controllers: &Controllers, group: &Group) -> u32 {
    let producer = producer_to(&group.replicas[0]);
    let send = |id: &str| {
        producer
            .send(Message::new("replicated", payload_for(id, 100)))
            .map(|r| r.status)
    };
    assert_eq!(send("everywhere").unwrap(), SendStatus::SendOk);
    let paused = group.replicas[2].pid();
    signal(paused, libc::SIGSTOP);
    wait_until(
        "broker 2 out of the SyncStateSet",
        Duration::from_secs(20),
        || {
            controllers
                .group()
                .is_some_and(|g| g.view.sss == vec![0, 1])
        },
    );
    wait_until(
        "a send acknowledged by 0 and 1",
        Duration::from_secs(10),
        || send("not-on-2").is_ok_and(|status| status == SendStatus::SendOk),
    );
    paused
}

fn producer_to(broker: &BrokerProcess) -> Producer {
    Producer::connect(&broker.address, ProducerOptions::default()).unwrap()
}

#[test]
fn a_slave_that_falls_behind_leaves_the_sync_state_set_and_is_not_elected() {
    let controllers = Controllers::start();
    let mut group = Group::start(&controllers);
    let paused = pause_slave_2_out_of_the_sss(&controllers, &group);
    // The master dies while that slave is paused: only broker 1 may be elected.
    group.replicas[0].kill9();
    wait_until("broker 1 elected", Duration::from_secs(20), || {
        controllers
            .group()
            .is_some_and(|g| g.view.master == Some(1))
    });
    signal(paused, libc::SIGCONT);
    wait_until(
        "the slave back in the SyncStateSet",
        Duration::from_secs(30),
        || {
            controllers
                .group()
                .is_some_and(|g| g.view.sss == vec![1, 2])
        },
    );
    let view = controllers.group().unwrap();
    assert_eq!(view.elections, 1, "{view:?}");
    assert!(controllers.logs().contains("elected broker 1 master"));
    converge(&group.replicas[2], &group.replicas[1]);
}

#[test]
fn a_group_whose_sync_state_set_is_gone_waits_for_an_operator_to_elect_unclean() {
    let controllers = Controllers::start();
    let mut group = Group::start(&controllers);
    let behind = pause_slave_2_out_of_the_sss(&controllers, &group);
    // The whole SyncStateSet dies; broker 2 returns, behind.
    group.replicas[0].kill9();
    group.replicas[1].kill9();
    signal(behind, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(MASTER_TIMEOUT_MS * 2));
    // Broker 1 may have been elected in the instant between the two kills (it had just
    // been heard from); broker 2, outside the SSS, never is.
    let view = controllers.group().unwrap();
    assert!(
        matches!(view.view.master, Some(0) | Some(1)),
        "never elected automatically: {view:?}"
    );
    assert!(controllers.logs().contains("no election"));
    let elections = view.elections;

    let keel = |extra: &[&str]| {
        let output = Command::new(crate::cli::KEEL)
            .args([
                "cluster",
                "--controllers",
                &controllers.addresses().join(","),
            ])
            .args(["--elect", "2", "--group", GROUP])
            .args(extra)
            .output()
            .expect("run keel");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (code, _, stderr) = keel(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--unclean"), "{stderr}");
    let (code, stdout, stderr) = keel(&["--unclean"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("UNCLEAN"), "{stdout}");
    wait_until(
        "broker 2 serving as master",
        Duration::from_secs(10),
        || group.replicas[2].log().contains("serving as sync_master"),
    );
    let view = controllers.group().unwrap();
    assert_eq!(view.view.master, Some(2));
    assert_eq!(view.elections, elections + 1);
}

#[test]
fn a_push_consumer_given_name_servers_reads_every_master_and_follows_a_failover() {
    let controllers = Controllers::start();
    let mut group = Group::start(&controllers);
    // A second group on the same name servers: a standalone master.
    let (_, namesrv_list) = controllers.toml();
    let other = BrokerProcess::start(&format!(
        "broker_name = \"other\"\nnamesrv_addrs = [{namesrv_list}]\nregister_interval_ms = 300\n"
    ));
    other.admin().create_topic("replicated", 4).unwrap();
    let name_servers: Vec<String> = controllers
        .voters
        .iter()
        .map(|v| v.namesrv.clone())
        .collect();
    let addresses: Vec<&str> = name_servers.iter().map(String::as_str).collect();
    let seen = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    let handled = seen.clone();
    let options = keel_client::DiscoveryOptions {
        route_refresh: Duration::from_millis(300),
        ..keel_client::DiscoveryOptions::default()
    };
    let consumer = keel_client::DiscoveringPushConsumer::start(
        &addresses,
        "readers",
        "replicated",
        options,
        move |delivery: &keel_client::Delivery| {
            if let Some(id) = id_of(&delivery.record.payload) {
                handled.lock().unwrap().insert(id);
            }
            Ok::<(), String>(())
        },
    )
    .unwrap();
    wait_until("both masters consumed", Duration::from_secs(20), || {
        consumer.masters().len() == 2
    });
    let producer_options = ProducerOptions {
        route_refresh: Duration::from_millis(300),
        ..ProducerOptions::default()
    };
    let producer = Producer::with_name_servers(&addresses, producer_options).unwrap();
    let mut acked = Vec::new();
    let send_round = |round: &str, acked: &mut Vec<String>| {
        for index in 0..200 {
            let id = format!("{round}-{index}");
            let result = producer.send(Message::new("replicated", payload_for(&id, 100)));
            if matches!(&result, Ok(r) if r.status == SendStatus::SendOk) {
                acked.push(id);
            }
        }
    };
    send_round("before", &mut acked);
    assert!(other.stat("sends_ok") > 0 && group.replicas[0].stat("sends_ok") > 0);
    let all_seen = |acked: &[String]| {
        let seen = seen.lock().unwrap();
        acked.iter().all(|id| seen.contains(id))
    };
    wait_until(
        "every acknowledged message handled",
        Duration::from_secs(30),
        || all_seen(&acked),
    );
    group.replicas[0].kill9();
    wait_until("a new master of g", Duration::from_secs(20), || {
        controllers
            .group()
            .is_some_and(|g| g.view.master.is_some_and(|m| m != 0))
    });
    let new_master = controllers.group().unwrap().view.master.unwrap() as usize;
    wait_until("acks on the new master", Duration::from_secs(20), || {
        producer_to(&group.replicas[new_master])
            .send(Message::new("other-topic", "probe"))
            .is_ok_and(|r| r.status == SendStatus::SendOk)
    });
    send_round("after", &mut acked);
    wait_until(
        "every acknowledged message handled after the failover",
        Duration::from_secs(30),
        || all_seen(&acked),
    );
    let masters = consumer.masters();
    assert!(
        masters.contains(&(
            GROUP.to_string(),
            group.replicas[new_master].address.clone()
        )),
        "{masters:?}"
    );
    consumer.shutdown().unwrap();
}
