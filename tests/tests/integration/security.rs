//! Security with real processes: logins, permissions on every request kind, TLS on the
//! client and HA ports, the cluster token on replication, name servers and controllers.
//! Each refusal is checked for its error code, for what was stored (nothing), and for
//! the broker's log.

use crate::harness::{free_ports, wait_until, BrokerProcess, KEELD};
use keel_client::{
    Admin, ClientError, ClientTls, ConnectionOptions, Consumer, ConsumerOptions, Credentials,
    Message, Producer, ProducerOptions, SendStatus,
};
use keel_protocol::{
    BrokerRegistration, BrokerRole, CommitOffsetRequest, CreateTopicRequest, ErrorCode,
    GroupCommitRequest, HeartbeatRequest, Kind, ListTopicsRequest, Login, OffsetForTimeRequest,
    PullRequest, QueryOffsetRequest, Request, Response, SendBackRequest,
};
use keel_security::{AclEntry, Action, Effect, ResourceType, Secret, SecurityCommand};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub(crate) const ADMIN_PASSWORD: &str = "admin password 1";

/// Certificates for the tests: a CA, a broker certificate for 127.0.0.1 and
/// localhost, one for localhost alone, a client certificate, a certificate from
/// another CA, an expired one.
pub(crate) struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub(crate) fn new(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("keel test {name}"));
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            write(&format!("{name}.crt"), cert.pem());
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("ca");
        let (other_cert, other_key) = ca("other-ca");
        let leaf_for = |name: &str,
                        names: Vec<String>,
                        issuer: (&rcgen::Certificate, &KeyPair),
                        expired: bool| {
            let mut params = CertificateParams::new(names).unwrap();
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, issuer.0, issuer.1).unwrap();
            write(&format!("{name}.crt"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        };
        let leaf = |name: &str, issuer: (&rcgen::Certificate, &KeyPair), expired: bool| {
            let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            leaf_for(name, names, issuer, expired)
        };
        leaf_for(
            "localhost-only",
            vec!["localhost".to_string()],
            (&ca_cert, &ca_key),
            false,
        );
        leaf("broker", (&ca_cert, &ca_key), false);
        leaf("client", (&ca_cert, &ca_key), false);
        leaf("stranger", (&other_cert, &other_key), false);
        leaf("expired", (&ca_cert, &ca_key), true);
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn client(&self, ca: &str, cert: Option<&str>) -> ClientTls {
        let cert_key = cert.map(|name| {
            (
                self.dir.join(format!("{name}.crt")),
                self.dir.join(format!("{name}.key")),
            )
        });
        ClientTls::new(
            &self.dir.join(format!("{ca}.crt")),
            cert_key.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            None,
        )
        .unwrap()
    }

    /// The `security = { ... }` TOML of a TLS broker with `extra` keys.
    fn broker_tls(&self, cert: &str, extra: &str) -> String {
        format!(
            "tls_cert_file = \"{}\", tls_key_file = \"{}\", tls_ca_file = \"{}\"{extra}",
            self.path(&format!("{cert}.crt")),
            self.path(&format!("{cert}.key")),
            self.path("ca.crt")
        )
    }
}

/// A consumer of group g on "orders" that has read `expected` records.
fn consume_orders(address: &str, options: &ConnectionOptions, expected: u64) -> Consumer {
    let mut consumer = Consumer::connect(
        address,
        "g",
        "orders",
        ConsumerOptions {
            connection: options.clone(),
            long_poll: Duration::from_millis(100),
            ..ConsumerOptions::default()
        },
    )
    .unwrap();
    let mut read = 0u64;
    for _ in 0..50 {
        read += consumer.poll(|_| Ok::<(), String>(())).unwrap().handled;
        if read >= expected {
            break;
        }
    }
    assert_eq!(read, expected);
    consumer
}

fn password(user: &str, password: &str) -> Option<Credentials> {
    Some(Credentials::Password {
        user: user.into(),
        password: password.into(),
    })
}

fn options(tls: Option<ClientTls>, credentials: Option<Credentials>) -> ConnectionOptions {
    ConnectionOptions {
        tls,
        credentials,
        ..ConnectionOptions::default()
    }
}

fn admin(address: &str, options: &ConnectionOptions) -> Admin {
    Admin::connect_with(address, options).expect("admin connection")
}

fn broker_error<T>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Broker(error)) => error.code,
        Err(other) => panic!("expected a broker error, got {other:?}"),
        Ok(_) => panic!("expected a broker error, got a success"),
    }
}

fn grant(
    admin: &Admin,
    principal: &str,
    resource: ResourceType,
    pattern: &str,
    actions: &[Action],
) {
    admin
        .security(&SecurityCommand::AclGrant {
            entry: AclEntry {
                principal: principal.into(),
                effect: Effect::Allow,
                resource,
                pattern: pattern.into(),
                actions: actions.to_vec(),
            },
        })
        .expect("grant");
}

/// A broker with `auth = "required"` and its first operator.
pub(crate) fn secured_broker(security: &str) -> BrokerProcess {
    secured_broker_with(security, "")
}

/// `secured_broker` with more (top-level) config lines.
fn secured_broker_with(security: &str, lines: &str) -> BrokerProcess {
    let extra = format!("security = {{ auth = \"required\"{security} }}\n{lines}");
    let mut broker = BrokerProcess::create(&extra);
    let output = broker.add_admin("ops", ADMIN_PASSWORD);
    assert!(output.status.success(), "{output:?}");
    broker.spawn();
    broker
}

/// One frame on a fresh plaintext connection: the reply's kind and (for an ERROR) code.
fn raw_exchange(address: &str, request: &Request) -> (u8, Option<u16>) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut frame = Vec::new();
    request.encode(7, 0, &mut frame);
    stream.write_all(&frame).unwrap();
    read_reply(&mut stream)
}

