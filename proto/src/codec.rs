//! Length-prefixed CBOR framing for control streams.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! CBOR. Frames larger than the configured maximum are refused before any
//! allocation, so a hostile peer cannot make us buffer gigabytes.

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame or message could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    #[error("unknown message kind {0:?}")]
    UnknownKind(String),
    #[error("could not encode message: {0}")]
    Encode(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("stream closed")]
    Closed,
}

/// Serialise `value` as CBOR into a new frame (prefix included).
pub fn encode_frame<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; 4];
    ciborium::into_writer(value, &mut out).map_err(|e| CodecError::Encode(e.to_string()))?;
    let len = out.len() - 4;
    if len > max {
        return Err(CodecError::TooLarge { len, max });
    }
    let prefix = u32::try_from(len).map_err(|_| CodecError::TooLarge { len, max })?;
    out[..4].copy_from_slice(&prefix.to_be_bytes());
    Ok(out)
}

/// Decode one CBOR body (no prefix) into `T`.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    ciborium::from_reader(body).map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Incremental frame splitter for byte streams that arrive in pieces.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame body, `None` when more bytes are needed.
    /// An oversized length is an error and the decoder must be discarded.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > self.max {
            return Err(CodecError::TooLarge { len, max: self.max });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let body = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(body))
    }
}

/// Read one frame body from an async stream. `Ok(None)` on a clean end of
/// stream before any byte of a new frame.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, CodecError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(CodecError::Closed)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(CodecError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => CodecError::Closed,
        _ => CodecError::Io(e),
    })?;
    Ok(Some(body))
}

/// Write one value as a frame and flush it.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
    max: usize,
) -> Result<(), CodecError> {
    let frame = encode_frame(value, max)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_across_pushes() {
        let frame = encode_frame(&"hello".to_string(), 1024).expect("encode");
        let mut d = FrameDecoder::new(1024);
        for b in &frame[..frame.len() - 1] {
            d.push(std::slice::from_ref(b));
            assert!(d.next_frame().expect("ok").is_none());
        }
        d.push(&frame[frame.len() - 1..]);
        let body = d.next_frame().expect("ok").expect("frame");
        let s: String = decode_body(&body).expect("decode");
        assert_eq!(s, "hello");
    }

    #[test]
    fn oversized_prefix_is_refused_before_buffering() {
        let mut d = FrameDecoder::new(16);
        d.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_frame(), Err(CodecError::TooLarge { .. })));
    }

    #[tokio::test]
    async fn async_roundtrip_and_clean_eof() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &42u32, 64).await.expect("write");
        let mut r = &wire[..];
        let body = read_frame(&mut r, 64).await.expect("read").expect("frame");
        assert_eq!(decode_body::<u32>(&body).expect("decode"), 42);
        assert!(read_frame(&mut r, 64).await.expect("eof").is_none());
        let mut truncated = &wire[..wire.len() - 1];
        assert!(matches!(
            read_frame(&mut truncated, 64).await,
            Err(CodecError::Closed)
        ));
    }
}
