//! Logins, session tokens, password changes and forwarding rules asked
//! for on an endpoint's control stream (the login limiter's reservations
//! they take are [`crate::shared`]'s, shared with the web site).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use keyline_proto::dir::{
    DeviceInfo, DirMsg, ErrorCode, ForwardRule, ForwardWhen, NumberForwards, ReqId,
};
use tokio::sync::oneshot;

use super::session::{canon, error, Conn, LoggedIn};
use crate::auth;
use crate::hashing::Refused;
use crate::shared::Event;
use crate::store::{self, StoreError, StoreResult};

pub(super) fn rate_limited(req: ReqId, message: String, retry: Duration) -> DirMsg {
    DirMsg::Error {
        req: Some(req),
        code: ErrorCode::RateLimited,
        message,
        retry_after_ms: Some(retry.as_millis() as u64),
    }
}

/// The answer to a login the hashing pool turned away.
pub(super) fn busy(req: ReqId, why: Refused) -> DirMsg {
    match why {
        Refused::Busy => rate_limited(req, why.to_string(), Duration::from_secs(1)),
        Refused::Stopped => error(Some(req), ErrorCode::ShuttingDown, why.to_string()),
    }
}

pub(super) async fn login(
    c: &Arc<Conn>,
    req: ReqId,
    account: String,
    password: String,
) -> Result<()> {
    // No account has such a name: refused at once, and the name is not
    // kept (by the limiter) nor quoted.
    if auth::check_account_id(&account).is_err() {
        c.reply(error(
            Some(req),
            ErrorCode::BadCredentials,
            "wrong account or password (no account has such a name)",
        ));
        return Ok(());
    }
    let ip = c.conn.remote_address().ip();
    let now = Instant::now();
    let reserved = match c.shared.reserve_login(&account, ip) {
        Ok(r) => r,
        Err(locked) => {
            c.reply(rate_limited(
                req,
                locked.describe(now, &account),
                locked.retry_after(now),
            ));
            return Ok(());
        }
    };
    let acct = account.clone();
    let row = store::blocking(&c.shared.store, move |s| s.account(&acct)).await;
    let row = match row {
        Ok(r) => r,
        Err(e) => {
            c.reply(error(Some(req), ErrorCode::Storage, e.to_string()));
            return Ok(());
        }
    };
    let ok = match c
        .shared
        .check_password(row.as_ref().map(|r| r.pw_hash.clone()), password)
        .await
    {
        Ok(ok) => ok,
        Err(why) => {
            // Not a failure of the password: the reservation is given back.
            c.reply(busy(req, why));
            return Ok(());
        }
    };
    let row = match (ok, row) {
        (true, Some(r)) => {
            reserved.finish(true);
            r
        }
        _ => {
            let locked = reserved.finish(false);
            let now = Instant::now();
            tracing::info!("failed login for account {account:?} from {ip}");
            c.reply(match locked {
                Some(l) => rate_limited(
                    req,
                    format!("wrong account or password; {}", l.describe(now, &account)),
                    l.retry_after(now),
                ),
                None => error(
                    Some(req),
                    ErrorCode::BadCredentials,
                    "wrong account or password",
                ),
            });
            return Ok(());
        }
    };
    let token = auth::new_token();
    let th = auth::token_hash(&token);
    let ttl = c.shared.cfg().session_ttl();
    let (th2, acct) = (th.clone(), row.id.clone());
    let now_ms = store::now_ms();
    let expires = now_ms + ttl.as_millis() as i64;
    if let Err(e) = store::blocking(&c.shared.store, move |s| {
        s.insert_token(&th2, &acct, now_ms, expires)
    })
    .await
    {
        c.reply(error(Some(req), ErrorCode::Storage, e.to_string()));
        return Ok(());
    }
    logged_in(c, req, row.id, row.numbers, token, th, ttl).await
}

pub(super) async fn logged_in(
    c: &Arc<Conn>,
    req: ReqId,
    account: String,
    numbers: Vec<String>,
    token: String,
    token_hash: String,
    ttl: Duration,
) -> Result<()> {
    let numbers = c.shared.lists.share(&account, numbers);
    c.account.send_replace(Some(LoggedIn {
        account: account.clone(),
        numbers: numbers.clone(),
        token_hash: token_hash.clone(),
    }));
    c.hub(Event::LoggedIn {
        sid: c.sid,
        account: account.clone(),
        numbers: numbers.clone(),
        token_hash,
    })
    .await?;
    tracing::info!("session {} logged in as {account}", c.sid);
    c.reply(DirMsg::LoggedIn {
        req,
        account,
        numbers: numbers.to_vec(),
        token,
        expires_in_secs: ttl.as_secs(),
    });
    Ok(())
}

