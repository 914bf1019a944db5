//! The HTTP client every connector shares.
//!
//! One [`HttpClient`] per connector instance, with a base URL, connect and total timeouts,
//! a user agent and default headers (secrets among them) from configuration. It makes one
//! attempt per call: retries are the engine's job, so every outcome becomes a typed
//! [`ConnectorError`] the engine can decide on (429 → `RateLimited` with the vendor's
//! "retry after", 5xx/408/connection failures → `Transient`, timeouts → `Timeout`,
//! 401/403 → `Auth`, other 4xx → `Rejected`).
//!
//! What it never does: put a header value, a query string or an unredacted body into an
//! error, a log line or the [`RequestLog`]. Paths and body excerpts go through the
//! instance's [`Redactor`] first.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use url::{Host, Url};

use crate::error::ConnectorError;
use crate::secret::{Redactor, SecretValue};
use crate::{RequestLog, RequestSummary};

/// Default total timeout of one request (headers and body).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound on establishing a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Sent unless configured otherwise.
pub const DEFAULT_USER_AGENT: &str = concat!("cordon/", env!("CARGO_PKG_VERSION"));
/// How much of an error response's body is quoted in the error message.
const EXCERPT_CHARS: usize = 300;
/// How much of an error response's body is read (and redacted) to make the excerpt.
const EXCERPT_READ_BYTES: usize = 8 * 1024;
/// Same-origin redirects followed at most.
const MAX_REDIRECTS: usize = 5;

/// A header value that may be a secret (marked sensitive on the wire, never printed).
#[derive(Clone, Debug)]
pub enum MaybeSecret {
    Plain(String),
    Secret(SecretValue),
}

impl MaybeSecret {
    fn expose(&self) -> &str {
        match self {
            MaybeSecret::Plain(s) => s,
            MaybeSecret::Secret(s) => s.expose(),
        }
    }

    fn is_secret(&self) -> bool {
        matches!(self, MaybeSecret::Secret(_))
    }
}

impl From<String> for MaybeSecret {
    fn from(s: String) -> Self {
        MaybeSecret::Plain(s)
    }
}

impl From<&str> for MaybeSecret {
    fn from(s: &str) -> Self {
        MaybeSecret::Plain(s.to_string())
    }
}

impl From<SecretValue> for MaybeSecret {
    fn from(s: SecretValue) -> Self {
        MaybeSecret::Secret(s)
    }
}

/// How to build one instance's client.
#[derive(Clone, Debug)]
pub struct HttpClientConfig {
    /// The connector instance's name: named in configuration errors and logs.
    pub instance: String,
    /// Relative request URLs are appended to this URL's path.
    pub base_url: Option<Url>,
    /// Total bound on one request, body included (overridable per request).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub user_agent: String,
    /// Sent with every request; secret values are marked sensitive.
    pub default_headers: Vec<(String, MaybeSecret)>,
    /// Most requests in flight at once through this client (a vendor's documented
    /// concurrency limit, e.g. Jamf's five connections); None: no limit.
    pub max_in_flight: Option<usize>,
}

impl HttpClientConfig {
    /// Defaults: no base URL, 30 s total, 10 s connect, `cordon/<version>`, no headers.
    pub fn new(instance: impl Into<String>) -> Self {
        HttpClientConfig {
            instance: instance.into(),
            base_url: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            user_agent: DEFAULT_USER_AGENT.to_string(),
            default_headers: Vec::new(),
            max_in_flight: None,
        }
    }
}

/// A URL that breaks the transport policy (plain http:// to a non-loopback host, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connector `{instance}`: URL `{url}` is not allowed: {reason}")]
pub struct UrlPolicyError {
    pub instance: String,
    /// The URL without query string or credentials.
    pub url: String,
    pub reason: String,
}

