//! The `crowdstrike` connector against `wiremock` (token request, exact requests, per-host
//! containment answers, Falcon's error envelope, 401 refresh, throttling, redaction) and
//! against the local sandbox.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cordon_connectors::crowdstrike::CrowdStrikeConnector;
use cordon_connectors::http_client::{HttpClient, HttpClientConfig};
use cordon_connectors::registry::Registry;
use cordon_connectors::sandbox::crowdstrike::{
    SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SUSPECT_AID,
};
use cordon_connectors::sandbox::Sandbox;
use cordon_connectors::secret::Redactor;
use cordon_connectors::{
    ActionCall, Connector, ConnectorError, EvidenceMeta, EvidenceSink, EvidenceWriter, RequestLog,
    ResumeSlot,
};
use serde_json::{json, Value};
use wiremock::matchers::{body_json, body_string, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CLIENT_ID: &str = "0123456789abcdef0123456789abcdef";
const SECRET: &str = "cs-test-secret-Zx9Yw8Vu7";
const ACCESS: &str = "cs-access-token-Qa1Ws2Ed3";
const ACCESS2: &str = "cs-access-token-second-Rf4";
const AID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
const SERIAL: &str = "C02DEMO0001";

/// Snapshots are not part of this type: a sink that refuses.
struct NoSink;

#[async_trait::async_trait]
impl EvidenceSink for NoSink {
    async fn create(
        &self,
        _meta: EvidenceMeta,
    ) -> Result<Box<dyn EvidenceWriter>, cordon_connectors::evidence::EvidenceError> {
        Err(cordon_connectors::evidence::EvidenceError(
            "no evidence expected".into(),
        ))
    }
}

struct Harness {
    connector: Arc<dyn Connector>,
    log: RequestLog,
    _dir: tempfile::TempDir,
}

fn harness_at(base: &str, client_id: &str, secret: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cs-secret"), format!("{secret}\n")).unwrap();
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "falcon": {"type": "crowdstrike", "base_url": base, "client_id": client_id,
                   "client_secret": {"file": "cs-secret"}}
    }))
    .unwrap();
    let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
    Harness {
        connector: registry.resolve("crowdstrike", None).unwrap(),
        log: RequestLog::default(),
        _dir: dir,
    }
}

fn harness(server: &MockServer) -> Harness {
    harness_at(&server.uri(), CLIENT_ID, SECRET)
}

impl Harness {
    async fn call(&self, action: &str, input: Value) -> Result<Value, ConnectorError> {
        self.connector
            .call(ActionCall {
                action,
                input: &input,
                idempotency_key: "run1/step/0",
                run_id: "run1",
                step_id: "step",
                attempt: 1,
                evidence: &NoSink,
                requests: &self.log,
                resume: &ResumeSlot::default(),
                prior: None,
            })
            .await
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
                evidence: &NoSink,
                requests: &self.log,
                resume: &ResumeSlot::default(),
                prior: None,
            })
            .await
    }
}

fn envelope(resources: Value, errors: Value) -> Value {
    json!({"meta": {"query_time": 0.01, "trace_id": "trace-77"}, "resources": resources, "errors": errors})
}

fn device(status: &str) -> Value {
    json!({"device_id": AID, "hostname": "jsmith-mbp", "serial_number": SERIAL, "status": status,
           "platform_name": "Mac", "os_version": "Sonoma (14)", "last_seen": "2026-11-25T09:00:00Z",
           "last_login_user": "j.smith@example.com"})
}

/// The documented token request: form `client_id` and `client_secret`, nothing else.
async fn mount_token(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string(format!(
            "client_id={CLIENT_ID}&client_secret={SECRET}"
        )))
        .respond_with(ResponseTemplate::new(201).set_body_json(
            json!({"access_token": ACCESS, "token_type": "bearer", "expires_in": 1799}),
        ))
        .mount(server)
        .await;
}

