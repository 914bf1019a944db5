//! The `okta` connector against `wiremock` (exact requests, Okta's error bodies and status
//! handling, paging, resume after a failed page, redaction) and against the local sandbox.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cordon_connectors::http_client::{HttpClient, HttpClientConfig};
use cordon_connectors::okta::OktaConnector;
use cordon_connectors::registry::Registry;
use cordon_connectors::sandbox::okta::{OktaSandbox, SANDBOX_TOKEN, SUSPECT_ID};
use cordon_connectors::sandbox::Sandbox;
use cordon_connectors::secret::Redactor;
use cordon_connectors::{ActionCall, Connector, ConnectorError, RequestLog, ResumeSlot};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wiremock::matchers::{body_string, header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const TOKEN: &str = "00Okta-test-token-5f4e3d2c1b";
const ID: &str = "00u1jsmith0suspect01";
const LOGIN: &str = "j.smith@example.com";

mod support;
use support::MemSink;

struct Harness {
    connector: Arc<dyn Connector>,
    sink: MemSink,
    log: RequestLog,
    _dir: tempfile::TempDir,
}

/// A registry-built `okta` instance whose base URL is `base` and whose token is read from
/// a file.
fn harness_at(base: &str, token: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("okta-token"), format!("{token}\n")).unwrap();
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "okta-prod": {"type": "okta", "base_url": base, "token": {"file": "okta-token"}}
    }))
    .unwrap();
    let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
    Harness {
        connector: registry.resolve("okta", None).unwrap(),
        sink: MemSink::default(),
        log: RequestLog::default(),
        _dir: dir,
    }
}

fn harness(server: &MockServer) -> Harness {
    harness_at(&server.uri(), TOKEN)
}

/// A harness whose client gives up after `timeout`.
fn harness_with_timeout(server: &MockServer, timeout: Duration) -> Harness {
    let redactor = Redactor::new();
    let token = redactor.secret(TOKEN);
    let mut config = HttpClientConfig::new("okta-prod");
    config.base_url = Some(server.uri().parse().unwrap());
    config.timeout = timeout;
    let client = HttpClient::new(config, redactor).unwrap();
    Harness {
        connector: Arc::new(OktaConnector::with_client(client, token).unwrap()),
        sink: MemSink::default(),
        log: RequestLog::default(),
        _dir: tempfile::tempdir().unwrap(),
    }
}

impl Harness {
    async fn call_with(
        &self,
        action: &str,
        input: Value,
        resume: &ResumeSlot,
    ) -> Result<Value, ConnectorError> {
        self.connector
            .call(ActionCall {
                action,
                input: &input,
                idempotency_key: "run1/step/0",
                run_id: "run1",
                step_id: "step",
                attempt: 1,
                evidence: &self.sink,
                requests: &self.log,
                resume,
                prior: None,
            })
            .await
    }

    async fn call(&self, action: &str, input: Value) -> Result<Value, ConnectorError> {
        self.call_with(action, input, &ResumeSlot::default()).await
    }

    async fn prior(&self, action: &str, input: Value) -> Result<Option<Value>, ConnectorError> {
        self.connector
            .prior_state(ActionCall {
                action,
                input: &input,
                idempotency_key: "run1/step/0",
                run_id: "run1",
                step_id: "step",
                attempt: 1,
                evidence: &self.sink,
                requests: &self.log,
                resume: &ResumeSlot::default(),
                prior: None,
            })
            .await
    }
}

fn user(status: &str) -> Value {
    json!({
        "id": ID, "status": status, "created": "2024-01-02T03:04:05.000Z",
        "lastLogin": "2024-06-01T00:00:00.000Z", "statusChanged": null,
        "profile": {"login": LOGIN, "email": LOGIN, "firstName": "John", "lastName": "Smith"},
    })
}

fn okta_error(code: &str, summary: &str) -> Value {
    json!({"errorCode": code, "errorSummary": summary, "errorLink": code,
           "errorId": "oae123", "errorCauses": []})
}

/// `GET /api/v1/users/{key}` answering `status`, with the exact auth and accept headers.
fn get_user_mock(key: &str, body: Value) -> Mock {
    Mock::given(method("GET"))
        .and(path(format!("/api/v1/users/{key}")))
        .and(header("authorization", format!("SSWS {TOKEN}").as_str()))
        .and(header("accept", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
}

#[tokio::test]
async fn get_user_by_login_and_by_id() {
    let server = MockServer::start().await;
    get_user_mock(LOGIN, user("ACTIVE"))
        .expect(1)
        .mount(&server)
        .await;
    get_user_mock(ID, user("SUSPENDED"))
        .expect(1)
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h.call("get_user", json!({"user": LOGIN})).await.unwrap();
    assert_eq!(out["found"], true);
    assert_eq!(out["id"], ID);
    assert_eq!(out["login"], LOGIN);
    assert_eq!(out["email"], LOGIN);
    assert_eq!(out["name"], "John Smith");
    assert_eq!(out["status"], "ACTIVE");
    assert_eq!(out["last_login"], "2024-06-01T00:00:00.000Z");
    let out = h.call("get_user", json!({"user": ID})).await.unwrap();
    assert_eq!(out["status"], "SUSPENDED");
    let log = h.log.take();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].method, "GET");
    assert_eq!(log[0].path, format!("/api/v1/users/{LOGIN}"));
    assert_eq!(log[0].status, Some(200));
}

