//! The `jamf` connector: Jamf Pro API with an API client (client credentials).
//!
//! Settings (`connectors.<name>` with `type: jamf`):
//! - `base_url` (required): the instance root, e.g. `https://acme.jamfcloud.com`; every call
//!   adds `/api/…` (so the token URL, `/api/oauth/token`, moves with it for tests and the
//!   sandbox).
//! - `client_id` (required) and `client_secret` (required, a secret `{env: …}`/`{file: …}`):
//!   an API client. The token comes from `POST /api/oauth/token` (form `grant_type=
//!   client_credentials`, `client_id`, `client_secret`; no `scope`), is kept in memory only,
//!   and is refreshed once when Jamf answers 401.
//!
//! Actions, and the vendor calls each makes:
//! - `find_computer`: resolves `device` → `{found, id, serial, name, owner, os, last_seen,
//!   management_id, udid}`. Resolving sends
//!   `GET /api/v4/computers-inventory?section=GENERAL&section=HARDWARE&section=USER_AND_LOCATION&section=OPERATING_SYSTEM&page=0&page-size=100&filter=<rsql>`
//!   with `hardware.serialNumber=="<serial>"` (or `id=="<id>"` when `device` is all digits,
//!   the form of Jamf computer ids). The serial is re-checked on our side. On a 404 (an
//!   older server without that route) it falls back to `/api/v3/…`, then `/api/v1/…`, and
//!   remembers the version that answered.
//! - `lock_computer`: resolves the computer, then reads its pending lock commands
//!   (`GET /api/v2/mdm/commands?filter=clientManagementId==<managementId>;command==DEVICE_LOCK`);
//!   a lock that is `PENDING` or `NOT_NOW` means `already: true` and nothing is sent (each
//!   POST would queue another command). Otherwise `POST /api/v2/mdm/commands` with
//!   `{"clientData":[{"managementId":…}],"commandData":{"commandType":"DEVICE_LOCK","pin":…}}`
//!   (plus `message`/`phoneNumber` when given). The 6-digit PIN is generated in
//!   `prior_state` and returned inside its `secret` object, so every attempt (and a resumed
//!   run) sends the same PIN; it is a secret output. No undo: Jamf has no remote unlock.
//! - `snapshot_inventory`: the computer's full inventory record (sections listed in
//!   [`SNAPSHOT_SECTIONS`]) from the same inventory route, filtered by its Jamf id, every page
//!   (`page`, `page-size`), one JSON line per record. `since`/`until` are checked but Jamf's
//!   inventory has no time filter. A page that fails transiently leaves the open artifact and
//!   its page number in the call's resume slot, and the next attempt continues from there.
//!
//! Errors name Jamf's error `code`, `field` and `description` from its
//! `{"httpStatus", "errors": [...]}` body. Jamf has no documented rate limit, but a 429 (the
//! Platform API gateway) is `RateLimited` with its `Retry-After`.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::DateTime;
use rand::Rng;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use url::Url;

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::evidence::{EvidenceError, EvidenceMeta};
use crate::http_client::{
    retry_after, ClientBuildError, HttpClient, HttpClientConfig, HttpResponse, RequestSpec,
};
use crate::oauth::{ClientCredentials, ClientCredentialsConfig};
use crate::registry::{ConfigError, Settings};
use crate::secret::{Redactor, SecretValue};
use crate::{ActionCall, Connector, ConnectorError, EvidenceWriter, RequestLog};

