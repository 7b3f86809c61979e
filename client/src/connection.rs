//! A pipelined connection: many requests in flight, matched to replies by request id.
//!
//! Writes happen on the caller's thread; one reader thread per connection decodes
//! replies and runs the request's callback. Callbacks run on that reader thread, so they
//! must not block.

use crate::{ClientError, Endpoint};
use keel_net::framed::{FrameReader, Next};
use keel_protocol::{ErrorCode, Login, Request, Response, DEFAULT_MAX_FRAME_BYTES, FLAG_ONEWAY};
use keel_security::{ClientTls, Stream};
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub type Callback = Box<dyn FnOnce(Result<Response, ClientError>) + Send>;

#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    pub connect_timeout: Duration,
    /// A write blocked this long (the broker is not reading) fails the connection;
    /// requests on it fail and producers retry on a new one.
    pub write_timeout: Duration,
    /// Largest reply frame accepted; larger ones close the connection.
    pub max_frame_bytes: u32,
    /// Largest request frame sent: the broker's `max_frame_bytes` (8 MiB by default).
    /// A larger request is refused here, before a byte is sent
    /// (`ClientError::TooLarge`: certainly not stored), instead of being cut off by the
    /// broker mid-write. A broker configured with a smaller limit refuses the frame
    /// itself (FRAME_TOO_LARGE, also certain).
    pub max_request_bytes: u32,
    /// Speak TLS, trusting these roots (`None`: plaintext).
    pub tls: Option<ClientTls>,
    /// Log in with these on every connection, before any other request.
    pub credentials: Option<Credentials>,
}

/// Who a client is to a broker with logins on. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Password { user: String, password: String },
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { user, .. } => write!(f, "Password {{ user: {user:?}, .. }}"),
            Credentials::Token(_) => f.write_str("Token(..)"),
        }
    }
}

impl Credentials {
    fn login(&self) -> Login {
        match self {
            Credentials::Password { user, password } => Login::Password {
                user: user.clone(),
                password: password.clone(),
            },
            Credentials::Token(token) => Login::Token(token.clone()),
        }
    }
}

impl Default for ConnectionOptions {
    fn default() -> ConnectionOptions {
        ConnectionOptions {
            connect_timeout: Duration::from_secs(3),
            write_timeout: Duration::from_secs(3),
            max_frame_bytes: 64 << 20,
            max_request_bytes: DEFAULT_MAX_FRAME_BYTES,
            tls: None,
            credentials: None,
        }
    }
}

/// How often the reader thread checks deadlines while no bytes arrive.
const READ_TICK: Duration = Duration::from_millis(20);

/// Hashes request ids (a counter) with one multiply: SipHash's defence against chosen
/// keys buys nothing for ids this client picks itself.
#[derive(Default)]
struct RequestIdHasher(u64);

impl std::hash::Hasher for RequestIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type RequestIds = std::hash::BuildHasherDefault<RequestIdHasher>;

#[derive(Default)]
struct Pending {
    callbacks: HashMap<u64, (Instant, Callback), RequestIds>,
    /// Set once the connection is dead; later calls fail at once with it.
    closed: Option<String>,
}