#[tokio::test]
async fn unknown_user_falls_back_to_search_and_is_not_an_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users/ghost@example.com"))
        .respond_with(ResponseTemplate::new(404).set_body_json(okta_error("E0000007", "Not found")))
        .expect(4)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .and(query_param(
            "search",
            "profile.login eq \"ghost@example.com\" or profile.email eq \"ghost@example.com\"",
        ))
        .and(query_param("limit", "2"))
        .and(header("authorization", format!("SSWS {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(4)
        .mount(&server)
        .await;
    let h = harness(&server);
    let u = json!({"user": "ghost@example.com"});
    assert_eq!(
        h.call("get_user", u.clone()).await.unwrap(),
        json!({"found": false})
    );
    let nf = json!({"found": false, "target": null, "already": false});
    assert_eq!(h.call("suspend_user", u.clone()).await.unwrap(), nf);
    assert_eq!(h.call("clear_sessions", u.clone()).await.unwrap(), nf);
    assert_eq!(
        h.prior("suspend_user", u.clone()).await.unwrap(),
        Some(json!({"found": false}))
    );
    // Nothing but lookups was sent.
    let reqs = server.received_requests().await.unwrap();
    assert!(reqs.iter().all(|r| r.method.as_str() == "GET"));
}

#[tokio::test]
async fn search_finds_a_user_whose_login_differs_and_refuses_ambiguity() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users/john@corp.example"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .and(query_param(
            "search",
            "profile.login eq \"john@corp.example\" or profile.email eq \"john@corp.example\"",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([user("ACTIVE")])))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .and(query_param(
            "search",
            "profile.login eq \"shared@corp.example\" or profile.email eq \"shared@corp.example\"",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            user("ACTIVE"),
            {"id": "00u9other0person0001", "status": "ACTIVE", "profile": {}}
        ])))
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call("get_user", json!({"user": "john@corp.example"}))
        .await
        .unwrap();
    assert_eq!(out["id"], ID);
    let err = h
        .call("suspend_user", json!({"user": "shared@corp.example"}))
        .await
        .unwrap_err();
    match err {
        ConnectorError::InvalidInput { field, message } => {
            assert_eq!(field, "user");
            assert!(message.contains("00u9other0person0001"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // A login with `/` cannot go in a path: it is searched straight away.
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .and(query_param(
            "search",
            "profile.login eq \"a/b@corp.example\" or profile.email eq \"a/b@corp.example\"",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(1)
        .mount(&server)
        .await;
    assert_eq!(
        h.call("get_user", json!({"user": "a/b@corp.example"}))
            .await
            .unwrap()["found"],
        false
    );
}

#[tokio::test]
async fn suspend_sends_the_documented_request_once() {
    let server = MockServer::start().await;
    get_user_mock(LOGIN, user("ACTIVE")).mount(&server).await;
    Mock::given(method("POST"))
        .and(path(format!("/api/v1/users/{ID}/lifecycle/suspend")))
        .and(header("authorization", format!("SSWS {TOKEN}").as_str()))
        .and(header("accept", "application/json"))
        .and(body_string(""))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let h = harness(&server);
    let prior = h
        .prior("suspend_user", json!({"user": LOGIN}))
        .await
        .unwrap();
    assert_eq!(
        prior,
        Some(
            json!({"found": true, "id": ID, "login": LOGIN, "status": "ACTIVE", "already": false})
        )
    );
    let out = h
        .call("suspend_user", json!({"user": LOGIN}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "target": ID, "already": false, "status": "SUSPENDED", "previous_status": "ACTIVE"})
    );
    let log = h.log.take();
    assert_eq!(log.last().unwrap().method, "POST");
    assert_eq!(
        log.last().unwrap().path,
        format!("/api/v1/users/{ID}/lifecycle/suspend")
    );
}

#[tokio::test]
async fn already_in_the_desired_state_sends_nothing() {
    let server = MockServer::start().await;
    get_user_mock(LOGIN, user("SUSPENDED")).mount(&server).await;
    get_user_mock(ID, user("ACTIVE")).mount(&server).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call("suspend_user", json!({"user": LOGIN}))
        .await
        .unwrap();
    assert_eq!(out["already"], true);
    assert_eq!(out["target"], ID);
    let out = h.call("unsuspend_user", json!({"user": ID})).await.unwrap();
    assert_eq!(out["already"], true);
    assert_eq!(out["status"], "ACTIVE");
}

#[tokio::test]
async fn unsuspend_moves_a_suspended_user() {
    let server = MockServer::start().await;
    get_user_mock(ID, user("SUSPENDED")).mount(&server).await;
    Mock::given(method("POST"))
        .and(path(format!("/api/v1/users/{ID}/lifecycle/unsuspend")))
        .and(header("authorization", format!("SSWS {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h.call("unsuspend_user", json!({"user": ID})).await.unwrap();
    assert_eq!(out["already"], false);
    assert_eq!(out["status"], "ACTIVE");
    assert_eq!(out["previous_status"], "SUSPENDED");
}

#[tokio::test]
async fn legacy_e0000001_after_a_race_is_already() {
    let server = MockServer::start().await;
    // Read ACTIVE, someone else suspends, Okta answers 400 E0000001, the re-read says SUSPENDED.
    get_user_mock(LOGIN, user("ACTIVE"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    get_user_mock(ID, user("SUSPENDED"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/api/v1/users/{ID}/lifecycle/suspend")))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(okta_error("E0000001", "Api validation failed: status")),
        )
        .expect(1)
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call("suspend_user", json!({"user": LOGIN}))
        .await
        .unwrap();
    assert_eq!(out["already"], true);
    assert_eq!(out["target"], ID);
}

#[tokio::test]
async fn wrong_state_400_names_code_summary_and_status() {
    let server = MockServer::start().await;
    get_user_mock(ID, user("DEPROVISIONED"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/api/v1/users/{ID}/lifecycle/suspend")))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(okta_error("E0000001", "Api validation failed: status")),
        )
        .mount(&server)
        .await;
    let h = harness(&server);
    let err = h
        .call("suspend_user", json!({"user": ID}))
        .await
        .unwrap_err();
    match &err {
        ConnectorError::Rejected { status, message } => {
            assert_eq!(*status, 400);
            assert!(message.contains("E0000001"), "{message}");
            assert!(message.contains("Api validation failed"), "{message}");
            assert!(message.contains("DEPROVISIONED"), "{message}");
            assert!(message.contains("oae123"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_transient());
}

#[tokio::test]
async fn clear_sessions_revokes_oauth_tokens_too() {
    let server = MockServer::start().await;
    get_user_mock(LOGIN, user("ACTIVE")).mount(&server).await;
    Mock::given(method("DELETE"))
        .and(path(format!("/api/v1/users/{ID}/sessions")))
        .and(query_param("oauthTokens", "true"))
        .and(query_param("forgetDevices", "true"))
        .and(header("authorization", format!("SSWS {TOKEN}").as_str()))
        .and(header("accept", "application/json"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call("clear_sessions", json!({"user": LOGIN}))
        .await
        .unwrap();
    assert_eq!(out["found"], true);
    assert_eq!(out["target"], ID);
    assert_eq!(out["already"], false);
}

/// Every mutating action answered `status` with an Okta error body that echoes the token.
async fn lifecycle_error(status: u16, code: &str, headers: &[(&str, String)]) -> ConnectorError {
    let server = MockServer::start().await;
    get_user_mock(ID, user("ACTIVE")).mount(&server).await;
    let mut resp = ResponseTemplate::new(status).set_body_json(json!({
        "errorCode": code, "errorSummary": format!("summary of {code}; saw SSWS {TOKEN}"),
        "errorLink": code, "errorId": "oae9", "errorCauses": [{"errorSummary": "cause one"}],
    }));
    for (n, v) in headers {
        resp = resp.insert_header(*n, v.as_str());
    }
    Mock::given(method("POST"))
        .respond_with(resp)
        .mount(&server)
        .await;
    let h = harness(&server);
    let err = h
        .call("suspend_user", json!({"user": ID}))
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(TOKEN), "{text}");
    assert!(text.contains(code), "{text}");
    assert!(text.contains("cause one"), "{text}");
    assert!(text.contains("[REDACTED]"), "{text}");
    err
}

#[tokio::test]
async fn statuses_map_to_typed_errors_without_the_token() {
    assert!(matches!(
        lifecycle_error(401, "E0000011", &[]).await,
        ConnectorError::Auth { status: 401, .. }
    ));
    assert!(matches!(
        lifecycle_error(403, "E0000006", &[]).await,
        ConnectorError::Auth { status: 403, .. }
    ));
    assert!(matches!(
        lifecycle_error(500, "E0000009", &[]).await,
        ConnectorError::Transient { .. }
    ));
    assert!(matches!(
        lifecycle_error(503, "E0000010", &[]).await,
        ConnectorError::Transient { .. }
    ));
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 30;
    let err = lifecycle_error(
        429,
        "E0000047",
        &[
            ("X-Rate-Limit-Limit", "600".into()),
            ("X-Rate-Limit-Remaining", "0".into()),
            ("X-Rate-Limit-Reset", reset.to_string()),
        ],
    )
    .await;
    assert!(matches!(err, ConnectorError::RateLimited { .. }), "{err:?}");
    let wait = err.retry_after().unwrap();
    // Until the reset, plus a second of margin and up to a second of jitter.
    assert!(
        wait >= Duration::from_secs(29) && wait <= Duration::from_secs(32),
        "{wait:?}"
    );
}

#[tokio::test]
async fn lookup_errors_and_401_on_the_read() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(okta_error("E0000011", "Invalid token provided")),
        )
        .mount(&server)
        .await;
    let h = harness(&server);
    let err = h
        .call("get_user", json!({"user": LOGIN}))
        .await
        .unwrap_err();
    match &err {
        ConnectorError::Auth {
            status: 401,
            message,
        } => {
            assert!(
                message.contains("E0000011: Invalid token provided"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    // One request only: an SSWS token cannot be refreshed.
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_slow_answer_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(user("ACTIVE"))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let h = harness_with_timeout(&server, Duration::from_millis(300));
    let err = h
        .call("suspend_user", json!({"user": LOGIN}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectorError::Timeout(d) if d == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn inputs_are_checked_naming_the_field() {
    let server = MockServer::start().await;
    let h = harness(&server);
    let field = |r: Result<Value, ConnectorError>| match r {
        Err(ConnectorError::InvalidInput { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(field(h.call("get_user", json!({})).await), "user");
    assert_eq!(
        field(h.call("get_user", json!({"user": " "})).await),
        "user"
    );
    assert_eq!(
        field(h.call("get_user", json!({"usr": LOGIN})).await),
        "user"
    );
    assert_eq!(field(h.call("get_user", json!("j.smith")).await), "with");
    assert_eq!(
        field(h.call("snapshot_system_log", json!({"user": LOGIN})).await),
        "since"
    );
    assert_eq!(
        field(
            h.call(
                "snapshot_system_log",
                json!({"user": LOGIN, "since": "last tuesday"})
            )
            .await
        ),
        "since"
    );
    assert_eq!(
        field(
            h.call(
                "snapshot_system_log",
                json!({"user": LOGIN, "since": "2024-05-02T00:00:00Z", "until": "2024-05-01T00:00:00Z"})
            )
            .await
        ),
        "until"
    );
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let build = |v: Value| {
        let config: BTreeMap<String, Value> = serde_json::from_value(v).unwrap();
        Registry::from_config(&config, dir.path(), &Redactor::new())
    };
    let errs = build(json!({"okta-prod": {"type": "okta", "base_url": "https://acme.okta.com"}}))
        .unwrap_err();
    assert!(
        errs.iter().any(|e| e.setting.as_deref() == Some("token")),
        "{errs:?}"
    );
    let errs = build(
        json!({"okta-prod": {"type": "okta", "base_url": "http://acme.okta.com",
                                           "token": "00inline-secret-token"}}),
    )
    .unwrap_err();
    let text = errs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("base_url") && text.contains("token"),
        "{text}"
    );
    assert!(!text.contains("00inline-secret-token"), "{text}");
    let errs = build(
        json!({"okta-prod": {"type": "okta", "base_url": "https://a.okta.com",
                                           "token": {"env": "X"}, "tokn": 1}}),
    )
    .unwrap_err();
    assert!(errs.iter().any(|e| e.setting.as_deref() == Some("tokn")));
    // The registry's and the connector's Debug output never show the token.
    std::fs::write(dir.path().join("t"), TOKEN).unwrap();
    let registry = build(
        json!({"o": {"type": "okta", "base_url": "https://acme.okta.com",
                                      "token": {"file": "t"}}}),
    )
    .unwrap();
    let debug = format!(
        "{registry:?} {:?}",
        registry.get("o").map(|c| c.instance().to_string())
    );
    assert!(!debug.contains(TOKEN), "{debug}");
    let redactor = Redactor::new();
    let connector = OktaConnector::with_client(
        HttpClient::new(
            {
                let mut c = HttpClientConfig::new("o");
                c.base_url = Some("https://acme.okta.com".parse().unwrap());
                c
            },
            redactor.clone(),
        )
        .unwrap(),
        redactor.secret(TOKEN),
    )
    .unwrap();
    let debug = format!("{connector:?}");
    assert!(
        !debug.contains(TOKEN) && debug.contains("[REDACTED]"),
        "{debug}"
    );
}

/// 2,500 events served as 12 pages of 200 and one of 100, linked by opaque cursors.
fn event(i: usize) -> Value {
    json!({"uuid": format!("evt-{i:05}"), "published": format!("2024-05-01T00:{:02}:{:02}.000Z", (i / 60) % 60, i % 60),
           "eventType": "user.session.start", "actor": {"id": ID, "alternateId": LOGIN},
           "client": {"ipAddress": "203.0.113.45", "geographicalContext": {"geolocation": {"lat": 39.0438, "lon": -77.4874}}},
           "displayMessage": format!("sign-in \"{i}\"\nline")})
}

const PAGES: usize = 13;

fn page_of(n: usize) -> Vec<Value> {
    let start = n * 200;
    let end = (start + 200).min(2500);
    (start..end).map(event).collect()
}

/// Mount the 13 pages; page `fail_page` (1-based) answers 503 once first.
async fn mount_pages(server: &MockServer, fail_page: Option<usize>) {
    get_user_mock(LOGIN, user("ACTIVE")).mount(server).await;
    let base = server.uri();
    for n in 0..PAGES {
        let mut resp = ResponseTemplate::new(200)
            .set_body_json(Value::Array(page_of(n)))
            .append_header(
                "link",
                format!("<{base}/api/v1/logs?page={n}>; rel=\"self\"").as_str(),
            );
        if n + 1 < PAGES {
            resp = resp.append_header(
                "link",
                format!(
                    "<{base}/api/v1/logs?after=cur{}&limit=1000>; rel=\"next\"",
                    n + 1
                )
                .as_str(),
            );
        }
        let mock = if n == 0 {
            Mock::given(method("GET"))
                .and(path("/api/v1/logs"))
                .and(query_param("since", "2024-05-01T00:00:00Z"))
                .and(query_param("until", "2024-05-02T00:00:00Z"))
                .and(query_param(
                    "filter",
                    format!("actor.id eq \"{ID}\" or target.id eq \"{ID}\"").as_str(),
                ))
                .and(query_param("limit", "1000"))
                .and(query_param("sortOrder", "ASCENDING"))
                .and(query_param_is_missing("after"))
                .and(header("authorization", format!("SSWS {TOKEN}").as_str()))
                .and(header("accept", "application/json"))
        } else {
            Mock::given(method("GET"))
                .and(path("/api/v1/logs"))
                .and(query_param("after", format!("cur{n}").as_str()))
                .and(query_param_is_missing("since"))
                .and(header("authorization", format!("SSWS {TOKEN}").as_str()))
        };
        if fail_page == Some(n + 1) {
            let failing = if n == 0 {
                Mock::given(method("GET"))
                    .and(path("/api/v1/logs"))
                    .and(query_param_is_missing("after"))
            } else {
                Mock::given(method("GET"))
                    .and(path("/api/v1/logs"))
                    .and(query_param("after", format!("cur{n}").as_str()))
            };
            failing
                .respond_with(
                    ResponseTemplate::new(503)
                        .set_body_json(okta_error("E0000009", "Internal Server Error")),
                )
                .up_to_n_times(1)
                .with_priority(1)
                .mount(server)
                .await;
        }
        mock.respond_with(resp).mount(server).await;
    }
}

fn expected_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..2500 {
        out.extend_from_slice(serde_json::to_string(&event(i)).unwrap().as_bytes());
        out.push(b'\n');
    }
    out
}

fn snapshot_input() -> Value {
    json!({"user": LOGIN, "since": "2024-05-01T00:00:00Z", "until": "2024-05-02T00:00:00Z"})
}

#[tokio::test]
async fn snapshot_follows_every_page_in_order() {
    let server = MockServer::start().await;
    mount_pages(&server, None).await;
    let h = harness(&server);
    let out = h
        .call("snapshot_system_log", snapshot_input())
        .await
        .unwrap();
    let expected = expected_bytes();
    assert_eq!(out["records"], 2500);
    assert_eq!(out["pages"], 13);
    assert_eq!(out["bytes"], expected.len());
    assert_eq!(out["sha256"], hex::encode(Sha256::digest(&expected)));
    assert_eq!(out["evidence_id"], "01TEST");
    assert_eq!(out["target"], ID);
    let finished = h.sink.finished.lock().unwrap();
    assert_eq!(finished.len(), 1);
    let (rec, data) = &finished[0];
    assert_eq!(data, &expected, "every event, in order, one JSON line each");
    assert_eq!(rec.meta.connector_type, "okta");
    assert_eq!(rec.meta.instance, "okta-prod");
    assert_eq!(rec.meta.extension, "jsonl");
    assert_eq!(rec.meta.media_type, "application/x-ndjson");
    assert_eq!(rec.meta.source["user"], LOGIN);
    assert_eq!(rec.meta.source["user_id"], ID);
    assert_eq!(rec.meta.source["since"], "2024-05-01T00:00:00Z");
    assert_eq!(rec.meta.source["until"], "2024-05-02T00:00:00Z");
    assert_eq!(rec.meta.source["endpoint"], "GET /api/v1/logs");
    assert!(!serde_json::to_string(&rec.meta).unwrap().contains(TOKEN));
    let logs: Vec<_> = h
        .log
        .take()
        .into_iter()
        .filter(|r| r.path == "/api/v1/logs")
        .collect();
    assert_eq!(logs.len(), 13);
}

#[tokio::test]
async fn snapshot_resumes_from_the_failed_page() {
    let server = MockServer::start().await;
    mount_pages(&server, Some(3)).await;
    let h = harness(&server);
    let slot = ResumeSlot::default();
    let err = h
        .call_with("snapshot_system_log", snapshot_input(), &slot)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Transient { .. }), "{err:?}");
    assert!(err.to_string().contains("E0000009"), "{err}");
    let before = server.received_requests().await.unwrap().len();
    assert_eq!(
        before,
        1 + 3,
        "the user, pages 1 and 2, and the failed page 3"
    );
    let out = h
        .call_with("snapshot_system_log", snapshot_input(), &slot)
        .await
        .unwrap();
    let reqs = server.received_requests().await.unwrap();
    let again: Vec<String> = reqs[before..]
        .iter()
        .map(|r: &Request| r.url.query().unwrap_or("").to_string())
        .collect();
    assert_eq!(again.len(), 11, "pages 3 to 13 only: {again:?}");
    assert!(again[0].contains("after=cur2"), "{again:?}");
    assert!(
        reqs[before..]
            .iter()
            .all(|r| r.url.path() == "/api/v1/logs"),
        "no second user lookup"
    );
    let expected = expected_bytes();
    assert_eq!(out["records"], 2500);
    assert_eq!(out["pages"], 13);
    assert_eq!(out["sha256"], hex::encode(Sha256::digest(&expected)));
    assert_eq!(
        *h.sink.created.lock().unwrap(),
        1,
        "one artifact, continued"
    );
    assert_eq!(h.sink.finished.lock().unwrap()[0].1, expected);
    // Every event counted once, although page 3 was fetched twice.
    assert_eq!(out["ip_addresses"][0]["events"], 2500);
    assert_eq!(out["ip_addresses"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn snapshot_refuses_a_next_link_to_another_origin() {
    let server = MockServer::start().await;
    get_user_mock(LOGIN, user("ACTIVE")).mount(&server).await;
    let other = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/logs"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([event(0)]))
                .insert_header(
                    "link",
                    format!("<{}/api/v1/logs?after=x>; rel=\"next\"", other.uri()).as_str(),
                ),
        )
        .mount(&server)
        .await;
    let h = harness(&server);
    let err = h
        .call("snapshot_system_log", snapshot_input())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refusing"), "{err}");
    assert!(other.received_requests().await.unwrap().is_empty());
    assert!(h.sink.finished.lock().unwrap().is_empty());
}

#[tokio::test]
async fn snapshot_of_an_unknown_user_saves_nothing() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call(
            "snapshot_system_log",
            json!({"user": "ghost@example.com", "since": "2024-05-01T00:00:00Z"}),
        )
        .await
        .unwrap();
    assert_eq!(out["found"], false);
    assert_eq!(out["records"], 0);
    assert_eq!(*h.sink.created.lock().unwrap(), 0);
}

#[tokio::test]
async fn against_the_sandbox() {
    let server = Sandbox::seeded().serve().await.unwrap();
    let h = harness_at(&format!("{}/okta", server.base_url()), SANDBOX_TOKEN);
    let out = h.call("get_user", json!({"user": LOGIN})).await.unwrap();
    assert_eq!(out["id"], SUSPECT_ID);
    assert_eq!(out["status"], "ACTIVE");
    assert_eq!(
        h.call("get_user", json!({"user": "nobody@example.com"}))
            .await
            .unwrap(),
        json!({"found": false})
    );
    let since = (chrono::Utc::now() - chrono::Duration::days(30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let snap = h
        .call(
            "snapshot_system_log",
            json!({"user": LOGIN, "since": since}),
        )
        .await
        .unwrap();
    assert_eq!(snap["records"], 150);
    let out = h
        .call("suspend_user", json!({"user": LOGIN}))
        .await
        .unwrap();
    assert_eq!(out["already"], false);
    let out = h
        .call("suspend_user", json!({"user": LOGIN}))
        .await
        .unwrap();
    assert_eq!(out["already"], true);
    let out = h
        .call("clear_sessions", json!({"user": LOGIN}))
        .await
        .unwrap();
    assert_eq!(out["target"], SUSPECT_ID);
    let out = h
        .call("unsuspend_user", json!({"user": SUSPECT_ID}))
        .await
        .unwrap();
    assert_eq!(out["already"], false);
    assert_eq!(out["status"], "ACTIVE");
    // The lifecycle moves and the session clear are in the System Log now (`until` is
    // exclusive: bound it past this millisecond).
    let until = (chrono::Utc::now() + chrono::Duration::minutes(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let snap = h
        .call(
            "snapshot_system_log",
            json!({"user": SUSPECT_ID, "since": since, "until": until}),
        )
        .await
        .unwrap();
    assert_eq!(snap["records"], 153);
    // A wrong token is refused the way Okta refuses it.
    let bad = harness_at(&format!("{}/okta", server.base_url()), "wrong-token");
    let err = bad
        .call("get_user", json!({"user": LOGIN}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("E0000011"), "{err}");
}

#[tokio::test]
async fn sandbox_pages_throttles_and_refuses_wrong_states() {
    let okta = OktaSandbox::seeded();
    let app = axum::Router::new().nest(
        "/okta",
        cordon_connectors::sandbox::okta::router(okta.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, app).await });
    let base = format!("http://{addr}/okta");
    let h = harness_at(&base, SANDBOX_TOKEN);
    // A direct request with a small page size: bounded query, next links, no `since` in them.
    let client = reqwest::Client::new();
    let since = (chrono::Utc::now() - chrono::Duration::days(30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let until = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut url = format!("{base}/api/v1/logs");
    let mut query: Vec<(&str, String)> = vec![
        ("since", since.clone()),
        ("until", until),
        ("filter", format!("actor.id eq \"{SUSPECT_ID}\"")),
        ("limit", "40".into()),
    ];
    let mut total = 0;
    let mut pages = 0;
    loop {
        let resp = client
            .get(&url)
            .query(&query)
            .header("authorization", format!("SSWS {SANDBOX_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let next = cordon_connectors::okta::next_link(resp.headers());
        let events: Vec<Value> = resp.json().await.unwrap();
        total += events.len();
        pages += 1;
        match next {
            Some(n) => {
                assert!(!n.contains("since="), "{n}");
                url = n;
                query.clear();
            }
            None => break,
        }
    }
    assert_eq!((total, pages), (150, 4));
    assert_eq!(okta.event_count(SUSPECT_ID), 150);
    // Throttling: 429 E0000047 with a reset header.
    okta.throttle_next(1);
    let err = h
        .call("get_user", json!({"user": LOGIN}))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::RateLimited { .. }), "{err:?}");
    assert!(err.to_string().contains("E0000047"), "{err}");
    assert!(err.retry_after().is_some());
    // Unsuspending an active user in the sandbox answers E0000001 directly.
    let resp = client
        .post(format!(
            "{base}/api/v1/users/{SUSPECT_ID}/lifecycle/unsuspend"
        ))
        .header("authorization", format!("SSWS {SANDBOX_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], "E0000001");
    // …which the connector never provokes: it reads the status first.
    let out = h
        .call("unsuspend_user", json!({"user": LOGIN}))
        .await
        .unwrap();
    assert_eq!(out["already"], true);
    assert_eq!(okta.status_of(LOGIN).as_deref(), Some("ACTIVE"));
    assert_eq!(okta.calls().len(), 1, "only the direct request above");
    task.abort();
}

/// A System Log event by `actor` from `ip` (none when None) at `published`.
fn ip_event(actor: &str, ip: Option<&str>, published: &str, country: Option<&str>) -> Value {
    let mut client = json!({"userAgent": {"rawUserAgent": "Mozilla/5.0"}});
    if let Some(ip) = ip {
        client["ipAddress"] = json!(ip);
    }
    if let Some(c) = country {
        client["geographicalContext"] = json!({"country": c, "city": null});
    }
    json!({"uuid": format!("e-{published}-{}", ip.unwrap_or("none")), "published": published,
           "eventType": "user.session.start", "actor": {"id": actor}, "client": client,
           "target": [{"id": ID}]})
}

/// Serve `pages` of System Log events for the user, linked by `next` links.
async fn mount_event_pages(server: &MockServer, pages: Vec<Vec<Value>>) {
    get_user_mock(LOGIN, user("ACTIVE")).mount(server).await;
    let n = pages.len();
    for (k, page) in pages.into_iter().enumerate() {
        let mut resp = ResponseTemplate::new(200).set_body_json(Value::Array(page));
        if k + 1 < n {
            resp = resp.append_header(
                "link",
                format!(
                    "<{}/api/v1/logs?after=c{}>; rel=\"next\"",
                    server.uri(),
                    k + 1
                )
                .as_str(),
            );
        }
        let m = Mock::given(method("GET")).and(path("/api/v1/logs"));
        let m = if k == 0 {
            m.and(query_param_is_missing("after"))
        } else {
            m.and(query_param("after", format!("c{k}").as_str()))
        };
        m.respond_with(resp).expect(1).mount(server).await;
    }
}

#[tokio::test]
async fn snapshot_summarises_the_users_addresses_across_pages() {
    let server = MockServer::start().await;
    let (home, vpn, abroad) = ("198.51.100.23", "203.0.113.45", "2001:db8:4a3::15");
    mount_event_pages(
        &server,
        vec![
            vec![
                ip_event(ID, Some(vpn), "2024-05-01T10:00:00.000Z", Some("")),
                ip_event(ID, None, "2024-05-01T10:05:00.000Z", None),
                ip_event(ID, Some("175.45.176.x"), "2024-05-01T10:06:00.000Z", None),
                ip_event(ID, Some("unknown"), "2024-05-01T10:07:00.000Z", None),
                ip_event(
                    ID,
                    Some(home),
                    "2024-05-01T11:00:00.000Z",
                    Some("United States"),
                ),
            ],
            vec![
                // Earlier than page 1's, and this time with a country.
                ip_event(
                    ID,
                    Some(vpn),
                    "2024-05-01T09:30:00.000Z",
                    Some("United States"),
                ),
                // An admin acting on the user: the admin's address is not the user's.
                ip_event(
                    "00u0admin",
                    Some("192.0.2.200"),
                    "2024-05-01T09:00:00.000Z",
                    None,
                ),
                ip_event(
                    ID,
                    Some("2001:DB8:4A3:0::15"),
                    "2024-05-01T12:00:00.000Z",
                    Some("China"),
                ),
            ],
            vec![ip_event(
                ID,
                Some(vpn),
                "2024-05-01T23:59:59.500Z",
                Some("Japan"),
            )],
        ],
    )
    .await;
    let h = harness(&server);
    let out = h
        .call("snapshot_system_log", snapshot_input())
        .await
        .unwrap();
    assert_eq!(out["records"], 9, "the artifact keeps every event");
    assert_eq!(out["pages"], 3);
    assert_eq!(
        out["ip_addresses"],
        json!([
            {"ip": vpn, "first_seen": "2024-05-01T09:30:00Z", "last_seen": "2024-05-01T23:59:59.500Z",
             "events": 3, "country": "United States"},
            {"ip": home, "first_seen": "2024-05-01T11:00:00Z", "last_seen": "2024-05-01T11:00:00Z",
             "events": 1, "country": "United States"},
            {"ip": abroad, "first_seen": "2024-05-01T12:00:00Z", "last_seen": "2024-05-01T12:00:00Z",
             "events": 1, "country": "China"},
        ])
    );
    assert_eq!(out["ip_addresses_truncated"], false);
}

#[tokio::test]
async fn more_than_500_addresses_are_truncated() {
    let server = MockServer::start().await;
    let at = "2024-05-01T10:00:00.000Z";
    let page1: Vec<Value> = (1..=400)
        .map(|i| ip_event(ID, Some(&format!("2001:db8::{i:x}")), at, None))
        .collect();
    // 150 more distinct addresses (only 100 fit), then the first address again.
    let mut page2: Vec<Value> = (401..=550)
        .map(|i| ip_event(ID, Some(&format!("2001:db8::{i:x}")), at, None))
        .collect();
    page2.push(ip_event(
        ID,
        Some("2001:db8::1"),
        "2024-05-01T20:00:00.000Z",
        None,
    ));
    mount_event_pages(&server, vec![page1, page2]).await;
    let h = harness(&server);
    let out = h
        .call("snapshot_system_log", snapshot_input())
        .await
        .unwrap();
    assert_eq!(out["records"], 551);
    assert_eq!(out["ip_addresses_truncated"], true);
    let ips = out["ip_addresses"].as_array().unwrap();
    assert_eq!(ips.len(), 500);
    assert!(
        ips.iter().all(|a| a["ip"] != "2001:db8::1f5"),
        "501st left out"
    );
    let first = ips.iter().find(|a| a["ip"] == "2001:db8::1").unwrap();
    assert_eq!(first["events"], 2, "known addresses still count");
    assert_eq!(first["last_seen"], "2024-05-01T20:00:00Z");
}

#[tokio::test]
async fn the_sandbox_suspects_addresses() {
    let server = Sandbox::seeded().serve().await.unwrap();
    let h = harness_at(&format!("{}/okta", server.base_url()), SANDBOX_TOKEN);
    let since = (chrono::Utc::now() - chrono::Duration::days(30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let snap = h
        .call(
            "snapshot_system_log",
            json!({"user": LOGIN, "since": since}),
        )
        .await
        .unwrap();
    let ips: Vec<(&str, &str, u64)> = snap["ip_addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["ip"].as_str().unwrap(),
                a["country"].as_str().unwrap(),
                a["events"].as_u64().unwrap(),
            )
        })
        .collect();
    // 150 events cycling through five kinds: VPN twice, home, abroad over v4 and v6.
    assert_eq!(
        ips,
        [
            ("203.0.113.45", "United States", 60),
            ("198.51.100.23", "United States", 30),
            ("192.0.2.14", "China", 30),
            ("2001:db8:4a3::15", "China", 30),
        ]
    );
    for a in snap["ip_addresses"].as_array().unwrap() {
        let (f, l) = (
            a["first_seen"].as_str().unwrap(),
            a["last_seen"].as_str().unwrap(),
        );
        assert!(
            chrono::DateTime::parse_from_rfc3339(f).unwrap()
                < chrono::DateTime::parse_from_rfc3339(l).unwrap(),
            "{a}"
        );
        assert!(f.ends_with('Z'), "{f}");
    }
}
