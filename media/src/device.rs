//! Sound-card input and output through cpal (ALSA on Linux).
//!
//! The device runs at whatever rate, channel count and sample format it
//! supports (48 kHz mono/stereo 16-bit integer or 32-bit float preferred);
//! audio is converted to and from this crate's 48 kHz mono i16 in the
//! device's callback. Between the callback and the caller sits a bounded
//! ring buffer of [`DEVICE_BUFFER_MS`] that drops its oldest samples when
//! full, so neither side ever blocks the other:
//!
//! * input: the callback pushes converted samples; [`Source::next_frame`]
//!   pops a frame, padding with silence when too little has arrived;
//! * output: [`Sink::write_frame`] pushes; the callback pops, playing silence
//!   when the buffer runs dry (and then waits for a little audio to gather
//!   again before resuming, so an underrun gives one clean gap rather than
//!   a crackle).
//!
//! cpal's stream is not `Send` on every platform, so each stream is created,
//! owned and finally dropped by a dedicated thread that waits until the
//! returned source or sink is dropped. All ALSA calls made by this module run
//! on such threads, with ALSA's own error printing captured (it would
//! otherwise go to stderr) and quoted in the returned error instead.

use std::collections::VecDeque;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::SupportedStreamConfigRange;
use cpal::{FromSample, Sample, SampleFormat, SizedSample, SupportedStreamConfig};

use crate::wav::to_i16;
use crate::{MediaError, Sink, Source, FRAME_SAMPLES, SAMPLE_RATE};

/// Capacity of the ring buffer between the sound card and the caller (ms).
pub const DEVICE_BUFFER_MS: u32 = 200;
/// [`DEVICE_BUFFER_MS`] in 48 kHz samples.
const RING_SAMPLES: usize = (SAMPLE_RATE / 1000 * DEVICE_BUFFER_MS) as usize;
/// How long opening a device or listing devices may take before giving up.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// One audio device as reported by [`list_devices`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Human-readable name (e.g. "HDA Intel PCH, ALC3246 Analog").
    pub name: String,
    /// The backend's identifier (for ALSA the PCM name, e.g. `default` or
    /// `hw:CARD=PCH,DEV=0`). Either this or `name` can be passed to
    /// [`open_input`] / [`open_output`].
    pub id: String,
    /// The device can (as far as the backend tells without opening it) record.
    pub is_input: bool,
    /// The device can (as far as the backend tells without opening it) play.
    pub is_output: bool,
    /// This is the system's default input device.
    pub is_default_input: bool,
    /// This is the system's default output device.
    pub is_default_output: bool,
}

/// Opens the default input device (`name == None`) or the one whose id or
/// name matches `name` (exactly, else as a case-insensitive substring), and
/// returns it as a never-exhausted [`Source`] of 48 kHz mono frames.
///
/// Fails quickly with [`MediaError::Device`] when there is no such device
/// or it cannot be opened (e.g. a machine without a sound card).
pub fn open_input(name: Option<&str>) -> Result<Box<dyn Source>, MediaError> {
    Ok(Box::new(open_device_source(name)?))
}

fn open_device_source(name: Option<&str>) -> Result<DeviceSource, MediaError> {
    let ring = Arc::new(Mutex::new(SampleRing::new(RING_SAMPLES)));
    let status = Arc::new(Mutex::new(StreamStatus::default()));
    let (cb_ring, cb_status) = (ring.clone(), status.clone());
    let wanted = name.map(str::to_owned);
    let (thread, description) = StreamThread::spawn("keyline-audio-in", move || {
        let host = cpal::default_host();
        let host_name = host.id().name();
        let device = find_device(&host, wanted.as_deref(), Direction::Input)?;
        let label = device_label(&device);
        let fail = |what: &str, e: cpal::Error| {
            device_error(
                Direction::Input,
                host_name,
                wanted.as_deref(),
                &label,
                what,
                e,
            )
        };
        let ranges: Vec<_> = device
            .supported_input_configs()
            .map_err(|e| fail("cannot open it", e))?
            .collect();
        let config = choose_config(&ranges, Direction::Input.preferred_channels())
            .or_else(|| device.default_input_config().ok())
            .ok_or_else(|| no_usable_format(Direction::Input, host_name, &label, &ranges))?;
        let stream = build_input(&device, &config, cb_ring, cb_status)
            .map_err(|e| fail("cannot start recording", e))?;
        stream
            .play()
            .map_err(|e| fail("cannot start recording", e))?;
        Ok((stream, describe(host_name, &label, &config)))
    })?;
    Ok(DeviceSource {
        ring,
        status,
        description,
        _thread: thread,
    })
}

/// Opens the default output device (`name == None`) or the one whose id or
/// name matches `name` (exactly, else as a case-insensitive substring), and
/// returns it as a [`Sink`] of 48 kHz mono frames.
///
/// Fails quickly with [`MediaError::Device`] when there is no such device
/// or it cannot be opened. Once open, [`Sink::write_frame`] fails only after
/// the device has gone away (e.g. a USB headset was unplugged).
pub fn open_output(name: Option<&str>) -> Result<Box<dyn Sink>, MediaError> {
    Ok(Box::new(open_device_sink(name)?))
}

