//! Ogg Opus files (RFC 7845, paged per RFC 3533): a writer for call
//! recordings and voicemail, and a reader decoding a whole file to 48 kHz
//! mono PCM.
//!
//! The writer produces one logical stream: an `OpusHead` page (48 kHz mono,
//! pre-skip = the encoder's lookahead), an `OpusTags` page (vendor
//! [`VENDOR`] plus optional comments), then audio pages. A page is written to
//! the file at least every second of audio ([`FLUSH_EVERY_SAMPLES`]), so a
//! killed process leaves a file that plays up to the last flush; `finish`
//! writes the end-of-stream page with the exact end granule position.
//!
//! The Ogg page layer is implemented here (it is small): CRC-32 with
//! polynomial 0x04c11db7, no reflection, initial value 0.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{MediaError, OpusEncoder, Sink, FRAME_SAMPLES, SAMPLE_RATE};

/// Vendor string written in the `OpusTags` header.
pub const VENDOR: &str = "keyline";
/// Audio (48 kHz samples) after which buffered packets are written out as a
/// page: one second.
pub const FLUSH_EVERY_SAMPLES: u64 = SAMPLE_RATE as u64;
/// Largest packet [`OggOpusWriter::write_packet`] accepts (bytes). The
/// largest legal Opus packet (120 ms of 1275-byte frames plus framing) is
/// smaller; this keeps every packet within one Ogg page.
pub const MAX_PACKET_BYTES: usize = 61_440;
/// Longest audio [`read_ogg_opus`] decodes (seconds), bounding memory: the
/// longest message anyone may record (the gateway's `voicemail_max_secs`
/// goes up to this), a quarter of an hour, about 86 MB of samples. Opus
/// packets of two bytes decode to 120 ms each, so without a bound a file
/// of a few megabytes (a voice message any directory user may send an
/// office) would expand to gigabytes. Readers that know their input is
/// shorter (a greeting) pass their own bound to [`read_ogg_opus_max`] or
/// [`read_ogg_opus_bytes_max`].
pub const MAX_OGG_OPUS_SECONDS: u64 = 15 * 60;
/// Largest file [`read_ogg_opus`] loads (bytes): an hour at Opus's highest
/// bitrate (510 kbit/s) fits with margin.
pub const MAX_OGG_OPUS_FILE_BYTES: u64 = 512 * 1024 * 1024;

/// Longest packet payload one page can carry (255 lacing values).
const MAX_PAGE_PAYLOAD: usize = 255 * 255 - 1;
/// Largest packet the reader reassembles before giving up on the file.
const MAX_READ_PACKET: usize = 1 << 20;
/// Most 48 kHz samples one Opus packet decodes to (120 ms), per channel.
const MAX_PACKET_SAMPLES: usize = 5760;

const FLAG_CONTINUED: u8 = 0x01;
const FLAG_BOS: u8 = 0x02;
const FLAG_EOS: u8 = 0x04;
const PAGE_HEADER_LEN: usize = 27;
/// Granule position of a page on which no packet ends.
const NO_GRANULE: u64 = u64::MAX;

// ---------------------------------------------------------------------------
// Ogg page layer (RFC 3533)

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

/// Continues an Ogg page checksum over `data`.
fn crc_update(crc: u32, data: &[u8]) -> u32 {
    data.iter().fold(crc, |crc, &b| {
        (crc << 8) ^ CRC_TABLE[usize::from((crc >> 24) as u8 ^ b)]
    })
}

/// The Ogg page checksum of `data` (with the checksum field zeroed).
fn ogg_crc(data: &[u8]) -> u32 {
    crc_update(0, data)
}

/// Lacing values needed for a packet of `len` bytes.
fn segments_for(len: usize) -> usize {
    len / 255 + 1
}

/// Serialises one page holding `packets` whole (the caller keeps the lacing
/// within 255 values).
fn build_page(flags: u8, granule: u64, serial: u32, seq: u32, packets: &[Vec<u8>]) -> Vec<u8> {
    let mut lacing = Vec::with_capacity(255);
    for p in packets {
        lacing.extend(std::iter::repeat_n(255u8, p.len() / 255));
        lacing.push((p.len() % 255) as u8);
    }
    debug_assert!(lacing.len() <= 255);
    let body: usize = packets.iter().map(Vec::len).sum();
    let mut page = Vec::with_capacity(PAGE_HEADER_LEN + lacing.len() + body);
    page.extend_from_slice(b"OggS");
    page.push(0);
    page.push(flags);
    page.extend_from_slice(&granule.to_le_bytes());
    page.extend_from_slice(&serial.to_le_bytes());
    page.extend_from_slice(&seq.to_le_bytes());
    page.extend_from_slice(&[0; 4]);
    page.push(lacing.len() as u8);
    page.extend_from_slice(&lacing);
    for p in packets {
        page.extend_from_slice(p);
    }
    let crc = ogg_crc(&page);
    page[22..26].copy_from_slice(&crc.to_le_bytes());
    page
}

