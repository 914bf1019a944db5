//! The `entra` connector: Microsoft Entra ID (Azure AD) through Microsoft Graph v1.0.
//!
//! ## Settings
//! - `tenant_id`: the directory (tenant) id, a GUID or a domain name.
//! - `client_id`: the application (client) id of an app registration.
//! - `client_secret`: its client secret, `{env: …}` or `{file: …}`.
//! - `base_url`: default `https://graph.microsoft.com`; every path adds `/v1.0`.
//! - `token_url`: default `https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token`,
//!   `{tenant_id}` replaced. Both URLs are overridable (national clouds, tests, sandbox).
//!
//! Authentication is OAuth 2.0 client credentials with scope
//! `https://graph.microsoft.com/.default` ([`crate::oauth::ClientCredentials`]): the token is
//! cached in memory until shortly before expiry and refreshed once on a 401. Needed
//! application permissions: `User.Read.All` with `User.EnableDisableAccount.All` (or
//! `User.ReadWrite.All`), `User.RevokeSessions.All`, `AuditLog.Read.All` and
//! `Directory.Read.All`.
//!
//! ## Actions and the calls they make
//! Every user action takes `user`: a user id (GUID) or a user principal name / email.
//! It is looked up with `GET /v1.0/users/{id | userPrincipalName}?$select=…`; when an
//! email is not a UPN (404), with `GET /v1.0/users?$filter=mail eq '…'`. The resolved object
//! id is reported as `target`. An unknown user is success with `found: false`.
//! - `get_user`: the lookup alone → `{found, id, email, user_principal_name, name,
//!   account_enabled, status}`.
//! - `disable_user`: lookup; unless `accountEnabled` is already false,
//!   `PATCH /v1.0/users/{id}` with `{"accountEnabled": false}` (204). Undo: `enable_user`.
//! - `enable_user`: the same with `true`. Undo: `disable_user`.
//! - `revoke_sessions`: lookup, then `POST /v1.0/users/{id}/revokeSignInSessions` (any 2xx
//!   is success: the service answers 200 `true` where the docs say 204). Repeating it is
//!   harmless, so `already` is always false.
//! - `snapshot_sign_ins`: `GET /v1.0/auditLogs/signIns?$filter=userId eq '{id}' and
//!   createdDateTime ge {since} and createdDateTime le {until}&$top=1000`.
//! - `snapshot_directory_audits`: `GET /v1.0/auditLogs/directoryAudits?$filter=
//!   initiatedBy/user/id eq '{id}' and activityDateTime ge {since} and activityDateTime le
//!   {until}&$top=1000` (what the account did; `initiatedBy/user/id` is the documented
//!   `eq` filter, while combining it with `targetResources/any(…)` through `or` is not).
//!
//! Snapshots follow `@odata.nextLink` unchanged (only to the base URL's origin, so the
//! token never leaves for another host), write each record as one JSON line, and respect
//! Graph's "identity and access reports" limit of 5 requests per 10 seconds per app and
//! tenant with a client-side sliding window shared by both snapshot actions of the
//! instance. A page that fails transiently leaves its open artifact and cursor in the
//! call's [`crate::ResumeSlot`], and the engine's next attempt continues from that page.
//! Both also report the records' addresses as `ip_addresses` ([`crate::ipsummary`]):
//! sign-ins' `ipAddress` with `createdDateTime` and `location.countryOrRegion`, audits'
//! `initiatedBy.user.ipAddress` with `activityDateTime`.
//!
//! Graph errors (`{"error": {"code", "message", "innerError": {"request-id"}}}`) become
//! messages naming the code, message and request id; 429 and 503 honour `Retry-After`.
//! `prior_state` of the mutating actions records `{found, id, user_principal_name,
//! account_enabled, sign_in_sessions_valid_from}`.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use url::Url;

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::evidence::{EvidenceMeta, EvidenceWriter};
use crate::http_client::{
    display_url, ClientBuildError, HttpClient, HttpClientConfig, HttpResponse, RequestSpec,
    DEFAULT_TIMEOUT,
};
use crate::intune::{evidence_err, invalid, is_guid, ms_error, odata_string, set_query};
use crate::ipsummary::{
    self, IpCollector, IpFields, ENTRA_DIRECTORY_AUDITS, ENTRA_SIGN_INS, IP_ADDRESSES_OUTPUT,
    IP_ADDRESSES_TRUNCATED_OUTPUT,
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
/// User properties read by every lookup (`accountEnabled` is not in the default set).
const USER_SELECT: &str =
    "id,displayName,userPrincipalName,mail,accountEnabled,signInSessionsValidFromDateTime";
/// Graph's documented maximum page size for sign-ins and directory audits.
const PAGE_SIZE: &str = "1000";

const USER_INPUT: FieldDecl = FieldDecl {
    name: "user",
    ty: "string",
    required: true,
    description: "user principal name / email, or the Entra object id (GUID)",
};

const USER_INPUTS: &[FieldDecl] = &[USER_INPUT];

const SNAPSHOT_INPUTS: &[FieldDecl] = &[
    USER_INPUT,
    FieldDecl {
        name: "since",
        ty: "string",
        required: true,
        description: "start of the time range, RFC 3339",
    },
    FieldDecl {
        name: "until",
        ty: "string",
        required: false,
        description: "end of the time range, RFC 3339 (default: now)",
    },
];

const MUTATION_OUTPUTS: &[FieldDecl] = &[
    FieldDecl {
        name: "found",
        ty: "boolean",
        required: true,
        description: "false when no such user exists (nothing was sent)",
    },
    FieldDecl {
        name: "target",
        ty: "string",
        required: true,
        description: "the user's Entra object id (null when not found)",
    },
    FieldDecl {
        name: "already",
        ty: "boolean",
        required: true,
        description: "true when the account was already in that state and nothing was sent",
    },
    FieldDecl {
        name: "account_enabled",
        ty: "boolean",
        required: false,
        description: "the account's state afterwards",
    },
];

const REVOKE_OUTPUTS: &[FieldDecl] = &[
    MUTATION_OUTPUTS[0],
    MUTATION_OUTPUTS[1],
    FieldDecl {
        name: "already",
        ty: "boolean",
        required: true,
        description: "always false: revoking again is harmless and is always sent",
    },
    FieldDecl {
        name: "revoked",
        ty: "boolean",
        required: false,
        description: "true when Graph accepted the revocation",
    },
];

const GET_USER_OUTPUTS: &[FieldDecl] = &[
    FieldDecl {
        name: "found",
        ty: "boolean",
        required: true,
        description: "false when no such user exists",
    },
    FieldDecl {
        name: "id",
        ty: "string",
        required: false,
        description: "the Entra object id",
    },
    FieldDecl {
        name: "email",
        ty: "string",
        required: false,
        description: "mail, else the user principal name",
    },
    FieldDecl {
        name: "user_principal_name",
        ty: "string",
        required: false,
        description: "the sign-in name",
    },
    FieldDecl {
        name: "name",
        ty: "string",
        required: false,
        description: "display name",
    },
    FieldDecl {
        name: "account_enabled",
        ty: "boolean",
        required: false,
        description: "whether the account may sign in",
    },
    FieldDecl {
        name: "status",
        ty: "string",
        required: false,
        description: "`enabled`, `disabled` or `unknown`",
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
        description: "log records written (one JSON line each)",
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
        description: "false when no such user exists (no artifact is written)",
    },
    FieldDecl {
        name: "target",
        ty: "string",
        required: true,
        description: "the user's Entra object id",
    },
    IP_ADDRESSES_OUTPUT,
    IP_ADDRESSES_TRUNCATED_OUTPUT,
];

pub const TYPE: TypeDecl = TypeDecl {
    name: "entra",
    description: "Microsoft Entra ID (Azure AD) through Microsoft Graph",
    needs_instance: true,
    actions: &[
        ActionDecl {
            name: "disable_user",
            description: "Block sign-in (accountEnabled: false); existing tokens live on until revoke_sessions",
            inputs: USER_INPUTS,
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: Some("enable_user"),
            secret_outputs: &[],
        },
        ActionDecl {
            name: "enable_user",
            description: "Allow sign-in again (accountEnabled: true)",
            inputs: USER_INPUTS,
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: Some("disable_user"),
            secret_outputs: &[],
        },
        ActionDecl {
            name: "revoke_sessions",
            description: "Invalidate refresh tokens and session cookies (revokeSignInSessions)",
            inputs: USER_INPUTS,
            outputs: REVOKE_OUTPUTS,
            effect: Effect::Mutation,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "get_user",
            description: "Look a user up by UPN, email or object id",
            inputs: USER_INPUTS,
            outputs: GET_USER_OUTPUTS,
            effect: Effect::Lookup,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "snapshot_sign_ins",
            description: "The user's sign-in log over a time range, as JSON lines",
            inputs: SNAPSHOT_INPUTS,
            outputs: SNAPSHOT_OUTPUTS,
            effect: Effect::Snapshot,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "snapshot_directory_audits",
            description: "Directory audit events the user initiated over a time range, as JSON lines",
            inputs: SNAPSHOT_INPUTS,
            outputs: SNAPSHOT_OUTPUTS,
            effect: Effect::Snapshot,
            undo: None,
            secret_outputs: &[],
        },
    ],
};

/// A request budget: at most `requests` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindow {
    pub requests: usize,
    pub per: Duration,
}

