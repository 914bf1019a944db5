//! The `kandji` connector: Kandji's API with an API token.
//!
//! Settings (`connectors.<name>` with `type: kandji`):
//! - `base_url` (required): the tenant's API root, e.g. `https://acme.api.kandji.io` (EU:
//!   `https://acme.api.eu.kandji.io`); calls add `/api/v1/…`.
//! - `token` (required, a secret `{env: …}`/`{file: …}`): an API token, sent as
//!   `Authorization: Bearer <token>`. Kandji tokens cannot be refreshed, so a 401 is final.
//!
//! Actions, and the vendor calls each makes (every request sends `Accept: application/json`):
//! - `find_device`: resolves `device` → `{found, id, serial, name, owner, os, last_seen,
//!   model}`. A Kandji device id (a UUID) is read with `GET /api/v1/devices/{id}` (404:
//!   not found); anything else is a serial, `GET /api/v1/devices?serial_number=<serial>`.
//!   Kandji matches serials partially and may answer one object rather than an array, so
//!   the answer is re-checked for an exact (case-insensitive) serial on our side.
//! - `lock_device`: resolves the device, then `POST /api/v1/devices/{id}/action/lock` (with
//!   `{"Message", "PhoneNumber"}` only when given). 200 carries the macOS unlock PIN
//!   (`{"PIN": "…"}`), returned as the secret output `pin`. Kandji's 400 "Command already
//!   running" (a lock is pending) and 400 "This device is already locked." both mean
//!   `already: true`; the PIN is then re-read, best effort, from
//!   `GET /api/v1/devices/{id}/secrets/unlockpin`. No undo: Kandji has no remote unlock.
//!   Kandji offers no read of the lock state, so `prior_state` reports the device and
//!   `already: false`.
//!
//! Errors name Kandji's message (`detail`/`message`/`error`, or the text body). A 429 (10,000
//! requests per hour per customer) is `RateLimited` with any `Retry-After`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Map, Value};
use url::Url;

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::http_client::{
    display_url, retry_after, ClientBuildError, HttpClient, HttpClientConfig, HttpResponse,
    RequestSpec,
};
use crate::registry::{ConfigError, Settings};
use crate::secret::{Redactor, SecretValue};
use crate::{ActionCall, Connector, ConnectorError, RequestLog};

/// Bound on one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const DEVICE_INPUT: FieldDecl = FieldDecl {
    name: "device",
    ty: "string",
    required: true,
    description: "the device's serial number, or its Kandji device id (a UUID)",
};

pub const TYPE: TypeDecl = TypeDecl {
    name: "kandji",
    description: "Kandji API (API token)",
    needs_instance: true,
    actions: &[
        ActionDecl {
            name: "find_device",
            description: "Look a device up by serial number or Kandji device id",
            inputs: &[DEVICE_INPUT],
            outputs: &[
                FieldDecl {
                    name: "found",
                    ty: "boolean",
                    required: true,
                    description: "false when Kandji has no such device",
                },
                FieldDecl {
                    name: "id",
                    ty: "string",
                    required: false,
                    description: "Kandji device_id",
                },
                FieldDecl {
                    name: "serial",
                    ty: "string",
                    required: false,
                    description: "serial_number",
                },
                FieldDecl {
                    name: "name",
                    ty: "string",
                    required: false,
                    description: "device_name",
                },
                FieldDecl {
                    name: "owner",
                    ty: "string",
                    required: false,
                    description: "the assigned user's email, else name",
                },
                FieldDecl {
                    name: "os",
                    ty: "string",
                    required: false,
                    description: "platform and os_version",
                },
                FieldDecl {
                    name: "last_seen",
                    ty: "string",
                    required: false,
                    description: "last_check_in",
                },
                FieldDecl {
                    name: "model",
                    ty: "string",
                    required: false,
                    description: "model",
                },
            ],
            effect: Effect::Lookup,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "lock_device",
            description: "MDM-lock the device (macOS answers with a 6-digit unlock PIN)",
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
                    description: "shown on the locked screen (Apple silicon)",
                },
            ],
            outputs: &[
                FieldDecl {
                    name: "found",
                    ty: "boolean",
                    required: true,
                    description: "false when Kandji has no such device (nothing was sent)",
                },
                FieldDecl {
                    name: "target",
                    ty: "string",
                    required: true,
                    description: "the Kandji device id (null when not found)",
                },
                FieldDecl {
                    name: "already",
                    ty: "boolean",
                    required: true,
                    description: "a lock was already pending or in place",
                },
                FieldDecl {
                    name: "pin",
                    ty: "string",
                    required: false,
                    description: "the unlock PIN (secret)",
                },
            ],
            effect: Effect::Mutation,
            undo: None,
            secret_outputs: &["pin"],
        },
    ],
};

