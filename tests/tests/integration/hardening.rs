//! What outside checks found at the edges (issue 20, point 7), each held by a test that
//! fails on the old behaviour: JSON from `keel --json acl`, a name server closing after
//! a failed login, a ONEWAY request before LOGIN dropped unanswered, `/metrics` behind
//! the token, data files only the broker's user reads, and an expired certificate
//! warned of (or refused).

use crate::console::{get, http_address};
use crate::harness::{BrokerProcess, KEELD};
use crate::security::{keel_with, secured_broker, spawn_line, Pki, ADMIN_PASSWORD};
use keel_protocol::{ErrorCode, Kind, Login, Message, Request};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

#[test]
fn keel_json_acl_grant_and_revoke_print_json() {
    let broker = secured_broker("");
    let ops = [("KEEL_PASSWORD", ADMIN_PASSWORD)];
    let entry = [
        "--principal",
        "reader",
        "--resource",
        "topic:orders",
        "--actions",
        "subscribe",
    ];
    for verb in ["grant", "revoke"] {
        let mut args = vec!["--user", "ops", "--json", "acl", verb];
        args.extend(entry);
        let output = keel_with(&broker.address, &args, &ops);
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let reply: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("keel --json acl {verb}: {e}: {stdout}"));
        assert!(reply["done"].as_str().is_some(), "{reply}");
    }
}

/// The first frame on `stream`: its kind and, for an ERROR, its code; `None` at EOF.
fn next_frame(stream: &mut TcpStream) -> Option<(u8, Option<u16>)> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).ok()?;
    let mut rest = vec![0u8; u32::from_le_bytes(prefix) as usize];
    stream.read_exact(&mut rest).expect("the whole frame");
    let kind = rest[1];
    let code = (kind == Kind::Error as u8).then(|| u16::from_le_bytes([rest[12], rest[13]]));
    Some((kind, code))
}

fn send_frame(stream: &mut TcpStream, request: &Request, flags: u16) {
    let mut frame = Vec::new();
    request.encode(7, flags, &mut frame);
    stream.write_all(&frame).unwrap();
}