pub fn read_reply(stream: &mut TcpStream) -> (u8, Option<u16>) {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).expect("a reply");
    let mut rest = vec![0u8; u32::from_le_bytes(prefix) as usize];
    stream.read_exact(&mut rest).expect("the whole reply");
    let kind = rest[1];
    let code = (kind == Kind::Error as u8).then(|| u16::from_le_bytes([rest[12], rest[13]]));
    (kind, code)
}

/// The permissions each request kind needs (`needs`, what is enforced) are the ones its
/// rule (`rule`, what docs/PROTOCOL.md's table says, checked there) names.
#[test]
fn every_kinds_enforced_permissions_are_the_ones_its_documented_rule_names() {
    use keel_server::broker::permissions::{needs, rule};
    let mut kinds = std::collections::HashSet::new();
    for request in one_of_each_kind() {
        let kind = request.kind();
        kinds.insert(kind.name());
        let words = rule(kind).expect("every request kind has a rule");
        for need in needs(&request).unwrap_or_default() {
            let named = format!("{}:{}", need.resource.name(), need.action.name());
            assert!(
                words.contains(&named),
                "{} needs {named} but its rule says {words:?}",
                kind.name()
            );
        }
    }
    // PING and LOGIN need nothing (and are not in `one_of_each_kind`).
    let requests = Kind::ALL.iter().filter(|kind| kind.is_request()).count();
    assert_eq!(kinds.len() + 2, requests, "one_of_each_kind misses a kind");
    assert_eq!(needs(&Request::Ping), None);
}

/// One request of every kind a client may send, with plausible bodies.
fn one_of_each_kind() -> Vec<Request> {
    let message = Message::new("orders", "x");
    vec![
        Request::Send(message.clone()),
        Request::SendBatch(vec![message.clone()]),
        Request::Pull(PullRequest {
            topic: "orders".into(),
            max_messages: 1,
            max_bytes: 1024,
            ..PullRequest::default()
        }),
        Request::CommitOffset(CommitOffsetRequest {
            group: "g".into(),
            topic: "orders".into(),
            ..CommitOffsetRequest::default()
        }),
        Request::QueryOffset(QueryOffsetRequest {
            group: "g".into(),
            topic: "orders".into(),
            queue_id: 0,
        }),
        Request::CreateTopic(CreateTopicRequest {
            topic: "new".into(),
            queues: 1,
        }),
        Request::ListTopics(ListTopicsRequest::default()),
        Request::Stats,
        Request::Promote {
            role: BrokerRole::Master,
            force: true,
        },
        Request::RegisterBroker(BrokerRegistration {
            broker_name: "fake".into(),
            broker_id: 0,
            role: BrokerRole::Master,
            epoch: 1,
            address: "127.0.0.1:1".into(),
            ha_address: String::new(),
            topics: Vec::new(),
        }),
        Request::GetRoutes(String::new()),
        Request::Heartbeat(HeartbeatRequest {
            group: "g".into(),
            topic: "orders".into(),
            member_id: "m".into(),
            session_timeout_ms: 10_000,
            owned: Vec::new(),
        }),
        Request::GroupCommit(GroupCommitRequest {
            group: "g".into(),
            topic: "orders".into(),
            member_id: "m".into(),
            ..GroupCommitRequest::default()
        }),
        Request::SendBack(SendBackRequest {
            group: "g".into(),
            message,
            ..SendBackRequest::default()
        }),
        Request::OffsetForTime(OffsetForTimeRequest {
            topic: "orders".into(),
            queue_id: 0,
            timestamp_ms: 0,
        }),
        Request::MessageInfo {
            msg_id: 0,
            key: String::new(),
        },
        Request::ListGroups(String::new()),
        Request::TopicStats(String::new()),
        Request::AddQueues(keel_protocol::CreateTopicRequest {
            topic: "orders".into(),
            queues: 4,
        }),
        Request::GetBrokers,
        Request::DeleteTopic {
            topic: "orders".into(),
            force: true,
        },
        Request::DeleteGroup {
            group: "g".into(),
            force: true,
        },
        Request::GroupSettings {
            group: "g".into(),
            ordered: Some(true),
        },
        Request::EndTransaction(keel_protocol::EndTransactionRequest {
            producer_group: "g".into(),
            topic: "orders".into(),
            transaction_id: 0,
            action: keel_protocol::TxAction::Commit,
        }),
        Request::CheckTransactions {
            producer_group: "g".into(),
            max: 1,
        },
        Request::ListTransactions {
            producer_group: String::new(),
        },
        Request::SecurityAdmin(keel_protocol::SecretText(
            SecurityCommand::UserList.to_json(),
        )),
    ]
}

