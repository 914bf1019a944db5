//! The `fleet` connector: Fleet (fleetdm) hosts, MDM lock/unlock and software inventory.
//!
//! Settings (`connectors.<name>` with `type: fleet`):
//! - `base_url` (required): the Fleet server root, e.g. `https://fleet.example.com`; calls
//!   add `/api/v1/fleet/…`. Overridable so tests and the sandbox can stand in for Fleet.
//! - `token` (required, a secret `{env: …}` / `{file: …}`): an API-only user's token, sent
//!   as `Authorization: Bearer <token>`. Fleet API tokens cannot be refreshed: a 401 is final.
//!
//! Actions, and the vendor calls each makes (every request sends `Accept: application/json`):
//! - `find_host`: resolves `device` (below) → `{found, id, serial, name, owner, os,
//!   last_seen, status, device_status, pending_action}`.
//! - `lock_host`: resolves `device`; a host whose MDM `device_status` is `locked`, or whose
//!   `pending_action` is `lock`, is `already: true` and nothing is sent; else
//!   `POST /api/v1/fleet/hosts/{id}/lock` (200 or 204). Fleet's 409 "Host is already locked."
//!   and 422 "Host has pending lock request…" are `already: true`; other 422s (pending
//!   unlock or wipe, wiped host) fail with Fleet's message. Undo: `unlock_host`.
//! - `unlock_host`: the same for `unlocked` / `unlock` with
//!   `POST /api/v1/fleet/hosts/{id}/unlock` (204, or on macOS 200 `{unlock_pin}`: the PIN to
//!   type at the Mac, returned as the secret output `unlock_pin`). 409 "Host is already
//!   unlocked." and a 422 naming a pending unlock are `already: true`. Undo: `lock_host`.
//! - `snapshot_software`: `GET /api/v1/fleet/hosts/{id}/software?page=N&per_page=200`
//!   (0-based pages) until `meta.has_next_results` is false; each software item becomes one
//!   JSON line of the evidence artifact, written page by page. The output names the
//!   remote-access tools found (AnyDesk, TeamViewer, Chrome Remote Desktop, RustDesk, …) in
//!   `remote_access_tools`. `since`/`until` are checked but Fleet has no time filter for
//!   inventory. A page that fails transiently leaves the open artifact and its page number
//!   in the call's resume slot; the engine's next attempt continues from that page.
//!
//! Resolving `device`: a Fleet host id (all digits) is read with
//! `GET /api/v1/fleet/hosts/{id}`; anything else (or an id Fleet does not know) with
//! `GET /api/v1/fleet/hosts/identifier/{device}`, which also matches hostnames and UUIDs, so
//! the answer is re-checked on our side: its `hardware_serial`, `uuid` or `hostname` must
//! equal `device` (case-insensitively). A 404 is `found: false`, not an error.
//!
//! Errors name Fleet's `message` and `errors[].name/reason` (and the `uuid` for support).
//! A 429 is `RateLimited`, honouring Fleet's `retry-after`.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::evidence::{EvidenceError, EvidenceMeta};
use crate::http_client::{
    display_url, ClientBuildError, HttpClient, HttpClientConfig, HttpResponse, RequestSpec,
};
use crate::registry::{ConfigError, Settings};
use crate::secret::SecretValue;
use crate::{ActionCall, Connector, ConnectorError, EvidenceWriter};

/// Bound on one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Software items per inventory page.
pub const SOFTWARE_PAGE_SIZE: u32 = 200;

/// Names (lowercase substrings of a software item's `name`) of remote-access tools that a
/// fraudulent remote worker typically uses to let someone else drive the machine.
pub const REMOTE_ACCESS_TOOLS: &[(&str, &str)] = &[
    ("anydesk", "AnyDesk"),
    ("teamviewer", "TeamViewer"),
    ("chrome remote desktop", "Chrome Remote Desktop"),
    ("chromoting", "Chrome Remote Desktop"),
    ("rustdesk", "RustDesk"),
    ("splashtop", "Splashtop"),
    ("logmein", "LogMeIn"),
    ("parsec", "Parsec"),
    ("screenconnect", "ScreenConnect"),
    ("connectwise control", "ScreenConnect"),
    ("remotepc", "RemotePC"),
    ("realvnc", "RealVNC"),
    ("tightvnc", "TightVNC"),
    ("ultravnc", "UltraVNC"),
];

