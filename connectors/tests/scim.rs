//! The `scim` connector against a `wiremock` SCIM provider (exact requests, SCIM errors,
//! status mapping, timeouts, redaction, configuration) and against the local sandbox.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use cordon_connectors::evidence::EvidenceError;
use cordon_connectors::http_client::{HttpClient, HttpClientConfig};
use cordon_connectors::registry::Registry;
use cordon_connectors::sandbox::scim::SANDBOX_TOKEN;
use cordon_connectors::sandbox::Sandbox;
use cordon_connectors::scim::ScimConnector;
use cordon_connectors::secret::Redactor;
use cordon_connectors::{
    ActionCall, Connector, ConnectorError, EvidenceMeta, EvidenceSink, EvidenceWriter, RequestLog,
    ResumeSlot,
};
use serde_json::{json, Value};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "scim-tok-5e4d3c2b1a";
const ID: &str = "2819c223-7f76-453a-919d-413861904646";
const EMAIL: &str = "j.smith@example.com";

/// SCIM actions write no evidence: any attempt is a bug.
struct NoEvidence;

#[async_trait]
impl EvidenceSink for NoEvidence {
    async fn create(&self, _meta: EvidenceMeta) -> Result<Box<dyn EvidenceWriter>, EvidenceError> {
        Err(EvidenceError("scim actions must not write evidence".into()))
    }
}

struct Harness {
    connector: std::sync::Arc<dyn Connector>,
    log: RequestLog,
    resume: ResumeSlot,
    _dir: tempfile::TempDir,
}

/// A registry-built `scim` instance whose base URL is `base` and whose token is read
/// from a file.
fn harness_at(base: &str, token: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("scim-token"), format!("{token}\n")).unwrap();
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "idp-scim": {"type": "scim", "base_url": base, "token": {"file": "scim-token"}}
    }))
    .unwrap();
    let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
    Harness {
        connector: registry.resolve("scim", None).unwrap(),
        log: RequestLog::default(),
        resume: ResumeSlot::default(),
        _dir: dir,
    }
}

fn harness(server: &MockServer) -> Harness {
    harness_at(&format!("{}/scim/v2", server.uri()), TOKEN)
}

impl Harness {
    fn call_args<'a>(&'a self, action: &'a str, input: &'a Value) -> ActionCall<'a> {
        ActionCall {
            action,
            input,
            idempotency_key: "run1/suspend/0/idp-scim",
            run_id: "run1",
            step_id: "suspend",
            attempt: 1,
            evidence: &NoEvidence,
            requests: &self.log,
            resume: &self.resume,
            prior: None,
        }
    }

    async fn call(&self, action: &str, user: &str) -> Result<Value, ConnectorError> {
        let input = json!({ "user": user });
        self.connector.call(self.call_args(action, &input)).await
    }

    async fn prior(&self, action: &str, user: &str) -> Result<Option<Value>, ConnectorError> {
        let input = json!({ "user": user });
        self.connector
            .prior_state(self.call_args(action, &input))
            .await
    }
}

fn user(active: bool) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "id": ID,
        "externalId": "E-1001",
        "userName": EMAIL,
        "name": {"formatted": "John Smith", "givenName": "John", "familyName": "Smith"},
        "emails": [{"value": EMAIL, "primary": true}],
        "active": active,
    })
}

fn list(resources: Vec<Value>) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": resources.len(),
        "startIndex": 1,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

fn scim_json(status: u16, body: Value) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .insert_header("content-type", "application/scim+json")
        .set_body_string(body.to_string())
}

fn scim_error(status: u16, scim_type: Option<&str>, detail: &str) -> ResponseTemplate {
    let mut body = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
        "status": status.to_string(),
        "detail": detail,
    });
    if let Some(t) = scim_type {
        body["scimType"] = json!(t);
    }
    scim_json(status, body)
}