/// One parsed page (borrowing the file's bytes).
#[derive(Debug)]
struct Page<'a> {
    flags: u8,
    granule: u64,
    serial: u32,
    seq: u32,
    lacing: &'a [u8],
    body: &'a [u8],
}

#[derive(Debug, PartialEq, Eq)]
enum PageError {
    /// No "OggS" capture pattern here.
    NoCapture,
    /// The data ends inside the page.
    Truncated,
    /// Unknown stream structure version.
    BadVersion(u8),
    /// Checksum mismatch.
    BadCrc,
}

/// Parses the page at the start of `data`, returning it and its length.
fn parse_page(data: &[u8]) -> Result<(Page<'_>, usize), PageError> {
    if data.len() < 4 || &data[..4] != b"OggS" {
        return Err(PageError::NoCapture);
    }
    let header = data.get(..PAGE_HEADER_LEN).ok_or(PageError::Truncated)?;
    if header[4] != 0 {
        return Err(PageError::BadVersion(header[4]));
    }
    let le32 = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let mut g = [0u8; 8];
    g.copy_from_slice(&header[6..14]);
    let nseg = usize::from(header[26]);
    let lacing = data
        .get(PAGE_HEADER_LEN..PAGE_HEADER_LEN + nseg)
        .ok_or(PageError::Truncated)?;
    let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
    let total = PAGE_HEADER_LEN + nseg + body_len;
    let page_bytes = data.get(..total).ok_or(PageError::Truncated)?;
    let stored = le32(22);
    let computed = crc_update(
        crc_update(ogg_crc(&page_bytes[..22]), &[0; 4]),
        &page_bytes[26..],
    );
    if stored != computed {
        return Err(PageError::BadCrc);
    }
    Ok((
        Page {
            flags: header[5],
            granule: u64::from_le_bytes(g),
            serial: le32(14),
            seq: le32(18),
            lacing,
            body: &page_bytes[PAGE_HEADER_LEN + nseg..],
        },
        total,
    ))
}

/// True when `bytes` starts like an Ogg Opus file: an Ogg beginning-of-stream
/// page ("OggS") whose first packet is an `OpusHead` header.
pub fn is_ogg_opus(bytes: &[u8]) -> bool {
    if bytes.len() < PAGE_HEADER_LEN || &bytes[..4] != b"OggS" || bytes[4] != 0 {
        return false;
    }
    if bytes[5] & FLAG_BOS == 0 {
        return false;
    }
    let body = PAGE_HEADER_LEN + usize::from(bytes[26]);
    bytes.get(body..body + 8) == Some(b"OpusHead".as_slice())
}

// ---------------------------------------------------------------------------
// Headers (RFC 7845 §5)

pub(crate) fn opus_head(pre_skip: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(19);
    h.extend_from_slice(b"OpusHead");
    h.push(1); // version
    h.push(1); // channels
    h.extend_from_slice(&pre_skip.to_le_bytes());
    h.extend_from_slice(&SAMPLE_RATE.to_le_bytes()); // input sample rate
    h.extend_from_slice(&0i16.to_le_bytes()); // output gain
    h.push(0); // channel mapping family 0: mono/stereo
    h
}

fn opus_tags(tags: &[(&str, &str)]) -> Result<Vec<u8>, MediaError> {
    let mut t = Vec::new();
    t.extend_from_slice(b"OpusTags");
    let len32 = |n: usize| -> Result<[u8; 4], MediaError> {
        u32::try_from(n)
            .map(u32::to_le_bytes)
            .map_err(|_| MediaError::Format("Ogg Opus tags too large".into()))
    };
    t.extend_from_slice(&len32(VENDOR.len())?);
    t.extend_from_slice(VENDOR.as_bytes());
    t.extend_from_slice(&len32(tags.len())?);
    for (key, value) in tags {
        if key.is_empty() || !key.bytes().all(|b| (0x20..=0x7d).contains(&b) && b != b'=') {
            return Err(MediaError::Format(format!(
                "Ogg Opus tag name {key:?}: must be non-empty printable ASCII without '='"
            )));
        }
        let comment = format!("{key}={value}");
        t.extend_from_slice(&len32(comment.len())?);
        t.extend_from_slice(comment.as_bytes());
    }
    if t.len() > MAX_PAGE_PAYLOAD {
        return Err(MediaError::Format(format!(
            "Ogg Opus tags take {} bytes, more than the {MAX_PAGE_PAYLOAD} allowed",
            t.len()
        )));
    }
    Ok(t)
}

/// A stream serial number that differs between files (time and process).
fn new_serial() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) as u32
}

// ---------------------------------------------------------------------------
// Writer