/// What the connector needs besides the redactor.
#[derive(Debug, Clone)]
pub struct KandjiConfig {
    pub instance: String,
    pub base_url: Url,
    pub token: SecretValue,
    pub timeout: Duration,
}

/// A configured `kandji` instance.
pub struct KandjiConnector {
    instance: String,
    base_url: Url,
    token: SecretValue,
    client: HttpClient,
}

impl fmt::Debug for KandjiConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KandjiConnector")
            .field("instance", &self.instance)
            .field("base_url", &display_url(&self.base_url))
            .field("token", &self.token)
            .finish()
    }
}

#[derive(Debug, Clone)]
struct Device {
    id: String,
    serial: Option<String>,
    record: Value,
}

impl Device {
    fn from_record(r: &Value) -> Option<Device> {
        let id = r.get("device_id")?.as_str()?.to_string();
        Some(Device {
            id,
            serial: r
                .get("serial_number")
                .and_then(Value::as_str)
                .map(str::to_string),
            record: r.clone(),
        })
    }

    fn to_json(&self) -> Value {
        let r = &self.record;
        let s = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        // `user` is an object when a user is assigned, else an empty string.
        let owner = r.get("user").and_then(|u| {
            u.get("email")
                .or_else(|| u.get("name"))
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        });
        let os = match (s("platform"), s("os_version")) {
            (Some(p), Some(v)) => Some(format!("{p} {v}")),
            (p, v) => p.or(v),
        };
        json!({
            "found": true,
            "id": self.id,
            "serial": self.serial,
            "name": s("device_name"),
            "owner": owner,
            "os": os,
            "last_seen": s("last_check_in"),
            "model": s("model"),
        })
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidInput {
        field: field.to_string(),
        message: message.into(),
    }
}

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
                    "is not a serial number or Kandji device id (letters, digits, `-`, `_`, `.` only)",
                ))
            } else {
                Ok(s.to_string())
            }
        }
        Some(_) => Err(invalid(
            "device",
            "must be a string (a serial number or Kandji device id)",
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

/// Kandji device ids are UUIDs (8-4-4-4-12 hex).
fn is_device_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Kandji's message from an error body: `detail`, `message` or `error`, a JSON string, or
/// the text itself.
fn kandji_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let from_json = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| match v {
            Value::String(s) => Some(s),
            Value::Object(o) => ["detail", "message", "error"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_str).map(str::to_string)),
            Value::Array(a) => a.first().and_then(Value::as_str).map(str::to_string),
            _ => None,
        });
    let msg = from_json.unwrap_or_else(|| text.trim().to_string());
    let collapsed = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.chars().take(240).collect()
}

/// The registry's constructor: one `kandji` instance from its settings map.
pub fn build(
    name: &str,
    map: &Map<String, Value>,
    base_dir: &std::path::Path,
    redactor: &Redactor,
) -> Result<std::sync::Arc<dyn Connector>, Vec<ConfigError>> {
    let settings = Settings::new(name, map, KandjiConnector::SETTINGS, base_dir, redactor);
    Ok(std::sync::Arc::new(KandjiConnector::from_settings(
        settings,
    )?))
}

