//! A stateful imitation of the CrowdStrike Falcon endpoints the `crowdstrike` connector
//! calls, mounted by [`super::Sandbox::router`] under `/crowdstrike` (configure the connector
//! with `base_url: http://127.0.0.1:PORT/crowdstrike`, `client_id: `[`SANDBOX_CLIENT_ID`] and
//! a secret file holding [`SANDBOX_CLIENT_SECRET`]).
//!
//! Faithful where it matters to the connector: `POST /oauth2/token` (form `client_id`,
//! `client_secret`; 201 with a bearer token, 403 otherwise), `Authorization: Bearer` on every
//! other route (401 with Falcon's `{meta, resources, errors: [{code, message}]}` envelope),
//! the FQL `serial_number:'…'` query, device details for repeated `ids`, containment actions
//! answering per host (a host already in that state is an `errors[]` entry with `code: 409`,
//! and the whole answer is 409 when no host changed), and throttling (429 with
//! `X-RateLimit-RetryAfter` as an epoch time) on demand.
//!
//! Seeded with `C02DEMO0001` and `C02DEMO0002` (last user `j.smith@example.com`) and
//! `C02BREAKGLASS` (`admin@example.com`), all `normal`. Containment takes effect at once.

use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

/// The API client id the sandbox accepts.
pub const SANDBOX_CLIENT_ID: &str = "cordonsandboxclient0000000000001";
/// The API client secret the sandbox accepts.
pub const SANDBOX_CLIENT_SECRET: &str = "cordon-sandbox-crowdstrike-secret";
/// The access token the sandbox issues (never configured: obtained at run time).
const ACCESS_TOKEN: &str = "cordon-sandbox-crowdstrike-access-token";
/// The seeded suspect laptop's agent id.
pub const SUSPECT_AID: &str = "5a1e0000000000000000000000000001";

#[derive(Debug, Clone)]
struct SbDevice {
    aid: String,
    serial: String,
    hostname: String,
    user: String,
    status: &'static str,
}

#[derive(Debug, Default)]
struct CsWorld {
    devices: Vec<SbDevice>,
    /// Mutating requests received, as `METHOD path?action_name=…` lines.
    calls: Vec<String>,
    /// Tokens issued.
    tokens_issued: u32,
    /// The next this many API requests are answered 429.
    throttle: u32,
}

/// The Falcon sandbox's state. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct CrowdStrikeSandbox {
    world: Arc<Mutex<CsWorld>>,
}

impl CrowdStrikeSandbox {
    /// Seeded with the suspect's two Macs and a break-glass admin Mac.
    pub fn seeded() -> CrowdStrikeSandbox {
        let s = CrowdStrikeSandbox::default();
        if let Ok(mut w) = s.world.lock() {
            for (aid, serial, hostname, user) in [
                (
                    SUSPECT_AID,
                    "C02DEMO0001",
                    "jsmith-mbp",
                    "j.smith@example.com",
                ),
                (
                    "5a1e0000000000000000000000000002",
                    "C02DEMO0002",
                    "jsmith-mba",
                    "j.smith@example.com",
                ),
                (
                    "5a1e00000000000000000000000000bb",
                    "C02BREAKGLASS",
                    "breakglass-mbp",
                    "admin@example.com",
                ),
            ] {
                w.devices.push(SbDevice {
                    aid: aid.into(),
                    serial: serial.into(),
                    hostname: hostname.into(),
                    user: user.into(),
                    status: "normal",
                });
            }
        }
        s
    }

    /// Enrol one more host (tests of large runs).
    pub fn add_device(&self, serial: &str, owner: &str) {
        if let Ok(mut w) = self.world.lock() {
            let n = w.devices.len() + 0x100;
            w.devices.push(SbDevice {
                aid: format!("5a1e{n:028x}"),
                serial: serial.into(),
                hostname: format!("host-{n}"),
                user: owner.into(),
                status: "normal",
            });
        }
    }

