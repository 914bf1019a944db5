//! The `defender` connector against a `wiremock` Defender API and token endpoint: exact
//! requests, machine actions read before isolate/release (never a second isolate), the
//! "already in progress" answer, the investigation package as evidence without its SAS
//! token, error mapping, redaction, settings, and a run against the local sandbox.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cordon_connectors::defender::{DefenderConfig, DefenderConnector};
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
const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.mde-access-1";
const MACHINE: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
const HOST: &str = "jsmith-laptop.contoso.com";
const SIG: &str = "sIgNaTuRe%2BsEcReT%3D";
const COMMENT: &str = "Cordon run run1 step step-a";
mod support;
use support::MemSink;

struct Harness {
    connector: Arc<dyn Connector>,
    sink: MemSink,
    log: RequestLog,
    resume: ResumeSlot,
    redactor: Redactor,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn from_config(server: &MockServer) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        let config: BTreeMap<String, Value> = serde_json::from_value(json!({
            "mde": {
                "type": "defender",
                "tenant_id": TENANT,
                "client_id": CLIENT_ID,
                "client_secret": {"file": "secret"},
                "base_url": server.uri(),
                "token_url": format!("{}/{{tenant_id}}/oauth2/v2.0/token", server.uri()),
            }
        }))
        .unwrap();
        let redactor = Redactor::new();
        let registry = Registry::from_config(&config, dir.path(), &redactor).unwrap();
        Harness {
            connector: registry.resolve("defender", Some("mde")).unwrap(),
            sink: MemSink::default(),
            log: RequestLog::default(),
            resume: ResumeSlot::default(),
            redactor,
            _dir: dir,
        }
    }

    fn direct(server: &MockServer, timeout: Duration) -> Harness {
        let mut cfg =
            DefenderConfig::with_defaults("mde", TENANT, CLIENT_ID, SecretValue::new(SECRET))
                .unwrap();
        cfg.base_url = Url::parse(&server.uri()).unwrap();
        cfg.token_url =
            Url::parse(&format!("{}/{TENANT}/oauth2/v2.0/token", server.uri())).unwrap();
        cfg.timeout = timeout;
        let redactor = Redactor::new();
        Harness {
            connector: Arc::new(DefenderConnector::new(cfg, redactor.clone()).unwrap()),
            sink: MemSink::default(),
            log: RequestLog::default(),
            resume: ResumeSlot::default(),
            redactor,
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

async fn mount_token(server: &MockServer) {
    let form = format!(
        "grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={}&scope=https%3A%2F%2Fapi.securitycenter.microsoft.com%2F.default",
        SECRET.replace('~', "%7E")
    );
    Mock::given(method("POST"))
        .and(path(format!("/{TENANT}/oauth2/v2.0/token")))
        .and(body_string(form))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_type": "Bearer", "expires_in": 3599, "access_token": TOKEN
        })))
        .mount(server)
        .await;
}

fn machine() -> Value {
    json!({
        "id": MACHINE, "computerDnsName": HOST, "osPlatform": "Windows11", "osVersion": "10.0.22631",
        "lastSeen": "2026-11-25T10:00:00Z", "healthStatus": "Active", "riskScore": "High",
        "exposureLevel": "Medium", "aadDeviceId": "80fe8ff8-2624-418e-9591-41f0491218f9",
    })
}

async fn mount_machine(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/api/machines"))
        .and(query_param(
            "$filter",
            format!("computerDnsName eq '{HOST}'"),
        ))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [machine()]})))
        .mount(server)
        .await;
}

fn action(id: &str, ty: &str, status: &str, at: &str, comment: &str) -> Value {
    json!({"id": id, "type": ty, "status": status, "machineId": MACHINE,
           "computerDnsName": HOST, "requestor": "app", "requestorComment": comment,
           "creationDateTimeUtc": at, "lastUpdateDateTimeUtc": at})
}

async fn mount_actions(server: &MockServer, actions: Value) {
    Mock::given(method("GET"))
        .and(path("/api/machineactions"))
        .and(query_param("$filter", format!("machineId eq '{MACHINE}'")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": actions})))
        .mount(server)
        .await;
}

fn mde_error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "target": "43f4cb08-8fac-4b65-9db1-745c2ae65f3a"}})
}

fn assert_no_secrets(text: &str) {
    for s in [SECRET, TOKEN, "mde-access-1", SIG, "sIgNaTuRe"] {
        assert!(!text.contains(s), "leaked {s}: {text}");
    }
}

