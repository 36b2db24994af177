//! The admin site's handlers without a browser: a fake office records the
//! requests the pages make of the dispatcher.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use serde_json::json;
use tower::ServiceExt;

struct Fake {
    hash: Option<String>,
    asked: Arc<Mutex<Vec<Request>>>,
    events: broadcast::Sender<String>,
    metrics: Metrics,
}

impl Office for Fake {
    fn dispatch(&self, req: Request) -> impl Future<Output = Result<ApiResponse, String>> + Send {
        self.asked.lock().unwrap().push(req.clone());
        async move {
            match req {
                Request::Status => Ok(ApiResponse::Status(Box::new(crate::api::Status {
                    api: 1,
                    version: "0.1.0".into(),
                    listen: "127.0.0.1:7470".into(),
                    fingerprint: "ab".into(),
                    state_dir: "/tmp".into(),
                    internal_media: "direct".into(),
                    ring_timeout_s: 30,
                    uptime_s: 3700,
                    stations_online: 1,
                    calls_active: 0,
                    relay: json!({}),
                    directory: json!({"state": "registered", "numbers": ["0317001000"]}),
                    ring_group: json!({"mode": "hunt", "members": ["202", "201"], "step_secs": 10,
                        "source": "ring-group", "office_mailbox": "202",
                        "office_mailbox_source": "first-member"}),
                    ring_groups: vec![crate::db::NamedRingGroup {
                        ext: "600".into(),
                        name: "Sales".into(),
                        group: crate::db::RingGroup {
                            mode: "hunt".into(),
                            members: vec!["202".into(), "201".into()],
                            step_secs: 10,
                            mailbox: Some("202".into()),
                        },
                    }],
                    extension_range: [201, 499],
                    extension_range_source: "set-here".into(),
                    disk: Some(json!({"free_bytes": 5u64 << 30})),
                    admin: json!({}),
                    connections: json!({}),
                }))),
                Request::Calls => Ok(ApiResponse::Calls { calls: vec![] }),
                Request::Agents => Ok(ApiResponse::Agents {
                    agents: vec![
                        crate::api::AgentInfo {
                            fingerprint: "f1".into(),
                            ext: None,
                            name: Some("<b>Front desk</b>".into()),
                            state: "pending".into(),
                            code: Some("123456".into()),
                            waiting: true,
                            online: false,
                            addr: Some("10.0.0.7:5000".into()),
                        },
                        crate::api::AgentInfo {
                            fingerprint: "f2".into(),
                            ext: Some("202".into()),
                            name: Some("Bob".into()),
                            state: "approved".into(),
                            code: None,
                            waiting: false,
                            online: true,
                            addr: Some("10.0.0.8:5000".into()),
                        },
                    ],
                    discovered: vec![],
                }),
                Request::Approve { ext: Some(e), .. } if e == "999" => {
                    Err("extension 999 is outside the range 201-499".into())
                }
                Request::Approve { ext, .. } => Ok(ApiResponse::Approved {
                    ext: ext.unwrap_or_else(|| "201".into()),
                    name: None,
                    fingerprint: "f1".into(),
                }),
                Request::Cdr { filter, .. } if filter.id == Some(2) => {
                    Ok(ApiResponse::Cdr { cdr: vec![] })
                }
                Request::Cdr { .. } => Ok(ApiResponse::Cdr {
                    cdr: vec![CdrRow {
                        id: 1,
                        call_id: Some(1),
                        caller: "201".into(),
                        callee: "202".into(),
                        start_ms: 1_796_468_400_000,
                        answer_ms: Some(1_796_468_402_000),
                        end_ms: 1_796_468_412_000,
                        outcome: "answered".into(),
                    }],
                }),
                Request::Hangup { call } => Ok(ApiResponse::HungUp { call }),
                Request::SetExtension {
                    new_ext: Some(e), ..
                } if e == "999" => Err("extension 999 is outside the range 201-499".into()),
                Request::SetExtension { new_ext, name, .. } => Ok(ApiResponse::Changed {
                    ext: new_ext.unwrap_or_else(|| "202".into()),
                    name,
                    fingerprint: "f2".into(),
                }),
                Request::Revoke { ext } => Ok(ApiResponse::Revoked {
                    ext,
                    fingerprint: "f2".into(),
                }),
                // The dispatcher's refusals name the field first.
                Request::SetLineSettings {
                    forward_busy: Some(b),
                    ..
                } if b == "12+34" => {
                    Err("Forward when busy: \"12+34\": '+' is only allowed at the start".into())
                }
                Request::SetLineSettings { ext, .. } if ext == "201" => {
                    Ok(ApiResponse::LineSettings { lines: vec![] })
                }
                Request::SetLineSettings { ext, .. } => {
                    Err(format!("{ext} is not an extension here"))
                }
                Request::SpeedDialSet { number, .. } if number == "12+34" => {
                    Err("\"12+34\": '+' is only allowed at the start".into())
                }
                Request::SpeedDialSet { code, number } => Ok(ApiResponse::SpeedDial {
                    code,
                    number: Some(number),
                }),
                Request::SpeedDialList => Ok(ApiResponse::SpeedDials {
                    speed_dials: vec![crate::api::SpeedDial {
                        code: "*1".into(),
                        number: "0317001000".into(),
                    }],
                }),
                Request::LineSettings => Ok(ApiResponse::LineSettings {
                    lines: vec![crate::api::LineSettingsInfo {
                        ext: "201".into(),
                        settings: keyline_proto::msg::LineSettings {
                            dnd: true,
                            ..Default::default()
                        },
                    }],
                }),
                Request::RingGroupSet {
                    mailbox: Some(m), ..
                } if m == "298" => Err("office mailbox: 298 is not an extension here".into()),
                Request::RingGroupSet { members, .. } if members.iter().any(|m| m == "299") => {
                    Err("299 is not an extension here".into())
                }
                Request::RingGroupSet {
                    members,
                    mode,
                    step_secs,
                    mailbox,
                } => Ok(ApiResponse::RingGroup {
                    ring_group: Some(crate::db::RingGroup {
                        mode,
                        members,
                        step_secs,
                        mailbox,
                    }),
                }),
                // The dispatcher's refusals name the field first.
                Request::RingGroupAdd { name, .. } if name.trim().is_empty() => {
                    Err("Name: a ring group needs a name".into())
                }
                Request::RingGroupAdd { members, .. } if members.iter().any(|m| m == "299") => {
                    Err("Members: 299 is not an extension here".into())
                }
                Request::RingGroupAdd { ext, .. } if ext == "202" => {
                    Err("Extension: 202 is taken by the station Bob".into())
                }
                Request::RingGroupAdd { ext, .. } if ext == "900" => {
                    Err("Extension: 900 is outside the extension range 201-499".into())
                }
                Request::RingGroupAdd {
                    ext,
                    name,
                    mode,
                    step_secs,
                    members,
                    mailbox,
                }
                | Request::RingGroupEdit {
                    ext,
                    name: Some(name),
                    mode,
                    step_secs,
                    members,
                    mailbox,
                } => Ok(ApiResponse::NamedRingGroup {
                    ring_group: crate::db::NamedRingGroup {
                        ext,
                        name,
                        group: crate::db::RingGroup {
                            mode,
                            members,
                            step_secs,
                            mailbox,
                        },
                    },
                }),
                Request::RingGroupRemove { ext } => {
                    Ok(ApiResponse::RingGroupRemoved { removed: ext })
                }
                Request::ExtensionRangeSet { lo: 300, hi } => Err(format!(
                    "the range 300-{hi} would leave station 202 (Bob) outside it: change it first"
                )),
                Request::ExtensionRangeSet { lo, hi } => Ok(ApiResponse::ExtensionRange {
                    extension_range: [lo, hi],
                    source: "set-here".into(),
                }),
                Request::ExtensionRangeClear => Ok(ApiResponse::ExtensionRange {
                    extension_range: [201, 499],
                    source: "config".into(),
                }),
                other => Err(format!("not in this test: {other:?}")),
            }
        }
    }

