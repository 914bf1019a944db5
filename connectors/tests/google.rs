//! The `google` connector against `wiremock` (exact requests, the signed JWT assertion,
//! status and Google-error mapping, token caching and refresh, paging, resume, redaction)
//! and against the local sandbox.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cordon_connectors::google::{
    GoogleConfig, GoogleConnector, ServiceAccountKey, JWT_BEARER_GRANT, SCOPE_REPORTS, SCOPE_USER,
    SCOPE_USER_SECURITY,
};
use cordon_connectors::registry::Registry;
use cordon_connectors::sandbox::google::{
    sandbox_service_account_key, SANDBOX_CLIENT_EMAIL, SANDBOX_KEY_ID, SANDBOX_PRIVATE_KEY_PEM,
    SANDBOX_SUBJECT,
};
use cordon_connectors::sandbox::Sandbox;
use cordon_connectors::secret::Redactor;
use cordon_connectors::{ActionCall, Connector, ConnectorError, RequestLog, ResumeSlot};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePrivateKey;
use rsa::sha2::Sha256;
use rsa::signature::Verifier;
use serde_json::{json, Value};
use sha2::Digest;
use wiremock::matchers::{body_json, body_string, header, method, path, query_param};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

const TOKEN: &str = "ya29.test-access-token-0001";
const TOKEN2: &str = "ya29.test-access-token-0002";
const SUSPECT_ID: &str = "114211980000000000001";
const USERS: &str = "/admin/directory/v1/users";
const ACTIVITY: &str = "/admin/reports/v1/activity/users/j.smith@example.com/applications/login";

// ---------------------------------------------------------------------------------------
// An in-memory evidence sink, hashing like the real store.

mod support;
use support::MemSink;

// ---------------------------------------------------------------------------------------
// A wiremock matcher that checks the JWT bearer grant completely: form fields, the
// assertion's header and claims, and its RS256 signature against the key's public half.

struct ValidAssertion {
    scope: String,
    aud: String,
}

impl ValidAssertion {
    fn new(scopes: &[&str], aud: &str) -> Self {
        ValidAssertion {
            scope: scopes.join(" "),
            aud: aud.to_string(),
        }
    }

    fn check(&self, body: &[u8]) -> Result<(), String> {
        let form: BTreeMap<String, String> =
            url::form_urlencoded::parse(body).into_owned().collect();
        if form.len() != 2 || form.get("grant_type").map(String::as_str) != Some(JWT_BEARER_GRANT) {
            return Err(format!("form fields: {:?}", form.keys()));
        }
        let jwt = form.get("assertion").ok_or("no assertion")?;
        let parts: Vec<&str> = jwt.split('.').collect();
        if parts.len() != 3 {
            return Err("not three parts".into());
        }
        let decode = |p: &str| -> Result<Value, String> {
            let bytes = URL_SAFE_NO_PAD.decode(p).map_err(|e| e.to_string())?;
            serde_json::from_slice(&bytes).map_err(|e| e.to_string())
        };
        let h = decode(parts[0])?;
        if h != json!({"alg": "RS256", "typ": "JWT", "kid": SANDBOX_KEY_ID}) {
            return Err(format!("header {h}"));
        }
        let c = decode(parts[1])?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let iat = c["iat"].as_u64().ok_or("iat")?;
        let exp = c["exp"].as_u64().ok_or("exp")?;
        if c["iss"] != SANDBOX_CLIENT_EMAIL
            || c["sub"] != SANDBOX_SUBJECT
            || c["aud"] != self.aud.as_str()
            || c["scope"] != self.scope.as_str()
            || exp != iat + 3600
            || iat.abs_diff(now) > 60
            || c.as_object().map(|o| o.len()) != Some(6)
        {
            return Err(format!("claims {c}"));
        }
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(SANDBOX_PRIVATE_KEY_PEM).unwrap();
        let verifier = VerifyingKey::<Sha256>::new(key.to_public_key());
        let sig = URL_SAFE_NO_PAD
            .decode(parts[2])
            .map_err(|e| e.to_string())?;
        let sig = Signature::try_from(sig.as_slice()).map_err(|e| e.to_string())?;
        verifier
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .map_err(|e| format!("signature: {e}"))
    }
}

impl Match for ValidAssertion {
    fn matches(&self, request: &Request) -> bool {
        match self.check(&request.body) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("assertion rejected: {e}");
                false
            }
        }
    }
}

fn token_ok(token: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": token, "expires_in": 3599, "token_type": "Bearer"
    }))
}

/// The token endpoint for a scope set, answering `token`, expected `times` times.
async fn mount_token(server: &MockServer, scopes: &[&str], token: &str, times: u64) {
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(ValidAssertion::new(
            scopes,
            &format!("{}/token", server.uri()),
        ))
        .respond_with(token_ok(token))
        .expect(times)
        .mount(server)
        .await;
}