impl KandjiConnector {
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
            return Err(vec![ConfigError::new(
                &instance,
                None,
                "incomplete settings",
            )]);
        };
        let config = KandjiConfig {
            instance: instance.clone(),
            base_url,
            token,
            timeout: REQUEST_TIMEOUT,
        };
        KandjiConnector::new(config, redactor).map_err(|e| {
            let setting = match &e {
                ClientBuildError::Url(_) => Some("base_url"),
                _ => None,
            };
            vec![ConfigError::new(&instance, setting, e.to_string())]
        })
    }

    /// Build from a complete configuration. No network I/O.
    pub fn new(config: KandjiConfig, redactor: Redactor) -> Result<Self, ClientBuildError> {
        redactor.register(config.token.expose());
        let mut http = HttpClientConfig::new(&config.instance);
        http.base_url = Some(config.base_url.clone());
        http.timeout = config.timeout;
        let client = HttpClient::new(http, redactor)?;
        Ok(KandjiConnector {
            instance: config.instance,
            base_url: config.base_url,
            token: config.token,
            client,
        })
    }

    fn api_url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn send(
        &self,
        log: &RequestLog,
        spec: RequestSpec,
    ) -> Result<HttpResponse, ConnectorError> {
        self.client
            .send_raw(
                spec.header("accept", "application/json")
                    .auth("Bearer", &self.token),
                log,
            )
            .await
    }

    fn kandji_error(&self, method: &Method, url: &Url, resp: &HttpResponse) -> ConnectorError {
        let status = resp.status.as_u16();
        let redactor = self.client.redactor();
        let detail = redactor.redact_str(&kandji_message(&resp.body));
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        let message = format!(
            "Kandji {method} {} → {}{detail}",
            redactor.redact_str(url.path()),
            resp.status
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

    /// Resolve `device` to one device; None when Kandji has none.
    async fn resolve(
        &self,
        log: &RequestLog,
        device: &str,
    ) -> Result<Option<Device>, ConnectorError> {
        if is_device_id(device) {
            let url = self.api_url(&["api", "v1", "devices", device]);
            let resp = self.send(log, RequestSpec::get(url.as_str())).await?;
            return match resp.status.as_u16() {
                200..=299 => Ok(Device::from_record(&resp.json::<Value>()?)),
                404 => Ok(None),
                _ => Err(self.kandji_error(&Method::GET, &url, &resp)),
            };
        }
        let url = self.api_url(&["api", "v1", "devices"]);
        let resp = self
            .send(
                log,
                RequestSpec::get(url.as_str()).query("serial_number", device),
            )
            .await?;
        if !resp.status.is_success() {
            return Err(self.kandji_error(&Method::GET, &url, &resp));
        }
        let body: Value = resp.json()?;
        let records: Vec<Value> = match body {
            Value::Array(a) => a,
            Value::Object(_) => vec![body],
            _ => Vec::new(),
        };
        // Kandji matches serials partially: keep only the exact one.
        let matches: Vec<Device> = records
            .iter()
            .filter_map(Device::from_record)
            .filter(|d| {
                d.serial
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case(device))
            })
            .collect();
        match matches.len() {
            0 => Ok(None),
            1 => Ok(matches.into_iter().next()),
            n => Err(ConnectorError::Other(format!(
                "Kandji has {n} devices with serial `{device}`; refusing to pick one"
            ))),
        }
    }

    async fn find_device(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let device = device_input(call.input)?;
        Ok(match self.resolve(call.requests, &device).await? {
            Some(d) => d.to_json(),
            None => json!({"found": false}),
        })
    }

    /// The PIN of a lock already sent, read again; None when Kandji will not say.
    async fn reread_pin(&self, log: &RequestLog, id: &str) -> Option<String> {
        let url = self.api_url(&["api", "v1", "devices", id, "secrets", "unlockpin"]);
        let resp = self.send(log, RequestSpec::get(url.as_str())).await.ok()?;
        if !resp.status.is_success() {
            return None;
        }
        let v: Value = resp.json().ok()?;
        ["pin", "PIN"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str))
            .filter(|p| !p.is_empty())
            .map(str::to_string)
    }

    async fn lock_device(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let device = device_input(call.input)?;
        let message = optional_string(call.input, "message")?;
        let phone = optional_string(call.input, "phone_number")?;
        let Some(d) = self.resolve(call.requests, &device).await? else {
            return Ok(json!({"found": false, "target": null, "already": false}));
        };
        let url = self.api_url(&["api", "v1", "devices", &d.id, "action", "lock"]);
        let mut spec = RequestSpec::post(url.as_str());
        if message.is_some() || phone.is_some() {
            let mut body = json!({});
            if let Some(m) = message {
                body["Message"] = json!(m);
            }
            if let Some(p) = phone {
                body["PhoneNumber"] = json!(p);
            }
            spec = spec.json(body);
        }
        let resp = self.send(call.requests, spec).await?;
        if resp.status.is_success() {
            let pin = resp
                .json::<Value>()
                .ok()
                .and_then(|v| v.get("PIN").and_then(Value::as_str).map(str::to_string));
            let mut out = json!({"found": true, "target": d.id, "already": false});
            // A declared secret output: the engine keeps it for admins only.
            if let Some(p) = pin {
                out["pin"] = json!(p);
            }
            return Ok(out);
        }
        if resp.status.as_u16() == 400 {
            let msg = kandji_message(&resp.body).to_ascii_lowercase();
            if msg.contains("command already running") || msg.contains("already locked") {
                let mut out = json!({"found": true, "target": d.id, "already": true});
                if let Some(p) = self.reread_pin(call.requests, &d.id).await {
                    out["pin"] = json!(p);
                }
                return Ok(out);
            }
        }
        Err(self.kandji_error(&Method::POST, &url, &resp))
    }
}

