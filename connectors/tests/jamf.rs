//! The `jamf` connector against `wiremock`: the exact token, inventory and MDM command
//! requests, "already pending" locks, the stored PIN, error mapping, paging, resume after a
//! failed page, and that no secret leaks into errors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cordon_connectors::jamf::{JamfConfig, JamfConnector, SNAPSHOT_PAGE_SIZE};
use cordon_connectors::registry::Registry;
use cordon_connectors::secret::{Redactor, SecretValue};
use cordon_connectors::{ActionCall, Connector, ConnectorError, RequestLog, ResumeSlot};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wiremock::matchers::{body_json, body_string, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const CLIENT_ID: &str = "cordon-api-client";
const SECRET: &str = "jamf-secret-Zq81xx";
const TOKEN: &str = "jamf-access-token-77aa";
const SERIAL: &str = "C02DEMO0001";
const MID: &str = "aaaaaaaa-1111-2222-3333-444444444444";
const SERIAL_FILTER: &str = "hardware.serialNumber==\"C02DEMO0001\"";

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
    fn from_config(server: &MockServer) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
        let config: BTreeMap<String, Value> = serde_json::from_value(json!({
            "mdm": {
                "type": "jamf",
                "base_url": server.uri(),
                "client_id": CLIENT_ID,
                "client_secret": {"file": "secret"},
            }
        }))
        .unwrap();
        let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
        Harness {
            connector: registry.resolve("jamf", Some("mdm")).unwrap(),
            sink: MemSink::default(),
            log: RequestLog::default(),
            resume: ResumeSlot::default(),
            _dir: dir,
        }
    }

    fn direct(server: &MockServer, timeout: Duration) -> Harness {
        let cfg = JamfConfig {
            instance: "mdm".into(),
            base_url: server.uri().parse().unwrap(),
            client_id: CLIENT_ID.into(),
            client_secret: SecretValue::new(SECRET),
            timeout,
        };
        Harness {
            connector: Arc::new(JamfConnector::new(cfg, Redactor::new()).unwrap()),
            sink: MemSink::default(),
            log: RequestLog::default(),
            resume: ResumeSlot::default(),
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    fn call_with<'a>(
        &'a self,
        action: &'a str,
        input: &'a Value,
        prior: Option<&'a Value>,
    ) -> ActionCall<'a> {
        ActionCall {
            action,
            input,
            idempotency_key: "run1/lock/0",
            run_id: "run1",
            step_id: "lock",
            attempt: 1,
            evidence: &self.sink,
            requests: &self.log,
            resume: &self.resume,
            prior,
        }
    }

    async fn call(&self, action: &str, input: Value) -> Result<Value, ConnectorError> {
        self.connector
            .call(self.call_with(action, &input, None))
            .await
    }
}

async fn mount_token(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/api/oauth/token"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string(format!(
            "grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={SECRET}"
        )))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": TOKEN, "scope": "api-role:1", "token_type": "Bearer", "expires_in": 1199
        })))
        .mount(server)
        .await;
}

fn computer(id: &str, serial: &str) -> Value {
    json!({
        "id": id, "udid": format!("udid-{id}"),
        "general": {"name": format!("mac-{id}"), "managementId": MID, "lastContactTime": "2024-06-01T10:00:00Z"},
        "hardware": {"serialNumber": serial},
        "userAndLocation": {"username": "jsmith", "email": "j.smith@example.com"},
        "operatingSystem": {"name": "macOS", "version": "14.5"}
    })
}

