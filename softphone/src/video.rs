//! The pictures of the call: a background thread reads the agent's video
//! socket (`video.sock` beside its control socket; see
//! `keyline_agent::viewers`), keeps the latest picture of the other end
//! and of this end's camera as RGBA, and wakes the window. It reconnects
//! by itself when the agent is absent or restarts; a malformed picture
//! drops the connection (the next one starts clean).

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyline_media::video::{read_view, to_rgba, ViewKind};
use keyline_media::vp8::I420;

use crate::io::Wake;

/// The socket's name beside the control socket.
const VIDEO_SOCKET: &str = "video.sock";

/// How often to look for an absent agent.
const RETRY: Duration = Duration::from_secs(1);

/// One picture to show.
#[derive(Clone)]
pub struct Picture {
    pub width: usize,
    pub height: usize,
    pub rgba: Vec<u8>,
    /// As it came (for tests that read the pattern's code back).
    pub i420: I420,
    /// Counts pictures, so the window uploads each once.
    pub serial: u64,
}

impl std::fmt::Debug for Picture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Picture {}x{} #{}", self.width, self.height, self.serial)
    }
}

/// The latest pictures of the call.
#[derive(Debug, Default)]
pub struct Pictures {
    pub peer: Option<Picture>,
    pub me: Option<Picture>,
}

/// The window's end of the agent's video socket.
#[derive(Debug)]
pub struct VideoFeed {
    pictures: Arc<Mutex<Pictures>>,
    stop: Arc<AtomicBool>,
}

impl Drop for VideoFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl VideoFeed {
    /// Follow the pictures of the agent whose control socket is `control`.
    pub fn start(control: &std::path::Path, wake: Wake) -> VideoFeed {
        let sock = control.with_file_name(VIDEO_SOCKET);
        let pictures = Arc::new(Mutex::new(Pictures::default()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (p, s) = (pictures.clone(), stop.clone());
            std::thread::Builder::new()
                .name("agent-video".into())
                .spawn(move || follow(sock, p, wake, s))
                .ok();
        }
        VideoFeed { pictures, stop }
    }

    /// Look at the latest pictures.
    pub fn with<T>(&self, f: impl FnOnce(&Pictures) -> T) -> T {
        match self.pictures.lock() {
            Ok(p) => f(&p),
            Err(p) => f(&p.into_inner()),
        }
    }
}

fn follow(sock: PathBuf, pictures: Arc<Mutex<Pictures>>, wake: Wake, stop: Arc<AtomicBool>) {
    let mut serial = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(s) = UnixStream::connect(&sock) else {
            std::thread::sleep(RETRY);
            continue;
        };
        let mut r = BufReader::with_capacity(256 * 1024, s);
        while !stop.load(Ordering::Relaxed) {
            let Ok((kind, pic)) = read_view(&mut r) else {
                break;
            };
            serial += 1;
            let shown = pic.map(|p| Picture {
                width: p.width as usize,
                height: p.height as usize,
                rgba: to_rgba(&p),
                i420: p,
                serial,
            });
            if let Ok(mut all) = pictures.lock() {
                match kind {
                    ViewKind::Peer => all.peer = shown,
                    ViewKind::Me => all.me = shown,
                    ViewKind::Clear => *all = Pictures::default(),
                }
            }
            wake();
        }
        // The agent went away (or turned this window away): no picture
        // is current any more. The window is woken only if it showed one,
        // so an agent that refuses every second costs no repaint.
        let had = pictures.lock().is_ok_and(|mut all| {
            let had = all.peer.is_some() || all.me.is_some();
            *all = Pictures::default();
            had
        });
        if had {
            wake();
        }
        std::thread::sleep(RETRY);
    }
}
