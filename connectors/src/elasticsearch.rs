//! The `elasticsearch` connector: the hits of an Elasticsearch query saved as evidence.
//!
//! Settings: `base_url` (the cluster URL) and `api_key` (the base64 `encoded` API key, sent
//! as `Authorization: ApiKey <key>`; `{env: …}` or `{file: …}` only).
//!
//! Action `snapshot_search` (inputs `index`, `query`, `since`, optional `until`):
//! 1. `POST /<index>/_pit?keep_alive=5m` opens a point in time (`{"id": …}`), so every page
//!    reads the same view of the index while the snapshot runs.
//! 2. `POST /_search` pages through it with `search_after`, body
//!    `{"size", "query": {"bool": {"filter": [{"range": {"@timestamp": {"gte": since,
//!    "lt": until}}}, <query>]}}, "pit": {"id": <newest pit_id>, "keep_alive": "5m"},
//!    "sort": [{"@timestamp": "asc"}, {"_shard_doc": "asc"}], "search_after": <sort of the
//!    last hit>, "track_total_hits": false}` (no index in the path: it comes from the PIT).
//!    `query` is a query object (an optional outer `{"query": …}` is unwrapped) or a
//!    string, sent as a `query_string` query. Without `until` the range ends now, and the
//!    evidence records that bound.
//! 3. `DELETE /_pit` with `{"id": …}` closes the PIT when the snapshot ends, and also when
//!    it fails for good; a failure to close is only logged (the PIT expires on its own).
//!
//! Each hit (`_index`, `_id`, `_source`, `sort`, …) is written as one JSON line as its page
//! arrives, and its address noted ([`crate::ipsummary`]: the first valid of ECS
//! `source.ip`, `client.ip`, `related.ip`, timed by `@timestamp`) for the output's
//! `ip_addresses`. A page that fails transiently (429, 5xx, timeout) or reports shard failures
//! parks the open artifact, PIT id, `search_after` and counts in the call's resume slot;
//! the next attempt continues from that page. If the PIT expired meanwhile (404
//! `search_context_missing_exception`), a new one is opened once and paging continues
//! from the same `search_after`.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::evidence::{EvidenceError, EvidenceMeta, EvidenceWriter};
use crate::http_client::{
    display_url, ClientBuildError, HttpClient, HttpClientConfig, HttpResponse, RequestSpec,
};
use crate::ipsummary::{
    IpCollector, ELASTICSEARCH_HIT, IP_ADDRESSES_OUTPUT, IP_ADDRESSES_TRUNCATED_OUTPUT,
};
use crate::registry::{ConfigError, Settings};
use crate::secret::{Redactor, SecretValue};
use crate::splunk::{string_input, time_input};
use crate::{ActionCall, Connector, ConnectorError};

/// How long the cluster keeps the PIT between two requests: long enough to cover the
/// engine's back-off between attempts.
const KEEP_ALIVE: &str = "5m";
/// Hits per page.
const PAGE_SIZE: usize = 1000;

const OUTPUTS: &[FieldDecl] = &[
    FieldDecl {
        name: "evidence_id",
        ty: "string",
        required: true,
        description: "the evidence artifact (JSON lines, one hit per line)",
    },
    FieldDecl {
        name: "sha256",
        ty: "string",
        required: true,
        description: "SHA-256 of the artifact",
    },
    FieldDecl {
        name: "bytes",
        ty: "integer",
        required: true,
        description: "artifact size",
    },
    FieldDecl {
        name: "records",
        ty: "integer",
        required: true,
        description: "hits written",
    },
    FieldDecl {
        name: "pages",
        ty: "integer",
        required: true,
        description: "search pages read",
    },
    IP_ADDRESSES_OUTPUT,
    IP_ADDRESSES_TRUNCATED_OUTPUT,
];