/// What a finished Ogg Opus file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OggOpusInfo {
    /// Playable audio (after pre-skip and end trimming).
    pub duration: Duration,
    /// Playable audio in 48 kHz samples.
    pub samples: u64,
    /// Size of the file (bytes).
    pub bytes: u64,
    /// Audio packets in the file.
    pub packets: u64,
}

fn io_error(path: &Path, e: std::io::Error) -> MediaError {
    MediaError::Io(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", path.display()),
    ))
}

/// The open stream of an [`OggOpusWriter`].
struct Stream {
    file: File,
    serial: u32,
    seq: u32,
    encoder: OpusEncoder,
    pre_skip: u16,
    /// Packets not yet written out, all ending on the next page.
    pending: Vec<Vec<u8>>,
    pending_segments: usize,
    pending_samples: u64,
    /// Decoded samples of every packet so far (pending included): the
    /// granule position after the last one.
    granule: u64,
    /// Granule position of the last page written.
    page_granule: u64,
    /// Audio samples given by the caller (frames and packets).
    samples_in: u64,
    encoded_frames: bool,
    bytes: u64,
    packets: u64,
}

impl Stream {
    fn write_page(&mut self, path: &Path, page: &[u8]) -> Result<(), MediaError> {
        self.file.write_all(page).map_err(|e| io_error(path, e))?;
        self.seq = self.seq.wrapping_add(1);
        self.bytes += page.len() as u64;
        Ok(())
    }

    /// Writes the pending packets as one page (`end` marks the last one).
    fn flush_pending(&mut self, path: &Path, end: Option<u64>) -> Result<(), MediaError> {
        if self.pending.is_empty() && end.is_none() {
            return Ok(());
        }
        let (flags, granule) = match end {
            Some(g) => (FLAG_EOS, g),
            None => (0, self.granule),
        };
        let page = build_page(flags, granule, self.serial, self.seq, &self.pending);
        self.write_page(path, &page)?;
        self.pending.clear();
        self.pending_segments = 0;
        self.pending_samples = 0;
        self.page_granule = granule;
        Ok(())
    }

    /// Queues one packet, first writing out a page if a second of audio is
    /// buffered or the page is full.
    fn push(&mut self, path: &Path, packet: Vec<u8>, samples: u64) -> Result<(), MediaError> {
        let segs = segments_for(packet.len());
        if self.pending_samples >= FLUSH_EVERY_SAMPLES || self.pending_segments + segs > 255 {
            self.flush_pending(path, None)?;
        }
        self.pending_segments += segs;
        self.pending_samples += samples;
        self.granule += samples;
        self.packets += 1;
        self.pending.push(packet);
        Ok(())
    }

    fn finish(mut self, path: &Path) -> Result<OggOpusInfo, MediaError> {
        // Frames we encoded are delayed by the encoder's lookahead: encode
        // silence past their end so all of it can be decoded, then trim with
        // the end granule. (Also gives an empty stream its one packet.)
        if self.encoded_frames || self.pending.is_empty() {
            let mut padded = 0u64;
            loop {
                let packet = self.encoder.encode(&[0; FRAME_SAMPLES])?;
                self.push(path, packet, FRAME_SAMPLES as u64)?;
                padded += FRAME_SAMPLES as u64;
                if padded >= u64::from(self.pre_skip) {
                    break;
                }
            }
        }
        let end = (u64::from(self.pre_skip) + self.samples_in)
            .min(self.granule)
            .max(self.page_granule);
        self.flush_pending(path, Some(end))?;
        self.file.flush().map_err(|e| io_error(path, e))?;
        let samples = end.saturating_sub(u64::from(self.pre_skip));
        Ok(OggOpusInfo {
            duration: Duration::from_micros(samples * 1_000_000 / u64::from(SAMPLE_RATE)),
            samples,
            bytes: self.bytes,
            packets: self.packets,
        })
    }
}

/// Writes a 48 kHz mono Ogg Opus file (RFC 7845), encoding 20 ms frames with
/// its own [`OpusEncoder`] or storing packets encoded elsewhere.
///
/// Audio is written out a page at a time, at least every second, so a killed
/// process leaves a file playable up to its last second. Call
/// [`finish`](Self::finish) (or [`Sink::finish`]) to end the stream; a writer
/// dropped unfinished ends it as well, ignoring errors.
pub struct OggOpusWriter {
    stream: Option<Stream>,
    path: PathBuf,
    info: Option<OggOpusInfo>,
}

impl std::fmt::Debug for OggOpusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("OggOpusWriter");
        d.field("path", &self.path);
        if let Some(s) = &self.stream {
            d.field("packets", &s.packets).field("bytes", &s.bytes);
        }
        d.field("finished", &self.stream.is_none()).finish()
    }
}

impl OggOpusWriter {
    /// Creates (or truncates) the file at `path` and writes the headers.
    pub fn create(path: &Path) -> Result<Self, MediaError> {
        Self::create_with_tags(path, &[])
    }

