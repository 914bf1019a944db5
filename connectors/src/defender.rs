//! The `defender` connector: Microsoft Defender for Endpoint machine actions.
//!
//! ## Settings
//! - `tenant_id`, `client_id`, `client_secret` (`{env: …}` or `{file: …}`): an app
//!   registration with the WindowsDefenderATP application permissions `Machine.Read.All`,
//!   `Machine.Isolate` and `Machine.CollectForensics`.
//! - `base_url`: default `https://api.security.microsoft.com` (regional hosts and tests
//!   override it); calls add `/api/…`.
//! - `token_url`: default `https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token`,
//!   `{tenant_id}` replaced. The scope is `https://api.securitycenter.microsoft.com/.default`
//!   (the legacy resource is used even for `api.security.microsoft.com`). The token is
//!   cached in memory and refreshed once on a 401.
//!
//! ## Actions and the calls they make
//! Every action takes `device`: the machine id (40 hex digits) or the computer's DNS name
//! (Defender has no serial index). An id is read with `GET /api/machines/{id}`; a name with
//! `GET /api/machines?$filter=computerDnsName eq '<name>'`, re-checked here (the most
//! recently seen match wins). A 404 ("no recent machines") is `found: false`.
//! - `find_machine`: the lookup → `{found, id, serial (null), name, owner (null), os,
//!   last_seen, health_status, risk_score, exposure_level, aad_device_id, isolated}`.
//! - `isolate_machine` (input `isolation_type`: `Full` default, or `Selective`): reads
//!   `GET /api/machineactions?$filter=machineId eq '<id>'` first and never sends a second
//!   isolate while one is pending or the machine is isolated (Defender's answer to a repeat
//!   is inconsistent, and a repeated isolate has been seen to run after a later release).
//!   Otherwise `POST /api/machines/{id}/isolate` with `{"Comment": "Cordon run <run> step
//!   <step>", "IsolationType": "Full"}` (201 + MachineAction). Undo: `release_machine`.
//! - `release_machine`: the same read; unless a release is pending or the machine is not
//!   isolated, `POST /api/machines/{id}/unisolate` with `{"Comment": …}`. Undo:
//!   `isolate_machine`.
//! - `collect_investigation_package`: reuses a collection this run step already asked for
//!   (same comment) or one still pending; else `POST /api/machines/{id}/collectInvestigationPackage`
//!   with `{"Comment": …}`. When the action has succeeded, `GET /api/machineactions/{id}/getPackageUri`
//!   gives a short-lived SAS link. The evidence artifact (one JSON line) holds the
//!   MachineAction record and the link's metadata (host, path, expiry, permissions): the
//!   link's query string, which is its access token, is registered with the redactor and
//!   never written, logged or returned.
//!
//! A 400 `ActiveRequestAlreadyExists` ("Action is already in progress") for the same kind of
//! action is `already: true`. Errors (`{"error": {"code", "message", "target"}}`) become
//! messages naming the code, message and correlation id; 429 honours `Retry-After`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use url::Url;

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::evidence::EvidenceMeta;
use crate::http_client::{
    display_url, ClientBuildError, HttpClient, HttpClientConfig, HttpResponse, RequestSpec,
    DEFAULT_TIMEOUT,
};
use crate::intune::{
    check_next_link, device_input, evidence_err, invalid, ms_error, ms_error_parts, ms_settings,
    not_found, odata_string, set_query,
};
use crate::oauth::{tenant_token_url, ClientCredentials, ClientCredentialsConfig};
use crate::registry::{ConfigError, Settings};
use crate::secret::{Redactor, SecretValue};
use crate::{ActionCall, Connector, ConnectorError, RequestLog};

/// Default API root; paths add `/api`.
pub const DEFAULT_BASE_URL: &str = "https://api.security.microsoft.com";
/// Default token endpoint; `{tenant_id}` is replaced.
pub const DEFAULT_TOKEN_URL: &str =
    "https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token";
/// The client-credentials scope Microsoft documents for the Defender API.
pub const DEFENDER_SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";
/// Machine-action listings are followed this far at most.
const MAX_PAGES: u32 = 50;

