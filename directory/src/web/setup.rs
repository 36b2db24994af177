//! Setting up the phone (`/setup`): the terminal's command line and
//! settings file for this account and host, and the `.deb` packages of
//! the configured folder with their SHA-256.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use askama::Template;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query as UrlQuery, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use keyline_web::Lang;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::session::{gone, SignedIn};
use super::text::Text;
use super::{failed, is_admin, not_found, render, App, Page, Web};
use crate::store;

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupT {
    p: Page,
    fingerprint: String,
    command: String,
    packages: Vec<PackageView>,
}

struct PackageView {
    name: String,
    size: String,
    sha256: String,
}

/// The host name the browser used, to put in the command and the file.
fn host_of(headers: &HeaderMap, uri: &Uri, fallback: IpAddr) -> String {
    let raw = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.as_str().to_string()))
        .unwrap_or_default();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']')
            .next()
            .map(|h| format!("[{h}]"))
            .unwrap_or_default()
    } else {
        raw.rsplit_once(':')
            .map_or(raw.clone(), |(h, _)| h.to_string())
    };
    let fine = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    if fine {
        host
    } else if fallback.is_unspecified() {
        "localhost".into()
    } else {
        match fallback {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        }
    }
}

/// `s` as one shell word.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_alphanumeric() || "._-@+:/".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Where the set-up page suggests keeping the password.
const PASSWORD_FILE: &str = "~/.config/keyline/password";

/// The settings a terminal needs for this account (no password).
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) struct TerminalSettings {
    pub directory: String,
    pub directory_fp: String,
    pub account: String,
    pub numbers: Vec<String>,
    pub password_file: String,
}

async fn terminal_settings(
    web: &Web,
    headers: &HeaderMap,
    uri: &Uri,
    user: &str,
) -> Result<Option<TerminalSettings>, String> {
    let u = user.to_string();
    let Some(acct) = store::blocking(&web.shared.store, move |s| s.account(&u))
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let local = web.shared.local_addr;
    Ok(Some(TerminalSettings {
        directory: format!("{}:{}", host_of(headers, uri, local.ip()), local.port()),
        directory_fp: web.shared.id.fingerprint.clone(),
        account: acct.id,
        numbers: acct.numbers,
        password_file: PASSWORD_FILE.into(),
    }))
}

fn command_for(s: &TerminalSettings) -> String {
    let mut c = format!(
        "keyline-agent terminal --directory {} --directory-fp {} --account {}",
        shell_word(&s.directory),
        shell_word(&s.directory_fp),
        shell_word(&s.account)
    );
    for n in &s.numbers {
        c.push_str(" --number ");
        c.push_str(&shell_word(n));
    }
    c.push_str(" --password-file ");
    c.push_str(s.password_file.as_str());
    c
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Done {
    pub(super) welcome: Option<String>,
    pub(super) done: Option<String>,
}

pub(super) async fn setup(
    State(web): State<App>,
    SignedIn {
        lang,
        headers,
        session,
    }: SignedIn,
    uri: Uri,
    UrlQuery(q): UrlQuery<Done>,
) -> Response {
    let settings = match terminal_settings(&web, &headers, &uri, &session.user).await {
        Ok(Some(s)) => s,
        Ok(None) => return gone(&web, &headers).await,
        Err(e) => return failed(lang, e),
    };
    let packages = packages(&web).await;
    let t = Text::of(lang);
    let mut p = Page::new(lang, t.setup, Some(&session), "/setup");
    p.admin = is_admin(&web, Some(&session)).await;
    if q.welcome.is_some() {
        p.notice = Some(t.welcome.to_string());
    }
    render(
        StatusCode::OK,
        &SetupT {
            p,
            fingerprint: settings.directory_fp.clone(),
            command: command_for(&settings),
            packages: packages
                .into_iter()
                .map(|(name, size, sha256)| PackageView {
                    name,
                    size: human_size(size),
                    sha256,
                })
                .collect(),
        },
    )
}

pub(super) async fn config_file(
    State(web): State<App>,
    SignedIn {
        lang,
        headers,
        session,
    }: SignedIn,
    uri: Uri,
) -> Response {
    let settings = match terminal_settings(&web, &headers, &uri, &session.user).await {
        Ok(Some(s)) => s,
        Ok(None) => return gone(&web, &headers).await,
        Err(e) => return failed(lang, e),
    };
    let body = match toml::to_string(&settings) {
        Ok(b) => b,
        Err(e) => return failed(lang, e),
    };
    let text = format!(
        "# Keyline terminal settings for account {} at {}.\n\
         # No password is in this file: put it alone on the first line of\n\
         # {} (readable by you only).\n\
         # Start the terminal with:\n# {}\n\n{body}",
        settings.account,
        settings.directory,
        settings.password_file,
        command_for(&settings)
    );
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/toml; charset=utf-8"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"keyline-terminal.toml\""),
            ),
        ],
        text,
    )
        .into_response()
}

