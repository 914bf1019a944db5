//! The `okta` connector: Okta's Management API with an API token.
//!
//! Settings (`connectors.<name>` with `type: okta`):
//! - `base_url` (required): the org URL, e.g. `https://acme.okta.com`; paths add `/api/v1/…`.
//!   Overridable so tests and the sandbox can stand in for Okta.
//! - `token` (required, a secret `{env: …}` / `{file: …}`): an API token, sent as
//!   `Authorization: SSWS <token>`. SSWS tokens cannot be refreshed, so a 401 is final.
//!
//! Actions, and the vendor calls each makes (every request also sends
//! `Accept: application/json`):
//! - `get_user`: resolves `user` (see below) → `{found, id, login, email, name, status, …}`.
//! - `suspend_user`: resolves `user`; when its `status` is already `SUSPENDED` nothing more is
//!   sent (`already: true`); else `POST /api/v1/users/{id}/lifecycle/suspend`. A 400
//!   `E0000001` (the legacy "wrong state" answer) is checked by re-reading the user: now
//!   `SUSPENDED` means `already: true`, anything else fails naming the status. Undo:
//!   `unsuspend_user`.
//! - `unsuspend_user`: the same with `ACTIVE` and `POST …/lifecycle/unsuspend`. Undo:
//!   `suspend_user`.
//! - `clear_sessions`: `DELETE /api/v1/users/{id}/sessions?oauthTokens=true&forgetDevices=true`
//!   (Okta IdP sessions, OpenID Connect/OAuth access and refresh tokens, remembered factors).
//!   Okta cannot say whether sessions existed, so `already` is always false.
//! - `snapshot_system_log`: a bounded System Log query, `GET /api/v1/logs?since=…&until=…&
//!   filter=actor.id eq "<id>" or target.id eq "<id>"&limit=1000&sortOrder=ASCENDING`,
//!   following every `Link: <…>; rel="next"` (same origin only: the token never leaves the
//!   org) until a page has none. Each event becomes one JSON line of the evidence artifact,
//!   written page by page. `until` defaults to now, because an unbounded query is a polling
//!   query whose `next` link never ends. A page that fails transiently leaves the open
//!   artifact and its cursor in the call's resume slot; the engine's next attempt continues
//!   from that page. The output also lists the addresses of the events the user did
//!   (`actor.id` is theirs; `client.ipAddress`, with `published` and
//!   `client.geographicalContext.country`) as `ip_addresses` ([`crate::ipsummary`]).
//!
//! Resolving `user`: `GET /api/v1/users/{user}` (Okta accepts an id, a login or an
//! unambiguous login shortname there); on 404 for something that is not an Okta id, or
//! straight away for a login containing `/` (which Okta cannot take in a path),
//! `GET /api/v1/users?search=profile.login eq "<user>" or profile.email eq "<user>"&limit=2`.
//! No match is `found: false` (not an error); two matches are refused, so that a shared email
//! can never suspend the wrong person.
//!
//! Errors name Okta's `errorCode` and `errorSummary` (and `errorId`, for Okta support).
//! A 429 is `RateLimited`, waiting until `X-Rate-Limit-Reset` plus a little jitter, since
//! the header has one-second resolution and Okta documents no `Retry-After`.

use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use reqwest::header::{HeaderMap, LINK};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::evidence::{EvidenceError, EvidenceMeta};
use crate::http_client::{
    display_url, retry_after, ClientBuildError, HttpClient, HttpClientConfig, HttpResponse,
    RequestSpec,
};
use crate::ipsummary::{
    self, IpCollector, IP_ADDRESSES_OUTPUT, IP_ADDRESSES_TRUNCATED_OUTPUT, OKTA_SYSTEM_LOG,
};
use crate::registry::{ConfigError, Settings};
use crate::secret::SecretValue;
use crate::{ActionCall, Connector, ConnectorError, EvidenceWriter};

/// Bound on one request. Okta ends a System Log query after 30 s (500 `E0000009`), so the
/// client waits a little longer than that to see Okta's own answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Events per System Log page: Okta's maximum, to spend as few requests as possible of the
/// org's rate limit.
pub const LOG_PAGE_LIMIT: u32 = 1000;
/// The System Log endpoint (relative to `base_url`).
pub const LOGS_PATH: &str = "api/v1/logs";

