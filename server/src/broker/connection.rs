//! One client connection: what the broker knows of it (who it is, what it owes and is
//! owed) around its framed stream.

use keel_net::nonblocking::FramedStream;
use keel_security::rustls::ServerConnection;
use keel_security::Principal;
use mio::net::TcpStream;
use std::net::SocketAddr;
use std::time::Instant;

/// Above this much unsent output, the connection's input is not processed until the
/// client reads (a consumer that does not read its pulls cannot grow our memory).
pub const WRITE_BACKLOG_MAX: usize = 16 << 20;

/// Which request of which connection an answer is for. Slab keys are reused, so the
/// connection's id tells whether the connection is still the one that asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplyTo {
    pub key: usize,
    pub connection_id: u64,
    pub request_id: u64,
}

pub struct Connection {
    /// Unique for the broker's lifetime: slab keys are reused, ids are not.
    pub id: u64,
    /// The socket, its TLS state and its buffers (keel-net).
    pub stream: FramedStream,
    /// Send the queued output, then close (after a protocol error or EOF).
    pub closing: bool,
    /// The peer closed its side; no more input will come.
    pub read_closed: bool,
    /// How much of the input the loop's buffered-bytes total counts.
    pub buffered_accounted: usize,
    /// Its input waits until fewer of its reads are in flight (the shard counts them).
    pub reads_paused: bool,
    /// Who the connection acts as; `None` until it logs in (`auth = "required"`).
    pub principal: Option<Principal>,
    /// The security state's version when `principal` was last checked.
    pub principal_version: u64,
    /// A LOGIN is being checked: no more input is read until it is answered.
    pub login_pending: bool,
    pub connected_at: Instant,
    /// Closing after an error: the ERROR is written and our side shut down; input is
    /// read and dropped until the peer closes or this deadline, so that the close does
    /// not reset the connection (a reset can destroy the ERROR before the client
    /// reads it, when the client is still writing a large frame).
    pub linger_until: Option<Instant>,
    /// Its place in the client port's census, given back when the connection is dropped.
    _ticket: keel_net::Ticket,
}

impl Connection {
    pub fn new(
        id: u64,
        socket: TcpStream,
        peer: SocketAddr,
        tls: Option<Box<ServerConnection>>,
        principal: Option<Principal>,
        ticket: keel_net::Ticket,
    ) -> Connection {
        Connection {
            id,
            stream: FramedStream::new(socket, peer, tls),
            closing: false,
            read_closed: false,
            buffered_accounted: 0,
            reads_paused: false,
            principal,
            principal_version: 0,
            login_pending: false,
            connected_at: Instant::now(),
            linger_until: None,
            _ticket: ticket,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.stream.peer()
    }
}