/// Why a client could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error(transparent)]
    Url(#[from] UrlPolicyError),
    /// A default header's name or value is unusable (the value is never quoted).
    #[error("connector `{instance}`: header `{name}`: {reason}")]
    Header {
        instance: String,
        name: String,
        reason: String,
    },
    #[error("connector `{instance}`: cannot build the HTTP client: {reason}")]
    Build { instance: String, reason: String },
}

/// A URL as it may appear in messages: scheme, host, port and path only.
pub fn display_url(url: &Url) -> String {
    let mut s = format!("{}://", url.scheme());
    if let Some(host) = url.host_str() {
        s.push_str(host);
    }
    if let Some(port) = url.port() {
        s.push_str(&format!(":{port}"));
    }
    s.push_str(url.path());
    s
}

/// True for `localhost`, 127.0.0.0/8 and ::1.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => {
            ip.is_loopback()
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| IpAddr::V4(v4).is_loopback())
        }
        None => false,
    }
}

/// The transport policy for every URL a connector calls, configured or passed by a
/// runbook: `https://` anywhere, `http://` only to loopback hosts (the sandbox, tests).
pub fn check_url(instance: &str, url: &Url) -> Result<(), UrlPolicyError> {
    let err = |reason: &str| UrlPolicyError {
        instance: instance.to_string(),
        url: display_url(url),
        reason: reason.to_string(),
    };
    if url.host().is_none() {
        return Err(err("it has no host"));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(err(
            "plain http:// is allowed only for loopback hosts (127.0.0.0/8, ::1, localhost); use https://",
        )),
        _ => Err(err("only https:// (or http:// to a loopback host) is supported")),
    }
}

/// One request to make. Build with [`RequestSpec::new`] and the chained setters.
#[derive(Clone, Debug)]
pub struct RequestSpec {
    pub method: Method,
    /// Absolute, or relative to the client's base URL (appended to its path).
    pub url: String,
    /// Appended to the URL's query string.
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, MaybeSecret)>,
    pub body: RequestBody,
    /// Overrides the client's total timeout for this request.
    pub timeout: Option<Duration>,
}

/// A request body.
#[derive(Clone, Debug, Default)]
pub enum RequestBody {
    #[default]
    None,
    /// Sent with `Content-Type: application/json`.
    Json(Value),
    /// Sent as is; the content type is whatever the headers say.
    Text(String),
    /// `application/x-www-form-urlencoded` (OAuth token requests: values may be secrets).
    Form(Vec<(String, MaybeSecret)>),
}