struct Shared {
    pending: Mutex<Pending>,
    next_request_id: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Marks the connection dead and fails every request in flight (their outcome is
    /// unknown).
    fn close(&self, reason: String) {
        self.close_with(reason, None);
    }

    /// `close`, failing the requests in flight with `refusal` when the broker said it
    /// read none of them (TOO_MANY_CONNECTIONS at accept: not stored).
    fn close_with(&self, reason: String, refusal: Option<keel_protocol::ErrorResponse>) {
        let callbacks: Vec<Callback> = {
            let mut pending = self.lock();
            if pending.closed.is_none() {
                pending.closed = Some(reason.clone());
            }
            pending
                .callbacks
                .drain()
                .map(|(_, (_, callback))| callback)
                .collect()
        };
        for callback in callbacks {
            callback(Err(match &refusal {
                Some(error) => ClientError::Broker(error.clone()),
                None => ClientError::ConnectionClosed(reason.clone()),
            }));
        }
    }
}

pub struct Connection {
    address: SocketAddr,
    max_request_bytes: u32,
    stream: Arc<Stream>,
    /// Keeps each frame's bytes together on the socket.
    writing: Mutex<()>,
    shared: Arc<Shared>,
    /// Who the broker says this connection acts as, after a login.
    principal: Option<String>,
}

impl Connection {
    /// Connects to `endpoint` (a resolved address, or an `Endpoint` whose name TLS
    /// verifies), does the TLS handshake and the login the options ask for.
    pub fn connect(
        endpoint: impl Into<Endpoint>,
        options: &ConnectionOptions,
    ) -> Result<Connection, ClientError> {
        let endpoint = endpoint.into();
        let address = endpoint.address;
        let fail = |error: io::Error| ClientError::Connect {
            address: address.to_string(),
            detail: error.to_string(),
        };
        let socket = TcpStream::connect_timeout(&address, options.connect_timeout).map_err(fail)?;
        socket.set_nodelay(true).map_err(fail)?;
        socket
            .set_write_timeout(Some(options.write_timeout))
            .map_err(fail)?;
        // The handshake and the login wait up to the connect timeout; the reader then
        // wakes every tick to expire requests.
        socket
            .set_read_timeout(Some(options.connect_timeout))
            .map_err(fail)?;
        let stream =
            Stream::wrap(socket, options.tls.as_ref(), &endpoint.name).map_err(|error| {
                // A TLS failure proper (certificate, protocol) is final; a socket error
                // during the handshake is a connection failure like any other.
                match error.kind() {
                    io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => ClientError::Tls {
                        address: endpoint.name.clone(),
                        detail: error.to_string(),
                    },
                    _ => ClientError::Connect {
                        address: endpoint.name.clone(),
                        detail: format!("TLS handshake: {error}"),
                    },
                }
            })?;
        let principal = match &options.credentials {
            Some(credentials) => Some(
                login(&stream, credentials, options.max_frame_bytes).map_err(
                    |error| match error {
                        ClientError::Broker(_) => error,
                        other => ClientError::Connect {
                            address: address.to_string(),
                            detail: format!("login: {other}"),
                        },
                    },
                )?,
            ),
            None => None,
        };
        stream
            .socket()
            .set_read_timeout(Some(READ_TICK))
            .map_err(fail)?;
        let stream = Arc::new(stream);
        let reader = stream.clone();
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            next_request_id: AtomicU64::new(1),
        });
        let thread_shared = shared.clone();
        let max_frame_bytes = options.max_frame_bytes;
        std::thread::Builder::new()
            .name(format!("keel-client-{address}"))
            .spawn(move || read_loop(reader, &thread_shared, max_frame_bytes))
            .map_err(fail)?;
        Ok(Connection {
            address,
            max_request_bytes: options.max_request_bytes,
            stream,
            writing: Mutex::new(()),
            shared,
            principal,
        })
    }

    /// The principal the broker named at login (`None`: no login).
    pub fn principal(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }

    /// Sends `request`; `callback` gets the reply, or an error after `timeout`.
    ///
    /// A request that is not sent in full is certainly not carried out: one over
    /// `max_request_bytes` is refused before a byte is written (`TooLarge`), one whose
    /// write fails gets `Connect` ("not sent"): the broker holds at most a prefix of its
    /// frame, which it never decodes. Requests written before a failure get
    /// `ConnectionClosed` (their outcome is unknown).
    pub fn call_async(&self, request: &Request, timeout: Duration, callback: Callback) {
        let request_id = self.shared.next_request_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        request.encode(request_id, 0, &mut frame);
        if let Err(error) = self.check_size(&frame) {
            return callback(Err(error));
        }
        {
            let mut pending = self.shared.lock();
            if let Some(reason) = &pending.closed {
                let detail = format!("the connection closed earlier ({reason}); not sent");
                drop(pending);
                callback(Err(ClientError::Connect {
                    address: self.address.to_string(),
                    detail,
                }));
                return;
            }
            // Registered before writing: the reply may arrive before `write` returns.
            pending
                .callbacks
                .insert(request_id, (Instant::now() + timeout, callback));
        }
        if let Err(error) = self.write(&frame) {
            let own = self
                .shared
                .lock()
                .callbacks
                .remove(&request_id)
                .map(|(_, callback)| callback);
            self.shared.close(format!("write failed: {error}"));
            if let Some(callback) = own {
                callback(Err(ClientError::Connect {
                    address: self.address.to_string(),
                    detail: not_sent_detail(&error),
                }));
            }
        }
    }

    /// `TooLarge` for a frame over the broker's limit.
    fn check_size(&self, frame: &[u8]) -> Result<(), ClientError> {
        if frame.len() as u64 > u64::from(self.max_request_bytes) {
            return Err(ClientError::TooLarge {
                bytes: frame.len() as u64,
                max: self.max_request_bytes,
            });
        }
        Ok(())
    }

    /// Sends `request` and waits for its reply.
    pub fn call(&self, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.call_async(
            request,
            timeout,
            Box::new(move |outcome| {
                let _ = sender.send(outcome);
            }),
        );
        // The reader thread enforces the deadline; the margin only covers its tick.
        match receiver.recv_timeout(timeout + READ_TICK * 5) {
            Ok(outcome) => outcome,
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Sends `request` flagged ONEWAY: the broker sends no reply, not even an error.
    pub fn send_oneway(&self, request: &Request) -> Result<(), ClientError> {
        if let Some(reason) = &self.shared.lock().closed {
            return Err(ClientError::Connect {
                address: self.address.to_string(),
                detail: format!("the connection closed earlier ({reason}); not sent"),
            });
        }
        let request_id = self.shared.next_request_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        request.encode(request_id, FLAG_ONEWAY, &mut frame);
        self.check_size(&frame)?;
        self.write(&frame).map_err(|error| {
            self.shared.close(format!("write failed: {error}"));
            ClientError::Connect {
                address: self.address.to_string(),
                detail: not_sent_detail(&error),
            }
        })
    }

    /// Writes one whole frame, or fails with none of it after the connection failed:
    /// a failed write shuts the socket before another frame can follow the torn one
    /// (the broker would read the two as one).
    fn write(&self, frame: &[u8]) -> io::Result<()> {
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(reason) = self.shared.lock().closed.clone() {
            return Err(io::Error::new(io::ErrorKind::NotConnected, reason));
        }
        let written = (&*self.stream).write_all(frame);
        if written.is_err() {
            let _ = self.stream.socket().shutdown(Shutdown::Both);
        }
        written
    }
}

/// Why a request whose write failed was not carried out.
fn not_sent_detail(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotConnected => {
            format!("the connection closed before this request was written ({error}); not sent")
        }
        _ => format!(
            "the connection failed while this request was written ({error}); not sent in \
             full, so not carried out"
        ),
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.stream.socket().shutdown(Shutdown::Both);
    }
}

