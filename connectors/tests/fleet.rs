//! The `fleet` connector against `wiremock` (exact requests, Fleet's error bodies and status
//! handling, lock/unlock "already" answers, paging, resume after a failed page, redaction)
//! and against the local sandbox.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cordon_connectors::fleet::FleetConnector;
use cordon_connectors::http_client::{HttpClient, HttpClientConfig};
use cordon_connectors::registry::Registry;
use cordon_connectors::sandbox::fleet::SANDBOX_TOKEN;
use cordon_connectors::sandbox::Sandbox;
use cordon_connectors::secret::Redactor;
use cordon_connectors::{ActionCall, Connector, ConnectorError, RequestLog, ResumeSlot};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const TOKEN: &str = "fleet-test-token-9b8a7c6d5e";
const SERIAL: &str = "C02DEMO0001";
const HOST_ID: u64 = 4242;
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
    std::fs::write(dir.path().join("fleet-token"), format!("{token}\n")).unwrap();
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "fleet-prod": {"type": "fleet", "base_url": base, "token": {"file": "fleet-token"}}
    }))
    .unwrap();
    let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
    Harness {
        connector: registry.resolve("fleet", None).unwrap(),
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
    let mut config = HttpClientConfig::new("fleet-prod");
    config.base_url = Some(server.uri().parse().unwrap());
    config.timeout = timeout;
    let client = HttpClient::new(config, redactor).unwrap();
    Harness {
        connector: Arc::new(FleetConnector::with_client(client, token).unwrap()),
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

fn host(device_status: &str, pending: &str) -> Value {
    json!({"host": {
        "id": HOST_ID, "hostname": "jsmith-mbp", "display_name": "John's MacBook Pro",
        "hardware_serial": SERIAL, "uuid": "UUID-1", "platform": "darwin",
        "os_version": "macOS 14.5", "status": "online", "seen_time": "2026-11-25T09:00:00Z",
        "device_mapping": [{"email": "j.smith@example.com", "source": "google_chrome_profiles"}],
        "mdm": {"device_status": device_status, "pending_action": pending},
    }})
}

fn fleet_error(message: &str) -> Value {
    json!({"message": message, "errors": [{"name": "base", "reason": message}], "uuid": "u-123"})
}

/// `GET /api/v1/fleet/hosts/identifier/{SERIAL}` with the exact auth and accept headers.
fn identifier_mock(body: Value) -> Mock {
    Mock::given(method("GET"))
        .and(path(format!("/api/v1/fleet/hosts/identifier/{SERIAL}")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("accept", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
}

fn post_mock(verb: &str, resp: ResponseTemplate) -> Mock {
    Mock::given(method("POST"))
        .and(path(format!("/api/v1/fleet/hosts/{HOST_ID}/{verb}")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("accept", "application/json"))
        .respond_with(resp)
}

async fn posts(server: &MockServer) -> usize {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count()
}

#[tokio::test]
async fn find_host_by_serial_and_by_id() {
    let server = MockServer::start().await;
    identifier_mock(host("unlocked", "")).mount(&server).await;
    Mock::given(method("GET"))
        .and(path(format!("/api/v1/fleet/hosts/{HOST_ID}")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(host("unlocked", "")))
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call("find_host", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "id": "4242", "serial": SERIAL, "name": "John's MacBook Pro",
               "owner": "j.smith@example.com", "os": "macOS 14.5",
               "last_seen": "2026-11-25T09:00:00Z", "status": "online",
               "device_status": "unlocked", "pending_action": null})
    );
    let out = h
        .call("find_host", json!({"device": "4242"}))
        .await
        .unwrap();
    assert_eq!(out["serial"], SERIAL);
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
            format!("/api/v1/fleet/hosts/identifier/{SERIAL}"),
            format!("/api/v1/fleet/hosts/{HOST_ID}")
        ]
    );
}

#[tokio::test]
async fn unknown_host_is_not_an_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404).set_body_json(fleet_error("Resource Not Found")))
        .mount(&server)
        .await;
    let h = harness(&server);
    assert_eq!(
        h.call("find_host", json!({"device": "NOPE123"}))
            .await
            .unwrap(),
        json!({"found": false})
    );
    assert_eq!(
        h.call("lock_host", json!({"device": "NOPE123"}))
            .await
            .unwrap(),
        json!({"found": false, "target": null, "already": false})
    );
    // A numeric id Fleet does not know falls back to the identifier route, then not found.
    assert_eq!(
        h.call("unlock_host", json!({"device": "77"}))
            .await
            .unwrap(),
        json!({"found": false, "target": null, "already": false})
    );
    assert_eq!(
        h.prior("lock_host", json!({"device": "NOPE123"}))
            .await
            .unwrap(),
        Some(json!({"found": false}))
    );
    assert_eq!(posts(&server).await, 0);
}

