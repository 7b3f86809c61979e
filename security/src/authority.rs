//! Users, tokens and permissions of one broker: checked on every login and request,
//! changed by authorized admin requests, persisted atomically, replicated to slaves.
//!
//! Passwords are stored as Argon2id hashes (PHC strings); tokens are 256 random bits
//! of which only a SHA-256 is stored (a fast hash is right for a random secret: there
//! is nothing to guess). Both checks are slow or constant-time, so callers run logins
//! off their event loop.

use crate::acl::{permits, AclEntry, Action, Effect, ResourceType, ANONYMOUS};
use crate::error::SecurityError;
use crate::state::{
    decoy_hash, hex, sha256, token_id, verify_password, SecurityCommand, SecurityReply,
    SecurityState, CLUSTER,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The file, in the data directory, that holds a broker's security state.
pub const SECURITY_FILE: &str = "security.json";
/// Failed logins from one address within `FAILURE_WINDOW` before it is refused
/// without a check until the window ends.
pub const FAILURES_ALLOWED: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);
const FAILURE_TABLE_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No logins needed; every connection may do everything (loopback development).
    Off,
    /// Logins possible; connections that did not log in are the `anonymous` principal.
    Optional,
    /// Nothing but LOGIN and PING before a login succeeds.
    Required,
}

impl AuthMode {
    pub fn name(self) -> &'static str {
        match self {
            AuthMode::Off => "off",
            AuthMode::Optional => "optional",
            AuthMode::Required => "required",
        }
    }
}

/// How a connection proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `auth = "off"`: no identity, every permission.
    Unrestricted,
    /// `auth = "optional"` without a login.
    Anonymous,
    /// `stamp`: the password hash it was checked against (a new password, or the user
    /// removed and added again, ends the sessions of the old one).
    Password {
        user: String,
        stamp: String,
    },
    Token {
        id: String,
    },
    /// The cluster token every node of the cluster shares.
    ClusterToken,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub credential: Credential,
}

impl Principal {
    pub fn unrestricted() -> Principal {
        Principal {
            name: "*".into(),
            credential: Credential::Unrestricted,
        }
    }

    pub fn anonymous() -> Principal {
        Principal {
            name: ANONYMOUS.into(),
            credential: Credential::Anonymous,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// Wrong password, unknown user, unknown or revoked token: one answer for all, so
    /// a caller cannot tell which names exist.
    BadCredentials,
    /// Too many failures from this address lately.
    RateLimited { retry_after: Duration },
    /// A password over plaintext from another host.
    NeedsTls,
}

impl fmt::Display for LoginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginError::BadCredentials => f.write_str("unknown user or token, or wrong password"),
            LoginError::RateLimited { retry_after } => write!(
                f,
                "more than {FAILURES_ALLOWED} failed logins from this address in {} s; \
                 retry in {} ms",
                FAILURE_WINDOW.as_secs(),
                retry_after.as_millis()
            ),
            LoginError::NeedsTls => f.write_str(
                "passwords are accepted only over TLS or from loopback; use TLS or a token",
            ),
        }
    }
}

/// The listener a login arrives on: failed logins are limited per address on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    /// The client port (LOGIN frames).
    Client,
    /// The console and `/metrics` (Authorization: Bearer).
    Console,
    /// A master's HA port (a slave's AUTH).
    Ha,
    NameServer,
    Controller,
}

pub struct Authority {
    mode: AuthMode,
    /// Where `path` lives: the real disk, or a simulated one in the crash sweep.
    disk: Arc<dyn keel_disk::Disk>,
    path: Option<PathBuf>,
    state: RwLock<Arc<SecurityState>>,
    /// SHA-256 of the cluster token, when this node has one.
    cluster_token: Option<[u8; 32]>,
    failures: Mutex<HashMap<(Port, IpAddr), (u32, Instant)>>,
    /// Serializes changes (each one hashes, writes and renames the file).
    changing: Mutex<()>,
    /// Moves with every change of the state here, installed ones included (whose
    /// version may repeat): logged-in connections re-check their credential when it
    /// moved.
    generation: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("mode", &self.mode)
            .field("path", &self.path)
            .field("version", &self.version())
            .finish()
    }
}

impl Authority {
    /// Loads the state at `path` (none yet: empty). A file that does not parse or holds
    /// entries that do not validate is an error: a broker must not start with fewer
    /// rules than it was given.
    pub fn open(
        mode: AuthMode,
        path: Option<PathBuf>,
        cluster_token: Option<&str>,
    ) -> Result<Authority, SecurityError> {
        Authority::open_on(Arc::new(keel_disk::RealDisk), mode, path, cluster_token)
    }

