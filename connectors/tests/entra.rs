//! The `entra` connector against a `wiremock` Graph and token endpoint: exact requests,
//! token caching and refresh, error mapping, paging, resume, the reports rate limit,
//! redaction, settings, and a run against the local sandbox.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cordon_connectors::entra::{EntraConfig, EntraConnector, RateWindow};
use cordon_connectors::registry::Registry;
use cordon_connectors::secret::{Redactor, SecretValue};
use cordon_connectors::{ActionCall, Connector, ConnectorError, RequestLog, ResumeSlot};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use url::Url;
use wiremock::matchers::{body_json, body_string, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT_ID: &str = "4a1aa1d5-c567-49d0-ad0b-cd957a47f842";
const SECRET: &str = "cs~Q8xS3cr3tV4lue.9f8e7d6c";
const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.access-1";
const TOKEN2: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.access-2";
const USER_ID: &str = "6d3c1f52-8a4e-4b7a-9c1d-2f5e8a9b0c11";
const SELECT: &str =
    "id,displayName,userPrincipalName,mail,accountEnabled,signInSessionsValidFromDateTime";

mod support;
use support::MemSink;

struct Harness {
    connector: Arc<dyn Connector>,
    sink: MemSink,
    log: RequestLog,
    resume: ResumeSlot,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Through the registry, as configuration builds it.
    fn from_config(server: &MockServer) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
        let config: BTreeMap<String, Value> = serde_json::from_value(json!({
            "graph": {
                "type": "entra",
                "tenant_id": TENANT,
                "client_id": CLIENT_ID,
                "client_secret": {"file": "secret"},
                "base_url": server.uri(),
                "token_url": format!("{}/{{tenant_id}}/oauth2/v2.0/token", server.uri()),
            }
        }))
        .unwrap();
        let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
        Harness {
            connector: registry.resolve("entra", Some("graph")).unwrap(),
            sink: MemSink::default(),
            log: RequestLog::default(),
            resume: ResumeSlot::default(),
            _dir: dir,
        }
    }

    /// Built directly, with a request timeout and a reports budget for the test.
    fn direct(server: &MockServer, timeout: Duration, limit: RateWindow) -> Harness {
        let mut cfg =
            EntraConfig::with_defaults("graph", TENANT, CLIENT_ID, SecretValue::new(SECRET))
                .unwrap();
        cfg.base_url = Url::parse(&server.uri()).unwrap();
        cfg.token_url =
            Url::parse(&format!("{}/{TENANT}/oauth2/v2.0/token", server.uri())).unwrap();
        cfg.timeout = timeout;
        cfg.reports_limit = limit;
        Harness {
            connector: Arc::new(EntraConnector::new(cfg, Redactor::new()).unwrap()),
            sink: MemSink::default(),
            log: RequestLog::default(),
            resume: ResumeSlot::default(),
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    fn call_with<'a>(&'a self, action: &'a str, input: &'a Value) -> ActionCall<'a> {
        ActionCall {
            action,
            input,
            idempotency_key: "run1/step-a/0",
            run_id: "run1",
            step_id: "step-a",
            attempt: 1,
            evidence: &self.sink,
            requests: &self.log,
            resume: &self.resume,
            prior: None,
        }
    }

    async fn call(&self, action: &str, input: Value) -> Result<Value, ConnectorError> {
        self.connector.call(self.call_with(action, &input)).await
    }

    async fn prior(&self, action: &str, input: Value) -> Result<Option<Value>, ConnectorError> {
        self.connector
            .prior_state(self.call_with(action, &input))
            .await
    }
}

/// The exact token request, answered with `token`.
async fn mount_token(server: &MockServer, token: &str, times: Option<u64>) {
    let form = format!(
        "grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default",
        SECRET.replace('~', "%7E")
    );
    let mut m = Mock::given(method("POST"))
        .and(path(format!("/{TENANT}/oauth2/v2.0/token")))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string(form))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token
        })));
    if let Some(n) = times {
        m = m.up_to_n_times(n);
    }
    m.mount(server).await;
}

fn user_body(enabled: bool) -> Value {
    json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users(id,displayName,userPrincipalName,mail,accountEnabled,signInSessionsValidFromDateTime)/$entity",
        "id": USER_ID,
        "displayName": "John Smith",
        "userPrincipalName": "j.smith@example.com",
        "mail": "j.smith@example.com",
        "accountEnabled": enabled,
        "signInSessionsValidFromDateTime": "2025-01-06T09:00:00Z",
    })
}

async fn mount_user(server: &MockServer, key: &str, enabled: bool) {
    Mock::given(method("GET"))
        .and(path(format!("/v1.0/users/{key}")))
        .and(query_param("$select", SELECT))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_body(enabled)))
        .mount(server)
        .await;
}

