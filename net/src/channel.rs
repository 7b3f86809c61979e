//! The secure-channel rule: a cluster token or a password may travel only over TLS or
//! from a loopback peer. Every listener (client port, name server, HA port, controller
//! port, console) asks this one function.

use std::net::IpAddr;

/// `ip` in canonical form: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a
/// dual-stack listener reports for an IPv4 peer) becomes the IPv4 address it carries.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Whether a connection from `peer` (over TLS when `tls`) may carry secrets.
pub fn is_secure(peer: IpAddr, tls: bool) -> bool {
    tls || canonical_ip(peer).is_loopback()
}

/// Whether a `host:port` to dial names this machine (`localhost` or a loopback
/// address), so that a token may go there without TLS.
pub fn is_loopback_address(address: &str) -> bool {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| canonical_ip(ip).is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_in_any_form_is_secure_and_nothing_else_is_without_tls() {
        for loopback in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            let ip: IpAddr = loopback.parse().unwrap();
            assert!(is_secure(ip, false), "{loopback}");
        }
        for remote in ["10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1", "0.0.0.0"] {
            let ip: IpAddr = remote.parse().unwrap();
            assert!(!is_secure(ip, false), "{remote}");
            assert!(is_secure(ip, true), "{remote} over TLS");
        }
        for local in [
            "localhost:9876",
            "127.0.0.1:1",
            "[::1]:2",
            "[::ffff:127.0.0.1]:3",
        ] {
            assert!(is_loopback_address(local), "{local}");
        }
        assert!(!is_loopback_address("10.1.1.1:9876"));
        assert!(!is_loopback_address("namesrv.example:9876"));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(canonical_ip(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
