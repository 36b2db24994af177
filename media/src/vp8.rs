//! VP8 video through libvpx (real libvpx, found by pkg-config and reached
//! through the small C face in `csrc/vp8_shim.c`, which keeps libvpx's
//! structs on the C side).
//!
//! Pictures are [`I420`] frames: 8-bit 4:2:0 planar, even width and
//! height, planes tightly packed. Timestamps are RTP's 90 kHz clock.

use std::ffi::{c_char, c_int, c_uint};

use crate::MediaError;

/// The clock of video timestamps (RTP's, RFC 7741 §4.1).
pub const VIDEO_CLOCK: u32 = 90_000;

/// Largest compressed frame accepted from the encoder (a key frame of
/// 1280×720 at the highest bitrate stays well under it).
const MAX_FRAME: usize = 1 << 20;

/// One 8-bit 4:2:0 picture with tightly packed planes.
#[derive(Clone, PartialEq, Eq)]
pub struct I420 {
    pub width: u32,
    pub height: u32,
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

impl std::fmt::Debug for I420 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "I420 {}x{}", self.width, self.height)
    }
}

impl I420 {
    /// A grey picture of `width`×`height` (both even, non-zero).
    pub fn new(width: u32, height: u32) -> Result<I420, MediaError> {
        if width == 0
            || height == 0
            || width % 2 == 1
            || height % 2 == 1
            || width > 4096
            || height > 4096
        {
            return Err(MediaError::Format(format!(
                "a picture of {width}x{height}: sides must be even, 2 to 4096"
            )));
        }
        let (w, h) = (width as usize, height as usize);
        Ok(I420 {
            width,
            height,
            y: vec![128; w * h],
            u: vec![128; w * h / 4],
            v: vec![128; w * h / 4],
        })
    }
}

/// One compressed VP8 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    pub data: Vec<u8>,
    pub key: bool,
    /// 90 kHz timestamp of the picture.
    pub pts: u32,
}

#[allow(unsafe_code)]
mod ffi {
    use super::*;

    #[repr(C)]
    pub struct Enc {
        _private: [u8; 0],
    }
    #[repr(C)]
    pub struct Dec {
        _private: [u8; 0],
    }

    extern "C" {
        pub fn kl_vp8_enc_new(
            w: c_uint,
            h: c_uint,
            fps: c_uint,
            kbps: c_uint,
            threads: c_uint,
            err: *mut c_char,
            errlen: usize,
        ) -> *mut Enc;
        pub fn kl_vp8_enc_set_bitrate(e: *mut Enc, kbps: c_uint) -> c_int;
        #[allow(clippy::too_many_arguments)]
        pub fn kl_vp8_encode(
            e: *mut Enc,
            y: *const u8,
            u: *const u8,
            v: *const u8,
            pts: i64,
            duration: u32,
            force_key: c_int,
            out: *mut u8,
            cap: usize,
            len: *mut usize,
            key: *mut c_int,
            err: *mut c_char,
            errlen: usize,
        ) -> c_int;
        pub fn kl_vp8_enc_free(e: *mut Enc);
        pub fn kl_vp8_dec_new(threads: c_uint, err: *mut c_char, errlen: usize) -> *mut Dec;
        pub fn kl_vp8_decode(
            d: *mut Dec,
            data: *const u8,
            len: usize,
            w: *mut c_uint,
            h: *mut c_uint,
            err: *mut c_char,
            errlen: usize,
        ) -> c_int;
        pub fn kl_vp8_dec_copy(d: *mut Dec, y: *mut u8, u: *mut u8, v: *mut u8);
        pub fn kl_vp8_dec_free(d: *mut Dec);
    }