fn google_error(code: u16, reason: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message,
        "errors": [{"domain": "global", "reason": reason, "message": message}],
        "status": "X"}})
}

fn user_json(suspended: bool) -> Value {
    json!({
        "kind": "admin#directory#user", "id": SUSPECT_ID,
        "primaryEmail": "j.smith@example.com",
        "name": {"givenName": "John", "familyName": "Smith", "fullName": "John Smith"},
        "isAdmin": false, "suspended": suspended, "archived": false,
        "lastLoginTime": "2026-01-02T03:04:05.000Z",
    })
}

// ---------------------------------------------------------------------------------------

struct Harness {
    connector: Arc<dyn Connector>,
    sink: MemSink,
    log: RequestLog,
    resume: ResumeSlot,
    redactor: Redactor,
    _dir: tempfile::TempDir,
}

/// A registry-built instance `gw` pointed at `base` (base URL and `{base}/token`). The
/// key's own `token_uri` is Google's: the `token_url` setting must win over it.
fn harness_at(base: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sa.json"),
        sandbox_service_account_key("https://oauth2.googleapis.com/token"),
    )
    .unwrap();
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "gw": {
            "type": "google",
            "service_account_key": {"file": "sa.json"},
            "subject": SANDBOX_SUBJECT,
            "base_url": base,
            "token_url": format!("{base}/token"),
        }
    }))
    .unwrap();
    let redactor = Redactor::new();
    let registry = Registry::from_config(&config, dir.path(), &redactor).unwrap();
    Harness {
        connector: registry.resolve("google", None).unwrap(),
        sink: MemSink::default(),
        log: RequestLog::default(),
        resume: ResumeSlot::default(),
        redactor,
        _dir: dir,
    }
}

fn harness(server: &MockServer) -> Harness {
    harness_at(&server.uri())
}

impl Harness {
    fn action_call<'a>(&'a self, action: &'a str, input: &'a Value) -> ActionCall<'a> {
        ActionCall {
            action,
            input,
            idempotency_key: "run1/step-a/0/gw",
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
        self.connector.call(self.action_call(action, &input)).await
    }

    async fn prior(&self, action: &str, input: Value) -> Result<Option<Value>, ConnectorError> {
        self.connector
            .prior_state(self.action_call(action, &input))
            .await
    }
}

/// No secret in an error's Display or Debug.
fn assert_clean(e: &ConnectorError) {
    let pem_line = SANDBOX_PRIVATE_KEY_PEM.lines().nth(1).unwrap();
    for text in [e.to_string(), format!("{e:?}")] {
        for secret in [TOKEN, TOKEN2, pem_line, "eyJ"] {
            assert!(!text.contains(secret), "`{secret}` leaked into: {text}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Lookups

#[tokio::test]
async fn get_user_sends_the_documented_request_and_caches_the_token() {
    let server = MockServer::start().await;
    mount_token(&server, &[SCOPE_USER], TOKEN, 1).await;
    Mock::given(method("GET"))
        .and(path(format!("{USERS}/j.smith@example.com")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json(false)))
        .expect(2)
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call("get_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap();
    assert_eq!(out["found"], true);
    assert_eq!(out["id"], SUSPECT_ID);
    assert_eq!(out["email"], "j.smith@example.com");
    assert_eq!(out["name"], "John Smith");
    assert_eq!(out["status"], "ACTIVE");
    assert_eq!(out["suspended"], false);
    // The second call reuses the cached token: the token endpoint expects one request.
    h.call("get_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap();
    let paths: Vec<String> = h.log.take().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        vec![
            "/token".to_string(),
            format!("{USERS}/j.smith@example.com"),
            format!("{USERS}/j.smith@example.com"),
        ]
    );
}

#[tokio::test]
async fn unknown_user_is_found_false_not_an_error() {
    let server = MockServer::start().await;
    mount_token(&server, &[SCOPE_USER], TOKEN, 1).await;
    Mock::given(method("GET"))
        .and(path(format!("{USERS}/ghost@example.com")))
        .respond_with(ResponseTemplate::new(404).set_body_json(google_error(
            404,
            "notFound",
            "Resource Not Found: userKey",
        )))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let h = harness(&server);
    let u = json!({"user": "ghost@example.com"});
    assert_eq!(
        h.call("get_user", u.clone()).await.unwrap(),
        json!({"found": false})
    );
    let expected = json!({"found": false, "target": null, "already": false});
    assert_eq!(h.call("suspend_user", u.clone()).await.unwrap(), expected);
    assert_eq!(h.call("unsuspend_user", u.clone()).await.unwrap(), expected);
    assert_eq!(
        h.prior("suspend_user", u).await.unwrap(),
        Some(json!({"found": false}))
    );
}

// ---------------------------------------------------------------------------------------
// Mutations

#[tokio::test]
async fn suspend_puts_suspended_true_on_the_resolved_id() {
    let server = MockServer::start().await;
    mount_token(&server, &[SCOPE_USER], TOKEN, 1).await;
    Mock::given(method("GET"))
        .and(path(format!("{USERS}/j.smith@example.com")))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json(false)))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(format!("{USERS}/{SUSPECT_ID}")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({"suspended": true})))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json(true)))
        .expect(1)
        .mount(&server)
        .await;
    let h = harness(&server);
    let input = json!({"user": "j.smith@example.com"});
    let prior = h
        .prior("suspend_user", input.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        prior,
        json!({"found": true, "id": SUSPECT_ID, "email": "j.smith@example.com",
               "suspended": false, "status": "ACTIVE", "already": false})
    );
    let out = h.call("suspend_user", input).await.unwrap();
    assert_eq!(out["found"], true);
    assert_eq!(out["target"], SUSPECT_ID);
    assert_eq!(out["already"], false);
    assert_eq!(out["suspended"], true);
}

