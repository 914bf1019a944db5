//! The `crowdstrike` connector: CrowdStrike Falcon host lookup and network containment.
//!
//! Settings (`connectors.<name>` with `type: crowdstrike`):
//! - `base_url` (default `https://api.crowdstrike.com`, US-1; `https://api.us-2.crowdstrike.com`,
//!   `https://api.eu-1.crowdstrike.com`, `https://api.laggar.gcw.crowdstrike.com` for other
//!   clouds): every call, including the token request, goes there.
//! - `client_id` (required) and `client_secret` (required, a secret `{env: …}` / `{file: …}`):
//!   an API client with the "Hosts: Read" and "Hosts: Write" scopes.
//!
//! Auth: `POST /oauth2/token` with the form fields `client_id` and `client_secret` (201
//! `{access_token, expires_in}`); the token is kept in memory, refreshed a minute before it
//! expires, and once more when an API call answers 401 (that resend is not an attempt).
//!
//! Actions, and the vendor calls each makes (every request sends `Accept: application/json`):
//! - `find_host`: resolves `device` (below) → `{found, id, serial, name, owner, os,
//!   last_seen, status}`.
//! - `contain_host`: resolves `device`; a host whose `status` is `contained` or
//!   `containment_pending` is `already: true` and nothing is sent; else
//!   `POST /devices/entities/devices-actions/v2?action_name=contain` with `{"ids": [aid]}`.
//!   Falcon answers 202 (or 409) with per-host `resources[]` and `errors[]`: the host in
//!   `resources` is contained now, a per-host error with `code: 409` means it already was
//!   (`already: true`), whatever the HTTP status. Undo: `lift_containment`.
//! - `lift_containment`: the same with `normal` / `lift_containment_pending` and
//!   `action_name=lift_containment`. Undo: `contain_host`.
//!
//! Resolving `device`: an agent id (AID: 32 hex digits) is read with
//! `GET /devices/entities/devices/v2?ids=<aid>`; anything else is a serial number, looked up
//! with `GET /devices/queries/devices/v1?filter=serial_number:'<serial>'&limit=100` and then
//! the details of the AIDs found. The serial is re-checked on our side; when a serial has
//! several AIDs (a reinstalled sensor), the one seen most recently is used. A serial may hold
//! only letters, digits, `-`, `_` and `.` (it goes into an FQL string). No match is
//! `found: false`, not an error.
//!
//! Errors name Falcon's `errors[].code` and `message` and the `trace_id`. A 429 is
//! `RateLimited`, waiting until `X-RateLimit-RetryAfter` (an epoch time).

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use url::Url;

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::http_client::{
    retry_after, ClientBuildError, HttpClient, HttpClientConfig, HttpResponse, MaybeSecret,
    RequestSpec,
};
use crate::registry::{ConfigError, Settings};
use crate::secret::SecretValue;
use crate::{ActionCall, Connector, ConnectorError, RequestLog};

/// US-1, Falcon's default cloud.
pub const DEFAULT_BASE_URL: &str = "https://api.crowdstrike.com";
/// Bound on one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A token is refreshed this long before Falcon says it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Lifetime assumed when the token answer does not say (Falcon's are about 30 minutes).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(1799);
/// AIDs read per serial lookup.
const SERIAL_LOOKUP_LIMIT: &str = "100";

const DEVICE_INPUT: FieldDecl = FieldDecl {
    name: "device",
    ty: "string",
    required: true,
    description: "the host's serial number, or its Falcon agent id (AID, 32 hex digits)",
};

const fn out(name: &'static str, ty: &'static str, description: &'static str) -> FieldDecl {
    FieldDecl {
        name,
        ty,
        required: false,
        description,
    }
}

