//! The site's handlers without a browser or a socket: requests go
//! straight into the router (`tower::ServiceExt::oneshot`), against an
//! in-memory store and a real hub.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use keyline_proto::dir::{ForwardRule, ForwardWhen, MailKind};
use keyline_tests::form_encode as enc;
use tower::ServiceExt;

use super::setup::TerminalSettings;
use super::{router, Web};
use crate::auth;
use crate::config::{Config, Signup};
use crate::shared::Shared;
use crate::store::{NewMail, Quota, SqliteStore, Store};

/// A browser: cookies kept between requests, one address.
struct Browser {
    app: Router,
    cookies: HashMap<String, String>,
    peer: SocketAddr,
    lang: Option<&'static str>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The CSRF token of the page's first form.
    fn csrf(&self) -> String {
        let key = "name=\"csrf\" value=\"";
        let i = self.body.find(key).map(|i| i + key.len()).unwrap_or(0);
        self.body[i..].split('"').next().unwrap_or("").to_string()
    }
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Browser {
    fn new(app: Router) -> Browser {
        Browser {
            app,
            cookies: HashMap::new(),
            peer: SocketAddr::from(([192, 0, 2, 7], 40000)),
            lang: None,
        }
    }

    async fn send(&mut self, method: Method, uri: &str, body: Option<String>) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if !self.cookies.is_empty() {
            let c = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            req = req.header(header::COOKIE, c);
        }
        if let Some(l) = self.lang {
            req = req.header(header::ACCEPT_LANGUAGE, l);
        }
        req = req.header(header::HOST, "dir.example:7480");
        let mut req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(b)),
            None => req.body(Body::empty()),
        }
        .expect("request");
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let resp = self.app.clone().oneshot(req).await.expect("response");
        let status = resp.status();
        let headers = resp.headers().clone();
        for v in headers.get_all(header::SET_COOKIE) {
            let v = v.to_str().expect("cookie");
            let pair = v.split(';').next().unwrap_or("");
            if let Some((k, val)) = pair.split_once('=') {
                if val.is_empty() || v.contains("Max-Age=0") {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_string(), val.to_string());
                }
            }
        }
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&mut self, uri: &str) -> Reply {
        self.send(Method::GET, uri, None).await
    }

    async fn post(&mut self, uri: &str, fields: &[(&str, &str)]) -> Reply {
        self.send(Method::POST, uri, Some(form(fields))).await
    }

    async fn sign_up(&mut self, id: &str, pw: &str, number: &str) -> Reply {
        let page = self.get("/signup").await;
        let csrf = page.csrf();
        self.post(
            "/signup",
            &[
                ("csrf", &csrf),
                ("id", id),
                ("password", pw),
                ("repeat", pw),
                ("number", number),
            ],
        )
        .await
    }

    async fn log_in(&mut self, id: &str, pw: &str) -> Reply {
        let page = self.get("/login").await;
        let csrf = page.csrf();
        self.post("/login", &[("csrf", &csrf), ("id", id), ("password", pw)])
            .await
    }
}

fn site(cfg: Config) -> (Arc<Shared>, Router) {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().expect("store"));
    let shared = Shared::for_tests(store, cfg).expect("shared");
    let app = router(Arc::new(Web::new(shared.clone())), false);
    (shared, app)
}

#[tokio::test]
async fn sign_up_set_up_and_download_the_settings() {
    let (shared, app) = site(Config::default());
    let mut b = Browser::new(app);
    let page = b.get("/signup").await;
    assert_eq!(page.status, StatusCode::OK);
    for label in [
        ">ID</label>",
        ">Password</label>",
        ">Repeat password</label>",
        ">Number</label>",
        ">Sign up</button>",
    ] {
        assert!(page.body.contains(label), "{label} missing");
    }
    assert!(page
        .headers
        .get(header::CONTENT_SECURITY_POLICY)
        .is_some_and(|v| v.to_str().unwrap_or("").contains("script-src 'self'")));
    assert!(!page.body.contains("<script>"), "no inline script");

    let r = b.sign_up("minjun", "correct horse", "김민준").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), "/setup?welcome=1");
    let acct = shared
        .store
        .account("minjun")
        .expect("query")
        .expect("created");
    assert_eq!(acct.numbers, vec!["김민준"]);
    assert!(auth::verify_password(&acct.pw_hash, "correct horse"));

    let setup = b.get("/setup?welcome=1").await;
    assert_eq!(setup.status, StatusCode::OK);
    assert!(setup.body.contains(&shared.id.fingerprint));
    let command = format!(
        "keyline-agent terminal --directory dir.example:7480 --directory-fp {} --account minjun --number 김민준 --password-file",
        shared.id.fingerprint
    );
    assert!(setup.body.contains(&command), "{}", setup.body);

    let file = b.get("/setup/keyline-terminal.toml").await;
    assert_eq!(file.status, StatusCode::OK);
    assert!(file
        .headers
        .get(header::CONTENT_DISPOSITION)
        .is_some_and(|v| v.to_str().unwrap_or("").contains("attachment")));
    let body: String = file
        .body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let settings: TerminalSettings = toml::from_str(&body).expect("toml");
    assert_eq!(settings.account, "minjun");
    assert_eq!(settings.numbers, vec!["김민준"]);
    assert_eq!(settings.directory, "dir.example:7480");
    assert_eq!(settings.directory_fp, shared.id.fingerprint);
    assert!(!file.body.contains("correct horse"));

    // Log out, then the account pages send the browser to log in.
    let account = b.get("/account").await;
    let csrf = account.csrf();
    let out = b.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    let again = b.get("/account").await;
    assert_eq!(again.status, StatusCode::SEE_OTHER);
    assert_eq!(again.location(), "/login");
}