#[tokio::test]
async fn identifier_matching_another_field_is_rechecked() {
    let server = MockServer::start().await;
    // Fleet's identifier route also matches hostnames: a host whose serial, uuid and
    // hostname all differ from what we asked for is not ours.
    Mock::given(method("GET"))
        .and(path("/api/v1/fleet/hosts/identifier/C02OTHER"))
        .respond_with(ResponseTemplate::new(200).set_body_json(host("unlocked", "")))
        .mount(&server)
        .await;
    let h = harness(&server);
    assert_eq!(
        h.call("find_host", json!({"device": "C02OTHER"}))
            .await
            .unwrap(),
        json!({"found": false})
    );
}

#[tokio::test]
async fn lock_sends_the_documented_request_once() {
    let server = MockServer::start().await;
    identifier_mock(host("unlocked", "")).mount(&server).await;
    post_mock(
        "lock",
        ResponseTemplate::new(200).set_body_json(
            json!({"device_status": "unlocked", "pending_action": "lock", "unlock_pin": ""}),
        ),
    )
    .expect(1)
    .mount(&server)
    .await;
    let h = harness(&server);
    let prior = h
        .prior("lock_host", json!({"device": SERIAL}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(prior["already"], false);
    assert_eq!(prior["device_status"], "unlocked");
    let out = h
        .call("lock_host", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "target": "4242", "already": false,
               "device_status": "unlocked", "pending_action": "lock"})
    );
    let lock = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.method.as_str() == "POST")
        .unwrap();
    assert!(lock.body.is_empty(), "no body");
    assert_eq!(lock.url.query(), None, "no view_pin");
}

