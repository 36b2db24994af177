//! Property tests of the control-stream framing (`keyline_proto::codec`)
//! and message decoding (`keyline_proto::msg`).

use keyline_proto::codec::{encode_frame, read_frame, CodecError, FrameDecoder};
use keyline_proto::msg::{EndReason, FailReason, MediaPlan, Msg, Role};
use keyline_proto::MAX_MESSAGE;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Any Unicode text (control characters, NUL and astral planes included).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter),
        1 => "[0-9]{0,6}",
        1 => Just(String::new()),
    ]
}

fn id() -> impl Strategy<Value = u64> {
    prop_oneof![any::<u64>(), 0u64..100, Just(u64::MAX)]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Agent),
        Just(Role::Gateway),
        Just(Role::Terminal),
        Just(Role::Directory),
    ]
}

fn fail_reason() -> impl Strategy<Value = FailReason> {
    prop_oneof![
        Just(FailReason::UnknownNumber),
        Just(FailReason::InvalidNumber),
        Just(FailReason::Busy),
        Just(FailReason::Unreachable),
        Just(FailReason::NotAllowed),
        Just(FailReason::AlreadyInCall),
        Just(FailReason::SelfCall),
    ]
}

fn end_reason() -> impl Strategy<Value = EndReason> {
    prop_oneof![
        Just(EndReason::Hangup),
        Just(EndReason::Cancelled),
        Just(EndReason::Rejected),
        Just(EndReason::NoAnswer),
        Just(EndReason::PeerLost),
        Just(EndReason::MediaFailed),
        Just(EndReason::Shutdown),
    ]
}

fn media_plan() -> impl Strategy<Value = MediaPlan> {
    (
        any::<bool>(),
        proptest::option::of(text()),
        text(),
        text(),
        any::<bool>(),
    )
        .prop_map(|(dial, peer_addr, peer_fp, token, relayed)| MediaPlan {
            dial,
            peer_addr,
            peer_fp,
            token,
            relayed,
            media_call: None,
        })
}

/// Every kind of [`Msg`].
fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        (any::<u32>(), role(), proptest::option::of(text())).prop_map(|(version, role, name)| {
            Msg::Hello {
                version,
                role,
                name,
            }
        }),
        text().prop_map(|code| Msg::Pending { code }),
        (text(), proptest::option::of(text()))
            .prop_map(|(ext, name)| Msg::Registered { ext, name }),
        (id(), text()).prop_map(|(req, number)| Msg::Dial { req, number }),
        (id(), id(), text()).prop_map(|(req, call, callee)| Msg::Ringing { req, call, callee }),
        (id(), fail_reason(), text()).prop_map(|(req, reason, message)| Msg::DialFailed {
            req,
            reason,
            message
        }),
        (id(), text(), proptest::option::of(text())).prop_map(|(call, from, from_name)| {
            Msg::Ring {
                call,
                from,
                from_name,
            }
        }),
        id().prop_map(|call| Msg::Answer { call }),
        id().prop_map(|call| Msg::Reject { call }),
        id().prop_map(|call| Msg::Hangup { call }),
        (id(), media_plan()).prop_map(|(call, media)| Msg::Connect { call, media }),
        (id(), end_reason()).prop_map(|(call, reason)| Msg::Ended { call, reason }),
        (id(), text()).prop_map(|(call, token)| Msg::MediaHello { call, token }),
        id().prop_map(|call| Msg::MediaOk { call }),
        id().prop_map(|n| Msg::Ping { n }),
        id().prop_map(|n| Msg::Pong { n }),
        (proptest::option::of(id()), text(), text())
            .prop_map(|(req, code, message)| { Msg::Error { req, code, message } }),
    ]
}

/// Arbitrary CBOR values, nested a little.
fn cbor_value() -> impl Strategy<Value = ciborium::Value> {
    use ciborium::Value;
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| Value::Integer(n.into())),
        any::<u64>().prop_map(|n| Value::Integer(n.into())),
        any::<f64>().prop_map(Value::Float),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        text().prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner.clone()), 0..6).prop_map(Value::Map),
            (any::<u16>(), inner).prop_map(|(t, v)| Value::Tag(u64::from(t), Box::new(v))),
        ]
    })
}

const KINDS: &[&str] = &[
    "hello",
    "pending",
    "registered",
    "dial",
    "ringing",
    "dial-failed",
    "ring",
    "answer",
    "reject",
    "hangup",
    "connect",
    "ended",
    "media-hello",
    "media-ok",
    "ping",
    "pong",
    "error",
];

fn to_cbor(v: &ciborium::Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("encode value");
    out
}

/// Cut `bytes` into chunks at the given (arbitrary) points.
fn split_at_points<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

