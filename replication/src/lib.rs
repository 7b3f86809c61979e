//! keel replication: a master streams its CommitLog bytes to slaves over the HA port;
//! each slave writes them at the same offsets, fsyncs, and reports its fsynced offset.
//!
//! - [`master::HaMaster`] accepts slaves, proves where each slave's log meets its own
//!   (epoch histories, then the CRC of the record at the meeting point), streams from
//!   there, and tracks acknowledgements. A `sync_master` caps its durable offset at what
//!   a slave has fsynced, so `SEND_OK` and reads wait for the slave.
//! - [`slave::HaSlave`] connects (reconnecting with backoff), truncates only a tail the
//!   master proved foreign, applies records, and caps its own readable offset at what
//!   the master confirmed to producers.
//!
//! Plain threads and blocking sockets: a broker has few slaves, and none of this runs
//! on an event loop. The frames' codec is `keel_protocol::ha`; [`wire`] reads and
//! writes them on a socket.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod error;
pub mod master;
pub mod slave;
pub mod wire;

pub use error::ReplicationError;
pub use master::{HaMaster, MasterOptions, SlaveInfo, WaitSet};
pub use slave::{HaSlave, SlaveOptions, SlaveStatus};

/// A plaintext or TLS HA connection, shared by its reading and writing threads.
pub(crate) type Link = Arc<keel_security::Stream>;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// TLS and authentication of the HA link. The default: plaintext, no token, no rules.
#[derive(Debug, Clone)]
pub struct HaSecurity {
    /// The broker's users, tokens and permissions: a master checks its slaves' tokens
    /// against it (`cluster:replicate`) and streams it to them; a slave installs it.
    pub authority: Arc<keel_security::Authority>,
    /// Master: the HA port speaks TLS only.
    pub server_tls: Option<Arc<keel_security::rustls::ServerConfig>>,
    /// Slave: connect to the master with TLS.
    pub client_tls: Option<keel_security::ClientTls>,
    /// Slave: the token it shows its master (AUTH).
    pub token: Option<keel_security::Secret>,
}

impl Default for HaSecurity {
    fn default() -> HaSecurity {
        HaSecurity {
            authority: Arc::new(keel_security::Authority::off()),
            server_tls: None,
            client_tls: None,
            token: None,
        }
    }
}

/// TCP_NODELAY, and timeouts from the heartbeat: a peer silent for 5 heartbeats is
/// gone; a write blocked for 10 means the peer stopped reading.
pub(crate) fn configure_socket(
    stream: &std::net::TcpStream,
    heartbeat: Duration,
) -> Result<(), ReplicationError> {
    stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(heartbeat * 5)))
        .and_then(|()| stream.set_write_timeout(Some(heartbeat * 10)))
        .map_err(ReplicationError::io("configure the HA socket"))
}

/// A version counter to wait on: storage listeners bump it when offsets move.
#[derive(Default)]
pub struct Notifier {
    version: Mutex<u64>,
    changed: Condvar,
}

impl Notifier {
    pub fn notify(&self) {
        let mut version = self
            .version
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *version = version.wrapping_add(1);
        self.changed.notify_all();
    }

