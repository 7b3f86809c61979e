//! `keeld namesrv`: the route table. Brokers register (REGISTER_BROKER) every
//! `register_interval_ms`; an entry silent for `broker_timeout` is dropped; clients ask
//! GET_ROUTES for a topic. Name servers share nothing: brokers register with each, and
//! clients may ask any.
//!
//! Of several masters registered under one broker name (an old master restarted after
//! its slave was promoted), only the one with the highest epoch is routed to.
//!
//! With a cluster token (`--cluster-token-file`), REGISTER_BROKER needs a LOGIN with
//! it: a stranger cannot register a fake broker. Routes are readable by anyone who
//! reaches the port (a name server holds no users); TLS (`--tls-cert`, `--tls-key`)
//! keeps them, and the token, off the wire.
//!
//! Traffic is a few frames per broker per interval, so connections get a thread each
//! (at most `MAX_CONNECTIONS`), with timeouts; frames are decoded as hostile input like
//! everywhere else.

use crate::error::{BrokerError, Refusal};
use keel_protocol::{
    BrokerRegistration, BrokerRoute, ErrorCode, Request, Response, DEFAULT_MAX_FRAME_BYTES,
};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Brokers, producers and consumers: many clients may share a NAT address, one stranger
/// cannot take every place.
const CAPS: keel_net::Caps = keel_net::Caps {
    max_connections: 1024,
    max_per_address: 256,
};
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

struct Entry {
    registration: BrokerRegistration,
    last_seen: Instant,
    /// When this name server first heard from it (kept across re-registrations).
    first_seen: Instant,
    /// Between its last two registrations.
    interval: Option<Duration>,
}

#[derive(Default)]
struct Table {
    /// By (broker name, client address).
    brokers: HashMap<(String, String), Entry>,
}

pub struct NameServer {
    table: Mutex<Table>,
    broker_timeout: Duration,
    connections: keel_net::Census,
    security: NodeSecurity,
}

/// A name server's or controller's TLS and cluster token.
#[derive(Debug, Clone)]
pub struct NodeSecurity {
    pub tls: Option<Arc<keel_security::rustls::ServerConfig>>,
    /// Checks the cluster token (mode `optional`: no users, anonymous reads).
    pub authority: Arc<keel_security::Authority>,
}

impl Default for NodeSecurity {
    fn default() -> NodeSecurity {
        NodeSecurity {
            tls: None,
            authority: Arc::new(keel_security::Authority::off()),
        }
    }
}

impl NameServer {
    pub fn new(broker_timeout: Duration) -> NameServer {
        NameServer::with_security(broker_timeout, NodeSecurity::default())
    }

