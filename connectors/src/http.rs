//! The generic `http` connector: one request to any REST API (`http.request`), or a
//! response body saved as evidence (`http.snapshot`).
//!
//! Settings: optional `base_url` (relative `url` inputs are appended to its path),
//! `headers` (values plain strings or secrets) and `timeout`. With no configuration a
//! default instance named `http` exists, with no base URL.
//!
//! Methods other than GET/HEAD carry the call's `Idempotency-Key`, so an API that honours
//! it makes a retried or resumed step harmless.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::evidence::EvidenceMeta;
use crate::http_client::{
    is_json_media_type, parse_duration, ClientBuildError, HttpClient, HttpClientConfig,
    RequestBody, RequestSpec,
};
use crate::registry::{ConfigError, Settings};
use crate::secret::REDACTED;
use crate::{ActionCall, Connector, ConnectorError};

const INPUTS: &[FieldDecl] = &[
    FieldDecl {
        name: "method",
        ty: "string",
        required: true,
        description: "HTTP method, e.g. GET or POST",
    },
    FieldDecl {
        name: "url",
        ty: "string",
        required: true,
        description: "absolute URL, or a path appended to the instance's base_url",
    },
    FieldDecl {
        name: "headers",
        ty: "object",
        required: false,
        description: "extra request headers (name: value)",
    },
    FieldDecl {
        name: "json",
        ty: "any",
        required: false,
        description: "a JSON body (sets Content-Type: application/json); excludes `body`",
    },
    FieldDecl {
        name: "body",
        ty: "string",
        required: false,
        description: "a raw body; excludes `json`",
    },
    FieldDecl {
        name: "timeout",
        ty: "string",
        required: false,
        description: "bound on this request, e.g. 30s (default: the instance's)",
    },
];

pub const TYPE: TypeDecl = TypeDecl {
    name: "http",
    description: "Any REST API",
    needs_instance: false,
    actions: &[
        ActionDecl {
            name: "request",
            description: "One HTTP request; a status outside 2xx fails the step",
            inputs: INPUTS,
            outputs: &[
                FieldDecl {
                    name: "status",
                    ty: "integer",
                    required: true,
                    description: "HTTP status",
                },
                FieldDecl {
                    name: "headers",
                    ty: "object",
                    required: true,
                    description: "response headers, lowercase names",
                },
                FieldDecl {
                    name: "body",
                    ty: "any",
                    required: true,
                    description: "parsed JSON when the response is JSON, else text",
                },
            ],
            effect: Effect::ByMethod,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "snapshot",
            description: "Save a response body as evidence, streamed and hashed",
            inputs: INPUTS,
            outputs: &[
                FieldDecl {
                    name: "evidence_id",
                    ty: "string",
                    required: true,
                    description: "the artifact's id",
                },
                FieldDecl {
                    name: "sha256",
                    ty: "string",
                    required: true,
                    description: "lowercase hex SHA-256 of the stored bytes",
                },
                FieldDecl {
                    name: "bytes",
                    ty: "integer",
                    required: true,
                    description: "size in bytes",
                },
                FieldDecl {
                    name: "records",
                    ty: "integer",
                    required: true,
                    description: "JSON array elements, NDJSON lines, else 1 (0 for an empty body)",
                },
                FieldDecl {
                    name: "status",
                    ty: "integer",
                    required: true,
                    description: "HTTP status",
                },
            ],
            effect: Effect::Snapshot,
            undo: None,
            secret_outputs: &[],
        },
    ],
};

/// A configured `http` instance.
#[derive(Debug, Clone)]
pub struct HttpConnector {
    instance: String,
    client: HttpClient,
}

