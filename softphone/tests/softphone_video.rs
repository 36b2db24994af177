//! The patent's video area (Fig. 2) end to end: two real agents with the
//! moving test pattern as their cameras, a real gateway between them, and
//! the window of one following its agent. Once the call is connected the
//! window shows the other end's picture, and the pictures it holds carry
//! the other end's frame counter, rising: live video, not a still.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{until, window};
use keyline_media::video::read_code;
use keyline_phone::video::VideoFeed;
use keyline_tests::{ok, LoopbackOffice};

const T: Duration = Duration::from_secs(15);

#[test]
fn the_window_shows_the_other_ends_live_picture() {
    let office = LoopbackOffice::start("phonevideo", &[]);
    let video = ["--video-in", "pattern", "--audio-out", "null"];
    let a = office.agent("a", &[&video[..], &["--audio-in", "tone:600"]].concat());
    let b = office.agent("b", &[&video[..], &["--audio-in", "tone:900"]].concat());
    office.enrol(&a, "201");
    office.enrol(&b, "202");
    let mut w = window(&a.state);
    w.state_mut().watch_video(VideoFeed::start(
        &a.state.join("control.sock"),
        Arc::new(|| {}),
    ));

    ok(&a, &["dial", "202"]);
    until(&mut w, "ringing out", T, |w| w.state().model.call.is_some());
    std::thread::sleep(Duration::from_millis(200));
    ok(&b, &["answer"]);
    until(&mut w, "the other end's picture", T, |w| {
        w.state().shows_video()
    });
    let first = w.state().peer_picture().expect("a picture");
    let c1 = read_code(&first.i420).expect("the pattern's code in the picture");
    assert_eq!((first.width, first.height), (320, 240));
    std::thread::sleep(Duration::from_millis(500));
    until(&mut w, "a later picture", T, |w| {
        w.state()
            .peer_picture()
            .and_then(|p| read_code(&p.i420))
            .is_some_and(|c| c.counter >= c1.counter + 10)
    });
    // A picture of the window, for people to look at (the README's comes
    // from here, with KEYLINE_SCREENSHOTS=docs/img).
    let image = w.render().expect("render the window");
    let dir = std::env::var_os("KEYLINE_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| office.scratch.join("."));
    let out = dir.join("phone-video_en.png");
    image.save(&out).expect("save the picture");
    println!("the window with video: {}", out.display());

    ok(&a, &["hangup"]);
    until(&mut w, "the call over and its picture gone", T, |w| {
        w.state().model.call.is_none() && !w.state().shows_video()
    });
}
