//! `keyline-phone`, the softphone window: a front end of the workstation's
//! `keyline-agent`. It owns no call, link or audio device: it follows the
//! agent's control socket (`subscribe` events), shows what it says, and
//! sends the person's commands. The window's decisions live in [`model`]
//! (no IO, time passed in); [`io`] is the connection to the agent, [`ui`]
//! draws the model, [`video`] follows the agent's pictures of the call,
//! [`i18n`] holds its words in English and Korean, [`fonts`] finds a
//! system font for Hangul, [`single`] keeps one window per agent,
//! [`prefs`] keeps the window's language, and [`notify`] offers a ringing
//! call on the desktop's notifications, with Answer and Decline.

pub mod fonts;
pub mod i18n;
pub mod io;
pub mod model;
pub mod notify;
pub mod prefs;
pub mod single;
pub mod ui;
pub mod video;

pub use i18n::Lang;
pub use model::Model;
pub use ui::PhoneApp;

/// The number in a `tel:` link (`tel:1001`, `tel://+82-2-555-1234`), with
/// visual separators removed; `None` if `arg` is no `tel:` link.
pub fn tel_number(arg: &str) -> Option<String> {
    let rest = arg
        .strip_prefix("tel:")
        .or_else(|| arg.strip_prefix("TEL:"))?;
    let rest = rest.trim_start_matches('/');
    // Parameters (`;phone-context=...`) are not part of the number.
    let number = rest.split(';').next().unwrap_or("");
    let decoded = percent_decode(number);
    let n: String = decoded
        .chars()
        .filter(|c| !matches!(c, '-' | '.' | '(' | ')' | ' '))
        .collect();
    (!n.is_empty()).then_some(n)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