impl HttpConnector {
    /// The settings this type takes.
    pub const SETTINGS: &'static [&'static str] = &["base_url", "headers", "timeout"];

    /// Build from an instance's settings (pure apart from reading secrets).
    pub fn from_settings(mut s: Settings<'_>) -> Result<Self, Vec<ConfigError>> {
        let instance = s.instance().to_string();
        let mut config = HttpClientConfig::new(&instance);
        config.base_url = s.url("base_url");
        config.default_headers = s.headers("headers");
        if let Some(t) = s.duration("timeout") {
            config.timeout = t;
        }
        let redactor = s.redactor().clone();
        s.finish()?;
        let client = HttpClient::new(config, redactor).map_err(|e| {
            let setting = match &e {
                ClientBuildError::Url(_) => Some("base_url"),
                ClientBuildError::Header { .. } => Some("headers"),
                ClientBuildError::Build { .. } => None,
            };
            vec![ConfigError::new(&instance, setting, e.to_string())]
        })?;
        Ok(HttpConnector { instance, client })
    }

    /// An instance around an existing client (tests, embedding).
    pub fn with_client(client: HttpClient) -> Self {
        HttpConnector {
            instance: client.instance().to_string(),
            client,
        }
    }

    async fn request(
        &self,
        call: ActionCall<'_>,
        input: HttpInput,
    ) -> Result<Value, ConnectorError> {
        let spec = input.into_spec(call.idempotency_key);
        let resp = self.client.send(spec, call.requests).await?;
        let redactor = self.client.redactor();
        let body = if resp.body.is_empty() {
            Value::String(String::new())
        } else if resp.is_json() {
            match serde_json::from_slice::<Value>(&resp.body) {
                Ok(v) => redactor.redact_value(&v),
                Err(_) => Value::String(redactor.redact_str(&resp.text())),
            }
        } else {
            Value::String(redactor.redact_str(&resp.text()))
        };
        Ok(json!({
            "status": resp.status.as_u16(),
            "headers": self.headers_output(&resp.headers),
            "body": body,
        }))
    }

    /// Response headers as an object with lowercase names; repeated headers joined with
    /// `, `; cookies and known secrets redacted (the output is stored and templated).
    fn headers_output(&self, headers: &HeaderMap) -> Value {
        let mut out = Map::new();
        for name in headers.keys() {
            let value = if name.as_str() == "set-cookie" {
                REDACTED.to_string()
            } else {
                let joined = headers
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ");
                self.client.redactor().redact_str(&joined)
            };
            out.insert(name.as_str().to_string(), Value::String(value));
        }
        Value::Object(out)
    }

    async fn snapshot(
        &self,
        call: ActionCall<'_>,
        input: HttpInput,
    ) -> Result<Value, ConnectorError> {
        let method = input.method.clone();
        let timeout = input.timeout;
        let spec = input.into_spec(call.idempotency_key);
        let url = self.client.resolve_url(&spec.url)?;
        let mut resp = self.client.send_streaming(spec, call.requests).await?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let kind = BodyKind::from_content_type(content_type);
        let meta = EvidenceMeta {
            connector_type: TYPE.name.to_string(),
            instance: self.instance.clone(),
            action: call.action.to_string(),
            extension: kind.extension().to_string(),
            media_type: kind.media_type(content_type),
            source: json!({
                "method": method.as_str(),
                "url": self.client.redactor().redact_str(url.as_str()),
                "status": status,
            }),
        };
        let evidence_err = |e: crate::evidence::EvidenceError| ConnectorError::Evidence(e.0);
        let mut writer = call.evidence.create(meta).await.map_err(evidence_err)?;
        let mut counter = RecordCounter::new(kind);
        loop {
            // On any failure the writer is dropped unfinished: the store keeps a
            // `.partial` file that is never listed as evidence.
            let chunk = resp
                .chunk()
                .await
                .map_err(|e| self.client.body_error(&method, &url, timeout, e))?;
            let Some(chunk) = chunk else { break };
            counter.feed(&chunk);
            writer.write(&chunk).await.map_err(evidence_err)?;
        }
        writer.add_records(counter.finish());
        let record = writer.finish().await.map_err(evidence_err)?;
        Ok(json!({
            "evidence_id": record.evidence_id,
            "sha256": record.sha256,
            "bytes": record.bytes,
            "records": record.records,
            "status": status,
            "path": record.path,
        }))
    }
}

#[async_trait]
impl Connector for HttpConnector {
    fn type_name(&self) -> &'static str {
        TYPE.name
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        match call.action {
            "request" => {
                let input = HttpInput::parse(call.input)?;
                self.request(call, input).await
            }
            "snapshot" => {
                let input = HttpInput::parse(call.input)?;
                self.snapshot(call, input).await
            }
            other => Err(ConnectorError::Other(format!(
                "connector type `http` has no action `{other}`"
            ))),
        }
    }
}

/// The checked inputs of `request` and `snapshot`.
#[derive(Debug)]
struct HttpInput {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: RequestBody,
    timeout: Option<Duration>,
}

fn invalid(field: &str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidInput {
        field: field.to_string(),
        message: message.into(),
    }
}

