//! `keel admin promote`, `keel routes` and `keel cluster`: the cluster as the
//! brokers, the name servers and the controllers see it.

use crate::output::duration_words;
use crate::output::json;
use crate::output::print_json;
use crate::prelude::*;
use crate::security::Target;
use crate::shared::with_default_port;
use crate::shared::CONTROLLER_PORT;
use crate::shared::NAMESRV_PORT;

pub(crate) fn promote(broker: &Target, role: &str, force: bool) -> Result<ExitCode, ClientError> {
    let role = keel_client::BrokerRole::from_name(role)
        .ok_or_else(|| ClientError::InvalidArgument(format!("unknown role {role:?}")))?;
    let admin = broker.admin()?;
    let (epoch, log_end) = if force {
        admin.force_promote(role)?
    } else {
        admin.promote(role)?
    };
    println!(
        "{} is now {role}: epoch {epoch}, log ends at offset {log_end}",
        broker.address
    );
    Ok(ExitCode::SUCCESS)
}

/// What `keel routes` prints of one broker.
pub(crate) struct RouteRow {
    broker: keel_protocol::BrokerLiveness,
    /// The asked topic's queue count on it (0: it does not have it).
    topic_queues: u32,
    /// Messages a second it took in over its last minute (`None`: it did not answer).
    per_second: Option<f64>,
    stale: bool,
}

pub(crate) fn routes(broker: &Target, namesrv: &str, topic: &str) -> Result<ExitCode, ClientError> {
    let name_servers: Vec<String> = namesrv
        .split(',')
        .map(|s| with_default_port(s, NAMESRV_PORT))
        .collect();
    let tls = broker.options.tls.as_ref();
    let timeout = Duration::from_secs(3);
    let (broker_timeout_ms, brokers) = keel_client::fetch_brokers(&name_servers, timeout, tls)?;
    let queues: std::collections::HashMap<(String, String), u32> = if topic.is_empty() {
        Default::default()
    } else {
        let next = std::sync::atomic::AtomicUsize::new(0);
        keel_client::fetch_routes(&name_servers, &next, topic, timeout, tls)?
            .into_iter()
            .map(|route| ((route.broker_name, route.address), route.topic_queues))
            .collect()
    };
    let rates = intake_rates(broker, &brokers);
    let rows: Vec<RouteRow> = brokers
        .into_iter()
        .zip(rates)
        .map(|(known, per_second)| RouteRow {
            topic_queues: queues
                .get(&(known.broker_name.clone(), known.address.clone()))
                .copied()
                .unwrap_or(0),
            per_second,
            stale: known.is_stale(broker_timeout_ms),
            broker: known,
        })
        .collect();
    if json() {
        print_routes_json(&rows, broker_timeout_ms);
    } else {
        print_routes(&rows);
    }
    warn_stale(&rows, broker_timeout_ms);
    Ok(ExitCode::SUCCESS)
}

/// Each broker's own view of its intake (messages a second over its last minute),
/// asked of all at once: one that does not answer within 2 s is `None`.
fn intake_rates(broker: &Target, brokers: &[keel_protocol::BrokerLiveness]) -> Vec<Option<f64>> {
    let options = keel_client::ConnectionOptions {
        connect_timeout: Duration::from_secs(2),
        ..broker.options.clone()
    };
    std::thread::scope(|scope| {
        let asks: Vec<_> = brokers
            .iter()
            .map(|known| {
                let options = &options;
                scope.spawn(move || {
                    let admin = keel_client::Admin::connect_with(&known.address, options)
                        .ok()?
                        .with_timeout(Duration::from_secs(2));
                    let topics = admin.topic_stats(None).ok()?;
                    let window_ms = topics.iter().map(|t| t.window_ms).max().unwrap_or(0);
                    let messages: u64 = topics.iter().map(|t| t.window_messages).sum();
                    Some(match window_ms {
                        0 => 0.0,
                        ms => messages as f64 * 1000.0 / f64::from(ms),
                    })
                })
            })
            .collect();
        asks.into_iter()
            .map(|ask| ask.join().ok().flatten())
            .collect()
    })
}

