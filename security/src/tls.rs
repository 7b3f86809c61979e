//! TLS set-up (rustls with the `ring` provider) and a blocking TLS stream that one
//! thread can read while others write, as the client library and the HA link need.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The first byte of a TLS record carrying a handshake.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// Whether the first bytes of a connection are a TLS ClientHello: `None` until enough
/// have arrived to tell. A record header (0x16, 0x03, minor version 0-4) then, at byte
/// 5, the handshake type 1. A keel frame could start the same way only with byte 4 =
/// 2 (its version) and byte 5 = 1 (a PING over 64 KiB long, which is malformed anyway),
/// so that case is left to the keel decoder.
pub fn is_tls_client_hello(bytes: &[u8]) -> Option<bool> {
    if !could_be_tls(bytes)? {
        return Some(false);
    }
    match (bytes.get(4), bytes.get(5)) {
        (Some(low_length), Some(kind)) => Some(*kind == 0x01 && *low_length != 2),
        _ => None,
    }
}

/// Whether the first bytes could start a TLS record at all (for a TLS port: anything
/// else is plaintext). `None` until three bytes have arrived.
pub fn could_be_tls(bytes: &[u8]) -> Option<bool> {
    match bytes {
        [first, second, minor, ..] => {
            Some(*first == TLS_HANDSHAKE_BYTE && *second == 0x03 && *minor <= 0x04)
        }
        [first, second] if *first != TLS_HANDSHAKE_BYTE || *second != 0x03 => Some(false),
        [first] if *first != TLS_HANDSHAKE_BYTE => Some(false),
        _ => None,
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no usable private key: {e}", path.display()))
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path)? {
        roots
            .add(certificate)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A server's TLS settings, from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Clients must present a certificate signed by one of these.
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTls {
    /// Why the certificate in `cert_file` is not valid at `now` (seconds since the
    /// epoch): expired, or not valid yet is not checked (clocks differ by little).
    /// `Ok(None)` when it is valid.
    pub fn expired_at(&self, now: i64) -> Result<Option<String>, String> {
        let certificates = certificates(&self.cert_file)?;
        let Some(leaf) = certificates.first() else {
            return Ok(None);
        };
        let not_after = crate::validity::not_after(leaf.as_ref())
            .map_err(|e| format!("{}: {e}", self.cert_file.display()))?;
        if not_after >= now {
            return Ok(None);
        }
        let days = (now - not_after) / 86_400;
        Ok(Some(format!(
            "the certificate in {} expired {days} day(s) ago (notAfter {not_after} s since \
             the epoch): clients that check it will refuse every connection",
            self.cert_file.display()
        )))
    }

    pub fn config(&self) -> Result<Arc<ServerConfig>, String> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca_file {
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                        .build()
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certificates(&self.cert_file)?, private_key(&self.key_file)?)
            .map_err(|e| {
                format!(
                    "{} with {}: {e}",
                    self.cert_file.display(),
                    self.key_file.display()
                )
            })?;
        Ok(Arc::new(config))
    }
}

/// A client's TLS settings: whom to trust, which name to expect, and its own
/// certificate when the server asks for one.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    /// The name the server's certificate must carry; `None`: the host of the address
    /// connected to.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl ClientTls {
    /// Trusts the certificates in `ca_file`; presents `cert_key` when given.
    pub fn new(
        ca_file: &Path,
        cert_key: Option<(&Path, &Path)>,
        server_name: Option<String>,
    ) -> Result<ClientTls, String> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots(ca_file)?);
        let config = match cert_key {
            Some((cert, key)) => builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))?,
            None => builder.with_no_client_auth(),
        };
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The server name to verify for a connection to `address` (`host:port`).
    pub fn name_for(&self, address: &str) -> Result<ServerName<'static>, String> {
        let host = match &self.server_name {
            Some(name) => name.as_str(),
            None => address
                .rsplit_once(':')
                .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
                .unwrap_or(address),
        };
        ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} is not a name a certificate can carry: {e}"))
    }
}

/// A TLS error as an `io::Error`, saying what probably went wrong.
pub fn tls_error(error: rustls::Error) -> io::Error {
    let hint = match &error {
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            " (is TLS on at both ends of this connection?)"
        }
        _ => "",
    };
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {error}{hint}"))
}

struct Shared {
    connection: rustls::Connection,
    /// Bytes read from the socket that rustls has not taken yet.
    incoming: Vec<u8>,
}