const DEVICE_INPUT: FieldDecl = FieldDecl {
    name: "device",
    ty: "string",
    required: true,
    description: "the Defender machine id, or the computer's DNS name",
};

const DEVICE_INPUTS: &[FieldDecl] = &[DEVICE_INPUT];

const ISOLATE_INPUTS: &[FieldDecl] = &[
    DEVICE_INPUT,
    FieldDecl {
        name: "isolation_type",
        ty: "string",
        required: false,
        description: "`Full` (default) or `Selective` (Outlook, Teams and Skype stay connected)",
    },
];

const MUTATION_OUTPUTS: &[FieldDecl] = &[
    FieldDecl {
        name: "found",
        ty: "boolean",
        required: true,
        description: "false when no such machine exists (nothing was sent)",
    },
    FieldDecl {
        name: "target",
        ty: "string",
        required: true,
        description: "the Defender machine id (null when not found)",
    },
    FieldDecl {
        name: "already",
        ty: "boolean",
        required: true,
        description: "true when the machine was already in that state (or the action pending) and nothing was sent",
    },
    FieldDecl {
        name: "action_id",
        ty: "string",
        required: false,
        description: "the MachineAction id (sent now, or the one already under way)",
    },
    FieldDecl {
        name: "status",
        ty: "string",
        required: false,
        description: "the MachineAction status (Pending, InProgress, Succeeded, …)",
    },
];

const FIND_OUTPUTS: &[FieldDecl] = &[
    FieldDecl {
        name: "found",
        ty: "boolean",
        required: true,
        description: "false when no such machine exists",
    },
    FieldDecl {
        name: "id",
        ty: "string",
        required: false,
        description: "the Defender machine id",
    },
    FieldDecl {
        name: "name",
        ty: "string",
        required: false,
        description: "computer DNS name",
    },
    FieldDecl {
        name: "os",
        ty: "string",
        required: false,
        description: "OS platform",
    },
    FieldDecl {
        name: "last_seen",
        ty: "string",
        required: false,
        description: "last seen (RFC 3339)",
    },
    FieldDecl {
        name: "isolated",
        ty: "boolean",
        required: false,
        description: "true when the latest isolate/release is an isolate that is pending or done",
    },
];

const COLLECT_OUTPUTS: &[FieldDecl] = &[
    MUTATION_OUTPUTS[0],
    MUTATION_OUTPUTS[1],
    FieldDecl {
        name: "already",
        ty: "boolean",
        required: true,
        description: "true when a collection this step (or anyone) started was reused",
    },
    MUTATION_OUTPUTS[3],
    MUTATION_OUTPUTS[4],
    FieldDecl {
        name: "package_ready",
        ty: "boolean",
        required: true,
        description: "true when the package link was available and its metadata recorded",
    },
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
        description: "records written (1)",
    },
];

pub const TYPE: TypeDecl = TypeDecl {
    name: "defender",
    description: "Microsoft Defender for Endpoint machine actions",
    needs_instance: true,
    actions: &[
        ActionDecl {
            name: "find_machine",
            description: "Look a machine up by id or computer DNS name",
            inputs: DEVICE_INPUTS,
            outputs: FIND_OUTPUTS,
            effect: Effect::Lookup,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "isolate_machine",
            description: "Isolate the machine from the network (Full or Selective)",
            inputs: ISOLATE_INPUTS,
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: Some("release_machine"),
            secret_outputs: &[],
        },
        ActionDecl {
            name: "release_machine",
            description: "Release the machine from isolation (unisolate)",
            inputs: DEVICE_INPUTS,
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: Some("isolate_machine"),
            secret_outputs: &[],
        },
        ActionDecl {
            name: "collect_investigation_package",
            description: "Collect a forensic investigation package; record the action and the package link's metadata as evidence",
            inputs: DEVICE_INPUTS,
            outputs: COLLECT_OUTPUTS,
            effect: Effect::Snapshot,
            undo: None,
            secret_outputs: &[],
        },
    ],
};

