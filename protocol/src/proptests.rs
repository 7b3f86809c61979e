//! Codec properties: round trips, arbitrary splits, corruption never panics.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::*;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

const MAX_FRAME: u32 = 1 << 20;

fn text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9_.\\-é€]{0,12}").unwrap()
}

fn message() -> impl Strategy<Value = Message> {
    (
        text(),
        any::<u32>(),
        any::<(u64, u64, u64, u32)>(),
        text(),
        text(),
        proptest::collection::vec((text(), text()), 0..4),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(
            |(
                topic,
                queue_id,
                (born, producer, sequence, flags),
                tags,
                keys,
                properties,
                payload,
            )| {
                let mut message = Message::new(topic, payload).with_tags(tags).with_keys(keys);
                message.queue_id = queue_id;
                message.born_timestamp_ms = born;
                message.producer_id = producer;
                message.sequence = sequence;
                message.flags = flags;
                message.properties = properties;
                message.sealed()
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ping),
        Just(Request::Stats),
        message().prop_map(Request::Send),
        proptest::collection::vec(message(), 1..4).prop_map(Request::SendBatch),
        (
            text(),
            text(),
            any::<u32>(),
            any::<u64>(),
            any::<(u32, u32, u32)>()
        )
            .prop_map(
                |(group, topic, queue_id, queue_offset, (max_messages, max_bytes, wait_ms))| {
                    Request::Pull(PullRequest {
                        group,
                        topic,
                        queue_id,
                        queue_offset,
                        max_messages,
                        max_bytes,
                        wait_ms,
                    })
                }
            ),
        (text(), text(), any::<u32>(), any::<u64>()).prop_map(
            |(group, topic, queue_id, offset)| {
                Request::CommitOffset(CommitOffsetRequest {
                    group,
                    topic,
                    queue_id,
                    offset,
                })
            }
        ),
        (text(), text(), any::<u32>()).prop_map(|(group, topic, queue_id)| Request::QueryOffset(
            QueryOffsetRequest {
                group,
                topic,
                queue_id
            }
        )),
        (text(), any::<u32>())
            .prop_map(|(topic, queues)| Request::CreateTopic(CreateTopicRequest { topic, queues })),
        text().prop_map(|topic| Request::ListTopics(ListTopicsRequest { topic })),
        (0u8..4, any::<bool>()).prop_map(|(role, force)| Request::Promote {
            role: crate::BrokerRole::from_u8(role).unwrap(),
            force
        }),
        text().prop_map(Request::GetRoutes),
        (
            text(),
            text(),
            text(),
            any::<u32>(),
            proptest::collection::vec(any::<u32>(), 0..5)
        )
            .prop_map(|(group, topic, member_id, session_timeout_ms, owned)| {
                Request::Heartbeat(crate::HeartbeatRequest {
                    group,
                    topic,
                    member_id,
                    session_timeout_ms,
                    owned,
                })
            }),
        (text(), text(), text(), any::<u32>(), any::<u64>()).prop_map(
            |(group, topic, member_id, queue_id, offset)| {
                Request::GroupCommit(crate::GroupCommitRequest {
                    group,
                    topic,
                    member_id,
                    queue_id,
                    offset,
                })
            }
        ),
        (
            text(),
            any::<(u32, u32)>(),
            text(),
            text(),
            any::<u64>(),
            message()
        )
            .prop_map(
                |(
                    group,
                    (reconsume_times, max_reconsume_times),
                    reason,
                    origin_topic,
                    origin_msg_id,
                    message,
                )| {
                    Request::SendBack(crate::SendBackRequest {
                        group,
                        reconsume_times,
                        max_reconsume_times,
                        reason,
                        origin_topic,
                        origin_msg_id,
                        message,
                    })
                }
            ),
        (text(), any::<u32>(), any::<u64>()).prop_map(|(topic, queue_id, timestamp_ms)| {
            Request::OffsetForTime(crate::OffsetForTimeRequest {
                topic,
                queue_id,
                timestamp_ms,
            })
        }),
        (any::<u64>(), text()).prop_map(|(msg_id, key)| Request::MessageInfo { msg_id, key }),
        (text(), text())
            .prop_map(|(user, password)| Request::Login(crate::Login::Password { user, password })),
        text().prop_map(|token| Request::Login(crate::Login::Token(token))),
        text().prop_map(|json| Request::SecurityAdmin(crate::SecretText(json))),
        text().prop_map(Request::ListGroups),
        text().prop_map(Request::TopicStats),
        Just(Request::GetBrokers),
        (text(), any::<bool>()).prop_map(|(topic, force)| Request::DeleteTopic { topic, force }),
        (text(), any::<bool>()).prop_map(|(group, force)| Request::DeleteGroup { group, force }),
        (text(), proptest::option::of(any::<bool>()))
            .prop_map(|(group, ordered)| Request::GroupSettings { group, ordered }),
        (text(), text(), any::<u64>(), any::<bool>()).prop_map(
            |(producer_group, topic, transaction_id, commit)| {
                Request::EndTransaction(crate::EndTransactionRequest {
                    producer_group,
                    topic,
                    transaction_id,
                    action: if commit {
                        crate::TxAction::Commit
                    } else {
                        crate::TxAction::Rollback
                    },
                })
            }
        ),
        (text(), 1..=crate::CHECKS_MAX).prop_map(|(producer_group, max)| {
            Request::CheckTransactions {
                producer_group,
                max,
            }
        }),
        text().prop_map(|producer_group| Request::ListTransactions { producer_group }),
        (text(), any::<u32>())
            .prop_map(|(topic, queues)| Request::AddQueues(CreateTopicRequest { topic, queues })),
        (
            text(),
            any::<u32>(),
            0u8..4,
            any::<u64>(),
            (text(), text()),
            proptest::collection::vec((text(), any::<u32>()), 0..4)
        )
            .prop_map(
                |(broker_name, broker_id, role, epoch, (address, ha_address), topics)| {
                    Request::RegisterBroker(crate::BrokerRegistration {
                        broker_name,
                        broker_id,
                        role: crate::BrokerRole::from_u8(role).unwrap(),
                        epoch,
                        address,
                        ha_address,
                        topics,
                    })
                }
            ),
    ]
}

fn records() -> impl Strategy<Value = (u32, Bytes)> {
    proptest::collection::vec(message(), 0..4).prop_map(|messages| {
        let mut out = Vec::new();
        for (index, message) in messages.iter().enumerate() {
            let meta = RecordMeta {
                log_offset: out.len() as u64,
                queue_offset: index as u64,
                queue_id: 1,
                store_timestamp_ms: 9,
                flushed_before: 0,
            };
            encode_record(message, &meta, &mut out);
        }
        (messages.len() as u32, Bytes::from(out))
    })
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        Just(Response::Pong),
        Just(Response::CommitOffsetOk),
        Just(Response::Registered),
        (
            any::<u64>(),
            any::<(u32, u32)>(),
            proptest::collection::vec(any::<u32>(), 0..6)
        )
            .prop_map(|(generation, (queue_count, members), queues)| {
                Response::Assignment(crate::Assignment {
                    generation,
                    queue_count,
                    members,
                    queues,
                })
            }),
        proptest::collection::vec((text(), text()), 0..5).prop_map(Response::Info),
        text().prop_map(Response::LoginOk),
        text().prop_map(|json| Response::SecurityResult(crate::SecretText(json))),
        proptest::collection::vec(
            (
                text(),
                text(),
                any::<u32>(),
                proptest::collection::vec(any::<(u32, u64, u64)>(), 0..3)
            ),
            0..3
        )
        .prop_map(|groups| Response::GroupList(
            groups
                .into_iter()
                .map(|(group, topic, members, queues)| crate::GroupInfo {
                    group,
                    topic,
                    members,
                    queues
                })
                .collect()
        )),
        proptest::collection::vec(
            (
                text(),
                any::<(u32, u64, u64)>(),
                proptest::collection::vec(any::<(u64, u64, u64)>(), 0..3)
            ),
            0..3
        )
        .prop_map(|topics| Response::TopicStats(
            topics
                .into_iter()
                .map(
                    |(topic, (window_ms, window_messages, window_bytes), queues)| {
                        crate::TopicStats {
                            topic,
                            window_ms,
                            window_messages,
                            window_bytes,
                            queues: queues
                                .into_iter()
                                .map(|(min_offset, max_offset, bytes)| crate::QueueStats {
                                    min_offset,
                                    max_offset,
                                    bytes,
                                })
                                .collect(),
                        }
                    }
                )
                .collect()
        )),
        (
            any::<u64>(),
            proptest::collection::vec(
                (
                    (text(), any::<u32>(), 0u8..4, any::<u64>()),
                    (
                        text(),
                        any::<(u64, u64, u64)>(),
                        any::<u32>(),
                        any::<bool>()
                    )
                ),
                0..3
            )
        )
            .prop_map(|(broker_timeout_ms, brokers)| Response::Brokers {
                broker_timeout_ms,
                brokers: brokers
                    .into_iter()
                    .map(
                        |(
                            (broker_name, broker_id, role, epoch),
                            (
                                address,
                                (since_heard_ms, interval_ms, known_for_ms),
                                topic_count,
                                routed,
                            ),
                        )| crate::BrokerLiveness {
                            broker_name,
                            broker_id,
                            role: crate::BrokerRole::from_u8(role).unwrap(),
                            epoch,
                            ha_address: address.clone(),
                            address,
                            since_heard_ms,
                            interval_ms,
                            known_for_ms,
                            topic_count,
                            routed,
                        }
                    )
                    .collect(),
            }),
        any::<(u64, u64)>().prop_map(|(epoch, log_end)| Response::Promoted { epoch, log_end }),
        proptest::collection::vec(
            (
                text(),
                any::<u32>(),
                0u8..4,
                any::<u64>(),
                text(),
                any::<u32>()
            ),
            0..4
        )
        .prop_map(|routes| Response::Routes(
            routes
                .into_iter()
                .map(
                    |(broker_name, broker_id, role, epoch, address, topic_queues)| {
                        crate::BrokerRoute {
                            broker_name,
                            broker_id,
                            role: crate::BrokerRole::from_u8(role).unwrap(),
                            epoch,
                            ha_address: address.clone(),
                            address,
                            topic_queues,
                        }
                    }
                )
                .collect()
        )),
        (0u16..4, any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
            |(status, queue_id, queue_offset, log_offset)| {
                Response::SendResult(SendResult {
                    status: SendStatus::from_u16(status).unwrap(),
                    queue_id,
                    queue_offset,
                    log_offset,
                })
            }
        ),
        (0u8..4, any::<(u64, u64, u64)>(), records()).prop_map(
            |(status, (next_offset, min_offset, max_offset), (record_count, records))| {
                Response::PullResult(PullResult {
                    status: PullStatus::from_u8(status).unwrap(),
                    next_offset,
                    min_offset,
                    max_offset,
                    record_count,
                    records,
                })
            }
        ),
        proptest::option::of(any::<u64>()).prop_map(Response::Offset),
        (text(), any::<(u32, u32)>()).prop_map(|(group, (offsets, members))| {
            Response::GroupDeleted(crate::GroupDeleted {
                group,
                offsets,
                members,
            })
        }),
        (text(), any::<bool>()).prop_map(|(group, ordered)| {
            Response::GroupSettings(crate::GroupSettings { group, ordered })
        }),
        (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
            |(transaction_id, commit, already)| {
                Response::TransactionEnded(crate::TransactionEnded {
                    transaction_id,
                    outcome: if commit {
                        crate::TxAction::Commit
                    } else {
                        crate::TxAction::Rollback
                    },
                    already,
                })
            }
        ),
        proptest::collection::vec((any::<(u64, u32)>(), message()), 0..3).prop_map(|checks| {
            Response::TransactionChecks(
                checks
                    .into_iter()
                    .map(
                        |((transaction_id, check), message)| crate::TransactionCheck {
                            transaction_id,
                            check,
                            message,
                        },
                    )
                    .collect(),
            )
        }),
        proptest::collection::vec((text(), text(), any::<(u64, u64, u32, u64)>()), 0..4).prop_map(
            |open| {
                Response::Transactions(
                    open.into_iter()
                        .map(
                            |(
                                producer_group,
                                topic,
                                (transaction_id, stored_ms, checks, next_check_ms),
                            )| {
                                crate::OpenTransaction {
                                    transaction_id,
                                    producer_group,
                                    topic,
                                    stored_ms,
                                    checks,
                                    next_check_ms,
                                }
                            },
                        )
                        .collect(),
                )
            }
        ),
        (text(), any::<u32>(), any::<(u64, u64)>(), any::<bool>()).prop_map(
            |(topic, queues, (messages, bytes), durable)| {
                Response::TopicDeleted(crate::TopicDeleted {
                    topic,
                    queues,
                    messages,
                    bytes,
                    durable,
                })
            }
        ),
        (text(), any::<u32>(), any::<bool>()).prop_map(|(topic, queues, created)| {
            Response::TopicCreated(TopicCreated {
                topic,
                queues,
                created,
            })
        }),
        proptest::collection::vec(
            (text(), proptest::collection::vec(any::<(u64, u64)>(), 0..4)),
            0..3
        )
        .prop_map(|topics| {
            Response::TopicList(
                topics
                    .into_iter()
                    .map(|(topic, queues)| TopicInfo {
                        topic,
                        queues: queues
                            .into_iter()
                            .map(|(min_offset, max_offset)| QueueInfo {
                                min_offset,
                                max_offset,
                            })
                            .collect(),
                    })
                    .collect(),
            )
        }),
        proptest::collection::vec((text(), any::<u64>()), 0..5).prop_map(Response::Stats),
        (
            0u16..4,
            proptest::collection::vec(any::<(u32, u64, u64)>(), 0..5)
        )
            .prop_map(|(status, messages)| {
                Response::SendBatchResult(SendBatchResult {
                    status: SendStatus::from_u16(status).unwrap(),
                    messages,
                })
            }),
        (1u16..=16, text()).prop_map(|(code, message)| Response::error(
            ErrorCode::from_u16(code).unwrap(),
            message
        )),
    ]
}

