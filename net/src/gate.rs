//! What a connection may do before it logs in. One set of limits with one set of
//! defaults; each listener takes them from its configuration or keeps the defaults.

use std::time::Duration;

/// The limits of a connection that has not logged in yet (when its listener requires a
/// login).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreLogin {
    /// The largest frame accepted before the login (a LOGIN, a route lookup); a larger
    /// length prefix closes the connection before its body is read.
    pub max_frame_bytes: u32,
    /// How long a connection may stay without logging in.
    pub login_timeout: Duration,
}

impl PreLogin {
    /// The defaults of every listener (`pre_auth_max_frame_bytes`, `login_timeout_ms`).
    pub const DEFAULT: PreLogin = PreLogin {
        max_frame_bytes: 4096,
        login_timeout: Duration::from_secs(10),
    };
}

impl Default for PreLogin {
    fn default() -> Self {
        PreLogin::DEFAULT
    }
}
