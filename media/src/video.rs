//! Video sources and sinks besides the camera and the window: the test
//! pattern, whose pictures carry their frame counter and send time as a
//! block code that survives VP8, and file sinks that write what was
//! decoded (a CSV of the codes read back, or a Y4M video).
//!
//! The block code: [`CODE_BITS`] bits in a band at the top of the
//! picture, 40 blocks a row, each block black (0) or white (1). The bits
//! are the frame counter (u32), the send time in microseconds since the
//! Unix epoch (u64) and a check (u16) over both; a picture whose check
//! fails reads as no code at all.

use std::io::Write;
use std::path::Path;

use crate::vp8::I420;
use crate::MediaError;

/// Blocks per row of the code band.
const BLOCKS_PER_ROW: u32 = 40;
/// Bits in the code: counter (32), send time (64), check (16).
pub const CODE_BITS: u32 = 112;
const BLACK: u8 = 16;
const WHITE: u8 = 235;

/// What a coded picture says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCode {
    /// The sender's frame counter (from 0).
    pub counter: u32,
    /// When it was taken, in microseconds since the Unix epoch.
    pub sent_us: u64,
}

fn check(counter: u32, sent_us: u64) -> u16 {
    // FNV-1a over the 12 bytes, folded to 16 bits.
    let mut h: u32 = 0x811c_9dc5;
    for b in counter
        .to_be_bytes()
        .iter()
        .chain(sent_us.to_be_bytes().iter())
    {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    ((h >> 16) ^ (h & 0xffff)) as u16
}

fn block_size(width: u32) -> u32 {
    (width / BLOCKS_PER_ROW).max(2)
}

/// Rows of blocks the code takes.
fn code_rows() -> u32 {
    CODE_BITS.div_ceil(BLOCKS_PER_ROW)
}

/// Whether `pic` is large enough to carry the code.
fn fits(pic: &I420) -> bool {
    let bs = block_size(pic.width);
    BLOCKS_PER_ROW * bs <= pic.width
        && code_rows() * bs <= pic.height
        && pic.y.len() >= (pic.width * pic.height) as usize
        && pic.u.len() >= pic.y.len() / 4
        && pic.v.len() >= pic.y.len() / 4
}

/// Paint `code` into the top band of `pic` (a picture too small for it
/// is left as it is).
pub fn paint_code(pic: &mut I420, code: FrameCode) {
    if !fits(pic) {
        return;
    }
    let mut bits = [false; CODE_BITS as usize];
    let word = (u128::from(code.counter) << 80)
        | (u128::from(code.sent_us) << 16)
        | u128::from(check(code.counter, code.sent_us));
    for (i, b) in bits.iter_mut().enumerate() {
        *b = (word >> (CODE_BITS as usize - 1 - i)) & 1 == 1;
    }
    let bs = block_size(pic.width);
    let w = pic.width as usize;
    for (i, &bit) in bits.iter().enumerate() {
        let (bx, by) = (i as u32 % BLOCKS_PER_ROW, i as u32 / BLOCKS_PER_ROW);
        let value = if bit { WHITE } else { BLACK };
        for row in by * bs..(by + 1) * bs {
            if row >= pic.height {
                break;
            }
            let start = row as usize * w + (bx * bs) as usize;
            let end = (start + bs as usize).min(row as usize * w + w);
            pic.y[start..end].fill(value);
        }
    }
    // Neutral colour under the band, so that it stays black and white.
    let band = (code_rows() * bs).min(pic.height) as usize / 2;
    let cw = w / 2;
    pic.u[..band * cw].fill(128);
    pic.v[..band * cw].fill(128);
}

/// Read the code back from a (decoded) picture: None when it has none or
/// its check fails.
pub fn read_code(pic: &I420) -> Option<FrameCode> {
    if !fits(pic) {
        return None;
    }
    let bs = block_size(pic.width);
    let w = pic.width as usize;
    let mut word: u128 = 0;
    for i in 0..CODE_BITS {
        let (bx, by) = (i % BLOCKS_PER_ROW, i / BLOCKS_PER_ROW);
        // The block's middle half, away from edges the codec blurs.
        let (x0, y0) = (bx * bs + bs / 4, by * bs + bs / 4);
        let n = (bs / 2).max(1);
        let mut sum = 0u32;
        for row in y0..y0 + n {
            for col in x0..x0 + n {
                sum += u32::from(pic.y[row as usize * w + col as usize]);
            }
        }
        let bit = sum / (n * n) > 128;
        word = (word << 1) | u128::from(bit);
    }
    let counter = (word >> 80) as u32;
    let sent_us = (word >> 16) as u64;
    let chk = word as u16;
    (chk == check(counter, sent_us)).then_some(FrameCode { counter, sent_us })
}

/// Microseconds since the Unix epoch now.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Where a call's pictures come from.
pub trait VideoSource: Send {
    /// The next picture, taken now.
    fn next_picture(&mut self) -> Result<I420, MediaError>;
    /// Picture size.
    fn size(&self) -> (u32, u32);
}

/// A moving test picture that carries its frame counter and send time.
#[derive(Debug)]
pub struct PatternSource {
    width: u32,
    height: u32,
    counter: u32,
}

impl PatternSource {
    pub fn new(width: u32, height: u32) -> Result<PatternSource, MediaError> {
        I420::new(width, height)?;
        Ok(PatternSource {
            width,
            height,
            counter: 0,
        })
    }
}

impl VideoSource for PatternSource {
    fn next_picture(&mut self) -> Result<I420, MediaError> {
        let mut pic = I420::new(self.width, self.height)?;
        let (w, h) = (self.width as usize, self.height as usize);
        let i = self.counter as usize;
        // Like a camera on a desk: a still, textured background (a
        // diagonal gradient in colour) with something moving across it
        // (a box), and the code band changing every frame.
        for row in 0..h {
            let line = &mut pic.y[row * w..(row + 1) * w];
            for (col, px) in line.iter_mut().enumerate() {
                *px = (((col + row) % 192) + 32) as u8;
            }
        }
        for (k, px) in pic.u.iter_mut().enumerate() {
            *px = (64 + (k / 8) % 128) as u8;
        }
        let side = h / 6;
        let bx = (i * 8) % w.saturating_sub(side).max(1);
        let by = h / 2;
        for row in by..(by + side).min(h) {
            pic.y[row * w + bx..row * w + (bx + side).min(w)].fill(WHITE);
        }
        paint_code(
            &mut pic,
            FrameCode {
                counter: self.counter,
                sent_us: unix_us(),
            },
        );
        self.counter = self.counter.wrapping_add(1);
        Ok(pic)
    }

    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }
}