/// Bound on one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Records per inventory page when snapshotting (Jamf's default is 100).
pub const SNAPSHOT_PAGE_SIZE: u32 = 200;
/// Records per page when resolving a device: one is expected, more means ambiguity.
const FIND_PAGE_SIZE: u32 = 100;
/// Inventory sections read by `find_computer` (`section` defaults to GENERAL alone).
pub const FIND_SECTIONS: &[&str] = &[
    "GENERAL",
    "HARDWARE",
    "USER_AND_LOCATION",
    "OPERATING_SYSTEM",
];
/// Inventory sections saved by `snapshot_inventory`.
pub const SNAPSHOT_SECTIONS: &[&str] = &[
    "GENERAL",
    "HARDWARE",
    "USER_AND_LOCATION",
    "OPERATING_SYSTEM",
    "SECURITY",
    "DISK_ENCRYPTION",
    "APPLICATIONS",
    "CONFIGURATION_PROFILES",
    "LOCAL_USER_ACCOUNTS",
    "EXTENSION_ATTRIBUTES",
    "GROUP_MEMBERSHIPS",
];
/// Inventory route versions, newest first (v1/v2 are deprecated since 2025-06-30).
const INVENTORY_VERSIONS: &[u8] = &[4, 3, 1];
/// Command states that mean a lock is still on its way to the Mac.
const PENDING_STATES: &[&str] = &["PENDING", "NOT_NOW"];

const DEVICE_INPUT: FieldDecl = FieldDecl {
    name: "device",
    ty: "string",
    required: true,
    description: "the computer's serial number, or its Jamf Pro computer id (digits)",
};

/// Jamf advises no more than five concurrent connections.
pub const MAX_CONNECTIONS: usize = 5;

pub const TYPE: TypeDecl = TypeDecl {
    name: "jamf",
    description: "Jamf Pro API (API client credentials)",
    needs_instance: true,
    actions: &[
        ActionDecl {
            name: "find_computer",
            description: "Look a computer up by serial number or Jamf id",
            inputs: &[DEVICE_INPUT],
            outputs: &[
                FieldDecl {
                    name: "found",
                    ty: "boolean",
                    required: true,
                    description: "false when Jamf has no such computer",
                },
                FieldDecl {
                    name: "id",
                    ty: "string",
                    required: false,
                    description: "Jamf computer id",
                },
                FieldDecl {
                    name: "serial",
                    ty: "string",
                    required: false,
                    description: "hardware.serialNumber",
                },
                FieldDecl {
                    name: "name",
                    ty: "string",
                    required: false,
                    description: "general.name",
                },
                FieldDecl {
                    name: "owner",
                    ty: "string",
                    required: false,
                    description: "userAndLocation email, else username",
                },
                FieldDecl {
                    name: "os",
                    ty: "string",
                    required: false,
                    description: "operating system name and version",
                },
                FieldDecl {
                    name: "last_seen",
                    ty: "string",
                    required: false,
                    description: "general.lastContactTime",
                },
                FieldDecl {
                    name: "management_id",
                    ty: "string",
                    required: false,
                    description: "general.managementId (what MDM commands take)",
                },
                FieldDecl {
                    name: "udid",
                    ty: "string",
                    required: false,
                    description: "the computer's UDID",
                },
            ],
            effect: Effect::Lookup,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "lock_computer",
            description: "Send a DEVICE_LOCK MDM command with a generated 6-digit PIN",
            inputs: &[
                DEVICE_INPUT,
                FieldDecl {
                    name: "message",
                    ty: "string",
                    required: false,
                    description: "shown on the locked screen",
                },
                FieldDecl {
                    name: "phone_number",
                    ty: "string",
                    required: false,
                    description: "shown on the locked screen",
                },
            ],
            outputs: &[
                FieldDecl {
                    name: "found",
                    ty: "boolean",
                    required: true,
                    description: "false when Jamf has no such computer (nothing was sent)",
                },
                FieldDecl {
                    name: "target",
                    ty: "string",
                    required: true,
                    description: "the Jamf computer id (null when not found)",
                },
                FieldDecl {
                    name: "already",
                    ty: "boolean",
                    required: true,
                    description: "a DEVICE_LOCK was already pending; nothing was sent",
                },
                FieldDecl {
                    name: "management_id",
                    ty: "string",
                    required: false,
                    description: "the managementId the command went to",
                },
                FieldDecl {
                    name: "command_id",
                    ty: "string",
                    required: false,
                    description: "the queued command's id",
                },
                FieldDecl {
                    name: "pin",
                    ty: "string",
                    required: false,
                    description: "the 6-digit unlock PIN (secret)",
                },
            ],
            effect: Effect::Mutation,
            undo: None,
            secret_outputs: &["pin"],
        },
        ActionDecl {
            name: "snapshot_inventory",
            description: "Save the computer's inventory record as JSON Lines evidence",
            inputs: &[
                DEVICE_INPUT,
                FieldDecl {
                    name: "since",
                    ty: "string",
                    required: false,
                    description: "RFC 3339 (checked; Jamf inventory has no time filter)",
                },
                FieldDecl {
                    name: "until",
                    ty: "string",
                    required: false,
                    description: "RFC 3339 (checked; Jamf inventory has no time filter)",
                },
            ],
            outputs: &[
                FieldDecl {
                    name: "found",
                    ty: "boolean",
                    required: true,
                    description: "false when Jamf has no such computer",
                },
                FieldDecl {
                    name: "target",
                    ty: "string",
                    required: false,
                    description: "the Jamf computer id",
                },
                FieldDecl {
                    name: "evidence_id",
                    ty: "string",
                    required: false,
                    description: "the artifact's id",
                },
                FieldDecl {
                    name: "sha256",
                    ty: "string",
                    required: false,
                    description: "hex SHA-256 of the artifact",
                },
                FieldDecl {
                    name: "bytes",
                    ty: "integer",
                    required: false,
                    description: "artifact size",
                },
                FieldDecl {
                    name: "records",
                    ty: "integer",
                    required: false,
                    description: "inventory records written",
                },
                FieldDecl {
                    name: "pages",
                    ty: "integer",
                    required: false,
                    description: "pages fetched",
                },
            ],
            effect: Effect::Snapshot,
            undo: None,
            secret_outputs: &[],
        },
    ],
};