const DEVICE_INPUT: FieldDecl = FieldDecl {
    name: "device",
    ty: "string",
    required: true,
    description: "the host's hardware serial number, or its Fleet host id",
};

const MUTATION_OUTPUTS: &[FieldDecl] = &[
    FieldDecl {
        name: "found",
        ty: "boolean",
        required: true,
        description: "false when Fleet has no such host (then nothing was sent)",
    },
    FieldDecl {
        name: "target",
        ty: "string",
        required: true,
        description: "the resolved Fleet host id (null when not found)",
    },
    FieldDecl {
        name: "already",
        ty: "boolean",
        required: true,
        description: "the host was already in (or on its way to) that state; nothing was sent",
    },
    FieldDecl {
        name: "device_status",
        ty: "string",
        required: false,
        description: "the host's MDM device_status before the call",
    },
    FieldDecl {
        name: "pending_action",
        ty: "string",
        required: false,
        description: "the host's pending MDM action after the call, when Fleet said",
    },
];

const fn out(name: &'static str, ty: &'static str, description: &'static str) -> FieldDecl {
    FieldDecl {
        name,
        ty,
        required: false,
        description,
    }
}

pub const TYPE: TypeDecl = TypeDecl {
    name: "fleet",
    description: "Fleet (fleetdm) device management (API token)",
    needs_instance: true,
    actions: &[
        ActionDecl {
            name: "find_host",
            description: "Look a host up by serial number or Fleet host id",
            inputs: &[DEVICE_INPUT],
            outputs: &[
                FieldDecl {
                    name: "found",
                    ty: "boolean",
                    required: true,
                    description: "false when Fleet has no such host",
                },
                out("id", "string", "Fleet host id"),
                out("serial", "string", "hardware serial number"),
                out("name", "string", "display name, else hostname"),
                out("owner", "string", "the host's user (device mapping email), if known"),
                out("os", "string", "operating system and version"),
                out("last_seen", "string", "RFC 3339 time the host last checked in"),
                out("status", "string", "online, offline, missing, new"),
                out("device_status", "string", "MDM lock state: unlocked, locked, …"),
                out("pending_action", "string", "pending MDM action: lock, unlock, wipe, or empty"),
            ],
            effect: Effect::Lookup,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "lock_host",
            description: "MDM-lock the host (it locks when it next comes online)",
            inputs: &[DEVICE_INPUT],
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: Some("unlock_host"),
            secret_outputs: &[],
        },
        ActionDecl {
            name: "unlock_host",
            description: "Unlock a locked host (macOS: returns the PIN to type at the Mac)",
            inputs: &[DEVICE_INPUT],
            outputs: &[
                MUTATION_OUTPUTS[0],
                MUTATION_OUTPUTS[1],
                MUTATION_OUTPUTS[2],
                MUTATION_OUTPUTS[3],
                MUTATION_OUTPUTS[4],
                out("unlock_pin", "string", "macOS only: the 6-digit PIN to type at the Mac"),
            ],
            effect: Effect::Mutation,
            undo: Some("lock_host"),
            secret_outputs: &["unlock_pin"],
        },
        ActionDecl {
            name: "snapshot_software",
            description: "Save the host's installed software as JSON Lines evidence, naming any remote-access tools",
            inputs: &[
                DEVICE_INPUT,
                FieldDecl {
                    name: "since",
                    ty: "string",
                    required: false,
                    description: "RFC 3339; checked, but Fleet's inventory has no time filter",
                },
                FieldDecl {
                    name: "until",
                    ty: "string",
                    required: false,
                    description: "RFC 3339; checked, but Fleet's inventory has no time filter",
                },
            ],
            outputs: &[
                FieldDecl {
                    name: "evidence_id",
                    ty: "string",
                    required: true,
                    description: "the artifact's id (null when the host was not found)",
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
                    description: "software items saved",
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
                    description: "false when Fleet has no such host (then nothing was saved)",
                },
                out("target", "string", "the resolved Fleet host id"),
                FieldDecl {
                    name: "remote_access_tools",
                    ty: "array",
                    required: true,
                    description: "remote-access tools found installed (AnyDesk, TeamViewer, …)",
                },
            ],
            effect: Effect::Snapshot,
            undo: None,
            secret_outputs: &[],
        },
    ],
};