    /// The message the shim wrote into `buf`.
    pub fn message(buf: &[c_char]) -> String {
        let bytes: Vec<u8> = buf
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The encoder handle; only `Vp8Encoder` holds it.
    pub struct EncHandle(pub *mut Enc);
    // SAFETY: a libvpx encoder context may move between threads; it is
    // never used by two at once (methods take `&mut self`).
    unsafe impl Send for EncHandle {}
    impl Drop for EncHandle {
        fn drop(&mut self) {
            // SAFETY: the pointer came from kl_vp8_enc_new and is freed once.
            unsafe { kl_vp8_enc_free(self.0) }
        }
    }

    /// The decoder handle; only `Vp8Decoder` holds it.
    pub struct DecHandle(pub *mut Dec);
    // SAFETY: as for `EncHandle`.
    unsafe impl Send for DecHandle {}
    impl Drop for DecHandle {
        fn drop(&mut self) {
            // SAFETY: the pointer came from kl_vp8_dec_new and is freed once.
            unsafe { kl_vp8_dec_free(self.0) }
        }
    }

    pub fn enc_new(w: u32, h: u32, fps: u32, kbps: u32, threads: u32) -> Result<EncHandle, String> {
        let mut err = [0 as c_char; 256];
        // SAFETY: err is a writable buffer of the length given.
        let p = unsafe { kl_vp8_enc_new(w, h, fps, kbps, threads, err.as_mut_ptr(), err.len()) };
        if p.is_null() {
            Err(message(&err))
        } else {
            Ok(EncHandle(p))
        }
    }

    pub fn set_bitrate(e: &mut EncHandle, kbps: u32) -> bool {
        // SAFETY: e.0 is a live encoder.
        unsafe { kl_vp8_enc_set_bitrate(e.0, kbps) == 0 }
    }

    /// Ok(None) when the encoder dropped the picture.
    pub fn encode(
        e: &mut EncHandle,
        pic: &I420,
        pts: i64,
        duration: u32,
        force_key: bool,
        out: &mut [u8],
    ) -> Result<Option<(usize, bool)>, String> {
        let (mut len, mut key) = (0usize, 0 as c_int);
        let mut err = [0 as c_char; 256];
        // SAFETY: the planes are the sizes the encoder was made for (the
        // caller checked), out and err are writable for their lengths.
        let r = unsafe {
            kl_vp8_encode(
                e.0,
                pic.y.as_ptr(),
                pic.u.as_ptr(),
                pic.v.as_ptr(),
                pts,
                duration,
                c_int::from(force_key),
                out.as_mut_ptr(),
                out.len(),
                &mut len,
                &mut key,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        match r {
            0 => Ok(Some((len.min(out.len()), key != 0))),
            1 => Ok(None),
            -2 => Err("compressed frame larger than the output buffer".into()),
            _ => Err(message(&err)),
        }
    }

    pub fn dec_new(threads: u32) -> Result<DecHandle, String> {
        let mut err = [0 as c_char; 256];
        // SAFETY: err is a writable buffer of the length given.
        let p = unsafe { kl_vp8_dec_new(threads, err.as_mut_ptr(), err.len()) };
        if p.is_null() {
            Err(message(&err))
        } else {
            Ok(DecHandle(p))
        }
    }

    /// Ok(Some(picture)) when one came out.
    pub fn decode(d: &mut DecHandle, data: &[u8]) -> Result<Option<I420>, String> {
        let (mut w, mut h) = (0 as c_uint, 0 as c_uint);
        let mut err = [0 as c_char; 256];
        // SAFETY: data is readable for its length; w, h, err writable.
        let r = unsafe {
            kl_vp8_decode(
                d.0,
                data.as_ptr(),
                data.len(),
                &mut w,
                &mut h,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        match r {
            1 => {}
            0 => return Ok(None),
            _ => return Err(message(&err)),
        }
        if w == 0 || h == 0 || w > 16384 || h > 16384 {
            return Err(format!("decoded picture of {w}x{h}"));
        }
        let (wu, hu) = (w as usize, h as usize);
        let (cw, ch) = (wu.div_ceil(2), hu.div_ceil(2));
        let mut y = vec![0u8; wu * hu];
        let mut u = vec![0u8; cw * ch];
        let mut v = vec![0u8; cw * ch];
        // SAFETY: the planes are sized for the picture the shim reported.
        unsafe { kl_vp8_dec_copy(d.0, y.as_mut_ptr(), u.as_mut_ptr(), v.as_mut_ptr()) };
        Ok(Some(I420 {
            width: w,
            height: h,
            y,
            u,
            v,
        }))
    }
}

/// A real-time VP8 encoder (one pass, constant bitrate, no look-ahead,
/// error resilient; key frames on request).
pub struct Vp8Encoder {
    handle: ffi::EncHandle,
    width: u32,
    height: u32,
    fps: u32,
    kbps: u32,
    out: Vec<u8>,
}

impl std::fmt::Debug for Vp8Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Vp8Encoder {}x{} {} fps {} kbit/s",
            self.width, self.height, self.fps, self.kbps
        )
    }
}

impl Vp8Encoder {
    /// An encoder for `width`×`height` pictures at `fps` frames a second
    /// and `kbps` kbit/s, on `threads` threads.
    pub fn new(
        width: u32,
        height: u32,
        fps: u32,
        kbps: u32,
        threads: u32,
    ) -> Result<Vp8Encoder, MediaError> {
        I420::new(width, height)?;
        let handle = ffi::enc_new(width, height, fps.max(1), kbps.max(1), threads.max(1))
            .map_err(MediaError::Codec)?;
        Ok(Vp8Encoder {
            handle,
            width,
            height,
            fps: fps.max(1),
            kbps: kbps.max(1),
            out: vec![0; MAX_FRAME],
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// The target bitrate now (kbit/s).
    pub fn bitrate(&self) -> u32 {
        self.kbps
    }

    /// Change the target bitrate (takes effect from the next frame).
    pub fn set_bitrate(&mut self, kbps: u32) -> Result<(), MediaError> {
        let kbps = kbps.max(1);
        if kbps != self.kbps {
            if !ffi::set_bitrate(&mut self.handle, kbps) {
                return Err(MediaError::Codec(format!(
                    "cannot set the bitrate to {kbps} kbit/s"
                )));
            }
            self.kbps = kbps;
        }
        Ok(())
    }

    /// Encode `pic` taken at 90 kHz time `pts`; a key frame when
    /// `force_key`. None when the rate control dropped the picture.
    pub fn encode(
        &mut self,
        pic: &I420,
        pts: u32,
        force_key: bool,
    ) -> Result<Option<EncodedFrame>, MediaError> {
        if pic.width != self.width
            || pic.height != self.height
            || pic.y.len() != (self.width * self.height) as usize
            || pic.u.len() != pic.y.len() / 4
            || pic.v.len() != pic.y.len() / 4
        {
            return Err(MediaError::Format(format!(
                "a {:?} picture for a {}x{} encoder",
                pic, self.width, self.height
            )));
        }
        let duration = VIDEO_CLOCK / self.fps;
        let got = ffi::encode(
            &mut self.handle,
            pic,
            i64::from(pts),
            duration,
            force_key,
            &mut self.out,
        )
        .map_err(MediaError::Codec)?;
        Ok(got.map(|(len, key)| EncodedFrame {
            data: self.out[..len].to_vec(),
            key,
            pts,
        }))
    }
}

/// A VP8 decoder. Corrupt input is an error for that frame only.
pub struct Vp8Decoder {
    handle: ffi::DecHandle,
}

impl std::fmt::Debug for Vp8Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vp8Decoder")
    }
}

impl Vp8Decoder {
    pub fn new(threads: u32) -> Result<Vp8Decoder, MediaError> {
        Ok(Vp8Decoder {
            handle: ffi::dec_new(threads.max(1)).map_err(MediaError::Codec)?,
        })
    }

    /// Decode one compressed frame; the picture, if one came out.
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<I420>, MediaError> {
        if data.is_empty() {
            return Err(MediaError::Codec("an empty VP8 frame".into()));
        }
        ffi::decode(&mut self.handle, data).map_err(MediaError::Codec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moving(w: u32, h: u32, i: u32) -> I420 {
        let mut p = I420::new(w, h).expect("picture");
        for row in 0..h {
            for col in 0..w {
                p.y[(row * w + col) as usize] = ((col + row + i * 4) % 256) as u8;
            }
        }
        p
    }

    #[test]
    fn frames_survive_encoding_and_decoding() {
        let mut enc = Vp8Encoder::new(320, 240, 30, 600, 1).expect("encoder");
        let mut dec = Vp8Decoder::new(1).expect("decoder");
        let mut decoded = 0;
        for i in 0..30u32 {
            let pic = moving(320, 240, i);
            let Some(f) = enc.encode(&pic, i * 3000, false).expect("encode") else {
                continue;
            };
            assert_eq!(f.key, i == 0, "only the first frame is a key frame");
            let out = dec.decode(&f.data).expect("decode").expect("a picture");
            assert_eq!((out.width, out.height), (320, 240));
            // Lossy, but close: mean absolute error of luma is small.
            let err: u64 = out
                .y
                .iter()
                .zip(&pic.y)
                .map(|(a, b)| u64::from(a.abs_diff(*b)))
                .sum();
            assert!(err / out.y.len() as u64 <= 12, "frame {i}: error {err}");
            decoded += 1;
        }
        assert!(decoded >= 28, "decoded {decoded} of 30");
    }

    #[test]
    fn a_key_frame_comes_on_request_and_bitrate_changes() {
        let mut enc = Vp8Encoder::new(160, 120, 30, 300, 1).expect("encoder");
        let first = enc.encode(&moving(160, 120, 0), 0, false).expect("encode");
        assert!(first.is_some_and(|f| f.key));
        let delta = enc
            .encode(&moving(160, 120, 1), 3000, false)
            .expect("encode");
        assert!(delta.is_some_and(|f| !f.key));
        enc.set_bitrate(150).expect("bitrate");
        assert_eq!(enc.bitrate(), 150);
        let key = enc
            .encode(&moving(160, 120, 2), 6000, true)
            .expect("encode");
        assert!(key.is_some_and(|f| f.key));
    }

    #[test]
    fn corrupt_frames_are_errors_not_crashes() {
        let mut dec = Vp8Decoder::new(1).expect("decoder");
        assert!(dec.decode(&[]).is_err());
        // Garbage claiming to be a key frame of some size.
        let junk = [
            0x10u8, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00, 1, 2, 3,
        ];
        let _ = dec.decode(&junk);
        let mut enc = Vp8Encoder::new(160, 120, 30, 300, 1).expect("encoder");
        let f = enc
            .encode(&moving(160, 120, 0), 0, false)
            .expect("encode")
            .expect("a frame");
        // A truncated key frame: an error or a damaged picture, never a crash.
        let _ = dec.decode(&f.data[..f.data.len() / 2]);
        // The decoder still decodes a whole frame afterwards.
        assert!(dec.decode(&f.data).expect("decode").is_some());
        assert!(Vp8Encoder::new(161, 120, 30, 300, 1).is_err());
        let mut wrong = I420::new(160, 120).expect("picture");
        wrong.y.pop();
        assert!(enc.encode(&wrong, 3000, false).is_err());
    }
}