#[tokio::test]
async fn find_machine_by_dns_name_sends_the_exact_requests() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_machine(&server).await;
    mount_actions(
        &server,
        json!([action(
            "a1",
            "Isolate",
            "Succeeded",
            "2026-11-20T00:00:00Z",
            "x"
        )]),
    )
    .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("find_machine", json!({"device": HOST}))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "id": MACHINE, "serial": null, "name": HOST, "owner": null,
               "os": "Windows11", "os_version": "10.0.22631", "last_seen": "2026-11-25T10:00:00Z",
               "health_status": "Active", "risk_score": "High", "exposure_level": "Medium",
               "aad_device_id": "80fe8ff8-2624-418e-9591-41f0491218f9", "isolated": true})
    );
    let log = h.log.take();
    assert_eq!(log.len(), 3, "token, machines, machineactions: {log:?}");
}

#[tokio::test]
async fn unknown_machines_are_found_false() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    Mock::given(method("GET"))
        .and(path("/api/machines"))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(mde_error("ResourceNotFound", "No recent machines")),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/api/machines/{MACHINE}")))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(mde_error("ResourceNotFound", "Machine not found")),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .expect(0)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    assert_eq!(
        h.call("find_machine", json!({"device": "nobody.contoso.com"}))
            .await
            .unwrap(),
        json!({"found": false})
    );
    assert_eq!(
        h.call("isolate_machine", json!({"device": MACHINE}))
            .await
            .unwrap(),
        json!({"found": false, "target": null, "already": false})
    );
    assert_eq!(
        h.prior("release_machine", json!({"device": MACHINE}))
            .await
            .unwrap(),
        Some(json!({"found": false}))
    );
}

#[tokio::test]
async fn isolate_reads_actions_first_then_posts_the_documented_body() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_machine(&server).await;
    mount_actions(
        &server,
        json!([
            action("a1", "Isolate", "Succeeded", "2026-11-01T00:00:00Z", "old"),
            action(
                "a2",
                "Unisolate",
                "Succeeded",
                "2026-11-02T00:00:00Z",
                "old"
            ),
        ]),
    )
    .await;
    Mock::given(method("POST"))
        .and(path(format!("/api/machines/{MACHINE}/isolate")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-type", "application/json"))
        .and(body_json(
            json!({"Comment": COMMENT, "IsolationType": "Selective"}),
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(action(
            "a3",
            "Isolate",
            "Pending",
            "2026-11-25T00:00:00Z",
            COMMENT,
        )))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let prior = h
        .prior("isolate_machine", json!({"device": HOST}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(prior["isolated"], false);
    assert_eq!(prior["already"], false);
    assert_eq!(prior["latest_action"]["type"], "Unisolate");
    let out = h
        .call(
            "isolate_machine",
            json!({"device": HOST, "isolation_type": "Selective"}),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "target": MACHINE, "already": false, "action_id": "a3", "status": "Pending"})
    );
}

#[tokio::test]
async fn never_a_second_isolate_while_one_is_pending_or_done() {
    for status in ["Pending", "InProgress", "Succeeded"] {
        let server = MockServer::start().await;
        mount_token(&server).await;
        mount_machine(&server).await;
        mount_actions(
            &server,
            json!([
                action(
                    "a1",
                    "Unisolate",
                    "Succeeded",
                    "2026-11-01T00:00:00Z",
                    "old"
                ),
                action("a2", "Isolate", status, "2026-11-24T00:00:00Z", "other run"),
            ]),
        )
        .await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(201))
            .expect(0)
            .mount(&server)
            .await;
        let h = Harness::from_config(&server);
        let out = h
            .call("isolate_machine", json!({"device": HOST}))
            .await
            .unwrap();
        assert_eq!(
            out,
            json!({"found": true, "target": MACHINE, "already": true, "action_id": "a2", "status": status}),
            "{status}"
        );
        let prior = h
            .prior("isolate_machine", json!({"device": HOST}))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(prior["already"], true);
    }
}

#[tokio::test]
async fn already_in_progress_is_already_only_for_the_same_action() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_machine(&server).await;
    // The first read shows nothing; Defender then says an action is in progress, and the
    // re-read shows our kind pending.
    Mock::given(method("GET"))
        .and(path("/api/machineactions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": []})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    mount_actions(
        &server,
        json!([action(
            "a9",
            "Isolate",
            "Pending",
            "2026-11-25T00:00:00Z",
            "someone"
        )]),
    )
    .await;
    Mock::given(method("POST"))
        .and(path(format!("/api/machines/{MACHINE}/isolate")))
        .respond_with(ResponseTemplate::new(400).set_body_json(mde_error(
            "ActiveRequestAlreadyExists",
            "Action is already in progress",
        )))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("isolate_machine", json!({"device": HOST}))
        .await
        .unwrap();
    assert_eq!(out["already"], true);
    assert_eq!(out["action_id"], "a9");

    // A release refused because an isolate is in progress is a failure, not "already".
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_machine(&server).await;
    mount_actions(
        &server,
        json!([
            action("a1", "Isolate", "Succeeded", "2026-11-01T00:00:00Z", "x"),
            action(
                "c1",
                "CollectInvestigationPackage",
                "Pending",
                "2026-11-25T00:00:00Z",
                "x"
            )
        ]),
    )
    .await;
    Mock::given(method("POST"))
        .and(path(format!("/api/machines/{MACHINE}/unisolate")))
        .and(body_json(json!({"Comment": COMMENT})))
        .respond_with(ResponseTemplate::new(400).set_body_json(mde_error(
            "ActiveRequestAlreadyExists",
            "Action is already in progress",
        )))
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let e = h
        .call("release_machine", json!({"device": HOST}))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ConnectorError::Rejected { status: 400, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("ActiveRequestAlreadyExists"), "{e}");
}