fn graph_error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "innerError": {
        "date": "2024-07-03T00:00:00", "request-id": "req-123", "client-request-id": "c-1"}}})
}

/// Display and Debug of an error, for leak checks.
fn shown(e: &ConnectorError) -> String {
    format!("{e} | {e:?}")
}

fn assert_no_secrets(text: &str) {
    for s in [SECRET, TOKEN, TOKEN2, "access-1", "access-2"] {
        assert!(!text.contains(s), "leaked {s}: {text}");
    }
}

#[tokio::test]
async fn get_user_sends_the_exact_requests_and_caches_the_token() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    mount_user(&server, "j.smith@example.com", true).await;
    Mock::given(method("GET"))
        .and(path(format!("/v1.0/users/{USER_ID}")))
        .and(query_param("$select", SELECT))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_body(false)))
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("get_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "id": USER_ID, "email": "j.smith@example.com",
               "user_principal_name": "j.smith@example.com", "name": "John Smith",
               "account_enabled": true, "status": "enabled"})
    );
    let out = h.call("get_user", json!({"user": USER_ID})).await.unwrap();
    assert_eq!(out["status"], "disabled");
    let reqs = server.received_requests().await.unwrap();
    let token_reqs = reqs
        .iter()
        .filter(|r| r.url.path().ends_with("/token"))
        .count();
    assert_eq!(token_reqs, 1, "the token is cached across calls");
    let log = h.log.take();
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|s| !s.path.contains('?')));
}

#[tokio::test]
async fn unknown_user_is_found_false_after_the_mail_fallback() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/nobody@example.com"))
        .respond_with(ResponseTemplate::new(404).set_body_json(graph_error(
            "Request_ResourceNotFound",
            "Resource 'nobody@example.com' does not exist or one of its queried reference-property objects are not present.",
        )))
        .expect(3)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users"))
        .and(query_param("$filter", "mail eq 'nobody@example.com'"))
        .and(query_param("$select", SELECT))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": []})))
        .expect(3)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("get_user", json!({"user": "nobody@example.com"}))
        .await
        .unwrap();
    assert_eq!(out, json!({"found": false}));
    let out = h
        .call("disable_user", json!({"user": "nobody@example.com"}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": false, "target": null, "already": false})
    );
    let prior = h
        .prior("disable_user", json!({"user": "nobody@example.com"}))
        .await
        .unwrap();
    assert_eq!(prior, Some(json!({"found": false})));
    // An unknown object id is a 404 with no fallback.
    Mock::given(method("GET"))
        .and(path("/v1.0/users/00000000-0000-0000-0000-000000000000"))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(graph_error("Request_ResourceNotFound", "x")),
        )
        .mount(&server)
        .await;
    let out = h
        .call(
            "get_user",
            json!({"user": "00000000-0000-0000-0000-000000000000"}),
        )
        .await
        .unwrap();
    assert_eq!(out, json!({"found": false}));
}

#[tokio::test]
async fn email_that_is_not_the_upn_resolves_by_mail() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/j.smith@acme.com"))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(graph_error("Request_ResourceNotFound", "x")),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users"))
        .and(query_param("$filter", "mail eq 'j.smith@acme.com'"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [user_body(true)]})))
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("get_user", json!({"user": "j.smith@acme.com"}))
        .await
        .unwrap();
    assert_eq!(out["id"], USER_ID);
}

#[tokio::test]
async fn disable_patches_account_enabled_and_reports_prior_state() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    mount_user(&server, "j.smith@example.com", true).await;
    Mock::given(method("PATCH"))
        .and(path(format!("/v1.0/users/{USER_ID}")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({"accountEnabled": false})))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let prior = h
        .prior("disable_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        prior,
        json!({"found": true, "id": USER_ID, "user_principal_name": "j.smith@example.com",
               "account_enabled": true, "sign_in_sessions_valid_from": "2025-01-06T09:00:00Z",
               "already": false})
    );
    let out = h
        .call("disable_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "target": USER_ID, "already": false, "account_enabled": false})
    );
    assert_eq!(
        h.prior("get_user", json!({"user": "x@y.z"})).await.unwrap(),
        None,
        "lookups have no prior state"
    );
}

#[tokio::test]
async fn already_disabled_sends_no_patch() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    mount_user(&server, "j.smith@example.com", false).await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("disable_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "target": USER_ID, "already": true, "account_enabled": false})
    );
}