/// Decodes every frame in `stream` fed in pieces cut at `cuts`, as requests or responses.
fn decode_stream(stream: &[u8], cuts: &[usize]) -> Result<Vec<RawFrame>, DecodeError> {
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let mut position = 0;
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut % (stream.len() + 1)).collect();
    points.push(stream.len());
    points.sort_unstable();
    for point in points {
        buffer.extend_from_slice(&stream[position..point]);
        position = point;
        while let Some(frame) = decode_frame(&mut buffer, MAX_FRAME)? {
            frames.push(frame);
        }
    }
    Ok(frames)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn request_round_trips(request in request(), request_id in any::<u64>(), flags in 0u16..=FLAGS_KNOWN) {
        let mut out = Vec::new();
        request.encode(request_id, flags, &mut out);
        let frame = decode_frame(&mut BytesMut::from(&out[..]), MAX_FRAME).unwrap().unwrap();
        prop_assert_eq!(frame.request_id, request_id);
        prop_assert_eq!(frame.flags, flags);
        prop_assert_eq!(Request::decode(&frame).unwrap(), request);
    }

    #[test]
    fn response_round_trips(response in response(), request_id in any::<u64>()) {
        let mut out = Vec::new();
        response.encode(request_id, &mut out);
        let frame = decode_frame(&mut BytesMut::from(&out[..]), MAX_FRAME).unwrap().unwrap();
        let decoded = Response::decode(&frame).unwrap();
        if let (Response::PullResult(sent), Response::PullResult(got)) = (&response, &decoded) {
            prop_assert_eq!(sent.decode_records().unwrap(), got.decode_records().unwrap());
        }
        prop_assert_eq!(decoded, response);
    }

    #[test]
    fn record_round_trips(message in message(), log_offset in any::<u64>(), queue_offset in any::<u64>()) {
        let meta = RecordMeta { log_offset, queue_offset, queue_id: message.queue_id, store_timestamp_ms: 5, flushed_before: log_offset / 2 };
        let mut out = vec![0xAB; 3];
        let length = encode_record(&message, &meta, &mut out);
        prop_assert_eq!(length, message.record_len());
        let record = decode_record(&out[3..]).unwrap();
        prop_assert_eq!(record.total_size as usize, length);
        prop_assert_eq!(record.log_offset, log_offset);
        prop_assert_eq!(record.queue_offset, queue_offset);
        prop_assert_eq!(&record.topic, &message.topic);
        prop_assert_eq!(&record.tags, &message.tags);
        prop_assert_eq!(&record.keys, &message.keys);
        prop_assert_eq!(&record.properties, &message.properties);
        prop_assert_eq!(&record.payload, &message.payload);
        prop_assert_eq!(record.flushed_before, log_offset / 2);
        prop_assert!(message.crc_matches());
        prop_assert!(record.message_crc_matches());
    }

    #[test]
    fn any_split_decodes_the_same(requests in proptest::collection::vec(request(), 1..6), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        let mut stream = Vec::new();
        for (index, request) in requests.iter().enumerate() {
            request.encode(index as u64, 0, &mut stream);
        }
        let frames = decode_stream(&stream, &cuts).unwrap();
        prop_assert_eq!(frames.len(), requests.len());
        for (frame, request) in frames.iter().zip(&requests) {
            prop_assert_eq!(&Request::decode(frame).unwrap(), request);
        }
    }

    #[test]
    fn corruption_never_panics(request in request(), response in response(), flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4), cuts in proptest::collection::vec(any::<usize>(), 0..4)) {
        for encoded in [
            { let mut out = Vec::new(); request.encode(1, 0, &mut out); out },
            { let mut out = Vec::new(); response.encode(1, &mut out); out },
        ] {
            let mut corrupted = encoded.clone();
            for (position, mask) in &flips {
                let index = position % corrupted.len();
                corrupted[index] ^= mask;
            }
            // The frame layer yields frames, waits for more, or errors; bodies decode or error.
            if let Ok(frames) = decode_stream(&corrupted, &cuts) {
                for frame in frames {
                    let _ = Request::decode(&frame);
                    if let Ok(Response::PullResult(pull)) = Response::decode(&frame) {
                        let _ = pull.decode_records();
                    }
                }
            }
        }
    }

    #[test]
    fn corrupted_record_is_detected(message in message(), position in any::<usize>(), mask in 1u8..=255) {
        let meta = RecordMeta { log_offset: 1, queue_offset: 2, queue_id: 3, store_timestamp_ms: 4, flushed_before: 0 };
        let mut out = Vec::new();
        encode_record(&message, &meta, &mut out);
        let index = position % out.len();
        out[index] ^= mask;
        // CRC32C over the whole record catches every change to any byte but the CRC
        // field itself, and a changed CRC field mismatches the unchanged bytes.
        prop_assert!(decode_record(&out).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_record(&bytes);
        let _ = decode_stream(&bytes, &[]);
    }
}

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).unwrap())
        .collect()
}

