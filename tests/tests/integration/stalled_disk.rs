//! A stalled disk (fsync delayed by fault injection) answers FLUSH_DISK_TIMEOUT, never
//! SEND_OK, and consumers are not served the record until it is really fsynced.

use crate::harness::{drain, wait_until, BrokerProcess};
use keel_client::{Message, Producer, ProducerOptions, SendStatus};
use std::time::Duration;

#[test]
fn stalled_fsync_answers_flush_disk_timeout() {
    let broker = BrokerProcess::start("fault_fsync_delay_ms = 1500\nsync_flush_timeout_ms = 200");
    let options = ProducerOptions {
        send_timeout: Duration::from_secs(10),
        ..ProducerOptions::default()
    };
    let producer = Producer::connect(&broker.address, options).expect("producer");
    let result = producer
        .send(Message::new("slow", "stuck behind a slow disk"))
        .expect("stored");
    assert_eq!(result.status, SendStatus::FlushDiskTimeout);
    // Written but not durable: not visible to consumers yet.
    let queues = &broker.admin().list_topics(Some("slow")).expect("list")[0].queues;
    assert_eq!(
        queues[result.queue_id as usize].max_offset, 0,
        "served before fsync"
    );
    assert_eq!(broker.stat("sends_flush_disk_timeout"), 1);
    assert_eq!(broker.stat("sends_ok"), 0);
    // Once the slow fsync completes, it is durable and consumable.
    wait_until("the slow fsync", Duration::from_secs(10), || {
        broker.stat("offset_durable") == broker.stat("offset_appended")
    });
    let records = drain(&broker.address, "slow");
    assert_eq!(records.len(), 1);
    assert_eq!(&records[0].payload[..], b"stuck behind a slow disk");
}
