//! The `intune` connector against a `wiremock` Graph and token endpoint: exact requests,
//! the client-side serial re-check (Intune ignores unsupported filters), token refresh,
//! "already" from `deviceActionResults`, error mapping, redaction, settings, evidence,
//! and a run against the local sandbox.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cordon_connectors::intune::{IntuneConfig, IntuneConnector};
use cordon_connectors::registry::Registry;
use cordon_connectors::secret::{Redactor, SecretValue};
use cordon_connectors::{ActionCall, Connector, ConnectorError, RequestLog, ResumeSlot};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use url::Url;
use wiremock::matchers::{body_string, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT_ID: &str = "4a1aa1d5-c567-49d0-ad0b-cd957a47f842";
const SECRET: &str = "cs~Q8xS3cr3tV4lue.9f8e7d6c";
const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.access-1";
const TOKEN2: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.access-2";
const DEVICE_ID: &str = "0f3b6c1a-9d2e-4f5a-8b7c-6d5e4f3a2b1c";
const DEVICES: &str = "/v1.0/deviceManagement/managedDevices";

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
            "intune": {
                "type": "intune",
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
            connector: registry.resolve("intune", Some("intune")).unwrap(),
            sink: MemSink::default(),
            log: RequestLog::default(),
            resume: ResumeSlot::default(),
            _dir: dir,
        }
    }

    fn direct(server: &MockServer, timeout: Duration) -> Harness {
        let mut cfg =
            IntuneConfig::with_defaults("intune", TENANT, CLIENT_ID, SecretValue::new(SECRET))
                .unwrap();
        cfg.base_url = Url::parse(&server.uri()).unwrap();
        cfg.token_url =
            Url::parse(&format!("{}/{TENANT}/oauth2/v2.0/token", server.uri())).unwrap();
        cfg.timeout = timeout;
        Harness {
            connector: Arc::new(IntuneConnector::new(cfg, Redactor::new()).unwrap()),
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

fn device(id: &str, serial: &str, synced: &str, actions: Value) -> Value {
    json!({
        "id": id,
        "deviceName": format!("MAC-{serial}"),
        "serialNumber": serial,
        "userPrincipalName": "j.smith@example.com",
        "operatingSystem": "macOS",
        "osVersion": "14.5",
        "complianceState": "compliant",
        "managementState": "managed",
        "azureADDeviceId": "aad-1",
        "lastSyncDateTime": synced,
        "deviceActionResults": actions,
    })
}

async fn mount_serial(server: &MockServer, serial: &str, value: Value) {
    Mock::given(method("GET"))
        .and(path(DEVICES))
        .and(query_param(
            "$filter",
            format!("serialNumber eq '{serial}'"),
        ))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": value})))
        .mount(server)
        .await;
}

fn graph_error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "innerError": {
        "date": "2024-07-03T00:00:00", "request-id": "req-123", "client-request-id": "c-1"}}})
}

fn shown(e: &ConnectorError) -> String {
    format!("{e} | {e:?}")
}

fn assert_no_secrets(text: &str) {
    for s in [SECRET, TOKEN, TOKEN2, "access-1", "access-2"] {
        assert!(!text.contains(s), "leaked {s}: {text}");
    }
}

#[tokio::test]
async fn find_device_by_serial_sends_the_exact_request() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    mount_serial(
        &server,
        "C02DEMO0001",
        json!([device(
            DEVICE_ID,
            "C02DEMO0001",
            "2026-11-20T10:00:00Z",
            json!([])
        )]),
    )
    .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("find_device", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "id": DEVICE_ID, "serial": "C02DEMO0001", "name": "MAC-C02DEMO0001",
               "owner": "j.smith@example.com", "os": "macOS", "os_version": "14.5",
               "last_seen": "2026-11-20T10:00:00Z", "compliance_state": "compliant",
               "management_state": "managed", "azure_ad_device_id": "aad-1", "matches": 1})
    );
    // Spaces as %20 (never `+`); `url` escapes the quotes in special schemes' queries.
    let reqs = server.received_requests().await.unwrap();
    let get = reqs.iter().find(|r| r.url.path() == DEVICES).unwrap();
    assert_eq!(
        get.url.query(),
        Some("$filter=serialNumber%20eq%20%27C02DEMO0001%27")
    );
    let log = h.log.take();
    assert_eq!(log.len(), 2, "token + lookup: {log:?}");
    assert!(log.iter().all(|s| !s.path.contains('?')));
}

