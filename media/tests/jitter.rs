//! Jitter buffer behaviour: ordering, loss accounting, wrap, late packets,
//! underrun, caps, and property tests.

use keyline_media::jitter::DEFAULT_MAX_FRAMES;
use keyline_media::{JitterBuffer, JitterStats, Playout};
use proptest::prelude::*;

fn p(seq: u16) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

fn frame(seq: u16) -> Playout {
    Playout::Frame(p(seq))
}

/// Pops until `Idle` (at most `limit` times), returning what came out.
fn drain(jb: &mut JitterBuffer, limit: usize) -> Vec<Playout> {
    let mut out = Vec::new();
    for _ in 0..limit {
        match jb.pop() {
            Playout::Idle => break,
            other => out.push(other),
        }
    }
    out
}

#[test]
fn in_order_stream_starts_at_target_depth() {
    let mut jb = JitterBuffer::new(3);
    assert_eq!(jb.pop(), Playout::Idle, "nothing yet");
    let mut out = Vec::new();
    for seq in 0..10u16 {
        jb.push(seq, p(seq));
        out.push(jb.pop());
    }
    // One push and one pop per tick: two Idle ticks, then frames in order.
    assert_eq!(out[0], Playout::Idle);
    assert_eq!(out[1], Playout::Idle);
    for (i, o) in out[2..].iter().enumerate() {
        assert_eq!(*o, frame(i as u16));
    }
    assert_eq!(drain(&mut jb, 10), vec![frame(8), frame(9)]);
    let s = jb.stats();
    assert_eq!(
        s,
        JitterStats {
            received: 10,
            played: 10,
            ..JitterStats::default()
        }
    );
}

#[test]
fn reordered_packets_come_out_in_order() {
    let mut jb = JitterBuffer::new(3);
    let arrival = [1u16, 0, 3, 2, 5, 4, 7, 6, 9, 8];
    let mut out = Vec::new();
    for &seq in &arrival {
        jb.push(seq, p(seq));
        out.push(jb.pop());
    }
    out.extend(drain(&mut jb, 20));
    let frames: Vec<Playout> = out.into_iter().filter(|o| *o != Playout::Idle).collect();
    assert_eq!(frames, (0..10).map(frame).collect::<Vec<_>>());
    assert_eq!(jb.stats().lost, 0);
    assert_eq!(jb.stats().late, 0);
}

#[test]
fn duplicates_are_counted_and_dropped() {
    let mut jb = JitterBuffer::new(2);
    jb.push(0, p(0));
    jb.push(0, p(0));
    jb.push(1, p(1));
    jb.push(1, vec![0xee]);
    assert_eq!(jb.len(), 2);
    assert_eq!(jb.pop(), frame(0));
    // A duplicate of a frame already played is a duplicate, not late.
    jb.push(0, p(0));
    assert_eq!(jb.pop(), frame(1));
    let s = jb.stats();
    assert_eq!((s.received, s.duplicate, s.late, s.played), (5, 3, 0, 2));
}

#[test]
fn lost_packets_are_counted_exactly_with_fec_hint() {
    let mut jb = JitterBuffer::new(3);
    let missing = [5u16, 9, 10];
    for seq in 0..20u16 {
        if !missing.contains(&seq) {
            jb.push(seq, p(seq));
        }
    }
    let out = drain(&mut jb, 40);
    assert_eq!(out.len(), 20);
    for (seq, o) in out.iter().enumerate() {
        let seq = seq as u16;
        let want = match seq {
            5 => Playout::Lost { next: Some(p(6)) },
            9 => Playout::Lost { next: None },
            10 => Playout::Lost { next: Some(p(11)) },
            _ => frame(seq),
        };
        assert_eq!(*o, want, "seq {seq}");
    }
    let s = jb.stats();
    assert_eq!((s.played, s.lost, s.late), (17, 3, 0));
}

#[test]
fn sequence_numbers_wrap() {
    let mut jb = JitterBuffer::new(3);
    let seqs: Vec<u16> = (0..8u16).map(|i| 65_532u16.wrapping_add(i)).collect();
    // Arrive slightly reordered around the wrap.
    for &i in &[0usize, 1, 2, 4, 3, 5, 7, 6] {
        jb.push(seqs[i], p(seqs[i]));
    }
    let out = drain(&mut jb, 20);
    assert_eq!(out, seqs.iter().map(|&s| frame(s)).collect::<Vec<_>>());
    assert_eq!(jb.stats().lost, 0);

    // A loss exactly at the wrap point is one loss.
    let mut jb = JitterBuffer::new(3);
    for seq in [65_533u16, 65_534, 0, 1, 2] {
        jb.push(seq, p(seq));
    }
    let out = drain(&mut jb, 20);
    assert_eq!(
        out,
        vec![
            frame(65_533),
            frame(65_534),
            Playout::Lost { next: Some(p(0)) },
            frame(0),
            frame(1),
            frame(2)
        ]
    );
    assert_eq!(jb.stats().lost, 1);
}