const USER_INPUT: FieldDecl = FieldDecl {
    name: "user",
    ty: "string",
    required: true,
    description: "the user's Okta login or email, or their Okta user id (00u…)",
};

const MUTATION_OUTPUTS: &[FieldDecl] = &[
    FieldDecl {
        name: "found",
        ty: "boolean",
        required: true,
        description: "false when Okta has no such user (then nothing was sent)",
    },
    FieldDecl {
        name: "target",
        ty: "string",
        required: true,
        description: "the resolved Okta user id (null when not found)",
    },
    FieldDecl {
        name: "already",
        ty: "boolean",
        required: true,
        description: "the user was already in the desired state; nothing was sent",
    },
    FieldDecl {
        name: "status",
        ty: "string",
        required: false,
        description: "the user's Okta status after the call",
    },
    FieldDecl {
        name: "previous_status",
        ty: "string",
        required: false,
        description: "the user's Okta status before the call",
    },
];

pub const TYPE: TypeDecl = TypeDecl {
    name: "okta",
    description: "Okta Management API (API token)",
    needs_instance: true,
    actions: &[
        ActionDecl {
            name: "get_user",
            description: "Look a user up by login, email or id",
            inputs: &[USER_INPUT],
            outputs: &[
                FieldDecl {
                    name: "found",
                    ty: "boolean",
                    required: true,
                    description: "false when Okta has no such user",
                },
                FieldDecl {
                    name: "id",
                    ty: "string",
                    required: false,
                    description: "Okta user id",
                },
                FieldDecl {
                    name: "login",
                    ty: "string",
                    required: false,
                    description: "profile.login",
                },
                FieldDecl {
                    name: "email",
                    ty: "string",
                    required: false,
                    description: "profile.email",
                },
                FieldDecl {
                    name: "name",
                    ty: "string",
                    required: false,
                    description: "display name, else first and last name",
                },
                FieldDecl {
                    name: "status",
                    ty: "string",
                    required: false,
                    description: "ACTIVE, SUSPENDED, DEPROVISIONED, LOCKED_OUT, …",
                },
                FieldDecl {
                    name: "last_login",
                    ty: "string",
                    required: false,
                    description: "RFC 3339 time of the last sign-in, if any",
                },
            ],
            effect: Effect::Lookup,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "suspend_user",
            description: "Suspend the user (they cannot sign in; assignments are kept)",
            inputs: &[USER_INPUT],
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: Some("unsuspend_user"),
            secret_outputs: &[],
        },
        ActionDecl {
            name: "unsuspend_user",
            description: "Return a suspended user to ACTIVE",
            inputs: &[USER_INPUT],
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: Some("suspend_user"),
            secret_outputs: &[],
        },
        ActionDecl {
            name: "clear_sessions",
            description: "End the user's Okta sessions and revoke their OAuth/OIDC tokens and remembered factors",
            inputs: &[USER_INPUT],
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "snapshot_system_log",
            description: "Save the user's System Log events (as actor or target) in a time range as JSON Lines evidence",
            inputs: &[
                USER_INPUT,
                FieldDecl {
                    name: "since",
                    ty: "string",
                    required: true,
                    description: "RFC 3339 start of the range (inclusive)",
                },
                FieldDecl {
                    name: "until",
                    ty: "string",
                    required: false,
                    description: "RFC 3339 end of the range (default: now)",
                },
            ],
            outputs: &[
                FieldDecl {
                    name: "evidence_id",
                    ty: "string",
                    required: true,
                    description: "the artifact's id (null when the user was not found)",
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
                    description: "System Log events saved",
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
                    description: "false when Okta has no such user (then nothing was saved)",
                },
                FieldDecl {
                    name: "target",
                    ty: "string",
                    required: true,
                    description: "the resolved Okta user id",
                },
                IP_ADDRESSES_OUTPUT,
                IP_ADDRESSES_TRUNCATED_OUTPUT,
            ],
            effect: Effect::Snapshot,
            undo: None,
            secret_outputs: &[],
        },
    ],
};

/// A configured `okta` instance.
#[derive(Debug, Clone)]
pub struct OktaConnector {
    instance: String,
    client: HttpClient,
    /// The API token; `SecretValue` prints as `[REDACTED]`.
    token: SecretValue,
}