/// The `elasticsearch` type's static declaration.
pub const TYPE: TypeDecl = TypeDecl {
    name: "elasticsearch",
    description: "Elasticsearch cluster (point-in-time search)",
    needs_instance: true,
    actions: &[ActionDecl {
        name: "snapshot_search",
        description: "Save every hit of a query over a time range as evidence",
        inputs: &[
            FieldDecl {
                name: "index",
                ty: "string",
                required: true,
                description: "index, alias, data stream or pattern, e.g. `logs-okta-*`",
            },
            FieldDecl {
                name: "query",
                ty: "any",
                required: true,
                description: "a query DSL object, or a query_string string",
            },
            FieldDecl {
                name: "since",
                ty: "string",
                required: true,
                description: "RFC 3339 start of the range (@timestamp >= since)",
            },
            FieldDecl {
                name: "until",
                ty: "string",
                required: false,
                description: "RFC 3339 end of the range (@timestamp < until; default: now)",
            },
        ],
        outputs: OUTPUTS,
        effect: Effect::Snapshot,
        undo: None,
        secret_outputs: &[],
    }],
};

/// A configured `elasticsearch` instance.
pub struct ElasticsearchConnector {
    instance: String,
    api_key: SecretValue,
    client: HttpClient,
    page_size: usize,
}

impl std::fmt::Debug for ElasticsearchConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElasticsearchConnector")
            .field("instance", &self.instance)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// Registry entry point.
pub fn build(
    name: &str,
    map: &Map<String, Value>,
    base_dir: &std::path::Path,
    redactor: &Redactor,
) -> Result<std::sync::Arc<dyn Connector>, Vec<ConfigError>> {
    let settings = Settings::new(
        name,
        map,
        ElasticsearchConnector::SETTINGS,
        base_dir,
        redactor,
    );
    Ok(std::sync::Arc::new(ElasticsearchConnector::from_settings(
        settings,
    )?))
}

/// A snapshot in progress, parked in the call's resume slot while a page is in flight.
struct Progress {
    /// The inputs this progress belongs to (index, query, since, until).
    key: String,
    writer: Box<dyn EvidenceWriter>,
    pit_id: String,
    /// The opening request's index and the full query, to reopen an expired PIT.
    index: String,
    query: Value,
    search_after: Option<Value>,
    pages: u64,
    records: u64,
    reopened: bool,
    /// The addresses of the hits written so far.
    ips: IpCollector,
}