async fn mount_find(server: &MockServer, results: Value) {
    Mock::given(method("GET"))
        .and(path("/api/v4/computers-inventory"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(query_param("filter", SERIAL_FILTER))
        .and(query_param("page", "0"))
        .and(query_param("page-size", "100"))
        .respond_with(move |req: &Request| {
            let sections: Vec<String> = req
                .url
                .query_pairs()
                .filter(|(k, _)| k == "section")
                .map(|(_, v)| v.into_owned())
                .collect();
            assert_eq!(
                sections,
                [
                    "GENERAL",
                    "HARDWARE",
                    "USER_AND_LOCATION",
                    "OPERATING_SYSTEM"
                ]
            );
            let n = results.as_array().map_or(0, Vec::len);
            ResponseTemplate::new(200).set_body_json(json!({"totalCount": n, "results": results}))
        })
        .mount(server)
        .await;
}

async fn mount_commands(server: &MockServer, commands: Value) {
    Mock::given(method("GET"))
        .and(path("/api/v2/mdm/commands"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(query_param(
            "filter",
            format!("clientManagementId=={MID};command==DEVICE_LOCK").as_str(),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(commands))
        .mount(server)
        .await;
}

fn assert_no_secret(e: &ConnectorError) {
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains(TOKEN), "{text}");
    }
}

#[tokio::test]
async fn find_computer_by_serial_sends_the_documented_requests() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_find(&server, json!([computer("17", SERIAL)])).await;
    let h = Harness::from_config(&server);
    let out = h
        .call("find_computer", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "id": "17", "serial": SERIAL, "name": "mac-17",
               "owner": "j.smith@example.com", "os": "macOS 14.5",
               "last_seen": "2024-06-01T10:00:00Z", "management_id": MID, "udid": "udid-17"})
    );
    let paths: Vec<_> = h.log.take().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/api/oauth/token", "/api/v4/computers-inventory"]);
}

#[tokio::test]
async fn find_computer_rechecks_the_serial_and_reports_unknown_devices() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    // A server that ignored the filter answers with the fleet: none of it is ours.
    mount_find(
        &server,
        json!([computer("1", "C02OTHER"), computer("2", "C02DEMO00011")]),
    )
    .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("find_computer", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(out, json!({"found": false}));
}

#[tokio::test]
async fn find_by_id_uses_the_id_filter_and_falls_back_to_v3_on_404() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    Mock::given(method("GET"))
        .and(path("/api/v4/computers-inventory"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v3/computers-inventory"))
        .and(query_param("filter", "id==\"42\""))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"totalCount": 1, "results": [computer("42", SERIAL)]})),
        )
        .expect(2)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    for _ in 0..2 {
        let out = h
            .call("find_computer", json!({"device": "42"}))
            .await
            .unwrap();
        assert_eq!(out["id"], "42");
    }
}

#[tokio::test]
async fn lock_sends_device_lock_with_the_stored_pin() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_find(&server, json!([computer("17", SERIAL)])).await;
    mount_commands(&server, json!([])).await;
    Mock::given(method("POST"))
        .and(path("/api/v2/mdm/commands"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(body_json(json!({
            "clientData": [{"managementId": MID}],
            "commandData": {"commandType": "DEVICE_LOCK", "pin": "482913", "message": "Call IT"}
        })))
        .respond_with(
            ResponseTemplate::new(201).set_body_json(
                json!([{"id": "cmd-1", "href": "https://x/api/v2/mdm/commands/cmd-1"}]),
            ),
        )
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let input = json!({"device": SERIAL, "message": "Call IT"});
    let prior = h
        .connector
        .prior_state(h.call_with("lock_computer", &input, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(prior["already"], false);
    assert_eq!(prior["id"], "17");
    let generated = prior["secret"]["pin"].as_str().unwrap();
    assert!(generated.len() == 6 && generated.chars().all(|c| c.is_ascii_digit()));
    // The engine hands back the stored prior state: its PIN is the one sent.
    let stored = json!({"found": true, "id": "17", "already": false, "secret": {"pin": "482913"}});
    let out = h
        .connector
        .call(h.call_with("lock_computer", &input, Some(&stored)))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "target": "17", "already": false, "management_id": MID,
               "command_id": "cmd-1", "pin": "482913"})
    );
}