const MUTATION_OUTPUTS: &[FieldDecl] = &[
    FieldDecl {
        name: "found",
        ty: "boolean",
        required: true,
        description: "false when Falcon has no such host (then nothing was sent)",
    },
    FieldDecl {
        name: "target",
        ty: "string",
        required: true,
        description: "the resolved agent id (AID; null when not found)",
    },
    FieldDecl {
        name: "already",
        ty: "boolean",
        required: true,
        description: "the host was already in (or on its way to) that state; nothing changed",
    },
    out(
        "previous_status",
        "string",
        "the host's containment status before the call",
    ),
];

pub const TYPE: TypeDecl = TypeDecl {
    name: "crowdstrike",
    description: "CrowdStrike Falcon hosts and network containment (API client)",
    needs_instance: true,
    actions: &[
        ActionDecl {
            name: "find_host",
            description: "Look a host up by serial number or agent id",
            inputs: &[DEVICE_INPUT],
            outputs: &[
                FieldDecl {
                    name: "found",
                    ty: "boolean",
                    required: true,
                    description: "false when Falcon has no such host",
                },
                out("id", "string", "agent id (AID)"),
                out("serial", "string", "serial number"),
                out("name", "string", "hostname"),
                out(
                    "owner",
                    "string",
                    "the last user who signed in, when Falcon knows",
                ),
                out("os", "string", "operating system and version"),
                out(
                    "last_seen",
                    "string",
                    "RFC 3339 time the sensor last checked in",
                ),
                out(
                    "status",
                    "string",
                    "normal, containment_pending, contained, lift_containment_pending",
                ),
            ],
            effect: Effect::Lookup,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "contain_host",
            description: "Network-contain the host (only the Falcon cloud can reach it)",
            inputs: &[DEVICE_INPUT],
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: Some("lift_containment"),
            secret_outputs: &[],
        },
        ActionDecl {
            name: "lift_containment",
            description: "Lift the host's network containment",
            inputs: &[DEVICE_INPUT],
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: Some("contain_host"),
            secret_outputs: &[],
        },
    ],
};

/// A Falcon device record (the facts Cordon uses).
#[derive(Debug, Clone, Deserialize)]
struct Device {
    device_id: String,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    serial_number: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    platform_name: Option<String>,
    #[serde(default)]
    os_version: Option<String>,
    #[serde(default)]
    last_seen: Option<String>,
    #[serde(default)]
    last_login_user: Option<String>,
}

impl Device {
    fn status(&self) -> &str {
        self.status.as_deref().unwrap_or("unknown")
    }

    fn lookup_output(&self) -> Value {
        json!({
            "found": true,
            "id": self.device_id,
            "serial": self.serial_number,
            "name": self.hostname,
            "owner": self.last_login_user,
            "os": self.os_version.as_deref().or(self.platform_name.as_deref()),
            "last_seen": self.last_seen,
            "status": self.status(),
        })
    }
}

/// Falcon's reply envelope (`msa.ReplyAffectedEntities`, `msa.QueryResponse`, …).
#[derive(Debug, Default, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
struct Reply<T> {
    #[serde(default = "Vec::new", deserialize_with = "null_as_empty")]
    resources: Vec<T>,
    #[serde(default)]
    errors: Option<Vec<FalconError>>,
    #[serde(default)]
    meta: Option<Meta>,
}

/// Falcon writes `"resources": null` on some errors.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Deserialize)]
struct FalconError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Meta {
    #[serde(default)]
    trace_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Affected {
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<u64>,
}

struct CachedToken {
    token: SecretValue,
    refresh_at: Instant,
}

/// Which containment move a mutating action makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    Contain,
    Lift,
}

impl Move {
    fn action_name(self) -> &'static str {
        match self {
            Move::Contain => "contain",
            Move::Lift => "lift_containment",
        }
    }
    /// Was the host already where this move takes it (or on its way)?
    fn already(self, status: &str) -> bool {
        match self {
            Move::Contain => matches!(status, "contained" | "containment_pending"),
            Move::Lift => matches!(status, "normal" | "lift_containment_pending"),
        }
    }
}