/// The lookup by userName, matched exactly (filter, bearer auth, SCIM Accept).
fn filter_mock(user_name: &str, body: Value) -> Mock {
    Mock::given(method("GET"))
        .and(path("/scim/v2/Users"))
        .and(query_param(
            "filter",
            format!("userName eq {}", serde_json::to_string(user_name).unwrap()),
        ))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("accept", "application/scim+json"))
        .respond_with(scim_json(200, body))
}

fn patch_body(active: bool) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "active", "value": active}],
    })
}

fn patch_mock(active: bool) -> wiremock::MockBuilder {
    Mock::given(method("PATCH"))
        .and(path(format!("/scim/v2/Users/{ID}")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-type", "application/scim+json"))
        .and(header("accept", "application/scim+json"))
        .and(body_json(patch_body(active)))
}

/// Neither the token nor its `Bearer` form may appear in an error, however printed.
fn assert_no_secret(e: &ConnectorError) {
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(TOKEN), "token leaked: {shown}");
}

#[tokio::test]
async fn deactivate_by_email_sends_the_documented_requests() {
    let server = MockServer::start().await;
    filter_mock(EMAIL, list(vec![user(true)]))
        .expect(1)
        .mount(&server)
        .await;
    patch_mock(false)
        .respond_with(scim_json(200, user(false)))
        .expect(1)
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h.call("deactivate_user", EMAIL).await.unwrap();
    assert_eq!(
        out,
        json!({"found": true, "target": ID, "already": false, "active": false})
    );
    let logged: Vec<(String, String, Option<u16>)> = h
        .log
        .take()
        .into_iter()
        .map(|r| (r.method, r.path, r.status))
        .collect();
    assert_eq!(
        logged,
        vec![
            ("GET".into(), "/scim/v2/Users".into(), Some(200)),
            ("PATCH".into(), format!("/scim/v2/Users/{ID}"), Some(200)),
        ]
    );
}

#[tokio::test]
async fn activate_by_id_accepts_204() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/scim/v2/Users/{ID}")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(scim_json(200, user(false)))
        .expect(1)
        .mount(&server)
        .await;
    patch_mock(true)
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let out = harness(&server).call("activate_user", ID).await.unwrap();
    assert_eq!(
        out,
        json!({"found": true, "target": ID, "already": false, "active": true})
    );
}

#[tokio::test]
async fn already_inactive_sends_no_patch() {
    let server = MockServer::start().await;
    filter_mock(EMAIL, list(vec![user(false)]))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h.call("deactivate_user", EMAIL).await.unwrap();
    assert_eq!(
        out,
        json!({"found": true, "target": ID, "already": true, "active": false})
    );
    let prior = h.prior("deactivate_user", EMAIL).await.unwrap();
    assert_eq!(
        prior,
        Some(
            json!({"id": ID, "login": EMAIL, "active": false, "status": "INACTIVE", "already": true})
        )
    );
}

#[tokio::test]
async fn unknown_users_are_not_errors() {
    let server = MockServer::start().await;
    filter_mock("ghost@example.com", list(vec![]))
        .mount(&server)
        .await;
    // A login that is not an id: GET by id answers 404, then the userName lookup runs.
    Mock::given(method("GET"))
        .and(path("/scim/v2/Users/ghost"))
        .respond_with(scim_error(404, None, "Resource ghost not found"))
        .expect(2)
        .mount(&server)
        .await;
    filter_mock("ghost", list(vec![])).mount(&server).await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let h = harness(&server);
    let not_found = json!({"found": false, "target": null, "already": false});
    assert_eq!(
        h.call("deactivate_user", "ghost@example.com")
            .await
            .unwrap(),
        not_found
    );
    assert_eq!(h.call("activate_user", "ghost").await.unwrap(), not_found);
    assert_eq!(
        h.call("get_user", "ghost@example.com").await.unwrap(),
        json!({"found": false})
    );
    assert_eq!(
        h.prior("deactivate_user", "ghost").await.unwrap(),
        Some(json!({"found": false}))
    );
}

