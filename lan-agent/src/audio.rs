//! Turning `--audio-in` / `--audio-out` specs into sources and sinks.

use std::path::Path;

use keyline_media::{NullSink, SilenceSource, Sink, Source, WavSink};

/// `device` (the sound card), `tone:HZ`, `silence`, or a WAV file. A
/// missing sound card is reported and replaced by silence: a station
/// without audio hardware still rings, answers and records.
pub fn open_source(spec: &str) -> anyhow::Result<Box<dyn Source>> {
    if spec == "device" || spec.starts_with("device:") {
        let name = spec.strip_prefix("device:");
        return Ok(match open_input_device(name) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("keyline-agent: no microphone ({e}); sending silence");
                Box::new(SilenceSource::new())
            }
        });
    }
    Ok(keyline_media::parse_source(spec)?)
}

/// `device`, `null`, or a WAV file to write what the station hears.
pub fn open_sink(spec: &str) -> anyhow::Result<Box<dyn Sink>> {
    if spec == "device" || spec.starts_with("device:") {
        let name = spec.strip_prefix("device:");
        return Ok(match open_output_device(name) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("keyline-agent: no speaker ({e}); audio output discarded");
                Box::new(NullSink::new())
            }
        });
    }
    if spec == "null" {
        return Ok(Box::new(NullSink::new()));
    }
    Ok(Box::new(WavSink::create(Path::new(spec))?))
}

#[cfg(feature = "device")]
fn open_input_device(name: Option<&str>) -> anyhow::Result<Box<dyn Source>> {
    Ok(keyline_media::device::open_input(name)?)
}

#[cfg(feature = "device")]
fn open_output_device(name: Option<&str>) -> anyhow::Result<Box<dyn Sink>> {
    Ok(keyline_media::device::open_output(name)?)
}

#[cfg(not(feature = "device"))]
fn open_input_device(_name: Option<&str>) -> anyhow::Result<Box<dyn Source>> {
    anyhow::bail!("this build has no sound-card support (built without the `device` feature)")
}

#[cfg(not(feature = "device"))]
fn open_output_device(_name: Option<&str>) -> anyhow::Result<Box<dyn Sink>> {
    anyhow::bail!("this build has no sound-card support (built without the `device` feature)")
}