    pub fn with_security(broker_timeout: Duration, security: NodeSecurity) -> NameServer {
        NameServer {
            table: Mutex::new(Table::default()),
            broker_timeout,
            connections: keel_net::Census::new(CAPS),
            security,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Records a registration, unless it is from a master that a newer one (a promoted
    /// slave, higher epoch) replaced: that one is told so and not recorded.
    fn register(&self, registration: BrokerRegistration) -> Result<(), Refusal> {
        let key = (
            registration.broker_name.clone(),
            registration.address.clone(),
        );
        let mut table = self.lock();
        self.expire(&mut table);
        if registration.role.is_master() {
            let newer = table.brokers.values().find(|entry| {
                let other = &entry.registration;
                other.broker_name == registration.broker_name
                    && other.address != registration.address
                    && other.role.is_master()
                    && other.epoch > registration.epoch
            });
            if let Some(newer) = newer {
                return Err(Refusal::new(
                    ErrorCode::NotMaster,
                    format!(
                        "{} has a newer master: {} at epoch {} (this one is at epoch {}); restart \
                     this broker as its slave",
                        registration.broker_name,
                        newer.registration.address,
                        newer.registration.epoch,
                        registration.epoch
                    ),
                ));
            }
        }
        let known = table
            .brokers
            .get(&key)
            .map(|entry| (entry.registration.role, entry.registration.epoch));
        if known != Some((registration.role, registration.epoch)) {
            log::info!(
                "broker {} at {} registered: {} (id {}, epoch {}, {} topics)",
                registration.broker_name,
                registration.address,
                registration.role,
                registration.broker_id,
                registration.epoch,
                registration.topics.len()
            );
        }
        let now = Instant::now();
        let (first_seen, interval) = match table.brokers.get(&key) {
            Some(entry) => (entry.first_seen, Some(now.duration_since(entry.last_seen))),
            None => (now, None),
        };
        table.brokers.insert(
            key,
            Entry {
                registration,
                last_seen: now,
                first_seen,
                interval,
            },
        );
        Ok(())
    }

    /// Drops brokers silent for longer than the timeout.
    fn expire(&self, table: &mut Table) {
        let timeout = self.broker_timeout;
        table.brokers.retain(|(name, address), entry| {
            let alive = entry.last_seen.elapsed() <= timeout;
            if !alive {
                log::warn!(
                    "broker {name} at {address} dropped: silent for more than {} ms",
                    timeout.as_millis()
                );
            }
            alive
        });
    }

    /// Every live broker, with the queue count of `topic` on each; per broker name only
    /// the master with the highest epoch, plus the slaves.
    pub fn routes(&self, topic: &str) -> Vec<BrokerRoute> {
        let mut table = self.lock();
        self.expire(&mut table);
        self.routes_in(&table, topic)
    }

    fn routes_in(&self, table: &Table, topic: &str) -> Vec<BrokerRoute> {
        let mut newest_master: HashMap<&str, u64> = HashMap::new();
        for entry in table.brokers.values() {
            let registration = &entry.registration;
            if registration.role.is_master() {
                let epoch = newest_master
                    .entry(registration.broker_name.as_str())
                    .or_insert(0);
                *epoch = (*epoch).max(registration.epoch);
            }
        }
        let mut routes: Vec<BrokerRoute> = table
            .brokers
            .values()
            .filter(|entry| {
                let registration = &entry.registration;
                let stale = registration.role.is_master()
                    && newest_master
                        .get(registration.broker_name.as_str())
                        .is_some_and(|newest| *newest > registration.epoch);
                if stale {
                    log::warn!(
                        "not routing to {} at {}: a master of epoch {} is newer than its {}",
                        registration.broker_name,
                        registration.address,
                        newest_master
                            .get(registration.broker_name.as_str())
                            .copied()
                            .unwrap_or(0),
                        registration.epoch
                    );
                }
                !stale
            })
            .map(|entry| {
                let registration = &entry.registration;
                BrokerRoute {
                    broker_name: registration.broker_name.clone(),
                    broker_id: registration.broker_id,
                    role: registration.role,
                    epoch: registration.epoch,
                    address: registration.address.clone(),
                    ha_address: registration.ha_address.clone(),
                    topic_queues: registration
                        .topics
                        .iter()
                        .find(|(name, _)| name == topic)
                        .map_or(0, |(_, queues)| *queues),
                }
            })
            .collect();
        routes.sort_by(|a, b| {
            (&a.broker_name, a.broker_id, &a.address).cmp(&(
                &b.broker_name,
                b.broker_id,
                &b.address,
            ))
        });
        routes
    }

    /// GET_BROKERS: every broker it knows, with when it last heard from each; a master
    /// a newer one of its broker name replaced is marked not routed.
    pub fn brokers(&self) -> Response {
        let mut table = self.lock();
        self.expire(&mut table);
        let routed: std::collections::HashSet<(String, String)> = self
            .routes_in(&table, "")
            .into_iter()
            .map(|route| (route.broker_name, route.address))
            .collect();
        let millis = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let mut brokers: Vec<keel_protocol::BrokerLiveness> = table
            .brokers
            .iter()
            .map(|(key, entry)| {
                let registration = &entry.registration;
                keel_protocol::BrokerLiveness {
                    broker_name: registration.broker_name.clone(),
                    broker_id: registration.broker_id,
                    role: registration.role,
                    epoch: registration.epoch,
                    address: registration.address.clone(),
                    ha_address: registration.ha_address.clone(),
                    since_heard_ms: millis(entry.last_seen.elapsed()),
                    interval_ms: entry.interval.map_or(0, millis),
                    known_for_ms: millis(entry.first_seen.elapsed()),
                    topic_count: u32::try_from(registration.topics.len()).unwrap_or(u32::MAX),
                    routed: routed.contains(key),
                }
            })
            .collect();
        brokers.sort_by(|a, b| {
            (&a.broker_name, a.broker_id, &a.address).cmp(&(
                &b.broker_name,
                b.broker_id,
                &b.address,
            ))
        });
        Response::Brokers {
            broker_timeout_ms: millis(self.broker_timeout),
            brokers,
        }
    }

    fn handle(
        &self,
        request: Request,
        peer: SocketAddr,
        secure: bool,
        cluster: &mut bool,
    ) -> Response {
        let authority = &self.security.authority;
        match request {
            Request::Ping => Response::Pong,
            Request::Login(keel_protocol::Login::Token(token)) => {
                match authority.login_token(keel_security::Port::NameServer, &token, peer.ip(), secure) {
                    Ok(principal) if principal.credential == keel_security::Credential::ClusterToken => {
                        *cluster = true;
                        Response::LoginOk(principal.name)
                    }
                    Ok(_) | Err(keel_security::LoginError::BadCredentials) => {
                        log::warn!("login refused from {peer}: not the cluster token");
                        Response::error(ErrorCode::AuthenticationFailed, "not the cluster token")
                    }
                    Err(error) => {
                        log::warn!("login refused from {peer}: {error}");
                        let code = match error {
                            keel_security::LoginError::NeedsTls => ErrorCode::TlsRequired,
                            _ => ErrorCode::TooManyLoginFailures,
                        };
                        Response::error(code, error.to_string())
                    }
                }
            }
            Request::Login(keel_protocol::Login::Password { .. }) => Response::error(
                ErrorCode::AuthenticationFailed,
                "a name server holds no users: log in with the cluster token",
            ),
            Request::RegisterBroker(_) if authority.has_cluster_token() && !*cluster => {
                log::warn!("refused a registration from {peer}: no login with the cluster token");
                Response::error(
                    ErrorCode::PermissionDenied,
                    "REGISTER_BROKER needs a LOGIN with the cluster token (cluster:register)",
                )
            }
            Request::RegisterBroker(registration) => {
                if registration.broker_name.is_empty() || registration.address.is_empty() {
                    return Response::error(
                        ErrorCode::InvalidArgument,
                        "a registration needs a broker name and an address",
                    );
                }
                match self.register(registration) {
                    Ok(()) => Response::Registered,
                    Err(refusal) => refusal.response(),
                }
            }
            Request::GetRoutes(topic) => Response::Routes(self.routes(&topic)),
            Request::GetBrokers => self.brokers(),
            other => Response::error(
                ErrorCode::InvalidArgument,
                format!(
                    "{} is for a broker; a name server answers PING, REGISTER_BROKER, GET_ROUTES and GET_BROKERS",
                    other.kind().name()
                ),
            ),
        }
    }

    /// Serves one connection until it closes; a frame that does not decode is answered
    /// with an error and ends it (`InvalidData`).
    fn serve(&self, socket: TcpStream) -> std::io::Result<()> {
        let invalid = |detail: String| std::io::Error::new(std::io::ErrorKind::InvalidData, detail);
        // 10 s for the TLS handshake, then the idle timeout.
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        socket.set_write_timeout(Some(Duration::from_secs(10)))?;
        let peer = socket.peer_addr()?;
        let stream = match accept_tls(socket, self.security.tls.as_ref())? {
            Some(stream) => stream,
            None => return Ok(()),
        };
        stream.socket().set_read_timeout(Some(IDLE_TIMEOUT))?;
        let secure = keel_net::is_secure(peer.ip(), stream.is_tls());
        let mut stream = &stream;
        let mut cluster = false;
        let mut reader = keel_net::framed::FrameReader::new();
        loop {
            // With a cluster token, only small frames before its LOGIN (routes are
            // asked with a few bytes; a registration comes after the login).
            let max = match self.security.authority.has_cluster_token() && !cluster {
                true => keel_net::PreLogin::DEFAULT.max_frame_bytes,
                false => DEFAULT_MAX_FRAME_BYTES,
            };
            let frame = match reader.next(stream, max)? {
                keel_net::framed::Next::Frame(frame) => frame,
                keel_net::framed::Next::Closed => return Ok(()),
                keel_net::framed::Next::Bad(error) => {
                    let response =
                        Response::error(ErrorCode::MalformedFrame, format!("bad frame: {error}"));
                    let mut out = Vec::new();
                    response.encode(0, &mut out);
                    let _ = stream.write_all(&out);
                    return Err(invalid(format!("bad frame: {error}")));
                }
            };
            let response = match Request::decode(&frame) {
                Ok(request) => self.handle(request, peer, secure, &mut cluster),
                Err(error) => {
                    let response = Response::error(
                        ErrorCode::MalformedFrame,
                        format!("bad {} body: {error}", frame.kind.name()),
                    );
                    let mut out = Vec::new();
                    response.encode(frame.request_id, &mut out);
                    let _ = stream.write_all(&out);
                    return Err(invalid(format!("bad {} body: {error}", frame.kind.name())));
                }
            };
            // An error whose code closes the connection (a failed login, TLS required)
            // closes it here too, after its answer, as on a broker's port.
            let closes =
                matches!(&response, Response::Error(error) if error.code.closes_connection());
            // ONEWAY means something on SEND and SEND_BATCH only, which a name server
            // does not take: every request is answered.
            let mut out = Vec::new();
            response.encode(frame.request_id, &mut out);
            stream.write_all(&out)?;
            if closes {
                linger(stream);
                return Ok(());
            }
        }
    }
}

/// Before closing after an error: stop writing, then read and drop what the peer still
/// sends (at most 64 KiB, for at most 2 s), so that the close does not reset the
/// connection and destroy the ERROR before the peer reads it.
fn linger(stream: &keel_security::Stream) {
    let socket = stream.socket();
    let _ = socket.shutdown(std::net::Shutdown::Write);
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(2);
    let (mut dropped, mut chunk) = (0usize, [0u8; 4096]);
    let mut reader = socket;
    while dropped < 64 * 1024 && Instant::now() < deadline {
        match reader.read(&mut chunk) {
            Ok(0) => return,
            Ok(count) => dropped += count,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

/// TLS over `socket` when `tls` is given. Plaintext on a TLS port is answered with a
/// plaintext TLS_REQUIRED error (`None`: the connection is done).
pub fn accept_tls(
    socket: TcpStream,
    tls: Option<&Arc<keel_security::rustls::ServerConfig>>,
) -> std::io::Result<Option<keel_security::Stream>> {
    let Some(config) = tls else {
        return Ok(Some(keel_security::Stream::Plain(socket)));
    };
    let mut first = [0u8; 1];
    if socket.peek(&mut first)? == 1 && first[0] != keel_security::TLS_HANDSHAKE_BYTE {
        let mut out = Vec::new();
        Response::error(ErrorCode::TlsRequired, "this port speaks TLS only").encode(0, &mut out);
        let mut socket = socket;
        let _ = socket.write_all(&out);
        return Ok(None);
    }
    keel_security::TlsStream::server(socket, config.clone())
        .map(|tls| Some(keel_security::Stream::Tls(Box::new(tls))))
}

/// Runs a name server on `listen` until the process is stopped.
pub fn run(
    listen: SocketAddr,
    broker_timeout: Duration,
    security: NodeSecurity,
) -> Result<(), BrokerError> {
    let listen_error = |source| BrokerError::Listen {
        address: listen,
        source,
    };
    let listener = TcpListener::bind(listen).map_err(listen_error)?;
    let address = listener.local_addr().map_err(listen_error)?;
    let server = Arc::new(NameServer::with_security(broker_timeout, security));
    log::info!(
        "name server on {address}; brokers are dropped after {} ms of silence",
        broker_timeout.as_millis()
    );
    println!("keeld namesrv listening on {address}");
    let _ = std::io::stdout().flush();
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                log::warn!("accept failed: {error}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let peer = stream.peer_addr().ok();
        let admitted = peer.map(|peer| server.connections.admit(peer.ip()));
        let ticket = match admitted {
            Some(Ok(ticket)) => ticket,
            Some(Err(refused)) => {
                log::warn!("refusing a name server connection from {peer:?}: {refused}");
                let mut out = Vec::new();
                let message = format!("name server connection limit: {refused}");
                Response::error(ErrorCode::TooManyConnections, &message).encode(0, &mut out);
                let mut stream = stream;
                let _ = stream.write_all(&out);
                continue;
            }
            None => continue,
        };
        let serving = server.clone();
        let spawned = std::thread::Builder::new()
            .name("keel-namesrv-conn".into())
            .spawn(move || {
                if let Err(error) = serving.serve(stream) {
                    if error.kind() == std::io::ErrorKind::InvalidData {
                        log::warn!("name server connection {peer:?}: {error}");
                    } else {
                        log::debug!("name server connection {peer:?}: {error}");
                    }
                }
                drop(ticket);
            });
        if let Err(error) = spawned {
            log::error!("cannot start a connection thread: {error}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_protocol::BrokerRole;

    fn registration(name: &str, address: &str, role: BrokerRole, epoch: u64) -> BrokerRegistration {
        BrokerRegistration {
            broker_name: name.into(),
            broker_id: u32::from(role == BrokerRole::Slave),
            role,
            epoch,
            address: address.into(),
            ha_address: String::new(),
            topics: vec![("orders".into(), 8)],
        }
    }

    #[test]
    fn routes_prefer_the_newest_master_and_forget_silent_brokers() {
        let server = NameServer::new(Duration::from_millis(200));
        server
            .register(registration("a", "h:1", BrokerRole::SyncMaster, 1))
            .unwrap();
        server
            .register(registration("a", "h:2", BrokerRole::Slave, 1))
            .unwrap();
        server
            .register(registration("b", "h:3", BrokerRole::SyncMaster, 1))
            .unwrap();
        let routes = server.routes("orders");
        assert_eq!(routes.len(), 3);
        assert!(routes.iter().all(|route| route.topic_queues == 8));
        assert_eq!(server.routes("other")[0].topic_queues, 0);

        // The slave of "a" was promoted (epoch 3); the old master registers again at
        // epoch 1: refused, and only the newer master is routed.
        server
            .register(registration("a", "h:2", BrokerRole::AsyncMaster, 3))
            .unwrap();
        let refused = server.register(registration("a", "h:1", BrokerRole::SyncMaster, 1));
        assert!(refused.unwrap_err().message.contains("newer master"));
        let masters: Vec<_> = server
            .routes("orders")
            .into_iter()
            .filter(|route| route.broker_name == "a")
            .map(|route| route.address)
            .collect();
        assert_eq!(masters, vec!["h:2".to_string()]);

        std::thread::sleep(Duration::from_millis(250));
        server
            .register(registration("b", "h:3", BrokerRole::SyncMaster, 1))
            .unwrap();
        let left: Vec<_> = server
            .routes("orders")
            .into_iter()
            .map(|r| r.address)
            .collect();
        assert_eq!(left, vec!["h:3".to_string()]);
    }
}
