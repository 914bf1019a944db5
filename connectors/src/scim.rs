//! The `scim` connector: deactivate, reactivate and look up a user at any SCIM 2.0 service
//! provider (RFC 7644 protocol, RFC 7643 `User` schema).
//!
//! # Settings
//! - `base_url` (required): the SCIM root, path included, e.g. `https://idp.example/scim/v2`.
//!   `https://` only, except loopback hosts (the sandbox, tests).
//! - `token` (required, a secret `{env: …}` / `{file: …}`): sent as `Authorization: Bearer`.
//!   SCIM does not fix an authentication scheme; bearer tokens are the norm.
//!
//! # Actions and the vendor calls each makes
//! Every request sends `Accept: application/scim+json`.
//! - `get_user {user}`: resolves the user (below) and reports `{found, id, login, email,
//!   name, external_id, active, status}`; an unknown user is `{found: false}`.
//! - `deactivate_user {user}` (undo: `activate_user`): resolves the user; when `active` is
//!   already `false` nothing more is sent and the output says `already: true`; otherwise
//!   `PATCH {base}/Users/{id}` with `Content-Type: application/scim+json` and the body
//!   `{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
//!   "Operations":[{"op":"replace","path":"active","value":false}]}` (RFC 7644 §3.5.2).
//!   A provider that refuses the `path` form with a 400 (`invalidPath`, `invalidSyntax`,
//!   `noTarget` or no `scimType`) is asked once more with the value-object form
//!   `{"op":"replace","value":{"active":false}}`, which some providers require. Success is
//!   `200` with the resource (its `active` must then say `false`) or `204 No Content`.
//! - `activate_user {user}` (undo: `deactivate_user`): the same with `active: true`.
//!
//! Mutations output `{found, target, already, active}`; an unknown user is
//! `{found: false, target: null, already: false}`, not an error. `prior_state` reads the
//! user: `{id, login, active, status}` or `{found: false}`.
//!
//! # Resolving `user`
//! SCIM ids are opaque strings chosen by the provider, so the shape of the input decides:
//! a value containing `@` is a login/email and is found with
//! `GET {base}/Users?filter=userName eq "<value>"` (the value written as a JSON string, as
//! RFC 7644 §3.4.2.2 defines `compValue`, so `"` and `\` are escaped); anything else is
//! first read as an id with `GET {base}/Users/{id}` and, on a 404, looked up as a
//! `userName` the same way (logins that are not emails). `userName` is case-insensitive
//! (RFC 7643 §4.1.1): the answer's `Resources` are matched again locally, so a provider that
//! ignores the filter cannot make us act on the wrong account; two matches are an error.
//!
//! # Errors
//! SCIM error bodies (`urn:ietf:params:scim:api:messages:2.0:Error`: `status`, `scimType`,
//! `detail`) are surfaced in the message as `SCIM error <status> <scimType>: <detail>`
//! (redacted, shortened). The status decides the variant as for every connector: 429 is
//! `RateLimited` with the provider's `Retry-After`, 5xx `Transient`, 401/403 `Auth` (the
//! token is static: there is nothing to refresh), other 4xx `Rejected`.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::http_client::{
    ClientBuildError, HttpClient, HttpClientConfig, HttpResponse, RequestSpec,
};
use crate::registry::{ConfigError, Settings};
use crate::secret::{Redactor, SecretValue};
use crate::{ActionCall, Connector, ConnectorError, RequestLog};

/// The SCIM media type (RFC 7644 §8.1).
pub const SCIM_MEDIA_TYPE: &str = "application/scim+json";
/// The PATCH request message schema (RFC 7644 §3.5.2).
pub const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// The error message schema (RFC 7644 §3.12).
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
/// The list response schema (RFC 7644 §3.4.2).
pub const LIST_RESPONSE_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";

/// How much of a SCIM error's `detail` is quoted.
const DETAIL_CHARS: usize = 300;

const USER_INPUT: &[FieldDecl] = &[FieldDecl {
    name: "user",
    ty: "string",
    required: true,
    description: "the user's userName (usually an email) or SCIM id",
}];

