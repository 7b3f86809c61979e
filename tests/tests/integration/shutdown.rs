//! SIGTERM: no new sends, pending ones flushed and answered, files closed cleanly.

use crate::crash::check_ledger;
use crate::harness::{wait_until, BrokerProcess};
use keel_client::{ClientError, ErrorCode, Message, Producer, ProducerOptions, SendStatus};
use keel_tests::{payload_for, Ledger, Outcome};
use std::time::Duration;

#[test]
fn sigterm_answers_pending_sends_and_restarts_clean() {
    // Slow fsyncs keep sends pending while the signal arrives.
    let mut broker = BrokerProcess::start("fault_fsync_delay_ms = 300");
    let options = ProducerOptions {
        retry_times_when_send_failed: 0,
        send_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let producer = Producer::connect(&broker.address, options).expect("producer");
    let ledger = Ledger::new();
    let mut handles = Vec::new();
    for index in 0..200 {
        let id = format!("term-{index}");
        handles.push((
            id.clone(),
            producer.send_async_handle(Message::new("ledger", payload_for(&id, 256))),
        ));
    }
    // Every send reached the broker (and waits on the slow fsync) before the signal.
    wait_until("the sends to be appended", Duration::from_secs(10), || {
        broker.stat("records_appended") == 200
    });
    let status = broker.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", broker.log());
    let mut acknowledged = 0;
    for (id, handle) in handles {
        match handle.wait() {
            Ok(result) => {
                assert_eq!(
                    result.status,
                    SendStatus::SendOk,
                    "{id}: pending sends are flushed, not timed out"
                );
                ledger.sent(&id, Outcome::Ok);
                acknowledged += 1;
            }
            Err(ClientError::Broker(error)) => {
                assert_eq!(error.code, ErrorCode::ShuttingDown, "{id}: {error}");
                ledger.sent(&id, Outcome::Failed(error.to_string()));
            }
            Err(other) => panic!("{id}: a send in flight at SIGTERM got no answer: {other}"),
        }
    }
    assert!(acknowledged > 0);
    assert!(broker.log().contains("stopped cleanly"), "{}", broker.log());

    broker.spawn();
    assert!(
        broker.log().contains("previous shutdown clean"),
        "{}",
        broker.log()
    );
    let report = check_ledger(&broker, &ledger);
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        report.recovered, 0,
        "refused sends must not be stored: {report}"
    );
}

#[test]
fn a_port_already_taken_is_reported_before_anything_is_created() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port();
    let temp = tempfile::tempdir().expect("temporary directory");
    let data_dir = temp.path().join("data");
    let output = std::process::Command::new(crate::harness::KEELD)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data_dir)
        .env("RUST_LOG", "info")
        .output()
        .expect("run keeld");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(
        !data_dir.exists(),
        "the data directory was created (and recovered) before the port was checked"
    );
}