/// A configured `fleet` instance.
#[derive(Debug, Clone)]
pub struct FleetConnector {
    instance: String,
    client: HttpClient,
    /// The API token; `SecretValue` prints as `[REDACTED]`.
    token: SecretValue,
}

/// The facts Cordon uses from a Fleet host.
#[derive(Debug, Clone, Deserialize)]
struct Host {
    id: u64,
    #[serde(default)]
    hardware_serial: Option<String>,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    computer_name: Option<String>,
    #[serde(default)]
    os_version: Option<String>,
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    seen_time: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    mdm: Option<HostMdm>,
    #[serde(default)]
    device_mapping: Option<Vec<DeviceMapping>>,
    #[serde(default)]
    end_users: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct HostMdm {
    #[serde(default)]
    device_status: Option<String>,
    #[serde(default)]
    pending_action: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct DeviceMapping {
    #[serde(default)]
    email: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HostEnvelope {
    host: Host,
}

impl Host {
    fn id(&self) -> String {
        self.id.to_string()
    }

    fn device_status(&self) -> Option<&str> {
        self.mdm
            .as_ref()
            .and_then(|m| m.device_status.as_deref())
            .filter(|s| !s.is_empty())
    }

    fn pending_action(&self) -> Option<&str> {
        self.mdm
            .as_ref()
            .and_then(|m| m.pending_action.as_deref())
            .filter(|s| !s.is_empty())
    }

    fn name(&self) -> Option<&str> {
        [&self.display_name, &self.computer_name, &self.hostname]
            .into_iter()
            .filter_map(|n| n.as_deref())
            .find(|n| !n.is_empty())
    }

    fn owner(&self) -> Option<String> {
        if let Some(email) = self
            .device_mapping
            .iter()
            .flatten()
            .filter_map(|m| m.email.as_deref())
            .find(|e| !e.is_empty())
        {
            return Some(email.to_string());
        }
        self.end_users
            .iter()
            .flatten()
            .filter_map(|u| u.get("idp_username").and_then(Value::as_str))
            .find(|e| !e.is_empty())
            .map(str::to_string)
    }

    /// Does this host answer to `device` (serial, UUID or hostname)? Fleet's identifier
    /// route matches several fields; we act only on an exact one.
    fn matches(&self, device: &str) -> bool {
        [&self.hardware_serial, &self.uuid, &self.hostname]
            .into_iter()
            .filter_map(|f| f.as_deref())
            .any(|f| !f.is_empty() && f.eq_ignore_ascii_case(device))
    }

    fn lookup_output(&self) -> Value {
        json!({
            "found": true,
            "id": self.id(),
            "serial": self.hardware_serial,
            "name": self.name(),
            "owner": self.owner(),
            "os": self.os_version.as_deref().or(self.platform.as_deref()),
            "last_seen": self.seen_time,
            "status": self.status,
            "device_status": self.device_status(),
            "pending_action": self.pending_action(),
        })
    }
}

/// Fleet's error body.
#[derive(Debug, Deserialize)]
struct FleetErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    errors: Vec<FleetErrorItem>,
    #[serde(default)]
    uuid: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FleetErrorItem {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// A failed answer, with Fleet's own text kept to tell "already" answers apart.
struct Failure {
    error: ConnectorError,
    /// Fleet's `message` and every `reason`, lowercased.
    text: String,
}

/// Which MDM move a mutating action makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    Lock,
    Unlock,
}

impl Move {
    fn verb(self) -> &'static str {
        match self {
            Move::Lock => "lock",
            Move::Unlock => "unlock",
        }
    }
    /// The `device_status` the move ends in.
    fn done_status(self) -> &'static str {
        match self {
            Move::Lock => "locked",
            Move::Unlock => "unlocked",
        }
    }
    /// Is the host already where this move takes it (or on its way there)?
    fn already(self, host: &Host) -> bool {
        host.device_status() == Some(self.done_status())
            && host.pending_action().is_none_or(|p| p == self.verb())
            || host.pending_action() == Some(self.verb())
    }
}

/// A snapshot in progress, parked in the call's [`crate::ResumeSlot`] while a page is in
/// flight.
struct SoftwareProgress {
    /// The inputs this progress belongs to (`device`).
    key: String,
    host_id: String,
    writer: Box<dyn EvidenceWriter>,
    /// The 0-based page to fetch next.
    page: u64,
    pages: u64,
    records: u64,
    tools: BTreeSet<&'static str>,
}

#[derive(Debug, Deserialize)]
struct SoftwarePage {
    #[serde(default)]
    software: Vec<Value>,
    #[serde(default)]
    meta: Option<PageMeta>,
}

#[derive(Debug, Deserialize)]
struct PageMeta {
    #[serde(default)]
    has_next_results: bool,
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

/// Fleet host ids are positive integers.
pub fn looks_like_host_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The remote-access tools a software item's name reveals.
pub fn remote_access_tool(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    REMOTE_ACCESS_TOOLS
        .iter()
        .find(|(needle, _)| lower.contains(needle))
        .map(|(_, label)| *label)
}

/// A required, non-empty string input.
fn string_input(input: &Value, field: &str) -> Result<String, ConnectorError> {
    match input.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Some(Value::String(_)) => Err(invalid(field, "must not be empty")),
        Some(Value::Null) | None => Err(invalid(field, "is required")),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

/// An optional RFC 3339 time input, checked.
fn time_input(
    input: &Value,
    field: &str,
) -> Result<Option<chrono::DateTime<chrono::FixedOffset>>, ConnectorError> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        _ => {
            let raw = string_input(input, field)?;
            chrono::DateTime::parse_from_rfc3339(&raw)
                .map(Some)
                .map_err(|e| {
                    invalid(
                        field,
                        format!(
                            "`{raw}` is not an RFC 3339 time such as 2024-05-01T00:00:00Z ({e})"
                        ),
                    )
                })
        }
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
    let settings = Settings::new(name, map, FleetConnector::SETTINGS, base_dir, redactor);
    Ok(std::sync::Arc::new(FleetConnector::from_settings(
        settings,
    )?))
}

impl FleetConnector {
    /// The settings this type takes.
    pub const SETTINGS: &'static [&'static str] = &["base_url", "token"];

