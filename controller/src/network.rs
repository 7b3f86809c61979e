//! openraft's RPCs between controllers over the controller port: one request frame,
//! one reply frame carrying the JSON of `Result<answer, RaftError>`. A connection is
//! kept per peer and dropped on any error; every call is bounded by openraft's TTL.

use crate::config::TypeConfig;
use crate::wire;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io;
use std::time::Duration;
use tokio::net::TcpStream;

type NodeId = u64;

/// A plaintext or TLS connection to a controller port.
pub(crate) trait Duplex:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync> Duplex for T {}

pub struct Network {
    pub access: keel_net::Dial,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            address: node.addr.clone(),
            stream: None,
            access: self.access.clone(),
        }
    }
}

pub struct Peer {
    target: NodeId,
    address: String,
    stream: Option<Box<dyn Duplex>>,
    access: keel_net::Dial,
}

/// Connects to a controller port: TLS when `access` has it, then LOGIN with the
/// cluster token when it has one.
pub(crate) async fn connect(address: &str, access: &keel_net::Dial) -> io::Result<Box<dyn Duplex>> {
    let stream = TcpStream::connect(address).await?;
    let _ = stream.set_nodelay(true);
    let mut stream: Box<dyn Duplex> = match &access.tls {
        Some(tls) => {
            let name = tls
                .name_for(address)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            Box::new(connector.connect(name, stream).await?)
        }
        None => Box::new(stream),
    };
    if let Some(token) = &access.token {
        wire::write_frame_async(&mut stream, wire::LOGIN, token.0.as_bytes()).await?;
        let (kind, reply) = wire::read_frame_async(&mut stream).await?;
        if kind != wire::REPLY {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "refused the cluster token: {}",
                    String::from_utf8_lossy(&reply)
                ),
            ));
        }
    }
    Ok(stream)
}

enum CallError {
    /// Could not connect: the peer is down.
    Unreachable(io::Error),
    /// The connection failed or timed out during the call.
    Network(io::Error),
}

impl Peer {
    async fn exchange(&mut self, kind: u8, body: &[u8]) -> Result<Vec<u8>, CallError> {
        if self.stream.is_none() {
            let stream = connect(&self.address, &self.access)
                .await
                .map_err(CallError::Unreachable)?;
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(CallError::Network(io::Error::other("no connection")));
        };
        let result = async {
            wire::write_frame_async(stream, kind, body).await?;
            let (reply_kind, reply) = wire::read_frame_async(stream).await?;
            if reply_kind != wire::REPLY {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "peer refused the request: {}",
                        String::from_utf8_lossy(&reply)
                    ),
                ));
            }
            Ok(reply)
        }
        .await;
        if result.is_err() {
            self.stream = None;
        }
        result.map_err(CallError::Network)
    }

    async fn call<Q, A, E>(
        &mut self,
        kind: u8,
        request: &Q,
        ttl: Duration,
    ) -> Result<A, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Q: Serialize,
        A: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = match tokio::time::timeout(ttl, self.exchange(kind, &body)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(CallError::Unreachable(e))) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Ok(Err(CallError::Network(e))) => return Err(RPCError::Network(NetworkError::new(&e))),
            Err(_) => {
                self.stream = None;
                let e = io::Error::new(io::ErrorKind::TimedOut, format!("no reply in {ttl:?}"));
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
        };
        let answer: Result<A, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(wire::APPEND_ENTRIES, &rpc, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(wire::INSTALL_SNAPSHOT, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(wire::VOTE, &rpc, option.hard_ttl()).await
    }
}