#[tokio::test]
async fn an_ignored_filter_returning_the_fleet_is_rechecked_across_pages() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    let next = format!("{}{DEVICES}?$skiptoken=page2", server.uri());
    Mock::given(method("GET"))
        .and(path(DEVICES))
        .and(query_param("$skiptoken", "page2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [
            device("11111111-2222-4333-8444-555555555555", "c02demo0001", "2026-11-01T00:00:00Z", json!([])),
            device("99999999-2222-4333-8444-555555555555", "OTHER", "2026-11-25T00:00:00Z", json!([])),
        ]})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(DEVICES))
        .and(query_param("$filter", "serialNumber eq 'C02DEMO0001'"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "value": [
                device("aaaaaaaa-2222-4333-8444-555555555555", "C02ZZZ", "2026-11-24T00:00:00Z", json!([])),
                device(DEVICE_ID, "C02DEMO0001", "2026-11-20T10:00:00Z", json!([])),
            ],
            "@odata.nextLink": next,
        })))
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("find_device", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap();
    assert_eq!(
        out["id"], DEVICE_ID,
        "the latest synced of the matching records"
    );
    assert_eq!(out["matches"], 2);
    let out = h
        .call("find_device", json!({"device": "C02NOPE"}))
        .await
        .unwrap();
    assert_eq!(out, json!({"found": false}));
}

#[tokio::test]
async fn find_by_id_reads_the_device_and_unknown_is_found_false() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    Mock::given(method("GET"))
        .and(path(format!("{DEVICES}/{DEVICE_ID}")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(device(
            DEVICE_ID,
            "C02DEMO0001",
            "2026-11-20T10:00:00Z",
            json!([]),
        )))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!(
            "{DEVICES}/00000000-0000-0000-0000-000000000000"
        )))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(graph_error("ResourceNotFound", "x")),
        )
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("find_device", json!({"device": DEVICE_ID}))
        .await
        .unwrap();
    assert_eq!(out["serial"], "C02DEMO0001");
    let unknown = json!({"device": "00000000-0000-0000-0000-000000000000"});
    assert_eq!(
        h.call("find_device", unknown.clone()).await.unwrap(),
        json!({"found": false})
    );
    assert_eq!(
        h.call("remote_lock", unknown.clone()).await.unwrap(),
        json!({"found": false, "target": null, "already": false})
    );
    assert_eq!(
        h.prior("retire", unknown).await.unwrap(),
        Some(json!({"found": false}))
    );
}

#[tokio::test]
async fn remote_lock_posts_without_a_body_and_reports_prior_state() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    mount_serial(
        &server,
        "C02DEMO0001",
        json!([device(DEVICE_ID, "C02DEMO0001", "2026-11-20T10:00:00Z",
            json!([{"actionName": "remoteLock", "actionState": "done", "startDateTime": "2026-01-01T00:00:00Z"}]))]),
    )
    .await;
    Mock::given(method("POST"))
        .and(path(format!("{DEVICES}/{DEVICE_ID}/remoteLock")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-length", "0"))
        .and(body_string(""))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let prior = h
        .prior("remote_lock", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        prior,
        json!({"found": true, "id": DEVICE_ID, "serial": "C02DEMO0001", "name": "MAC-C02DEMO0001",
               "management_state": "managed", "pending_actions": [], "already": false})
    );
    let out = h
        .call("remote_lock", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "target": DEVICE_ID, "already": false})
    );
    assert_eq!(
        h.prior("find_device", json!({"device": "x"}))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_pending_lock_or_retire_sends_nothing() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    let mut d = device(
        DEVICE_ID,
        "C02DEMO0001",
        "2026-11-20T10:00:00Z",
        json!([{"actionName": "remoteLock", "actionState": "pending"}]),
    );
    d["managementState"] = json!("retirePending");
    mount_serial(&server, "C02DEMO0001", json!([d])).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    for action in ["remote_lock", "retire"] {
        let out = h
            .call(action, json!({"device": "C02DEMO0001"}))
            .await
            .unwrap();
        assert_eq!(
            out,
            json!({"found": true, "target": DEVICE_ID, "already": true}),
            "{action}"
        );
        let prior = h
            .prior(action, json!({"device": "C02DEMO0001"}))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(prior["already"], true, "{action}");
    }
}