#[tokio::test]
async fn already_suspended_sends_nothing_more() {
    let server = MockServer::start().await;
    mount_token(&server, &[SCOPE_USER], TOKEN, 1).await;
    Mock::given(method("GET"))
        .and(path(format!("{USERS}/{SUSPECT_ID}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json(true)))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call("suspend_user", json!({"user": SUSPECT_ID}))
        .await
        .unwrap();
    assert_eq!(out["target"], SUSPECT_ID);
    assert_eq!(out["already"], true);
}

#[tokio::test]
async fn unsuspend_puts_suspended_false() {
    let server = MockServer::start().await;
    mount_token(&server, &[SCOPE_USER], TOKEN, 1).await;
    Mock::given(method("GET"))
        .and(path(format!("{USERS}/j.smith@example.com")))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json(true)))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(format!("{USERS}/{SUSPECT_ID}")))
        .and(body_json(json!({"suspended": false})))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json(false)))
        .expect(1)
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call("unsuspend_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap();
    assert_eq!(out["target"], SUSPECT_ID);
    assert_eq!(out["already"], false);
    assert_eq!(out["suspended"], false);
}

#[tokio::test]
async fn sign_out_posts_an_empty_body_with_both_directory_scopes() {
    let server = MockServer::start().await;
    mount_token(&server, &[SCOPE_USER, SCOPE_USER_SECURITY], TOKEN, 1).await;
    Mock::given(method("GET"))
        .and(path(format!("{USERS}/j.smith@example.com")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json(false)))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{USERS}/{SUSPECT_ID}/signOut")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-length", "0"))
        .and(body_string(""))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call("sign_out", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap();
    assert_eq!(out["found"], true);
    assert_eq!(out["target"], SUSPECT_ID);
    assert_eq!(out["already"], false);
}

// ---------------------------------------------------------------------------------------
// Errors