impl RateWindow {
    /// Graph's "identity and access reports" limit: 5 requests per 10 s per app and tenant.
    pub const REPORTS: RateWindow = RateWindow {
        requests: 5,
        per: Duration::from_secs(10),
    };
}

/// A sliding-window limiter. Waiters queue on the lock in arrival order; time comes from
/// `tokio::time`, so tests can pause it.
#[derive(Debug)]
struct SlidingWindow {
    window: RateWindow,
    sent: tokio::sync::Mutex<VecDeque<tokio::time::Instant>>,
}

impl SlidingWindow {
    fn new(window: RateWindow) -> Self {
        SlidingWindow {
            window,
            sent: tokio::sync::Mutex::new(VecDeque::new()),
        }
    }

    /// Wait until one more request fits in the window, and count it.
    async fn acquire(&self) {
        let limit = self.window.requests.max(1);
        let mut sent = self.sent.lock().await;
        loop {
            let now = tokio::time::Instant::now();
            while sent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.window.per)
            {
                sent.pop_front();
            }
            if sent.len() < limit {
                sent.push_back(now);
                return;
            }
            if let Some(oldest) = sent.front().copied() {
                tokio::time::sleep_until(oldest + self.window.per).await;
            }
        }
    }
}

/// Everything an `entra` instance needs; [`EntraConnector::from_settings`] fills it from
/// configuration, tests and embedders may build it directly.
#[derive(Debug, Clone)]
pub struct EntraConfig {
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
    /// Client-side budget for `/auditLogs` requests.
    pub reports_limit: RateWindow,
}

