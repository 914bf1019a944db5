//! The `slack` connector against `wiremock`: the exact webhook request, Slack's text error
//! bodies, throttling, server errors, a timeout, and the webhook URL (the secret) kept out
//! of every error and the request log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cordon_connectors::evidence::EvidenceError;
use cordon_connectors::registry::Registry;
use cordon_connectors::secret::{Redactor, SecretValue};
use cordon_connectors::slack::SlackConnector;
use cordon_connectors::{
    ActionCall, Connector, ConnectorError, EvidenceMeta, EvidenceSink, EvidenceWriter, RequestLog,
    ResumeSlot,
};
use serde_json::{json, Value};
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const HOOK_PATH: &str = "/services/T0001/B0002/s3cr3tW3bh00kT0k3n";
const HOOK_SECRET: &str = "s3cr3tW3bh00kT0k3n";

struct NoEvidence;

#[async_trait]
impl EvidenceSink for NoEvidence {
    async fn create(&self, _: EvidenceMeta) -> Result<Box<dyn EvidenceWriter>, EvidenceError> {
        Err(EvidenceError("slack writes no evidence".into()))
    }
}

struct Harness {
    connector: Arc<dyn Connector>,
    log: RequestLog,
    resume: ResumeSlot,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(server: &MockServer) -> Harness {
        Harness::at(&server.uri())
    }

    fn at(uri: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hook"), format!("{uri}{HOOK_PATH}\n")).unwrap();
        let config: BTreeMap<String, Value> = serde_json::from_value(json!({
            "soc-slack": {"type": "slack", "webhook_url": {"file": "hook"}}
        }))
        .unwrap();
        let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
        Harness {
            connector: registry.resolve("slack", None).unwrap(),
            log: RequestLog::default(),
            resume: ResumeSlot::default(),
            _dir: dir,
        }
    }

    async fn post(&self, input: Value, attempt: u32) -> Result<Value, ConnectorError> {
        self.connector
            .call(ActionCall {
                action: "post_message",
                input: &input,
                idempotency_key: "run1/tell/0",
                run_id: "run1",
                step_id: "tell",
                attempt,
                evidence: &NoEvidence,
                requests: &self.log,
                resume: &self.resume,
                prior: None,
            })
            .await
    }
}

fn assert_no_secret(e: &ConnectorError) {
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains(HOOK_SECRET), "{text}");
    }
}

async fn answer(server: &MockServer, status: u16, body: &str) -> ResponseTemplate {
    let _ = server;
    ResponseTemplate::new(status).set_body_string(body)
}

#[tokio::test]
async fn posts_the_documented_json_and_reads_ok() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(HOOK_PATH))
        .and(header("content-type", "application/json"))
        .and(body_json(
            json!({"text": "Run r1 waits for approval", "channel": "#soc"}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::new(&server);
    let out = h
        .post(
            json!({"text": "Run r1 waits for approval", "channel": "#soc"}),
            1,
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"posted": true, "channel": "#soc", "possibly_duplicate": false})
    );
    let log = h.log.take();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].method, "POST");
    assert_eq!(log[0].status, Some(200));
    assert!(!log[0].path.contains(HOOK_SECRET), "{:?}", log[0]);
}

#[tokio::test]
async fn channel_is_omitted_when_not_given_and_retries_are_flagged() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(HOOK_PATH))
        .and(body_json(json!({"text": "hello"})))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::new(&server);
    let out = h.post(json!({"text": "hello"}), 2).await.unwrap();
    assert_eq!(
        out,
        json!({"posted": true, "channel": null, "possibly_duplicate": true})
    );
}

#[tokio::test]
async fn slack_error_bodies_are_rejected_naming_the_code() {
    for (status, code) in [
        (400, "invalid_payload"),
        (400, "no_text"),
        (404, "channel_not_found"),
        (410, "channel_is_archived"),
        (403, "action_prohibited"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(HOOK_PATH))
            .respond_with(answer(&server, status, code).await)
            .mount(&server)
            .await;
        let h = Harness::new(&server);
        let e = h.post(json!({"text": "x"}), 1).await.unwrap_err();
        match &e {
            ConnectorError::Rejected { status: s, message } => {
                assert_eq!(*s, status);
                assert!(message.contains(code), "{message}");
            }
            other => panic!("{status} {code}: {other:?}"),
        }
        assert!(!e.is_transient());
        assert_no_secret(&e);
    }
}

#[tokio::test]
async fn throttling_is_rate_limited_with_retry_after() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(HOOK_PATH))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "30")
                .set_body_string("rate_limited"),
        )
        .mount(&server)
        .await;
    let h = Harness::new(&server);
    let e = h.post(json!({"text": "x"}), 1).await.unwrap_err();
    assert!(matches!(e, ConnectorError::RateLimited { .. }), "{e:?}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
    assert_no_secret(&e);
}