async fn error_for(status: u16, body: Value, extra: Option<(&str, &str)>) -> ConnectorError {
    let server = MockServer::start().await;
    mount_token(&server, &[SCOPE_USER], TOKEN, 1).await;
    let mut resp = ResponseTemplate::new(status).set_body_json(body);
    if let Some((k, v)) = extra {
        resp = resp.insert_header(k, v);
    }
    Mock::given(method("GET"))
        .and(path(format!("{USERS}/j.smith@example.com")))
        .respond_with(resp)
        .mount(&server)
        .await;
    let h = harness(&server);
    let e = h
        .call("get_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap_err();
    assert_clean(&e);
    e
}

#[tokio::test]
async fn status_mapping_names_googles_reason() {
    let e = error_for(400, google_error(400, "invalid", "Invalid Input"), None).await;
    match &e {
        ConnectorError::Rejected {
            status: 400,
            message,
        } => {
            assert!(
                message.contains("`invalid`") && message.contains("Invalid Input"),
                "{message}"
            );
            assert!(message.contains("gw"), "names the instance: {message}");
        }
        other => panic!("{other:?}"),
    }
    let e = error_for(
        403,
        google_error(
            403,
            "forbidden",
            "Not Authorized to access this resource/api",
        ),
        None,
    )
    .await;
    assert!(
        matches!(&e, ConnectorError::Auth { status: 403, message } if message.contains("`forbidden`")),
        "{e:?}"
    );
    for reason in [
        "userRateLimitExceeded",
        "rateLimitExceeded",
        "quotaExceeded",
    ] {
        let e = error_for(403, google_error(403, reason, "Quota exceeded"), None).await;
        assert!(
            matches!(&e, ConnectorError::RateLimited { message, .. } if message.contains(reason)),
            "{reason}: {e:?}"
        );
    }
    let e = error_for(
        429,
        google_error(429, "rateLimitExceeded", "Too many"),
        Some(("retry-after", "7")),
    )
    .await;
    assert!(e.is_transient());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    let e = error_for(
        503,
        google_error(503, "backendError", "Backend Error"),
        None,
    )
    .await;
    assert!(
        matches!(&e, ConnectorError::Transient { message, .. } if message.contains("backendError")),
        "{e:?}"
    );
}

#[tokio::test]
async fn error_bodies_echoing_the_token_are_redacted() {
    let e = error_for(
        400,
        google_error(400, "invalid", &format!("bad token {TOKEN}")),
        None,
    )
    .await;
    assert!(e.to_string().contains("[REDACTED]"), "{e}");
}

#[tokio::test]
async fn a_401_refreshes_the_token_once() {
    let server = MockServer::start().await;
    // First token is refused by the API, the refreshed one works.
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(ValidAssertion::new(
            &[SCOPE_USER],
            &format!("{}/token", server.uri()),
        ))
        .respond_with(token_ok(TOKEN))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(token_ok(TOKEN2))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(401).set_body_json(google_error(
            401,
            "authError",
            "Invalid Credentials",
        )))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(header("authorization", format!("Bearer {TOKEN2}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json(false)))
        .expect(1)
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call("get_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap();
    assert_eq!(out["id"], SUSPECT_ID);
}

#[tokio::test]
async fn a_second_401_is_an_auth_error() {
    let server = MockServer::start().await;
    mount_token(&server, &[SCOPE_USER], TOKEN, 2).await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401).set_body_json(google_error(
            401,
            "authError",
            "Invalid Credentials",
        )))
        .expect(2)
        .mount(&server)
        .await;
    let h = harness(&server);
    let e = h
        .call("get_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Auth { status: 401, message } if message.contains("authError")),
        "{e:?}"
    );
    assert_clean(&e);
}

#[tokio::test]
async fn token_endpoint_refusals_name_the_oauth_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error": "unauthorized_client",
            "error_description": "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested."
        })))
        .mount(&server)
        .await;
    let h = harness(&server);
    let e = h
        .call("get_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ConnectorError::Auth { status: 401, .. }),
        "{e:?}"
    );
    assert!(
        msg.contains("unauthorized_client") && msg.contains("domain-wide delegation"),
        "{msg}"
    );
    assert_clean(&e);

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
        ))
        .mount(&server)
        .await;
    let h = harness(&server);
    let e = h
        .call("get_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Auth { status: 400, message } if message.contains("invalid_grant")),
        "{e:?}"
    );
    assert!(!e.is_transient());

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let h = harness(&server);
    let e = h
        .call("get_user", json!({"user": "j.smith@example.com"}))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let server = MockServer::start().await;
    mount_token(&server, &[SCOPE_USER], TOKEN, 1).await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(user_json(false))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let redactor = Redactor::new();
    let key = ServiceAccountKey::from_json(
        &sandbox_service_account_key("https://oauth2.googleapis.com/token"),
        &redactor,
    )
    .unwrap();
    let connector = GoogleConnector::new(
        GoogleConfig {
            instance: "gw".into(),
            key,
            subject: SANDBOX_SUBJECT.into(),
            base_url: url::Url::parse(&server.uri()).unwrap(),
            token_url: url::Url::parse(&format!("{}/token", server.uri())).unwrap(),
            timeout: Duration::from_millis(300),
        },
        redactor,
    )
    .unwrap();
    let sink = MemSink::default();
    let log = RequestLog::default();
    let resume = ResumeSlot::default();
    let input = json!({"user": "j.smith@example.com"});
    let e = connector
        .call(ActionCall {
            action: "get_user",
            input: &input,
            idempotency_key: "k",
            run_id: "r",
            step_id: "s",
            attempt: 1,
            evidence: &sink,
            requests: &log,
            resume: &resume,
            prior: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Timeout(_)), "{e:?}");
    assert!(e.is_transient());
}