impl EntraConfig {
    /// Defaults for everything but the instance name and credentials.
    pub fn with_defaults(
        instance: impl Into<String>,
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: SecretValue,
    ) -> Result<EntraConfig, url::ParseError> {
        let tenant_id = tenant_id.into();
        Ok(EntraConfig {
            instance: instance.into(),
            base_url: Url::parse(DEFAULT_BASE_URL)?,
            token_url: Url::parse(&tenant_token_url(DEFAULT_TOKEN_URL, &tenant_id))?,
            tenant_id,
            client_id: client_id.into(),
            client_secret,
            timeout: DEFAULT_TIMEOUT,
            reports_limit: RateWindow::REPORTS,
        })
    }
}

/// A configured `entra` instance.
pub struct EntraConnector {
    instance: String,
    base_url: Url,
    client: HttpClient,
    credentials: ClientCredentials,
    reports: SlidingWindow,
}

impl fmt::Debug for EntraConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraConnector")
            .field("instance", &self.instance)
            .field("base_url", &display_url(&self.base_url))
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// A user as the lookup returns it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphUser {
    id: String,
    display_name: Option<String>,
    user_principal_name: Option<String>,
    mail: Option<String>,
    account_enabled: Option<bool>,
    sign_in_sessions_valid_from_date_time: Option<String>,
}

#[derive(Deserialize)]
struct GraphList<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
}

