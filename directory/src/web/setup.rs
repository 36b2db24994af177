//! Setting up the phone (`/setup`): the terminal's command line and
//! settings file for this account and host, and the `.deb` packages of
//! the configured folder with their SHA-256.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use askama::Template;
use axum::extract::{Path as UrlPath, Query as UrlQuery, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use keyline_web::Lang;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::session::{authed, gone};
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
    headers: HeaderMap,
    uri: Uri,
    UrlQuery(q): UrlQuery<Done>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    let session = match authed(&web, &headers, None).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let settings = match terminal_settings(&web, &headers, &uri, &session.user).await {
        Ok(Some(s)) => s,
        Ok(None) => return gone(&web, &headers).await,
        Err(e) => return failed(lang, e),
    };
    let packages = match packages(&web).await {
        Ok(p) => p,
        Err(e) => return failed(lang, e),
    };
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

pub(super) async fn config_file(State(web): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    let lang = Lang::from_headers(&headers);
    let session = match authed(&web, &headers, None).await {
        Ok(s) => s,
        Err(r) => return r,
    };
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
async fn packages(web: &Web) -> Result<Vec<(String, u64, String)>, String> {
    let Some(dir) = web.shared.cfg().web.packages.clone() else {
        return Ok(Vec::new());
    };
    let list = tokio::task::spawn_blocking(move || list_debs(&dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (path, size, mtime) in list {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
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
                let d = tokio::task::spawn_blocking(move || sha256_file(&p2))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                web.digests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(path.clone(), (size, mtime, d.clone()));
                d
            }
        };
        out.push((name, size, digest));
    }
    Ok(out)
}

fn list_debs(dir: &Path) -> std::io::Result<Vec<(PathBuf, u64, SystemTime)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.ends_with(".deb") || name.starts_with('.') {
            continue;
        }
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        out.push((
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
    // Only a file the listing offers: a plain name ending in .deb.
    if name.contains('/') || name.contains('\\') || name.starts_with('.') || !name.ends_with(".deb")
    {
        return not_found(lang);
    }
    let path = dir.join(&name);
    match tokio::fs::read(&path).await {
        Ok(body) => {
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
                ],
                body,
            )
                .into_response()
        }
        Err(_) => not_found(lang),
    }
}