#[test]
fn logins_and_permissions_refuse_every_request_that_lacks_them() {
    let broker = secured_broker("");
    let address = broker.address.clone();
    let ops = admin(&address, &options(None, password("ops", ADMIN_PASSWORD)));
    assert_eq!(ops.principal(), Some("ops"));
    ops.create_topic("orders", 2).unwrap();
    ops.create_topic("payments", 2).unwrap();

    // Every request kind before a login: refused, the connection closed, nothing done.
    let kinds = one_of_each_kind();
    assert_eq!(
        kinds.len() + 2,
        Kind::ALL.iter().filter(|kind| kind.is_request()).count(),
        "one of each request kind but PING and LOGIN"
    );
    for request in &kinds {
        let (kind, code) = raw_exchange(&address, request);
        assert_eq!(
            (kind, code),
            (Kind::Error as u8, Some(ErrorCode::NotAuthenticated as u16)),
            "{:?} before LOGIN",
            request.kind()
        );
    }
    assert_eq!(raw_exchange(&address, &Request::Ping).0, Kind::Pong as u8);
    let stats = ops.stats().unwrap();
    let stat = |name: &str| stats.iter().find(|(n, _)| n == name).unwrap().1;
    assert_eq!(stat("records_appended"), 0, "nothing stored");
    assert!(stat("unauthenticated_requests") >= kinds.len() as u64);
    assert!(
        ops.list_topics(None)
            .unwrap()
            .iter()
            .all(|t| t.topic != "new"),
        "no topic created"
    );

    // A frame over pre_auth_max_frame_bytes before the login.
    let big = Request::Send(Message::new("orders", vec![b'x'; 10_000]));
    assert_eq!(
        raw_exchange(&address, &big),
        (Kind::Error as u8, Some(ErrorCode::FrameTooLarge as u16))
    );

    // Wrong password and unknown user: one answer for both.
    let refused = |credentials| Admin::connect_with(&address, &options(None, credentials));
    assert_eq!(
        broker_error(refused(password("ops", "wrong password"))),
        ErrorCode::AuthenticationFailed
    );
    assert_eq!(
        broker_error(refused(password("nobody", ADMIN_PASSWORD))),
        ErrorCode::AuthenticationFailed
    );

    // A producer that may only send to orders; a consumer (a token) that may only read
    // it as group g.
    ops.security(&SecurityCommand::UserAdd {
        name: "orders-producer".into(),
        password: Secret("producer password".into()),
    })
    .unwrap();
    grant(
        &ops,
        "orders-producer",
        ResourceType::Topic,
        "orders",
        &[Action::Publish],
    );
    let token = ops
        .security(&SecurityCommand::TokenCreate {
            name: "orders-consumer".into(),
        })
        .unwrap();
    let (token, token_id) = (token.token.unwrap().0, token.token_id.unwrap());
    grant(
        &ops,
        "orders-consumer",
        ResourceType::Topic,
        "orders",
        &[Action::Subscribe],
    );
    grant(
        &ops,
        "orders-consumer",
        ResourceType::Group,
        "g",
        &[Action::Consume, Action::Commit],
    );

    let producer_options = options(None, password("orders-producer", "producer password"));
    let producer = Producer::connect(
        &address,
        ProducerOptions {
            connection: producer_options.clone(),
            ..ProducerOptions::default()
        },
    )
    .unwrap();
    for index in 0..10 {
        let sent = producer
            .send(Message::new("orders", format!("order {index}")))
            .unwrap();
        assert_eq!(sent.status, SendStatus::SendOk);
    }
    assert_eq!(
        broker_error(producer.send(Message::new("payments", "not mine"))),
        ErrorCode::PermissionDenied
    );
    // The connection stays open: the next allowed send goes through.
    assert_eq!(
        producer
            .send(Message::new("orders", "after"))
            .unwrap()
            .status,
        SendStatus::SendOk
    );
    let as_producer = admin(&address, &producer_options);
    assert_eq!(
        broker_error(as_producer.stats()),
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        broker_error(as_producer.create_topic("mine", 1)),
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        broker_error(as_producer.security(&SecurityCommand::UserList)),
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        broker_error(as_producer.commit_offset("g", "orders", 0, 1)),
        ErrorCode::PermissionDenied
    );

    let consumer_options = options(None, Some(Credentials::Token(token.clone())));
    let mut consumer = consume_orders(&address, &consumer_options, 11);
    consumer.commit().unwrap();
    assert_eq!(
        admin(&address, &options(None, password("ops", ADMIN_PASSWORD)))
            .query_offset("g", "orders", 0)
            .unwrap()
            .unwrap_or(0)
            + admin(&address, &options(None, password("ops", ADMIN_PASSWORD)))
                .query_offset("g", "orders", 1)
                .unwrap()
                .unwrap_or(0),
        11,
        "the token's commits of group g were stored"
    );
    let as_consumer = admin(&address, &consumer_options);
    assert_eq!(
        broker_error(as_consumer.commit_offset("other-group", "orders", 0, 1)),
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        broker_error(as_consumer.query_offset("other-group", "orders", 0)),
        ErrorCode::PermissionDenied
    );
    let consumer_producer = Producer::connect(
        &address,
        ProducerOptions {
            connection: consumer_options.clone(),
            ..ProducerOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        broker_error(consumer_producer.send(Message::new("orders", "x"))),
        ErrorCode::PermissionDenied
    );

    // Revoked: the open connection is refused at its next request, a new login fails.
    ops.security(&SecurityCommand::TokenRevoke { id: token_id })
        .unwrap();
    assert!(as_consumer.query_offset("g", "orders", 0).is_err());
    assert_eq!(
        broker_error(Admin::connect_with(&address, &consumer_options)),
        ErrorCode::AuthenticationFailed
    );

    // A new password ends the sessions of the old one.
    ops.security(&SecurityCommand::UserPasswd {
        name: "orders-producer".into(),
        password: Secret("a new producer password".into()),
    })
    .unwrap();
    assert!(
        as_producer.list_topics(Some("orders")).is_err(),
        "the old password's session is over"
    );
    assert_eq!(
        broker_error(Admin::connect_with(&address, &producer_options)),
        ErrorCode::AuthenticationFailed
    );

    // Nothing was stored by a refused request: 11 sends got SEND_OK, 11 records.
    assert_eq!(
        ops.stats()
            .unwrap()
            .iter()
            .find(|(n, _)| n == "records_appended")
            .unwrap()
            .1,
        11
    );
    // The password and token are nowhere on disk; the hashes are Argon2id.
    let file = std::fs::read_to_string(broker.dir.join("data").join("security.json")).unwrap();
    assert!(file.contains("$argon2id$"));
    assert!(!file.contains("producer password") && !file.contains(ADMIN_PASSWORD));
    assert!(!file.contains(&token[22..]));
    let log = broker.log();
    assert!(log.contains("login refused from 127.0.0.1"), "{log}");
    assert!(log.contains("may not publish topic:payments"), "{log}");
    assert!(!log.contains("producer password") && !log.contains(&token[22..]));

    // Failed logins from one address are limited.
    let mut codes = Vec::new();
    for _ in 0..7 {
        codes.push(broker_error(refused(password("ops", "guessing"))));
    }
    assert!(
        codes.contains(&ErrorCode::TooManyLoginFailures),
        "{codes:?}"
    );
}

#[test]
fn tls_on_the_client_port_refuses_plaintext_strangers_and_expired_certificates() {
    let temp = tempfile::tempdir().unwrap();
    let pki = Pki::new(temp.path());
    let broker = secured_broker(&format!(", {}", pki.broker_tls("broker", "")));
    let address = broker.address.clone();
    let credentials = password("ops", ADMIN_PASSWORD);

    let good = options(Some(pki.client("ca", None)), credentials.clone());
    let ops = admin(&address, &good);
    ops.create_topic("orders", 1).unwrap();
    let producer = Producer::connect(
        &address,
        ProducerOptions {
            connection: good.clone(),
            ..ProducerOptions::default()
        },
    )
    .unwrap();
    for index in 0..100 {
        let sent = producer
            .send(Message::new("orders", format!("m{index}")))
            .unwrap();
        assert_eq!(sent.status, SendStatus::SendOk);
    }
    consume_orders(&address, &good, 100);

    // Plaintext to the TLS port: a plaintext TLS_REQUIRED, then the close.
    assert_eq!(
        raw_exchange(&address, &Request::Ping),
        (Kind::Error as u8, Some(ErrorCode::TlsRequired as u16))
    );
    // A client that trusts another CA, and a broker with an expired certificate.
    let stranger = Admin::connect_with(
        &address,
        &options(Some(pki.client("other-ca", None)), credentials.clone()),
    );
    match &stranger {
        Err(ClientError::Tls { detail, .. }) => assert!(detail.contains("TLS"), "{detail}"),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a client trusting another CA connected"),
    }
    let expired = secured_broker(&format!(", {}", pki.broker_tls("expired", "")));
    let outcome = Admin::connect_with(&expired.address, &good);
    match &outcome {
        Err(ClientError::Tls { detail, .. }) => assert!(detail.contains("xpired"), "{detail}"),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("an expired certificate was accepted"),
    }
    // TLS to a plaintext broker.
    let plain = BrokerProcess::start("");
    let outcome = Admin::connect_with(&plain.address, &options(Some(pki.client("ca", None)), None));
    assert!(outcome.is_err());
    assert!(
        plain.log().contains("this port speaks plaintext"),
        "{}",
        plain.log()
    );
    assert!(broker.stat_with("tls_handshake_failures", &good) >= 1);
    assert!(expired.log().contains("TLS"), "{}", expired.log());

    // Client certificates required: none, or one from another CA, is refused.
    let mutual = secured_broker(&format!(
        ", {}",
        pki.broker_tls(
            "broker",
            &format!(", tls_client_ca_file = \"{}\"", pki.path("ca.crt"))
        )
    ));
    assert!(Admin::connect_with(&mutual.address, &good).is_err());
    let wrong_cert = options(
        Some(pki.client("ca", Some("stranger"))),
        credentials.clone(),
    );
    assert!(Admin::connect_with(&mutual.address, &wrong_cert).is_err());
    let with_cert = options(Some(pki.client("ca", Some("client"))), credentials);
    admin(&mutual.address, &with_cert).ping().unwrap();
}

impl BrokerProcess {
    fn stat_with(&self, name: &str, options: &ConnectionOptions) -> u64 {
        admin(&self.address, options)
            .stats()
            .unwrap()
            .into_iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
            .unwrap()
    }
}

#[test]
fn replication_and_promotion_over_tls_need_the_cluster_token_and_keep_the_rules() {
    let temp = tempfile::tempdir().unwrap();
    let pki = Pki::new(temp.path());
    std::fs::write(temp.path().join("cluster.token"), "the cluster secret\n").unwrap();
    std::fs::write(temp.path().join("wrong.token"), "not the secret\n").unwrap();
    let token = |name: &str| {
        format!(
            ", cluster_token_file = \"{}\"",
            temp.path().join(name).display()
        )
    };
    let [m_port, m_ha, s_port, s_ha, x_port, x_ha] = free_ports();
    let master = secured_broker_with(
        &format!(
            ", {}{}",
            pki.broker_tls("broker", ""),
            token("cluster.token")
        ),
        &format!(
            "listen = \"127.0.0.1:{m_port}\"\nrole = \"sync_master\"\nha_port = {m_ha}\n\
             ha_heartbeat_ms = 100"
        ),
    );
    let good = options(
        Some(pki.client("ca", None)),
        password("ops", ADMIN_PASSWORD),
    );
    let ops = admin(&master.address, &good);
    ops.security(&SecurityCommand::UserAdd {
        name: "app".into(),
        password: Secret("app password".into()),
    })
    .unwrap();
    grant(
        &ops,
        "app",
        ResourceType::Topic,
        "orders",
        &[Action::Publish, Action::Subscribe],
    );
    ops.create_topic("orders", 1).unwrap();

    let slave_config = |port: u16, ha: u16, token_file: &str| {
        format!(
            "security = {{ auth = \"required\", {}{} }}\nlisten = \"127.0.0.1:{port}\"\nrole = \"slave\"\nbroker_id = 1\nmaster_address = \"127.0.0.1:{m_ha}\"\nha_port = {ha}\nha_heartbeat_ms = 100",
            pki.broker_tls("broker", ""),
            token(token_file)
        )
    };
    // A slave with the wrong token is refused and receives nothing.
    let intruder = BrokerProcess::start(&slave_config(x_port, x_ha, "wrong.token"));
    wait_until("the refusal", Duration::from_secs(20), || {
        intruder.log().contains("HA login refused")
    });
    assert!(master.log().contains("refusing slave"), "{}", master.log());
    drop(intruder);

    let slave = BrokerProcess::start(&slave_config(s_port, s_ha, "cluster.token"));
    let app = options(
        Some(pki.client("ca", None)),
        password("app", "app password"),
    );
    let producer = Producer::connect(
        &master.address,
        ProducerOptions {
            connection: app.clone(),
            ..ProducerOptions::default()
        },
    )
    .unwrap();
    for index in 0..50 {
        let sent = producer
            .send(Message::new("orders", format!("m{index}")))
            .unwrap();
        assert_eq!(
            sent.status,
            SendStatus::SendOk,
            "acknowledged by the slave over TLS"
        );
    }
    // Frames far over TLS's 16 KiB records and rustls's 64 KiB buffer, both ways: a
    // 600 KiB batch from the client, DATA frames of up to 1 MiB to the slave.
    let big: Vec<Message> = (0..6)
        .map(|index| Message::new("orders", vec![b'0' + index as u8; 100 * 1024]))
        .collect();
    let sent = producer.send_batch(big).unwrap();
    assert_eq!(sent.status, SendStatus::SendOk);
    // The rules reached the slave: it knows the app's password and permissions.
    wait_until(
        "the security state on the slave",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(slave.dir.join("data").join("security.json"))
                .is_ok_and(|file| file.contains("\"app\""))
        },
    );
    // The slave refuses changes (they are the master's).
    let on_slave = admin(&slave.address, &good);
    assert_eq!(
        broker_error(on_slave.security(&SecurityCommand::UserRemove { name: "app".into() })),
        ErrorCode::NotMaster
    );
    // Promotion needs cluster:promote: the app lacks it, ops has it.
    let app_on_slave = admin(&slave.address, &app);
    assert_eq!(
        broker_error(app_on_slave.force_promote(BrokerRole::Master)),
        ErrorCode::PermissionDenied
    );
    drop(producer);
    drop(ops);
    drop(master);
    on_slave.force_promote(BrokerRole::Master).unwrap();
    // The promoted slave enforces the same rules: the app sends to orders, not elsewhere.
    let producer = Producer::connect(
        &slave.address,
        ProducerOptions {
            connection: app,
            ..ProducerOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        producer
            .send(Message::new("orders", "after the failover"))
            .unwrap()
            .status,
        SendStatus::SendOk
    );
    assert_eq!(
        broker_error(producer.send(Message::new("elsewhere", "x"))),
        ErrorCode::PermissionDenied
    );
}

pub(crate) fn spawn_line(command: &mut Command, prefix: &str) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let address = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(address) = line.strip_prefix(prefix) {
                    break address.trim().to_string();
                }
            }
            other => panic!("{prefix}: no ready line ({other:?})"),
        }
    };
    (child, address)
}

