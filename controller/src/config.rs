//! A voter's configuration and the Raft types it is built from.

use openraft::BasicNode;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

openraft::declare_raft_types!(
    /// The controller's Raft types: commands and answers of `state`.
    pub TypeConfig:
        D = crate::state::Command,
        R = crate::state::Applied,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// This voter's id, a key of `peers`.
    pub node_id: u64,
    /// Every voter's controller address by id, this one's included.
    pub peers: BTreeMap<u64, String>,
    /// Where the Raft log, vote and snapshot live.
    pub dir: PathBuf,
    /// A master silent this long is replaced (`controller_master_timeout_ms`).
    pub master_timeout: Duration,
    /// Raft heartbeat; elections start after 3-6 of them are missed.
    pub raft_heartbeat: Duration,
    /// TLS of the controller port, and how to reach the other voters.
    pub security: ControllerSecurity,
}

/// A voter's TLS and cluster token.
#[derive(Debug, Clone, Default)]
pub struct ControllerSecurity {
    /// The controller port speaks TLS only.
    pub tls: Option<Arc<keel_security::rustls::ServerConfig>>,
    /// How this voter reaches the others; its token is also the one every request to
    /// this voter must show first.
    pub peers: keel_net::Dial,
}