#[tokio::test]
async fn a_pending_lock_is_already_and_nothing_is_sent() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_find(&server, json!([computer("17", SERIAL)])).await;
    mount_commands(
        &server,
        json!([{"uuid": "c1", "commandState": "ACKNOWLEDGED", "commandType": "DEVICE_LOCK"},
               {"uuid": "c2", "commandState": "PENDING", "commandType": "DEVICE_LOCK"}]),
    )
    .await;
    Mock::given(method("POST"))
        .and(path("/api/v2/mdm/commands"))
        .respond_with(ResponseTemplate::new(201))
        .expect(0)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let input = json!({"device": SERIAL});
    let prior = h
        .connector
        .prior_state(h.call_with("lock_computer", &input, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(prior["already"], true);
    let out = h
        .connector
        .call(h.call_with("lock_computer", &input, Some(&prior)))
        .await
        .unwrap();
    assert_eq!(out["already"], true);
    assert_eq!(out["target"], "17");
    // The pending lock was someone else's: its PIN is not ours to report.
    assert!(out.get("pin").is_none());
}

#[tokio::test]
async fn lock_of_an_unknown_device_is_not_found() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_find(&server, json!([])).await;
    let h = Harness::from_config(&server);
    let out = h
        .call("lock_computer", json!({"device": SERIAL}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": false, "target": null, "already": false})
    );
    let input = json!({"device": SERIAL});
    let prior = h
        .connector
        .prior_state(h.call_with("lock_computer", &input, None))
        .await
        .unwrap();
    assert_eq!(prior, Some(json!({"found": false})));
}

async fn error_for(status: u16, body: Value, extra: Option<(&str, &str)>) -> ConnectorError {
    let server = MockServer::start().await;
    mount_token(&server).await;
    let mut resp = ResponseTemplate::new(status).set_body_json(body);
    if let Some((k, v)) = extra {
        resp = resp.insert_header(k, v);
    }
    Mock::given(method("GET"))
        .and(path("/api/v4/computers-inventory"))
        .respond_with(resp)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let e = h
        .call("find_computer", json!({"device": SERIAL}))
        .await
        .unwrap_err();
    assert_no_secret(&e);
    e
}

#[tokio::test]
async fn vendor_errors_map_to_typed_errors_naming_jamf_codes() {
    let jamf = |code: &str, desc: &str| json!({"httpStatus": 400, "errors": [{"code": code, "field": "filter", "description": desc, "id": "0"}]});
    match error_for(400, jamf("INVALID_FIELD", "bad filter"), None).await {
        ConnectorError::Rejected {
            status: 400,
            message,
        } => {
            assert!(message.contains("INVALID_FIELD"), "{message}");
            assert!(message.contains("`filter`"), "{message}");
            assert!(message.contains("bad filter"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match error_for(403, jamf("PRIVILEGE", "missing privilege"), None).await {
        ConnectorError::Auth {
            status: 403,
            message,
        } => {
            assert!(message.contains("PRIVILEGE"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    match error_for(429, json!({}), Some(("retry-after", "7"))).await {
        ConnectorError::RateLimited { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        error_for(503, jamf("UNAVAILABLE", "down"), None).await,
        ConnectorError::Transient { .. }
    ));
}

#[tokio::test]
async fn a_401_refreshes_the_token_once_then_fails_as_auth() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/oauth/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": TOKEN, "token_type": "Bearer", "expires_in": 1199}),
        ))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/computers-inventory"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"httpStatus": 401, "errors": [{"code": "INVALID_TOKEN", "description": TOKEN}]}),
        ))
        .expect(2)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let e = h
        .call("find_computer", json!({"device": SERIAL}))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ConnectorError::Auth { status: 401, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("INVALID_TOKEN"));
    assert_no_secret(&e);
}

#[tokio::test]
async fn a_bad_client_secret_names_the_oauth_error_without_the_secret() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/oauth/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error": "invalid_client", "error_description": "Client authentication failed"}),
        ))
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let e = h
        .call("find_computer", json!({"device": SERIAL}))
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Auth { .. }), "{e:?}");
    assert!(e.to_string().contains("invalid_client"));
    assert_no_secret(&e);
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    Mock::given(method("GET"))
        .and(path("/api/v4/computers-inventory"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let h = Harness::direct(&server, Duration::from_millis(300));
    let e = h
        .call("find_computer", json!({"device": SERIAL}))
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Timeout(_)), "{e:?}");
}

/// Serves 2,500 inventory records over 13 pages of `SNAPSHOT_PAGE_SIZE`; page `fail_page`
/// answers 503 the first time it is asked for.
struct Pages {
    total: usize,
    fail_page: Option<u64>,
    failed: Mutex<bool>,
    asked: Mutex<Vec<u64>>,
}