#[test]
fn name_servers_and_controllers_take_cluster_requests_only_with_the_cluster_token() {
    let temp = tempfile::tempdir().unwrap();
    let pki = Pki::new(temp.path());
    let token_file = temp.path().join("cluster.token");
    std::fs::write(&token_file, "the cluster secret\n").unwrap();
    let [controller_port] = free_ports();
    let (mut namesrv, address) = spawn_line(
        Command::new(KEELD)
            .args(["namesrv", "--listen", "127.0.0.1:0"])
            .args(["--tls-cert", &pki.path("broker.crt")])
            .args(["--tls-key", &pki.path("broker.key")])
            .args(["--tls-ca", &pki.path("ca.crt")])
            .arg("--cluster-token-file")
            .arg(&token_file)
            .args(["--controller-id", "1"])
            .args([
                "--controller-peers",
                &format!("1=127.0.0.1:{controller_port}"),
            ])
            .arg("--controller-dir")
            .arg(temp.path().join("controller")),
        "keeld namesrv listening on ",
    );
    let registration = Request::RegisterBroker(BrokerRegistration {
        broker_name: "fake".into(),
        broker_id: 0,
        role: BrokerRole::Master,
        epoch: 9,
        address: "127.0.0.1:1".into(),
        ha_address: String::new(),
        topics: Vec::new(),
    });
    let tls = keel_net::Dial {
        tls: Some(pki.client("ca", None)),
        token: None,
    };
    let call = |outbound: &keel_net::Dial| {
        keel_net::call(&address, &registration, Duration::from_secs(5), outbound)
    };
    // No token: refused. Plaintext: refused. With the token over TLS: registered.
    match call(&tls) {
        Ok(Response::Error(error)) => assert_eq!(error.code, ErrorCode::PermissionDenied),
        other => panic!("{other:?}"),
    }
    match call(&keel_net::Dial::default()) {
        Ok(Response::Error(error)) => assert_eq!(error.code, ErrorCode::TlsRequired),
        other => panic!("plaintext to a TLS name server: {other:?}"),
    }
    let mut with_token = tls.clone();
    with_token.token = Some(Secret("the cluster secret".into()));
    assert!(matches!(call(&with_token), Ok(Response::Registered)));
    let mut wrong = tls.clone();
    wrong.token = Some(Secret("a guess".into()));
    assert!(call(&wrong).is_err());
    let login = Request::Login(Login::Password {
        user: "ops".into(),
        password: "x".into(),
    });
    assert!(matches!(
        keel_net::call(&address, &login, Duration::from_secs(5), &tls),
        Ok(Response::Error(error)) if error.code == ErrorCode::AuthenticationFailed
    ));

    // The controller port: TLS and the token, or nothing.
    let controllers = [format!("127.0.0.1:{controller_port}")];
    let access = |token: Option<&str>, tls: bool| keel_net::Dial {
        tls: tls.then(|| pki.client("ca", None)),
        token: token.map(|t| Secret(t.into())),
    };
    let describe = |access: keel_net::Dial| {
        keel_controller_api::client::describe(&controllers, Duration::from_secs(3), &access)
    };
    let good = access(Some("the cluster secret"), true);
    wait_until("the controller", Duration::from_secs(20), || {
        describe(good.clone()).is_ok()
    });
    assert!(describe(access(None, true)).is_err());
    assert!(describe(access(Some("a guess"), true)).is_err());
    assert!(describe(access(Some("the cluster secret"), false)).is_err());
    let _ = namesrv.kill();
    let _ = namesrv.wait();
}