fn print_routes_json(rows: &[RouteRow], broker_timeout_ms: u64) {
    let routes: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let route = &row.broker;
            serde_json::json!({
                "broker_name": route.broker_name, "broker_id": route.broker_id,
                "role": route.role.name(), "epoch": route.epoch,
                "address": route.address, "ha_address": route.ha_address,
                "topic_queues": row.topic_queues,
                "since_heard_ms": route.since_heard_ms, "interval_ms": route.interval_ms,
                "known_for_ms": route.known_for_ms, "topics": route.topic_count,
                "routed": route.routed, "stale": row.stale,
                "messages_per_second": row.per_second,
            })
        })
        .collect();
    print_json(&serde_json::json!({ "broker_timeout_ms": broker_timeout_ms, "routes": routes }));
}

fn print_routes(rows: &[RouteRow]) {
    println!(
        "{:<12} {:>3}  {:<13} {:>5}  {:<21} {:>10} {:>9} {:>9} {:>6}",
        "broker_name",
        "id",
        "role",
        "epoch",
        "address",
        "last_heard",
        "known_for",
        "msg/s_in",
        "queues"
    );
    for row in rows {
        let route = &row.broker;
        let per_second = row
            .per_second
            .map_or("-".to_string(), |rate| format!("{rate:.1}"));
        let note = match (route.routed, row.stale) {
            (false, _) => "  (not routed: a newer master of its name is known)",
            (true, true) => "  STALE",
            (true, false) => "",
        };
        println!(
            "{:<12} {:>3}  {:<13} {:>5}  {:<21} {:>10} {:>9} {:>9} {:>6}{note}",
            route.broker_name,
            route.broker_id,
            route.role.name(),
            route.epoch,
            route.address,
            format!(
                "{} ago",
                duration_words(route.since_heard_ms as f64 / 1000.0)
            ),
            duration_words(route.known_for_ms as f64 / 1000.0),
            per_second,
            row.topic_queues
        );
    }
}

/// A warning on stderr for each route the name server will soon drop.
fn warn_stale(rows: &[RouteRow], broker_timeout_ms: u64) {
    for row in rows.iter().filter(|row| row.stale) {
        let route = &row.broker;
        let every = match route.interval_ms {
            0 => "it registered once".to_string(),
            ms => format!("it registers every {}", duration_words(ms as f64 / 1000.0)),
        };
        eprintln!(
            "keel routes: WARNING {} {} at {} last heard {} ago ({every}): its route is stale; \
             the name server drops it after {} of silence",
            route.broker_name,
            route.role.name(),
            route.address,
            duration_words(route.since_heard_ms as f64 / 1000.0),
            duration_words(broker_timeout_ms as f64 / 1000.0)
        );
    }
}

pub(crate) fn controller_list(controllers: &str) -> Vec<String> {
    controllers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| with_default_port(s, CONTROLLER_PORT))
        .collect()
}

