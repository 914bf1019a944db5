//! A stateful imitation of the Elasticsearch point-in-time search the `elasticsearch`
//! connector makes, mounted under `/elasticsearch`
//! (so `base_url: http://127.0.0.1:PORT/elasticsearch`):
//!
//! - `POST /{index}/_pit?keep_alive=…`: `{"id": …}`; `index` may be a comma-separated list
//!   of names or `*` patterns; none matching gives 404 `index_not_found_exception`.
//! - `POST /_search` with `pit`, `size`, `query`, `sort`, `search_after`: the hits in
//!   `@timestamp` then document order, each with `sort: [epoch millis, doc number]`, and a
//!   fresh `pit_id` on every answer (older ids keep working, as in Elasticsearch). An
//!   unknown PIT gives 404 `search_context_missing_exception`. Understood queries:
//!   `bool` (`filter`/`must` lists), `range` on `@timestamp` (`gte`/`gt`/`lte`/`lt`),
//!   `term`/`match` on a dotted `_source` field, `match_all`, and `query_string` (`field:
//!   value`, or text anywhere in the document); others give 400 `parsing_exception`.
//! - `DELETE /_pit` with `{"id": …}`: `{"succeeded": true, "num_freed": 1}`, 404 if unknown.
//!
//! Every call needs `Authorization: ApiKey` [`SANDBOX_API_KEY`] (else 401 with
//! Elasticsearch's error body). [`ElasticsearchSandbox::throttle`] answers the next calls
//! with 429 `es_rejected_execution_exception`. Seeded with 400 events in `logs-okta` and
//! `logs-vpn` (320 about `j.smith@example.com`, 80 about `dana@example.com`) from
//! 2026-11-20T00:00:00Z, 5 minutes apart, with ECS `source.ip` and `source.geo` (the
//! suspect's from [`super::addresses`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{json, Value};

use super::addresses;

/// The suspect's sources, in turn: laptop farm, VPN exit, abroad (IPv4 and IPv6).
const SUSPECT_ADDRESSES: [&str; 3] = [
    addresses::US_RESIDENTIAL,
    addresses::VPN_EXIT,
    addresses::FOREIGN,
];

/// The API key the sandbox accepts (a fixed, public sandbox credential).
pub const SANDBOX_API_KEY: &str = "c2FuZGJveC1pZDpzYW5kYm94LWVsYXN0aWMta2V5";

#[derive(Debug, Clone)]
struct Doc {
    index: String,
    id: String,
    millis: i64,
    source: Value,
}

#[derive(Debug, Default)]
struct World {
    docs: Vec<Doc>,
    /// PIT id → the indices it covers (several ids may share one PIT).
    pits: HashMap<String, Vec<String>>,
    next_pit: u64,
    throttle: u32,
}

/// The sandbox's Elasticsearch state. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct ElasticsearchSandbox {
    world: Arc<Mutex<World>>,
}

impl ElasticsearchSandbox {
    /// Seeded with the demonstration's log events.
    pub fn seeded() -> ElasticsearchSandbox {
        let s = ElasticsearchSandbox::default();
        let start = Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).single();
        if let (Ok(mut w), Some(start)) = (s.world.lock(), start) {
            for i in 0..400usize {
                let user = if i % 5 == 4 {
                    "dana@example.com"
                } else {
                    "j.smith@example.com"
                };
                let t = start + Duration::minutes(5 * i as i64);
                let ip = if user == "dana@example.com" {
                    addresses::OFFICE
                } else {
                    SUSPECT_ADDRESSES[i % SUSPECT_ADDRESSES.len()]
                };
                let (index, action) = if i % 2 == 0 {
                    ("logs-okta", "user.session.start")
                } else {
                    ("logs-vpn", "gateway-connected")
                };
                w.docs.push(Doc {
                    index: index.to_string(),
                    id: format!("evt-{i:04}"),
                    millis: t.timestamp_millis(),
                    source: json!({
                        "@timestamp": t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        "user": {"name": user},
                        "event": {"action": action},
                        "source": {"ip": ip, "geo": {"country_iso_code": addresses::geo(ip).map(|g| g.0)}},
                    }),
                });
            }
        }
        s
    }

    /// Answer the next `n` calls with 429.
    pub fn throttle(&self, n: u32) {
        if let Ok(mut w) = self.world.lock() {
            w.throttle = n;
        }
    }

    /// Points in time still open (each may have several ids).
    pub fn open_pits(&self) -> usize {
        self.world
            .lock()
            .map(|w| {
                w.pits
                    .keys()
                    .filter_map(|k| k.rsplit_once('-').map(|(b, _)| b))
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
            })
            .unwrap_or(0)
    }
}

