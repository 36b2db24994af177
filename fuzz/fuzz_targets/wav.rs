//! Arbitrary bytes as a WAV file, read as the gateway reads an uploaded
//! greeting and as sources read WAV files (`read_wav_mono48k_bytes`, the
//! same loader as `read_wav_mono48k` and `WavSource`): never a panic, and
//! never more audio out, nor a larger allocation, than the bytes in can
//! carry, whatever the header claims (its length, rate and channels are
//! only claims).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use keyline_media::read_wav_mono48k_bytes;
use libfuzzer_sys::fuzz_target;

/// The system allocator, remembering the largest block asked for.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Largest = Largest;

fuzz_target!(|data: &[u8]| {
    LARGEST.store(0, Ordering::Relaxed);
    let out = read_wav_mono48k_bytes(data);
    // One byte per input sample at least, resampled from no lower than
    // 1 kHz to 48 kHz, as f32 then i16, growing by doubling: a few hundred
    // bytes per byte in, never what a header says.
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= 256 * data.len() + (1 << 20),
        "{} bytes of WAV made an allocation of {largest} bytes",
        data.len()
    );
    if let Ok(pcm) = out {
        assert!(
            pcm.len() <= 48 * data.len(),
            "{} bytes of WAV became {} samples",
            data.len(),
            pcm.len()
        );
    }
});