#[tokio::test]
async fn enable_patches_true() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    mount_user(&server, "j.smith@example.com", false).await;
    Mock::given(method("PATCH"))
        .and(path(format!("/v1.0/users/{USER_ID}")))
        .and(body_json(json!({"accountEnabled": true})))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("enable_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap();
    assert_eq!(out["already"], false);
    assert_eq!(out["account_enabled"], true);
    let decl = cordon_connectors::catalog::find_action("entra.disable_user")
        .unwrap()
        .1;
    assert_eq!(decl.undo, Some("enable_user"));
    let decl = cordon_connectors::catalog::find_action("entra.enable_user")
        .unwrap()
        .1;
    assert_eq!(decl.undo, Some("disable_user"));
}

#[tokio::test]
async fn revoke_sessions_posts_and_accepts_200_true() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    mount_user(&server, "j.smith@example.com", true).await;
    Mock::given(method("POST"))
        .and(path(format!("/v1.0/users/{USER_ID}/revokeSignInSessions")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Edm.Boolean", "value": true}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("revoke_sessions", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "target": USER_ID, "already": false, "revoked": true})
    );
    let reqs = server.received_requests().await.unwrap();
    let post = reqs
        .iter()
        .find(|r| r.method.as_str() == "POST" && r.url.path().ends_with("revokeSignInSessions"))
        .unwrap();
    assert!(post.body.is_empty());
    assert_eq!(
        post.headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(post.headers.get_all("content-length").iter().count(), 1);
}

#[tokio::test]
async fn a_401_refreshes_the_token_once() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, Some(1)).await;
    mount_token(&server, TOKEN2, None).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/j.smith@example.com"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(401).set_body_json(graph_error(
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        )))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/j.smith@example.com"))
        .and(header("authorization", format!("Bearer {TOKEN2}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_body(true)))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("get_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap();
    assert_eq!(out["found"], true);
}

#[tokio::test]
async fn a_persistent_401_is_an_auth_error_naming_the_graph_code() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401).set_body_json(graph_error(
            "InvalidAuthenticationToken",
            &format!("Access token validation failure for {TOKEN}."),
        )))
        .expect(2)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let e = h
        .call("get_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ConnectorError::Auth { status: 401, .. }),
        "{e:?}"
    );
    let text = shown(&e);
    assert!(text.contains("InvalidAuthenticationToken"), "{text}");
    assert_no_secrets(&text);
}

#[tokio::test]
async fn token_endpoint_errors_are_auth_errors_without_the_secret() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/{TENANT}/oauth2/v2.0/token")))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: abc\r\nCorrelation ID: def",
            "error_codes": [7000215],
        })))
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let e = h
        .call("disable_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ConnectorError::Auth { status: 401, .. }),
        "{e:?}"
    );
    let text = shown(&e);
    assert!(
        text.contains("invalid_client") && text.contains("AADSTS7000215"),
        "{text}"
    );
    assert_no_secrets(&text);
}