    fn events(&self) -> broadcast::Receiver<String> {
        self.events.subscribe()
    }

    fn password_hash(&self) -> impl Future<Output = Option<String>> + Send {
        let h = self.hash.clone();
        async move { h }
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

fn site(hash: Option<String>, peer: &str) -> (Router, Arc<Mutex<Vec<Request>>>) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let fake = Fake {
        hash,
        asked: asked.clone(),
        events: broadcast::channel(16).0,
        metrics: Metrics::off(),
    };
    let peer: SocketAddr = peer.parse().unwrap();
    let app =
        router(fake, Access::default(), Duration::from_secs(600)).layer(MockConnectInfo(peer));
    (app, asked)
}

async fn send(app: &Router, req: axum::http::Request<Body>) -> (StatusCode, HeaderMap, String) {
    let r = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = r.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).to_string(),
    )
}

fn get_req(path: &str, cookie: Option<&str>) -> axum::http::Request<Body> {
    let mut b = axum::http::Request::get(path);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::empty()).unwrap()
}

fn post_req(path: &str, cookie: Option<&str>, form: &str) -> axum::http::Request<Body> {
    let mut b = axum::http::Request::post(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::from(form.to_string())).unwrap()
}

/// The login form's cookie and token, as a browser gets them.
async fn login_token(app: &Router) -> (String, String) {
    let (status, headers, page) = send(app, get_req("/login", None)).await;
    assert_eq!(status, StatusCode::OK);
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("Secure")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Path=/login"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_string();
    let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
    let token = page[at..].split('"').next().unwrap().to_string();
    assert_eq!(cookie, format!("keyline_admin_login={token}"));
    (cookie, token)
}