#[tokio::test]
async fn bad_inputs_are_refused_before_any_request() {
    let server = MockServer::start().await;
    let h = harness(&server);
    for (action, input, field) in [
        ("get_user", json!({}), "user"),
        ("suspend_user", json!({"user": "a b"}), "user"),
        (
            "snapshot_login_activity",
            json!({"user": "j.smith@example.com", "since": "last tuesday"}),
            "since",
        ),
        (
            "snapshot_login_activity",
            json!({"user": "j.smith@example.com", "since": "2026-01-01T00:00:00Z", "until": "soon"}),
            "until",
        ),
        (
            "snapshot_login_activity",
            json!({"user": "all", "since": "2026-01-01T00:00:00Z"}),
            "user",
        ),
    ] {
        match h.call(action, input).await {
            Err(ConnectorError::InvalidInput { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{action}: {other:?}"),
        }
    }
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[test]
fn configuration_errors_name_the_setting_and_never_echo_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.json"),
        r#"{"type":"service_account","client_email":"x@y.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----\nTOPSECRETBYTES\n-----END PRIVATE KEY-----\n"}"#,
    )
    .unwrap();
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "gw": {
            "type": "google",
            "service_account_key": {"file": "broken.json"},
            "subject": "not-an-email",
            "base_url": "http://admin.example.com",
            "token_ur": "https://oauth2.googleapis.com/token",
        },
        "gw2": {"type": "google", "service_account_key": "inline-secret-value"},
    }))
    .unwrap();
    let errs = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap_err();
    let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let all = all.join("\n");
    for needle in [
        "connector `gw`, setting `service_account_key`",
        "connector `gw`, setting `subject`",
        "connector `gw`, setting `base_url`",
        "connector `gw`, setting `token_ur`: unknown setting (hint: did you mean `token_url`?)",
        "connector `gw2`, setting `service_account_key`",
        "connector `gw2`, setting `subject`: is required",
    ] {
        assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
    }
    assert!(!all.contains("TOPSECRETBYTES") && !all.contains("inline-secret-value"));
    assert!(!format!("{errs:?}").contains("TOPSECRETBYTES"));
}

// ---------------------------------------------------------------------------------------
// Snapshots

const SINCE: &str = "2026-01-01T00:00:00Z";
const UNTIL: &str = "2026-01-31T00:00:00Z";

fn event(n: usize) -> Value {
    json!({"kind": "admin#reports#activity",
           "id": {"time": format!("2026-01-{:02}T00:00:{:02}.000Z", 1 + n % 28, n % 60),
                  "uniqueQualifier": format!("{n}"), "applicationName": "login"},
           "actor": {"email": "j.smith@example.com", "profileId": SUSPECT_ID},
           "ipAddress": "203.0.113.45",
           "events": [{"type": "login", "name": "login_success"}]})
}

/// Mount page `i` of `pages` (200 events each, the last one 100): requested with the
/// previous page's token, answering the next one.
async fn mount_pages(server: &MockServer, pages: usize, total: usize) -> Vec<Value> {
    let mut all = Vec::new();
    for i in 0..pages {
        let start = i * 200;
        let end = (start + 200).min(total);
        let items: Vec<Value> = (start..end).map(event).collect();
        all.extend(items.iter().cloned());
        let mut body = json!({"kind": "admin#reports#activities", "etag": "\"e\"", "items": items});
        if i + 1 < pages {
            body["nextPageToken"] = json!(format!("tok-{}", i + 1));
        }
        let mut m = Mock::given(method("GET"))
            .and(path(ACTIVITY))
            .and(query_param("startTime", SINCE))
            .and(query_param("endTime", UNTIL))
            .and(query_param("maxResults", "1000"))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()));
        m = if i == 0 {
            m.and(wiremock::matchers::query_param_is_missing("pageToken"))
        } else {
            m.and(query_param("pageToken", format!("tok-{i}")))
        };
        m.respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(1)
            .named(format!("page {i}"))
            .mount(server)
            .await;
    }
    all
}

fn jsonl(events: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(serde_json::to_string(e).unwrap().as_bytes());
        out.push(b'\n');
    }
    out
}

#[tokio::test]
async fn snapshot_follows_every_page_in_order() {
    let server = MockServer::start().await;
    mount_token(&server, &[SCOPE_REPORTS], TOKEN, 1).await;
    let events = mount_pages(&server, 13, 2500).await;
    let h = harness(&server);
    let out = h
        .call(
            "snapshot_login_activity",
            json!({"user": "j.smith@example.com", "since": SINCE, "until": UNTIL}),
        )
        .await
        .unwrap();
    let expected = jsonl(&events);
    assert_eq!(out["records"], 2500);
    assert_eq!(out["pages"], 13);
    assert_eq!(out["bytes"], expected.len() as u64);
    assert_eq!(out["sha256"], hex::encode(sha2::Sha256::digest(&expected)));
    assert_eq!(out["evidence_id"], "01TEST");
    let finished = h.sink.finished.lock().unwrap();
    assert_eq!(finished.len(), 1);
    let (rec, data) = &finished[0];
    assert_eq!(data, &expected);
    assert_eq!(rec.meta.connector_type, "google");
    assert_eq!(rec.meta.extension, "jsonl");
    assert_eq!(rec.meta.source["user"], "j.smith@example.com");
    assert_eq!(rec.meta.source["since"], SINCE);
    assert_eq!(rec.meta.source["until"], UNTIL);
    assert_eq!(rec.meta.source["endpoint"], ACTIVITY);
    let source = rec.meta.source.to_string();
    assert!(
        !source.contains(TOKEN) && !source.contains("eyJ"),
        "{source}"
    );
}

