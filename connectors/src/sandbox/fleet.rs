//! A stateful imitation of the Fleet (fleetdm) REST endpoints the `fleet` connector calls,
//! mounted by [`super::Sandbox::router`] under `/fleet` (configure the connector with
//! `base_url: http://127.0.0.1:PORT/fleet` and a token file holding [`SANDBOX_TOKEN`]).
//!
//! Faithful where it matters to the connector: `Authorization: Bearer <token>` (else 401
//! with Fleet's error body `{message, errors: [{name, reason}], uuid}`), host lookups by id
//! and by identifier (serial, UUID, hostname), the lock guards of Fleet's server code (409
//! "Host is already locked."/"Host is already unlocked.", 422 for pending actions), macOS
//! unlock answering 200 with the PIN, the host software list paged with `page`/`per_page`
//! and `meta.has_next_results`, and throttling (429 with `retry-after`) on demand.
//!
//! Seeded with `C02DEMO0001` and `C02DEMO0002` (owned by `j.smith@example.com`, with
//! AnyDesk, TeamViewer and RustDesk among their software) and `C02BREAKGLASS` (owned by
//! `admin@example.com`). The sandbox hosts are always online: a lock takes effect at once.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

/// The API token the sandbox accepts (`Authorization: Bearer <this>`).
pub const SANDBOX_TOKEN: &str = "cordon-sandbox-fleet-token";

#[derive(Debug, Clone)]
struct SbHost {
    id: u64,
    serial: String,
    hostname: String,
    uuid: String,
    owner: String,
    device_status: &'static str,
    pending_action: &'static str,
    software: Vec<Value>,
    pin: String,
}

#[derive(Debug, Default)]
struct FleetWorld {
    hosts: Vec<SbHost>,
    /// Mutating requests received, as `METHOD path` lines.
    calls: Vec<String>,
    /// The next this many requests are answered 429.
    throttle: u32,
}

/// The Fleet sandbox's state. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct FleetSandbox {
    world: Arc<Mutex<FleetWorld>>,
}

fn software(ids: std::ops::Range<u64>, extra: &[&str]) -> Vec<Value> {
    let common = [
        "Google Chrome",
        "Slack",
        "zoom.us",
        "Visual Studio Code",
        "iTerm2",
        "1Password 8",
        "Docker Desktop",
        "Firefox",
    ];
    let mut v: Vec<Value> = Vec::new();
    let mut id = ids.start;
    for name in common.iter().chain(extra.iter()) {
        v.push(json!({
            "id": id, "name": format!("{name}.app").replace(".app.app", ".app"),
            "version": format!("{}.{}.0", 1 + id % 9, id % 13),
            "source": "apps", "bundle_identifier": format!("com.example.{}", name.to_ascii_lowercase().replace(' ', "")),
            "installed_paths": [format!("/Applications/{name}.app")],
        }));
        id += 1;
    }
    // Enough system packages to need several pages.
    while id < ids.end {
        v.push(json!({
            "id": id, "name": format!("system-package-{id}"), "version": "1.0",
            "source": "pkg_packages", "installed_paths": [],
        }));
        id += 1;
    }
    v
}

impl FleetSandbox {
    /// Seeded with the suspect's two Macs and a break-glass admin Mac.
    pub fn seeded() -> FleetSandbox {
        let s = FleetSandbox::default();
        if let Ok(mut w) = s.world.lock() {
            let seeds: [(u64, &str, &str, &str, &[&str]); 3] = [
                (
                    101,
                    "C02DEMO0001",
                    "jsmith-mbp",
                    "j.smith@example.com",
                    &["AnyDesk", "TeamViewer"],
                ),
                (
                    102,
                    "C02DEMO0002",
                    "jsmith-mba",
                    "j.smith@example.com",
                    &["RustDesk", "Chrome Remote Desktop Host"],
                ),
                (
                    103,
                    "C02BREAKGLASS",
                    "breakglass-mbp",
                    "admin@example.com",
                    &[],
                ),
            ];
            for (id, serial, hostname, owner, extra) in seeds {
                w.hosts.push(SbHost {
                    id,
                    serial: serial.into(),
                    hostname: hostname.into(),
                    uuid: format!("5A1E{id:04}-0000-4000-8000-0000000{id:05}"),
                    owner: owner.into(),
                    device_status: "unlocked",
                    pending_action: "",
                    software: software(id * 1000..id * 1000 + 45, extra),
                    pin: format!("{:06}", id * 4217 % 1_000_000),
                });
            }
        }
        s
    }

