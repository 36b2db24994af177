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
                    ring_group: json!({}),
                    disk: Some(json!({"free_bytes": 5u64 << 30})),
                    admin: json!({}),
                    connections: json!({}),
                }))),
                Request::Calls => Ok(ApiResponse::Calls { calls: vec![] }),
                Request::Agents => Ok(ApiResponse::Agents {
                    agents: vec![crate::api::AgentInfo {
                        fingerprint: "f1".into(),
                        ext: None,
                        name: Some("<b>Front desk</b>".into()),
                        state: "pending".into(),
                        code: Some("123456".into()),
                        waiting: true,
                        online: false,
                        addr: Some("10.0.0.7:5000".into()),
                    }],
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
                Request::RingGroupSet { members, .. } if members.iter().any(|m| m == "299") => {
                    Err("299 is not an extension here".into())
                }
                Request::RingGroupSet {
                    members,
                    mode,
                    step_secs,
                } => Ok(ApiResponse::RingGroup {
                    ring_group: Some(crate::db::RingGroup {
                        mode,
                        members,
                        step_secs,
                    }),
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

/// Log in; the cookie and the CSRF token the pages carry.
async fn logged_in(app: &Router) -> (String, String) {
    let (status, headers, _) = send(app, post_req("/login", None, "password=correct+horse")).await;
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
        let (status, _, body) = send(&app, post_req("/login", None, "password=wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            body.contains(&format!("Wrong password. {left} more")),
            "{body}"
        );
    }
    let (status, _, body) = send(&app, post_req("/login", None, "password=wrong")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body.contains("locked out"), "{body}");
    // Even the right password waits now.
    let (status, _, _) = send(&app, post_req("/login", None, "password=correct+horse")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
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
            &format!("members=202+201&mode=hunt&step_secs=10&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Ring group saved."));
    assert!(asked.lock().unwrap().contains(&Request::RingGroupSet {
        mode: "hunt".into(),
        step_secs: 10,
        members: vec!["202".into(), "201".into()],
    }));
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