#[tokio::test]
async fn bad_sign_ups_create_nothing_and_say_why_next_to_the_field() {
    let (shared, app) = site(Config::default());
    let mut b = Browser::new(app);
    let r = b.sign_up("first", "password one", "2001").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);

    let mut c = Browser::new(b.app.clone());
    // A taken number (canonicalised: separators do not make it new).
    let r = c.sign_up("second", "password two", "20-01").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("id=\"number-error\""), "{}", r.body);
    assert!(r.body.contains("The number 2001 is taken"), "{}", r.body);

    // Mismatched passwords.
    let page = c.get("/signup").await;
    let csrf = page.csrf();
    let r = c
        .post(
            "/signup",
            &[
                ("csrf", &csrf),
                ("id", "second"),
                ("password", "password two"),
                ("repeat", "password 2"),
                ("number", "3001"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("id=\"repeat-error\""));
    assert!(r.body.contains("The passwords do not match"));
    assert!(r.body.contains("value=\"second\""), "typed values stay");

    // Overlong fields.
    let long_id = "x".repeat(65);
    let long_pw = "p".repeat(1025);
    let long_number = "9".repeat(2000);
    let r = c
        .post(
            "/signup",
            &[
                ("csrf", &csrf),
                ("id", &long_id),
                ("password", &long_pw),
                ("repeat", &long_pw),
                ("number", &long_number),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("The ID is too long"));
    assert!(r.body.contains("The password is too long"));
    assert!(r.body.contains("The number is too long"));

    // Markup in a number is shown escaped, never as markup: on an error
    // next to the field, and on the account page of the account that
    // took it (it is a valid number: an office part and an extension).
    let r = c
        .sign_up("third", "short", "<script>alert(1)</script>")
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!r.body.contains("<script>alert"), "{}", r.body);
    assert!(r.body.contains("&#60;script&#62;alert(1)"), "{}", r.body);
    let mut e = Browser::new(b.app.clone());
    let r = e
        .sign_up("third", "password three", "<script>alert(1)</script>")
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let page = e.get("/account").await;
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    assert!(page
        .body
        .contains("&#60;script&#62;alert1&#60;/script&#62;"));

    // No CSRF token (or another browser's): refused.
    let r = c
        .post(
            "/signup",
            &[
                ("id", "fourth"),
                ("password", "password four"),
                ("repeat", "password four"),
                ("number", "4001"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let mut d = Browser::new(b.app.clone());
    let r = d
        .post(
            "/signup",
            &[
                ("csrf", &csrf),
                ("id", "fourth"),
                ("password", "password four"),
                ("repeat", "password four"),
                ("number", "4001"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let accounts = shared.store.accounts().expect("accounts");
    assert_eq!(
        accounts.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        vec!["first", "third"]
    );
}

#[tokio::test]
async fn availability_check_answers_and_is_rate_limited() {
    let mut cfg = Config::default();
    cfg.web.checks_per_minute = 3;
    let (_shared, app) = site(cfg);
    let mut b = Browser::new(app);
    b.sign_up("taken", "password one", "1234").await;
    let r = b.get("/signup/check?id=taken&number=12-34").await;
    assert_eq!(r.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["id"]["ok"], false);
    assert_eq!(v["number"]["ok"], false);
    let r = b.get("/signup/check?id=free&number=%EA%B9%80").await;
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["id"]["ok"], true, "{v}");
    assert_eq!(v["number"]["ok"], true, "{v}");
    b.get("/signup/check?id=a").await;
    let r = b.get("/signup/check?id=b").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Another address has its own allowance.
    b.peer = SocketAddr::from(([192, 0, 2, 8], 40000));
    assert_eq!(b.get("/signup/check?id=b").await.status, StatusCode::OK);
}

#[tokio::test]
async fn signup_modes_closed_and_invite() {
    let mut cfg = Config::default();
    cfg.web.signup = Signup::Closed;
    let (shared, app) = site(cfg);
    let mut b = Browser::new(app);
    assert!(b.get("/signup").await.body.contains("Sign-up is closed"));
    let r = b.sign_up("x", "password one", "1").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(shared.store.account("x").expect("q").is_none());

    let mut cfg = Config::default();
    cfg.web.signup = Signup::Invite;
    let (shared, app) = site(cfg);
    let code = auth::new_invite_code();
    shared
        .store
        .add_invite(&auth::token_hash(&code), 1)
        .expect("invite");
    let mut b = Browser::new(app);
    let r = b.sign_up("x", "password one", "1").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("id=\"invite-error\""));
    let csrf = b.get("/signup").await.csrf();
    let lower = code.to_lowercase();
    let fields = [
        ("csrf", csrf.as_str()),
        ("id", "x"),
        ("password", "password one"),
        ("repeat", "password one"),
        ("number", "1"),
        ("invite", lower.as_str()),
    ];
    let r = b.post("/signup", &fields).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let mut c = Browser::new(b.app.clone());
    let csrf = c.get("/signup").await.csrf();
    let r = c
        .post(
            "/signup",
            &[
                ("csrf", csrf.as_str()),
                ("id", "y"),
                ("password", "password one"),
                ("repeat", "password one"),
                ("number", "2"),
                ("invite", code.as_str()),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "spent");
    assert!(r.body.contains("already used"));
}

#[tokio::test]
async fn wrong_passwords_lock_out_with_the_quic_limiter() {
    let mut cfg = Config::default();
    cfg.login.max_failures_per_account = 3;
    cfg.login.max_failures_account_wide = 10;
    cfg.login.lockout_secs = 60;
    let (shared, app) = site(cfg);
    let mut b = Browser::new(app);
    b.sign_up("minjun", "correct horse", "김민준").await;
    let mut c = Browser::new(b.app.clone());
    let r = c.log_in("minjun", "wrong").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("Wrong ID or password."));
    // An unknown ID reads the same.
    let r = c.log_in("nobody", "wrong").await;
    assert!(r.body.contains("Wrong ID or password."));
    c.log_in("minjun", "wrong").await;
    let r = c.log_in("minjun", "wrong").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.body.contains("Try again in"), "{}", r.body);
    // Locked: even the right password waits; the limiter is the QUIC one.
    let r = c.log_in("minjun", "correct horse").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let (pairs, _, _) = shared.limiter.lock().expect("limiter").tracked();
    assert!(pairs >= 1);
    // From another address the owner still gets in.
    c.peer = SocketAddr::from(([198, 51, 100, 1], 1));
    let r = c.log_in("minjun", "correct horse").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/account");
    // Korean pages for a Korean browser.
    let mut k = Browser::new(b.app.clone());
    k.peer = SocketAddr::from(([198, 51, 100, 2], 1));
    k.lang = Some("ko-KR,ko;q=0.9,en;q=0.5");
    let r = k.log_in("minjun", "wrong").await;
    assert!(
        r.body.contains("ID 또는 비밀번호가 틀렸습니다."),
        "{}",
        r.body
    );
    assert!(r.body.contains("lang=\"ko\""));
}

#[tokio::test]
async fn account_forwarding_mail_password_and_others_pages() {
    let (shared, app) = site(Config::default());
    let mut a = Browser::new(app.clone());
    a.sign_up("minjun", "correct horse", "김민준").await;
    let mut o = Browser::new(app);
    o.sign_up("other", "password two", "2002").await;

    // Forwarding set on the web is in the store.
    let page = a.get("/account").await;
    assert_eq!(page.status, StatusCode::OK);
    for label in [
        ">Forward to<span class=\"visually-hidden\">: When busy</span></label>",
        ">Old password</label>",
        ">New password</label>",
        ">Change password</button>",
        ">Save<span class=\"visually-hidden\"> Forwarding of 김민준</span></button>",
        ">Delete account</button>",
    ] {
        assert!(page.body.contains(label), "{label}");
    }
    let csrf = page.csrf();
    let r = a
        .post(
            "/account/forward",
            &[
                ("csrf", &csrf),
                ("number", "김민준"),
                ("on-unregistered", "1"),
                ("to-unregistered", "20-02"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let rules = shared.store.forwards("김민준").expect("rules");
    assert_eq!(
        rules,
        vec![ForwardRule::new(ForwardWhen::Unregistered, "2002")]
    );
    // Without the token: 403, and nothing changes.
    let r = a.post("/account/forward", &[("number", "김민준")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Another account's number: 404.
    let r = a
        .post(
            "/account/forward",
            &[
                ("csrf", &csrf),
                ("number", "2002"),
                ("to-always", "김민준"),
                ("on-always", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Mail: listed, played, another account's is not found, deleted once.
    let quota = Quota {
        messages: 10,
        bytes: 1 << 20,
    };
    let voice = shared
        .store
        .store_mail(
            &NewMail {
                to: "김민준".into(),
                from: "2002".into(),
                kind: MailKind::Voice,
                body: b"OggS fake voice".to_vec(),
                at_ms: 1_700_000_000_000,
            },
            quota,
        )
        .expect("mail");
    let text = shared
        .store
        .store_mail(
            &NewMail {
                to: "2002".into(),
                from: "김민준".into(),
                kind: MailKind::Text,
                body: b"<b>hello</b>".to_vec(),
                at_ms: 1_700_000_000_000,
            },
            quota,
        )
        .expect("mail");
    let page = a.get("/account").await;
    assert!(page
        .body
        .contains(&format!("src=\"/account/mail/{voice}\"")));
    assert!(page.body.contains("2023-11-14 22:13 UTC"), "{}", page.body);
    let r = a.get(&format!("/account/mail/{voice}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "OggS fake voice");
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"audio/ogg"[..])
    );
    assert_eq!(
        a.get(&format!("/account/mail/{text}")).await.status,
        StatusCode::NOT_FOUND
    );
    let r = a
        .post(&format!("/account/mail/{text}/delete"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let other = o.get("/account").await;
    assert!(
        other.body.contains("&#60;b&#62;hello&#60;/b&#62;"),
        "{}",
        other.body
    );
    let r = a
        .post(&format!("/account/mail/{voice}/delete"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(shared
        .store
        .pending_mail("minjun")
        .expect("mail")
        .is_empty());
    // Signing out a device that is not this account's: 404.
    let r = a
        .post("/account/devices/999/signout", &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Operator pages are not there for others.
    assert_eq!(a.get("/admin").await.status, StatusCode::NOT_FOUND);
    shared.store.set_admin("minjun", true).expect("admin");
    let admin = a.get("/admin").await;
    assert_eq!(admin.status, StatusCode::OK);
    assert!(admin.body.contains("2002"));

    // Password: a wrong old one is refused; a right one ends the other
    // browser sessions of the account and the old password.
    let mut second = Browser::new(a.app.clone());
    second.log_in("minjun", "correct horse").await;
    assert_eq!(second.get("/account").await.status, StatusCode::OK);
    let r = a
        .post(
            "/account/password",
            &[
                ("csrf", &csrf),
                ("old", "wrong one"),
                ("new", "new password"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Beside the old password's field, which is marked, not the new one's.
    assert!(r.body.contains(
        "<span class=\"error\" id=\"old-password-error\">The old password is wrong.</span>"
    ));
    assert!(r
        .body
        .contains("aria-invalid=\"true\" aria-describedby=\"old-password-error\""));
    assert!(!r.body.contains("id=\"password-error\""), "{}", r.body);
    shared
        .store
        .insert_token("tokenhash", "minjun", 0, i64::MAX)
        .expect("token");
    let r = a
        .post(
            "/account/password",
            &[
                ("csrf", &csrf),
                ("old", "correct horse"),
                ("new", "new password"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(shared.store.token_account("tokenhash", 1).expect("q"), None);
    assert_eq!(second.get("/account").await.status, StatusCode::SEE_OTHER);
    let acct = shared.store.account("minjun").expect("q").expect("a");
    assert!(auth::verify_password(&acct.pw_hash, "new password"));
    // This browser was logged in again: a new session, a new CSRF token.
    let page = a.get("/account?done=password").await;
    assert_eq!(page.status, StatusCode::OK);
    let old_csrf = csrf;
    let csrf = page.csrf();
    assert_ne!(csrf, old_csrf, "the session was not renewed");

    // ID: a wrong password is refused beside the password's field.
    let r = a
        .post(
            "/account/id",
            &[("csrf", &csrf), ("new_id", "mj"), ("password", "wrong one")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r
        .body
        .contains("<span class=\"error\" id=\"id-password-error\">The password is wrong.</span>"));
    assert!(r
        .body
        .contains("aria-invalid=\"true\" aria-describedby=\"id-password-error\""));
    assert!(!r.body.contains("id=\"id-error\""), "{}", r.body);
    assert!(shared.store.account("minjun").expect("q").is_some());

    // ID: the numbers stay, this session follows.
    let r = a
        .post(
            "/account/id",
            &[
                ("csrf", &csrf),
                ("new_id", "mj"),
                ("password", "new password"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let page = a.get("/account").await;
    assert!(page.body.contains("Account (mj)"));
    assert_eq!(
        shared.store.account("mj").expect("q").expect("a").numbers,
        vec!["김민준"]
    );

    // Delete: password again; the number is held back.
    let r = a
        .post("/account/delete", &[("csrf", &csrf), ("password", "wrong")])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = a
        .post(
            "/account/delete",
            &[("csrf", &csrf), ("password", "new password")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(shared.store.account("mj").expect("q").is_none());
    let mut n = Browser::new(a.app.clone());
    let r = n.sign_up("newcomer", "password three", "김민준").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("deleted account"));
}

#[tokio::test]
async fn language_switch_and_unknown_pages() {
    let (_shared, app) = site(Config::default());
    let mut b = Browser::new(app);
    let r = b.get("/lang/ko?back=/signup").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/signup");
    let page = b.get("/signup").await;
    assert!(page.body.contains("가입하기"));
    let r = b.get("/lang/ko?back=//evil.example/").await;
    assert_eq!(r.location(), "/");
    let r = b.get("/nothing-here").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        b.get("/packages/..%2Fsecret.deb").await.status,
        StatusCode::NOT_FOUND
    );
}

/// The value of the `on` field the page's do-not-disturb form sends.
fn dnd_on_field(body: &str) -> String {
    let key = "name=\"on\" value=\"";
    let i = body.find(key).map(|i| i + key.len()).unwrap_or(0);
    body[i..].split('"').next().unwrap_or("").to_string()
}

#[tokio::test]
async fn numbers_added_and_removed_with_errors_next_to_the_field() {
    let (shared, app) = site(Config::default());
    let mut a = Browser::new(app.clone());
    a.sign_up("minjun", "correct horse", "김민준").await;
    let mut o = Browser::new(app);
    o.sign_up("other", "password two", "2002").await;

    let page = a.get("/account").await;
    for label in [">New number</label>", ">Add number</button>"] {
        assert!(page.body.contains(label), "{label}");
    }
    // The only number offers no way to remove it.
    assert!(!page.body.contains("/account/numbers/remove"));
    let csrf = page.csrf();

    // Any script, canonicalised as sign-up does.
    let r = a
        .post(
            "/account/numbers",
            &[("csrf", &csrf), ("number", "Min-Jun 2")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), "/account?done=number-added");
    let numbers = || {
        shared
            .store
            .account("minjun")
            .expect("query")
            .expect("account")
            .numbers
    };
    assert_eq!(numbers(), vec!["김민준", "minjun2"]);
    let page = a.get("/account?done=number-added").await;
    assert!(page.body.contains("The number was added"));
    assert!(page.body.contains("/account/numbers/remove"));

    // Taken, malformed, overlong, markup: the error stands next to the
    // field, the typed value is kept escaped, nothing is added.
    for (typed, says) in [
        ("20-02", "is taken"),
        ("", "Choose a number"),
        (&"9".repeat(400)[..], "too long"),
    ] {
        let r = a
            .post("/account/numbers", &[("csrf", &csrf), ("number", typed)])
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{typed}");
        let err = r
            .body
            .split("id=\"new-number-error\">")
            .nth(1)
            .unwrap_or_else(|| panic!("no error next to the field for {typed:?}"));
        assert!(err.contains(says), "{typed:?}: {err}");
    }
    let r = a
        .post(
            "/account/numbers",
            &[("csrf", &csrf), ("number", "<script>x</script>")],
        )
        .await;
    assert!(!r.body.contains("<script>x"), "escaped");
    assert_eq!(numbers().len(), 3, "a number with markup is still a name");
    let r = a
        .post(
            "/account/numbers/remove",
            &[("csrf", &csrf), ("number", "<script>x</script>")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(numbers().len(), 2);
    // Without the token: 403 and nothing added.
    let r = a.post("/account/numbers", &[("number", "7777")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(numbers().len(), 2);

    // Another account's number cannot be removed (404); a removed number
    // is held back from others; the last number stays.
    let r = a
        .post(
            "/account/numbers/remove",
            &[("csrf", &csrf), ("number", "2002")],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = a
        .post(
            "/account/numbers/remove",
            &[("csrf", &csrf), ("number", "MINJUN2")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(numbers(), vec!["김민준"]);
    let ocsrf = o.get("/account").await.csrf();
    let r = o
        .post(
            "/account/numbers",
            &[("csrf", &ocsrf), ("number", "minjun2")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("deleted account"), "held back: {}", r.body);
    // The last number: refused by the store even when asked directly.
    let r = a
        .post(
            "/account/numbers/remove",
            &[("csrf", &csrf), ("number", "김민준")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("id=\"remove-error\""), "{}", r.body);
    assert_eq!(numbers(), vec!["김민준"]);

    // In Korean too.
    a.lang = Some("ko");
    let r = a
        .post("/account/numbers", &[("csrf", &csrf), ("number", "2002")])
        .await;
    assert!(r.body.contains("이미 쓰이고 있습니다"), "{}", r.body);
    assert!(r.body.contains(">새 번호</label>"));
}

#[tokio::test]
async fn do_not_disturb_and_every_kind_of_forwarding() {
    let (shared, app) = site(Config::default());
    let mut a = Browser::new(app.clone());
    a.sign_up("minjun", "correct horse", "김민준").await;
    let mut o = Browser::new(app);
    o.sign_up("other", "password two", "2002").await;
    let row = |n: &str| {
        shared
            .store
            .numbers()
            .expect("numbers")
            .into_iter()
            .find(|r| r.number == n)
            .expect("row")
    };

    let page = a.get("/account").await;
    for option in [
        "name=\"to-always\"",
        "name=\"to-busy\"",
        "name=\"to-no-answer\"",
        "name=\"to-unregistered\"",
        ">Turn on do-not-disturb",
        "Do-not-disturb is off",
    ] {
        assert!(page.body.contains(option), "{option}");
    }
    assert_eq!(dnd_on_field(&page.body), "1");
    let csrf = page.csrf();
    let r = a
        .post(
            "/account/dnd",
            &[("csrf", &csrf), ("number", "김민준"), ("on", "1")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert!(row("김민준").dnd);
    let page = a.get("/account?done=dnd").await;
    assert!(page.body.contains("Do-not-disturb saved."));
    assert!(page.body.contains("Do-not-disturb is on"));
    assert!(page.body.contains(">Turn off do-not-disturb"));
    assert_eq!(dnd_on_field(&page.body), "0");
    // Another account's number: 404; no token: 403.
    let r = a
        .post(
            "/account/dnd",
            &[("csrf", &csrf), ("number", "2002"), ("on", "1")],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(!row("2002").dnd);
    let r = a
        .post("/account/dnd", &[("number", "김민준"), ("on", "0")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(row("김민준").dnd);
    let r = a
        .post(
            "/account/dnd",
            &[("csrf", &csrf), ("number", "김민준"), ("on", "0")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(!row("김민준").dnd);

    // Several kinds at once, each on or off, each to its own number.
    let ocsrf = o.get("/account").await.csrf();
    let r = o
        .post("/account/numbers", &[("csrf", &ocsrf), ("number", "3003")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = a
        .post(
            "/account/forward",
            &[
                ("csrf", &csrf),
                ("number", "김민준"),
                ("on-busy", "1"),
                ("to-busy", "2002"),
                ("on-no-answer", "1"),
                ("to-no-answer", "30 03"),
                ("to-unregistered", "2002"),
                ("to-always", ""),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let kept = vec![
        ForwardRule::new(ForwardWhen::Busy, "2002"),
        ForwardRule::new(ForwardWhen::NoAnswer, "3003"),
        ForwardRule {
            on: false,
            ..ForwardRule::new(ForwardWhen::Unregistered, "2002")
        },
    ];
    assert_eq!(row("김민준").forwards, kept);
    // Shown as kept: the boxes of the rules that are on are ticked, every
    // number is in its field.
    let page = a.get("/account").await;
    for shown in [
        "id=\"fwd-on-busy-1\" name=\"on-busy\" type=\"checkbox\" value=\"1\" checked",
        "id=\"fwd-on-no-answer-1\" name=\"on-no-answer\" type=\"checkbox\" value=\"1\" checked",
        "id=\"fwd-on-unregistered-1\" name=\"on-unregistered\" type=\"checkbox\" value=\"1\">",
        "id=\"fwd-on-always-1\" name=\"on-always\" type=\"checkbox\" value=\"1\">",
        "name=\"to-no-answer\" type=\"text\" maxlength=\"256\" value=\"3003\"",
        "name=\"to-unregistered\" type=\"text\" maxlength=\"256\" value=\"2002\"",
    ] {
        assert!(page.body.contains(shown), "{shown}");
    }
    // A bad target, an empty one that is on, or the number itself: the
    // error next to that kind's field, what was sent kept, nothing saved.
    for (kind, to, says) in [
        ("busy", "nobody-here", "no such number"),
        ("always", "", "Enter the number"),
        ("no-answer", "김민준", "cannot forward to itself"),
    ] {
        let r = a
            .post(
                "/account/forward",
                &[
                    ("csrf", &csrf),
                    ("number", "김민준"),
                    ("on-unregistered", "1"),
                    ("to-unregistered", "2002"),
                    (&format!("on-{kind}"), "1"),
                    (&format!("to-{kind}"), to),
                ],
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{kind} {to}");
        let err = r
            .body
            .split(&format!("id=\"fwd-error-{kind}-1\">"))
            .nth(1)
            .unwrap_or_else(|| panic!("no error next to the field: {kind} {to}"));
        assert!(err.contains(says), "{kind} {to}: {err}");
        assert!(
            r.body.contains(
                "id=\"fwd-on-unregistered-1\" name=\"on-unregistered\" type=\"checkbox\" value=\"1\" checked"
            ),
            "what was sent is kept: {kind}"
        );
        assert_eq!(row("김민준").forwards, kept, "unchanged");
    }
}

#[tokio::test]
async fn operator_pages_search_numbers_and_sessions() {
    let (shared, app) = site(Config::default());
    let mut a = Browser::new(app.clone());
    a.sign_up("minjun", "correct horse", "김민준").await;
    let mut o = Browser::new(app);
    o.sign_up("other", "password two", "2002").await;
    let ocsrf = o.get("/account").await.csrf();
    o.post(
        "/account/dnd",
        &[("csrf", &ocsrf), ("number", "2002"), ("on", "1")],
    )
    .await;
    shared.store.set_admin("minjun", true).expect("admin");

    let page = a.get("/admin").await;
    assert_eq!(page.status, StatusCode::OK);
    for part in [
        ">Search accounts (ID or number)</label>",
        "id=\"all-numbers\"",
        ">Sessions online<",
        ">Calls now<",
        "(2/2)",
    ] {
        assert!(page.body.contains(part), "{part}");
    }
    // By ID, by number in any case or script, and no match.
    let accounts = |body: &str| -> String {
        body.split("id=\"accounts\"")
            .nth(1)
            .and_then(|t| t.split("</table>").next())
            .unwrap_or("")
            .to_string()
    };
    let p = a.get("/admin?q=OTH").await;
    assert!(accounts(&p.body).contains("other") && !accounts(&p.body).contains("minjun"));
    assert!(p.body.contains("(1/2)"));
    let p = a.get("/admin?q=%EA%B9%80%EB%AF%BC").await; // 김민
    assert!(accounts(&p.body).contains("minjun") && !accounts(&p.body).contains("other"));
    let p = a.get("/admin?q=20-0").await;
    assert!(accounts(&p.body).contains("other"), "{}", p.body);
    let p = a.get("/admin?q=%3Cscript%3E").await;
    assert!(p.body.contains("id=\"no-match\""));
    assert!(!p.body.contains("<script>"), "the search is shown escaped");
    // Korean.
    a.lang = Some("ko");
    let p = a.get("/admin").await;
    assert!(p.body.contains(">모든 번호<") && p.body.contains(">접속 중인 세션<"));
    // Not an operator: 404.
    assert_eq!(o.get("/admin?q=x").await.status, StatusCode::NOT_FOUND);
}

/// The call history page: the account's own entries only, newest first,
/// a page at a time, markup in a number shown as text, Korean; without a
/// session it asks for a login.
#[tokio::test]
async fn call_history_pages_show_only_the_accounts_own_calls() {
    use crate::store::{CallEntry, CallOutcome, CallRetention};
    let (shared, app) = site(Config::default());
    let mut a = Browser::new(app.clone());
    a.sign_up("minjun", "correct horse", "김민준").await;
    let mut o = Browser::new(app.clone());
    o.sign_up("other", "password two", "2002").await;
    let page = a.get("/account/calls").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("id=\"no-calls\""), "{}", page.body);

    let entry = |account: &str, at: i64, other: &str, outcome| CallEntry {
        account: account.into(),
        outgoing: at % 2 == 1,
        own_number: "김민준".into(),
        other_number: other.into(),
        started_ms: 1_700_000_000_000 + at * 60_000,
        answered: outcome == CallOutcome::Answered,
        outcome,
        forwarded_to: (outcome == CallOutcome::Forwarded).then(|| "3003".to_string()),
        duration_ms: (outcome == CallOutcome::Answered).then_some(83_000),
        relayed: None,
    };
    let keep = CallRetention {
        per_account: 500,
        since_ms: 0,
    };
    let mut all = Vec::new();
    for at in 0..30 {
        let outcome = match at % 3 {
            0 => CallOutcome::Answered,
            1 => CallOutcome::Forwarded,
            _ => CallOutcome::Cancelled,
        };
        all.push(entry("minjun", at, "2002", outcome));
    }
    all.push(entry(
        "minjun",
        40,
        "<script>alert(1)</script>",
        CallOutcome::Busy,
    ));
    all.push(entry("other", 50, "secret-of-other", CallOutcome::Answered));
    shared.store.add_calls(&all, keep).expect("calls");

    let page = a.get("/account/calls").await;
    assert_eq!(page.status, StatusCode::OK);
    let rows: Vec<&str> = page
        .body
        .split("<tbody>")
        .nth(1)
        .and_then(|b| b.split("</tbody>").next())
        .expect("a table")
        .split("<tr>")
        .skip(1)
        .collect();
    assert_eq!(rows.len(), 25, "a page of 25");
    // Newest first: the busy one with markup, escaped, never run.
    assert!(
        rows[0].contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{}",
        rows[0]
    );
    assert!(!page.body.contains("<script>alert"));
    assert!(rows[0].contains("<td>Busy</td>"), "{}", rows[0]);
    // at 29 (out, cancelled), 28 (in, forwarded), 27 (out, answered).
    assert!(rows[1].contains("<td>Out</td>") && rows[1].contains("<td>Cancelled</td>"));
    assert!(rows[2].contains("<td>In</td>") && rows[2].contains("<td>Forwarded to 3003</td>"));
    assert!(rows[3].contains("<td>Answered</td>") && rows[3].contains("<td>1:23</td>"));
    assert!(
        !page.body.contains("secret-of-other"),
        "another account's call"
    );
    assert!(page.body.contains("href=\"/account/calls?page=1\""));
    assert!(!page.body.contains("rel=\"prev\""));
    let page = a.get("/account/calls?page=1").await;
    assert_eq!(
        page.body.matches("<tr>").count(),
        1 + 6,
        "6 more and the header"
    );
    assert!(page.body.contains("href=\"/account/calls?page=0\""));
    assert!(!page.body.contains("rel=\"next\""));
    // The other account sees its own one call only.
    let page = o.get("/account/calls").await;
    assert!(page.body.contains("secret-of-other"));
    assert_eq!(page.body.matches("<tr>").count(), 2);
    // Korean.
    a.lang = Some("ko");
    let page = a.get("/account/calls").await;
    assert!(page.body.contains("<td>통화 중</td>"), "{}", page.body);
    assert!(page.body.contains(">통화 기록</h1>"));
    // No session: to the login page.
    let mut nobody = Browser::new(app);
    let r = nobody.get("/account/calls").await;
    assert!(
        r.status == StatusCode::SEE_OTHER && r.location().starts_with("/login"),
        "{} {}",
        r.status,
        r.location()
    );
}

/// Sessions live in the store: a second site on the same store (another
/// node of a cluster) knows a browser logged in through the first; a log
/// out through one ends it at both; the store keeps no cookie value.
#[tokio::test]
async fn sessions_are_the_stores_and_every_node_knows_them() {
    let (shared, app) = site(Config::default());
    let other = router(Arc::new(Web::new(shared.clone())), false);
    let mut a = Browser::new(app.clone());
    a.sign_up("minjun", "correct horse", "김민준").await;
    let cookie = a.cookies.get("kl_session").cloned().expect("a session");
    let mut b = Browser::new(other);
    b.cookies.insert("kl_session".into(), cookie.clone());
    let page = b.get("/account").await;
    assert_eq!(page.status, StatusCode::OK, "the other node: {}", page.body);
    assert!(page.body.contains("김민준"));
    let hash = auth::token_hash(&cookie);
    let row = shared
        .store
        .web_session(&hash, crate::store::now_ms(), i64::MAX)
        .expect("read")
        .expect("kept hashed");
    assert_eq!(row.account, "minjun");
    assert!(shared
        .store
        .web_session(&cookie, crate::store::now_ms(), i64::MAX)
        .expect("read")
        .is_none());
    let csrf = page.csrf();
    let r = b.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = a.get("/account").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "logged out everywhere");
    assert_eq!(r.location(), "/login");
    // A cookie that is no session, of any shape, is no login.
    for v in ["", "00", &"0".repeat(64), &"z".repeat(500)] {
        a.cookies.insert("kl_session".into(), v.to_string());
        assert_eq!(a.get("/account").await.status, StatusCode::SEE_OTHER, "{v}");
    }
}

/// Show to callees: another number becomes the first (the one callees
/// see); someone else's number, or a form without its token, changes
/// nothing.
#[tokio::test]
async fn another_number_shown_to_callees() {
    let (shared, app) = site(Config::default());
    let mut a = Browser::new(app.clone());
    a.sign_up("minjun", "correct horse", "김민준").await;
    let mut o = Browser::new(app);
    o.sign_up("other", "password two", "2002").await;
    let page = a.get("/account").await;
    let r = a
        .post(
            "/account/numbers",
            &[("csrf", &page.csrf()), ("number", "1234")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let numbers = || {
        shared
            .store
            .account("minjun")
            .expect("read")
            .expect("there")
            .numbers
    };
    assert_eq!(numbers(), ["김민준", "1234"]);
    let page = a.get("/account").await;
    assert!(page.body.contains("id=\"shown-number\""), "{}", page.body);
    assert_eq!(
        page.body
            .matches("action=\"/account/numbers/first\"")
            .count(),
        1
    );
    let csrf = page.csrf();
    let r = a
        .post("/account/numbers/first", &[("number", "1234")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "no token");
    let r = a
        .post(
            "/account/numbers/first",
            &[("csrf", &csrf), ("number", "2002")],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "another account's number");
    assert_eq!(numbers(), ["김민준", "1234"]);
    let r = a
        .post(
            "/account/numbers/first",
            &[("csrf", &csrf), ("number", "1234")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), "/account?done=shown");
    assert_eq!(numbers(), ["1234", "김민준"]);
    let page = a.get("/account?done=shown").await;
    assert!(page.body.contains("Callees now see this number"));
    let first = page.body.find("1234").expect("listed");
    assert!(first < page.body.find("김민준").expect("listed"));
}

/// Every page of a signed-in visitor sends anyone else to log in, and
/// every form of one is refused (403) without the session's own CSRF
/// token, before the form is looked at: the account stays as it was.
#[tokio::test]
async fn every_signed_in_page_and_form_checks_the_session_first() {
    let (shared, app) = site(Config::default());
    let mut b = Browser::new(app.clone());
    let r = b.sign_up("jiwoo", "correct horse", "2001").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let before = shared.store.account("jiwoo").expect("query");
    let pages = [
        "/setup",
        "/setup/keyline-terminal.toml",
        "/account",
        "/account/calls",
        "/account/mail/1",
    ];
    let forms: [(&str, &[(&str, &str)]); 11] = [
        ("/logout", &[]),
        (
            "/account/password",
            &[("old", "correct horse"), ("new", "battery staple")],
        ),
        (
            "/account/id",
            &[("id", "eve"), ("password", "correct horse")],
        ),
        (
            "/account/forward",
            &[("number", "2001"), ("to-always", "9")],
        ),
        ("/account/dnd", &[("number", "2001"), ("on", "1")]),
        ("/account/numbers", &[("number", "2002")]),
        ("/account/numbers/remove", &[("number", "2001")]),
        ("/account/numbers/first", &[("number", "2001")]),
        ("/account/devices/1/signout", &[]),
        ("/account/mail/1/delete", &[]),
        ("/account/delete", &[("password", "correct horse")]),
    ];
    // Signed in, with a wrong token and with none: refused.
    for (path, fields) in forms {
        for token in [Some("0".repeat(64)), None] {
            let mut sent: Vec<(&str, &str)> = fields.to_vec();
            if let Some(t) = &token {
                sent.push(("csrf", t));
            }
            let r = b.post(path, &sent).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{path} {token:?}");
        }
    }
    // Nobody signed in: pages send to log in, forms are refused.
    let mut stranger = Browser::new(app);
    for path in pages {
        let r = stranger.get(path).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.location(), "/login", "{path}");
    }
    let csrf = b.get("/account").await.csrf();
    for (path, fields) in forms {
        let mut sent: Vec<(&str, &str)> = fields.to_vec();
        sent.push(("csrf", &csrf));
        let r = stranger.post(path, &sent).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(shared.store.account("jiwoo").expect("query"), before);
    assert!(shared.store.account("eve").expect("query").is_none());
    // The visitor is still signed in, and the account still theirs.
    assert_eq!(b.get("/account").await.status, StatusCode::OK);
}
