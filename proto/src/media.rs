//! Media datagrams: RTP over QUIC.
//!
//! Every QUIC datagram that carries media is a QUIC variable-length integer
//! (RFC 9000 §16) holding the flow id, followed by one RTP packet
//! (RFC 3550 §5.1) carrying an Opus payload. Keeping RTP on the wire means a
//! later bridge to RTP/SIP is a re-wrap, not a transcode.
//!
//! ```text
//! flow id (varint, 1/2/4/8 bytes)
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |V=2|P|X|  CC   |M|     PT      |       sequence number         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                           timestamp                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                             SSRC                              |
//! +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
//! |                 CSRC list (CC × 32 bits)                      |
//! |        header extension (if X): profile, length, words        |
//! |                 payload ...   | padding (if P) | pad count    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The encoder writes the minimal form (no padding, no extension, no CSRC);
//! the decoder accepts all of them so that packets from a bridge still parse.

use thiserror::Error;

/// RTP payload type used for Opus (dynamic range, the customary value).
pub const OPUS_PAYLOAD_TYPE: u8 = 111;

/// Largest value a QUIC varint holds: 2^62 - 1.
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// RTP version written and accepted.
pub const RTP_VERSION: u8 = 2;

/// Size of the fixed RTP header, without CSRCs or extension.
pub const RTP_HEADER_LEN: usize = 12;

/// Why a media datagram could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MediaError {
    /// The buffer ends before the named part is complete.
    #[error("datagram truncated in {what}: need {need} bytes, have {have}")]
    Truncated {
        /// The part being read.
        what: &'static str,
        /// Bytes that part needs.
        need: usize,
        /// Bytes left in the buffer.
        have: usize,
    },
    /// The RTP version field is not 2.
    #[error("unsupported RTP version {0} (expected 2)")]
    BadVersion(u8),
    /// The P bit is set but the pad count is 0 or larger than what is left
    /// after the headers.
    #[error("invalid RTP padding: pad count {pad} but only {available} bytes after the headers")]
    BadPadding {
        /// The pad count (last byte of the packet).
        pad: u8,
        /// Bytes between the end of the headers and the end of the packet.
        available: usize,
    },
    /// The value exceeds 2^62 - 1 and cannot be a QUIC varint.
    #[error("value {0} is too large for a QUIC varint (max 2^62-1)")]
    VarintTooLarge(u64),
    /// The payload type does not fit in 7 bits.
    #[error("RTP payload type {0} is out of range (must be below 128)")]
    BadPayloadType(u8),
}

/// Appends `v` as a QUIC variable-length integer in its shortest form.
pub fn encode_varint(v: u64, out: &mut Vec<u8>) -> Result<(), MediaError> {
    if v < (1 << 6) {
        out.push(v as u8);
    } else if v < (1 << 14) {
        out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes());
    } else if v < (1 << 30) {
        out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes());
    } else if v <= VARINT_MAX {
        out.extend_from_slice(&(v | 0xC000_0000_0000_0000).to_be_bytes());
    } else {
        return Err(MediaError::VarintTooLarge(v));
    }
    Ok(())
}

/// Reads a QUIC variable-length integer from the start of `buf`, returning
/// the value and the number of bytes it took. Non-minimal encodings are
/// accepted, as RFC 9000 allows.
pub fn decode_varint(buf: &[u8]) -> Result<(u64, usize), MediaError> {
    let Some(&first) = buf.first() else {
        return Err(MediaError::Truncated {
            what: "varint",
            need: 1,
            have: 0,
        });
    };
    let len = 1usize << (first >> 6);
    let Some(bytes) = buf.get(..len) else {
        return Err(MediaError::Truncated {
            what: "varint",
            need: len,
            have: buf.len(),
        });
    };
    let value = bytes
        .iter()
        .skip(1)
        .fold(u64::from(first & 0x3F), |acc, &b| (acc << 8) | u64::from(b));
    Ok((value, len))
}

