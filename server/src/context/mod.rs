//! What every part of keeld shares: the `Broker` context (configuration, the store,
//! counters, the replication side, security, group membership) and the state types it
//! owns. Nothing here imports the parts that use it (`broker`, `cluster`, `http`).

pub mod groups;
pub mod latency;
pub mod rates;
pub mod security;
pub mod timers;
pub mod transactions;

use crate::config::Config;
use keel_protocol::BrokerRole;
use keel_replication::{HaMaster, HaSlave, Notifier};
use keel_storage::Store;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// This broker's side of replication.
#[derive(Clone)]
pub enum Ha {
    /// A standalone master.
    None,
    Master(Arc<HaMaster>),
    Slave(Arc<HaSlave>),
}

#[derive(Default)]
pub struct Counters {
    pub connections: AtomicUsize,
    pub connections_total: AtomicU64,
    pub pending_sends: AtomicUsize,
    pub parked_pulls: AtomicUsize,
    pub sends_ok: AtomicU64,
    pub sends_flush_disk_timeout: AtomicU64,
    pub sends_flush_slave_timeout: AtomicU64,
    pub sends_slave_not_available: AtomicU64,
    pub sends_failed: AtomicU64,
    /// Sends answered OUTCOME_UNKNOWN (handed to the disk, then storage failed).
    pub sends_outcome_unknown: AtomicU64,
    pub sends_oneway: AtomicU64,
    /// Idempotent producers' retries of messages already stored (nothing stored again).
    pub sends_deduplicated: AtomicU64,
    pub pulls: AtomicU64,
    pub messages_pulled: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub logins_ok: AtomicU64,
    pub logins_failed: AtomicU64,
    /// Requests refused because the connection had not logged in.
    pub unauthenticated_requests: AtomicU64,
    /// Requests refused PERMISSION_DENIED.
    pub permission_denied: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
}

pub struct Broker {
    pub config: Config,
    pub store: Arc<Store>,
    pub counters: Counters,
    pub started: Instant,
    shutting_down: AtomicBool,
    role: AtomicU8,
    ha: RwLock<Ha>,
    /// Bumped to make the registration thread register now (after a promotion).
    pub registration: Notifier,
    listen: std::sync::OnceLock<std::net::SocketAddr>,
    /// Set when a name server says a newer master replaced this one: sends are refused.
    fenced: std::sync::Mutex<Option<String>>,
    /// Consumer group membership and queue ownership.
    pub groups: groups::Groups,
    /// (group, topic, queue) -> the next queue offset a PULL of that group was served:
    /// what was delivered (for message lookups; in memory only).
    pub delivered: std::sync::Mutex<std::collections::HashMap<(String, String, u32), u64>>,
    /// With a controller: until when (ms since `started`) the controller's last answer
    /// lets this master acknowledge sends; `u64::MAX` without a controller.
    lease_until_ms: AtomicU64,
    /// With a controller: its last answer, and when it came.
    pub controller_view: std::sync::Mutex<Option<(keel_controller_api::api::GroupView, Instant)>>,
    /// TLS, logins and permissions.
    pub security: security::Security,
    /// From a send's arrival to its answer, by outcome (Prometheus).
    pub send_latency: latency::SendLatency,
    /// The client port's open connections, in all (`max_connections`) and per address
    /// (`max_connections_per_ip`).
    pub census: keel_net::Census,
    /// Each topic's totals over the last minute (`rates.rs`).
    pub rates: rates::Rates,
    /// The timer's lateness and counts (`timers.rs`).
    pub timers: timers::TimerStats,
    /// Open transactions (`broker/transactions.rs`).
    pub transactions: transactions::Transactions,
}

impl Broker {
    pub fn new(
        config: Config,
        store: Arc<Store>,
        role: BrokerRole,
        ha: Ha,
        security: security::Security,
    ) -> Broker {
        Broker {
            security,
            send_latency: latency::SendLatency::default(),
            census: keel_net::Census::new(keel_net::Caps {
                max_connections: config.max_connections,
                max_per_address: config.security.max_connections_per_ip,
            }),
            rates: rates::Rates::default(),
            timers: timers::TimerStats::default(),
            transactions: Default::default(),
            config,
            store,
            counters: Counters::default(),
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            role: AtomicU8::new(role as u8),
            ha: RwLock::new(ha),
            registration: Notifier::default(),
            listen: std::sync::OnceLock::new(),
            fenced: std::sync::Mutex::new(None),
            groups: groups::Groups::default(),
            delivered: std::sync::Mutex::new(std::collections::HashMap::new()),
            lease_until_ms: AtomicU64::new(u64::MAX),
            controller_view: std::sync::Mutex::new(None),
        }
    }