#[tokio::test]
async fn release_posts_unisolate_only_when_isolated() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_machine(&server).await;
    mount_actions(
        &server,
        json!([action(
            "a1",
            "Isolate",
            "Succeeded",
            "2026-11-01T00:00:00Z",
            "x"
        )]),
    )
    .await;
    Mock::given(method("POST"))
        .and(path(format!("/api/machines/{MACHINE}/unisolate")))
        .and(body_json(json!({"Comment": COMMENT})))
        .respond_with(ResponseTemplate::new(201).set_body_json(action(
            "a2",
            "Unisolate",
            "Pending",
            "2026-11-25T00:00:00Z",
            COMMENT,
        )))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("release_machine", json!({"device": HOST}))
        .await
        .unwrap();
    assert_eq!(out["already"], false);
    assert_eq!(out["action_id"], "a2");

    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_machine(&server).await;
    mount_actions(&server, json!([])).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .expect(0)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("release_machine", json!({"device": HOST}))
        .await
        .unwrap();
    assert_eq!(out["already"], true, "never isolated: nothing to release");
}

#[tokio::test]
async fn collect_records_the_action_and_the_link_metadata_without_its_token() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_machine(&server).await;
    // An earlier attempt of this step already started a collection, which has finished.
    mount_actions(
        &server,
        json!([action(
            "c7",
            "CollectInvestigationPackage",
            "Succeeded",
            "2026-11-25T00:00:00Z",
            COMMENT
        )]),
    )
    .await;
    let sas = format!(
        "https://userrequests-us.securitycenter.windows.com:443/safedownload/WDATP_Investigation_Package.zip?token=abc&se=2026-11-25T01%3A00%3A00Z&sp=r&sv=2019-02-02&sig={SIG}"
    );
    Mock::given(method("GET"))
        .and(path("/api/machineactions/c7/getPackageUri"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "@odata.context": "https://api.security.microsoft.com/api/$metadata#Edm.String",
            "value": sas,
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .expect(0)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("collect_investigation_package", json!({"device": HOST}))
        .await
        .unwrap();
    assert_eq!(out["already"], true);
    assert_eq!(out["package_ready"], true);
    assert_eq!(out["records"], 1);
    let artifacts = h.sink.finished.lock().unwrap().clone();
    let (rec, data) = &artifacts[0];
    assert_eq!(out["sha256"], hex::encode(Sha256::digest(data)));
    let line: Value = serde_json::from_slice(data).unwrap();
    assert_eq!(line["machine_action"]["id"], "c7");
    assert_eq!(
        line["package"]["host"],
        "userrequests-us.securitycenter.windows.com"
    );
    assert_eq!(line["package"]["expires"], "2026-11-25T01:00:00Z");
    assert_eq!(line["package"]["permissions"], "r");
    let everything = format!(
        "{} {} {:?} {}",
        String::from_utf8_lossy(data),
        out,
        h.log.take(),
        rec.meta.source
    );
    assert_no_secrets(&everything);
    assert!(!everything.contains("token=abc"), "{everything}");
    // The link is registered with the redactor: it is scrubbed wherever it turns up.
    assert!(!h.redactor.redact_str(&sas).contains(SIG));
}

#[tokio::test]
async fn collect_posts_when_none_is_running_and_records_the_pending_action() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    // A machine id is read by id, not through the name filter.
    Mock::given(method("GET"))
        .and(path(format!("/api/machines/{MACHINE}")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(machine()))
        .expect(1)
        .mount(&server)
        .await;
    mount_actions(&server, json!([])).await;
    Mock::given(method("POST"))
        .and(path(format!(
            "/api/machines/{MACHINE}/collectInvestigationPackage"
        )))
        .and(body_json(json!({"Comment": COMMENT})))
        .respond_with(ResponseTemplate::new(201).set_body_json(action(
            "c1",
            "CollectInvestigationPackage",
            "Pending",
            "2026-11-25T00:00:00Z",
            COMMENT,
        )))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("collect_investigation_package", json!({"device": MACHINE}))
        .await
        .unwrap();
    assert_eq!(out["target"], MACHINE);
    assert_eq!(out["already"], false);
    assert_eq!(out["status"], "Pending");
    assert_eq!(out["package_ready"], false);
}

#[tokio::test]
async fn errors_are_typed_named_and_redacted() {
    let cases: Vec<(u16, Value, Option<&str>)> = vec![
        (
            400,
            mde_error("InvalidRequestBody", "Request body is incorrect"),
            None,
        ),
        (
            401,
            mde_error("Unauthorized", &format!("token {TOKEN} rejected")),
            None,
        ),
        (
            403,
            mde_error(
                "Forbidden",
                "Missing application permission Machine.Isolate",
            ),
            None,
        ),
        (
            429,
            mde_error("TooManyRequests", "Rate limit is exceeded."),
            Some("12"),
        ),
        (500, mde_error("InternalServerError", "oops"), None),
    ];
    for (status, body, retry) in cases {
        let server = MockServer::start().await;
        mount_token(&server).await;
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
            .call("find_machine", json!({"device": HOST}))
            .await
            .unwrap_err();
        let text = format!("{e} | {e:?}");
        assert_no_secrets(&text);
        match status {
            400 => {
                assert!(
                    matches!(e, ConnectorError::Rejected { status: 400, .. }),
                    "{e:?}"
                );
                assert!(
                    text.contains(
                        "InvalidRequestBody: Request body is incorrect (correlation id 43f4cb08"
                    ),
                    "{text}"
                );
            }
            401 | 403 => assert!(matches!(e, ConnectorError::Auth { .. }), "{e:?}"),
            429 => assert_eq!(e.retry_after(), Some(Duration::from_secs(12)), "{e:?}"),
            _ => assert!(matches!(e, ConnectorError::Transient { .. }), "{e:?}"),
        }
    }
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout_and_bad_inputs_name_the_field() {
    let server = MockServer::start().await;
    mount_token(&server).await;
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
        .call("find_machine", json!({"device": HOST}))
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Timeout(_)), "{e:?}");
    let e = h
        .call(
            "isolate_machine",
            json!({"device": HOST, "isolation_type": "Partial"}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, ConnectorError::InvalidInput { ref field, .. } if field == "isolation_type"),
        "{e:?}"
    );
    let e = h.call("find_machine", json!({})).await.unwrap_err();
    assert!(
        matches!(e, ConnectorError::InvalidInput { ref field, .. } if field == "device"),
        "{e:?}"
    );
}