/// POST the login form with its token and `password`.
async fn post_login(app: &Router, password: &str) -> (StatusCode, HeaderMap, String) {
    let (cookie, token) = login_token(app).await;
    send(
        app,
        post_req(
            "/login",
            Some(&cookie),
            &format!("csrf={token}&password={password}"),
        ),
    )
    .await
}

/// Log in; the cookie and the CSRF token the pages carry.
async fn logged_in(app: &Router) -> (String, String) {
    let (status, headers, _) = post_login(app, "correct+horse").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("Secure")
            && cookie.contains("SameSite=Strict")
    );
    let cookie = cookie.split(';').next().unwrap().to_string();
    let (status, _, page) = send(app, get_req("/stations", Some(&cookie))).await;
    assert_eq!(status, StatusCode::OK);
    let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = page[at..].split('"').next().unwrap().to_string();
    (cookie, csrf)
}

fn hash() -> Option<String> {
    Some(hash_password("correct horse").unwrap())
}

#[tokio::test]
async fn pages_need_a_login_and_the_site_is_off_without_a_password() {
    let (app, _) = site(None, "192.168.1.9:40000");
    let (status, _, body) = send(&app, get_req("/login", None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("keyline-gatewayd admin passwd"), "{body}");

    let (app, asked) = site(hash(), "192.168.1.9:40000");
    for page in ["/", "/stations", "/calls", "/cdr", "/cdr.csv"] {
        let (status, headers, _) = send(&app, get_req(page, None)).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
        assert_eq!(headers[header::LOCATION], "/login");
    }
    let (status, _, _) = send(&app, get_req("/events", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, headers, body) = send(&app, get_req("/login", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("<label for=\"password\">Password</label>"));
    assert!(body.contains(">Log in</button>"));
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    assert!(
        asked.lock().unwrap().is_empty(),
        "nothing asked of the gateway"
    );
}

#[tokio::test]
async fn wrong_passwords_lock_the_address_out() {
    let (app, _) = site(hash(), "192.168.1.9:40000");
    for left in (1..limiter::MAX_FAILURES).rev() {
        let (status, _, body) = post_login(&app, "wrong").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            body.contains(&format!("Wrong password. {left} more")),
            "{body}"
        );
    }
    let (status, _, body) = post_login(&app, "wrong").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body.contains("locked out"), "{body}");
    // Even the right password waits now.
    let (status, _, _) = post_login(&app, "correct+horse").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_login_form_needs_its_token() {
    let (app, _) = site(hash(), "192.168.1.9:40000");
    let (cookie, token) = login_token(&app).await;
    // No token, no cookie, or a token that is not the cookie's: 403, and
    // the password is not even tried (no session, no lockout count).
    for (cookie, form) in [
        (None, "password=correct+horse".to_string()),
        (None, format!("csrf={token}&password=correct+horse")),
        (Some(cookie.as_str()), "password=correct+horse".to_string()),
        (
            Some(cookie.as_str()),
            format!("csrf={}&password=correct+horse", "0".repeat(64)),
        ),
    ] {
        let (status, headers, body) = send(&app, post_req("/login", cookie, &form)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{form}");
        assert!(body.contains("security token"), "{body}");
        assert!(headers.get(header::SET_COOKIE).is_none());
    }
    for _ in 0..limiter::MAX_FAILURES {
        let (status, _, _) = send(&app, post_req("/login", None, "password=wrong")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    // The same token, sent with its cookie, logs in.
    let (status, headers, _) = send(
        &app,
        post_req(
            "/login",
            Some(&cookie),
            &format!("csrf={token}&password=correct+horse"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .starts_with("keyline_admin="));
}

#[tokio::test]
async fn forms_without_their_token_are_refused_and_change_nothing() {
    let (app, asked) = site(hash(), "10.0.0.2:40000");
    let (cookie, csrf) = logged_in(&app).await;
    asked.lock().unwrap().clear();
    let (status, _, _) = send(
        &app,
        post_req("/stations/approve", Some(&cookie), "code=123456"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(
        &app,
        post_req("/calls/hangup", Some(&cookie), "call=4&csrf=not-the-token"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(asked.lock().unwrap().is_empty());

    // With it, the request goes to the dispatcher as typed.
    let (status, _, body) = send(
        &app,
        post_req(
            "/stations/approve",
            Some(&cookie),
            &format!("code=123456&ext=205&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("Approved as extension 205."), "{body}");
    assert!(asked.lock().unwrap().contains(&Request::Approve {
        code: "123456".into(),
        ext: Some("205".into()),
        name: None,
    }));
    // A refused change shows the dispatcher's reason.
    let (status, _, body) = send(
        &app,
        post_req(
            "/stations/approve",
            Some(&cookie),
            &format!("code=123456&ext=999&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body.contains("extension 999 is outside the range 201-499"),
        "{body}"
    );
    let (status, headers, _) = send(
        &app,
        post_req(
            "/calls/hangup",
            Some(&cookie),
            &format!("call=4&csrf={csrf}&back=/calls"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/calls");
    assert!(asked.lock().unwrap().contains(&Request::Hangup { call: 4 }));
}

#[tokio::test]
async fn pages_show_escaped_data_and_export_csv() {
    let (app, _) = site(hash(), "10.0.0.2:40000");
    let (cookie, _) = logged_in(&app).await;
    let (_, _, page) = send(&app, get_req("/stations", Some(&cookie))).await;
    assert!(
        page.contains("123456")
            && page.contains(">Approve</button>")
            && page.contains(">Deny</button>")
    );
    assert!(
        page.contains("&#60;b&#62;Front desk") || page.contains("&lt;b&gt;Front desk"),
        "{page}"
    );
    assert!(!page.contains("<b>Front desk"));
    let (_, _, page) = send(&app, get_req("/", Some(&cookie))).await;
    assert!(
        page.contains("0317001000") && page.contains("5.0 GiB"),
        "{page}"
    );
    let (_, _, page) = send(
        &app,
        get_req("/cdr?number=201&outcome=&from=&to=", Some(&cookie)),
    )
    .await;
    assert!(page.contains("Export CSV") && page.contains("<th scope=\"col\">Duration</th>"));
    let (status, headers, body) = send(&app, get_req("/cdr.csv?number=201", Some(&cookie))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_DISPOSITION]
        .to_str()
        .unwrap()
        .contains("attachment"));
    assert_eq!(
        body,
        "Record,From,Number,Started,Duration,Outcome\r\n1,201,202,2026-12-05T11:00:00Z,10,answered\r\n"
    );
    let (status, _, body) = send(&app, get_req("/cdr?from=someday", Some(&cookie))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("is not a date"), "{body}");
}

#[tokio::test]
async fn addresses_outside_the_lan_are_refused() {
    let (app, asked) = site(hash(), "203.0.113.5:40000");
    let (status, _, body) = send(&app, get_req("/login", None)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("not open to your address"));
    let (status, _, _) = send(&app, post_req("/login", None, "password=correct+horse")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(asked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_dial_plan_saves_through_the_dispatcher_and_shows_refusals_by_their_field() {
    let (app, asked) = site(hash(), "10.0.0.2:40000");
    let (cookie, csrf) = logged_in(&app).await;
    let (status, _, page) = send(&app, get_req("/dialplan", Some(&cookie))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("0317001000") && page.contains("id=\"dnd-201\""),
        "{page}"
    );
    let (status, _, page) = send(
        &app,
        post_req(
            "/dialplan/ring-group",
            Some(&cookie),
            &format!("members=202%2C+299&mode=hunt&step_secs=10&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("<p id=\"rg-error\" class=\"field-error\">299 is not an extension here</p>"),
        "{page}"
    );
    assert!(
        page.contains("value=\"202, 299\""),
        "what was typed stays: {page}"
    );
    let (status, _, page) = send(
        &app,
        post_req(
            "/dialplan/ring-group",
            Some(&cookie),
            &format!("members=202+201&mode=hunt&step_secs=10&mailbox=201&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Ring group saved."));
    assert!(asked.lock().unwrap().contains(&Request::RingGroupSet {
        mode: "hunt".into(),
        step_secs: 10,
        members: vec!["202".into(), "201".into()],
        mailbox: Some("201".into()),
    }));
    // A refused office mailbox: next to the form, as typed.
    let (status, _, page) = send(
        &app,
        post_req(
            "/dialplan/ring-group",
            Some(&cookie),
            &format!("members=202&mode=all&step_secs=10&mailbox=298&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("<p id=\"rg-error\" class=\"field-error\">office mailbox: 298 is not an extension here</p>"),
        "{page}"
    );
    assert!(
        page.contains("id=\"rg-mailbox\" name=\"mailbox\" size=\"6\" value=\"298\""),
        "{page}"
    );
    let (status, _, page) = send(
        &app,
        post_req(
            "/dialplan/ring-group",
            Some(&cookie),
            &format!("members=202&step_secs=soon&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("is not a number"), "{page}");
}

#[tokio::test]
async fn the_dial_plan_shows_the_extension_range_reception_and_the_office_mailbox() {
    let (app, _) = site(hash(), "10.0.0.2:40000");
    let (cookie, _) = logged_in(&app).await;
    let (status, _, page) = send(&app, get_req("/dialplan", Some(&cookie))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<dd id=\"ext-range\">201-499</dd>"), "{page}");
    assert!(
        page.contains("<dd id=\"office-mailbox\">extension 202 (the first of reception)</dd>"),
        "{page}"
    );
    assert!(page.contains("Reception: the ring group for the office number"));
    assert!(
        page.contains("Now: 202, 201 ring in turn, 10 s each (set here)."),
        "{page}"
    );
    assert!(
        page.contains("value=\"202, 201\"") && page.contains("<option value=\"hunt\" selected>")
    );
}

#[tokio::test]
async fn refused_extensions_show_next_to_their_field_and_nothing_else_happens() {
    let (app, asked) = site(hash(), "10.0.0.2:40000");
    let (cookie, csrf) = logged_in(&app).await;
    // Approve with an extension outside the range.
    let (status, _, page) = send(
        &app,
        post_req(
            "/stations/approve",
            Some(&cookie),
            &format!("code=123456&ext=999&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("value=\"999\" aria-invalid=\"true\" aria-describedby=\"ext-123456-error\">"),
        "{page}"
    );
    assert!(
        page.contains("<p id=\"ext-123456-error\" class=\"field-error\">extension 999 is outside the range 201-499</p>"),
        "{page}"
    );
    assert!(!page.contains("notice bad"), "not a page notice: {page}");
    // Change extension, refused the same way, next to that row's field.
    let (status, _, page) = send(
        &app,
        post_req(
            "/stations/extension",
            Some(&cookie),
            &format!("ext=202&new_ext=999&name=&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("<input id=\"new-202\" name=\"new_ext\" size=\"6\" value=\"999\" aria-invalid=\"true\" aria-describedby=\"new-202-error\">"),
        "{page}"
    );
    assert!(
        page.contains("<p id=\"new-202-error\" class=\"field-error\">extension 999 is outside the range 201-499</p>"),
        "{page}"
    );
    assert!(!page.contains("notice bad"), "{page}");
    // Accepted: change extension, then Revoke, each as the CLI's request.
    let (status, _, page) = send(
        &app,
        post_req(
            "/stations/extension",
            Some(&cookie),
            &format!("ext=202&new_ext=210&name=Desk&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("Saved: the station is extension 210."),
        "{page}"
    );
    assert!(!page.contains("field-error"));
    let (status, _, page) = send(
        &app,
        post_req(
            "/stations/revoke",
            Some(&cookie),
            &format!("ext=202&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Extension 202 was revoked."), "{page}");
    let asked = asked.lock().unwrap();
    assert!(asked.contains(&Request::SetExtension {
        ext: "202".into(),
        new_ext: Some("210".into()),
        name: Some("Desk".into()),
    }));
    assert!(asked.contains(&Request::Revoke { ext: "202".into() }));
}

#[tokio::test]
async fn line_settings_and_speed_dials_are_refused_next_to_their_field() {
    let (app, asked) = site(hash(), "10.0.0.2:40000");
    let (cookie, csrf) = logged_in(&app).await;
    let (status, _, page) = send(
        &app,
        post_req(
            "/dialplan/line",
            Some(&cookie),
            &format!(
                "ext=201&forward_always=&forward_busy=12%2B34&forward_no_answer=203&csrf={csrf}"
            ),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("id=\"fb-201\" name=\"forward_busy\" size=\"8\" value=\"12+34\" aria-invalid=\"true\" aria-describedby=\"fb-201-error\">"),
        "{page}"
    );
    assert!(
        page.contains("<p id=\"fb-201-error\" class=\"field-error\">Forward when busy: &#34;12+34&#34;: &#39;+&#39; is only allowed at the start</p>")
            || page.contains("<p id=\"fb-201-error\" class=\"field-error\">Forward when busy: &quot;12+34&quot;: &#39;+&#39; is only allowed at the start</p>"),
        "{page}"
    );
    // What was typed in the row stays; do not disturb was unticked.
    assert!(page.contains("value=\"203\""), "{page}");
    assert!(!page.contains("role=\"alert\""), "not a page alert: {page}");
    // A refusal about the row itself goes under the row's Save.
    let (status, _, page) = send(
        &app,
        post_req(
            "/dialplan/line",
            Some(&cookie),
            &format!("ext=299&forward_busy=202&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("299 is not an extension here"), "{page}");

    let (status, _, page) = send(
        &app,
        post_req(
            "/dialplan/speed-dial",
            Some(&cookie),
            &format!("code=*3&number=12%2B34&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("<input id=\"sd-code\" name=\"code\" size=\"5\" placeholder=\"*1\" value=\"*3\">")
            && page.contains("<input id=\"sd-number\" name=\"number\" value=\"12+34\" aria-invalid=\"true\" aria-describedby=\"sd-error\">"),
        "{page}"
    );
    assert!(
        page.contains(
            "<p id=\"sd-error\" class=\"field-error\">&#34;12+34&#34;: &#39;+&#39; is only allowed at the start</p>"
        ) || page.contains(
            "<p id=\"sd-error\" class=\"field-error\">&quot;12+34&quot;: &#39;+&#39; is only allowed at the start</p>"
        ),
        "{page}"
    );
    let (status, _, page) = send(
        &app,
        post_req(
            "/dialplan/speed-dial",
            Some(&cookie),
            &format!("code=*3&number=0317001000&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Speed dial saved."), "{page}");
    assert!(asked.lock().unwrap().contains(&Request::SpeedDialSet {
        code: "*3".into(),
        number: "0317001000".into(),
    }));
}

#[tokio::test]
async fn call_records_are_searched_by_outcome_and_dates_and_one_is_shown() {
    let (app, asked) = site(hash(), "10.0.0.2:40000");
    let (cookie, _) = logged_in(&app).await;
    asked.lock().unwrap().clear();
    let (status, _, page) = send(
        &app,
        get_req(
            "/cdr?number=&outcome=answered&from=2026-12-05&to=2026-12-06",
            Some(&cookie),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("/cdr/1"), "{page}");
    let day = 86_400_000i64;
    let from = csv::day_start_ms("2026-12-05").unwrap();
    assert!(
        asked.lock().unwrap().iter().any(|r| matches!(r,
        Request::Cdr { filter, .. } if *filter == CdrFilter {
            outcome: Some("answered".into()),
            from_ms: Some(from),
            to_ms: Some(from + 2 * day),
            ..CdrFilter::default()
        })),
        "{:?}",
        asked.lock().unwrap()
    );
    // The one-call page asks for that record by its id and shows it.
    asked.lock().unwrap().clear();
    let (status, _, page) = send(&app, get_req("/cdr/1", Some(&cookie))).await;
    assert_eq!(status, StatusCode::OK);
    for want in [
        "<dd>201</dd>",
        "<dd>202</dd>",
        "<dd>2026-12-05T11:00:00Z</dd>",
        "<dd>answered</dd>",
    ] {
        assert!(page.contains(want), "{want}: {page}");
    }
    assert!(asked
        .lock()
        .unwrap()
        .iter()
        .any(|r| matches!(r, Request::Cdr { filter, .. } if filter.id == Some(1))));
    let (status, _, page) = send(&app, get_req("/cdr/2", Some(&cookie))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("There is no such call record."), "{page}");
    let (status, _, _) = send(&app, get_req("/cdr/1", None)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_dial_plan_lists_ring_groups_and_the_ranges_source_live() {
    let (app, _) = site(hash(), "10.0.0.2:40000");
    let (cookie, _) = logged_in(&app).await;
    let (status, _, page) = send(&app, get_req("/dialplan", Some(&cookie))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("<div id=\"live\" data-live=\"/live/dialplan\""),
        "{page}"
    );
    assert!(
        page.contains("<dd id=\"ext-range-source\">set here</dd>"),
        "{page}"
    );
    // The range set here can be given back to the configuration file.
    assert!(page.contains("action=\"/dialplan/range-clear\""), "{page}");
    let row = "<tr data-ext=\"600\"><td>600</td><td>Sales</td><td>202, 201</td><td>in turn, 10 s each</td><td>202</td>";
    assert!(page.contains(row), "{page}");
    // The live part alone, as the page fetches it after an event.
    let (status, _, part) = send(&app, get_req("/live/dialplan", Some(&cookie))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(part.contains(row) && part.contains("Remove 600"), "{part}");
    assert!(!part.contains("<html"), "{part}");
    let (status, _, _) = send(&app, get_req("/live/dialplan", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn ring_groups_are_added_changed_and_removed_through_the_dispatcher() {
    let (app, asked) = site(hash(), "10.0.0.2:40000");
    let (cookie, csrf) = logged_in(&app).await;
    let (status, _, page) = send(
        &app,
        post_req(
            "/dialplan/group",
            Some(&cookie),
            &format!("editing=&ext=610&name=Support&members=202%2C+201&mode=all&step_secs=15&mailbox=&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Ring group added."), "{page}");
    assert!(asked.lock().unwrap().contains(&Request::RingGroupAdd {
        ext: "610".into(),
        name: "Support".into(),
        mode: "all".into(),
        step_secs: 15,
        members: vec!["202".into(), "201".into()],
        mailbox: None,
    }));
    // Edit: the form comes filled with the group, its extension fixed.
    let (status, _, page) = send(&app, get_req("/dialplan?edit=600", Some(&cookie))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Change ring group 600"), "{page}");
    assert!(
        page.contains("<input type=\"hidden\" name=\"editing\" value=\"600\">")
            && page.contains(
                "id=\"g-ext\" name=\"ext\" size=\"7\" inputmode=\"numeric\" value=\"600\" readonly"
            )
            && page.contains("id=\"g-name\" name=\"name\" value=\"Sales\"")
            && page.contains("id=\"g-members\" name=\"members\" value=\"202, 201\""),
        "{page}"
    );
    let (status, _, page) = send(
        &app,
        post_req(
            "/dialplan/group",
            Some(&cookie),
            &format!("editing=600&ext=600&name=Sales+team&members=201&mode=hunt&step_secs=8&mailbox=201&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Ring group 600 saved."), "{page}");
    assert!(asked.lock().unwrap().contains(&Request::RingGroupEdit {
        ext: "600".into(),
        name: Some("Sales team".into()),
        mode: "hunt".into(),
        step_secs: 8,
        members: vec!["201".into()],
        mailbox: Some("201".into()),
    }));
    let (status, _, page) = send(
        &app,
        post_req(
            "/dialplan/group-rm",
            Some(&cookie),
            &format!("ext=600&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Ring group 600 removed."), "{page}");
    assert!(asked
        .lock()
        .unwrap()
        .contains(&Request::RingGroupRemove { ext: "600".into() }));
    // Without the form's token nothing is asked.
    let before = asked.lock().unwrap().len();
    let (status, _, _) = send(
        &app,
        post_req("/dialplan/group-rm", Some(&cookie), "ext=600"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(asked.lock().unwrap().len(), before);
}

#[tokio::test]
async fn a_refused_ring_group_shows_the_error_next_to_its_field_as_typed() {
    let (app, _) = site(hash(), "10.0.0.2:40000");
    let (cookie, csrf) = logged_in(&app).await;
    let cases = [
        (
            "ext=610&name=Support&members=202+299",
            "g-members",
            "Members: 299 is not an extension here",
        ),
        (
            "ext=202&name=Support&members=201",
            "g-ext",
            "Extension: 202 is taken by the station Bob",
        ),
        (
            "ext=900&name=Support&members=201",
            "g-ext",
            "Extension: 900 is outside the extension range 201-499",
        ),
        (
            "ext=610&name=+&members=201",
            "g-name",
            "Name: a ring group needs a name",
        ),
        (
            "ext=610&name=Support&members=201&step_secs=soon",
            "g-step",
            "Seconds per member: &#34;soon&#34; is not a number",
        ),
    ];
    for (form, id, msg) in cases {
        let (status, _, page) = send(
            &app,
            post_req(
                "/dialplan/group",
                Some(&cookie),
                &format!("editing=&mode=hunt&{form}&csrf={csrf}"),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{form}");
        let msg_quot = msg.replace("&#34;", "&quot;");
        assert!(
            page.contains(&format!(
                "<span id=\"{id}-error\" class=\"field-error\">{msg}</span>"
            )) || page.contains(&format!(
                "<span id=\"{id}-error\" class=\"field-error\">{msg_quot}</span>"
            )),
            "{form}: {page}"
        );
        assert!(page.contains(&format!("id=\"{id}\"")), "{page}");
        let at = page.find(&format!("id=\"{id}\"")).unwrap();
        let tag = &page[at..at + page[at..].find('>').unwrap()];
        assert!(
            tag.contains("aria-invalid=\"true\"") && tag.contains(&format!("{id}-error")),
            "{tag}"
        );
        // What was typed stays, and nothing else is marked.
        assert_eq!(page.matches("class=\"field-error\"").count(), 1, "{page}");
        assert!(page.contains("<option value=\"hunt\" selected>"), "{page}");
    }
    // The members typed stay in their field.
    let (_, _, page) = send(
        &app,
        post_req(
            "/dialplan/group",
            Some(&cookie),
            &format!("editing=&ext=610&name=Support&members=202+299&mode=all&csrf={csrf}"),
        ),
    )
    .await;
    assert!(
        page.contains("id=\"g-members\" name=\"members\" value=\"202 299\""),
        "{page}"
    );
    assert!(
        page.contains("id=\"g-ext\" name=\"ext\" size=\"7\" inputmode=\"numeric\" value=\"610\""),
        "{page}"
    );
}

#[tokio::test]
async fn the_extension_range_is_set_through_the_dispatcher_and_refused_next_to_its_fields() {
    let (app, asked) = site(hash(), "10.0.0.2:40000");
    let (cookie, csrf) = logged_in(&app).await;
    let (status, _, page) = send(
        &app,
        post_req(
            "/dialplan/range",
            Some(&cookie),
            &format!("lo=300&hi=399&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("<p id=\"range-error\" class=\"field-error\">the range 300-399 would leave station 202 (Bob) outside it: change it first</p>"),
        "{page}"
    );
    assert!(
        page.contains("<input id=\"range-lo\" name=\"lo\" size=\"7\" inputmode=\"numeric\" value=\"300\" aria-invalid=\"true\" aria-describedby=\"range-error\">"),
        "{page}"
    );
    let (status, _, page) = send(
        &app,
        post_req(
            "/dialplan/range",
            Some(&cookie),
            &format!("lo=two&hi=399&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("Lowest: &#34;two&#34; is not a number")
            || page.contains("Lowest: &quot;two&quot; is not a number"),
        "{page}"
    );
    let n = asked
        .lock()
        .unwrap()
        .iter()
        .filter(|r| matches!(r, Request::ExtensionRangeSet { .. }))
        .count();
    assert_eq!(n, 1, "a field that is not a number asks nothing");
    let (status, _, page) = send(
        &app,
        post_req(
            "/dialplan/range",
            Some(&cookie),
            &format!("lo=200&hi=299&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Extension range saved."), "{page}");
    let (status, _, page) = send(
        &app,
        post_req(
            "/dialplan/range-clear",
            Some(&cookie),
            &format!("csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("range applies again"), "{page}");
    let asked = asked.lock().unwrap();
    assert!(asked.contains(&Request::ExtensionRangeSet { lo: 200, hi: 299 }));
    assert!(asked.contains(&Request::ExtensionRangeClear));
}