async fn mount_lookup(server: &MockServer, status: &str) {
    Mock::given(method("GET"))
        .and(path("/devices/queries/devices/v1"))
        .and(query_param(
            "filter",
            format!("serial_number:'{SERIAL}'").as_str(),
        ))
        .and(query_param("limit", "100"))
        .and(header("authorization", format!("Bearer {ACCESS}").as_str()))
        .and(header("accept", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(envelope(json!([AID]), json!([]))))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/devices/entities/devices/v2"))
        .and(query_param("ids", AID))
        .and(header("authorization", format!("Bearer {ACCESS}").as_str()))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(envelope(json!([device(status)]), json!([]))),
        )
        .mount(server)
        .await;
}

fn action_mock(action: &str, resp: ResponseTemplate) -> Mock {
    Mock::given(method("POST"))
        .and(path("/devices/entities/devices-actions/v2"))
        .and(query_param("action_name", action))
        .and(header("authorization", format!("Bearer {ACCESS}").as_str()))
        .and(body_json(json!({"ids": [AID]})))
        .respond_with(resp)
}

async fn actions(server: &MockServer) -> usize {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/devices/entities/devices-actions/v2")
        .count()
}

#[tokio::test]
async fn find_host_by_serial_with_one_token() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_lookup(&server, "normal").await;
    let h = harness(&server);
    let out = h
        .call("find_host", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "id": AID, "serial": SERIAL, "name": "jsmith-mbp",
               "owner": "j.smith@example.com", "os": "Sonoma (14)",
               "last_seen": "2026-11-25T09:00:00Z", "status": "normal"})
    );
    // By AID: details only.
    let out = h.call("find_host", json!({"device": AID})).await.unwrap();
    assert_eq!(out["serial"], SERIAL);
    let tokens = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/oauth2/token")
        .count();
    assert_eq!(tokens, 1, "the token is cached");
}

#[tokio::test]
async fn serial_matches_are_rechecked_and_the_latest_aid_wins() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    let old = "00000000000000000000000000000old".replace("old", "0ad");
    Mock::given(method("GET"))
        .and(path("/devices/queries/devices/v1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(envelope(
            json!([old.clone(), AID, "ffffffffffffffffffffffffffffffff"]),
            json!([]),
        )))
        .mount(&server)
        .await;
    let mut stale = device("normal");
    stale["device_id"] = json!(old);
    stale["last_seen"] = json!("2025-01-01T00:00:00Z");
    let mut other = device("normal");
    other["device_id"] = json!("ffffffffffffffffffffffffffffffff");
    other["serial_number"] = json!("C02OTHER");
    other["last_seen"] = json!("2027-01-01T00:00:00Z");
    Mock::given(method("GET"))
        .and(path("/devices/entities/devices/v2"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(envelope(json!([stale, device("normal"), other]), json!([]))),
        )
        .mount(&server)
        .await;
    let out = harness(&server)
        .call("find_host", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(out["id"], AID);
}

#[tokio::test]
async fn unknown_host_is_not_an_error() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    Mock::given(method("GET"))
        .and(path("/devices/queries/devices/v1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(envelope(json!([]), json!([]))))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/devices/entities/devices/v2"))
        .respond_with(ResponseTemplate::new(404).set_body_json(envelope(
            Value::Null,
            json!([{"code": 404, "message": "No resources found"}]),
        )))
        .mount(&server)
        .await;
    let h = harness(&server);
    assert_eq!(
        h.call("find_host", json!({"device": "C02NOSUCH"}))
            .await
            .unwrap(),
        json!({"found": false})
    );
    assert_eq!(
        h.call("contain_host", json!({"device": AID}))
            .await
            .unwrap(),
        json!({"found": false, "target": null, "already": false})
    );
    assert_eq!(
        h.prior("contain_host", json!({"device": "C02NOSUCH"}))
            .await
            .unwrap(),
        Some(json!({"found": false}))
    );
    assert_eq!(actions(&server).await, 0);
}

