//! Reading and writing directory messages and raw mail bodies on QUIC
//! streams; shared by the server and the client library.

use keyline_proto::codec::{encode_frame_into, read_frame, write_frame, CodecError, FrameDecoder};
use keyline_proto::dir::DirMsg;
use keyline_proto::MAX_MESSAGE;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Ack-eliciting packets either end of a directory connection may take
/// before it must acknowledge (QUIC's default is 1: an ACK for every other
/// packet). Each end asks it of the other, so that a busy directory sends
/// and receives fewer ACK-only packets (issue 6; see bench/README.md).
pub const ACK_EVERY: u32 = 8;

/// What the next frame on a stream was.
#[derive(Debug)]
pub enum Incoming {
    Msg(DirMsg),
    /// A well-formed message of a kind this version does not know.
    Unknown(String),
    /// The stream ended cleanly.
    Closed,
}

/// Read one directory message. Garbage is an error; an unknown kind is not.
pub async fn next_msg<R: AsyncRead + Unpin>(r: &mut R) -> Result<Incoming, CodecError> {
    let Some(body) = read_frame(r, MAX_MESSAGE).await? else {
        return Ok(Incoming::Closed);
    };
    match DirMsg::from_cbor(&body) {
        Ok(m) => Ok(Incoming::Msg(m)),
        Err(CodecError::UnknownKind(k)) => Ok(Incoming::Unknown(k)),
        Err(e) => Err(e),
    }
}

/// Write one directory message and flush it.
pub async fn send_msg<W: AsyncWrite + Unpin>(w: &mut W, msg: &DirMsg) -> Result<(), CodecError> {
    write_frame(w, msg, MAX_MESSAGE).await
}

/// Largest piece taken from a control stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// Reads a control stream in whole chunks and splits them into messages,
/// so that one read serves every message that arrived together and each
/// frame is decoded where it lies (sized before it is buffered, as in
/// `read_frame`).
#[derive(Debug)]
pub struct MsgReader {
    recv: quinn::RecvStream,
    frames: FrameDecoder,
}

impl MsgReader {
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self {
            recv,
            frames: FrameDecoder::new(MAX_MESSAGE),
        }
    }

    /// Whether [`next`](Self::next) has a message without reading the
    /// stream (a client that batches its requests writes once this is
    /// false).
    pub fn ready(&self) -> bool {
        self.frames.has_frame()
    }

    /// The next message, as [`next_msg`]: garbage is an error, an unknown
    /// kind is not. The end of the stream (a partial frame included) is
    /// `Closed`; a lost connection is [`CodecError::Io`].
    pub async fn next(&mut self) -> Result<Incoming, CodecError> {
        loop {
            if let Some(incoming) = take_msg(&mut self.frames)? {
                return Ok(incoming);
            }
            match self.recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => self.frames.push(&chunk.bytes),
                Ok(None) => return Ok(Incoming::Closed),
                Err(e) => return Err(CodecError::Io(e.into())),
            }
        }
    }
}

/// The next message whole in `frames` (what [`MsgReader`] does with
/// the chunks it reads; no I/O): `None` until a whole frame is there,
/// garbage or an oversized frame an error (the stream must then be
/// dropped), an unknown kind not.
pub fn take_msg(frames: &mut FrameDecoder) -> Result<Option<Incoming>, CodecError> {
    let Some(body) = frames.next_frame_ref()? else {
        return Ok(None);
    };
    match DirMsg::from_cbor(body) {
        Ok(m) => Ok(Some(Incoming::Msg(m))),
        Err(CodecError::UnknownKind(k)) => Ok(Some(Incoming::Unknown(k))),
        Err(e) => Err(e),
    }
}

/// Most messages a [`MsgWriter`] takes from its queue per wake-up.
pub const WRITE_BATCH: usize = 64;
/// A [`MsgWriter`] writes what it has once it holds this many bytes.
const WRITE_BYTES: usize = 64 * 1024;
/// After a batch no larger than this, a [`MsgWriter`] keeps no more buffer
/// than this: a server holds one writer per connection, and a connection
/// that once sent a large message (an account's long number list) and is
/// now quiet must not keep its buffer, while a busy one keeps its own.
const KEEP_BYTES: usize = 1024;

/// Writes messages to a control stream in batches: everything queued goes
/// out in one stream write, not one per message.
#[derive(Debug)]
pub struct MsgWriter {
    send: quinn::SendStream,
    buf: Vec<u8>,
}

impl MsgWriter {
    pub fn new(send: quinn::SendStream) -> Self {
        Self {
            send,
            buf: Vec::new(),
        }
    }

    /// Add `msg` to the batch (straight into its buffer: no frame of its
    /// own), writing the batch once it is large.
    pub async fn push(&mut self, msg: &DirMsg) -> Result<(), CodecError> {
        encode_frame_into(msg, MAX_MESSAGE, &mut self.buf)?;
        if self.buf.len() >= WRITE_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Write what the batch holds.
    pub async fn flush(&mut self) -> Result<(), CodecError> {
        if !self.buf.is_empty() {
            self.send
                .write_all(&self.buf)
                .await
                .map_err(|e| CodecError::Io(e.into()))?;
            if self.buf.len() <= KEEP_BYTES {
                self.buf.shrink_to(KEEP_BYTES);
            }
            self.buf.clear();
        }
        Ok(())
    }

    /// End the stream after what was written.
    pub fn finish(mut self) {
        let _ = self.send.finish();
    }
}

/// Write a raw body frame: a 4-byte big-endian length, then the bytes.
pub async fn write_body<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> Result<(), CodecError> {
    let len = u32::try_from(body.len()).map_err(|_| CodecError::TooLarge {
        len: body.len(),
        max: u32::MAX as usize,
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(body).await?;
    w.flush().await?;
    Ok(())
}

/// Read a raw body frame that must be exactly `len` bytes long.
pub async fn read_body<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<Vec<u8>, CodecError> {
    let body = read_frame(r, len).await?.ok_or(CodecError::Closed)?;
    if body.len() != len {
        return Err(CodecError::Malformed(format!(
            "the body has {} bytes, the header said {len}",
            body.len()
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn body_roundtrip_and_length_checks() {
        let mut wire = Vec::new();
        write_body(&mut wire, b"OggS....").await.expect("write");
        let mut r = &wire[..];
        assert_eq!(read_body(&mut r, 8).await.expect("read"), b"OggS....");
        let mut r = &wire[..];
        assert!(matches!(
            read_body(&mut r, 4).await,
            Err(CodecError::TooLarge { .. })
        ));
        let mut r = &wire[..];
        assert!(matches!(
            read_body(&mut r, 9).await,
            Err(CodecError::Malformed(_))
        ));
        let mut r = &wire[..5];
        assert!(read_body(&mut r, 8).await.is_err());
    }
}