/// What a correct splitter makes of a whole stream: the frames, and whether
/// it stops at an oversized prefix.
fn reference_split(stream: &[u8], max: usize) -> (Vec<Vec<u8>>, bool) {
    let mut frames = Vec::new();
    let mut rest = stream;
    while let Some(prefix) = rest.get(..4) {
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > max {
            return (frames, true);
        }
        let Some(body) = rest.get(4..4 + len) else {
            break;
        };
        frames.push(body.to_vec());
        rest = &rest[4 + len..];
    }
    (frames, false)
}

/// Drain every complete frame; `Err` (refused) ends the stream for good.
fn drain(d: &mut FrameDecoder, max: usize, out: &mut Vec<Vec<u8>>) -> Result<bool, TestCaseError> {
    loop {
        match d.next_frame() {
            Ok(Some(body)) => {
                prop_assert!(body.len() <= max, "frame of {} > max {}", body.len(), max);
                out.push(body);
            }
            Ok(None) => return Ok(false),
            Err(CodecError::TooLarge { len, max: m }) => {
                prop_assert_eq!(m, max);
                prop_assert!(len > max, "refused a frame of {} <= max {}", len, max);
                // Refusal is sticky: asking again refuses again.
                let again = d.next_frame();
                prop_assert!(
                    matches!(again, Err(CodecError::TooLarge { .. })),
                    "refusal not sticky: {:?}",
                    again
                );
                return Ok(true);
            }
            Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e:?}"))),
        }
    }
}

fn encode_all(msgs: &[Msg]) -> Vec<u8> {
    msgs.iter()
        .flat_map(|m| encode_frame(m, MAX_MESSAGE).expect("encode"))
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

/// An async reader that hands out its bytes in the given chunk sizes.
struct Chunked<'a> {
    chunks: Vec<&'a [u8]>,
}

impl tokio::io::AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        while let Some(chunk) = self.chunks.first_mut() {
            if chunk.is_empty() {
                self.chunks.remove(0);
                continue;
            }
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            *chunk = &chunk[n..];
            break;
        }
        std::task::Poll::Ready(Ok(()))
    }
}