/// A configured `jamf` instance.
pub struct JamfConnector {
    instance: String,
    base_url: Url,
    client: HttpClient,
    credentials: ClientCredentials,
    /// Index into [`INVENTORY_VERSIONS`] of the route this server answers.
    inventory_version: AtomicU8,
}

impl fmt::Debug for JamfConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JamfConnector")
            .field("instance", &self.instance)
            .field("base_url", &crate::http_client::display_url(&self.base_url))
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// What the connector needs besides the redactor.
#[derive(Debug, Clone)]
pub struct JamfConfig {
    pub instance: String,
    pub base_url: Url,
    pub client_id: String,
    pub client_secret: SecretValue,
    pub timeout: Duration,
}

/// One computer, as resolution found it.
#[derive(Debug, Clone)]
struct Computer {
    id: String,
    serial: Option<String>,
    name: Option<String>,
    owner: Option<String>,
    os: Option<String>,
    last_seen: Option<String>,
    management_id: Option<String>,
    udid: Option<String>,
}

impl Computer {
    fn from_record(r: &Value) -> Option<Computer> {
        let id = match r.get("id")? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        let s = |ptr: &str| {
            r.pointer(ptr)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let os = match (s("/operatingSystem/name"), s("/operatingSystem/version")) {
            (Some(n), Some(v)) => Some(format!("{n} {v}")),
            (n, v) => n.or(v),
        };
        Some(Computer {
            id,
            serial: s("/hardware/serialNumber"),
            name: s("/general/name"),
            owner: s("/userAndLocation/email").or_else(|| s("/userAndLocation/username")),
            os,
            last_seen: s("/general/lastContactTime"),
            management_id: s("/general/managementId"),
            udid: s("/udid"),
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "found": true,
            "id": self.id,
            "serial": self.serial,
            "name": self.name,
            "owner": self.owner,
            "os": self.os,
            "last_seen": self.last_seen,
            "management_id": self.management_id,
            "udid": self.udid,
        })
    }
}

#[derive(Deserialize)]
struct InventoryPage {
    #[serde(rename = "totalCount")]
    total_count: Option<u64>,
    #[serde(default)]
    results: Vec<Value>,
}

#[derive(Deserialize)]
struct JamfErrorBody {
    #[serde(default)]
    errors: Vec<JamfErrorDetail>,
}

#[derive(Deserialize)]
struct JamfErrorDetail {
    code: Option<String>,
    field: Option<String>,
    description: Option<String>,
}

/// A paged snapshot interrupted by a transient error, kept for the next attempt.
struct SnapshotProgress {
    key: String,
    writer: Box<dyn EvidenceWriter>,
    filter: String,
    target: String,
    /// The next page to fetch (0-based, as Jamf counts).
    page: u64,
    pages: u64,
    records: u64,
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

fn not_found() -> Value {
    json!({"found": false, "target": null, "already": false})
}

/// The `device` input: a serial or a Jamf id. Only characters that serials and ids use are
/// accepted, so the value can never break out of the RSQL string it is placed in.
fn device_input(input: &Value) -> Result<String, ConnectorError> {
    let obj = input
        .as_object()
        .ok_or_else(|| invalid("with", "the inputs must be a map"))?;
    match obj.get("device") {
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                Err(invalid("device", "must not be empty"))
            } else if !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                Err(invalid(
                    "device",
                    format!(
                        "`{}` is not a serial number or Jamf computer id (letters, digits, `-`, `_`, `.` only)",
                        s.chars().filter(|c| !c.is_control()).take(64).collect::<String>()
                    ),
                ))
            } else {
                Ok(s.to_string())
            }
        }
        Some(_) => Err(invalid(
            "device",
            "must be a string (a serial number or Jamf computer id)",
        )),
        None => Err(invalid("device", "is required")),
    }
}

