//! A broker's side of the controller (`controller_addrs`): a heartbeat every
//! `controller_heartbeat_ms` with its epoch, log end and (from a master) its slaves in
//! sync, and the group as the controller decided it in reply:
//!
//! - elected (the controller names this broker master at a newer epoch): promote to
//!   `sync_master` at that epoch;
//! - deposed (another broker is master): refuse sends (fenced); restarted, the broker
//!   starts as that master's slave;
//! - a slave whose master changed follows the new one;
//! - a master waits for the acks of its committed SyncStateSet, plus the slaves it is
//!   asking to add, before answering `SEND_OK`.

use crate::cluster;
use crate::config::Config;
use crate::context::{Broker, Ha};
use keel_controller_api::api::{BrokerHeartbeat, GroupView};
use keel_protocol::BrokerRole;
use keel_replication::{HaMaster, HaSlave, WaitSet};
use keel_storage::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one heartbeat may take per controller address.
const CALL_TIMEOUT: Duration = Duration::from_millis(1000);

/// The heartbeat interval while a slave has lost its master (or a master was deposed):
/// an election is learnt within this much of being committed, by the new master and by
/// the slaves that must follow it, instead of within `controller_heartbeat_ms`.
const LOST_MASTER_HEARTBEAT: Duration = Duration::from_millis(100);

/// How long start-up waits for a controller to say who the master is.
const STARTUP_WAIT: Duration = Duration::from_secs(30);

/// What this broker tells the controller. `in_sync`: from a master, the slaves it asks
/// to have in the SyncStateSet (see `sss_candidates`).
pub struct Report<'a> {
    pub config: &'a Config,
    pub store: &'a Store,
    pub address: SocketAddr,
    pub ha_address: String,
    pub is_master: bool,
    pub claims_master: bool,
    /// The epoch to report: the log's newest, or the one a master is about to begin.
    pub epoch: u64,
    pub in_sync: Vec<u32>,
    pub sss_epoch: u64,
}

impl Report<'_> {
    pub fn heartbeat(self) -> BrokerHeartbeat {
        let stats = self.store.stats();
        BrokerHeartbeat {
            group: self.config.broker_name.clone(),
            broker_id: self.config.broker_id,
            address: self
                .config
                .advertise_address
                .clone()
                .unwrap_or_else(|| self.address.to_string()),
            ha_address: self.ha_address,
            is_master: self.is_master,
            claims_master: self.claims_master,
            epoch: self.epoch,
            log_end: stats.offset_appended,
            flushed: stats.offset_flushed,
            in_sync: self.in_sync,
            sss_epoch: self.sss_epoch,
        }
    }
}

/// The slaves a master may name for its SyncStateSet: first they join its wait set
/// (from then on nothing is acknowledged without them), then only those whose fsynced
/// offset reached the durable offset are named (nothing acknowledged before is missing
/// from them). `committed`: the SSS as last learnt, this broker excluded.
fn sss_candidates(ha: &HaMaster, committed: &[u32], min_replicas: usize) -> Vec<u32> {
    let candidates = ha.caught_up_slaves();
    let mut members: Vec<u32> = committed.iter().chain(&candidates).copied().collect();
    members.sort_unstable();
    members.dedup();
    ha.set_wait_set(Some(WaitSet {
        members,
        min_replicas,
    }));
    let still = ha.caught_up_slaves();
    candidates
        .into_iter()
        .filter(|id| still.contains(id))
        .collect()
}