impl ElasticsearchConnector {
    /// The settings this type takes.
    pub const SETTINGS: &'static [&'static str] = &["base_url", "api_key"];

    /// Build from an instance's settings (pure apart from reading the secret).
    pub fn from_settings(mut s: Settings<'_>) -> Result<Self, Vec<ConfigError>> {
        let instance = s.instance().to_string();
        let base_url = s.required_url("base_url");
        let api_key = s.required_secret("api_key");
        let redactor = s.redactor().clone();
        s.finish()?;
        let (Some(base_url), Some(api_key)) = (base_url, api_key) else {
            return Err(vec![ConfigError::new(
                &instance,
                None,
                "incomplete settings",
            )]);
        };
        ElasticsearchConnector::new(&instance, base_url, api_key, redactor).map_err(|e| {
            let setting = match &e {
                ClientBuildError::Url(_) => Some("base_url"),
                _ => None,
            };
            vec![ConfigError::new(&instance, setting, e.to_string())]
        })
    }

    /// Build from a complete configuration. No network I/O.
    pub fn new(
        instance: &str,
        base_url: url::Url,
        api_key: SecretValue,
        redactor: Redactor,
    ) -> Result<Self, ClientBuildError> {
        redactor.register(api_key.expose());
        let mut http = HttpClientConfig::new(instance);
        http.base_url = Some(base_url);
        let client = HttpClient::new(http, redactor)?;
        Ok(ElasticsearchConnector {
            instance: instance.to_string(),
            api_key,
            client,
            page_size: PAGE_SIZE,
        })
    }

    /// Change the number of hits per page (default 1,000).
    pub fn with_page_size(mut self, size: usize) -> Self {
        self.page_size = size.max(1);
        self
    }

    /// Change the bound on one request (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self, ClientBuildError> {
        let mut http = HttpClientConfig::new(&self.instance);
        http.base_url = self.client.base_url().cloned();
        http.timeout = timeout;
        self.client = HttpClient::new(http, self.client.redactor().clone())?;
        Ok(self)
    }

    fn request(&self, method: Method, url: &str) -> RequestSpec {
        RequestSpec::new(method, url)
            .auth("ApiKey", &self.api_key)
            .header("Accept", "application/json")
    }

    /// Send and map a non-2xx answer to its typed error.
    async fn send(
        &self,
        spec: RequestSpec,
        call: &ActionCall<'_>,
    ) -> Result<HttpResponse, ConnectorError> {
        self.client.send(spec, call.requests).await
    }

    async fn open_pit(&self, index: &str, call: &ActionCall<'_>) -> Result<String, ConnectorError> {
        let spec = self
            .request(Method::POST, &format!("{index}/_pit"))
            .query("keep_alive", KEEP_ALIVE);
        let resp = self.send(spec, call).await?;
        let body: Value = resp.json()?;
        body.get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                ConnectorError::Other(format!(
                    "POST /{index}/_pit: the answer has no point-in-time `id`"
                ))
            })
    }

    /// Close a PIT; a failure only costs the cluster memory until keep-alive ends.
    async fn close_pit(&self, pit_id: &str, call: &ActionCall<'_>) {
        let spec = self
            .request(Method::DELETE, "_pit")
            .json(json!({ "id": pit_id }));
        if let Err(e) = self.send(spec, call).await {
            tracing::warn!(connector = %self.instance, error = %e, "could not close the point in time");
        }
    }

    async fn snapshot_search(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        let index = index_input(call.input)?;
        let query = query_input(call.input)?;
        let since = time_input(call.input, "since", true)?;
        let until = time_input(call.input, "until", false)?;
        if let (Some((_, s)), Some((_, u))) = (&since, &until) {
            if u <= s {
                return Err(invalid("until", "must be later than `since`"));
            }
        }
        let since = since.map(|(raw, _)| raw).unwrap_or_default();
        let key = json!([index, query, since, until.as_ref().map(|(r, _)| r)]).to_string();
        let progress = match call.resume.take::<Progress>() {
            Some(p) if p.key == key => p,
            // Progress for other inputs (not possible with the engine's slots) is dropped;
            // its artifact stays an unlisted partial file.
            _ => {
                let until_defaulted = until.is_none();
                let until = until.map(|(raw, _)| raw).unwrap_or_else(|| {
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                });
                let full_query = json!({"bool": {"filter": [
                    {"range": {"@timestamp": {"gte": since, "lt": until}}},
                    query,
                ]}});
                let pit_id = self.open_pit(&index, &call).await?;
                let meta = EvidenceMeta {
                    connector_type: TYPE.name.to_string(),
                    instance: self.instance.clone(),
                    action: call.action.to_string(),
                    extension: "jsonl".to_string(),
                    media_type: "application/x-ndjson".to_string(),
                    source: json!({
                        "endpoint": "POST /_search",
                        "base_url": self.client.base_url().map(display_url),
                        "index": index,
                        "query": full_query,
                        "since": since,
                        "until": until,
                        "until_defaulted": until_defaulted,
                        "sort": sort(),
                        "page_size": self.page_size,
                    }),
                };
                let writer = match call.evidence.create(meta).await {
                    Ok(w) => w,
                    Err(e) => {
                        self.close_pit(&pit_id, &call).await;
                        return Err(evidence_err(e));
                    }
                };
                Progress {
                    key,
                    writer,
                    pit_id,
                    index,
                    query: full_query,
                    search_after: None,
                    pages: 0,
                    records: 0,
                    reopened: false,
                    ips: IpCollector::new(ELASTICSEARCH_HIT),
                }
            }
        };
        self.follow_pages(&call, progress).await
    }

    /// Fetch and store every page from `progress.search_after` on.
    async fn follow_pages(
        &self,
        call: &ActionCall<'_>,
        mut progress: Progress,
    ) -> Result<Value, ConnectorError> {
        loop {
            let mut body = json!({
                "size": self.page_size,
                "query": progress.query,
                "pit": {"id": progress.pit_id, "keep_alive": KEEP_ALIVE},
                "sort": sort(),
                "track_total_hits": false,
            });
            if let Some(after) = &progress.search_after {
                body["search_after"] = after.clone();
            }
            let spec = self.request(Method::POST, "_search").json(body);
            // Parked while the request is in flight: a transient failure, or the engine
            // abandoning the attempt at its timeout, leaves it for the next attempt.
            call.resume.put(progress);
            let outcome = self.client.send_raw(spec, call.requests).await;
            let Some(mut p) = call.resume.take::<Progress>() else {
                return Err(ConnectorError::Other(
                    "elasticsearch.snapshot_search: the snapshot's progress was lost".into(),
                ));
            };
            let resp = match outcome {
                Ok(r) if r.status.is_success() => r,
                Ok(r) if r.status.as_u16() == 404 && !p.reopened && pit_missing(&r) => {
                    // The PIT expired between attempts: a new one sees the index as it is
                    // now; `search_after` still continues after the last hit written.
                    p.reopened = true;
                    match self.open_pit(&p.index, call).await {
                        Ok(id) => {
                            p.pit_id = id;
                            progress = p;
                            continue;
                        }
                        Err(e) => return self.fail(call, p, e).await,
                    }
                }
                Ok(r) => {
                    let e = match self.client.error_for_status(
                        &Method::POST,
                        &self.client.resolve_url("_search")?,
                        &r,
                    ) {
                        Err(e) => e,
                        Ok(()) => ConnectorError::Other("unexpected status".into()),
                    };
                    return self.fail(call, p, e).await;
                }
                Err(e) => return self.fail(call, p, e).await,
            };
            let mut page: Value = match resp.json() {
                Ok(v) => v,
                Err(e) => return self.fail(call, p, e).await,
            };
            drop(resp);
            if let Some(id) = page.get("pit_id").and_then(Value::as_str) {
                p.pit_id = id.to_string();
            }
            if let Some(problem) = incomplete(&page) {
                let e = ConnectorError::Transient {
                    retry_after: None,
                    message: format!("POST /_search: page {}: {problem}", p.pages + 1),
                };
                return self.fail(call, p, e).await;
            }
            // Taken, not cloned: a page is the largest thing held in memory.
            let hits = match page.pointer_mut("/hits/hits").map(Value::take) {
                Some(Value::Array(hits)) => hits,
                _ => Vec::new(),
            };
            let mut chunk = Vec::new();
            for hit in &hits {
                if let Err(e) = serde_json::to_writer(&mut chunk, hit) {
                    let e = ConnectorError::Other(format!("cannot encode a hit: {e}"));
                    return self.fail(call, p, e).await;
                }
                chunk.push(b'\n');
            }
            if !chunk.is_empty() {
                if let Err(e) = p.writer.write(&chunk).await {
                    return self.fail(call, p, evidence_err(e)).await;
                }
            }
            for hit in &hits {
                p.ips.feed(hit);
            }
            let n = hits.len() as u64;
            p.writer.add_records(n);
            p.records += n;
            p.pages += 1;
            // A page shorter than `size` is the last one (a partial page from failed
            // shards was refused above).
            if hits.len() < self.page_size {
                return self.finish(call, p).await;
            }
            match hits.last().and_then(|h| h.get("sort")) {
                Some(after) => {
                    p.search_after = Some(after.clone());
                    progress = p;
                }
                None => {
                    let e = ConnectorError::Other(format!(
                        "POST /_search: page {}: the last hit has no `sort` values",
                        p.pages
                    ));
                    return self.fail(call, p, e).await;
                }
            }
        }
    }

    /// Transient: park the progress for the next attempt. Otherwise: close the PIT and
    /// give up (the unfinished artifact stays an unlisted partial file).
    async fn fail(
        &self,
        call: &ActionCall<'_>,
        p: Progress,
        e: ConnectorError,
    ) -> Result<Value, ConnectorError> {
        if e.is_transient() {
            call.resume.put(p);
        } else {
            self.close_pit(&p.pit_id, call).await;
        }
        Err(e)
    }

    async fn finish(&self, call: &ActionCall<'_>, p: Progress) -> Result<Value, ConnectorError> {
        self.close_pit(&p.pit_id, call).await;
        let record = p.writer.finish().await.map_err(evidence_err)?;
        let mut out = json!({
            "evidence_id": record.evidence_id,
            "sha256": record.sha256,
            "bytes": record.bytes,
            "records": record.records,
            "pages": p.pages,
            "path": record.path,
        });
        p.ips.add_to(&mut out);
        Ok(out)
    }
}