#[tokio::test]
async fn graph_statuses_map_to_typed_errors() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    let cases: Vec<(&str, ResponseTemplate)> = vec![
        (
            "bad@example.com",
            ResponseTemplate::new(400).set_body_json(graph_error(
                "Request_BadRequest",
                "Invalid object identifier 'bad'.",
            )),
        ),
        (
            "denied@example.com",
            ResponseTemplate::new(403).set_body_json(graph_error(
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            )),
        ),
        (
            "throttled@example.com",
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "7")
                .set_body_json(graph_error("TooManyRequests", "Too many requests")),
        ),
        (
            "down@example.com",
            ResponseTemplate::new(503)
                .insert_header("Retry-After", "3")
                .set_body_json(graph_error("serviceNotAvailable", "Service unavailable")),
        ),
        (
            "broken@example.com",
            ResponseTemplate::new(500).set_body_string("<html>oops</html>"),
        ),
    ];
    for (user, resp) in cases {
        Mock::given(method("GET"))
            .and(path(format!("/v1.0/users/{user}")))
            .respond_with(resp)
            .mount(&server)
            .await;
    }
    let h = Harness::from_config(&server);
    let err = |user: &'static str| {
        let h = &h;
        async move { h.call("get_user", json!({"user": user})).await.unwrap_err() }
    };
    let e = err("bad@example.com").await;
    assert!(
        matches!(e, ConnectorError::Rejected { status: 400, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("Request_BadRequest") && e.to_string().contains("req-123"),
        "{e}"
    );
    let e = err("denied@example.com").await;
    assert!(
        matches!(e, ConnectorError::Auth { status: 403, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("Authorization_RequestDenied"), "{e}");
    assert!(e.to_string().contains("Insufficient privileges"), "{e}");
    let e = err("throttled@example.com").await;
    assert!(matches!(e, ConnectorError::RateLimited { .. }), "{e:?}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    assert!(e.is_transient());
    let e = err("down@example.com").await;
    assert!(matches!(e, ConnectorError::Transient { .. }), "{e:?}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    let e = err("broken@example.com").await;
    assert!(matches!(e, ConnectorError::Transient { .. }), "{e:?}");
    assert!(e.to_string().contains("oops"), "{e}");
}

#[tokio::test]
async fn patch_errors_and_vanished_users() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    mount_user(&server, "j.smith@example.com", true).await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(403).set_body_json(graph_error(
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(graph_error("Request_ResourceNotFound", "gone")),
        )
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let e = h
        .call("disable_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ConnectorError::Auth { status: 403, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("PATCH"), "{e}");
    let out = h
        .call("disable_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap();
    assert_eq!(out["found"], false);
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(user_body(true))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let h = Harness::direct(&server, Duration::from_millis(300), RateWindow::REPORTS);
    let e = h
        .call("get_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Timeout(_)), "{e:?}");
    assert!(e.is_transient());
}

#[tokio::test]
async fn bad_inputs_name_the_field_before_any_request() {
    let server = MockServer::start().await;
    let h = Harness::from_config(&server);
    for (action, input, field) in [
        ("get_user", json!({}), "user"),
        ("disable_user", json!({"user": ""}), "user"),
        ("snapshot_sign_ins", json!({"user": "a@b.c"}), "since"),
        (
            "snapshot_sign_ins",
            json!({"user": "a@b.c", "since": "last tuesday"}),
            "since",
        ),
        (
            "snapshot_directory_audits",
            json!({"user": "a@b.c", "since": "2024-07-01T00:00:00Z", "until": "2024-13-01"}),
            "until",
        ),
    ] {
        match h.call(action, input).await {
            Err(ConnectorError::InvalidInput { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{action}: expected InvalidInput on {field}, got {other:?}"),
        }
    }
    assert!(server.received_requests().await.unwrap().is_empty());
}

/// `n` sign-in records numbered from `start`.
fn events(start: usize, n: usize) -> Vec<Value> {
    (start..start + n)
        .map(|i| {
            json!({"id": format!("evt-{i:05}"), "createdDateTime": "2024-07-01T12:00:00Z",
                        "userId": USER_ID, "ipAddress": "203.0.113.45",
                        "status": {"errorCode": 0}})
        })
        .collect()
}

const SIGN_IN_FILTER: &str = "userId eq '6d3c1f52-8a4e-4b7a-9c1d-2f5e8a9b0c11' and createdDateTime ge 2024-07-01T00:00:00Z and createdDateTime le 2024-07-02T00:00:00Z";

/// 2,500 sign-ins over 13 pages of 200 (the last 100); page `k` (0-based) is requested with
/// `$skiptoken=page-k` except the first, which carries the filter.
async fn mount_pages(server: &MockServer, fail_page: Option<usize>) {
    for k in 0..13 {
        let n = if k == 12 { 100 } else { 200 };
        let mut body = json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#auditLogs/signIns",
            "value": events(k * 200, n),
        });
        if k < 12 {
            body["@odata.nextLink"] = json!(format!(
                "{}/v1.0/auditLogs/signIns?$top=1000&$filter=x&$skiptoken=page-{}",
                server.uri(),
                k + 1
            ));
        }
        let mock = if k == 0 {
            Mock::given(method("GET"))
                .and(path("/v1.0/auditLogs/signIns"))
                .and(query_param("$filter", SIGN_IN_FILTER))
                .and(query_param("$top", "1000"))
        } else {
            Mock::given(method("GET"))
                .and(path("/v1.0/auditLogs/signIns"))
                .and(query_param("$skiptoken", format!("page-{k}").as_str()))
        }
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()));
        if fail_page == Some(k) {
            Mock::given(method("GET"))
                .and(path("/v1.0/auditLogs/signIns"))
                .and(query_param("$skiptoken", format!("page-{k}").as_str()))
                .respond_with(
                    ResponseTemplate::new(503)
                        .insert_header("Retry-After", "1")
                        .set_body_json(graph_error("serviceNotAvailable", "try later")),
                )
                .up_to_n_times(1)
                .with_priority(1)
                .mount(server)
                .await;
        }
        mock.respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(1)
            .mount(server)
            .await;
    }
}

fn expected_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    for e in events(0, 2500) {
        out.extend_from_slice(serde_json::to_string(&e).unwrap().as_bytes());
        out.push(b'\n');
    }
    out
}

#[tokio::test]
async fn snapshot_follows_13_pages_in_order_within_the_rate_limit() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    mount_user(&server, "j.smith@example.com", true).await;
    mount_pages(&server, None).await;
    let limit = RateWindow {
        requests: 5,
        per: Duration::from_millis(300),
    };
    let h = Harness::direct(&server, Duration::from_secs(10), limit);
    let started = Instant::now();
    let out = h
        .call(
            "snapshot_sign_ins",
            json!({"user": "j.smith@example.com", "since": "2024-07-01T00:00:00Z", "until": "2024-07-02T00:00:00Z"}),
        )
        .await
        .unwrap();
    // 13 requests at 5 per window: two full waits.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    let expected = expected_bytes();
    assert_eq!(out["records"], 2500);
    assert_eq!(out["pages"], 13);
    assert_eq!(out["bytes"], expected.len() as u64);
    assert_eq!(out["sha256"], hex::encode(Sha256::digest(&expected)));
    assert_eq!(out["target"], USER_ID);
    let finished = h.sink.finished.lock().unwrap();
    assert_eq!(finished.len(), 1);
    let (rec, data) = &finished[0];
    assert_eq!(
        data, &expected,
        "every record, in order, one JSON line each"
    );
    assert_eq!(rec.meta.extension, "jsonl");
    assert_eq!(
        rec.meta.source,
        json!({"user": "j.smith@example.com", "user_id": USER_ID,
               "user_principal_name": "j.smith@example.com",
               "since": "2024-07-01T00:00:00Z", "until": "2024-07-02T00:00:00Z",
               "endpoint": "/v1.0/auditLogs/signIns", "filter": SIGN_IN_FILTER})
    );
    assert_no_secrets(&rec.meta.source.to_string());
}

#[tokio::test]
async fn snapshot_resumes_from_the_failed_page() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    // The user lookup happens once: the resumed attempt starts at the failed page.
    Mock::given(method("GET"))
        .and(path("/v1.0/users/j.smith@example.com"))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_body(true)))
        .expect(1)
        .mount(&server)
        .await;
    mount_pages(&server, Some(4)).await;
    let limit = RateWindow {
        requests: 100,
        per: Duration::from_millis(10),
    };
    let h = Harness::direct(&server, Duration::from_secs(10), limit);
    let input = json!({"user": "j.smith@example.com", "since": "2024-07-01T00:00:00Z", "until": "2024-07-02T00:00:00Z"});
    let e = h
        .call("snapshot_sign_ins", input.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Transient { .. }), "{e:?}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    assert!(h.sink.finished.lock().unwrap().is_empty());
    let before = server.received_requests().await.unwrap().len();
    let out = h.call("snapshot_sign_ins", input).await.unwrap();
    let after = server.received_requests().await.unwrap();
    // Pages 4..=12 only (9 requests), each page 0..=12 served exactly once (mock expects).
    assert_eq!(after.len() - before, 9);
    assert_eq!(
        after[before]
            .url
            .query_pairs()
            .find(|(k, _)| k == "$skiptoken")
            .map(|(_, v)| v.into_owned()),
        Some("page-4".to_string())
    );
    let expected = expected_bytes();
    assert_eq!(out["records"], 2500);
    assert_eq!(out["pages"], 13);
    assert_eq!(out["sha256"], hex::encode(Sha256::digest(&expected)));
    assert_eq!(
        *h.sink.created.lock().unwrap(),
        1,
        "one artifact across both attempts"
    );
    // Every record counted once across both attempts.
    assert_eq!(
        out["ip_addresses"],
        json!([{"ip": "203.0.113.45", "first_seen": "2024-07-01T12:00:00Z",
                "last_seen": "2024-07-01T12:00:00Z", "events": 2500, "country": null}])
    );
}

#[tokio::test]
async fn directory_audits_filter_by_initiator_and_time() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    mount_user(&server, "j.smith@example.com", true).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/auditLogs/directoryAudits"))
        .and(query_param(
            "$filter",
            "initiatedBy/user/id eq '6d3c1f52-8a4e-4b7a-9c1d-2f5e8a9b0c11' and activityDateTime ge 2024-07-01T00:00:00Z and activityDateTime le 2024-07-01T10:30:00Z",
        ))
        .and(query_param("$top", "1000"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "value": [{"id": "Directory_1", "activityDisplayName": "User registered security info"}]
        })))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call(
            "snapshot_directory_audits",
            json!({"user": "j.smith@example.com", "since": "2024-07-01T02:00:00+02:00", "until": "2024-07-01T10:30:00Z"}),
        )
        .await
        .unwrap();
    assert_eq!(out["records"], 1);
    assert_eq!(out["pages"], 1);
    // The raw request keeps spaces as %20 and OData punctuation readable.
    let reqs = server.received_requests().await.unwrap();
    let q = reqs.last().unwrap().url.query().unwrap().to_string();
    assert!(q.starts_with("$filter=initiatedBy/user/id%20eq%20"), "{q}");
    assert!(!q.contains('+'), "{q}");
}

