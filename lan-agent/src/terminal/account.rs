//! The account from the command line: `keyline-agent account` lists its
//! numbers and devices as the directory knows them; `keyline-agent passwd`
//! changes the password on the directory (the patent has the client
//! change its ID and password). The directory checks the old password, ends the
//! account's other sessions and keeps this one; the terminal then keeps
//! the new password for its next login and writes it to its password
//! file, so that it logs in after a restart too.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use keyline_dirclient::client::ClientError;
use keyline_net::control;
use keyline_proto::dir::ErrorCode;
use serde_json::{json, Value};

use super::Terminal;

/// `{"cmd":"account"}`: the account's numbers and devices, as the
/// directory (every node of it) knows them now.
pub(super) async fn info(t: &Arc<Terminal>) -> Value {
    let Some(client) = t.lock().client.clone() else {
        return control::error("not connected to the directory");
    };
    match client.account_info().await {
        Ok(a) => json!({
            "ok": true,
            "account": a.account,
            "numbers": a.numbers,
            "devices": a.devices,
        }),
        Err(e) => control::error(format!("the directory did not answer: {e}")),
    }
}

/// `{"cmd":"passwd","old":…,"new":…}`.
pub(super) async fn passwd(t: &Arc<Terminal>, old: String, new: String) -> Value {
    if old.is_empty() || new.is_empty() {
        return control::error("passwd needs the old and the new password");
    }
    if old == new {
        return control::error("the new password is the old one; nothing was changed");
    }
    let Some(client) = t.lock().client.clone() else {
        return control::error(
            "not connected to the directory; the password was not changed (try again when `keyline-agent status` shows registered)",
        );
    };
    match client.change_password(&old, &new).await {
        Ok(()) => {}
        Err(e) => {
            let why = match e.code() {
                Some(ErrorCode::BadCredentials) => "the old password is wrong".to_string(),
                Some(ErrorCode::WeakPassword | ErrorCode::RateLimited) => e.to_string(),
                _ => format!("the directory did not change the password: {e}"),
            };
            let mut reply = control::error(format!("{why}; nothing was changed"));
            if let ClientError::Refused {
                retry_after: Some(d),
                ..
            } = e
            {
                reply["retry_after_s"] = json!(d.as_secs_f64().ceil());
            }
            return reply;
        }
    }
    *t.password.lock().unwrap_or_else(|p| p.into_inner()) = new.clone();
    tracing::info!("the account's password was changed on the directory");
    let file = &t.opts.password_file;
    match write_password_file(file, &new) {
        Ok(()) => json!({"ok": true, "password_file": file.display().to_string(), "updated": true}),
        Err(e) => json!({
            "ok": true,
            "password_file": file.display().to_string(),
            "updated": false,
            "warning": format!(
                "the password was changed on the directory, but {} could not be written ({e}); \
                 put the new password in it before this terminal restarts",
                file.display()
            ),
        }),
    }
}

/// Replace the password file's content with `password` (owner-only,
/// written beside it and renamed over it, so a crash leaves the old file
/// or the new one, never half of one).
fn write_password_file(path: &Path, password: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "password".into());
    let tmp = dir.join(format!(".{name}.new"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = f
        .write_all(format!("{password}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_password_file_is_replaced_whole_and_owner_only() {
        let dir = std::env::temp_dir().join(format!("kl-pwfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("alice.pw");
        std::fs::write(&p, "old password\n").expect("write");
        write_password_file(&p, "new password").expect("replace");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "new password\n");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.join(".alice.pw.new").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
