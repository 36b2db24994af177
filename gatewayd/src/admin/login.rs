//! Logging in and out: the login form with its CSRF token in a cookie of
//! its own (there is no session yet), the password checked against the
//! stored hash, and the login rate limit per address.

use super::*;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    title: &'a str,
    here: &'a str,
    csrf: Option<&'a str>,
    /// The login form's own token (see [`LOGIN_COOKIE`]).
    login_csrf: &'a str,
    notice: Option<&'a str>,
    error: Option<&'a str>,
}

const NO_PASSWORD: &str = "The admin site is off until an admin password is set: on the gateway, run `keyline-gatewayd admin passwd`.";

pub(super) async fn login_page<O: Office>(State(st): St<O>, headers: HeaderMap) -> Response {
    if st.office.password_hash().await.is_none() {
        return message(StatusCode::SERVICE_UNAVAILABLE, "Log in", NO_PASSWORD);
    }
    login_form(StatusCode::OK, &headers, None)
}

/// The cookie that carries the login form's CSRF token (there is no
/// session yet): the form's hidden field must equal it.
const LOGIN_COOKIE: &str = "keyline_admin_login";

/// The login form's token: the browser's, when it has a well-formed one.
fn login_token(headers: &HeaderMap) -> Option<String> {
    keyline_web::session::cookie_value(headers, LOGIN_COOKIE)
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn login_form(status: StatusCode, headers: &HeaderMap, error: Option<&str>) -> Response {
    let token = login_token(headers).unwrap_or_else(keyline_web::session::random_token);
    let cookie = format!(
        "{LOGIN_COOKIE}={token}; Path=/login; Max-Age=3600; HttpOnly; Secure; SameSite=Strict"
    );
    let mut r = html(
        status,
        LoginPage {
            title: "Log in",
            here: "login",
            csrf: None,
            login_csrf: &token,
            notice: None,
            error,
        },
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn wait_words(d: Duration) -> String {
    let mins = d.as_secs().div_ceil(60);
    if mins <= 1 {
        "a minute".into()
    } else {
        format!("{mins} minutes")
    }
}

pub(super) async fn login<O: Office>(
    State(st): St<O>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let ip: IpAddr = peer.ip();
    let Some(hash) = st.office.password_hash().await else {
        return message(StatusCode::SERVICE_UNAVAILABLE, "Log in", NO_PASSWORD);
    };
    let token_ok = match (login_token(&headers), form.get("csrf")) {
        (Some(c), Some(f)) => same_token(&c, f),
        _ => false,
    };
    if !token_ok {
        return message(
            StatusCode::FORBIDDEN,
            "Refused",
            "This form is missing its security token (or it is stale). Go back, reload the page and try again.",
        );
    }
    let locked = st
        .limiter
        .lock()
        .ok()
        .and_then(|l| l.locked(Instant::now(), ip));
    if let Some(wait) = locked {
        return login_form(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            Some(&format!(
                "Too many wrong passwords from your address: locked out. Try again in {}.",
                wait_words(wait)
            )),
        );
    }
    let pw = form.get("password").cloned().unwrap_or_default();
    let ok = if pw.is_empty() || pw.len() > MAX_PASSWORD {
        false
    } else {
        let Ok(_permit) = st.checks.acquire().await else {
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Log in",
                "The gateway is stopping.",
            );
        };
        tokio::task::spawn_blocking(move || verify_password(&hash, &pw))
            .await
            .unwrap_or(false)
    };
    if ok {
        if let Ok(mut l) = st.limiter.lock() {
            l.success(ip);
        }
        let (_, cookie) = st.sessions.login("admin");
        tracing::info!("admin site: logged in from {peer}");
        return ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response();
    }
    st.office.metrics().login_failures.increment(1);
    let failed = st
        .limiter
        .lock()
        .map(|mut l| l.failure(Instant::now(), ip))
        .unwrap_or(Failed::Left(0));
    match failed {
        Failed::Left(n) => login_form(
            StatusCode::UNAUTHORIZED,
            &headers,
            Some(&format!(
                "Wrong password. {n} more {} before a lockout.",
                if n == 1 { "try" } else { "tries" }
            )),
        ),
        Failed::LockedOut(wait) => {
            st.office.metrics().lockouts.increment(1);
            tracing::warn!("admin site: {peer} locked out after wrong passwords");
            login_form(
                StatusCode::TOO_MANY_REQUESTS,
                &headers,
                Some(&format!(
                    "Too many wrong passwords from your address: locked out. Try again in {}.",
                    wait_words(wait)
                )),
            )
        }
    }
}

pub(super) async fn logout<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = checked_form(&st, &headers, &form) {
        return r;
    }
    let cookie = st.sessions.logout(&headers);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}