/// A blocking TLS stream over a `TcpStream`, usable through `&TlsStream` from one
/// reading thread and any number of writing threads (like `&TcpStream`). The socket
/// is read and written without holding the TLS state's lock, and the reader never
/// writes, so a writer blocked on a full socket never stops the reader from draining.
pub struct TlsStream {
    socket: TcpStream,
    shared: Mutex<Shared>,
    /// Keeps TLS records in the order they were sealed.
    writing: Mutex<()>,
}

impl TlsStream {
    /// Connects TLS over `socket` as a client and completes the handshake.
    pub fn client(socket: TcpStream, tls: &ClientTls, address: &str) -> io::Result<TlsStream> {
        let name = tls
            .name_for(address)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let connection = ClientConnection::new(tls.config.clone(), name).map_err(tls_error)?;
        TlsStream::handshake(socket, connection.into())
    }

    /// Accepts TLS over `socket` as a server and completes the handshake.
    pub fn server(socket: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
        let connection = ServerConnection::new(config).map_err(tls_error)?;
        TlsStream::handshake(socket, connection.into())
    }

    fn handshake(
        mut socket: TcpStream,
        mut connection: rustls::Connection,
    ) -> io::Result<TlsStream> {
        while connection.is_handshaking() {
            match connection.complete_io(&mut socket) {
                Ok(_) => {}
                Err(error) => {
                    let error = match error
                        .get_ref()
                        .and_then(|e| e.downcast_ref::<rustls::Error>())
                    {
                        Some(tls) => tls_error(tls.clone()),
                        None => error,
                    };
                    return Err(error);
                }
            }
        }
        // Flush what the handshake left (a server's session tickets).
        while connection.wants_write() {
            connection.write_tls(&mut socket)?;
        }
        Ok(TlsStream {
            socket,
            shared: Mutex::new(Shared {
                connection,
                incoming: Vec::new(),
            }),
            writing: Mutex::new(()),
        })
    }

    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the peer presented a certificate (verified during the handshake).
    pub fn has_peer_certificate(&self) -> bool {
        self.lock().connection.peer_certificates().is_some()
    }
}

impl Read for &TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut shared = self.lock();
                match shared.connection.reader().read(buf) {
                    Ok(count) => return Ok(count),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) => return Err(error),
                }
                if !shared.incoming.is_empty() {
                    let Shared {
                        connection,
                        incoming,
                    } = &mut *shared;
                    let mut slice = &incoming[..];
                    let taken = connection.read_tls(&mut slice)?;
                    incoming.drain(..taken);
                    connection.process_new_packets().map_err(tls_error)?;
                    // What rustls wants to send in answer (a key update) goes with the
                    // next write: the reader never waits for the socket's write side.
                    continue;
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let count = (&self.socket).read(&mut chunk)?;
            let mut shared = self.lock();
            if count == 0 {
                // The peer closed: rustls says whether it did so cleanly.
                shared.connection.read_tls(&mut &[][..])?;
                shared.connection.process_new_packets().map_err(tls_error)?;
                return match shared.connection.reader().read(buf) {
                    Ok(count) => Ok(count),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    Err(error) => Err(error),
                };
            }
            shared.incoming.extend_from_slice(&chunk[..count]);
        }
    }
}

impl Write for &TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let mut sealed = Vec::with_capacity(buf.len() + buf.len() / 64 + 64);
        {
            let mut shared = self.lock();
            // rustls holds a bounded amount of sealed output: seal a piece at a time
            // and take what it sealed before the next.
            for piece in buf.chunks(16 * 1024) {
                shared.connection.writer().write_all(piece)?;
                while shared.connection.wants_write() {
                    shared.connection.write_tls(&mut sealed)?;
                }
            }
            while shared.connection.wants_write() {
                shared.connection.write_tls(&mut sealed)?;
            }
        }
        (&self.socket).write_all(&sealed)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A plaintext or TLS stream, read and written through `&Stream` like `&TcpStream`.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    /// Connects to `address` (`host:port`) with TLS when `tls` is given.
    pub fn wrap(socket: TcpStream, tls: Option<&ClientTls>, address: &str) -> io::Result<Stream> {
        match tls {
            Some(tls) => {
                TlsStream::client(socket, tls, address).map(|tls| Stream::Tls(Box::new(tls)))
            }
            None => Ok(Stream::Plain(socket)),
        }
    }

    pub fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(socket) => socket,
            Stream::Tls(tls) => tls.socket(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => (&*socket).read(buf),
            Stream::Tls(tls) => (&**tls).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => (&*socket).write(buf),
            Stream::Tls(tls) => (&**tls).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a secret from a file (a token file, say): its first line, trimmed.
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secret = text.lines().next().unwrap_or("").trim().to_string();
    if secret.is_empty() {
        return Err(format!("{}: empty", path.display()));
    }
    Ok(secret)
}