    /// Mutating requests received so far.
    pub fn calls(&self) -> Vec<String> {
        self.world
            .lock()
            .map(|w| w.calls.clone())
            .unwrap_or_default()
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> u32 {
        self.world.lock().map(|w| w.tokens_issued).unwrap_or(0)
    }

    /// Answer the next `n` API requests with 429.
    pub fn throttle(&self, n: u32) {
        if let Ok(mut w) = self.world.lock() {
            w.throttle = n;
        }
    }

    /// The containment status of the host with this serial.
    pub fn status_of(&self, serial: &str) -> Option<String> {
        let w = self.world.lock().ok()?;
        w.devices
            .iter()
            .find(|d| d.serial == serial)
            .map(|d| d.status.to_string())
    }
}

/// The router for `/crowdstrike`.
pub fn router(state: CrowdStrikeSandbox) -> Router {
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/devices/queries/devices/v1", get(query_devices))
        .route("/devices/entities/devices/v2", get(device_details))
        .route("/devices/entities/devices-actions/v2", post(device_action))
        .with_state(state)
}

fn envelope(resources: Value, errors: Value) -> Value {
    json!({
        "meta": {"query_time": 0.01, "powered_by": "cordon-sandbox", "trace_id": "7f1c0a52-sandbox"},
        "resources": resources,
        "errors": errors,
    })
}

fn falcon_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(envelope(
            json!([]),
            json!([{"code": status.as_u16(), "message": message}]),
        )),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct TokenForm {
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_secret: String,
}

async fn token(State(s): State<CrowdStrikeSandbox>, Form(f): Form<TokenForm>) -> Response {
    if f.client_id != SANDBOX_CLIENT_ID || f.client_secret != SANDBOX_CLIENT_SECRET {
        return falcon_error(
            StatusCode::FORBIDDEN,
            "Failed to issue access token - Not Authorized",
        );
    }
    if let Ok(mut w) = s.world.lock() {
        w.tokens_issued += 1;
    }
    (
        StatusCode::CREATED,
        Json(json!({"access_token": ACCESS_TOKEN, "token_type": "bearer", "expires_in": 1799})),
    )
        .into_response()
}

/// Auth and throttling, as every API route applies them.
fn gate(s: &CrowdStrikeSandbox, headers: &HeaderMap) -> Option<Response> {
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {ACCESS_TOKEN}"));
    if !ok {
        return Some(falcon_error(
            StatusCode::UNAUTHORIZED,
            "access denied, invalid bearer token",
        ));
    }
    let Ok(mut w) = s.world.lock() else {
        return Some(StatusCode::INTERNAL_SERVER_ERROR.into_response());
    };
    if w.throttle > 0 {
        w.throttle -= 1;
        let mut resp = falcon_error(StatusCode::TOO_MANY_REQUESTS, "API rate limit exceeded.");
        let at = chrono::Utc::now().timestamp() + 1;
        if let Ok(v) = HeaderValue::from_str(&at.to_string()) {
            resp.headers_mut().insert("x-ratelimit-retryafter", v);
        }
        resp.headers_mut()
            .insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        return Some(resp);
    }
    None
}

#[derive(Debug, Deserialize)]
struct DeviceQuery {
    #[serde(default)]
    filter: Option<String>,
}

async fn query_devices(
    State(s): State<CrowdStrikeSandbox>,
    headers: HeaderMap,
    Query(q): Query<DeviceQuery>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    // Only the FQL the connector sends: serial_number:'<serial>'.
    let serial = q.filter.as_deref().and_then(|f| {
        f.strip_prefix("serial_number:'")
            .and_then(|r| r.strip_suffix('\''))
            .map(str::to_string)
    });
    let Some(serial) = serial else {
        return falcon_error(StatusCode::BAD_REQUEST, "Invalid filter");
    };
    let Ok(w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let ids: Vec<&str> = w
        .devices
        .iter()
        .filter(|d| d.serial.eq_ignore_ascii_case(&serial))
        .map(|d| d.aid.as_str())
        .collect();
    Json(envelope(json!(ids), json!([]))).into_response()
}

fn ids_of(raw: Option<String>) -> Vec<String> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "ids")
        .map(|(_, v)| v.into_owned())
        .collect()
}

async fn device_details(
    State(s): State<CrowdStrikeSandbox>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let ids = ids_of(raw);
    let Ok(w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let found: Vec<Value> = w
        .devices
        .iter()
        .filter(|d| ids.iter().any(|i| i == &d.aid))
        .map(|d| {
            json!({
                "device_id": d.aid, "hostname": d.hostname, "serial_number": d.serial,
                "status": d.status, "platform_name": "Mac", "os_version": "Sonoma (14)",
                "last_seen": "2026-11-25T09:00:00Z", "last_login_user": d.user,
            })
        })
        .collect();
    if found.is_empty() {
        return falcon_error(StatusCode::NOT_FOUND, "No resources found for ids");
    }
    Json(envelope(json!(found), json!([]))).into_response()
}

#[derive(Debug, Deserialize)]
struct ActionQuery {
    #[serde(default)]
    action_name: String,
}

async fn device_action(
    State(s): State<CrowdStrikeSandbox>,
    headers: HeaderMap,
    Query(q): Query<ActionQuery>,
    body: Option<Json<Value>>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let (from, to): (&[&str], &'static str) = match q.action_name.as_str() {
        "contain" => (&["normal"], "contained"),
        "lift_containment" => (&["contained", "containment_pending"], "normal"),
        _ => return falcon_error(StatusCode::BAD_REQUEST, "Invalid action_name"),
    };
    let ids: Vec<String> = body
        .and_then(|Json(b)| b.get("ids").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    if ids.is_empty() {
        return falcon_error(StatusCode::BAD_REQUEST, "ids is required");
    }
    let Ok(mut w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    w.calls.push(format!(
        "POST /devices/entities/devices-actions/v2?action_name={}",
        q.action_name
    ));
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    for id in &ids {
        match w.devices.iter_mut().find(|d| &d.aid == id) {
            Some(d) if from.contains(&d.status) => {
                d.status = to;
                resources.push(json!({"id": id, "path": ""}));
            }
            Some(_) => errors.push(json!({
                "code": 409, "id": id,
                "message": format!("Device {id} is already in the requested containment state"),
            })),
            None => errors
                .push(json!({"code": 404, "id": id, "message": format!("Device {id} not found")})),
        }
    }
    let status = if !resources.is_empty() {
        StatusCode::ACCEPTED
    } else if errors.iter().all(|e| e["code"] == 409) {
        StatusCode::CONFLICT
    } else {
        StatusCode::NOT_FOUND
    };
    (status, Json(envelope(json!(resources), json!(errors)))).into_response()
}