    /// [`create`](Self::create) with comments for the `OpusTags` header,
    /// e.g. `&[("TITLE", "Call with 202")]`. Names must be printable ASCII
    /// without `=`; values any text.
    pub fn create_with_tags(path: &Path, tags: &[(&str, &str)]) -> Result<Self, MediaError> {
        let tags = opus_tags(tags)?;
        let file = File::create(path).map_err(|e| io_error(path, e))?;
        Self::start_or_remove(file, path, tags)
    }

    /// Like [`create_with_tags`](Self::create_with_tags) but fails (with
    /// [`std::io::ErrorKind::AlreadyExists`]) if the file exists.
    pub(crate) fn create_new_with_tags(
        path: &Path,
        tags: &[(&str, &str)],
    ) -> Result<Self, MediaError> {
        let tags = opus_tags(tags)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| io_error(path, e))?;
        Self::start_or_remove(file, path, tags)
    }

    /// [`start`](Self::start); a file whose headers could not be written
    /// (a full disk) is removed rather than left empty or cut short.
    fn start_or_remove(file: File, path: &Path, tags: Vec<u8>) -> Result<Self, MediaError> {
        Self::start(file, path, tags).inspect_err(|_| {
            let _ = std::fs::remove_file(path);
        })
    }

    fn start(file: File, path: &Path, tags: Vec<u8>) -> Result<Self, MediaError> {
        let mut encoder = OpusEncoder::new()?;
        let pre_skip = u16::try_from(encoder.lookahead()?).unwrap_or(u16::MAX);
        let mut stream = Stream {
            file,
            serial: new_serial(),
            seq: 0,
            encoder,
            pre_skip,
            pending: Vec::new(),
            pending_segments: 0,
            pending_samples: 0,
            granule: 0,
            page_granule: 0,
            samples_in: 0,
            encoded_frames: false,
            bytes: 0,
            packets: 0,
        };
        let head = build_page(FLAG_BOS, 0, stream.serial, 0, &[opus_head(pre_skip)]);
        stream.write_page(path, &head)?;
        let tags = build_page(0, 0, stream.serial, 1, &[tags]);
        stream.write_page(path, &tags)?;
        Ok(Self {
            stream: Some(stream),
            path: path.to_path_buf(),
            info: None,
        })
    }

    fn stream(&mut self) -> Result<&mut Stream, MediaError> {
        match self.stream.as_mut() {
            Some(s) => Ok(s),
            None => Err(MediaError::Format(format!(
                "{}: Ogg Opus write after finish",
                self.path.display()
            ))),
        }
    }

    /// Encodes and appends one 20 ms frame ([`FRAME_SAMPLES`] samples).
    pub fn write_frame(&mut self, pcm: &[i16]) -> Result<(), MediaError> {
        let path = self.path.clone();
        let s = self.stream()?;
        let packet = s.encoder.encode(pcm)?;
        s.encoded_frames = true;
        s.samples_in += FRAME_SAMPLES as u64;
        s.push(&path, packet, FRAME_SAMPLES as u64)
    }

    /// Appends an Opus packet encoded elsewhere (e.g. received from the
    /// network) holding `samples` samples at 48 kHz. The packet must be a
    /// valid mono or stereo Opus packet of exactly that duration.
    pub fn write_packet(&mut self, packet: &[u8], samples: u32) -> Result<(), MediaError> {
        if packet.is_empty() || packet.len() > MAX_PACKET_BYTES {
            return Err(MediaError::Format(format!(
                "Ogg Opus: packet of {} bytes (must be 1 to {MAX_PACKET_BYTES})",
                packet.len()
            )));
        }
        let n = opus::packet::get_nb_samples(packet, SAMPLE_RATE)?;
        if n != samples as usize {
            return Err(MediaError::Format(format!(
                "Ogg Opus: packet holds {n} samples, caller said {samples}"
            )));
        }
        let path = self.path.clone();
        let s = self.stream()?;
        s.samples_in += u64::from(samples);
        s.push(&path, packet.to_vec(), u64::from(samples))
    }

    /// Writes out the buffered packets as a page now (the writer also does
    /// this by itself every second of audio).
    pub fn flush(&mut self) -> Result<(), MediaError> {
        let path = self.path.clone();
        self.stream()?.flush_pending(&path, None)
    }

    /// Ends the stream (final page with the end-of-stream flag) and returns
    /// what the file holds.
    pub fn finish(mut self) -> Result<OggOpusInfo, MediaError> {
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> Result<OggOpusInfo, MediaError> {
        if let Some(info) = self.info {
            return Ok(info);
        }
        let stream = self.stream.take().ok_or_else(|| {
            MediaError::Format(format!(
                "{}: Ogg Opus stream already ended after an error",
                self.path.display()
            ))
        })?;
        let info = stream.finish(&self.path)?;
        self.info = Some(info);
        Ok(info)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pre-skip written in the header (48 kHz samples).
    pub fn pre_skip(&self) -> Option<u16> {
        self.stream.as_ref().map(|s| s.pre_skip)
    }

    /// Audio given so far (48 kHz samples).
    pub fn samples_written(&self) -> u64 {
        match (&self.stream, &self.info) {
            (Some(s), _) => s.samples_in,
            (None, Some(info)) => info.samples,
            (None, None) => 0,
        }
    }

    /// What the file holds, once finished.
    pub fn info(&self) -> Option<OggOpusInfo> {
        self.info
    }
}

impl Sink for OggOpusWriter {
    fn write_frame(&mut self, pcm: &[i16]) -> Result<(), MediaError> {
        OggOpusWriter::write_frame(self, pcm)
    }

    fn finish(&mut self) -> Result<(), MediaError> {
        self.finish_inner().map(|_| ())
    }
}

impl Drop for OggOpusWriter {
    fn drop(&mut self) {
        if self.stream.is_some() {
            let _ = self.finish_inner();
        }
    }
}

// ---------------------------------------------------------------------------
// Reader

fn not_ogg_opus(why: impl std::fmt::Display) -> MediaError {
    MediaError::Format(format!("not an Ogg Opus file: {why}"))
}

/// Parsed `OpusHead`.
#[derive(Debug)]
struct Head {
    channels: u8,
    pre_skip: u16,
    gain: i16,
}

fn parse_head(p: &[u8]) -> Result<Head, MediaError> {
    if p.len() < 19 || &p[..8] != b"OpusHead" {
        return Err(not_ogg_opus("first packet is not an OpusHead header"));
    }
    let version = p[8];
    if version >> 4 != 0 {
        return Err(MediaError::Format(format!(
            "Ogg Opus: unsupported OpusHead version {version}"
        )));
    }
    let channels = p[9];
    let pre_skip = u16::from_le_bytes([p[10], p[11]]);
    let gain = i16::from_le_bytes([p[16], p[17]]);
    let family = p[18];
    let unsupported = || {
        MediaError::Format(format!(
            "Ogg Opus: {channels} channels with channel mapping family {family} \
             are not supported (only mono and stereo)"
        ))
    };
    if !(1..=2).contains(&channels) {
        return Err(unsupported());
    }
    if family != 0 {
        // Families 1 and 255 may still describe plain mono/stereo: one
        // stream, coupled for stereo, identity mapping.
        let table = p
            .get(19..21 + usize::from(channels))
            .ok_or_else(unsupported)?;
        let coupled = u8::from(channels == 2);
        let identity = table[2..]
            .iter()
            .enumerate()
            .all(|(i, &m)| usize::from(m) == i);
        if table[0] != 1 || table[1] != coupled || !identity {
            return Err(unsupported());
        }
    }
    Ok(Head {
        channels,
        pre_skip,
        gain,
    })
}

/// Decodes a whole Ogg Opus file to 48 kHz mono PCM (stereo is downmixed),
/// honouring pre-skip, output gain and end trimming. A file cut short (e.g.
/// the writer was killed) reads up to its last complete page; pages with a
/// bad checksum are skipped. Only the file's first logical stream is read
/// (other multiplexed or chained streams are ignored). Errors name the file;
/// no input makes it panic.
pub fn read_ogg_opus(path: &Path) -> Result<Vec<i16>, MediaError> {
    read_ogg_opus_max(path, MAX_OGG_OPUS_SECONDS)
}

/// [`read_ogg_opus`] of a file that may hold at most `max_secs` seconds of
/// audio: decoding stops with an error ("longer than `max_secs` s") as soon
/// as it would go past that, so a small file of tiny packets cannot expand
/// into more samples than the longest legitimate input. `max_secs` is
/// capped at [`MAX_OGG_OPUS_SECONDS`].
pub fn read_ogg_opus_max(path: &Path, max_secs: u64) -> Result<Vec<i16>, MediaError> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if meta.len() > MAX_OGG_OPUS_FILE_BYTES {
        return Err(MediaError::Format(format!(
            "{}: Ogg Opus file of {} bytes is larger than the {MAX_OGG_OPUS_FILE_BYTES} accepted",
            path.display(),
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    read_ogg_opus_bytes_max(&bytes, max_secs).map_err(|e| match e {
        MediaError::Format(msg) => MediaError::Format(format!("{msg} ({})", path.display())),
        other => other,
    })
}

/// [`read_ogg_opus`] on the bytes of a file in memory.
pub fn read_ogg_opus_bytes(bytes: &[u8]) -> Result<Vec<i16>, MediaError> {
    read_ogg_opus_bytes_max(bytes, MAX_OGG_OPUS_SECONDS)
}

/// [`read_ogg_opus_max`] on the bytes of a file in memory.
pub fn read_ogg_opus_bytes_max(bytes: &[u8], max_secs: u64) -> Result<Vec<i16>, MediaError> {
    if bytes.len() < 4 || &bytes[..4] != b"OggS" {
        return Err(not_ogg_opus("no Ogg page at the start"));
    }
    let max_secs = max_secs.min(MAX_OGG_OPUS_SECONDS);
    let mut reader = Reader {
        max_secs,
        // The pre-skip is decoded too, and dropped at the end.
        max_samples: max_secs * u64::from(SAMPLE_RATE) + u64::from(u16::MAX),
        ..Reader::default()
    };
    let mut pos = 0usize;
    while pos < bytes.len() {
        match parse_page(&bytes[pos..]) {
            Ok((page, len)) => {
                reader.page(&page)?;
                pos += len;
            }
            // A file cut short: keep what came before.
            Err(PageError::Truncated) => break,
            Err(e) => {
                if pos == 0 {
                    return Err(not_ogg_opus(match e {
                        PageError::BadVersion(v) => format!("Ogg version {v}"),
                        _ => "first page is corrupt".to_string(),
                    }));
                }
                // Corrupt page: resynchronise on the next capture pattern.
                reader.lost();
                pos += 1;
                pos += bytes[pos..]
                    .windows(4)
                    .position(|w| w == b"OggS")
                    .unwrap_or(bytes.len() - pos);
            }
        }
    }
    reader.into_pcm()
}

/// Demultiplexing and decoding state of [`read_ogg_opus_bytes`].
#[derive(Default)]
struct Reader {
    serial: Option<u32>,
    next_seq: u32,
    /// Bytes of a packet continued on the next page.
    partial: Vec<u8>,
    /// The start of the current packet was lost: skip to its end.
    skipping: bool,
    packets_seen: u64,
    head: Option<Head>,
    decoder: Option<opus::Decoder>,
    /// Decoded mono samples, pre-skip included.
    pcm: Vec<i16>,
    buf: Vec<i16>,
    last_packet_samples: usize,
    /// Samples decoded from packets ending on the last page seen with one.
    last_page_samples: usize,
    last_granule: Option<u64>,
    eos: bool,
    /// The bound on the audio, as the caller gave it (seconds) and in
    /// decoded samples (pre-skip included).
    max_secs: u64,
    max_samples: u64,
}

impl Reader {
    /// Data was lost: drop any packet begun before it.
    fn lost(&mut self) {
        self.partial.clear();
    }

    fn page(&mut self, page: &Page<'_>) -> Result<(), MediaError> {
        match self.serial {
            None => {
                if page.flags & FLAG_BOS == 0 {
                    return Err(not_ogg_opus("first page does not begin a stream"));
                }
                self.serial = Some(page.serial);
            }
            Some(s) if s != page.serial => return Ok(()), // another stream
            Some(_) => {}
        }
        if self.eos {
            return Ok(()); // data after the end of the stream (chained file)
        }
        if self.packets_seen > 0 && page.seq != self.next_seq {
            self.lost();
        }
        self.next_seq = page.seq.wrapping_add(1);
        if page.flags & FLAG_CONTINUED == 0 {
            // A fresh packet starts here; one begun before (whose end was
            // lost) is dropped.
            self.partial.clear();
            self.skipping = false;
        } else if self.partial.is_empty() {
            // Continues a packet whose start was lost: skip to its end.
            self.skipping = true;
        }
        let mut at = 0usize;
        let mut page_samples = 0usize;
        let mut ended_any = false;
        for &lace in page.lacing {
            let seg = page.body.get(at..at + usize::from(lace)).unwrap_or(&[]);
            at += usize::from(lace);
            if !self.skipping {
                self.partial.extend_from_slice(seg);
                if self.partial.len() > MAX_READ_PACKET {
                    return Err(MediaError::Format(format!(
                        "Ogg Opus: packet larger than {MAX_READ_PACKET} bytes"
                    )));
                }
            }
            if lace < 255 {
                if self.skipping {
                    self.skipping = false;
                } else {
                    let packet = std::mem::take(&mut self.partial);
                    page_samples += self.packet(&packet)?;
                    ended_any = true;
                }
            }
        }
        if ended_any && page.granule != NO_GRANULE {
            self.last_granule = Some(page.granule);
            self.last_page_samples = page_samples;
        }
        if page.flags & FLAG_EOS != 0 {
            self.eos = true;
        }
        Ok(())
    }

    /// Handles one whole packet; returns the samples it decoded to.
    fn packet(&mut self, packet: &[u8]) -> Result<usize, MediaError> {
        self.packets_seen += 1;
        match self.packets_seen {
            1 => {
                let head = parse_head(packet)?;
                let channels = if head.channels == 2 {
                    opus::Channels::Stereo
                } else {
                    opus::Channels::Mono
                };
                let mut dec = opus::Decoder::new(SAMPLE_RATE, channels)?;
                if head.gain != 0 {
                    dec.set_gain(i32::from(head.gain))?;
                }
                self.buf = vec![0; MAX_PACKET_SAMPLES * usize::from(head.channels)];
                self.decoder = Some(dec);
                self.head = Some(head);
                self.last_packet_samples = FRAME_SAMPLES;
                Ok(0)
            }
            2 => {
                if !packet.starts_with(b"OpusTags") {
                    return Err(MediaError::Format(
                        "Ogg Opus: second packet is not an OpusTags header".into(),
                    ));
                }
                Ok(0)
            }
            _ => self.audio(packet),
        }
    }

    fn audio(&mut self, packet: &[u8]) -> Result<usize, MediaError> {
        let (Some(dec), Some(head)) = (self.decoder.as_mut(), self.head.as_ref()) else {
            return Ok(0);
        };
        let ch = usize::from(head.channels);
        let n = if packet.is_empty() {
            // A zero-length packet is a lost frame: conceal its length
            // (assumed that of the previous packet).
            let n = self.last_packet_samples;
            dec.decode(&[], &mut self.buf[..n * ch], false)?
        } else {
            let expect = opus::packet::get_nb_samples(packet, SAMPLE_RATE).map_err(|e| {
                MediaError::Format(format!(
                    "Ogg Opus: corrupt Opus packet {}: {e}",
                    self.packets_seen - 2
                ))
            })?;
            if expect == 0 || expect > MAX_PACKET_SAMPLES {
                return Err(MediaError::Format(format!(
                    "Ogg Opus: Opus packet {} claims {expect} samples",
                    self.packets_seen - 2
                )));
            }
            dec.decode(packet, &mut self.buf, false).map_err(|e| {
                MediaError::Format(format!(
                    "Ogg Opus: corrupt Opus packet {}: {e}",
                    self.packets_seen - 2
                ))
            })?
        };
        self.last_packet_samples = n.clamp(1, MAX_PACKET_SAMPLES);
        if (self.pcm.len() + n) as u64 > self.max_samples {
            return Err(MediaError::Format(format!(
                "Ogg Opus: longer than {} s, the most this file may hold",
                self.max_secs
            )));
        }
        let decoded = self.buf.get(..n * ch).unwrap_or(&[]);
        if ch == 2 {
            self.pcm.extend(
                decoded
                    .chunks_exact(2)
                    .map(|lr| ((i32::from(lr[0]) + i32::from(lr[1])) / 2) as i16),
            );
        } else {
            self.pcm.extend_from_slice(decoded);
        }
        Ok(n)
    }

    fn into_pcm(mut self) -> Result<Vec<i16>, MediaError> {
        let Some(head) = self.head else {
            return Err(not_ogg_opus("no OpusHead header"));
        };
        if self.packets_seen < 2 {
            return Err(MediaError::Format(
                "Ogg Opus: file ends before its OpusTags header".into(),
            ));
        }
        // End trimming: the last page's granule position may stop short of
        // the samples its packets decode to.
        if let Some(granule) = self.last_granule {
            let total = self.pcm.len() as u64;
            if let Some(extra) = total.checked_sub(granule) {
                let extra = extra.min(self.last_page_samples as u64) as usize;
                self.pcm.truncate(self.pcm.len() - extra);
            }
        }
        let skip = usize::from(head.pre_skip).min(self.pcm.len());
        self.pcm.drain(..skip);
        Ok(self.pcm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_known_value() {
        // Polynomial 0x04c11db7, unreflected, init 0, no final xor: the
        // POSIX cksum CRC (check value 0x765e7680) without its final
        // inversion.
        assert_eq!(ogg_crc(b""), 0);
        assert_eq!(ogg_crc(b"123456789"), 0x89a1_897f);
    }

    #[test]
    fn page_round_trip() {
        let packets = vec![vec![1u8; 10], vec![2u8; 255], vec![3u8; 600], Vec::new()];
        let page = build_page(FLAG_BOS, 12345, 0xdead_beef, 7, &packets);
        let (p, len) = parse_page(&page).expect("parses");
        assert_eq!(len, page.len());
        assert_eq!(p.flags, FLAG_BOS);
        assert_eq!(p.granule, 12345);
        assert_eq!(p.serial, 0xdead_beef);
        assert_eq!(p.seq, 7);
        assert_eq!(p.lacing, &[10, 255, 0, 255, 255, 90, 0]);
        assert_eq!(p.body.len(), 10 + 255 + 600);
        let mut bad = page.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(parse_page(&bad).err(), Some(PageError::BadCrc));
        assert_eq!(
            parse_page(&page[..page.len() - 1]).err(),
            Some(PageError::Truncated)
        );
        assert_eq!(parse_page(b"OggX").err(), Some(PageError::NoCapture));
    }

    #[test]
    fn head_parsing() {
        let h = parse_head(&opus_head(312)).expect("head");
        assert_eq!((h.channels, h.pre_skip, h.gain), (1, 312, 0));
        let mut stereo = opus_head(0);
        stereo[9] = 2;
        assert_eq!(parse_head(&stereo).expect("stereo").channels, 2);
        let mut six = opus_head(0);
        six[9] = 6;
        six[18] = 1;
        assert!(parse_head(&six).is_err());
        let mut v2 = opus_head(0);
        v2[8] = 0x10;
        assert!(parse_head(&v2).is_err());
        assert!(parse_head(b"OpusHea").is_err());
    }

    #[test]
    fn tags_validation() {
        assert!(opus_tags(&[("TITLE", "x = y")]).is_ok());
        assert!(opus_tags(&[("A=B", "x")]).is_err());
        assert!(opus_tags(&[("", "x")]).is_err());
        let big = "x".repeat(70_000);
        assert!(opus_tags(&[("TITLE", &big)]).is_err());
    }
}

#[cfg(test)]
mod bound_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An Ogg Opus file of `secs` seconds of silence, as the bytes of the
    /// file: a few bytes per 20 ms packet.
    fn silence_file(tag: &str, secs: u32) -> Vec<u8> {
        let path = std::env::temp_dir().join(format!("kl-ogg-{tag}-{}.opus", std::process::id()));
        let mut enc = OpusEncoder::new().unwrap();
        let packet = enc.encode(&[0i16; FRAME_SAMPLES]).unwrap();
        let mut w = OggOpusWriter::create(&path).unwrap();
        for _ in 0..secs * 50 {
            w.write_packet(&packet, FRAME_SAMPLES as u32).unwrap();
        }
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        bytes
    }

    #[test]
    fn decoding_stops_at_the_longest_legitimate_input() {
        let bytes = silence_file("long", 75);
        let decoded = 75 * SAMPLE_RATE as usize * 2;
        // The expansion the bound is there for: a small file, many samples.
        assert!(
            bytes.len() * 50 < decoded,
            "{} bytes for {decoded} bytes of samples",
            bytes.len()
        );
        let e = read_ogg_opus_bytes_max(&bytes, 60).unwrap_err();
        assert!(
            e.to_string().contains("longer than 60 s"),
            "a clear error: {e}"
        );
        // Whole, less the encoder's pre-skip.
        let whole = |pcm: &[i16], secs: usize| {
            let want = secs * SAMPLE_RATE as usize;
            pcm.len() <= want && pcm.len() + FRAME_SAMPLES >= want
        };
        let long = read_ogg_opus_bytes_max(&bytes, 120).unwrap();
        assert!(whole(&long, 75), "{}", long.len());
        // A file exactly as long as the bound is taken whole.
        let exact = silence_file("exact", 60);
        let pcm = read_ogg_opus_bytes_max(&exact, 60).unwrap();
        assert!(whole(&pcm, 60), "{}", pcm.len());
        // No caller gets more than the overall ceiling.
        let e = read_ogg_opus_bytes_max(&bytes, 0).unwrap_err();
        assert!(e.to_string().contains("longer than 0 s"), "{e}");
        assert_eq!(read_ogg_opus_bytes_max(&bytes, u64::MAX).unwrap(), long);
    }

    #[test]
    fn no_file_expands_past_a_quarter_of_an_hour() {
        // Two-byte packets of 120 ms each (six 20 ms frames of silence,
        // code 3): 16 minutes of audio in a few tens of kilobytes.
        let path = std::env::temp_dir().join(format!("kl-ogg-tiny-{}.opus", std::process::id()));
        let mut w = OggOpusWriter::create(&path).unwrap();
        let packet = [0xfb, 0x06];
        for _ in 0..(16 * 60 * 1000 / 120) {
            w.write_packet(&packet, 6 * FRAME_SAMPLES as u32).unwrap();
        }
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() < 64 * 1024, "{} bytes", bytes.len());
        // Every reader without a bound of its own stops at the ceiling,
        // before it holds more than 15 minutes of samples (86 MB).
        for e in [
            read_ogg_opus_bytes(&bytes).unwrap_err(),
            read_ogg_opus(&path).unwrap_err(),
            read_ogg_opus_bytes_max(&bytes, u64::MAX).unwrap_err(),
        ] {
            assert!(e.to_string().contains("longer than 900 s"), "{e}");
        }
        // Just under the ceiling, the same packets are taken whole.
        let under = &bytes[..bytes.len() * 14 / 16];
        let pcm = read_ogg_opus_bytes(under).unwrap();
        assert!(pcm.len() > 13 * 60 * SAMPLE_RATE as usize, "{}", pcm.len());
        let _ = std::fs::remove_file(&path);
    }
}
