//! Users, tokens and permissions of one broker: checked on every login and request,
//! changed by authorized admin requests, persisted atomically, replicated to slaves.
//!
//! Passwords are stored as Argon2id hashes (PHC strings); tokens are 256 random bits
//! of which only a SHA-256 is stored (a fast hash is right for a random secret: there
//! is nothing to guess). Both checks are slow or constant-time, so callers run logins
//! off their event loop.

use crate::acl::{permits, AclEntry, Action, Effect, ResourceType, ANONYMOUS};
use crate::error::SecurityError;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// The file, in the data directory, that holds a broker's security state.
pub const SECURITY_FILE: &str = "security.json";
/// The principal of the cluster token: brokers, name servers and controllers.
pub const CLUSTER: &str = "cluster";
/// Failed logins from one address within `FAILURE_WINDOW` before it is refused
/// without a check until the window ends.
pub const FAILURES_ALLOWED: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);
const FAILURE_TABLE_MAX: usize = 10_000;
const TOKEN_PREFIX: &str = "keel_";

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

/// A secret that never prints (logs, `Debug`, error messages).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct User {
    password_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Token {
    name: String,
    /// SHA-256 of the whole token, hex.
    hash: String,
    created_ms: u64,
}

/// Everything persisted and replicated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityState {
    /// Moves by one with every change.
    pub version: u64,
    users: BTreeMap<String, User>,
    tokens: BTreeMap<String, Token>,
    acls: Vec<AclEntry>,
}

/// An admin request on users, tokens or permissions (the body of SECURITY_ADMIN).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SecurityCommand {
    UserAdd { name: String, password: Secret },
    UserPasswd { name: String, password: Secret },
    UserRemove { name: String },
    UserList,
    TokenCreate { name: String },
    TokenRevoke { id: String },
    TokenList,
    AclGrant { entry: AclEntry },
    AclRevoke { entry: AclEntry },
    AclList,
}

