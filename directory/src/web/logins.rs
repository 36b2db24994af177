//! Browser sessions of the directory's site, kept in the store rather than
//! in one process's memory, so that every node of a cluster knows each of
//! them: a person logged in through one node is logged in at all of them
//! (behind a load balancer or a name with several addresses), and logging
//! out, a password change or a deleted account ends the session everywhere
//! at once. The store keeps the SHA-256 of the cookie's value, never the
//! value.

use std::sync::Arc;
use std::time::Duration;

use axum::http::header::{HeaderMap, HeaderValue};
use keyline_web::session::{cookie_value, random_token, session_cookie, Session};

use super::session::SESSION_COOKIE;
use crate::auth::token_hash;
use crate::store::{self, Store, StoreResult, WebSession};

/// Browser sessions one account may keep; its least recently used end
/// beyond this.
const MAX_PER_ACCOUNT: usize = 20;

/// The site's sessions, in the store.
pub(super) struct Logins {
    store: Arc<dyn Store>,
    idle_ms: i64,
}

impl Logins {
    /// Sessions ended after `idle` unused.
    pub(super) fn new(store: Arc<dyn Store>, idle: Duration) -> Logins {
        Logins {
            store,
            idle_ms: i64::try_from(idle.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// A new session for `user` (a new id and CSRF token, so an id set
    /// before login is never kept), and the Set-Cookie header that carries
    /// it; refused when the password changed after `checked_ms` (when the
    /// one that let the person in was read). Sessions left idle by anyone
    /// are forgotten on the way.
    pub(super) async fn login(
        &self,
        user: &str,
        checked_ms: i64,
    ) -> StoreResult<(Session, HeaderValue)> {
        let session = Session {
            id: random_token(),
            user: user.to_string(),
            csrf: random_token(),
        };
        let now = store::now_ms();
        let row = WebSession {
            id_hash: token_hash(&session.id),
            account: session.user.clone(),
            csrf: session.csrf.clone(),
            created_ms: now,
            used_ms: now,
        };
        let idle = self.idle_ms;
        store::blocking(&self.store, move |s| {
            s.purge_web_sessions(now, idle)?;
            s.add_web_session(&row, MAX_PER_ACCOUNT, checked_ms)
        })
        .await?;
        let cookie = session_cookie(SESSION_COOKIE, &session.id, None);
        Ok((session, cookie))
    }

    /// The live session the request's cookie names, if any; using it keeps
    /// it alive.
    pub(super) async fn get(&self, headers: &HeaderMap) -> StoreResult<Option<Session>> {
        let Some(id) = cookie_value(headers, SESSION_COOKIE).filter(|v| v.len() == 64) else {
            return Ok(None);
        };
        let id = id.to_string();
        let hash = token_hash(&id);
        let idle = self.idle_ms;
        let row = store::blocking(&self.store, move |s| {
            s.web_session(&hash, store::now_ms(), idle)
        })
        .await?;
        Ok(row.map(|r| Session {
            id,
            user: r.account,
            csrf: r.csrf,
        }))
    }

    /// Ends the request's session; the header clears the cookie either way.
    pub(super) async fn logout(&self, headers: &HeaderMap) -> HeaderValue {
        if let Some(id) = cookie_value(headers, SESSION_COOKIE) {
            let hash = token_hash(id);
            if let Err(e) = store::blocking(&self.store, move |s| s.delete_web_session(&hash)).await
            {
                tracing::warn!("web: ending a session: {e}");
            }
        }
        session_cookie(SESSION_COOKIE, "", Some(0))
    }

    /// Ends every session of `user` except `except` (a session id): after a
    /// password or ID change, or when the account is deleted.
    pub(super) async fn end_user(&self, user: &str, except: Option<&str>) -> StoreResult<usize> {
        let user = user.to_string();
        let except = except.map(token_hash);
        store::blocking(&self.store, move |s| {
            s.end_web_sessions(&user, except.as_deref())
        })
        .await
    }
}