const MUTATION_OUTPUTS: &[FieldDecl] = &[
    FieldDecl {
        name: "found",
        ty: "boolean",
        required: true,
        description: "false when the provider has no such user (nothing was sent)",
    },
    FieldDecl {
        name: "target",
        ty: "string",
        required: true,
        description: "the user's SCIM id (null when not found)",
    },
    FieldDecl {
        name: "already",
        ty: "boolean",
        required: true,
        description: "true when the user was already in that state and nothing was sent",
    },
    FieldDecl {
        name: "active",
        ty: "boolean",
        required: false,
        description: "the user's `active` attribute afterwards",
    },
];

pub const TYPE: TypeDecl = TypeDecl {
    name: "scim",
    description: "Any SCIM 2.0 service provider (RFC 7644): deactivate or reactivate users",
    needs_instance: true,
    actions: &[
        ActionDecl {
            name: "deactivate_user",
            description: "Set the user's `active` attribute to false (PATCH replace)",
            inputs: USER_INPUT,
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: Some("activate_user"),
            secret_outputs: &[],
        },
        ActionDecl {
            name: "activate_user",
            description: "Set the user's `active` attribute to true (PATCH replace)",
            inputs: USER_INPUT,
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: Some("deactivate_user"),
            secret_outputs: &[],
        },
        ActionDecl {
            name: "get_user",
            description: "Look a user up by userName/email or SCIM id",
            inputs: USER_INPUT,
            outputs: &[
                FieldDecl {
                    name: "found",
                    ty: "boolean",
                    required: true,
                    description: "false when the provider has no such user",
                },
                FieldDecl {
                    name: "id",
                    ty: "string",
                    required: false,
                    description: "the SCIM id",
                },
                FieldDecl {
                    name: "login",
                    ty: "string",
                    required: false,
                    description: "userName",
                },
                FieldDecl {
                    name: "email",
                    ty: "string",
                    required: false,
                    description: "the primary (else first) email, else userName when it is one",
                },
                FieldDecl {
                    name: "name",
                    ty: "string",
                    required: false,
                    description: "name.formatted, else given and family names, else displayName",
                },
                FieldDecl {
                    name: "external_id",
                    ty: "string",
                    required: false,
                    description: "externalId, when the provider keeps one",
                },
                FieldDecl {
                    name: "active",
                    ty: "boolean",
                    required: false,
                    description: "the `active` attribute (null when the provider omits it)",
                },
                FieldDecl {
                    name: "status",
                    ty: "string",
                    required: false,
                    description: "ACTIVE, INACTIVE, or UNKNOWN when `active` is omitted",
                },
            ],
            effect: Effect::Lookup,
            undo: None,
            secret_outputs: &[],
        },
    ],
};

/// A configured `scim` instance.
#[derive(Debug, Clone)]
pub struct ScimConnector {
    instance: String,
    client: HttpClient,
    /// Prints as `[REDACTED]`.
    token: SecretValue,
}

/// A user as the provider reported it (the fields we act on).
#[derive(Debug, Clone, PartialEq)]
struct ScimUser {
    id: String,
    login: Option<String>,
    email: Option<String>,
    name: Option<String>,
    external_id: Option<String>,
    active: Option<bool>,
}

impl ScimUser {
    fn from_resource(v: &Value) -> Result<ScimUser, ConnectorError> {
        let id = v
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ConnectorError::Other(
                    "the SCIM provider returned a User resource without an `id`".to_string(),
                )
            })?;
        let s = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
        let login = s("userName");
        let emails = v.get("emails").and_then(Value::as_array);
        let email = emails
            .and_then(|list| {
                list.iter()
                    .find(|e| e.get("primary").and_then(Value::as_bool) == Some(true))
                    .or_else(|| list.first())
            })
            .and_then(|e| e.get("value"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| login.clone().filter(|l| l.contains('@')));
        let name_obj = v.get("name");
        let formatted = name_obj
            .and_then(|n| n.get("formatted"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let parts: Vec<&str> = ["givenName", "familyName"]
            .iter()
            .filter_map(|k| name_obj.and_then(|n| n.get(*k)).and_then(Value::as_str))
            .filter(|p| !p.is_empty())
            .collect();
        let name = formatted
            .or_else(|| (!parts.is_empty()).then(|| parts.join(" ")))
            .or_else(|| s("displayName"));
        Ok(ScimUser {
            id: id.to_string(),
            login,
            email,
            name,
            external_id: s("externalId"),
            active: active_value(v.get("active")),
        })
    }

    fn status(&self) -> &'static str {
        match self.active {
            Some(true) => "ACTIVE",
            Some(false) => "INACTIVE",
            None => "UNKNOWN",
        }
    }

    fn lookup_output(&self) -> Value {
        json!({
            "found": true,
            "id": self.id,
            "login": self.login,
            "email": self.email,
            "name": self.name,
            "external_id": self.external_id,
            "active": self.active,
            "status": self.status(),
        })
    }
}

