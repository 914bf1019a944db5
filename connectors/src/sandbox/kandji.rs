//! A stateful imitation of the Kandji API calls the `kandji` connector makes, mounted under
//! `/kandji` (so `base_url: http://127.0.0.1:PORT/kandji`):
//!
//! - `GET /api/v1/devices?serial_number=…`: a JSON array; serials match partially, as
//!   Kandji's do.
//! - `GET /api/v1/devices/{device_id}`: one device, or 404 `{"detail": "Not found."}`.
//! - `POST /api/v1/devices/{device_id}/action/lock`: 200 `{"PIN": "<6 digits>"}` the first
//!   time; while that lock is pending, 400 `"Command already running"`; once the Mac has
//!   acknowledged it ([`KandjiSandbox::acknowledge_all`]), 400 `"This device is already
//!   locked."`.
//! - `GET /api/v1/devices/{device_id}/secrets/unlockpin`: `{"pin": …}` after a lock.
//!
//! Every call needs `Authorization: Bearer` [`SANDBOX_TOKEN`] (else 401 `{"detail": …}`).
//! [`KandjiSandbox::throttle`] answers the next calls with 429 and `Retry-After`. Seeded
//! with `C02DEMO0001` and `C02DEMO0002` (owned by `j.smith@example.com`) and
//! `C02BREAKGLASS` (owned by `admin@example.com`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde_json::{json, Value};

/// The API token the sandbox accepts (a fixed, public sandbox credential).
pub const SANDBOX_TOKEN: &str = "sandbox-kandji-api-token";

/// Lock state of an imitated device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    Unlocked,
    Pending,
    Locked,
}

#[derive(Debug, Clone)]
struct Device {
    id: String,
    serial: String,
    name: String,
    owner: String,
    lock: LockState,
    pin: Option<String>,
}

#[derive(Debug, Default)]
struct World {
    devices: Vec<Device>,
    throttle: u32,
}

/// The sandbox's Kandji state. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct KandjiSandbox {
    world: Arc<Mutex<World>>,
}

impl KandjiSandbox {
    /// Seeded with the demonstration's devices.
    pub fn seeded() -> KandjiSandbox {
        let s = KandjiSandbox::default();
        if let Ok(mut w) = s.world.lock() {
            for (n, serial, owner) in [
                (1, "C02DEMO0001", "j.smith@example.com"),
                (2, "C02DEMO0002", "j.smith@example.com"),
                (3, "C02BREAKGLASS", "admin@example.com"),
            ] {
                w.devices.push(Device {
                    id: format!("6b1f0c2e-0000-4000-8000-00000000000{n}"),
                    serial: serial.to_string(),
                    name: format!("{}-mbp-{n}", owner.split('@').next().unwrap_or("mac")),
                    owner: owner.to_string(),
                    lock: LockState::Unlocked,
                    pin: None,
                });
            }
        }
        s
    }

    /// Enrol one more device (tests of large runs).
    pub fn add_device(&self, serial: &str, owner: &str) {
        if let Ok(mut w) = self.world.lock() {
            let n = w.devices.len() + 1;
            w.devices.push(Device {
                id: format!("6b1f0c2e-0000-4000-8000-{n:012}"),
                serial: serial.to_string(),
                name: format!("mbp-{n}"),
                owner: owner.to_string(),
                lock: LockState::Unlocked,
                pin: None,
            });
        }
    }

    /// Answer the next `n` calls with 429.
    pub fn throttle(&self, n: u32) {
        if let Ok(mut w) = self.world.lock() {
            w.throttle = n;
        }
    }

    /// The lock state and PIN of the device with this serial.
    pub fn lock_state(&self, serial: &str) -> Option<(LockState, Option<String>)> {
        let w = self.world.lock().ok()?;
        w.devices
            .iter()
            .find(|d| d.serial == serial)
            .map(|d| (d.lock, d.pin.clone()))
    }

    /// Every pending lock takes effect (the Macs checked in).
    pub fn acknowledge_all(&self) {
        if let Ok(mut w) = self.world.lock() {
            for d in &mut w.devices {
                if d.lock == LockState::Pending {
                    d.lock = LockState::Locked;
                }
            }
        }
    }
}

/// The `/kandji` routes.
pub fn router(state: KandjiSandbox) -> Router {
    Router::new()
        .route("/api/v1/devices", get(list))
        .route("/api/v1/devices/{id}", get(one))
        .route("/api/v1/devices/{id}/action/lock", post(lock))
        .route("/api/v1/devices/{id}/secrets/unlockpin", get(unlock_pin))
        .with_state(state)
}

fn detail(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({"detail": text}))).into_response()
}

fn gate(s: &KandjiSandbox, headers: &HeaderMap) -> Option<Response> {
    let ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {SANDBOX_TOKEN}"));
    if !ok {
        return Some(detail(StatusCode::UNAUTHORIZED, "Invalid token."));
    }
    let mut w = s.world.lock().ok()?;
    if w.throttle > 0 {
        w.throttle -= 1;
        let mut r = detail(StatusCode::TOO_MANY_REQUESTS, "Request was throttled.");
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return Some(r);
    }
    None
}

fn device_json(d: &Device) -> Value {
    json!({
        "device_id": d.id, "serial_number": d.serial, "device_name": d.name,
        "platform": "Mac", "os_version": "14.5", "model": "MacBook Pro (14-inch, 2023)",
        "last_check_in": "2026-11-25T09:12:00Z",
        "user": {"email": d.owner, "name": d.owner.split('@').next().unwrap_or("")},
    })
}

async fn list(
    State(s): State<KandjiSandbox>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let Ok(w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let serial = q.get("serial_number").map(|v| v.to_ascii_uppercase());
    let list: Vec<Value> = w
        .devices
        .iter()
        .filter(|d| serial.as_deref().is_none_or(|p| d.serial.contains(p)))
        .map(device_json)
        .collect();
    Json(Value::Array(list)).into_response()
}

async fn one(
    State(s): State<KandjiSandbox>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let Ok(w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match w.devices.iter().find(|d| d.id == id) {
        Some(d) => Json(device_json(d)).into_response(),
        None => detail(StatusCode::NOT_FOUND, "Not found."),
    }
}

async fn lock(
    State(s): State<KandjiSandbox>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let Ok(mut w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Some(d) = w.devices.iter_mut().find(|d| d.id == id) else {
        return detail(StatusCode::NOT_FOUND, "Not found.");
    };
    match d.lock {
        LockState::Pending => (
            StatusCode::BAD_REQUEST,
            Json(json!("Command already running")),
        )
            .into_response(),
        LockState::Locked => (
            StatusCode::BAD_REQUEST,
            Json(json!("This device is already locked.")),
        )
            .into_response(),
        LockState::Unlocked => {
            let pin = format!("{:06}", rand::thread_rng().gen_range(0..1_000_000u32));
            d.lock = LockState::Pending;
            d.pin = Some(pin.clone());
            Json(json!({"PIN": pin})).into_response()
        }
    }
}

async fn unlock_pin(
    State(s): State<KandjiSandbox>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let Ok(w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match w.devices.iter().find(|d| d.id == id) {
        Some(Device { pin: Some(p), .. }) => Json(json!({"pin": p})).into_response(),
        Some(_) => detail(StatusCode::NOT_FOUND, "No unlock PIN for this device."),
        None => detail(StatusCode::NOT_FOUND, "Not found."),
    }
}
