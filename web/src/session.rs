//! Logged-in browsers: random session ids in HttpOnly, Secure,
//! SameSite=Strict cookies, each with its own CSRF token. [`Sessions`]
//! keeps them in memory (a restart logs everyone out, which an admin page
//! can afford); a site that keeps them elsewhere (the directory's, in its
//! store, for every node) uses [`Session`], [`session_cookie`],
//! [`cookie_value`] and [`random_token`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::header::{self, HeaderMap, HeaderValue};
use rand::RngCore;

/// Sessions kept at most; the longest idle goes first beyond it.
const MAX_SESSIONS: usize = 10_000;

/// One browser's login.
#[derive(Clone, Debug)]
pub struct Session {
    /// The cookie's value.
    pub id: String,
    /// Who logged in.
    pub user: String,
    /// The token every form of this session carries.
    pub csrf: String,
}

impl Session {
    /// Whether a form's token is this session's (compared in constant time).
    pub fn check_csrf(&self, token: &str) -> bool {
        constant_time_eq(self.csrf.as_bytes(), token.as_bytes())
    }
}

struct Entry {
    session: Session,
    last_used: Instant,
}

/// The sessions of one site. Cloning shares them.
#[derive(Clone)]
pub struct Sessions {
    cookie: &'static str,
    idle: Duration,
    inner: Arc<Mutex<HashMap<String, Entry>>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("cookie", &self.cookie)
            .field("idle", &self.idle)
            .field("count", &self.lock().len())
            .finish()
    }
}

impl Sessions {
    /// Sessions carried in cookie `cookie_name`, ended after `idle` unused.
    pub fn new(cookie_name: &'static str, idle: Duration) -> Sessions {
        Sessions {
            cookie: cookie_name,
            idle,
            inner: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic elsewhere while holding the lock leaves a consistent map.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session for `user` (a new id and CSRF token, so an id set
    /// before login is never kept), and the Set-Cookie header that carries it.
    pub fn login(&self, user: &str) -> (Session, HeaderValue) {
        let session = Session {
            id: random_token(),
            user: user.to_string(),
            csrf: random_token(),
        };
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, e| now.duration_since(e.last_used) < self.idle);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            session.id.clone(),
            Entry {
                session: session.clone(),
                last_used: now,
            },
        );
        drop(map);
        let cookie = self.set_cookie(&session.id, None);
        (session, cookie)
    }

    /// The session the request's cookie names, if it is alive; using it
    /// keeps it alive.
    pub fn get(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie_value(headers, self.cookie)?;
        let now = Instant::now();
        let mut map = self.lock();
        let entry = map.get_mut(id)?;
        if now.duration_since(entry.last_used) >= self.idle {
            map.remove(id);
            return None;
        }
        entry.last_used = now;
        Some(entry.session.clone())
    }

    /// Ends the request's session; the header clears the cookie.
    pub fn logout(&self, headers: &HeaderMap) -> HeaderValue {
        if let Some(id) = cookie_value(headers, self.cookie) {
            self.lock().remove(id);
        }
        self.set_cookie("", Some(0))
    }

    /// Ends every session of `user` except `except` (a session id): after a
    /// password change, or when the account is deleted.
    pub fn end_user(&self, user: &str, except: Option<&str>) {
        self.lock()
            .retain(|id, e| e.session.user != user || Some(id.as_str()) == except);
    }

    /// The user's sessions follow a change of name.
    pub fn rename_user(&self, old: &str, new: &str) {
        for e in self.lock().values_mut() {
            if e.session.user == old {
                e.session.user = new.to_string();
            }
        }
    }

    /// Sessions alive now.
    pub fn count(&self) -> usize {
        let now = Instant::now();
        self.lock()
            .values()
            .filter(|e| now.duration_since(e.last_used) < self.idle)
            .count()
    }

    fn set_cookie(&self, value: &str, max_age: Option<u64>) -> HeaderValue {
        session_cookie(self.cookie, value, max_age)
    }
}

/// The Set-Cookie header of a session cookie: HttpOnly, Secure,
/// SameSite=Strict, for the whole site; `max_age: Some(0)` clears it.
pub fn session_cookie(name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let mut s = format!("{name}={value}; Path=/; HttpOnly; Secure; SameSite=Strict");
    if let Some(age) = max_age {
        s.push_str(&format!("; Max-Age={age}"));
    }
    // Names are static identifiers and values hex: always valid.
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// 256 random bits, hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(v).expect("ascii"));
        h
    }

    #[test]
    fn login_sets_a_strict_cookie_and_get_finds_it() {
        let s = Sessions::new("kl", Duration::from_secs(60));
        let (session, cookie) = s.login("admin");
        let c = cookie.to_str().expect("ascii");
        assert!(c.starts_with(&format!("kl={}", session.id)), "{c}");
        for part in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
        assert_eq!(session.id.len(), 64);
        assert_ne!(session.id, session.csrf);
        let got = s
            .get(&with_cookie(&format!("lang=ko; kl={}", session.id)))
            .expect("session");
        assert_eq!(got.user, "admin");
        assert!(got.check_csrf(&session.csrf));
        assert!(!got.check_csrf(""));
        assert!(!got.check_csrf(&session.id));
        assert!(s.get(&with_cookie("kl=00")).is_none());
        assert!(s.get(&HeaderMap::new()).is_none());
    }

    #[test]
    fn logout_and_end_user_end_sessions() {
        let s = Sessions::new("kl", Duration::from_secs(60));
        let (a, _) = s.login("minjun");
        let (b, _) = s.login("minjun");
        let (c, _) = s.login("seoyeon");
        s.end_user("minjun", Some(&a.id));
        assert!(s.get(&with_cookie(&format!("kl={}", a.id))).is_some());
        assert!(s.get(&with_cookie(&format!("kl={}", b.id))).is_none());
        s.rename_user("seoyeon", "sy");
        let h = with_cookie(&format!("kl={}", c.id));
        assert_eq!(s.get(&h).map(|x| x.user), Some("sy".to_string()));
        let clear = s.logout(&h);
        assert!(clear.to_str().expect("ascii").contains("Max-Age=0"));
        assert!(s.get(&h).is_none());
        assert_eq!(s.count(), 1);
    }

    #[test]
    fn idle_sessions_expire() {
        let s = Sessions::new("kl", Duration::from_millis(0));
        let (a, _) = s.login("x");
        assert!(s.get(&with_cookie(&format!("kl={}", a.id))).is_none());
    }
}