#[tokio::test]
async fn next_link_to_another_host_is_refused() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    mount_user(&server, "j.smith@example.com", true).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/auditLogs/signIns"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "value": events(0, 2),
            "@odata.nextLink": "https://evil.example.com/v1.0/auditLogs/signIns?$skiptoken=x",
        })))
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let e = h
        .call(
            "snapshot_sign_ins",
            json!({"user": "j.smith@example.com", "since": "2024-07-01T00:00:00Z"}),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("evil.example.com"), "{e}");
    assert!(!e.is_transient());
    assert!(h.sink.finished.lock().unwrap().is_empty());
}

#[tokio::test]
async fn snapshot_of_an_unknown_user_is_found_false() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/ghost@example.com"))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(graph_error("Request_ResourceNotFound", "x")),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": []})))
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call(
            "snapshot_sign_ins",
            json!({"user": "ghost@example.com", "since": "2024-07-01T00:00:00Z"}),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": false, "target": null, "ip_addresses": [], "ip_addresses_truncated": false})
    );
    assert_eq!(*h.sink.created.lock().unwrap(), 0);
}

#[test]
fn settings_errors_name_the_setting_and_never_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "a": {"type": "entra", "client_id": "x", "client_secret": "inline-s3cr3t"},
        "b": {"type": "entra", "tenant_id": "../x", "client_id": "x",
              "client_secret": {"env": "CORDON_TEST_UNSET_ENTRA"},
              "base_url": "http://graph.example.com", "token_ur": "https://x"},
        "c": {"type": "entra", "tenant_id": TENANT, "client_id": "x",
              "client_secret": {"env": "CORDON_TEST_UNSET_ENTRA"},
              "token_url": "http://login.example.com/{tenant_id}/token"},
    }))
    .unwrap();
    let errs = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap_err();
    let all = errs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "connector `a`, setting `tenant_id`: is required",
        "connector `a`, setting `client_secret`",
        "connector `b`, setting `tenant_id`",
        "connector `b`, setting `base_url`",
        "connector `b`, setting `token_ur`: unknown setting (hint: did you mean `token_url`?)",
        "connector `b`, setting `client_secret`",
        "connector `c`, setting `token_url`",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert!(!all.contains("inline-s3cr3t"), "{all}");
}

