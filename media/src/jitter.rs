//! Playout (jitter) buffer for received media, keyed by RTP sequence number.
//!
//! Sequence numbers are 16-bit and wrap; they are unwrapped internally to a
//! 64-bit index relative to the highest one accepted. The player calls
//! [`JitterBuffer::pop`] every 20 ms; playout starts once `target_depth`
//! frames are held (or once the first held frame has waited that many pops),
//! and after an underrun it re-buffers the same way.

use std::collections::{BTreeMap, BTreeSet};

/// Default bound on frames held (50 × 20 ms = 1 s).
pub const DEFAULT_MAX_FRAMES: usize = 50;
/// Sequence numbers remembered for duplicate detection.
const HISTORY: usize = 1024;
/// A packet further than this behind the playout point is "stale" (it cannot
/// be an ordinary late packet); several in a row mean the sender restarted
/// its sequence numbers, and the buffer re-synchronises to the new stream.
const STALE_DISTANCE: u64 = 200;
const STALE_RUN_TO_RESYNC: u32 = 3;
/// Pops for which the buffer must stay well above target before it is
/// trimmed back to target depth (bounds latency added by a burst).
const EXCESS_POPS_TO_TRIM: u32 = 100;
/// Unwrapped index of the first sequence number seen (leaves room below).
const BASE: u64 = 1 << 32;

/// What the player should do for the next 20 ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// Play (decode) this payload.
    Frame(Vec<u8>),
    /// The frame due now never arrived. `next` is the following frame's
    /// payload when it is already buffered: recover from its FEC
    /// (`OpusDecoder::decode_fec`), else conceal (`decode(None)`). The
    /// following frame itself is still returned by the next `pop`.
    Lost { next: Option<Vec<u8>> },
    /// Nothing to play: not started yet, or re-buffering after an underrun.
    Idle,
}

/// Counters kept by a [`JitterBuffer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets pushed, including duplicates and late ones.
    pub received: u64,
    /// Frames returned as [`Playout::Frame`].
    pub played: u64,
    /// Sequence numbers skipped during playout because they had not arrived
    /// in time ([`Playout::Lost`], plus gaps jumped when playout restarts
    /// after re-buffering). Underruns and frames never sent are not loss.
    pub lost: u64,
    /// Packets that arrived after their playout time had passed (dropped).
    pub late: u64,
    /// Packets already received (dropped).
    pub duplicate: u64,
    /// Buffered frames discarded unplayed: overflow of the cap, latency
    /// trimming after a burst, or a sequence-number restart by the sender.
    pub dropped: u64,
}

/// Adaptive-ish playout buffer. See the module documentation.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    target: usize,
    cap: usize,
    frames: BTreeMap<u64, Vec<u8>>,
    /// Next unwrapped index to play; `None` until playout first starts.
    next: Option<u64>,
    playing: bool,
    /// Idle pops while holding frames but not yet playing.
    waited: usize,
    highest: Option<u64>,
    recent: BTreeSet<u64>,
    stale_run: u32,
    excess_pops: u32,
    stats: JitterStats,
}

impl JitterBuffer {
    /// A buffer that holds `target_depth` frames (e.g. 3 = 60 ms) before
    /// playout starts, capped at [`DEFAULT_MAX_FRAMES`].
    pub fn new(target_depth: usize) -> Self {
        Self::with_max_frames(target_depth, DEFAULT_MAX_FRAMES)
    }

    /// Like [`JitterBuffer::new`] with a different cap on frames held. The
    /// target is at least 1 and the cap at least the target.
    pub fn with_max_frames(target_depth: usize, max_frames: usize) -> Self {
        let target = target_depth.max(1);
        Self {
            target,
            cap: max_frames.max(target),
            frames: BTreeMap::new(),
            next: None,
            playing: false,
            waited: 0,
            highest: None,
            recent: BTreeSet::new(),
            stale_run: 0,
            excess_pops: 0,
            stats: JitterStats::default(),
        }
    }

    /// Frames held before playout (re)starts.
    pub fn target_depth(&self) -> usize {
        self.target
    }

    /// Most frames held at once.
    pub fn max_frames(&self) -> usize {
        self.cap
    }

    /// Frames currently buffered.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Whether playout is running (not waiting to fill to target depth).
    pub fn is_playing(&self) -> bool {
        self.playing
    }

    /// Counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Back to the state of a new buffer (same target and cap), counters
    /// included. Use it when a new stream starts.
    pub fn reset(&mut self) {
        *self = Self::with_max_frames(self.target, self.cap);
    }