/// The `.deb` files of the configured folder: name, size and SHA-256.
/// A folder or a file that cannot be read is logged and left out: the
/// rest of the set-up page is worth more than the list.
async fn packages(web: &Web) -> Vec<(String, u64, String)> {
    let Some(dir) = web.shared.cfg().web.packages.clone() else {
        return Vec::new();
    };
    let shown = dir.clone();
    let list = match tokio::task::spawn_blocking(move || list_debs(&dir)).await {
        Ok(Ok(list)) => list,
        Ok(Err(e)) => {
            tracing::warn!("web: reading the packages folder {}: {e}", shown.display());
            return Vec::new();
        }
        Err(e) => {
            tracing::warn!("web: listing the packages: {e}");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (name, path, size, mtime) in list {
        let known = web
            .digests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&path)
            .filter(|(s, m, _)| *s == size && *m == mtime)
            .map(|(_, _, d)| d.clone());
        let digest = match known {
            Some(d) => d,
            None => {
                let p2 = path.clone();
                let d = match tokio::task::spawn_blocking(move || sha256_file(&p2)).await {
                    Ok(Ok(d)) => d,
                    Ok(Err(e)) => {
                        tracing::warn!("web: reading the package {}: {e}", path.display());
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("web: hashing the package {}: {e}", path.display());
                        continue;
                    }
                };
                web.digests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(path.clone(), (size, mtime, d.clone()));
                d
            }
        };
        out.push((name, size, digest));
    }
    out
}

/// Whether `name` may be offered: a plain file name (no separator, not
/// hidden) ending in `.deb`.
fn offered_name(name: &str) -> bool {
    name.ends_with(".deb") && !name.starts_with('.') && !name.contains(['/', '\\', '\0'])
}

/// The offered packages of `dir`, by name: regular files only (a link
/// could lead out of the folder), names in UTF-8. Entries that vanish or
/// cannot be looked at while listing are left out.
fn list_debs(dir: &Path) -> std::io::Result<Vec<(String, PathBuf, u64, SystemTime)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !offered_name(&name) {
            continue;
        }
        // DirEntry::metadata does not follow links.
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        out.push((
            name,
            entry.path(),
            meta.len(),
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        ));
    }
    out.sort();
    Ok(out)
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn human_size(bytes: u64) -> String {
    if bytes >= 1024 * 1024 {
        format!(
            "{:.1} MiB ({bytes} bytes)",
            bytes as f64 / (1024.0 * 1024.0)
        )
    } else if bytes >= 1024 {
        format!("{:.1} KiB ({bytes} bytes)", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} bytes")
    }
}

pub(super) async fn package(
    State(web): State<App>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    let Some(dir) = web.shared.cfg().web.packages.clone() else {
        return not_found(lang);
    };
    // Only a file the listing offers: a plain name ending in .deb, a
    // regular file (not a link) in the folder itself.
    if !offered_name(&name) {
        return not_found(lang);
    }
    let path = dir.join(&name);
    // Opened without following a link, and its kind and length read from
    // the open file itself: a link or folder put in its place between a
    // check and the open is never served, and the length is the file's.
    let opened = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .await;
    let file = match opened {
        Ok(f) => match f.metadata().await {
            Ok(meta) if meta.is_file() => Ok((f, meta.len())),
            Ok(_) => return not_found(lang),
            Err(e) => Err(e),
        },
        // ELOOP: the name is a link.
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => return not_found(lang),
        Err(e) => Err(e),
    };
    let (file, len) = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return not_found(lang),
        Err(e) => {
            tracing::warn!("web: opening the package {}: {e}", path.display());
            return not_found(lang);
        }
    };
    let disposition = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}\"",
        name.replace('"', "")
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/vnd.debian.binary-package"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CONTENT_LENGTH, HeaderValue::from(len)),
        ],
        Body::from_stream(read_in_pieces(file)),
    )
        .into_response()
}

/// A file's bytes, 64 KiB at a time (packages are megabytes each; many
/// downloads at once must not each hold a whole one in memory).
fn read_in_pieces(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}