fn open_device_sink(name: Option<&str>) -> Result<DeviceSink, MediaError> {
    let ring = Arc::new(Mutex::new(SampleRing::new(RING_SAMPLES)));
    let status = Arc::new(Mutex::new(StreamStatus::default()));
    let (cb_ring, cb_status) = (ring.clone(), status.clone());
    let wanted = name.map(str::to_owned);
    let (thread, description) = StreamThread::spawn("keyline-audio-out", move || {
        let host = cpal::default_host();
        let host_name = host.id().name();
        let device = find_device(&host, wanted.as_deref(), Direction::Output)?;
        let label = device_label(&device);
        let fail = |what: &str, e: cpal::Error| {
            device_error(
                Direction::Output,
                host_name,
                wanted.as_deref(),
                &label,
                what,
                e,
            )
        };
        let ranges: Vec<_> = device
            .supported_output_configs()
            .map_err(|e| fail("cannot open it", e))?
            .collect();
        let config = choose_config(&ranges, Direction::Output.preferred_channels())
            .or_else(|| device.default_output_config().ok())
            .ok_or_else(|| no_usable_format(Direction::Output, host_name, &label, &ranges))?;
        let stream = build_output(&device, &config, cb_ring, cb_status)
            .map_err(|e| fail("cannot start playback", e))?;
        stream
            .play()
            .map_err(|e| fail("cannot start playback", e))?;
        Ok((stream, describe(host_name, &label, &config)))
    })?;
    Ok(DeviceSink {
        ring,
        status,
        description,
        _thread: thread,
    })
}

/// Lists the audio devices of the default host. A machine without a sound
/// card gives an empty list (or only virtual devices), not an error; an
/// error means the audio system itself could not be queried.
pub fn list_devices() -> Result<Vec<DeviceInfo>, MediaError> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("keyline-audio-list".into())
        .spawn(move || {
            let log = alsa_log::capture();
            let result = enumerate().map_err(|e| with_alsa_log(e, &log));
            // The receiver may have given up waiting; nothing to do then.
            let _ = tx.send(result);
        })?;
    match rx.recv_timeout(OPEN_TIMEOUT) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => Err(MediaError::Device(format!(
            "listing audio devices timed out after {} s",
            OPEN_TIMEOUT.as_secs()
        ))),
        Err(RecvTimeoutError::Disconnected) => Err(MediaError::Device(
            "listing audio devices failed: the audio thread stopped unexpectedly".into(),
        )),
    }
}

