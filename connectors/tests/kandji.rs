//! The `kandji` connector against `wiremock`: exact lookup and lock requests, the partial
//! serial match re-checked, "already" answers, error mapping, a timeout, and no token in
//! any error.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cordon_connectors::evidence::EvidenceError;
use cordon_connectors::kandji::{KandjiConfig, KandjiConnector};
use cordon_connectors::registry::Registry;
use cordon_connectors::secret::{Redactor, SecretValue};
use cordon_connectors::{
    ActionCall, Connector, ConnectorError, EvidenceMeta, EvidenceSink, EvidenceWriter, RequestLog,
    ResumeSlot,
};
use serde_json::{json, Value};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "kandji-api-token-5e6f7a8b";
const SERIAL: &str = "C02DEMO0001";
const ID: &str = "1be9a4e6-5c3d-4b1a-9f0e-0a1b2c3d4e5f";

struct NoEvidence;

#[async_trait]
impl EvidenceSink for NoEvidence {
    async fn create(&self, _: EvidenceMeta) -> Result<Box<dyn EvidenceWriter>, EvidenceError> {
        Err(EvidenceError("kandji writes no evidence".into()))
    }
}

struct Harness {
    connector: Arc<dyn Connector>,
    log: RequestLog,
    resume: ResumeSlot,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn from_config(base_url: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let config: BTreeMap<String, Value> = serde_json::from_value(json!({
            "kj": {"type": "kandji", "base_url": base_url, "token": {"file": "token"}}
        }))
        .unwrap();
        let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
        Harness {
            connector: registry.resolve("kandji", Some("kj")).unwrap(),
            log: RequestLog::default(),
            resume: ResumeSlot::default(),
            _dir: dir,
        }
    }

    async fn call(&self, action: &str, input: Value) -> Result<Value, ConnectorError> {
        self.connector
            .call(ActionCall {
                action,
                input: &input,
                idempotency_key: "run1/lock/0",
                run_id: "run1",
                step_id: "lock",
                attempt: 1,
                evidence: &NoEvidence,
                requests: &self.log,
                resume: &self.resume,
                prior: None,
            })
            .await
    }

    async fn prior(&self, action: &str, input: Value) -> Option<Value> {
        self.connector
            .prior_state(ActionCall {
                action,
                input: &input,
                idempotency_key: "run1/lock/0",
                run_id: "run1",
                step_id: "lock",
                attempt: 1,
                evidence: &NoEvidence,
                requests: &self.log,
                resume: &self.resume,
                prior: None,
            })
            .await
            .unwrap()
    }
}

fn device(id: &str, serial: &str) -> Value {
    json!({"device_id": id, "serial_number": serial, "device_name": "jsmith-mbp",
           "platform": "Mac", "os_version": "14.5", "model": "MacBook Pro",
           "last_check_in": "2024-06-01T10:00:00Z",
           "user": {"email": "j.smith@example.com", "name": "John Smith"}})
}

async fn mount_lookup(server: &MockServer, body: Value) {
    Mock::given(method("GET"))
        .and(path("/api/v1/devices"))
        .and(query_param("serial_number", SERIAL))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("accept", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(server)
        .await;
}

fn assert_no_token(e: &ConnectorError) {
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains(TOKEN), "{text}");
    }
}

#[tokio::test]
async fn find_by_serial_keeps_only_the_exact_match() {
    let server = MockServer::start().await;
    mount_lookup(
        &server,
        json!([
            device("00000000-0000-4000-8000-000000000001", "C02DEMO00019"),
            device(ID, SERIAL)
        ]),
    )
    .await;
    let h = Harness::from_config(&server.uri());
    let out = h
        .call("find_device", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "id": ID, "serial": SERIAL, "name": "jsmith-mbp",
               "owner": "j.smith@example.com", "os": "Mac 14.5",
               "last_seen": "2024-06-01T10:00:00Z", "model": "MacBook Pro"})
    );
}

#[tokio::test]
async fn find_accepts_a_single_object_and_reports_unknown_devices() {
    let server = MockServer::start().await;
    mount_lookup(&server, device(ID, SERIAL)).await;
    let h = Harness::from_config(&server.uri());
    assert_eq!(
        h.call("find_device", json!({"device": SERIAL}))
            .await
            .unwrap()["id"],
        ID
    );

    let server = MockServer::start().await;
    mount_lookup(&server, json!([])).await;
    let h = Harness::from_config(&server.uri());
    assert_eq!(
        h.call("find_device", json!({"device": SERIAL}))
            .await
            .unwrap(),
        json!({"found": false})
    );
}