#[derive(Deserialize)]
struct GraphPage {
    #[serde(default)]
    value: Vec<Value>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

/// Which audit log a snapshot reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogKind {
    SignIns,
    DirectoryAudits,
}

impl LogKind {
    fn segment(self) -> &'static str {
        match self {
            LogKind::SignIns => "signIns",
            LogKind::DirectoryAudits => "directoryAudits",
        }
    }

    /// Where its records keep the address and the time.
    fn ip_fields(self) -> IpFields {
        match self {
            LogKind::SignIns => ENTRA_SIGN_INS,
            LogKind::DirectoryAudits => ENTRA_DIRECTORY_AUDITS,
        }
    }

    fn filter(self, user_id: &str, since: &str, until: &str) -> String {
        let id = odata_string(user_id);
        match self {
            LogKind::SignIns => format!(
                "userId eq {id} and createdDateTime ge {since} and createdDateTime le {until}"
            ),
            LogKind::DirectoryAudits => format!(
                "initiatedBy/user/id eq {id} and activityDateTime ge {since} and activityDateTime le {until}"
            ),
        }
    }
}

/// A paged snapshot interrupted by a transient error, kept for the next attempt.
struct SnapshotProgress {
    /// The inputs it belongs to: another call's progress is never resumed.
    key: String,
    writer: Box<dyn EvidenceWriter>,
    next: Url,
    target: String,
    pages: u64,
    records: u64,
    /// The addresses of the records written so far.
    ips: IpCollector,
}

fn user_input(input: &Value) -> Result<String, ConnectorError> {
    let obj = input
        .as_object()
        .ok_or_else(|| invalid("with", "the inputs must be a map"))?;
    match obj.get("user") {
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                Err(invalid("user", "must not be empty"))
            } else if s.chars().any(char::is_control) {
                Err(invalid("user", "must not contain control characters"))
            } else {
                Ok(s.to_string())
            }
        }
        Some(_) => Err(invalid(
            "user",
            "must be a string (a user principal name, email or object id)",
        )),
        None => Err(invalid("user", "is required")),
    }
}

/// An RFC 3339 input, normalised to UTC with `Z` (the form Graph filters take).
fn time_input(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, ConnectorError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s.trim())
            .map(|t| {
                Some(
                    t.with_timezone(&Utc)
                        .to_rfc3339_opts(SecondsFormat::AutoSi, true),
                )
            })
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

/// The checked inputs of a snapshot.
struct SnapshotInput {
    user: String,
    since: String,
    until: Option<String>,
}

impl SnapshotInput {
    fn parse(input: &Value) -> Result<SnapshotInput, ConnectorError> {
        let user = user_input(input)?;
        let obj = input
            .as_object()
            .ok_or_else(|| invalid("with", "the inputs must be a map"))?;
        let since = time_input(obj, "since")?.ok_or_else(|| invalid("since", "is required"))?;
        let until = time_input(obj, "until")?;
        if let Some(u) = &until {
            let (s, e) = (
                DateTime::parse_from_rfc3339(&since),
                DateTime::parse_from_rfc3339(u),
            );
            if let (Ok(s), Ok(e)) = (s, e) {
                if e < s {
                    return Err(invalid("until", format!("{u} is before `since` ({since})")));
                }
            }
        }
        Ok(SnapshotInput { user, since, until })
    }

    fn key(&self, action: &str) -> String {
        format!(
            "{action}\n{}\n{}\n{}",
            self.user,
            self.since,
            self.until.as_deref().unwrap_or("")
        )
    }
}

fn not_found() -> Value {
    json!({"found": false, "target": null, "already": false})
}

/// The registry's constructor: one `entra` instance from its settings map.
pub fn build(
    name: &str,
    map: &Map<String, Value>,
    base_dir: &std::path::Path,
    redactor: &Redactor,
) -> Result<std::sync::Arc<dyn Connector>, Vec<ConfigError>> {
    let settings = Settings::new(name, map, EntraConnector::SETTINGS, base_dir, redactor);
    Ok(std::sync::Arc::new(EntraConnector::from_settings(
        settings,
    )?))
}

