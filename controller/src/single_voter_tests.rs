//! One controller voter in this process: hostile bytes on its port hurt no one, a
//! broker's heartbeat registers its group, and a restart keeps what was decided.

use crate::{client, wire, Controller, ControllerConfig};
use keel_controller_api::api::BrokerHeartbeat;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

fn start(dir: &std::path::Path, port: u16) -> Controller {
    Controller::start(ControllerConfig {
        node_id: 1,
        peers: BTreeMap::from([(1, format!("127.0.0.1:{port}"))]),
        dir: dir.to_path_buf(),
        master_timeout: Duration::from_secs(3),
        raft_heartbeat: Duration::from_millis(50),
        security: crate::ControllerSecurity::default(),
    })
    .expect("controller starts")
}

fn heartbeat(address: &str) -> Result<keel_controller_api::api::GroupView, String> {
    let report = BrokerHeartbeat {
        group: "g".into(),
        broker_id: 0,
        address: "127.0.0.1:1".into(),
        ha_address: "127.0.0.1:2".into(),
        is_master: true,
        claims_master: true,
        epoch: 4,
        log_end: 100,
        flushed: 100,
        in_sync: Vec::new(),
        sss_epoch: 0,
    };
    client::heartbeat(
        &[address.to_string()],
        &report,
        Duration::from_secs(1),
        &keel_net::Dial::default(),
    )
    .map_err(String::from)
}

fn until<T>(what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `bytes` on a fresh connection and reads until the controller closes it.
fn hostile(address: &str, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[test]
fn hostile_frames_are_refused_and_decisions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let controller = start(dir.path(), port);
    let view = until("a leader that registers the group", || {
        heartbeat(&address).ok()
    });
    assert_eq!(view.master, Some(0));
    assert_eq!(view.master_epoch, 4);

    let mut oversized = (wire::MAX_FRAME_BYTES + 1).to_le_bytes().to_vec();
    oversized.extend_from_slice(&[0; 64]);
    let mut bad_crc = keel_protocol::envelope::encode(wire::DESCRIBE, b"null");
    bad_crc[5] ^= 0x40;
    let probes: Vec<Vec<u8>> = vec![
        oversized,
        bad_crc,
        keel_protocol::envelope::encode(0x42, b"{}"),
        keel_protocol::envelope::encode(wire::BROKER_HEARTBEAT, b"{\"group\": [[[["),
        keel_protocol::envelope::encode(wire::APPEND_ENTRIES, &[0xff; 300]),
        keel_protocol::envelope::encode(wire::VOTE, b"{\"vote\": 1}"),
        (0..2000u32).map(|i| (i * 7919 % 251) as u8).collect(),
    ];
    for probe in &probes {
        let answer = hostile(&address, probe);
        if !answer.is_empty() {
            let (kind, _) = wire::read_frame(&mut &answer[..]).expect("an ERROR frame");
            assert_eq!(kind, wire::ERROR);
        }
        let view = client::describe(
            std::slice::from_ref(&address),
            Duration::from_secs(1),
            &keel_net::Dial::default(),
        )
        .expect("still serving");
        assert_eq!(view.groups.len(), 1);
    }

    controller.stop();
    let controller = start(dir.path(), port);
    let view = until("the group after a restart", || {
        client::describe(
            std::slice::from_ref(&address),
            Duration::from_secs(1),
            &keel_net::Dial::default(),
        )
        .ok()
        .filter(|view| view.leader.is_some() && !view.groups.is_empty())
    });
    let group = &view.groups[0];
    assert_eq!(group.view.master, Some(0));
    assert_eq!(group.view.master_epoch, 4);
    assert_eq!(group.view.sss, vec![0]);
    assert!(view.term >= 1);
    controller.stop();
}
