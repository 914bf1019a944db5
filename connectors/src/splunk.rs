//! The `splunk` connector: a Splunk search exported as forensic evidence.
//!
//! Settings: `base_url` (the search head's management port, e.g. `https://splunk:8089`) and
//! `token` (a Splunk authentication token, sent as `Authorization: Bearer`; `{env: …}` or
//! `{file: …}` only).
//!
//! Action `snapshot_search` (inputs `query`, `since`, optional `until`, RFC 3339):
//! `POST /services/search/v2/jobs/export`, form-encoded `search`, `output_mode=json`,
//! `earliest_time`, `latest_time`; on 404 (a search head older than 9.0.1) the deprecated
//! v1 route `POST /services/search/jobs/export` once. A query that does not start with a
//! command (`search …` or `| tstats …`) gets `search ` put in front, as Splunk requires.
//! Without `until` the search is bounded at the current time, and that bound is recorded.
//!
//! The export answers with one JSON object per line (`{"preview":false,"offset":N,
//! "result":{…}}`); the body is read chunk by chunk and every final row's `result` is
//! written as one JSON line into the evidence artifact as it arrives, so a result of any
//! size is never held in memory. Preview rows are skipped; a row with `ERROR`/`FATAL`
//! messages and no result fails the call, naming Splunk's message.
//!
//! Each result's address is noted as it goes by ([`crate::ipsummary`]): the first valid of
//! `src_ip`, `src`, `clientip`, `client_ip`, `ip`, timed by `_time` (RFC 3339 as Splunk's
//! JSON output writes it by default, other Splunk renderings and epoch seconds too); the
//! output lists them as `ip_addresses`.
//!
//! The export has no pages and keeps no search id, so there is nothing to resume: an
//! attempt that fails mid-stream leaves its artifact as an unlisted partial file and the
//! next attempt runs the export again into a new artifact (`pages` is always 1).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Value};

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::evidence::{EvidenceError, EvidenceMeta, EvidenceWriter};
use crate::http_client::{
    display_url, ClientBuildError, HttpClient, HttpClientConfig, RequestSpec,
};
use crate::ipsummary::{
    IpCollector, IP_ADDRESSES_OUTPUT, IP_ADDRESSES_TRUNCATED_OUTPUT, SPLUNK_RESULT,
};
use crate::registry::{ConfigError, Settings};
use crate::secret::{Redactor, SecretValue};
use crate::{ActionCall, Connector, ConnectorError};

/// The v2 export route (Splunk 9.0.1+).
pub const EXPORT_V2: &str = "services/search/v2/jobs/export";
/// The deprecated v1 route, used after a 404 from v2.
pub const EXPORT_V1: &str = "services/search/jobs/export";
/// Bound on one whole export, body included: a large search streams for minutes.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// A single row longer than this is refused rather than buffered without bound.
const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

const OUTPUTS: &[FieldDecl] = &[
    FieldDecl {
        name: "evidence_id",
        ty: "string",
        required: true,
        description: "the evidence artifact (JSON lines, one search result per line)",
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
        description: "search results written",
    },
    FieldDecl {
        name: "pages",
        ty: "integer",
        required: true,
        description: "responses read (always 1: the export streams everything at once)",
    },
    IP_ADDRESSES_OUTPUT,
    IP_ADDRESSES_TRUNCATED_OUTPUT,
];

/// The `splunk` type's static declaration.
pub const TYPE: TypeDecl = TypeDecl {
    name: "splunk",
    description: "Splunk search head (REST search export)",
    needs_instance: true,
    actions: &[ActionDecl {
        name: "snapshot_search",
        description: "Run a Splunk search over a time range and save every result as evidence",
        inputs: &[
            FieldDecl {
                name: "query",
                ty: "string",
                required: true,
                description: "SPL, e.g. `index=okta user=\"j.smith@example.com\"`",
            },
            FieldDecl {
                name: "since",
                ty: "string",
                required: true,
                description: "RFC 3339 start of the range (earliest_time)",
            },
            FieldDecl {
                name: "until",
                ty: "string",
                required: false,
                description: "RFC 3339 end of the range (latest_time; default: now)",
            },
        ],
        outputs: OUTPUTS,
        effect: Effect::Snapshot,
        undo: None,
        secret_outputs: &[],
    }],
};

