//! Every way a send can fail, against a fake broker on loopback: which failures mean
//! "not stored" (a refusal the caller may trust) and which "unknown" (it may be stored).

use super::parts::Target;
use super::*;
use crate::Endpoint;
use bytes::BytesMut;
use keel_protocol::{decode_frame, ErrorCode, RawFrame};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the fake broker does with each request it reads.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Reads the request, then closes the connection without answering.
    CloseAfterRead,
    /// Reads the request and never answers.
    Silent,
    /// Answers ERROR with this code.
    Refuse(ErrorCode),
    /// As a broker at `max_connections`: ERROR TOO_MANY_CONNECTIONS (request id 0) at
    /// once, then reads nothing (and drops what comes) until the client closes.
    Full,
}

/// A broker on 127.0.0.1 that behaves as told and counts the requests it read.
struct FakeBroker {
    address: String,
    requests: Arc<AtomicUsize>,
}

impl FakeBroker {
    fn start(behaviour: Behaviour) -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let counted = counted.clone();
                std::thread::spawn(move || serve(stream, behaviour, &counted));
            }
        });
        FakeBroker { address, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve(mut stream: TcpStream, behaviour: Behaviour, requests: &AtomicUsize) {
    let mut buffer = BytesMut::new();
    let mut chunk = [0u8; 65536];
    if let Behaviour::Full = behaviour {
        let mut out = Vec::new();
        Response::error(ErrorCode::TooManyConnections, "max_connections reached")
            .encode(0, &mut out);
        let _ = stream.write_all(&out);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        while matches!(stream.read(&mut chunk), Ok(count) if count > 0) {}
        return;
    }
    loop {
        let frame: RawFrame = loop {
            match decode_frame(&mut buffer, 64 << 20) {
                Ok(Some(frame)) => break frame,
                Ok(None) => {}
                Err(_) => return,
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(count) => buffer.extend_from_slice(&chunk[..count]),
            }
        };
        requests.fetch_add(1, Ordering::SeqCst);
        match behaviour {
            Behaviour::CloseAfterRead | Behaviour::Full => return,
            Behaviour::Silent => {}
            Behaviour::Refuse(code) => {
                let mut out = Vec::new();
                Response::error(code, "refused by the fake broker")
                    .encode(frame.request_id, &mut out);
                if stream.write_all(&out).is_err() {
                    return;
                }
            }
        }
    }
}

fn options(budget_ms: u64) -> ProducerOptions {
    ProducerOptions {
        send_timeout: Duration::from_millis(budget_ms),
        ..ProducerOptions::default()
    }
}

fn send(address: &str, budget_ms: u64) -> ClientError {
    let producer = Producer::connect(address, options(budget_ms)).expect("connect");
    producer
        .send(Message::new("t", "payload"))
        .expect_err("the fake broker stores nothing")
}

#[test]
fn a_connection_closed_after_the_request_is_unknown_and_retried_with_the_same_sequence() {
    let broker = FakeBroker::start(Behaviour::CloseAfterRead);
    let error = send(&broker.address, 1000);
    assert!(error.is_outcome_unknown(), "{error}");
    assert!(matches!(error, ClientError::OutcomeUnknown(_)), "{error}");
    assert_eq!(
        broker.requests(),
        3,
        "three attempts, each reached the broker"
    );
}

#[test]
fn no_answer_within_the_budget_is_unknown() {
    let broker = FakeBroker::start(Behaviour::Silent);
    let error = send(&broker.address, 600);
    assert!(error.is_outcome_unknown(), "{error}");
}

#[test]
fn not_master_is_not_stored_and_tried_again_until_the_budget_ends() {
    let broker = FakeBroker::start(Behaviour::Refuse(ErrorCode::NotMaster));
    let started = Instant::now();
    let error = send(&broker.address, 800);
    assert!(!error.is_outcome_unknown(), "{error}");
    assert_eq!(error.code_name(), Some("NOT_MASTER"), "{error}");
    // A refusal as not the master uses up no attempt: tried with a backoff for the
    // whole budget (20, 40, 80, 160, 200 ... ms), more than the 3 attempts.
    assert!(broker.requests() > 3, "{} tries", broker.requests());
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[test]
fn a_refusal_that_retrying_cannot_change_is_final_after_one_attempt() {
    for code in [
        ErrorCode::FrameTooLarge,
        ErrorCode::InvalidTopic,
        ErrorCode::PermissionDenied,
    ] {
        let broker = FakeBroker::start(Behaviour::Refuse(code));
        let error = send(&broker.address, 2000);
        assert!(!error.is_outcome_unknown(), "{error}");
        assert_eq!(error.code_name(), Some(code.name()), "{error}");
        assert_eq!(broker.requests(), 1, "{code}: one attempt");
    }
}

#[test]
fn a_request_over_the_frame_limit_is_refused_before_a_byte_is_sent() {
    let broker = FakeBroker::start(Behaviour::Silent);
    let producer = Producer::connect(&broker.address, options(2000)).expect("connect");
    let big = vec![0u8; keel_protocol::DEFAULT_MAX_FRAME_BYTES as usize];
    let error = producer
        .send(Message::new("t", big))
        .expect_err("too large");
    assert!(matches!(error, ClientError::TooLarge { .. }), "{error}");
    assert!(!error.is_retryable() && !error.is_outcome_unknown());
    assert_eq!(error.code_name(), Some("MESSAGE_TOO_LARGE"));
    // Nothing of it went out: the next frame on the connection is the first the broker
    // decodes (a prefix of the large one would have made it undecodable or second).
    producer
        .send_oneway(Message::new("t", "small"))
        .expect("oneway");
    let deadline = Instant::now() + Duration::from_secs(5);
    while broker.requests() == 0 {
        assert!(Instant::now() < deadline, "the oneway never arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(broker.requests(), 1);
}

#[test]
fn a_broker_that_cannot_be_reached_is_not_stored() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = listener.local_addr().unwrap().to_string();
    drop(listener);
    assert!(matches!(
        Producer::connect(&gone, options(500)),
        Err(ClientError::Connect { .. })
    ));
    // A producer whose broker went away after it connected: tried for the budget.
    let unreachable = Producer::new(
        Target::Broker(Endpoint::resolve(&gone).unwrap()),
        options(500),
    );
    let error = unreachable
        .send(Message::new("t", "x"))
        .expect_err("nothing listens");
    assert!(matches!(error, ClientError::Connect { .. }), "{error}");
    assert!(!error.is_outcome_unknown(), "{error}");
}

#[test]
fn a_refused_login_is_final_after_one_try() {
    let broker = FakeBroker::start(Behaviour::Refuse(ErrorCode::AuthenticationFailed));
    let mut options = options(2000);
    options.connection.credentials = Some(crate::Credentials::Token("wrong".into()));
    let producer = Producer::new(
        Target::Broker(Endpoint::resolve(&broker.address).unwrap()),
        options,
    );
    let error = producer.send(Message::new("t", "x")).expect_err("refused");
    assert_eq!(error.code_name(), Some("AUTHENTICATION_FAILED"), "{error}");
    assert!(!error.is_outcome_unknown());
    // One LOGIN: logging in again and again would lock the address out.
    assert_eq!(broker.requests(), 1);
}

#[test]
fn a_broker_at_its_connection_limit_stored_nothing() {
    let broker = FakeBroker::start(Behaviour::Full);
    let producer = Producer::new(
        Target::Broker(Endpoint::resolve(&broker.address).unwrap()),
        options(500),
    );
    let error = producer.send(Message::new("t", "x")).expect_err("refused");
    assert!(!error.is_outcome_unknown(), "{error}");
}

#[test]
fn name_servers_that_know_no_master_mean_not_sent() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = listener.local_addr().unwrap().to_string();
    drop(listener);
    let producer = Producer::with_name_servers(&[gone.as_str()], options(300)).unwrap();
    let error = producer
        .send(Message::new("t", "x"))
        .expect_err("no name server answers");
    assert!(matches!(error, ClientError::NoRoute(_)), "{error}");
    assert!(!error.is_outcome_unknown(), "{error}");
}

#[test]
fn every_error_says_whether_it_may_be_stored() {
    let unknown = [
        ClientError::Timeout,
        ClientError::ConnectionClosed("x".into()),
        ClientError::Protocol("x".into()),
        ClientError::OutcomeUnknown("x".into()),
    ];
    let not_stored = [
        ClientError::Connect {
            address: "a".into(),
            detail: "x".into(),
        },
        ClientError::NoRoute("x".into()),
        ClientError::TooLarge { bytes: 2, max: 1 },
        ClientError::InvalidArgument("x".into()),
        ClientError::Broker(keel_protocol::ErrorResponse {
            code: ErrorCode::NotMaster,
            message: "x".into(),
        }),
    ];
    assert!(unknown.iter().all(ClientError::is_outcome_unknown));
    assert!(!not_stored.iter().any(ClientError::is_outcome_unknown));
}
