//! One member of a consumer group, as a process the tests can kill -9: consumes TOPIC
//! as GROUP from BROKER and prints `handled <payload id> <queue> <offset> <reconsume>`
//! for each message its handler accepts. Stops cleanly on SIGTERM.
//!
//! Usage: consumer-under-test BROKER GROUP TOPIC SESSION_TIMEOUT_MS [HANDLER_DELAY_MS]

use keel_client::{ConsumeResult, Delivery, PushConsumer, PushConsumerOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (broker, group, topic, session_ms, delay_ms) = match &args[..] {
        [_, broker, group, topic, session] => (broker, group, topic, session, "0"),
        [_, broker, group, topic, session, delay] => {
            (broker, group, topic, session, delay.as_str())
        }
        _ => {
            eprintln!(
                "usage: consumer-under-test BROKER GROUP TOPIC SESSION_TIMEOUT_MS [HANDLER_DELAY_MS]"
            );
            std::process::exit(2);
        }
    };
    let delay = Duration::from_millis(delay_ms.parse().expect("HANDLER_DELAY_MS"));
    let session_ms: u64 = session_ms.parse().expect("SESSION_TIMEOUT_MS");
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) };
    let options = PushConsumerOptions {
        session_timeout: Duration::from_millis(session_ms),
        heartbeat_interval: Duration::from_millis((session_ms / 5).max(50)),
        commit_interval: Duration::from_millis(200),
        long_poll: Duration::from_millis(500),
        ..PushConsumerOptions::default()
    };
    let output = std::sync::Mutex::new(std::io::stdout());
    let consumer =
        PushConsumer::start(broker, group, topic, options, move |delivery: &Delivery| {
            std::thread::sleep(delay);
            let id = keel_tests::id_of(&delivery.record.payload).unwrap_or_else(|| "?".into());
            let mut out = output.lock().unwrap();
            let _ = writeln!(
                out,
                "handled {id} {} {} {}",
                delivery.record.queue_id, delivery.record.queue_offset, delivery.reconsume_times
            );
            let _ = out.flush();
            ConsumeResult::Success
        })
        .expect("start the consumer");
    println!("member {}", consumer.member_id());
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
    consumer.shutdown().expect("shutdown");
}