impl HttpInput {
    fn parse(input: &Value) -> Result<HttpInput, ConnectorError> {
        let obj = input
            .as_object()
            .ok_or_else(|| invalid("with", "the inputs must be a map"))?;
        if let Some(unknown) = obj
            .keys()
            .find(|k| INPUTS.iter().all(|f| f.name != k.as_str()))
        {
            return Err(invalid(
                unknown,
                "not an input of http actions (method, url, headers, json, body, timeout)",
            ));
        }
        let method = match obj.get("method") {
            Some(Value::String(m)) if !m.trim().is_empty() => {
                Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                    .map_err(|_| invalid("method", format!("`{m}` is not an HTTP method")))?
            }
            Some(_) => {
                return Err(invalid(
                    "method",
                    "must be a method name such as GET or POST",
                ))
            }
            None => return Err(invalid("method", "is required")),
        };
        let url = match obj.get("url") {
            Some(Value::String(u)) if !u.trim().is_empty() => u.trim().to_string(),
            Some(_) => return Err(invalid("url", "must be a non-empty string")),
            None => return Err(invalid("url", "is required")),
        };
        let mut headers = Vec::new();
        match obj.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (name, v) in map {
                    let value = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => {
                            return Err(invalid(
                                "headers",
                                format!("header `{name}` must be a string"),
                            ))
                        }
                    };
                    headers.push((name.clone(), value));
                }
            }
            Some(_) => {
                return Err(invalid(
                    "headers",
                    "must be a map of header names to values",
                ))
            }
        }
        let body = match (obj.get("json"), obj.get("body")) {
            (Some(_), Some(_)) => {
                return Err(invalid("body", "`json` and `body` are exclusive: give one"))
            }
            (Some(j), None) => RequestBody::Json(j.clone()),
            (None, Some(Value::String(b))) => RequestBody::Text(b.clone()),
            (None, Some(_)) => {
                return Err(invalid(
                    "body",
                    "must be a string (use `json` for structured data)",
                ))
            }
            (None, None) => RequestBody::None,
        };
        let timeout = match obj.get("timeout") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => match parse_duration(t) {
                Ok(d) if !d.is_zero() => Some(d),
                Ok(_) => return Err(invalid("timeout", "must be longer than zero")),
                Err(e) => return Err(invalid("timeout", e)),
            },
            Some(_) => return Err(invalid("timeout", "must be a duration such as 30s")),
        };
        Ok(HttpInput {
            method,
            url,
            headers,
            body,
            timeout,
        })
    }

    /// The request, with `Idempotency-Key` on methods other than GET/HEAD (unless the
    /// runbook set that header itself, deliberately).
    fn into_spec(self, idempotency_key: &str) -> RequestSpec {
        let mut spec = RequestSpec::new(self.method, self.url);
        let user_key = self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("idempotency-key"));
        if spec.method != Method::GET && spec.method != Method::HEAD && !user_key {
            spec = spec.header("Idempotency-Key", idempotency_key);
        }
        for (n, v) in self.headers {
            spec = spec.header(n, v);
        }
        spec.body = self.body;
        spec.timeout = self.timeout;
        spec
    }
}

/// How a snapshot body is stored and its records counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Lines,
    Text,
    Binary,
}

impl BodyKind {
    fn from_content_type(ct: &str) -> BodyKind {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines"
            | "application/jsonlines"
            | "application/json-seq" => BodyKind::Lines,
            _ if is_json_media_type(&essence) => BodyKind::Json,
            _ if essence.starts_with("text/") => BodyKind::Text,
            _ => BodyKind::Binary,
        }
    }

    fn extension(self) -> &'static str {
        match self {
            BodyKind::Json => "json",
            BodyKind::Lines => "jsonl",
            BodyKind::Text => "txt",
            BodyKind::Binary => "bin",
        }
    }

    fn media_type(self, content_type: &str) -> String {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence.is_empty() {
            "application/octet-stream".to_string()
        } else {
            essence
        }
    }
}

/// Counts vendor records while the body streams by, without holding it: NDJSON non-empty
/// lines, or the elements of a top-level JSON array (a small tokenizer that tracks strings
/// and nesting); any other non-empty body is one record.
#[derive(Debug)]
struct RecordCounter {
    kind: BodyKind,
    any_content: bool,
    count: u64,
    // NDJSON
    line_has_content: bool,
    // JSON array
    started: bool,
    is_array: bool,
    depth: u32,
    in_string: bool,
    escape: bool,
    expect_element: bool,
}

