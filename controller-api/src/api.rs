//! What brokers and operators send to the controller port, and its answers (JSON
//! bodies of `wire` frames; see docs/PROTOCOL.md "The controller port").

use serde::{Deserialize, Serialize};

/// A broker's report, every `controller_heartbeat_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerHeartbeat {
    pub group: String,
    pub broker_id: u32,
    pub address: String,
    pub ha_address: String,
    /// Serving as a master now.
    pub is_master: bool,
    /// Its configured role is a master (a group without a master takes it).
    pub claims_master: bool,
    /// The newest epoch of its log.
    pub epoch: u64,
    /// Where its log ends, and what it has fsynced.
    pub log_end: u64,
    pub flushed: u64,
    /// From a master: slaves (broker ids) that hold everything it acknowledged so far
    /// and that it already waits for; it asks for the SyncStateSet to be itself and them.
    pub in_sync: Vec<u32>,
    /// The SyncStateSet epoch this broker last learnt: a change it asks for is applied
    /// only if the SSS is still at that epoch.
    #[serde(default)]
    pub sss_epoch: u64,
}

/// What a broker learns: its group as the controller decided it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    pub group: String,
    pub master: Option<u32>,
    pub master_address: Option<String>,
    pub master_ha_address: Option<String>,
    pub master_epoch: u64,
    pub sss: Vec<u32>,
    pub sss_epoch: u64,
    /// Masters the controller elected in this group so far.
    #[serde(default)]
    pub elections: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeartbeatReply {
    Group(GroupView),
    /// Ask the leader instead (its controller address, when known).
    NotLeader {
        leader: Option<String>,
    },
}

/// One replica as the leader last heard of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub broker_id: u32,
    pub address: String,
    /// Serving as master by its last heartbeat, and heard from recently (`reachable`):
    /// a killed master is never shown as one.
    pub is_master: bool,
    /// Heard from within half the master timeout. A replica that is not is down, cut
    /// off, or (just after a controller leader change) not heard from yet. `None`: a
    /// controller older than this field did not say.
    #[serde(default)]
    pub reachable: Option<bool>,
    pub epoch: u64,
    pub log_end: u64,
    pub flushed: u64,
    /// Milliseconds since its last heartbeat reached this controller (`None`: never).
    pub since_heard_ms: Option<u64>,
    pub in_sss: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub view: GroupView,
    pub elections: u64,
    pub replicas: Vec<ReplicaStatus>,
}

/// DESCRIBE's answer: the controller's own Raft state and every group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub node_id: u64,
    pub leader: Option<u64>,
    pub leader_address: Option<String>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub voters: Vec<(u64, String)>,
    pub groups: Vec<GroupStatus>,
}

/// ELECT: an operator names the next master of a group. A replica outside the SyncStateSet
/// is elected only with `unclean`, and the answer says what that may lose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectRequest {
    pub group: String,
    pub broker_id: u32,
    pub unclean: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectReply {
    /// Committed: the group's new master epoch, and what the election may have lost.
    Elected {
        epoch: u64,
        detail: String,
    },
    Refused(String),
    NotLeader {
        leader: Option<String>,
    },
}
