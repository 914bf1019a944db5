//! A stateful imitation of the Defender for Endpoint API calls the `defender` connector
//! makes, mounted under `/defender`:
//!
//! - `POST /defender/login/{tenant}/oauth2/v2.0/token`: client credentials with the
//!   `https://api.securitycenter.microsoft.com/.default` scope.
//! - `GET /defender/api/machines?$filter=computerDnsName eq '…'`, `GET …/machines/{id}`.
//! - `GET /defender/api/machineactions?$filter=machineId eq '…'`.
//! - `POST …/machines/{id}/isolate` (`{"Comment", "IsolationType"}`, case-sensitive, Comment
//!   required), `/unisolate` and `/collectInvestigationPackage` (`{"Comment"}`): 201 and a
//!   Pending MachineAction; a second request of a kind still pending answers 400
//!   `ActiveRequestAlreadyExists` "Action is already in progress".
//! - `GET …/machineactions/{id}/getPackageUri`: 404 until the collection succeeded, then a
//!   short-lived SAS link (its `sig` is a fresh random value).
//!
//! Time is simulated: a pending action is reported Pending once and Succeeded from the next
//! listing on. Machines are named after the seeded serials (`c02demo0001`, `c02demo0002`,
//! `c02breakglass`), with [`IntuneSandbox`](super::intune::IntuneSandbox)'s owners.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use chrono::{SecondsFormat, Utc};
use rand::Rng;
use serde_json::{json, Value};

use super::intune::check_client_credentials;

/// The tenant the sandbox knows.
pub const SANDBOX_TENANT_ID: &str = "00000000-0000-4000-8000-0000000de7e0";
/// The application (client) id the sandbox accepts.
pub const SANDBOX_CLIENT_ID: &str = "33333333-3333-4333-8333-333333333333";
/// The client secret the sandbox accepts (a fixed, public sandbox credential).
pub const SANDBOX_CLIENT_SECRET: &str = "sandbox-defender-client-secret";
/// Machine id of `c02demo0001`.
pub const DEMO1_MACHINE_ID: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc01";

const SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";

#[derive(Debug)]
struct World {
    machines: Vec<Value>,
    actions: Vec<Value>,
    tokens: BTreeSet<String>,
    calls: Vec<String>,
}

/// The sandbox's Defender tenant. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct DefenderSandbox {
    world: Arc<Mutex<World>>,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn random_hex(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
        .collect()
}

impl DefenderSandbox {
    pub fn seeded() -> DefenderSandbox {
        let machines = [
            (DEMO1_MACHINE_ID, "c02demo0001", "j.smith@example.com"),
            (
                "1e5bc9d7e413ddd7902c2932e418702b84d0cc02",
                "c02demo0002",
                "j.smith@example.com",
            ),
            (
                "1e5bc9d7e413ddd7902c2932e418702b84d0cc03",
                "c02breakglass",
                "admin@example.com",
            ),
        ]
        .iter()
        .map(|(id, name, owner)| {
            json!({
                "id": id, "computerDnsName": name, "osPlatform": "macOS", "osVersion": "14.5",
                "lastSeen": now(), "healthStatus": "Active", "riskScore": "Medium",
                "exposureLevel": "Medium", "onboardingStatus": "Onboarded",
                "lastIpAddress": "10.0.0.12", "aadDeviceId": null,
                "machineTags": [format!("owner:{owner}")],
            })
        })
        .collect();
        DefenderSandbox {
            world: Arc::new(Mutex::new(World {
                machines,
                actions: Vec::new(),
                tokens: BTreeSet::new(),
                calls: Vec::new(),
            })),
        }
    }

