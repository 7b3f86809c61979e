//! Prometheus text exposition of the broker's counters, on its own thread and port
//! (`metrics_listen`, off by default). One small request at a time, bounded in size and
//! time: a scraper can never slow the event loops.

use crate::broker::Broker;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

const REQUEST_BYTES_MAX: usize = 4096;

/// Binds `address` and serves `/metrics` until the process exits.
pub fn start(broker: Arc<Broker>, address: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("keel-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(error) = serve(&broker, stream) {
                            log::debug!("metrics request failed: {error}");
                        }
                    }
                    Err(error) => log::debug!("metrics accept failed: {error}"),
                }
            }
        })?;
    Ok(bound)
}

fn serve(broker: &Broker, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|window| window == b"\r\n\r\n")
        && request.len() < REQUEST_BYTES_MAX
    {
        let count = stream.read(&mut chunk)?;
        if count == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..count]);
    }
    let line = request
        .split(|byte| *byte == b'\n')
        .next()
        .unwrap_or_default();
    let (status, body) = if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET / ") {
        ("200 OK", render(broker))
    } else {
        (
            "404 Not Found",
            "only GET /metrics is served here\n".to_string(),
        )
    };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

/// Every STATS value as `keel_<name>`, plus each queue's stored range.
pub fn render(broker: &Broker) -> String {
    let mut out = String::new();
    for (name, value) in broker.stats() {
        out.push_str(&format!("# TYPE keel_{name} gauge\nkeel_{name} {value}\n"));
    }
    out.push_str("# TYPE keel_queue_min_offset gauge\n# TYPE keel_queue_max_offset gauge\n");
    for (topic, queues) in broker.store.queue_offsets(None) {
        for (queue_id, (min_offset, max_offset)) in queues.iter().enumerate() {
            let labels = format!("{{topic=\"{topic}\",queue=\"{queue_id}\"}}");
            out.push_str(&format!("keel_queue_min_offset{labels} {min_offset}\n"));
            out.push_str(&format!("keel_queue_max_offset{labels} {max_offset}\n"));
        }
    }
    out
}