#[tokio::test]
async fn get_user_reports_key_facts_and_matches_user_name_case_insensitively() {
    let server = MockServer::start().await;
    // A provider that ignores the filter and returns everyone: only the match is used.
    let other = json!({"id": "other-1", "userName": "dana@example.com", "active": true});
    filter_mock("J.Smith@Example.com", list(vec![other, user(true)]))
        .mount(&server)
        .await;
    let out = harness(&server)
        .call("get_user", "J.Smith@Example.com")
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "id": ID, "login": EMAIL, "email": EMAIL, "name": "John Smith",
               "external_id": "E-1001", "active": true, "status": "ACTIVE"})
    );
}

#[tokio::test]
async fn quotes_in_the_login_are_escaped_in_the_filter() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/scim/v2/Users"))
        .and(query_param(
            "filter",
            r#"userName eq "o\"brien\\x@example.com""#,
        ))
        .respond_with(scim_json(200, list(vec![])))
        .expect(1)
        .mount(&server)
        .await;
    let out = harness(&server)
        .call("get_user", r#"o"brien\x@example.com"#)
        .await
        .unwrap();
    assert_eq!(out, json!({"found": false}));
}

#[tokio::test]
async fn ids_are_escaped_as_one_path_segment() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/scim/v2/Users/a%2Fb%20c"))
        .respond_with(scim_json(
            200,
            json!({"id": "a/b c", "userName": "x", "active": true}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let out = harness(&server).call("get_user", "a/b c").await.unwrap();
    assert_eq!(out["id"], "a/b c");
}

#[tokio::test]
async fn two_users_with_one_user_name_are_refused() {
    let server = MockServer::start().await;
    let mut twin = user(true);
    twin["id"] = json!("twin-2");
    filter_mock(EMAIL, list(vec![user(true), twin]))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let e = harness(&server)
        .call("deactivate_user", EMAIL)
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Other(_)), "{e:?}");
    assert!(e.to_string().contains("twin-2"), "{e}");
}

#[tokio::test]
async fn falls_back_to_the_value_object_form_on_invalid_path() {
    let server = MockServer::start().await;
    filter_mock(EMAIL, list(vec![user(true)]))
        .mount(&server)
        .await;
    patch_mock(false)
        .respond_with(scim_error(
            400,
            Some("invalidPath"),
            "path expressions not supported",
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("/scim/v2/Users/{ID}")))
        .and(header("content-type", "application/scim+json"))
        .and(body_json(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "value": {"active": false}}],
        })))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let out = harness(&server)
        .call("deactivate_user", EMAIL)
        .await
        .unwrap();
    assert_eq!(out["already"], json!(false));
    assert_eq!(out["target"], json!(ID));
}