/// A limit and a frame length, often right at the limit.
fn max_and_len() -> impl Strategy<Value = (usize, usize)> {
    (0usize..2048).prop_flat_map(|max| {
        let len = prop_oneof![
            2 => 0usize..4096,
            1 => Just(u32::MAX as usize),
            3 => max.saturating_sub(2)..max + 3,
        ];
        (Just(max), len)
    })
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes in arbitrary chunks: no panic, and the decoder yields
    /// exactly what a whole-stream split does, however the bytes arrive.
    #[test]
    fn decoder_never_panics_on_arbitrary_chunks(
        max in prop_oneof![0usize..64, Just(MAX_MESSAGE)],
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..48), 0..12),
    ) {
        let mut d = FrameDecoder::new(max);
        let mut frames = Vec::new();
        let mut refused = false;
        for chunk in &chunks {
            d.push(chunk);
            if drain(&mut d, max, &mut frames)? {
                refused = true;
                break;
            }
        }
        let stream: Vec<u8> = chunks.concat();
        let (want, want_refused) = reference_split(&stream, max);
        prop_assert_eq!(frames, want);
        prop_assert_eq!(refused, want_refused);
    }

    /// Small well-formed frames (random bodies, some oversized) in random
    /// pieces: same result as the whole-stream split.
    #[test]
    fn decoder_splits_framed_streams_like_the_reference(
        max in 0usize..40,
        bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..48), 0..8),
        cuts in proptest::collection::vec(any::<Index>(), 0..16),
        tail in proptest::collection::vec(any::<u8>(), 0..6),
    ) {
        let mut stream = Vec::new();
        for b in &bodies {
            stream.extend_from_slice(&u32::try_from(b.len()).expect("len").to_be_bytes());
            stream.extend_from_slice(b);
        }
        stream.extend_from_slice(&tail);
        let mut d = FrameDecoder::new(max);
        let mut frames = Vec::new();
        let mut refused = false;
        for chunk in split_at_points(&stream, &cuts) {
            d.push(chunk);
            if drain(&mut d, max, &mut frames)? {
                refused = true;
                break;
            }
        }
        let (want, want_refused) = reference_split(&stream, max);
        prop_assert_eq!(&frames, &want);
        prop_assert_eq!(refused, want_refused);
        let tail_refused = tail
            .get(..4)
            .is_some_and(|p| u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize > max);
        prop_assert_eq!(refused, bodies.iter().any(|b| b.len() > max) || tail_refused);
    }

    /// Any message survives encode → decode.
    #[test]
    fn every_msg_roundtrips(m in msg()) {
        let frame = encode_frame(&m, MAX_MESSAGE).expect("encode");
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        prop_assert_eq!(len, frame.len() - 4);
        prop_assert_eq!(Msg::from_cbor(&frame[4..]).expect("decode"), m);
    }

    /// A sequence of encoded messages split at arbitrary points decodes back
    /// to the same sequence, with nothing left over.
    #[test]
    fn msg_streams_split_anywhere_decode_back(
        msgs in proptest::collection::vec(msg(), 0..8),
        cuts in proptest::collection::vec(any::<Index>(), 0..24),
    ) {
        let stream = encode_all(&msgs);
        let mut d = FrameDecoder::new(MAX_MESSAGE);
        let mut got = Vec::new();
        for chunk in split_at_points(&stream, &cuts) {
            d.push(chunk);
            while let Some(body) = d.next_frame().expect("frame") {
                got.push(Msg::from_cbor(&body).expect("decode"));
            }
        }
        prop_assert!(d.next_frame().expect("end").is_none());
        prop_assert_eq!(got, msgs);
    }

    /// Byte by byte, no frame shows up before its last byte.
    #[test]
    fn msg_frames_complete_only_at_their_last_byte(m in msg()) {
        let frame = encode_frame(&m, MAX_MESSAGE).expect("encode");
        let mut d = FrameDecoder::new(MAX_MESSAGE);
        for b in &frame[..frame.len() - 1] {
            d.push(std::slice::from_ref(b));
            prop_assert!(d.next_frame().expect("partial").is_none());
        }
        d.push(&frame[frame.len() - 1..]);
        let body = d.next_frame().expect("frame").expect("complete");
        prop_assert_eq!(Msg::from_cbor(&body).expect("decode"), m);
    }

    /// The async reader agrees with the incremental decoder, however the
    /// reads are cut, and ends cleanly after the last frame.
    #[test]
    fn read_frame_decodes_chunked_streams(
        msgs in proptest::collection::vec(msg(), 0..6),
        cuts in proptest::collection::vec(any::<Index>(), 0..16),
    ) {
        let stream = encode_all(&msgs);
        let mut r = Chunked { chunks: split_at_points(&stream, &cuts) };
        let got: Vec<Msg> = runtime().block_on(async {
            let mut got = Vec::new();
            while let Some(body) = read_frame(&mut r, MAX_MESSAGE).await.expect("read") {
                got.push(Msg::from_cbor(&body).expect("decode"));
            }
            got
        });
        prop_assert_eq!(got, msgs);
    }

    /// `Msg::from_cbor` never panics on arbitrary bytes.
    #[test]
    fn from_cbor_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Msg::from_cbor(&bytes);
    }

    /// Nor on arbitrary CBOR values, nor on maps with a known kind and
    /// random fields.
    #[test]
    fn from_cbor_never_panics_on_cbor_values(
        v in cbor_value(),
        kind in proptest::sample::select(KINDS),
        fields in proptest::collection::vec((text(), cbor_value()), 0..6),
    ) {
        let _ = Msg::from_cbor(&to_cbor(&v));
        let mut entries = vec![(
            ciborium::Value::Text("t".into()),
            ciborium::Value::Text(kind.into()),
        )];
        entries.extend(fields.into_iter().map(|(k, v)| (ciborium::Value::Text(k), v)));
        let _ = Msg::from_cbor(&to_cbor(&ciborium::Value::Map(entries)));
    }

    /// Damaged encodings of real messages never panic; truncated ones are
    /// always refused.
    #[test]
    fn from_cbor_survives_damaged_messages(
        m in msg(),
        cut in any::<Index>(),
        flips in proptest::collection::vec((any::<Index>(), any::<u8>()), 1..4),
    ) {
        let frame = encode_frame(&m, MAX_MESSAGE).expect("encode");
        let body = &frame[4..];
        let at = cut.index(body.len());
        prop_assert!(Msg::from_cbor(&body[..at]).is_err(), "truncated at {} decoded", at);
        let mut damaged = body.to_vec();
        for (i, x) in &flips {
            let i = i.index(damaged.len());
            damaged[i] ^= x;
        }
        let _ = Msg::from_cbor(&damaged);
    }

    /// A map whose kind is not one we know is reported as such.
    #[test]
    fn unknown_kinds_are_reported(
        kind in text().prop_filter("known kind", |k| !KINDS.contains(&k.as_str())),
        fields in proptest::collection::vec(
            (text().prop_filter("tag key", |k| k != "t"), cbor_value()),
            0..4,
        ),
    ) {
        let mut entries: Vec<_> = fields
            .into_iter()
            .map(|(k, v)| (ciborium::Value::Text(k), v))
            .collect();
        entries.push((ciborium::Value::Text("t".into()), ciborium::Value::Text(kind.clone())));
        match Msg::from_cbor(&to_cbor(&ciborium::Value::Map(entries))) {
            Err(CodecError::UnknownKind(k)) => prop_assert_eq!(k, kind),
            other => return Err(TestCaseError::fail(format!("expected UnknownKind, got {other:?}"))),
        }
    }

    /// A length prefix over the maximum is refused as soon as the prefix is
    /// in, before any of the body; one at or under it is buffered until
    /// complete.
    #[test]
    fn frames_longer_than_max_are_refused(
        (max, len) in max_and_len(),
        split in 0usize..4,
    ) {
        let prefix = u32::try_from(len).expect("len").to_be_bytes();
        let mut d = FrameDecoder::new(max);
        d.push(&prefix[..split]);
        prop_assert!(d.next_frame().expect("short prefix").is_none());
        d.push(&prefix[split..]);
        if len > max {
            match d.next_frame() {
                Err(CodecError::TooLarge { len: l, max: m }) => {
                    prop_assert_eq!(l, len);
                    prop_assert_eq!(m, max);
                }
                other => return Err(TestCaseError::fail(format!("expected TooLarge, got {other:?}"))),
            }
        } else {
            let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (head, rest) = body.split_at(len / 2);
            d.push(head);
            if !rest.is_empty() {
                prop_assert!(d.next_frame().expect("partial").is_none());
            }
            d.push(rest);
            prop_assert_eq!(d.next_frame().expect("frame"), Some(body));
            prop_assert!(d.next_frame().expect("empty").is_none());
        }
    }

    /// The async reader refuses the same prefixes without reading the body.
    #[test]
    fn read_frame_refuses_oversized_prefixes(
        (max, len) in max_and_len(),
    ) {
        let prefix = u32::try_from(len).expect("len").to_be_bytes();
        let body = vec![0xa5u8; len.min(4096)];
        let mut r = Chunked { chunks: vec![&prefix[..], &body[..]] };
        let res = runtime().block_on(read_frame(&mut r, max));
        if len > max {
            prop_assert!(
                matches!(res, Err(CodecError::TooLarge { len: l, max: m }) if l == len && m == max),
                "expected TooLarge, got {:?}", res
            );
        } else {
            prop_assert_eq!(res.expect("read"), Some(body));
        }
    }

    /// Encoding refuses a message whose body exceeds the limit, and accepts
    /// it at exactly its own size.
    #[test]
    fn encode_refuses_messages_over_max(m in msg(), slack in 1usize..64) {
        let frame = encode_frame(&m, MAX_MESSAGE).expect("encode");
        let size = frame.len() - 4;
        prop_assert_eq!(encode_frame(&m, size).expect("exact fit"), frame);
        if size >= slack {
            match encode_frame(&m, size - slack) {
                Err(CodecError::TooLarge { len, max }) => {
                    prop_assert_eq!(len, size);
                    prop_assert_eq!(max, size - slack);
                }
                other => return Err(TestCaseError::fail(format!("expected TooLarge, got {other:?}"))),
            }
        }
    }
}