#[tokio::test]
async fn server_errors_are_transient() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(HOOK_PATH))
        .respond_with(ResponseTemplate::new(500).set_body_string("rollup_error"))
        .mount(&server)
        .await;
    let h = Harness::new(&server);
    let e = h.post(json!({"text": "x"}), 1).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Transient { .. }), "{e:?}");
    assert!(e.to_string().contains("rollup_error"), "{e}");
    assert_no_secret(&e);
}

#[tokio::test]
async fn a_200_without_ok_is_not_success() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(HOOK_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>login</html>"))
        .mount(&server)
        .await;
    let h = Harness::new(&server);
    let e = h.post(json!({"text": "x"}), 1).await.unwrap_err();
    assert!(!e.is_transient(), "{e:?}");
    assert_no_secret(&e);
}

#[tokio::test]
async fn a_slow_webhook_times_out_without_leaking_the_url() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(HOOK_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string("ok")
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let c = SlackConnector::new(
        "soc-slack",
        SecretValue::new(format!("{}{HOOK_PATH}", server.uri())),
        Redactor::new(),
        Duration::from_millis(300),
    )
    .unwrap();
    let log = RequestLog::default();
    let resume = ResumeSlot::default();
    let input = json!({"text": "x"});
    let e = c
        .call(ActionCall {
            action: "post_message",
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
    assert!(e.is_transient());
    assert_no_secret(&e);
    assert!(!format!("{c:?}").contains(HOOK_SECRET));
}

#[tokio::test]
async fn connection_refused_is_transient_and_redacted() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = Harness::at(&format!("http://127.0.0.1:{port}"));
    let e = h.post(json!({"text": "x"}), 1).await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert_no_secret(&e);
}

#[tokio::test]
async fn bad_inputs_name_the_field_and_send_nothing() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .expect(0)
        .mount(&server)
        .await;
    let h = Harness::new(&server);
    for (input, field) in [
        (json!({}), "text"),
        (json!({"text": "  "}), "text"),
        (json!({"text": 3}), "text"),
        (json!({"text": "x", "channel": 5}), "channel"),
    ] {
        match h.post(input, 1).await.unwrap_err() {
            ConnectorError::InvalidInput { field: f, .. } => assert_eq!(f, field),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn webhook_url_must_be_a_secret_and_https() {
    let dir = tempfile::tempdir().unwrap();
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "s": {"type": "slack", "webhook_url": "https://hooks.slack.com/services/T/B/inl1neS3cret"}
    }))
    .unwrap();
    let errs = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap_err();
    let text = format!("{errs:?}");
    assert!(text.contains("webhook_url"), "{text}");
    assert!(!text.contains("inl1neS3cret"), "{text}");

    std::fs::write(
        dir.path().join("hook"),
        "http://hooks.slack.com/services/T/B/pl4inS3cret",
    )
    .unwrap();
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "s": {"type": "slack", "webhook_url": {"file": "hook"}}
    }))
    .unwrap();
    let errs = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap_err();
    let text = format!("{errs:?} {}", errs[0]);
    assert!(text.contains("webhook_url"), "{text}");
    assert!(!text.contains("pl4inS3cret"), "{text}");
}

#[tokio::test]
async fn drives_the_sandbox_webhook() {
    use cordon_connectors::sandbox::slack::PostedMessage;
    use cordon_connectors::sandbox::Sandbox;

    let server = Sandbox::seeded().serve().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Sandbox::connector_config(&server.base_url(), dir.path()).unwrap();
    let redactor = Redactor::new();
    let registry = Registry::from_config(&config, dir.path(), &redactor).unwrap();
    let connector = registry.resolve("slack", Some("slack-sandbox")).unwrap();
    let log = RequestLog::default();
    let resume = ResumeSlot::default();
    let call = |input: Value| {
        let input = input.clone();
        let connector = connector.clone();
        let log = &log;
        let resume = &resume;
        async move {
            connector
                .call(ActionCall {
                    action: "post_message",
                    input: &input,
                    idempotency_key: "k",
                    run_id: "r",
                    step_id: "s",
                    attempt: 1,
                    evidence: &NoEvidence,
                    requests: log,
                    resume,
                    prior: None,
                })
                .await
        }
    };

    let out = call(json!({"text": "Run r1 waits for legal"}))
        .await
        .unwrap();
    assert_eq!(out["posted"], json!(true));
    call(json!({"text": "to legal", "channel": "#legal"}))
        .await
        .unwrap();
    match call(json!({"text": "x", "channel": "#nope"})).await {
        Err(ConnectorError::Rejected {
            status: 404,
            message,
        }) => {
            assert!(message.contains("channel_not_found"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    server.sandbox.slack.throttle(1);
    let e = call(json!({"text": "x"})).await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(
        server.sandbox.slack.messages(),
        vec![
            PostedMessage {
                channel: "#soc".into(),
                text: "Run r1 waits for legal".into()
            },
            PostedMessage {
                channel: "#legal".into(),
                text: "to legal".into()
            },
        ]
    );
    for s in log.take() {
        assert!(!s.path.contains("sandbox-webhook-secret"), "{s:?}");
    }
}