    /// Whether this master may acknowledge sends now: without a controller always; with
    /// one, only within `controller_lease_ms` of a heartbeat the controller answered
    /// naming it master (a master cut off from the controllers, or paused, may have
    /// been replaced).
    pub fn lease_valid(&self) -> bool {
        let until = self.lease_until_ms.load(Ordering::Acquire);
        until == u64::MAX || (self.started.elapsed().as_millis() as u64) < until
    }

    /// Extends the lease to `controller_lease_ms` after `asked_at`, when the controller
    /// named this broker master in its answer to a heartbeat sent then; wakes the loops
    /// if the lease had lapsed (sends waiting for it can be answered).
    pub fn renew_lease(&self, asked_at: Instant) {
        let from = asked_at.saturating_duration_since(self.started).as_millis() as u64;
        let until = from.saturating_add(self.config.controller_lease_ms);
        let lapsed = !self.lease_valid();
        let previous = self.lease_until_ms.load(Ordering::Acquire);
        if previous == u64::MAX || until > previous {
            self.lease_until_ms.store(until, Ordering::Release);
        }
        if lapsed {
            self.store.notify_listeners();
        }
    }

    /// Starts a controlled broker with no lease: nothing is acknowledged before the
    /// controller confirms it is master.
    pub fn require_lease(&self) {
        self.lease_until_ms.store(0, Ordering::Release);
    }

