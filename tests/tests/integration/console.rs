//! The console on the metrics port: its JSON API against a real broker, its permission
//! checks with logins on, and the page itself in headless Chromium when the machine has
//! it (CI installs Debian's): what a person sees.

use crate::harness::{wait_until, BrokerProcess, NameServerProcess};
use keel_client::{Message, Producer, ProducerOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub(crate) fn http_address(broker: &BrokerProcess) -> String {
    let mut address = None;
    wait_until(
        "the console address in the log",
        Duration::from_secs(10),
        || {
            address = broker.log().lines().find_map(|line| {
                line.split("console on http://")
                    .nth(1)
                    .map(|a| a.trim_end_matches('/').to_string())
            });
            address.is_some()
        },
    );
    address.unwrap()
}

/// GET `path`: the status code and the body.
pub(crate) fn get(address: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect");
    let authorization = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\n{authorization}\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response[9..12].parse().expect("status");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Chromium, if the machine has it.
fn chromium() -> Option<String> {
    let candidates = [
        std::env::var("KEEL_CHROMIUM").unwrap_or_default(),
        "chromium".into(),
        "chromium-browser".into(),
    ];
    candidates
        .into_iter()
        .filter(|c| !c.is_empty())
        .find(|candidate| {
            std::process::Command::new(candidate)
                .arg("--version")
                .output()
                .is_ok_and(|output| output.status.success())
        })
}

fn headless(
    browser: &str,
    profile: &std::path::Path,
    extra: &[String],
    url: &str,
) -> std::process::Output {
    std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=6000", "--window-size=1280,900"])
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium")
}

#[test]
fn the_console_shows_topics_groups_and_messages_in_a_browser() {
    let broker = BrokerProcess::start("metrics_listen = \"127.0.0.1:0\"");
    let http = http_address(&broker);
    let producer = Producer::connect(&broker.address, ProducerOptions::default()).unwrap();
    broker.admin().create_topic("orders", 2).unwrap();
    let mut first_id = String::new();
    for index in 0..30 {
        let sent = producer
            .send(
                Message::new("orders", format!("order {index}"))
                    .with_keys(format!("order-{index}")),
            )
            .unwrap();
        if index == 0 {
            first_id = sent.message_id();
        }
    }
    broker
        .admin()
        .commit_offset("billing", "orders", 0, 5)
        .unwrap();
    // One message billing gave up on: its dead-letter queue.
    let connection = keel_client::Connection::connect(
        keel_client::resolve(&broker.address).unwrap(),
        &keel_client::ConnectionOptions::default(),
    )
    .unwrap();
    let back = keel_protocol::Request::SendBack(keel_protocol::SendBackRequest {
        group: "billing".into(),
        reconsume_times: 4,
        max_reconsume_times: 3,
        reason: "card declined".into(),
        origin_topic: "orders".into(),
        origin_msg_id: 0,
        message: Message::new("orders", "order 0"),
    });
    let answer = connection
        .call(&back, std::time::Duration::from_secs(5))
        .unwrap();
    assert!(
        matches!(answer, keel_protocol::Response::SendResult(_)),
        "{answer:?}"
    );

    let (status, body) = get(&http, "/api/overview", None);
    assert_eq!(status, 200, "{body}");
    let overview = json(&body);
    assert_eq!(overview["role"], "master");
    assert_eq!(
        overview["stats"]["records_appended"], 31,
        "30 orders and a dead letter"
    );
    let topics = json(&get(&http, "/api/topics", None).1);
    let orders = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "orders")
        .unwrap();
    let stored: u64 = orders["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["max_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(stored, 30);
    // The oldest message billing has not committed has been stored for over a second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let groups = json(&get(&http, "/api/groups", None).1);
    let billing = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "billing")
        .unwrap();
    let queue0 = orders["queues"][0]["max_offset"].as_u64().unwrap();
    assert_eq!(billing["queues"][0]["lag"].as_u64().unwrap(), queue0 - 5);
    let lag_seconds = billing["queues"][0]["lag_seconds"].as_f64().unwrap();
    assert!((1.0..600.0).contains(&lag_seconds), "{billing}");
    assert_eq!(billing["lag_seconds"].as_f64(), Some(lag_seconds));
    assert!(billing["committed_per_second"].is_number(), "{billing}");
    let dlq = json(&get(&http, "/api/dlq", None).1);
    let dead = &dlq["dlqs"][0];
    assert_eq!(dead["group"], "billing", "{dlq}");
    assert_eq!(dead["messages"], 1);
    assert_eq!(dead["newest"][0]["reason"], "card declined");
    assert_eq!(dead["newest"][0]["origin_topic"], "orders");
    assert_eq!(dead["newest"][0]["payload"], "order 0");
    let message = json(&get(&http, &format!("/api/message?id={first_id}"), None).1);
    assert!(message["facts"].to_string().contains("orders"), "{message}");
    let by_key = json(&get(&http, "/api/message?key=order-7", None).1);
    assert!(by_key["facts"].to_string().contains("order-7"), "{by_key}");
    assert_eq!(get(&http, "/api/message?id=zz", None).0, 400);
    assert_eq!(get(&http, "/nowhere", None).0, 404);
    // A page of another site resolved to this address (DNS rebinding) names its host.
    let mut stream = TcpStream::connect(&http).unwrap();
    write!(
        stream,
        "GET /api/overview HTTP/1.0\r\nHost: evil.example:80\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.0 403"), "{response}");
    let (status, page) = get(&http, "/", None);
    assert_eq!(status, 200);
    assert!(
        page.contains("<title>keel console</title>")
            && !page.contains("http://")
            && !page.contains("https://"),
        "the page loads nothing from elsewhere"
    );

    let Some(browser) = chromium() else {
        crate::harness::tool_missing("chromium not found: the page was not tried in a browser");
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let dom = headless(
        &browser,
        profile.path(),
        &["--dump-dom".into()],
        &format!("http://{http}/"),
    );
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    // What a person sees: the broker, its numbers, the topic and the group's lag.
    assert!(dom.contains("broker-a at 127.0.0.1:"), "{dom}");
    assert!(dom.contains(">31<"), "messages stored: {dom}");
    assert!(
        dom.contains(">orders<") || dom.contains(">orders "),
        "{dom}"
    );
    assert!(dom.contains(">billing<"), "{dom}");
    assert!(dom.contains(">card declined<"), "the dead letter: {dom}");
    assert!(!dom.contains("id=\"error\">T"), "an error is shown: {dom}");
    if let Ok(dir) = std::env::var("KEEL_SCREENSHOTS") {
        for tab in ["overview", "topics", "groups", "dlq", "message"] {
            let file = std::path::Path::new(&dir).join(format!("console-{tab}.png"));
            let shot = headless(
                &browser,
                profile.path(),
                &[format!("--screenshot={}", file.display())],
                &format!("http://{http}/?tab={tab}"),
            );
            assert!(file.exists(), "{}", String::from_utf8_lossy(&shot.stderr));
        }
    }
}

#[test]
fn with_logins_the_console_needs_a_token_with_the_admin_right() {
    let broker = BrokerProcess::create(
        "metrics_listen = \"127.0.0.1:0\"\nsecurity = { auth = \"required\" }",
    );
    let output = broker.add_admin("ops", "ops password");
    assert!(output.status.success());
    let mut broker = broker;
    broker.spawn();
    let http = http_address(&broker);
    let options = keel_client::ConnectionOptions {
        credentials: Some(keel_client::Credentials::Password {
            user: "ops".into(),
            password: "ops password".into(),
        }),
        ..keel_client::ConnectionOptions::default()
    };
    let ops = keel_client::Admin::connect_with(&broker.address, &options).unwrap();
    let token = |name: &str| {
        ops.security(&keel_security::SecurityCommand::TokenCreate { name: name.into() })
            .unwrap()
            .token
            .unwrap()
            .0
    };
    let viewer = token("viewer");
    let stranger = token("stranger");
    ops.security(&keel_security::SecurityCommand::AclGrant {
        entry: keel_security::AclEntry {
            principal: "viewer".into(),
            effect: keel_security::Effect::Allow,
            resource: keel_security::ResourceType::Admin,
            pattern: "*".into(),
            actions: vec![keel_security::Action::Stats],
        },
    })
    .unwrap();
    assert_eq!(get(&http, "/", None).0, 200, "the page holds no data");
    assert_eq!(get(&http, "/api/overview", None).0, 401);
    assert_eq!(
        get(&http, "/api/overview", Some("keel_0000000000000000_00")).0,
        401
    );
    assert_eq!(get(&http, "/api/overview", Some(&stranger)).0, 403);
    assert_eq!(get(&http, "/api/topics", Some(&viewer)).0, 200);
    assert_eq!(
        get(&http, "/api/message?id=0000000000000000", Some(&viewer)).0,
        403,
        "lookup needs admin:lookup"
    );
    assert!(broker
        .log()
        .contains("console login refused from 127.0.0.1"));
}

#[test]
fn the_console_shows_the_cluster_as_the_name_servers_see_it() {
    let namesrv = NameServerProcess::start(3000);
    let broker = BrokerProcess::start(&format!(
        "metrics_listen = \"127.0.0.1:0\"\nnamesrv_addrs = [\"{}\"]\nregister_interval_ms = 300",
        namesrv.address
    ));
    let http = http_address(&broker);
    wait_until("registered", Duration::from_secs(20), || {
        let cluster = json(&get(&http, "/api/cluster", None).1);
        cluster["brokers"].as_array().is_some_and(|b| !b.is_empty())
    });
    let cluster = json(&get(&http, "/api/cluster", None).1);
    assert_eq!(cluster["asked"], namesrv.address.as_str());
    let me = &cluster["brokers"][0];
    assert_eq!(me["broker_name"], "broker-a", "{cluster}");
    assert_eq!(me["address"], broker.address.as_str());
    assert_eq!(me["stale"], false);
    // A broker without name servers says so.
    let alone = BrokerProcess::start("metrics_listen = \"127.0.0.1:0\"");
    let none = json(&get(&http_address(&alone), "/api/cluster", None).1);
    assert_eq!(none["brokers"].as_array().map(Vec::len), Some(0));
    assert_eq!(none["asked"], serde_json::Value::Null);

    let Some(browser) = chromium() else {
        crate::harness::tool_missing("chromium not found: the page was not tried in a browser");
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{http}/?tab=cluster");
    let dom = headless(&browser, profile.path(), &["--dump-dom".into()], &url);
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(
        dom.contains(&format!("As name server {}", namesrv.address)),
        "{dom}"
    );
    assert!(dom.contains(">live<"), "{dom}");
    if let Ok(dir) = std::env::var("KEEL_SCREENSHOTS") {
        let file = std::path::Path::new(&dir).join("console-cluster.png");
        let shot = headless(
            &browser,
            profile.path(),
            &[format!("--screenshot={}", file.display())],
            &url,
        );
        assert!(file.exists(), "{}", String::from_utf8_lossy(&shot.stderr));
    }
}