#[test]
fn settings_errors_name_the_setting_and_debug_holds_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "a": {"type": "defender", "client_id": "x", "client_secret": "inline-s3cr3t"},
        "b": {"type": "defender", "tenant_id": TENANT, "client_id": "x",
              "client_secret": {"env": "CORDON_TEST_UNSET_MDE"}, "base_url": "http://api.example.com",
              "scope": "x"},
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
        "connector `b`, setting `scope`: unknown setting",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert!(!all.contains("inline-s3cr3t"), "{all}");
    let cfg =
        DefenderConfig::with_defaults("mde", TENANT, CLIENT_ID, SecretValue::new(SECRET)).unwrap();
    assert_eq!(cfg.base_url.as_str(), "https://api.security.microsoft.com/");
    let c = DefenderConnector::new(cfg, Redactor::new()).unwrap();
    assert_no_secrets(&format!("{c:?}"));
}

#[tokio::test]
async fn drives_the_sandbox_end_to_end() {
    use cordon_connectors::sandbox::defender::DEMO1_MACHINE_ID;
    use cordon_connectors::sandbox::Sandbox;
    let server = Sandbox::seeded().serve().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config =
        Sandbox::connector_config(&server.base_url(), &dir.path().join("secrets")).unwrap();
    let redactor = Redactor::new();
    let registry = Registry::from_config(&config, dir.path(), &redactor).unwrap();
    let h = Harness {
        connector: registry
            .resolve("defender", Some("defender-sandbox"))
            .unwrap(),
        sink: MemSink::default(),
        log: RequestLog::default(),
        resume: ResumeSlot::default(),
        redactor,
        _dir: dir,
    };
    let found = h
        .call("find_machine", json!({"device": "C02DEMO0001"}))
        .await
        .unwrap();
    assert_eq!(found["id"], DEMO1_MACHINE_ID);
    assert_eq!(found["isolated"], false);
    assert_eq!(
        h.call("find_machine", json!({"device": "nope.example.com"}))
            .await
            .unwrap(),
        json!({"found": false})
    );
    let out = h
        .call("isolate_machine", json!({"device": "c02demo0001"}))
        .await
        .unwrap();
    assert_eq!(out["already"], false);
    assert_eq!(out["status"], "Pending");
    let again = h
        .call("isolate_machine", json!({"device": DEMO1_MACHINE_ID}))
        .await
        .unwrap();
    assert_eq!(again["already"], true, "{again}");
    let released = h
        .call("release_machine", json!({"device": DEMO1_MACHINE_ID}))
        .await
        .unwrap();
    assert_eq!(released["already"], false);
    let calls = server.sandbox.defender.calls();
    assert_eq!(
        calls,
        vec![
            format!("POST /api/machines/{DEMO1_MACHINE_ID}/isolate"),
            format!("POST /api/machines/{DEMO1_MACHINE_ID}/unisolate"),
        ]
    );
    // The first call starts the collection; the next finds it still pending (the sandbox
    // reports a new action as pending once); the third finds it done and records the
    // package link's metadata. Only one collection is ever requested.
    let first = h
        .call(
            "collect_investigation_package",
            json!({"device": "c02demo0002"}),
        )
        .await
        .unwrap();
    assert_eq!(first["package_ready"], false);
    let second = h
        .call(
            "collect_investigation_package",
            json!({"device": "c02demo0002"}),
        )
        .await
        .unwrap();
    assert_eq!(second["already"], true);
    assert_eq!(second["package_ready"], false, "{second}");
    let third = h
        .call(
            "collect_investigation_package",
            json!({"device": "c02demo0002"}),
        )
        .await
        .unwrap();
    assert_eq!(third["package_ready"], true, "{third}");
    let artifacts = h.sink.finished.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&artifacts[2].1).into_owned();
    assert!(
        text.contains("userrequests-us.securitycenter.windows.com"),
        "{text}"
    );
    assert!(!text.contains("sig="), "{text}");
    assert_eq!(
        server
            .sandbox
            .defender
            .actions()
            .iter()
            .filter(|a| a["type"] == "CollectInvestigationPackage")
            .count(),
        1
    );
}