#[tokio::test]
async fn contain_sends_the_documented_request_once() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_lookup(&server, "normal").await;
    action_mock(
        "contain",
        ResponseTemplate::new(202)
            .set_body_json(envelope(json!([{"id": AID, "path": ""}]), json!([]))),
    )
    .expect(1)
    .mount(&server)
    .await;
    let h = harness(&server);
    let prior = h
        .prior("contain_host", json!({"device": SERIAL}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(prior["already"], false);
    assert_eq!(prior["status"], "normal");
    let out = h
        .call("contain_host", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "target": AID, "already": false, "previous_status": "normal"})
    );
}

#[tokio::test]
async fn contained_or_pending_sends_nothing() {
    for status in ["contained", "containment_pending"] {
        let server = MockServer::start().await;
        mount_token(&server).await;
        mount_lookup(&server, status).await;
        let h = harness(&server);
        assert_eq!(
            h.prior("contain_host", json!({"device": SERIAL}))
                .await
                .unwrap()
                .unwrap()["already"],
            true
        );
        let out = h
            .call("contain_host", json!({"device": SERIAL}))
            .await
            .unwrap();
        assert_eq!(out["already"], true, "{status}");
        assert_eq!(actions(&server).await, 0);
    }
}

#[tokio::test]
async fn per_host_409_is_already_whatever_the_status() {
    for http in [202, 409] {
        let server = MockServer::start().await;
        mount_token(&server).await;
        mount_lookup(&server, "normal").await;
        action_mock(
            "contain",
            ResponseTemplate::new(http).set_body_json(envelope(
                json!([]),
                json!([{"code": 409, "id": AID, "message": format!("Device {AID} is already contained")}]),
            )),
        )
        .expect(1)
        .mount(&server)
        .await;
        let out = harness(&server)
            .call("contain_host", json!({"device": SERIAL}))
            .await
            .unwrap();
        assert_eq!(out["already"], true, "HTTP {http}");
        assert_eq!(out["target"], AID);
    }
}