#[async_trait]
impl Connector for KandjiConnector {
    fn type_name(&self) -> &'static str {
        TYPE.name
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        match call.action {
            "find_device" => self.find_device(&call).await,
            "lock_device" => self.lock_device(&call).await,
            other => Err(ConnectorError::Other(format!(
                "connector type `kandji` has no action `{other}`"
            ))),
        }
    }

    async fn prior_state(&self, call: ActionCall<'_>) -> Result<Option<Value>, ConnectorError> {
        if call.action != "lock_device" {
            return Ok(None);
        }
        let device = device_input(call.input)?;
        Ok(Some(match self.resolve(call.requests, &device).await? {
            None => json!({"found": false}),
            Some(d) => json!({
                "found": true,
                "id": d.id,
                "serial": d.serial,
                // Kandji offers no read of the lock state.
                "already": false,
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_uuids() {
        assert!(is_device_id("1be9a4e6-5c3d-4b1a-9f0e-0a1b2c3d4e5f"));
        assert!(!is_device_id("C02DEMO0001"));
        assert!(!is_device_id("1be9a4e6-5c3d-4b1a-9f0e-0a1b2c3d4e5"));
    }

    #[test]
    fn messages_come_from_any_body_shape() {
        assert_eq!(
            kandji_message(br#""Command already running""#),
            "Command already running"
        );
        assert_eq!(
            kandji_message(br#"{"detail": "This device is already locked."}"#),
            "This device is already locked."
        );
        assert_eq!(kandji_message(b"plain  text\n"), "plain text");
    }

    #[test]
    fn owner_and_os_come_from_the_record() {
        let d = Device::from_record(&json!({
            "device_id": "x", "serial_number": "S", "device_name": "n", "platform": "Mac",
            "os_version": "14.5", "user": {"email": "j@x", "name": "J"}
        }))
        .unwrap();
        let j = d.to_json();
        assert_eq!(
            (j["owner"].as_str(), j["os"].as_str()),
            (Some("j@x"), Some("Mac 14.5"))
        );
        let d = Device::from_record(&json!({"device_id": "y", "user": ""})).unwrap();
        assert_eq!(d.to_json()["owner"], Value::Null);
    }
}
