//! Blocking calls to the controller port, for brokers and the CLI: tries each address,
//! follows a NOT_LEADER hint once, and bounds every step by `timeout`.

use crate::api::{BrokerHeartbeat, ClusterView, HeartbeatReply};
use crate::{wire, Dial};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

fn call<Q: Serialize, A: DeserializeOwned>(
    address: &str,
    kind: u8,
    request: &Q,
    timeout: Duration,
    access: &Dial,
) -> Result<A, String> {
    let stream = keel_net::connect(address, timeout, access.tls.as_ref())
        .map_err(|e| format!("controller {e}"))?;
    let mut stream = &stream;
    if let Some(token) = &access.token {
        wire::write_frame(&mut stream, wire::LOGIN, token.0.as_bytes())
            .map_err(|e| format!("{address}: {e}"))?;
        let (reply_kind, reply) =
            wire::read_frame(&mut stream).map_err(|e| format!("{address}: {e}"))?;
        if reply_kind != wire::REPLY {
            return Err(format!(
                "controller {address} refused the cluster token: {}",
                String::from_utf8_lossy(&reply)
            ));
        }
    }
    let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    wire::write_frame(&mut stream, kind, &body).map_err(|e| format!("{address}: {e}"))?;
    let (reply_kind, reply) =
        wire::read_frame(&mut stream).map_err(|e| format!("{address}: {e}"))?;
    if reply_kind != wire::REPLY {
        return Err(format!(
            "controller {address} refused: {}",
            String::from_utf8_lossy(&reply)
        ));
    }
    serde_json::from_slice(&reply).map_err(|e| format!("{address}: bad reply: {e}"))
}

/// An answer that may say "ask the leader at ... instead".
trait LeaderHint {
    /// `Some(hint)` when this answer came from a voter that is not the leader.
    fn not_leader(&self) -> Option<Option<String>>;
}

impl LeaderHint for HeartbeatReply {
    fn not_leader(&self) -> Option<Option<String>> {
        match self {
            HeartbeatReply::NotLeader { leader } => Some(leader.clone()),
            HeartbeatReply::Group(_) => None,
        }
    }
}

impl LeaderHint for crate::api::ElectReply {
    fn not_leader(&self) -> Option<Option<String>> {
        match self {
            crate::api::ElectReply::NotLeader { leader } => Some(leader.clone()),
            _ => None,
        }
    }
}

/// Sends `request` to each of `addresses` in turn, following one leader hint from
/// each, until the leader answers.
fn call_leader<Q: Serialize, A: DeserializeOwned + LeaderHint>(
    addresses: &[String],
    kind: u8,
    request: &Q,
    timeout: Duration,
    access: &Dial,
) -> Result<A, String> {
    let mut errors = Vec::new();
    for address in addresses {
        let mut target = address.clone();
        for _ in 0..2 {
            match call::<_, A>(&target, kind, request, timeout, access) {
                Ok(answer) => match answer.not_leader() {
                    None => return Ok(answer),
                    Some(Some(leader)) if leader != target => target = leader,
                    Some(_) => {
                        errors.push(format!("{target}: not the leader"));
                        break;
                    }
                },
                Err(error) => {
                    errors.push(error);
                    break;
                }
            }
        }
    }
    Err(format!(
        "no controller leader answered: {}",
        errors.join("; ")
    ))
}

/// Sends `report` to the leader among `addresses`; the group as decided.
pub fn heartbeat(
    addresses: &[String],
    report: &BrokerHeartbeat,
    timeout: Duration,
    access: &Dial,
) -> Result<crate::api::GroupView, String> {
    match call_leader(addresses, wire::BROKER_HEARTBEAT, report, timeout, access)? {
        HeartbeatReply::Group(view) => Ok(view),
        HeartbeatReply::NotLeader { .. } => Err("no controller leader answered".into()),
    }
}

/// The cluster as the first answering controller sees it; the leader's view when the
/// first answer names a leader elsewhere.
pub fn describe(
    addresses: &[String],
    timeout: Duration,
    access: &Dial,
) -> Result<ClusterView, String> {
    let mut errors = Vec::new();
    for address in addresses {
        match call::<_, ClusterView>(address, wire::DESCRIBE, &(), timeout, access) {
            Ok(view) => {
                let elsewhere = view
                    .leader_address
                    .clone()
                    .filter(|leader| view.leader != Some(view.node_id) && leader != address);
                if let Some(leader) = elsewhere {
                    if let Ok(leader_view) =
                        call::<_, ClusterView>(&leader, wire::DESCRIBE, &(), timeout, access)
                    {
                        return Ok(leader_view);
                    }
                }
                return Ok(view);
            }
            Err(error) => errors.push(error),
        }
    }
    Err(format!("no controller answered: {}", errors.join("; ")))
}

/// Asks the leader among `addresses` to elect `request.broker_id`.
pub fn elect(
    addresses: &[String],
    request: &crate::api::ElectRequest,
    timeout: Duration,
    access: &Dial,
) -> Result<crate::api::ElectReply, String> {
    call_leader(addresses, wire::ELECT, request, timeout, access)
}
