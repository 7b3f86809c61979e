//! One keel request and its reply on a fresh blocking connection: what a node asks
//! another node's client port (registration with a name server, a route lookup).

use crate::dial::{connect, context, Dial};
use crate::framed::{FrameReader, Next};
use keel_protocol::{Login, Request, Response, DEFAULT_MAX_FRAME_BYTES};
use keel_security::Stream;
use std::io::{self, Write};
use std::time::Duration;

/// `request` to `address` after TLS and a LOGIN with the cluster token when `dial` has
/// them. Fails with the step that failed in the error's text; a login refused is
/// `PermissionDenied`, a reply that does not decode `InvalidData`.
pub fn call(
    address: &str,
    request: &Request,
    timeout: Duration,
    dial: &Dial,
) -> io::Result<Response> {
    let stream = connect(address, timeout, dial.tls.as_ref())?;
    let mut reader = FrameReader::new();
    if let Some(token) = &dial.token {
        let login = Request::Login(Login::Token(token.0.clone()));
        match exchange(&stream, &mut reader, 1, &login).map_err(|e| context("log in", e))? {
            Response::LoginOk(_) => {}
            Response::Error(error) => {
                let detail = format!(
                    "log in with the cluster token: {}: {}",
                    error.code, error.message
                );
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, detail));
            }
            other => {
                let detail = format!("log in: unexpected {}", other.kind().name());
                return Err(io::Error::new(io::ErrorKind::InvalidData, detail));
            }
        }
    }
    exchange(&stream, &mut reader, 2, request)
}

/// Sends `request` on `stream` and reads its reply.
fn exchange(
    stream: &Stream,
    reader: &mut FrameReader,
    id: u64,
    request: &Request,
) -> io::Result<Response> {
    let invalid = |e: keel_protocol::DecodeError| {
        io::Error::new(io::ErrorKind::InvalidData, format!("bad reply: {e}"))
    };
    let mut out = Vec::new();
    request.encode(id, 0, &mut out);
    let mut writer = stream;
    writer.write_all(&out).map_err(|e| context("send", e))?;
    match reader
        .next(stream, DEFAULT_MAX_FRAME_BYTES)
        .map_err(|e| context("read", e))?
    {
        // An ERROR about the connection itself may carry id 0; any other id is not ours.
        Next::Frame(frame) if frame.request_id != id && frame.request_id != 0 => {
            let detail = format!("a reply to request {} (asked {id})", frame.request_id);
            Err(io::Error::new(io::ErrorKind::InvalidData, detail))
        }
        Next::Frame(frame) => Response::decode(&frame).map_err(invalid),
        Next::Bad(error) => Err(invalid(error)),
        Next::Closed => {
            let detail = "connection closed before the reply";
            Err(io::Error::new(io::ErrorKind::UnexpectedEof, detail))
        }
    }
}