    /// Onboard one more machine, named after the serial (tests of large runs).
    pub fn add_device(&self, serial: &str, owner: &str) {
        if let Ok(mut w) = self.world.lock() {
            let n = w.machines.len() + 0x100;
            w.machines.push(json!({
                "id": format!("{n:040x}"), "computerDnsName": serial.to_ascii_lowercase(),
                "osPlatform": "macOS", "osVersion": "14.5", "lastSeen": now(),
                "healthStatus": "Active", "riskScore": "Medium", "exposureLevel": "Medium",
                "onboardingStatus": "Onboarded", "lastIpAddress": "10.0.0.12", "aadDeviceId": null,
                "machineTags": [format!("owner:{owner}")],
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

    /// Every machine action so far.
    pub fn actions(&self) -> Vec<Value> {
        self.world
            .lock()
            .map(|w| w.actions.clone())
            .unwrap_or_default()
    }
}

impl Default for DefenderSandbox {
    fn default() -> Self {
        DefenderSandbox::seeded()
    }
}

/// The routes, relative to the mount point (`/defender`).
pub fn router(state: DefenderSandbox) -> Router {
    Router::new()
        .route("/login/{tenant}/oauth2/v2.0/token", post(token))
        .route("/api/machines", get(list_machines))
        .route("/api/machines/{id}", get(get_machine))
        .route("/api/machines/{id}/{verb}", post(machine_action))
        .route("/api/machineactions", get(list_actions))
        .route("/api/machineactions/{id}/getPackageUri", get(package_uri))
        .with_state(state)
}

fn mde_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message, "target": random_hex(32)}});
    (status, Json(body)).into_response()
}

fn internal() -> Response {
    mde_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerError",
        "The sandbox state is unavailable.",
    )
}

async fn token(
    State(s): State<DefenderSandbox>,
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
            SCOPE,
        ),
    ) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let Ok(mut w) = s.world.lock() else {
        return internal();
    };
    w.tokens.insert(access.clone());
    Json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": access}))
        .into_response()
}

fn unauthorised(s: &DefenderSandbox, headers: &HeaderMap) -> Option<Response> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let known = value.strip_prefix("Bearer ").is_some_and(|t| {
        s.world
            .lock()
            .map(|w| w.tokens.contains(t))
            .unwrap_or(false)
    });
    (!known).then(|| {
        mde_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Authorization has been denied for this request.",
        )
    })
}

/// The value in `<field> eq '<value>'`.
fn eq_filter(filter: Option<&String>, field: &str) -> Option<String> {
    let rest = filter?.trim().strip_prefix(field)?.trim_start();
    let inner = rest.strip_prefix("eq '")?.strip_suffix('\'')?;
    Some(inner.replace("''", "'"))
}

async fn list_machines(
    State(s): State<DefenderSandbox>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = unauthorised(&s, &headers) {
        return r;
    }
    let Ok(w) = s.world.lock() else {
        return internal();
    };
    let name = eq_filter(q.get("$filter"), "computerDnsName");
    let value: Vec<Value> = w
        .machines
        .iter()
        .filter(|m| match &name {
            Some(n) => m["computerDnsName"]
                .as_str()
                .is_some_and(|x| x.eq_ignore_ascii_case(n)),
            None => true,
        })
        .cloned()
        .collect();
    Json(json!({"@odata.context": "https://api.security.microsoft.com/api/$metadata#Machines", "value": value}))
        .into_response()
}

async fn get_machine(
    State(s): State<DefenderSandbox>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = unauthorised(&s, &headers) {
        return r;
    }
    let Ok(w) = s.world.lock() else {
        return internal();
    };
    match w
        .machines
        .iter()
        .find(|m| m["id"].as_str() == Some(id.as_str()))
    {
        Some(m) => Json(m.clone()).into_response(),
        None => mde_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("Machine {id} was not found"),
        ),
    }
}