#[test]
fn debug_output_holds_no_secret() {
    let cfg =
        EntraConfig::with_defaults("graph", TENANT, CLIENT_ID, SecretValue::new(SECRET)).unwrap();
    assert_eq!(
        cfg.token_url.as_str(),
        format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token")
    );
    let text = format!("{cfg:?}");
    assert!(!text.contains(SECRET), "{text}");
    let c = EntraConnector::new(cfg, Redactor::new()).unwrap();
    let text = format!("{c:?}");
    assert!(!text.contains(SECRET), "{text}");
}

#[tokio::test]
async fn drives_the_sandbox_end_to_end() {
    use cordon_connectors::sandbox::entra::{
        SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT_ID, SUSPECT_ID,
    };
    use cordon_connectors::sandbox::Sandbox;
    let server = Sandbox::seeded().serve().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SANDBOX_CLIENT_SECRET).unwrap();
    let base = server.base_url();
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "graph": {
            "type": "entra",
            "tenant_id": SANDBOX_TENANT_ID,
            "client_id": SANDBOX_CLIENT_ID,
            "client_secret": {"file": "secret"},
            "base_url": format!("{base}/entra"),
            "token_url": format!("{base}/entra/login/{{tenant_id}}/oauth2/v2.0/token"),
        }
    }))
    .unwrap();
    let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
    let h = Harness {
        connector: registry.resolve("entra", None).unwrap(),
        sink: MemSink::default(),
        log: RequestLog::default(),
        resume: ResumeSlot::default(),
        _dir: dir,
    };
    let suspect = json!({"user": "j.smith@example.com"});
    let out = h.call("get_user", suspect.clone()).await.unwrap();
    assert_eq!(out["id"], SUSPECT_ID);
    assert_eq!(out["status"], "enabled");
    let out = h.call("disable_user", suspect.clone()).await.unwrap();
    assert_eq!(
        (out["target"].as_str(), out["already"].as_bool()),
        (Some(SUSPECT_ID), Some(false))
    );
    let out = h.call("disable_user", suspect.clone()).await.unwrap();
    assert_eq!(out["already"], true);
    assert_eq!(
        h.call("get_user", suspect.clone()).await.unwrap()["status"],
        "disabled"
    );
    let out = h.call("revoke_sessions", suspect.clone()).await.unwrap();
    assert_eq!(out["revoked"], true);
    let since = (chrono::Utc::now() - chrono::Duration::days(7)).to_rfc3339();
    let out = h
        .call(
            "snapshot_sign_ins",
            json!({"user": "j.smith@example.com", "since": since}),
        )
        .await
        .unwrap();
    assert_eq!(out["records"], 7, "{out}");
    assert!(
        out["pages"].as_u64().unwrap() >= 3,
        "small sandbox pages: {out}"
    );
    // Oldest first across the pages: abroad (72 h and 7 h ago), the laptop farm, IPv6
    // abroad, then the VPN exit (3 h and 1 h ago).
    let ips: Vec<(&str, u64, &str)> = out["ip_addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["ip"].as_str().unwrap(),
                a["events"].as_u64().unwrap(),
                a["country"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ips,
        [
            ("192.0.2.14", 2, "CN"),
            ("198.51.100.23", 2, "US"),
            ("2001:db8:4a3::15", 1, "CN"),
            ("203.0.113.45", 2, "US"),
        ]
    );
    let out = h
        .call(
            "snapshot_directory_audits",
            json!({"user": SUSPECT_ID, "since": since}),
        )
        .await
        .unwrap();
    assert_eq!(out["records"], 3, "{out}");
    assert_eq!(out["ip_addresses"][0]["ip"], "203.0.113.45");
    assert_eq!(out["ip_addresses"][0]["events"], 3);
    let out = h.call("enable_user", suspect.clone()).await.unwrap();
    assert_eq!(out["already"], false);
    // Dana's email is not her UPN: found through the mail lookup.
    let out = h
        .call("get_user", json!({"user": "dana@example.com"}))
        .await
        .unwrap();
    assert_eq!(out["user_principal_name"], "dana@example.onmicrosoft.com");
    let out = h
        .call("get_user", json!({"user": "nobody@example.com"}))
        .await
        .unwrap();
    assert_eq!(out["found"], false);

    // A wrong secret is refused by the sandbox's token endpoint with Microsoft's error.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "wrong-secret").unwrap();
    let mut bad = config.clone();
    bad.get_mut("graph").unwrap()["client_secret"] = json!({"file": "secret"});
    let registry = Registry::from_config(&bad, dir.path(), &Redactor::new()).unwrap();
    let c = registry.resolve("entra", None).unwrap();
    let input = json!({"user": "j.smith@example.com"});
    let e = c.call(h.call_with("get_user", &input)).await.unwrap_err();
    assert!(e.to_string().contains("invalid_client"), "{e}");
    assert!(!shown(&e).contains("wrong-secret"));
}

