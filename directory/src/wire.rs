//! Reading and writing directory messages and raw mail bodies on QUIC
//! streams; shared by the server and the client library.

use keyline_proto::codec::{read_frame, write_frame, CodecError};
use keyline_proto::dir::DirMsg;
use keyline_proto::MAX_MESSAGE;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

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
