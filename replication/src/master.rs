//! Master side: accepts slaves on the HA port, proves where their logs meet this one,
//! streams CommitLog bytes from there, and tracks what each slave has fsynced.
//!
//! Threads, never the event loops: one accepting, and per slave one writer (streaming)
//! and one reader (acks). The writer reads segments with `pread` from the page cache.

use crate::wire::{read_frame, write_frame, DATA_CHUNK_BYTES};
use crate::{HaSecurity, Notifier, ReplicationError};
use keel_protocol::HaFrame;
use keel_protocol::RecordId;
use keel_security::{Action, ResourceType, Stream, TlsStream};
use keel_storage::epochs::common_prefix_end;
use keel_storage::Store;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct MasterOptions {
    /// `sync_master`: sends are acknowledged (and reads served) only up to what a
    /// slave has fsynced. `async_master`: slaves follow in the background.
    pub sync: bool,
    /// A slave further behind than this is not in sync.
    pub fallbehind_max_bytes: u64,
    /// Heartbeat period; a slave silent for 3 periods is not in sync, 5 disconnects it.
    pub heartbeat: Duration,
    pub security: HaSecurity,
}

/// What the master knows about one connected slave.
#[derive(Debug, Clone)]
pub struct SlaveInfo {
    pub peer: SocketAddr,
    pub broker_name: String,
    pub broker_id: u32,
    /// Highest offset the slave reported fsynced.
    pub acked: u64,
    pub since_heard: Duration,
    pub in_sync: bool,
}

/// Whose acks a `sync_master` waits for when a controller decides its SyncStateSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitSet {
    /// Slaves (broker ids) that must all have fsynced a record before it is
    /// acknowledged: the committed SSS and any slave the master asked to add.
    pub members: Vec<u32>,
    /// Replicas, the master included, that must hold a record (`min_insync_replicas`).
    pub min_replicas: usize,
}

struct Link {
    id: u64,
    peer: SocketAddr,
    broker_name: String,
    broker_id: u32,
    acked: u64,
    last_heard: Instant,
    /// DATA sent and not yet acknowledged: (end offset, when sent), oldest first.
    unacked: std::collections::VecDeque<(u64, Instant)>,
}

/// DATA frames remembered per slave for the ack latency (older ones are forgotten).
const UNACKED_MAX: usize = 4096;

pub struct HaMaster {
    store: Arc<Store>,
    options: MasterOptions,
    links: Mutex<Vec<Link>>,
    next_id: AtomicU64,
    notifier: Arc<Notifier>,
    stop: AtomicBool,
    local_addr: SocketAddr,
    /// Connections being served (a cap keeps stray clients from taking threads).
    sessions: keel_net::Census,
    /// `None` without a controller: any one slave's fsync acknowledges.
    wait_set: Mutex<Option<WaitSet>>,
    /// From a DATA frame's send to the slave's ack of its fsync, in seconds.
    pub ack_seconds: keel_storage::histogram::Histogram,
}

/// A frame carrying only a new confirmed offset goes at most this often: every slave
/// ack moves it, and the slave needs it only to serve its own readers.
const CONFIRM_EVERY: Duration = Duration::from_millis(10);

/// Slaves (and handshakes) served at once; slaves of one host may share an address.
const HA_CAPS: keel_net::Caps = keel_net::Caps {
    max_connections: 32,
    max_per_address: 0,
};

impl HaMaster {
    /// Listens on `address` and serves slaves until `stop`.
    pub fn start(
        store: Arc<Store>,
        address: SocketAddr,
        options: MasterOptions,
    ) -> std::io::Result<Arc<HaMaster>> {
        let listener = TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        let notifier = Arc::new(Notifier::default());
        // Stream each write at once, while the master fsyncs it. (Not woken by flushes
        // and acks: the confirmed offset they move is sent at most every
        // `CONFIRM_EVERY`, so the streamer polls that often instead.)
        let wake = notifier.clone();
        store.add_write_listener(Arc::new(move || wake.notify()));
        let master = Arc::new(HaMaster {
            store,
            options,
            links: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            notifier,
            stop: AtomicBool::new(false),
            local_addr: listener.local_addr()?,
            sessions: keel_net::Census::new(HA_CAPS),
            wait_set: Mutex::new(None),
            ack_seconds: keel_storage::histogram::Histogram::new(keel_storage::histogram::SECONDS),
        });
        let accepting = master.clone();
        std::thread::Builder::new()
            .name("keel-ha-accept".into())
            .spawn(move || accepting.accept_loop(listener))?;
        Ok(master)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn is_sync(&self) -> bool {
        self.options.sync
    }

    /// Stops accepting and disconnects every slave (their threads end on their own).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.notifier.notify();
    }

