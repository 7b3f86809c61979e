//! Security for keel: TLS (rustls, `ring` provider), users with Argon2id password
//! hashes, service tokens, and per-resource permissions.
//!
//! Nothing here is hand-written cryptography: TLS is rustls, password hashing is the
//! `argon2` crate, token hashing and randomness come from `ring`, compares from
//! `subtle`.

pub mod acl;
pub mod authority;
mod error;
pub mod files;
pub mod state;
pub mod tls;
pub mod validity;

pub use acl::{permits, AclEntry, Action, Effect, ResourceType, ANONYMOUS};
pub use authority::{AuthMode, Authority, Credential, LoginError, Port, Principal, SECURITY_FILE};
pub use error::SecurityError;
pub use files::write_atomically;
pub use rustls;
pub use state::{
    hash_password, validate_name, Secret, SecurityCommand, SecurityReply, SecurityState, TokenInfo,
    CLUSTER,
};
pub use tls::{
    could_be_tls, is_tls_client_hello, read_secret_file, tls_error, ClientTls, ServerTls, Stream,
    TlsStream, TLS_HANDSHAKE_BYTE,
};
