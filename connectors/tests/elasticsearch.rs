//! The `elasticsearch` connector against `wiremock`: the exact PIT open / search / close
//! requests, 2,500 hits over 13 pages arriving whole and in order with the newest `pit_id`
//! always sent, resume after a failed page, the PIT closed on failure, error mapping
//! (400/401/403/404/429/5xx), a timeout, and no API key in any error.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cordon_connectors::elasticsearch::ElasticsearchConnector;
use cordon_connectors::registry::Registry;
use cordon_connectors::secret::{Redactor, SecretValue};
use cordon_connectors::{ActionCall, Connector, ConnectorError, RequestLog, ResumeSlot};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::MemSink;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const KEY: &str = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==";
const SINCE: &str = "2024-06-01T00:00:00Z";
const UNTIL: &str = "2024-06-02T00:00:00Z";
const TOTAL: usize = 2_500;
const PAGE: usize = 200;

fn input() -> Value {
    json!({"index": "logs-okta", "query": {"term": {"user.name": "j.smith@example.com"}},
           "since": SINCE, "until": UNTIL})
}

fn full_query() -> Value {
    json!({"bool": {"filter": [
        {"range": {"@timestamp": {"gte": SINCE, "lt": UNTIL}}},
        {"term": {"user.name": "j.smith@example.com"}},
    ]}})
}

fn hit(i: usize) -> Value {
    json!({"_index": "logs-okta", "_id": format!("doc{i}"),
           "_source": {"@timestamp": format!("2024-06-01T00:{:02}:{:02}Z", i / 60 % 60, i % 60),
                       "user": {"name": "j.smith@example.com"}, "n": i,
                       "source": {"ip": if i % 2 == 0 { "198.51.100.23" } else { "203.0.113.45" }}},
           "sort": [1_717_200_000_000u64 + i as u64, i]})
}

