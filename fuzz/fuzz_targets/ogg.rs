//! Arbitrary bytes as an Ogg Opus file, read as the gateway reads an
//! uploaded greeting or a stored voicemail (`read_ogg_opus_bytes`): never a
//! panic, and never more than the reader's limit of audio out.
//!
//! Pages carry a CRC, so random changes would mostly make pages the reader
//! skips; unless the first byte is odd, every page's CRC is set right
//! before reading, so the fuzzer gets past the page layer to the headers,
//! the packets and libopus.
#![no_main]

use keyline_media::oggopus::MAX_OGG_OPUS_SECONDS;
use keyline_media::{is_ogg_opus, read_ogg_opus_bytes, SAMPLE_RATE};
use libfuzzer_sys::fuzz_target;

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04c1_1db7
            } else {
                r << 1
            };
            bit += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

fn crc(data: &[u8]) -> u32 {
    data.iter().fold(0, |crc, &b| {
        (crc << 8) ^ CRC_TABLE[usize::from((crc >> 24) as u8 ^ b)]
    })
}

/// Set the CRC of every whole page that starts at an "OggS".
fn fix_crcs(bytes: &mut [u8]) {
    let mut pos = 0;
    while pos + 27 <= bytes.len() {
        if &bytes[pos..pos + 4] != b"OggS" {
            pos += 1;
            continue;
        }
        let nseg = usize::from(bytes[pos + 26]);
        let Some(lacing) = bytes.get(pos + 27..pos + 27 + nseg) else {
            return;
        };
        let body: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        let end = pos + 27 + nseg + body;
        if end > bytes.len() {
            return;
        }
        bytes[pos + 22..pos + 26].fill(0);
        let c = crc(&bytes[pos..end]);
        bytes[pos + 22..pos + 26].copy_from_slice(&c.to_le_bytes());
        pos = end;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if mode & 1 == 0 {
        fix_crcs(&mut file);
    }
    let _ = is_ogg_opus(&file);
    if let Ok(pcm) = read_ogg_opus_bytes(&file) {
        assert!(
            pcm.len() as u64 <= MAX_OGG_OPUS_SECONDS * u64::from(SAMPLE_RATE),
            "longer than the limit"
        );
    }
});