/// A configured `splunk` instance.
pub struct SplunkConnector {
    instance: String,
    token: SecretValue,
    client: HttpClient,
    /// Bound on one whole export ([`EXPORT_TIMEOUT`] unless a test shortens it).
    export_timeout: Duration,
}

impl std::fmt::Debug for SplunkConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplunkConnector")
            .field("instance", &self.instance)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// Registry entry point.
pub fn build(
    name: &str,
    map: &serde_json::Map<String, Value>,
    base_dir: &std::path::Path,
    redactor: &Redactor,
) -> Result<std::sync::Arc<dyn Connector>, Vec<ConfigError>> {
    let settings = Settings::new(name, map, SplunkConnector::SETTINGS, base_dir, redactor);
    Ok(std::sync::Arc::new(SplunkConnector::from_settings(
        settings,
    )?))
}

impl SplunkConnector {
    /// The settings this type takes.
    pub const SETTINGS: &'static [&'static str] = &["base_url", "token"];

    /// Build from an instance's settings (pure apart from reading the secret).
    pub fn from_settings(mut s: Settings<'_>) -> Result<Self, Vec<ConfigError>> {
        let instance = s.instance().to_string();
        let base_url = s.required_url("base_url");
        let token = s.required_secret("token");
        let redactor = s.redactor().clone();
        s.finish()?;
        let (Some(base_url), Some(token)) = (base_url, token) else {
            return Err(vec![ConfigError::new(
                &instance,
                None,
                "incomplete settings",
            )]);
        };
        SplunkConnector::new(&instance, base_url, token, redactor).map_err(|e| {
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
        token: SecretValue,
        redactor: Redactor,
    ) -> Result<Self, ClientBuildError> {
        redactor.register(token.expose());
        let mut http = HttpClientConfig::new(instance);
        http.base_url = Some(base_url);
        let client = HttpClient::new(http, redactor)?;
        Ok(SplunkConnector {
            instance: instance.to_string(),
            token,
            client,
            export_timeout: EXPORT_TIMEOUT,
        })
    }

    /// Change the bound on one whole export (default 30 minutes).
    pub fn with_export_timeout(mut self, timeout: Duration) -> Self {
        self.export_timeout = timeout;
        self
    }

    fn export_request(&self, route: &str, search: &str, since: &str, until: &str) -> RequestSpec {
        RequestSpec::post(route)
            .auth("Bearer", &self.token)
            .header("Accept", "application/json")
            .form(vec![
                ("search".to_string(), search.into()),
                ("output_mode".to_string(), "json".into()),
                ("earliest_time".to_string(), since.into()),
                ("latest_time".to_string(), until.into()),
            ])
            .timeout(self.export_timeout)
    }

    async fn snapshot_search(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        let query = string_input(call.input, "query")?;
        let since = time_input(call.input, "since", true)?;
        let until = time_input(call.input, "until", false)?;
        if let (Some((_, s)), Some((_, u))) = (&since, &until) {
            if u <= s {
                return Err(invalid("until", "must be later than `since`"));
            }
        }
        let since = since.map(|(raw, _)| raw).unwrap_or_default();
        let until_defaulted = until.is_none();
        let until = until.map(|(raw, _)| raw).unwrap_or_else(|| {
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        });
        let search = search_string(&query);

        let mut route = EXPORT_V2;
        let resp = match self
            .client
            .send_streaming(
                self.export_request(route, &search, &since, &until),
                call.requests,
            )
            .await
        {
            Err(ConnectorError::Rejected { status: 404, .. }) => {
                route = EXPORT_V1;
                self.client
                    .send_streaming(
                        self.export_request(route, &search, &since, &until),
                        call.requests,
                    )
                    .await?
            }
            other => other?,
        };
        let url = self.client.resolve_url(route)?;
        let meta = EvidenceMeta {
            connector_type: TYPE.name.to_string(),
            instance: self.instance.clone(),
            action: call.action.to_string(),
            extension: "jsonl".to_string(),
            media_type: "application/x-ndjson".to_string(),
            source: json!({
                "endpoint": format!("POST {}", url.path()),
                "base_url": self.client.base_url().map(display_url),
                "search": search,
                "since": since,
                "until": until,
                "until_defaulted": until_defaulted,
                "output_mode": "json",
            }),
        };
        let writer = call.evidence.create(meta).await.map_err(evidence_err)?;
        self.stream_rows(resp, writer, &url).await
    }

    /// Copy every final row's `result` into `writer`, line by line, as the body arrives.
    async fn stream_rows(
        &self,
        mut resp: reqwest::Response,
        mut writer: Box<dyn EvidenceWriter>,
        url: &url::Url,
    ) -> Result<Value, ConnectorError> {
        let mut rows = RowSplitter::default();
        loop {
            // On failure the writer is dropped unfinished: the store keeps an unlisted
            // `.partial` file, and the engine's next attempt exports again.
            let chunk = resp.chunk().await.map_err(|e| {
                self.client
                    .body_error(&Method::POST, url, Some(self.export_timeout), e)
            })?;
            let out = match &chunk {
                Some(c) => rows.feed(c)?,
                None => rows.finish()?,
            };
            if !out.bytes.is_empty() {
                writer.write(&out.bytes).await.map_err(evidence_err)?;
            }
            writer.add_records(out.records);
            if chunk.is_none() {
                break;
            }
        }
        let record = writer.finish().await.map_err(evidence_err)?;
        let mut out = json!({
            "evidence_id": record.evidence_id,
            "sha256": record.sha256,
            "bytes": record.bytes,
            "records": record.records,
            "pages": 1,
            "path": record.path,
        });
        rows.ips.add_to(&mut out);
        Ok(out)
    }
}

#[async_trait]
impl Connector for SplunkConnector {
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
                "connector type `splunk` has no action `{other}`"
            ))),
        }
    }
}

