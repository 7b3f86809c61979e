//! A broker in a cluster: its replication side at start-up, promotion of a slave, the
//! promotion record in the data directory, and registration with name servers; the
//! link to the controllers (`controller_link`).

pub(crate) mod controller_link;
mod promotion_record;

use promotion_record::PromotionRecord;

use crate::config::Config;
use crate::context::security::Security;
use crate::context::{Broker, Ha};
use crate::error::{BrokerError, Refusal};
use keel_net::call;
use keel_protocol::{BrokerRegistration, BrokerRole, ErrorCode, Request, Response};
use keel_replication::{HaMaster, HaSlave, MasterOptions, SlaveOptions, WaitSet};
use keel_storage::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The HA listener's address: the client listen IP, `ha_port` or the client port + 1.
pub fn ha_address(config: &Config, listen: SocketAddr) -> SocketAddr {
    let port = match config.ha_port {
        0 => listen.port().wrapping_add(1),
        port => port,
    };
    SocketAddr::new(listen.ip(), port)
}

/// The role to start in. A slave that was promoted (`keel admin promote`) stays a
/// master across restarts while its config still names the master it replaced; a
/// config that names another master (or a master role) drops the promotion record.
pub fn effective_role(config: &Config) -> BrokerRole {
    let configured = config.role.broker_role();
    let path = promotion_record::path(&config.data_dir);
    let disk = keel_disk::RealDisk;
    let record = match PromotionRecord::read(&disk, &path) {
        Ok(Some(record)) => record,
        Ok(None) => return configured,
        Err(error) => {
            log::warn!("ignoring the promotion record: {error}");
            return configured;
        }
    };
    let same_master = config.master_address.as_deref() == Some(record.promoted_from.as_str());
    if configured == BrokerRole::Slave && same_master {
        let role = record.role;
        log::warn!(
            "this broker was promoted to {role} in place of {}; it starts as {role} although \
             the config says role = \"slave\" (update the config, or delete {} while keeld \
             is stopped to make it a slave again)",
            record.promoted_from,
            path.display()
        );
        return role;
    }
    log::warn!(
        "dropping the promotion record {} (the config now says role = {configured:?}, \
         master_address = {:?})",
        path.display(),
        config.master_address
    );
    if let Err(error) = PromotionRecord::remove(&disk, &path) {
        log::warn!("cannot remove {}: {error}", path.display());
    }
    configured
}

fn write_role_file(config: &Config, role: BrokerRole, epoch: u64) -> std::io::Result<()> {
    let record = PromotionRecord {
        role,
        promoted_from: config.master_address.clone().unwrap_or_default(),
        epoch,
    };
    record.write(
        &keel_disk::RealDisk,
        &promotion_record::path(&config.data_dir),
    )
}

/// With a controller, a master acknowledges nothing until it has learnt its
/// SyncStateSet (the controller link sets the members).
fn controlled_wait_set(config: &Config) -> Option<WaitSet> {
    (!config.controller_addrs.is_empty()).then(|| WaitSet {
        members: Vec::new(),
        min_replicas: config.min_insync_replicas,
    })
}

fn master_options(config: &Config, role: BrokerRole, security: &Security) -> MasterOptions {
    MasterOptions {
        sync: role == BrokerRole::SyncMaster,
        fallbehind_max_bytes: config.slave_fallbehind_max_bytes,
        heartbeat: Duration::from_millis(config.ha_heartbeat_ms),
        security: security.ha(),
    }
}

/// How this broker follows the master at `master` (HA address).
pub(crate) fn slave_options(
    config: &Config,
    master: String,
    broker_id: u32,
    security: &Security,
) -> SlaveOptions {
    SlaveOptions {
        master,
        broker_name: config.broker_name.clone(),
        broker_id,
        heartbeat: Duration::from_millis(config.ha_heartbeat_ms),
        security: security.ha(),
    }
}

