//! A stateful imitation of the Microsoft identity platform token endpoint and the Graph
//! v1.0 Intune calls the `intune` connector makes, mounted under `/intune`:
//!
//! - `POST /intune/login/{tenant}/oauth2/v2.0/token`: client credentials, checked against
//!   [`SANDBOX_TENANT_ID`], [`SANDBOX_CLIENT_ID`], [`SANDBOX_CLIENT_SECRET`] and the Graph
//!   `.default` scope, with Microsoft's OAuth error shape.
//! - `GET /intune/v1.0/deviceManagement/managedDevices?$filter=serialNumber eq '…'`: like
//!   the real service, a filter it does not support is ignored and the whole fleet comes back,
//!   in pages of [`PAGE_SIZE`] linked by `@odata.nextLink` (`$skiptoken`).
//! - `GET …/managedDevices/{id}`, `POST …/managedDevices/{id}/remoteLock` and `/retire`
//!   (204; progress shows in `deviceActionResults` and `managementState`).
//!
//! Every Graph call needs `Authorization: Bearer <a token this sandbox issued>`; errors use
//! Graph's `{"error": {"code", "message", "innerError"}}` body; [`IntuneSandbox::throttle`]
//! makes the next calls answer 429 with `Retry-After`. Seeded with `C02DEMO0001` and
//! `C02DEMO0002` (owned by `j.smith@example.com`) and `C02BREAKGLASS` (`admin@example.com`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use chrono::{SecondsFormat, Utc};
use rand::Rng;
use serde_json::{json, Value};

/// The tenant the sandbox knows.
pub const SANDBOX_TENANT_ID: &str = "00000000-0000-4000-8000-0000000171e0";
/// The application (client) id the sandbox accepts.
pub const SANDBOX_CLIENT_ID: &str = "22222222-2222-4222-8222-222222222222";
/// The client secret the sandbox accepts (a fixed, public sandbox credential).
pub const SANDBOX_CLIENT_SECRET: &str = "sandbox-intune-client-secret";
/// Managed device id of `C02DEMO0001`.
pub const DEMO1_ID: &str = "5c1e7a2b-3d4f-4a6b-8c9d-0e1f2a3b4c01";
/// Records per page of the managed device list (small, so paging is exercised).
pub const PAGE_SIZE: usize = 2;

const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

#[derive(Debug)]
struct World {
    devices: Vec<Value>,
    tokens: BTreeSet<String>,
    /// Graph calls still to answer with 429.
    throttled: u32,
    calls: Vec<String>,
}

