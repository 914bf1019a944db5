//! A stateful imitation of the Jamf Pro API calls the `jamf` connector makes, mounted under
//! `/jamf` (so `base_url: http://127.0.0.1:PORT/jamf`):
//!
//! - `POST /api/oauth/token`: client credentials (form), checked against
//!   [`SANDBOX_CLIENT_ID`] and [`SANDBOX_CLIENT_SECRET`]; errors in the OAuth shape
//!   `{error, error_description}`.
//! - `GET /api/{v1,v3,v4}/computers-inventory`: `section` (repeatable, default GENERAL),
//!   `page`/`page-size` (0-based pages), `filter` with `hardware.serialNumber=="…"` or
//!   `id=="…"` (anything else is Jamf's 400 `INVALID_FIELD`).
//! - `GET /api/v2/mdm/commands?filter=clientManagementId==…;command==…`: the queued commands.
//! - `POST /api/v2/mdm/commands`: queues a command (201 `[{id, href}]`); `DEVICE_LOCK` needs a
//!   6-digit `pin`. Each POST queues another command, as Jamf does.
//!
//! Every API call needs `Authorization: Bearer <a token this sandbox issued>` (else 401 in
//! Jamf's `{"httpStatus", "errors": [...]}` shape). [`JamfSandbox::throttle`] makes the next
//! answers 429 with `Retry-After`, as the Platform API gateway does. Seeded with
//! `C02DEMO0001` and `C02DEMO0002` (owned by `j.smith@example.com`) and `C02BREAKGLASS`
//! (owned by `admin@example.com`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::{json, Value};

/// The API client id the sandbox accepts.
pub const SANDBOX_CLIENT_ID: &str = "cordon-sandbox-client";
/// The API client secret the sandbox accepts (a fixed, public sandbox credential).
pub const SANDBOX_CLIENT_SECRET: &str = "sandbox-jamf-client-secret";

#[derive(Debug, Clone)]
struct Computer {
    id: String,
    serial: String,
    name: String,
    management_id: String,
    owner: String,
}

/// One queued MDM command.
#[derive(Debug, Clone)]
pub struct Command {
    pub uuid: String,
    pub management_id: String,
    pub command_type: String,
    pub state: String,
    pub pin: Option<String>,
}

#[derive(Debug, Default)]
struct World {
    computers: Vec<Computer>,
    commands: Vec<Command>,
    tokens: BTreeSet<String>,
    throttle: u32,
    next_id: u64,
}

/// The sandbox's Jamf state. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct JamfSandbox {
    world: Arc<Mutex<World>>,
}

impl JamfSandbox {
    /// Seeded with the demonstration's computers.
    pub fn seeded() -> JamfSandbox {
        let s = JamfSandbox::default();
        if let Ok(mut w) = s.world.lock() {
            for (id, serial, owner) in [
                ("1", "C02DEMO0001", "j.smith@example.com"),
                ("2", "C02DEMO0002", "j.smith@example.com"),
                ("3", "C02BREAKGLASS", "admin@example.com"),
            ] {
                w.computers.push(Computer {
                    id: id.to_string(),
                    serial: serial.to_string(),
                    name: format!("{}-mac-{id}", owner.split('@').next().unwrap_or("mac")),
                    management_id: format!("0000000{id}-aaaa-4bbb-8ccc-00000000000{id}"),
                    owner: owner.to_string(),
                });
            }
        }
        s
    }

    /// Enrol one more computer (tests of large runs).
    pub fn add_device(&self, serial: &str, owner: &str) {
        if let Ok(mut w) = self.world.lock() {
            let n = w.computers.len() + 1;
            w.computers.push(Computer {
                id: n.to_string(),
                serial: serial.to_string(),
                name: format!("mac-{n}"),
                management_id: format!("{n:08}-aaaa-4bbb-8ccc-{n:012}"),
                owner: owner.to_string(),
            });
        }
    }

    /// Answer the next `n` API calls with 429.
    pub fn throttle(&self, n: u32) {
        if let Ok(mut w) = self.world.lock() {
            w.throttle = n;
        }
    }

    /// Every queued MDM command for the computer with this serial.
    pub fn commands_for(&self, serial: &str) -> Vec<Command> {
        let Ok(w) = self.world.lock() else {
            return Vec::new();
        };
        let Some(c) = w.computers.iter().find(|c| c.serial == serial) else {
            return Vec::new();
        };
        w.commands
            .iter()
            .filter(|x| x.management_id == c.management_id)
            .cloned()
            .collect()
    }