impl RequestSpec {
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        RequestSpec {
            method,
            url: url.into(),
            query: Vec::new(),
            headers: Vec::new(),
            body: RequestBody::None,
            timeout: None,
        }
    }

    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::GET, url)
    }

    pub fn post(url: impl Into<String>) -> Self {
        Self::new(Method::POST, url)
    }

    pub fn query(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((name.into(), value.into()));
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<MaybeSecret>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// `Authorization: <scheme> <token>`, marked sensitive.
    pub fn auth(mut self, scheme: &str, token: &SecretValue) -> Self {
        let value = SecretValue::new(format!("{scheme} {}", token.expose()));
        self.headers
            .push(("authorization".to_string(), MaybeSecret::Secret(value)));
        self
    }

    pub fn json(mut self, body: Value) -> Self {
        self.body = RequestBody::Json(body);
        self
    }

    pub fn text(mut self, body: impl Into<String>) -> Self {
        self.body = RequestBody::Text(body.into());
        self
    }

    pub fn form(mut self, fields: Vec<(String, MaybeSecret)>) -> Self {
        self.body = RequestBody::Form(fields);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// A whole response, any status.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// A header as text (None when absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// True when `Content-Type` says JSON (`application/json`, `…+json`).
    pub fn is_json(&self) -> bool {
        self.header(CONTENT_TYPE.as_str())
            .is_some_and(is_json_media_type)
    }

    /// The body parsed as JSON. The error gives the position, never the content.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConnectorError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ConnectorError::Other(format!(
                "the response ({}) is not the expected JSON ({:?} error at line {}, column {})",
                self.status,
                e.classify(),
                e.line(),
                e.column()
            ))
        })
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `application/json`, `application/problem+json`, … (parameters ignored).
pub fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The shared client of one connector instance. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    /// Shared by clones, so every caller of one instance counts against its limit.
    limit: Option<std::sync::Arc<tokio::sync::Semaphore>>,
    instance: String,
    base_url: Option<Url>,
    timeout: Duration,
    redactor: Redactor,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("instance", &self.instance)
            .field("base_url", &self.base_url.as_ref().map(display_url))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Build a client; the base URL must pass [`check_url`]. No network I/O.
    pub fn new(
        config: HttpClientConfig,
        redactor: Redactor,
    ) -> Result<HttpClient, ClientBuildError> {
        let instance = config.instance;
        if let Some(base) = &config.base_url {
            check_url(&instance, base)?;
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &config.default_headers {
            let (n, v) = header_pair(name, value).map_err(|reason| ClientBuildError::Header {
                instance: instance.clone(),
                name: name.clone(),
                reason,
            })?;
            headers.append(n, v);
        }
        let policy_instance = instance.clone();
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            // Follow only same-origin redirects that pass the URL policy: a configured
            // secret header must never be forwarded to another host.
            let same_origin = attempt
                .previous()
                .last()
                .is_some_and(|prev| prev.origin() == attempt.url().origin());
            if attempt.previous().len() > MAX_REDIRECTS || !same_origin {
                attempt.stop()
            } else if let Err(e) = check_url(&policy_instance, attempt.url()) {
                attempt.error(e)
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(config.user_agent)
            .default_headers(headers)
            .redirect(redirect)
            .build()
            .map_err(|e| ClientBuildError::Build {
                instance: instance.clone(),
                reason: error_chain(&e.without_url()),
            })?;
        Ok(HttpClient {
            client,
            limit: config
                .max_in_flight
                .map(|n| std::sync::Arc::new(tokio::sync::Semaphore::new(n.max(1)))),
            instance,
            base_url: config.base_url,
            timeout: config.timeout,
            redactor,
        })
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn base_url(&self) -> Option<&Url> {
        self.base_url.as_ref()
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// The client's total timeout per request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// An absolute URL as is, or a relative one appended to the base URL's path
    /// (`https://x/scim/v2` + `Users/1` → `https://x/scim/v2/Users/1`); either must pass
    /// [`check_url`]. Errors are `InvalidInput` on `url`.
    pub fn resolve_url(&self, url: &str) -> Result<Url, ConnectorError> {
        let invalid = |message: String| ConnectorError::InvalidInput {
            field: "url".to_string(),
            message,
        };
        let resolved = match Url::parse(url) {
            Ok(u) => u,
            Err(url::ParseError::RelativeUrlWithoutBase) => {
                let Some(base) = &self.base_url else {
                    return Err(invalid(format!(
                        "`{}` is relative but connector `{}` has no `base_url`",
                        self.redactor.redact_str(url),
                        self.instance
                    )));
                };
                let mut joined = base.clone();
                joined.set_query(None);
                joined.set_fragment(None);
                let prefix = joined.as_str().trim_end_matches('/').to_string();
                let rel = url.trim_start_matches('/');
                Url::parse(&format!("{prefix}/{rel}"))
                    .map_err(|e| invalid(format!("`{}`: {e}", self.redactor.redact_str(url))))?
            }
            Err(e) => {
                return Err(invalid(format!(
                    "`{}` is not a valid URL: {e}",
                    self.redactor.redact_str(url)
                )))
            }
        };
        check_url(&self.instance, &resolved).map_err(|e| invalid(e.to_string()))?;
        Ok(resolved)
    }

    /// Send one request and map a status outside 2xx to its [`ConnectorError`].
    pub async fn send(
        &self,
        req: RequestSpec,
        log: &RequestLog,
    ) -> Result<HttpResponse, ConnectorError> {
        let method = req.method.clone();
        let (url, resp) = self.send_raw_with_url(req, log).await?;
        self.error_for_status(&method, &url, &resp)?;
        Ok(resp)
    }

    /// Send one request and return the answer whatever its status; only transport failures
    /// are errors. For vendors whose 4xx bodies carry meaning ("already suspended"); map
    /// what remains with [`HttpClient::error_for_status`].
    pub async fn send_raw(
        &self,
        req: RequestSpec,
        log: &RequestLog,
    ) -> Result<HttpResponse, ConnectorError> {
        Ok(self.send_raw_with_url(req, log).await?.1)
    }

    async fn send_raw_with_url(
        &self,
        req: RequestSpec,
        log: &RequestLog,
    ) -> Result<(Url, HttpResponse), ConnectorError> {
        let method = req.method.clone();
        let timeout = req.timeout.unwrap_or(self.timeout);
        let (url, builder) = self.build(req)?;
        let path = self.redactor.redact_str(url.path());
        let _permit = match &self.limit {
            Some(sem) => sem.clone().acquire_owned().await.ok(),
            None => None,
        };
        let started = Instant::now();
        crate::fault::point("http.before_send");
        let outcome = match builder.send().await {
            Ok(resp) => {
                let status = resp.status();
                let headers = resp.headers().clone();
                resp.bytes().await.map(|body| HttpResponse {
                    status,
                    headers,
                    body,
                })
            }
            Err(e) => Err(e),
        };
        if outcome.is_ok() {
            crate::fault::point("http.after_response");
        }
        let status = outcome.as_ref().ok().map(|r| r.status);
        self.note(log, &method, &path, status, started);
        match outcome {
            Ok(resp) => Ok((url, resp)),
            Err(e) => Err(self.transport_error(&method, &path, timeout, e)),
        }
    }

    /// Send one request and hand back the response unread, for bodies too large to hold
    /// (evidence snapshots). Statuses outside 2xx are mapped as in [`HttpClient::send`].
    /// The request's timeout still bounds reading the body.
    pub async fn send_streaming(
        &self,
        req: RequestSpec,
        log: &RequestLog,
    ) -> Result<reqwest::Response, ConnectorError> {
        let method = req.method.clone();
        let timeout = req.timeout.unwrap_or(self.timeout);
        let (url, builder) = self.build(req)?;
        let path = self.redactor.redact_str(url.path());
        let _permit = match &self.limit {
            Some(sem) => sem.clone().acquire_owned().await.ok(),
            None => None,
        };
        let started = Instant::now();
        crate::fault::point("http.before_send");
        let result = builder.send().await;
        if result.is_ok() {
            // The vendor answered; the body streams to evidence from here.
            crate::fault::point("http.after_response");
        }
        self.note(
            log,
            &method,
            &path,
            result.as_ref().ok().map(|r| r.status()),
            started,
        );
        let mut resp = result.map_err(|e| self.transport_error(&method, &path, timeout, e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        // Read just enough of the error body to quote it.
        let mut body = Vec::new();
        while body.len() < EXCERPT_READ_BYTES {
            match resp.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        let snapshot = HttpResponse {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: Bytes::from(body),
        };
        self.error_for_status(&method, &url, &snapshot)?;
        Ok(resp)
    }

    /// `Ok` for 2xx; otherwise the typed error for this status (see the module docs).
    pub fn error_for_status(
        &self,
        method: &Method,
        url: &Url,
        resp: &HttpResponse,
    ) -> Result<(), ConnectorError> {
        let status = resp.status;
        if status.is_success() {
            return Ok(());
        }
        let message = format!(
            "{method} {} → {status}{}",
            self.redactor.redact_str(url.path()),
            self.excerpt(&resp.body)
        );
        let code = status.as_u16();
        Err(match code {
            429 => ConnectorError::RateLimited {
                retry_after: retry_after_at(&resp.headers, SystemTime::now()),
                message,
            },
            408 | 500..=599 => ConnectorError::Transient {
                retry_after: resp
                    .headers
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now())),
                message,
            },
            401 | 403 => ConnectorError::Auth {
                status: code,
                message,
            },
            _ => ConnectorError::Rejected {
                status: code,
                message,
            },
        })
    }

    /// `": <first ~300 chars>"` of a body, redacted, whitespace collapsed; empty for none.
    fn excerpt(&self, body: &[u8]) -> String {
        if body.is_empty() {
            return String::new();
        }
        let head = &body[..body.len().min(EXCERPT_READ_BYTES)];
        // Redact before truncating, so a secret cut in half is still caught whole.
        let text = self.redactor.redact_str(&String::from_utf8_lossy(head));
        let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut out: String = collapsed.chars().take(EXCERPT_CHARS).collect();
        if collapsed.chars().count() > EXCERPT_CHARS || body.len() > head.len() {
            out.push('…');
        }
        if out.is_empty() {
            out
        } else {
            format!(": {out}")
        }
    }

    fn build(&self, req: RequestSpec) -> Result<(Url, reqwest::RequestBuilder), ConnectorError> {
        let mut url = self.resolve_url(&req.url)?;
        if !req.query.is_empty() {
            url.query_pairs_mut().extend_pairs(req.query.iter());
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &req.headers {
            let (n, v) =
                header_pair(name, value).map_err(|reason| ConnectorError::InvalidInput {
                    field: "headers".to_string(),
                    message: format!("header `{name}`: {reason}"),
                })?;
            headers.append(n, v);
        }
        let mut builder = self.client.request(req.method, url.clone());
        match req.body {
            RequestBody::None => {}
            RequestBody::Json(v) => {
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                let bytes = serde_json::to_vec(&v).map_err(|e| ConnectorError::InvalidInput {
                    field: "json".to_string(),
                    message: format!("cannot encode as JSON: {e}"),
                })?;
                builder = builder.body(bytes);
            }
            RequestBody::Text(s) => builder = builder.body(s),
            RequestBody::Form(fields) => {
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/x-www-form-urlencoded"),
                    );
                }
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(fields.iter().map(|(k, v)| (k.as_str(), v.expose())))
                    .finish();
                builder = builder.body(body);
            }
        }
        builder = builder.headers(headers);
        if let Some(t) = req.timeout {
            builder = builder.timeout(t);
        }
        Ok((url, builder))
    }

    fn note(
        &self,
        log: &RequestLog,
        method: &Method,
        path: &str,
        status: Option<StatusCode>,
        started: Instant,
    ) {
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::debug!(
            connector = %self.instance,
            method = %method,
            path = %path,
            status = status.map(|s| s.as_u16()),
            duration_ms,
            "http request"
        );
        log.push(RequestSummary {
            method: method.to_string(),
            path: path.to_string(),
            status: status.map(|s| s.as_u16()),
            duration_ms,
        });
    }

    /// Map a failure while reading a streamed body (see [`HttpClient::send_streaming`]).
    /// `timeout` is the bound that applied to the request (None: the client's).
    pub fn body_error(
        &self,
        method: &Method,
        url: &Url,
        timeout: Option<Duration>,
        e: reqwest::Error,
    ) -> ConnectorError {
        let path = self.redactor.redact_str(url.path());
        self.transport_error(method, &path, timeout.unwrap_or(self.timeout), e)
    }

    fn transport_error(
        &self,
        method: &Method,
        path: &str,
        timeout: Duration,
        e: reqwest::Error,
    ) -> ConnectorError {
        if e.is_timeout() {
            return ConnectorError::Timeout(timeout);
        }
        let is_connect = e.is_connect();
        let is_builder = e.is_builder();
        let is_redirect = e.is_redirect();
        // Without the URL: reqwest would print it whole, query string included.
        let detail = self.redactor.redact_str(&error_chain(&e.without_url()));
        if is_builder {
            ConnectorError::Other(format!(
                "{method} {path}: cannot build the request: {detail}"
            ))
        } else if is_redirect {
            ConnectorError::Other(format!("{method} {path}: redirect refused: {detail}"))
        } else if is_connect {
            ConnectorError::Transient {
                retry_after: None,
                message: format!("{method} {path}: connection failed: {detail}"),
            }
        } else {
            ConnectorError::Transient {
                retry_after: None,
                message: format!("{method} {path}: request failed: {detail}"),
            }
        }
    }
}

fn header_pair(name: &str, value: &MaybeSecret) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| "not a valid header name".to_string())?;
    let mut v = HeaderValue::from_str(value.expose())
        .map_err(|_| "the value is not a valid header value (control characters?)".to_string())?;
    if value.is_secret() || is_sensitive_header(&n) {
        v.set_sensitive(true);
    }
    Ok((n, v))
}

fn is_sensitive_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    n == "authorization"
        || n == "proxy-authorization"
        || n == "cookie"
        || n.contains("token")
        || n.contains("key")
        || n.contains("secret")
}