/// The `/elasticsearch` routes.
pub fn router(state: ElasticsearchSandbox) -> Router {
    Router::new()
        .route("/{index}/_pit", post(open_pit))
        .route("/_search", post(search))
        .route("/_pit", delete(close_pit))
        .with_state(state)
}

fn es_error(status: StatusCode, ty: &str, reason: &str) -> Response {
    let body = json!({"error": {"root_cause": [{"type": ty, "reason": reason}],
                                "type": ty, "reason": reason},
                      "status": status.as_u16()});
    (status, Json(body)).into_response()
}

/// Auth and throttling, shared by every route.
fn gate(s: &ElasticsearchSandbox, headers: &HeaderMap) -> Option<Response> {
    let ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("ApiKey {SANDBOX_API_KEY}"));
    if !ok {
        return Some(es_error(
            StatusCode::UNAUTHORIZED,
            "security_exception",
            "unable to authenticate with provided credentials and anonymous access is not allowed for this request",
        ));
    }
    let mut w = s.world.lock().ok()?;
    if w.throttle > 0 {
        w.throttle -= 1;
        return Some(es_error(
            StatusCode::TOO_MANY_REQUESTS,
            "es_rejected_execution_exception",
            "rejected execution of search: queue capacity reached",
        ));
    }
    None
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, rest)) => {
            name.starts_with(prefix)
                && (rest.is_empty()
                    || (0..=name.len() - prefix.len())
                        .any(|i| pattern_matches(rest, &name[prefix.len() + i..])))
        }
    }
}

async fn open_pit(
    State(s): State<ElasticsearchSandbox>,
    headers: HeaderMap,
    Path(index): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    if !q.contains_key("keep_alive") {
        return es_error(
            StatusCode::BAD_REQUEST,
            "action_request_validation_exception",
            "Validation Failed: 1: [keep_alive] is not specified;",
        );
    }
    let Ok(mut w) = s.world.lock() else {
        return es_error(StatusCode::INTERNAL_SERVER_ERROR, "exception", "state");
    };
    let patterns: Vec<String> = index.split(',').map(str::to_string).collect();
    let known = w
        .docs
        .iter()
        .any(|d| patterns.iter().any(|p| pattern_matches(p, &d.index)));
    if !known {
        return es_error(
            StatusCode::NOT_FOUND,
            "index_not_found_exception",
            &format!("no such index [{index}]"),
        );
    }
    w.next_pit += 1;
    let id = format!("sandbox-pit-{}-0", w.next_pit);
    w.pits.insert(id.clone(), patterns);
    (StatusCode::OK, Json(json!({"id": id}))).into_response()
}

async fn close_pit(
    State(s): State<ElasticsearchSandbox>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let Ok(mut w) = s.world.lock() else {
        return es_error(StatusCode::INTERNAL_SERVER_ERROR, "exception", "state");
    };
    let Some(id) = body.get("id").and_then(Value::as_str) else {
        return es_error(
            StatusCode::BAD_REQUEST,
            "parsing_exception",
            "[id] is missing",
        );
    };
    // Every id of the same PIT goes together.
    let base = id.rsplit_once('-').map(|(b, _)| b.to_string());
    let before = w.pits.len();
    w.pits
        .retain(|k, _| k.rsplit_once('-').map(|(b, _)| b.to_string()) != base);
    if w.pits.len() == before {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"succeeded": true, "num_freed": 0})),
        )
            .into_response();
    }
    (
        StatusCode::OK,
        Json(json!({"succeeded": true, "num_freed": 1})),
    )
        .into_response()
}