impl RecordCounter {
    fn new(kind: BodyKind) -> Self {
        RecordCounter {
            kind,
            any_content: false,
            count: 0,
            line_has_content: false,
            started: false,
            is_array: false,
            depth: 0,
            in_string: false,
            escape: false,
            expect_element: false,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        match self.kind {
            BodyKind::Lines => {
                for &b in chunk {
                    if b == b'\n' {
                        if self.line_has_content {
                            self.count += 1;
                        }
                        self.line_has_content = false;
                    } else if !b.is_ascii_whitespace() {
                        self.line_has_content = true;
                        self.any_content = true;
                    }
                }
            }
            BodyKind::Json => self.feed_json(chunk),
            BodyKind::Text | BodyKind::Binary => {
                if !chunk.is_empty() {
                    self.any_content = true;
                }
            }
        }
    }

    fn feed_json(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if !self.started {
                // Skip leading whitespace and a UTF-8 byte order mark.
                if b.is_ascii_whitespace() || b == 0xEF || b == 0xBB || b == 0xBF {
                    continue;
                }
                self.started = true;
                self.any_content = true;
                if b == b'[' {
                    self.is_array = true;
                    self.depth = 1;
                    self.expect_element = true;
                    continue;
                }
                return;
            }
            if !self.is_array || self.depth == 0 {
                return;
            }
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            if b.is_ascii_whitespace() {
                continue;
            }
            match b {
                b']' | b'}' => {
                    self.depth = self.depth.saturating_sub(1);
                    // `[]`: the array closed before any element started.
                    self.expect_element = false;
                }
                b',' => {
                    if self.depth == 1 {
                        self.expect_element = true;
                    }
                }
                _ => {
                    if self.depth == 1 && self.expect_element {
                        self.count += 1;
                        self.expect_element = false;
                    }
                    match b {
                        b'"' => self.in_string = true,
                        b'[' | b'{' => self.depth += 1,
                        _ => {}
                    }
                }
            }
        }
    }

    fn finish(self) -> u64 {
        match self.kind {
            BodyKind::Lines => self.count + u64::from(self.line_has_content),
            BodyKind::Json if self.is_array => self.count,
            _ => u64::from(self.any_content),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(kind: BodyKind, chunks: &[&[u8]]) -> u64 {
        let mut c = RecordCounter::new(kind);
        for ch in chunks {
            c.feed(ch);
        }
        c.finish()
    }

    #[test]
    fn counts_json_array_elements_across_chunks() {
        let body = br#" [ {"a": "x,]}\"[", "b": [1, 2]}, 3, "s,t", [4, 5], null ] "#;
        assert_eq!(count(BodyKind::Json, &[body]), 5);
        for split in 0..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(count(BodyKind::Json, &[a, b]), 5, "split at {split}");
        }
        assert_eq!(count(BodyKind::Json, &[b"[]"]), 0);
        assert_eq!(count(BodyKind::Json, &[b"[ ]"]), 0);
        assert_eq!(count(BodyKind::Json, &[b"{\"a\": [1,2,3]}"]), 1);
        assert_eq!(count(BodyKind::Json, &[b""]), 0);
    }

    #[test]
    fn counts_ndjson_lines_and_other_bodies() {
        assert_eq!(
            count(
                BodyKind::Lines,
                &[b"{\"a\":1}\n\n{\"a\"", b":2}\n  \n{\"a\":3}"]
            ),
            3
        );
        assert_eq!(count(BodyKind::Lines, &[b"{}\n"]), 1);
        assert_eq!(count(BodyKind::Text, &[b"hello"]), 1);
        assert_eq!(count(BodyKind::Binary, &[]), 0);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            BodyKind::from_content_type("application/json; charset=utf-8"),
            BodyKind::Json
        );
        assert_eq!(
            BodyKind::from_content_type("application/x-ndjson"),
            BodyKind::Lines
        );
        assert_eq!(BodyKind::from_content_type("text/csv"), BodyKind::Text);
        assert_eq!(BodyKind::from_content_type(""), BodyKind::Binary);
    }

    #[test]
    fn input_checks_name_the_field() {
        let e = |v: Value| match HttpInput::parse(&v) {
            Err(ConnectorError::InvalidInput { field, .. }) => field,
            other => panic!("expected InvalidInput, got {other:?}"),
        };
        assert_eq!(e(json!({"url": "/x"})), "method");
        assert_eq!(e(json!({"method": "GET"})), "url");
        assert_eq!(
            e(json!({"method": "GET", "url": "/x", "json": {}, "body": "b"})),
            "body"
        );
        assert_eq!(
            e(json!({"method": "GET", "url": "/x", "timeout": "soon"})),
            "timeout"
        );
        assert_eq!(
            e(json!({"method": "GET", "url": "/x", "header": {}})),
            "header"
        );
        assert_eq!(e(json!({"method": "G E T", "url": "/x"})), "method");
        let ok =
            HttpInput::parse(&json!({"method": "post", "url": "/x", "timeout": "2s"})).unwrap();
        assert_eq!(ok.method, Method::POST);
        assert_eq!(ok.timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn idempotency_key_only_for_non_safe_methods() {
        let spec = |m: &str| {
            HttpInput::parse(&json!({"method": m, "url": "/x"}))
                .unwrap()
                .into_spec("run/step/0")
        };
        let has_key = |s: &RequestSpec| s.headers.iter().any(|(n, _)| n == "Idempotency-Key");
        assert!(!has_key(&spec("GET")));
        assert!(!has_key(&spec("HEAD")));
        assert!(has_key(&spec("POST")));
        assert!(has_key(&spec("DELETE")));
    }
}
