//! Connecting to another keel node: resolve, connect within a deadline, bound every
//! read and write by it, then TLS when configured. Errors name the address and the
//! step.

use keel_security::{ClientTls, Secret, Stream};
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How a node reaches other nodes: TLS when configured (verifying the name it dialed),
/// and the cluster token it logs in with when the other side requires one.
#[derive(Debug, Clone, Default)]
pub struct Dial {
    pub tls: Option<ClientTls>,
    pub token: Option<Secret>,
}

/// `error` with `what` (the address and step) in front of its text.
pub fn context(what: &str, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

/// A blocking connection to `address`, each read and write bounded by `timeout`.
pub fn connect(address: &str, timeout: Duration, tls: Option<&ClientTls>) -> io::Result<Stream> {
    let targets: Vec<_> = address
        .to_socket_addrs()
        .map_err(|e| context(&format!("resolve {address}"), e))?
        .collect();
    // Every address the name resolves to, in order, until one answers.
    let mut failure = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{address} resolves to nothing"),
    );
    for target in targets {
        match TcpStream::connect_timeout(&target, timeout) {
            Ok(socket) => {
                socket
                    .set_read_timeout(Some(timeout))
                    .and_then(|()| socket.set_write_timeout(Some(timeout)))
                    .map_err(|e| context(&format!("{address}: set timeouts"), e))?;
                let _ = socket.set_nodelay(true);
                return Stream::wrap(socket, tls, address)
                    .map_err(|e| context(&format!("{address}: TLS handshake"), e));
            }
            Err(error) => failure = context(&format!("connect to {address} ({target})"), error),
        }
    }
    Err(failure)
}
