//! The HTTP port (`metrics_listen`, off by default), on its own threads: `/metrics`
//! (`metrics.rs`) and the console (`console.rs`). Small requests only, bounded in size
//! and time, at most `REQUESTS_MAX` at once: a scraper can never slow the event loops.

use crate::context::Broker;
use keel_security::Action;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const REQUEST_BYTES_MAX: usize = 4096;

/// Requests served at once (a message lookup reads the whole log: scrapes must not
/// wait behind it).
const REQUESTS_MAX: usize = 8;

/// Binds `address` and serves `/metrics` and the console until the process exits.
pub fn start(broker: Arc<Broker>, address: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address)?;
    let bound = listener.local_addr()?;
    let running = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("keel-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(error) => {
                        log::debug!("metrics accept failed: {error}");
                        continue;
                    }
                };
                if running.fetch_add(1, Ordering::AcqRel) >= REQUESTS_MAX {
                    running.fetch_sub(1, Ordering::AcqRel);
                    let _ = respond(stream, "503 Service Unavailable", "text/plain", "busy\n");
                    continue;
                }
                // The slot is given back however the request ends, a panic included.
                let slot = Slot(running.clone());
                let broker = broker.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("keel-http".into())
                        .spawn(move || {
                            let _slot = slot;
                            if let Err(error) = serve(&broker, stream) {
                                log::debug!("metrics request failed: {error}");
                            }
                        });
                if spawned.is_err() {
                    log::warn!("cannot start a thread for an HTTP request");
                }
            }
        })?;
    Ok(bound)
}

/// One of the `REQUESTS_MAX` request slots, released when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn respond(
    mut stream: TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'self'; script-src 'unsafe-inline'; \
         style-src 'unsafe-inline'; frame-ancestors 'none'\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

fn serve(broker: &Broker, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let peer = stream.peer_addr()?;
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    // The whole request within 5 s, not 2 s a read: a byte at a time holds no slot.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !request.windows(4).any(|window| window == b"\r\n\r\n")
        && request.len() < REQUEST_BYTES_MAX
    {
        if std::time::Instant::now() >= deadline {
            let slow = std::io::Error::new(std::io::ErrorKind::TimedOut, "request too slow");
            return Err(slow);
        }
        let count = stream.read(&mut chunk)?;
        if count == 0 {
            break;
        }
        request.extend_from_slice(chunk.get(..count).unwrap_or_default());
    }
    let text = String::from_utf8_lossy(&request);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect();
    let header = |wanted: &str| {
        headers
            .iter()
            .find(|(name, _)| name == wanted)
            .map(|(_, value)| value.as_str())
    };
    if method != "GET" {
        return respond(stream, "405 Method Not Allowed", "text/plain", "only GET\n");
    }
    if path == "/metrics" {
        if !broker.config.security.metrics_public {
            let token = header("authorization");
            let allowed = crate::http::console::authorize(broker, token, peer, Action::Stats);
            if let Err(refusal) = allowed {
                return respond(stream, refusal.status, refusal.content_type, &refusal.body);
            }
        }
        return respond(
            stream,
            "200 OK",
            "text/plain; version=0.0.4",
            &crate::http::metrics::render(broker),
        );
    }
    let answer =
        crate::http::console::serve(broker, path, header("host"), header("authorization"), peer);
    respond(stream, answer.status, answer.content_type, &answer.body)
}