#[tokio::test]
async fn lift_containment_and_its_already_answer() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_lookup(&server, "contained").await;
    action_mock(
        "lift_containment",
        ResponseTemplate::new(202)
            .set_body_json(envelope(json!([{"id": AID, "path": ""}]), json!([]))),
    )
    .expect(1)
    .mount(&server)
    .await;
    let out = harness(&server)
        .call("lift_containment", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(out["already"], false);
    assert_eq!(out["previous_status"], "contained");

    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_lookup(&server, "normal").await;
    let out = harness(&server)
        .call("lift_containment", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(out["already"], true);
    assert_eq!(actions(&server).await, 0);
}

#[tokio::test]
async fn a_202_that_does_not_name_the_host_fails() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_lookup(&server, "normal").await;
    action_mock(
        "contain",
        ResponseTemplate::new(202).set_body_json(envelope(
            json!([]),
            json!([{"code": 500, "id": AID, "message": "internal"}]),
        )),
    )
    .mount(&server)
    .await;
    let err = harness(&server)
        .call("contain_host", json!({"device": SERIAL}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("did not confirm"), "{err}");
}

async fn contain_error(status: u16, headers: &[(&str, String)]) -> ConnectorError {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_lookup(&server, "normal").await;
    let mut resp = ResponseTemplate::new(status).set_body_json(envelope(
        json!([]),
        json!([{"code": status, "message": format!("failure {status}; saw {SECRET} and Bearer {ACCESS}")}]),
    ));
    for (n, v) in headers {
        resp = resp.insert_header(*n, v.as_str());
    }
    action_mock("contain", resp).mount(&server).await;
    let err = harness(&server)
        .call("contain_host", json!({"device": SERIAL}))
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(!text.contains(ACCESS), "{text}");
    assert!(
        text.contains(&format!("{status}: failure {status}")),
        "{text}"
    );
    assert!(text.contains("trace-77"), "{text}");
    err
}

#[tokio::test]
async fn statuses_map_to_typed_errors_without_secrets() {
    assert!(matches!(
        contain_error(400, &[]).await,
        ConnectorError::Rejected { status: 400, .. }
    ));
    assert!(matches!(
        contain_error(403, &[]).await,
        ConnectorError::Auth { status: 403, .. }
    ));
    assert!(matches!(
        contain_error(500, &[]).await,
        ConnectorError::Transient { .. }
    ));
    assert!(matches!(
        contain_error(503, &[]).await,
        ConnectorError::Transient { .. }
    ));
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 20;
    let err = contain_error(
        429,
        &[
            ("X-RateLimit-Limit", "6000".into()),
            ("X-RateLimit-Remaining", "0".into()),
            ("X-RateLimit-RetryAfter", at.to_string()),
        ],
    )
    .await;
    assert!(matches!(err, ConnectorError::RateLimited { .. }), "{err:?}");
    let wait = err.retry_after().unwrap();
    assert!(
        wait >= Duration::from_secs(18) && wait <= Duration::from_secs(20),
        "{wait:?}"
    );
}

#[tokio::test]
async fn a_401_refreshes_the_token_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(ResponseTemplate::new(201).set_body_json(
            json!({"access_token": ACCESS, "token_type": "bearer", "expires_in": 1799}),
        ))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(ResponseTemplate::new(201).set_body_json(
            json!({"access_token": ACCESS2, "token_type": "bearer", "expires_in": 1799}),
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(header("authorization", format!("Bearer {ACCESS}").as_str()))
        .respond_with(ResponseTemplate::new(401).set_body_json(envelope(
            json!([]),
            json!([{"code": 401, "message": "access denied, invalid bearer token"}]),
        )))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/devices/entities/devices/v2"))
        .and(header(
            "authorization",
            format!("Bearer {ACCESS2}").as_str(),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(envelope(json!([device("normal")]), json!([]))),
        )
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h.call("find_host", json!({"device": AID})).await.unwrap();
    assert_eq!(out["found"], true);
    let paths: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.path().to_string())
        .collect();
    assert_eq!(
        paths,
        vec![
            "/oauth2/token",
            "/devices/entities/devices/v2",
            "/oauth2/token",
            "/devices/entities/devices/v2"
        ]
    );
}

#[tokio::test]
async fn a_persistent_401_is_an_auth_error() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401).set_body_json(envelope(
            json!([]),
            json!([{"code": 401, "message": "access denied, invalid bearer token"}]),
        )))
        .mount(&server)
        .await;
    let err = harness(&server)
        .call("find_host", json!({"device": AID}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectorError::Auth { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        4,
        "token, call, token, call"
    );
}

#[tokio::test]
async fn token_errors_name_the_settings_never_the_secret() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(ResponseTemplate::new(403).set_body_json(envelope(
            json!([]),
            json!([{"code": 403, "message": "Failed to issue access token - Not Authorized"}]),
        )))
        .mount(&server)
        .await;
    let err = harness(&server)
        .call("find_host", json!({"device": SERIAL}))
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        matches!(err, ConnectorError::Auth { status: 403, .. }),
        "{text}"
    );
    assert!(text.contains("Not Authorized"), "{text}");
    assert!(text.contains("client_secret"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}

#[tokio::test]
async fn a_slow_answer_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"access_token": ACCESS, "expires_in": 1799}))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let redactor = Redactor::new();
    let secret = redactor.secret(SECRET);
    let mut config = HttpClientConfig::new("falcon");
    config.base_url = Some(server.uri().parse().unwrap());
    config.timeout = Duration::from_millis(300);
    let client = HttpClient::new(config, redactor).unwrap();
    let c = CrowdStrikeConnector::with_client(client, CLIENT_ID, secret).unwrap();
    let log = RequestLog::default();
    let input = json!({"device": SERIAL});
    let err = c
        .call(ActionCall {
            action: "find_host",
            input: &input,
            idempotency_key: "k",
            run_id: "r",
            step_id: "s",
            attempt: 1,
            evidence: &NoSink,
            requests: &log,
            resume: &ResumeSlot::default(),
            prior: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Timeout(_)), "{err:?}");
    assert!(!format!("{c:?}").contains(SECRET));
}

