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
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use keyline_media::video::{downscale, encode_view, ViewKind};
use keyline_media::vp8::I420;

/// The socket's name in the state folder.
pub const VIDEO_SOCKET: &str = "video.sock";

/// Windows served at once; more are turned away.
const MAX_VIEWERS: usize = 8;

/// The windows watching this station.
#[derive(Debug, Default)]
pub struct Viewers {
    clients: Mutex<Vec<SyncSender<Arc<Vec<u8>>>>>,
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
            clients.retain(|tx| {
                !matches!(tx.try_send(msg.clone()), Err(TrySendError::Disconnected(_)))
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
        if clients.len() >= MAX_VIEWERS {
            continue;
        }
        let (tx, rx) = sync_channel::<Arc<Vec<u8>>>(2);
        clients.push(tx);
        let _ = std::thread::Builder::new()
            .name("video-viewer".into())
            .spawn(move || {
                while let Ok(msg) = rx.recv() {
                    if s.write_all(&msg).is_err() {
                        break;
                    }
                }
            });
    }
    let _ = std::fs::remove_file(path);
}
