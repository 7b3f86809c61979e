//! The read-only console on the metrics port: a static page (`console/index.html`, no
//! build step, nothing from a CDN) and the JSON it reads: `/api/overview`,
//! `/api/cluster`, `/api/topics`, `/api/groups`, `/api/dlq`, `/api/message?id=HEX` or
//! `?key=K`.
//!
//! With `auth` on, every API call needs `Authorization: Bearer <token>` of a principal
//! holding `admin:stats` (`admin:lookup` for messages and dead letters); a token is accepted only from
//! loopback, since this port speaks plaintext HTTP. The page itself holds no data.

use crate::context::{Broker, Ha};
use keel_protocol::names::property as names;
use keel_protocol::{own_topic, OwnTopic};
use keel_security::{Action, AuthMode, ResourceType};
use serde_json::{json, Value};
use std::net::SocketAddr;

const PAGE: &str = include_str!("console/index.html");

/// An HTTP answer: status line, content type, body.
pub(crate) struct Answer {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

fn answer(status: &'static str, value: Value) -> Answer {
    Answer {
        status,
        content_type: "application/json",
        body: value.to_string(),
    }
}

fn error(status: &'static str, message: impl Into<String>) -> Answer {
    answer(status, json!({ "error": message.into() }))
}

/// Serves one console request: `path` is the request target (with its query).
pub(crate) fn serve(
    broker: &Broker,
    path: &str,
    host: Option<&str>,
    authorization: Option<&str>,
    peer: SocketAddr,
) -> Answer {
    // A page of another site that a browser resolved to this address (DNS rebinding)
    // names its own host: only addresses and localhost are served.
    if !host.is_some_and(host_is_address) {
        return error(
            "403 Forbidden",
            "the Host header must be an IP address or localhost",
        );
    }
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    match route {
        "/" | "/console" | "/console/" => {
            return Answer {
                status: "200 OK",
                content_type: "text/html; charset=utf-8",
                body: PAGE.to_string(),
            }
        }
        "/api/overview" | "/api/topics" | "/api/groups" | "/api/message" | "/api/dlq"
        | "/api/cluster" => {}
        _ => return error("404 Not Found", format!("no {route} here")),
    }
    let action = match route {
        "/api/message" | "/api/dlq" => Action::Lookup,
        _ => Action::Stats,
    };
    if let Err(refusal) = authorize(broker, authorization, peer, action) {
        return refusal;
    }
    match route {
        "/api/overview" => answer("200 OK", overview(broker)),
        "/api/topics" => answer("200 OK", topics(broker)),
        "/api/groups" => answer("200 OK", groups(broker)),
        "/api/dlq" => answer("200 OK", dead_letters(broker)),
        "/api/cluster" => answer("200 OK", cluster(broker)),
        _ => message(broker, query),
    }
}

/// Whether the `Authorization: Bearer` token may do `action` on `admin:*` (always,
/// with logins off). Failures count toward the console's own login limit.
pub(crate) fn authorize(
    broker: &Broker,
    authorization: Option<&str>,
    peer: SocketAddr,
    action: Action,
) -> Result<(), Answer> {
    let authority = &broker.security.authority;
    if authority.mode() == AuthMode::Off {
        return Ok(());
    }
    let Some(token) = authorization.and_then(|value| value.trim().strip_prefix("Bearer ")) else {
        return Err(error(
            "401 Unauthorized",
            "this broker requires a login: give a token (Authorization: Bearer ...)",
        ));
    };
    let principal = authority
        .login_token(
            keel_security::Port::Console,
            token.trim(),
            peer.ip(),
            keel_net::is_secure(peer.ip(), false),
        )
        .map_err(|refusal| {
            log::warn!("console login refused from {peer}: {refusal}");
            error("401 Unauthorized", refusal.to_string())
        })?;
    if !authority.permits(&principal, ResourceType::Admin, "*", action) {
        return Err(error(
            "403 Forbidden",
            format!("{} may not {} admin:*", principal.name, action.name()),
        ));
    }
    Ok(())
}

/// `host` or `host:port` where host is an IP address (v6 in brackets) or localhost.
fn host_is_address(value: &str) -> bool {
    let value = value.trim();
    if value.parse::<SocketAddr>().is_ok() || value.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let host = match value.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => value,
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok()
        || host
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .is_some_and(|inner| inner.parse::<std::net::Ipv6Addr>().is_ok())
}

fn overview(broker: &Broker) -> Value {
    let stats: serde_json::Map<String, Value> = broker
        .stats()
        .into_iter()
        .map(|(name, value)| (name, Value::from(value)))
        .collect();
    let replication = match broker.ha() {
        Ha::None => json!({ "kind": "none" }),
        Ha::Master(master) => {
            let written = broker.store.offset_written();
            let slaves: Vec<Value> = master
                .slaves()
                .iter()
                .map(|slave| {
                    json!({
                        "peer": slave.peer.to_string(),
                        "broker_id": slave.broker_id,
                        "acked": slave.acked,
                        "lag_bytes": written.saturating_sub(slave.acked),
                        "in_sync": slave.in_sync,
                        "since_heard_ms": slave.since_heard.as_millis() as u64,
                    })
                })
                .collect();
            json!({ "kind": "master", "ha_address": master.local_addr().to_string(), "slaves": slaves })
        }
        Ha::Slave(slave) => {
            let status = slave.status();
            json!({
                "kind": "slave",
                "master": slave.master(),
                "connected": status.connected,
                "master_epoch": status.master_epoch,
                "lag_bytes": status.master_end.saturating_sub(broker.store.offset_written()),
                "last_error": status.last_error,
            })
        }
    };
    let controller = broker
        .controller_view
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .clone()
        .map(|(view, at)| {
            json!({
                "master": view.master,
                "master_epoch": view.master_epoch,
                "sss": view.sss,
                "elections": view.elections,
                "heard_ms_ago": at.elapsed().as_millis() as u64,
            })
        });
    json!({
        "broker_name": broker.config.broker_name,
        "address": broker.listen_address().to_string(),
        "role": broker.role().name(),
        "auth": broker.config.security.auth.name(),
        "tls": broker.security.tls.is_some(),
        "stats": stats,
        "replication": replication,
        "controller": controller,
    })
}

fn topics(broker: &Broker) -> Value {
    let topics: Vec<Value> = broker
        .topic_stats("")
        .into_iter()
        .map(|stats| {
            let queues: Vec<Value> = stats
                .queues
                .iter()
                .enumerate()
                .map(|(queue, q)| {
                    json!({
                        "queue": queue, "min_offset": q.min_offset,
                        "max_offset": q.max_offset, "bytes": q.bytes,
                    })
                })
                .collect();
            let per_second = |count: u64| match stats.window_ms {
                0 => 0.0,
                ms => count as f64 * 1000.0 / f64::from(ms),
            };
            json!({
                "topic": stats.topic,
                "internal": stats.topic.starts_with('%'),
                "bytes": stats.queues.iter().map(|q| q.bytes).sum::<u64>(),
                "messages_per_second": per_second(stats.window_messages),
                "bytes_per_second": per_second(stats.window_bytes),
                "window_ms": stats.window_ms,
                "queues": queues,
            })
        })
        .collect();
    json!({ "topics": topics })
}

fn groups(broker: &Broker) -> Value {
    let mut by_group: std::collections::BTreeMap<(String, String), Vec<Value>> =
        std::collections::BTreeMap::new();
    for (group, topic, queue, committed, max) in broker.consumer_positions() {
        let lag_seconds = broker.lag_seconds(&topic, queue, committed, max);
        by_group.entry((group, topic)).or_default().push(json!({
            "queue": queue,
            "committed": committed,
            "max_offset": max,
            "lag": max.saturating_sub(committed),
            "lag_seconds": lag_seconds,
        }));
    }
    let rates = broker.commit_rates();
    let members: std::collections::HashMap<(String, String), (usize, usize)> = broker
        .groups
        .describe()
        .into_iter()
        .map(|(group, topic, members, owned)| ((group, topic), (members, owned)))
        .collect();
    let mut keys: Vec<(String, String)> = by_group.keys().cloned().collect();
    for key in members.keys() {
        if !by_group.contains_key(key) {
            keys.push(key.clone());
        }
    }
    keys.sort();
    let groups: Vec<Value> = keys
        .into_iter()
        .map(|key| {
            let (members, owned) = members.get(&key).copied().unwrap_or((0, 0));
            let queues = by_group.remove(&key).unwrap_or_default();
            let lag: u64 = queues.iter().filter_map(|q| q["lag"].as_u64()).sum();
            let lag_seconds = queues
                .iter()
                .filter_map(|q| q["lag_seconds"].as_f64())
                .fold(0.0, f64::max);
            json!({
                "group": key.0,
                "topic": key.1,
                "internal": key.0.starts_with('%') || key.1.starts_with('%'),
                "members": members,
                "queues_owned": owned,
                "lag": lag,
                "lag_seconds": lag_seconds,
                "committed_per_second": rates.get(&key).copied().unwrap_or(0.0),
                "queues": queues,
            })
        })
        .collect();
    json!({ "groups": groups })
}

/// The cluster as this broker's name servers see it (GET_BROKERS of the first that
/// answers, 2 s each): every broker, its role, when it last registered, and whether it
/// is stale. Asks over the network: the console's thread, never an event loop.
fn cluster(broker: &Broker) -> Value {
    let name_servers = &broker.config.namesrv_addrs;
    let outbound = broker.security.dial();
    let mut errors = Vec::new();
    for address in name_servers {
        let asked = keel_net::call(
            address,
            &keel_protocol::Request::GetBrokers,
            std::time::Duration::from_secs(2),
            &outbound,
        );
        let (timeout_ms, brokers) = match asked {
            Ok(keel_protocol::Response::Brokers {
                broker_timeout_ms,
                brokers,
            }) => (broker_timeout_ms, brokers),
            Ok(keel_protocol::Response::Error(error)) => {
                errors.push(format!("{address}: {error}"));
                continue;
            }
            Ok(other) => {
                errors.push(format!("{address}: unexpected {}", other.kind().name()));
                continue;
            }
            Err(error) => {
                errors.push(format!("{address}: {error}"));
                continue;
            }
        };
        let brokers: Vec<Value> = brokers
            .iter()
            .map(|b| {
                json!({
                    "broker_name": b.broker_name, "broker_id": b.broker_id,
                    "role": b.role.name(), "epoch": b.epoch, "address": b.address,
                    "since_heard_ms": b.since_heard_ms, "interval_ms": b.interval_ms,
                    "known_for_ms": b.known_for_ms, "topics": b.topic_count,
                    "routed": b.routed, "stale": b.is_stale(timeout_ms),
                })
            })
            .collect();
        return json!({
            "name_servers": name_servers, "asked": address, "broker_timeout_ms": timeout_ms,
            "brokers": brokers, "errors": errors,
        });
    }
    json!({ "name_servers": name_servers, "asked": null, "brokers": [], "errors": errors })
}

/// Dead-lettered messages shown of each group: the newest.
const DLQ_SHOWN: u64 = 20;
/// Payload bytes shown of each.
const PAYLOAD_SHOWN: usize = 120;

/// Every group's dead-letter queue: how many messages, how many redriven, and the newest
/// ones with where they came from and why. Reads the log (the console's thread).
fn dead_letters(broker: &Broker) -> Value {
    let store = &broker.store;
    let dlqs: Vec<Value> = store
        .queue_offsets(None)
        .into_iter()
        .filter_map(|(topic, queues)| {
            let Some(OwnTopic::DeadLetter { group }) = own_topic(&topic) else {
                return None;
            };
            let group = group.to_string();
            let stored: u64 = queues.iter().map(|(min, max)| max - min).sum();
            let redriven = store
                .query_offset(&format!("%REDRIVE%{group}"), &topic, 0)
                .unwrap_or(0);
            let mut messages = Vec::new();
            for (queue, (min, max)) in queues.iter().enumerate() {
                let from = max.saturating_sub(DLQ_SHOWN).max(*min);
                let Ok(read) = store.read_queue(&topic, queue as u32, from, 64, 1 << 20) else {
                    continue;
                };
                let mut rest = &read.records[..];
                while let Ok(record) = keel_protocol::decode_record(rest) {
                    rest = rest.get(record.total_size as usize..).unwrap_or_default();
                    messages.push(dead_letter(&record));
                }
            }
            // Newest first, over every queue.
            messages.sort_by_key(|m| std::cmp::Reverse(m["stored_ms"].as_u64().unwrap_or(0)));
            messages.truncate(DLQ_SHOWN as usize);
            Some(json!({
                "group": group, "topic": topic, "messages": stored, "redriven": redriven,
                "newest": messages,
            }))
        })
        .collect();
    json!({ "dlqs": dlqs, "shown_per_group": DLQ_SHOWN })
}

fn dead_letter(record: &keel_protocol::Record) -> Value {
    let property = |name: &str| record.property(name).unwrap_or_default().to_string();
    let shown = record
        .payload
        .get(..PAYLOAD_SHOWN)
        .unwrap_or(&record.payload);
    json!({
        "msg_id": record.message_id(),
        "stored_ms": record.store_timestamp_ms,
        "origin_topic": property(names::ORIGIN_TOPIC),
        "origin_msg_id": property(names::ORIGIN_MSG_ID),
        "attempts": property(names::RECONSUME_TIMES),
        "reason": property(names::REASON),
        "payload_bytes": record.payload.len(),
        "payload": String::from_utf8_lossy(shown),
    })
}

fn message(broker: &Broker, query: &str) -> Answer {
    let mut id = None;
    let mut key = String::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("id", value)) => id = Some(value.to_string()),
            Some(("key", value)) => key = percent_decode(value),
            _ => {}
        }
    }
    let msg_id = match (&id, key.is_empty()) {
        (Some(id), true) => match u64::from_str_radix(id, 16) {
            Ok(msg_id) => msg_id,
            Err(_) => {
                return error(
                    "400 Bad Request",
                    format!("{id:?} is not a message id (16 hex digits)"),
                )
            }
        },
        (None, false) => 0,
        _ => return error("400 Bad Request", "give id=HEX or key=KEY"),
    };
    match crate::broker::handlers::message_info::lookup(broker, msg_id, &key) {
        Ok(facts) => {
            let facts: Vec<Value> = facts
                .into_iter()
                .map(|(name, value)| json!({ "name": name, "value": value }))
                .collect();
            answer("200 OK", json!({ "facts": facts }))
        }
        Err(refusal) => error("404 Not Found", refusal.to_string()),
    }
}

/// `%XX` and `+` of a query value.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |byte: u8| char::from(byte).to_digit(16).map(|digit| digit as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        match byte {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(index + 1).copied().and_then(hex),
                bytes.get(index + 2).copied().and_then(hex),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    index += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
