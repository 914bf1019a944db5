//! The `http` connector and the shared HTTP client against a `wiremock` server: exact
//! requests, status mapping, timeouts, redaction, the URL policy and snapshots.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cordon_connectors::registry::Registry;
use cordon_connectors::secret::Redactor;
use cordon_connectors::{ActionCall, ConnectorError, RequestLog};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wiremock::matchers::{body_json, body_string, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "tok-9f8e7d6c5b4a";

/// Finished artifacts with their bytes.
mod support;
use support::MemSink;

struct Harness {
    registry: Registry,
    sink: MemSink,
    log: RequestLog,
    _dir: tempfile::TempDir,
}

/// A registry with one `http` instance `api` whose base URL is the mock server and whose
/// `Authorization` header is a secret read from a file.
fn harness(server: &MockServer) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("Bearer {TOKEN}\n")).unwrap();
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "api": {
            "type": "http",
            "base_url": format!("{}/v1", server.uri()),
            "headers": {"Authorization": {"file": "token"}, "X-Client": "cordon-tests"},
            "timeout": "5s",
        }
    }))
    .unwrap();
    let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
    Harness {
        registry,
        sink: MemSink::default(),
        log: RequestLog::default(),
        _dir: dir,
    }
}

impl Harness {
    async fn call(&self, action: &str, input: Value) -> Result<Value, ConnectorError> {
        let c = self.registry.resolve("http", Some("api")).unwrap();
        c.call(ActionCall {
            action,
            input: &input,
            idempotency_key: "run1/step-a/0",
            run_id: "run1",
            step_id: "step-a",
            attempt: 1,
            evidence: &self.sink,
            requests: &self.log,
            resume: &cordon_connectors::ResumeSlot::default(),
            prior: None,
        })
        .await
    }
}

#[tokio::test]
async fn post_sends_the_exact_request_with_idempotency_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/users/u1/suspend"))
        .and(query_param("reason", "dprk"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("x-client", "cordon-tests"))
        .and(header("x-extra", "1"))
        .and(header("idempotency-key", "run1/step-a/0"))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({"why": "alert 42"})))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("X-Request-Id", "abc")
                .set_body_json(json!({"status": "SUSPENDED"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call(
            "request",
            json!({"method": "post", "url": "/users/u1/suspend?reason=dprk",
                   "headers": {"X-Extra": "1"}, "json": {"why": "alert 42"}}),
        )
        .await
        .unwrap();
    assert_eq!(out["status"], 200);
    assert_eq!(out["body"], json!({"status": "SUSPENDED"}));
    assert_eq!(out["headers"]["x-request-id"], "abc");
    let log = h.log.take();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].method, "POST");
    assert_eq!(log[0].path, "/v1/users/u1/suspend");
    assert_eq!(log[0].status, Some(200));
}

#[tokio::test]
async fn get_has_no_idempotency_key_and_text_bodies_stay_text() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/ping"))
        .respond_with(ResponseTemplate::new(200).set_body_string("pong"))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/v1/raw"))
        .and(body_string("a=b"))
        .and(header("content-type", "text/plain"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call("request", json!({"method": "GET", "url": "ping"}))
        .await
        .unwrap();
    assert_eq!(out["body"], "pong");
    let out = h
        .call(
            "request",
            json!({"method": "PUT", "url": "/raw", "body": "a=b", "headers": {"Content-Type": "text/plain"}}),
        )
        .await
        .unwrap();
    assert_eq!(out["status"], 204);
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 2);
    assert!(!reqs[0].headers.contains_key("idempotency-key"));
    assert_eq!(
        reqs[1].headers.get("idempotency-key").unwrap(),
        "run1/step-a/0"
    );
}

async fn error_for(status: u16, headers: &[(&str, &str)]) -> ConnectorError {
    let server = MockServer::start().await;
    let mut resp = ResponseTemplate::new(status).set_body_string(format!(
        "{{\"error\": \"bad\", \"echo\": \"Bearer {TOKEN}\"}}"
    ));
    for (n, v) in headers {
        resp = resp.insert_header(*n, *v);
    }
    Mock::given(method("DELETE"))
        .respond_with(resp)
        .mount(&server)
        .await;
    let h = harness(&server);
    let err = h
        .call(
            "request",
            json!({"method": "DELETE", "url": "/things/1?secret_q=zz"}),
        )
        .await
        .unwrap_err();
    let log = h.log.take();
    assert_eq!(log[0].status, Some(status));
    assert_eq!(log[0].path, "/v1/things/1");
    // Secrets, header values and query strings never reach an error.
    let text = format!("{err} {err:?}");
    assert!(!text.contains(TOKEN), "{text}");
    assert!(!text.contains("secret_q"), "{text}");
    assert!(text.contains("DELETE /v1/things/1"), "{text}");
    err
}