#[test]
fn a_name_server_closes_the_connection_after_a_failed_login() {
    let temp = tempfile::tempdir().unwrap();
    let token_file = temp.path().join("cluster.token");
    std::fs::write(&token_file, "the cluster secret\n").unwrap();
    let (mut namesrv, address) = spawn_line(
        Command::new(KEELD)
            .args(["namesrv", "--listen", "127.0.0.1:0"])
            .arg("--cluster-token-file")
            .arg(&token_file),
        "keeld namesrv listening on ",
    );
    let mut stream = TcpStream::connect(&address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    send_frame(
        &mut stream,
        &Request::Login(Login::Token("a guess".into())),
        0,
    );
    let code = ErrorCode::AuthenticationFailed as u16;
    assert_eq!(
        next_frame(&mut stream),
        Some((Kind::Error as u8, Some(code)))
    );
    // As the error table says: the connection ends; a PING after it gets nothing.
    let _ = stream.write_all(&{
        let mut ping = Vec::new();
        Request::Ping.encode(8, 0, &mut ping);
        ping
    });
    assert_eq!(next_frame(&mut stream), None, "the connection stayed open");
    let _ = namesrv.kill();
    let _ = namesrv.wait();
}

#[test]
fn a_oneway_request_before_login_is_dropped_unanswered_and_the_connection_closed() {
    let broker = secured_broker("");
    let mut stream = TcpStream::connect(&broker.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let oneway = Request::Send(Message::new("orders", "never stored"));
    send_frame(&mut stream, &oneway, keel_protocol::FLAG_ONEWAY);
    assert_eq!(
        next_frame(&mut stream),
        None,
        "a oneway request was answered"
    );
    // A request that is not oneway is still answered NOT_AUTHENTICATED.
    let mut stream = TcpStream::connect(&broker.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    send_frame(&mut stream, &Request::Stats, 0);
    let code = ErrorCode::NotAuthenticated as u16;
    assert_eq!(
        next_frame(&mut stream),
        Some((Kind::Error as u8, Some(code)))
    );
    let options = keel_client::ConnectionOptions {
        credentials: Some(keel_client::Credentials::Password {
            user: "ops".into(),
            password: ADMIN_PASSWORD.into(),
        }),
        ..keel_client::ConnectionOptions::default()
    };
    let ops = keel_client::Admin::connect_with(&broker.address, &options).unwrap();
    let stats = ops.stats().unwrap();
    let refused = stats
        .iter()
        .find(|(name, _)| name == "unauthenticated_requests");
    assert_eq!(
        refused.map(|(_, value)| *value),
        Some(2),
        "both were counted"
    );
}

#[test]
fn with_logins_on_metrics_need_a_token_unless_made_public() {
    for public in [false, true] {
        let mut broker = BrokerProcess::create(&format!(
            "metrics_listen = \"127.0.0.1:0\"\nsecurity = {{ auth = \"required\", metrics_public = {public} }}"
        ));
        assert!(broker.add_admin("ops", "ops password").status.success());
        broker.spawn();
        let http = http_address(&broker);
        let (status, body) = get(&http, "/metrics", None);
        match public {
            false => {
                assert_eq!(status, 401, "{body}");
                assert!(!body.contains("keel_"), "{body}");
            }
            true => assert_eq!(status, 200, "{body}"),
        }
    }
}

/// Every file the broker made under `dir` is 0600 and every directory 0700.
fn assert_private(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            assert_private(&path);
        } else {
            assert_eq!(mode, 0o600, "{}", path.display());
        }
    }
}

#[test]
fn data_files_are_readable_by_the_brokers_user_only() {
    let mut broker = BrokerProcess::start("security = { auth = \"off\" }");
    let producer = keel_client::Producer::connect(&broker.address, Default::default()).unwrap();
    producer.send(Message::new("orders", "private")).unwrap();
    broker.admin().create_topic("audit", 2).unwrap();
    broker.terminate();
    let data = broker.dir.join("data");
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the data directory");
    assert_private(&data);
}

#[test]
fn an_expired_certificate_is_warned_of_and_refused_when_asked() {
    let temp = tempfile::tempdir().unwrap();
    let pki = Pki::new(temp.path());
    let tls = format!(
        "tls_cert_file = \"{}\", tls_key_file = \"{}\"",
        pki.path("expired.crt"),
        pki.path("expired.key")
    );
    let check = |extra: &str| {
        let broker = BrokerProcess::create(&format!("security = {{ {tls}{extra} }}"));
        let config = broker.dir.join("keeld.toml");
        let output = Command::new(KEELD)
            .arg("--config")
            .arg(&config)
            .arg("--check-config")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        (output.status.code(), stderr)
    };
    let (code, stderr) = check("");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("WARNING") && stderr.contains("expired"),
        "{stderr}"
    );
    let (code, stderr) = check(", tls_refuse_expired = true");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("expired"), "{stderr}");
    // A valid certificate: no warning.
    let valid = tls.replace("expired.", "broker.");
    let broker = BrokerProcess::create(&format!("security = {{ {valid} }}"));
    let output = Command::new(KEELD)
        .arg("--config")
        .arg(broker.dir.join("keeld.toml"))
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(!String::from_utf8_lossy(&output.stderr).contains("WARNING"));
}

/// Every listener counts its connections per address with keel-net's census: one
/// address cannot take all of a name server's places (before, it could hold all 1,024).
#[test]
fn a_name_server_gives_one_address_at_most_256_connections_and_says_why() {
    let namesrv = crate::harness::NameServerProcess::start(30_000);
    let ping = |stream: &mut TcpStream| {
        let mut frame = Vec::new();
        Request::Ping.encode(1, 0, &mut frame);
        stream.write_all(&frame).unwrap();
        crate::security::read_reply(stream)
    };
    // Each held connection answered a PING, so the name server has counted it.
    let mut held: Vec<TcpStream> = (0..256)
        .map(|_| TcpStream::connect(&namesrv.address).unwrap())
        .collect();
    for stream in &mut held {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(ping(stream).0, Kind::Pong as u8);
    }
    let mut refused = TcpStream::connect(&namesrv.address).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        crate::security::read_reply(&mut refused),
        (
            Kind::Error as u8,
            Some(ErrorCode::TooManyConnections as u16)
        )
    );
    // A place given back is a place again.
    drop(held.pop());
    crate::harness::wait_until("a place again", Duration::from_secs(10), || {
        // A refusal may reset the connection under the PING: only a PONG counts.
        let mut again = TcpStream::connect(&namesrv.address).unwrap();
        again
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut frame = Vec::new();
        Request::Ping.encode(2, 0, &mut frame);
        let mut head = [0u8; 6];
        again.write_all(&frame).is_ok()
            && again.read_exact(&mut head).is_ok()
            && head[5] == Kind::Pong as u8
    });
}