#[async_trait]
impl Connector for ElasticsearchConnector {
    fn type_name(&self) -> &'static str {
        TYPE.name
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        match call.action {
            "snapshot_search" => self.snapshot_search(call).await,
            other => Err(ConnectorError::Other(format!(
                "connector type `elasticsearch` has no action `{other}`"
            ))),
        }
    }
}

/// Oldest first; `_shard_doc` breaks ties so `search_after` never skips or repeats a hit.
fn sort() -> Value {
    json!([{"@timestamp": "asc"}, {"_shard_doc": "asc"}])
}

/// A 404 that says the PIT is gone (rather than a wrong path).
fn pit_missing(resp: &HttpResponse) -> bool {
    String::from_utf8_lossy(&resp.body).contains("search_context_missing_exception")
}

/// Why a 200 page cannot be trusted to be complete, if it cannot.
fn incomplete(page: &Value) -> Option<String> {
    if page.get("timed_out").and_then(Value::as_bool) == Some(true) {
        return Some("the search timed out on the cluster".to_string());
    }
    let failed = page
        .pointer("/_shards/failed")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if failed > 0 {
        let reason = page
            .pointer("/_shards/failures/0/reason")
            .map(|r| {
                let ty = r.get("type").and_then(Value::as_str).unwrap_or("");
                let reason = r.get("reason").and_then(Value::as_str).unwrap_or("");
                format!(": {ty}: {reason}")
            })
            .unwrap_or_default();
        return Some(format!("{failed} shard(s) failed{reason}"));
    }
    None
}