/// Where decoded pictures go.
pub trait VideoSink: Send {
    fn show(&mut self, pic: &I420) -> Result<(), MediaError>;
}

/// Writes one CSV line per decoded picture: its counter and send time
/// (empty when it carries no code), when it was decoded, and its size.
#[derive(Debug)]
pub struct CodeLogSink {
    out: std::io::BufWriter<std::fs::File>,
}

impl CodeLogSink {
    pub fn create(path: &Path) -> Result<CodeLogSink, MediaError> {
        let f = std::fs::File::create(path).map_err(|e| {
            MediaError::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            ))
        })?;
        let mut out = std::io::BufWriter::new(f);
        writeln!(out, "counter,sent_us,decoded_us,width,height")?;
        Ok(CodeLogSink { out })
    }
}

impl VideoSink for CodeLogSink {
    fn show(&mut self, pic: &I420) -> Result<(), MediaError> {
        let now = unix_us();
        match read_code(pic) {
            Some(c) => writeln!(
                self.out,
                "{},{},{now},{},{}",
                c.counter, c.sent_us, pic.width, pic.height
            )?,
            None => writeln!(self.out, ",,{now},{},{}", pic.width, pic.height)?,
        }
        self.out.flush()?;
        Ok(())
    }
}

/// Writes decoded pictures as a YUV4MPEG2 video (players and ffmpeg open
/// it); the size is the first picture's, later ones of another size are
/// skipped.
#[derive(Debug)]
pub struct Y4mSink {
    out: std::io::BufWriter<std::fs::File>,
    size: Option<(u32, u32)>,
    fps: u32,
}

