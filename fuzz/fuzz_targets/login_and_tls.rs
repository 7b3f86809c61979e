//! What a stranger reaches before logging in: LOGIN and SECURITY_ADMIN bodies (and the
//! token check behind them), a slave's replicated security state, and the TLS records a
//! server reads before its handshake is done. Nothing may panic; a TLS error is an
//! error, never a hang.

#![no_main]

use keel_protocol::{Kind, RawFrame, Request};
use keel_security::rustls::ServerConnection;
use keel_security::{AuthMode, Authority, SecurityCommand};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};

fn authority() -> &'static Authority {
    static AUTHORITY: OnceLock<Authority> = OnceLock::new();
    AUTHORITY.get_or_init(|| {
        let authority = Authority::open(AuthMode::Required, None, Some("cluster secret")).unwrap();
        authority
            .apply(SecurityCommand::TokenCreate { name: "app".into() })
            .unwrap();
        authority
    })
}

fn server_config() -> Arc<keel_security::rustls::ServerConfig> {
    static CONFIG: OnceLock<Arc<keel_security::rustls::ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("keel-fuzz-tls-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            std::fs::write(dir.join("c.pem"), cert.pem()).unwrap();
            std::fs::write(dir.join("k.pem"), key.serialize_pem()).unwrap();
            let tls = keel_security::ServerTls {
                cert_file: dir.join("c.pem"),
                key_file: dir.join("k.pem"),
                client_ca_file: None,
            };
            tls.config().unwrap()
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, (mode >> 4) + 1));
    match mode % 4 {
        0 | 1 => {
            let kind = if mode % 4 == 0 { Kind::Login } else { Kind::SecurityAdmin };
            let frame = RawFrame {
                kind,
                flags: 0,
                request_id: 1,
                body: bytes::Bytes::copy_from_slice(rest),
            };
            match Request::decode(&frame) {
                Ok(Request::Login(keel_protocol::Login::Token(token))) => {
                    let _ = authority().login_token(keel_security::Port::Client, &token, peer, true);
                }
                Ok(Request::SecurityAdmin(json)) => {
                    if let Ok(command) = SecurityCommand::from_json(&json.0) {
                        // Listing only: a change would hash passwords (slow) and grow state.
                        if !command.changes_state() {
                            let _ = authority().apply(command);
                        }
                    }
                }
                _ => {}
            }
        }
        2 => {
            // A slave installing whatever its "master" sent.
            let slave = Authority::open(AuthMode::Required, None, None).unwrap();
            let _ = slave.install(rest);
        }
        _ => {
            let _ = keel_security::is_tls_client_hello(rest);
            let _ = keel_security::could_be_tls(rest);
            let mut connection = ServerConnection::new(server_config()).unwrap();
            let mut input = rest;
            for _ in 0..64 {
                if input.is_empty() {
                    break;
                }
                match connection.read_tls(&mut input) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if connection.process_new_packets().is_err() {
                    let mut alert = Vec::new();
                    let _ = connection.write_tls(&mut alert);
                    break;
                }
                let mut plain = [0u8; 4096];
                let _ = std::io::Read::read(&mut connection.reader(), &mut plain);
            }
        }
    }
});