/// The fields of an RTP header that Keyline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// 7-bit payload type; [`OPUS_PAYLOAD_TYPE`] for voice.
    pub payload_type: u8,
    /// Marker bit (for Opus: first packet after silence).
    pub marker: bool,
    /// Sequence number, incremented per packet.
    pub sequence: u16,
    /// Sampling timestamp (48 kHz clock for Opus).
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

/// A decoded media datagram, borrowing its payload from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Flow id from the leading varint.
    pub flow: u64,
    /// The RTP header (CSRCs and extension are skipped).
    pub header: RtpHeader,
    /// The payload, with any padding removed.
    pub payload: &'a [u8],
}

/// Writes a media datagram into `out` (cleared first): flow id varint, a
/// 12-byte RTP header (version 2, no padding, no extension, no CSRC), then
/// the payload. On error `out` is left empty.
pub fn encode_datagram(
    flow: u64,
    header: &RtpHeader,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), MediaError> {
    out.clear();
    if header.payload_type >= 128 {
        return Err(MediaError::BadPayloadType(header.payload_type));
    }
    if flow > VARINT_MAX {
        return Err(MediaError::VarintTooLarge(flow));
    }
    out.reserve(8 + RTP_HEADER_LEN + payload.len());
    encode_varint(flow, out)?;
    out.push(RTP_VERSION << 6);
    out.push((u8::from(header.marker) << 7) | header.payload_type);
    out.extend_from_slice(&header.sequence.to_be_bytes());
    out.extend_from_slice(&header.timestamp.to_be_bytes());
    out.extend_from_slice(&header.ssrc.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Parses a media datagram. Validates the RTP version, skips the CSRC list
/// and any header extension, and strips padding when the P bit is set.
/// Never panics and never reads past `buf`.
pub fn decode_datagram(buf: &[u8]) -> Result<Datagram<'_>, MediaError> {
    let (flow, used) = decode_varint(buf).map_err(|e| match e {
        MediaError::Truncated { need, have, .. } => MediaError::Truncated {
            what: "flow id",
            need,
            have,
        },
        other => other,
    })?;
    let rtp = buf.get(used..).unwrap_or_default();

    let fixed: &[u8; RTP_HEADER_LEN] = rtp
        .get(..RTP_HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(MediaError::Truncated {
            what: "RTP header",
            need: RTP_HEADER_LEN,
            have: rtp.len(),
        })?;
    let version = fixed[0] >> 6;
    if version != RTP_VERSION {
        return Err(MediaError::BadVersion(version));
    }
    let padding = fixed[0] & 0x20 != 0;
    let extension = fixed[0] & 0x10 != 0;
    let csrc_count = usize::from(fixed[0] & 0x0F);
    let header = RtpHeader {
        marker: fixed[1] & 0x80 != 0,
        payload_type: fixed[1] & 0x7F,
        sequence: u16::from_be_bytes([fixed[2], fixed[3]]),
        timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
    };

    let mut rest = skip(&rtp[RTP_HEADER_LEN..], csrc_count * 4, "CSRC list")?;

    if extension {
        // RFC 3550 §5.3.1: 16 bits profile-defined, 16 bits length in 32-bit
        // words, not counting this 4-byte header.
        let ext = rest.get(..4).ok_or(MediaError::Truncated {
            what: "RTP header extension",
            need: 4,
            have: rest.len(),
        })?;
        let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        rest = skip(&rest[4..], words * 4, "RTP header extension")?;
    }

    let payload = if padding {
        let available = rest.len();
        let pad = rest.last().copied().ok_or(MediaError::BadPadding {
            pad: 0,
            available: 0,
        })?;
        if pad == 0 || usize::from(pad) > available {
            return Err(MediaError::BadPadding { pad, available });
        }
        &rest[..available - usize::from(pad)]
    } else {
        rest
    };

    Ok(Datagram {
        flow,
        header,
        payload,
    })
}

/// Drops the first `n` bytes of `buf`, or reports which part was cut short.
fn skip<'a>(buf: &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], MediaError> {
    buf.get(n..).ok_or(MediaError::Truncated {
        what,
        need: n,
        have: buf.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> RtpHeader {
        RtpHeader {
            payload_type: OPUS_PAYLOAD_TYPE,
            marker: true,
            sequence: 0x1234,
            timestamp: 0xDEAD_BEEF,
            ssrc: 0x0102_0304,
        }
    }

    /// Fixed RTP header bytes for `header()` with the given first byte.
    fn fixed(b0: u8) -> Vec<u8> {
        vec![
            b0,
            0x80 | OPUS_PAYLOAD_TYPE,
            0x12,
            0x34,
            0xDE,
            0xAD,
            0xBE,
            0xEF,
            0x01,
            0x02,
            0x03,
            0x04,
        ]
    }

    fn varint(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_varint(v, &mut out).expect("in range");
        out
    }

    #[test]
    fn varint_rfc9000_examples() {
        // RFC 9000 §A.1 sample encodings.
        assert_eq!(
            decode_varint(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Ok((151_288_809_941_952_652, 8))
        );
        assert_eq!(
            decode_varint(&[0x9d, 0x7f, 0x3e, 0x7d]),
            Ok((494_878_333, 4))
        );
        assert_eq!(decode_varint(&[0x7b, 0xbd]), Ok((15_293, 2)));
        assert_eq!(decode_varint(&[0x25]), Ok((37, 1)));
        // Non-minimal encoding of 37.
        assert_eq!(decode_varint(&[0x40, 0x25]), Ok((37, 2)));
        // Trailing bytes are not consumed.
        assert_eq!(decode_varint(&[0x25, 0xFF]), Ok((37, 1)));

        assert_eq!(
            varint(151_288_809_941_952_652),
            [0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]
        );
        assert_eq!(varint(494_878_333), [0x9d, 0x7f, 0x3e, 0x7d]);
        assert_eq!(varint(15_293), [0x7b, 0xbd]);
        assert_eq!(varint(37), [0x25]);
    }

    #[test]
    fn varint_boundaries() {
        for (v, len) in [
            (0, 1),
            (63, 1),
            (64, 2),
            (16_383, 2),
            (16_384, 4),
            ((1 << 30) - 1, 4),
            (1 << 30, 8),
            (VARINT_MAX, 8),
        ] {
            let enc = varint(v);
            assert_eq!(enc.len(), len, "{v}");
            assert_eq!(decode_varint(&enc), Ok((v, len)));
        }
        let mut out = vec![7];
        assert_eq!(
            encode_varint(VARINT_MAX + 1, &mut out),
            Err(MediaError::VarintTooLarge(VARINT_MAX + 1))
        );
        assert_eq!(
            encode_varint(u64::MAX, &mut out),
            Err(MediaError::VarintTooLarge(u64::MAX))
        );
        assert_eq!(out, [7], "nothing appended on error");
    }

    #[test]
    fn varint_truncated() {
        assert_eq!(
            decode_varint(&[]),
            Err(MediaError::Truncated {
                what: "varint",
                need: 1,
                have: 0
            })
        );
        assert_eq!(
            decode_varint(&[0xC0, 1, 2]),
            Err(MediaError::Truncated {
                what: "varint",
                need: 8,
                have: 3
            })
        );
        assert!(matches!(
            decode_varint(&[0x40]),
            Err(MediaError::Truncated { need: 2, .. })
        ));
        assert!(matches!(
            decode_varint(&[0x80, 0, 0]),
            Err(MediaError::Truncated { need: 4, .. })
        ));
    }

    #[test]
    fn encode_minimal_packet() {
        let mut out = vec![0xAA; 5]; // stale contents are cleared
        encode_datagram(5, &header(), b"opus", &mut out).expect("encode");
        let mut want = vec![5];
        want.extend(fixed(0x80));
        want.extend_from_slice(b"opus");
        assert_eq!(out, want);
        let d = decode_datagram(&out).expect("decode");
        assert_eq!(d.flow, 5);
        assert_eq!(d.header, header());
        assert_eq!(d.payload, b"opus");
    }

    #[test]
    fn encode_rejects_bad_input() {
        let mut out = vec![1, 2, 3];
        let bad = RtpHeader {
            payload_type: 128,
            ..header()
        };
        assert_eq!(
            encode_datagram(1, &bad, b"x", &mut out),
            Err(MediaError::BadPayloadType(128))
        );
        assert!(out.is_empty());
        out.push(9);
        assert_eq!(
            encode_datagram(VARINT_MAX + 1, &header(), b"x", &mut out),
            Err(MediaError::VarintTooLarge(VARINT_MAX + 1))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn decode_with_csrcs() {
        // Two-byte flow id 300, CC=2.
        let mut pkt = varint(300);
        assert_eq!(pkt.len(), 2);
        pkt.extend(fixed(0x82));
        pkt.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
        pkt.extend_from_slice(b"voice");
        let d = decode_datagram(&pkt).expect("decode");
        assert_eq!(d.flow, 300);
        assert_eq!(d.header, header());
        assert_eq!(d.payload, b"voice");
    }

    #[test]
    fn decode_with_extension() {
        // X bit, one-byte-header extension profile 0xBEDE, 2 words.
        let mut pkt = varint(1);
        pkt.extend(fixed(0x90));
        pkt.extend_from_slice(&[0xBE, 0xDE, 0x00, 0x02]);
        pkt.extend_from_slice(&[0x10, 0xAA, 0, 0, 0x21, 0xBB, 0xCC, 0]);
        pkt.extend_from_slice(b"pl");
        let d = decode_datagram(&pkt).expect("decode");
        assert_eq!(d.payload, b"pl");

        // Zero-length extension.
        let mut pkt = varint(1);
        pkt.extend(fixed(0x90));
        pkt.extend_from_slice(&[0x10, 0x00, 0x00, 0x00]);
        pkt.extend_from_slice(b"pl");
        assert_eq!(decode_datagram(&pkt).expect("decode").payload, b"pl");
    }

    #[test]
    fn decode_with_csrc_extension_and_padding() {
        // CC=1, X, P: everything at once.
        let mut pkt = varint(42);
        pkt.extend(fixed(0x80 | 0x20 | 0x10 | 0x01));
        pkt.extend_from_slice(&[9, 9, 9, 9]); // CSRC
        pkt.extend_from_slice(&[0x10, 0x00, 0x00, 0x01, 1, 2, 3, 4]); // extension
        pkt.extend_from_slice(b"abc");
        pkt.extend_from_slice(&[0, 0, 3]); // 3 bytes of padding incl. the count
        let d = decode_datagram(&pkt).expect("decode");
        assert_eq!(d.flow, 42);
        assert_eq!(d.header, header());
        assert_eq!(d.payload, b"abc");
    }

    #[test]
    fn padding_rules() {
        let mut base = varint(0);
        base.extend(fixed(0xA0));

        // Padding that consumes the whole payload area is fine.
        let mut pkt = base.clone();
        pkt.extend_from_slice(&[0, 0, 0, 4]);
        assert_eq!(decode_datagram(&pkt).expect("decode").payload, b"");

        // Pad count 1: only the count byte itself.
        let mut pkt = base.clone();
        pkt.extend_from_slice(&[7, 1]);
        assert_eq!(decode_datagram(&pkt).expect("decode").payload, [7]);

        // Pad count 0 is invalid.
        let mut pkt = base.clone();
        pkt.extend_from_slice(&[7, 0]);
        assert_eq!(
            decode_datagram(&pkt),
            Err(MediaError::BadPadding {
                pad: 0,
                available: 2
            })
        );

        // Pad count larger than what is there.
        let mut pkt = base.clone();
        pkt.extend_from_slice(&[7, 3]);
        assert_eq!(
            decode_datagram(&pkt),
            Err(MediaError::BadPadding {
                pad: 3,
                available: 2
            })
        );

        // P set but nothing after the header.
        assert_eq!(
            decode_datagram(&base),
            Err(MediaError::BadPadding {
                pad: 0,
                available: 0
            })
        );

        // Padding may not reach back into the extension.
        let mut pkt = varint(0);
        pkt.extend(fixed(0xB0));
        pkt.extend_from_slice(&[0, 0, 0, 1, 1, 2, 3, 4, 2]);
        assert_eq!(
            decode_datagram(&pkt),
            Err(MediaError::BadPadding {
                pad: 2,
                available: 1
            })
        );
    }

    #[test]
    fn decode_errors() {
        assert_eq!(
            decode_datagram(&[]),
            Err(MediaError::Truncated {
                what: "flow id",
                need: 1,
                have: 0
            })
        );
        assert_eq!(
            decode_datagram(&[0x40]),
            Err(MediaError::Truncated {
                what: "flow id",
                need: 2,
                have: 1
            })
        );
        assert_eq!(
            decode_datagram(&[0x01, 0x80, 0x6F]),
            Err(MediaError::Truncated {
                what: "RTP header",
                need: 12,
                have: 2
            })
        );

        for b0 in [0x00, 0x40, 0xC0] {
            let mut pkt = varint(1);
            pkt.extend(fixed(b0));
            assert_eq!(decode_datagram(&pkt), Err(MediaError::BadVersion(b0 >> 6)));
        }

        // CC=15 but only one CSRC present.
        let mut pkt = varint(1);
        pkt.extend(fixed(0x8F));
        pkt.extend_from_slice(&[0, 0, 0, 1]);
        assert_eq!(
            decode_datagram(&pkt),
            Err(MediaError::Truncated {
                what: "CSRC list",
                need: 60,
                have: 4
            })
        );

        // X set, extension header cut short.
        let mut pkt = varint(1);
        pkt.extend(fixed(0x90));
        pkt.extend_from_slice(&[0xBE, 0xDE]);
        assert_eq!(
            decode_datagram(&pkt),
            Err(MediaError::Truncated {
                what: "RTP header extension",
                need: 4,
                have: 2
            })
        );

        // X set, extension length larger than the packet (max 0xFFFF words).
        let mut pkt = varint(1);
        pkt.extend(fixed(0x90));
        pkt.extend_from_slice(&[0xBE, 0xDE, 0xFF, 0xFF, 1, 2, 3, 4]);
        assert_eq!(
            decode_datagram(&pkt),
            Err(MediaError::Truncated {
                what: "RTP header extension",
                need: 0xFFFF * 4,
                have: 4
            })
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            MediaError::BadVersion(1).to_string(),
            "unsupported RTP version 1 (expected 2)"
        );
        assert_eq!(
            MediaError::Truncated {
                what: "RTP header",
                need: 12,
                have: 3
            }
            .to_string(),
            "datagram truncated in RTP header: need 12 bytes, have 3"
        );
        assert_eq!(
            MediaError::VarintTooLarge(1 << 62).to_string(),
            "value 4611686018427387904 is too large for a QUIC varint (max 2^62-1)"
        );
    }

    fn any_header() -> impl Strategy<Value = RtpHeader> {
        (
            0u8..128,
            any::<bool>(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(
                |(payload_type, marker, sequence, timestamp, ssrc)| RtpHeader {
                    payload_type,
                    marker,
                    sequence,
                    timestamp,
                    ssrc,
                },
            )
    }

    fn any_flow() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..64,
            64u64..16_384,
            16_384u64..(1 << 30),
            0..=VARINT_MAX
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn varint_roundtrip(v in 0..=VARINT_MAX, tail in prop::collection::vec(any::<u8>(), 0..4)) {
            let mut buf = Vec::new();
            encode_varint(v, &mut buf).expect("in range");
            let len = buf.len();
            buf.extend(tail);
            prop_assert_eq!(decode_varint(&buf), Ok((v, len)));
        }

        #[test]
        fn varint_too_large(v in (VARINT_MAX + 1)..=u64::MAX) {
            let mut buf = Vec::new();
            prop_assert_eq!(encode_varint(v, &mut buf), Err(MediaError::VarintTooLarge(v)));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn datagram_roundtrip(
            flow in any_flow(),
            header in any_header(),
            payload in prop::collection::vec(any::<u8>(), 0..1500),
        ) {
            let mut out = Vec::new();
            encode_datagram(flow, &header, &payload, &mut out).expect("encode");
            let d = decode_datagram(&out).expect("decode");
            prop_assert_eq!(d.flow, flow);
            prop_assert_eq!(d.header, header);
            prop_assert_eq!(d.payload, &payload[..]);
        }

        /// Packets with CSRCs, an extension and padding, built independently
        /// of the encoder, decode to the right payload.
        #[test]
        fn decode_full_featured(
            flow in any_flow(),
            header in any_header(),
            csrcs in prop::collection::vec(any::<u32>(), 0..16),
            ext in prop::option::of((any::<u16>(), prop::collection::vec(any::<u32>(), 0..8))),
            payload in prop::collection::vec(any::<u8>(), 0..200),
            pad in 0u8..=255,
        ) {
            let mut pkt = varint(flow);
            let b0 = 0x80
                | if pad > 0 { 0x20 } else { 0 }
                | if ext.is_some() { 0x10 } else { 0 }
                | csrcs.len() as u8;
            pkt.push(b0);
            pkt.push(u8::from(header.marker) << 7 | header.payload_type);
            pkt.extend_from_slice(&header.sequence.to_be_bytes());
            pkt.extend_from_slice(&header.timestamp.to_be_bytes());
            pkt.extend_from_slice(&header.ssrc.to_be_bytes());
            for c in &csrcs {
                pkt.extend_from_slice(&c.to_be_bytes());
            }
            if let Some((profile, words)) = &ext {
                pkt.extend_from_slice(&profile.to_be_bytes());
                pkt.extend_from_slice(&(words.len() as u16).to_be_bytes());
                for w in words {
                    pkt.extend_from_slice(&w.to_be_bytes());
                }
            }
            pkt.extend_from_slice(&payload);
            if pad > 0 {
                pkt.extend(std::iter::repeat_n(0xEE, usize::from(pad) - 1));
                pkt.push(pad);
            }
            let d = decode_datagram(&pkt).expect("decode");
            prop_assert_eq!(d.flow, flow);
            prop_assert_eq!(d.header, header);
            prop_assert_eq!(d.payload, &payload[..]);
        }

        #[test]
        fn decode_never_panics(buf in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(d) = decode_datagram(&buf) {
                // The payload is a sub-slice of the input.
                let start = buf.as_ptr() as usize;
                let p = d.payload.as_ptr() as usize;
                prop_assert!(p >= start && p + d.payload.len() <= start + buf.len());
                prop_assert!(d.header.payload_type < 128);
                prop_assert!(d.flow <= VARINT_MAX);
            }
        }

        /// Arbitrary bytes behind a valid-looking start, so that the CSRC,
        /// extension and padding paths see hostile lengths often.
        #[test]
        fn decode_never_panics_rtp_like(
            b0 in 0x80u8..=0xBF,
            rest in prop::collection::vec(any::<u8>(), 0..128),
        ) {
            let mut buf = vec![0x01, b0];
            buf.extend(rest);
            let _ = decode_datagram(&buf);
            for cut in 0..buf.len() {
                let _ = decode_datagram(&buf[..cut]);
            }
        }
    }
}