    fn unwrap_seq(&self, seq: u16) -> u64 {
        match self.highest {
            None => BASE + u64::from(seq),
            Some(h) => {
                let delta = i64::from(seq.wrapping_sub(h as u16) as i16);
                (h as i64).saturating_add(delta).max(0) as u64
            }
        }
    }

    fn remember(&mut self, ext: u64) {
        self.recent.insert(ext);
        while self.recent.len() > HISTORY {
            self.recent.pop_first();
        }
    }

    /// Forgets sequence state (not counters) after the sender restarted its
    /// sequence numbers.
    fn resync(&mut self) {
        self.stats.dropped += self.frames.len() as u64;
        self.frames.clear();
        self.next = None;
        self.playing = false;
        self.waited = 0;
        self.highest = None;
        self.recent.clear();
        self.stale_run = 0;
        self.excess_pops = 0;
    }

    /// Accepts a received packet. Duplicates and packets whose playout time
    /// has passed are counted and dropped. If the buffer would span more than
    /// its cap, the oldest frames are dropped.
    pub fn push(&mut self, seq: u16, payload: Vec<u8>) {
        self.stats.received += 1;
        let mut ext = self.unwrap_seq(seq);
        if self.recent.contains(&ext) {
            self.stats.duplicate += 1;
            return;
        }
        if let Some(next) = self.next {
            if ext < next {
                if next - ext > STALE_DISTANCE {
                    self.stale_run += 1;
                    if self.stale_run >= STALE_RUN_TO_RESYNC {
                        self.resync();
                        ext = self.unwrap_seq(seq);
                    } else {
                        self.stats.late += 1;
                        return;
                    }
                } else {
                    self.stale_run = 0;
                    self.stats.late += 1;
                    self.remember(ext);
                    return;
                }
            }
        }
        self.stale_run = 0;
        self.remember(ext);
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        self.frames.insert(ext, payload);
        self.enforce_cap();
    }

    fn enforce_cap(&mut self) {
        let (Some((&first, _)), Some((&last, _))) =
            (self.frames.first_key_value(), self.frames.last_key_value())
        else {
            return;
        };
        let base = self.next.map_or(first, |n| n.min(first));
        if last - base < self.cap as u64 {
            return;
        }
        let floor = last + 1 - self.cap as u64;
        while let Some(entry) = self.frames.first_entry() {
            if *entry.key() >= floor {
                break;
            }
            entry.remove();
            self.stats.dropped += 1;
        }
        if self.next.is_some() {
            self.next = self.frames.first_key_value().map(|(&k, _)| k);
        }
    }

    /// What to play for the next 20 ms; call once per frame period.
    pub fn pop(&mut self) -> Playout {
        if !self.playing {
            let Some((&first, _)) = self.frames.first_key_value() else {
                self.waited = 0;
                return Playout::Idle;
            };
            self.waited += 1;
            if self.frames.len() < self.target && self.waited < self.target {
                return Playout::Idle;
            }
            if let Some(next) = self.next {
                // Sequence numbers skipped while re-buffering never arrived.
                self.stats.lost += first.saturating_sub(next);
            }
            self.next = Some(first);
            self.playing = true;
            self.waited = 0;
            self.excess_pops = 0;
        }
        let Some(n) = self.next else {
            // Unreachable: `next` is set whenever playing.
            self.playing = false;
            return Playout::Idle;
        };
        if let Some(payload) = self.frames.remove(&n) {
            self.next = Some(n + 1);
            self.stats.played += 1;
            self.trim_excess();
            return Playout::Frame(payload);
        }
        if self.frames.is_empty() {
            // Underrun: not loss. Re-buffer to target depth.
            self.playing = false;
            self.waited = 0;
            return Playout::Idle;
        }
        self.stats.lost += 1;
        self.next = Some(n + 1);
        Playout::Lost {
            next: self.frames.get(&(n + 1)).cloned(),
        }
    }

    /// If the buffer stays well above target (a burst added latency), drop
    /// the oldest frames back down to target depth.
    fn trim_excess(&mut self) {
        if self.frames.len() <= 2 * self.target + 2 {
            self.excess_pops = 0;
            return;
        }
        self.excess_pops += 1;
        if self.excess_pops < EXCESS_POPS_TO_TRIM {
            return;
        }
        self.excess_pops = 0;
        while self.frames.len() > self.target {
            if self.frames.pop_first().is_some() {
                self.stats.dropped += 1;
            }
        }
        self.next = self.frames.first_key_value().map(|(&k, _)| k);
    }
}
