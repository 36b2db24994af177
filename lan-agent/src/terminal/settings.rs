//! `keyline-agent terminal --config FILE`: the settings file that the
//! directory's set-up page offers for an account (`keyline-terminal.toml`:
//! the directory's address and fingerprint, the account, its numbers and
//! where the password is kept; never the password itself), merged with the
//! command line, which wins field by field.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest settings file read (bytes).
const MAX_FILE: u64 = 64 * 1024;

/// The settings file. Fields it does not know are ignored, so a file from
/// a newer directory still starts an older terminal.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct SettingsFile {
    pub directory: Option<String>,
    pub directory_fp: Option<String>,
    pub account: Option<String>,
    pub numbers: Vec<String>,
    pub password_file: Option<String>,
}

/// What the command line gave.
#[derive(Debug, Default)]
pub struct Given {
    pub directory: Option<String>,
    pub directory_fp: Option<String>,
    pub account: Option<String>,
    pub password_file: Option<PathBuf>,
    pub numbers: Vec<String>,
}

/// Everything the terminal needs to log in.
#[derive(Debug, PartialEq)]
pub struct Resolved {
    pub directory: String,
    pub directory_fp: Option<String>,
    pub account: String,
    pub password_file: PathBuf,
    pub numbers: Vec<String>,
}

/// Reads and parses a settings file (a clear error naming the file).
pub fn read(path: &Path) -> Result<SettingsFile, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > MAX_FILE {
        return Err(format!(
            "{}: {len} bytes is too large for a settings file (at most {MAX_FILE})",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut file = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    // A relative password path is beside the settings file.
    if let (Some(p), Some(dir)) = (file.password_file.as_mut(), path.parent()) {
        if !p.starts_with("~/") && Path::new(p.as_str()).is_relative() {
            *p = dir.join(p.as_str()).display().to_string();
        }
    }
    Ok(file)
}

/// Parses a settings file's text.
pub fn parse(text: &str) -> Result<SettingsFile, String> {
    toml::from_str(text).map_err(|e| format!("not a terminal settings file: {e}"))
}

/// Merges the command line with the settings file, if any: the command
/// line wins; `~/` at the start of the file's password path is the home
/// directory (`home`). The file's fingerprint belongs to the file's
/// directory: it is not pinned for another one given on the command line.
pub fn resolve(
    given: Given,
    file: Option<SettingsFile>,
    home: Option<&Path>,
) -> Result<Resolved, String> {
    let mut file = file.unwrap_or_default();
    if given.directory.is_some() && given.directory != file.directory {
        file.directory_fp = None;
    }
    let directory = given.directory.or(file.directory).ok_or(
        "which directory? Give --directory HOST:PORT, or --config with the settings file \
         from the directory's set-up page",
    )?;
    let account = given
        .account
        .or(file.account)
        .ok_or("which account? Give --account ID, or --config with the settings file")?;
    let password_file = match (given.password_file, file.password_file) {
        (Some(p), _) => p,
        (None, Some(p)) => expand_home(&p, home)?,
        (None, None) => {
            return Err(
                "where is the password? Give --password-file FILE (the password \
                        alone on its first line)"
                    .into(),
            )
        }
    };
    let numbers = if given.numbers.is_empty() {
        file.numbers
    } else {
        given.numbers
    };
    Ok(Resolved {
        directory,
        directory_fp: given.directory_fp.or(file.directory_fp),
        account,
        password_file,
        numbers,
    })
}

fn expand_home(p: &str, home: Option<&Path>) -> Result<PathBuf, String> {
    match p.strip_prefix("~/") {
        None => Ok(PathBuf::from(p)),
        Some(rest) => home.map(|h| h.join(rest)).ok_or_else(|| {
            format!("the settings file keeps the password in {p}, but HOME is not set: give --password-file")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the set-up page writes (comments included).
    const FILE: &str = r#"# Keyline terminal settings for account minjun at 192.0.2.7:7480.
# No password is in this file: put it alone on the first line of
# ~/.config/keyline/password (readable by you only).

directory = "192.0.2.7:7480"
directory_fp = "sha256:ab12"
account = "minjun"
numbers = ["김민준", "+8225550100"]
password_file = "~/.config/keyline/password"
"#;

    #[test]
    fn the_file_alone_starts_a_terminal() {
        let file = parse(FILE).expect("parse");
        let r = resolve(
            Given::default(),
            Some(file),
            Some(Path::new("/home/minjun")),
        )
        .expect("resolve");
        assert_eq!(
            r,
            Resolved {
                directory: "192.0.2.7:7480".into(),
                directory_fp: Some("sha256:ab12".into()),
                account: "minjun".into(),
                password_file: PathBuf::from("/home/minjun/.config/keyline/password"),
                numbers: vec!["김민준".into(), "+8225550100".into()],
            }
        );
    }

    #[test]
    fn the_command_line_wins_field_by_field() {
        let given = Given {
            directory: Some("dir.example:7480".into()),
            password_file: Some(PathBuf::from("/run/pw")),
            numbers: vec!["+8225550100".into()],
            ..Given::default()
        };
        let r = resolve(given, Some(parse(FILE).expect("parse")), None).expect("resolve");
        assert_eq!(r.directory, "dir.example:7480");
        assert_eq!(r.account, "minjun");
        // Another directory: the file's fingerprint is not its own.
        assert_eq!(r.directory_fp, None);
        assert_eq!(r.password_file, PathBuf::from("/run/pw"));
        assert_eq!(r.numbers, ["+8225550100"]);
        // The same directory keeps it.
        let given = Given {
            directory: Some("192.0.2.7:7480".into()),
            ..Given::default()
        };
        let home = Some(Path::new("/home/minjun"));
        let r = resolve(given, Some(parse(FILE).expect("parse")), home).expect("resolve");
        assert_eq!(r.directory_fp.as_deref(), Some("sha256:ab12"));
    }

    #[test]
    fn a_relative_password_path_is_beside_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keyline-terminal.toml");
        std::fs::write(&path, "account = \"a\"\npassword_file = \"pw\"\n").expect("write");
        let f = read(&path).expect("read");
        assert_eq!(
            f.password_file.as_deref(),
            Some(dir.path().join("pw").to_str().expect("utf-8"))
        );
    }

    #[test]
    fn what_is_missing_is_named() {
        let err = resolve(Given::default(), None, None).expect_err("nothing given");
        assert!(err.contains("--directory"), "{err}");
        let given = Given {
            directory: Some("d:1".into()),
            account: Some("a".into()),
            ..Given::default()
        };
        let err = resolve(given, None, None).expect_err("no password file");
        assert!(err.contains("--password-file"), "{err}");
        // The file's "~/" needs a home directory.
        let err = resolve(Given::default(), Some(parse(FILE).expect("parse")), None)
            .expect_err("no HOME");
        assert!(err.contains("HOME"), "{err}");
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let err = parse("directory = 7").expect_err("wrong type");
        assert!(err.contains("not a terminal settings file"), "{err}");
        assert!(parse("<html>").is_err());
        // Unknown fields (a newer directory's) are ignored.
        let f = parse("account = \"x\"\nringtone = \"bell\"").expect("unknown field");
        assert_eq!(f.account.as_deref(), Some("x"));
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; 70_000]).expect("write");
        assert!(read(&big).expect_err("too large").contains("too large"));
        let err = read(&dir.path().join("missing.toml")).expect_err("missing");
        assert!(err.contains("missing.toml"), "{err}");
    }
}