#[tokio::test]
async fn retire_posts_retire() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    mount_serial(
        &server,
        "C02DEMO0001",
        json!([device(
            DEVICE_ID,
            "C02DEMO0001",
            "2026-11-20T10:00:00Z",
            json!([])
        )]),
    )
    .await;
    Mock::given(method("POST"))
        .and(path(format!("{DEVICES}/{DEVICE_ID}/retire")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("retire", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap();
    assert_eq!(out["already"], false);
    assert_eq!(out["target"], DEVICE_ID);
}

#[tokio::test]
async fn a_revoked_token_is_refreshed_once() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, Some(1)).await;
    mount_token(&server, TOKEN2, None).await;
    Mock::given(method("GET"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(401).set_body_json(graph_error(
            "InvalidAuthenticationToken",
            "Access token has expired or is not yet valid.",
        )))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{DEVICES}/{DEVICE_ID}")))
        .and(header("authorization", format!("Bearer {TOKEN2}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(device(
            DEVICE_ID,
            "C02DEMO0001",
            "2026-11-20T10:00:00Z",
            json!([]),
        )))
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("find_device", json!({"device": DEVICE_ID}))
        .await
        .unwrap();
    assert_eq!(out["found"], true);
}

#[tokio::test]
async fn graph_errors_are_typed_named_and_redacted() {
    let cases: Vec<(u16, Value, Option<&str>)> = vec![
        (
            400,
            graph_error("BadRequest", "Invalid filter clause"),
            None,
        ),
        (
            401,
            graph_error(
                "InvalidAuthenticationToken",
                &format!("token {TOKEN} expired"),
            ),
            None,
        ),
        (
            403,
            graph_error(
                "Forbidden",
                "Application is not authorized to perform this operation.",
            ),
            None,
        ),
        (
            429,
            graph_error("TooManyRequests", "Too many requests"),
            Some("7"),
        ),
        (
            503,
            graph_error("ServiceUnavailable", "try later"),
            Some("3"),
        ),
    ];
    for (status, body, retry) in cases {
        let server = MockServer::start().await;
        mount_token(&server, TOKEN, None).await;
        let mut resp = ResponseTemplate::new(status).set_body_json(body);
        if let Some(r) = retry {
            resp = resp.insert_header("Retry-After", r);
        }
        Mock::given(method("GET"))
            .respond_with(resp)
            .mount(&server)
            .await;
        let h = Harness::from_config(&server);
        let e = h
            .call("find_device", json!({"device": "C02DEMO0001"}))
            .await
            .unwrap_err();
        let text = shown(&e);
        assert_no_secrets(&text);
        assert!(text.contains(&status.to_string()), "{text}");
        match status {
            400 => {
                assert!(
                    matches!(e, ConnectorError::Rejected { status: 400, .. }),
                    "{e:?}"
                );
                assert!(
                    text.contains("BadRequest: Invalid filter clause (request-id req-123)"),
                    "{text}"
                );
            }
            401 | 403 => assert!(matches!(e, ConnectorError::Auth { .. }), "{e:?}"),
            429 => {
                assert!(matches!(e, ConnectorError::RateLimited { .. }), "{e:?}");
                assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
            }
            _ => {
                assert!(matches!(e, ConnectorError::Transient { .. }), "{e:?}");
                assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
            }
        }
    }
}

#[tokio::test]
async fn a_lock_on_a_device_removed_meanwhile_is_not_found() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    mount_serial(
        &server,
        "C02DEMO0001",
        json!([device(
            DEVICE_ID,
            "C02DEMO0001",
            "2026-11-20T10:00:00Z",
            json!([])
        )]),
    )
    .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(graph_error("ResourceNotFound", "gone")),
        )
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("remote_lock", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": false, "target": null, "already": false})
    );
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"value": []}))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let h = Harness::direct(&server, Duration::from_millis(300));
    let e = h
        .call("find_device", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Timeout(_)), "{e:?}");
}

