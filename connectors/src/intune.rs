//! The `intune` connector: Microsoft Intune managed devices through Microsoft Graph v1.0.
//!
//! ## Settings (the same as `entra`)
//! - `tenant_id`: the directory (tenant) id, a GUID or a domain name.
//! - `client_id`: the application (client) id of an app registration.
//! - `client_secret`: its client secret, `{env: …}` or `{file: …}`.
//! - `base_url`: default `https://graph.microsoft.com`; every path adds `/v1.0`.
//! - `token_url`: default `https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token`,
//!   `{tenant_id}` replaced.
//!
//! Authentication is OAuth 2.0 client credentials with scope
//! `https://graph.microsoft.com/.default` ([`crate::oauth::ClientCredentials`]): the token is
//! cached in memory and refreshed once on a 401. Application permissions:
//! `DeviceManagementManagedDevices.Read.All` and
//! `DeviceManagementManagedDevices.PrivilegedOperations.All`.
//!
//! ## Actions and the calls they make
//! Every action takes `device`: a serial number, or the Intune managed device id (a GUID).
//! An id is read with `GET /v1.0/deviceManagement/managedDevices/{id}`; a serial with
//! `GET /v1.0/deviceManagement/managedDevices?$filter=serialNumber eq '<serial>'`, following
//! `@odata.nextLink`. Intune silently ignores `$filter`s it does not support and returns the
//! whole fleet, so the serial is re-checked here (case-insensitively) on every record; when a
//! serial matches several records (re-enrolments), the most recently synced one wins.
//! - `find_device`: the lookup → `{found, id, serial, name, owner, os, os_version,
//!   last_seen, compliance_state, management_state, azure_ad_device_id, matches}`.
//! - `remote_lock`: lookup; unless a `remoteLock` is already pending or active in the
//!   device's `deviceActionResults`, `POST /v1.0/deviceManagement/managedDevices/{id}/remoteLock`
//!   (no body, 204). No undo: Intune has no remote unlock.
//! - `retire`: lookup; unless the device is already `retirePending`/`retireIssued` or a
//!   `retire` action is pending, active or done, `POST …/managedDevices/{id}/retire`
//!   (no body, 204). Destructive (removes company data and management); no undo.
//! - `snapshot_device`: lookup, then `GET …/managedDevices/{id}` (the full record) written
//!   as one JSON line of evidence. `since`/`until` are checked but Intune keeps no history.
//!
//! Graph errors (`{"error": {"code", "message", "innerError": {"request-id"}}}`) become
//! messages naming the code, message and request id; 429 and 5xx honour `Retry-After`.
//! `prior_state` of the mutating actions records `{found, id, serial, name,
//! management_state, pending_actions, already}`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::DateTime;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use url::Url;

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::evidence::{EvidenceError, EvidenceMeta};
use crate::http_client::{
    display_url, retry_after, ClientBuildError, HttpClient, HttpClientConfig, HttpResponse,
    RequestSpec, DEFAULT_TIMEOUT,
};
use crate::oauth::{check_tenant_id, tenant_token_url, ClientCredentials, ClientCredentialsConfig};
use crate::registry::{ConfigError, Settings};
use crate::secret::{Redactor, SecretValue};
use crate::{ActionCall, Connector, ConnectorError, RequestLog};

/// Default Graph root; paths add `/v1.0`.
pub const DEFAULT_BASE_URL: &str = "https://graph.microsoft.com";
/// Default token endpoint; `{tenant_id}` is replaced.
pub const DEFAULT_TOKEN_URL: &str =
    "https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token";
/// The client-credentials scope for Graph.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
/// A serial lookup that Intune answers with the whole fleet is followed this far at most.
const MAX_LOOKUP_PAGES: u32 = 500;

const DEVICE_INPUT: FieldDecl = FieldDecl {
    name: "device",
    ty: "string",
    required: true,
    description: "serial number, or the Intune managed device id (GUID)",
};

const DEVICE_INPUTS: &[FieldDecl] = &[DEVICE_INPUT];