#[tokio::test]
async fn statuses_map_to_typed_errors() {
    for status in [400, 404, 409] {
        match error_for(status, &[]).await {
            ConnectorError::Rejected { status: s, message } => {
                assert_eq!(s, status);
                assert!(message.contains("[REDACTED]"), "{message}");
            }
            other => panic!("{status}: {other:?}"),
        }
    }
    for status in [401, 403] {
        assert!(
            matches!(error_for(status, &[]).await, ConnectorError::Auth { status: s, .. } if s == status)
        );
    }
    let e = error_for(429, &[("Retry-After", "7")]).await;
    assert!(matches!(e, ConnectorError::RateLimited { .. }), "{e:?}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    assert!(e.is_transient());
    let e = error_for(503, &[]).await;
    assert!(
        matches!(
            e,
            ConnectorError::Transient {
                retry_after: None,
                ..
            }
        ),
        "{e:?}"
    );
    let e = error_for(502, &[("Retry-After", "3")]).await;
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    assert!(matches!(
        error_for(408, &[]).await,
        ConnectorError::Transient { .. }
    ));
}

#[tokio::test]
async fn slow_answer_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let h = harness(&server);
    let err = h
        .call(
            "request",
            json!({"method": "GET", "url": "/slow", "timeout": "200ms"}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectorError::Timeout(d) if d == Duration::from_millis(200)),
        "{err:?}"
    );
    let log = h.log.take();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].status, None);
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let registry =
        Registry::from_config(&BTreeMap::new(), Path::new("."), &Redactor::new()).unwrap();
    let c = registry.resolve("http", None).unwrap();
    let log = RequestLog::default();
    let input = json!({"method": "GET", "url": format!("http://{addr}/x")});
    let err = c
        .call(ActionCall {
            action: "request",
            input: &input,
            idempotency_key: "k",
            run_id: "r",
            step_id: "s",
            attempt: 1,
            evidence: &MemSink::default(),
            requests: &log,
            resume: &cordon_connectors::ResumeSlot::default(),
            prior: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Transient { .. }), "{err:?}");
    assert!(err.to_string().contains("GET /x"), "{err}");
    assert_eq!(log.take()[0].status, None);
}

#[tokio::test]
async fn plain_http_to_a_remote_host_is_refused() {
    let server = MockServer::start().await;
    let h = harness(&server);
    let err = h
        .call(
            "request",
            json!({"method": "GET", "url": "http://example.com/x"}),
        )
        .await
        .unwrap_err();
    match err {
        ConnectorError::InvalidInput { field, message } => {
            assert_eq!(field, "url");
            assert!(
                message.contains("https://") && message.contains("`api`"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(h.log.take().is_empty(), "nothing was sent");

    let config: BTreeMap<String, Value> = serde_json::from_value(
        json!({"corp": {"type": "http", "base_url": "http://api.example.com"}}),
    )
    .unwrap();
    let errs = Registry::from_config(&config, Path::new("."), &Redactor::new()).unwrap_err();
    let text = errs[0].to_string();
    assert!(text.contains("corp") && text.contains("base_url"), "{text}");
}

#[tokio::test]
async fn snapshot_streams_ndjson_into_evidence() {
    let server = MockServer::start().await;
    let body = "{\"e\":1}\n{\"e\":2}\n\n{\"e\":3}\n";
    Mock::given(method("GET"))
        .and(path("/v1/logs"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/x-ndjson"))
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call(
            "snapshot",
            json!({"method": "GET", "url": "/logs?since=2024-01-01"}),
        )
        .await
        .unwrap();
    assert_eq!(out["records"], 3);
    assert_eq!(out["bytes"], body.len());
    assert_eq!(out["status"], 200);
    let expected = hex::encode(Sha256::digest(body.as_bytes()));
    assert_eq!(out["sha256"], expected);
    let finished = h.sink.finished.lock().unwrap();
    assert_eq!(finished.len(), 1);
    let (rec, data) = &finished[0];
    assert_eq!(data.as_slice(), body.as_bytes());
    assert_eq!(rec.meta.extension, "jsonl");
    assert_eq!(rec.meta.media_type, "application/x-ndjson");
    assert_eq!(rec.meta.instance, "api");
    assert_eq!(rec.meta.source["method"], "GET");
}

#[tokio::test]
async fn snapshot_counts_json_arrays_and_fails_without_evidence_on_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/search"))
        .and(header("idempotency-key", "run1/step-a/0"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!([{"a": "[,]"}, {"b": [1, 2]}, 3])),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/gone"))
        .respond_with(ResponseTemplate::new(404).set_body_string("no such log"))
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call(
            "snapshot",
            json!({"method": "POST", "url": "/search", "json": {"q": "*"}}),
        )
        .await
        .unwrap();
    assert_eq!(out["records"], 3);
    let err = h
        .call("snapshot", json!({"method": "GET", "url": "/gone"}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectorError::Rejected { status: 404, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("no such log"), "{err}");
    assert_eq!(
        *h.sink.created.lock().unwrap(),
        1,
        "no artifact opened for the 404"
    );
}

#[tokio::test]
async fn redirects_are_followed_only_within_the_same_origin() {
    let server = MockServer::start().await;
    let port = server.address().port();
    Mock::given(method("GET"))
        .and(path("/v1/old"))
        .respond_with(ResponseTemplate::new(302).insert_header("Location", "/v1/new"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/new"))
        .respond_with(ResponseTemplate::new(200).set_body_string("moved"))
        .mount(&server)
        .await;
    // Same server, other origin: a configured secret header must not follow it there.
    Mock::given(method("GET"))
        .and(path("/v1/away"))
        .respond_with(ResponseTemplate::new(302).insert_header(
            "Location",
            format!("http://localhost:{port}/v1/new").as_str(),
        ))
        .mount(&server)
        .await;
    let h = harness(&server);
    let out = h
        .call("request", json!({"method": "GET", "url": "/old"}))
        .await
        .unwrap();
    assert_eq!(out["body"], "moved");
    let err = h
        .call("request", json!({"method": "GET", "url": "/away"}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectorError::Rejected { status: 302, .. }),
        "{err:?}"
    );
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 3, "the cross-origin redirect was not followed");
}
