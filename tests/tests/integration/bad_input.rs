//! Hostile input: each bad frame gets an error frame and/or a closed connection, nothing
//! is stored from it, and the broker keeps serving other clients.

use crate::harness::BrokerProcess;
use keel_client::{Message, Producer, ProducerOptions, SendStatus};
use keel_protocol::{ErrorCode, Kind, Request, PROTOCOL_VERSION};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

fn connect(broker: &BrokerProcess) -> TcpStream {
    let stream = TcpStream::connect(&broker.address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// Reads one frame: (kind, request id, body), or `None` at EOF.
fn read_frame(stream: &mut TcpStream) -> Option<(u8, u64, Vec<u8>)> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).ok()?;
    let length = u32::from_le_bytes(prefix) as usize;
    let mut rest = vec![0u8; length];
    stream.read_exact(&mut rest).expect("whole frame");
    let request_id = u64::from_le_bytes(rest[4..12].try_into().unwrap());
    Some((rest[1], request_id, rest[12..].to_vec()))
}

fn error_code(body: &[u8]) -> u16 {
    u16::from_le_bytes([body[0], body[1]])
}

/// The next frame is an ERROR with `code`, and then the broker closes the connection.
fn expect_error_then_close(stream: &mut TcpStream, code: ErrorCode) {
    let (kind, _, body) = read_frame(stream).expect("an error frame before the close");
    assert_eq!(kind, Kind::Error as u8);
    assert_eq!(
        error_code(&body),
        code as u16,
        "{}",
        String::from_utf8_lossy(&body[4..])
    );
    assert!(
        read_frame(stream).is_none(),
        "connection must be closed after {code}"
    );
}

fn send_frame(message: &Message, request_id: u64) -> Vec<u8> {
    let mut frame = Vec::new();
    Request::Send(message.clone()).encode(request_id, 0, &mut frame);
    frame
}

fn ping_ok(stream: &mut TcpStream) {
    let mut frame = Vec::new();
    Request::Ping.encode(99, 0, &mut frame);
    stream.write_all(&frame).expect("write ping");
    let (kind, request_id, _) = read_frame(stream).expect("pong");
    assert_eq!((kind, request_id), (Kind::Pong as u8, 99));
}

#[test]
fn bad_frames_are_refused_and_the_broker_keeps_serving() {
    let broker = BrokerProcess::start("max_message_bytes = 1024\nmax_frame_bytes = 300000");
    let mut bystander = connect(&broker);
    ping_ok(&mut bystander);
    let producer =
        Producer::connect(&broker.address, ProducerOptions::default()).expect("producer");
    assert_eq!(
        producer
            .send(Message::new("t", "first"))
            .expect("send")
            .status,
        SendStatus::SendOk
    );
    let stored = broker.stat("records_appended");

    // Oversized length prefix: refused from the prefix alone, nothing allocated for it.
    let mut stream = connect(&broker);
    stream.write_all(&u32::MAX.to_le_bytes()).expect("write");
    expect_error_then_close(&mut stream, ErrorCode::FrameTooLarge);

    // Unknown frame kind.
    let mut stream = connect(&broker);
    stream
        .write_all(&[
            12,
            0,
            0,
            0,
            PROTOCOL_VERSION,
            0x42,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ])
        .expect("write");
    expect_error_then_close(&mut stream, ErrorCode::UnknownKind);

    // A response kind sent as a request.
    let mut stream = connect(&broker);
    stream
        .write_all(&[
            12,
            0,
            0,
            0,
            PROTOCOL_VERSION,
            Kind::Pong as u8,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ])
        .expect("write");
    expect_error_then_close(&mut stream, ErrorCode::UnknownKind);

    // Wrong protocol version.
    let mut stream = connect(&broker);
    stream
        .write_all(&[12, 0, 0, 0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
        .expect("write");
    expect_error_then_close(&mut stream, ErrorCode::UnsupportedVersion);

    // Garbage: an HTTP request (a huge length prefix), and a TLS ClientHello on this
    // plaintext port (told apart, and answered in plaintext saying so).
    for (garbage, code) in [
        (
            &b"GET / HTTP/1.1\r\nHost: keel\r\n\r\n"[..],
            ErrorCode::FrameTooLarge,
        ),
        (
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc][..],
            ErrorCode::MalformedFrame,
        ),
    ] {
        let mut stream = connect(&broker);
        stream.write_all(garbage).expect("write");
        expect_error_then_close(&mut stream, code);
    }

    // A SEND whose body is cut short inside a frame of consistent length.
    let mut frame = send_frame(&Message::new("t", "short body"), 5);
    frame.truncate(frame.len() - 3);
    let length = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&length.to_le_bytes());
    let mut stream = connect(&broker);
    stream.write_all(&frame).expect("write");
    expect_error_then_close(&mut stream, ErrorCode::MalformedFrame);

    // Half a frame, then EOF.
    let frame = send_frame(&Message::new("t", "half of me"), 6);
    let mut stream = connect(&broker);
    stream.write_all(&frame[..frame.len() / 2]).expect("write");
    stream.shutdown(Shutdown::Write).expect("half close");
    assert!(
        read_frame(&mut stream).is_none(),
        "closed without an answer"
    );

    // A payload whose CRC does not match: an error frame, the connection stays usable.
    let mut message = Message::new("t", "tampered payload");
    message.message_crc ^= 1;
    let mut stream = connect(&broker);
    stream.write_all(&send_frame(&message, 7)).expect("write");
    let (kind, request_id, body) = read_frame(&mut stream).expect("error frame");
    assert_eq!(
        (kind, request_id, error_code(&body)),
        (Kind::Error as u8, 7, ErrorCode::MessageCrcMismatch as u16)
    );
    ping_ok(&mut stream);

    // A payload over max_message_bytes: refused, connection stays usable.
    stream
        .write_all(&send_frame(&Message::new("t", vec![7u8; 2048]), 8))
        .expect("write");
    let (kind, request_id, body) = read_frame(&mut stream).expect("error frame");
    assert_eq!(
        (kind, request_id, error_code(&body)),
        (Kind::Error as u8, 8, ErrorCode::MessageTooLarge as u16)
    );

    // An invalid topic name.
    stream
        .write_all(&send_frame(&Message::new("../etc", "x"), 9))
        .expect("write");
    let (_, _, body) = read_frame(&mut stream).expect("error frame");
    assert_eq!(error_code(&body), ErrorCode::InvalidTopic as u16);
    ping_ok(&mut stream);

    // Nothing from any of them was stored, and everyone else is still served.
    assert_eq!(broker.stat("records_appended"), stored);
    ping_ok(&mut bystander);
    assert_eq!(
        producer
            .send(Message::new("t", "still here"))
            .expect("send")
            .status,
        SendStatus::SendOk
    );
    assert_eq!(broker.stat("records_appended"), stored + 1);
}