impl EntraConnector {
    /// The settings this type takes.
    pub const SETTINGS: &'static [&'static str] = &[
        "tenant_id",
        "client_id",
        "client_secret",
        "base_url",
        "token_url",
    ];

    /// Build from an instance's settings (pure apart from reading the secret).
    pub fn from_settings(mut s: Settings<'_>) -> Result<Self, Vec<ConfigError>> {
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
        let base_url = s.url_or("base_url", DEFAULT_BASE_URL);
        let token_template = s
            .string("token_url")
            .unwrap_or_else(|| DEFAULT_TOKEN_URL.to_string());
        let token_url = match &tenant_id {
            Some(t) if check_tenant_id(t).is_ok() => {
                let raw = tenant_token_url(&token_template, t);
                match Url::parse(&raw) {
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
        let (
            Some(tenant_id),
            Some(client_id),
            Some(client_secret),
            Some(base_url),
            Some(token_url),
        ) = (tenant_id, client_id, client_secret, base_url, token_url)
        else {
            // Every None above recorded an error, so finish() has returned already.
            return Err(vec![ConfigError::new(
                &instance,
                None,
                "incomplete settings",
            )]);
        };
        let config = EntraConfig {
            instance: instance.clone(),
            tenant_id,
            client_id,
            client_secret,
            base_url,
            token_url,
            timeout: DEFAULT_TIMEOUT,
            reports_limit: RateWindow::REPORTS,
        };
        EntraConnector::new(config, redactor).map_err(|e| {
            let setting = match &e {
                ClientBuildError::Url(_) => Some("base_url"),
                _ => None,
            };
            vec![ConfigError::new(&instance, setting, e.to_string())]
        })
    }

    /// Build from a complete configuration. No network I/O.
    pub fn new(config: EntraConfig, redactor: Redactor) -> Result<Self, ClientBuildError> {
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
        Ok(EntraConnector {
            instance: config.instance,
            base_url: config.base_url,
            client,
            credentials,
            reports: SlidingWindow::new(config.reports_limit),
        })
    }

    /// `{base_url}/v1.0/<segments…>`, each segment percent-encoded as a path segment.
    fn graph_url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("v1.0").extend(segments);
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

    /// A Graph error answer as a typed error naming Graph's code, message and request id.
    fn graph_error(&self, method: &Method, url: &Url, resp: &HttpResponse) -> ConnectorError {
        ms_error("Graph", self.client.redactor(), method, url, resp)
    }

    /// Find a user by object id, UPN, or (when the UPN lookup misses) mail.
    async fn find_user(
        &self,
        log: &RequestLog,
        user: &str,
    ) -> Result<Option<GraphUser>, ConnectorError> {
        let mut url = self.graph_url(&["users", user]);
        set_query(&mut url, &[("$select", USER_SELECT)]);
        let resp = self.send(log, RequestSpec::get(url.as_str())).await?;
        match resp.status.as_u16() {
            200..=299 => return resp.json::<GraphUser>().map(Some),
            404 => {}
            // Graph answers 400 "Invalid object identifier" to some strings that are not
            // UPNs; a GUID that does not exist is a 404.
            400 if !is_guid(user) && !user.contains('@') => return Ok(None),
            _ => return Err(self.graph_error(&Method::GET, &url, &resp)),
        }
        if is_guid(user) || !user.contains('@') {
            return Ok(None);
        }
        // An email that is not the UPN (j.smith@acme.com vs jsmith@acme.onmicrosoft.com).
        let mut url = self.graph_url(&["users"]);
        let filter = format!("mail eq {}", odata_string(user));
        set_query(&mut url, &[("$filter", &filter), ("$select", USER_SELECT)]);
        let resp = self.send(log, RequestSpec::get(url.as_str())).await?;
        match resp.status.as_u16() {
            200..=299 => {}
            404 => return Ok(None),
            _ => return Err(self.graph_error(&Method::GET, &url, &resp)),
        }
        let list: GraphList<GraphUser> = resp.json()?;
        match list.value.len() {
            0 => Ok(None),
            1 => Ok(list.value.into_iter().next()),
            n => Err(ConnectorError::Rejected {
                status: 409,
                message: format!(
                    "`user` {user}: {n} Entra users have this mail address; give the user principal name or object id"
                ),
            }),
        }
    }

    async fn get_user(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let user = user_input(call.input)?;
        let Some(u) = self.find_user(call.requests, &user).await? else {
            return Ok(json!({"found": false}));
        };
        let status = match u.account_enabled {
            Some(true) => "enabled",
            Some(false) => "disabled",
            None => "unknown",
        };
        Ok(json!({
            "found": true,
            "id": u.id,
            "email": u.mail.clone().or_else(|| u.user_principal_name.clone()),
            "user_principal_name": u.user_principal_name,
            "name": u.display_name,
            "account_enabled": u.account_enabled,
            "status": status,
        }))
    }

    async fn set_enabled(
        &self,
        call: &ActionCall<'_>,
        enabled: bool,
    ) -> Result<Value, ConnectorError> {
        let user = user_input(call.input)?;
        let Some(u) = self.find_user(call.requests, &user).await? else {
            return Ok(not_found());
        };
        if u.account_enabled == Some(enabled) {
            return Ok(json!({
                "found": true, "target": u.id, "already": true, "account_enabled": enabled,
            }));
        }
        let url = self.graph_url(&["users", &u.id]);
        let spec =
            RequestSpec::new(Method::PATCH, url.as_str()).json(json!({"accountEnabled": enabled}));
        let resp = self.send(call.requests, spec).await?;
        match resp.status.as_u16() {
            200..=299 => Ok(json!({
                "found": true, "target": u.id, "already": false, "account_enabled": enabled,
            })),
            // Deleted between the lookup and the update.
            404 => Ok(not_found()),
            _ => Err(self.graph_error(&Method::PATCH, &url, &resp)),
        }
    }

    async fn revoke_sessions(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let user = user_input(call.input)?;
        let Some(u) = self.find_user(call.requests, &user).await? else {
            return Ok(not_found());
        };
        let url = self.graph_url(&["users", &u.id, "revokeSignInSessions"]);
        // No body, but an explicit `Content-Length: 0`: front ends may answer a bodiless
        // POST without it with 411 Length Required, and hyper omits it for empty bodies.
        let spec = RequestSpec::post(url.as_str())
            .header("content-length", "0")
            .text("");
        let resp = self.send(call.requests, spec).await?;
        match resp.status.as_u16() {
            200..=299 => Ok(json!({
                "found": true, "target": u.id, "already": false, "revoked": true,
            })),
            404 => Ok(not_found()),
            _ => Err(self.graph_error(&Method::POST, &url, &resp)),
        }
    }

    async fn snapshot(
        &self,
        call: &ActionCall<'_>,
        kind: LogKind,
    ) -> Result<Value, ConnectorError> {
        let input = SnapshotInput::parse(call.input)?;
        let key = input.key(call.action);
        let progress = match call.resume.take::<SnapshotProgress>() {
            Some(p) if p.key == key => p,
            // Progress of other inputs is dropped unfinished (its file stays partial).
            _ => match self.start_snapshot(call, kind, &input, key).await? {
                Some(p) => p,
                None => {
                    let mut out = json!({"found": false, "target": null});
                    ipsummary::add_empty(&mut out);
                    return Ok(out);
                }
            },
        };
        self.page_through(call, progress).await
    }

    /// Resolve the user and open the artifact; None when the user does not exist.
    async fn start_snapshot(
        &self,
        call: &ActionCall<'_>,
        kind: LogKind,
        input: &SnapshotInput,
        key: String,
    ) -> Result<Option<SnapshotProgress>, ConnectorError> {
        let Some(u) = self.find_user(call.requests, &input.user).await? else {
            return Ok(None);
        };
        let until = input
            .until
            .clone()
            .unwrap_or_else(|| Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true));
        let filter = kind.filter(&u.id, &input.since, &until);
        let mut first = self.graph_url(&["auditLogs", kind.segment()]);
        set_query(&mut first, &[("$filter", &filter), ("$top", PAGE_SIZE)]);
        let meta = EvidenceMeta {
            connector_type: TYPE.name.to_string(),
            instance: self.instance.clone(),
            action: call.action.to_string(),
            extension: "jsonl".to_string(),
            media_type: "application/x-ndjson".to_string(),
            source: json!({
                "user": input.user,
                "user_id": u.id,
                "user_principal_name": u.user_principal_name,
                "since": input.since,
                "until": until,
                "endpoint": first.path(),
                "filter": filter,
            }),
        };
        let writer = call.evidence.create(meta).await.map_err(evidence_err)?;
        Ok(Some(SnapshotProgress {
            key,
            writer,
            next: first,
            target: u.id,
            pages: 0,
            records: 0,
            ips: IpCollector::new(kind.ip_fields()),
        }))
    }

    /// Fetch pages from `progress.next` to the end. A transient failure leaves the progress
    /// in the resume slot; any other failure drops the artifact unfinished.
    async fn page_through(
        &self,
        call: &ActionCall<'_>,
        mut p: SnapshotProgress,
    ) -> Result<Value, ConnectorError> {
        loop {
            self.reports.acquire().await;
            let page = match self.fetch_page(call.requests, &p.next).await {
                Ok(page) => page,
                Err(e) => {
                    if e.is_transient() {
                        call.resume.put(p);
                    }
                    return Err(e);
                }
            };
            let n = page.value.len() as u64;
            let mut buf = Vec::new();
            for record in &page.value {
                serde_json::to_writer(&mut buf, record)
                    .map_err(|e| ConnectorError::Other(format!("cannot encode a record: {e}")))?;
                buf.push(b'\n');
            }
            p.writer.write(&buf).await.map_err(evidence_err)?;
            for record in &page.value {
                p.ips.feed(record);
            }
            p.writer.add_records(n);
            p.records += n;
            p.pages += 1;
            match page.next_link {
                Some(link) => p.next = self.check_next_link(&link)?,
                None => break,
            }
        }
        let record = p.writer.finish().await.map_err(evidence_err)?;
        let mut out = json!({
            "found": true,
            "target": p.target,
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

    async fn fetch_page(&self, log: &RequestLog, url: &Url) -> Result<GraphPage, ConnectorError> {
        let resp = self.send(log, RequestSpec::get(url.as_str())).await?;
        if !resp.status.is_success() {
            return Err(self.graph_error(&Method::GET, url, &resp));
        }
        resp.json::<GraphPage>()
    }

    /// `@odata.nextLink` is followed unchanged, but only to the configured Graph origin:
    /// the bearer token must never be sent to a host the configuration did not name.
    fn check_next_link(&self, link: &str) -> Result<Url, ConnectorError> {
        let url = Url::parse(link).map_err(|e| {
            ConnectorError::Other(format!("Graph returned an unusable @odata.nextLink: {e}"))
        })?;
        if url.origin() != self.base_url.origin() {
            return Err(ConnectorError::Other(format!(
                "Graph returned an @odata.nextLink to {}, outside the configured base_url {}; refusing to send the token there",
                display_url(&url),
                display_url(&self.base_url)
            )));
        }
        Ok(url)
    }
}

#[async_trait]
impl Connector for EntraConnector {
    fn type_name(&self) -> &'static str {
        TYPE.name
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        match call.action {
            "get_user" => self.get_user(&call).await,
            "disable_user" => self.set_enabled(&call, false).await,
            "enable_user" => self.set_enabled(&call, true).await,
            "revoke_sessions" => self.revoke_sessions(&call).await,
            "snapshot_sign_ins" => self.snapshot(&call, LogKind::SignIns).await,
            "snapshot_directory_audits" => self.snapshot(&call, LogKind::DirectoryAudits).await,
            other => Err(ConnectorError::Other(format!(
                "connector type `entra` has no action `{other}`"
            ))),
        }
    }

    async fn prior_state(&self, call: ActionCall<'_>) -> Result<Option<Value>, ConnectorError> {
        match call.action {
            "disable_user" | "enable_user" | "revoke_sessions" => {}
            _ => return Ok(None),
        }
        let user = user_input(call.input)?;
        Ok(Some(match self.find_user(call.requests, &user).await? {
            None => json!({"found": false}),
            Some(u) => {
                let mut state = json!({
                    "found": true,
                    "id": u.id,
                    "user_principal_name": u.user_principal_name,
                    "account_enabled": u.account_enabled,
                    "sign_in_sessions_valid_from": u.sign_in_sessions_valid_from_date_time,
                });
                // Was the account already where this action takes it, before the run?
                match (call.action, u.account_enabled) {
                    ("disable_user", Some(enabled)) => state["already"] = json!(!enabled),
                    ("enable_user", Some(enabled)) => state["already"] = json!(enabled),
                    _ => {}
                }
                state
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intune::encode_query_component;

    #[test]
    fn guids_and_literals() {
        assert!(is_guid("6f2a1c3e-0b1d-4c5e-9f00-123456789abc"));
        assert!(!is_guid("j.smith@example.com"));
        assert!(!is_guid("6f2a1c3e-0b1d-4c5e-9f00-123456789abcd"));
        assert_eq!(odata_string("o'brien@x.com"), "'o''brien@x.com'");
        assert_eq!(
            encode_query_component("userId eq 'a+b' and t ge 2024-01-01T00:00:00Z"),
            "userId%20eq%20'a%2Bb'%20and%20t%20ge%202024-01-01T00:00:00Z"
        );
    }

    #[test]
    fn snapshot_inputs_name_the_field() {
        let field = |v: Value| match SnapshotInput::parse(&v) {
            Err(ConnectorError::InvalidInput { field, .. }) => field,
            Err(other) => panic!("expected InvalidInput, got {other:?}"),
            Ok(_) => panic!("expected an error for {v}"),
        };
        assert_eq!(field(json!({"since": "2024-01-01T00:00:00Z"})), "user");
        assert_eq!(field(json!({"user": "a@b.c"})), "since");
        assert_eq!(
            field(json!({"user": "a@b.c", "since": "yesterday"})),
            "since"
        );
        assert_eq!(
            field(json!({"user": "a@b.c", "since": "2024-01-01T00:00:00Z", "until": "soon"})),
            "until"
        );
        assert_eq!(
            field(
                json!({"user": "a@b.c", "since": "2024-02-01T00:00:00Z", "until": "2024-01-01T00:00:00Z"})
            ),
            "until"
        );
        assert_eq!(
            field(json!({"user": 5, "since": "2024-01-01T00:00:00Z"})),
            "user"
        );
        let ok =
            SnapshotInput::parse(&json!({"user": " a@b.c ", "since": "2024-01-01T02:00:00+02:00"}))
                .unwrap();
        assert_eq!(ok.user, "a@b.c");
        assert_eq!(ok.since, "2024-01-01T00:00:00Z");
        assert_eq!(ok.until, None);
    }

    #[tokio::test]
    async fn sliding_window_waits_for_the_oldest_request_to_age_out() {
        let per = Duration::from_millis(150);
        let w = SlidingWindow::new(RateWindow { requests: 5, per });
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            w.acquire().await;
        }
        assert!(start.elapsed() < per, "the first five go at once");
        w.acquire().await;
        let sixth = start.elapsed();
        assert!(sixth >= per, "the sixth waits a window: {sixth:?}");
        for _ in 0..4 {
            w.acquire().await;
        }
        assert!(
            start.elapsed() < per * 2,
            "the next four fit in the second window"
        );
        w.acquire().await;
        assert!(start.elapsed() >= per * 2, "the eleventh waits again");
    }

    #[test]
    fn graph_urls_keep_the_base_path_and_encode_segments() {
        let mut cfg = EntraConfig::with_defaults(
            "graph",
            "contoso.onmicrosoft.com",
            "app",
            SecretValue::new("x"),
        )
        .unwrap();
        cfg.base_url = Url::parse("http://127.0.0.1:9/entra/").unwrap();
        let c = EntraConnector::new(cfg, Redactor::new()).unwrap();
        assert_eq!(
            c.graph_url(&["users", "guest_x.com#EXT#@t.onmicrosoft.com"])
                .as_str(),
            "http://127.0.0.1:9/entra/v1.0/users/guest_x.com%23EXT%23@t.onmicrosoft.com"
        );
        assert!(c
            .check_next_link("http://127.0.0.1:9/entra/v1.0/x?$skiptoken=1")
            .is_ok());
        assert!(c
            .check_next_link("http://127.0.0.1:10/entra/v1.0/x")
            .is_err());
        assert!(c
            .check_next_link("https://evil.example.com/v1.0/x")
            .is_err());
    }
}