#[test]
fn late_packet_is_counted_and_dropped() {
    let mut jb = JitterBuffer::new(3);
    for seq in 0..3u16 {
        jb.push(seq, p(seq));
    }
    assert_eq!(jb.pop(), frame(0));
    assert_eq!(jb.pop(), frame(1));
    jb.push(4, p(4));
    assert_eq!(jb.pop(), frame(2));
    assert_eq!(jb.pop(), Playout::Lost { next: Some(p(4)) });
    jb.push(3, p(3)); // its slot has passed
    jb.push(1, p(1)); // already played: duplicate
    assert_eq!(jb.pop(), frame(4));
    let s = jb.stats();
    assert_eq!((s.late, s.duplicate, s.lost, s.played), (1, 1, 1, 4));
    // A second copy of the late packet is a duplicate.
    jb.push(3, p(3));
    assert_eq!(jb.stats().duplicate, 2);
}

#[test]
fn underrun_is_not_loss_and_rebuffers() {
    let mut jb = JitterBuffer::new(3);
    for seq in 0..4u16 {
        jb.push(seq, p(seq));
    }
    assert_eq!(drain(&mut jb, 10).len(), 4);
    // The far end went quiet: Idle, never Lost.
    for _ in 0..100 {
        assert_eq!(jb.pop(), Playout::Idle);
    }
    assert!(!jb.is_playing());
    // It resumes: re-buffer to target depth, then play on.
    jb.push(4, p(4));
    assert_eq!(jb.pop(), Playout::Idle);
    jb.push(5, p(5));
    assert_eq!(jb.pop(), Playout::Idle);
    jb.push(6, p(6));
    assert_eq!(jb.pop(), frame(4));
    assert_eq!(drain(&mut jb, 10), vec![frame(5), frame(6)]);
    let s = jb.stats();
    assert_eq!((s.played, s.lost, s.late), (7, 0, 0));
    // A packet older than the re-buffered point is late.
    jb.push(2, p(2));
    assert_eq!(jb.stats().duplicate, 1);
}

#[test]
fn gap_skipped_while_rebuffering_counts_as_loss() {
    let mut jb = JitterBuffer::new(2);
    for seq in 0..3u16 {
        jb.push(seq, p(seq));
    }
    assert_eq!(drain(&mut jb, 10).len(), 3);
    // 3 and 4 never arrive; 5 and 6 do.
    jb.push(5, p(5));
    jb.push(6, p(6));
    assert_eq!(jb.pop(), frame(5));
    assert_eq!(jb.stats().lost, 2);
    jb.push(3, p(3));
    assert_eq!(jb.stats().late, 1);
}

#[test]
fn lone_frame_plays_after_waiting_target_depth() {
    // A short burst that never reaches target depth is still played.
    let mut jb = JitterBuffer::new(3);
    jb.push(7, p(7));
    assert_eq!(jb.pop(), Playout::Idle);
    assert_eq!(jb.pop(), Playout::Idle);
    assert_eq!(jb.pop(), frame(7));
    assert_eq!(jb.pop(), Playout::Idle);
}

#[test]
fn overflow_drops_oldest_and_bounds_memory() {
    let mut jb = JitterBuffer::new(3);
    for seq in 0..200u16 {
        jb.push(seq, p(seq));
        assert!(jb.len() <= DEFAULT_MAX_FRAMES);
    }
    assert_eq!(jb.len(), DEFAULT_MAX_FRAMES);
    assert_eq!(jb.stats().dropped, 150);
    let out = drain(&mut jb, 100);
    assert_eq!(out, (150..200).map(frame).collect::<Vec<_>>());
    assert_eq!(jb.stats().lost, 0);

    // Also while playing, with a small cap.
    let mut jb = JitterBuffer::with_max_frames(2, 5);
    for seq in 0..3u16 {
        jb.push(seq, p(seq));
    }
    assert_eq!(jb.pop(), frame(0));
    for seq in 3..10u16 {
        jb.push(seq, p(seq));
    }
    assert_eq!(jb.len(), 5);
    assert_eq!(drain(&mut jb, 20), (5..10).map(frame).collect::<Vec<_>>());
    let s = jb.stats();
    // 1..=4 were pushed out by 6..=9 (a span over 5 frames).
    assert_eq!((s.played, s.lost, s.dropped), (6, 0, 4));
}

#[test]
fn huge_forward_jump_is_not_counted_as_loss() {
    let mut jb = JitterBuffer::new(2);
    for seq in 0..3u16 {
        jb.push(seq, p(seq));
    }
    assert_eq!(drain(&mut jb, 10).len(), 3);
    for seq in 20_000..20_003u16 {
        jb.push(seq, p(seq));
    }
    assert_eq!(
        drain(&mut jb, 10),
        (20_000..20_003).map(frame).collect::<Vec<_>>()
    );
    assert_eq!(jb.stats().lost, 0);
}