const SNAPSHOT_INPUTS: &[FieldDecl] = &[
    DEVICE_INPUT,
    FieldDecl {
        name: "since",
        ty: "string",
        required: false,
        description: "RFC 3339; checked and recorded (Intune keeps no device history)",
    },
    FieldDecl {
        name: "until",
        ty: "string",
        required: false,
        description: "RFC 3339; checked and recorded",
    },
];

const MUTATION_OUTPUTS: &[FieldDecl] = &[
    FieldDecl {
        name: "found",
        ty: "boolean",
        required: true,
        description: "false when no such device exists (nothing was sent)",
    },
    FieldDecl {
        name: "target",
        ty: "string",
        required: true,
        description: "the Intune managed device id (null when not found)",
    },
    FieldDecl {
        name: "already",
        ty: "boolean",
        required: true,
        description: "true when the same action was already pending (or done) and nothing was sent",
    },
];

const FIND_OUTPUTS: &[FieldDecl] = &[
    FieldDecl {
        name: "found",
        ty: "boolean",
        required: true,
        description: "false when no such device exists",
    },
    FieldDecl {
        name: "id",
        ty: "string",
        required: false,
        description: "the Intune managed device id",
    },
    FieldDecl {
        name: "serial",
        ty: "string",
        required: false,
        description: "serial number",
    },
    FieldDecl {
        name: "name",
        ty: "string",
        required: false,
        description: "device name",
    },
    FieldDecl {
        name: "owner",
        ty: "string",
        required: false,
        description: "the primary user's UPN",
    },
    FieldDecl {
        name: "os",
        ty: "string",
        required: false,
        description: "operating system",
    },
    FieldDecl {
        name: "last_seen",
        ty: "string",
        required: false,
        description: "last sync with Intune (RFC 3339)",
    },
];

const SNAPSHOT_OUTPUTS: &[FieldDecl] = &[
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
        description: "device records written (one JSON line each)",
    },
    FieldDecl {
        name: "pages",
        ty: "integer",
        required: true,
        description: "pages fetched",
    },
    FieldDecl {
        name: "found",
        ty: "boolean",
        required: true,
        description: "false when no such device exists (no artifact is written)",
    },
    FieldDecl {
        name: "target",
        ty: "string",
        required: true,
        description: "the Intune managed device id",
    },
];

pub const TYPE: TypeDecl = TypeDecl {
    name: "intune",
    description: "Microsoft Intune managed devices through Microsoft Graph",
    needs_instance: true,
    actions: &[
        ActionDecl {
            name: "find_device",
            description: "Look a managed device up by serial number or Intune id",
            inputs: DEVICE_INPUTS,
            outputs: FIND_OUTPUTS,
            effect: Effect::Lookup,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "remote_lock",
            description: "Lock the device remotely (remoteLock); Intune has no remote unlock",
            inputs: DEVICE_INPUTS,
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "retire",
            description:
                "Retire the device: remove company data and management (destructive, no undo)",
            inputs: DEVICE_INPUTS,
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "snapshot_device",
            description: "The device's full Intune record, as JSON lines evidence",
            inputs: SNAPSHOT_INPUTS,
            outputs: SNAPSHOT_OUTPUTS,
            effect: Effect::Snapshot,
            undo: None,
            secret_outputs: &[],
        },
    ],
};

// ---------------------------------------------------------------------------------------
// Helpers shared with the other Microsoft connector (`defender`).

pub(crate) fn invalid(field: &str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidInput {
        field: field.to_string(),
        message: message.into(),
    }
}

pub(crate) fn evidence_err(e: EvidenceError) -> ConnectorError {
    ConnectorError::Evidence(e.0)
}