    /// Enrol one more host (tests of large runs).
    pub fn add_device(&self, serial: &str, owner: &str) {
        if let Ok(mut w) = self.world.lock() {
            let id = 200 + w.hosts.len() as u64;
            w.hosts.push(SbHost {
                id,
                serial: serial.into(),
                hostname: format!("host-{id}"),
                uuid: format!("5A1E{id:04}-0000-4000-8000-0000000{id:05}"),
                owner: owner.into(),
                device_status: "unlocked",
                pending_action: "",
                software: software(id * 1000..id * 1000 + 5, &[]),
                pin: format!("{:06}", id * 4217 % 1_000_000),
            });
        }
    }

    /// Mutating requests received so far, as `METHOD path` lines.
    pub fn calls(&self) -> Vec<String> {
        self.world
            .lock()
            .map(|w| w.calls.clone())
            .unwrap_or_default()
    }

    /// Answer the next `n` requests with 429.
    pub fn throttle(&self, n: u32) {
        if let Ok(mut w) = self.world.lock() {
            w.throttle = n;
        }
    }

    /// The MDM `device_status` of the host with this serial.
    pub fn device_status(&self, serial: &str) -> Option<String> {
        let w = self.world.lock().ok()?;
        w.hosts
            .iter()
            .find(|h| h.serial == serial)
            .map(|h| h.device_status.to_string())
    }
}

/// The router for `/fleet`.
pub fn router(state: FleetSandbox) -> Router {
    Router::new()
        .route(
            "/api/v1/fleet/hosts/identifier/{identifier}",
            get(by_identifier),
        )
        .route("/api/v1/fleet/hosts/{id}", get(by_id))
        .route("/api/v1/fleet/hosts/{id}/lock", post(lock))
        .route("/api/v1/fleet/hosts/{id}/unlock", post(unlock))
        .route("/api/v1/fleet/hosts/{id}/software", get(host_software))
        .with_state(state)
}

fn fleet_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({
            "message": message,
            "errors": [{"name": "base", "reason": message}],
            "uuid": "8d3a9f1e-0c7b-4c1e-9a52-5f0d2b7e6c10",
        })),
    )
        .into_response()
}