#[tokio::test]
async fn snapshot_resumes_from_the_page_that_failed() {
    let server = MockServer::start().await;
    mount_token(&server, &[SCOPE_REPORTS], TOKEN, 1).await;
    // Page 5 first fails with Google's throttling answer, then succeeds. Mounted first so
    // it takes precedence over the page's success mock for its one use.
    Mock::given(method("GET"))
        .and(path(ACTIVITY))
        .and(query_param("pageToken", "tok-5"))
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("retry-after", "2")
                .set_body_json(google_error(403, "userRateLimitExceeded", "Quota exceeded")),
        )
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    // Every page is expected exactly once: a resumed call must not fetch pages 0–4 again.
    let events = mount_pages(&server, 13, 2500).await;
    let h = harness(&server);
    let input = json!({"user": "j.smith@example.com", "since": SINCE, "until": UNTIL});
    let e = h
        .call("snapshot_login_activity", input.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ConnectorError::RateLimited { retry_after: Some(d), .. } if *d == Duration::from_secs(2)),
        "{e:?}"
    );
    assert!(h.sink.finished.lock().unwrap().is_empty());
    let out = h.call("snapshot_login_activity", input).await.unwrap();
    assert_eq!(out["records"], 2500);
    assert_eq!(out["pages"], 13);
    assert_eq!(
        *h.sink.created.lock().unwrap(),
        1,
        "one artifact, continued"
    );
    // Every activity counted once across both attempts; times span the 28 days.
    assert_eq!(
        out["ip_addresses"],
        json!([{"ip": "203.0.113.45", "first_seen": "2026-01-01T00:00:00Z",
                "last_seen": "2026-01-28T00:00:59Z", "events": 2500, "country": null}])
    );
    let finished = h.sink.finished.lock().unwrap();
    assert_eq!(finished[0].1, jsonl(&events));
}

#[tokio::test]
async fn snapshot_failing_on_the_first_page_then_resuming() {
    let server = MockServer::start().await;
    mount_token(&server, &[SCOPE_REPORTS], TOKEN, 1).await;
    Mock::given(method("GET"))
        .and(path(ACTIVITY))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let events = mount_pages(&server, 2, 300).await;
    let h = harness(&server);
    let input = json!({"user": "j.smith@example.com", "since": SINCE, "until": UNTIL});
    let e = h
        .call("snapshot_login_activity", input.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Transient { .. }), "{e:?}");
    let out = h.call("snapshot_login_activity", input).await.unwrap();
    assert_eq!(out["records"], 300);
    assert_eq!(h.sink.finished.lock().unwrap()[0].1, jsonl(&events));
}

#[tokio::test]
async fn snapshot_with_no_events_is_an_empty_artifact() {
    let server = MockServer::start().await;
    mount_token(&server, &[SCOPE_REPORTS], TOKEN, 1).await;
    Mock::given(method("GET"))
        .and(path(ACTIVITY))
        .and(query_param("startTime", SINCE))
        .and(query_param_is_missing_end())
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"kind": "admin#reports#activities", "etag": "\"e\""})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call(
            "snapshot_login_activity",
            json!({"user": "j.smith@example.com", "since": SINCE}),
        )
        .await
        .unwrap();
    assert_eq!(out["records"], 0);
    assert_eq!(out["bytes"], 0);
    assert_eq!(out["pages"], 1);
}

fn query_param_is_missing_end() -> impl Match {
    wiremock::matchers::query_param_is_missing("endTime")
}

// ---------------------------------------------------------------------------------------
// Against the sandbox