impl Y4mSink {
    pub fn create(path: &Path, fps: u32) -> Result<Y4mSink, MediaError> {
        let f = std::fs::File::create(path).map_err(|e| {
            MediaError::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            ))
        })?;
        Ok(Y4mSink {
            out: std::io::BufWriter::new(f),
            size: None,
            fps: fps.max(1),
        })
    }
}

impl VideoSink for Y4mSink {
    fn show(&mut self, pic: &I420) -> Result<(), MediaError> {
        match self.size {
            None => {
                writeln!(
                    self.out,
                    "YUV4MPEG2 W{} H{} F{}:1 Ip A1:1 C420jpeg",
                    pic.width, pic.height, self.fps
                )?;
                self.size = Some((pic.width, pic.height));
            }
            Some(s) if s != (pic.width, pic.height) => return Ok(()),
            Some(_) => {}
        }
        self.out.write_all(b"FRAME\n")?;
        self.out.write_all(&pic.y)?;
        self.out.write_all(&pic.u)?;
        self.out.write_all(&pic.v)?;
        self.out.flush()?;
        Ok(())
    }
}

/// The sink a `--video-out` path names: `.y4m` is a video, anything else
/// the CSV of codes.
pub fn file_sink(path: &Path, fps: u32) -> Result<Box<dyn VideoSink>, MediaError> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("y4m"))
    {
        Ok(Box::new(Y4mSink::create(path, fps)?))
    } else {
        Ok(Box::new(CodeLogSink::create(path)?))
    }
}

/// What a picture shown in a window is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewKind {
    /// The other end's picture.
    Peer,
    /// This end's own (the self view).
    Me,
    /// No picture any more (the call ended or its video stopped).
    Clear,
}

/// The largest side of a picture sent to a window.
pub const MAX_VIEW_SIDE: u32 = 1920;

const VIEW_MAGIC: &[u8; 4] = b"KLV1";

/// A picture for a window: `KLV1`, the kind (0 peer, 1 self, 2 clear),
/// width and height (u16, little-endian, even), then the I420 planes.
pub fn encode_view(kind: ViewKind, pic: Option<&I420>) -> Vec<u8> {
    let (w, h) = pic.map_or((0, 0), |p| (p.width, p.height));
    let mut out = Vec::with_capacity(9 + (w * h * 3 / 2) as usize);
    out.extend_from_slice(VIEW_MAGIC);
    out.push(match kind {
        ViewKind::Peer => 0,
        ViewKind::Me => 1,
        ViewKind::Clear => 2,
    });
    out.extend_from_slice(&(w as u16).to_le_bytes());
    out.extend_from_slice(&(h as u16).to_le_bytes());
    if let Some(p) = pic {
        out.extend_from_slice(&p.y);
        out.extend_from_slice(&p.u);
        out.extend_from_slice(&p.v);
    }
    out
}

