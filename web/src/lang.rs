//! The page language: English or Korean.

use axum::http::header::{self, HeaderMap, HeaderValue};

use crate::session::cookie_value;

/// A language the sites are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    En,
    Ko,
}

impl Lang {
    /// The switch's `lang` cookie first, then the best of the browser's
    /// `Accept-Language` that the sites speak, else English.
    pub fn from_headers(headers: &HeaderMap) -> Lang {
        if let Some(l) = cookie_value(headers, "lang").and_then(Lang::from_code) {
            return l;
        }
        let Some(accept) = headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
        else {
            return Lang::En;
        };
        let mut best: Option<(f32, Lang)> = None;
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let primary = tag.split('-').next().unwrap_or("");
            let Some(lang) = Lang::from_code(&primary.to_ascii_lowercase()) else {
                continue;
            };
            if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, lang));
            }
        }
        best.map_or(Lang::En, |(_, l)| l)
    }

    /// `en` or `ko`, as in `<html lang>`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ko => "ko",
        }
    }

    /// The language for a code, if the sites speak it.
    pub fn from_code(code: &str) -> Option<Lang> {
        match code {
            "en" => Some(Lang::En),
            "ko" => Some(Lang::Ko),
            _ => None,
        }
    }

    /// The Set-Cookie header that keeps this choice for a year.
    pub fn cookie(self) -> HeaderValue {
        match self {
            Lang::En => HeaderValue::from_static(
                "lang=en; Path=/; Max-Age=31536000; Secure; SameSite=Strict",
            ),
            Lang::Ko => HeaderValue::from_static(
                "lang=ko; Path=/; Max-Age=31536000; Secure; SameSite=Strict",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: header::HeaderName, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, HeaderValue::from_str(v).expect("ascii"));
        m
    }

    #[test]
    fn accept_language_picks_the_best_spoken() {
        let al = header::ACCEPT_LANGUAGE;
        assert_eq!(Lang::from_headers(&HeaderMap::new()), Lang::En);
        assert_eq!(
            Lang::from_headers(&h(al.clone(), "ko-KR,ko;q=0.9,en-US;q=0.8")),
            Lang::Ko
        );
        assert_eq!(
            Lang::from_headers(&h(al.clone(), "fr-FR, en;q=0.5, ko;q=0.7")),
            Lang::Ko
        );
        assert_eq!(Lang::from_headers(&h(al.clone(), "de, fr")), Lang::En);
        assert_eq!(
            Lang::from_headers(&h(al.clone(), "ko;q=0, en;q=0.1")),
            Lang::En
        );
        assert_eq!(Lang::from_headers(&h(al, "KO")), Lang::Ko);
    }

    #[test]
    fn the_switch_wins() {
        let mut m = h(header::ACCEPT_LANGUAGE, "ko");
        m.insert(header::COOKIE, HeaderValue::from_static("lang=en"));
        assert_eq!(Lang::from_headers(&m), Lang::En);
        assert!(Lang::Ko
            .cookie()
            .to_str()
            .expect("ascii")
            .starts_with("lang=ko;"));
    }
}