#[tokio::test]
async fn drives_the_sandbox_end_to_end() {
    let sandbox = Sandbox::seeded().serve().await.unwrap();
    let h = harness_at(&format!("{}/google", sandbox.base_url()));
    let suspect = json!({"user": "j.smith@example.com"});

    let found = h.call("get_user", suspect.clone()).await.unwrap();
    assert_eq!(found["found"], true);
    assert_eq!(found["status"], "ACTIVE");
    let id = found["id"].as_str().unwrap().to_string();
    assert_eq!(
        h.call("get_user", json!({"user": "nobody@example.com"}))
            .await
            .unwrap(),
        json!({"found": false})
    );
    assert_eq!(
        h.call("get_user", json!({"user": id})).await.unwrap()["email"],
        "j.smith@example.com"
    );

    let prior = h
        .prior("suspend_user", suspect.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(prior["status"], "ACTIVE");
    let s1 = h.call("suspend_user", suspect.clone()).await.unwrap();
    assert_eq!(
        (s1["target"].as_str(), &s1["already"]),
        (Some(id.as_str()), &json!(false))
    );
    let s2 = h.call("suspend_user", suspect.clone()).await.unwrap();
    assert_eq!(s2["already"], true);
    assert_eq!(
        h.call("get_user", suspect.clone()).await.unwrap()["status"],
        "SUSPENDED"
    );
    let out = h.call("sign_out", suspect.clone()).await.unwrap();
    assert_eq!(out["target"], id.as_str());
    let u = h.call("unsuspend_user", suspect.clone()).await.unwrap();
    assert_eq!(u["already"], false);
    let u = h.call("unsuspend_user", suspect.clone()).await.unwrap();
    assert_eq!(u["already"], true);

    let since = (chrono::Utc::now() - chrono::Duration::days(10)).to_rfc3339();
    let snap = h
        .call(
            "snapshot_login_activity",
            json!({"user": "j.smith@example.com", "since": since}),
        )
        .await
        .unwrap();
    assert_eq!(snap["records"], 30);
    let data = h.sink.finished.lock().unwrap()[0].1.clone();
    let lines: Vec<Value> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 30);
    assert!(lines
        .iter()
        .all(|l| l["actor"]["email"] == "j.smith@example.com"));
    // The suspect's addresses: the laptop farm, a VPN exit and two abroad.
    let ips = snap["ip_addresses"].as_array().unwrap();
    let mut seen: Vec<&str> = ips.iter().map(|a| a["ip"].as_str().unwrap()).collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "192.0.2.14",
            "198.51.100.23",
            "2001:db8:4a3::15",
            "203.0.113.45"
        ]
    );
    let total: u64 = ips.iter().map(|a| a["events"].as_u64().unwrap()).sum();
    assert_eq!(total, 30);
    let foreign = ips.iter().find(|a| a["ip"] == "192.0.2.14").unwrap();
    assert_eq!(foreign["country"], "CN");
    assert!(foreign["first_seen"].as_str() < foreign["last_seen"].as_str());
    assert_eq!(snap["ip_addresses_truncated"], false);

    let ghost = h
        .call(
            "snapshot_login_activity",
            json!({"user": "nobody@example.com", "since": since}),
        )
        .await
        .unwrap();
    assert_eq!(
        ghost,
        json!({"found": false, "target": null, "ip_addresses": [], "ip_addresses_truncated": false})
    );
    assert_eq!(
        *h.sink.created.lock().unwrap(),
        1,
        "no artifact for an unknown user"
    );

    let paths: Vec<String> = h.log.take().into_iter().map(|r| r.path).collect();
    assert!(paths.contains(&format!("/google/admin/directory/v1/users/{id}/signOut")));
    // Every token the sandbox issued was registered for redaction.
    assert!(!h.redactor.is_empty());
}