/// An OData string literal: single quotes, inner quotes doubled.
pub(crate) fn odata_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Percent-encode a query component as Microsoft's examples are written: spaces as `%20`
/// (never `+`), OData punctuation (`$ ' ( ) : , / @`) left readable.
pub(crate) fn encode_query_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'_' | b'~' | b'$' | b'\'' | b'(' | b')' | b':' | b',' | b'/' | b'@'
            );
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn set_query(url: &mut Url, pairs: &[(&str, &str)]) {
    let q = pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                encode_query_component(k),
                encode_query_component(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    url.set_query(Some(&q));
}

/// True for the canonical GUID form Microsoft uses for ids.
pub(crate) fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    parts.len() == 5
        && parts
            .iter()
            .zip(lens)
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The `device` input, trimmed and checked.
pub(crate) fn device_input(input: &Value) -> Result<String, ConnectorError> {
    let obj = input
        .as_object()
        .ok_or_else(|| invalid("with", "the inputs must be a map"))?;
    match obj.get("device") {
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                Err(invalid("device", "must not be empty"))
            } else if s.chars().any(char::is_control) {
                Err(invalid("device", "must not contain control characters"))
            } else {
                Ok(s.to_string())
            }
        }
        Some(_) => Err(invalid(
            "device",
            "must be a string (a serial number or the vendor's device id)",
        )),
        None => Err(invalid("device", "is required")),
    }
}

/// An optional RFC 3339 input, checked (named in the error) and returned as given.
pub(crate) fn time_input(
    obj: &Map<String, Value>,
    field: &str,
) -> Result<Option<String>, ConnectorError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s.trim())
            .map(|_| Some(s.trim().to_string()))
            .map_err(|e| {
                invalid(
                    field,
                    format!("`{s}` is not an RFC 3339 time such as 2024-07-01T00:00:00Z ({e})"),
                )
            }),
        Some(_) => Err(invalid(
            field,
            "must be an RFC 3339 time string such as 2024-07-01T00:00:00Z",
        )),
    }
}

pub(crate) fn not_found() -> Value {
    json!({"found": false, "target": null, "already": false})
}