    pub fn version(&self) -> u64 {
        *self
            .version
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Waits until the version differs from `seen` or `timeout` passes; returns it.
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let version = self
            .version
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let (version, _) = self
            .changed
            .wait_timeout_while(version, timeout, |version| *version == seen)
            .unwrap_or_else(|poison| poison.into_inner());
        *version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_protocol::Message;
    use keel_storage::{Store, StoreConfig};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn store(dir: &std::path::Path) -> Arc<Store> {
        let mut config = StoreConfig::new(dir);
        config.segment_size_bytes = 8192;
        Store::open(config).unwrap()
    }

    fn append(store: &Store, count: usize) -> u64 {
        let mut end = 0;
        for index in 0..count {
            let message = Message::new("orders", vec![b'x'; 100 + index % 50]).with_queue(0);
            end = store.append(&message, true, 1).unwrap().offset_end;
        }
        end
    }

    /// A consumer offset (or the timer's progress) reaches a slave only after the
    /// records it counts: a slave promoted in between would otherwise skip records it
    /// never received. Before, the first META frame went out at once, ahead of the log.
    #[test]
    fn a_slave_never_holds_an_offset_past_the_records_it_has() {
        let (master_dir, slave_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master_store = store(master_dir.path());
        master_store.begin_epoch().unwrap();
        let mut end_offset = 0;
        for index in 0..4_000usize {
            let message = Message::new("orders", vec![b'x'; 2_000 + index % 50]).with_queue(0);
            end_offset = master_store.append(&message, true, 1).unwrap().queue_offset + 1;
        }
        master_store
            .commit_offset("g", "orders", 0, end_offset)
            .unwrap();
        let options = MasterOptions {
            sync: false,
            fallbehind_max_bytes: 1 << 30,
            heartbeat: Duration::from_millis(50),
            security: crate::HaSecurity::default(),
        };
        let master = HaMaster::start(
            master_store.clone(),
            "127.0.0.1:0".parse().unwrap(),
            options,
        )
        .unwrap();
        let slave_store = store(slave_dir.path());
        let options = SlaveOptions {
            master: master.local_addr().to_string(),
            broker_name: "b".into(),
            broker_id: 1,
            heartbeat: Duration::from_millis(50),
            security: crate::HaSecurity::default(),
        };
        let slave = HaSlave::start(slave_store.clone(), options).unwrap();
        // Nothing is appended after the commit: the offset may arrive only once the
        // slave has the whole log.
        let log_end = master_store.stats().offset_appended;
        wait_until("the offset on the slave", || {
            let offset = slave_store.query_offset("g", "orders", 0);
            if offset.is_some() {
                let has = slave_store.stats().offset_appended;
                assert!(
                    has >= log_end,
                    "the slave holds offset {offset:?} with {has} of {log_end} bytes of log"
                );
            }
            offset == Some(end_offset)
        });
        slave.stop();
        master.stop();
        slave_store.shutdown();
        master_store.shutdown();
    }

    #[test]
    fn a_sync_master_acknowledges_only_what_its_slave_fsynced() {
        let (master_dir, slave_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master_store = store(master_dir.path());
        master_store.begin_epoch().unwrap();
        master_store.set_durable_cap(0);
        let options = MasterOptions {
            sync: true,
            fallbehind_max_bytes: 1 << 20,
            heartbeat: Duration::from_millis(50),
            security: crate::HaSecurity::default(),
        };
        let master = HaMaster::start(
            master_store.clone(),
            "127.0.0.1:0".parse().unwrap(),
            options,
        )
        .unwrap();
        let end = append(&master_store, 300);
        wait_until("the local flush", || master_store.offset_flushed() >= end);
        assert!(master_store.offset_durable() < end, "no slave yet");
        assert!(!master.in_sync());

        let slave_store = store(slave_dir.path());
        slave_store.set_durable_cap(0);
        let follow = || {
            let options = SlaveOptions {
                master: master.local_addr().to_string(),
                broker_name: "b".into(),
                broker_id: 1,
                heartbeat: Duration::from_millis(50),
                security: crate::HaSecurity::default(),
            };
            HaSlave::start(slave_store.clone(), options).unwrap()
        };
        let slave = follow();
        wait_until("the slave's ack", || master_store.offset_durable() >= end);
        assert!(master.in_sync());
        assert!(slave_store.offset_flushed() >= end);
        wait_until("the slave's cap", || slave_store.offset_durable() >= end);
        assert_eq!(slave_store.epochs(), master_store.epochs());
        assert_eq!(slave_store.topic_queues("orders"), Some(4));

        // Slave gone: nothing more is acknowledged, and the master knows at once.
        slave.stop();
        wait_until("the master to see the slave leave", || !master.in_sync());
        let end2 = append(&master_store, 10);
        wait_until("the local flush", || master_store.offset_flushed() >= end2);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(master_store.offset_durable(), end);

        // Back: it resumes from its own end and catches up.
        drop(slave);
        let slave = follow();
        wait_until("catching up", || master_store.offset_durable() >= end2);
        // The slave serves what the master confirmed, which the next frame tells it.
        wait_until("the confirmation", || slave_store.offset_durable() >= end2);
        let read = slave_store
            .read_queue("orders", 0, 0, 1000, u32::MAX)
            .unwrap();
        assert_eq!(read.record_count, 310);
        slave.stop();
        master.stop();
        // Stopped before their directories go: their threads could still write there.
        slave_store.shutdown();
        master_store.shutdown();
    }
}
