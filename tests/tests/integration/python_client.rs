//! docs/PROTOCOL.md is complete enough to write a client from: examples/python/keel.py
//! was written from it alone (standard library only), and must keep working against the
//! real broker.

use crate::harness::BrokerProcess;
use std::process::Command;

#[test]
fn the_python_client_written_from_the_protocol_doc_works() {
    let broker = BrokerProcess::start("");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/python/smoke.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(&broker.address)
        .output()
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("python client: ok"), "{stdout}");
}

#[test]
fn the_python_client_logs_in_over_tls_from_the_protocol_doc_alone() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/python/test_security.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .env("KEELD", crate::harness::KEELD)
        .output()
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python security check failed:\n{stdout}\n{stderr}"
    );
}