/// Read one picture written by [`encode_view`]; an error for anything
/// else (bad magic or kind, odd or oversized sides), never a panic.
pub fn read_view(r: &mut impl std::io::Read) -> std::io::Result<(ViewKind, Option<I420>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut head = [0u8; 9];
    r.read_exact(&mut head)?;
    if &head[..4] != VIEW_MAGIC {
        return Err(bad("not a Keyline video view"));
    }
    let kind = match head[4] {
        0 => ViewKind::Peer,
        1 => ViewKind::Me,
        2 => ViewKind::Clear,
        _ => return Err(bad("unknown view kind")),
    };
    let w = u32::from(u16::from_le_bytes([head[5], head[6]]));
    let h = u32::from(u16::from_le_bytes([head[7], head[8]]));
    if kind == ViewKind::Clear || w == 0 || h == 0 {
        return Ok((kind, None));
    }
    if w % 2 == 1 || h % 2 == 1 || w > MAX_VIEW_SIDE || h > MAX_VIEW_SIDE {
        return Err(bad("a view of an impossible size"));
    }
    let (wu, hu) = (w as usize, h as usize);
    let mut pic = I420 {
        width: w,
        height: h,
        y: vec![0; wu * hu],
        u: vec![0; wu * hu / 4],
        v: vec![0; wu * hu / 4],
    };
    r.read_exact(&mut pic.y)?;
    r.read_exact(&mut pic.u)?;
    r.read_exact(&mut pic.v)?;
    Ok((kind, Some(pic)))
}

/// `pic` made `factor` times smaller each way (each pixel the mean of a
/// square); the sides stay even.
pub fn downscale(pic: &I420, factor: u32) -> I420 {
    let f = factor.max(1);
    let (w, h) = ((pic.width / f) & !1, (pic.height / f) & !1);
    if f == 1 || w == 0 || h == 0 {
        return pic.clone();
    }
    let plane = |src: &[u8], sw: usize, dw: usize, dh: usize| -> Vec<u8> {
        let f = f as usize;
        let mut out = vec![0u8; dw * dh];
        for y in 0..dh {
            for x in 0..dw {
                let mut sum = 0u32;
                for dy in 0..f {
                    let row = (y * f + dy) * sw;
                    for dx in 0..f {
                        sum += u32::from(src.get(row + x * f + dx).copied().unwrap_or(0));
                    }
                }
                out[y * dw + x] = (sum / (f * f) as u32) as u8;
            }
        }
        out
    };
    let (sw, dw, dh) = (pic.width as usize, w as usize, h as usize);
    I420 {
        width: w,
        height: h,
        y: plane(&pic.y, sw, dw, dh),
        u: plane(&pic.u, sw / 2, dw / 2, dh / 2),
        v: plane(&pic.v, sw / 2, dw / 2, dh / 2),
    }
}

