//! keel's network layer: what every component that talks over TCP shares, so that each
//! rule is written once.
//!
//! - [`channel`]: the one secure-channel rule (TLS, or a loopback peer), on canonical
//!   addresses, so an IPv4 peer on a dual-stack listener is judged as itself.
//! - [`gate`]: the limits a connection lives under before it logs in (frame size, time
//!   to log in), one set of defaults that each listener configures.
//! - [`dial`]: connect with a deadline, TLS when configured, and the address named in
//!   every error.
//! - [`call`]: one keel request and its reply on a fresh blocking connection, after a
//!   LOGIN with the cluster token (name-server registration, the console's lookups).
//! - [`framed`]: keel frames from a blocking stream (the name server, `call`, the client
//!   library).
//! - [`nonblocking`]: keel frames on a non-blocking socket with optional TLS, the
//!   first-byte plaintext/TLS check and per-turn read budgets (the broker's event loop).
//! - [`envelope`]: the checksummed frames of the HA stream and the controller port on a
//!   blocking socket (the codec is `keel_protocol::envelope`).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod call;
pub mod channel;
pub mod dial;
pub mod envelope;
pub mod framed;
pub mod gate;
pub mod nonblocking;

pub use call::call;
pub use channel::{canonical_ip, is_secure};
pub use dial::{connect, Dial};
pub use gate::{Caps, Census, PreLogin, Refused, Ticket};