fn expected_bytes(range: std::ops::Range<usize>) -> Vec<u8> {
    let mut out = Vec::new();
    for i in range {
        out.extend_from_slice(hit(i).to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// Answers `POST /_search` from the `search_after` it is sent, checking the PIT id is the
/// newest one handed out; can fail chosen requests with 503.
#[derive(Clone, Default)]
struct Searcher {
    state: Arc<Mutex<SearchState>>,
}

#[derive(Default)]
struct SearchState {
    requests: usize,
    newest_pit: String,
    fail_requests: Vec<usize>,
    starts: Vec<usize>,
    bodies: Vec<Value>,
}

impl Respond for Searcher {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let mut s = self.state.lock().unwrap();
        s.requests += 1;
        let n = s.requests;
        if s.fail_requests.contains(&n) {
            return ResponseTemplate::new(503).set_body_json(json!({
                "error": {"type": "unavailable_shards_exception", "reason": "try again"},
                "status": 503}));
        }
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        s.bodies.push(body.clone());
        let expected_pit = if s.newest_pit.is_empty() {
            "pit-0".to_string()
        } else {
            s.newest_pit.clone()
        };
        if body["pit"]["id"] != json!(expected_pit) {
            return ResponseTemplate::new(404).set_body_json(json!({
                "error": {"type": "search_context_missing_exception", "reason": "stale pit"},
                "status": 404}));
        }
        let start = match body.get("search_after") {
            Some(after) => after[1].as_u64().unwrap() as usize + 1,
            None => 0,
        };
        s.starts.push(start);
        let size = body["size"].as_u64().unwrap() as usize;
        let hits: Vec<Value> = (start..(start + size).min(TOTAL)).map(hit).collect();
        s.newest_pit = format!("pit-{n}");
        ResponseTemplate::new(200).set_body_json(json!({
            "pit_id": s.newest_pit, "took": 3, "timed_out": false,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {"hits": hits}}))
    }
}

struct Harness {
    connector: ElasticsearchConnector,
    sink: MemSink,
    log: RequestLog,
    resume: ResumeSlot,
}

impl Harness {
    fn new(base_url: &str) -> Harness {
        let connector = ElasticsearchConnector::new(
            "es",
            url::Url::parse(base_url).unwrap(),
            SecretValue::new(KEY),
            Redactor::new(),
        )
        .unwrap()
        .with_page_size(PAGE);
        Harness {
            connector,
            sink: MemSink::default(),
            log: RequestLog::default(),
            resume: ResumeSlot::default(),
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

async fn mount_open(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/logs-okta/_pit"))
        .and(query_param("keep_alive", "5m"))
        .and(header("authorization", format!("ApiKey {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "pit-0"})))
        .mount(server)
        .await;
}

async fn mount_search(server: &MockServer) -> Searcher {
    let searcher = Searcher::default();
    Mock::given(method("POST"))
        .and(path("/_search"))
        .and(header("authorization", format!("ApiKey {KEY}").as_str()))
        .and(header("content-type", "application/json"))
        .respond_with(searcher.clone())
        .mount(server)
        .await;
    searcher
}

async fn mount_close(server: &MockServer, pit: &str, times: u64) {
    Mock::given(method("DELETE"))
        .and(path("/_pit"))
        .and(header("authorization", format!("ApiKey {KEY}").as_str()))
        .and(body_json(json!({ "id": pit })))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"succeeded": true, "num_freed": 1})),
        )
        .expect(times)
        .mount(server)
        .await;
}

fn assert_no_key(e: &ConnectorError) {
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains(KEY), "{text}");
    }
}

#[tokio::test]
async fn thirteen_pages_arrive_whole_in_order_and_the_pit_is_closed() {
    let server = MockServer::start().await;
    mount_open(&server).await;
    let searcher = mount_search(&server).await;
    mount_close(&server, "pit-13", 1).await;
    let h = Harness::new(&server.uri());
    let out = h.call(input()).await.unwrap();
    let expected = expected_bytes(0..TOTAL);
    assert_eq!(out["records"], TOTAL as u64);
    assert_eq!(out["pages"], 13);
    assert_eq!(out["bytes"], expected.len() as u64);
    assert_eq!(out["sha256"], hex::encode(Sha256::digest(&expected)));
    let finished = h.sink.finished.lock().unwrap();
    assert_eq!(finished[0].1, expected);
    let source = &finished[0].0.meta.source;
    assert_eq!(source["index"], "logs-okta");
    assert_eq!(source["query"], full_query());
    assert_eq!(source["until"], UNTIL);
    assert!(!source.to_string().contains(KEY));
    let state = searcher.state.lock().unwrap();
    // Exact body of the first and a later page.
    assert_eq!(
        state.bodies[0],
        json!({"size": PAGE, "query": full_query(), "pit": {"id": "pit-0", "keep_alive": "5m"},
               "sort": [{"@timestamp": "asc"}, {"_shard_doc": "asc"}], "track_total_hits": false})
    );
    assert_eq!(
        state.bodies[1]["search_after"],
        json!([1_717_200_000_199u64, 199])
    );
    assert_eq!(state.bodies[1]["pit"]["id"], "pit-1");
    assert_eq!(state.starts, (0..13).map(|p| p * PAGE).collect::<Vec<_>>());
    let requests = h.log.take();
    assert_eq!(requests.len(), 15);
    assert_eq!(requests[0].path, "/logs-okta/_pit");
    assert_eq!(requests[14].method, "DELETE");
}

#[tokio::test]
async fn a_failed_page_resumes_from_that_page() {
    let server = MockServer::start().await;
    mount_open(&server).await;
    let searcher = mount_search(&server).await;
    searcher.state.lock().unwrap().fail_requests = vec![5];
    mount_close(&server, "pit-14", 1).await;
    let h = Harness::new(&server.uri());
    let e = h.call(input()).await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(
        e.to_string().contains("unavailable_shards_exception"),
        "{e}"
    );
    assert_no_key(&e);
    assert!(h.sink.finished.lock().unwrap().is_empty());
    let out = h.call(input()).await.unwrap();
    assert_eq!(out["records"], TOTAL as u64);
    assert_eq!(out["pages"], 13);
    assert_eq!(
        *h.sink.created.lock().unwrap(),
        1,
        "one artifact across attempts"
    );
    let expected = expected_bytes(0..TOTAL);
    assert_eq!(out["sha256"], hex::encode(Sha256::digest(&expected)));
    // Every hit counted once across both attempts.
    let events: Vec<&Value> = out["ip_addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["events"])
        .collect();
    assert_eq!(events, [&json!(TOTAL / 2), &json!(TOTAL / 2)]);
    let state = searcher.state.lock().unwrap();
    // Pages 1-4, then the retry starts at page 5 (hit 800), not at the beginning.
    assert_eq!(&state.starts[..5], &[0, 200, 400, 600, 800]);
    assert_eq!(state.starts.len(), 13);
    // The PIT was opened once.
    let opens = h
        .log
        .take()
        .iter()
        .filter(|r| r.path == "/logs-okta/_pit")
        .count();
    assert_eq!(opens, 1);
}

#[tokio::test]
async fn an_expired_pit_is_reopened_once() {
    let server = MockServer::start().await;
    mount_open(&server).await;
    let searcher = mount_search(&server).await;
    // The retry sends pit-3 but the cluster has forgotten it.
    searcher.state.lock().unwrap().fail_requests = vec![3];
    let h = Harness::new(&server.uri());
    h.call(input()).await.unwrap_err();
    searcher.state.lock().unwrap().newest_pit = "pit-0".into();
    Mock::given(method("DELETE"))
        .and(path("/_pit"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    // The stored PIT (pit-2) is now stale: 404, reopen (pit-0), continue from hit 400.
    let out = h.call(input()).await.unwrap();
    assert_eq!(out["records"], TOTAL as u64);
    let expected = expected_bytes(0..TOTAL);
    assert_eq!(out["sha256"], hex::encode(Sha256::digest(&expected)));
}

#[tokio::test]
async fn errors_are_typed_and_never_show_the_key() {
    for status in [400u16, 401, 403, 404, 429, 500, 503] {
        let server = MockServer::start().await;
        let body = json!({"error": {"root_cause": [], "type": "some_exception",
                                    "reason": format!("bad thing {KEY}")}, "status": status});
        Mock::given(method("POST"))
            .and(path("/logs-okta/_pit"))
            .respond_with(
                ResponseTemplate::new(status)
                    .set_body_json(body)
                    .insert_header("Retry-After", "4"),
            )
            .mount(&server)
            .await;
        let h = Harness::new(&server.uri());
        let e = h.call(input()).await.unwrap_err();
        assert_no_key(&e);
        assert!(e.to_string().contains("some_exception"), "{status}: {e}");
        match status {
            400 | 404 => assert!(matches!(e, ConnectorError::Rejected { .. }), "{e:?}"),
            401 | 403 => assert!(matches!(e, ConnectorError::Auth { .. }), "{e:?}"),
            429 => {
                assert!(matches!(e, ConnectorError::RateLimited { .. }));
                assert_eq!(e.retry_after(), Some(Duration::from_secs(4)));
            }
            _ => assert!(e.is_transient(), "{e:?}"),
        }
    }
}

#[tokio::test]
async fn a_rejected_page_closes_the_pit() {
    let server = MockServer::start().await;
    mount_open(&server).await;
    Mock::given(method("POST"))
        .and(path("/_search"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": {"type": "search_phase_execution_exception", "reason": "all shards failed"},
            "status": 400})))
        .mount(&server)
        .await;
    mount_close(&server, "pit-0", 1).await;
    let h = Harness::new(&server.uri());
    let e = h.call(input()).await.unwrap_err();
    assert!(
        matches!(e, ConnectorError::Rejected { status: 400, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("search_phase_execution_exception"));
}

#[tokio::test]
async fn shard_failures_are_transient() {
    let server = MockServer::start().await;
    mount_open(&server).await;
    Mock::given(method("POST"))
        .and(path("/_search"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "pit_id": "pit-0", "timed_out": false,
            "_shards": {"total": 2, "successful": 1, "failed": 1, "failures": [
                {"reason": {"type": "no_shard_available_action_exception", "reason": "x"}}]},
            "hits": {"hits": [hit(0)]}})))
        .mount(&server)
        .await;
    let h = Harness::new(&server.uri());
    let e = h.call(input()).await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(e
        .to_string()
        .contains("no_shard_available_action_exception"));
}

#[tokio::test]
async fn a_query_string_and_bad_inputs() {
    let server = MockServer::start().await;
    mount_open(&server).await;
    let searcher = mount_search(&server).await;
    let h = Harness::new(&server.uri());
    h.call(
        json!({"index": "logs-okta", "query": "user.name:\"j.smith@example.com\"",
                  "since": SINCE, "until": UNTIL}),
    )
    .await
    .unwrap();
    assert_eq!(
        searcher.state.lock().unwrap().bodies[0]["query"]["bool"]["filter"][1],
        json!({"query_string": {"query": "user.name:\"j.smith@example.com\""}})
    );
    for (input, field) in [
        (json!({"query": "x", "since": SINCE}), "index"),
        (
            json!({"index": "a/b", "query": "x", "since": SINCE}),
            "index",
        ),
        (json!({"index": "i", "since": SINCE}), "query"),
        (json!({"index": "i", "query": 5, "since": SINCE}), "query"),
        (json!({"index": "i", "query": "x", "since": "now"}), "since"),
        (
            json!({"index": "i", "query": "x", "since": UNTIL, "until": SINCE}),
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
async fn a_slow_cluster_is_a_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let h = Harness::new(&server.uri());
    let connector = h
        .connector
        .with_timeout(Duration::from_millis(300))
        .unwrap();
    assert!(!format!("{connector:?}").contains(KEY));
    let input = input();
    let e = connector
        .call(ActionCall {
            action: "snapshot_search",
            input: &input,
            idempotency_key: "k",
            run_id: "run1",
            step_id: "snap",
            attempt: 1,
            evidence: &h.sink,
            requests: &h.log,
            resume: &h.resume,
            prior: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Timeout(_)), "{e:?}");
}

#[tokio::test]
async fn configured_through_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), KEY).unwrap();
    let config: BTreeMap<String, Value> = serde_json::from_value(json!({
        "es": {"type": "elasticsearch", "base_url": "http://127.0.0.1:9200",
               "api_key": {"file": "key"}}
    }))
    .unwrap();
    let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
    assert!(registry.resolve("elasticsearch", Some("es")).is_ok());
    let bad: BTreeMap<String, Value> = serde_json::from_value(json!({
        "es": {"type": "elasticsearch", "base_url": "http://127.0.0.1:9200", "api_key": KEY}
    }))
    .unwrap();
    let Err(errors) = Registry::from_config(&bad, dir.path(), &Redactor::new()) else {
        panic!("a plain-text api_key must be refused");
    };
    let text = errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    assert!(text.contains("api_key"), "{text}");
    assert!(!text.contains(KEY), "{text}");
}

#[tokio::test]
async fn the_sandbox_serves_the_suspects_events_and_closes_the_pit() {
    use cordon_connectors::sandbox::Sandbox;
    let server = Sandbox::seeded().serve().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Sandbox::connector_config(&server.base_url(), dir.path()).unwrap();
    let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
    let connector: Arc<dyn Connector> = registry
        .resolve("elasticsearch", Some("elasticsearch-sandbox"))
        .unwrap();
    let sink = MemSink::default();
    let log = RequestLog::default();
    let resume = ResumeSlot::default();
    let call = |input: Value| {
        let connector = connector.clone();
        let (sink, log, resume) = (&sink, &log, &resume);
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
    // 400 events 5 minutes apart; 320 are the suspect's, half of them in logs-okta.
    let out = call(
        json!({"index": "logs-*", "query": {"term": {"user.name": "j.smith@example.com"}},
                          "since": "2026-11-01T00:00:00Z"}),
    )
    .await
    .unwrap();
    assert_eq!(out["records"], 320);
    assert_eq!(out["pages"], 1);
    // The suspect's sources: the laptop farm first, then the VPN exit and abroad.
    let ips: Vec<(&str, &str)> = out["ip_addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["ip"].as_str().unwrap(), a["country"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ips,
        [
            ("198.51.100.23", "US"),
            ("203.0.113.45", "US"),
            ("192.0.2.14", "CN")
        ]
    );
    let total: u64 = out["ip_addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["events"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 320);
    let out = call(
        json!({"index": "logs-okta", "query": "user.name:\"j.smith@example.com\"",
                          "since": "2026-11-20T00:00:00Z", "until": "2026-11-20T10:00:00Z"}),
    )
    .await
    .unwrap();
    // 120 events in 10 h, 60 in logs-okta (even numbers), of which i % 5 == 4 are Dana's.
    assert_eq!(out["records"], 48);
    assert_eq!(server.sandbox.elasticsearch.open_pits(), 0);
    server.sandbox.elasticsearch.throttle(1);
    let e = call(
        json!({"index": "logs-vpn", "query": {"match_all": {}}, "since": "2026-11-01T00:00:00Z"}),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ConnectorError::RateLimited { .. }), "{e:?}");
    let e =
        call(json!({"index": "nope", "query": {"match_all": {}}, "since": "2026-11-01T00:00:00Z"}))
            .await
            .unwrap_err();
    assert!(e.to_string().contains("index_not_found_exception"), "{e}");
}

/// Answers the k-th `POST /_search` with the k-th page.
struct Pages(Mutex<std::collections::VecDeque<Vec<Value>>>);

impl Respond for Pages {
    fn respond(&self, _req: &Request) -> ResponseTemplate {
        let hits = self.0.lock().unwrap().pop_front().unwrap_or_default();
        ResponseTemplate::new(200).set_body_json(json!({
            "pit_id": "pit-0", "timed_out": false,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {"hits": hits}}))
    }
}

/// A hit with `source` as its `_source` (plus `@timestamp` when given).
fn doc(n: usize, at: Option<Value>, source: Value) -> Value {
    let mut src = source;
    if let Some(at) = at {
        src["@timestamp"] = at;
    }
    json!({"_index": "logs-okta", "_id": format!("d{n}"), "_source": src, "sort": [n, n]})
}

async fn serve_pages(server: &MockServer, pages: Vec<Vec<Value>>) {
    mount_open(server).await;
    Mock::given(method("POST"))
        .and(path("/_search"))
        .respond_with(Pages(Mutex::new(pages.into())))
        .expect(3)
        .mount(server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/_pit"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"succeeded": true})))
        .mount(server)
        .await;
}

#[tokio::test]
async fn hits_summarise_their_addresses_across_pages() {
    let server = MockServer::start().await;
    let t = |s: &str| Some(json!(s));
    serve_pages(
        &server,
        vec![
            vec![
                doc(0, t("2024-06-01T10:00:00Z"),
                    json!({"source": {"ip": "203.0.113.45", "geo": {"country_iso_code": "US"}}})),
                doc(1, t("2024-06-01T10:01:00Z"), json!({"user": {"name": "j"}})),
                doc(2, t("2024-06-01T10:02:00Z"), json!({"source": {"ip": "203.0.113.450"}})),
            ],
            vec![
                // Flattened field names, as a document may be indexed.
                doc(3, t("2024-06-01T11:00:00.250+01:00"), json!({"source.ip": "203.0.113.45"})),
                doc(4, Some(json!(1_717_250_400_000u64)),
                    json!({"client": {"ip": "2001:db8:4a3::15", "geo": {"country_iso_code": "CN"}}})),
                doc(5, t("2024-06-01T09:00:00Z"), json!({"related": {"ip": ["192.0.2.14", "203.0.113.45"]}})),
            ],
            vec![doc(6, t("2024-06-01T23:00:00Z"),
                     json!({"source": {"ip": "203.0.113.45", "geo": {"country_iso_code": "NL"}}}))],
        ],
    )
    .await;
    let h = Harness {
        connector: ElasticsearchConnector::new(
            "es",
            url::Url::parse(&server.uri()).unwrap(),
            SecretValue::new(KEY),
            Redactor::new(),
        )
        .unwrap()
        .with_page_size(3),
        sink: MemSink::default(),
        log: RequestLog::default(),
        resume: ResumeSlot::default(),
    };
    let out = h.call(input()).await.unwrap();
    assert_eq!(
        (out["records"].as_u64(), out["pages"].as_u64()),
        (Some(7), Some(3))
    );
    assert_eq!(
        out["ip_addresses"],
        json!([
            {"ip": "192.0.2.14", "first_seen": "2024-06-01T09:00:00Z",
             "last_seen": "2024-06-01T09:00:00Z", "events": 1, "country": null},
            {"ip": "203.0.113.45", "first_seen": "2024-06-01T10:00:00Z",
             "last_seen": "2024-06-01T23:00:00Z", "events": 3, "country": "US"},
            {"ip": "2001:db8:4a3::15", "first_seen": "2024-06-01T14:00:00Z",
             "last_seen": "2024-06-01T14:00:00Z", "events": 1, "country": "CN"},
        ])
    );
    assert_eq!(out["ip_addresses_truncated"], false);
}

#[tokio::test]
async fn more_than_500_addresses_are_truncated() {
    let server = MockServer::start().await;
    let at = Some(json!("2024-06-01T10:00:00Z"));
    let page = |range: std::ops::Range<usize>| -> Vec<Value> {
        range
            .map(|i| {
                doc(
                    i,
                    at.clone(),
                    json!({"source": {"ip": format!("2001:db8:e::{i:x}")}}),
                )
            })
            .collect()
    };
    let mut last = page(400..450);
    last.push(doc(
        450,
        Some(json!("2024-06-02T10:00:00Z")),
        json!({"source": {"ip": "2001:db8:e::0"}}),
    ));
    serve_pages(&server, vec![page(0..200), page(200..400), last]).await;
    let h = Harness::new(&server.uri());
    let out = h.call(input()).await.unwrap();
    assert_eq!(out["records"], 451);
    // 450 distinct: under the cap.
    assert_eq!(out["ip_addresses_truncated"], false);
    assert_eq!(out["ip_addresses"].as_array().unwrap().len(), 450);

    let server = MockServer::start().await;
    let mut last = page(400..501);
    last.push(doc(
        501,
        at.clone(),
        json!({"source": {"ip": "2001:db8:e::0"}}),
    ));
    serve_pages(&server, vec![page(0..200), page(200..400), last]).await;
    let h = Harness::new(&server.uri());
    let out = h.call(input()).await.unwrap();
    assert_eq!(out["records"], 502);
    assert_eq!(out["ip_addresses_truncated"], true);
    let ips = out["ip_addresses"].as_array().unwrap();
    assert_eq!(ips.len(), 500);
    assert!(ips.iter().all(|a| a["ip"] != "2001:db8:e::1f4"));
    assert_eq!(ips[0]["ip"], "2001:db8:e::");
    assert_eq!(ips[0]["events"], 2);
}