#[tokio::test]
async fn find_by_id_reads_the_device_and_404_is_not_found() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/api/v1/devices/{ID}")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(device(ID, SERIAL)))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/devices/00000000-0000-4000-8000-00000000dead"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"detail": "Not found."})))
        .mount(&server)
        .await;
    let h = Harness::from_config(&server.uri());
    assert_eq!(
        h.call("find_device", json!({"device": ID})).await.unwrap()["serial"],
        SERIAL
    );
    assert_eq!(
        h.call(
            "find_device",
            json!({"device": "00000000-0000-4000-8000-00000000dead"})
        )
        .await
        .unwrap(),
        json!({"found": false})
    );
}

#[tokio::test]
async fn lock_posts_the_documented_body_and_returns_the_pin() {
    let server = MockServer::start().await;
    mount_lookup(&server, json!([device(ID, SERIAL)])).await;
    Mock::given(method("POST"))
        .and(path(format!("/api/v1/devices/{ID}/action/lock")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(body_json(
            json!({"Message": "Call IT", "PhoneNumber": "+1 555 0100"}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"PIN": "496406"})))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server.uri());
    let prior = h
        .prior("lock_device", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(prior["already"], false);
    assert_eq!(prior["id"], ID);
    let out = h
        .call(
            "lock_device",
            json!({"device": SERIAL, "message": "Call IT", "phone_number": "+1 555 0100"}),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "target": ID, "already": false, "pin": "496406"})
    );
}

#[tokio::test]
async fn already_running_and_already_locked_are_already() {
    for (body, pin) in [
        (json!("Command already running"), Some("111222")),
        (json!({"detail": "This device is already locked."}), None),
    ] {
        let server = MockServer::start().await;
        mount_lookup(&server, json!([device(ID, SERIAL)])).await;
        Mock::given(method("POST"))
            .and(path(format!("/api/v1/devices/{ID}/action/lock")))
            .respond_with(ResponseTemplate::new(400).set_body_json(body))
            .expect(1)
            .mount(&server)
            .await;
        let reread = match pin {
            Some(p) => ResponseTemplate::new(200).set_body_json(json!({"pin": p})),
            None => ResponseTemplate::new(404),
        };
        Mock::given(method("GET"))
            .and(path(format!("/api/v1/devices/{ID}/secrets/unlockpin")))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .respond_with(reread)
            .mount(&server)
            .await;
        let h = Harness::from_config(&server.uri());
        let out = h
            .call("lock_device", json!({"device": SERIAL}))
            .await
            .unwrap();
        assert_eq!(out["already"], true);
        assert_eq!(out["target"], ID);
        assert_eq!(out.get("pin").and_then(Value::as_str), pin);
    }
}

#[tokio::test]
async fn lock_of_an_unknown_device_sends_nothing() {
    let server = MockServer::start().await;
    mount_lookup(&server, json!([])).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server.uri());
    assert_eq!(
        h.call("lock_device", json!({"device": SERIAL}))
            .await
            .unwrap(),
        json!({"found": false, "target": null, "already": false})
    );
    assert_eq!(
        h.prior("lock_device", json!({"device": SERIAL})).await,
        Some(json!({"found": false}))
    );
}

async fn lock_error(status: u16, body: Value, retry: Option<&str>) -> ConnectorError {
    let server = MockServer::start().await;
    mount_lookup(&server, json!([device(ID, SERIAL)])).await;
    let mut resp = ResponseTemplate::new(status).set_body_json(body);
    if let Some(r) = retry {
        resp = resp.insert_header("retry-after", r);
    }
    Mock::given(method("POST"))
        .and(path(format!("/api/v1/devices/{ID}/action/lock")))
        .respond_with(resp)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server.uri());
    let e = h
        .call("lock_device", json!({"device": SERIAL}))
        .await
        .unwrap_err();
    assert_no_token(&e);
    e
}