#[test]
fn sender_restarting_its_sequence_resynchronises() {
    let mut jb = JitterBuffer::new(2);
    let mut played = Vec::new();
    for seq in 1000..1010u16 {
        jb.push(seq, p(seq));
        played.push(jb.pop());
    }
    assert_eq!(played.last(), Some(&frame(1008)));
    // New stream from seq 0: the first two are dropped as stale, the third
    // re-synchronises (dropping old 1009), then the new numbering plays.
    for seq in 0..10u16 {
        jb.push(seq, p(seq));
    }
    assert_eq!(drain(&mut jb, 30), (2..10).map(frame).collect::<Vec<_>>());
    let s = jb.stats();
    assert_eq!((s.late, s.dropped, s.lost), (2, 1, 0));
}

#[test]
fn burst_latency_is_trimmed_back_to_target() {
    let mut jb = JitterBuffer::new(3);
    // A burst of 30 frames arrives at once, then one per tick.
    for seq in 0..30u16 {
        jb.push(seq, p(seq));
    }
    let mut last = None;
    for seq in 30..300u16 {
        jb.push(seq, p(seq));
        match jb.pop() {
            Playout::Frame(f) => last = Some(f),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(jb.len() <= 4, "buffer still holds {}", jb.len());
    assert!(jb.stats().dropped > 0);
    assert_eq!(jb.stats().lost, 0);
    assert_eq!(last, Some(p(299 - (jb.len() as u16))));
}

#[test]
fn reset_returns_to_new_state() {
    let mut jb = JitterBuffer::new(2);
    for seq in 0..5u16 {
        jb.push(seq, p(seq));
    }
    jb.pop();
    jb.reset();
    assert_eq!(jb.stats(), JitterStats::default());
    assert!(jb.is_empty());
    assert_eq!(jb.pop(), Playout::Idle);
    // Any numbering is accepted again, including earlier ones.
    jb.push(0, p(0));
    jb.push(1, p(1));
    assert_eq!(jb.pop(), frame(0));
}

#[derive(Debug, Clone)]
enum Op {
    Push(u16),
    Pop,
}

fn window_ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![(0u16..150).prop_map(Op::Push), Just(Op::Pop)],
        0..400,
    )
}

fn any_ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![any::<u16>().prop_map(Op::Push), Just(Op::Pop)],
        0..400,
    )
}

proptest! {
    #[test]
    fn arbitrary_window_never_overcounts(
        base in any::<u16>(),
        target in 0usize..6,
        cap in 1usize..60,
        ops in window_ops(),
    ) {
        let mut jb = JitterBuffer::with_max_frames(target, cap);
        let mut pushes = 0u64;
        let (mut lo, mut hi) = (u16::MAX, 0u16);
        let mut played_offsets: Vec<u16> = Vec::new();
        for op in &ops {
            match *op {
                Op::Push(off) => {
                    pushes += 1;
                    lo = lo.min(off);
                    hi = hi.max(off);
                    jb.push(base.wrapping_add(off), off.to_be_bytes().to_vec());
                }
                Op::Pop => {
                    let next_hint = match jb.pop() {
                        Playout::Frame(f) => {
                            prop_assert_eq!(f.len(), 2);
                            played_offsets.push(u16::from_be_bytes([f[0], f[1]]));
                            None
                        }
                        Playout::Lost { next } => next,
                        Playout::Idle => None,
                    };
                    if let Some(n) = next_hint {
                        prop_assert_eq!(n.len(), 2);
                    }
                }
            }
            let s = jb.stats();
            let span = if pushes == 0 { 0 } else { u64::from(hi - lo) + 1 };
            prop_assert!(jb.len() <= jb.max_frames());
            prop_assert_eq!(s.received, pushes);
            prop_assert!(s.played + s.lost <= span, "{:?} span {}", s, span);
            prop_assert!(s.duplicate + s.late <= s.received);
        }
        // Frames come out in strictly increasing order, each at most once.
        prop_assert!(played_offsets.windows(2).all(|w| w[0] < w[1]), "{:?}", played_offsets);
    }

    #[test]
    fn arbitrary_sequence_numbers_never_panic(target in 0usize..8, ops in any_ops()) {
        let mut jb = JitterBuffer::new(target);
        let mut pushes = 0u64;
        for op in &ops {
            match *op {
                Op::Push(seq) => {
                    pushes += 1;
                    jb.push(seq, vec![0u8; 3]);
                }
                Op::Pop => {
                    let _ = jb.pop();
                }
            }
            prop_assert!(jb.len() <= DEFAULT_MAX_FRAMES);
            prop_assert!(jb.stats().played <= pushes);
        }
    }
}
