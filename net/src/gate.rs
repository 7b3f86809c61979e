//! The limits every listener applies, one set of types with one set of defaults that
//! each listener configures: what a connection may do before it logs in
//! ([`PreLogin`]), and how many connections it holds in all and per address
//! ([`Caps`], counted by a [`Census`]).

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

/// How many connections a listener holds at once: in all, and from one address (0: no
/// limit per address). Every listener counts its connections with a [`Census`] of its
/// own caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max_connections: usize,
    pub max_per_address: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds `max_connections` already.
    Full(usize),
    /// The address holds `max_per_address` already.
    AddressFull(usize),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Full(limit) => write!(f, "{limit} connections open, the most allowed"),
            Refused::AddressFull(limit) => {
                write!(
                    f,
                    "{limit} connections open from this address, the most allowed"
                )
            }
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// The open connections of one listener, in all and per address. A connection counts
/// while its [`Ticket`] lives, so no path that drops a connection can forget to give
/// its place back.
#[derive(Debug, Clone)]
pub struct Census {
    caps: Caps,
    counts: std::sync::Arc<std::sync::Mutex<Counts>>,
}

impl Census {
    pub fn new(caps: Caps) -> Census {
        Census {
            caps,
            counts: Default::default(),
        }
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection from `peer`, or why there is none. The address is taken
    /// in canonical form: an IPv4 peer of a dual-stack listener counts as itself.
    pub fn admit(&self, peer: std::net::IpAddr) -> Result<Ticket, Refused> {
        let address = crate::canonical_ip(peer);
        let mut counts = self.counts();
        if counts.total >= self.caps.max_connections {
            return Err(Refused::Full(self.caps.max_connections));
        }
        let from_address = counts.per_address.get(&address).copied().unwrap_or(0);
        if self.caps.max_per_address != 0 && from_address >= self.caps.max_per_address {
            return Err(Refused::AddressFull(self.caps.max_per_address));
        }
        counts.total = counts.total.saturating_add(1);
        counts
            .per_address
            .insert(address, from_address.saturating_add(1));
        Ok(Ticket {
            census: self.clone(),
            address,
        })
    }

    /// The connections open now.
    pub fn open(&self) -> usize {
        self.counts().total
    }
}

/// One admitted connection's place in its listener's [`Census`], given back on drop.
#[derive(Debug)]
pub struct Ticket {
    census: Census,
    address: std::net::IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.census.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(count) = counts.per_address.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.per_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn places_are_counted_in_all_and_per_address_and_given_back_on_drop() {
        let census = Census::new(Caps {
            max_connections: 3,
            max_per_address: 2,
        });
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        let other = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let first = census.admit(local).unwrap();
        let _second = census.admit(mapped).unwrap();
        // ::ffff:127.0.0.1 is 127.0.0.1: the address is full.
        assert_eq!(census.admit(local).unwrap_err(), Refused::AddressFull(2));
        let _third = census.admit(other).unwrap();
        assert_eq!(census.admit(other).unwrap_err(), Refused::Full(3));
        assert_eq!(census.open(), 3);
        drop(first);
        assert_eq!(census.open(), 2);
        assert!(census.admit(local).is_ok(), "the place was given back");
    }
}