async fn list_actions(
    State(s): State<DefenderSandbox>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = unauthorised(&s, &headers) {
        return r;
    }
    let Ok(mut w) = s.world.lock() else {
        return internal();
    };
    let machine = eq_filter(q.get("$filter"), "machineId");
    let value: Vec<Value> = w
        .actions
        .iter()
        .filter(|a| machine.as_deref().is_none_or(|m| a["machineId"] == m))
        .cloned()
        .collect();
    // Simulated time: what was reported pending has completed by the next look.
    for a in w.actions.iter_mut() {
        if a["status"] == "Pending" && machine.as_deref().is_none_or(|m| a["machineId"] == m) {
            a["status"] = json!("Succeeded");
            a["lastUpdateDateTimeUtc"] = json!(now());
        }
    }
    Json(json!({"@odata.context": "https://api.security.microsoft.com/api/$metadata#MachineActions", "value": value}))
        .into_response()
}

async fn machine_action(
    State(s): State<DefenderSandbox>,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    body: Option<Json<Value>>,
) -> Response {
    if let Some(r) = unauthorised(&s, &headers) {
        return r;
    }
    let ty = match verb.as_str() {
        "isolate" => "Isolate",
        "unisolate" => "Unisolate",
        "collectInvestigationPackage" => "CollectInvestigationPackage",
        _ => return mde_error(StatusCode::NOT_FOUND, "NotFound", "No such machine action"),
    };
    let body = body.map(|Json(v)| v).unwrap_or(Value::Null);
    let Some(comment) = body.get("Comment").and_then(Value::as_str) else {
        return mde_error(
            StatusCode::BAD_REQUEST,
            "MissingRequiredParameter",
            "Comment is required (parameter names are case-sensitive)",
        );
    };
    let scope = if ty == "Isolate" {
        match body.get("IsolationType").and_then(Value::as_str) {
            None => Some("Full"),
            Some(t @ ("Full" | "Selective" | "UnManagedDevice")) => Some(t),
            Some(_) => {
                return mde_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestBody",
                    "IsolationType must be Full, Selective or UnManagedDevice",
                )
            }
        }
    } else {
        None
    };
    let Ok(mut w) = s.world.lock() else {
        return internal();
    };
    w.calls.push(format!("POST /api/machines/{id}/{verb}"));
    let Some(machine) = w.machines.iter().find(|m| m["id"] == id.as_str()).cloned() else {
        return mde_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("Machine {id} was not found"),
        );
    };
    let busy = w.actions.iter().any(|a| {
        a["machineId"] == id.as_str()
            && a["type"] == ty
            && matches!(a["status"].as_str(), Some("Pending" | "InProgress"))
    });
    if busy {
        return mde_error(
            StatusCode::BAD_REQUEST,
            "ActiveRequestAlreadyExists",
            "Action is already in progress",
        );
    }
    let t = now();
    let action = json!({
        "id": format!("{}-{}-{}-{}-{}", random_hex(8), random_hex(4), random_hex(4), random_hex(4), random_hex(12)),
        "type": ty, "scope": scope, "requestor": SANDBOX_CLIENT_ID, "requestorComment": comment,
        "status": "Pending", "machineId": id, "computerDnsName": machine["computerDnsName"],
        "creationDateTimeUtc": t, "lastUpdateDateTimeUtc": t,
    });
    w.actions.push(action.clone());
    (StatusCode::CREATED, Json(action)).into_response()
}

async fn package_uri(
    State(s): State<DefenderSandbox>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = unauthorised(&s, &headers) {
        return r;
    }
    let Ok(w) = s.world.lock() else {
        return internal();
    };
    let ready = w.actions.iter().any(|a| {
        a["id"] == id.as_str()
            && a["type"] == "CollectInvestigationPackage"
            && a["status"] == "Succeeded"
    });
    if !ready {
        return mde_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "The investigation package is not available",
        );
    }
    let expires =
        (Utc::now() + chrono::Duration::minutes(10)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let link = format!(
        "https://userrequests-us.securitycenter.windows.com/safedownload/{id}.zip?sv=2019-02-02&se={}&sr=b&sp=r&sig={}",
        expires.replace(':', "%3A"),
        random_hex(43)
    );
    Json(json!({"@odata.context": "https://api.security.microsoft.com/api/$metadata#Edm.String", "value": link}))
        .into_response()
}
