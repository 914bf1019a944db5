//! The `splunk` connector against `wiremock`: the exact export request, results streamed
//! into evidence (a 200,000-row export arrives whole with its SHA-256 and count), the v1
//! fallback, error mapping (400/401/403/429/5xx), a timeout, and no token in any error.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cordon_connectors::registry::Registry;
use cordon_connectors::secret::{Redactor, SecretValue};
use cordon_connectors::splunk::SplunkConnector;
use cordon_connectors::{ActionCall, Connector, ConnectorError, RequestLog, ResumeSlot};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::MemSink;
use wiremock::matchers::{body_string, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "splunk-jwt-token-0a1b2c3d4e5f";
const SINCE: &str = "2024-06-01T00:00:00Z";
const UNTIL: &str = "2024-06-02T00:00:00Z";

struct Harness {
    connector: Arc<dyn Connector>,
    sink: MemSink,
    log: RequestLog,
    resume: ResumeSlot,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(base_url: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let config: BTreeMap<String, Value> = serde_json::from_value(json!({
            "sp": {"type": "splunk", "base_url": base_url, "token": {"file": "token"}}
        }))
        .unwrap();
        let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
        Harness {
            connector: registry.resolve("splunk", Some("sp")).unwrap(),
            sink: MemSink::default(),
            log: RequestLog::default(),
            resume: ResumeSlot::default(),
            _dir: dir,
        }
    }

    async fn call(&self, input: Value) -> Result<Value, ConnectorError> {
        self.connector
            .call(ActionCall {
                action: "snapshot_search",
                input: &input,
                idempotency_key: "run1/snap/0",
                run_id: "run1",
                step_id: "snap",
                attempt: 1,
                evidence: &self.sink,
                requests: &self.log,
                resume: &self.resume,
                prior: None,
            })
            .await
    }
}

fn input() -> Value {
    json!({"query": "index=okta user=\"j.smith@example.com\"", "since": SINCE, "until": UNTIL})
}

fn expected_form() -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("search", "search index=okta user=\"j.smith@example.com\"")
        .append_pair("output_mode", "json")
        .append_pair("earliest_time", SINCE)
        .append_pair("latest_time", UNTIL)
        .finish()
}

fn export(status: u16, body: impl Into<String>) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.into(), "application/json")
}

fn assert_no_token(e: &ConnectorError) {
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains(TOKEN), "{text}");
    }
}

#[tokio::test]
async fn export_request_is_exact_and_results_become_json_lines() {
    let server = MockServer::start().await;
    let body = concat!(
        "{\"preview\":true,\"offset\":0,\"result\":{\"_raw\":\"interim\"}}\n",
        "{\"preview\":false,\"offset\":0,\"result\":{\"_time\":\"2024-06-01T10:00:00Z\",\"user\":\"j.smith@example.com\"}}\n",
        "{\"preview\":false,\"offset\":1,\"lastrow\":true,\"result\":{\"_time\":\"2024-06-01T11:00:00Z\",\"user\":\"j.smith@example.com\"}}\n",
    );
    Mock::given(method("POST"))
        .and(path("/services/search/v2/jobs/export"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string(expected_form()))
        .respond_with(export(200, body))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::new(&server.uri());
    let out = h.call(input()).await.unwrap();
    let expected = "{\"_time\":\"2024-06-01T10:00:00Z\",\"user\":\"j.smith@example.com\"}\n\
                    {\"_time\":\"2024-06-01T11:00:00Z\",\"user\":\"j.smith@example.com\"}\n";
    assert_eq!(out["records"], 2);
    assert_eq!(out["pages"], 1);
    assert_eq!(out["bytes"], expected.len());
    assert_eq!(
        out["sha256"],
        hex::encode(Sha256::digest(expected.as_bytes()))
    );
    let finished = h.sink.finished.lock().unwrap();
    let (record, data) = &finished[0];
    assert_eq!(data, expected.as_bytes());
    assert_eq!(record.meta.media_type, "application/x-ndjson");
    let source = &record.meta.source;
    assert_eq!(source["endpoint"], "POST /services/search/v2/jobs/export");
    assert_eq!(source["since"], SINCE);
    assert_eq!(source["until"], UNTIL);
    assert_eq!(source["until_defaulted"], false);
    assert!(!source.to_string().contains(TOKEN));
    let requests = h.log.take();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].status, Some(200));
}