/// The `index` input: one or more comma-separated names or patterns, no path characters.
fn index_input(input: &Value) -> Result<String, ConnectorError> {
    let index = string_input(input, "index")?;
    if let Some(c) = index
        .chars()
        .find(|c| matches!(c, '/' | '\\' | '?' | '#' | '"' | '<' | '>' | '|') || c.is_whitespace())
    {
        return Err(invalid(
            "index",
            format!("`{index}` contains `{c}`, which index names cannot contain"),
        ));
    }
    if index.starts_with('_') {
        return Err(invalid("index", format!("`{index}` cannot start with `_`")));
    }
    Ok(index)
}

/// The `query` input as a query clause.
fn query_input(input: &Value) -> Result<Value, ConnectorError> {
    match input.get("query") {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            Ok(json!({"query_string": {"query": s.trim()}}))
        }
        Some(Value::Object(o)) if o.is_empty() => Err(invalid("query", "must not be empty")),
        Some(Value::Object(o)) => match o.get("query") {
            Some(inner @ Value::Object(_)) if o.len() == 1 => Ok(inner.clone()),
            _ => Ok(Value::Object(o.clone())),
        },
        Some(Value::String(_)) => Err(invalid("query", "must not be empty")),
        Some(Value::Null) | None => Err(invalid("query", "is required")),
        Some(_) => Err(invalid(
            "query",
            "must be a query object (e.g. {\"term\": {\"user.name\": \"x\"}}) or a query string",
        )),
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidInput {
        field: field.to_string(),
        message: message.into(),
    }
}

fn evidence_err(e: EvidenceError) -> ConnectorError {
    ConnectorError::Evidence(e.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_forms() {
        assert_eq!(
            query_input(&json!({"query": "user.name:x"})).unwrap(),
            json!({"query_string": {"query": "user.name:x"}})
        );
        let term = json!({"term": {"user.name": "x"}});
        assert_eq!(query_input(&json!({"query": term})).unwrap(), term);
        assert_eq!(
            query_input(&json!({"query": {"query": term}})).unwrap(),
            term
        );
        for bad in [json!({}), json!({"query": 3}), json!({"query": {}})] {
            assert!(matches!(
                query_input(&bad),
                Err(ConnectorError::InvalidInput { field, .. }) if field == "query"
            ));
        }
    }

    #[test]
    fn index_names_are_checked() {
        assert_eq!(
            index_input(&json!({"index": "logs-okta-*,vpn"})).unwrap(),
            "logs-okta-*,vpn"
        );
        for bad in ["a/b", "_all", "a b", "x?y"] {
            assert!(index_input(&json!({ "index": bad })).is_err(), "{bad}");
        }
    }

    #[test]
    fn incomplete_pages_are_noticed() {
        assert!(incomplete(&json!({"timed_out": false, "_shards": {"failed": 0}})).is_none());
        assert!(incomplete(&json!({"timed_out": true})).is_some());
        let text = incomplete(&json!({"_shards": {"failed": 1, "failures": [
            {"reason": {"type": "no_shard_available_action_exception", "reason": "x"}}]}}))
        .unwrap_or_default();
        assert!(
            text.contains("no_shard_available_action_exception"),
            "{text}"
        );
    }
}
