//! The HTTP port (`metrics_listen`, off by default): `/metrics` (`metrics.rs`) and the
//! console (`console.rs`), served by hyper's HTTP/1 server on a Tokio runtime of its
//! own thread. Bounded: headers within 5 s and 16 KiB, at most `CAPS`
//! connections, at most `REQUESTS_MAX` requests worked on at once (each on a blocking
//! thread: a message lookup reads the log), the others answered 503 at once. A scraper
//! can never slow the event loops.

use crate::context::Broker;
use crate::http::console::Answer;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use keel_security::Action;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Requests worked on at once (a message lookup reads the whole log: scrapes must not
/// wait behind it).
const REQUESTS_MAX: usize = 8;
/// Connections open at once, and from one address; more are closed as they arrive.
const CAPS: keel_net::Caps = keel_net::Caps {
    max_connections: 64,
    max_per_address: 32,
};
/// The request head's limits.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_BYTES_MAX: usize = 16 << 10;
/// A connection idle (or slow) this long is closed.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Binds `address` and serves `/metrics` and the console until the process exits.
pub fn start(broker: Arc<Broker>, address: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(REQUESTS_MAX)
        .build()?;
    std::thread::Builder::new()
        .name("keel-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => accept(broker, listener).await,
                    Err(error) => log::error!("the HTTP port cannot serve: {error}"),
                }
            })
        })?;
    Ok(bound)
}

async fn accept(broker: Arc<Broker>, listener: tokio::net::TcpListener) {
    let connections = keel_net::Census::new(CAPS);
    let requests = Arc::new(Semaphore::new(REQUESTS_MAX));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                log::debug!("HTTP accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match connections.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(refused) => {
                log::debug!("HTTP connection from {peer} refused: {refused}");
                continue;
            }
        };
        let (broker, requests) = (broker.clone(), requests.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                handle(broker.clone(), requests.clone(), peer, request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(HEADER_BYTES_MAX)
                .serve_connection(TokioIo::new(stream), service);
            let served = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            if let Ok(Err(error)) = served {
                log::debug!("HTTP connection from {peer}: {error}");
            }
        });
    }
}

async fn handle(
    broker: Arc<Broker>,
    requests: Arc<Semaphore>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET {
        return Ok(response(&Answer {
            status: "405 Method Not Allowed",
            content_type: "text/plain",
            body: "only GET\n".into(),
        }));
    }
    let Ok(permit) = requests.try_acquire_owned() else {
        return Ok(response(&Answer {
            status: "503 Service Unavailable",
            content_type: "text/plain",
            body: "busy\n".into(),
        }));
    };
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|value: &HeaderValue| value.to_str().ok())
            .map(str::to_string)
    };
    let (host, authorization) = (header(HOST), header(AUTHORIZATION));
    let path = request
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |path| path.as_str().to_string());
    let worked = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        answer(
            &broker,
            &path,
            host.as_deref(),
            authorization.as_deref(),
            peer,
        )
    })
    .await;
    Ok(response(&worked.unwrap_or_else(|error| Answer {
        status: "500 Internal Server Error",
        content_type: "text/plain",
        body: format!("the request failed: {error}\n"),
    })))
}

/// The answer to GET `path` (on a blocking thread: it may read the log).
fn answer(
    broker: &Broker,
    path: &str,
    host: Option<&str>,
    authorization: Option<&str>,
    peer: SocketAddr,
) -> Answer {
    if path == "/metrics" {
        if !broker.config.security.metrics_public {
            let allowed =
                crate::http::console::authorize(broker, authorization, peer, Action::Stats);
            if let Err(refusal) = allowed {
                return refusal;
            }
        }
        return Answer {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4",
            body: crate::http::metrics::render(broker),
        };
    }
    crate::http::console::serve(broker, path, host, authorization, peer)
}

fn response(answer: &Answer) -> Response<Full<Bytes>> {
    let status = answer
        .status
        .get(..3)
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Full::new(Bytes::from(answer.body.clone())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             frame-ancestors 'none'",
        ),
    );
    response
}
