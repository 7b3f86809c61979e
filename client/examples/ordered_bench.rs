//! Ordered consumption with one slow message group: how fast do the others go?
//!
//! `cargo run --release -p keel-client --example ordered_bench -- ADDRESS MODE SLOW_MS [PER_GROUP]`
//!
//! Fills topic `fifo-bench-<pid>` (8 queues) with 64 message groups of PER_GROUP (500)
//! messages each, sent one group at a time in batches (each batch in order), then
//! consumes it with one 8-thread member of a new group, ordered, concurrent, or
//! queue-locked (ordered, the messages without a message group: one line per queue) (MODE),
//! whose handler sleeps SLOW_MS per message of group g0 and nothing for the others.
//! Prints how long the other 63 groups took (and their msg/s), how far g0 got by then,
//! and the broker-side settings used.

use keel_client::{
    Admin, ConsumeResult, Delivery, Message, Producer, ProducerOptions, PushConsumer,
    PushConsumerOptions,
};
use keel_protocol::names::message_group_queue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GROUPS: usize = 64;
const QUEUES: u32 = 8;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, address, mode, slow_ms, rest @ ..] = &args[..] else {
        eprintln!(
            "usage: ordered_bench ADDRESS ordered|concurrent|queue-locked SLOW_MS [PER_GROUP]"
        );
        std::process::exit(2);
    };
    // queue-locked: ordered, but the messages carry no message group (each queue is
    // one line, as when a broker locks a whole queue for ordered consumption).
    let (ordered, grouped) = match mode.as_str() {
        "ordered" => (true, true),
        "concurrent" => (false, true),
        "queue-locked" => (true, false),
        other => {
            let detail = format!("MODE is ordered, concurrent or queue-locked, not {other:?}");
            return Err(detail.into());
        }
    };
    let slow = Duration::from_millis(slow_ms.parse()?);
    let per_group: usize = rest.first().map_or(Ok(500), |n| n.parse())?;
    let topic = format!("fifo-bench-{}", std::process::id());
    let group = format!("{topic}-{mode}");
    let admin = Admin::connect(address)?;
    admin.create_topic(&topic, QUEUES)?;
    admin.group_settings(&group, Some(ordered))?;
    let producer = Producer::connect(address, ProducerOptions::default())?;
    let filled = Instant::now();
    for g in 0..GROUPS {
        for chunk in (0..per_group).collect::<Vec<_>>().chunks(100) {
            let batch = chunk
                .iter()
                .map(|seq| {
                    let message = Message::new(topic.as_str(), format!("g{g}-{seq}"));
                    let name = format!("g{g}");
                    match grouped {
                        true => message.with_message_group(name),
                        false => message.with_queue(message_group_queue(&name, QUEUES)),
                    }
                })
                .collect();
            producer.send_batch(batch)?;
        }
    }
    let total = (GROUPS * per_group) as u64;
    eprintln!(
        "stored {total} messages in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    let others = Arc::new(AtomicU64::new(0));
    let slow_done = Arc::new(AtomicU64::new(0));
    let (counted, slow_counted) = (others.clone(), slow_done.clone());
    let started = Instant::now();
    let consumer = PushConsumer::start(
        address,
        &group,
        &topic,
        PushConsumerOptions {
            threads: 8,
            ..PushConsumerOptions::default()
        },
        move |delivery: &Delivery| {
            let payload = String::from_utf8_lossy(&delivery.record.payload);
            if payload.starts_with("g0-") {
                std::thread::sleep(slow);
                slow_counted.fetch_add(1, Ordering::Relaxed);
            } else {
                counted.fetch_add(1, Ordering::Relaxed);
            }
            ConsumeResult::Success
        },
    )?;
    let want = total - per_group as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while others.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = started.elapsed().as_secs_f64();
    let done = others.load(Ordering::Relaxed);
    println!(
        "mode={mode} slow_ms={} others: {done}/{want} in {took:.2} s = {:.0} msg/s; \
         slow group g0: {}/{per_group} done by then; parked {} times",
        slow.as_millis(),
        done as f64 / took,
        slow_done.load(Ordering::Relaxed),
        consumer
            .stats()
            .message_groups_parked
            .load(Ordering::Relaxed)
    );
    drop(consumer);
    let _ = admin.delete_group(&group, true);
    Ok(())
}
