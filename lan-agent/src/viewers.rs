//! The station's pictures for windows: a Unix socket beside the control
//! socket (`video.sock`, same owner and group rule) where a window (the
//! softphone) connects and reads pictures as `keyline_media::video`'s
//! views: the other end's, halved, and this end's own, quartered, a third
//! of the time; a clear view when a call's video ends.
//!
//! Each window gets a writer thread behind a queue of two pictures; a
//! window that does not keep up misses pictures, and never slows the
//! call.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use keyline_media::video::{downscale, encode_view, ViewKind};
use keyline_media::vp8::I420;

/// The socket's name in the state folder.
pub const VIDEO_SOCKET: &str = "video.sock";

/// Windows served at once; more are turned away.
const MAX_VIEWERS: usize = 8;

/// How often an idle writer thread looks whether its window has gone.
const HANGUP_CHECK: Duration = Duration::from_secs(1);

/// One window: its queue, and whether its writer thread has ended (the
/// window went away).
#[derive(Debug)]
struct Client {
    tx: SyncSender<Arc<Vec<u8>>>,
    gone: Arc<AtomicBool>,
}

/// The windows watching this station.
#[derive(Debug, Default)]
pub struct Viewers {
    clients: Mutex<Vec<Client>>,
}

impl Viewers {
    /// Listen on `STATE/video.sock` (a stale socket from a crash is
    /// replaced) and serve windows from a thread of its own.
    pub fn start(state: &Path) -> anyhow::Result<Arc<Viewers>> {
        let path = state.join(VIDEO_SOCKET);
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                anyhow::bail!("another instance serves {}", path.display());
            }
            std::fs::remove_file(&path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        let listener =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660));
        }
        let viewers = Arc::new(Viewers::default());
        let v = Arc::downgrade(&viewers);
        std::thread::Builder::new()
            .name("video-viewers".into())
            .spawn(move || accept_loop(listener, path, v))
            .context("starting the video socket's thread")?;
        Ok(viewers)
    }

    fn any(&self) -> bool {
        self.clients.lock().map(|c| !c.is_empty()).unwrap_or(false)
    }

    fn send(&self, msg: Vec<u8>) {
        let msg = Arc::new(msg);
        if let Ok(mut clients) = self.clients.lock() {
            clients.retain(|c| {
                !c.gone.load(Ordering::Relaxed)
                    && !matches!(
                        c.tx.try_send(msg.clone()),
                        Err(TrySendError::Disconnected(_))
                    )
            });
        }
    }

    /// Show a picture of `kind` (nothing is done while no window watches).
    pub fn show(&self, kind: ViewKind, pic: &I420) {
        if !self.any() {
            return;
        }
        let factor = match kind {
            ViewKind::Peer => (pic.width / 320).max(1),
            _ => (pic.width / 160).max(1),
        };
        self.send(encode_view(kind, Some(&downscale(pic, factor))));
    }

    /// The call's video ended: windows clear their pictures.
    pub fn clear(&self) {
        if self.any() {
            self.send(encode_view(ViewKind::Clear, None));
        }
    }
}

fn allowed(s: &UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let Ok(cred) = getsockopt(s, PeerCredentials) else {
        return false;
    };
    let me = nix::unistd::geteuid().as_raw();
    let group = nix::unistd::getegid().as_raw();
    cred.uid() == 0 || cred.uid() == me || cred.gid() == group
}

/// Write pictures to one window until it goes away. A window never writes,
/// so its socket turning readable means it closed.
fn serve_viewer(s: &mut UnixStream, rx: &std::sync::mpsc::Receiver<Arc<Vec<u8>>>) {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        match rx.recv_timeout(HANGUP_CHECK) {
            Ok(msg) => {
                if s.write_all(&msg).is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                if s.set_nonblocking(true).is_err() {
                    return;
                }
                let mut b = [0u8; 1];
                let closed = match std::io::Read::read(s, &mut b) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
                if closed || s.set_nonblocking(false).is_err() {
                    return;
                }
            }
        }
    }
}

fn accept_loop(listener: UnixListener, path: PathBuf, viewers: std::sync::Weak<Viewers>) {
    for conn in listener.incoming() {
        let Some(v) = viewers.upgrade() else { break };
        let Ok(mut s) = conn else { continue };
        if !allowed(&s) {
            let _ = s.write_all(b"not allowed\n");
            continue;
        }
        let Ok(mut clients) = v.clients.lock() else {
            break;
        };
        // Windows that went away make room (between calls nothing is
        // written to them, so only their threads notice).
        clients.retain(|c| !c.gone.load(Ordering::Relaxed));
        if clients.len() >= MAX_VIEWERS {
            continue;
        }
        let (tx, rx) = sync_channel::<Arc<Vec<u8>>>(2);
        let gone = Arc::new(AtomicBool::new(false));
        clients.push(Client {
            tx,
            gone: gone.clone(),
        });
        let _ = std::thread::Builder::new()
            .name("video-viewer".into())
            .spawn(move || {
                serve_viewer(&mut s, &rx);
                gone.store(true, Ordering::Relaxed);
            });
    }
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Read;

    use super::*;

    /// Windows that closed between calls make room for new ones: more
    /// windows than MAX_VIEWERS, one after another, are each kept.
    #[test]
    fn closed_windows_make_room() {
        let dir = std::env::temp_dir().join(format!("keyline-viewers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let viewers = Viewers::start(&dir).unwrap();
        let sock = dir.join(VIDEO_SOCKET);
        for _ in 0..MAX_VIEWERS + 4 {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut b = [0u8; 1];
            // Kept: nothing to read (not turned away, which reads as EOF).
            let e = s.read(&mut b).unwrap_err();
            assert!(matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ));
            drop(s);
            // Its writer thread notices within HANGUP_CHECK.
            std::thread::sleep(HANGUP_CHECK + Duration::from_millis(300));
        }
        assert!(viewers.clients.lock().unwrap().len() <= 1);
        drop(viewers);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
