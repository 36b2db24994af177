//! Length-prefixed CBOR framing for control streams.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! CBOR. Frames larger than the configured maximum are refused before any
//! allocation, so a hostile peer cannot make us buffer gigabytes.

use serde::{de::DeserializeOwned, Serialize};
#[cfg(feature = "io")]
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
    let mut out = Vec::new();
    encode_frame_into(value, max, &mut out)?;
    Ok(out)
}

/// Serialise `value` as one frame (prefix included) at the end of `out`,
/// so that a writer can put many frames in one reused buffer. On error
/// `out` is left as it was.
pub fn encode_frame_into<T: Serialize>(
    value: &T,
    max: usize,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    if let Err(e) = ciborium::into_writer(value, &mut *out) {
        out.truncate(start);
        return Err(CodecError::Encode(e.to_string()));
    }
    let len = out.len() - start - 4;
    let prefix = match u32::try_from(len) {
        Ok(p) if len <= max => p,
        _ => {
            out.truncate(start);
            return Err(CodecError::TooLarge { len, max });
        }
    };
    out[start..start + 4].copy_from_slice(&prefix.to_be_bytes());
    Ok(())
}

/// Decode one CBOR body (no prefix) into `T`.
///
/// The common case goes through [`slice::Deserializer`], which reads the
/// body in place (strings and map keys borrowed, no scratch buffer); it
/// takes only definite-length items without tags or floats, and refuses
/// anything else. Whatever it refuses is decoded again by ciborium, so
/// what is accepted, the values produced and the errors reported are
/// ciborium's.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    if let Ok(v) = T::deserialize(&mut slice::Deserializer::new(body)) {
        return Ok(v);
    }
    ciborium::from_reader(body).map_err(|e| CodecError::Malformed(e.to_string()))
}

/// A serde deserializer for the subset of CBOR our encoder writes, read in
/// place from a slice. Any refusal is [`slice::Refused`] (no message: the
/// caller decodes again with ciborium for the real error).
///
/// Where it accepts an input it gives the same value as ciborium 0.2:
/// integers as `u64`/`i64` (`visit_u64` for major type 0, `visit_i64` for
/// major type 1), text and bytes as borrowed slices, `null` and
/// `undefined` as none/unit, structs from maps only, enums from a text or
/// a one-entry map, not human-readable. It refuses tags, floats, other
/// simple values, indefinite lengths, nesting deeper than [`slice::DEPTH`]
/// (ciborium allows 256), and a sequence or map its visitor does not read
/// to the end (where ciborium would go on reading out of step).
pub mod slice {
    use serde::de::{self, DeserializeSeed, Visitor};

    /// Deepest nesting of arrays, maps and enums taken.
    pub const DEPTH: usize = 128;

    /// ciborium's scratch buffer: it takes longer strings and byte strings
    /// only where an owned value is asked for (`deserialize_any`,
    /// `deserialize_string`, `deserialize_byte_buf`), and so does this.
    const SCRATCH: usize = 4096;