/// Everything a `defender` instance needs.
#[derive(Debug, Clone)]
pub struct DefenderConfig {
    pub instance: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: SecretValue,
    /// API root without `/api`.
    pub base_url: Url,
    /// Token endpoint, `{tenant_id}` already replaced.
    pub token_url: Url,
    pub timeout: Duration,
}

impl DefenderConfig {
    /// Defaults for everything but the instance name and credentials.
    pub fn with_defaults(
        instance: impl Into<String>,
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: SecretValue,
    ) -> Result<DefenderConfig, url::ParseError> {
        let tenant_id = tenant_id.into();
        Ok(DefenderConfig {
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

/// A configured `defender` instance.
pub struct DefenderConnector {
    instance: String,
    base_url: Url,
    client: HttpClient,
    credentials: ClientCredentials,
}

impl fmt::Debug for DefenderConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefenderConnector")
            .field("instance", &self.instance)
            .field("base_url", &display_url(&self.base_url))
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    value: Vec<Value>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

/// Machine action statuses that mean "under way or done" (not Failed/TimeOut/Cancelled).
fn live(status: &str) -> bool {
    matches!(status, "Pending" | "InProgress" | "Succeeded")
}

fn pending(status: &str) -> bool {
    matches!(status, "Pending" | "InProgress")
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// What the machine-action history says about isolation.
#[derive(Debug, Clone, PartialEq)]
struct IsolationState {
    /// The latest live Isolate/Unisolate action, if any.
    latest: Option<Value>,
}

impl IsolationState {
    fn from_actions(actions: &[Value]) -> IsolationState {
        let latest = actions
            .iter()
            .filter(|a| {
                matches!(field(a, "type"), "Isolate" | "Unisolate") && live(field(a, "status"))
            })
            .max_by(|a, b| field(a, "creationDateTimeUtc").cmp(field(b, "creationDateTimeUtc")))
            .cloned();
        IsolationState { latest }
    }
    /// Isolated, or an isolate pending.
    fn isolated(&self) -> bool {
        self.latest
            .as_ref()
            .is_some_and(|a| field(a, "type") == "Isolate")
    }
    /// Is the machine already where `action` takes it (isolated or isolating for
    /// `isolate_machine`; released, releasing or never isolated for `release_machine`)?
    fn already(&self, action: &str) -> bool {
        match action {
            "isolate_machine" => self.isolated(),
            _ => !self.isolated(),
        }
    }
}

/// A machine id: 40 hex digits.
fn is_machine_id(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

fn isolation_type(input: &Value) -> Result<&'static str, ConnectorError> {
    match input.get("isolation_type") {
        None | Some(Value::Null) => Ok("Full"),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("full") => Ok("Full"),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("selective") => Ok("Selective"),
        Some(other) => Err(invalid(
            "isolation_type",
            format!("must be `Full` or `Selective`, not {other}"),
        )),
    }
}

/// The registry's constructor.
pub fn build(
    name: &str,
    map: &Map<String, Value>,
    base_dir: &std::path::Path,
    redactor: &Redactor,
) -> Result<std::sync::Arc<dyn Connector>, Vec<ConfigError>> {
    let settings = Settings::new(name, map, DefenderConnector::SETTINGS, base_dir, redactor);
    Ok(std::sync::Arc::new(DefenderConnector::from_settings(
        settings,
    )?))
}

impl DefenderConnector {
    /// The settings this type takes.
    pub const SETTINGS: &'static [&'static str] = &[
        "tenant_id",
        "client_id",
        "client_secret",
        "base_url",
        "token_url",
    ];

    pub fn from_settings(s: Settings<'_>) -> Result<Self, Vec<ConfigError>> {
        let instance = s.instance().to_string();
        let m = ms_settings(s, DEFAULT_BASE_URL, DEFAULT_TOKEN_URL)?;
        let config = DefenderConfig {
            instance: instance.clone(),
            tenant_id: m.tenant_id,
            client_id: m.client_id,
            client_secret: m.client_secret,
            base_url: m.base_url,
            token_url: m.token_url,
            timeout: DEFAULT_TIMEOUT,
        };
        DefenderConnector::new(config, m.redactor).map_err(|e| {
            let setting = match &e {
                ClientBuildError::Url(_) => Some("base_url"),
                _ => None,
            };
            vec![ConfigError::new(&instance, setting, e.to_string())]
        })
    }

    /// Build from a complete configuration. No network I/O.
    pub fn new(config: DefenderConfig, redactor: Redactor) -> Result<Self, ClientBuildError> {
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
            scope: DEFENDER_SCOPE.to_string(),
        });
        Ok(DefenderConnector {
            instance: config.instance,
            base_url: config.base_url,
            client,
            credentials,
        })
    }

    /// `{base_url}/api/<segments…>`.
    fn api_url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("api").extend(segments);
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
        ms_error("Defender", self.client.redactor(), method, url, resp)
    }

    /// Resolve a machine id or DNS name; None when unknown.
    async fn find(&self, log: &RequestLog, device: &str) -> Result<Option<Value>, ConnectorError> {
        if is_machine_id(device) {
            let url = self.api_url(&["machines", device]);
            let resp = self.send(log, RequestSpec::get(url.as_str())).await?;
            return match resp.status.as_u16() {
                200..=299 => Ok(Some(resp.json()?)),
                404 => Ok(None),
                _ => Err(self.error(&Method::GET, &url, &resp)),
            };
        }
        let mut url = self.api_url(&["machines"]);
        let filter = format!("computerDnsName eq {}", odata_string(device));
        set_query(&mut url, &[("$filter", &filter)]);
        let mut matches = Vec::new();
        for page_no in 0.. {
            let resp = self.send(log, RequestSpec::get(url.as_str())).await?;
            match resp.status.as_u16() {
                200..=299 => {}
                // "The API returns 404 if no recent machines exist."
                404 => break,
                _ => return Err(self.error(&Method::GET, &url, &resp)),
            }
            let page: Page = resp.json()?;
            matches.extend(page.value.into_iter().filter(|m| {
                field(m, "computerDnsName").eq_ignore_ascii_case(device)
                    && !field(m, "id").is_empty()
            }));
            match page.next_link {
                Some(link) if page_no + 1 < MAX_PAGES => {
                    url = check_next_link("Defender", &self.base_url, &link)?;
                }
                // Deciding on a truncated list could send a second isolate: refuse instead.
                Some(_) => {
                    return Err(ConnectorError::Other(format!(
                        "Defender {} still had more pages after {MAX_PAGES}; refusing to decide on a partial list",
                        url.path()
                    )))
                }
                None => break,
            }
        }
        Ok(matches
            .into_iter()
            .max_by(|a, b| field(a, "lastSeen").cmp(field(b, "lastSeen"))))
    }

    /// Every machine action recorded for `machine_id`.
    async fn machine_actions(
        &self,
        log: &RequestLog,
        machine_id: &str,
    ) -> Result<Vec<Value>, ConnectorError> {
        let mut url = self.api_url(&["machineactions"]);
        let filter = format!("machineId eq {}", odata_string(machine_id));
        set_query(&mut url, &[("$filter", &filter)]);
        let mut actions = Vec::new();
        for page_no in 0.. {
            let resp = self.send(log, RequestSpec::get(url.as_str())).await?;
            match resp.status.as_u16() {
                200..=299 => {}
                404 => break,
                _ => return Err(self.error(&Method::GET, &url, &resp)),
            }
            let page: Page = resp.json()?;
            actions.extend(page.value);
            match page.next_link {
                Some(link) if page_no + 1 < MAX_PAGES => {
                    url = check_next_link("Defender", &self.base_url, &link)?;
                }
                // Deciding on a truncated list could send a second isolate: refuse instead.
                Some(_) => {
                    return Err(ConnectorError::Other(format!(
                        "Defender {} still had more pages after {MAX_PAGES}; refusing to decide on a partial list",
                        url.path()
                    )))
                }
                None => break,
            }
        }
        Ok(actions)
    }

    fn comment(call: &ActionCall<'_>) -> String {
        format!("Cordon run {} step {}", call.run_id, call.step_id)
    }

    /// POST a machine action: the MachineAction on 201, `Gone` on 404, `InProgress` for
    /// Defender's 400 `ActiveRequestAlreadyExists` / "Action is already in progress".
    async fn post_action(
        &self,
        log: &RequestLog,
        machine_id: &str,
        segment: &str,
        body: Value,
    ) -> Result<PostOutcome, ConnectorError> {
        let url = self.api_url(&["machines", machine_id, segment]);
        let resp = self
            .send(log, RequestSpec::post(url.as_str()).json(body))
            .await?;
        match resp.status.as_u16() {
            200..=299 => Ok(PostOutcome::Sent(resp.json()?)),
            404 => Ok(PostOutcome::Gone),
            400 => {
                let (code, message) = ms_error_parts(&resp);
                let in_progress = code.as_deref() == Some("ActiveRequestAlreadyExists")
                    || message
                        .as_deref()
                        .is_some_and(|m| m.to_ascii_lowercase().contains("already in progress"));
                if in_progress {
                    Ok(PostOutcome::InProgress)
                } else {
                    Err(self.error(&Method::POST, &url, &resp))
                }
            }
            _ => Err(self.error(&Method::POST, &url, &resp)),
        }
    }

    async fn find_machine(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let device = device_input(call.input)?;
        let Some(m) = self.find(call.requests, &device).await? else {
            return Ok(json!({"found": false}));
        };
        let id = field(&m, "id").to_string();
        let state = IsolationState::from_actions(&self.machine_actions(call.requests, &id).await?);
        Ok(json!({
            "found": true,
            "id": id,
            "serial": null,
            "name": m.get("computerDnsName"),
            "owner": null,
            "os": m.get("osPlatform"),
            "os_version": m.get("osVersion"),
            "last_seen": m.get("lastSeen"),
            "health_status": m.get("healthStatus"),
            "risk_score": m.get("riskScore"),
            "exposure_level": m.get("exposureLevel"),
            "aad_device_id": m.get("aadDeviceId"),
            "isolated": state.isolated(),
        }))
    }

    async fn isolation(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let device = device_input(call.input)?;
        let isolating = call.action == "isolate_machine";
        let kind = if isolating {
            Some(isolation_type(call.input)?)
        } else {
            None
        };
        let Some(m) = self.find(call.requests, &device).await? else {
            return Ok(not_found());
        };
        let id = field(&m, "id").to_string();
        let actions = self.machine_actions(call.requests, &id).await?;
        let state = IsolationState::from_actions(&actions);
        if state.already(call.action) {
            let latest = state.latest.as_ref();
            return Ok(json!({
                "found": true, "target": id, "already": true,
                "action_id": latest.map(|a| field(a, "id")),
                "status": latest.map(|a| field(a, "status")),
            }));
        }
        let (segment, body) = match kind {
            Some(kind) => (
                "isolate",
                json!({"Comment": Self::comment(call), "IsolationType": kind}),
            ),
            None => ("unisolate", json!({"Comment": Self::comment(call)})),
        };
        match self.post_action(call.requests, &id, segment, body).await? {
            PostOutcome::Sent(a) => Ok(json!({
                "found": true, "target": id, "already": false,
                "action_id": field(&a, "id"), "status": field(&a, "status"),
            })),
            PostOutcome::Gone => Ok(not_found()),
            PostOutcome::InProgress => {
                // Only "already" when the action in progress is of our kind.
                let want = if isolating { "Isolate" } else { "Unisolate" };
                let actions = self.machine_actions(call.requests, &id).await?;
                match actions
                    .iter()
                    .find(|a| field(a, "type") == want && pending(field(a, "status")))
                {
                    Some(a) => Ok(json!({
                        "found": true, "target": id, "already": true,
                        "action_id": field(a, "id"), "status": field(a, "status"),
                    })),
                    None => Err(ConnectorError::Rejected {
                        status: 400,
                        message: format!(
                            "Defender refused to {segment} machine {id}: ActiveRequestAlreadyExists (another machine action is in progress)"
                        ),
                    }),
                }
            }
        }
    }

    async fn collect(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let device = device_input(call.input)?;
        let Some(m) = self.find(call.requests, &device).await? else {
            return Ok(json!({"found": false, "target": null, "already": false}));
        };
        let id = field(&m, "id").to_string();
        let comment = Self::comment(call);
        let actions = self.machine_actions(call.requests, &id).await?;
        let collects = || {
            actions
                .iter()
                .filter(|a| field(a, "type") == "CollectInvestigationPackage")
        };
        // Ours from an earlier attempt (any live status), else anyone's still running.
        let existing = collects()
            .find(|a| field(a, "requestorComment") == comment && live(field(a, "status")))
            .or_else(|| collects().find(|a| pending(field(a, "status"))))
            .cloned();
        let (action, already) = match existing {
            Some(a) => (a, true),
            None => {
                let body = json!({"Comment": comment});
                match self
                    .post_action(call.requests, &id, "collectInvestigationPackage", body)
                    .await?
                {
                    PostOutcome::Sent(a) => (a, false),
                    PostOutcome::Gone => {
                        return Ok(json!({"found": false, "target": null, "already": false}))
                    }
                    PostOutcome::InProgress => {
                        let again = self.machine_actions(call.requests, &id).await?;
                        match again.into_iter().find(|a| {
                            field(a, "type") == "CollectInvestigationPackage"
                                && pending(field(a, "status"))
                        }) {
                            Some(a) => (a, true),
                            None => {
                                return Err(ConnectorError::Rejected {
                                    status: 400,
                                    message: format!("Defender refused to collect an investigation package from machine {id}: ActiveRequestAlreadyExists"),
                                })
                            }
                        }
                    }
                }
            }
        };
        let action_id = field(&action, "id").to_string();
        let status = field(&action, "status").to_string();
        let package = if status == "Succeeded" && !action_id.is_empty() {
            self.package_link(call.requests, &action_id).await?
        } else {
            None
        };
        let package_ready = package.is_some();
        let record = json!({"machine_action": action, "package": package});
        let meta = EvidenceMeta {
            connector_type: TYPE.name.to_string(),
            instance: self.instance.clone(),
            action: call.action.to_string(),
            extension: "jsonl".to_string(),
            media_type: "application/x-ndjson".to_string(),
            source: json!({
                "device": device,
                "machine_id": id,
                "action_id": action_id,
                "endpoint": self.api_url(&["machines", &id, "collectInvestigationPackage"]).path(),
            }),
        };
        let mut writer = call.evidence.create(meta).await.map_err(evidence_err)?;
        let mut line = serde_json::to_vec(&record)
            .map_err(|e| ConnectorError::Other(format!("cannot encode the action record: {e}")))?;
        line.push(b'\n');
        writer.write(&line).await.map_err(evidence_err)?;
        writer.add_records(1);
        let rec = writer.finish().await.map_err(evidence_err)?;
        Ok(json!({
            "found": true, "target": id, "already": already,
            "action_id": action_id, "status": status, "package_ready": package_ready,
            "evidence_id": rec.evidence_id, "sha256": rec.sha256, "bytes": rec.bytes,
            "records": rec.records, "pages": 1, "path": rec.path,
        }))
    }

    /// The package link's metadata (never its query string, which is the SAS token);
    /// None while Defender answers 404 (not ready).
    async fn package_link(
        &self,
        log: &RequestLog,
        action_id: &str,
    ) -> Result<Option<Value>, ConnectorError> {
        let url = self.api_url(&["machineactions", action_id, "getPackageUri"]);
        let resp = self.send(log, RequestSpec::get(url.as_str())).await?;
        match resp.status.as_u16() {
            200..=299 => {}
            404 => return Ok(None),
            _ => return Err(self.error(&Method::GET, &url, &resp)),
        }
        let body: Value = resp.json()?;
        let Some(link) = body.get("value").and_then(Value::as_str) else {
            return Ok(None);
        };
        let redactor = self.client.redactor();
        redactor.register(link);
        let Ok(sas) = Url::parse(link) else {
            return Err(ConnectorError::Other(
                "Defender returned a package link that is not a URL".to_string(),
            ));
        };
        if let Some(q) = sas.query() {
            redactor.register(q);
        }
        for (k, v) in sas.query_pairs() {
            if k == "sig" {
                redactor.register(&v);
            }
        }
        let param = |name: &str| {
            sas.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        Ok(Some(json!({
            "scheme": sas.scheme(),
            "host": sas.host_str(),
            "path": sas.path(),
            "expires": param("se"),
            "starts": param("st"),
            "permissions": param("sp"),
            "signed_version": param("sv"),
        })))
    }
}

enum PostOutcome {
    Sent(Value),
    Gone,
    InProgress,
}

#[async_trait]
impl Connector for DefenderConnector {
    fn type_name(&self) -> &'static str {
        TYPE.name
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        match call.action {
            "find_machine" => self.find_machine(&call).await,
            "isolate_machine" | "release_machine" => self.isolation(&call).await,
            "collect_investigation_package" => self.collect(&call).await,
            other => Err(ConnectorError::Other(format!(
                "connector type `defender` has no action `{other}`"
            ))),
        }
    }

    async fn prior_state(&self, call: ActionCall<'_>) -> Result<Option<Value>, ConnectorError> {
        if !matches!(call.action, "isolate_machine" | "release_machine") {
            return Ok(None);
        }
        let device = device_input(call.input)?;
        let Some(m) = self.find(call.requests, &device).await? else {
            return Ok(Some(json!({"found": false})));
        };
        let id = field(&m, "id").to_string();
        let state = IsolationState::from_actions(&self.machine_actions(call.requests, &id).await?);
        let latest = state.latest.as_ref();
        Ok(Some(json!({
            "found": true,
            "id": id,
            "name": m.get("computerDnsName"),
            "isolated": state.isolated(),
            "latest_action": latest.map(|a| json!({
                "id": field(a, "id"), "type": field(a, "type"), "status": field(a, "status"),
            })),
            "already": state.already(call.action),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(ty: &str, status: &str, at: &str) -> Value {
        json!({"id": format!("{ty}-{at}"), "type": ty, "status": status, "creationDateTimeUtc": at})
    }

    #[test]
    fn isolation_state_follows_the_latest_live_action() {
        let s = IsolationState::from_actions(&[]);
        assert!(!s.isolated());
        assert!(s.already("release_machine") && !s.already("isolate_machine"));
        let s = IsolationState::from_actions(&[
            action("Isolate", "Succeeded", "2026-01-01T00:00:00Z"),
            action("Unisolate", "Failed", "2026-01-02T00:00:00Z"),
        ]);
        assert!(s.isolated(), "a failed release leaves it isolated");
        let s = IsolationState::from_actions(&[
            action("Isolate", "Succeeded", "2026-01-01T00:00:00Z"),
            action("Unisolate", "Pending", "2026-01-02T00:00:00Z"),
            action(
                "CollectInvestigationPackage",
                "Pending",
                "2026-01-03T00:00:00Z",
            ),
        ]);
        assert!(!s.isolated());
        let s =
            IsolationState::from_actions(&[action("Isolate", "Pending", "2026-01-05T00:00:00Z")]);
        assert!(
            s.already("isolate_machine"),
            "a pending isolate is not sent twice"
        );
    }

    #[test]
    fn inputs() {
        assert!(is_machine_id("1e5bc9d7e413ddd7902c2932e418702b84d0cc07"));
        assert!(!is_machine_id("host.contoso.com"));
        assert_eq!(isolation_type(&json!({})).unwrap(), "Full");
        assert_eq!(
            isolation_type(&json!({"isolation_type": "selective"})).unwrap(),
            "Selective"
        );
        match isolation_type(&json!({"isolation_type": "UnManagedDevice"})) {
            Err(ConnectorError::InvalidInput { field, .. }) => assert_eq!(field, "isolation_type"),
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }
}