#[test]
fn hostile_bytes_on_the_ha_port_and_the_name_server_hurt_no_one() {
    let ha_port = crate::harness::free_port();
    let broker = BrokerProcess::start(&format!("role = \"sync_master\"\nha_port = {ha_port}"));
    let namesrv = crate::harness::NameServerProcess::start(120_000);
    let garbage: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\n\r\n",
        &[0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        // A HELLO claiming 4 billion epochs in a few bytes.
        &[
            0x10, 0, 0, 0, 0x01, 1, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0,
        ],
        &[0x05, 0, 0, 0, 0x05, 1, 2, 3, 4],
    ];
    for bytes in garbage {
        for address in [format!("127.0.0.1:{ha_port}"), namesrv.address.clone()] {
            let mut stream = TcpStream::connect(&address).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let _ = stream.write_all(bytes);
            let _ = stream.shutdown(Shutdown::Write);
            let mut sink = Vec::new();
            // Either side answers with an error or closes; neither hangs or crashes.
            let _ = stream.read_to_end(&mut sink);
        }
    }
    // A group request that does not follow its layout closes that connection only.
    let mut stream = connect(&broker);
    let mut frame = Vec::new();
    keel_protocol::encode_frame(&mut frame, Kind::Heartbeat, 0, 5, &[1, 2, 3]);
    stream.write_all(&frame).unwrap();
    expect_error_then_close(&mut stream, ErrorCode::MalformedFrame);
    // Both still serve.
    let routes = keel_client::fetch_routes(
        std::slice::from_ref(&namesrv.address),
        &std::sync::atomic::AtomicUsize::new(0),
        "",
        Duration::from_secs(3),
        None,
    );
    assert!(routes.is_ok());
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    let status = producer
        .send(Message::new("still", "alive"))
        .unwrap()
        .status;
    assert_eq!(
        status,
        SendStatus::SlaveNotAvailable,
        "a sync master without a slave"
    );
}