/// `pic` as RGBA bytes (BT.601, limited range), for a window to show.
pub fn to_rgba(pic: &I420) -> Vec<u8> {
    let (w, h) = (pic.width as usize, pic.height as usize);
    let mut out = vec![255u8; w * h * 4];
    for row in 0..h {
        for col in 0..w {
            let y = i32::from(pic.y.get(row * w + col).copied().unwrap_or(16)) - 16;
            let c = (row / 2) * (w / 2) + col / 2;
            let u = i32::from(pic.u.get(c).copied().unwrap_or(128)) - 128;
            let v = i32::from(pic.v.get(c).copied().unwrap_or(128)) - 128;
            let y = 298 * y;
            let px = &mut out[(row * w + col) * 4..(row * w + col) * 4 + 3];
            px[0] = ((y + 409 * v + 128) >> 8).clamp(0, 255) as u8;
            px[1] = ((y - 100 * u - 208 * v + 128) >> 8).clamp(0, 255) as u8;
            px[2] = ((y + 516 * u + 128) >> 8).clamp(0, 255) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vp8::{Vp8Decoder, Vp8Encoder};

    #[test]
    fn the_code_reads_back_from_the_picture_itself() {
        let mut src = PatternSource::new(640, 480).expect("source");
        let pic = src.next_picture().expect("picture");
        let code = read_code(&pic).expect("a code");
        assert_eq!(code.counter, 0);
        assert!(code.sent_us > 1_600_000_000_000_000);
        let second = src.next_picture().expect("picture");
        assert_eq!(read_code(&second).map(|c| c.counter), Some(1));
    }

    #[test]
    fn the_code_survives_vp8_at_low_bitrate_and_small_sizes() {
        for (w, h, kbps) in [(640, 480, 150), (320, 240, 150), (1280, 720, 600)] {
            let mut src = PatternSource::new(w, h).expect("source");
            let mut enc = Vp8Encoder::new(w, h, 30, kbps, 1).expect("encoder");
            let mut dec = Vp8Decoder::new(1).expect("decoder");
            let mut read = 0;
            for i in 0..20u32 {
                let pic = src.next_picture().expect("picture");
                let Some(f) = enc.encode(&pic, i * 3000, false).expect("encode") else {
                    continue;
                };
                let out = dec.decode(&f.data).expect("decode").expect("picture");
                if let Some(c) = read_code(&out) {
                    assert_eq!(c.counter, i, "{w}x{h}: a wrong counter read");
                    read += 1;
                }
            }
            assert!(
                read >= 18,
                "{w}x{h} at {kbps} kbit/s: read {read} of 20 codes"
            );
        }
    }

    #[test]
    fn a_picture_without_a_code_reads_as_none() {
        let pic = I420::new(640, 480).expect("picture");
        assert_eq!(read_code(&pic), None);
        let tiny = I420::new(8, 8).expect("picture");
        assert_eq!(read_code(&tiny), None);
    }

    #[test]
    fn views_for_a_window_round_trip_and_refuse_garbage() {
        let mut src = PatternSource::new(640, 480).expect("source");
        let pic = src.next_picture().expect("picture");
        let small = downscale(&pic, 2);
        assert_eq!((small.width, small.height), (320, 240));
        // The code survives halving (its blocks stay whole).
        assert_eq!(read_code(&small).map(|c| c.counter), Some(0));
        let bytes = encode_view(ViewKind::Peer, Some(&small));
        let (kind, back) = read_view(&mut bytes.as_slice()).expect("read back");
        assert_eq!((kind, back.as_ref()), (ViewKind::Peer, Some(&small)));
        let clear = encode_view(ViewKind::Clear, None);
        assert_eq!(
            read_view(&mut clear.as_slice()).expect("clear"),
            (ViewKind::Clear, None)
        );
        for junk in [
            &b"KLV2\0\x10\0\x10\0"[..],
            b"KLV1\x07\x10\0\x10\0",
            b"KLV1\0\x11\0\x10\0",
            b"KLV1\0\x10\x10\x10\x10",
            b"KLV",
        ] {
            assert!(read_view(&mut &junk[..]).is_err(), "{junk:?}");
        }
        // White stays white, black black.
        let rgba = to_rgba(&small);
        assert_eq!(rgba.len(), 320 * 240 * 4);
        let grey = |luma: u8| I420 {
            width: 2,
            height: 2,
            y: vec![luma; 4],
            u: vec![128],
            v: vec![128],
        };
        assert_eq!(&to_rgba(&grey(235))[..4], &[255, 255, 255, 255]);
        assert_eq!(&to_rgba(&grey(16))[..4], &[0, 0, 0, 255]);
    }

    #[test]
    fn file_sinks_write_codes_and_video() {
        let dir = tempfile::tempdir().expect("dir");
        let mut src = PatternSource::new(160, 120).expect("source");
        let csv = dir.path().join("codes.csv");
        let mut sink = file_sink(&csv, 30).expect("sink");
        for _ in 0..3 {
            sink.show(&src.next_picture().expect("picture"))
                .expect("show");
        }
        let text = std::fs::read_to_string(&csv).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[3].starts_with("2,"), "{text}");
        let y4m = dir.path().join("video.y4m");
        let mut sink = file_sink(&y4m, 30).expect("sink");
        sink.show(&src.next_picture().expect("picture"))
            .expect("show");
        let bytes = std::fs::read(&y4m).expect("read");
        let header = b"YUV4MPEG2 W160 H120 F30:1 Ip A1:1 C420jpeg\n";
        assert!(bytes.starts_with(header));
        assert_eq!(bytes.len(), header.len() + 6 + 160 * 120 * 3 / 2);
    }
}