/// A configured `crowdstrike` instance.
pub struct CrowdStrikeConnector {
    instance: String,
    client: HttpClient,
    client_id: String,
    client_secret: SecretValue,
    token: Mutex<Option<CachedToken>>,
    /// Held while fetching a token, so concurrent calls share one token request.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for CrowdStrikeConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrowdStrikeConnector")
            .field("instance", &self.instance)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .finish_non_exhaustive()
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidInput {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Falcon agent ids: 32 hex digits.
pub fn looks_like_aid(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A serial number that is safe inside an FQL string.
pub fn check_serial(s: &str) -> Result<(), ConnectorError> {
    if s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Ok(())
    } else {
        Err(invalid(
            "device",
            format!("`{s}` is neither a Falcon agent id nor a serial number (letters, digits, `-`, `_`, `.`)"),
        ))
    }
}

fn string_input(input: &Value, field: &str) -> Result<String, ConnectorError> {
    match input.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Some(Value::String(_)) => Err(invalid(field, "must not be empty")),
        Some(Value::Null) | None => Err(invalid(field, "is required")),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

fn not_found() -> Value {
    json!({"found": false, "target": null, "already": false})
}

/// The registry's entry point: check the settings map and build the instance.
pub fn build(
    name: &str,
    map: &serde_json::Map<String, Value>,
    base_dir: &std::path::Path,
    redactor: &crate::secret::Redactor,
) -> Result<std::sync::Arc<dyn Connector>, Vec<ConfigError>> {
    let settings = Settings::new(
        name,
        map,
        CrowdStrikeConnector::SETTINGS,
        base_dir,
        redactor,
    );
    Ok(std::sync::Arc::new(CrowdStrikeConnector::from_settings(
        settings,
    )?))
}

impl CrowdStrikeConnector {
    /// The settings this type takes.
    pub const SETTINGS: &'static [&'static str] = &["base_url", "client_id", "client_secret"];

    /// Build from an instance's settings (pure apart from reading the secret).
    pub fn from_settings(mut s: Settings<'_>) -> Result<Self, Vec<ConfigError>> {
        let instance = s.instance().to_string();
        let base_url = s.url_or("base_url", DEFAULT_BASE_URL);
        let client_id = s.required_string("client_id");
        let client_secret = s.required_secret("client_secret");
        let redactor = s.redactor().clone();
        s.finish()?;
        let (Some(base_url), Some(client_id), Some(client_secret)) =
            (base_url, client_id, client_secret)
        else {
            return Err(vec![ConfigError::new(
                &instance,
                None,
                "`client_id` and `client_secret` are required",
            )]);
        };
        let mut config = HttpClientConfig::new(&instance);
        config.base_url = Some(base_url);
        config.timeout = REQUEST_TIMEOUT;
        let client = HttpClient::new(config, redactor).map_err(|e| {
            let setting = match &e {
                ClientBuildError::Url(_) => Some("base_url"),
                _ => None,
            };
            vec![ConfigError::new(&instance, setting, e.to_string())]
        })?;
        Ok(Self::new(client, client_id, client_secret))
    }

    /// An instance around an existing client (tests, embedding). The client's base URL is
    /// the Falcon API root; register `client_secret` with the client's redactor.
    pub fn with_client(
        client: HttpClient,
        client_id: impl Into<String>,
        client_secret: SecretValue,
    ) -> Result<Self, ConnectorError> {
        if client.base_url().is_none() {
            return Err(ConnectorError::Config(format!(
                "connector `{}`: setting `base_url` is required",
                client.instance()
            )));
        }
        Ok(Self::new(client, client_id.into(), client_secret))
    }

    fn new(client: HttpClient, client_id: String, client_secret: SecretValue) -> Self {
        CrowdStrikeConnector {
            instance: client.instance().to_string(),
            client,
            client_id,
            client_secret,
            token: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn url(&self, segments: &[&str]) -> Result<Url, ConnectorError> {
        let mut url = self
            .client
            .base_url()
            .cloned()
            .ok_or_else(|| ConnectorError::Config("setting `base_url` is required".into()))?;
        url.set_query(None);
        url.set_fragment(None);
        url.path_segments_mut()
            .map_err(|_| {
                ConnectorError::Config(format!(
                    "connector `{}`: setting `base_url` cannot take a path",
                    self.instance
                ))
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn cached(&self) -> Option<SecretValue> {
        let guard = self.token.lock().ok()?;
        let cached = guard.as_ref()?;
        (Instant::now() < cached.refresh_at).then(|| cached.token.clone())
    }

    fn invalidate(&self) {
        if let Ok(mut guard) = self.token.lock() {
            *guard = None;
        }
    }

    /// A valid access token, from the cache or `POST /oauth2/token`.
    async fn bearer(&self, log: &RequestLog) -> Result<SecretValue, ConnectorError> {
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        let _fetching = self.fetching.lock().await;
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        let url = self.url(&["oauth2", "token"])?;
        let spec = RequestSpec::post(url.as_str())
            .header("Accept", "application/json")
            .form(vec![
                (
                    "client_id".to_string(),
                    MaybeSecret::from(self.client_id.as_str()),
                ),
                (
                    "client_secret".to_string(),
                    MaybeSecret::Secret(self.client_secret.clone()),
                ),
            ]);
        let resp = self.client.send_raw(spec, log).await?;
        if !resp.status.is_success() {
            let error = self.failure(&Method::POST, &url, &resp);
            return Err(match error {
                ConnectorError::Auth { status, message }
                | ConnectorError::Rejected {
                    status: status @ 400,
                    message,
                } => ConnectorError::Auth {
                    status,
                    message: format!(
                        "{message} (check the connector's `client_id`, `client_secret` and `base_url` cloud)"
                    ),
                },
                other => other,
            });
        }
        let body: TokenAnswer = resp.json()?;
        let access = body.access_token.filter(|t| !t.is_empty()).ok_or_else(|| {
            ConnectorError::Other(format!(
                "POST {}: Falcon answered without an `access_token`",
                url.path()
            ))
        })?;
        // Registered at once: from here on it is scrubbed from anything printed.
        let token = self.client.redactor().secret(access);
        let lifetime = body
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME);
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        if let Ok(mut guard) = self.token.lock() {
            *guard = Some(CachedToken {
                token: token.clone(),
                refresh_at: Instant::now() + lifetime.saturating_sub(margin),
            });
        }
        Ok(token)
    }

    /// Send with the bearer token; on 401 refresh the token once and send again.
    async fn send(
        &self,
        spec: RequestSpec,
        call: &ActionCall<'_>,
    ) -> Result<HttpResponse, ConnectorError> {
        let spec = spec.header("Accept", "application/json");
        let token = self.bearer(call.requests).await?;
        let resp = self
            .client
            .send_raw(spec.clone().auth("Bearer", &token), call.requests)
            .await?;
        if resp.status.as_u16() != 401 {
            return Ok(resp);
        }
        self.invalidate();
        let token = self.bearer(call.requests).await?;
        self.client
            .send_raw(spec.auth("Bearer", &token), call.requests)
            .await
    }

    /// The typed error for a non-2xx answer, naming Falcon's codes, messages and trace id.
    fn failure(&self, method: &Method, url: &Url, resp: &HttpResponse) -> ConnectorError {
        let generic = match self.client.error_for_status(method, url, resp) {
            Ok(()) => ConnectorError::Other(format!(
                "{method} {}: unexpected answer {}",
                url.path(),
                resp.status
            )),
            Err(e) => e,
        };
        let body: Option<Reply<Value>> = serde_json::from_slice(&resp.body).ok();
        let Some(body) = body.filter(|b| b.errors.as_ref().is_some_and(|e| !e.is_empty())) else {
            return generic;
        };
        let errors: Vec<String> = body
            .errors
            .iter()
            .flatten()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.code.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
                    e.message.as_deref().unwrap_or("(no message)")
                )
            })
            .collect();
        let mut message = format!(
            "{method} {} → {}: CrowdStrike {}",
            url.path(),
            resp.status,
            errors.join("; ")
        );
        if let Some(trace) = body.meta.and_then(|m| m.trace_id) {
            message.push_str(&format!(" [trace_id {trace}]"));
        }
        let message = self.client.redactor().redact_str(&message);
        match generic {
            ConnectorError::RateLimited { .. } => ConnectorError::RateLimited {
                retry_after: retry_after(&resp.headers),
                message,
            },
            ConnectorError::Transient { retry_after, .. } => ConnectorError::Transient {
                retry_after,
                message,
            },
            ConnectorError::Auth { status, .. } => ConnectorError::Auth { status, message },
            ConnectorError::Rejected { status, .. } => ConnectorError::Rejected { status, message },
            other => other,
        }
    }

    /// `GET /devices/entities/devices/v2?ids=…`: the records Falcon has (404 = none).
    async fn devices(
        &self,
        ids: &[String],
        call: &ActionCall<'_>,
    ) -> Result<Vec<Device>, ConnectorError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let url = self.url(&["devices", "entities", "devices", "v2"])?;
        let mut spec = RequestSpec::new(Method::GET, url.as_str());
        for id in ids {
            spec = spec.query("ids", id.as_str());
        }
        let resp = self.send(spec, call).await?;
        if resp.status.as_u16() == 404 {
            return Ok(Vec::new());
        }
        if !resp.status.is_success() {
            return Err(self.failure(&Method::GET, &url, &resp));
        }
        Ok(resp.json::<Reply<Device>>()?.resources)
    }

    /// Resolve `device` (AID or serial) to a Falcon host, if there is one.
    async fn resolve(
        &self,
        device: &str,
        call: &ActionCall<'_>,
    ) -> Result<Option<Device>, ConnectorError> {
        if looks_like_aid(device) {
            let found = self.devices(&[device.to_ascii_lowercase()], call).await?;
            return Ok(found
                .into_iter()
                .find(|d| d.device_id.eq_ignore_ascii_case(device)));
        }
        check_serial(device)?;
        let url = self.url(&["devices", "queries", "devices", "v1"])?;
        let spec = RequestSpec::new(Method::GET, url.as_str())
            .query("filter", format!("serial_number:'{device}'"))
            .query("limit", SERIAL_LOOKUP_LIMIT);
        let resp = self.send(spec, call).await?;
        if !resp.status.is_success() {
            return Err(self.failure(&Method::GET, &url, &resp));
        }
        let ids = resp.json::<Reply<String>>()?.resources;
        let mut matching: Vec<Device> = self
            .devices(&ids, call)
            .await?
            .into_iter()
            .filter(|d| {
                d.serial_number
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case(device))
            })
            .collect();
        // A reinstalled sensor leaves an old AID behind: act on the one seen last. RFC 3339
        // times in UTC ("…Z", as Falcon writes them) sort as strings.
        matching.sort_by(|a, b| a.last_seen.cmp(&b.last_seen));
        Ok(matching.pop())
    }

    async fn find_host(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        let device = string_input(call.input, "device")?;
        Ok(match self.resolve(&device, &call).await? {
            Some(d) => d.lookup_output(),
            None => json!({"found": false}),
        })
    }

    async fn containment(&self, call: ActionCall<'_>, op: Move) -> Result<Value, ConnectorError> {
        let device = string_input(call.input, "device")?;
        let Some(host) = self.resolve(&device, &call).await? else {
            return Ok(not_found());
        };
        let aid = host.device_id.clone();
        let before = host.status().to_string();
        let output = |already: bool| json!({"found": true, "target": aid, "already": already, "previous_status": before});
        if op.already(&before) {
            return Ok(output(true));
        }
        let url = self.url(&["devices", "entities", "devices-actions", "v2"])?;
        let spec = RequestSpec::new(Method::POST, url.as_str())
            .query("action_name", op.action_name())
            .json(json!({"ids": [aid]}));
        let resp = self.send(spec, &call).await?;
        // The answer classifies each host, whatever its HTTP status (202, or 409 with the
        // same body for a host already in that state).
        let reply: Option<Reply<Affected>> = serde_json::from_slice(&resp.body).ok();
        if let Some(reply) = &reply {
            let mine = |id: Option<&str>| id.is_some_and(|i| i.eq_ignore_ascii_case(&aid));
            if resp.status.is_success() && reply.resources.iter().any(|r| mine(r.id.as_deref())) {
                return Ok(output(false));
            }
            let already = reply.errors.iter().flatten().any(|e| {
                e.code == Some(409)
                    && (mine(e.id.as_deref())
                        || e.message.as_deref().is_some_and(|m| m.contains(&aid))
                        // One host asked about: a 409 without an id can only be it.
                        || (e.id.is_none() && reply.resources.is_empty()))
            });
            if already && matches!(resp.status.as_u16(), 200..=299 | 409) {
                return Ok(output(true));
            }
        }
        if resp.status.is_success() {
            return Err(ConnectorError::Other(format!(
                "POST {}?action_name={} → {}: Falcon did not confirm host {aid} (neither in `resources` nor a 409 in `errors`)",
                url.path(),
                op.action_name(),
                resp.status
            )));
        }
        if resp.status.as_u16() == 404 {
            return Ok(not_found());
        }
        Err(self.failure(&Method::POST, &url, &resp))
    }
}

#[async_trait]
impl Connector for CrowdStrikeConnector {
    fn type_name(&self) -> &'static str {
        TYPE.name
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        if !call.input.is_object() {
            return Err(invalid("with", "the inputs must be a map"));
        }
        match call.action {
            "find_host" => self.find_host(call).await,
            "contain_host" => self.containment(call, Move::Contain).await,
            "lift_containment" => self.containment(call, Move::Lift).await,
            other => Err(ConnectorError::Other(format!(
                "connector type `crowdstrike` has no action `{other}`"
            ))),
        }
    }

