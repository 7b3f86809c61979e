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

/// `keeld` with `args`, its output.
fn keeld(args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::harness::KEELD)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run keeld")
}

#[test]
fn check_config_and_print_config_say_what_keeld_would_run_on() {
    let temp = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = temp.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let good = write(
        "good.toml",
        &format!(
            "listen = \"localhost:0\"\ndata_dir = \"{}\"\n[security]\nauth = \"optional\"\n",
            temp.path().join("data").display()
        ),
    );
    let output = keeld(&["--config", &good, "--check-config"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("configuration OK"));
    assert!(
        !temp.path().join("data").exists(),
        "a check creates nothing"
    );
    // The effective configuration: every key, the name resolved, and it reads back.
    let printed = keeld(&["--config", &good, "--print-config"]);
    assert_eq!(printed.status.code(), Some(0));
    let text = String::from_utf8_lossy(&printed.stdout).to_string();
    assert!(
        text.contains("listen = \"127.0.0.1:0\"") || text.contains("listen = \"[::1]:0\""),
        "{text}"
    );
    assert!(
        text.contains("auth = \"optional\"") && text.contains("retention_hours = 72"),
        "{text}"
    );
    let again = write("again.toml", &text);
    assert_eq!(
        keeld(&["--config", &again, "--check-config"]).status.code(),
        Some(0)
    );

    let refused = |name: &str, body: &str, says: &[&str]| {
        let path = write(name, body);
        let output = keeld(&["--config", &path, "--check-config"]);
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        for part in says {
            assert!(stderr.contains(part), "{name}: {stderr}");
        }
    };
    refused(
        "typo.toml",
        "flsuh = \"sync\"\n",
        &["did you mean `flush`?", "typo.toml"],
    );
    refused(
        "range.toml",
        "default_queues = 0\n",
        &["default_queues", "range.toml"],
    );
    refused(
        "cert.toml",
        "[security]\ntls_cert_file = \"/nonexistent.crt\"\ntls_key_file = \"/nonexistent.key\"\n",
        &["/nonexistent.crt", "cert.toml"],
    );
}

#[test]
fn keeld_tells_systemd_when_it_is_ready_and_when_it_stops() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixDatagram;
    let temp = tempfile::tempdir().unwrap();
    let socket_path = temp.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = std::process::Command::new(crate::harness::KEELD)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(temp.path().join("data"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut buffer = [0u8; 512];
    let count = socket.recv(&mut buffer).expect("READY from keeld");
    let ready = String::from_utf8_lossy(&buffer[..count]).to_string();
    assert!(
        ready.starts_with("READY=1\nSTATUS=listening on 127.0.0.1:"),
        "{ready}"
    );
    // READY comes once the port serves: the ready line is already out.
    let line = lines.next().unwrap().unwrap();
    assert!(line.starts_with("keeld listening on "), "{line}");
    let address = line.trim_start_matches("keeld listening on ").to_string();
    assert!(ready.ends_with(&address), "{ready} vs {address}");
    crate::harness::signal(child.id(), libc::SIGTERM);
    let count = socket.recv(&mut buffer).expect("STOPPING from keeld");
    assert_eq!(&buffer[..count], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_systemd_unit_verifies() {
    // systemd-analyze, when the machine has it, on the unit with this build's keeld.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/keeld.service"
    ))
    .unwrap();
    // A configuration error (2) or damaged data (3) is not restarted every 2 s.
    let prevented: Vec<&str> = unit
        .lines()
        .filter_map(|line| line.strip_prefix("RestartPreventExitStatus="))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(unit.contains("Type=notify"));
    assert!(
        prevented.contains(&"2") && prevented.contains(&"3"),
        "RestartPreventExitStatus must hold 2 and 3: {prevented:?}"
    );
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("keeld.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/keeld", crate::harness::KEELD),
    )
    .unwrap();
    match std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
    {
        Ok(output) => assert!(
            output.status.success() && output.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(_) => eprintln!("systemd-analyze not found: the unit was not verified"),
    }
}