fn enumerate() -> Result<Vec<DeviceInfo>, MediaError> {
    let host = cpal::default_host();
    let host_name = host.id().name();
    let default_in = host.default_input_device().and_then(|d| d.id().ok());
    let default_out = host.default_output_device().and_then(|d| d.id().ok());
    let devices = host
        .devices()
        .map_err(|e| MediaError::Device(format!("cannot list audio devices ({host_name}): {e}")))?;
    let mut out: Vec<DeviceInfo> = Vec::new();
    for device in devices {
        let Ok(id) = device.id() else { continue };
        let is_default_input = default_in.as_ref() == Some(&id);
        let is_default_output = default_out.as_ref() == Some(&id);
        out.push(DeviceInfo {
            name: device_name(&device),
            id: id.id().to_owned(),
            is_input: device.supports_input() || is_default_input,
            is_output: device.supports_output() || is_default_output,
            is_default_input,
            is_default_output,
        });
    }
    // The default devices may be virtual ones the enumeration leaves out.
    let defaults = [
        (host.default_input_device(), true),
        (host.default_output_device(), false),
    ];
    for (device, input) in defaults {
        let Some(device) = device else { continue };
        let Ok(id) = device.id() else { continue };
        match out.iter_mut().find(|d| d.id == id.id()) {
            Some(known) if input => (known.is_input, known.is_default_input) = (true, true),
            Some(known) => (known.is_output, known.is_default_output) = (true, true),
            None => out.push(DeviceInfo {
                name: device_name(&device),
                id: id.id().to_owned(),
                is_input: input,
                is_output: !input,
                is_default_input: input,
                is_default_output: !input,
            }),
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Input,
    Output,
}

impl Direction {
    fn word(self) -> &'static str {
        match self {
            Direction::Input => "input",
            Direction::Output => "output",
        }
    }

    /// Mono needs no down-mix when recording; speakers are usually stereo
    /// (and a mono stream may play on one side only).
    fn preferred_channels(self) -> u16 {
        match self {
            Direction::Input => 1,
            Direction::Output => 2,
        }
    }

    fn supported_by(self, device: &cpal::Device) -> bool {
        match self {
            Direction::Input => device.supports_input(),
            Direction::Output => device.supports_output(),
        }
    }
}

fn device_name(device: &cpal::Device) -> String {
    match device.description() {
        Ok(d) => d.name().to_owned(),
        Err(_) => device.id().map(|id| id.id().to_owned()).unwrap_or_default(),
    }
}

fn device_id(device: &cpal::Device) -> Option<String> {
    device.id().ok().map(|id| id.id().to_owned())
}

/// `"name" (id)`, or just `"id"` when the two are the same.
fn device_label(device: &cpal::Device) -> String {
    let name = device_name(device);
    match device_id(device) {
        Some(id) if id != name => format!("\"{name}\" ({id})"),
        _ => format!("\"{name}\""),
    }
}

fn find_device(
    host: &cpal::Host,
    wanted: Option<&str>,
    dir: Direction,
) -> Result<cpal::Device, MediaError> {
    let host_name = host.id().name();
    let word = dir.word();
    let Some(wanted) = wanted else {
        let default = match dir {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        };
        return default.ok_or_else(|| {
            MediaError::Device(format!(
                "no audio {word} device found ({host_name}): the system has no default {word} device"
            ))
        });
    };
    let devices: Vec<cpal::Device> = host
        .devices()
        .map_err(|e| {
            MediaError::Device(format!(
                "no audio {word} device named \"{wanted}\" ({host_name}): cannot list devices: {e}"
            ))
        })?
        .collect();
    let default = match dir {
        Direction::Input => host.default_input_device(),
        Direction::Output => host.default_output_device(),
    };
    let default_id = default.as_ref().and_then(device_id);
    // A device whose direction is unknown (ALSA's `default`) may do either.
    let usable = |d: &cpal::Device| {
        dir.supported_by(d)
            || !(d.supports_input() || d.supports_output())
            || device_id(d) == default_id
    };
    let candidates: Vec<&cpal::Device> = devices.iter().filter(|d| usable(d)).collect();
    let exact = candidates
        .iter()
        .find(|d| device_id(d).as_deref() == Some(wanted))
        .or_else(|| candidates.iter().find(|d| device_name(d) == wanted));
    if let Some(d) = exact {
        return Ok((*d).clone());
    }
    if default_id.as_deref() == Some(wanted) {
        if let Some(d) = default {
            return Ok(d);
        }
    }
    let needle = wanted.to_lowercase();
    let fuzzy = candidates.iter().find(|d| {
        device_name(d).to_lowercase().contains(&needle)
            || device_id(d).is_some_and(|id| id.to_lowercase().contains(&needle))
    });
    if let Some(d) = fuzzy {
        return Ok((*d).clone());
    }
    let known: Vec<String> = candidates.iter().map(|d| device_label(d)).collect();
    let known = if known.is_empty() {
        "there are none".to_owned()
    } else {
        format!("known {word} devices: {}", known.join(", "))
    };
    Err(MediaError::Device(format!(
        "no audio {word} device named \"{wanted}\" ({host_name}); {known}"
    )))
}

fn device_error(
    dir: Direction,
    host_name: &str,
    wanted: Option<&str>,
    label: &str,
    what: &str,
    e: cpal::Error,
) -> MediaError {
    let word = dir.word();
    match wanted {
        // The default device not opening is how a machine without a sound
        // card shows itself.
        None => MediaError::Device(format!(
            "no audio {word} device found ({host_name}): default device {label}: {what}: {e}"
        )),
        Some(_) => MediaError::Device(format!(
            "audio {word} device {label} ({host_name}): {what}: {e}"
        )),
    }
}

fn no_usable_format(
    dir: Direction,
    host_name: &str,
    label: &str,
    ranges: &[SupportedStreamConfigRange],
) -> MediaError {
    let offered: Vec<String> = ranges
        .iter()
        .map(|r| {
            format!(
                "{} ch {} {}-{} Hz",
                r.channels(),
                r.sample_format(),
                r.min_sample_rate(),
                r.max_sample_rate()
            )
        })
        .collect();
    MediaError::Device(format!(
        "audio {} device {label} ({host_name}) offers no usable format (offered: {})",
        dir.word(),
        if offered.is_empty() {
            "none".to_owned()
        } else {
            offered.join("; ")
        }
    ))
}

fn describe(host_name: &str, label: &str, config: &SupportedStreamConfig) -> String {
    format!(
        "{label} ({host_name}, {} Hz, {} ch, {})",
        config.sample_rate(),
        config.channels(),
        config.sample_format()
    )
}

/// Sample formats this module converts from and to.
fn format_supported(f: SampleFormat) -> bool {
    matches!(
        f,
        SampleFormat::I8
            | SampleFormat::I16
            | SampleFormat::I32
            | SampleFormat::I64
            | SampleFormat::U8
            | SampleFormat::U16
            | SampleFormat::U32
            | SampleFormat::U64
            | SampleFormat::F32
            | SampleFormat::F64
    )
}

/// How well a configuration suits: has 48 kHz, channel preference, format
/// preference, closeness of the rate to 48 kHz (greater is better).
type ConfigRank = (bool, u8, u8, std::cmp::Reverse<u32>);

/// Picks the best configuration among what a device offers: 48 kHz first,
/// then the preferred channel count (else mono/stereo, else anything), then
/// i16 or f32 (else any other format converted here), then the rate closest
/// to 48 kHz. `None` when nothing offered is usable.
fn choose_config(
    ranges: &[SupportedStreamConfigRange],
    preferred_channels: u16,
) -> Option<SupportedStreamConfig> {
    let mut best: Option<(ConfigRank, SupportedStreamConfig)> = None;
    for r in ranges {
        if r.channels() == 0
            || !format_supported(r.sample_format())
            || r.min_sample_rate() > r.max_sample_rate()
        {
            continue;
        }
        let rate = SAMPLE_RATE.clamp(r.min_sample_rate(), r.max_sample_rate());
        if rate == 0 {
            continue;
        }
        let Some(config) = r.try_with_sample_rate(rate) else {
            continue;
        };
        let channels = match r.channels() {
            c if c == preferred_channels => 2,
            1 | 2 => 1,
            _ => 0,
        };
        let format = match r.sample_format() {
            SampleFormat::I16 | SampleFormat::F32 => 1,
            _ => 0,
        };
        let key = (
            rate == SAMPLE_RATE,
            channels,
            format,
            std::cmp::Reverse(rate.abs_diff(SAMPLE_RATE)),
        );
        if best.as_ref().is_none_or(|(k, _)| key > *k) {
            best = Some((key, config));
        }
    }
    best.map(|(_, c)| c)
}

// --- ring buffer -----------------------------------------------------------

/// A bounded FIFO of 48 kHz mono samples that drops its oldest samples when
/// a push would overflow it.
#[derive(Debug)]
pub(crate) struct SampleRing {
    buf: VecDeque<i16>,
    capacity: usize,
    /// Samples discarded because the buffer was full.
    dropped: u64,
    /// Samples of silence handed out because the buffer was empty.
    missing: u64,
}

impl SampleRing {
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            buf: VecDeque::with_capacity(capacity),
            capacity,
            dropped: 0,
            missing: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends `samples`, discarding the oldest ones beyond the capacity.
    pub(crate) fn push_slice(&mut self, samples: &[i16]) {
        let incoming = if samples.len() > self.capacity {
            let skip = samples.len() - self.capacity;
            self.dropped += skip as u64;
            &samples[skip..]
        } else {
            samples
        };
        let overflow = (self.buf.len() + incoming.len()).saturating_sub(self.capacity);
        if overflow > 0 {
            self.buf.drain(..overflow);
            self.dropped += overflow as u64;
        }
        self.buf.extend(incoming.iter().copied());
    }

    /// The oldest sample, if any.
    pub(crate) fn pop(&mut self) -> Option<i16> {
        self.buf.pop_front()
    }

    /// Fills `out` with the oldest samples, padding with silence when there
    /// are too few. Returns how many real samples were copied.
    pub(crate) fn pop_into(&mut self, out: &mut [i16]) -> usize {
        let n = out.len().min(self.buf.len());
        for (o, s) in out.iter_mut().zip(self.buf.drain(..n)) {
            *o = s;
        }
        out[n..].fill(0);
        self.missing += (out.len() - n) as u64;
        n
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    pub(crate) fn missing(&self) -> u64 {
        self.missing
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data stays consistent even if a holder panicked: keep going.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// --- format conversion -----------------------------------------------------

/// Streaming linear-interpolation resampler (phase carried across calls).
#[derive(Debug, Clone)]
pub(crate) struct LinearResampler {
    /// Input samples per output sample.
    step: f64,
    /// Position of the next output sample after `prev`, in input samples.
    pos: f64,
    prev: Option<f32>,
}

impl LinearResampler {
    pub(crate) fn new(from: u32, to: u32) -> Self {
        let step = if from == 0 || to == 0 {
            1.0
        } else {
            f64::from(from) / f64::from(to)
        };
        Self {
            step,
            pos: 0.0,
            prev: None,
        }
    }

    /// Feeds one input sample; `emit` receives the output samples it
    /// completes (zero or more).
    pub(crate) fn push(&mut self, x: f32, mut emit: impl FnMut(f32)) {
        let Some(prev) = self.prev.replace(x) else {
            return;
        };
        while self.pos < 1.0 {
            emit(prev + (x - prev) * self.pos as f32);
            self.pos += self.step;
        }
        self.pos -= 1.0;
    }
}

/// Device input (any rate, channels, format) to 48 kHz mono i16.
#[derive(Debug)]
pub(crate) struct InputConverter {
    channels: usize,
    resampler: LinearResampler,
}

impl InputConverter {
    pub(crate) fn new(channels: u16, rate: u32) -> Self {
        Self {
            channels: usize::from(channels.max(1)),
            resampler: LinearResampler::new(rate, SAMPLE_RATE),
        }
    }

    /// Appends the conversion of the interleaved `data` to `out`.
    pub(crate) fn convert<T>(&mut self, data: &[T], out: &mut Vec<i16>)
    where
        T: Sample,
        f32: FromSample<T>,
    {
        let scale = 1.0 / self.channels as f32;
        for frame in data.chunks_exact(self.channels) {
            let sum: f32 = frame.iter().map(|&s| s.to_sample::<f32>()).sum();
            let mono = sum * scale;
            let mono = if mono.is_finite() { mono } else { 0.0 };
            self.resampler.push(mono, |v| out.push(to_i16(v)));
        }
    }
}

/// Output samples gathered before playback (re)starts after running dry:
/// at least this much, or one device period plus a frame if that is more.
const OUTPUT_PRIME_SAMPLES: usize = 2 * FRAME_SAMPLES;

/// 48 kHz mono i16 to device output (any rate, channels, format).
#[derive(Debug)]
pub(crate) struct OutputConverter {
    channels: usize,
    /// 48 kHz to the device rate.
    resampler: LinearResampler,
    /// Device-rate mono samples converted but not yet played.
    pending: VecDeque<f32>,
    /// Whether playback is running (else waiting for the buffer to fill).
    playing: bool,
    /// Ratio of 48 kHz samples to device samples.
    ratio: f64,
}

impl OutputConverter {
    pub(crate) fn new(channels: u16, rate: u32) -> Self {
        Self {
            channels: usize::from(channels.max(1)),
            resampler: LinearResampler::new(SAMPLE_RATE, rate),
            pending: VecDeque::new(),
            playing: false,
            ratio: if rate == 0 {
                1.0
            } else {
                f64::from(SAMPLE_RATE) / f64::from(rate)
            },
        }
    }

    /// Fills the interleaved `out` from `ring`, with silence where the ring
    /// runs dry.
    pub(crate) fn fill<T>(&mut self, out: &mut [T], ring: &mut SampleRing)
    where
        T: Sample + FromSample<f32>,
    {
        let frames = out.len() / self.channels;
        if !self.playing {
            let period = (frames as f64 * self.ratio).ceil() as usize + FRAME_SAMPLES;
            let prime = period.max(OUTPUT_PRIME_SAMPLES).min(ring.capacity() / 2);
            self.playing = ring.len() >= prime;
        }
        while self.pending.len() < frames {
            let x = if self.playing {
                match ring.pop() {
                    Some(s) => f32::from(s) / 32768.0,
                    None => {
                        self.playing = false;
                        ring.missing += 1;
                        0.0
                    }
                }
            } else {
                0.0
            };
            let pending = &mut self.pending;
            self.resampler.push(x, |v| pending.push_back(v));
        }
        for frame in out.chunks_exact_mut(self.channels) {
            let v = self.pending.pop_front().unwrap_or(0.0);
            frame.fill(T::from_sample(v));
        }
        // A partial trailing frame cannot happen, but must not stay garbage.
        let whole = frames * self.channels;
        out[whole..].fill(T::EQUILIBRIUM);
    }
}

// --- streams ---------------------------------------------------------------

/// What the stream's error callback has reported.
#[derive(Debug, Default)]
struct StreamStatus {
    /// A fatal error: the device is gone, the stream no longer runs.
    failed: Option<String>,
    /// The most recent non-fatal error (e.g. an xrun).
    last_warning: Option<String>,
}

fn error_callback(status: Arc<Mutex<StreamStatus>>) -> impl FnMut(cpal::Error) + Send + 'static {
    move |e: cpal::Error| {
        let fatal = matches!(
            e.kind(),
            cpal::ErrorKind::DeviceNotAvailable
                | cpal::ErrorKind::HostUnavailable
                | cpal::ErrorKind::StreamInvalidated
                | cpal::ErrorKind::PermissionDenied
        );
        let mut st = lock(&status);
        if fatal {
            st.failed = Some(e.to_string());
        } else {
            st.last_warning = Some(e.to_string());
        }
    }
}

fn build_input(
    device: &cpal::Device,
    config: &SupportedStreamConfig,
    ring: Arc<Mutex<SampleRing>>,
    status: Arc<Mutex<StreamStatus>>,
) -> Result<cpal::Stream, cpal::Error> {
    match config.sample_format() {
        SampleFormat::I8 => input_stream::<i8>(device, config, ring, status),
        SampleFormat::I16 => input_stream::<i16>(device, config, ring, status),
        SampleFormat::I32 => input_stream::<i32>(device, config, ring, status),
        SampleFormat::I64 => input_stream::<i64>(device, config, ring, status),
        SampleFormat::U8 => input_stream::<u8>(device, config, ring, status),
        SampleFormat::U16 => input_stream::<u16>(device, config, ring, status),
        SampleFormat::U32 => input_stream::<u32>(device, config, ring, status),
        SampleFormat::U64 => input_stream::<u64>(device, config, ring, status),
        SampleFormat::F32 => input_stream::<f32>(device, config, ring, status),
        SampleFormat::F64 => input_stream::<f64>(device, config, ring, status),
        other => Err(unsupported_format(other)),
    }
}

fn build_output(
    device: &cpal::Device,
    config: &SupportedStreamConfig,
    ring: Arc<Mutex<SampleRing>>,
    status: Arc<Mutex<StreamStatus>>,
) -> Result<cpal::Stream, cpal::Error> {
    match config.sample_format() {
        SampleFormat::I8 => output_stream::<i8>(device, config, ring, status),
        SampleFormat::I16 => output_stream::<i16>(device, config, ring, status),
        SampleFormat::I32 => output_stream::<i32>(device, config, ring, status),
        SampleFormat::I64 => output_stream::<i64>(device, config, ring, status),
        SampleFormat::U8 => output_stream::<u8>(device, config, ring, status),
        SampleFormat::U16 => output_stream::<u16>(device, config, ring, status),
        SampleFormat::U32 => output_stream::<u32>(device, config, ring, status),
        SampleFormat::U64 => output_stream::<u64>(device, config, ring, status),
        SampleFormat::F32 => output_stream::<f32>(device, config, ring, status),
        SampleFormat::F64 => output_stream::<f64>(device, config, ring, status),
        other => Err(unsupported_format(other)),
    }
}

fn unsupported_format(f: SampleFormat) -> cpal::Error {
    cpal::Error::with_message(
        cpal::ErrorKind::UnsupportedConfig,
        format!("sample format {f} is not supported"),
    )
}

fn input_stream<T>(
    device: &cpal::Device,
    config: &SupportedStreamConfig,
    ring: Arc<Mutex<SampleRing>>,
    status: Arc<Mutex<StreamStatus>>,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + Send + 'static,
    f32: FromSample<T>,
{
    let mut converter = InputConverter::new(config.channels(), config.sample_rate());
    let mut scratch: Vec<i16> = Vec::with_capacity(RING_SAMPLES);
    device.build_input_stream::<T, _, _>(
        config.config(),
        move |data: &[T], _: &cpal::InputCallbackInfo| {
            scratch.clear();
            converter.convert(data, &mut scratch);
            lock(&ring).push_slice(&scratch);
        },
        error_callback(status),
        None,
    )
}

fn output_stream<T>(
    device: &cpal::Device,
    config: &SupportedStreamConfig,
    ring: Arc<Mutex<SampleRing>>,
    status: Arc<Mutex<StreamStatus>>,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + FromSample<f32> + Send + 'static,
{
    let mut converter = OutputConverter::new(config.channels(), config.sample_rate());
    device.build_output_stream::<T, _, _>(
        config.config(),
        move |data: &mut [T], _: &cpal::OutputCallbackInfo| {
            converter.fill(data, &mut lock(&ring));
        },
        error_callback(status),
        None,
    )
}

/// The thread that owns a cpal stream; dropping this stops and joins it.
struct StreamThread {
    stop: Option<mpsc::Sender<()>>,
    join: Option<JoinHandle<()>>,
}

impl StreamThread {
    /// Runs `open` on a new thread and keeps the stream it returns alive
    /// there until this handle is dropped. Returns `open`'s description, or
    /// its error (or a timeout error if it takes more than [`OPEN_TIMEOUT`]).
    fn spawn<F>(name: &str, open: F) -> Result<(Self, String), MediaError>
    where
        F: FnOnce() -> Result<(cpal::Stream, String), MediaError> + Send + 'static,
    {
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<String, MediaError>>(1);
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let join = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let log = alsa_log::capture();
                match open() {
                    Ok((stream, description)) => {
                        if ready_tx.send(Ok(description)).is_ok() {
                            // Blocks until the handle drops its sender.
                            let _ = stop_rx.recv();
                        }
                        drop(stream);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(with_alsa_log(e, &log)));
                    }
                }
            })?;
        let mut thread = Self {
            stop: Some(stop_tx),
            join: Some(join),
        };
        match ready_rx.recv_timeout(OPEN_TIMEOUT) {
            Ok(Ok(description)) => Ok((thread, description)),
            Ok(Err(e)) => Err(e),
            Err(RecvTimeoutError::Timeout) => {
                // Let the thread finish (and close the device) on its own.
                thread.stop = None;
                thread.join = None;
                Err(MediaError::Device(format!(
                    "opening the audio device timed out after {} s",
                    OPEN_TIMEOUT.as_secs()
                )))
            }
            Err(RecvTimeoutError::Disconnected) => Err(MediaError::Device(
                "opening the audio device failed: the audio thread stopped unexpectedly".into(),
            )),
        }
    }
}

impl Drop for StreamThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(join) = self.join.take() {
            // A panic on that thread has nothing more to tell here.
            let _ = join.join();
        }
    }
}