    /// Why this master must not take sends (a newer master replaced it), if it must not.
    pub fn fenced(&self) -> Option<String> {
        self.fenced
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    pub fn fence(&self, reason: String) {
        let mut fenced = self
            .fenced
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if fenced.is_none() {
            log::error!("refusing sends from now on: {reason}");
        }
        *fenced = Some(reason);
    }

    /// Lifts the fence: this broker became a slave (which refuses sends anyway) and may
    /// be elected master again later.
    pub fn unfence(&self) {
        *self
            .fenced
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = None;
    }

    /// The bound client address (set once at start-up).
    pub fn set_listen_address(&self, address: std::net::SocketAddr) {
        let _ = self.listen.set(address);
    }

    pub fn listen_address(&self) -> std::net::SocketAddr {
        self.listen.get().copied().unwrap_or(self.config.listen)
    }

    pub fn role(&self) -> BrokerRole {
        BrokerRole::from_u8(self.role.load(Ordering::Acquire)).unwrap_or(BrokerRole::Master)
    }

    pub fn ha(&self) -> Ha {
        self.ha
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Switches role and replication side together (a promotion).
    pub fn set_role(&self, role: BrokerRole, ha: Ha) {
        *self.ha.write().unwrap_or_else(|poison| poison.into_inner()) = ha;
        if role != BrokerRole::Slave {
            // Members of its groups report to it from now on.
            self.groups.serve_anew();
        }
        // Open transactions are rebuilt from the log for the new role.
        self.transactions.invalidate();
        self.role.store(role as u8, Ordering::Release);
        self.store.notify_listeners();
        self.registration.notify();
    }

    /// Whether a master has a slave connected at all.
    pub fn slave_connected(&self) -> bool {
        match &*self.ha.read().unwrap_or_else(|poison| poison.into_inner()) {
            Ha::Master(master) => master.connected(),
            _ => false,
        }
    }

    /// Whether a sync master has a slave in sync right now.
    pub fn slave_in_sync(&self) -> bool {
        match &*self.ha.read().unwrap_or_else(|poison| poison.into_inner()) {
            Ha::Master(master) => master.in_sync(),
            _ => false,
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// The offset up to which sends are acked and pulls are served.
    pub fn offset_durable(&self) -> u64 {
        self.store.offset_durable()
    }

    /// Every committed consumer offset with its queue's end: (group, topic, queue,
    /// committed, end). The lag is the difference.
    pub fn consumer_positions(&self) -> Vec<(String, String, u32, u64, u64)> {
        let offsets = self.store.queue_offsets(None);
        self.store
            .consumer_offsets()
            .into_iter()
            // A group's settings are kept with the offsets; they are not a position.
            .filter(|(_, topic, _, _)| topic != keel_storage::SETTINGS_TOPIC)
            .map(|(group, topic, queue, committed)| {
                let end = offsets
                    .iter()
                    .find(|(name, _)| *name == topic)
                    .and_then(|(_, queues)| queues.get(queue as usize))
                    .map_or(0, |(_, max)| *max);
                (group, topic, queue, committed, end)
            })
            .collect()
    }

    /// How long the oldest message a group has not committed has been stored, in
    /// seconds (0 when it committed everything). Reads the log: for the metrics and
    /// console thread, never for an event loop.
    pub fn lag_seconds(&self, topic: &str, queue: u32, committed: u64, end: u64) -> f64 {
        if committed >= end {
            return 0.0;
        }
        let first = self
            .store
            .queue_offsets(Some(topic))
            .first()
            .and_then(|(_, queues)| queues.get(queue as usize))
            .map_or(committed, |(min, _)| committed.max(*min));
        match self.store.queue_store_time(topic, queue, first) {
            Ok(Some(stored_ms)) => {
                keel_protocol::now_ms().saturating_sub(stored_ms) as f64 / 1000.0
            }
            _ => 0.0,
        }
    }

    /// LIST_GROUPS: every (group, topic) with live members or committed offsets (only
    /// `group`'s when it is not empty), with each committed queue's offset and end.
    pub fn group_list(&self, group: &str) -> Vec<keel_protocol::GroupInfo> {
        use std::collections::BTreeMap;
        let mut groups: BTreeMap<(String, String), keel_protocol::GroupInfo> = BTreeMap::new();
        fn entry(
            groups: &mut BTreeMap<(String, String), keel_protocol::GroupInfo>,
            group: String,
            topic: String,
        ) -> &mut keel_protocol::GroupInfo {
            groups
                .entry((group.clone(), topic.clone()))
                .or_insert_with(|| keel_protocol::GroupInfo {
                    group,
                    topic,
                    ..Default::default()
                })
        }
        for (name, topic, queue, committed, end) in self.consumer_positions() {
            entry(&mut groups, name, topic)
                .queues
                .push((queue, committed, end));
        }
        for (name, topic, members, _) in self.groups.describe() {
            entry(&mut groups, name, topic).members = u32::try_from(members).unwrap_or(u32::MAX);
        }
        groups
            .into_values()
            .filter(|info| group.is_empty() || info.group == group)
            .collect()
    }

    /// Name/value pairs for the STATS frame and `keel stats`.
    pub fn stats(&self) -> Vec<(String, u64)> {
        let store = self.store.stats();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.counters;
        let average_batch = store.records_flushed.checked_div(store.fsyncs).unwrap_or(0);
        let mut stats = self.replication_stats();
        let (cpu_user_us, cpu_system_us) = process_cpu_us();
        stats.extend(vec![
            (
                "uptime_ms".into(),
                self.started.elapsed().as_millis() as u64,
            ),
            ("cpu_user_us".into(), cpu_user_us),
            ("cpu_system_us".into(), cpu_system_us),
            (
                "flush_sync".into(),
                u64::from(self.config.flush == crate::config::Flush::Sync),
            ),
            ("offset_appended".into(), store.offset_appended),
            ("offset_written".into(), store.offset_written),
            ("offset_flushed".into(), store.offset_flushed),
            ("offset_durable".into(), self.offset_durable()),
            ("records_appended".into(), store.records_appended),
            ("records_flushed".into(), store.records_flushed),
            ("fsyncs".into(), store.fsyncs),
            ("records_per_fsync".into(), average_batch),
            ("segments".into(), store.segments),
            ("log_start".into(), store.log_start),
            ("topics".into(), store.topics),
            ("storage_poisoned".into(), u64::from(store.poisoned)),
            ("disk_full".into(), u64::from(store.disk_full)),
            (
                "connections".into(),
                counters.connections.load(Ordering::Relaxed) as u64,
            ),
            (
                "connections_total".into(),
                load(&counters.connections_total),
            ),
            (
                "pending_acks".into(),
                counters.pending_sends.load(Ordering::Relaxed) as u64,
            ),
            (
                "parked_pulls".into(),
                counters.parked_pulls.load(Ordering::Relaxed) as u64,
            ),
            ("sends_ok".into(), load(&counters.sends_ok)),
            (
                "sends_flush_disk_timeout".into(),
                load(&counters.sends_flush_disk_timeout),
            ),
            (
                "sends_flush_slave_timeout".into(),
                load(&counters.sends_flush_slave_timeout),
            ),
            (
                "sends_slave_not_available".into(),
                load(&counters.sends_slave_not_available),
            ),
            ("sends_failed".into(), load(&counters.sends_failed)),
            (
                "sends_outcome_unknown".into(),
                load(&counters.sends_outcome_unknown),
            ),
            ("sends_oneway".into(), load(&counters.sends_oneway)),
            (
                "sends_deduplicated".into(),
                load(&counters.sends_deduplicated),
            ),
            ("producers".into(), store.producers),
            (
                "consumer_groups".into(),
                self.groups
                    .describe()
                    .iter()
                    .filter(|(_, _, members, _)| *members > 0)
                    .count() as u64,
            ),
            ("pulls".into(), load(&counters.pulls)),
            ("messages_pulled".into(), load(&counters.messages_pulled)),
            ("protocol_errors".into(), load(&counters.protocol_errors)),
            ("logins_ok".into(), load(&counters.logins_ok)),
            ("logins_failed".into(), load(&counters.logins_failed)),
            (
                "unauthenticated_requests".into(),
                load(&counters.unauthenticated_requests),
            ),
            (
                "permission_denied".into(),
                load(&counters.permission_denied),
            ),
            (
                "tls_handshake_failures".into(),
                load(&counters.tls_handshake_failures),
            ),
            ("security_version".into(), self.security.authority.version()),
        ]);
        stats
    }

    /// Role (0 master, 1 async_master, 2 sync_master, 3 slave), epoch, and how far the
    /// slaves (on a master) or this slave (behind its master) are.
    fn replication_stats(&self) -> Vec<(String, u64)> {
        let written = self.store.offset_written();
        let mut stats = vec![
            ("role".to_string(), self.role() as u64),
            ("epoch".to_string(), self.store.current_epoch()),
        ];
        if !self.config.controller_addrs.is_empty() {
            let view = self
                .controller_view
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone();
            let heard_ms = view
                .as_ref()
                .map_or(u64::MAX, |(_, at)| at.elapsed().as_millis() as u64);
            let view = view.map(|(view, _)| view).unwrap_or_default();
            stats.push(("controller_last_answer_ms".into(), heard_ms));
            stats.push((
                "controller_master_id".into(),
                view.master.map_or(u64::MAX, u64::from),
            ));
            stats.push(("controller_master_epoch".into(), view.master_epoch));
            stats.push(("controller_sss_size".into(), view.sss.len() as u64));
            stats.push(("controller_sss_epoch".into(), view.sss_epoch));
            stats.push(("controller_elections".into(), view.elections));
            stats.push((
                "controller_lease_valid".into(),
                u64::from(self.lease_valid()),
            ));
        }
        match self.ha() {
            Ha::None => {}
            Ha::Master(master) => {
                let slaves = master.slaves();
                let in_sync = slaves.iter().filter(|slave| slave.in_sync).count();
                let best = slaves.iter().map(|slave| slave.acked).max().unwrap_or(0);
                stats.push(("slaves_connected".into(), slaves.len() as u64));
                stats.push(("slaves_in_sync".into(), in_sync as u64));
                stats.push(("slave_acked_offset".into(), best));
                stats.push(("slave_lag_bytes".into(), written.saturating_sub(best)));
            }
            Ha::Slave(slave) => {
                let status = slave.status();
                stats.push(("master_connected".into(), u64::from(status.connected)));
                stats.push(("master_epoch".into(), status.master_epoch));
                stats.push(("master_confirmed_offset".into(), status.confirmed));
                stats.push((
                    "lag_behind_master_bytes".into(),
                    status.master_end.saturating_sub(written),
                ));
            }
        }
        stats
    }
}

/// CPU time this process used so far, every thread, in microseconds: (user, system).
pub fn process_cpu_us() -> (u64, u64) {
    // SAFETY: getrusage writes only into the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return (0, 0);
        }
        usage
    };
    let micros =
        |time: libc::timeval| (time.tv_sec.max(0) as u64) * 1_000_000 + time.tv_usec.max(0) as u64;
    (micros(usage.ru_utime), micros(usage.ru_stime))
}

impl Broker {
    /// TOPIC_STATS: each queue's range and size, and what the topic took in over the
    /// last minute (`topic`, or every topic when empty). Memory only.
    pub fn topic_stats(&self, topic: &str) -> Vec<keel_protocol::TopicStats> {
        self.rates.topic_stats(&self.store, topic)
    }

    /// Messages a second each (group, topic) committed over the broker's last minute.
    pub fn commit_rates(&self) -> std::collections::HashMap<(String, String), f64> {
        self.rates.commit_rates(&self.store)
    }

    /// Starts the thread that notes the totals rates are computed from, every second
    /// until the broker shuts down.
    pub fn start_rates(self: &Arc<Self>) {
        let broker = self.clone();
        let spawned = std::thread::Builder::new()
            .name("keel-rates".into())
            .spawn(move || {
                while !broker.is_shutting_down() {
                    rates::note_now(&broker.rates, &broker.store);
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            });
        if let Err(error) = spawned {
            log::error!("cannot start the rates thread (TOPIC_STATS rates stay 0): {error}");
        }
    }
}