    fn lock_links(&self) -> MutexGuard<'_, Vec<Link>> {
        self.links
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn link_in_sync(&self, link: &Link, written: u64) -> bool {
        link.last_heard.elapsed() < self.options.heartbeat * 3
            && written.saturating_sub(link.acked) <= self.options.fallbehind_max_bytes
    }

    /// Whether at least one slave is connected, heard from recently, and not too far
    /// behind: a sync master answers `SLAVE_NOT_AVAILABLE` at once otherwise.
    pub fn in_sync(&self) -> bool {
        let written = self.store.offset_written();
        self.lock_links()
            .iter()
            .any(|link| self.link_in_sync(link, written))
    }

    /// Sets whose acks count from now on, and raises the durable cap to what that set
    /// already holds.
    pub fn set_wait_set(&self, set: Option<WaitSet>) {
        let mut current = self
            .wait_set
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *current = set;
        self.raise_cap(current.as_ref());
    }

    /// Raises the durable cap to what `set` has fsynced. Called with the wait set's lock
    /// held, so that no ack counted against an older set raises the cap after a newer
    /// set took its place.
    fn raise_cap(&self, set: Option<&WaitSet>) {
        if !self.options.sync {
            return;
        }
        let links = self.lock_links();
        let acked_by = |id: u32| {
            links
                .iter()
                .filter(|link| link.broker_id == id)
                .map(|link| link.acked)
                .max()
        };
        let cap = match set {
            None => links.iter().map(|link| link.acked).max(),
            // The master alone never acknowledges under a controller (validated:
            // min_insync_replicas >= 2), so an empty wait set raises nothing.
            Some(set) if set.members.is_empty() || set.members.len() + 1 < set.min_replicas => None,
            Some(set) => set
                .members
                .iter()
                .map(|id| acked_by(*id))
                .collect::<Option<Vec<u64>>>()
                .and_then(|acks| acks.into_iter().min()),
        };
        drop(links);
        if let Some(cap) = cap {
            self.store.raise_durable_cap(cap);
        }
    }

    /// Slaves that hold everything acknowledged so far: in sync, and their fsynced
    /// offset at least the durable offset. Put them in the wait set before naming them
    /// to the controller, and check again after: from then on nothing is acknowledged
    /// without them, and nothing acknowledged before is missing from them.
    pub fn caught_up_slaves(&self) -> Vec<u32> {
        // Everything that may be acknowledged without another ack: the cap, as far as
        // this log goes (the master's own fsync may still be behind it).
        let durable = self
            .store
            .durable_cap()
            .min(self.store.offset_written())
            .max(self.store.offset_durable());
        self.slaves()
            .into_iter()
            .filter(|slave| slave.in_sync && slave.acked >= durable)
            .map(|slave| slave.broker_id)
            .collect()
    }

    /// Whether any slave is connected (in sync or not).
    pub fn connected(&self) -> bool {
        !self.lock_links().is_empty()
    }

    pub fn slaves(&self) -> Vec<SlaveInfo> {
        let written = self.store.offset_written();
        self.lock_links()
            .iter()
            .map(|link| SlaveInfo {
                peer: link.peer,
                broker_name: link.broker_name.clone(),
                broker_id: link.broker_id,
                acked: link.acked,
                since_heard: link.last_heard.elapsed(),
                in_sync: self.link_in_sync(link, written),
            })
            .collect()
    }

    fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        while !self.stop.load(Ordering::Acquire) {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let ticket = match self.sessions.admit(peer.ip()) {
                        Ok(ticket) => ticket,
                        Err(refused) => {
                            log::warn!("refusing HA connection from {peer}: {refused}");
                            continue;
                        }
                    };
                    let master = self.clone();
                    let spawned = std::thread::Builder::new()
                        .name("keel-ha-slave".into())
                        .spawn(move || master.serve(stream, peer, ticket));
                    if let Err(error) = spawned {
                        log::error!("cannot start a thread for slave {peer}: {error}");
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => {
                    log::warn!("HA accept failed: {error}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Serves one slave; its `ticket` is given back when the session ends.
    fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, ticket: keel_net::Ticket) {
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let outcome = crate::configure_socket(&stream, self.options.heartbeat)
            .and_then(|()| self.secure(&stream, peer))
            .and_then(|link| self.clone().session(&link, peer, id));
        match outcome {
            Ok(()) => log::info!("slave {peer} disconnected"),
            Err(error) => log::warn!("slave {peer}: {error}"),
        }
        let _ = stream.shutdown(Shutdown::Both);
        self.lock_links().retain(|link| link.id != id);
        drop(ticket);
        // The loops re-check whether a slave is still in sync.
        self.store.notify_listeners();
    }

    /// TLS when the HA port has it (a plaintext peer is refused by the handshake).
    fn secure(
        &self,
        stream: &TcpStream,
        peer: SocketAddr,
    ) -> Result<crate::Link, ReplicationError> {
        let io = ReplicationError::io;
        let socket = stream.try_clone().map_err(io("clone the socket"))?;
        match &self.options.security.server_tls {
            Some(config) => {
                let tls = TlsStream::server(socket, config.clone())
                    .map_err(ReplicationError::io(format!("TLS handshake with {peer}")))?;
                Ok(Arc::new(Stream::Tls(Box::new(tls))))
            }
            None => Ok(Arc::new(Stream::Plain(socket))),
        }
    }

    /// With logins on, the first frame must be AUTH with a token that holds
    /// `cluster:replicate`; returns the frame after it.
    fn authenticate(
        &self,
        link: &crate::Link,
        peer: SocketAddr,
    ) -> Result<HaFrame, ReplicationError> {
        let io = ReplicationError::io;
        let authority = &self.options.security.authority;
        let mut reader = &**link;
        let first = read_frame(&mut reader).map_err(io("read HELLO"))?;
        let token = match first {
            HaFrame::Auth { token } => token,
            other if authority.mode() == keel_security::AuthMode::Off => return Ok(other),
            _ => {
                let reason = "this master requires the cluster token (AUTH) before HELLO: set \
                              [security] cluster_token_file on the slave"
                    .to_string();
                let _ = write_frame(
                    &mut reader,
                    &HaFrame::Refuse {
                        reason: reason.clone(),
                    },
                );
                return Err(ReplicationError::Refused(reason));
            }
        };
        if authority.mode() != keel_security::AuthMode::Off {
            let allowed = authority
                .login_token(
                    keel_security::Port::Ha,
                    &token,
                    peer.ip(),
                    keel_net::is_secure(peer.ip(), link.is_tls()),
                )
                .map_err(|error| error.to_string())
                .and_then(|principal| {
                    if authority.permits(&principal, ResourceType::Cluster, "*", Action::Replicate)
                    {
                        Ok(())
                    } else {
                        Err(format!(
                            "{} may not replicate (cluster:replicate)",
                            principal.name
                        ))
                    }
                });
            if let Err(reason) = allowed {
                let reason = format!("HA login refused: {reason}");
                log::warn!("refusing slave at {peer}: {reason}");
                let _ = write_frame(
                    &mut reader,
                    &HaFrame::Refuse {
                        reason: reason.clone(),
                    },
                );
                return Err(ReplicationError::Refused(reason));
            }
        }
        read_frame(&mut reader).map_err(io("read HELLO"))
    }

    fn session(
        self: Arc<Self>,
        link: &crate::Link,
        peer: SocketAddr,
        id: u64,
    ) -> Result<(), ReplicationError> {
        let io = ReplicationError::io;
        let mut writer = &**link;
        let hello = self.authenticate(link, peer)?;
        let HaFrame::Hello {
            broker_name,
            broker_id,
            log_end,
            last_record,
            epochs,
        } = hello
        else {
            let kind = hello.kind();
            return Err(ReplicationError::Protocol(format!(
                "expected HELLO, got frame kind {kind}"
            )));
        };
        let meeting = self
            .meeting_point(log_end, last_record, &epochs)
            .and_then(|start| {
                let proof = match start {
                    0 => RecordId::default(),
                    _ => self
                        .store
                        .record_ending_at(start)
                        .map_err(ReplicationError::store("find the record ending there"))?
                        .ok_or_else(|| {
                            ReplicationError::Diverged(format!(
                                "the logs part at {start}, where no record of this master's \
                                 log ends: the histories differ and cannot be matched"
                            ))
                        })?,
                };
                Ok((start, proof))
            });
        let (start, proof) = match meeting {
            Ok(meeting) => meeting,
            Err(reason) => {
                log::error!("refusing slave {broker_name}/{broker_id} at {peer}: {reason}");
                let refusal = HaFrame::Refuse {
                    reason: reason.to_string(),
                };
                let _ = write_frame(&mut writer, &refusal);
                return Err(reason);
            }
        };
        write_frame(
            &mut writer,
            &HaFrame::Welcome {
                start,
                proof,
                epoch: self.store.current_epoch(),
                epochs: self.store.epochs(),
            },
        )
        .map_err(io("write WELCOME"))?;
        if start < log_end {
            log::warn!(
                "slave {broker_name}/{broker_id} at {peer} holds records from {start} to {log_end} \
                 that this master does not: it truncates them"
            );
        }
        log::info!("slave {broker_name}/{broker_id} at {peer} connected; streaming from {start}");
        self.lock_links().push(Link {
            id,
            peer,
            broker_name,
            broker_id,
            acked: start,
            last_heard: Instant::now(),
            unacked: std::collections::VecDeque::new(),
        });
        self.store.notify_listeners();

        let reader = link.clone();
        let acks = self.clone();
        let done = Arc::new(AtomicBool::new(false));
        let done_reading = done.clone();
        let ack_thread = std::thread::Builder::new()
            .name("keel-ha-acks".into())
            .spawn(move || {
                let outcome = acks.read_acks(reader, id);
                done_reading.store(true, Ordering::Release);
                acks.notifier.notify();
                outcome
            })
            .map_err(io("start the ack thread"))?;
        let streamed = self.stream_log(writer, start, &done, id);
        let _ = link.socket().shutdown(Shutdown::Both);
        let acked = ack_thread
            .join()
            .unwrap_or_else(|_| Err(ReplicationError::Protocol("the ack thread panicked".into())));
        streamed.and(acked)
    }

    /// Where a slave's log (`log_end`, its last record, its epochs) meets this one: the
    /// offset streaming starts from. Truncating the slave is allowed only when this
    /// master proves the common prefix.
    fn meeting_point(
        &self,
        log_end: u64,
        last_record: RecordId,
        slave_epochs: &[keel_protocol::Epoch],
    ) -> Result<u64, ReplicationError> {
        let store = &self.store;
        let current = store.current_epoch();
        if let Some(newest) = slave_epochs.last() {
            if newest.epoch > current {
                return Err(ReplicationError::Diverged(format!(
                    "the slave has seen epoch {} but this master is at epoch {current}: this \
                     broker is a stale master (a slave was promoted in its place); restart it \
                     with role = \"slave\" of the new master",
                    newest.epoch
                )));
            }
        }
        let ours = store.epochs();
        let written = store.offset_written();
        let common = common_prefix_end(&ours, written, slave_epochs, log_end)
            .unwrap_or_else(|| log_end.min(written));
        let start = common.min(log_end);
        let log_start = store.stats().log_start;
        if start < log_start {
            return Err(ReplicationError::Diverged(format!(
                "the slave's log ends at {start} but this master's log now starts at {log_start} \
                 (retention deleted the rest): seed the slave by copying the master's data \
                 directory while both are stopped"
            )));
        }
        if start == 0 && log_end > 0 {
            return Err(ReplicationError::Diverged(format!(
                "the slave's log (ending at {log_end}) shares no proven prefix with this master's: \
                 refusing to replace it; if it is disposable, stop the slave and empty its \
                 data directory"
            )));
        }
        if start == log_end && start > 0 {
            let mine = store
                .record_ending_at(start)
                .map_err(ReplicationError::store("find the record ending there"))?;
            if mine != Some(last_record) {
                return Err(ReplicationError::Diverged(format!(
                    "the slave's last record (ending at {log_end}, crc {:08x}) is not this \
                     master's record there ({}): the histories differ and this master cannot \
                     prove where",
                    last_record.crc,
                    mine.map_or("none".into(), |id| format!("crc {:08x}", id.crc))
                )));
            }
        }
        Ok(start)
    }

    /// Streams the log from `start` until the connection or the master stops.
    fn stream_log(
        &self,
        mut stream: &Stream,
        start: u64,
        done: &AtomicBool,
        id: u64,
    ) -> Result<(), ReplicationError> {
        let heartbeat = self.options.heartbeat;
        let mut sent = start;
        let mut confirmed_sent = u64::MAX;
        let mut heartbeat_due = Instant::now();
        let mut confirm_due = Instant::now();
        let mut meta_sent: Option<HaFrame> = None;
        let mut meta_due = Instant::now();
        // A META frame waits until the stream has passed the log end read after its
        // offsets were: an offset (a consumer's, the timer's progress) reaches the slave
        // only after the records it counts, or a promoted slave would skip records it
        // never received.
        let mut meta_pending: Option<(u64, HaFrame)> = None;
        // The end of the newest deletion record whose metadata was sent after it.
        let mut deletion_covered = 0u64;
        let mut security_sent: Option<u64> = None;
        let mut seen = self.notifier.version();
        while !done.load(Ordering::Acquire) && !self.stop.load(Ordering::Acquire) {
            let written = self.store.offset_written();
            let confirmed = self.store.offset_durable();
            let now = Instant::now();
            let deletion = self.store.deletion_end();
            if deletion > deletion_covered && sent >= deletion {
                // The slave has the deletion record, which dropped what it had of the
                // topic: a topic of the name made since, and its offsets, are sent again.
                deletion_covered = deletion;
                meta_sent = None;
                meta_pending = None;
                meta_due = now;
            }
            if now >= meta_due {
                // One snapshot at a time: a newer one would move the end to wait for,
                // and under a steady load the stream might never reach it.
                if meta_pending.is_none() {
                    let meta = HaFrame::Meta {
                        topics: self.store.topic_list(),
                        offsets: self.store.consumer_offsets(),
                    };
                    meta_pending = Some((self.store.stats().offset_appended, meta));
                }
                // Users, tokens and permissions, so a promoted slave enforces them.
                let authority = &self.options.security.authority;
                if security_sent != Some(authority.version()) {
                    let (version, state) = authority.snapshot();
                    write_frame(&mut stream, &HaFrame::Security { version, state })
                        .map_err(ReplicationError::io("send SECURITY"))?;
                    security_sent = Some(version);
                }
                meta_due = now + heartbeat;
            }
            if let Some((covers, meta)) = meta_pending.take() {
                if sent < covers {
                    meta_pending = Some((covers, meta));
                } else if meta_sent.as_ref() != Some(&meta) {
                    write_frame(&mut stream, &meta).map_err(ReplicationError::io("send META"))?;
                    meta_sent = Some(meta);
                }
            }
            if sent < written {
                let bytes = self
                    .store
                    .read_log(sent, DATA_CHUNK_BYTES)
                    .map_err(ReplicationError::store(format!("read the log at {sent}")))?;
                let length = bytes.len() as u64;
                let frame = HaFrame::Data {
                    offset: sent,
                    confirmed,
                    master_end: written,
                    bytes,
                };
                // Noted before the write: an ack may come back before the write returns.
                if let Some(link) = self.lock_links().iter_mut().find(|link| link.id == id) {
                    if link.unacked.len() >= UNACKED_MAX {
                        link.unacked.pop_front();
                    }
                    link.unacked.push_back((sent + length, Instant::now()));
                }
                write_frame(&mut stream, &frame).map_err(ReplicationError::io("send DATA"))?;
                sent += length;
                confirmed_sent = confirmed;
                heartbeat_due = now + heartbeat;
                continue;
            }
            let confirm_pending = confirmed != confirmed_sent;
            if (confirm_pending && now >= confirm_due) || now >= heartbeat_due {
                let frame = HaFrame::Data {
                    offset: sent,
                    confirmed,
                    master_end: written,
                    bytes: Vec::new(),
                };
                write_frame(&mut stream, &frame)
                    .map_err(ReplicationError::io("send a heartbeat"))?;
                confirmed_sent = confirmed;
                heartbeat_due = now + heartbeat;
                confirm_due = now + CONFIRM_EVERY;
                continue;
            }
            let until = heartbeat_due
                .min(meta_due)
                .min(confirm_due.max(now + CONFIRM_EVERY));
            seen = self
                .notifier
                .wait(seen, until.saturating_duration_since(Instant::now()));
        }
        Ok(())
    }

    fn read_acks(&self, link: crate::Link, id: u64) -> Result<(), ReplicationError> {
        let mut stream = &*link;
        loop {
            let frame = match read_frame(&mut stream) {
                Ok(frame) => frame,
                Err(error) if self.stop.load(Ordering::Acquire) => {
                    return Err(ReplicationError::io("stopped")(error));
                }
                Err(error) => return Err(ReplicationError::io("read ACK")(error)),
            };
            let HaFrame::Ack { flushed } = frame else {
                let kind = frame.kind();
                return Err(ReplicationError::Protocol(format!(
                    "expected ACK, got frame kind {kind}"
                )));
            };
            // A slave cannot have fsynced what was never written here.
            let flushed = flushed.min(self.store.offset_written());
            if let Some(link) = self.lock_links().iter_mut().find(|link| link.id == id) {
                link.acked = link.acked.max(flushed);
                link.last_heard = Instant::now();
                while let Some((end, sent_at)) = link.unacked.front().copied() {
                    if end > flushed {
                        break;
                    }
                    link.unacked.pop_front();
                    self.ack_seconds.observe_duration(sent_at.elapsed());
                }
            }
            let set = self
                .wait_set
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            self.raise_cap(set.as_ref());
        }
    }
}