impl Respond for Pages {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let q: BTreeMap<String, String> = req.url.query_pairs().into_owned().collect();
        let page: u64 = q["page"].parse().unwrap();
        let size: usize = q["page-size"].parse().unwrap();
        if size == 100 {
            // The resolving lookup.
            return ResponseTemplate::new(200)
                .set_body_json(json!({"totalCount": 1, "results": [computer("17", SERIAL)]}));
        }
        assert_eq!(q["filter"], "id==\"17\"");
        self.asked.lock().unwrap().push(page);
        if Some(page) == self.fail_page && !*self.failed.lock().unwrap() {
            *self.failed.lock().unwrap() = true;
            return ResponseTemplate::new(503);
        }
        let start = page as usize * size;
        let results: Vec<Value> = (start..(start + size).min(self.total))
            .map(|i| json!({"id": "17", "seq": i}))
            .collect();
        ResponseTemplate::new(200)
            .set_body_json(json!({"totalCount": self.total, "results": results}))
    }
}

fn expected_bytes(total: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..total {
        out.extend_from_slice(json!({"id": "17", "seq": i}).to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

#[tokio::test]
async fn snapshot_follows_every_page_in_order() {
    assert_eq!(SNAPSHOT_PAGE_SIZE, 200);
    let server = MockServer::start().await;
    mount_token(&server).await;
    let pages = Arc::new(Pages {
        total: 2500,
        fail_page: None,
        failed: Mutex::new(false),
        asked: Mutex::new(Vec::new()),
    });
    Mock::given(method("GET"))
        .and(path("/api/v4/computers-inventory"))
        .respond_with(SharedPages(pages.clone()))
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call(
            "snapshot_inventory",
            json!({"device": SERIAL, "since": "2024-01-01T00:00:00Z"}),
        )
        .await
        .unwrap();
    let data = expected_bytes(2500);
    assert_eq!(out["records"], 2500);
    assert_eq!(out["pages"], 13);
    assert_eq!(out["bytes"], data.len() as u64);
    assert_eq!(out["sha256"], hex::encode(Sha256::digest(&data)));
    assert_eq!(out["target"], "17");
    let finished = h.sink.finished.lock().unwrap();
    assert_eq!(finished[0].1, data);
    let source = &finished[0].0.meta.source;
    assert_eq!(source["endpoint"], "/api/v4/computers-inventory");
    assert_eq!(source["device"], SERIAL);
    assert!(!source.to_string().contains(TOKEN));
    assert_eq!(*pages.asked.lock().unwrap(), (0..13).collect::<Vec<u64>>());
}

struct SharedPages(Arc<Pages>);

impl Respond for SharedPages {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        self.0.respond(req)
    }
}

#[tokio::test]
async fn snapshot_resumes_from_the_failed_page() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    let pages = Arc::new(Pages {
        total: 2500,
        fail_page: Some(5),
        failed: Mutex::new(false),
        asked: Mutex::new(Vec::new()),
    });
    Mock::given(method("GET"))
        .and(path("/api/v4/computers-inventory"))
        .respond_with(SharedPages(pages.clone()))
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let input = json!({"device": SERIAL});
    let e = h
        .call("snapshot_inventory", input.clone())
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    let out = h.call("snapshot_inventory", input).await.unwrap();
    assert_eq!(out["records"], 2500);
    assert_eq!(out["pages"], 13);
    assert_eq!(
        out["sha256"],
        hex::encode(Sha256::digest(expected_bytes(2500)))
    );
    // One artifact, and the second attempt asked only for page 5 onward.
    assert_eq!(*h.sink.created.lock().unwrap(), 1);
    let asked = pages.asked.lock().unwrap().clone();
    assert_eq!(asked[..6], [0, 1, 2, 3, 4, 5]);
    assert_eq!(asked[6..], (5..13).collect::<Vec<u64>>()[..]);
}

#[tokio::test]
async fn snapshot_rejects_bad_times_naming_the_field() {
    let server = MockServer::start().await;
    let h = Harness::from_config(&server);
    match h
        .call(
            "snapshot_inventory",
            json!({"device": SERIAL, "until": "tomorrow"}),
        )
        .await
    {
        Err(ConnectorError::InvalidInput { field, .. }) => assert_eq!(field, "until"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn settings_are_checked_and_debug_hides_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "a": {"type": "jamf", "client_id": "x", "client_secret": "inline", "token": "t"},
    }))
    .unwrap();
    let errs = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap_err();
    let all = errs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(all.contains("`base_url`"), "{all}");
    assert!(all.contains("`client_secret`"), "{all}");
    assert!(all.contains("`token`"), "{all}");
    let server = MockServer::start().await;
    let c = JamfConnector::new(
        JamfConfig {
            instance: "mdm".into(),
            base_url: server.uri().parse().unwrap(),
            client_id: CLIENT_ID.into(),
            client_secret: SecretValue::new(SECRET),
            timeout: Duration::from_secs(5),
        },
        Redactor::new(),
    )
    .unwrap();
    let text = format!("{c:?}");
    assert!(!text.contains(SECRET), "{text}");
}