impl SecurityCommand {
    pub fn from_json(json: &str) -> Result<SecurityCommand, String> {
        serde_json::from_str(json).map_err(|e| format!("bad SECURITY_ADMIN command: {e}"))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn changes_state(&self) -> bool {
        !matches!(
            self,
            SecurityCommand::UserList | SecurityCommand::TokenList | SecurityCommand::AclList
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub created_ms: u64,
}

/// The answer to a `SecurityCommand` (the body of SECURITY_RESULT).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityReply {
    /// What was done, for people.
    pub done: String,
    /// The state's version after the command.
    pub version: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acls: Vec<AclEntry>,
    /// A token just created: shown this once, stored only as a hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
}

impl SecurityReply {
    pub fn from_json(json: &str) -> Result<SecurityReply, String> {
        serde_json::from_str(json).map_err(|e| format!("bad SECURITY_RESULT: {e}"))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random_bytes<const N: usize>() -> Result<[u8; N], SecurityError> {
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| {
            SecurityError::Crypto("the system's random number generator failed".to_string())
        })?;
    Ok(out)
}

/// Checks a user or token name: 1 to 64 of `[A-Za-z0-9_.@-]`, and not one the broker
/// gives a meaning (`*`, `anonymous`, `cluster`).
pub fn validate_name(name: &str) -> Result<(), SecurityError> {
    if name.is_empty() || name.len() > 64 {
        return Err(SecurityError::Invalid(format!(
            "name {name:?} must be 1 to 64 bytes"
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
    {
        return Err(SecurityError::Invalid(format!(
            "name {name:?} may hold only A-Z a-z 0-9 _ . @ -"
        )));
    }
    if name == ANONYMOUS || name == CLUSTER {
        return Err(SecurityError::Invalid(format!("{name:?} is reserved")));
    }
    Ok(())
}

fn validate_password(password: &Secret) -> Result<(), SecurityError> {
    let length = password.0.chars().count();
    if !(8..=1024).contains(&length) {
        let detail = "a password must be 8 to 1024 characters";
        return Err(SecurityError::Invalid(detail.into()));
    }
    Ok(())
}

/// An Argon2id PHC string for `password`, with a random salt.
pub fn hash_password(password: &str) -> Result<String, SecurityError> {
    let salt_bytes: [u8; 16] = random_bytes()?;
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|e| SecurityError::Crypto(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| SecurityError::Crypto(format!("hashing the password: {e}")))
}

fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of a password nobody has, checked for unknown users so a wrong name costs
/// as long as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password, never valid").unwrap_or_default())
}

/// The id part of a `keel_<id>_<secret>` token.
fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && secret.len() == 64).then_some(id)
}

impl SecurityState {
    fn check(&self) -> Result<(), SecurityError> {
        for name in self.users.keys() {
            validate_name(name)?;
        }
        for (id, token) in &self.tokens {
            validate_name(&token.name)?;
            if id.len() != 16 || token.hash.len() != 64 {
                return Err(SecurityError::Invalid(format!("token {id:?} is malformed")));
            }
        }
        for entry in &self.acls {
            entry.validate().map_err(SecurityError::Invalid)?;
        }
        Ok(())
    }

    fn apply(&mut self, command: SecurityCommand) -> Result<SecurityReply, SecurityError> {
        let mut reply = SecurityReply::default();
        match command {
            SecurityCommand::UserAdd { name, password } => {
                validate_name(&name)?;
                validate_password(&password)?;
                if self.users.contains_key(&name) {
                    let detail = format!("user {name:?} exists (use passwd to change it)");
                    return Err(SecurityError::Exists(detail));
                }
                let password_hash = hash_password(&password.0)?;
                self.users.insert(name.clone(), User { password_hash });
                reply.done = format!("user {name} added");
            }
            SecurityCommand::UserPasswd { name, password } => {
                validate_password(&password)?;
                let user = self
                    .users
                    .get_mut(&name)
                    .ok_or_else(|| SecurityError::NotFound(format!("no user {name:?}")))?;
                user.password_hash = hash_password(&password.0)?;
                reply.done = format!("password of {name} changed");
            }
            SecurityCommand::UserRemove { name } => {
                self.users
                    .remove(&name)
                    .ok_or_else(|| SecurityError::NotFound(format!("no user {name:?}")))?;
                reply.done = format!("user {name} removed (its permissions stay until revoked)");
            }
            SecurityCommand::TokenCreate { name } => {
                validate_name(&name)?;
                let id = hex(&random_bytes::<8>()?);
                let secret = hex(&random_bytes::<32>()?);
                let token = format!("{TOKEN_PREFIX}{id}_{secret}");
                self.tokens.insert(
                    id.clone(),
                    Token {
                        name: name.clone(),
                        hash: hex(&sha256(token.as_bytes())),
                        created_ms: now_ms(),
                    },
                );
                reply.done = format!("token {id} created for {name}");
                reply.token = Some(Secret(token));
                reply.token_id = Some(id);
            }
            SecurityCommand::TokenRevoke { id } => {
                let token = self
                    .tokens
                    .remove(&id)
                    .ok_or_else(|| SecurityError::NotFound(format!("no token {id:?}")))?;
                reply.done = format!("token {id} of {} revoked", token.name);
            }
            SecurityCommand::AclGrant { entry } => {
                entry.validate().map_err(SecurityError::Invalid)?;
                if self.acls.contains(&entry) {
                    reply.done = format!("already granted: {entry}");
                } else {
                    reply.done = format!("granted: {entry}");
                    self.acls.push(entry);
                }
            }
            SecurityCommand::AclRevoke { entry } => {
                let before = self.acls.len();
                self.acls.retain(|existing| *existing != entry);
                if self.acls.len() == before {
                    return Err(SecurityError::NotFound(format!("no such entry: {entry}")));
                }
                reply.done = format!("revoked: {entry}");
            }
            SecurityCommand::UserList | SecurityCommand::TokenList | SecurityCommand::AclList => {}
        }
        Ok(reply)
    }

    fn listing(&self, command: &SecurityCommand, reply: &mut SecurityReply) {
        match command {
            SecurityCommand::UserList => {
                reply.users = self.users.keys().cloned().collect();
                reply.done = format!("{} users", reply.users.len());
            }
            SecurityCommand::TokenList => {
                reply.tokens = self
                    .tokens
                    .iter()
                    .map(|(id, token)| TokenInfo {
                        id: id.clone(),
                        name: token.name.clone(),
                        created_ms: token.created_ms,
                    })
                    .collect();
                reply.done = format!("{} tokens", reply.tokens.len());
            }
            SecurityCommand::AclList => {
                reply.acls = self.acls.clone();
                reply.done = format!("{} entries", reply.acls.len());
            }
            _ => {}
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