    /// The input is outside the subset (or wrong): decode it another way.
    #[derive(Debug)]
    pub struct Refused;

    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("outside the fast CBOR subset")
        }
    }

    impl std::error::Error for Refused {}

    impl de::Error for Refused {
        fn custom<T: std::fmt::Display>(_msg: T) -> Self {
            Refused
        }
    }

    type R<T> = Result<T, Refused>;

    #[derive(Debug, Clone, Copy)]
    enum Head {
        Uint(u64),
        Neg(u64),
        Bytes(usize),
        Text(usize),
        Array(usize),
        Map(usize),
        Bool(bool),
        /// `null` or `undefined`.
        Nothing,
    }

    /// Reads CBOR items from a slice.
    #[derive(Debug)]
    pub struct Deserializer<'de> {
        buf: &'de [u8],
        pos: usize,
        depth: usize,
    }

    impl<'de> Deserializer<'de> {
        pub fn new(buf: &'de [u8]) -> Self {
            Deserializer {
                buf,
                pos: 0,
                depth: 0,
            }
        }

        fn byte(&mut self) -> R<u8> {
            let b = *self.buf.get(self.pos).ok_or(Refused)?;
            self.pos += 1;
            Ok(b)
        }

        fn take(&mut self, n: usize) -> R<&'de [u8]> {
            let end = self.pos.checked_add(n).ok_or(Refused)?;
            let s = self.buf.get(self.pos..end).ok_or(Refused)?;
            self.pos = end;
            Ok(s)
        }

        fn arg(&mut self, ai: u8) -> R<u64> {
            Ok(match ai {
                0..=23 => u64::from(ai),
                24 => u64::from(self.byte()?),
                25 => {
                    let b = self.take(2)?;
                    u64::from(u16::from_be_bytes([b[0], b[1]]))
                }
                26 => {
                    let b = self.take(4)?;
                    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                }
                27 => {
                    let b = self.take(8)?;
                    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
                }
                // Reserved, or an indefinite length.
                _ => return Err(Refused),
            })
        }

        fn head(&mut self) -> R<Head> {
            let b = self.byte()?;
            let (major, ai) = (b >> 5, b & 0x1f);
            if major == 7 {
                return match ai {
                    20 => Ok(Head::Bool(false)),
                    21 => Ok(Head::Bool(true)),
                    22 | 23 => Ok(Head::Nothing),
                    _ => Err(Refused),
                };
            }
            let v = self.arg(ai)?;
            let len = || usize::try_from(v).map_err(|_| Refused);
            Ok(match major {
                0 => Head::Uint(v),
                1 => Head::Neg(v),
                2 => Head::Bytes(len()?),
                3 => Head::Text(len()?),
                4 => Head::Array(len()?),
                5 => Head::Map(len()?),
                _ => return Err(Refused),
            })
        }

        fn peek(&mut self) -> R<Head> {
            let at = self.pos;
            let h = self.head();
            self.pos = at;
            h
        }

        fn text(&mut self, n: usize) -> R<&'de str> {
            std::str::from_utf8(self.take(n)?).map_err(|_| Refused)
        }

        fn negative(v: u64) -> R<i64> {
            // -1 - v
            i64::try_from(v).map(|v| !v).map_err(|_| Refused)
        }

        fn nested<V: Visitor<'de>>(&mut self, len: usize, map: bool, visitor: V) -> R<V::Value> {
            if self.depth >= DEPTH {
                return Err(Refused);
            }
            self.depth += 1;
            let mut access = Access {
                de: self,
                left: len,
            };
            let value = if map {
                visitor.visit_map(&mut access)
            } else {
                visitor.visit_seq(&mut access)
            };
            let left = access.left;
            self.depth -= 1;
            let value = value?;
            if left != 0 {
                return Err(Refused);
            }
            Ok(value)
        }

        fn integer(&mut self) -> R<(bool, u64)> {
            match self.head()? {
                Head::Uint(v) => Ok((false, v)),
                Head::Neg(v) => Ok((true, v)),
                _ => Err(Refused),
            }
        }
    }

    struct Access<'a, 'de> {
        de: &'a mut Deserializer<'de>,
        left: usize,
    }

    impl<'de> Access<'_, 'de> {
        fn hint(&self) -> Option<usize> {
            // Every item takes at least one byte.
            Some(self.left.min(self.de.buf.len().saturating_sub(self.de.pos)))
        }
    }

    impl<'de> de::SeqAccess<'de> for &mut Access<'_, 'de> {
        type Error = Refused;

        fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> R<Option<T::Value>> {
            if self.left == 0 {
                return Ok(None);
            }
            self.left -= 1;
            seed.deserialize(&mut *self.de).map(Some)
        }

        fn size_hint(&self) -> Option<usize> {
            self.hint()
        }
    }

    impl<'de> de::MapAccess<'de> for &mut Access<'_, 'de> {
        type Error = Refused;

        fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> R<Option<K::Value>> {
            if self.left == 0 {
                return Ok(None);
            }
            self.left -= 1;
            seed.deserialize(&mut *self.de).map(Some)
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> R<V::Value> {
            seed.deserialize(&mut *self.de)
        }

        fn size_hint(&self) -> Option<usize> {
            self.hint()
        }
    }

    /// An enum as a text (a unit variant) or as a one-entry map.
    struct Variant<'a, 'de> {
        de: &'a mut Deserializer<'de>,
        in_map: bool,
    }

    impl<'a, 'de> de::EnumAccess<'de> for Variant<'a, 'de> {
        type Error = Refused;
        type Variant = Self;

        fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> R<(V::Value, Self)> {
            let v = seed.deserialize(&mut *self.de)?;
            Ok((v, self))
        }
    }

    impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
        type Error = Refused;

        fn unit_variant(self) -> R<()> {
            // In a map the value would be left unread.
            if self.in_map {
                Err(Refused)
            } else {
                Ok(())
            }
        }

        fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> R<T::Value> {
            if !self.in_map {
                return Err(Refused);
            }
            seed.deserialize(&mut *self.de)
        }

        fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> R<V::Value> {
            if !self.in_map {
                return Err(Refused);
            }
            de::Deserializer::deserialize_any(&mut *self.de, visitor)
        }

        fn struct_variant<V: Visitor<'de>>(
            self,
            _fields: &'static [&'static str],
            visitor: V,
        ) -> R<V::Value> {
            if !self.in_map {
                return Err(Refused);
            }
            de::Deserializer::deserialize_any(&mut *self.de, visitor)
        }
    }

    impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
        type Error = Refused;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            match self.head()? {
                Head::Uint(v) => visitor.visit_u64(v),
                Head::Neg(v) => visitor.visit_i64(Deserializer::negative(v)?),
                Head::Bytes(n) => visitor.visit_borrowed_bytes(self.take(n)?),
                Head::Text(n) => visitor.visit_borrowed_str(self.text(n)?),
                Head::Array(n) => self.nested(n, false, visitor),
                Head::Map(n) => self.nested(n, true, visitor),
                Head::Bool(b) => visitor.visit_bool(b),
                Head::Nothing => visitor.visit_none(),
            }
        }

        fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            match self.head()? {
                Head::Bool(b) => visitor.visit_bool(b),
                _ => Err(Refused),
            }
        }

        fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            self.deserialize_i64(visitor)
        }

        fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            self.deserialize_i64(visitor)
        }

        fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            self.deserialize_i64(visitor)
        }

        fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            match self.integer()? {
                (false, v) => visitor.visit_i64(i64::try_from(v).map_err(|_| Refused)?),
                (true, v) => visitor.visit_i64(Deserializer::negative(v)?),
            }
        }

        fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            self.deserialize_u64(visitor)
        }

        fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            self.deserialize_u64(visitor)
        }

        fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            self.deserialize_u64(visitor)
        }

        fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            match self.integer()? {
                (false, v) => visitor.visit_u64(v),
                (true, _) => Err(Refused),
            }
        }

        fn deserialize_f32<V: Visitor<'de>>(self, _visitor: V) -> R<V::Value> {
            Err(Refused)
        }

        fn deserialize_f64<V: Visitor<'de>>(self, _visitor: V) -> R<V::Value> {
            Err(Refused)
        }

        fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            match self.head()? {
                Head::Text(n) if n <= 4 => {
                    let s = self.text(n)?;
                    let mut cs = s.chars();
                    match (cs.next(), cs.next()) {
                        (Some(c), None) => visitor.visit_char(c),
                        _ => Err(Refused),
                    }
                }
                _ => Err(Refused),
            }
        }

        fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            match self.head()? {
                Head::Text(n) if n <= SCRATCH => visitor.visit_borrowed_str(self.text(n)?),
                _ => Err(Refused),
            }
        }

        fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            match self.head()? {
                Head::Text(n) => visitor.visit_borrowed_str(self.text(n)?),
                _ => Err(Refused),
            }
        }

        fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            match self.head()? {
                Head::Bytes(n) if n <= SCRATCH => visitor.visit_borrowed_bytes(self.take(n)?),
                Head::Array(n) => self.nested(n, false, visitor),
                _ => Err(Refused),
            }
        }

        fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            match self.head()? {
                Head::Bytes(n) => visitor.visit_borrowed_bytes(self.take(n)?),
                Head::Array(n) => self.nested(n, false, visitor),
                _ => Err(Refused),
            }
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            match self.peek()? {
                Head::Nothing => {
                    self.head()?;
                    visitor.visit_none()
                }
                _ => visitor.visit_some(self),
            }
        }

        fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            match self.head()? {
                Head::Nothing => visitor.visit_unit(),
                _ => Err(Refused),
            }
        }

        fn deserialize_unit_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> R<V::Value> {
            self.deserialize_unit(visitor)
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> R<V::Value> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            match self.head()? {
                Head::Array(n) => self.nested(n, false, visitor),
                _ => Err(Refused),
            }
        }

        fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> R<V::Value> {
            self.deserialize_seq(visitor)
        }

        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _len: usize,
            visitor: V,
        ) -> R<V::Value> {
            self.deserialize_seq(visitor)
        }

        fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            match self.head()? {
                Head::Map(n) => self.nested(n, true, visitor),
                _ => Err(Refused),
            }
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _fields: &'static [&'static str],
            visitor: V,
        ) -> R<V::Value> {
            self.deserialize_map(visitor)
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            name: &'static str,
            _variants: &'static [&'static str],
            visitor: V,
        ) -> R<V::Value> {
            // ciborium's name for CBOR tags.
            if name == "@@TAG@@" || self.depth >= DEPTH {
                return Err(Refused);
            }
            let in_map = match self.peek()? {
                Head::Map(1) => {
                    self.head()?;
                    true
                }
                Head::Text(_) => false,
                _ => return Err(Refused),
            };
            self.depth += 1;
            let value = visitor.visit_enum(Variant {
                de: &mut *self,
                in_map,
            });
            self.depth -= 1;
            value
        }

        fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            match self.head()? {
                Head::Text(n) if n <= SCRATCH => visitor.visit_borrowed_str(self.text(n)?),
                Head::Bytes(n) if n <= SCRATCH => visitor.visit_borrowed_bytes(self.take(n)?),
                _ => Err(Refused),
            }
        }

        fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            self.deserialize_any(visitor)
        }

        fn deserialize_i128<V: Visitor<'de>>(self, _visitor: V) -> R<V::Value> {
            Err(Refused)
        }

        fn deserialize_u128<V: Visitor<'de>>(self, _visitor: V) -> R<V::Value> {
            Err(Refused)
        }

        fn is_human_readable(&self) -> bool {
            false
        }
    }
}