    /// Build from an instance's settings (pure apart from reading the token's secret).
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
                "`base_url` and `token` are required",
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
        Ok(FleetConnector {
            instance,
            client,
            token,
        })
    }

    /// An instance around an existing client (tests, embedding). The client must have a
    /// base URL; register `token` with the client's redactor (`Redactor::secret`).
    pub fn with_client(client: HttpClient, token: SecretValue) -> Result<Self, ConnectorError> {
        if client.base_url().is_none() {
            return Err(ConnectorError::Config(format!(
                "connector `{}`: setting `base_url` is required",
                client.instance()
            )));
        }
        Ok(FleetConnector {
            instance: client.instance().to_string(),
            client,
            token,
        })
    }

    /// `base_url` + `api/v1/fleet` + path segments, each percent-encoded as one segment.
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
            .extend(["api", "v1", "fleet"])
            .extend(segments);
        Ok(url)
    }

    fn request(&self, method: Method, url: &Url) -> RequestSpec {
        RequestSpec::new(method, url.as_str())
            .auth("Bearer", &self.token)
            .header("Accept", "application/json")
    }

    async fn send(
        &self,
        spec: RequestSpec,
        call: &ActionCall<'_>,
    ) -> Result<HttpResponse, ConnectorError> {
        self.client.send_raw(spec, call.requests).await
    }

    /// The typed error for a non-2xx answer, with Fleet's message and reasons in it.
    fn failure(&self, method: &Method, url: &Url, resp: &HttpResponse) -> Failure {
        let generic = match self.client.error_for_status(method, url, resp) {
            Ok(()) => ConnectorError::Other(format!(
                "{method} {}: unexpected answer {}",
                self.client.redactor().redact_str(url.path()),
                resp.status
            )),
            Err(e) => e,
        };
        let body: Option<FleetErrorBody> = serde_json::from_slice(&resp.body).ok();
        let Some(body) = body.filter(|b| b.message.is_some() || !b.errors.is_empty()) else {
            return Failure {
                error: generic,
                text: String::new(),
            };
        };
        let reasons: Vec<String> = body
            .errors
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.name.as_deref().unwrap_or("base"),
                    e.reason.as_deref().unwrap_or("(no reason)")
                )
            })
            .collect();
        let mut message = format!(
            "{method} {} → {}: Fleet: {}",
            url.path(),
            resp.status,
            body.message.as_deref().unwrap_or("(no message)")
        );
        if !reasons.is_empty() {
            message.push_str(&format!(" ({})", reasons.join("; ")));
        }
        if let Some(uuid) = &body.uuid {
            message.push_str(&format!(" [uuid {uuid}]"));
        }
        let message = self.client.redactor().redact_str(&message);
        let mut text = body.message.clone().unwrap_or_default();
        for e in &body.errors {
            text.push(' ');
            text.push_str(e.reason.as_deref().unwrap_or(""));
        }
        let error = match generic {
            ConnectorError::RateLimited { retry_after, .. } => ConnectorError::RateLimited {
                retry_after,
                message,
            },
            ConnectorError::Transient { retry_after, .. } => ConnectorError::Transient {
                retry_after,
                message,
            },
            ConnectorError::Auth { status, .. } => ConnectorError::Auth { status, message },
            ConnectorError::Rejected { status, .. } => ConnectorError::Rejected { status, message },
            other => other,
        };
        Failure {
            error,
            text: text.to_ascii_lowercase(),
        }
    }

    /// `GET` a host route; `Ok(None)` on 404.
    async fn get_host(
        &self,
        url: Url,
        call: &ActionCall<'_>,
    ) -> Result<Option<Host>, ConnectorError> {
        let resp = self.send(self.request(Method::GET, &url), call).await?;
        if resp.status.as_u16() == 404 {
            return Ok(None);
        }
        if !resp.status.is_success() {
            return Err(self.failure(&Method::GET, &url, &resp).error);
        }
        Ok(Some(resp.json::<HostEnvelope>()?.host))
    }

    /// Resolve `device` (Fleet host id or serial) to a host, if there is one.
    async fn resolve(
        &self,
        device: &str,
        call: &ActionCall<'_>,
    ) -> Result<Option<Host>, ConnectorError> {
        if looks_like_host_id(device) {
            if let Some(h) = self.get_host(self.url(&["hosts", device])?, call).await? {
                return Ok(Some(h));
            }
        }
        let url = self.url(&["hosts", "identifier", device])?;
        Ok(self
            .get_host(url, call)
            .await?
            .filter(|h| h.matches(device)))
    }

    async fn find_host(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        let device = string_input(call.input, "device")?;
        Ok(match self.resolve(&device, &call).await? {
            Some(h) => h.lookup_output(),
            None => json!({"found": false}),
        })
    }

    async fn mdm_move(&self, call: ActionCall<'_>, op: Move) -> Result<Value, ConnectorError> {
        let device = string_input(call.input, "device")?;
        let Some(host) = self.resolve(&device, &call).await? else {
            return Ok(not_found());
        };
        let id = host.id();
        let output = |already: bool, pending: Option<&str>, pin: Option<String>| {
            let mut v = json!({
                "found": true,
                "target": id,
                "already": already,
                "device_status": host.device_status(),
                "pending_action": pending,
            });
            if let Some(pin) = pin {
                v["unlock_pin"] = json!(pin);
            }
            v
        };
        if op.already(&host) {
            return Ok(output(true, host.pending_action(), None));
        }
        let url = self.url(&["hosts", &id, op.verb()])?;
        let resp = self.send(self.request(Method::POST, &url), &call).await?;
        if resp.status.is_success() {
            // 204 (older servers, Windows/Linux unlock) or 200 with a body.
            let body: Value = if resp.body.is_empty() {
                Value::Null
            } else {
                resp.json().unwrap_or(Value::Null)
            };
            let pending = body
                .get("pending_action")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| (op == Move::Lock).then(|| "lock".to_string()));
            let pin = match op {
                Move::Unlock => body
                    .get("unlock_pin")
                    .and_then(Value::as_str)
                    .filter(|p| !p.is_empty())
                    .map(str::to_string),
                Move::Lock => None,
            };
            // The PIN is a declared secret output: the engine keeps it in the admins-only
            // column. It is not registered with the redactor, which would scrub every
            // six-digit run (ids, timestamps) from the audit trail.
            return Ok(output(false, pending.as_deref(), pin));
        }
        let status = resp.status.as_u16();
        let failure = self.failure(&Method::POST, &url, &resp);
        match status {
            // "Host is already locked." / "Host is already unlocked."
            409 => Ok(output(true, host.pending_action(), None)),
            // Pending answers: "Host has pending lock request…" is already for a lock;
            // a pending unlock is already for an unlock. Wipes and the opposite move fail.
            422 if failure
                .text
                .contains(&format!("pending {} request", op.verb()))
                || failure.text.contains(&format!("pending {}", op.verb())) =>
            {
                Ok(output(true, Some(op.verb()), None))
            }
            404 => Ok(not_found()),
            _ => Err(failure.error),
        }
    }

    async fn snapshot_software(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        let device = string_input(call.input, "device")?;
        let since = time_input(call.input, "since")?;
        let until = time_input(call.input, "until")?;
        if let (Some(s), Some(u)) = (since, until) {
            if u <= s {
                return Err(invalid("until", "must be later than `since`"));
            }
        }
        let progress = match call.resume.take::<SoftwareProgress>() {
            Some(p) if p.key == device => p,
            _ => {
                let Some(host) = self.resolve(&device, &call).await? else {
                    return Ok(json!({
                        "found": false, "target": null, "evidence_id": null, "sha256": null,
                        "bytes": 0, "records": 0, "pages": 0, "remote_access_tools": [],
                    }));
                };
                let id = host.id();
                let path = self.url(&["hosts", &id, "software"])?;
                let meta = EvidenceMeta {
                    connector_type: TYPE.name.to_string(),
                    instance: self.instance.clone(),
                    action: call.action.to_string(),
                    extension: "jsonl".to_string(),
                    media_type: "application/x-ndjson".to_string(),
                    source: json!({
                        "endpoint": format!("GET {}", path.path()),
                        "base_url": self.client.base_url().map(display_url),
                        "device": device,
                        "host_id": id,
                        "serial": host.hardware_serial,
                        "hostname": host.hostname,
                        "since": call.input.get("since"),
                        "until": call.input.get("until"),
                        "per_page": SOFTWARE_PAGE_SIZE,
                        "note": "Fleet's software inventory has no time filter: the host's current inventory",
                    }),
                };
                let writer = call.evidence.create(meta).await.map_err(evidence_err)?;
                SoftwareProgress {
                    key: device.clone(),
                    host_id: id,
                    writer,
                    page: 0,
                    pages: 0,
                    records: 0,
                    tools: BTreeSet::new(),
                }
            }
        };
        self.follow_pages(&call, progress).await
    }

    /// Fetch and store every page from `progress.page` on.
    async fn follow_pages(
        &self,
        call: &ActionCall<'_>,
        mut progress: SoftwareProgress,
    ) -> Result<Value, ConnectorError> {
        loop {
            let url = self.url(&["hosts", &progress.host_id, "software"])?;
            let spec = self
                .request(Method::GET, &url)
                .query("page", progress.page.to_string())
                .query("per_page", SOFTWARE_PAGE_SIZE.to_string());
            // Parked while the request is in flight: a transient failure, or the engine
            // abandoning this attempt at its timeout, leaves it for the next attempt.
            call.resume.put(progress);
            let outcome = self.send(spec, call).await;
            let Some(mut p) = call.resume.take::<SoftwareProgress>() else {
                return Err(ConnectorError::Other(
                    "fleet.snapshot_software: the snapshot's progress was lost".into(),
                ));
            };
            let resp = match outcome {
                Ok(r) if r.status.is_success() => r,
                Ok(r) => {
                    let error = self.failure(&Method::GET, &url, &r).error;
                    if error.is_transient() {
                        call.resume.put(p);
                    }
                    return Err(error);
                }
                Err(e) => {
                    if e.is_transient() {
                        call.resume.put(p);
                    }
                    return Err(e);
                }
            };
            let page: SoftwarePage = resp.json().map_err(|e| {
                ConnectorError::Other(format!("GET {}: page {}: {e}", url.path(), p.page))
            })?;
            let mut chunk = Vec::with_capacity(resp.body.len() + page.software.len());
            for item in &page.software {
                serde_json::to_writer(&mut chunk, item).map_err(|e| {
                    ConnectorError::Other(format!("cannot encode a software item: {e}"))
                })?;
                chunk.push(b'\n');
                if let Some(tool) = item
                    .get("name")
                    .and_then(Value::as_str)
                    .and_then(remote_access_tool)
                {
                    p.tools.insert(tool);
                }
            }
            if !chunk.is_empty() {
                p.writer.write(&chunk).await.map_err(evidence_err)?;
            }
            let n = page.software.len() as u64;
            p.writer.add_records(n);
            p.records += n;
            p.pages += 1;
            p.page += 1;
            let more = page.meta.is_some_and(|m| m.has_next_results);
            // An empty page that claims more would loop forever: stop.
            if !more || n == 0 {
                let record = p.writer.finish().await.map_err(evidence_err)?;
                return Ok(json!({
                    "found": true,
                    "target": p.host_id,
                    "evidence_id": record.evidence_id,
                    "sha256": record.sha256,
                    "bytes": record.bytes,
                    "records": record.records,
                    "pages": p.pages,
                    "path": record.path,
                    "remote_access_tools": p.tools.iter().collect::<Vec<_>>(),
                }));
            }
            progress = p;
        }
    }
}