    /// `open` with the state file on `disk`.
    pub fn open_on(
        disk: Arc<dyn keel_disk::Disk>,
        mode: AuthMode,
        path: Option<PathBuf>,
        cluster_token: Option<&str>,
    ) -> Result<Authority, SecurityError> {
        let read = |path: &std::path::Path| {
            let file = disk.open(path, keel_disk::OpenMode::Read)?;
            keel_disk::read_all(file.as_ref())
        };
        let state = match &path {
            Some(path) => match read(path) {
                Ok(bytes) => {
                    let state: SecurityState = serde_json::from_slice(&bytes)
                        .map_err(|e| SecurityError::Invalid(format!("{}: {e}", path.display())))?;
                    state
                        .check()
                        .map_err(|e| SecurityError::Invalid(format!("{}: {e}", path.display())))?;
                    state
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    SecurityState::default()
                }
                Err(error) => {
                    let detail = format!("{}: {error}", path.display());
                    return Err(SecurityError::Persist(detail));
                }
            },
            None => SecurityState::default(),
        };
        Ok(Authority {
            mode,
            disk,
            path,
            state: RwLock::new(Arc::new(state)),
            cluster_token: cluster_token.map(|token| sha256(token.trim().as_bytes())),
            failures: Mutex::new(HashMap::new()),
            changing: Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// No logins, everything allowed (tests, tools).
    pub fn off() -> Authority {
        Authority {
            mode: AuthMode::Off,
            disk: Arc::new(keel_disk::RealDisk),
            path: None,
            state: RwLock::new(Arc::default()),
            cluster_token: None,
            failures: Mutex::new(HashMap::new()),
            changing: Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    pub fn has_cluster_token(&self) -> bool {
        self.cluster_token.is_some()
    }

    fn current(&self) -> Arc<SecurityState> {
        self.state
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    pub fn version(&self) -> u64 {
        self.current().version
    }

    /// Moves with every change (see `still_valid`); read it before a login is checked.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn swap(&self, state: SecurityState) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(state);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The principal of a connection that has not logged in: `None` when it must.
    pub fn initial_principal(&self) -> Option<Principal> {
        match self.mode {
            AuthMode::Off => Some(Principal::unrestricted()),
            AuthMode::Optional => Some(Principal::anonymous()),
            AuthMode::Required => None,
        }
    }

    fn rate_check(&self, port: Port, peer: IpAddr) -> Result<(), LoginError> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((count, since)) = failures.get(&(port, peer)) {
            let elapsed = since.elapsed();
            if *count >= FAILURES_ALLOWED && elapsed < FAILURE_WINDOW {
                return Err(LoginError::RateLimited {
                    retry_after: FAILURE_WINDOW - elapsed,
                });
            }
        }
        Ok(())
    }

    fn record_failure(&self, port: Port, peer: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= FAILURE_TABLE_MAX {
            failures.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        if failures.len() >= FAILURE_TABLE_MAX {
            // Still full of fresh failures: forget the table rather than grow it.
            failures.clear();
        }
        let entry = failures.entry((port, peer)).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    fn outcome(
        &self,
        port: Port,
        peer: IpAddr,
        result: Option<Principal>,
    ) -> Result<Principal, LoginError> {
        match result {
            Some(principal) => Ok(principal),
            None => {
                self.record_failure(port, peer);
                Err(LoginError::BadCredentials)
            }
        }
    }

    /// Checks a user's password (slow: Argon2id). `secure` says the bytes came over TLS
    /// or from loopback.
    pub fn login_password(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
        secure: bool,
    ) -> Result<Principal, LoginError> {
        if !secure {
            return Err(LoginError::NeedsTls);
        }
        let port = Port::Client;
        self.rate_check(port, peer)?;
        let state = self.current();
        let (hash, known) = match state.users.get(user) {
            Some(stored) => (stored.password_hash.as_str(), true),
            None => (decoy_hash(), false),
        };
        let valid = verify_password(hash, password) && known;
        self.outcome(
            port,
            peer,
            valid.then(|| Principal {
                name: user.to_string(),
                credential: Credential::Password {
                    user: user.to_string(),
                    stamp: hash.to_string(),
                },
            }),
        )
    }

    /// Checks a service token, or the cluster token (constant-time compares of hashes).
    /// A token is 256 random bits, so a right one is taken even from an address whose
    /// failures are being limited (brokers behind one NAT with a guesser stay in).
    /// `secure`: over TLS or from loopback (a bearer secret over plaintext from
    /// another host is refused). Failures are limited per address and per `port`: bad
    /// tokens shown to the console do not lock password logins out of the client port.
    pub fn login_token(
        &self,
        port: Port,
        token: &str,
        peer: IpAddr,
        secure: bool,
    ) -> Result<Principal, LoginError> {
        if !secure {
            return Err(LoginError::NeedsTls);
        }
        let hash = sha256(token.trim().as_bytes());
        if let Some(cluster) = &self.cluster_token {
            if bool::from(cluster.ct_eq(&hash)) {
                return Ok(Principal {
                    name: CLUSTER.into(),
                    credential: Credential::ClusterToken,
                });
            }
        }
        let state = self.current();
        let found = token_id(token.trim()).and_then(|id| {
            let stored = state.tokens.get(id)?;
            let equal = stored.hash.as_bytes().ct_eq(hex(&hash).as_bytes());
            bool::from(equal).then(|| Principal {
                name: stored.name.clone(),
                credential: Credential::Token { id: id.to_string() },
            })
        });
        if found.is_none() {
            self.rate_check(port, peer)?;
        }
        self.outcome(port, peer, found)
    }

    /// Whether the credential a connection logged in with still exists (a revoked
    /// token or a removed user ends its connections at their next request).
    pub fn still_valid(&self, principal: &Principal) -> bool {
        let state = self.current();
        match &principal.credential {
            Credential::Password { user, stamp } => state
                .users
                .get(user)
                .is_some_and(|stored| stored.password_hash == *stamp),
            Credential::Token { id } => state.tokens.contains_key(id),
            Credential::Unrestricted | Credential::Anonymous | Credential::ClusterToken => true,
        }
    }

    /// Whether `principal` may do `action` to a resource. The cluster token holds every
    /// cluster permission; with `auth = "off"` everything is allowed.
    pub fn permits(
        &self,
        principal: &Principal,
        resource: ResourceType,
        name: &str,
        action: Action,
    ) -> bool {
        match principal.credential {
            Credential::Unrestricted => true,
            Credential::ClusterToken if resource == ResourceType::Cluster => true,
            _ => permits(
                &self.current().acls,
                &principal.name,
                resource,
                name,
                action,
            ),
        }
    }

    /// Carries out an admin command (slow when it hashes a password); a change is
    /// persisted before it is answered.
    pub fn apply(&self, command: SecurityCommand) -> Result<SecurityReply, SecurityError> {
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current();
        if !command.changes_state() {
            let mut reply = SecurityReply {
                version: current.version,
                ..SecurityReply::default()
            };
            current.listing(&command, &mut reply);
            return Ok(reply);
        }
        let mut next = (*current).clone();
        let mut reply = next.apply(command)?;
        if next == *current {
            // Nothing changed (an entry granted again): no new version, nothing written.
            reply.version = current.version;
            return Ok(reply);
        }
        next.version = current.version.saturating_add(1);
        reply.version = next.version;
        self.persist(&next)?;
        self.swap(next);
        Ok(reply)
    }

    fn persist(&self, state: &SecurityState) -> Result<(), SecurityError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| SecurityError::Persist(format!("encoding: {e}")))?;
        keel_disk::replace_atomically(self.disk.as_ref(), path, &bytes)
            .map_err(|e| SecurityError::Persist(format!("writing {}: {e}", path.display())))
    }

    /// The whole state as JSON, for a slave.
    pub fn snapshot(&self) -> (u64, Vec<u8>) {
        let state = self.current();
        (
            state.version,
            serde_json::to_vec(&*state).unwrap_or_default(),
        )
    }

    /// Takes the master's state as this broker's own (a slave): persisted first.
    /// Returns whether anything changed.
    pub fn install(&self, bytes: &[u8]) -> Result<bool, SecurityError> {
        let state: SecurityState = serde_json::from_slice(bytes)
            .map_err(|e| SecurityError::Invalid(format!("the master's security state: {e}")))?;
        state.check()?;
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        if *self.current() == state {
            return Ok(false);
        }
        self.persist(&state)?;
        self.swap(state);
        Ok(true)
    }

    /// Gives `name` every permission (the first operator, created on the broker's host).
    pub fn grant_everything(&self, name: &str) -> Result<SecurityReply, SecurityError> {
        let mut last = SecurityReply::default();
        for resource in ResourceType::ALL {
            last = self.apply(SecurityCommand::AclGrant {
                entry: AclEntry {
                    principal: name.to_string(),
                    effect: Effect::Allow,
                    resource,
                    pattern: "*".into(),
                    actions: vec![Action::All],
                },
            })?;
        }
        Ok(last)
    }
}

#[cfg(test)]
mod tests;