/// Starts this broker's side of replication for `role`, before any client is served.
///
/// Every start as a master begins a new epoch, so a slave that saw more of the previous
/// run than this master kept is cut back where that run ended, never mixed.
pub fn start_replication(
    config: &Config,
    store: &Arc<Store>,
    role: BrokerRole,
    ha_address: SocketAddr,
    security: &Security,
) -> Result<Ha, BrokerError> {
    let recovered_end = store.stats().offset_appended;
    match role {
        BrokerRole::Slave => {
            // Serve what is already here; what arrives is served once the master
            // confirms it. What arrives is the master's records, not this broker's own.
            store.set_durable_cap(recovered_end);
            store.follow_master().map_err(BrokerError::store(
                "cannot record that this broker follows a master",
            ))?;
            let master = config.master_address.clone().unwrap_or_default();
            let options = slave_options(config, master, config.broker_id, security);
            let slave = HaSlave::start(store.clone(), options)
                .map_err(BrokerError::setup("cannot start replication"))?;
            Ok(Ha::Slave(slave))
        }
        master_role => {
            refuse_if_superseded(config, store, security)?;
            let epoch = store
                .begin_epoch()
                .map_err(BrokerError::store("cannot record the new epoch"))?;
            log::info!(
                "master epoch {} begins at log offset {}",
                epoch.epoch,
                epoch.start
            );
            if master_role == BrokerRole::Master {
                return Ok(Ha::None);
            }
            if master_role == BrokerRole::SyncMaster {
                // What this master stored before the restart is served; what it stores
                // from now on is served once a slave has it. Under a controller nothing
                // is taken as durable before its SyncStateSet has it: records it never
                // replicated must not be served, nor acknowledged to a retry.
                store.set_durable_cap(match config.controller_addrs.is_empty() {
                    true => recovered_end,
                    false => 0,
                });
            }
            let master = HaMaster::start(
                store.clone(),
                ha_address,
                master_options(config, role, security),
            )
            .map_err(BrokerError::setup(format!(
                "cannot listen for slaves on {ha_address}"
            )))?;
            master.set_wait_set(controlled_wait_set(config));
            log::info!("HA: slaves connect to {}", master.local_addr());
            Ok(Ha::Master(master))
        }
    }
}

/// A master must not start when the name servers know a newer master of its broker
/// name (its slave was promoted while it was down): it would fork the history.
fn refuse_if_superseded(
    config: &Config,
    store: &Store,
    security: &Security,
) -> Result<(), BrokerError> {
    let outbound = security.dial();
    let ours = store.current_epoch();
    for namesrv in &config.namesrv_addrs {
        let routes = match call(
            namesrv,
            &Request::GetRoutes(String::new()),
            Duration::from_secs(3),
            &outbound,
        ) {
            Ok(Response::Routes(routes)) => routes,
            Ok(other) => {
                log::warn!("name server {namesrv}: unexpected {}", other.kind().name());
                continue;
            }
            Err(error) => {
                log::warn!(
                    "cannot ask name server {namesrv} whether a newer master exists: {error}"
                );
                continue;
            }
        };
        if let Some(newer) = routes.iter().find(|route| {
            route.broker_name == config.broker_name && route.role.is_master() && route.epoch > ours
        }) {
            return Err(BrokerError::Superseded(format!(
                "{} already has a newer master: {} at epoch {} (this broker's epoch is {ours}); \
                 a slave was promoted while this broker was down. Start this broker as its \
                 slave: role = \"slave\", broker_id = 1, master_address = \"{}\"",
                config.broker_name, newer.address, newer.epoch, newer.ha_address
            )));
        }
        return Ok(());
    }
    Ok(())
}

/// How long a promotion waits for a master that just died to be noticed (its
/// connection to end) before refusing because the master still answers.
const MASTER_GONE_WAIT: Duration = Duration::from_secs(1);

/// PROMOTE: stops following the master, waits until everything received is fsynced,
/// begins a new epoch, records the promotion, and starts serving as `role`. Refused
/// while the master is still connected, unless `force`.
pub fn promote(broker: &Broker, role: BrokerRole, force: bool) -> Result<(u64, u64), Refusal> {
    promote_at(broker, role, force, 0)
}

/// A promotion decided by the controller: the new epoch is numbered at least
/// `epoch` (the one the controller assigned), and the old master is not waited for.
pub fn promote_to_epoch(
    broker: &Broker,
    role: BrokerRole,
    epoch: u64,
) -> Result<(u64, u64), Refusal> {
    promote_at(broker, role, true, epoch)
}