/// A sound card's input as a [`Source`].
struct DeviceSource {
    ring: Arc<Mutex<SampleRing>>,
    status: Arc<Mutex<StreamStatus>>,
    description: String,
    _thread: StreamThread,
}

impl std::fmt::Debug for DeviceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = lock(&self.ring);
        f.debug_struct("DeviceSource")
            .field("device", &self.description)
            .field("buffered", &ring.len())
            .field("dropped", &ring.dropped())
            .field("missing", &ring.missing())
            .field("status", &*lock(&self.status))
            .finish()
    }
}

impl Source for DeviceSource {
    fn next_frame(&mut self, out: &mut [i16]) -> bool {
        lock(&self.ring).pop_into(out);
        true
    }
}

/// A sound card's output as a [`Sink`].
struct DeviceSink {
    ring: Arc<Mutex<SampleRing>>,
    status: Arc<Mutex<StreamStatus>>,
    description: String,
    _thread: StreamThread,
}

impl std::fmt::Debug for DeviceSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = lock(&self.ring);
        f.debug_struct("DeviceSink")
            .field("device", &self.description)
            .field("buffered", &ring.len())
            .field("dropped", &ring.dropped())
            .field("missing", &ring.missing())
            .field("status", &*lock(&self.status))
            .finish()
    }
}