/// An error and its sources, joined with `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// How long the vendor asks us to wait, from the response headers, in order of preference:
/// `Retry-After` (delta-seconds or HTTP-date), `X-Rate-Limit-Reset` (Okta, epoch seconds),
/// `X-RateLimit-RetryAfter` (CrowdStrike, epoch seconds). Relative to now.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, SystemTime::now())
}

/// [`retry_after`] relative to a given instant (for tests).
pub fn retry_after_at(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(d) = get("retry-after").and_then(|v| parse_retry_after(v, now)) {
        return Some(d);
    }
    if let Some(d) = get("x-rate-limit-reset").and_then(|v| parse_epoch_reset(v, now)) {
        return Some(d);
    }
    get("x-ratelimit-retryafter").and_then(|v| parse_epoch_reset(v, now))
}

/// A `Retry-After` value: delta-seconds (fractions tolerated) or an HTTP-date (a date in
/// the past gives zero).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A reset time given as a Unix epoch (Okta's `X-Rate-Limit-Reset`, CrowdStrike's
/// `X-RateLimit-RetryAfter`), as a wait from `now` (zero when past). Tolerant of what
/// vendors actually send: a value too large to be seconds is taken as milliseconds, and
/// one too small to be a current epoch (before 2001) as a delta in seconds.
pub fn parse_epoch_reset(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let raw: f64 = value.parse().ok()?;
    if !raw.is_finite() || raw < 0.0 {
        return None;
    }
    const SMALLEST_EPOCH: f64 = 1_000_000_000.0; // 2001-09-09
    const LARGEST_EPOCH_SECS: f64 = 100_000_000_000.0; // year 5138: beyond it, milliseconds
    if raw < SMALLEST_EPOCH {
        return Some(Duration::from_secs_f64(raw));
    }
    let secs = if raw > LARGEST_EPOCH_SECS {
        raw / 1000.0
    } else {
        raw
    };
    let now_secs = now.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    Some(Duration::from_secs_f64((secs - now_secs).max(0.0)))
}