/// Before replication starts: the master the controller knows for this group, if it
/// is another broker (this one then starts as its slave). Waits up to `STARTUP_WAIT`
/// for a controller leader; without an answer a master refuses to start (it could
/// fork the history of a group whose slave was elected meanwhile).
pub fn master_at_startup(
    config: &Config,
    report: &BrokerHeartbeat,
    access: &keel_net::Dial,
) -> Result<Option<String>, String> {
    let deadline = Instant::now() + STARTUP_WAIT;
    loop {
        let addresses = &config.controller_addrs;
        match keel_controller_api::client::heartbeat(addresses, report, CALL_TIMEOUT, access) {
            Ok(view) if view.master.is_some() && view.master != Some(config.broker_id) => {
                return Ok(view.master_ha_address);
            }
            Ok(_) => return Ok(None),
            Err(error) if Instant::now() >= deadline => {
                return Err(format!(
                    "no controller told who the master of {} is within {STARTUP_WAIT:?}: {error}",
                    config.broker_name
                ))
            }
            Err(error) => {
                log::warn!("waiting for a controller: {error}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

pub fn start(broker: Arc<Broker>, claims_master: bool) {
    if broker.config.controller_addrs.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("keel-controller-link".into())
        .spawn(move || {
            let interval = Duration::from_millis(broker.config.controller_heartbeat_ms);
            let access = broker.security.dial();
            let mut failing = false;
            while !broker.is_shutting_down() {
                let asked_at = Instant::now();
                let learnt = broker
                    .controller_view
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .as_ref()
                    .map(|(view, _)| view.clone());
                let me = broker.config.broker_id;
                let (in_sync, ha_address) = match broker.ha() {
                    Ha::Master(ha) => {
                        // Until it has learnt its committed SSS, a master names no slave
                        // and keeps its wait set (it acknowledges nothing yet).
                        let committed: Option<Vec<u32>> = learnt
                            .as_ref()
                            .filter(|view| view.master == Some(me))
                            .map(|view| view.sss.iter().copied().filter(|id| *id != me).collect());
                        let named = committed.map_or_else(Vec::new, |committed| {
                            sss_candidates(&ha, &committed, broker.config.min_insync_replicas)
                        });
                        (named, ha.local_addr().to_string())
                    }
                    _ => (
                        Vec::new(),
                        cluster::ha_address(&broker.config, broker.listen_address()).to_string(),
                    ),
                };
                let report = Report {
                    config: &broker.config,
                    store: &broker.store,
                    address: broker.listen_address(),
                    ha_address,
                    is_master: broker.role().is_master(),
                    claims_master,
                    epoch: broker.store.current_epoch(),
                    in_sync,
                    sss_epoch: learnt.map_or(0, |view| view.sss_epoch),
                }
                .heartbeat();
                match keel_controller_api::client::heartbeat(
                    &broker.config.controller_addrs,
                    &report,
                    CALL_TIMEOUT,
                    &access,
                ) {
                    Ok(view) => {
                        if failing {
                            log::info!("controller reachable again");
                        }
                        failing = false;
                        *broker
                            .controller_view
                            .lock()
                            .unwrap_or_else(|poison| poison.into_inner()) =
                            Some((view.clone(), Instant::now()));
                        if view.master == Some(broker.config.broker_id)
                            && broker.role().is_master()
                            && broker.fenced().is_none()
                        {
                            broker.renew_lease(asked_at);
                        }
                        let was_master = broker.role().is_master();
                        follow(&broker, &view, &report);
                        if broker.role().is_master() != was_master {
                            // Promoted (or demoted): the next heartbeat brings a new
                            // master its lease (no SEND_OK without one) and its wait set
                            // at once, not an interval later.
                            continue;
                        }
                    }
                    Err(error) => {
                        if !failing {
                            log::warn!("controller heartbeat failed: {error}");
                        }
                        failing = true;
                    }
                }
                std::thread::sleep(next_heartbeat(&broker, interval));
            }
        });
    if let Err(error) = spawned {
        log::error!("cannot start the controller link: {error}");
    }
}

/// When to heartbeat next: sooner while this broker waits for an election's outcome,
/// or (a new master, say) for its SyncStateSet to grow back to `min_insync_replicas`:
/// until it has, nothing is acknowledged, and a slave that caught up is named to the
/// controller only at a heartbeat.
fn next_heartbeat(broker: &Broker, interval: Duration) -> Duration {
    let waiting = match broker.ha() {
        Ha::Slave(slave) => !slave.status().connected,
        Ha::Master(_) if broker.fenced().is_none() => broker
            .controller_view
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .as_ref()
            .is_some_and(|(view, _)| view.sss.len() < broker.config.min_insync_replicas),
        _ => broker.fenced().is_some(),
    };
    if waiting {
        interval.min(LOST_MASTER_HEARTBEAT)
    } else {
        interval
    }
}

/// Acts on the group as decided.
fn follow(broker: &Arc<Broker>, view: &GroupView, report: &BrokerHeartbeat) {
    let me = broker.config.broker_id;
    let Some(master) = view.master else { return };
    match broker.ha() {
        Ha::Slave(_) if master == me => {
            broker.unfence();
            log::warn!(
                "the controller elected this broker master of {} at epoch {}",
                view.group,
                view.master_epoch
            );
            match cluster::promote_to_epoch(broker, BrokerRole::SyncMaster, view.master_epoch) {
                Ok((epoch, offset)) => {
                    log::warn!("serving as sync_master from epoch {epoch} at log offset {offset}")
                }
                Err(refusal) => log::error!("cannot become master: {}", refusal.message),
            }
        }
        Ha::Slave(slave) if master != me => {
            let Some(address) = view.master_ha_address.clone() else {
                return;
            };
            if slave.master() != address {
                log::warn!(
                    "the controller names broker {master} at {address} master of {} (epoch \
                     {}); following it instead of {}",
                    view.group,
                    view.master_epoch,
                    slave.master()
                );
                slave.stop();
                // What the old master confirmed was acknowledged: never cut below it.
                let confirmed = slave.status().confirmed;
                let options =
                    crate::cluster::slave_options(&broker.config, address, me, &broker.security);
                match HaSlave::start_confirmed(broker.store.clone(), options, confirmed) {
                    Ok(next) => broker.set_role(BrokerRole::Slave, Ha::Slave(next)),
                    Err(error) => log::error!("cannot follow the new master: {error}"),
                }
            }
        }
        Ha::Master(ha) if master == me => {
            // The committed SSS and every slave this master is asking to add: acks
            // count against both while a change is in flight.
            let mut members: Vec<u32> = view
                .sss
                .iter()
                .copied()
                .chain(report.in_sync.iter().copied())
                .filter(|id| *id != me)
                .collect();
            members.sort_unstable();
            members.dedup();
            ha.set_wait_set(Some(WaitSet {
                members,
                min_replicas: broker.config.min_insync_replicas,
            }));
        }
        Ha::Master(_) | Ha::None if master != me && broker.role().is_master() => {
            broker.fence(format!(
                "the controller elected broker {master} master of {} at epoch {} (this \
                 broker's epoch is {}); it becomes that master's slave",
                view.group,
                view.master_epoch,
                broker.store.current_epoch()
            ));
            if let Some(address) = view.master_ha_address.clone() {
                demote(broker, &address);
            }
        }
        _ => {}
    }
}

/// A deposed master (fenced: it refuses sends) becomes the slave of `master_ha` once the
/// sends it holds are answered (none is acknowledged: its lease has lapsed or its slaves
/// left; they end as `OUTCOME_UNKNOWN` at their deadline). It then serves only what was
/// confirmed, and the handshake with the new master cuts what that master never had.
fn demote(broker: &Arc<Broker>, master_ha: &str) {
    let config = &broker.config;
    let wait = Duration::from_millis(config.slave_timeout_ms.max(config.sync_flush_timeout_ms))
        + Duration::from_secs(1);
    let deadline = Instant::now() + wait;
    while broker
        .counters
        .pending_sends
        .load(std::sync::atomic::Ordering::Acquire)
        > 0
    {
        if Instant::now() >= deadline || broker.is_shutting_down() {
            log::warn!("sends still pending after {wait:?}: staying fenced, demotion retried");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ha::Master(ha) = broker.ha() {
        ha.stop();
    }
    let store = &broker.store;
    // What it acknowledged as master: the new master must have it, never cut below it.
    let acknowledged = store.offset_durable();
    store.set_durable_cap(acknowledged);
    if let Err(error) = store.follow_master() {
        log::error!("cannot record that this broker follows a master: {error}");
        return;
    }
    let options = crate::cluster::slave_options(
        config,
        master_ha.to_string(),
        config.broker_id,
        &broker.security,
    );
    match HaSlave::start_confirmed(store.clone(), options, acknowledged) {
        Ok(slave) => {
            broker.set_role(BrokerRole::Slave, Ha::Slave(slave));
            broker.unfence();
            log::warn!("demoted: now a slave of {master_ha}");
        }
        Err(error) => log::error!("cannot follow the new master {master_ha}: {error}"),
    }
}