#[tokio::test]
async fn the_token_is_refreshed_shortly_before_expiry() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/{TENANT}/oauth2/v2.0/token")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_type": "Bearer", "expires_in": "1", "access_token": TOKEN
        })))
        .expect(2)
        .mount(&server)
        .await;
    mount_user(&server, "j.smith@example.com", true).await;
    let h = Harness::from_config(&server);
    let input = json!({"user": "j.smith@example.com"});
    h.call("get_user", input.clone()).await.unwrap();
    h.call("get_user", input.clone()).await.unwrap();
    // A 1 s token is refreshed after half its life.
    tokio::time::sleep(Duration::from_millis(600)).await;
    h.call("get_user", input).await.unwrap();
}

#[tokio::test]
async fn sandbox_throttles_reports_and_checks_the_bearer() {
    use cordon_connectors::sandbox::entra::{
        SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT_ID,
    };
    let server = cordon_connectors::sandbox::Sandbox::seeded()
        .serve()
        .await
        .unwrap();
    let base = format!("{}/entra", server.base_url());
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!(
            "{base}/login/{SANDBOX_TENANT_ID}/oauth2/v2.0/token"
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", SANDBOX_CLIENT_ID),
            ("client_secret", SANDBOX_CLIENT_SECRET),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_string();
    let url = format!("{base}/v1.0/auditLogs/signIns");
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    for _ in 0..5 {
        let resp = http.get(&url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let resp = http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&wait), "{wait}");
    let resp = http
        .get(format!(
            "{base}/v1.0/auditLogs/directoryAudits?$filter=category eq 'x'"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429, "the limit spans both report endpoints");
}

/// Serve `pages` of `log` (`signIns` or `directoryAudits`), linked by `@odata.nextLink`.
async fn mount_log_pages(server: &MockServer, log: &str, pages: Vec<Vec<Value>>) {
    let n = pages.len();
    for (k, page) in pages.into_iter().enumerate() {
        let mut body = json!({"value": page});
        if k + 1 < n {
            body["@odata.nextLink"] = json!(format!(
                "{}/v1.0/auditLogs/{log}?$top=1000&$skiptoken=p{}",
                server.uri(),
                k + 1
            ));
        }
        let m = Mock::given(method("GET")).and(path(format!("/v1.0/auditLogs/{log}")));
        let m = if k == 0 {
            m.and(query_param("$top", "1000"))
                .and(wiremock::matchers::query_param_is_missing("$skiptoken"))
        } else {
            m.and(query_param("$skiptoken", format!("p{k}").as_str()))
        };
        m.respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(1)
            .mount(server)
            .await;
    }
}

fn sign_in(ip: Option<&str>, at: &str, country: Option<&str>) -> Value {
    let mut r = json!({"id": format!("s-{at}"), "createdDateTime": at, "userId": USER_ID,
                       "status": {"errorCode": 0}, "location": {"city": null, "countryOrRegion": country}});
    if let Some(ip) = ip {
        r["ipAddress"] = json!(ip);
    }
    r
}

fn fast_reports(server: &MockServer) -> Harness {
    let limit = RateWindow {
        requests: 1000,
        per: Duration::from_millis(10),
    };
    Harness::direct(server, Duration::from_secs(10), limit)
}

#[tokio::test]
async fn sign_ins_summarise_addresses_across_pages() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    mount_user(&server, "j.smith@example.com", true).await;
    let (home, vpn) = ("198.51.100.23", "203.0.113.45");
    // Newest first, as Graph pages them.
    mount_log_pages(
        &server,
        "signIns",
        vec![
            vec![
                sign_in(Some(vpn), "2024-07-01T20:00:00Z", Some("US")),
                sign_in(None, "2024-07-01T19:00:00Z", Some("US")),
                sign_in(Some(""), "2024-07-01T18:30:00Z", None),
            ],
            vec![
                sign_in(Some("10.0.0.300"), "2024-07-01T18:00:00Z", Some("US")),
                sign_in(Some(home), "2024-07-01T17:00:00.1234567Z", Some("US")),
                sign_in(Some(vpn), "2024-07-01T12:00:00Z", Some("NL")),
            ],
            vec![sign_in(Some(vpn), "2024-07-01T03:00:00Z", None)],
        ],
    )
    .await;
    let h = fast_reports(&server);
    let out = h
        .call(
            "snapshot_sign_ins",
            json!({"user": "j.smith@example.com", "since": "2024-07-01T00:00:00Z", "until": "2024-07-02T00:00:00Z"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (out["records"].as_u64(), out["pages"].as_u64()),
        (Some(7), Some(3))
    );
    assert_eq!(
        out["ip_addresses"],
        json!([
            {"ip": vpn, "first_seen": "2024-07-01T03:00:00Z", "last_seen": "2024-07-01T20:00:00Z",
             "events": 3, "country": "US"},
            {"ip": home, "first_seen": "2024-07-01T17:00:00.123456700Z",
             "last_seen": "2024-07-01T17:00:00.123456700Z", "events": 1, "country": "US"},
        ])
    );
    assert_eq!(out["ip_addresses_truncated"], false);
}

#[tokio::test]
async fn directory_audits_summarise_the_initiators_addresses_and_cap_them() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    mount_user(&server, "j.smith@example.com", true).await;
    let audit = |ip: Option<String>, at: &str| {
        json!({"id": format!("Directory_{at}"), "activityDateTime": at, "activityDisplayName": "Update user",
               "initiatedBy": {"app": null, "user": {"id": USER_ID, "ipAddress": ip}}})
    };
    let at = "2024-07-01T10:00:00Z";
    let page1: Vec<Value> = (0..300)
        .map(|i| audit(Some(format!("198.51.100.{}", i % 256)), at))
        .chain((0..250).map(|i| audit(Some(format!("2001:db8::{i:x}")), at)))
        .collect();
    let page2 = vec![
        audit(None, "2024-07-01T11:00:00Z"),
        audit(Some("2001:db8::1".into()), "2024-07-01T12:00:00Z"),
    ];
    mount_log_pages(&server, "directoryAudits", vec![page1, page2]).await;
    let h = fast_reports(&server);
    let out = h
        .call(
            "snapshot_directory_audits",
            json!({"user": "j.smith@example.com", "since": "2024-07-01T00:00:00Z", "until": "2024-07-02T00:00:00Z"}),
        )
        .await
        .unwrap();
    assert_eq!(out["records"], 552);
    // 256 IPv4 and the first 244 IPv6 addresses fit; the other 6 are left out.
    assert_eq!(out["ip_addresses_truncated"], true);
    let ips = out["ip_addresses"].as_array().unwrap();
    assert_eq!(ips.len(), 500);
    assert!(ips.iter().all(|a| a["ip"] != "2001:db8::f9"));
    let one = ips.iter().find(|a| a["ip"] == "2001:db8::1").unwrap();
    assert_eq!(
        (&one["events"], &one["last_seen"], &one["country"]),
        (&json!(2), &json!("2024-07-01T12:00:00Z"), &Value::Null)
    );
    let v4 = ips.iter().find(|a| a["ip"] == "198.51.100.5").unwrap();
    assert_eq!(v4["events"], 2, "300 records over 256 addresses");
}