/// Which lifecycle move a mutating action makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Suspend,
    Unsuspend,
}

impl Lifecycle {
    fn path_verb(self) -> &'static str {
        match self {
            Lifecycle::Suspend => "suspend",
            Lifecycle::Unsuspend => "unsuspend",
        }
    }

    /// The status the move ends in.
    fn target_status(self) -> &'static str {
        match self {
            Lifecycle::Suspend => "SUSPENDED",
            Lifecycle::Unsuspend => "ACTIVE",
        }
    }
}

/// The facts Cordon uses from an Okta `User`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OktaUser {
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    transitioning_to_status: Option<String>,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    last_login: Option<String>,
    #[serde(default)]
    status_changed: Option<String>,
    #[serde(default)]
    profile: OktaProfile,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OktaProfile {
    #[serde(default)]
    login: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
}

impl OktaUser {
    fn status(&self) -> &str {
        self.status.as_deref().unwrap_or("UNKNOWN")
    }

    fn name(&self) -> Option<String> {
        if let Some(d) = self
            .profile
            .display_name
            .as_deref()
            .filter(|d| !d.is_empty())
        {
            return Some(d.to_string());
        }
        let parts: Vec<&str> = [&self.profile.first_name, &self.profile.last_name]
            .into_iter()
            .filter_map(|p| p.as_deref())
            .filter(|p| !p.is_empty())
            .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    }

    fn lookup_output(&self) -> Value {
        json!({
            "found": true,
            "id": self.id,
            "login": self.profile.login,
            "email": self.profile.email,
            "name": self.name(),
            "first_name": self.profile.first_name,
            "last_name": self.profile.last_name,
            "status": self.status(),
            "transitioning_to_status": self.transitioning_to_status,
            "created": self.created,
            "last_login": self.last_login,
            "status_changed": self.status_changed,
        })
    }

    fn state(&self) -> Value {
        json!({
            "found": true,
            "id": self.id,
            "login": self.profile.login,
            "status": self.status(),
        })
    }
}

/// Okta's error body (`Error` in the spec).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OktaErrorBody {
    error_code: Option<String>,
    error_summary: Option<String>,
    error_id: Option<String>,
    #[serde(default)]
    error_causes: Vec<OktaErrorCause>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OktaErrorCause {
    error_summary: Option<String>,
}

/// A failed answer, kept whole enough to tell "already in that state" apart.
struct Failure {
    error: ConnectorError,
    code: Option<String>,
}

/// A snapshot in progress, parked in the call's [`crate::ResumeSlot`] while a page is being
/// fetched, so that an attempt that fails (or is abandoned by the engine's timeout) leaves
/// it for the next attempt.
struct LogProgress {
    /// The inputs this progress belongs to (`user`, `since`, `until`).
    key: (String, String, Option<String>),
    user_id: String,
    writer: Box<dyn EvidenceWriter>,
    /// The page to fetch next.
    next: Url,
    pages: u64,
    records: u64,
    /// The addresses of the events written so far.
    ips: IpCollector,
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

/// Okta user ids: `00u` and 17 more letters or digits.
pub fn looks_like_user_id(s: &str) -> bool {
    s.len() == 20 && s.starts_with("00u") && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A string inside a double-quoted SCIM filter value.
fn filter_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
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

/// An RFC 3339 time input, returned as given (trimmed) after checking it parses.
fn time_input(
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

/// The `rel="next"` target among a response's `Link` headers, if any.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(LINK) {
        let Ok(text) = value.to_str() else { continue };
        let mut rest = text;
        while let Some(start) = rest.find('<') {
            let after = &rest[start + 1..];
            let Some(end) = after.find('>') else { break };
            let target = &after[..end];
            let tail = &after[end + 1..];
            let params = match tail.find('<') {
                Some(i) => &tail[..i],
                None => tail,
            };
            let is_next = params.split(';').any(|p| {
                let p = p.trim().trim_end_matches(',').trim();
                let Some((name, v)) = p.split_once('=') else {
                    return false;
                };
                name.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            });
            if is_next {
                return Some(target.to_string());
            }
            rest = &tail[params.len()..];
        }
    }
    None
}

impl OktaConnector {
    /// The settings this type takes.
    pub const SETTINGS: &'static [&'static str] = &["base_url", "token"];