    /// The host's `{found, id, serial, status, already}` (or `{found: false}`).
    async fn prior_state(&self, call: ActionCall<'_>) -> Result<Option<Value>, ConnectorError> {
        let op = match call.action {
            "contain_host" => Move::Contain,
            "lift_containment" => Move::Lift,
            _ => return Ok(None),
        };
        let device = string_input(call.input, "device")?;
        Ok(Some(match self.resolve(&device, &call).await? {
            Some(d) => json!({
                "found": true,
                "id": d.device_id,
                "serial": d.serial_number,
                "status": d.status(),
                "already": op.already(d.status()),
            }),
            None => json!({"found": false}),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aid_and_serial_shapes() {
        assert!(looks_like_aid("0123456789abcdef0123456789abcdef"));
        assert!(!looks_like_aid("C02DEMO0001"));
        assert!(!looks_like_aid("0123456789abcdef0123456789abcdeg"));
        assert!(check_serial("C02DEMO0001").is_ok());
        assert!(check_serial("VMware-56 4d").is_err());
        assert!(matches!(
            check_serial("x' OR hostname:'*"),
            Err(ConnectorError::InvalidInput { field, .. }) if field == "device"
        ));
    }

    #[test]
    fn already_states() {
        assert!(Move::Contain.already("contained"));
        assert!(Move::Contain.already("containment_pending"));
        assert!(!Move::Contain.already("normal"));
        assert!(Move::Lift.already("normal"));
        assert!(Move::Lift.already("lift_containment_pending"));
        assert!(!Move::Lift.already("contained"));
    }

    #[test]
    fn declarations_are_consistent() {
        for a in TYPE.actions {
            assert!(a.input("device").is_some(), "{}", a.name);
            if let Some(undo) = a.undo {
                assert!(TYPE.action(undo).is_some(), "{} → {undo}", a.name);
            }
        }
        assert_eq!(
            TYPE.action("contain_host").and_then(|a| a.undo),
            Some("lift_containment")
        );
    }
}