fn optional_string(input: &Value, field: &str) -> Result<Option<String>, ConnectorError> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

fn time_input(input: &Value, field: &str) -> Result<Option<String>, ConnectorError> {
    match optional_string(input, field)? {
        None => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(s.trim())
            .map(|_| Some(s.trim().to_string()))
            .map_err(|e| {
                invalid(
                    field,
                    format!("`{s}` is not an RFC 3339 time such as 2024-07-01T00:00:00Z ({e})"),
                )
            }),
    }
}

/// `base/<segments…>`, each segment percent-encoded as a path segment.
fn join(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

fn is_jamf_id(device: &str) -> bool {
    !device.is_empty() && device.len() <= 18 && device.chars().all(|c| c.is_ascii_digit())
}

/// A fresh 6-digit lock PIN.
pub fn generate_pin() -> String {
    format!("{:06}", rand::thread_rng().gen_range(0..1_000_000u32))
}

fn is_pin(s: &str) -> bool {
    s.len() == 6 && s.chars().all(|c| c.is_ascii_digit())
}

/// The registry's constructor: one `jamf` instance from its settings map.
pub fn build(
    name: &str,
    map: &Map<String, Value>,
    base_dir: &std::path::Path,
    redactor: &Redactor,
) -> Result<std::sync::Arc<dyn Connector>, Vec<ConfigError>> {
    let settings = Settings::new(name, map, JamfConnector::SETTINGS, base_dir, redactor);
    Ok(std::sync::Arc::new(JamfConnector::from_settings(settings)?))
}

impl JamfConnector {
    /// The settings this type takes.
    pub const SETTINGS: &'static [&'static str] = &["base_url", "client_id", "client_secret"];

    /// Build from an instance's settings (pure apart from reading the secret).
    pub fn from_settings(mut s: Settings<'_>) -> Result<Self, Vec<ConfigError>> {
        let instance = s.instance().to_string();
        let base_url = s.required_url("base_url");
        let client_id = s.required_string("client_id");
        if client_id.as_deref().is_some_and(|c| c.trim().is_empty()) {
            s.error(Some("client_id"), "must not be empty");
        }
        let client_secret = s.required_secret("client_secret");
        let redactor = s.redactor().clone();
        s.finish()?;
        let (Some(base_url), Some(client_id), Some(client_secret)) =
            (base_url, client_id, client_secret)
        else {
            return Err(vec![ConfigError::new(
                &instance,
                None,
                "incomplete settings",
            )]);
        };
        let config = JamfConfig {
            instance: instance.clone(),
            base_url,
            client_id,
            client_secret,
            timeout: REQUEST_TIMEOUT,
        };
        JamfConnector::new(config, redactor).map_err(|e| {
            let setting = match &e {
                ClientBuildError::Url(_) => Some("base_url"),
                _ => None,
            };
            vec![ConfigError::new(&instance, setting, e.to_string())]
        })
    }

    /// Build from a complete configuration. No network I/O.
    pub fn new(config: JamfConfig, redactor: Redactor) -> Result<Self, ClientBuildError> {
        redactor.register(config.client_secret.expose());
        let mut http = HttpClientConfig::new(&config.instance);
        http.base_url = Some(config.base_url.clone());
        http.timeout = config.timeout;
        // Jamf advises at most five concurrent connections per API client.
        http.max_in_flight = Some(MAX_CONNECTIONS);
        let client = HttpClient::new(http, redactor)?;
        let credentials = ClientCredentials::new(ClientCredentialsConfig {
            token_url: join(&config.base_url, &["api", "oauth", "token"]),
            client_id: config.client_id,
            client_secret: config.client_secret,
            // Jamf documents no scope: privileges come from the API client's roles.
            scope: String::new(),
        });
        Ok(JamfConnector {
            instance: config.instance,
            base_url: config.base_url,
            client,
            credentials,
            inventory_version: AtomicU8::new(0),
        })
    }

    /// `{base_url}/<segments…>`, each segment percent-encoded as a path segment.
    fn api_url(&self, segments: &[&str]) -> Url {
        join(&self.base_url, segments)
    }

    async fn send(
        &self,
        log: &RequestLog,
        spec: RequestSpec,
    ) -> Result<HttpResponse, ConnectorError> {
        self.credentials.send(&self.client, log, spec).await
    }

    /// A Jamf error answer as a typed error naming Jamf's code, field and description.
    fn jamf_error(&self, method: &Method, url: &Url, resp: &HttpResponse) -> ConnectorError {
        let status = resp.status.as_u16();
        let redactor = self.client.redactor();
        let parsed = serde_json::from_slice::<JamfErrorBody>(&resp.body)
            .ok()
            .filter(|b| !b.errors.is_empty());
        let Some(body) = parsed else {
            // Not Jamf's error shape: the shared mapping quotes a redacted excerpt.
            return match self.client.error_for_status(method, url, resp) {
                Err(e) => e,
                Ok(()) => ConnectorError::Other(format!(
                    "{method} {} → {}: unexpected answer",
                    redactor.redact_str(url.path()),
                    resp.status
                )),
            };
        };
        let details: Vec<String> = body
            .errors
            .iter()
            .take(3)
            .map(|e| {
                let mut d = e.code.clone().unwrap_or_else(|| "no error code".into());
                if let Some(f) = e.field.as_deref().filter(|f| !f.is_empty()) {
                    d.push_str(&format!(" (field `{f}`)"));
                }
                if let Some(desc) = e.description.as_deref().filter(|d| !d.is_empty()) {
                    let desc: String = desc.chars().take(240).collect();
                    d.push_str(&format!(": {desc}"));
                }
                redactor.redact_str(&d)
            })
            .collect();
        let message = format!(
            "Jamf {method} {} → {}: {}",
            redactor.redact_str(url.path()),
            resp.status,
            details.join("; ")
        );
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

    /// One page of `computers-inventory`, trying older route versions on 404.
    async fn inventory_page(
        &self,
        log: &RequestLog,
        sections: &[&str],
        filter: &str,
        page: u64,
        page_size: u32,
    ) -> Result<InventoryPage, ConnectorError> {
        let mut index = usize::from(self.inventory_version.load(Ordering::Relaxed));
        loop {
            let version = INVENTORY_VERSIONS
                .get(index)
                .copied()
                .unwrap_or(INVENTORY_VERSIONS[INVENTORY_VERSIONS.len() - 1]);
            let url = self.api_url(&["api", &format!("v{version}"), "computers-inventory"]);
            let mut spec = RequestSpec::get(url.as_str()).header("accept", "application/json");
            for s in sections {
                spec = spec.query("section", *s);
            }
            spec = spec
                .query("page", page.to_string())
                .query("page-size", page_size.to_string())
                .query("filter", filter);
            let resp = self.send(log, spec).await?;
            if resp.status.as_u16() == 404 && index + 1 < INVENTORY_VERSIONS.len() {
                index += 1;
                continue;
            }
            if !resp.status.is_success() {
                return Err(self.jamf_error(&Method::GET, &url, &resp));
            }
            if let Ok(i) = u8::try_from(index) {
                self.inventory_version.store(i, Ordering::Relaxed);
            }
            return resp.json::<InventoryPage>();
        }
    }

    fn device_filter(device: &str) -> String {
        if is_jamf_id(device) {
            format!("id==\"{device}\"")
        } else {
            format!("hardware.serialNumber==\"{device}\"")
        }
    }

    /// Resolve `device` to one computer; None when Jamf has none.
    async fn resolve(
        &self,
        log: &RequestLog,
        device: &str,
    ) -> Result<Option<Computer>, ConnectorError> {
        let filter = Self::device_filter(device);
        let page = self
            .inventory_page(log, FIND_SECTIONS, &filter, 0, FIND_PAGE_SIZE)
            .await?;
        // Re-check on our side: a server that ignored the filter returns the whole fleet.
        let matches: Vec<Computer> = page
            .results
            .iter()
            .filter_map(Computer::from_record)
            .filter(|c| {
                if is_jamf_id(device) {
                    c.id == device
                } else {
                    c.serial
                        .as_deref()
                        .is_some_and(|s| s.eq_ignore_ascii_case(device))
                }
            })
            .collect();
        match matches.len() {
            0 => Ok(None),
            1 => Ok(matches.into_iter().next()),
            n => Err(ConnectorError::Other(format!(
                "Jamf has {n} computers matching device `{device}`; refusing to pick one"
            ))),
        }
    }

    /// Is a DEVICE_LOCK still pending for this management id?
    async fn lock_pending(
        &self,
        log: &RequestLog,
        management_id: &str,
    ) -> Result<bool, ConnectorError> {
        let url = self.api_url(&["api", "v2", "mdm", "commands"]);
        let spec = RequestSpec::get(url.as_str())
            .header("accept", "application/json")
            .query(
                "filter",
                format!("clientManagementId=={management_id};command==DEVICE_LOCK"),
            );
        let resp = self.send(log, spec).await?;
        if !resp.status.is_success() {
            return Err(self.jamf_error(&Method::GET, &url, &resp));
        }
        let body: Value = resp.json()?;
        // The route answers a list; tolerate a `{results: [...]}` page too.
        let items = match &body {
            Value::Array(a) => a.as_slice(),
            Value::Object(o) => o
                .get("results")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]),
            _ => &[],
        };
        Ok(items.iter().any(|c| {
            let kind_ok = c
                .get("commandType")
                .and_then(Value::as_str)
                .is_none_or(|t| t == "DEVICE_LOCK");
            let state = c.get("commandState").and_then(Value::as_str).unwrap_or("");
            kind_ok && PENDING_STATES.contains(&state)
        }))
    }

    async fn find_computer(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let device = device_input(call.input)?;
        Ok(match self.resolve(call.requests, &device).await? {
            Some(c) => c.to_json(),
            None => json!({"found": false}),
        })
    }

    async fn lock_computer(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let device = device_input(call.input)?;
        let message = optional_string(call.input, "message")?;
        let phone = optional_string(call.input, "phone_number")?;
        let prior_pin = call
            .prior
            .and_then(|p| p.pointer("/secret/pin"))
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(p) = &prior_pin {
            if !is_pin(p) {
                return Err(ConnectorError::Other(
                    "the stored lock PIN from prior state is not 6 digits".into(),
                ));
            }
        }
        let Some(c) = self.resolve(call.requests, &device).await? else {
            return Ok(not_found());
        };
        let management_id = c.management_id.clone().ok_or_else(|| {
            ConnectorError::Other(format!(
                "Jamf computer {} has no general.managementId (is it enrolled in MDM?)",
                c.id
            ))
        })?;
        if self.lock_pending(call.requests, &management_id).await? {
            let mut out = json!({
                "found": true, "target": c.id, "already": true, "management_id": management_id,
            });
            // A lock that was not pending before the run is ours (an earlier attempt whose
            // answer was lost): its PIN is the stored one.
            let ours = call
                .prior
                .and_then(|p| p.get("already"))
                .and_then(Value::as_bool)
                == Some(false);
            if let (true, Some(pin)) = (ours, prior_pin) {
                out["pin"] = json!(pin);
            }
            return Ok(out);
        }
        let pin = prior_pin.unwrap_or_else(generate_pin);
        let mut command = json!({"commandType": "DEVICE_LOCK", "pin": pin});
        if let Some(m) = message {
            command["message"] = json!(m);
        }
        if let Some(p) = phone {
            command["phoneNumber"] = json!(p);
        }
        let url = self.api_url(&["api", "v2", "mdm", "commands"]);
        let spec = RequestSpec::post(url.as_str())
            .header("accept", "application/json")
            .json(json!({
                "clientData": [{"managementId": management_id}],
                "commandData": command,
            }));
        let resp = self.send(call.requests, spec).await?;
        if !resp.status.is_success() {
            return Err(self.jamf_error(&Method::POST, &url, &resp));
        }
        let command_id = resp.json::<Value>().ok().and_then(|v| {
            let first = v.as_array().and_then(|a| a.first()).cloned().unwrap_or(v);
            first.get("id").and_then(|i| match i {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        });
        Ok(json!({
            "found": true,
            "target": c.id,
            "already": false,
            "management_id": management_id,
            "command_id": command_id,
            "pin": pin,
        }))
    }

    async fn snapshot(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let device = device_input(call.input)?;
        let since = time_input(call.input, "since")?;
        let until = time_input(call.input, "until")?;
        let key = format!(
            "{}\n{device}\n{}\n{}",
            call.action,
            since.as_deref().unwrap_or(""),
            until.as_deref().unwrap_or("")
        );
        let progress = match call.resume.take::<SnapshotProgress>() {
            Some(p) if p.key == key => p,
            _ => {
                let Some(c) = self.resolve(call.requests, &device).await? else {
                    return Ok(json!({"found": false, "target": null}));
                };
                let filter = format!("id==\"{}\"", c.id);
                let version = INVENTORY_VERSIONS
                    .get(usize::from(self.inventory_version.load(Ordering::Relaxed)))
                    .copied()
                    .unwrap_or(4);
                let meta = EvidenceMeta {
                    connector_type: TYPE.name.to_string(),
                    instance: self.instance.clone(),
                    action: call.action.to_string(),
                    extension: "jsonl".to_string(),
                    media_type: "application/x-ndjson".to_string(),
                    source: json!({
                        "device": device,
                        "computer_id": c.id,
                        "serial": c.serial,
                        "since": since,
                        "until": until,
                        "endpoint": format!("/api/v{version}/computers-inventory"),
                        "filter": filter,
                        "sections": SNAPSHOT_SECTIONS,
                    }),
                };
                let writer = call.evidence.create(meta).await.map_err(evidence_err)?;
                SnapshotProgress {
                    key,
                    writer,
                    filter,
                    target: c.id,
                    page: 0,
                    pages: 0,
                    records: 0,
                }
            }
        };
        self.page_through(call, progress).await
    }

    /// Fetch pages from `p.page` to the end. A transient failure leaves the progress in the
    /// resume slot; any other failure drops the artifact unfinished.
    async fn page_through(
        &self,
        call: &ActionCall<'_>,
        mut p: SnapshotProgress,
    ) -> Result<Value, ConnectorError> {
        loop {
            let page = match self
                .inventory_page(
                    call.requests,
                    SNAPSHOT_SECTIONS,
                    &p.filter,
                    p.page,
                    SNAPSHOT_PAGE_SIZE,
                )
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    if e.is_transient() {
                        call.resume.put(p);
                    }
                    return Err(e);
                }
            };
            let n = page.results.len() as u64;
            let mut buf = Vec::new();
            for record in &page.results {
                serde_json::to_writer(&mut buf, record)
                    .map_err(|e| ConnectorError::Other(format!("cannot encode a record: {e}")))?;
                buf.push(b'\n');
            }
            p.writer.write(&buf).await.map_err(evidence_err)?;
            p.writer.add_records(n);
            p.records += n;
            p.pages += 1;
            p.page += 1;
            // The last page is short (or empty), or the total says we have everything.
            let done = n < u64::from(SNAPSHOT_PAGE_SIZE)
                || page.total_count.is_some_and(|t| p.records >= t);
            if done {
                break;
            }
        }
        let record = p.writer.finish().await.map_err(evidence_err)?;
        Ok(json!({
            "found": true,
            "target": p.target,
            "evidence_id": record.evidence_id,
            "sha256": record.sha256,
            "bytes": record.bytes,
            "records": record.records,
            "pages": p.pages,
            "path": record.path,
        }))
    }
}