/// Splunk requires the search string to begin with a command: `search …`, or a generating
/// command after a pipe (`| tstats …`).
pub fn search_string(query: &str) -> String {
    let q = query.trim();
    let first = q.split_whitespace().next().unwrap_or("");
    if q.starts_with('|') || first.eq_ignore_ascii_case("search") {
        q.to_string()
    } else {
        format!("search {q}")
    }
}

/// What one chunk of the export produced for the artifact.
#[derive(Debug, Default)]
struct RowOutput {
    bytes: Vec<u8>,
    records: u64,
}

/// Splits the NDJSON export into rows across chunk boundaries, keeping only the unfinished
/// last line between chunks, and notes each result's address.
#[derive(Debug)]
struct RowSplitter {
    partial: Vec<u8>,
    line_no: u64,
    ips: IpCollector,
}

impl Default for RowSplitter {
    fn default() -> Self {
        RowSplitter {
            partial: Vec::new(),
            line_no: 0,
            ips: IpCollector::new(SPLUNK_RESULT),
        }
    }
}

impl RowSplitter {
    fn feed(&mut self, chunk: &[u8]) -> Result<RowOutput, ConnectorError> {
        let mut out = RowOutput::default();
        let mut rest = chunk;
        // memchr: a byte-at-a-time search is most of the cost of a large export.
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            let (line, tail) = rest.split_at(pos);
            rest = &tail[1..];
            if self.partial.is_empty() {
                self.row(line, &mut out)?;
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.row(&whole, &mut out)?;
            }
        }
        if self.partial.len() + rest.len() > MAX_LINE_BYTES {
            return Err(ConnectorError::Other(format!(
                "splunk export: row {} is longer than {MAX_LINE_BYTES} bytes",
                self.line_no + 1
            )));
        }
        self.partial.extend_from_slice(rest);
        Ok(out)
    }

    fn finish(&mut self) -> Result<RowOutput, ConnectorError> {
        let mut out = RowOutput::default();
        let last = std::mem::take(&mut self.partial);
        self.row(&last, &mut out)?;
        Ok(out)
    }

    fn row(&mut self, line: &[u8], out: &mut RowOutput) -> Result<(), ConnectorError> {
        self.line_no += 1;
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            return Ok(());
        }
        let row: Value = serde_json::from_slice(trimmed).map_err(|e| {
            ConnectorError::Other(format!(
                "splunk export: row {} is not JSON ({:?} error at column {})",
                self.line_no,
                e.classify(),
                e.column()
            ))
        })?;
        if row.get("preview").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        match row.get("result") {
            Some(result) => {
                serde_json::to_writer(&mut out.bytes, result).map_err(|e| {
                    ConnectorError::Other(format!("splunk export: cannot encode a result: {e}"))
                })?;
                out.bytes.push(b'\n');
                out.records += 1;
                self.ips.feed(result);
            }
            None => {
                if let Some(text) = fatal_message(&row) {
                    return Err(ConnectorError::Other(format!(
                        "splunk export failed at row {}: {text}",
                        self.line_no
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The first `ERROR`/`FATAL` entry of a row's `messages`, as `TYPE: text`.
fn fatal_message(row: &Value) -> Option<String> {
    row.get("messages")?.as_array()?.iter().find_map(|m| {
        let ty = m.get("type")?.as_str()?;
        if ty.eq_ignore_ascii_case("ERROR") || ty.eq_ignore_ascii_case("FATAL") {
            let text = m.get("text").and_then(Value::as_str).unwrap_or("");
            Some(format!("{ty}: {text}"))
        } else {
            None
        }
    })
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

/// A required, non-empty string input.
pub(crate) fn string_input(input: &Value, field: &str) -> Result<String, ConnectorError> {
    match input.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Some(Value::String(_)) => Err(invalid(field, "must not be empty")),
        Some(Value::Null) | None => Err(invalid(field, "is required")),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

/// An RFC 3339 time input, returned as given (trimmed) after checking it parses.
pub(crate) fn time_input(
    input: &Value,
    field: &str,
    required: bool,
) -> Result<Option<(String, chrono::DateTime<chrono::FixedOffset>)>, ConnectorError> {
    let raw = match input.get(field) {
        None | Some(Value::Null) if !required => return Ok(None),
        _ => string_input(input, field)?,
    };
    let parsed = chrono::DateTime::parse_from_rfc3339(&raw).map_err(|e| {
        invalid(
            field,
            format!("`{raw}` is not an RFC 3339 time such as 2024-05-01T00:00:00Z ({e})"),
        )
    })?;
    Ok(Some((raw, parsed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Result<(String, u64), ConnectorError> {
        let mut s = RowSplitter::default();
        let mut bytes = Vec::new();
        let mut records = 0;
        for c in chunks {
            let out = s.feed(c)?;
            bytes.extend(out.bytes);
            records += out.records;
        }
        let out = s.finish()?;
        bytes.extend(out.bytes);
        records += out.records;
        Ok((String::from_utf8(bytes).unwrap_or_default(), records))
    }

    #[test]
    fn rows_split_across_chunks_keep_results_only() {
        let (text, n) = split(&[
            b"{\"preview\":true,\"result\":{\"a\":0}}\n{\"preview\":false,\"off",
            b"set\":0,\"result\":{\"a\":1}}\n\n{\"preview\":false,\"offset\":1,",
            b"\"result\":{\"a\":2}}\n{\"preview\":false,\"lastrow\":true,\"offset\":2,\"result\":{\"a\":3}}",
        ])
        .unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n");
        assert_eq!(n, 3);
    }

    #[test]
    fn empty_result_and_errors() {
        assert_eq!(
            split(&[b"{\"preview\":false,\"lastrow\":true}\n"]).unwrap(),
            (String::new(), 0)
        );
        let err = split(&[b"{\"messages\":[{\"type\":\"FATAL\",\"text\":\"quota\"}]}\n"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("FATAL: quota"), "{err}");
        let err = split(&[b"{\"result\":1}\nnot json\n"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 2"), "{err}");
    }

    #[test]
    fn search_gets_its_command() {
        assert_eq!(search_string(" index=okta"), "search index=okta");
        assert_eq!(search_string("search index=okta"), "search index=okta");
        assert_eq!(search_string("| tstats count"), "| tstats count");
    }

    #[test]
    fn times_are_checked() {
        assert!(matches!(
            time_input(&json!({"since": "yesterday"}), "since", true),
            Err(ConnectorError::InvalidInput { field, .. }) if field == "since"
        ));
        assert!(time_input(&json!({}), "until", false).unwrap().is_none());
    }
}