/// `keel` with environment variables (secrets never go on the command line).
pub(crate) fn keel_with(broker: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(crate::cli::KEEL);
    command
        .arg("--broker")
        .arg(broker)
        .args(args)
        .env_remove("KEEL_PASSWORD")
        .env_remove("KEEL_TOKEN");
    for (key, value) in env {
        command.env(key, value);
    }
    command.stdin(Stdio::null()).output().expect("run keel")
}

#[test]
fn the_cli_manages_users_tokens_and_permissions_and_never_prints_a_password() {
    let broker = secured_broker("");
    let address = broker.address.clone();
    let temp = tempfile::tempdir().unwrap();
    let ops = [("KEEL_PASSWORD", ADMIN_PASSWORD)];
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let output = keel_with(&address, args, env);
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        (output.status.code(), stdout, stderr)
    };
    let ok = |args: &[&str], env: &[(&str, &str)]| {
        let (code, stdout, stderr) = run(args, env);
        assert_eq!(code, Some(0), "keel {args:?}: {stdout}{stderr}");
        stdout
    };
    // Without a login: refused, exit 1, and the reason says so.
    let (code, _, stderr) = run(&["send", "--topic", "orders", "x"], &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("NOT_AUTHENTICATED"), "{stderr}");

    ok(&["--user", "ops", "topic", "create", "orders"], &ops);
    let added = ok(
        &["--user", "ops", "user", "add", "orders-producer"],
        &[ops[0], ("KEEL_NEW_PASSWORD", "producer password")],
    );
    assert_eq!(added.trim(), "user orders-producer added");
    ok(
        &[
            "--user",
            "ops",
            "acl",
            "grant",
            "--principal",
            "orders-producer",
            "--resource",
            "topic:orders",
            "--actions",
            "publish",
        ],
        &ops,
    );
    let token_file = temp.path().join("consumer.token");
    let token_path = token_file.display().to_string();
    let created = ok(
        &[
            "--user",
            "ops",
            "token",
            "create",
            "orders-consumer",
            "--out",
            &token_path,
            "--json",
        ],
        &ops,
    );
    assert!(
        !created.contains("keel_"),
        "the token is in the file only: {created}"
    );
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(token.starts_with("keel_"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for (resource, actions) in [
        ("topic:orders", "subscribe"),
        ("group:billing", "consume,commit"),
    ] {
        ok(
            &[
                "--user",
                "ops",
                "acl",
                "grant",
                "--principal",
                "orders-consumer",
                "--resource",
                resource,
                "--actions",
                actions,
            ],
            &ops,
        );
    }
    // A bad entry is refused before it is sent.
    let (code, _, stderr) = run(
        &[
            "--user",
            "ops",
            "acl",
            "grant",
            "--principal",
            "x",
            "--resource",
            "topic:orders",
            "--actions",
            "commit",
        ],
        &ops,
    );
    assert_ne!(code, Some(0));
    assert!(stderr.contains("does not apply to a topic"), "{stderr}");

    let producer = [("KEEL_PASSWORD", "producer password")];
    let sent = ok(
        &[
            "--user",
            "orders-producer",
            "send",
            "--topic",
            "orders",
            "first order",
        ],
        &producer,
    );
    assert!(sent.starts_with("SEND_OK"), "{sent}");
    let (code, _, stderr) = run(
        &[
            "--user",
            "orders-producer",
            "send",
            "--topic",
            "payments",
            "x",
        ],
        &producer,
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");
    let consumed = ok(
        &[
            "--token-file",
            &token_path,
            "consume",
            "--topic",
            "orders",
            "--group",
            "billing",
            "--idle-ms",
            "300",
        ],
        &[],
    );
    assert!(consumed.contains("payload=first order"), "{consumed}");
    let (code, _, stderr) = run(
        &[
            "--token-file",
            &token_path,
            "consume",
            "--topic",
            "orders",
            "--group",
            "other",
            "--idle-ms",
            "300",
        ],
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("may not consume group:other"), "{stderr}");

    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["--user", "ops", "acl", "list", "--json"], &ops)).unwrap();
    assert_eq!(listed["acls"].as_array().unwrap().len(), 7);
    let tokens: serde_json::Value =
        serde_json::from_str(&ok(&["--user", "ops", "token", "list", "--json"], &ops)).unwrap();
    let id = tokens["tokens"][0]["id"].as_str().unwrap().to_string();
    let users = ok(&["--user", "ops", "user", "list"], &ops);
    assert_eq!(
        users.lines().collect::<Vec<_>>(),
        ["ops", "orders-producer"]
    );
    ok(&["--user", "ops", "token", "revoke", &id], &ops);
    let (code, _, stderr) = run(&["--token-file", &token_path, "topic", "list"], &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("AUTHENTICATION_FAILED"), "{stderr}");
    // `keeld add-admin` refuses while the broker runs on the directory.
    let refused = broker.add_admin("second", "another password");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stop the broker first"));
    let log = broker.log();
    for secret in [ADMIN_PASSWORD, "producer password", token.trim()] {
        assert!(!log.contains(secret), "a secret in the log");
    }
}

