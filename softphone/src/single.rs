//! One window per agent: a second `keyline-phone` (e.g. opened by a
//! `tel:` link) hands its number to the first through a Unix socket in the
//! user's runtime directory, and exits.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::Duration;

use crate::io::Wake;

/// Longest line a second instance may send.
const MAX_LINE: u64 = 1024;

/// The socket of the window driving the agent in `state`.
pub fn socket_for(state: &Path) -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    // FNV-1a of the state directory: one window per agent.
    let key = state
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    dir.join(format!("keyline-phone-{key:016x}.sock"))
}

/// Whether a window already runs at `sock`; if so it was given `number`
/// (empty: just come to the front).
pub fn hand_over(sock: &Path, number: &str) -> bool {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let line: String = number.chars().filter(|c| !c.is_control()).collect();
    s.write_all(format!("{line}\n").as_bytes()).is_ok()
}

/// Be the window at `sock`: numbers handed over by later instances arrive
/// on the receiver, and `wake` is called for each.
pub fn listen(sock: &Path, wake: Wake) -> std::io::Result<Receiver<String>> {
    if sock.exists() {
        // Nobody answered hand_over: a crashed window's socket.
        std::fs::remove_file(sock)?;
    }
    let l = UnixListener::bind(sock)?;
    let (tx, rx) = sync_channel(8);
    std::thread::Builder::new()
        .name("single-instance".into())
        .spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut line = String::new();
                if BufReader::new(s.take(MAX_LINE))
                    .read_line(&mut line)
                    .is_err()
                {
                    continue;
                }
                if tx.try_send(line.trim().to_string()).is_ok() {
                    wake();
                }
            }
        })?;
    Ok(rx)
}
