//! Where a daemon keeps its state when nobody says, and where its
//! command-line tools look for it.
//!
//! A daemon's own default ([`resolve`]): `--state`, then systemd's
//! `$STATE_DIRECTORY`, then the per-user directory
//! (`$XDG_STATE_HOME/keyline/PROG`, else `~/.local/state/keyline/PROG`).
//!
//! The control commands ([`default_dir`]) follow the same order with one
//! addition: when the per-user directory does not exist but the packaged
//! service's does (`/var/lib/keyline/PROG`, its `StateDirectory=`), they
//! use the packaged one. So `sudo keyline-gatewayd agents` reaches the
//! installed service, while anyone who has run a daemon of their own (and
//! so has a per-user directory) keeps talking to that one. A daemon never
//! falls back: started by hand without `--state`, it must not share the
//! service's database.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where the packaged (systemd) services keep their state:
/// `StateDirectory=keyline/PROG`.
pub const PACKAGED_STATE_ROOT: &str = "/var/lib/keyline";

/// Resolve a daemon's state directory: `--state` wins, then systemd's
/// `$STATE_DIRECTORY` (its first entry), then `$XDG_STATE_HOME/keyline/PROG`,
/// then `~/.local/state/keyline/PROG`. The directory is created (mode 0700).
pub fn resolve(explicit: Option<&Path>, prog: &str) -> Result<PathBuf> {
    let dir = match explicit {
        Some(p) => p.to_path_buf(),
        None => own_dir(prog)?,
    };
    create_private_dir(&dir)?;
    Ok(dir)
}

/// The state directory a control command uses when no `--state` is given
/// (nothing is created): `$STATE_DIRECTORY` when set, else the per-user
/// directory if it exists, else the packaged service's
/// (`/var/lib/keyline/PROG`) if that exists, else the per-user one.
pub fn default_dir(prog: &str) -> Result<PathBuf> {
    control_dir(prog, Path::new(PACKAGED_STATE_ROOT), &|k| {
        std::env::var_os(k)
    })
}

/// [`default_dir`] with the packaged root and the environment given.
fn control_dir(prog: &str, packaged_root: &Path, env: &Env<'_>) -> Result<PathBuf> {
    if let Some(sd) = systemd_dir(env) {
        return Ok(sd);
    }
    let packaged = packaged_root.join(prog);
    match user_dir(prog, env) {
        Ok(user) => Ok(prefer_existing(user, packaged)),
        // No HOME (a system account, a bare environment): the packaged
        // directory is the only candidate left.
        Err(_) if packaged.is_dir() => Ok(packaged),
        Err(e) => Err(e),
    }
}

/// The rule of [`default_dir`] between the per-user and the packaged
/// directory: the per-user one when it exists, else the packaged one when
/// it exists, else the per-user one (so messages name the directory a
/// daemon of the user's own would make).
pub fn prefer_existing(user: PathBuf, packaged: PathBuf) -> PathBuf {
    if !user.is_dir() && packaged.is_dir() {
        packaged
    } else {
        user
    }
}

/// How the environment is read (a parameter so tests need not change the
/// process's own).
type Env<'a> = dyn Fn(&str) -> Option<OsString> + 'a;

/// A daemon's own default, without the packaged fallback.
fn own_dir(prog: &str) -> Result<PathBuf> {
    let env = |k: &str| std::env::var_os(k);
    match systemd_dir(&env) {
        Some(sd) => Ok(sd),
        None => user_dir(prog, &env),
    }
}

/// The first entry of systemd's `$STATE_DIRECTORY`, if set.
fn systemd_dir(env: &Env<'_>) -> Option<PathBuf> {
    let sd = env("STATE_DIRECTORY")?;
    let sd = sd.to_string_lossy();
    let first = sd.split(':').next()?;
    (!first.is_empty()).then(|| PathBuf::from(first))
}