impl Sink for DeviceSink {
    fn write_frame(&mut self, pcm: &[i16]) -> Result<(), MediaError> {
        if let Some(e) = &lock(&self.status).failed {
            return Err(MediaError::Device(format!(
                "audio output device {} stopped: {e}",
                self.description
            )));
        }
        lock(&self.ring).push_slice(pcm);
        Ok(())
    }
}

// --- ALSA's own error printing ---------------------------------------------

/// Appends ALSA's last complaint (if it made one) to a device error.
fn with_alsa_log(e: MediaError, log: &alsa_log::AlsaLog) -> MediaError {
    match (e, log.last_message()) {
        (MediaError::Device(msg), Some(alsa)) => {
            MediaError::Device(format!("{msg} [ALSA: {alsa}]"))
        }
        (e, _) => e,
    }
}

#[cfg(any(
    target_os = "linux",
    target_os = "dragonfly",
    target_os = "freebsd",
    target_os = "netbsd"
))]
mod alsa_log {
    use std::cell::RefCell;
    use std::rc::Rc;

    /// ALSA's messages for the current thread, captured instead of printed.
    pub(super) struct AlsaLog(Option<Rc<RefCell<alsa::Output>>>);

    /// Redirects ALSA's error printing on this thread into a buffer.
    pub(super) fn capture() -> AlsaLog {
        AlsaLog(alsa::Output::local_error_handler().ok())
    }

