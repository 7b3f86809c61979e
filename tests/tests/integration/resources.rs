//! Resource abuse: floods and abrupt clients do not grow the broker without bound.

use crate::harness::{wait_until, BrokerProcess};
use keel_client::{Message, Producer, ProducerOptions};
use keel_protocol::Request;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn oneway_flood_against_a_slow_disk_is_held_back_not_buffered() {
    const LIMIT: u64 = 64 * 1024;
    let broker = BrokerProcess::start(&format!(
        "fault_fsync_delay_ms = 20\nappend_backlog_max_bytes = {LIMIT}"
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let monitor = {
        let (admin, stop, worst) = (broker.admin(), stop.clone(), worst.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let stats: std::collections::HashMap<String, u64> =
                    admin.stats().expect("stats").into_iter().collect();
                let backlog = stats["offset_appended"].saturating_sub(stats["offset_written"]);
                worst.fetch_max(backlog, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let producers: Vec<_> = (0..4)
        .map(|index| {
            let address = broker.address.clone();
            std::thread::spawn(move || {
                let producer =
                    Producer::connect(&address, ProducerOptions::default()).expect("producer");
                for sequence in 0..2000 {
                    let payload = vec![b'x'; 1000];
                    producer
                        .send_oneway(
                            Message::new("flood", payload).with_keys(format!("{index}-{sequence}")),
                        )
                        .expect("oneway");
                }
            })
        })
        .collect();
    for producer in producers {
        producer.join().expect("producer");
    }
    wait_until("the flood to be stored", Duration::from_secs(60), || {
        broker.stat("records_appended") == 8000
    });
    stop.store(true, Ordering::Relaxed);
    monitor.join().expect("monitor");
    let worst = worst.load(Ordering::Relaxed);
    // Each connection may add the frame it was decoding when the bound was crossed.
    assert!(
        worst <= LIMIT + 4 * 2048,
        "backlog reached {worst} bytes, bound {LIMIT}"
    );
    assert!(
        worst > 0,
        "the monitor never saw a backlog; the test proves nothing"
    );
}

#[test]
fn many_abrupt_disconnects_leave_the_broker_healthy() {
    let broker = BrokerProcess::start("");
    for index in 0..200 {
        let mut stream = TcpStream::connect(&broker.address).expect("connect");
        let mut frame = Vec::new();
        Request::Send(Message::new("t", format!("abrupt-{index}"))).encode(index, 0, &mut frame);
        // Write a random-length prefix of a valid frame and drop the connection.
        let cut = (index as usize * 7919) % frame.len();
        let _ = stream.write_all(&frame[..cut]);
    }
    broker.admin().ping().expect("still serving");
    assert_eq!(
        broker.stat("records_appended"),
        0,
        "no partial frame may be stored"
    );
    wait_until("connections to be reaped", Duration::from_secs(10), || {
        broker.stat("connections") <= 2
    });
}