/// The example bytes in docs/PROTOCOL.md, checked against the encoder.
#[test]
fn documented_examples_match_the_encoder() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    let message = Message::new("t", &b"hi"[..]);
    let mut send = Vec::new();
    Request::Send(message.clone()).encode(1, 0, &mut send);
    let documented = hex(
        "3f 00 00 00 02 02 00 00 01 00 00 00 00 00 00 00 01 00 74 ff ff ff ff
         00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
         00 00 00 00 e8 78 82 01 00 00 00 00 00 00 02 00 00 00 68 69",
    );
    assert_eq!(send, documented);
    let mut result = Vec::new();
    Response::SendResult(SendResult {
        status: SendStatus::SendOk,
        queue_id: 2,
        queue_offset: 0,
        log_offset: 0,
    })
    .encode(1, &mut result);
    let documented = hex(
        "22 00 00 00 02 82 00 00 01 00 00 00 00 00 00 00 00 00 02 00 00 00
         00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
    );
    assert_eq!(result, documented);
    let mut record = Vec::new();
    let meta = RecordMeta {
        log_offset: 0,
        queue_offset: 0,
        queue_id: 2,
        store_timestamp_ms: 0,
        flushed_before: 0,
    };
    encode_record(&message, &meta, &mut record);
    let documented = hex(
        "5f 00 00 00 4b 52 4c 32 1a 6f 65 e3 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
         02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
         00 00 00 00 00 00 00 00 00 00 00 00 e8 78 82 01 00 00 00 00 00 00 00 00
         01 00 74 00 00 00 00 00 00 02 00 00 00 68 69",
    );
    assert_eq!(record, documented);
    let ping = hex("0c 00 00 00 02 01 00 00 07 00 00 00 00 00 00 00");
    let mut encoded = Vec::new();
    Request::Ping.encode(7, 0, &mut encoded);
    assert_eq!(encoded, ping);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The producer's checksum covers every field but the queue: a changed byte anywhere
    /// else in a SEND body either does not decode or no longer matches `message_crc`.
    #[test]
    fn message_crc_covers_every_byte_of_a_send_but_the_queue(message in message(), position in any::<usize>(), mask in 1u8..=255) {
        prop_assert!(message.crc_matches());
        let mut frame = Vec::new();
        let queue_at = FRAME_HEADER_LEN + 2 + message.topic.len();
        Request::Send(message).encode(1, 0, &mut frame);
        let mut index = FRAME_HEADER_LEN + position % (frame.len() - FRAME_HEADER_LEN);
        if (queue_at..queue_at + 4).contains(&index) {
            index += 4;
        }
        frame[index] ^= mask;
        let mut buffer = BytesMut::from(&frame[..]);
        if let Ok(Some(raw)) = decode_frame(&mut buffer, MAX_FRAME) {
            if let Ok(Request::Send(damaged)) = Request::decode(&raw) {
                prop_assert!(!damaged.crc_matches(), "byte {index} changed and the CRC still matched");
            }
        }
    }
}

