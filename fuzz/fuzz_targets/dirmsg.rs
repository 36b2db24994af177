//! Arbitrary bytes on a directory control stream, read both ways the
//! directory and its clients read them: `wire::take_msg` on a frame
//! decoder fed in chunks (as `MsgReader` does; the first byte picks the
//! chunk size) and `wire::next_msg` on the whole stream. Neither may
//! panic, both must read the same messages and stop at the same garbage.
//! Every message decoded must be what ciborium makes of the same body
//! (the fast in-place decoder only ever agrees with it) and must survive
//! being encoded and decoded again. Then the rest is read as a raw mail
//! body (`wire::read_body`) of the length the second byte names.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use keyline_directory::wire::{next_msg, read_body, take_msg, Incoming};
use keyline_proto::codec::{encode_frame, CodecError, FrameDecoder};
use keyline_proto::dir::DirMsg;
use keyline_proto::MAX_MESSAGE;
use libfuzzer_sys::fuzz_target;

/// What one read gave, for comparing the two readers.
#[derive(Debug, PartialEq)]
enum Item {
    Msg(DirMsg),
    Unknown(String),
    /// Garbage or an oversized frame: the stream is dropped here.
    Refused(String),
}

/// Poll a future that reads from a slice: it never waits.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a read from a slice waited"),
    }
}

fn refused(e: &CodecError) -> Item {
    match e {
        CodecError::TooLarge { len, .. } => Item::Refused(format!("too large {len}")),
        CodecError::Malformed(_) => Item::Refused("malformed".into()),
        other => panic!("unexpected error from a slice: {other:?}"),
    }
}

fn check_msg(body: &[u8], msg: &DirMsg) {
    let direct: Result<DirMsg, _> = ciborium::from_reader(body);
    match direct {
        Ok(m) => assert_eq!(&m, msg, "the fast decoder and ciborium disagree"),
        Err(e) => panic!("decoded {msg:?} from a body ciborium refuses: {e}"),
    }
    if let Ok(frame) = encode_frame(msg, MAX_MESSAGE) {
        let again = DirMsg::from_cbor(&frame[4..]).expect("a message we encoded decodes");
        assert_eq!(&again, msg, "a message changed on re-encoding");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Some((&second, stream)) = rest.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;

    // As MsgReader: chunks into a frame decoder.
    let mut chunked = Vec::new();
    let mut decoder = FrameDecoder::new(MAX_MESSAGE);
    'outer: for piece in stream.chunks(chunk) {
        decoder.push(piece);
        loop {
            match take_msg(&mut decoder) {
                Ok(Some(Incoming::Msg(m))) => chunked.push(Item::Msg(m)),
                Ok(Some(Incoming::Unknown(k))) => chunked.push(Item::Unknown(k)),
                Ok(Some(Incoming::Closed)) => panic!("take_msg said closed"),
                Ok(None) => break,
                Err(e) => {
                    chunked.push(refused(&e));
                    break 'outer;
                }
            }
        }
    }

    // As next_msg: the whole stream as one reader, with the bodies.
    let mut whole = Vec::new();
    let mut r = stream;
    loop {
        let before = r;
        match now(next_msg(&mut r)) {
            Ok(Incoming::Msg(m)) => {
                let len = usize::try_from(u32::from_be_bytes([
                    before[0], before[1], before[2], before[3],
                ]))
                .expect("a u32 fits");
                check_msg(&before[4..4 + len], &m);
                whole.push(Item::Msg(m));
            }
            Ok(Incoming::Unknown(k)) => whole.push(Item::Unknown(k)),
            Ok(Incoming::Closed) => break,
            // The stream ends inside a frame: the chunked reader is just
            // still waiting for the rest.
            Err(CodecError::Closed) => break,
            Err(e) => {
                whole.push(refused(&e));
                break;
            }
        }
    }
    assert_eq!(chunked, whole, "the two readers read different messages");

    // A raw mail body of `second` bytes.
    let want = usize::from(second);
    let mut r = stream;
    if let Ok(body) = now(read_body(&mut r, want)) {
        assert_eq!(body.len(), want);
        assert_eq!(&stream[4..4 + want], body.as_slice());
    }
});