/// Incremental frame splitter for byte streams that arrive in pieces.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Where the bytes not yet handed out start in `buf`.
    start: usize,
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            // Only the part of a frame not yet complete is moved.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame body, `None` when more bytes are needed.
    /// An oversized length is an error and the decoder must be discarded.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        Ok(self.next_frame_ref()?.map(<[u8]>::to_vec))
    }

    /// Whether a whole frame (or an oversized length, an error for
    /// [`next_frame`](Self::next_frame)) is buffered.
    pub fn has_frame(&self) -> bool {
        let pending = &self.buf[self.start..];
        match pending.get(..4) {
            Some(prefix) => {
                let mut len_bytes = [0u8; 4];
                len_bytes.copy_from_slice(prefix);
                let len = u32::from_be_bytes(len_bytes) as usize;
                len > self.max || pending.len() >= 4 + len
            }
            None => false,
        }
    }

    /// [`next_frame`](Self::next_frame) without a copy: the body stays in
    /// the decoder until the next [`push`](Self::push).
    pub fn next_frame_ref(&mut self) -> Result<Option<&[u8]>, CodecError> {
        let pending = &self.buf[self.start..];
        let Some(prefix) = pending.get(..4) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > self.max {
            return Err(CodecError::TooLarge { len, max: self.max });
        }
        if pending.len() < 4 + len {
            return Ok(None);
        }
        let from = self.start + 4;
        self.start = from + len;
        Ok(Some(&self.buf[from..from + len]))
    }
}