/// The value at a dotted path of a document's source.
fn field<'a>(source: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(source, |v, k| v.get(k))
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Evaluate a query on one document; Err names a query the sandbox does not understand.
fn eval(query: &Value, doc: &Doc) -> Result<bool, String> {
    let Some((kind, body)) = query.as_object().and_then(|o| o.iter().next()) else {
        return Err("query must be an object with one clause".into());
    };
    match kind.as_str() {
        "match_all" => Ok(true),
        "bool" => {
            for key in ["filter", "must"] {
                let clauses = match body.get(key) {
                    Some(Value::Array(a)) => a.clone(),
                    Some(one @ Value::Object(_)) => vec![one.clone()],
                    _ => Vec::new(),
                };
                for c in &clauses {
                    if !eval(c, doc)? {
                        return Ok(false);
                    }
                }
            }
            Ok(true)
        }
        "range" => {
            let Some((name, bounds)) = body.as_object().and_then(|o| o.iter().next()) else {
                return Err("[range] needs a field".into());
            };
            if name != "@timestamp" {
                return Err(format!(
                    "[range] on `{name}` is not supported by the sandbox"
                ));
            }
            let bound = |k: &str| -> Result<Option<i64>, String> {
                match bounds.get(k).and_then(Value::as_str) {
                    None => Ok(None),
                    Some(t) => DateTime::parse_from_rfc3339(t)
                        .map(|d| Some(d.timestamp_millis()))
                        .map_err(|_| format!("failed to parse date field [{t}]")),
                }
            };
            let m = doc.millis;
            Ok(bound("gte")?.is_none_or(|b| m >= b)
                && bound("gt")?.is_none_or(|b| m > b)
                && bound("lte")?.is_none_or(|b| m <= b)
                && bound("lt")?.is_none_or(|b| m < b))
        }
        "term" | "match" => {
            let Some((name, want)) = body.as_object().and_then(|o| o.iter().next()) else {
                return Err(format!("[{kind}] needs a field"));
            };
            let want = want
                .get("value")
                .or_else(|| want.get("query"))
                .unwrap_or(want);
            Ok(field(&doc.source, name).map(value_text) == Some(value_text(want)))
        }
        "query_string" => {
            let q = body.get("query").and_then(Value::as_str).unwrap_or("");
            match q.split_once(':') {
                Some((name, value)) if !name.contains(' ') => {
                    let value = value.trim().trim_matches('"');
                    Ok(field(&doc.source, name).map(value_text).as_deref() == Some(value))
                }
                _ => Ok(doc.source.to_string().contains(q.trim_matches('"'))),
            }
        }
        other => Err(format!("unknown query [{other}]")),
    }
}

async fn search(
    State(s): State<ElasticsearchSandbox>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let Ok(mut w) = s.world.lock() else {
        return es_error(StatusCode::INTERNAL_SERVER_ERROR, "exception", "state");
    };
    let Some(pit) = body.pointer("/pit/id").and_then(Value::as_str) else {
        return es_error(
            StatusCode::BAD_REQUEST,
            "action_request_validation_exception",
            "the sandbox only answers point-in-time searches",
        );
    };
    let Some(patterns) = w.pits.get(pit).cloned() else {
        return es_error(
            StatusCode::NOT_FOUND,
            "search_context_missing_exception",
            &format!("No search context found for id [{pit}]"),
        );
    };
    let size = body.get("size").and_then(Value::as_u64).unwrap_or(10) as usize;
    let after: Option<(i64, u64)> = body
        .get("search_after")
        .and_then(|a| Some((a.get(0)?.as_i64()?, a.get(1)?.as_u64()?)));
    let query = body
        .get("query")
        .cloned()
        .unwrap_or(json!({"match_all": {}}));
    let mut hits = Vec::new();
    for (n, doc) in w.docs.iter().enumerate() {
        if !patterns.iter().any(|p| pattern_matches(p, &doc.index)) {
            continue;
        }
        let key = (doc.millis, n as u64);
        if after.is_some_and(|a| key <= a) {
            continue;
        }
        match eval(&query, doc) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(reason) => return es_error(StatusCode::BAD_REQUEST, "parsing_exception", &reason),
        }
        hits.push(json!({"_index": doc.index, "_id": doc.id, "_score": null,
                         "_source": doc.source, "sort": [doc.millis, n]}));
        if hits.len() == size {
            break;
        }
    }
    // A fresh id for the same PIT on every answer, as Elasticsearch may do.
    let base = pit
        .rsplit_once('-')
        .map(|(b, _)| b)
        .unwrap_or(pit)
        .to_string();
    let gen = pit
        .rsplit_once('-')
        .and_then(|(_, g)| g.parse::<u64>().ok())
        .unwrap_or(0);
    let new_id = format!("{base}-{}", gen + 1);
    w.pits.insert(new_id.clone(), patterns);
    (
        StatusCode::OK,
        Json(json!({
            "pit_id": new_id, "took": 1, "timed_out": false,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {"max_score": null, "hits": hits},
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_patterns() {
        assert!(pattern_matches("logs-*", "logs-okta"));
        assert!(pattern_matches("*okta", "logs-okta"));
        assert!(pattern_matches("logs-okta", "logs-okta"));
        assert!(!pattern_matches("logs-o", "logs-okta"));
        assert!(!pattern_matches("vpn-*", "logs-okta"));
    }
}