#[tokio::test]
async fn vendor_errors_map_to_typed_errors() {
    match lock_error(
        400,
        json!("Command is not allowed for current device"),
        None,
    )
    .await
    {
        ConnectorError::Rejected {
            status: 400,
            message,
        } => {
            assert!(
                message.contains("not allowed for current device"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    match lock_error(
        401,
        json!({"detail": format!("Invalid token {TOKEN}")}),
        None,
    )
    .await
    {
        ConnectorError::Auth {
            status: 401,
            message,
        } => {
            assert!(message.contains("Invalid token"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        lock_error(403, json!({"detail": "no permission"}), None).await,
        ConnectorError::Auth { status: 403, .. }
    ));
    assert!(matches!(
        lock_error(404, json!({"detail": "Not found."}), None).await,
        ConnectorError::Rejected { status: 404, .. }
    ));
    match lock_error(429, json!({"detail": "Request was throttled."}), Some("30")).await {
        ConnectorError::RateLimited { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::from_secs(30)))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        lock_error(503, json!({"detail": "unavailable"}), None).await,
        ConnectorError::Transient { .. }
    ));
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let c = KandjiConnector::new(
        KandjiConfig {
            instance: "kj".into(),
            base_url: server.uri().parse().unwrap(),
            token: SecretValue::new(TOKEN),
            timeout: Duration::from_millis(300),
        },
        Redactor::new(),
    )
    .unwrap();
    assert!(!format!("{c:?}").contains(TOKEN));
    let (log, resume) = (RequestLog::default(), ResumeSlot::default());
    let input = json!({"device": SERIAL});
    let e = c
        .call(ActionCall {
            action: "find_device",
            input: &input,
            idempotency_key: "k",
            run_id: "r",
            step_id: "s",
            attempt: 1,
            evidence: &NoEvidence,
            requests: &log,
            resume: &resume,
            prior: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Timeout(_)), "{e:?}");
}

#[tokio::test]
async fn bad_inputs_name_the_field() {
    let h = Harness::from_config("http://127.0.0.1:9");
    for input in [json!({}), json!({"device": "a b"}), json!({"device": 1})] {
        match h.call("find_device", input).await {
            Err(ConnectorError::InvalidInput { field, .. }) => assert_eq!(field, "device"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn drives_the_sandbox_end_to_end() {
    use cordon_connectors::sandbox::kandji::LockState;
    use cordon_connectors::sandbox::Sandbox;
    let sandbox = Sandbox::seeded();
    let server = sandbox.clone().serve().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Sandbox::connector_config(&server.base_url(), dir.path()).unwrap();
    let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
    let h = Harness {
        connector: registry.resolve("kandji", Some("kandji-sandbox")).unwrap(),
        log: RequestLog::default(),
        resume: ResumeSlot::default(),
        _dir: dir,
    };
    // The sandbox matches serials partially: C02DEMO000 alone matches two devices.
    assert_eq!(
        h.call("find_device", json!({"device": "C02DEMO000"}))
            .await
            .unwrap(),
        json!({"found": false})
    );
    let found = h
        .call("find_device", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap();
    assert_eq!(found["owner"], "j.smith@example.com");
    let id = found["id"].as_str().unwrap().to_string();
    assert_eq!(
        h.call("find_device", json!({"device": id})).await.unwrap()["serial"],
        "C02DEMO0001"
    );

    let first = h
        .call("lock_device", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap();
    assert_eq!(first["already"], false);
    let pin = first["pin"].as_str().unwrap().to_string();
    assert_eq!(
        sandbox.kandji.lock_state("C02DEMO0001"),
        Some((LockState::Pending, Some(pin.clone())))
    );
    // Pending, then locked: both `already`, and the PIN is read again.
    let again = h
        .call("lock_device", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap();
    assert_eq!(
        (again["already"].as_bool(), again["pin"].as_str()),
        (Some(true), Some(pin.as_str()))
    );
    sandbox.kandji.acknowledge_all();
    let locked = h
        .call("lock_device", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap();
    assert_eq!(locked["already"], true);
    assert_eq!(
        sandbox.kandji.lock_state("C02BREAKGLASS").map(|s| s.0),
        Some(LockState::Unlocked)
    );

    sandbox.kandji.throttle(1);
    let e = h
        .call("find_device", json!({"device": "C02DEMO0002"}))
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::RateLimited { .. }), "{e:?}");
}