#[test]
fn a_flipped_byte_in_any_field_the_producer_sets_is_refused_and_stores_nothing() {
    let broker = BrokerProcess::start("");
    let mut message = Message::new("hostile", "the payload")
        .with_tags("TagA")
        .with_keys("order-1")
        .with_property("origin", "test");
    message.producer_id = 0x1234_5678;
    message.sequence = 9;
    let message = message.sealed();
    let frame = send_frame(&message, 1);
    let topic_len = message.topic.len();
    // Offsets in the frame: header 16, topic str16, queue u32, born u64, producer u64,
    // sequence u64, flags u32, message_crc u32, then tags, keys, properties, payload.
    let topic = 16 + 2;
    let numbers = topic + topic_len + 4;
    let tail = numbers + 8 + 8 + 8 + 4 + 4;
    let fields = [
        ("topic", topic + 2),
        ("born_timestamp_ms", numbers + 1),
        ("producer_id", numbers + 8 + 2),
        ("sequence", numbers + 16),
        ("tags", tail + 2),
        ("keys", tail + 2 + 2 + 4 + 3),
        ("property", tail + 2 + 4 + 2 + 7 + 2 + 2 + 1),
        ("payload", frame.len() - 3),
    ];
    let mut stream = connect(&broker);
    for (index, (field, at)) in fields.iter().enumerate() {
        let mut damaged = frame.clone();
        // A bit that keeps names valid ('o' <-> 'n' and the like), so only the CRC can
        // tell: the broker would otherwise store a message nobody sent.
        damaged[*at] ^= 0x01;
        damaged[8..16].copy_from_slice(&(100 + index as u64).to_le_bytes());
        stream.write_all(&damaged).expect("write");
        let (kind, request_id, body) = read_frame(&mut stream).expect("an answer");
        assert_eq!(kind, Kind::Error as u8, "{field}: accepted");
        assert_eq!(request_id, 100 + index as u64);
        assert_eq!(
            error_code(&body),
            ErrorCode::MessageCrcMismatch as u16,
            "{field}: {}",
            String::from_utf8_lossy(&body[4..])
        );
    }
    assert_eq!(broker.stat("records_appended"), 0);
    let topics = broker.admin().list_topics(None).expect("topics");
    assert!(
        topics.iter().all(|t| t.topic.starts_with('%')),
        "a damaged topic name created a topic: {topics:?}"
    );
    // Intact, it is stored.
    stream.write_all(&frame).expect("write");
    let (kind, _, _) = read_frame(&mut stream).expect("an answer");
    assert_eq!(kind, Kind::SendResult as u8);
}

#[test]
fn reserved_bits_and_bad_group_names_get_their_documented_codes() {
    let broker = BrokerProcess::start("");
    // Message flags are reserved: refused, not stored.
    let mut message = Message::new("t", "flagged");
    message.flags = 1;
    let mut stream = connect(&broker);
    stream
        .write_all(&send_frame(&message.sealed(), 1))
        .expect("write");
    let (kind, _, body) = read_frame(&mut stream).expect("an answer");
    assert_eq!(kind, Kind::Error as u8);
    assert_eq!(error_code(&body), ErrorCode::InvalidArgument as u16);
    ping_ok(&mut stream);
    // A group name that is not a valid name: INVALID_TOPIC, as documented.
    let mut frame = Vec::new();
    Request::CommitOffset(keel_protocol::CommitOffsetRequest {
        group: "bad group".into(),
        topic: "t".into(),
        queue_id: 0,
        offset: 0,
    })
    .encode(2, 0, &mut frame);
    stream.write_all(&frame).expect("write");
    let (_, _, body) = read_frame(&mut stream).expect("an answer");
    assert_eq!(error_code(&body), ErrorCode::InvalidTopic as u16);
    // '%' anywhere in a client's topic name is refused: it marks the broker's own.
    let mut frame = Vec::new();
    Request::CreateTopic(keel_protocol::CreateTopicRequest {
        topic: "a%b".into(),
        queues: 1,
    })
    .encode(4, 0, &mut frame);
    stream.write_all(&frame).expect("write");
    let (_, _, body) = read_frame(&mut stream).expect("an answer");
    assert_eq!(error_code(&body), ErrorCode::InvalidTopic as u16);
    // A frame flag bit other than ONEWAY: a malformed frame, answered with its request
    // id (its header arrived), then the connection closes.
    let mut frame = Vec::new();
    Request::Ping.encode(3, 0x0004, &mut frame);
    stream.write_all(&frame).expect("write");
    let (kind, request_id, body) = read_frame(&mut stream).expect("an error frame");
    assert_eq!((kind, request_id), (Kind::Error as u8, 3));
    assert_eq!(error_code(&body), ErrorCode::MalformedFrame as u16);
    assert!(read_frame(&mut stream).is_none(), "closed after the error");
    assert_eq!(broker.stat("records_appended"), 0);
}

/// A connection closed after an error keeps reading (and dropping) what its client still
/// sends, so that the client reads the ERROR instead of a reset, but for a bounded time:
/// a client that never closes its side is closed all the same, also with the idle
/// timeout off.
#[test]
fn a_connection_closed_after_an_error_lingers_only_a_while() {
    let broker = BrokerProcess::start("connection_idle_timeout_ms = 0");
    let base = broker.stat("connections");
    let mut stream = connect(&broker);
    let mut header = Vec::new();
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    header.extend_from_slice(&[PROTOCOL_VERSION, Kind::Send as u8, 0, 0]);
    header.extend_from_slice(&7u64.to_le_bytes());
    stream.write_all(&header).expect("write");
    // The client goes on writing its (refused) frame: no reset while it does.
    for _ in 0..8 {
        stream
            .write_all(&[0u8; 64 * 1024])
            .expect("the broker reads and drops it");
    }
    let (kind, request_id, body) = read_frame(&mut stream).expect("the ERROR");
    assert_eq!((kind, request_id), (Kind::Error as u8, 7));
    assert_eq!(error_code(&body), ErrorCode::FrameTooLarge as u16);
    assert!(
        read_frame(&mut stream).is_none(),
        "then the broker's side is shut"
    );
    crate::harness::wait_until(
        "the lingering connection closed",
        Duration::from_secs(10),
        || broker.try_stat("connections") == Some(base),
    );
    drop(stream);
}