#[derive(Deserialize)]
struct MsErrorBody {
    error: MsErrorDetail,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MsErrorDetail {
    code: Option<String>,
    message: Option<String>,
    inner_error: Option<MsInnerError>,
    /// Defender puts its correlation id here.
    target: Option<String>,
}

#[derive(Deserialize)]
struct MsInnerError {
    #[serde(rename = "request-id")]
    request_id: Option<String>,
}

/// The vendor's error code and message from a Microsoft error body, if any.
pub(crate) fn ms_error_parts(resp: &HttpResponse) -> (Option<String>, Option<String>) {
    match serde_json::from_slice::<MsErrorBody>(&resp.body) {
        Ok(b) => (b.error.code, b.error.message),
        Err(_) => (None, None),
    }
}

/// A Microsoft (Graph or Defender) error answer as a typed error naming the vendor's code,
/// message and request/correlation id; redacted of every registered secret.
pub(crate) fn ms_error(
    vendor: &str,
    redactor: &Redactor,
    method: &Method,
    url: &Url,
    resp: &HttpResponse,
) -> ConnectorError {
    let status = resp.status.as_u16();
    let detail = match serde_json::from_slice::<MsErrorBody>(&resp.body) {
        Ok(body) => {
            let e = body.error;
            let mut d = e.code.unwrap_or_else(|| "no error code".to_string());
            if let Some(m) = e.message.filter(|m| !m.is_empty()) {
                let m: String = m.split_whitespace().collect::<Vec<_>>().join(" ");
                let mut short: String = m.chars().take(300).collect();
                if m.chars().count() > 300 {
                    short.push('…');
                }
                d.push_str(&format!(": {short}"));
            }
            if let Some(id) = e.inner_error.and_then(|i| i.request_id) {
                d.push_str(&format!(" (request-id {id})"));
            } else if let Some(id) = e.target.filter(|t| !t.is_empty()) {
                d.push_str(&format!(" (correlation id {id})"));
            }
            d
        }
        Err(_) => {
            let text = String::from_utf8_lossy(&resp.body[..resp.body.len().min(2048)])
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let short: String = text.chars().take(200).collect();
            if short.is_empty() {
                "no error body".to_string()
            } else {
                short
            }
        }
    };
    let message = redactor.redact_str(&format!(
        "{vendor} {method} {} → {}: {detail}",
        url.path(),
        resp.status
    ));
    match status {
        429 => ConnectorError::RateLimited {
            retry_after: retry_after(&resp.headers),
            message,
        },
        408 | 500..=599 => ConnectorError::Transient {
            retry_after: retry_after(&resp.headers),
            message,
        },
        401 | 403 => ConnectorError::Auth { status, message },
        _ => ConnectorError::Rejected { status, message },
    }
}

/// Tenant, client, secret and URLs as both Microsoft connectors read them from settings.
pub(crate) struct MsSettings {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: SecretValue,
    pub base_url: Url,
    pub token_url: Url,
    pub redactor: Redactor,
}

/// Read `tenant_id`, `client_id`, `client_secret`, `base_url`, `token_url`, reporting every
/// problem at once, each naming its setting.
pub(crate) fn ms_settings(
    mut s: Settings<'_>,
    default_base: &str,
    default_token: &str,
) -> Result<MsSettings, Vec<ConfigError>> {
    let instance = s.instance().to_string();
    let tenant_id = s.required_string("tenant_id");
    if let Some(t) = &tenant_id {
        if let Err(e) = check_tenant_id(t) {
            s.error(Some("tenant_id"), e);
        }
    }
    let client_id = s.required_string("client_id");
    if client_id.as_deref().is_some_and(|c| c.trim().is_empty()) {
        s.error(Some("client_id"), "must not be empty");
    }
    let client_secret = s.required_secret("client_secret");
    let base_url = s.url_or("base_url", default_base);
    let token_template = s
        .string("token_url")
        .unwrap_or_else(|| default_token.to_string());
    let token_url = match &tenant_id {
        Some(t) if check_tenant_id(t).is_ok() => {
            match Url::parse(&tenant_token_url(&token_template, t)) {
                Ok(u) => match crate::http_client::check_url(&instance, &u) {
                    Ok(()) => Some(u),
                    Err(e) => {
                        s.error(Some("token_url"), e.reason);
                        None
                    }
                },
                Err(e) => {
                    s.error(Some("token_url"), format!("not an absolute URL: {e}"));
                    None
                }
            }
        }
        _ => None,
    };
    let redactor = s.redactor().clone();
    s.finish()?;
    match (tenant_id, client_id, client_secret, base_url, token_url) {
        (
            Some(tenant_id),
            Some(client_id),
            Some(client_secret),
            Some(base_url),
            Some(token_url),
        ) => Ok(MsSettings {
            tenant_id,
            client_id,
            client_secret,
            base_url,
            token_url,
            redactor,
        }),
        // Every None above recorded an error, so finish() has returned already.
        _ => Err(vec![ConfigError::new(
            &instance,
            None,
            "incomplete settings",
        )]),
    }
}

/// A `next` link is followed unchanged, but only to the configured origin: the bearer token
/// must never be sent to a host the configuration did not name.
pub(crate) fn check_next_link(
    vendor: &str,
    base_url: &Url,
    link: &str,
) -> Result<Url, ConnectorError> {
    let url = Url::parse(link).map_err(|e| {
        ConnectorError::Other(format!(
            "{vendor} returned an unusable @odata.nextLink: {e}"
        ))
    })?;
    if url.origin() != base_url.origin() {
        return Err(ConnectorError::Other(format!(
            "{vendor} returned an @odata.nextLink to {}, outside the configured base_url {}; refusing to send the token there",
            display_url(&url),
            display_url(base_url)
        )));
    }
    Ok(url)
}

// ---------------------------------------------------------------------------------------

/// Everything an `intune` instance needs; [`IntuneConnector::from_settings`] fills it from
/// configuration, tests may build it directly.
#[derive(Debug, Clone)]
pub struct IntuneConfig {
    pub instance: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: SecretValue,
    /// Graph root without `/v1.0`.
    pub base_url: Url,
    /// Token endpoint, `{tenant_id}` already replaced.
    pub token_url: Url,
    /// Bound on each request.
    pub timeout: Duration,
}

impl IntuneConfig {
    /// Defaults for everything but the instance name and credentials.
    pub fn with_defaults(
        instance: impl Into<String>,
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: SecretValue,
    ) -> Result<IntuneConfig, url::ParseError> {
        let tenant_id = tenant_id.into();
        Ok(IntuneConfig {
            instance: instance.into(),
            base_url: Url::parse(DEFAULT_BASE_URL)?,
            token_url: Url::parse(&tenant_token_url(DEFAULT_TOKEN_URL, &tenant_id))?,
            tenant_id,
            client_id: client_id.into(),
            client_secret,
            timeout: DEFAULT_TIMEOUT,
        })
    }
}

/// A configured `intune` instance.
pub struct IntuneConnector {
    instance: String,
    base_url: Url,
    client: HttpClient,
    credentials: ClientCredentials,
}

impl fmt::Debug for IntuneConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntuneConnector")
            .field("instance", &self.instance)
            .field("base_url", &display_url(&self.base_url))
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// The managedDevice properties Cordon reads (the full record is kept as raw JSON).
#[derive(Debug, Clone)]
struct ManagedDevice {
    raw: Value,
}

impl ManagedDevice {
    fn str(&self, key: &str) -> Option<&str> {
        self.raw.get(key).and_then(Value::as_str)
    }
    fn id(&self) -> &str {
        self.str("id").unwrap_or_default()
    }
    fn serial(&self) -> Option<&str> {
        self.str("serialNumber")
    }
    /// Names of actions (`remoteLock`, `retire`, …) in one of `states`.
    fn actions_in(&self, states: &[&str]) -> Vec<String> {
        self.raw
            .get("deviceActionResults")
            .and_then(Value::as_array)
            .map(|results| {
                results
                    .iter()
                    .filter(|r| {
                        r.get("actionState")
                            .and_then(Value::as_str)
                            .is_some_and(|s| states.iter().any(|x| x.eq_ignore_ascii_case(s)))
                    })
                    .filter_map(|r| r.get("actionName").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
    fn has_action(&self, name: &str, states: &[&str]) -> bool {
        self.actions_in(states)
            .iter()
            .any(|a| a.eq_ignore_ascii_case(name))
    }
}

/// Pending and in-progress action states in `deviceActionResults`.
const OPEN_STATES: &[&str] = &["pending", "active"];

#[derive(Deserialize)]
struct GraphPage {
    #[serde(default)]
    value: Vec<Value>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

/// The registry's constructor: one `intune` instance from its settings map.
pub fn build(
    name: &str,
    map: &Map<String, Value>,
    base_dir: &std::path::Path,
    redactor: &Redactor,
) -> Result<std::sync::Arc<dyn Connector>, Vec<ConfigError>> {
    let settings = Settings::new(name, map, IntuneConnector::SETTINGS, base_dir, redactor);
    Ok(std::sync::Arc::new(IntuneConnector::from_settings(
        settings,
    )?))
}

/// Is this action, in this device state, already where the action would take it?
fn already_for(action: &str, d: &ManagedDevice) -> bool {
    match action {
        "remote_lock" => d.has_action("remoteLock", OPEN_STATES),
        "retire" => {
            d.str("managementState").is_some_and(|s| {
                s.eq_ignore_ascii_case("retirePending") || s.eq_ignore_ascii_case("retireIssued")
            }) || d.has_action("retire", &["pending", "active", "done"])
        }
        _ => false,
    }
}

impl IntuneConnector {
    /// The settings this type takes.
    pub const SETTINGS: &'static [&'static str] = &[
        "tenant_id",
        "client_id",
        "client_secret",
        "base_url",
        "token_url",
    ];

    /// Build from an instance's settings (pure apart from reading the secret).
    pub fn from_settings(s: Settings<'_>) -> Result<Self, Vec<ConfigError>> {
        let instance = s.instance().to_string();
        let m = ms_settings(s, DEFAULT_BASE_URL, DEFAULT_TOKEN_URL)?;
        let config = IntuneConfig {
            instance: instance.clone(),
            tenant_id: m.tenant_id,
            client_id: m.client_id,
            client_secret: m.client_secret,
            base_url: m.base_url,
            token_url: m.token_url,
            timeout: DEFAULT_TIMEOUT,
        };
        IntuneConnector::new(config, m.redactor).map_err(|e| {
            let setting = match &e {
                ClientBuildError::Url(_) => Some("base_url"),
                _ => None,
            };
            vec![ConfigError::new(&instance, setting, e.to_string())]
        })
    }

    /// Build from a complete configuration. No network I/O.
    pub fn new(config: IntuneConfig, redactor: Redactor) -> Result<Self, ClientBuildError> {
        redactor.register(config.client_secret.expose());
        let mut http = HttpClientConfig::new(&config.instance);
        http.base_url = Some(config.base_url.clone());
        http.timeout = config.timeout;
        let client = HttpClient::new(http, redactor)?;
        crate::http_client::check_url(&config.instance, &config.token_url)?;
        let credentials = ClientCredentials::new(ClientCredentialsConfig {
            token_url: config.token_url,
            client_id: config.client_id,
            client_secret: config.client_secret,
            scope: GRAPH_SCOPE.to_string(),
        });
        Ok(IntuneConnector {
            instance: config.instance,
            base_url: config.base_url,
            client,
            credentials,
        })
    }

    /// `{base_url}/v1.0/deviceManagement/managedDevices/<segments…>`.
    fn devices_url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend(["v1.0", "deviceManagement", "managedDevices"])
                .extend(segments);
        }
        url
    }

    async fn send(
        &self,
        log: &RequestLog,
        spec: RequestSpec,
    ) -> Result<HttpResponse, ConnectorError> {
        self.credentials.send(&self.client, log, spec).await
    }

    fn error(&self, method: &Method, url: &Url, resp: &HttpResponse) -> ConnectorError {
        ms_error("Graph", self.client.redactor(), method, url, resp)
    }

    /// One device by Intune id, or None when Graph answers 404.
    async fn get_by_id(
        &self,
        log: &RequestLog,
        id: &str,
    ) -> Result<Option<ManagedDevice>, ConnectorError> {
        let url = self.devices_url(&[id]);
        let resp = self.send(log, RequestSpec::get(url.as_str())).await?;
        match resp.status.as_u16() {
            200..=299 => Ok(Some(ManagedDevice { raw: resp.json()? })),
            404 => Ok(None),
            _ => Err(self.error(&Method::GET, &url, &resp)),
        }
    }

    /// Resolve `device` (an Intune id or a serial) to one managed device, and say how many
    /// records matched.
    async fn find(
        &self,
        log: &RequestLog,
        device: &str,
    ) -> Result<Option<(ManagedDevice, usize)>, ConnectorError> {
        if is_guid(device) {
            return Ok(self.get_by_id(log, device).await?.map(|d| (d, 1)));
        }
        let mut url = self.devices_url(&[]);
        let filter = format!("serialNumber eq {}", odata_string(device));
        set_query(&mut url, &[("$filter", &filter)]);
        let mut matches: Vec<ManagedDevice> = Vec::new();
        let mut pages = 0u32;
        loop {
            let resp = self.send(log, RequestSpec::get(url.as_str())).await?;
            match resp.status.as_u16() {
                200..=299 => {}
                404 => break,
                _ => return Err(self.error(&Method::GET, &url, &resp)),
            }
            let page: GraphPage = resp.json()?;
            pages += 1;
            // Intune may have ignored the filter: check every record's serial ourselves.
            matches.extend(
                page.value
                    .into_iter()
                    .map(|raw| ManagedDevice { raw })
                    .filter(|d| {
                        d.serial()
                            .is_some_and(|s| s.trim().eq_ignore_ascii_case(device))
                            && !d.id().is_empty()
                    }),
            );
            match page.next_link {
                Some(link) if pages < MAX_LOOKUP_PAGES => {
                    url = check_next_link("Graph", &self.base_url, &link)?;
                }
                Some(_) => {
                    return Err(ConnectorError::Other(format!(
                        "Intune serial lookup for `device` {device} still had more pages after {MAX_LOOKUP_PAGES}; refusing to read further"
                    )))
                }
                None => break,
            }
        }
        let n = matches.len();
        // Re-enrolments leave several records with one serial: act on the latest synced.
        matches.sort_by(|a, b| {
            a.str("lastSyncDateTime")
                .unwrap_or("")
                .cmp(b.str("lastSyncDateTime").unwrap_or(""))
        });
        Ok(matches.pop().map(|d| (d, n)))
    }

    async fn find_device(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let device = device_input(call.input)?;
        let Some((d, n)) = self.find(call.requests, &device).await? else {
            return Ok(json!({"found": false}));
        };
        Ok(json!({
            "found": true,
            "id": d.id(),
            "serial": d.serial(),
            "name": d.str("deviceName"),
            "owner": d.str("userPrincipalName"),
            "os": d.str("operatingSystem"),
            "os_version": d.str("osVersion"),
            "last_seen": d.str("lastSyncDateTime"),
            "compliance_state": d.str("complianceState"),
            "management_state": d.str("managementState"),
            "azure_ad_device_id": d.str("azureADDeviceId"),
            "matches": n,
        }))
    }

    /// `remoteLock` or `retire`: read first, send only when not already under way.
    async fn device_action(
        &self,
        call: &ActionCall<'_>,
        segment: &str,
    ) -> Result<Value, ConnectorError> {
        let device = device_input(call.input)?;
        let Some((d, _)) = self.find(call.requests, &device).await? else {
            return Ok(not_found());
        };
        let id = d.id().to_string();
        if already_for(call.action, &d) {
            return Ok(json!({"found": true, "target": id, "already": true}));
        }
        let url = self.devices_url(&[&id, segment]);
        // No body, but an explicit `Content-Length: 0`: front ends may refuse a bodiless
        // POST without one (411).
        let spec = RequestSpec::post(url.as_str())
            .header("content-length", "0")
            .text("");
        let resp = self.send(call.requests, spec).await?;
        match resp.status.as_u16() {
            200..=299 => Ok(json!({"found": true, "target": id, "already": false})),
            // Removed between the lookup and the action.
            404 => Ok(not_found()),
            _ => Err(self.error(&Method::POST, &url, &resp)),
        }
    }

    async fn snapshot_device(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let device = device_input(call.input)?;
        let obj = call
            .input
            .as_object()
            .ok_or_else(|| invalid("with", "the inputs must be a map"))?;
        let since = time_input(obj, "since")?;
        let until = time_input(obj, "until")?;
        let Some((d, _)) = self.find(call.requests, &device).await? else {
            return Ok(json!({"found": false, "target": null}));
        };
        let id = d.id().to_string();
        // The list answer omits some properties; the full record comes from the id.
        let url = self.devices_url(&[&id]);
        let full = match self.get_by_id(call.requests, &id).await? {
            Some(full) => full.raw,
            None => return Ok(json!({"found": false, "target": null})),
        };
        let meta = EvidenceMeta {
            connector_type: TYPE.name.to_string(),
            instance: self.instance.clone(),
            action: call.action.to_string(),
            extension: "jsonl".to_string(),
            media_type: "application/x-ndjson".to_string(),
            source: json!({
                "device": device,
                "device_id": id,
                "serial": d.serial(),
                "since": since,
                "until": until,
                "endpoint": url.path(),
            }),
        };
        let mut writer = call.evidence.create(meta).await.map_err(evidence_err)?;
        let mut line = serde_json::to_vec(&full)
            .map_err(|e| ConnectorError::Other(format!("cannot encode the device record: {e}")))?;
        line.push(b'\n');
        writer.write(&line).await.map_err(evidence_err)?;
        writer.add_records(1);
        let record = writer.finish().await.map_err(evidence_err)?;
        Ok(json!({
            "found": true,
            "target": id,
            "evidence_id": record.evidence_id,
            "sha256": record.sha256,
            "bytes": record.bytes,
            "records": record.records,
            "pages": 1,
            "path": record.path,
        }))
    }
}

#[async_trait]
impl Connector for IntuneConnector {
    fn type_name(&self) -> &'static str {
        TYPE.name
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        match call.action {
            "find_device" => self.find_device(&call).await,
            "remote_lock" => self.device_action(&call, "remoteLock").await,
            "retire" => self.device_action(&call, "retire").await,
            "snapshot_device" => self.snapshot_device(&call).await,
            other => Err(ConnectorError::Other(format!(
                "connector type `intune` has no action `{other}`"
            ))),
        }
    }

    async fn prior_state(&self, call: ActionCall<'_>) -> Result<Option<Value>, ConnectorError> {
        if !matches!(call.action, "remote_lock" | "retire") {
            return Ok(None);
        }
        let device = device_input(call.input)?;
        Ok(Some(match self.find(call.requests, &device).await? {
            None => json!({"found": false}),
            Some((d, _)) => json!({
                "found": true,
                "id": d.id(),
                "serial": d.serial(),
                "name": d.str("deviceName"),
                "management_state": d.str("managementState"),
                "pending_actions": d.actions_in(OPEN_STATES),
                "already": already_for(call.action, &d),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_input_names_the_field() {
        let field = |v: Value| match device_input(&v) {
            Err(ConnectorError::InvalidInput { field, .. }) => field,
            other => panic!("expected InvalidInput, got {other:?}"),
        };
        assert_eq!(field(json!({})), "device");
        assert_eq!(field(json!({"device": "  "})), "device");
        assert_eq!(field(json!({"device": 7})), "device");
        assert_eq!(field(json!("C02")), "with");
        assert_eq!(
            device_input(&json!({"device": " C02DEMO0001 "})).unwrap(),
            "C02DEMO0001"
        );
        let obj = json!({"since": "yesterday"});
        match time_input(obj.as_object().unwrap(), "since") {
            Err(ConnectorError::InvalidInput { field, .. }) => assert_eq!(field, "since"),
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn already_reads_action_results_and_management_state() {
        let d = |v: Value| ManagedDevice { raw: v };
        let pending_lock = d(json!({"id": "x", "deviceActionResults": [
            {"actionName": "remoteLock", "actionState": "pending"}]}));
        assert!(already_for("remote_lock", &pending_lock));
        assert!(!already_for("retire", &pending_lock));
        let done_lock = d(json!({"id": "x", "deviceActionResults": [
            {"actionName": "remoteLock", "actionState": "done"}]}));
        assert!(
            !already_for("remote_lock", &done_lock),
            "a done lock may have been unlocked on the device since"
        );
        let retiring = d(json!({"id": "x", "managementState": "retirePending"}));
        assert!(already_for("retire", &retiring));
        assert!(!already_for(
            "retire",
            &d(json!({"id": "x", "managementState": "managed"}))
        ));
    }

    #[test]
    fn urls_keep_the_base_path() {
        let mut cfg = IntuneConfig::with_defaults(
            "intune",
            "contoso.onmicrosoft.com",
            "app",
            SecretValue::new("x"),
        )
        .unwrap();
        cfg.base_url = Url::parse("http://127.0.0.1:9/intune/").unwrap();
        let c = IntuneConnector::new(cfg, Redactor::new()).unwrap();
        assert_eq!(
            c.devices_url(&["abc", "remoteLock"]).as_str(),
            "http://127.0.0.1:9/intune/v1.0/deviceManagement/managedDevices/abc/remoteLock"
        );
        assert!(check_next_link("Graph", &c.base_url, "https://evil.example.com/x").is_err());
    }
}