pub(crate) fn cluster_elect(
    controllers: &str,
    group: String,
    broker_id: u32,
    unclean: bool,
    json: bool,
    access: &keel_net::Dial,
) -> Result<ExitCode, ClientError> {
    use keel_controller_api::api::{ElectReply, ElectRequest};
    let request = ElectRequest {
        group,
        broker_id,
        unclean,
    };
    let answer = keel_controller_api::client::elect(
        &controller_list(controllers),
        &request,
        Duration::from_secs(5),
        access,
    )
    .map_err(|error| elect_error(controllers, error))?;
    if json {
        let text = serde_json::to_string_pretty(&answer)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        println!("{text}");
    }
    match answer {
        ElectReply::Elected { epoch, detail } => {
            if !json {
                println!(
                    "elected broker {broker_id} master of {} at epoch {epoch}: {detail}",
                    request.group
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ElectReply::Refused(why) => {
            eprintln!("keel cluster: election refused: {why}");
            Ok(ExitCode::from(1))
        }
        ElectReply::NotLeader { .. } => {
            eprintln!("keel cluster: no controller leader answered");
            Ok(ExitCode::from(1))
        }
    }
}

pub(crate) fn cluster(
    controllers: &str,
    json: bool,
    access: &keel_net::Dial,
) -> Result<ExitCode, ClientError> {
    let addresses = controller_list(controllers);
    let view = keel_controller_api::client::describe(&addresses, Duration::from_secs(3), access)
        .map_err(|error| ClientError::Connect {
            address: controllers.to_string(),
            detail: error.to_string(),
        })?;
    if json {
        let text = serde_json::to_string_pretty(&view)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let leader = match (view.leader, &view.leader_address) {
        (Some(id), Some(address)) => format!("{id} ({address})"),
        (Some(id), None) => id.to_string(),
        _ => "none".into(),
    };
    println!(
        "controller {} answered: leader {leader}, term {}, voters {}",
        view.node_id,
        view.term,
        view.voters
            .iter()
            .map(|(id, address)| format!("{id}={address}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    for group in &view.groups {
        print_group_status(group);
    }
    if view.leader.is_none() {
        eprintln!("keel cluster: the controllers have no leader (a majority is not reachable)");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// One broker group as the controllers see it: its master and SyncStateSet, and a line
/// per replica.
fn print_group_status(group: &keel_controller_api::api::GroupStatus) {
    let v = &group.view;
    println!(
        "group {}: master {} epoch {}, SyncStateSet {:?} (epoch {}), {} elections",
        v.group,
        v.master.map_or("none".into(), |id| id.to_string()),
        v.master_epoch,
        v.sss,
        v.sss_epoch,
        group.elections
    );
    let master_down = group
        .replicas
        .iter()
        .any(|r| Some(r.broker_id) == v.master && r.reachable == Some(false));
    if master_down {
        println!(
            "  the master is unreachable: the controller elects another from the \
             SyncStateSet once it has been silent for the master timeout"
        );
    }
    let master_end = group
        .replicas
        .iter()
        .filter(|r| Some(r.broker_id) == v.master)
        .map(|r| r.log_end)
        .max()
        .unwrap_or(0);
    println!("  id  role         in_sss  epoch  log_end      lag_bytes  heard   address");
    for r in &group.replicas {
        println!(
            "  {:>2}  {:<11}  {:<6}  {:>5}  {:>11}  {:>9}  {:>6}  {}",
            r.broker_id,
            match (r.reachable, Some(r.broker_id) == v.master) {
                (Some(false), _) => "unreachable",
                (_, true) => "master",
                (_, false) => "slave",
            },
            if r.in_sss { "yes" } else { "no" },
            r.epoch,
            r.log_end,
            master_end.saturating_sub(r.log_end),
            r.since_heard_ms
                .map_or("never".into(), |ms| format!("{ms}ms")),
            r.address
        );
    }
}

/// What `keel cluster --elect` reports when the controllers did not answer: refused
/// everywhere is certain (nothing elected); a controller that broke off mid-request may
/// have carried it out.
fn elect_error(
    controllers: &str,
    error: keel_controller_api::client::ControllerError,
) -> ClientError {
    use keel_controller_api::client::ControllerError;
    let certain = |error: &ControllerError| {
        matches!(
            error,
            ControllerError::Refused { .. }
                | ControllerError::NotLeader { .. }
                | ControllerError::Unreachable { .. }
        )
    };
    let all_certain = match &error {
        ControllerError::NoLeader(each) => each.iter().all(certain),
        other => certain(other),
    };
    match all_certain {
        true => ClientError::Connect {
            address: controllers.to_string(),
            detail: error.to_string(),
        },
        false => ClientError::OutcomeUnknown(format!(
            "{error} (the election may or may not have been carried out: keel cluster shows it)"
        )),
    }
}