#[tokio::test]
async fn a_400_invalid_value_is_rejected_with_the_scim_details() {
    let server = MockServer::start().await;
    filter_mock(EMAIL, list(vec![user(true)]))
        .mount(&server)
        .await;
    patch_mock(false)
        .respond_with(scim_error(
            400,
            Some("invalidValue"),
            "active cannot be changed for this user",
        ))
        .expect(1)
        .mount(&server)
        .await;
    let e = harness(&server)
        .call("deactivate_user", EMAIL)
        .await
        .unwrap_err();
    match &e {
        ConnectorError::Rejected { status, message } => {
            assert_eq!(*status, 400);
            assert!(message.contains("SCIM error 400 invalidValue"), "{message}");
            assert!(message.contains("active cannot be changed"), "{message}");
            assert!(
                message.contains(&format!("/scim/v2/Users/{ID}")),
                "{message}"
            );
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(!e.is_transient());
}

#[tokio::test]
async fn a_200_that_did_not_apply_the_change_is_an_error() {
    let server = MockServer::start().await;
    filter_mock(EMAIL, list(vec![user(true)]))
        .mount(&server)
        .await;
    patch_mock(false)
        .respond_with(scim_json(200, user(true)))
        .mount(&server)
        .await;
    let e = harness(&server)
        .call("deactivate_user", EMAIL)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("still has active=true"), "{e}");
}

#[tokio::test]
async fn statuses_map_to_typed_errors_without_the_token() {
    let cases: Vec<(ResponseTemplate, &str)> = vec![
        (
            scim_error(401, None, "Authorization failure")
                .insert_header("www-authenticate", "Bearer realm=\"SCIM\""),
            "auth401",
        ),
        (
            scim_error(403, None, &format!("token {TOKEN} lacks scope")),
            "auth403",
        ),
        (
            scim_error(429, None, "Too many requests").insert_header("retry-after", "7"),
            "rate",
        ),
        (scim_error(503, None, "maintenance"), "transient"),
        (
            ResponseTemplate::new(502).set_body_string("bad gateway"),
            "transient",
        ),
        (
            scim_error(400, Some("invalidFilter"), "bad filter"),
            "rejected",
        ),
    ];
    for (template, kind) in cases {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/scim/v2/Users"))
            .respond_with(template)
            .mount(&server)
            .await;
        let e = harness(&server).call("get_user", EMAIL).await.unwrap_err();
        assert_no_secret(&e);
        match (kind, &e) {
            (
                "auth401",
                ConnectorError::Auth {
                    status: 401,
                    message,
                },
            ) => {
                assert!(message.contains("SCIM error 401"), "{message}")
            }
            (
                "auth403",
                ConnectorError::Auth {
                    status: 403,
                    message,
                },
            ) => {
                assert!(message.contains("[REDACTED]"), "{message}")
            }
            (
                "rate",
                ConnectorError::RateLimited {
                    retry_after,
                    message,
                },
            ) => {
                assert_eq!(*retry_after, Some(Duration::from_secs(7)));
                assert!(message.contains("Too many requests"), "{message}");
            }
            ("transient", ConnectorError::Transient { .. }) => assert!(e.is_transient()),
            (
                "rejected",
                ConnectorError::Rejected {
                    status: 400,
                    message,
                },
            ) => {
                assert!(message.contains("invalidFilter"), "{message}")
            }
            _ => panic!("{kind}: unexpected {e:?}"),
        }
    }
}

#[tokio::test]
async fn a_404_on_patch_is_rejected() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/scim/v2/Users/{ID}")))
        .respond_with(scim_json(200, user(true)))
        .mount(&server)
        .await;
    // Deleted between the read and the write.
    patch_mock(false)
        .respond_with(scim_error(404, Some("noTarget"), "gone"))
        .mount(&server)
        .await;
    let e = harness(&server)
        .call("deactivate_user", ID)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Rejected { status: 404, .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_slow_provider_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(scim_json(200, list(vec![])).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let redactor = Redactor::new();
    let token = redactor.secret(TOKEN);
    let mut config = HttpClientConfig::new("idp-scim");
    config.base_url = Some(format!("{}/scim/v2", server.uri()).parse().unwrap());
    config.timeout = Duration::from_millis(300);
    let client = HttpClient::new(config, redactor).unwrap();
    let connector = ScimConnector::with_client(client, token);
    let log = RequestLog::default();
    let input = json!({"user": EMAIL});
    let e = connector
        .call(ActionCall {
            action: "get_user",
            input: &input,
            idempotency_key: "k",
            run_id: "r",
            step_id: "s",
            attempt: 1,
            evidence: &NoEvidence,
            requests: &log,
            resume: &ResumeSlot::default(),
            prior: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Timeout(_)), "{e:?}");
    assert!(e.is_transient());
    assert_eq!(log.take()[0].status, None);
}

#[tokio::test]
async fn bad_inputs_name_the_field() {
    let server = MockServer::start().await;
    let h = harness(&server);
    let input = json!({"email": EMAIL});
    let e = h
        .connector
        .call(h.call_args("deactivate_user", &input))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ConnectorError::InvalidInput { field, .. } if field == "email"),
        "{e:?}"
    );
    let e = h.call("get_user", " ").await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::InvalidInput { field, .. } if field == "user"),
        "{e:?}"
    );
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[test]
fn settings_are_checked_and_secrets_never_inline() {
    let dir = tempfile::tempdir().unwrap();
    let build = |v: Value| {
        let config: BTreeMap<String, Value> = serde_json::from_value(json!({ "s": v })).unwrap();
        Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap_err()
    };
    let errs = build(
        json!({"type": "scim", "base_url": "http://scim.example.com/v2",
                            "token": "inline-secret-value", "tokn": 1}),
    );
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let all = text.join("\n");
    assert!(all.contains("setting `base_url`"), "{all}");
    assert!(all.contains("setting `token`"), "{all}");
    assert!(
        all.contains("setting `tokn`") && all.contains("did you mean `token`"),
        "{all}"
    );
    assert!(!all.contains("inline-secret-value"), "{all}");
    let errs = build(json!({"type": "scim"}));
    let all: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all.iter().any(|e| e.contains("`base_url`: is required")),
        "{all:?}"
    );
    assert!(
        all.iter().any(|e| e.contains("`token`: is required")),
        "{all:?}"
    );
}