#[tokio::test]
async fn drives_the_sandbox_end_to_end() {
    use cordon_connectors::sandbox::Sandbox;
    let sandbox = Sandbox::seeded();
    let server = sandbox.clone().serve().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Sandbox::connector_config(&server.base_url(), dir.path()).unwrap();
    let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
    let h = Harness {
        connector: registry.resolve("jamf", Some("jamf-sandbox")).unwrap(),
        sink: MemSink::default(),
        log: RequestLog::default(),
        resume: ResumeSlot::default(),
        _dir: dir,
    };
    let out = h
        .call("find_computer", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap();
    assert_eq!(out["found"], true);
    assert_eq!(out["owner"], "j.smith@example.com");
    assert_eq!(out["os"], "macOS 14.5");
    let id = out["id"].as_str().unwrap().to_string();
    let by_id = h
        .call("find_computer", json!({"device": id}))
        .await
        .unwrap();
    assert_eq!(by_id["serial"], "C02DEMO0001");
    assert_eq!(
        h.call("find_computer", json!({"device": "C02NOPE"}))
            .await
            .unwrap(),
        json!({"found": false})
    );

    // Lock: prior state generates the PIN; the call sends it; a repeat is `already`.
    let input = json!({"device": "C02DEMO0001"});
    let prior = h
        .connector
        .prior_state(h.call_with("lock_computer", &input, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(prior["already"], false);
    let pin = prior["secret"]["pin"].as_str().unwrap().to_string();
    let out = h
        .connector
        .call(h.call_with("lock_computer", &input, Some(&prior)))
        .await
        .unwrap();
    assert_eq!(
        (out["already"].as_bool(), out["pin"].as_str()),
        (Some(false), Some(pin.as_str()))
    );
    let again = h
        .connector
        .call(h.call_with("lock_computer", &input, Some(&prior)))
        .await
        .unwrap();
    assert_eq!(again["already"], true);
    assert_eq!(again["pin"], pin.as_str(), "the lock pending is ours");
    let commands = sandbox.jamf.commands_for("C02DEMO0001");
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].pin.as_deref(), Some(pin.as_str()));
    assert!(sandbox.jamf.commands_for("C02BREAKGLASS").is_empty());

    // Throttling is RateLimited; the snapshot then completes.
    sandbox.jamf.throttle(1);
    let e = h
        .call("snapshot_inventory", json!({"device": "C02DEMO0002"}))
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::RateLimited { .. }), "{e:?}");
    let snap = h
        .call("snapshot_inventory", json!({"device": "C02DEMO0002"}))
        .await
        .unwrap();
    assert_eq!(
        (snap["records"].as_u64(), snap["pages"].as_u64()),
        (Some(1), Some(1))
    );
    let finished = h.sink.finished.lock().unwrap();
    let line: Value = serde_json::from_slice(finished[0].1.trim_ascii_end()).unwrap();
    assert_eq!(line["hardware"]["serialNumber"], "C02DEMO0002");
}
