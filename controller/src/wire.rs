//! The controller port's frames on the Tokio side (the voters' own connections and the
//! server); the kinds and the blocking side are `keel_controller_api::wire`, the codec
//! `keel_protocol::envelope`.

pub use keel_controller_api::wire::*;
use keel_protocol::envelope;
use std::io;

fn invalid(error: keel_protocol::DecodeError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("controller frame: {error}"),
    )
}

/// What a frame's buffer starts with, whatever its length prefix says.
const INITIAL_BUFFER: usize = 64 << 10;

/// Reads one frame from a Tokio stream.
pub async fn read_frame_async<S>(stream: &mut S) -> io::Result<(u8, Vec<u8>)>
where
    S: tokio::io::AsyncRead + Unpin,
{
    read_frame_async_within(stream, MAX_FRAME_BYTES).await
}

/// `read_frame_async`, refusing a frame longer than `max` (at most `MAX_FRAME_BYTES`).
pub async fn read_frame_async_within<S>(stream: &mut S, max: u32) -> io::Result<(u8, Vec<u8>)>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await?;
    let length = envelope::check_length(u32::from_le_bytes(prefix), max.min(MAX_FRAME_BYTES))
        .map_err(invalid)?;
    let mut rest = Vec::with_capacity(length.min(INITIAL_BUFFER));
    (&mut *stream)
        .take(u64::try_from(length).unwrap_or(u64::MAX))
        .read_to_end(&mut rest)
        .await?;
    if rest.len() < length {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "controller frame cut short",
        ));
    }
    let (kind, body) = envelope::open(&rest).map_err(invalid)?;
    Ok((kind, body.to_vec()))
}

pub async fn write_frame_async<S>(stream: &mut S, kind: u8, body: &[u8]) -> io::Result<()>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    stream.write_all(&envelope::encode(kind, body)).await?;
    stream.flush().await
}