#[test]
fn a_message_over_max_message_is_refused_both_ways() {
    let big = Msg::Error {
        req: None,
        code: "big".into(),
        message: "x".repeat(MAX_MESSAGE),
    };
    assert!(matches!(
        encode_frame(&big, MAX_MESSAGE),
        Err(CodecError::TooLarge {
            max: MAX_MESSAGE,
            ..
        })
    ));
    // Framed with a larger limit, a receiver at MAX_MESSAGE refuses it from
    // the prefix alone.
    let frame = encode_frame(&big, 2 * MAX_MESSAGE).expect("encode");
    let mut d = FrameDecoder::new(MAX_MESSAGE);
    d.push(&frame[..4]);
    assert!(matches!(
        d.next_frame(),
        Err(CodecError::TooLarge {
            max: MAX_MESSAGE,
            ..
        })
    ));
}

#[test]
fn empty_and_exact_max_frames_are_accepted() {
    let mut d = FrameDecoder::new(8);
    d.push(&[0, 0, 0, 0]);
    assert_eq!(d.next_frame().expect("empty"), Some(Vec::new()));
    d.push(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        d.next_frame().expect("exact"),
        Some(vec![1, 2, 3, 4, 5, 6, 7, 8])
    );
    d.push(&[0, 0, 0, 9]);
    assert!(matches!(
        d.next_frame(),
        Err(CodecError::TooLarge { len: 9, max: 8 })
    ));
}