#[test]
fn before_a_login_a_connection_gets_little_time_and_an_address_few_connections() {
    let broker = secured_broker(", login_timeout_ms = 500, max_connections_per_ip = 4");
    // A connection that never logs in is closed with NOT_AUTHENTICATED.
    let mut silent = TcpStream::connect(&broker.address).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        read_reply(&mut silent),
        (Kind::Error as u8, Some(ErrorCode::NotAuthenticated as u16))
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    // Four connections from one address are held; a fifth is closed at once.
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(&broker.address).unwrap())
        .collect();
    // (Accepted in the order they connected: the fifth is counted after the four.)
    let mut fifth = TcpStream::connect(&broker.address).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        fifth.read(&mut byte).unwrap_or(0),
        0,
        "closed without a word"
    );
    assert!(
        broker.log().contains("max_connections_per_ip"),
        "{}",
        broker.log()
    );
    drop(held);
    // Once they are gone, the address may connect again.
    wait_until("a connection again", Duration::from_secs(5), || {
        let ops = options(None, password("ops", ADMIN_PASSWORD));
        Admin::connect_with(&broker.address, &ops).is_ok_and(|admin| admin.ping().is_ok())
    });
}

#[test]
fn the_controller_fails_over_a_group_that_speaks_tls_and_shows_the_cluster_token() {
    let temp = tempfile::tempdir().unwrap();
    let pki = Pki::new(temp.path());
    let token_file = temp.path().join("cluster.token");
    std::fs::write(&token_file, "the cluster secret\n").unwrap();
    let [controller_port, p0, h0, p1, h1, p2, h2] = free_ports();
    let controller = format!("127.0.0.1:{controller_port}");
    let (mut voter, _) = spawn_line(
        Command::new(KEELD)
            .args(["controller", "--controller-id", "1"])
            .args(["--controller-peers", &format!("1={controller}")])
            .arg("--controller-dir")
            .arg(temp.path().join("controller"))
            .args(["--controller-master-timeout-ms", "2000"])
            .args(["--controller-raft-heartbeat-ms", "100"])
            .args(["--tls-cert", &pki.path("broker.crt")])
            .args(["--tls-key", &pki.path("broker.key")])
            .args(["--tls-ca", &pki.path("ca.crt")])
            .arg("--cluster-token-file")
            .arg(&token_file),
        "keeld controller listening on ",
    );
    let access = keel_net::Dial {
        tls: Some(pki.client("ca", None)),
        token: Some(Secret("the cluster secret".into())),
    };
    let security = format!(
        ", {}, cluster_token_file = \"{}\"",
        pki.broker_tls("broker", ""),
        token_file.display()
    );
    let ports = [(p0, h0), (p1, h1), (p2, h2)];
    let config = |id: usize| {
        let role = match id {
            0 => "role = \"sync_master\"".to_string(),
            _ => format!("role = \"slave\"\nbroker_id = {id}\nmaster_address = \"127.0.0.1:{h0}\""),
        };
        format!(
            "listen = \"127.0.0.1:{}\"\n{role}\nbroker_name = \"tls-group\"\nha_port = {}\n\
             controller_addrs = [\"{controller}\"]\ncontroller_heartbeat_ms = 200\n\
             ha_heartbeat_ms = 200\nslave_timeout_ms = 2000",
            ports[id].0, ports[id].1
        )
    };
    let mut replicas: Vec<BrokerProcess> = vec![secured_broker_with(&security, &config(0))];
    for id in 1..3 {
        let extra = format!(
            "security = {{ auth = \"required\"{security} }}\n{}",
            config(id)
        );
        replicas.push(BrokerProcess::start(&extra));
    }
    let group = || {
        keel_controller_api::client::describe(
            std::slice::from_ref(&controller),
            Duration::from_secs(2),
            &access,
        )
        .ok()?
        .groups
        .into_iter()
        .find(|group| group.view.group == "tls-group")
    };
    wait_until("the SyncStateSet of three", Duration::from_secs(30), || {
        group().is_some_and(|g| g.view.master == Some(0) && g.view.sss == vec![0, 1, 2])
    });
    let tls = Some(pki.client("ca", None));
    let ops = admin(
        &replicas[0].address,
        &options(tls.clone(), password("ops", ADMIN_PASSWORD)),
    );
    ops.create_topic("orders", 2).unwrap();
    ops.security(&SecurityCommand::UserAdd {
        name: "app".into(),
        password: Secret("app password".into()),
    })
    .unwrap();
    grant(
        &ops,
        "app",
        ResourceType::Topic,
        "orders",
        &[Action::Publish, Action::Subscribe],
    );
    let app = options(tls.clone(), password("app", "app password"));
    let send_all = |address: &str, prefix: &str| {
        let producer = Producer::connect(
            address,
            ProducerOptions {
                connection: app.clone(),
                ..ProducerOptions::default()
            },
        )
        .unwrap();
        for index in 0..20 {
            let sent = producer
                .send(Message::new("orders", format!("{prefix}{index}")))
                .unwrap();
            assert_eq!(sent.status, SendStatus::SendOk);
        }
    };
    send_all(&replicas[0].address, "before-");
    // The rules reach both slaves before the master dies (a change is streamed within
    // a heartbeat).
    for slave in &replicas[1..] {
        wait_until("the rules on a slave", Duration::from_secs(20), || {
            std::fs::read_to_string(slave.dir.join("data").join("security.json"))
                .is_ok_and(|file| file.contains("\"app\""))
        });
    }
    drop(ops);
    replicas[0].kill9();
    wait_until("a new master", Duration::from_secs(30), || {
        group().is_some_and(|g| g.view.master.is_some_and(|m| m != 0))
    });
    let master = group().unwrap().view.master.unwrap() as usize;
    let address = replicas[master].address.clone();
    // The new master takes the app's login and sends, over TLS.
    wait_until("sends on the new master", Duration::from_secs(30), || {
        let producer = Producer::connect(
            &address,
            ProducerOptions {
                connection: app.clone(),
                ..ProducerOptions::default()
            },
        );
        producer.is_ok_and(|p| {
            p.send(Message::new("orders", "probe"))
                .is_ok_and(|r| r.status == SendStatus::SendOk)
        })
    });
    send_all(&address, "after-");
    // Everything acknowledged is there.
    let mut consumer = Consumer::connect(
        &address,
        "audit",
        "orders",
        ConsumerOptions {
            connection: options(tls, password("ops", ADMIN_PASSWORD)),
            long_poll: Duration::from_millis(200),
            ..ConsumerOptions::default()
        },
    )
    .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        consumer
            .poll(|record| {
                seen.insert(String::from_utf8_lossy(&record.payload).to_string());
                Ok::<(), String>(())
            })
            .unwrap();
        if (0..20)
            .all(|i| seen.contains(&format!("before-{i}")) && seen.contains(&format!("after-{i}")))
        {
            break;
        }
    }
    for index in 0..20 {
        assert!(
            seen.contains(&format!("before-{index}")),
            "lost before-{index}"
        );
        assert!(
            seen.contains(&format!("after-{index}")),
            "lost after-{index}"
        );
    }
    let _ = voter.kill();
    let _ = voter.wait();
}

