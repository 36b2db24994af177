//! A ringing call on the desktop's notifications (the freedesktop.org
//! `org.freedesktop.Notifications` service on the session bus), with
//! **Answer** and **Decline**: for when the window cannot come to the front
//! (a window manager that refuses it the focus). The window's model
//! decides when (`Model::window_focus`); this is only the bus. Without a session bus or a
//! notification service, nothing is shown and nothing fails.

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use futures_lite::StreamExt;

use crate::io::Wake;

const DEST: &str = "org.freedesktop.Notifications";
const PATH: &str = "/org/freedesktop/Notifications";
const IFACE: &str = "org.freedesktop.Notifications";

/// What the person chose on the notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Answer,
    Decline,
    /// The notification itself was clicked: show the window.
    Show,
}

enum Cmd {
    Ring { summary: String, body: String },
    Close,
}

/// The window's notifications.
pub struct Notifier {
    cmds: SyncSender<Cmd>,
    choices: Receiver<Choice>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notifier")
    }
}

impl Notifier {
    /// Connect to the session bus in the background; `wake` is called
    /// when the person chooses something on a notification.
    pub fn start(wake: Wake) -> Notifier {
        let (cmds, cmd_rx) = sync_channel(8);
        let (choice_tx, choices) = sync_channel(8);
        std::thread::Builder::new()
            .name("notifications".into())
            .spawn(move || {
                if let Err(e) = zbus::block_on(serve(cmd_rx, choice_tx, wake)) {
                    eprintln!("keyline-phone: no desktop notifications: {e}");
                }
            })
            .ok();
        Notifier { cmds, choices }
    }

    /// Show a ringing call (replacing the one shown, if any).
    pub fn ring(&self, summary: &str, body: &str) {
        let _ = self.cmds.try_send(Cmd::Ring {
            summary: summary.to_string(),
            body: body.to_string(),
        });
    }

    /// Take the ringing call's notification away.
    pub fn close(&self) {
        let _ = self.cmds.try_send(Cmd::Close);
    }

    /// What the person chose since the last call.
    pub fn try_choice(&self) -> Option<Choice> {
        self.choices.try_recv().ok()
    }
}

async fn serve(cmds: Receiver<Cmd>, choices: SyncSender<Choice>, wake: Wake) -> zbus::Result<()> {
    let conn = zbus::Connection::session().await?;
    let proxy = zbus::Proxy::new(&conn, DEST, PATH, IFACE).await?;
    // The notification shown now, whose actions count.
    let shown: Arc<Mutex<Option<u32>>> = Arc::new(Mutex::new(None));
    let mut actions = proxy.receive_signal("ActionInvoked").await?;
    {
        let shown = shown.clone();
        std::thread::Builder::new()
            .name("notification-actions".into())
            .spawn(move || {
                zbus::block_on(async move {
                    while let Some(m) = actions.next().await {
                        let Ok((id, key)) = m.body().deserialize::<(u32, String)>() else {
                            continue;
                        };
                        if shown.lock().map_or(true, |s| *s != Some(id)) {
                            continue;
                        }
                        let c = match key.as_str() {
                            "answer" => Choice::Answer,
                            "decline" => Choice::Decline,
                            _ => Choice::Show,
                        };
                        if choices.try_send(c).is_ok() {
                            wake();
                        }
                    }
                });
            })
            .map_err(|e| zbus::Error::Failure(e.to_string()))?;
    }
    // Commands come from the window's thread, one at a time.
    while let Ok(cmd) = cmds.recv() {
        let old = shown.lock().ok().and_then(|s| *s).unwrap_or(0);
        match cmd {
            Cmd::Ring { summary, body } => {
                let mut hints: HashMap<&str, zbus::zvariant::Value<'_>> = HashMap::new();
                hints.insert("urgency", zbus::zvariant::Value::U8(2));
                hints.insert(
                    "desktop-entry",
                    zbus::zvariant::Value::from("keyline-phone"),
                );
                let actions = ["default", "Show", "answer", "Answer", "decline", "Decline"];
                let reply: zbus::Result<u32> = proxy
                    .call(
                        "Notify",
                        &(
                            "Keyline",
                            old,
                            "keyline-phone",
                            summary.as_str(),
                            body.as_str(),
                            &actions[..],
                            hints,
                            0i32,
                        ),
                    )
                    .await;
                match reply {
                    Ok(id) => {
                        if let Ok(mut s) = shown.lock() {
                            *s = Some(id);
                        }
                    }
                    Err(e) => eprintln!("keyline-phone: the notification was not shown: {e}"),
                }
            }
            Cmd::Close => {
                if old != 0 {
                    if let Ok(mut s) = shown.lock() {
                        *s = None;
                    }
                    let _: zbus::Result<()> = proxy.call("CloseNotification", &(old,)).await;
                }
            }
        }
    }
    Ok(())
}