#[tokio::test]
async fn a_large_export_streams_whole() {
    const ROWS: usize = 200_000;
    let mut body = String::with_capacity(ROWS * 90);
    let mut expected = Vec::with_capacity(ROWS * 60);
    for i in 0..ROWS {
        let result = format!("{{\"n\":{i},\"user\":\"j.smith@example.com\"}}");
        body.push_str(&format!(
            "{{\"preview\":false,\"offset\":{i},\"result\":{result}}}\n"
        ));
        expected.extend_from_slice(result.as_bytes());
        expected.push(b'\n');
    }
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/search/v2/jobs/export"))
        .respond_with(export(200, body))
        .mount(&server)
        .await;
    let h = Harness::new(&server.uri());
    let out = h.call(input()).await.unwrap();
    assert_eq!(out["records"], ROWS as u64);
    assert_eq!(out["bytes"], expected.len() as u64);
    assert_eq!(out["sha256"], hex::encode(Sha256::digest(&expected)));
}

#[tokio::test]
async fn an_empty_result_is_an_empty_artifact() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/search/v2/jobs/export"))
        .respond_with(export(200, "{\"preview\":false,\"lastrow\":true}"))
        .mount(&server)
        .await;
    let h = Harness::new(&server.uri());
    let out = h.call(input()).await.unwrap();
    assert_eq!(out["records"], 0);
    assert_eq!(out["bytes"], 0);
}