#[async_trait]
impl Connector for FleetConnector {
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
            "lock_host" => self.mdm_move(call, Move::Lock).await,
            "unlock_host" => self.mdm_move(call, Move::Unlock).await,
            "snapshot_software" => self.snapshot_software(call).await,
            other => Err(ConnectorError::Other(format!(
                "connector type `fleet` has no action `{other}`"
            ))),
        }
    }

    /// The host's `{found, id, serial, device_status, pending_action, already}` (or
    /// `{found: false}`) before a lock or unlock.
    async fn prior_state(&self, call: ActionCall<'_>) -> Result<Option<Value>, ConnectorError> {
        let op = match call.action {
            "lock_host" => Move::Lock,
            "unlock_host" => Move::Unlock,
            _ => return Ok(None),
        };
        let device = string_input(call.input, "device")?;
        Ok(Some(match self.resolve(&device, &call).await? {
            Some(h) => json!({
                "found": true,
                "id": h.id(),
                "serial": h.hardware_serial,
                "device_status": h.device_status(),
                "pending_action": h.pending_action(),
                "already": op.already(&h),
            }),
            None => json!({"found": false}),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(v: Value) -> Host {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn host_id_shape() {
        assert!(looks_like_host_id("42"));
        assert!(!looks_like_host_id("C02DEMO0001"));
        assert!(!looks_like_host_id(""));
        assert!(!looks_like_host_id("12345678901234567890"));
    }

    #[test]
    fn remote_access_tools_are_recognised() {
        assert_eq!(remote_access_tool("AnyDesk.app"), Some("AnyDesk"));
        assert_eq!(
            remote_access_tool("TeamViewer QuickSupport"),
            Some("TeamViewer")
        );
        assert_eq!(
            remote_access_tool("Chrome Remote Desktop Host"),
            Some("Chrome Remote Desktop")
        );
        assert_eq!(remote_access_tool("rustdesk"), Some("RustDesk"));
        assert_eq!(remote_access_tool("Google Chrome"), None);
        assert_eq!(remote_access_tool("Slack"), None);
    }

    #[test]
    fn already_states() {
        let locked =
            host(json!({"id": 1, "mdm": {"device_status": "locked", "pending_action": ""}}));
        assert!(Move::Lock.already(&locked));
        assert!(!Move::Unlock.already(&locked));
        let pending =
            host(json!({"id": 1, "mdm": {"device_status": "unlocked", "pending_action": "lock"}}));
        assert!(Move::Lock.already(&pending));
        assert!(!Move::Unlock.already(&pending));
        let unlocking =
            host(json!({"id": 1, "mdm": {"device_status": "locked", "pending_action": "unlock"}}));
        assert!(!Move::Lock.already(&unlocking));
        assert!(Move::Unlock.already(&unlocking));
        let bare = host(json!({"id": 1}));
        assert!(!Move::Lock.already(&bare));
        assert!(!Move::Unlock.already(&bare));
    }

    #[test]
    fn hosts_match_only_exactly() {
        let h = host(
            json!({"id": 7, "hardware_serial": "C02DEMO0001", "hostname": "mac-js", "uuid": "U-1"}),
        );
        assert!(h.matches("c02demo0001"));
        assert!(h.matches("mac-js"));
        assert!(!h.matches("C02DEMO000"));
        let out = h.lookup_output();
        assert_eq!(out["id"], "7");
        assert_eq!(out["name"], "mac-js");
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
            TYPE.action("lock_host").and_then(|a| a.undo),
            Some("unlock_host")
        );
        assert_eq!(
            TYPE.action("unlock_host").map(|a| a.secret_outputs),
            Some(&["unlock_pin"][..])
        );
    }
}