/// The sandbox's Intune tenant. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct IntuneSandbox {
    world: Arc<Mutex<World>>,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn guid() -> String {
    let b: [u8; 16] = rand::thread_rng().gen();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl IntuneSandbox {
    /// The seeded fleet.
    pub fn seeded() -> IntuneSandbox {
        let seed = [
            (DEMO1_ID, "C02DEMO0001", "JSMITH-MBP", "j.smith@example.com"),
            (
                "5c1e7a2b-3d4f-4a6b-8c9d-0e1f2a3b4c02",
                "C02DEMO0002",
                "JSMITH-MBA",
                "j.smith@example.com",
            ),
            (
                "5c1e7a2b-3d4f-4a6b-8c9d-0e1f2a3b4c03",
                "C02BREAKGLASS",
                "BREAKGLASS-MBP",
                "admin@example.com",
            ),
        ];
        let devices = seed
            .iter()
            .map(|(id, serial, name, owner)| {
                json!({
                    "id": id,
                    "deviceName": name,
                    "serialNumber": serial,
                    "userPrincipalName": owner,
                    "userId": guid(),
                    "azureADDeviceId": guid(),
                    "operatingSystem": "macOS",
                    "osVersion": "14.5",
                    "complianceState": "compliant",
                    "managementState": "managed",
                    "managedDeviceOwnerType": "company",
                    "enrolledDateTime": "2025-03-01T09:00:00Z",
                    "lastSyncDateTime": now(),
                    "model": "MacBookPro18,3",
                    "manufacturer": "Apple",
                    "deviceActionResults": [],
                })
            })
            .collect();
        IntuneSandbox {
            world: Arc::new(Mutex::new(World {
                devices,
                tokens: BTreeSet::new(),
                throttled: 0,
                calls: Vec::new(),
            })),
        }
    }

    /// Enrol one more device (tests of large runs).
    pub fn add_device(&self, serial: &str, owner: &str) {
        if let Ok(mut w) = self.world.lock() {
            let n = w.devices.len() + 0x100;
            w.devices.push(json!({
                "id": format!("5c1e7a2b-3d4f-4a6b-8c9d-{n:012x}"),
                "deviceName": format!("MBP-{n}"), "serialNumber": serial,
                "userPrincipalName": owner, "userId": guid(), "azureADDeviceId": guid(),
                "operatingSystem": "macOS", "osVersion": "14.5", "complianceState": "compliant",
                "managementState": "managed", "managedDeviceOwnerType": "company",
                "enrolledDateTime": "2025-03-01T09:00:00Z", "lastSyncDateTime": now(),
                "model": "MacBookPro18,3", "manufacturer": "Apple", "deviceActionResults": [],
            }));
        }
    }

    /// Mutating calls received so far, as `METHOD path` lines.
    pub fn calls(&self) -> Vec<String> {
        self.world
            .lock()
            .map(|w| w.calls.clone())
            .unwrap_or_default()
    }

    /// Answer the next `n` Graph calls with 429 and `Retry-After: 1`.
    pub fn throttle(&self, n: u32) {
        if let Ok(mut w) = self.world.lock() {
            w.throttled = n;
        }
    }

    /// A device's current record, by serial.
    pub fn device(&self, serial: &str) -> Option<Value> {
        let w = self.world.lock().ok()?;
        w.devices
            .iter()
            .find(|d| d["serialNumber"].as_str() == Some(serial))
            .cloned()
    }
}

impl Default for IntuneSandbox {
    fn default() -> Self {
        IntuneSandbox::seeded()
    }
}

/// The routes, relative to the mount point (`/intune` in [`super::Sandbox::router`]).
pub fn router(state: IntuneSandbox) -> Router {
    Router::new()
        .route("/login/{tenant}/oauth2/v2.0/token", post(token))
        .route("/v1.0/deviceManagement/managedDevices", get(list_devices))
        .route(
            "/v1.0/deviceManagement/managedDevices/{id}",
            get(get_device),
        )
        .route(
            "/v1.0/deviceManagement/managedDevices/{id}/remoteLock",
            post(remote_lock),
        )
        .route(
            "/v1.0/deviceManagement/managedDevices/{id}/retire",
            post(retire),
        )
        .with_state(state)
}

pub(crate) fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message, "innerError": {
        "date": now(), "request-id": guid(), "client-request-id": guid()}}});
    (status, Json(body)).into_response()
}

pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!("{description}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}", guid(), guid(), now()),
        "error_codes": [],
        "timestamp": now(),
        "trace_id": guid(),
        "correlation_id": guid(),
    });
    (status, Json(body)).into_response()
}

fn internal() -> Response {
    graph_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "generalException",
        "The sandbox state is unavailable.",
    )
}

/// Check a client-credentials form as the Microsoft identity platform does; Ok(token) with
/// a fresh access token when it is right.
pub(crate) fn check_client_credentials(
    tenant: &str,
    form: &HashMap<String, String>,
    expected: (&str, &str, &str, &str),
) -> Result<String, Box<Response>> {
    let (tenant_id, client_id, secret, scope) = expected;
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if tenant != tenant_id {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            &format!("AADSTS90002: Tenant '{tenant}' not found."),
        )));
    }
    if get("grant_type") != "client_credentials" {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        )));
    }
    if get("client_id") != client_id {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS700016: Application was not found in the directory.",
        )));
    }
    if get("client_secret") != secret {
        return Err(Box::new(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        )));
    }
    if get("scope") != scope {
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS1002012: The provided value for scope is not valid.",
        )));
    }
    Ok(format!(
        "sbx-ms-{}",
        hex::encode(rand::thread_rng().gen::<[u8; 24]>())
    ))
}

async fn token(
    State(s): State<IntuneSandbox>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let access = match check_client_credentials(
        &tenant,
        &form,
        (
            SANDBOX_TENANT_ID,
            SANDBOX_CLIENT_ID,
            SANDBOX_CLIENT_SECRET,
            GRAPH_SCOPE,
        ),
    ) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let Ok(mut w) = s.world.lock() else {
        return internal();
    };
    w.tokens.insert(access.clone());
    Json(json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": access}))
        .into_response()
}

/// The bearer check and the throttle: None when the call may proceed.
fn refuse(s: &IntuneSandbox, headers: &HeaderMap) -> Option<Response> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Ok(mut w) = s.world.lock() else {
        return Some(internal());
    };
    let known = value
        .strip_prefix("Bearer ")
        .is_some_and(|t| w.tokens.contains(t));
    if !known {
        return Some(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token validation failure.",
        ));
    }
    if w.throttled > 0 {
        w.throttled -= 1;
        let mut resp = graph_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests from this application.",
        );
        resp.headers_mut()
            .insert("retry-after", header::HeaderValue::from_static("1"));
        return Some(resp);
    }
    None
}