#[tokio::test]
async fn snapshot_device_writes_the_full_record_as_evidence() {
    let server = MockServer::start().await;
    mount_token(&server, TOKEN, None).await;
    mount_serial(
        &server,
        "C02DEMO0001",
        json!([device(
            DEVICE_ID,
            "C02DEMO0001",
            "2026-11-20T10:00:00Z",
            json!([])
        )]),
    )
    .await;
    let mut full = device(DEVICE_ID, "C02DEMO0001", "2026-11-20T10:00:00Z", json!([]));
    full["hardwareInformation"] = json!({"serialNumber": "C02DEMO0001", "wifiMac": "aa:bb"});
    Mock::given(method("GET"))
        .and(path(format!("{DEVICES}/{DEVICE_ID}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(full.clone()))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call(
            "snapshot_device",
            json!({"device": "C02DEMO0001", "since": "2026-11-01T00:00:00Z"}),
        )
        .await
        .unwrap();
    let artifacts = h.sink.finished.lock().unwrap().clone();
    assert_eq!(artifacts.len(), 1);
    let (rec, data) = &artifacts[0];
    let mut expected = serde_json::to_vec(&full).unwrap();
    expected.push(b'\n');
    assert_eq!(data, &expected);
    assert_eq!(out["sha256"], hex::encode(Sha256::digest(&expected)));
    assert_eq!(out["records"], 1);
    assert_eq!(out["bytes"], expected.len() as u64);
    assert_eq!(out["target"], DEVICE_ID);
    assert_eq!(
        rec.meta.source["endpoint"],
        format!("{DEVICES}/{DEVICE_ID}")
    );
    assert_no_secrets(&rec.meta.source.to_string());
    let e = h
        .call(
            "snapshot_device",
            json!({"device": "C02DEMO0001", "since": "last week"}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, ConnectorError::InvalidInput { ref field, .. } if field == "since"),
        "{e:?}"
    );
}

#[test]
fn settings_errors_name_the_setting_and_never_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "a": {"type": "intune", "client_id": "x", "client_secret": "inline-s3cr3t"},
        "b": {"type": "intune", "tenant_id": TENANT, "client_id": "x",
              "client_secret": {"env": "CORDON_TEST_UNSET_INTUNE"},
              "base_url": "http://graph.example.com", "token_ur": "https://x"},
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
        "connector `b`, setting `base_url`",
        "connector `b`, setting `token_ur`: unknown setting (hint: did you mean `token_url`?)",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert!(!all.contains("inline-s3cr3t"), "{all}");
    let cfg =
        IntuneConfig::with_defaults("intune", TENANT, CLIENT_ID, SecretValue::new(SECRET)).unwrap();
    let c = IntuneConnector::new(cfg, Redactor::new()).unwrap();
    assert_no_secrets(&format!("{c:?}"));
}

#[tokio::test]
async fn drives_the_sandbox_end_to_end() {
    use cordon_connectors::sandbox::intune::DEMO1_ID;
    use cordon_connectors::sandbox::Sandbox;
    let server = Sandbox::seeded().serve().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config =
        Sandbox::connector_config(&server.base_url(), &dir.path().join("secrets")).unwrap();
    let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
    let h = Harness {
        connector: registry.resolve("intune", Some("intune-sandbox")).unwrap(),
        sink: MemSink::default(),
        log: RequestLog::default(),
        resume: ResumeSlot::default(),
        _dir: dir,
    };
    let found = h
        .call("find_device", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap();
    assert_eq!(found["id"], DEMO1_ID);
    assert_eq!(found["owner"], "j.smith@example.com");
    assert_eq!(
        h.call("find_device", json!({"device": "C02NOPE"}))
            .await
            .unwrap(),
        json!({"found": false})
    );
    let prior = h
        .prior("remote_lock", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(prior["already"], false);
    let out = h
        .call("remote_lock", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "target": DEMO1_ID, "already": false})
    );
    let again = h
        .call("remote_lock", json!({"device": DEMO1_ID}))
        .await
        .unwrap();
    assert_eq!(again["already"], true, "the pending lock is not sent twice");
    let calls = server.sandbox.intune.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let snap = h
        .call("snapshot_device", json!({"device": "C02DEMO0002"}))
        .await
        .unwrap();
    assert_eq!(snap["records"], 1);
    server.sandbox.intune.throttle(1);
    let e = h
        .call("find_device", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::RateLimited { .. }), "{e:?}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    let retired = h
        .call("retire", json!({"device": "C02DEMO0002"}))
        .await
        .unwrap();
    assert_eq!(retired["already"], false);
    assert_eq!(
        server.sandbox.intune.device("C02DEMO0002").unwrap()["managementState"],
        "retirePending"
    );
}