/// Read one frame body from an async stream. `Ok(None)` on a clean end of
/// stream before any byte of a new frame.
#[cfg(feature = "io")]
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
#[cfg(feature = "io")]
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
            assert!(!d.has_frame());
            assert!(d.next_frame().expect("ok").is_none());
        }
        d.push(&frame[frame.len() - 1..]);
        assert!(d.has_frame());
        let body = d.next_frame().expect("ok").expect("frame");
        assert!(!d.has_frame());
        let s: String = decode_body(&body).expect("decode");
        assert_eq!(s, "hello");
    }

    use crate::dir::{DirMsg, ErrorCode};
    use crate::msg::{Msg, Role};
    use ciborium::Value;
    use proptest::prelude::*;

    fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).expect("encode");
        out
    }

    fn fast<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
        T::deserialize(&mut slice::Deserializer::new(body)).ok()
    }

    fn slow<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
        ciborium::from_reader(body).ok()
    }

    #[test]
    fn hot_messages_take_the_fast_path() {
        let msgs = vec![
            DirMsg::Lookup {
                req: 7,
                number: "+15550100".into(),
            },
            DirMsg::Found {
                req: u64::MAX,
                number: "+15550100".into(),
                via: vec!["alice".into()],
                candidates: vec!["127.0.0.1:7000".into(), "[::1]:9".into()],
                fingerprint: "ab".repeat(32),
                token: "00ff".into(),
            },
            DirMsg::Expect {
                number: "+15550100".into(),
                ext: None,
                from: "bob".into(),
                caller_fp: "cd".repeat(32),
                token: "t".into(),
                caller_candidates: vec!["10.0.0.2:7000".into()],
            },
            DirMsg::Register {
                req: 0,
                numbers: vec![],
                candidates: vec!["10.0.0.1:1".into()],
            },
            DirMsg::Error {
                req: None,
                code: ErrorCode::Unreachable,
                message: "héllo 한".into(),
                retry_after_ms: Some(3),
            },
            DirMsg::Hello {
                version: 1,
                role: Role::Terminal,
                name: None,
                client: None,
            },
        ];
        for m in &msgs {
            let body = cbor(m);
            assert_eq!(fast::<DirMsg>(&body).as_ref(), Some(m), "{m:?}");
            assert_eq!(decode_body::<DirMsg>(&body).expect("decode"), *m);
            assert_eq!(fast::<Value>(&body), slow::<Value>(&body));
        }
        let dial = Msg::Dial {
            req: 3,
            number: "202".into(),
        };
        assert_eq!(fast::<Msg>(&cbor(&dial)), Some(dial));
    }

    #[test]
    fn outside_the_subset_falls_back_to_ciborium() {
        // A tag, a float, an indefinite-length text: ciborium decodes them.
        let tagged = [0xc1, 0x1a, 0x00, 0x00, 0x00, 0x05];
        let float = [0xfb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0];
        let indefinite = [0x7f, 0x61, b'a', 0x61, b'b', 0xff];
        for body in [&tagged[..], &float[..], &indefinite[..]] {
            assert!(fast::<Value>(body).is_none());
            assert_eq!(decode_body::<Value>(body).ok(), slow::<Value>(body));
            assert!(decode_body::<Value>(body).is_ok());
        }
        assert_eq!(decode_body::<String>(&indefinite).expect("text"), "ab");
        // Too deep for the fast path, not for ciborium.
        let mut deep = vec![0x81; slice::DEPTH + 1];
        deep.push(0x00);
        assert!(fast::<Value>(&deep).is_none());
        assert!(decode_body::<Value>(&deep).is_ok());
        // Garbage is still ciborium's error.
        assert!(matches!(
            decode_body::<DirMsg>(&[0xff, 0x00, 0x13]),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn frames_append_to_a_buffer() {
        let mut buf = b"xy".to_vec();
        encode_frame_into(&"hello".to_string(), 64, &mut buf).expect("encode");
        assert_eq!(
            &buf[2..],
            &encode_frame(&"hello".to_string(), 64).expect("frame")[..]
        );
        let before = buf.clone();
        assert!(matches!(
            encode_frame_into(&"a long string".to_string(), 4, &mut buf),
            Err(CodecError::TooLarge { .. })
        ));
        assert_eq!(buf, before);
    }

    /// CBOR values in the subset our encoder writes (no floats or tags).
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<u64>().prop_map(|v| Value::Integer(v.into())),
            any::<i64>().prop_map(|v| Value::Integer(v.into())),
            ".{0,12}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::Bytes),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((inner.clone(), inner), 0..6).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Every value in the subset decodes on the fast path, to what
        /// ciborium gives.
        #[test]
        fn fast_path_agrees_with_ciborium(v in value()) {
            let body = cbor(&v);
            prop_assert_eq!(fast::<Value>(&body), slow::<Value>(&body));
            prop_assert!(fast::<Value>(&body).is_some());
        }

        /// Whatever bytes come, the fast path accepts nothing that ciborium
        /// would decode differently (or refuse).
        #[test]
        fn fast_path_never_disagrees(
            body in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                (any::<u64>(), ".{0,10}", any::<usize>(), any::<u8>()).prop_map(|(req, number, at, b)| {
                    let mut body = cbor(&DirMsg::Lookup { req, number });
                    let i = at % body.len();
                    body[i] = b;
                    body
                }),
            ],
        ) {
            if let Some(v) = fast::<Value>(&body) {
                prop_assert_eq!(Some(v), slow::<Value>(&body));
            }
            if let Some(m) = fast::<DirMsg>(&body) {
                prop_assert_eq!(Some(m), slow::<DirMsg>(&body));
            }
            if let Some(m) = fast::<Msg>(&body) {
                prop_assert_eq!(Some(m), slow::<Msg>(&body));
            }
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_buffering() {
        let mut d = FrameDecoder::new(16);
        d.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_frame(), Err(CodecError::TooLarge { .. })));
    }

    #[cfg(feature = "io")]
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
