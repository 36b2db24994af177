//! Where a daemon keeps its state when nobody says.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Resolve the state directory: `--state` wins, then systemd's
/// `$STATE_DIRECTORY` (its first entry), then `$XDG_STATE_HOME/keyline/PROG`,
/// then `~/.local/state/keyline/PROG`. The directory is created (mode 0700).
pub fn resolve(explicit: Option<&Path>, prog: &str) -> Result<PathBuf> {
    let dir = match explicit {
        Some(p) => p.to_path_buf(),
        None => default_dir(prog)?,
    };
    create_private_dir(&dir)?;
    Ok(dir)
}

/// The directory `resolve` would pick without creating it.
pub fn default_dir(prog: &str) -> Result<PathBuf> {
    if let Some(sd) = std::env::var_os("STATE_DIRECTORY") {
        if let Some(first) = sd.to_string_lossy().split(':').next() {
            if !first.is_empty() {
                return Ok(PathBuf::from(first));
            }
        }
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME") {
        if !x.is_empty() {
            return Ok(PathBuf::from(x).join("keyline").join(prog));
        }
    }
    let home = std::env::var_os("HOME").context(
        "no state directory: pass --state DIR, or set STATE_DIRECTORY, XDG_STATE_HOME or HOME",
    )?;
    Ok(PathBuf::from(home).join(".local/state/keyline").join(prog))
}

fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating state directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}