/// A duration as runbooks and settings write them: `500ms`, `30s`, `5m`, `72h`, `7d`
/// (the engine's grammar; connectors cannot depend on the engine crate).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit: write e.g. 500ms, 30s, 5m, 72h or 7d"))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "`{s}` does not start with a number: write e.g. 30s"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: the number is too large"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "`{s}` has an unknown unit `{unit}`: use ms, s, m, h or d"
            ))
        }
    }
    .ok_or_else(|| format!("`{s}` is too large"))?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn url_policy() {
        assert!(check_url("x", &url("https://acme.okta.com/api")).is_ok());
        assert!(check_url("x", &url("http://127.0.0.1:8080/")).is_ok());
        assert!(check_url("x", &url("http://127.5.6.7/")).is_ok());
        assert!(check_url("x", &url("http://[::1]:9/")).is_ok());
        assert!(check_url("x", &url("http://localhost:3000/")).is_ok());
        let e = check_url("okta-prod", &url("http://acme.okta.com/p?token=abc")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("okta-prod") && msg.contains("https://"),
            "{msg}"
        );
        assert!(!msg.contains("token=abc"), "{msg}");
        assert!(check_url("x", &url("http://localhost.evil.com/")).is_err());
        assert!(check_url("x", &url("http://10.0.0.1/")).is_err());
        assert!(check_url("x", &url("ftp://127.0.0.1/")).is_err());
        assert!(check_url("x", &url("file:///etc/passwd")).is_err());
    }

    #[test]
    fn relative_urls_append_to_the_base_path() {
        let mut cfg = HttpClientConfig::new("scim");
        cfg.base_url = Some(url("https://idp.example.com/scim/v2/"));
        let c = HttpClient::new(cfg, Redactor::new()).unwrap();
        assert_eq!(
            c.resolve_url("/Users/1?x=y").unwrap().as_str(),
            "https://idp.example.com/scim/v2/Users/1?x=y"
        );
        assert_eq!(
            c.resolve_url("https://other.example.com/a")
                .unwrap()
                .as_str(),
            "https://other.example.com/a"
        );
        assert!(matches!(
            c.resolve_url("http://other.example.com/a"),
            Err(ConnectorError::InvalidInput { .. })
        ));
        let bare = HttpClient::new(HttpClientConfig::new("http"), Redactor::new()).unwrap();
        let e = bare.resolve_url("/x").unwrap_err().to_string();
        assert!(e.contains("base_url") && e.contains("`http`"), "{e}");
    }

    #[test]
    fn insecure_base_url_is_a_build_error() {
        let mut cfg = HttpClientConfig::new("okta-prod");
        cfg.base_url = Some(url("http://acme.okta.com"));
        let e = HttpClient::new(cfg, Redactor::new()).unwrap_err();
        assert!(e.to_string().contains("okta-prod"), "{e}");
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 1.5 ", now),
            Some(Duration::from_millis(1500))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(120));
        assert_eq!(
            parse_retry_after(&date, now),
            Some(Duration::from_secs(120))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(120));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);

        assert_eq!(
            parse_epoch_reset("1700000042", now),
            Some(Duration::from_secs(42))
        );
        assert_eq!(
            parse_epoch_reset("1700000042000", now),
            Some(Duration::from_secs(42))
        );
        assert_eq!(parse_epoch_reset("1600000000", now), Some(Duration::ZERO));
        assert_eq!(parse_epoch_reset("30", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_epoch_reset("x", now), None);

        let mut h = HeaderMap::new();
        assert_eq!(retry_after_at(&h, now), None);
        h.insert(
            "x-ratelimit-retryafter",
            HeaderValue::from_static("1700000010"),
        );
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_secs(10)));
        h.insert("x-rate-limit-reset", HeaderValue::from_static("1700000020"));
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_secs(20)));
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_secs(3)));
    }

    #[test]
    fn json_media_types() {
        assert!(is_json_media_type("application/json; charset=utf-8"));
        assert!(is_json_media_type("application/scim+json"));
        assert!(!is_json_media_type("text/plain"));
        assert!(!is_json_media_type("application/x-ndjson"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("2w").is_err());
    }

    #[test]
    fn excerpt_is_redacted_short_and_single_line() {
        let r = Redactor::new();
        r.register("sekrit");
        let c = HttpClient::new(HttpClientConfig::new("t"), r).unwrap();
        let body = format!("error\n  token sekrit {}", "x".repeat(1000));
        let ex = c.excerpt(body.as_bytes());
        assert!(ex.starts_with(": error token [REDACTED] x"), "{ex}");
        assert!(ex.chars().count() <= EXCERPT_CHARS + 3);
        assert!(ex.ends_with('…'));
        assert_eq!(c.excerpt(b""), "");
    }
}