    /// The registry's entry point: check the settings map and build the instance.
    pub fn build(
        name: &str,
        map: &serde_json::Map<String, Value>,
        base_dir: &std::path::Path,
        redactor: &crate::secret::Redactor,
    ) -> Result<std::sync::Arc<dyn Connector>, Vec<ConfigError>> {
        let settings = Settings::new(name, map, Self::SETTINGS, base_dir, redactor);
        Ok(std::sync::Arc::new(Self::from_settings(settings)?))
    }

    /// Build from an instance's settings (pure apart from reading the token's secret).
    pub fn from_settings(mut s: Settings<'_>) -> Result<Self, Vec<ConfigError>> {
        let instance = s.instance().to_string();
        let base_url = s.required_url("base_url");
        let token = s.required_secret("token");
        let redactor = s.redactor().clone();
        s.finish()?;
        let (Some(base_url), Some(token)) = (base_url, token) else {
            // `finish` reports a missing or bad setting; this is only reached if it did not.
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
        Ok(OktaConnector {
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
        Ok(OktaConnector {
            instance: client.instance().to_string(),
            client,
            token,
        })
    }

    /// `base_url` + path segments, each percent-encoded as one segment.
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

    fn request(&self, method: Method, url: &Url) -> RequestSpec {
        RequestSpec::new(method, url.as_str())
            .auth("SSWS", &self.token)
            .header("Accept", "application/json")
    }

    /// Send, returning the answer whatever its status (transport failures are errors).
    async fn send(
        &self,
        spec: RequestSpec,
        call: &ActionCall<'_>,
    ) -> Result<HttpResponse, ConnectorError> {
        self.client.send_raw(spec, call.requests).await
    }

    /// The typed error for a non-2xx answer, with Okta's code and summary in its message.
    fn failure(&self, method: &Method, url: &Url, resp: &HttpResponse) -> Failure {
        let generic = match self.client.error_for_status(method, url, resp) {
            Ok(()) => ConnectorError::Other(format!(
                "{method} {}: unexpected answer {}",
                self.client.redactor().redact_str(url.path()),
                resp.status
            )),
            Err(e) => e,
        };
        let body: Option<OktaErrorBody> = serde_json::from_slice(&resp.body).ok();
        let Some(body) = body.filter(|b| b.error_code.is_some() || b.error_summary.is_some())
        else {
            return Failure {
                error: with_retry_jitter(generic, &resp.headers),
                code: None,
            };
        };
        let mut message = format!(
            "{method} {} → {}: Okta {}: {}",
            url.path(),
            resp.status,
            body.error_code.as_deref().unwrap_or("(no errorCode)"),
            body.error_summary.as_deref().unwrap_or("(no errorSummary)")
        );
        let causes: Vec<&str> = body
            .error_causes
            .iter()
            .filter_map(|c| c.error_summary.as_deref())
            .collect();
        if !causes.is_empty() {
            message.push_str(&format!(" ({})", causes.join("; ")));
        }
        if let Some(id) = &body.error_id {
            message.push_str(&format!(" [errorId {id}]"));
        }
        let message = self.client.redactor().redact_str(&message);
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
            error: with_retry_jitter(error, &resp.headers),
            code: body.error_code,
        }
    }

    /// `GET /api/v1/users/{key}`: `Ok(None)` on 404.
    async fn get_user_at(
        &self,
        key: &str,
        call: &ActionCall<'_>,
    ) -> Result<Option<OktaUser>, ConnectorError> {
        let url = self.url(&["api", "v1", "users", key])?;
        let resp = self.send(self.request(Method::GET, &url), call).await?;
        if resp.status.as_u16() == 404 {
            return Ok(None);
        }
        if !resp.status.is_success() {
            return Err(self.failure(&Method::GET, &url, &resp).error);
        }
        resp.json::<OktaUser>().map(Some)
    }

    /// `GET /api/v1/users?search=profile.login eq "x" or profile.email eq "x"&limit=2`.
    async fn search_user(
        &self,
        user: &str,
        call: &ActionCall<'_>,
    ) -> Result<Option<OktaUser>, ConnectorError> {
        let url = self.url(&["api", "v1", "users"])?;
        let quoted = filter_quote(user);
        let search = format!("profile.login eq {quoted} or profile.email eq {quoted}");
        let spec = self
            .request(Method::GET, &url)
            .query("search", search)
            .query("limit", "2");
        let resp = self.send(spec, call).await?;
        if resp.status.as_u16() == 404 {
            // Not an answer Okta documents for a search; read it as "no such user".
            return Ok(None);
        }
        if !resp.status.is_success() {
            return Err(self.failure(&Method::GET, &url, &resp).error);
        }
        let mut users: Vec<OktaUser> = resp.json()?;
        match users.len() {
            0 => Ok(None),
            1 => Ok(users.pop()),
            _ => Err(invalid(
                "user",
                format!(
                    "`{user}` matches more than one Okta user by login or email ({}); give the Okta user id instead",
                    users.iter().map(|u| u.id.as_str()).collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }

    /// Resolve `user` (id, login, shortname or email) to an Okta user, if there is one.
    async fn resolve(
        &self,
        user: &str,
        call: &ActionCall<'_>,
    ) -> Result<Option<OktaUser>, ConnectorError> {
        if !user.contains('/') {
            if let Some(u) = self.get_user_at(user, call).await? {
                return Ok(Some(u));
            }
            if looks_like_user_id(user) {
                return Ok(None);
            }
        }
        self.search_user(user, call).await
    }

    async fn get_user(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        let user = string_input(call.input, "user")?;
        Ok(match self.resolve(&user, &call).await? {
            Some(u) => u.lookup_output(),
            None => json!({"found": false}),
        })
    }

    async fn lifecycle(
        &self,
        call: ActionCall<'_>,
        op: Lifecycle,
    ) -> Result<Value, ConnectorError> {
        let user = string_input(call.input, "user")?;
        let Some(found) = self.resolve(&user, &call).await? else {
            return Ok(not_found());
        };
        let desired = op.target_status();
        let before = found.status().to_string();
        if before == desired {
            return Ok(mutation_output(&found.id, true, desired, &before));
        }
        let url = self.url(&["api", "v1", "users", &found.id, "lifecycle", op.path_verb()])?;
        let resp = self.send(self.request(Method::POST, &url), &call).await?;
        if resp.status.is_success() {
            return Ok(mutation_output(&found.id, false, desired, &before));
        }
        let failure = self.failure(&Method::POST, &url, &resp);
        let wrong_state = resp.status.as_u16() == 400
            || (resp.status.as_u16() == 403 && failure.code.as_deref() == Some("E0000038"));
        if wrong_state {
            // The legacy reference documents 400 `E0000001` for the wrong state (403
            // `E0000038` for other moves); the current spec only a generic 400. Either way,
            // read the state again: another actor (or
            // an attempt whose answer we never saw) may have made the move already.
            return match self.get_user_at(&found.id, &call).await? {
                Some(now) if now.status() == desired => {
                    Ok(mutation_output(&found.id, true, desired, &before))
                }
                Some(now) => Err(append(
                    failure.error,
                    &format!(
                        "; user {} is {} (okta.{}_user needs {})",
                        found.id,
                        now.status(),
                        op.path_verb(),
                        match op {
                            Lifecycle::Suspend => "ACTIVE",
                            Lifecycle::Unsuspend => "SUSPENDED",
                        }
                    ),
                )),
                None => Ok(not_found()),
            };
        }
        if resp.status.as_u16() == 404 {
            // Deleted between the read and the move.
            return Ok(not_found());
        }
        Err(failure.error)
    }

    async fn clear_sessions(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        let user = string_input(call.input, "user")?;
        let Some(found) = self.resolve(&user, &call).await? else {
            return Ok(not_found());
        };
        let url = self.url(&["api", "v1", "users", &found.id, "sessions"])?;
        let spec = self
            .request(Method::DELETE, &url)
            .query("oauthTokens", "true")
            .query("forgetDevices", "true");
        let resp = self.send(spec, &call).await?;
        if resp.status.is_success() {
            return Ok(json!({
                "found": true,
                "target": found.id,
                "already": false,
                "status": found.status(),
                "previous_status": found.status(),
            }));
        }
        if resp.status.as_u16() == 404 {
            return Ok(not_found());
        }
        Err(self.failure(&Method::DELETE, &url, &resp).error)
    }

    async fn snapshot_system_log(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        let user = string_input(call.input, "user")?;
        let since = time_input(call.input, "since", true)?;
        let until = time_input(call.input, "until", false)?;
        if let (Some((_, s)), Some((_, u))) = (&since, &until) {
            if u <= s {
                return Err(invalid("until", "must be later than `since`"));
            }
        }
        let since = since.map(|(raw, _)| raw).unwrap_or_default();
        let key = (
            user.clone(),
            since.clone(),
            until.as_ref().map(|(r, _)| r.clone()),
        );
        let progress = match call.resume.take::<LogProgress>() {
            Some(p) if p.key == key => p,
            // Progress for other inputs (cannot happen with the engine's slots) is dropped:
            // its artifact stays an unlisted partial file.
            _ => {
                let Some(found) = self.resolve(&user, &call).await? else {
                    let mut out = json!({
                        "found": false, "target": null, "evidence_id": null, "sha256": null,
                        "bytes": 0, "records": 0, "pages": 0,
                    });
                    ipsummary::add_empty(&mut out);
                    return Ok(out);
                };
                // Without `until` the query would be a polling query whose `next` link never
                // ends: bound it at now, and record that bound.
                let until = until.map(|(raw, _)| raw).unwrap_or_else(|| {
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                });
                let filter = format!(
                    "actor.id eq {id} or target.id eq {id}",
                    id = filter_quote(&found.id)
                );
                let mut first = self.url(&["api", "v1", "logs"])?;
                first
                    .query_pairs_mut()
                    .append_pair("since", &since)
                    .append_pair("until", &until)
                    .append_pair("filter", &filter)
                    .append_pair("limit", &LOG_PAGE_LIMIT.to_string())
                    .append_pair("sortOrder", "ASCENDING");
                let meta = EvidenceMeta {
                    connector_type: TYPE.name.to_string(),
                    instance: self.instance.clone(),
                    action: call.action.to_string(),
                    extension: "jsonl".to_string(),
                    media_type: "application/x-ndjson".to_string(),
                    source: json!({
                        "endpoint": format!("GET {}", first.path()),
                        "base_url": self.client.base_url().map(display_url),
                        "user": user,
                        "user_id": found.id,
                        "login": found.profile.login,
                        "since": since,
                        "until": until,
                        "until_defaulted": key.2.is_none(),
                        "filter": filter,
                        "limit": LOG_PAGE_LIMIT,
                        "sort_order": "ASCENDING",
                    }),
                };
                let writer = call.evidence.create(meta).await.map_err(evidence_err)?;
                // Events where the user is only the target (an admin acting on them) carry
                // the admin's address, not theirs.
                let ips = IpCollector::new(OKTA_SYSTEM_LOG).only_where(&["actor", "id"], &found.id);
                LogProgress {
                    key,
                    user_id: found.id,
                    writer,
                    next: first,
                    pages: 0,
                    records: 0,
                    ips,
                }
            }
        };
        self.follow_pages(&call, progress).await
    }

    /// Fetch and store every page from `progress.next` on.
    async fn follow_pages(
        &self,
        call: &ActionCall<'_>,
        mut progress: LogProgress,
    ) -> Result<Value, ConnectorError> {
        loop {
            let url = progress.next.clone();
            // Parked while the request is in flight: a transient failure, or the engine
            // abandoning this attempt at its timeout, leaves it for the next attempt.
            call.resume.put(progress);
            let outcome = self.send(self.request(Method::GET, &url), call).await;
            let Some(mut p) = call.resume.take::<LogProgress>() else {
                return Err(ConnectorError::Other(
                    "okta.snapshot_system_log: the snapshot's progress was lost".into(),
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
            // One page at a time: parse, write as JSON lines, let go.
            let events: Vec<Value> = resp.json().map_err(|e| {
                ConnectorError::Other(format!("GET {}: page {}: {e}", url.path(), p.pages + 1))
            })?;
            let mut chunk = Vec::with_capacity(resp.body.len() + events.len());
            for event in &events {
                serde_json::to_writer(&mut chunk, event)
                    .map_err(|e| ConnectorError::Other(format!("cannot encode an event: {e}")))?;
                chunk.push(b'\n');
            }
            if !chunk.is_empty() {
                p.writer.write(&chunk).await.map_err(evidence_err)?;
            }
            for event in &events {
                p.ips.feed(event);
            }
            let n = events.len() as u64;
            p.writer.add_records(n);
            p.records += n;
            p.pages += 1;
            let next = match next_link(&resp.headers) {
                // A bounded query's last page has no `next`; an empty page with one is a
                // polling query's "nothing more yet": stop either way.
                Some(next) if !events.is_empty() => next,
                _ => return self.finish_snapshot(p).await,
            };
            p.next = self.check_next(&url, &next)?;
            progress = p;
        }
    }

    /// A `next` link must stay on the configured org: the token goes with it.
    fn check_next(&self, current: &Url, next: &str) -> Result<Url, ConnectorError> {
        let parsed = current.join(next).map_err(|e| {
            ConnectorError::Other(format!(
                "GET {}: Okta's next link is not a URL: {e}",
                current.path()
            ))
        })?;
        let same_origin = self
            .client
            .base_url()
            .is_some_and(|b| b.origin() == parsed.origin());
        if !same_origin {
            return Err(ConnectorError::Other(format!(
                "GET {}: Okta's next link points to {}, not to the configured `base_url`; refusing to send the token there",
                current.path(),
                display_url(&parsed)
            )));
        }
        Ok(parsed)
    }

    async fn finish_snapshot(&self, p: LogProgress) -> Result<Value, ConnectorError> {
        let record = p.writer.finish().await.map_err(evidence_err)?;
        let mut out = json!({
            "found": true,
            "target": p.user_id,
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

fn not_found() -> Value {
    json!({"found": false, "target": null, "already": false})
}

fn mutation_output(id: &str, already: bool, status: &str, before: &str) -> Value {
    json!({
        "found": true,
        "target": id,
        "already": already,
        "status": status,
        "previous_status": before,
    })
}

/// The same error with more text at the end of its message.
fn append(error: ConnectorError, extra: &str) -> ConnectorError {
    match error {
        ConnectorError::Rejected { status, message } => ConnectorError::Rejected {
            status,
            message: message + extra,
        },
        ConnectorError::Auth { status, message } => ConnectorError::Auth {
            status,
            message: message + extra,
        },
        other => other,
    }
}

/// Okta's reset time has one-second resolution and is only an estimate under concurrency
/// limits: wait one more second plus up to a second of jitter, so that parallel callers do
/// not all return at the same instant.
fn with_retry_jitter(error: ConnectorError, headers: &HeaderMap) -> ConnectorError {
    match error {
        ConnectorError::RateLimited { message, .. } => ConnectorError::RateLimited {
            retry_after: retry_after(headers).map(|d| {
                d + Duration::from_secs(1)
                    + Duration::from_millis(rand::thread_rng().gen_range(0..1000))
            }),
            message,
        },
        other => other,
    }
}

#[async_trait]
impl Connector for OktaConnector {
    fn type_name(&self) -> &'static str {
        TYPE.name
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        // Inputs other than the action's own are ignored here: `cordon validate` refuses them
        // in a runbook's `with`, and role actions may pass their own options along.
        if !call.input.is_object() {
            return Err(invalid("with", "the inputs must be a map"));
        }
        match call.action {
            "get_user" => self.get_user(call).await,
            "suspend_user" => self.lifecycle(call, Lifecycle::Suspend).await,
            "unsuspend_user" => self.lifecycle(call, Lifecycle::Unsuspend).await,
            "clear_sessions" => self.clear_sessions(call).await,
            "snapshot_system_log" => self.snapshot_system_log(call).await,
            other => Err(ConnectorError::Other(format!(
                "connector type `okta` has no action `{other}`"
            ))),
        }
    }

    /// The user's `{found, id, login, status}` (or `{found: false}`) before a mutation.
    async fn prior_state(&self, call: ActionCall<'_>) -> Result<Option<Value>, ConnectorError> {
        match call.action {
            "suspend_user" | "unsuspend_user" | "clear_sessions" => {
                let user = string_input(call.input, "user")?;
                Ok(Some(match self.resolve(&user, &call).await? {
                    Some(u) => {
                        let mut state = u.state();
                        let status = state["status"].as_str().unwrap_or("").to_string();
                        // Was the user already where this action takes them, before the run?
                        match call.action {
                            "suspend_user" => state["already"] = json!(status == "SUSPENDED"),
                            "unsuspend_user" => state["already"] = json!(status == "ACTIVE"),
                            _ => {}
                        }
                        state
                    }
                    None => json!({"found": false}),
                }))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn user_id_shape() {
        assert!(looks_like_user_id("00u1jsmith0suspect01"));
        assert!(looks_like_user_id("00ub0oNGTSWTBKOLGLNR"));
        assert!(!looks_like_user_id("j.smith@example.com"));
        assert!(!looks_like_user_id("00u1short"));
        assert!(!looks_like_user_id("00g1jsmith0suspect01"));
        assert!(!looks_like_user_id("00u1jsmith0suspect-1"));
    }

    #[test]
    fn filter_values_are_quoted_and_escaped() {
        assert_eq!(filter_quote("a@b.c"), "\"a@b.c\"");
        assert_eq!(filter_quote("x\" or id sw \""), "\"x\\\" or id sw \\\"\"");
        assert_eq!(filter_quote("back\\slash"), "\"back\\\\slash\"");
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(LINK, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn next_link_forms() {
        let self_only = headers(&["<https://o.okta.com/api/v1/logs?since=x>; rel=\"self\""]);
        assert_eq!(next_link(&self_only), None);
        let separate = headers(&[
            "<https://o.okta.com/api/v1/logs?since=x>; rel=\"self\"",
            "<https://o.okta.com/api/v1/logs?after=1,2&limit=5>; rel=\"next\"",
        ]);
        assert_eq!(
            next_link(&separate).as_deref(),
            Some("https://o.okta.com/api/v1/logs?after=1,2&limit=5")
        );
        let joined = headers(&["<https://o/a?x=1>; rel=\"self\", <https://o/a?after=9>; rel=next"]);
        assert_eq!(next_link(&joined).as_deref(), Some("https://o/a?after=9"));
        let multi_rel = headers(&["<https://o/b>; type=\"x\"; rel=\"prev next\""]);
        assert_eq!(next_link(&multi_rel).as_deref(), Some("https://o/b"));
        assert_eq!(next_link(&headers(&["garbage <unterminated"])), None);
        assert_eq!(next_link(&HeaderMap::new()), None);
    }

    #[test]
    fn time_inputs_are_checked() {
        let input = json!({"since": "2024-05-01T00:00:00Z", "until": "yesterday"});
        assert!(time_input(&input, "since", true).unwrap().is_some());
        match time_input(&input, "until", false) {
            Err(ConnectorError::InvalidInput { field, message }) => {
                assert_eq!(field, "until");
                assert!(message.contains("yesterday"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(time_input(&json!({}), "until", false).unwrap().is_none());
        assert!(matches!(
            time_input(&json!({}), "since", true),
            Err(ConnectorError::InvalidInput { field, .. }) if field == "since"
        ));
        assert!(matches!(
            time_input(&json!({"since": 5}), "since", true),
            Err(ConnectorError::InvalidInput { field, .. }) if field == "since"
        ));
    }

    #[test]
    fn user_names_prefer_display_name() {
        let u: OktaUser = serde_json::from_value(json!({
            "id": "00u1", "status": "ACTIVE",
            "profile": {"firstName": "John", "lastName": "Smith", "login": "j@x"}
        }))
        .unwrap();
        assert_eq!(u.name().as_deref(), Some("John Smith"));
        let out = u.lookup_output();
        assert_eq!(out["login"], "j@x");
        assert_eq!(out["email"], Value::Null);
        let u: OktaUser = serde_json::from_value(json!({
            "id": "00u1", "profile": {"displayName": "JS", "firstName": "John"}
        }))
        .unwrap();
        assert_eq!(u.name().as_deref(), Some("JS"));
        assert_eq!(u.status(), "UNKNOWN");
    }

    #[test]
    fn declarations_are_consistent() {
        for a in TYPE.actions {
            assert!(a.input("user").is_some(), "{}", a.name);
            if let Some(undo) = a.undo {
                assert!(TYPE.action(undo).is_some(), "{} → {undo}", a.name);
            }
        }
        assert_eq!(
            TYPE.action("suspend_user").and_then(|a| a.undo),
            Some("unsuspend_user")
        );
        assert_eq!(
            TYPE.action("unsuspend_user").and_then(|a| a.undo),
            Some("suspend_user")
        );
    }
}