pub(super) async fn resume(c: &Arc<Conn>, req: ReqId, token: String) -> Result<()> {
    let ip = c.conn.remote_address().ip();
    let now = Instant::now();
    let checked = match c.shared.limiter.lock() {
        Ok(l) => l.check_address(now, ip),
        Err(_) => Ok(()),
    };
    if let Err(locked) = checked {
        c.reply(rate_limited(
            req,
            locked.describe(now, "-"),
            locked.retry_after(now),
        ));
        return Ok(());
    }
    let th = auth::token_hash(&token);
    let th2 = th.clone();
    let now_ms = store::now_ms();
    let found = store::blocking(&c.shared.store, move |s| {
        let Some(acct) = s.token_account(&th2, now_ms)? else {
            return Ok(None);
        };
        s.account(&acct)
    })
    .await;
    match found {
        Ok(Some(row)) => {
            let ttl = c.shared.cfg().session_ttl();
            logged_in(c, req, row.id, row.numbers, token, th, ttl).await
        }
        Ok(None) => {
            if let Ok(mut l) = c.shared.limiter.lock() {
                l.failure_address(Instant::now(), ip);
            }
            c.shared.login_checked(None, ip, false);
            c.reply(error(
                Some(req),
                ErrorCode::BadToken,
                "the session token is unknown or expired; log in with the password",
            ));
            Ok(())
        }
        Err(e) => {
            c.reply(error(Some(req), ErrorCode::Storage, e.to_string()));
            Ok(())
        }
    }
}

pub(super) async fn change_password(
    c: &Arc<Conn>,
    req: ReqId,
    old: String,
    new: String,
) -> Result<()> {
    let Some(who) = c.who() else {
        c.reply(error(Some(req), ErrorCode::NotLoggedIn, "log in first"));
        return Ok(());
    };
    if let Err(m) = auth::check_new_password(&new) {
        c.reply(error(Some(req), ErrorCode::WeakPassword, m));
        return Ok(());
    }
    let ip = c.conn.remote_address().ip();
    let now = Instant::now();
    let reserved = match c.shared.reserve_login(&who.account, ip) {
        Ok(r) => r,
        Err(locked) => {
            c.reply(rate_limited(
                req,
                locked.describe(now, &who.account),
                locked.retry_after(now),
            ));
            return Ok(());
        }
    };
    let store = c.shared.store.clone();
    let (acct, keep) = (who.account.clone(), who.token_hash.clone());
    c.shared.password_checks.fetch_add(1, Ordering::Relaxed);
    let res = c.shared.hashing.run(move || -> Result<bool, StoreError> {
        let Some(row) = store.account(&acct)? else {
            return Err(StoreError::NotFound(format!(
                "account {acct} no longer exists"
            )));
        };
        if !auth::verify_password(&row.pw_hash, &old) {
            return Ok(false);
        }
        let h = auth::hash_password(&new).map_err(|e| StoreError::Backend(e.to_string()))?;
        store.set_password(&acct, &h, Some(&keep))?;
        Ok(true)
    });
    let res = match res.await {
        Ok(r) => r,
        Err(why) => {
            c.reply(busy(req, why));
            return Ok(());
        }
    };
    match res {
        Ok(true) => {
            reserved.finish(true);
            c.hub(Event::Reload {
                logout: Some(who.account.clone()),
                keep: Some(c.sid),
                done: None,
            })
            .await?;
            tracing::info!("account {} changed its password", who.account);
            c.reply(DirMsg::Ok { req });
        }
        Ok(false) => {
            reserved.finish(false);
            c.reply(error(
                Some(req),
                ErrorCode::BadCredentials,
                "the old password is wrong",
            ));
        }
        Err(e) => c.reply(error(Some(req), ErrorCode::Storage, e.to_string())),
    }
    Ok(())
}

/// A change to one number's forwarding rules asked for on the control
/// stream.
pub(super) enum ForwardChange {
    /// `SetForward`: one kind's rule, or (none) clear them all.
    Set(Option<ForwardRule>),
    /// `ForwardOff`: one kind's rule, or (none) all of them, off.
    Off(Option<ForwardWhen>),
}