/// LOGIN on a fresh connection, before its reader starts: the broker's answer, or why
/// not (its error as `ClientError::Broker`).
fn login(
    stream: &Stream,
    credentials: &Credentials,
    max_frame_bytes: u32,
) -> Result<String, ClientError> {
    let mut frame = Vec::new();
    Request::Login(credentials.login()).encode(0, 0, &mut frame);
    (&*stream)
        .write_all(&frame)
        .map_err(|e| ClientError::ConnectionClosed(e.to_string()))?;
    let mut reader = FrameReader::new();
    let next = reader
        .next(stream, max_frame_bytes)
        .map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
            _ => ClientError::ConnectionClosed(e.to_string()),
        })?;
    match next {
        Next::Frame(frame) => match Response::decode(&frame) {
            Ok(Response::LoginOk(principal)) => Ok(principal),
            Ok(Response::Error(error)) => Err(ClientError::Broker(error)),
            Ok(other) => Err(ClientError::Protocol(format!(
                "LOGIN answered with {}",
                other.kind().name()
            ))),
            Err(error) => Err(ClientError::Protocol(format!("bad LOGIN reply: {error}"))),
        },
        Next::Bad(error) => Err(ClientError::Protocol(format!("bad LOGIN reply: {error}"))),
        Next::Closed => Err(ClientError::ConnectionClosed(
            "the broker closed the connection during LOGIN".into(),
        )),
    }
}

fn read_loop(stream: Arc<Stream>, shared: &Shared, max_frame_bytes: u32) {
    let mut reader = FrameReader::new();
    let mut expire_due = Instant::now() + READ_TICK;
    let reason = loop {
        match reader.read_some(&*stream) {
            Ok(0) => break "the broker closed the connection".to_string(),
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(error) => break format!("read failed: {error}"),
        }
        if let Err(reason) = dispatch_frames(&mut reader, shared, max_frame_bytes) {
            break reason;
        }
        if Instant::now() >= expire_due {
            expire(shared);
            expire_due = Instant::now() + READ_TICK;
        }
        if shared.lock().closed.is_some() {
            break "closed".to_string();
        }
    };
    let _ = stream.socket().shutdown(Shutdown::Both);
    shared.close(reason);
}

fn dispatch_frames(
    reader: &mut FrameReader,
    shared: &Shared,
    max_frame_bytes: u32,
) -> Result<(), String> {
    loop {
        let frame = match reader.frame(max_frame_bytes) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(error) => return Err(format!("undecodable reply: {error}")),
        };
        let response = Response::decode(&frame)
            .map_err(|error| format!("bad {} reply: {error}", frame.kind.name()))?;
        let callback = shared
            .lock()
            .callbacks
            .remove(&frame.request_id)
            .map(|(_, callback)| callback);
        match (callback, response) {
            // An error after which the broker closes the connection (FRAME_TOO_LARGE,
            // say): it answers this request; the others in flight are unknown.
            (Some(callback), Response::Error(error)) if error.code.closes_connection() => {
                let reason = format!("broker error {error}");
                callback(Ok(Response::Error(error)));
                return Err(reason);
            }
            (Some(callback), response) => callback(Ok(response)),
            // Refused at accept: the broker read none of our requests.
            (None, Response::Error(error)) if error.code == ErrorCode::TooManyConnections => {
                let reason = format!("broker error {error}");
                shared.close_with(reason.clone(), Some(error));
                return Err(reason);
            }
            // An error for no request of ours: the broker is closing this connection.
            (None, Response::Error(error)) => return Err(format!("broker error {error}")),
            // A late reply to a request that already timed out.
            (None, _) => {}
        }
    }
}

fn expire(shared: &Shared) {
    let now = Instant::now();
    let expired: Vec<Callback> = {
        let mut pending = shared.lock();
        let ids: Vec<u64> = pending
            .callbacks
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| pending.callbacks.remove(&id))
            .map(|(_, callback)| callback)
            .collect()
    };
    for callback in expired {
        callback(Err(ClientError::Timeout));
    }
}