    impl AlsaLog {
        /// The last line ALSA printed, if any.
        pub(super) fn last_message(&self) -> Option<String> {
            let out = self.0.as_ref()?.try_borrow().ok()?;
            let text = out.to_string();
            text.lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty())
                .map(str::to_owned)
        }
    }
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "dragonfly",
    target_os = "freebsd",
    target_os = "netbsd"
)))]
mod alsa_log {
    /// Nothing to capture without ALSA.
    pub(super) struct AlsaLog;

    pub(super) fn capture() -> AlsaLog {
        AlsaLog
    }

    impl AlsaLog {
        pub(super) fn last_message(&self) -> Option<String> {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{detect_tone, goertzel_power};

    #[test]
    fn ring_keeps_newest_and_pads_with_silence() {
        let mut ring = SampleRing::new(5);
        ring.push_slice(&[1, 2, 3]);
        ring.push_slice(&[4, 5, 6, 7]);
        assert_eq!(ring.len(), 5);
        assert_eq!(ring.dropped(), 2);
        let mut out = [9i16; 3];
        assert_eq!(ring.pop_into(&mut out), 3);
        assert_eq!(out, [3, 4, 5]);
        let mut out = [9i16; 4];
        assert_eq!(ring.pop_into(&mut out), 2);
        assert_eq!(out, [6, 7, 0, 0]);
        assert_eq!(ring.missing(), 2);
        assert_eq!(ring.pop_into(&mut out), 0);
        assert_eq!(out, [0; 4]);
        // A push longer than the whole buffer keeps its tail.
        ring.push_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut out = [0i16; 5];
        ring.pop_into(&mut out);
        assert_eq!(out, [4, 5, 6, 7, 8]);
        assert_eq!(ring.dropped(), 5);
        assert_eq!(ring.pop(), None);
    }

    #[test]
    fn ring_capacity_is_200ms() {
        assert_eq!(RING_SAMPLES, 9_600);
        assert_eq!(SampleRing::new(0).capacity(), 1);
    }

    #[test]
    fn resampler_identity_and_ratio() {
        let mut r = LinearResampler::new(48_000, 48_000);
        let mut out = Vec::new();
        for i in 0..10 {
            r.push(i as f32, |v| out.push(v));
        }
        // One sample of latency, otherwise a pass-through.
        assert_eq!(out, (0..9).map(|i| i as f32).collect::<Vec<_>>());

        // Chunked streaming gives the right long-run count.
        let mut r = LinearResampler::new(44_100, 48_000);
        let mut n = 0usize;
        for _ in 0..44_100 {
            r.push(0.0, |_| n += 1);
        }
        assert!((47_998..=48_001).contains(&n), "{n}");
        let mut r = LinearResampler::new(48_000, 8_000);
        let mut n = 0usize;
        for _ in 0..48_000 {
            r.push(0.0, |_| n += 1);
        }
        assert!((7_999..=8_001).contains(&n), "{n}");
    }

    #[test]
    fn resampler_interpolates_a_ramp() {
        // 16 kHz -> 48 kHz: points one third of the way between inputs.
        let mut r = LinearResampler::new(16_000, 48_000);
        let mut out = Vec::new();
        for i in 0..4 {
            r.push(i as f32 * 3.0, |v| out.push(v));
        }
        let want: Vec<f32> = (0..9).map(|i| i as f32).collect();
        assert_eq!(out.len(), want.len());
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{out:?}");
        }
    }