#[tokio::test]
async fn an_old_search_head_gets_the_v1_route() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/search/v2/jobs/export"))
        .respond_with(export(
            404,
            "{\"messages\":[{\"type\":\"ERROR\",\"text\":\"Not Found\"}]}",
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/services/search/jobs/export"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(body_string(expected_form()))
        .respond_with(export(
            200,
            "{\"preview\":false,\"lastrow\":true,\"result\":{\"a\":1}}\n",
        ))
        .expect(1)
        .mount(&server)
        .await;
    let h = Harness::new(&server.uri());
    let out = h.call(input()).await.unwrap();
    assert_eq!(out["records"], 1);
    let finished = h.sink.finished.lock().unwrap();
    assert_eq!(
        finished[0].0.meta.source["endpoint"],
        "POST /services/search/jobs/export"
    );
}

#[tokio::test]
async fn errors_are_typed_and_name_splunk_messages() {
    let cases: Vec<(u16, &str)> = vec![
        (400, "Error in 'search' command: Unable to parse the search"),
        (401, "call not properly authenticated"),
        (403, "insufficient permission"),
        (429, "too many concurrent searches"),
        (503, "search head is shutting down"),
    ];
    for (status, text) in cases {
        let server = MockServer::start().await;
        let body = json!({"messages": [{"type": "ERROR", "text": format!("{text} {TOKEN}")}]});
        Mock::given(method("POST"))
            .and(path("/services/search/v2/jobs/export"))
            .respond_with(export(status, body.to_string()).insert_header("Retry-After", "7"))
            .mount(&server)
            .await;
        let h = Harness::new(&server.uri());
        let e = h.call(input()).await.unwrap_err();
        assert_no_token(&e);
        assert!(e.to_string().contains(text), "{status}: {e}");
        match status {
            400 => assert!(matches!(e, ConnectorError::Rejected { status: 400, .. })),
            401 | 403 => assert!(matches!(e, ConnectorError::Auth { .. }), "{e:?}"),
            429 => {
                assert!(matches!(e, ConnectorError::RateLimited { .. }));
                assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
            }
            _ => assert!(e.is_transient(), "{e:?}"),
        }
        assert!(h.sink.finished.lock().unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_fatal_message_in_the_stream_fails_the_call() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/search/v2/jobs/export"))
        .respond_with(export(
            200,
            "{\"preview\":false,\"result\":{\"a\":1}}\n{\"messages\":[{\"type\":\"FATAL\",\"text\":\"Search auto-canceled\"}]}\n",
        ))
        .mount(&server)
        .await;
    let h = Harness::new(&server.uri());
    let e = h.call(input()).await.unwrap_err();
    assert!(e.to_string().contains("FATAL: Search auto-canceled"), "{e}");
    assert!(h.sink.finished.lock().unwrap().is_empty());
}

#[tokio::test]
async fn bad_inputs_name_the_field() {
    let h = Harness::new("http://127.0.0.1:9");
    for (input, field) in [
        (json!({"since": SINCE}), "query"),
        (json!({"query": "x", "since": "last week"}), "since"),
        (
            json!({"query": "x", "since": SINCE, "until": "2024-13-01"}),
            "until",
        ),
        (
            json!({"query": "x", "since": UNTIL, "until": SINCE}),
            "until",
        ),
    ] {
        match h.call(input).await {
            Err(ConnectorError::InvalidInput { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout_and_the_token_stays_hidden() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let connector = SplunkConnector::new(
        "sp",
        url::Url::parse(&server.uri()).unwrap(),
        SecretValue::new(TOKEN),
        Redactor::new(),
    )
    .unwrap()
    .with_export_timeout(Duration::from_millis(300));
    assert!(!format!("{connector:?}").contains(TOKEN));
    let sink = MemSink::default();
    let log = RequestLog::default();
    let resume = ResumeSlot::default();
    let input = input();
    let e = connector
        .call(ActionCall {
            action: "snapshot_search",
            input: &input,
            idempotency_key: "k",
            run_id: "run1",
            step_id: "snap",
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
    assert_no_token(&e);
}

#[tokio::test]
async fn the_sandbox_exports_the_suspects_events() {
    use cordon_connectors::sandbox::Sandbox;
    let server = Sandbox::seeded().serve().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Sandbox::connector_config(&server.base_url(), dir.path()).unwrap();
    let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
    let connector = registry.resolve("splunk", Some("splunk-sandbox")).unwrap();
    let sink = MemSink::default();
    let log = RequestLog::default();
    let resume = ResumeSlot::default();
    let run = |input: Value| {
        let (connector, sink, log, resume) = (connector.clone(), &sink, &log, &resume);
        async move {
            connector
                .call(ActionCall {
                    action: "snapshot_search",
                    input: &input,
                    idempotency_key: "run1/snap/0",
                    run_id: "run1",
                    step_id: "snap",
                    attempt: 1,
                    evidence: sink,
                    requests: log,
                    resume,
                    prior: None,
                })
                .await
        }
    };
    // 300 events 10 minutes apart from 2026-11-20T00:00Z; the first day holds 144.
    let out = run(json!({"query": "user=\"j.smith@example.com\"",
                         "since": "2026-11-20T00:00:00Z", "until": "2026-11-21T00:00:00Z"}))
    .await
    .unwrap();
    assert_eq!(out["records"], 144);
    let out = run(json!({"query": "index=vpn user=\"j.smith@example.com\"",
                         "since": "2026-11-01T00:00:00Z"}))
    .await
    .unwrap();
    assert_eq!(out["records"], 100);
    // The suspect's VPN rows cycle through the laptop farm, a VPN exit and two addresses
    // abroad: 25 each.
    let ips = out["ip_addresses"].as_array().unwrap();
    let mut seen: Vec<(&str, u64)> = ips
        .iter()
        .map(|a| (a["ip"].as_str().unwrap(), a["events"].as_u64().unwrap()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("192.0.2.14", 25),
            ("198.51.100.23", 25),
            ("2001:db8:4a3::15", 25),
            ("203.0.113.45", 25)
        ]
    );
    assert_eq!(ips[0]["first_seen"], "2026-11-20T00:10:00Z");
    {
        let finished = sink.finished.lock().unwrap();
        let (_, data) = &finished[1];
        let first: Value =
            serde_json::from_slice(data.split(|&b| b == b'\n').next().unwrap()).unwrap();
        assert_eq!(first["index"], "vpn");
        assert_eq!(first["user"], "j.smith@example.com");
    }
    assert_eq!(
        server.sandbox.splunk.searches()[0],
        "search user=\"j.smith@example.com\""
    );
    server.sandbox.splunk.throttle(1);
    let e = run(json!({"query": "user=dana@example.com", "since": "2026-11-01T00:00:00Z"}))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(
        e.to_string().contains("concurrent historical searches"),
        "{e}"
    );
    let out = run(json!({"query": "user=dana@example.com", "since": "2026-11-01T00:00:00Z"}))
        .await
        .unwrap();
    assert_eq!(out["records"], 40);
}

/// One export row for `result`.
fn row(offset: usize, result: Value) -> String {
    format!(
        "{}\n",
        json!({"preview": false, "offset": offset, "result": result})
    )
}

#[tokio::test]
async fn results_summarise_their_addresses_whatever_the_time_rendering() {
    let server = MockServer::start().await;
    let mut body = String::from(
        "{\"preview\":true,\"offset\":0,\"result\":{\"src_ip\":\"192.0.2.99\",\"_time\":\"2024-06-01T00:00:00.000+00:00\"}}\n",
    );
    let results = [
        json!({"_time": "2024-06-01T10:00:00.000-04:00", "src_ip": "203.0.113.45", "user": "j"}),
        json!({"_time": "2024-06-01T12:00:00.000+00:00", "user": "j", "action": "no address"}),
        json!({"_time": "2024-06-01T12:30:00.000+00:00", "src_ip": "unknown", "src": "wks-7"}),
        // `src` is a host name; `clientip` holds the address.
        json!({"_time": "1717236000", "src": "wks-7", "clientip": "198.51.100.23"}),
        json!({"_time": "2024-06-01 09:00:00.000 UTC", "src_ip": ["203.0.113.45", "192.0.2.1"]}),
        json!({"_time": "2024-06-01 23:00:00.000 -0500", "client_ip": "203.0.113.45"}),
        json!({"_time": "2024-06-01T08:00:00", "ip": "198.51.100.23"}),
    ];
    for (i, r) in results.iter().enumerate() {
        body.push_str(&row(i, r.clone()));
    }
    Mock::given(method("POST"))
        .and(path("/services/search/v2/jobs/export"))
        .respond_with(export(200, body))
        .mount(&server)
        .await;
    let h = Harness::new(&server.uri());
    let out = h.call(input()).await.unwrap();
    assert_eq!(out["records"], 7);
    assert_eq!(
        out["ip_addresses"],
        json!([
            {"ip": "203.0.113.45", "first_seen": "2024-06-01T09:00:00Z",
             "last_seen": "2024-06-02T04:00:00Z", "events": 3, "country": null},
            // The row without a zone counts, but its time is not guessed.
            {"ip": "198.51.100.23", "first_seen": "2024-06-01T10:00:00Z",
             "last_seen": "2024-06-01T10:00:00Z", "events": 2, "country": null},
        ])
    );
    assert_eq!(out["ip_addresses_truncated"], false);
}

#[tokio::test]
async fn more_than_500_addresses_are_truncated() {
    let server = MockServer::start().await;
    let mut body = String::new();
    for i in 0..600usize {
        let ip = format!("2001:db8:5::{i:x}");
        body.push_str(&row(
            i,
            json!({"_time": "2024-06-01T10:00:00.000+00:00", "src_ip": ip}),
        ));
    }
    body.push_str(&row(
        600,
        json!({"_time": "2024-06-01T11:00:00.000+00:00", "src_ip": "2001:db8:5::1f3"}),
    ));
    Mock::given(method("POST"))
        .and(path("/services/search/v2/jobs/export"))
        .respond_with(export(200, body))
        .mount(&server)
        .await;
    let h = Harness::new(&server.uri());
    let out = h.call(input()).await.unwrap();
    assert_eq!(out["records"], 601);
    assert_eq!(out["ip_addresses_truncated"], true);
    let ips = out["ip_addresses"].as_array().unwrap();
    assert_eq!(ips.len(), 500);
    assert!(ips.iter().all(|a| a["ip"] != "2001:db8:5::1f4"));
    let last_kept = ips.iter().find(|a| a["ip"] == "2001:db8:5::1f3").unwrap();
    assert_eq!(last_kept["events"], 2);
    assert_eq!(last_kept["last_seen"], "2024-06-01T11:00:00Z");
}