/// `active` as a boolean; some providers write it as the string `"True"`/`"False"`.
fn active_value(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// The `filter` value that finds a user by `userName`: the value as a JSON string, which is
/// how RFC 7644 §3.4.2.2 writes `compValue` (quotes and backslashes escaped).
pub fn user_name_filter(user_name: &str) -> String {
    // Serialising a &str cannot fail; fall back to manual escaping all the same.
    let quoted = serde_json::to_string(user_name).unwrap_or_else(|_| {
        format!(
            "\"{}\"",
            user_name.replace('\\', "\\\\").replace('"', "\\\"")
        )
    });
    format!("userName eq {quoted}")
}

/// The PatchOp body that sets `active`, in the path form (`value_object: false`) or the
/// value-object form some providers require.
pub fn patch_active_body(active: bool, value_object: bool) -> Value {
    let op = if value_object {
        json!({"op": "replace", "value": {"active": active}})
    } else {
        json!({"op": "replace", "path": "active", "value": active})
    };
    json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [op]})
}

/// A parsed SCIM error body (RFC 7644 §3.12).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ScimErrorBody {
    status: Option<String>,
    scim_type: Option<String>,
    detail: Option<String>,
}

impl ScimErrorBody {
    /// The body as a SCIM error, when it is one (by schema, or by its `detail`/`scimType`).
    fn parse(body: &[u8]) -> Option<ScimErrorBody> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let obj = v.as_object()?;
        let has_schema = obj
            .get("schemas")
            .and_then(Value::as_array)
            .is_some_and(|s| s.iter().any(|x| x.as_str() == Some(ERROR_SCHEMA)));
        if !has_schema && !obj.contains_key("detail") && !obj.contains_key("scimType") {
            return None;
        }
        let text = |k: &str| match obj.get(k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            // `status` is a string in the RFC; some providers send a number.
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        Some(ScimErrorBody {
            status: text("status"),
            scim_type: text("scimType"),
            detail: text("detail"),
        })
    }
}

/// The same error with its message replaced (the variant, status and retry-after kept).
fn with_message(e: ConnectorError, message: String) -> ConnectorError {
    match e {
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
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidInput {
        field: field.to_string(),
        message: message.into(),
    }
}

/// The `user` input, trimmed and non-empty.
fn user_input(input: &Value) -> Result<String, ConnectorError> {
    let obj = input
        .as_object()
        .ok_or_else(|| invalid("with", "the inputs must be a map with `user`"))?;
    if let Some(unknown) = obj.keys().find(|k| k.as_str() != "user") {
        return Err(invalid(
            unknown,
            "not an input of scim actions (only `user`)",
        ));
    }
    match obj.get("user") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Some(_) => Err(invalid(
            "user",
            "must be a non-empty string (userName/email or SCIM id)",
        )),
        None => Err(invalid("user", "is required")),
    }
}

/// The registry's constructor for `type: scim` instances.
pub fn build(
    name: &str,
    map: &Map<String, Value>,
    base_dir: &Path,
    redactor: &Redactor,
) -> Result<Arc<dyn Connector>, Vec<ConfigError>> {
    let settings = Settings::new(name, map, ScimConnector::SETTINGS, base_dir, redactor);
    Ok(Arc::new(ScimConnector::from_settings(settings)?))
}