    /// Interleaved stereo f32 at `rate` with `hz` on both channels.
    fn stereo_tone(hz: f32, rate: u32, seconds: f32, amp: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        let mut v = Vec::with_capacity(2 * n);
        for i in 0..n {
            let s = amp * (std::f32::consts::TAU * hz * i as f32 / rate as f32).sin();
            v.push(s);
            v.push(s);
        }
        v
    }

    #[test]
    fn input_stereo_f32_44k1_becomes_mono_i16_48k_keeping_the_tone() {
        let data = stereo_tone(1000.0, 44_100, 1.0, 0.5);
        let mut conv = InputConverter::new(2, 44_100);
        let mut out = Vec::new();
        // In callback-sized chunks (odd sizes, whole frames).
        for chunk in data.chunks(2 * 441) {
            conv.convert(chunk, &mut out);
        }
        assert!((47_990..=48_001).contains(&out.len()), "{}", out.len());
        let candidates = [440.0, 697.0, 941.0, 1000.0, 1209.0, 1477.0];
        let frames: Vec<&[i16]> = out.chunks_exact(FRAME_SAMPLES).collect();
        assert!(frames.len() >= 49);
        for frame in &frames {
            assert_eq!(detect_tone(frame, &candidates), Some(1000.0));
        }
        // Amplitude preserved: 0.5 full scale is about 16384 peak.
        let p = goertzel_power(frames[10], 1000.0).sqrt();
        assert!((15_500.0..17_000.0).contains(&p), "{p}");
    }

    #[test]
    fn input_downmixes_channels() {
        // Left +0.5, right -0.5 cancels; left 0.5, right 0.5 stays (the
        // last frame is held back by the resampler's one-sample latency).
        let mut conv = InputConverter::new(2, 48_000);
        let mut out = Vec::new();
        conv.convert(&[0.5f32, -0.5, 0.5, -0.5, 0.5, 0.5, 0.5, 0.5], &mut out);
        assert_eq!(out, vec![0, 0, 16_384]);
        let mut conv = InputConverter::new(1, 48_000);
        let mut out = Vec::new();
        conv.convert(&[i16::MIN, 0, 16_384, 0], &mut out);
        assert_eq!(out, vec![-32_767, 0, 16_384]);
    }