fn promote_at(
    broker: &Broker,
    role: BrokerRole,
    force: bool,
    minimum_epoch: u64,
) -> Result<(u64, u64), Refusal> {
    let invalid = |detail: String| Err(Refusal::invalid(detail));
    if role == BrokerRole::Slave {
        return invalid("promote to async_master, sync_master or master, not slave".into());
    }
    let Ha::Slave(slave) = broker.ha() else {
        return invalid(format!(
            "this broker is already a master ({})",
            broker.role()
        ));
    };
    let deadline = Instant::now() + MASTER_GONE_WAIT;
    while !force && slave.status().connected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !force && slave.status().connected {
        return invalid(format!(
            "the master at {} is alive: this slave is connected to it and replicating. \
             Promoting now makes two masters of {}: the old one is fenced (refuses sends) \
             only once a name server sees the new epoch, and whatever it stores meanwhile \
             that this slave never received is cut when it rejoins as a slave. Stop the \
             master first, or promote with --force to accept that",
            slave.master(),
            broker.config.broker_name
        ));
    }
    if force && minimum_epoch == 0 {
        log::warn!("promotion forced while the master may still be alive");
    }
    let store = &broker.store;
    log::warn!("promoting this slave of {} to {role}", slave.master());
    slave.stop();
    // What the old master acknowledged; past it, this log may hold records the rest of
    // the SyncStateSet lacks.
    let confirmed = slave.status().confirmed;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = store.stats();
        if stats.offset_flushed >= stats.offset_appended {
            break;
        }
        if store.is_poisoned() || Instant::now() > deadline {
            return Err(Refusal::new(
                ErrorCode::StorageFailed,
                "the received records could not be fsynced; not promoted",
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let internal = Refusal::internal;
    let epoch = store
        .begin_epoch_at_least(minimum_epoch)
        .map_err(|e| internal(format!("cannot record the new epoch: {e}")))?;
    write_role_file(&broker.config, role, epoch.epoch)
        .map_err(|e| internal(format!("cannot record the promotion: {e}")))?;
    let log_end = epoch.start;
    store.set_durable_cap(match role {
        // Elected by the controller: the rest is durable once the SSS has it.
        BrokerRole::SyncMaster if minimum_epoch > 0 => confirmed.min(log_end),
        BrokerRole::SyncMaster => log_end,
        _ => u64::MAX,
    });
    let ha = if role == BrokerRole::Master {
        Ha::None
    } else {
        let address = ha_address(&broker.config, broker.listen_address());
        let options = master_options(&broker.config, role, &broker.security);
        match HaMaster::start(store.clone(), address, options) {
            Ok(master) => {
                master.set_wait_set(controlled_wait_set(&broker.config));
                Ha::Master(master)
            }
            Err(error) => {
                log::error!("promoted, but cannot listen for slaves on {address}: {error}");
                Ha::None
            }
        }
    };
    if let Err(error) = store.create_topic(
        keel_protocol::SCHEDULE_TOPIC,
        keel_protocol::SCHEDULE_QUEUES,
    ) {
        log::error!("cannot create {}: {error}", keel_protocol::SCHEDULE_TOPIC);
    }
    broker.set_role(role, ha);
    log::warn!(
        "promoted to {role}: epoch {} begins at log offset {log_end}",
        epoch.epoch
    );
    Ok((epoch.epoch, log_end))
}

/// Registers with every name server every `register_interval_ms`, and at once after a
/// promotion. Runs until the process ends.
pub fn start_registration(broker: Arc<Broker>, address: String) {
    if broker.config.namesrv_addrs.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("keel-register".into())
        .spawn(move || {
            let interval = Duration::from_millis(broker.config.register_interval_ms);
            let mut failing: Vec<bool> = vec![false; broker.config.namesrv_addrs.len()];
            let mut seen = broker.registration.version();
            let outbound = broker.security.dial();
            while !broker.is_shutting_down() {
                let role = broker.role();
                let registration = BrokerRegistration {
                    broker_name: broker.config.broker_name.clone(),
                    broker_id: if role.is_master() {
                        0
                    } else {
                        broker.config.broker_id
                    },
                    role,
                    epoch: broker.store.current_epoch(),
                    address: address.clone(),
                    ha_address: match broker.ha() {
                        Ha::Master(master) => master.local_addr().to_string(),
                        _ => String::new(),
                    },
                    topics: broker.store.topic_list(),
                };
                let request = Request::RegisterBroker(registration);
                let names = broker.config.namesrv_addrs.iter();
                for (namesrv, failing) in names.zip(failing.iter_mut()) {
                    match call(namesrv, &request, Duration::from_secs(3), &outbound) {
                        Ok(Response::Registered) => {
                            if *failing {
                                log::info!("registered with name server {namesrv} again");
                            }
                            *failing = false;
                        }
                        Ok(Response::Error(error))
                            if error.code == ErrorCode::NotMaster && role.is_master() =>
                        {
                            broker.fence(format!("name server {namesrv}: {}", error.message));
                        }
                        outcome => {
                            let detail = match outcome {
                                Ok(other) => format!("unexpected {}", other.kind().name()),
                                Err(error) => error.to_string(),
                            };
                            if !*failing {
                                log::warn!("cannot register with name server {namesrv}: {detail}");
                            }
                            *failing = true;
                        }
                    }
                }
                seen = broker.registration.wait(seen, interval);
            }
        });
    if let Err(error) = spawned {
        log::error!("cannot start the registration thread: {error}");
    }
}
