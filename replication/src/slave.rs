//! Slave side: connects to the master's HA port, meets its log, applies the streamed
//! records at the master's offsets, and reports what it has fsynced.

use crate::wire::{read_frame, write_frame, DATA_CHUNK_BYTES};
use crate::{HaSecurity, Notifier, ReplicationError};
use keel_protocol::HaFrame;
use keel_protocol::RecordId;
use keel_security::Stream;
use keel_storage::Store;
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct SlaveOptions {
    /// The master's HA address, `host:port`.
    pub master: String,
    pub broker_name: String,
    pub broker_id: u32,
    pub heartbeat: Duration,
    pub security: HaSecurity,
}

#[derive(Debug, Clone, Default)]
pub struct SlaveStatus {
    pub connected: bool,
    /// The master's epoch, as of the last handshake.
    pub master_epoch: u64,
    /// The master's log end, as of its last frame.
    pub master_end: u64,
    /// The highest offset the master said it acknowledged to producers.
    pub confirmed: u64,
    pub last_error: Option<String>,
}

pub struct HaSlave {
    store: Arc<Store>,
    options: SlaveOptions,
    stop: AtomicBool,
    status: Mutex<SlaveStatus>,
    notifier: Arc<Notifier>,
    stream: Mutex<Option<TcpStream>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl HaSlave {
    /// Starts following the master (reconnecting with backoff) until `stop`.
    pub fn start(store: Arc<Store>, options: SlaveOptions) -> std::io::Result<Arc<HaSlave>> {
        HaSlave::start_confirmed(store, options, 0)
    }

    /// `start`, knowing that records up to `confirmed` were acknowledged to producers
    /// (a slave re-pointed to a new master, a deposed master becoming a slave): the
    /// handshake never cuts the log below it, whatever the new master says.
    pub fn start_confirmed(
        store: Arc<Store>,
        options: SlaveOptions,
        confirmed: u64,
    ) -> std::io::Result<Arc<HaSlave>> {
        let notifier = Arc::new(Notifier::default());
        let wake = notifier.clone();
        store.add_listener(Arc::new(move || wake.notify()));
        let slave = Arc::new(HaSlave {
            store,
            options,
            stop: AtomicBool::new(false),
            status: Mutex::new(SlaveStatus {
                confirmed,
                ..SlaveStatus::default()
            }),
            notifier,
            stream: Mutex::new(None),
            thread: Mutex::new(None),
        });
        let running = slave.clone();
        let thread = std::thread::Builder::new()
            .name("keel-ha-slave".into())
            .spawn(move || running.run())?;
        *slave
            .thread
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(thread);
        Ok(slave)
    }

    pub fn master(&self) -> &str {
        &self.options.master
    }

    pub fn status(&self) -> SlaveStatus {
        self.lock_status().clone()
    }

    fn lock_status(&self) -> MutexGuard<'_, SlaveStatus> {
        self.status
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Disconnects and stops following; returns once nothing more will be appended.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(stream) = self
            .stream
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .as_ref()
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.notifier.notify();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn run(self: Arc<Self>) {
        let mut backoff = BACKOFF_MIN;
        let mut last_logged: Option<String> = None;
        while !self.stopped() {
            let outcome = self.clone().session();
            {
                let mut status = self.lock_status();
                // A session that got past the handshake was healthy: reconnect at once.
                if status.connected {
                    backoff = BACKOFF_MIN;
                }
                status.connected = false;
                if let Err(error) = &outcome {
                    status.last_error = Some(error.to_string());
                }
            }
            self.store.notify_listeners();
            if self.stopped() {
                break;
            }
            if let Err(error) = outcome {
                let error = error.to_string();
                // Log each distinct failure once at error level, repeats at debug.
                if last_logged.as_deref() != Some(error.as_str()) {
                    log::error!("replication from {}: {error}", self.options.master);
                    last_logged = Some(error);
                } else {
                    log::debug!("replication from {}: {error} (again)", self.options.master);
                }
            }
            let until = Instant::now() + backoff;
            let mut seen = self.notifier.version();
            while !self.stopped() && Instant::now() < until {
                seen = self
                    .notifier
                    .wait(seen, until.saturating_duration_since(Instant::now()));
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn connect(&self) -> Result<TcpStream, ReplicationError> {
        let master = &self.options.master;
        let addresses: Vec<SocketAddr> = master
            .to_socket_addrs()
            .map_err(ReplicationError::io(format!("resolve {master}")))?
            .collect();
        let mut last = ReplicationError::Protocol(format!("{master} resolves to no address"));
        for address in addresses {
            match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
                Ok(stream) => return Ok(stream),
                Err(error) => last = ReplicationError::io(format!("connect to {address}"))(error),
            }
        }
        Err(last)
    }

    fn session(self: Arc<Self>) -> Result<(), ReplicationError> {
        let stream = self.connect()?;
        let io = ReplicationError::io;
        crate::configure_socket(&stream, self.options.heartbeat)?;
        *self
            .stream
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) =
            Some(stream.try_clone().map_err(io("clone the socket"))?);
        if self.stopped() {
            return Ok(());
        }
        let security = &self.options.security;
        let socket = stream.try_clone().map_err(io("clone the socket"))?;
        let link: crate::Link = Arc::new(
            Stream::wrap(socket, security.client_tls.as_ref(), &self.options.master).map_err(
                ReplicationError::io(format!("TLS handshake with {}", self.options.master)),
            )?,
        );
        let mut reader = &*link;
        if let Some(token) = &security.token {
            write_frame(
                &mut reader,
                &HaFrame::Auth {
                    token: token.0.clone(),
                },
            )
            .map_err(io("send AUTH"))?;
        }
        self.handshake(&mut reader)?;
        self.lock_status().connected = true;
        log::info!("replicating from {}", self.options.master);

        let acker = self.clone();
        let ack_stream = link.clone();
        let done = Arc::new(AtomicBool::new(false));
        let acking = done.clone();
        let ack_thread = std::thread::Builder::new()
            .name("keel-ha-ack".into())
            .spawn(move || acker.send_acks(ack_stream, &acking))
            .map_err(io("start the ack thread"))?;
        let applied = self.apply_stream(&mut reader);
        done.store(true, Ordering::Release);
        let _ = stream.shutdown(Shutdown::Both);
        self.notifier.notify();
        let acked = ack_thread
            .join()
            .unwrap_or_else(|_| Err(ReplicationError::Protocol("the ack thread panicked".into())));
        applied.and(acked)
    }

    /// Sends HELLO and acts on the answer: nothing, or a truncation the master proved.
    fn handshake(&self, stream: &mut &Stream) -> Result<(), ReplicationError> {
        let diverged = |detail: String| Err(ReplicationError::Diverged(detail));
        let store = &self.store;
        let log_end = store.stats().offset_appended;
        let last_record = match log_end {
            0 => RecordId::default(),
            _ => store
                .record_ending_at(log_end)
                .map_err(ReplicationError::store("find this log's last record"))?
                .unwrap_or_default(),
        };
        let hello = HaFrame::Hello {
            broker_name: self.options.broker_name.clone(),
            broker_id: self.options.broker_id,
            log_end,
            last_record,
            epochs: store.epochs(),
        };
        write_frame(stream, &hello).map_err(ReplicationError::io("send HELLO"))?;
        let answer = read_frame(stream).map_err(ReplicationError::io("read WELCOME"))?;
        let (start, proof, epoch, epochs) = match answer {
            HaFrame::Welcome {
                start,
                proof,
                epoch,
                epochs,
            } => (start, proof, epoch, epochs),
            HaFrame::Refuse { reason } => return Err(ReplicationError::Refused(reason)),
            other => {
                let kind = other.kind();
                let detail = format!("expected WELCOME, got frame kind {kind}");
                return Err(ReplicationError::Protocol(detail));
            }
        };
        if start > log_end {
            return Err(ReplicationError::Protocol(format!(
                "the master proposes streaming from {start}, past this log's end {log_end}"
            )));
        }
        if start > 0 {
            let ours = store
                .record_ending_at(start)
                .map_err(ReplicationError::store("find the record ending there"))?;
            if ours != Some(proof) {
                return diverged(format!(
                    "the master's record ending at {start} (crc {:08x}) is not this log's ({}): \
                     the logs differ before the point the master proposed; not truncating",
                    proof.crc,
                    ours.map_or("none".into(), |id| format!("crc {:08x}", id.crc))
                ));
            }
        }
        if start < log_end {
            let confirmed = self.lock_status().confirmed;
            if start < confirmed {
                return diverged(format!(
                    "the master wants this log cut to {start}, but it had confirmed (acknowledged) \
                     records up to {confirmed}: it lost acknowledged messages that only this \
                     slave holds. Not truncating: promote this slave instead"
                ));
            }
            let dropped = store
                .truncate_to(start)
                .map_err(ReplicationError::store(format!(
                    "cut this log back to {start}"
                )))?;
            log::warn!(
                "cut this log from {log_end} back to {start} ({dropped} records) to match master \
                 epoch {epoch}, proved by the record ending there (crc {:08x})",
                proof.crc
            );
        }
        store
            .adopt_epochs(&epochs)
            .map_err(ReplicationError::store("adopt the master's epochs"))?;
        self.lock_status().master_epoch = epoch;
        Ok(())
    }

    fn apply_stream(&self, stream: &mut &Stream) -> Result<(), ReplicationError> {
        let protocol = |detail: String| Err(ReplicationError::Protocol(detail));
        let store = &self.store;
        let carry_max = store.config().max_record_bytes as usize + DATA_CHUNK_BYTES;
        let mut carry: Vec<u8> = Vec::new();
        while !self.stopped() {
            let frame = read_frame(stream).map_err(ReplicationError::io("read from the master"))?;
            match frame {
                HaFrame::Data {
                    offset,
                    confirmed,
                    master_end,
                    bytes,
                } => {
                    let expected = store.stats().offset_appended + carry.len() as u64;
                    if offset != expected {
                        return protocol(format!(
                            "the master sent bytes for offset {offset}, expected {expected}"
                        ));
                    }
                    if !bytes.is_empty() {
                        carry.extend_from_slice(&bytes);
                        let appended = store.stats().offset_appended;
                        let taken = store
                            .append_replicated(&carry)
                            .map_err(ReplicationError::store("apply replicated records"))?;
                        // What storage took is where the next bytes go: the slave's log
                        // stays byte for byte at its master's offsets.
                        let now = store.stats().offset_appended;
                        assert!(
                            taken <= carry.len() && now == appended.saturating_add(taken as u64),
                            "the store took {taken} of {} bytes at {appended} but its log \
                             ends at {now}",
                            carry.len()
                        );
                        carry.drain(..taken);
                        if carry.len() > carry_max {
                            return protocol(format!(
                                "{} bytes from the master do not make a whole record",
                                carry.len()
                            ));
                        }
                    }
                    {
                        let mut status = self.lock_status();
                        status.confirmed = status.confirmed.max(confirmed);
                        status.master_end = master_end;
                    }
                    // Serve only what the master acknowledged: anything past it may be
                    // cut if the master restarts without it.
                    store.raise_durable_cap(confirmed);
                }
                HaFrame::Meta { topics, offsets } => {
                    for (topic, queues) in topics {
                        let outcome = match store.topic_queues(&topic) {
                            None => store.create_topic_from_master(&topic, queues).map(|_| ()),
                            // Queues added on the master: a promoted slave routes them.
                            Some(have) if have < queues => {
                                store.add_queues(&topic, queues).map(|_| ())
                            }
                            Some(_) => Ok(()),
                        };
                        if let Err(error) = outcome {
                            log::warn!("cannot take topic {topic:?} from the master: {error}");
                        }
                    }
                    store.apply_consumer_offsets(&offsets);
                }
                HaFrame::Security { version, state } => {
                    match self.options.security.authority.install(&state) {
                        Ok(true) => log::info!(
                            "took the master's users, tokens and permissions (version {version})"
                        ),
                        Ok(false) => {}
                        // Keep the rules this slave has rather than none.
                        Err(error) => log::error!(
                            "cannot take the master's security state (version {version}): {error}"
                        ),
                    }
                }
                other => {
                    let kind = other.kind();
                    return protocol(format!("unexpected frame kind {kind} from the master"));
                }
            }
        }
        Ok(())
    }

    /// Reports the fsynced offset whenever it moves, and every heartbeat.
    fn send_acks(&self, link: crate::Link, done: &AtomicBool) -> Result<(), ReplicationError> {
        let mut stream = &*link;
        let heartbeat = self.options.heartbeat;
        let mut reported = u64::MAX;
        let mut due = Instant::now();
        let mut seen = self.notifier.version();
        while !done.load(Ordering::Acquire) && !self.stopped() {
            let flushed = self.store.offset_flushed();
            let now = Instant::now();
            if flushed != reported || now >= due {
                write_frame(&mut stream, &HaFrame::Ack { flushed })
                    .map_err(ReplicationError::io("send ACK"))?;
                reported = flushed;
                due = now + heartbeat;
            }
            seen = self
                .notifier
                .wait(seen, due.saturating_duration_since(Instant::now()));
        }
        Ok(())
    }
}