    /// Mark every pending command as acknowledged (the Mac checked in).
    pub fn acknowledge_all(&self) {
        if let Ok(mut w) = self.world.lock() {
            for c in &mut w.commands {
                c.state = "ACKNOWLEDGED".into();
            }
        }
    }
}

/// The `/jamf` routes.
pub fn router(state: JamfSandbox) -> Router {
    Router::new()
        .route("/api/oauth/token", post(token))
        .route("/api/{version}/computers-inventory", get(inventory))
        .route(
            "/api/v2/mdm/commands",
            get(list_commands).post(post_command),
        )
        .with_state(state)
}

fn jamf_error(status: StatusCode, code: &str, field: Option<&str>, description: &str) -> Response {
    (
        status,
        Json(json!({
            "httpStatus": status.as_u16(),
            "errors": [{"code": code, "field": field, "description": description, "id": "0"}]
        })),
    )
        .into_response()
}

async fn token(
    State(s): State<JamfSandbox>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| form.get(k).map(String::as_str);
    if get("grant_type") != Some("client_credentials") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type", "error_description": "grant_type must be client_credentials"})),
        )
            .into_response();
    }
    if get("client_id") != Some(SANDBOX_CLIENT_ID)
        || get("client_secret") != Some(SANDBOX_CLIENT_SECRET)
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client", "error_description": "Client authentication failed"})),
        )
            .into_response();
    }
    let token = format!("jamf-sbx-{:032x}", rand::random::<u128>());
    if let Ok(mut w) = s.world.lock() {
        w.tokens.insert(token.clone());
    }
    Json(json!({"access_token": token, "scope": "api-role:cordon", "token_type": "Bearer", "expires_in": 1199}))
        .into_response()
}

/// 401 without a known bearer token; 429 while throttled.
fn gate(s: &JamfSandbox, headers: &HeaderMap) -> Option<Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let Ok(mut w) = s.world.lock() else {
        return Some(jamf_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            None,
            "sandbox state poisoned",
        ));
    };
    if !presented.is_some_and(|t| w.tokens.contains(&t)) {
        return Some(jamf_error(
            StatusCode::UNAUTHORIZED,
            "INVALID_TOKEN",
            None,
            "Unauthorized",
        ));
    }
    if w.throttle > 0 {
        w.throttle -= 1;
        let mut r = jamf_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_REQUESTS",
            None,
            "Rate limit exceeded",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return Some(r);
    }
    None
}

fn record(c: &Computer, sections: &[String]) -> Value {
    let mut r = json!({"id": c.id, "udid": format!("udid-{}", c.id)});
    let all: [(&str, &str, Value); 4] = [
        (
            "GENERAL",
            "general",
            json!({"name": c.name, "managementId": c.management_id,
                   "lastContactTime": "2026-11-25T09:12:00Z", "platform": "Mac"}),
        ),
        (
            "HARDWARE",
            "hardware",
            json!({"serialNumber": c.serial, "model": "MacBook Pro"}),
        ),
        (
            "USER_AND_LOCATION",
            "userAndLocation",
            json!({"username": c.owner.split('@').next().unwrap_or(""), "email": c.owner}),
        ),
        (
            "OPERATING_SYSTEM",
            "operatingSystem",
            json!({"name": "macOS", "version": "14.5"}),
        ),
    ];
    for (section, key, value) in all {
        if sections.iter().any(|s| s == section) {
            r[key] = value;
        }
    }
    r
}

/// `field=="value"` → (field, value).
fn parse_rsql(filter: &str) -> Option<(&str, &str)> {
    let (field, value) = filter.split_once("==")?;
    let value = value.strip_prefix('"')?.strip_suffix('"')?;
    Some((field, value))
}