#[tokio::test]
async fn inputs_are_checked_naming_the_field() {
    let server = MockServer::start().await;
    let h = harness(&server);
    let field = |r: Result<Value, ConnectorError>| match r {
        Err(ConnectorError::InvalidInput { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(field(h.call("find_host", json!({})).await), "device");
    assert_eq!(
        field(h.call("contain_host", json!({"device": ""})).await),
        "device"
    );
    assert_eq!(
        field(
            h.call("contain_host", json!({"device": "x' OR hostname:'*"}))
                .await
        ),
        "device"
    );
    assert_eq!(field(h.call("find_host", json!([1])).await), "with");
}

#[tokio::test]
async fn settings_default_and_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s"), SECRET).unwrap();
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "falcon": {"type": "crowdstrike", "client_id": CLIENT_ID, "client_secret": {"file": "s"}}
    }))
    .unwrap();
    assert!(Registry::from_config(&config, dir.path(), &Redactor::new()).is_ok());
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "falcon": {"type": "crowdstrike", "client_id": CLIENT_ID, "client_secret": SECRET}
    }))
    .unwrap();
    let errs = match Registry::from_config(&config, dir.path(), &Redactor::new()) {
        Err(e) => e,
        Ok(_) => panic!("accepted an inline secret"),
    };
    let text = errs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("client_secret"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}

#[tokio::test]
async fn against_the_sandbox() {
    let sandbox = Sandbox::seeded();
    let cs = sandbox.crowdstrike.clone();
    let server = sandbox.serve().await.unwrap();
    let base = format!("{}/crowdstrike", server.base_url());
    let h = harness_at(&base, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET);
    let out = h
        .call("find_host", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(out["id"], SUSPECT_AID);
    assert_eq!(out["owner"], "j.smith@example.com");
    assert_eq!(
        h.call("find_host", json!({"device": "C02NOSUCH"}))
            .await
            .unwrap(),
        json!({"found": false})
    );
    let out = h
        .call("contain_host", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(out["already"], false);
    assert_eq!(cs.status_of(SERIAL).as_deref(), Some("contained"));
    let out = h
        .call("contain_host", json!({"device": SUSPECT_AID}))
        .await
        .unwrap();
    assert_eq!(out["already"], true);
    let out = h
        .call("lift_containment", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(out["already"], false);
    assert_eq!(cs.status_of(SERIAL).as_deref(), Some("normal"));
    assert_eq!(cs.calls().len(), 2);
    assert_eq!(cs.tokens_issued(), 1);
    cs.throttle(1);
    let err = h
        .call("find_host", json!({"device": SERIAL}))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::RateLimited { .. }), "{err:?}");
    assert!(err.retry_after().unwrap() <= Duration::from_secs(2));

    let bad = harness_at(&base, SANDBOX_CLIENT_ID, "wrong-secret");
    let err = bad
        .call("find_host", json!({"device": SERIAL}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectorError::Auth { status: 403, .. }),
        "{err:?}"
    );
    assert!(!format!("{err:?}").contains("wrong-secret"));

    // The demo configuration builds an instance that works.
    let dir = tempfile::tempdir().unwrap();
    let config = Sandbox::connector_config(&server.base_url(), dir.path()).unwrap();
    let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
    assert!(registry
        .resolve("crowdstrike", Some("crowdstrike-sandbox"))
        .is_ok());
}