#[tokio::test]
async fn lock_accepts_204() {
    let server = MockServer::start().await;
    identifier_mock(host("unlocked", "")).mount(&server).await;
    post_mock("lock", ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let out = harness(&server)
        .call("lock_host", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(out["already"], false);
    assert_eq!(out["pending_action"], "lock");
}

#[tokio::test]
async fn already_locked_or_pending_sends_nothing() {
    for (status, pending) in [("locked", ""), ("unlocked", "lock")] {
        let server = MockServer::start().await;
        identifier_mock(host(status, pending)).mount(&server).await;
        let h = harness(&server);
        let prior = h
            .prior("lock_host", json!({"device": SERIAL}))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(prior["already"], true);
        let out = h
            .call("lock_host", json!({"device": SERIAL}))
            .await
            .unwrap();
        assert_eq!(out["already"], true, "{status}/{pending}");
        assert_eq!(out["target"], "4242");
        assert_eq!(posts(&server).await, 0);
    }
}

#[tokio::test]
async fn fleet_already_answers_are_already() {
    // The host read says unlocked, but another actor got there first.
    let cases = [
        ("lock", 409, "Host is already locked."),
        (
            "lock",
            422,
            "Host has pending lock request. The host will lock when it comes online.",
        ),
        ("unlock", 409, "Host is already unlocked."),
        ("unlock", 422, "Host has pending unlock request."),
    ];
    for (verb, status, message) in cases {
        let server = MockServer::start().await;
        let state = if verb == "lock" { "unlocked" } else { "locked" };
        identifier_mock(host(state, "")).mount(&server).await;
        post_mock(
            verb,
            ResponseTemplate::new(status).set_body_json(fleet_error(message)),
        )
        .expect(1)
        .mount(&server)
        .await;
        let out = harness(&server)
            .call(&format!("{verb}_host"), json!({"device": SERIAL}))
            .await
            .unwrap();
        assert_eq!(out["already"], true, "{verb} {status}");
        assert_eq!(out["target"], "4242");
    }
}

#[tokio::test]
async fn lock_while_a_wipe_is_pending_fails_naming_fleet_message() {
    let server = MockServer::start().await;
    identifier_mock(host("unlocked", "")).mount(&server).await;
    post_mock(
        "lock",
        ResponseTemplate::new(422).set_body_json(fleet_error(
            "Host has pending wipe request. The host will be wiped when it comes online.",
        )),
    )
    .mount(&server)
    .await;
    let err = harness(&server)
        .call("lock_host", json!({"device": SERIAL}))
        .await
        .unwrap_err();
    match &err {
        ConnectorError::Rejected {
            status: 422,
            message,
        } => {
            assert!(message.contains("pending wipe request"), "{message}");
            assert!(message.contains("u-123"), "{message}");
            assert!(
                message.contains("/api/v1/fleet/hosts/4242/lock"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn macos_unlock_returns_the_pin_as_a_secret_output() {
    let server = MockServer::start().await;
    identifier_mock(host("locked", "")).mount(&server).await;
    post_mock(
        "unlock",
        ResponseTemplate::new(200)
            .set_body_json(json!({"host_id": HOST_ID, "unlock_pin": "314159"})),
    )
    .expect(1)
    .mount(&server)
    .await;
    let h = harness(&server);
    let out = h
        .call("unlock_host", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(out["already"], false);
    assert_eq!(out["unlock_pin"], "314159");
    let decl = cordon_connectors::catalog::find_action("fleet.unlock_host")
        .unwrap()
        .1;
    assert_eq!(decl.secret_outputs, &["unlock_pin"]);
}

#[tokio::test]
async fn unlock_of_an_unlocked_host_sends_nothing() {
    let server = MockServer::start().await;
    identifier_mock(host("unlocked", "")).mount(&server).await;
    let h = harness(&server);
    let out = h
        .call("unlock_host", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(out["already"], true);
    assert_eq!(posts(&server).await, 0);
}

async fn lock_error(status: u16, headers: &[(&str, &str)]) -> ConnectorError {
    let server = MockServer::start().await;
    identifier_mock(host("unlocked", "")).mount(&server).await;
    let mut resp = ResponseTemplate::new(status).set_body_json(fleet_error(&format!(
        "failure {status}; saw Bearer {TOKEN}"
    )));
    for (n, v) in headers {
        resp = resp.insert_header(*n, *v);
    }
    post_mock("lock", resp).mount(&server).await;
    let err = harness(&server)
        .call("lock_host", json!({"device": SERIAL}))
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(TOKEN), "{text}");
    assert!(text.contains(&format!("failure {status}")), "{text}");
    assert!(text.contains("[REDACTED]"), "{text}");
    err
}

#[tokio::test]
async fn statuses_map_to_typed_errors_without_the_token() {
    assert!(matches!(
        lock_error(400, &[]).await,
        ConnectorError::Rejected { status: 400, .. }
    ));
    assert!(matches!(
        lock_error(401, &[]).await,
        ConnectorError::Auth { status: 401, .. }
    ));
    assert!(matches!(
        lock_error(403, &[]).await,
        ConnectorError::Auth { status: 403, .. }
    ));
    assert!(matches!(
        lock_error(500, &[]).await,
        ConnectorError::Transient { .. }
    ));
    assert!(matches!(
        lock_error(502, &[]).await,
        ConnectorError::Transient { .. }
    ));
    let err = lock_error(429, &[("retry-after", "17")]).await;
    assert!(matches!(err, ConnectorError::RateLimited { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(17)));
}

#[tokio::test]
async fn a_401_on_the_read_is_final() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(fleet_error("Authentication required")),
        )
        .mount(&server)
        .await;
    let err = harness(&server)
        .call("find_host", json!({"device": SERIAL}))
        .await
        .unwrap_err();
    match &err {
        ConnectorError::Auth {
            status: 401,
            message,
        } => {
            assert!(message.contains("Authentication required"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_slow_answer_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(host("unlocked", ""))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let h = harness_with_timeout(&server, Duration::from_millis(300));
    let err = h
        .call("lock_host", json!({"device": SERIAL}))
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
    assert_eq!(field(h.call("find_host", json!({})).await), "device");
    assert_eq!(
        field(h.call("lock_host", json!({"device": " "})).await),
        "device"
    );
    assert_eq!(
        field(h.call("lock_host", json!({"device": 5})).await),
        "device"
    );
    assert_eq!(field(h.call("find_host", json!("x")).await), "with");
    assert_eq!(
        field(
            h.call(
                "snapshot_software",
                json!({"device": SERIAL, "since": "yesterday"})
            )
            .await
        ),
        "since"
    );
    assert_eq!(
        field(
            h.call(
                "snapshot_software",
                json!({"device": SERIAL, "since": "2024-05-02T00:00:00Z", "until": "2024-05-01T00:00:00Z"})
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
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "fleet-prod": {"type": "fleet", "base_url": "https://fleet.example.com", "token": "s3cr3t-inline-value", "tokn": 1}
    }))
    .unwrap();
    let errs = match Registry::from_config(&config, dir.path(), &Redactor::new()) {
        Err(e) => e,
        Ok(_) => panic!("accepted bad settings"),
    };
    let text = errs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("tokn"), "{text}");
    assert!(text.contains("token"), "{text}");
    assert!(text.contains("inline secret refused"), "{text}");
    assert!(!text.contains("s3cr3t-inline-value"), "{text}");
}

fn item(i: usize) -> Value {
    let name = match i {
        7 => "AnyDesk.app".to_string(),
        1500 => "TeamViewer.app".to_string(),
        2499 => "RustDesk.app".to_string(),
        _ => format!("package-{i:05}"),
    };
    json!({"id": i, "name": name, "version": format!("1.{i}"), "source": "apps",
           "installed_paths": [format!("/Applications/{name} \"x\"")]})
}

const PAGES: usize = 13;

/// Mount the 13 software pages; page `fail_page` (1-based) answers 503 once first.
async fn mount_pages(server: &MockServer, fail_page: Option<usize>) {
    identifier_mock(host("unlocked", "")).mount(server).await;
    for n in 0..PAGES {
        let items: Vec<Value> = (n * 200..((n + 1) * 200).min(2500)).map(item).collect();
        let body = json!({"count": 2500, "software": items,
                          "meta": {"has_next_results": n + 1 < PAGES, "has_previous_results": n > 0}});
        let mock = Mock::given(method("GET"))
            .and(path(format!("/api/v1/fleet/hosts/{HOST_ID}/software")))
            .and(query_param("page", n.to_string().as_str()))
            .and(query_param("per_page", "200"))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .and(header("accept", "application/json"));
        if fail_page == Some(n + 1) {
            Mock::given(method("GET"))
                .and(path(format!("/api/v1/fleet/hosts/{HOST_ID}/software")))
                .and(query_param("page", n.to_string().as_str()))
                .respond_with(
                    ResponseTemplate::new(503).set_body_json(fleet_error("Service Unavailable")),
                )
                .up_to_n_times(1)
                .with_priority(1)
                .mount(server)
                .await;
        }
        mock.respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(server)
            .await;
    }
}

fn expected_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..2500 {
        out.extend_from_slice(serde_json::to_string(&item(i)).unwrap().as_bytes());
        out.push(b'\n');
    }
    out
}

#[tokio::test]
async fn snapshot_follows_every_page_in_order() {
    let server = MockServer::start().await;
    mount_pages(&server, None).await;
    let h = harness(&server);
    let out = h
        .call(
            "snapshot_software",
            json!({"device": SERIAL, "since": "2024-05-01T00:00:00Z"}),
        )
        .await
        .unwrap();
    let expected = expected_bytes();
    assert_eq!(out["records"], 2500);
    assert_eq!(out["pages"], 13);
    assert_eq!(out["bytes"], expected.len());
    assert_eq!(out["sha256"], hex::encode(Sha256::digest(&expected)));
    assert_eq!(out["evidence_id"], "01TEST");
    assert_eq!(out["target"], "4242");
    assert_eq!(
        out["remote_access_tools"],
        json!(["AnyDesk", "RustDesk", "TeamViewer"])
    );
    let finished = h.sink.finished.lock().unwrap();
    assert_eq!(finished.len(), 1);
    let (rec, data) = &finished[0];
    assert_eq!(data, &expected, "every item, in order, one JSON line each");
    assert_eq!(rec.meta.connector_type, "fleet");
    assert_eq!(rec.meta.instance, "fleet-prod");
    assert_eq!(rec.meta.extension, "jsonl");
    assert_eq!(rec.meta.source["device"], SERIAL);
    assert_eq!(rec.meta.source["host_id"], "4242");
    assert_eq!(rec.meta.source["since"], "2024-05-01T00:00:00Z");
    assert_eq!(
        rec.meta.source["endpoint"],
        "GET /api/v1/fleet/hosts/4242/software"
    );
    assert!(!serde_json::to_string(&rec.meta).unwrap().contains(TOKEN));
}

#[tokio::test]
async fn snapshot_resumes_from_the_failed_page() {
    let server = MockServer::start().await;
    mount_pages(&server, Some(3)).await;
    let h = harness(&server);
    let slot = ResumeSlot::default();
    let input = json!({"device": SERIAL});
    let err = h
        .call_with("snapshot_software", input.clone(), &slot)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Transient { .. }), "{err:?}");
    assert!(err.to_string().contains("Service Unavailable"), "{err}");
    let before = server.received_requests().await.unwrap().len();
    assert_eq!(
        before,
        1 + 3,
        "the host, pages 0 and 1, and the failed page 2"
    );
    let out = h
        .call_with("snapshot_software", input, &slot)
        .await
        .unwrap();
    let reqs = server.received_requests().await.unwrap();
    let again: Vec<String> = reqs[before..]
        .iter()
        .map(|r: &Request| r.url.query().unwrap_or("").to_string())
        .collect();
    assert_eq!(again.len(), 11, "pages 2 to 12 only: {again:?}");
    assert!(again[0].contains("page=2&"), "{again:?}");
    assert!(
        reqs[before..]
            .iter()
            .all(|r| r.url.path().ends_with("/software")),
        "no second host lookup"
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
}

#[tokio::test]
async fn snapshot_of_an_unknown_host_saves_nothing() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404).set_body_json(fleet_error("Resource Not Found")))
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call("snapshot_software", json!({"device": "NOPE"}))
        .await
        .unwrap();
    assert_eq!(out["found"], false);
    assert_eq!(out["records"], 0);
    assert_eq!(*h.sink.created.lock().unwrap(), 0);
}

#[tokio::test]
async fn against_the_sandbox() {
    let sandbox = Sandbox::seeded();
    let fleet = sandbox.fleet.clone();
    let server = sandbox.serve().await.unwrap();
    let h = harness_at(&format!("{}/fleet", server.base_url()), SANDBOX_TOKEN);
    let out = h
        .call("find_host", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(out["found"], true);
    assert_eq!(out["owner"], "j.smith@example.com");
    let id = out["id"].as_str().unwrap().to_string();
    assert_eq!(
        h.call("find_host", json!({"device": "C02NOSUCH"}))
            .await
            .unwrap(),
        json!({"found": false})
    );
    let breakglass = h
        .call("find_host", json!({"device": "C02BREAKGLASS"}))
        .await
        .unwrap();
    assert_eq!(breakglass["owner"], "admin@example.com");

    let snap = h
        .call("snapshot_software", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(snap["records"], 45);
    assert_eq!(snap["pages"], 1);
    assert_eq!(
        snap["remote_access_tools"],
        json!(["AnyDesk", "TeamViewer"])
    );

    let out = h
        .call("lock_host", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(out["already"], false);
    assert_eq!(fleet.device_status(SERIAL).as_deref(), Some("locked"));
    let out = h
        .call("lock_host", json!({"device": id.as_str()}))
        .await
        .unwrap();
    assert_eq!(out["already"], true);
    let out = h
        .call("unlock_host", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(out["already"], false);
    assert_eq!(out["unlock_pin"].as_str().map(str::len), Some(6));
    let out = h
        .call("unlock_host", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(out["already"], true);
    assert_eq!(
        fleet.calls(),
        vec![
            format!("POST /api/v1/fleet/hosts/{id}/lock"),
            format!("POST /api/v1/fleet/hosts/{id}/unlock"),
        ]
    );

    // Throttling comes back as RateLimited with Fleet's retry-after.
    fleet.throttle(1);
    let err = h
        .call("find_host", json!({"device": SERIAL}))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::RateLimited { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));

    // A wrong token is refused with Fleet's message.
    let bad = harness_at(&format!("{}/fleet", server.base_url()), "wrong-token");
    let err = bad
        .call("find_host", json!({"device": SERIAL}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectorError::Auth { status: 401, .. }),
        "{err:?}"
    );
    assert!(!format!("{err:?}").contains("wrong-token"));
}

#[tokio::test]
async fn sandbox_config_builds_a_fleet_instance() {
    let dir = tempfile::tempdir().unwrap();
    let config = Sandbox::connector_config("http://127.0.0.1:1", dir.path()).unwrap();
    assert_eq!(config["fleet-sandbox"]["type"], "fleet");
    let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
    assert!(registry.resolve("fleet", Some("fleet-sandbox")).is_ok());
}