    #[test]
    fn output_mono_i16_48k_becomes_stereo_f32_44k1_keeping_the_tone() {
        let mut ring = SampleRing::new(RING_SAMPLES);
        let mut conv = OutputConverter::new(2, 44_100);
        let mut tone = crate::ToneSource::new(1000.0, 16_000);
        let mut frame = vec![0i16; FRAME_SAMPLES];
        let mut played: Vec<f32> = Vec::new();
        // The sender writes 20 ms frames; the device pulls 10 ms periods.
        for _ in 0..50 {
            tone.next_frame(&mut frame);
            ring.push_slice(&frame);
            for _ in 0..2 {
                let mut buf = vec![0f32; 2 * 441];
                conv.fill(&mut buf, &mut ring);
                played.extend_from_slice(&buf);
            }
        }
        // Left and right are identical.
        assert!(played.chunks_exact(2).all(|f| f[0] == f[1]));
        // Priming holds back the first ~40 ms, then it plays continuously.
        let left: Vec<f32> = played.chunks_exact(2).map(|f| f[0]).collect();
        let first = left
            .iter()
            .position(|v| v.abs() > 1e-6)
            .unwrap_or(left.len());
        assert!(first <= 2 * 441 * 3, "started after {first} samples");
        // Back to 48 kHz i16 for the analysis.
        let mut back = Vec::new();
        let mut r = LinearResampler::new(44_100, 48_000);
        for &v in &left[first..] {
            r.push(v, |x| back.push(to_i16(x)));
        }
        let frames: Vec<&[i16]> = back.chunks_exact(FRAME_SAMPLES).collect();
        assert!(frames.len() >= 40, "{}", frames.len());
        for f in &frames[..frames.len() - 1] {
            assert_eq!(detect_tone(f, &[440.0, 1000.0, 1477.0]), Some(1000.0));
        }
    }

    #[test]
    fn output_underrun_is_silence_and_regathers() {
        let mut ring = SampleRing::new(RING_SAMPLES);
        let mut conv = OutputConverter::new(1, 48_000);
        let mut buf = vec![7i16; 480];
        conv.fill(&mut buf, &mut ring);
        assert!(buf.iter().all(|&s| s == 0));
        // Less than the priming amount: still silence.
        ring.push_slice(&[1000; FRAME_SAMPLES]);
        conv.fill(&mut buf, &mut ring);
        assert!(buf.iter().all(|&s| s == 0));
        assert_eq!(ring.len(), FRAME_SAMPLES);
        // Enough gathered: plays.
        ring.push_slice(&[1000; FRAME_SAMPLES]);
        conv.fill(&mut buf, &mut ring);
        assert!(
            buf[2..].iter().all(|&s| (999..=1001).contains(&s)),
            "{buf:?}"
        );
    }

    #[test]
    fn output_formats_convert() {
        let mut ring = SampleRing::new(RING_SAMPLES);
        ring.push_slice(&[16_384; 4 * FRAME_SAMPLES]);
        let mut conv = OutputConverter::new(2, 48_000);
        let mut buf = vec![0u16; 64];
        conv.fill(&mut buf, &mut ring);
        // The first sample is the resampler's start-up; then 0.5 above mid.
        assert!(buf[4..].iter().all(|&s| s == 32_768 + 16_384), "{buf:?}");
    }

    #[test]
    fn chooses_48k_mono_i16_when_offered() {
        use cpal::SupportedBufferSize::Unknown;
        let ranges = [
            SupportedStreamConfigRange::new(2, 8_000, 192_000, Unknown, SampleFormat::I32),
            SupportedStreamConfigRange::new(1, 44_100, 44_100, Unknown, SampleFormat::I16),
            SupportedStreamConfigRange::new(1, 8_000, 96_000, Unknown, SampleFormat::I16),
            SupportedStreamConfigRange::new(2, 8_000, 96_000, Unknown, SampleFormat::F32),
        ];
        let c = choose_config(&ranges, 1).expect("a config");
        assert_eq!(
            (c.sample_rate(), c.channels(), c.sample_format()),
            (48_000, 1, SampleFormat::I16)
        );
        let c = choose_config(&ranges, 2).expect("a config");
        assert_eq!(
            (c.sample_rate(), c.channels(), c.sample_format()),
            (48_000, 2, SampleFormat::F32)
        );
        // Only 44.1 kHz and an odd format: take it and convert.
        let ranges = [
            SupportedStreamConfigRange::new(6, 44_100, 44_100, Unknown, SampleFormat::U8),
            SupportedStreamConfigRange::new(2, 22_050, 44_100, Unknown, SampleFormat::I32),
            SupportedStreamConfigRange::new(2, 48_000, 48_000, Unknown, SampleFormat::DsdU8),
        ];
        let c = choose_config(&ranges, 1).expect("a config");
        assert_eq!(
            (c.sample_rate(), c.channels(), c.sample_format()),
            (44_100, 2, SampleFormat::I32)
        );
        assert!(choose_config(&ranges[2..], 1).is_none());
        assert!(choose_config(&[], 1).is_none());
    }

    /// ALSA's `null` device, where alsa-lib's configuration provides it:
    /// the callbacks really run and move audio through the rings.
    #[test]
    fn null_device_callbacks_move_audio() {
        let has_null = list_devices().is_ok_and(|d| d.iter().any(|d| d.id == "null"));
        if !has_null {
            return;
        }
        let mut sink = open_device_sink(Some("null")).expect("null output");
        let src = open_device_source(Some("null")).expect("null input");
        eprintln!("{sink:?}\n{src:?}");
        let frame = vec![1000i16; FRAME_SAMPLES];
        for _ in 0..5 {
            sink.write_frame(&frame).expect("write");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while (lock(&sink.ring).len() > 0 || lock(&src.ring).len() == 0)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("{sink:?}\n{src:?}");
        assert_eq!(
            lock(&sink.ring).len(),
            0,
            "output callback drained the ring"
        );
        assert!(lock(&src.ring).len() > 0, "input callback filled the ring");
        assert!(lock(&sink.status).failed.is_none());
    }

    #[test]
    fn handles_are_send() {
        fn is_send<T: Send>() {}
        is_send::<DeviceSource>();
        is_send::<DeviceSink>();
    }
}
