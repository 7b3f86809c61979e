//! The security state: users (Argon2id password hashes), service tokens (SHA-256 of
//! each) and permission entries; the admin commands that change it and their replies;
//! and the checks of names, passwords and tokens. `authority.rs` serves it (logins,
//! permissions, persistence).

use crate::acl::{AclEntry, ANONYMOUS};
use crate::error::SecurityError;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// The principal of the cluster token: brokers, name servers and controllers.
pub const CLUSTER: &str = "cluster";
pub(crate) const TOKEN_PREFIX: &str = "keel_";

/// A secret that never prints (logs, `Debug`, error messages).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct User {
    pub(crate) password_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Token {
    pub(crate) name: String,
    /// SHA-256 of the whole token, hex.
    pub(crate) hash: String,
    pub(crate) created_ms: u64,
}

/// Everything persisted and replicated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityState {
    /// Moves by one with every change.
    pub version: u64,
    pub(crate) users: BTreeMap<String, User>,
    pub(crate) tokens: BTreeMap<String, Token>,
    pub(crate) acls: Vec<AclEntry>,
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

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], SecurityError> {
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

pub(crate) fn validate_password(password: &Secret) -> Result<(), SecurityError> {
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

pub(crate) fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of a password nobody has, checked for unknown users so a wrong name costs
/// as long as a wrong password.
pub(crate) fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password, never valid").unwrap_or_default())
}

/// The id part of a `keel_<id>_<secret>` token.
pub(crate) fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && secret.len() == 64).then_some(id)
}

impl SecurityState {
    pub(crate) fn check(&self) -> Result<(), SecurityError> {
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

    pub(crate) fn apply(
        &mut self,
        command: SecurityCommand,
    ) -> Result<SecurityReply, SecurityError> {
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

    pub(crate) fn listing(&self, command: &SecurityCommand, reply: &mut SecurityReply) {
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
