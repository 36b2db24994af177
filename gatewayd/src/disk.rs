//! The disk watcher: the free space under the state directory, which
//! decides whether the mailboxes take messages, and the call records kept
//! in memory while the disk was full.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::shared::{Event, Shared};

/// How often the free space under the state directory is checked.
const DISK_CHECK: Duration = Duration::from_secs(2);

/// Room a mailbox needs to take a message: the longest message at up to
/// 64 kbit/s, and a mebibyte for the database.
fn room_for_a_message(cfg: &Config) -> u64 {
    cfg.voicemail_max_secs.saturating_mul(8 * 1024) + (1 << 20)
}

/// Watches the free space under the state directory: tells the switch
/// when the mailboxes can take a message and when not (so that callers
/// are not sent to one that cannot store what they say), and writes the
/// call records kept in memory while the disk was full once there is
/// room.
pub(crate) async fn watch_disk(shared: Arc<Shared>) {
    let mut last: Option<bool> = None;
    let mut tick = tokio::time::interval(DISK_CHECK);
    loop {
        tick.tick().await;
        let dir = &shared.state_dir;
        // statvfs can stall on a slow file system: off the runtime.
        let stat = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || nix::sys::statvfs::statvfs(&dir)).await
        };
        let free = match stat {
            Ok(Ok(v)) => v.blocks_available().saturating_mul(v.fragment_size()),
            Ok(Err(e)) => {
                tracing::debug!("statvfs {}: {e}", dir.display());
                continue;
            }
            Err(e) => {
                tracing::debug!("statvfs {}: {e}", dir.display());
                continue;
            }
        };
        let writable = free >= room_for_a_message(&shared.cfg());
        if last != Some(writable) {
            match (writable, last.is_some()) {
                (false, _) => tracing::warn!(
                    "only {free} bytes free under {}: voicemail takes no messages until there is room",
                    dir.display()
                ),
                (true, true) => tracing::info!(
                    "{free} bytes free under {} again: voicemail takes messages",
                    dir.display()
                ),
                (true, false) => {}
            }
            last = Some(writable);
        }
        if shared
            .events
            .send(Event::Disk { writable, free })
            .await
            .is_err()
        {
            return;
        }
        if writable && shared.db.unwritten_count() > 0 {
            let db = shared.db.clone();
            match tokio::task::spawn_blocking(move || db.write_unwritten()).await {
                Ok(Ok(n)) => {
                    tracing::info!("wrote {n} call record(s) kept while the disk was full")
                }
                Ok(Err(e)) => tracing::warn!("{e:#}"),
                Err(e) => tracing::warn!("writing kept call records: {e}"),
            }
        }
    }
}