#[tokio::test]
async fn machine_actions_are_read_across_pages_before_deciding() {
    let server = MockServer::start().await;
    mount_token(&server).await;
    mount_machine(&server).await;
    Mock::given(method("GET"))
        .and(path("/api/machineactions"))
        .and(query_param("$skip", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [
            action("a2", "Isolate", "Pending", "2026-11-25T00:00:00Z", "x")]})))
        .mount(&server)
        .await;
    mount_actions_page1(&server).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .expect(0)
        .mount(&server)
        .await;
    let h = Harness::from_config(&server);
    let out = h
        .call("isolate_machine", json!({"device": HOST}))
        .await
        .unwrap();
    assert_eq!(out["already"], true, "{out}");
    assert_eq!(out["action_id"], "a2");

    // A next link to another host is never followed with the token.
    let server2 = MockServer::start().await;
    mount_token(&server2).await;
    mount_machine(&server2).await;
    Mock::given(method("GET"))
        .and(path("/api/machineactions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [],
            "@odata.nextLink": "https://evil.example.com/api/machineactions?$skip=1"})))
        .mount(&server2)
        .await;
    let h = Harness::from_config(&server2);
    let e = h
        .call("isolate_machine", json!({"device": HOST}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("refusing to send the token"), "{e}");
}

async fn mount_actions_page1(server: &MockServer) {
    let next = format!(
        "{}/api/machineactions?$filter=machineId%20eq%20'{MACHINE}'&$skip=1",
        server.uri()
    );
    Mock::given(method("GET"))
        .and(path("/api/machineactions"))
        .and(query_param("$filter", format!("machineId eq '{MACHINE}'")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [
            action("a1", "Unisolate", "Succeeded", "2026-11-01T00:00:00Z", "x")],
            "@odata.nextLink": next})))
        .mount(server)
        .await;
}