/// The serial in `serialNumber eq '<serial>'`; None for any other filter (which the real
/// service ignores, returning everything).
fn serial_filter(filter: &str) -> Option<String> {
    let rest = filter.trim().strip_prefix("serialNumber eq '")?;
    let inner = rest.strip_suffix('\'')?;
    Some(inner.replace("''", "'"))
}

async fn list_devices(
    State(s): State<IntuneSandbox>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = refuse(&s, &headers) {
        return r;
    }
    let Ok(w) = s.world.lock() else {
        return internal();
    };
    let filter = q.get("$filter").and_then(|f| serial_filter(f));
    let all: Vec<&Value> = w
        .devices
        .iter()
        .filter(|d| match &filter {
            // Graph compares serials case-insensitively.
            Some(serial) => d["serialNumber"]
                .as_str()
                .is_some_and(|x| x.eq_ignore_ascii_case(serial)),
            None => true,
        })
        .collect();
    let skip: usize = q
        .get("$skiptoken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let page: Vec<Value> = all
        .iter()
        .skip(skip)
        .take(PAGE_SIZE)
        .map(|d| (*d).clone())
        .collect();
    let mut body = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#deviceManagement/managedDevices",
        "value": page,
    });
    if skip + PAGE_SIZE < all.len() {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        if let Ok(mut next) = url::Url::parse(&format!("http://{host}{}", uri.path())) {
            {
                let mut pairs = next.query_pairs_mut();
                if let Some(f) = q.get("$filter") {
                    pairs.append_pair("$filter", f);
                }
                pairs.append_pair("$skiptoken", &(skip + PAGE_SIZE).to_string());
            }
            body["@odata.nextLink"] = json!(next.as_str());
        }
    }
    Json(body).into_response()
}

async fn get_device(
    State(s): State<IntuneSandbox>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = refuse(&s, &headers) {
        return r;
    }
    let Ok(w) = s.world.lock() else {
        return internal();
    };
    match w.devices.iter().find(|d| {
        d["id"]
            .as_str()
            .is_some_and(|x| x.eq_ignore_ascii_case(&id))
    }) {
        Some(d) => Json(d.clone()).into_response(),
        None => graph_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("Resource not found for the segment 'managedDevices'. ({id})"),
        ),
    }
}

/// Queue `action` on device `id`: 204, and the action shows as pending.
fn queue(s: &IntuneSandbox, headers: &HeaderMap, id: &str, action: &str) -> Response {
    if let Some(r) = refuse(s, headers) {
        return r;
    }
    let Ok(mut w) = s.world.lock() else {
        return internal();
    };
    w.calls.push(format!(
        "POST /v1.0/deviceManagement/managedDevices/{id}/{action}"
    ));
    let Some(d) = w
        .devices
        .iter_mut()
        .find(|d| d["id"].as_str().is_some_and(|x| x.eq_ignore_ascii_case(id)))
    else {
        return graph_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("Resource not found for the segment 'managedDevices'. ({id})"),
        );
    };
    let t = now();
    if let Some(results) = d["deviceActionResults"].as_array_mut() {
        results.retain(|r| r["actionName"].as_str() != Some(action));
        results.push(json!({"actionName": action, "actionState": "pending",
                            "startDateTime": t, "lastUpdatedDateTime": t}));
    }
    if action == "retire" {
        d["managementState"] = json!("retirePending");
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn remote_lock(
    State(s): State<IntuneSandbox>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    queue(&s, &headers, &id, "remoteLock")
}

async fn retire(
    State(s): State<IntuneSandbox>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    queue(&s, &headers, &id, "retire")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_filters() {
        assert_eq!(
            serial_filter("serialNumber eq 'C02DEMO0001'").as_deref(),
            Some("C02DEMO0001")
        );
        assert_eq!(
            serial_filter("serialNumber eq 'O''X'").as_deref(),
            Some("O'X")
        );
        assert_eq!(serial_filter("userId eq 'x'"), None);
    }
}