#[test]
fn a_stored_record_matches_its_producer_crc_on_whichever_queue_it_went_to() {
    let message = Message::new("orders", &b"payload"[..])
        .with_tags("TagA")
        .with_property("k", "v");
    assert_eq!(message.queue_id, QUEUE_ID_ANY);
    let meta = RecordMeta {
        log_offset: 100,
        queue_offset: 7,
        queue_id: 2,
        store_timestamp_ms: 9,
        flushed_before: 50,
    };
    let mut out = Vec::new();
    encode_record(&message, &meta, &mut out);
    let record = decode_record(&out).unwrap();
    assert_eq!(record.queue_id, 2);
    assert!(record.message_crc_matches());
    // The queue is a placement: moving a sealed message does not unseal it.
    assert_eq!(
        message.clone().with_queue(3).message_crc,
        message.message_crc
    );
    let mut other = message.clone();
    other.tags.push('B');
    assert!(!other.crc_matches());
    // A copy made from a record is sealed anew.
    let mut copy = record.to_message();
    assert!(copy.crc_matches());
    copy.topic = "elsewhere".into();
    assert!(!copy.crc_matches());
}

#[test]
fn reserved_frame_flags_are_refused() {
    let mut out = Vec::new();
    Request::Ping.encode(1, 0x0002, &mut out);
    assert!(matches!(
        decode_frame(&mut BytesMut::from(&out[..]), MAX_FRAME),
        Err(DecodeError::InvalidValue { field: "flags", .. })
    ));
}