impl ScimConnector {
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
            // `finish` reports a missing or bad setting; this is only reached if it did not.
            return Err(vec![ConfigError::new(
                &instance,
                None,
                "`base_url` and `token` are required",
            )]);
        };
        let mut config = HttpClientConfig::new(&instance);
        config.base_url = Some(base_url);
        let client = HttpClient::new(config, redactor).map_err(|e| {
            let setting = match &e {
                ClientBuildError::Url(_) => Some("base_url"),
                ClientBuildError::Header { .. } | ClientBuildError::Build { .. } => None,
            };
            vec![ConfigError::new(&instance, setting, e.to_string())]
        })?;
        Ok(ScimConnector {
            instance,
            client,
            token,
        })
    }

    /// An instance around an existing client (tests, embedding).
    pub fn with_client(client: HttpClient, token: SecretValue) -> Self {
        ScimConnector {
            instance: client.instance().to_string(),
            client,
            token,
        }
    }

    fn spec(&self, method: Method, url: String) -> RequestSpec {
        RequestSpec::new(method, url)
            .auth("Bearer", &self.token)
            .header("Accept", SCIM_MEDIA_TYPE)
    }

    /// `{base}/Users/{id}` with the id escaped as one path segment.
    fn user_url(&self, id: &str) -> Result<String, ConnectorError> {
        let mut url = self.client.resolve_url("Users")?;
        url.path_segments_mut()
            .map_err(|_| {
                ConnectorError::Config(format!(
                    "connector `{}`: `base_url` cannot take a path",
                    self.instance
                ))
            })?
            .pop_if_empty()
            .push(id);
        Ok(url.to_string())
    }

    /// Map a non-2xx answer to its typed error, naming the SCIM error's `scimType` and
    /// `detail` when the body is one.
    fn error(&self, method: &Method, url: &str, resp: &HttpResponse) -> ConnectorError {
        let parsed = url::Url::parse(url).ok();
        let base = match parsed.as_ref() {
            Some(u) => self.client.error_for_status(method, u, resp),
            None => Err(ConnectorError::Other(format!("{method} → {}", resp.status))),
        };
        let e = match base {
            Ok(()) => {
                return ConnectorError::Other(format!(
                    "{method}: unexpected answer {}",
                    resp.status
                ))
            }
            Err(e) => e,
        };
        let Some(body) = ScimErrorBody::parse(&resp.body) else {
            return e;
        };
        let redactor = self.client.redactor();
        let path = parsed
            .as_ref()
            .map(|u| redactor.redact_str(u.path()))
            .unwrap_or_default();
        let mut message = format!(
            "{method} {path} → {}: SCIM error {}",
            resp.status.as_u16(),
            body.status
                .as_deref()
                .unwrap_or_else(|| resp.status.as_str())
        );
        if let Some(t) = &body.scim_type {
            message.push_str(&format!(" {}", redactor.redact_str(t)));
        }
        if let Some(d) = &body.detail {
            let d = redactor.redact_str(d);
            let d = d.split_whitespace().collect::<Vec<_>>().join(" ");
            let mut short: String = d.chars().take(DETAIL_CHARS).collect();
            if d.chars().count() > DETAIL_CHARS {
                short.push('…');
            }
            message.push_str(&format!(": {short}"));
        }
        with_message(e, message)
    }

    /// Send and map a non-2xx answer through [`ScimConnector::error`].
    async fn send(
        &self,
        spec: RequestSpec,
        log: &RequestLog,
    ) -> Result<HttpResponse, ConnectorError> {
        let method = spec.method.clone();
        let url = spec.url.clone();
        let resp = self.client.send_raw(spec, log).await?;
        if resp.status.is_success() {
            Ok(resp)
        } else {
            Err(self.error(&method, &url, &resp))
        }
    }

    /// `GET /Users/{id}`: the user, or None on 404.
    async fn get_by_id(
        &self,
        id: &str,
        log: &RequestLog,
    ) -> Result<Option<ScimUser>, ConnectorError> {
        let url = self.user_url(id)?;
        let resp = self
            .client
            .send_raw(self.spec(Method::GET, url.clone()), log)
            .await?;
        if resp.status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status.is_success() {
            return Err(self.error(&Method::GET, &url, &resp));
        }
        let v: Value = resp.json()?;
        ScimUser::from_resource(&v).map(Some)
    }

    /// `GET /Users?filter=userName eq "…"`: the one user whose userName matches.
    async fn find_by_user_name(
        &self,
        user_name: &str,
        log: &RequestLog,
    ) -> Result<Option<ScimUser>, ConnectorError> {
        let url = self.client.resolve_url("Users")?.to_string();
        let spec = self
            .spec(Method::GET, url)
            .query("filter", user_name_filter(user_name));
        let resp = self.send(spec, log).await?;
        let v: Value = resp.json()?;
        let resources = match v.get("Resources") {
            Some(Value::Array(list)) => list.as_slice(),
            // RFC 7644 §3.4.2: `Resources` may be omitted when `totalResults` is 0.
            None | Some(Value::Null) => &[],
            Some(_) => {
                return Err(ConnectorError::Other(
                    "the SCIM provider's ListResponse has a `Resources` that is not a list"
                        .to_string(),
                ))
            }
        };
        let mut matches = Vec::new();
        for r in resources {
            let same = r
                .get("userName")
                .and_then(Value::as_str)
                .is_some_and(|n| n.eq_ignore_ascii_case(user_name));
            if same {
                matches.push(ScimUser::from_resource(r)?);
            }
        }
        match matches.len() {
            0 | 1 => Ok(matches.pop()),
            n => Err(ConnectorError::Other(format!(
                "the SCIM provider has {n} users with this userName ({}); refusing to guess",
                matches
                    .iter()
                    .map(|u| u.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Find the user named by the `user` input (see the module docs).
    async fn resolve(
        &self,
        user: &str,
        log: &RequestLog,
    ) -> Result<Option<ScimUser>, ConnectorError> {
        if user.contains('@') {
            return self.find_by_user_name(user, log).await;
        }
        match self.get_by_id(user, log).await? {
            Some(u) => Ok(Some(u)),
            None => self.find_by_user_name(user, log).await,
        }
    }

    /// PATCH `active`, with one fallback to the value-object form (see the module docs).
    async fn patch_active(
        &self,
        id: &str,
        active: bool,
        log: &RequestLog,
    ) -> Result<Option<ScimUser>, ConnectorError> {
        let url = self.user_url(id)?;
        let patch = |value_object: bool| {
            self.spec(Method::PATCH, url.clone())
                .header("Content-Type", SCIM_MEDIA_TYPE)
                .json(patch_active_body(active, value_object))
        };
        let resp = self.client.send_raw(patch(false), log).await?;
        let resp = if resp.status == reqwest::StatusCode::BAD_REQUEST
            && wants_value_object_form(&resp.body)
        {
            let first = self.error(&Method::PATCH, &url, &resp);
            let second = self.client.send_raw(patch(true), log).await?;
            if !second.status.is_success() {
                let again = self.error(&Method::PATCH, &url, &second);
                let message = format!(
                    "{}; the value-object form was refused too: {}",
                    message_of(&first),
                    message_of(&again)
                );
                return Err(with_message(again, message));
            }
            second
        } else if !resp.status.is_success() {
            return Err(self.error(&Method::PATCH, &url, &resp));
        } else {
            resp
        };
        if resp.status == reqwest::StatusCode::NO_CONTENT || resp.body.is_empty() {
            return Ok(None);
        }
        let v: Value = resp.json()?;
        let user = ScimUser::from_resource(&v)?;
        if user.active.is_some_and(|a| a != active) {
            // A provider that answers 200 without applying the change must not be reported
            // as having deactivated anyone.
            return Err(ConnectorError::Other(format!(
                "the SCIM provider answered {} to PATCH active={active} but user `{}` still has active={}",
                resp.status.as_u16(),
                user.id,
                !active
            )));
        }
        Ok(Some(user))
    }

    async fn set_active(
        &self,
        call: &ActionCall<'_>,
        active: bool,
    ) -> Result<Value, ConnectorError> {
        let user = user_input(call.input)?;
        let Some(found) = self.resolve(&user, call.requests).await? else {
            return Ok(json!({"found": false, "target": null, "already": false}));
        };
        if found.active == Some(active) {
            return Ok(json!({
                "found": true, "target": found.id, "already": true, "active": active,
            }));
        }
        self.patch_active(&found.id, active, call.requests).await?;
        Ok(json!({"found": true, "target": found.id, "already": false, "active": active}))
    }
}

/// True for a 400 whose SCIM error suggests the provider wants the value-object form:
/// `invalidPath`, `invalidSyntax`, `noTarget`, or no `scimType` at all.
fn wants_value_object_form(body: &[u8]) -> bool {
    match ScimErrorBody::parse(body) {
        Some(e) => match e.scim_type.as_deref() {
            None => true,
            Some(t) => matches!(t, "invalidPath" | "invalidSyntax" | "noTarget"),
        },
        // A bare 400 without a SCIM body: worth the one alternative form.
        None => true,
    }
}

/// An error's own message, without the variant's prefix.
fn message_of(e: &ConnectorError) -> String {
    match e {
        ConnectorError::RateLimited { message, .. }
        | ConnectorError::Transient { message, .. }
        | ConnectorError::Auth { message, .. }
        | ConnectorError::Rejected { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

#[async_trait]
impl Connector for ScimConnector {
    fn type_name(&self) -> &'static str {
        TYPE.name
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        match call.action {
            "deactivate_user" => self.set_active(&call, false).await,
            "activate_user" => self.set_active(&call, true).await,
            "get_user" => {
                let user = user_input(call.input)?;
                Ok(match self.resolve(&user, call.requests).await? {
                    Some(u) => u.lookup_output(),
                    None => json!({"found": false}),
                })
            }
            other => Err(ConnectorError::Other(format!(
                "connector type `scim` has no action `{other}`"
            ))),
        }
    }

    async fn prior_state(&self, call: ActionCall<'_>) -> Result<Option<Value>, ConnectorError> {
        match call.action {
            "deactivate_user" | "activate_user" => {
                let user = user_input(call.input)?;
                Ok(Some(match self.resolve(&user, call.requests).await? {
                    Some(u) => {
                        let mut state = json!({
                            "id": u.id, "login": u.login, "active": u.active, "status": u.status(),
                        });
                        // Was the user already where this action takes them, before the run?
                        match (call.action, u.active) {
                            ("deactivate_user", Some(active)) => state["already"] = json!(!active),
                            ("activate_user", Some(active)) => state["already"] = json!(active),
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

    #[test]
    fn filter_escapes_quotes_and_backslashes() {
        assert_eq!(
            user_name_filter("j.smith@example.com"),
            r#"userName eq "j.smith@example.com""#
        );
        assert_eq!(
            user_name_filter(r#"a"b\c@example.com"#),
            r#"userName eq "a\"b\\c@example.com""#
        );
    }

    #[test]
    fn patch_bodies_in_both_forms() {
        assert_eq!(
            patch_active_body(false, false),
            json!({"schemas": [PATCH_OP_SCHEMA],
                   "Operations": [{"op": "replace", "path": "active", "value": false}]})
        );
        assert_eq!(
            patch_active_body(true, true),
            json!({"schemas": [PATCH_OP_SCHEMA],
                   "Operations": [{"op": "replace", "value": {"active": true}}]})
        );
    }

    #[test]
    fn parses_users_leniently() {
        let u = ScimUser::from_resource(&json!({
            "id": "2819c223", "userName": "J.Smith@example.com", "active": "False",
            "name": {"givenName": "John", "familyName": "Smith"},
            "emails": [{"value": "work@example.com"}, {"value": "p@example.com", "primary": true}],
        }))
        .unwrap();
        assert_eq!(u.active, Some(false));
        assert_eq!(u.status(), "INACTIVE");
        assert_eq!(u.email.as_deref(), Some("p@example.com"));
        assert_eq!(u.name.as_deref(), Some("John Smith"));
        let u = ScimUser::from_resource(&json!({"id": "x", "userName": "a@b.c",
            "displayName": "A B"}))
        .unwrap();
        assert_eq!(u.email.as_deref(), Some("a@b.c"));
        assert_eq!(u.name.as_deref(), Some("A B"));
        assert_eq!(u.status(), "UNKNOWN");
        assert!(ScimUser::from_resource(&json!({"userName": "a"})).is_err());
    }

    #[test]
    fn scim_error_bodies() {
        let e = ScimErrorBody::parse(
            br#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"400","scimType":"invalidPath","detail":"no"}"#,
        )
        .unwrap();
        assert_eq!(e.scim_type.as_deref(), Some("invalidPath"));
        assert_eq!(e.status.as_deref(), Some("400"));
        assert!(ScimErrorBody::parse(br#"{"error":"x"}"#).is_none());
        assert!(ScimErrorBody::parse(b"<html>").is_none());
        assert!(wants_value_object_form(br#"{"scimType":"noTarget"}"#));
        assert!(!wants_value_object_form(br#"{"scimType":"invalidValue"}"#));
        assert!(wants_value_object_form(b""));
    }

    #[test]
    fn user_input_is_checked() {
        let field = |v: Value| match user_input(&v) {
            Err(ConnectorError::InvalidInput { field, .. }) => field,
            other => panic!("expected InvalidInput, got {other:?}"),
        };
        assert_eq!(field(json!({})), "user");
        assert_eq!(field(json!({"user": "  "})), "user");
        assert_eq!(field(json!({"user": 5})), "user");
        assert_eq!(field(json!({"user": "a", "usr": "b"})), "usr");
        assert_eq!(field(json!("a")), "with");
        assert_eq!(user_input(&json!({"user": " a@b "})).unwrap(), "a@b");
    }
}