async fn inventory(
    State(s): State<JamfSandbox>,
    Path(version): Path<String>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    if !matches!(version.as_str(), "v1" | "v3" | "v4") {
        return jamf_error(StatusCode::NOT_FOUND, "NOT_FOUND", None, "No such route");
    }
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let one = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut sections: Vec<String> = q
        .iter()
        .filter(|(n, _)| n == "section")
        .map(|(_, v)| v.clone())
        .collect();
    if sections.is_empty() {
        sections.push("GENERAL".into());
    }
    let page: usize = match one("page").unwrap_or("0").parse() {
        Ok(p) => p,
        Err(_) => {
            return jamf_error(
                StatusCode::BAD_REQUEST,
                "INVALID_FIELD",
                Some("page"),
                "page must be a number",
            )
        }
    };
    let size: usize = match one("page-size").unwrap_or("100").parse() {
        Ok(p) if (1..=2000).contains(&p) => p,
        _ => {
            return jamf_error(
                StatusCode::BAD_REQUEST,
                "INVALID_FIELD",
                Some("page-size"),
                "page-size must be 1..2000",
            )
        }
    };
    let Ok(w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let matching: Vec<&Computer> = match one("filter") {
        None => w.computers.iter().collect(),
        Some(f) => match parse_rsql(f) {
            Some(("hardware.serialNumber", v)) => {
                w.computers.iter().filter(|c| c.serial == v).collect()
            }
            Some(("id", v)) => w.computers.iter().filter(|c| c.id == v).collect(),
            _ => {
                return jamf_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_FIELD",
                    Some("filter"),
                    "Unsupported filter field",
                )
            }
        },
    };
    let results: Vec<Value> = matching
        .iter()
        .skip(page.saturating_mul(size))
        .take(size)
        .map(|c| record(c, &sections))
        .collect();
    Json(json!({"totalCount": matching.len(), "results": results})).into_response()
}

async fn list_commands(
    State(s): State<JamfSandbox>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let mut management_id = None;
    let mut command = None;
    for part in q.get("filter").map(String::as_str).unwrap_or("").split(';') {
        if part.is_empty() {
            continue;
        }
        match part.split_once("==") {
            Some(("clientManagementId", v)) => management_id = Some(v.to_string()),
            Some(("command", v)) => command = Some(v.to_string()),
            _ => {
                return jamf_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_FIELD",
                    Some("filter"),
                    "Unsupported filter",
                )
            }
        }
    }
    let Ok(w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let list: Vec<Value> = w
        .commands
        .iter()
        .filter(|c| {
            management_id
                .as_deref()
                .is_none_or(|m| m == c.management_id)
        })
        .filter(|c| command.as_deref().is_none_or(|t| t == c.command_type))
        .map(|c| {
            json!({"uuid": c.uuid, "client": {"managementId": c.management_id},
                   "commandState": c.state, "commandType": c.command_type,
                   "dateSent": "2026-11-25T09:15:00Z"})
        })
        .collect();
    Json(Value::Array(list)).into_response()
}

async fn post_command(
    State(s): State<JamfSandbox>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let Some(mid) = body
        .pointer("/clientData/0/managementId")
        .and_then(Value::as_str)
    else {
        return jamf_error(
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
            Some("clientData"),
            "clientData[0].managementId is required",
        );
    };
    let Some(kind) = body
        .pointer("/commandData/commandType")
        .and_then(Value::as_str)
    else {
        return jamf_error(
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
            Some("commandData.commandType"),
            "commandType is required",
        );
    };
    let pin = body
        .pointer("/commandData/pin")
        .and_then(Value::as_str)
        .map(str::to_string);
    if kind == "DEVICE_LOCK"
        && !pin
            .as_deref()
            .is_some_and(|p| p.len() == 6 && p.chars().all(|c| c.is_ascii_digit()))
    {
        return jamf_error(
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
            Some("commandData.pin"),
            "A 6-digit pin is required for macOS",
        );
    }
    let Ok(mut w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if !w.computers.iter().any(|c| c.management_id == mid) {
        return jamf_error(
            StatusCode::BAD_REQUEST,
            "INVALID_MANAGEMENT_ID",
            Some("clientData.managementId"),
            "No device with that managementId",
        );
    }
    w.next_id += 1;
    let uuid = format!("cmd-{:04}", w.next_id);
    w.commands.push(Command {
        uuid: uuid.clone(),
        management_id: mid.to_string(),
        command_type: kind.to_string(),
        state: "PENDING".into(),
        pin,
    });
    (
        StatusCode::CREATED,
        Json(json!([{"id": uuid, "href": format!("/api/v2/mdm/commands/{uuid}")}])),
    )
        .into_response()
}