#[tokio::test]
async fn sandbox_pages_throttles_and_checks_auth() {
    let sandbox = Sandbox::seeded();
    let server = sandbox.serve().await.unwrap();
    let base = format!("{}/google", server.base_url());
    let h = harness_at(&base);
    // Paging: the suspect has 30 seeded events; add 2,470 more → 3 pages of 1,000.
    let gs = cordon_connectors::sandbox::google::GoogleSandbox::seeded();
    let app = cordon_connectors::sandbox::google::router(gs.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    gs.add_login_events("j.smith@example.com", 2470);
    let h2 = harness_at(&format!("http://{addr}"));
    let since = (chrono::Utc::now() - chrono::Duration::days(10)).to_rfc3339();
    let snap = h2
        .call(
            "snapshot_login_activity",
            json!({"user": "j.smith@example.com", "since": since}),
        )
        .await
        .unwrap();
    assert_eq!(
        (snap["records"].as_u64(), snap["pages"].as_u64()),
        (Some(2500), Some(3))
    );

    // Throttling: Google's 403 userRateLimitExceeded is RateLimited.
    gs.throttle_next(1);
    let e = h2
        .call("get_user", json!({"user": "dana@example.com"}))
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::RateLimited { .. }), "{e:?}");
    assert_eq!(
        h2.call("get_user", json!({"user": "dana@example.com"}))
            .await
            .unwrap()["found"],
        true
    );

    // The sandbox refuses an unsigned assertion and a missing bearer token.
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/token"))
        .form(&[("grant_type", JWT_BEARER_GRANT), ("assertion", "a.b.c")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    let r = client
        .get(format!("{base}/admin/directory/v1/users/dana@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["errors"][0]["reason"], "authError");
    // The registry-built connector still works against the mounted sandbox.
    assert_eq!(
        h.call("get_user", json!({"user": "dana@example.com"}))
            .await
            .unwrap()["found"],
        true
    );
}

/// Serve `pages` of login activities, linked by `nextPageToken`.
async fn mount_item_pages(server: &MockServer, pages: Vec<Vec<Value>>) {
    let n = pages.len();
    for (i, items) in pages.into_iter().enumerate() {
        let mut body = json!({"kind": "admin#reports#activities", "items": items});
        if i + 1 < n {
            body["nextPageToken"] = json!(format!("t{}", i + 1));
        }
        let m = Mock::given(method("GET")).and(path(ACTIVITY));
        let m = if i == 0 {
            m.and(wiremock::matchers::query_param_is_missing("pageToken"))
        } else {
            m.and(query_param("pageToken", format!("t{i}")))
        };
        m.respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(1)
            .mount(server)
            .await;
    }
}

fn login(ip: Option<&str>, time: &str, region: Option<&str>) -> Value {
    let mut a = json!({"kind": "admin#reports#activity",
        "id": {"time": time, "uniqueQualifier": time, "applicationName": "login"},
        "actor": {"email": "j.smith@example.com", "profileId": SUSPECT_ID},
        "events": [{"type": "login", "name": "login_success"}]});
    if let Some(ip) = ip {
        a["ipAddress"] = json!(ip);
    }
    if let Some(r) = region {
        a["networkInfo"] = json!({"regionCode": r, "ipAsn": [64496]});
    }
    a
}

#[tokio::test]
async fn snapshot_summarises_addresses_across_pages() {
    let server = MockServer::start().await;
    mount_token(&server, &[SCOPE_REPORTS], TOKEN, 1).await;
    let (vpn, abroad) = ("203.0.113.45", "2001:db8:4a3::15");
    mount_item_pages(
        &server,
        vec![
            vec![
                login(Some(abroad), "2026-01-20T08:00:00.000Z", Some("CN")),
                login(None, "2026-01-20T07:00:00.000Z", Some("CN")),
                login(Some("not an address"), "2026-01-20T06:00:00.000Z", None),
                login(Some(vpn), "2026-01-19T22:00:00.000Z", None),
            ],
            vec![
                login(Some(vpn), "2026-01-15T12:00:00.000Z", Some("US")),
                login(
                    Some("2001:0db8:04a3::0015"),
                    "2026-01-02T00:00:00.000Z",
                    Some("HK"),
                ),
            ],
        ],
    )
    .await;
    let h = harness(&server);
    let out = h
        .call(
            "snapshot_login_activity",
            json!({"user": "j.smith@example.com", "since": SINCE, "until": UNTIL}),
        )
        .await
        .unwrap();
    assert_eq!(
        (out["records"].as_u64(), out["pages"].as_u64()),
        (Some(6), Some(2))
    );
    assert_eq!(
        out["ip_addresses"],
        json!([
            {"ip": abroad, "first_seen": "2026-01-02T00:00:00Z", "last_seen": "2026-01-20T08:00:00Z",
             "events": 2, "country": "CN"},
            {"ip": vpn, "first_seen": "2026-01-15T12:00:00Z", "last_seen": "2026-01-19T22:00:00Z",
             "events": 2, "country": "US"},
        ])
    );
    assert_eq!(out["ip_addresses_truncated"], false);
}

#[tokio::test]
async fn more_than_500_addresses_are_truncated() {
    let server = MockServer::start().await;
    mount_token(&server, &[SCOPE_REPORTS], TOKEN, 1).await;
    let t = "2026-01-10T00:00:00.000Z";
    let page1: Vec<Value> = (0..501)
        .map(|i| login(Some(&format!("2001:db8:1::{i:x}")), t, None))
        .collect();
    let page2 = vec![login(
        Some("2001:db8:1::0"),
        "2026-01-11T00:00:00.000Z",
        None,
    )];
    mount_item_pages(&server, vec![page1, page2]).await;
    let h = harness(&server);
    let out = h
        .call(
            "snapshot_login_activity",
            json!({"user": "j.smith@example.com", "since": SINCE, "until": UNTIL}),
        )
        .await
        .unwrap();
    assert_eq!(out["records"], 502);
    assert_eq!(out["ip_addresses_truncated"], true);
    let ips = out["ip_addresses"].as_array().unwrap();
    assert_eq!(ips.len(), 500);
    assert!(ips.iter().all(|a| a["ip"] != "2001:db8:1::1f4"));
    assert_eq!(ips[0]["ip"], "2001:db8:1::");
    assert_eq!(ips[0]["events"], 2);
    assert_eq!(ips[0]["last_seen"], "2026-01-11T00:00:00Z");
}