/// Auth and throttling, as every Fleet route applies them.
fn gate(s: &FleetSandbox, headers: &HeaderMap) -> Option<Response> {
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {SANDBOX_TOKEN}"));
    if !ok {
        return Some(fleet_error(
            StatusCode::UNAUTHORIZED,
            "Authentication required",
        ));
    }
    let Ok(mut w) = s.world.lock() else {
        return Some(StatusCode::INTERNAL_SERVER_ERROR.into_response());
    };
    if w.throttle > 0 {
        w.throttle -= 1;
        let mut resp = fleet_error(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        return Some(resp);
    }
    None
}

fn host_json(h: &SbHost) -> Value {
    json!({"host": {
        "id": h.id,
        "hostname": h.hostname,
        "display_name": h.hostname,
        "computer_name": h.hostname,
        "hardware_serial": h.serial,
        "uuid": h.uuid,
        "platform": "darwin",
        "os_version": "macOS 14.5",
        "status": "online",
        "seen_time": "2026-11-25T09:00:00Z",
        "device_mapping": [{"email": h.owner, "source": "google_chrome_profiles"}],
        "mdm": {
            "enrollment_status": "On (manual)",
            "device_status": h.device_status,
            "pending_action": h.pending_action,
        },
    }})
}

async fn by_identifier(
    State(s): State<FleetSandbox>,
    headers: HeaderMap,
    Path(identifier): Path<String>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let Ok(w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match w
        .hosts
        .iter()
        .find(|h| h.serial == identifier || h.uuid == identifier || h.hostname == identifier)
    {
        Some(h) => Json(host_json(h)).into_response(),
        None => fleet_error(StatusCode::NOT_FOUND, "Resource Not Found"),
    }
}

fn parse_id(id: &str) -> Option<u64> {
    id.parse().ok()
}

async fn by_id(
    State(s): State<FleetSandbox>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let Ok(w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match parse_id(&id).and_then(|id| w.hosts.iter().find(|h| h.id == id)) {
        Some(h) => Json(host_json(h)).into_response(),
        None => fleet_error(StatusCode::NOT_FOUND, "Resource Not Found"),
    }
}

async fn lock(
    State(s): State<FleetSandbox>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let Ok(mut w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    w.calls.push(format!("POST /api/v1/fleet/hosts/{id}/lock"));
    let Some(h) = parse_id(&id).and_then(|id| w.hosts.iter_mut().find(|h| h.id == id)) else {
        return fleet_error(StatusCode::NOT_FOUND, "Resource Not Found");
    };
    match (h.device_status, h.pending_action) {
        (_, "lock") => fleet_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Host has pending lock request. The host will lock when it comes online.",
        ),
        (_, "unlock") => fleet_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Host has pending unlock request. Host cannot be locked again until unlock is complete.",
        ),
        (_, "wipe") => fleet_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Host has pending wipe request. The host will be wiped when it comes online.",
        ),
        ("locked", _) => fleet_error(StatusCode::CONFLICT, "Host is already locked."),
        _ => {
            // Always online: the lock takes effect at once.
            h.device_status = "locked";
            h.pending_action = "";
            Json(json!({"device_status": "unlocked", "pending_action": "lock"})).into_response()
        }
    }
}

async fn unlock(
    State(s): State<FleetSandbox>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let Ok(mut w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    w.calls
        .push(format!("POST /api/v1/fleet/hosts/{id}/unlock"));
    let Some(h) = parse_id(&id).and_then(|id| w.hosts.iter_mut().find(|h| h.id == id)) else {
        return fleet_error(StatusCode::NOT_FOUND, "Resource Not Found");
    };
    match (h.device_status, h.pending_action) {
        (_, "lock") => fleet_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Host has pending lock request. Host cannot be unlocked until lock is complete.",
        ),
        (_, "wipe") => fleet_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Host has pending wipe request. The host will be wiped when it comes online.",
        ),
        ("unlocked", _) => fleet_error(StatusCode::CONFLICT, "Host is already unlocked."),
        _ => {
            // macOS: no command is sent; the PIN is typed at the Mac (done at once here).
            h.device_status = "unlocked";
            Json(json!({"host_id": h.id, "unlock_pin": h.pin})).into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    #[serde(default)]
    page: Option<usize>,
    #[serde(default)]
    per_page: Option<usize>,
}

async fn host_software(
    State(s): State<FleetSandbox>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let Ok(w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Some(h) = parse_id(&id).and_then(|id| w.hosts.iter().find(|h| h.id == id)) else {
        return fleet_error(StatusCode::NOT_FOUND, "Resource Not Found");
    };
    let per_page = q.per_page.unwrap_or(20).clamp(1, 1000);
    let start = q.page.unwrap_or(0).saturating_mul(per_page);
    let items: Vec<Value> = h
        .software
        .iter()
        .skip(start)
        .take(per_page)
        .cloned()
        .collect();
    let has_next = start.saturating_add(per_page) < h.software.len();
    Json(json!({
        "count": h.software.len(),
        "software": items,
        "meta": {"has_next_results": has_next, "has_previous_results": start > 0},
    }))
    .into_response()
}
