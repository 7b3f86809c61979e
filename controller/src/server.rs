//! The controller port: openraft's RPCs from the other voters, heartbeats from
//! brokers, DESCRIBE from operators. A connection gets a task; a frame that does not
//! decode is answered with an ERROR frame and the connection is closed.

use crate::config::ControllerConfig;
use crate::network::Network;
use crate::store::{LogStore, StateMachine};
use crate::wire;
use openraft::{BasicNode, Raft};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

use crate::node::{other, Node};

/// Brokers, voters and operators' CLIs.
const CAPS: keel_net::Caps = keel_net::Caps {
    max_connections: 512,
    max_per_address: 64,
};
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

fn reply<T: Serialize>(value: &T) -> (u8, Vec<u8>) {
    match serde_json::to_vec(value) {
        Ok(body) => (wire::REPLY, body),
        Err(error) => (wire::ERROR, error.to_string().into_bytes()),
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, (u8, Vec<u8>)> {
    serde_json::from_slice(body).map_err(|e| {
        (
            wire::ERROR,
            format!("undecodable request body: {e}").into_bytes(),
        )
    })
}

async fn answer(node: &Node, kind: u8, body: &[u8]) -> Result<(u8, Vec<u8>), (u8, Vec<u8>)> {
    Ok(match kind {
        wire::APPEND_ENTRIES => reply(&node.raft.append_entries(decode(body)?).await),
        wire::VOTE => reply(&node.raft.vote(decode(body)?).await),
        wire::INSTALL_SNAPSHOT => reply(&node.raft.install_snapshot(decode(body)?).await),
        wire::BROKER_HEARTBEAT => reply(&node.heartbeat(decode(body)?).await),
        wire::DESCRIBE => reply(&node.describe()),
        wire::ELECT => reply(&node.elect(decode(body)?).await),
        other => {
            return Err((
                wire::ERROR,
                format!("unknown controller frame kind {other:#04x}").into_bytes(),
            ))
        }
    })
}

/// TLS (when the port has it) then the frames of one connection.
async fn accept(node: Arc<Node>, stream: TcpStream, peer: std::net::SocketAddr) {
    let _ = stream.set_nodelay(true);
    match node.tls.clone() {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve(node, stream, peer, true).await,
                Ok(Err(error)) => {
                    log::warn!("controller: TLS handshake with {peer} failed: {error}")
                }
                Err(_) => log::warn!("controller: TLS handshake with {peer} timed out"),
            }
        }
        None => {
            let secure = keel_net::is_secure(peer.ip(), false);
            serve(node, stream, peer, secure).await
        }
    }
}

/// `secure`: over TLS or from loopback, where the cluster token may travel.
async fn serve<S>(node: Arc<Node>, mut stream: S, peer: std::net::SocketAddr, secure: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // With a cluster token, nothing but LOGIN until it is shown.
    let mut logged_in = !node.authority.has_cluster_token();
    loop {
        // Before the login: small frames, and 10 s to send them.
        let (timeout, max) = match logged_in {
            true => (IDLE_TIMEOUT, wire::MAX_FRAME_BYTES),
            false => (
                keel_net::PreLogin::DEFAULT.login_timeout,
                keel_net::PreLogin::DEFAULT.max_frame_bytes,
            ),
        };
        let frame =
            tokio::time::timeout(timeout, wire::read_frame_async_within(&mut stream, max)).await;
        let (kind, body) = match frame {
            Ok(Ok(frame)) => frame,
            Ok(Err(error)) => {
                if error.kind() != io::ErrorKind::UnexpectedEof {
                    let text = format!("bad frame: {error}");
                    let _ =
                        wire::write_frame_async(&mut stream, wire::ERROR, text.as_bytes()).await;
                }
                return;
            }
            Err(_) => return,
        };
        if kind == wire::LOGIN || !logged_in {
            let token = String::from_utf8_lossy(&body);
            let accepted = kind == wire::LOGIN
                && matches!(
                    node.authority.login_token(keel_security::Port::Controller, &token, peer.ip(), secure),
                    Ok(principal) if principal.credential == keel_security::Credential::ClusterToken
                );
            if !accepted {
                let detail = match kind {
                    wire::LOGIN => "not the cluster token",
                    _ => "this controller requires the cluster token (LOGIN) first",
                };
                log::warn!("controller: refused {peer}: {detail}");
                let _ = wire::write_frame_async(&mut stream, wire::ERROR, detail.as_bytes()).await;
                return;
            }
            logged_in = true;
            if wire::write_frame_async(&mut stream, wire::REPLY, b"{}")
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        match answer(&node, kind, &body).await {
            Ok((kind, body)) => {
                if wire::write_frame_async(&mut stream, kind, &body)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err((kind, body)) => {
                let _ = wire::write_frame_async(&mut stream, kind, &body).await;
                return;
            }
        }
    }
}

pub(crate) async fn run(
    config: ControllerConfig,
    listener: std::net::TcpListener,
    log_store: LogStore,
    machine: StateMachine,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    let heartbeat = config.raft_heartbeat.as_millis().max(10) as u64;
    let raft_config = openraft::Config {
        cluster_name: "keel-controller".into(),
        heartbeat_interval: heartbeat,
        election_timeout_min: heartbeat * 3,
        election_timeout_max: heartbeat * 6,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 100,
        ..openraft::Config::default()
    }
    .validate()
    .map_err(other)?;
    let shared = machine.state.clone();
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config),
        Network {
            access: config.security.peers.clone(),
        },
        log_store,
        machine,
    )
    .await
    .map_err(other)?;
    if !raft.is_initialized().await.map_err(other)? {
        let members: BTreeMap<u64, BasicNode> = config
            .peers
            .iter()
            .map(|(id, address)| (*id, BasicNode::new(address)))
            .collect();
        // Every voter initializes with the same members: safe, and no voter has to be
        // up first.
        if let Err(error) = raft.initialize(members).await {
            log::info!("controller: not initialized here: {error}");
        }
    }
    log::info!(
        "controller {} serving on {} with voters {:?}",
        config.node_id,
        listener.local_addr()?,
        config.peers
    );
    let node = Arc::new(Node {
        id: config.node_id,
        raft: raft.clone(),
        peers: config.peers.clone(),
        machine: shared,
        heard: Mutex::new(HashMap::new()),
        master_timeout: config.master_timeout,
        connections: keel_net::Census::new(CAPS),
        tls: config.security.tls.clone(),
        authority: keel_security::Authority::open(
            keel_security::AuthMode::Optional,
            None,
            config.security.peers.token.as_ref().map(|t| t.0.as_str()),
        )
        .map_err(other)?,
        ready_term: AtomicU64::new(0),
        electing: Mutex::new(std::collections::HashSet::new()),
    });
    tokio::spawn(crate::leader::duties(node.clone(), stop.clone()));
    let listener = tokio::net::TcpListener::from_std(listener)?;
    while !stop.load(Ordering::Acquire) {
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        let Ok(accepted) = accepted else { continue };
        match accepted {
            Ok((stream, peer)) => {
                let ticket = match node.connections.admit(peer.ip()) {
                    Ok(ticket) => ticket,
                    Err(refused) => {
                        log::warn!("controller: refusing {peer}: {refused}");
                        continue;
                    }
                };
                let serving = node.clone();
                tokio::spawn(async move {
                    accept(serving, stream, peer).await;
                    drop(ticket);
                });
            }
            Err(error) => {
                log::warn!("controller: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let _ = raft.shutdown().await;
    Ok(())
}