/// `$XDG_STATE_HOME/keyline/PROG`, else `~/.local/state/keyline/PROG`.
fn user_dir(prog: &str, env: &Env<'_>) -> Result<PathBuf> {
    if let Some(x) = env("XDG_STATE_HOME") {
        if !x.is_empty() {
            return Ok(PathBuf::from(x).join("keyline").join(prog));
        }
    }
    let home = env("HOME").context(
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "keyline-statedir-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn control_commands_fall_back_to_the_packaged_directory_only_when_needed() {
        let root = tempdir("rule");
        let user = root.join("home/.local/state/keyline/gatewayd");
        let packaged = root.join("var/lib/keyline/gatewayd");

        // Neither exists: the per-user one (what a daemon of one's own makes).
        assert_eq!(prefer_existing(user.clone(), packaged.clone()), user);

        // Only the packaged service's exists: use it.
        std::fs::create_dir_all(&packaged).unwrap();
        assert_eq!(prefer_existing(user.clone(), packaged.clone()), packaged);

        // A file where the per-user directory should be does not count.
        std::fs::create_dir_all(user.parent().unwrap()).unwrap();
        std::fs::write(&user, b"").unwrap();
        assert_eq!(prefer_existing(user.clone(), packaged.clone()), packaged);
        std::fs::remove_file(&user).unwrap();

        // Both exist: the user's own wins.
        std::fs::create_dir_all(&user).unwrap();
        assert_eq!(prefer_existing(user.clone(), packaged.clone()), user);

        // Only the per-user one exists.
        std::fs::remove_dir_all(&packaged).unwrap();
        assert_eq!(prefer_existing(user.clone(), packaged), user);

        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_control_rule_with_its_environment() {
        let root = tempdir("env");
        let packaged_root = root.join("var/lib/keyline");
        let home = root.join("home");
        let vars = |pairs: Vec<(&'static str, PathBuf)>| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.clone().into_os_string())
            }
        };
        let user = home.join(".local/state/keyline/directory");
        let packaged = packaged_root.join("directory");
        let with_home = vars(vec![("HOME", home.clone())]);

        // Nothing exists yet: the per-user directory.
        assert_eq!(
            control_dir("directory", &packaged_root, &with_home).unwrap(),
            user
        );
        // No HOME and no packaged service: a clear error.
        let bare = vars(vec![]);
        let e = control_dir("directory", &packaged_root, &bare).unwrap_err();
        assert!(e.to_string().contains("--state"), "{e}");

        // The package is installed: found with or without HOME.
        std::fs::create_dir_all(&packaged).unwrap();
        assert_eq!(
            control_dir("directory", &packaged_root, &with_home).unwrap(),
            packaged
        );
        assert_eq!(
            control_dir("directory", &packaged_root, &bare).unwrap(),
            packaged
        );
        // XDG_STATE_HOME names the per-user directory; it still has to exist.
        let xdg = root.join("xdg");
        let with_xdg = vars(vec![
            ("HOME", home.clone()),
            ("XDG_STATE_HOME", xdg.clone()),
        ]);
        assert_eq!(
            control_dir("directory", &packaged_root, &with_xdg).unwrap(),
            packaged
        );
        std::fs::create_dir_all(xdg.join("keyline/directory")).unwrap();
        assert_eq!(
            control_dir("directory", &packaged_root, &with_xdg).unwrap(),
            xdg.join("keyline/directory")
        );
        // Inside a unit, systemd's STATE_DIRECTORY always wins.
        let sd = root.join("sd");
        let in_unit = vars(vec![
            ("HOME", home.clone()),
            ("STATE_DIRECTORY", sd.clone()),
        ]);
        assert_eq!(
            control_dir("directory", &packaged_root, &in_unit).unwrap(),
            sd
        );

        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_daemon_creates_its_explicit_directory_private() {
        let root = tempdir("resolve");
        let dir = root.join("a/b");
        assert_eq!(resolve(Some(&dir), "gatewayd").unwrap(), dir);
        assert!(dir.is_dir());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
