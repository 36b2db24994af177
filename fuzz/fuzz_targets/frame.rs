//! Arbitrary bytes on a control stream: the frame decoder and the message
//! decoder must never panic. The first byte picks a chunk size so that
//! frames split across reads are exercised too.
#![no_main]

use keyline_proto::codec::FrameDecoder;
use keyline_proto::msg::Msg;
use keyline_proto::MAX_MESSAGE;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let mut decoder = FrameDecoder::new(MAX_MESSAGE);
    for piece in stream.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let _ = Msg::from_cbor(&frame);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