#[async_trait]
impl Connector for JamfConnector {
    fn type_name(&self) -> &'static str {
        TYPE.name
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        match call.action {
            "find_computer" => self.find_computer(&call).await,
            "lock_computer" => self.lock_computer(&call).await,
            "snapshot_inventory" => self.snapshot(&call).await,
            other => Err(ConnectorError::Other(format!(
                "connector type `jamf` has no action `{other}`"
            ))),
        }
    }

    async fn prior_state(&self, call: ActionCall<'_>) -> Result<Option<Value>, ConnectorError> {
        if call.action != "lock_computer" {
            return Ok(None);
        }
        let device = device_input(call.input)?;
        let Some(c) = self.resolve(call.requests, &device).await? else {
            return Ok(Some(json!({"found": false})));
        };
        let pending = match &c.management_id {
            Some(m) => self.lock_pending(call.requests, m).await?,
            None => false,
        };
        Ok(Some(json!({
            "found": true,
            "id": c.id,
            "serial": c.serial,
            "management_id": c.management_id,
            "lock_pending": pending,
            "already": pending,
            "secret": {"pin": generate_pin()},
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_six_digits() {
        for _ in 0..200 {
            let p = generate_pin();
            assert!(is_pin(&p), "{p}");
        }
        assert!(!is_pin("12345"));
        assert!(!is_pin("12345a"));
    }

    #[test]
    fn device_input_refuses_rsql_breakouts() {
        assert_eq!(
            device_input(&json!({"device": " C02DEMO0001 "})).unwrap(),
            "C02DEMO0001"
        );
        for bad in [
            json!({"device": "C02\" or id==\"1"}),
            json!({"device": ""}),
            json!({"device": 5}),
            json!({}),
        ] {
            match device_input(&bad) {
                Err(ConnectorError::InvalidInput { field, .. }) => assert_eq!(field, "device"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn filters_by_id_for_digits_else_serial() {
        assert_eq!(JamfConnector::device_filter("42"), "id==\"42\"");
        assert_eq!(
            JamfConnector::device_filter("C02X1"),
            "hardware.serialNumber==\"C02X1\""
        );
    }

    #[test]
    fn computer_facts_come_from_the_sections() {
        let c = Computer::from_record(&json!({
            "id": "7", "udid": "U",
            "general": {"name": "mac", "managementId": "M", "lastContactTime": "2024-01-01T00:00:00Z"},
            "hardware": {"serialNumber": "S1"},
            "userAndLocation": {"username": "js", "email": "j@x"},
            "operatingSystem": {"name": "macOS", "version": "14.5"}
        }))
        .unwrap();
        assert_eq!(c.to_json()["owner"], "j@x");
        assert_eq!(c.to_json()["os"], "macOS 14.5");
        assert_eq!(c.management_id.as_deref(), Some("M"));
        assert!(Computer::from_record(&json!({"general": {}})).is_none());
    }

    #[test]
    fn bad_times_name_the_field() {
        match time_input(&json!({"since": "yesterday"}), "since") {
            Err(ConnectorError::InvalidInput { field, .. }) => assert_eq!(field, "since"),
            other => panic!("{other:?}"),
        }
    }
}