#[test]
fn catalog_declares_the_actions_and_their_undo() {
    let (_, deactivate) = cordon_connectors::catalog::find_action("scim.deactivate_user").unwrap();
    assert_eq!(deactivate.undo, Some("activate_user"));
    assert_eq!(deactivate.effect, cordon_connectors::Effect::Mutation);
    let (_, activate) = cordon_connectors::catalog::find_action("scim.activate_user").unwrap();
    assert_eq!(activate.undo, Some("deactivate_user"));
    let (_, get) = cordon_connectors::catalog::find_action("scim.get_user").unwrap();
    assert_eq!(get.effect, cordon_connectors::Effect::Lookup);
}

#[tokio::test]
async fn drives_the_sandbox() {
    let server = Sandbox::seeded().serve().await.unwrap();
    let h = harness_at(&format!("{}/scim", server.base_url()), SANDBOX_TOKEN);
    let found = h.call("get_user", EMAIL).await.unwrap();
    assert_eq!(found["found"], json!(true));
    assert_eq!(found["status"], json!("ACTIVE"));
    let id = found["id"].as_str().unwrap().to_string();

    let out = h.call("deactivate_user", EMAIL).await.unwrap();
    assert_eq!(
        out,
        json!({"found": true, "target": id, "already": false, "active": false})
    );
    assert_eq!(server.sandbox.scim.active(EMAIL), Some(false));
    let again = h.call("deactivate_user", &id).await.unwrap();
    assert_eq!(again["already"], json!(true));
    assert_eq!(server.sandbox.scim.calls().len(), 1, "no second PATCH");

    let back = h.call("activate_user", EMAIL).await.unwrap();
    assert_eq!(back["already"], json!(false));
    assert_eq!(server.sandbox.scim.active(EMAIL), Some(true));
    assert_eq!(server.sandbox.scim.active("dana@example.com"), Some(true));

    assert_eq!(
        h.call("get_user", "nobody@example.com").await.unwrap(),
        json!({"found": false})
    );

    server.sandbox.scim.throttle_next(1);
    let e = h.call("get_user", EMAIL).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::RateLimited { retry_after: Some(d), .. } if *d == Duration::from_secs(1)),
        "{e:?}"
    );

    let wrong = harness_at(&format!("{}/scim", server.base_url()), "not-the-token");
    let e = wrong.call("get_user", EMAIL).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Auth { status: 401, .. }),
        "{e:?}"
    );
    assert!(!format!("{e} {e:?}").contains("not-the-token"));
}
