//! Blocking calls to the controller port, for brokers and the CLI: tries each address,
//! follows a NOT_LEADER hint once, and bounds every step by `timeout`.

use crate::api::{BrokerHeartbeat, ClusterView, HeartbeatReply};
use crate::{wire, Dial};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// Why a controller call failed. Whether a request that reached a controller was
/// carried out is never guessed: only `Refused` says it was not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerError {
    /// The controller at `address` could not be reached: nothing was sent.
    Unreachable { address: String, detail: String },
    /// The connection broke after the request was (partly) sent: it may or may not
    /// have been carried out.
    Broken { address: String, detail: String },
    /// The controller answered ERROR (a refused cluster token, a request it cannot
    /// decode): nothing was done.
    Refused { address: String, detail: String },
    /// The reply does not decode.
    BadReply { address: String, detail: String },
    /// No controller of the list answered as leader (or at all): what each said.
    NoLeader(Vec<ControllerError>),
    /// An answer that names no leader (an election under way).
    NotLeader { address: String },
}

impl std::fmt::Display for ControllerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControllerError::Unreachable { address, detail } => {
                write!(f, "controller {address}: {detail}")
            }
            ControllerError::Broken { address, detail } => {
                write!(f, "controller {address}: connection broken: {detail}")
            }
            ControllerError::Refused { address, detail } => {
                write!(f, "controller {address} refused: {detail}")
            }
            ControllerError::BadReply { address, detail } => {
                write!(f, "controller {address}: bad reply: {detail}")
            }
            ControllerError::NotLeader { address } => write!(f, "{address}: not the leader"),
            ControllerError::NoLeader(errors) => {
                let each: Vec<String> = errors.iter().map(ToString::to_string).collect();
                write!(f, "no controller leader answered: {}", each.join("; "))
            }
        }
    }
}

impl std::error::Error for ControllerError {}

/// The callers that report errors as text keep doing so.
impl From<ControllerError> for String {
    fn from(error: ControllerError) -> String {
        error.to_string()
    }
}

fn call<Q: Serialize, A: DeserializeOwned>(
    address: &str,
    kind: u8,
    request: &Q,
    timeout: Duration,
    access: &Dial,
) -> Result<A, ControllerError> {
    let unreachable = |e: std::io::Error| ControllerError::Unreachable {
        address: address.to_string(),
        detail: e.to_string(),
    };
    let refused = |what: &str, reply: &[u8]| ControllerError::Refused {
        address: address.to_string(),
        detail: format!("{what}{}", String::from_utf8_lossy(reply)),
    };
    let broken = |e: std::io::Error| ControllerError::Broken {
        address: address.to_string(),
        detail: e.to_string(),
    };
    let stream = keel_net::connect(address, timeout, access.tls.as_ref()).map_err(unreachable)?;
    let mut stream = &stream;
    if let Some(token) = &access.token {
        wire::write_frame(&mut stream, wire::LOGIN, token.0.as_bytes()).map_err(unreachable)?;
        let (reply_kind, reply) = wire::read_frame(&mut stream).map_err(unreachable)?;
        if reply_kind != wire::REPLY {
            return Err(refused("the cluster token: ", &reply));
        }
    }
    let body = serde_json::to_vec(request).map_err(|e| ControllerError::BadReply {
        address: address.to_string(),
        detail: format!("encoding the request: {e}"),
    })?;
    wire::write_frame(&mut stream, kind, &body).map_err(broken)?;
    let (reply_kind, reply) = wire::read_frame(&mut stream).map_err(broken)?;
    if reply_kind != wire::REPLY {
        return Err(refused("", &reply));
    }
    serde_json::from_slice(&reply).map_err(|e| ControllerError::BadReply {
        address: address.to_string(),
        detail: e.to_string(),
    })
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
) -> Result<A, ControllerError> {
    let mut errors = Vec::new();
    for address in addresses {
        let mut target = address.clone();
        for _ in 0..2 {
            match call::<_, A>(&target, kind, request, timeout, access) {
                Ok(answer) => match answer.not_leader() {
                    None => return Ok(answer),
                    Some(Some(leader)) if leader != target => target = leader,
                    Some(_) => {
                        errors.push(ControllerError::NotLeader { address: target });
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
    Err(ControllerError::NoLeader(errors))
}

/// Sends `report` to the leader among `addresses`; the group as decided.
pub fn heartbeat(
    addresses: &[String],
    report: &BrokerHeartbeat,
    timeout: Duration,
    access: &Dial,
) -> Result<crate::api::GroupView, ControllerError> {
    match call_leader(addresses, wire::BROKER_HEARTBEAT, report, timeout, access)? {
        HeartbeatReply::Group(view) => Ok(view),
        HeartbeatReply::NotLeader { .. } => Err(ControllerError::NoLeader(Vec::new())),
    }
}

/// The cluster as the first answering controller sees it; the leader's view when the
/// first answer names a leader elsewhere.
pub fn describe(
    addresses: &[String],
    timeout: Duration,
    access: &Dial,
) -> Result<ClusterView, ControllerError> {
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
    Err(ControllerError::NoLeader(errors))
}

/// Asks the leader among `addresses` to elect `request.broker_id`.
pub fn elect(
    addresses: &[String],
    request: &crate::api::ElectRequest,
    timeout: Duration,
    access: &Dial,
) -> Result<crate::api::ElectReply, ControllerError> {
    call_leader(addresses, wire::ELECT, request, timeout, access)
}