pub(super) async fn forward_change(
    c: &Arc<Conn>,
    req: ReqId,
    number: String,
    change: ForwardChange,
) -> Result<()> {
    let Some(who) = c.who() else {
        c.reply(error(Some(req), ErrorCode::NotLoggedIn, "log in first"));
        return Ok(());
    };
    let number = match canon(&number).map(String::from) {
        Ok(n) => n,
        Err(m) => {
            c.reply(error(Some(req), ErrorCode::InvalidNumber, m));
            return Ok(());
        }
    };
    if !who.numbers.contains(&number) {
        c.reply(error(
            Some(req),
            ErrorCode::NotYourNumber,
            format!("{number} is not a number of account {}", who.account),
        ));
        return Ok(());
    }
    let change = match change {
        ForwardChange::Set(Some(r)) => match canon(&r.to).map(String::from) {
            Ok(to) => ForwardChange::Set(Some(ForwardRule { to, ..r })),
            Err(m) => {
                c.reply(error(Some(req), ErrorCode::InvalidNumber, m));
                return Ok(());
            }
        },
        other => other,
    };
    let n2 = number.clone();
    let res = store::blocking(&c.shared.store, move |s| {
        match &change {
            ForwardChange::Set(rule) => s.set_forward(&n2, rule.as_ref(), store::now_ms())?,
            ForwardChange::Off(when) => {
                s.forward_off(&n2, *when)?;
            }
        }
        s.forwards(&n2)
    })
    .await;
    match res {
        Ok(rules) => {
            c.hub(Event::ForwardChanged { number, rules }).await?;
            c.reply(DirMsg::Ok { req });
        }
        Err(StoreError::NotFound(m)) => c.reply(error(Some(req), ErrorCode::UnknownNumber, m)),
        Err(StoreError::Invalid(m)) => c.reply(error(Some(req), ErrorCode::ForwardLoop, m)),
        Err(e) => c.reply(error(Some(req), ErrorCode::Storage, e.to_string())),
    }
    Ok(())
}

/// `AccountQuery`: the account's numbers as they are now, and its devices
/// on every node (the web site's list), this one marked.
pub(super) async fn account_info(c: &Arc<Conn>, req: ReqId) -> Result<()> {
    let Some(who) = c.who() else {
        c.reply(error(Some(req), ErrorCode::NotLoggedIn, "log in first"));
        return Ok(());
    };
    let id = who.account.clone();
    let numbers = match store::blocking(&c.shared.store, move |s| s.account(&id)).await {
        Ok(Some(a)) => a.numbers,
        Ok(None) => {
            c.reply(error(
                Some(req),
                ErrorCode::NotLoggedIn,
                "the account is gone",
            ));
            return Ok(());
        }
        Err(e) => {
            c.reply(error(Some(req), ErrorCode::Storage, e.to_string()));
            return Ok(());
        }
    };
    let (tx, rx) = oneshot::channel();
    let asked = c
        .shared
        .hub
        .send(Event::Devices {
            account: who.account.clone(),
            reply: tx,
        })
        .await;
    let devices = match (asked, rx.await) {
        (Ok(()), Ok(d)) => d,
        _ => {
            c.reply(error(
                Some(req),
                ErrorCode::Storage,
                "the directory is stopping",
            ));
            return Ok(());
        }
    };
    let here = c.shared.cluster.get().map(|l| l.node.clone());
    let devices = devices
        .into_iter()
        .map(|d| DeviceInfo {
            this: d.session == c.sid,
            address: d.address,
            name: d.name,
            client: d.client,
            node: d.node.or_else(|| here.clone()),
            numbers: d.numbers,
            refreshed_s_ago: d.refreshed_s_ago,
        })
        .collect();
    c.reply(DirMsg::AccountInfo {
        req,
        account: who.account,
        numbers,
        devices,
    });
    Ok(())
}

/// `ListForwards`: the rules of every number of the account.
pub(super) async fn list_forwards(c: &Arc<Conn>, req: ReqId) -> Result<()> {
    let Some(who) = c.who() else {
        c.reply(error(Some(req), ErrorCode::NotLoggedIn, "log in first"));
        return Ok(());
    };
    let numbers = who.numbers.to_vec();
    let res = store::blocking(&c.shared.store, move |s| {
        numbers
            .into_iter()
            .map(|number| {
                let rules = s.forwards(&number)?;
                Ok(NumberForwards { number, rules })
            })
            .collect::<StoreResult<Vec<_>>>()
    })
    .await;
    match res {
        Ok(numbers) => c.reply(DirMsg::Forwards { req, numbers }),
        Err(e) => c.reply(error(Some(req), ErrorCode::Storage, e.to_string())),
    }
    Ok(())
}
