//! What the window itself keeps between runs: the language chosen in
//! Settings (the audio choices are the agent's, kept in its state). One
//! small JSON file, `$XDG_CONFIG_HOME/keyline/phone.json` (else
//! `~/.config/keyline/phone.json`).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::Lang;

/// The file, if the user has a configuration directory.
pub fn path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("keyline").join("phone.json"))
}

/// The language kept in `file`, if one was chosen.
pub fn lang(file: &Path) -> Option<Lang> {
    let v: Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    match v.get("lang")?.as_str()? {
        "ko" => Some(Lang::Ko),
        "en" => Some(Lang::En),
        _ => None,
    }
}

/// Keep `lang` in `file` (written whole, then renamed into place).
pub fn save_lang(file: &Path, lang: Lang) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let code = match lang {
        Lang::En => "en",
        Lang::Ko => "ko",
    };
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, format!("{}\n", json!({ "lang": code })))?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_language_is_kept() {
        let dir = std::env::temp_dir().join(format!("keyline-prefs-{}", std::process::id()));
        let file = dir.join("keyline").join("phone.json");
        assert_eq!(lang(&file), None);
        save_lang(&file, Lang::Ko).unwrap();
        assert_eq!(lang(&file), Some(Lang::Ko));
        save_lang(&file, Lang::En).unwrap();
        assert_eq!(lang(&file), Some(Lang::En));
        std::fs::write(&file, b"{broken").unwrap();
        assert_eq!(lang(&file), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