#[test]
fn a_profile_names_the_broker_and_the_login() {
    let broker = secured_broker("");
    let temp = tempfile::tempdir().unwrap();
    let ops = admin(
        &broker.address,
        &options(None, password("ops", ADMIN_PASSWORD)),
    );
    let token = ops
        .security(&SecurityCommand::TokenCreate {
            name: "viewer".into(),
        })
        .unwrap()
        .token
        .unwrap()
        .0;
    grant(
        &ops,
        "viewer",
        ResourceType::Admin,
        "*",
        &[Action::Stats, Action::Describe],
    );
    let token_file = temp.path().join("viewer.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let profiles = temp.path().join("profiles.toml");
    std::fs::write(
        &profiles,
        format!(
            "[profiles.local]\nbroker = \"{}\"\ntoken_file = \"{}\"\n",
            broker.address,
            token_file.display()
        ),
    )
    .unwrap();
    let keel = |args: &[&str]| {
        Command::new(crate::cli::KEEL)
            .args(args)
            .env("KEEL_CONFIG", &profiles)
            .env_remove("KEEL_BROKER")
            .env_remove("KEEL_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let stats = keel(&["--profile", "local", "--json", "stats"]);
    assert_eq!(
        stats.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    assert!(String::from_utf8_lossy(&stats.stdout).contains("\"logins_ok\""));
    // A flag wins over the profile; an unknown profile is a usage error.
    let elsewhere = keel(&["--profile", "local", "--broker", "127.0.0.1:1", "stats"]);
    assert_eq!(elsewhere.status.code(), Some(1));
    let unknown = keel(&["--profile", "prod", "stats"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr)
        .contains("has no profile \"prod\" (it has: local)"));
}

/// TLS checks the name typed, not the address it resolved to: a certificate for
/// `localhost` alone is accepted by `keel --broker localhost:PORT` and the library
/// given `localhost:PORT`, and refused for `127.0.0.1:PORT` (which it does not name).
#[test]
fn tls_verifies_the_host_name_given_not_the_address_it_resolves_to() {
    let temp = tempfile::tempdir().unwrap();
    let pki = Pki::new(temp.path());
    let broker = BrokerProcess::start(&format!(
        "security = {{ {} }}",
        pki.broker_tls("localhost-only", "")
    ));
    let port = broker.address.rsplit_once(':').unwrap().1.to_string();
    let by_name = format!("localhost:{port}");
    let ca = pki.path("ca.crt");
    let send_to = |broker: &str| {
        let sent = keel_with(broker, &["--tls-ca", &ca, "send", "-t", "named", "x"], &[]);
        let said = String::from_utf8_lossy(&sent.stderr).into_owned();
        (sent, said)
    };
    let (sent, said) = send_to(&by_name);
    assert_eq!(sent.status.code(), Some(0), "{said}");
    assert!(String::from_utf8_lossy(&sent.stdout).starts_with("SEND_OK"));
    let options = ProducerOptions {
        connection: ConnectionOptions {
            tls: Some(pki.client("ca", None)),
            ..ConnectionOptions::default()
        },
        ..ProducerOptions::default()
    };
    let producer = Producer::connect(&by_name, options.clone()).expect("TLS to localhost");
    assert_eq!(
        producer
            .send(Message::new("named", "library"))
            .unwrap()
            .status,
        SendStatus::SendOk
    );
    // The address alone is not a name the certificate carries.
    let by_address = format!("127.0.0.1:{port}");
    let (refused, said) = send_to(&by_address);
    assert_ne!(refused.status.code(), Some(0), "{said}");
    assert!(said.contains("127.0.0.1"), "{said}");
    assert!(Producer::connect(&by_address, options).is_err());
}
