//! A stateful imitation of the Microsoft identity platform token endpoint and the Graph
//! v1.0 calls the `entra` connector makes, mounted under `/entra`:
//!
//! - `POST /entra/login/{tenant}/oauth2/v2.0/token`: client credentials, checked against
//!   [`SANDBOX_TENANT_ID`], [`SANDBOX_CLIENT_ID`], [`SANDBOX_CLIENT_SECRET`] and the Graph
//!   `.default` scope, with Microsoft's OAuth error shapes (`AADSTS…` descriptions).
//! - `GET /entra/v1.0/users/{id | userPrincipalName}`, `GET /entra/v1.0/users?$filter=mail
//!   eq '…'`, `PATCH /entra/v1.0/users/{id}` (`accountEnabled`, 204),
//!   `POST /entra/v1.0/users/{id}/revokeSignInSessions` (200 `true`, as the service does).
//! - `GET /entra/v1.0/auditLogs/signIns` and `/directoryAudits`: `$filter` on the user and
//!   time range, `$top`, `@odata.nextLink` paging with `$skiptoken`, and the 5 requests per
//!   10 s reports limit answered with 429 and `Retry-After`.
//!
//! Every Graph call needs `Authorization: Bearer <a token this sandbox issued>`; errors use
//! Graph's `{"error": {"code", "message", "innerError"}}` body. Seeded with
//! `j.smith@example.com` (the suspect: enabled, with suspicious sign-ins and audit events)
//! and `dana@example.com` (whose UPN is `dana@example.onmicrosoft.com`, so looking her up
//! by email exercises the mail fallback).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use serde_json::{json, Value};

use super::addresses;

/// The tenant the sandbox knows.
pub const SANDBOX_TENANT_ID: &str = "00000000-0000-4000-8000-00000000e17a";
/// The application (client) id the sandbox accepts.
pub const SANDBOX_CLIENT_ID: &str = "11111111-1111-4111-8111-111111111111";
/// The client secret the sandbox accepts (a fixed, public sandbox credential).
pub const SANDBOX_CLIENT_SECRET: &str = "sandbox-entra-client-secret";
/// The object id of the seeded suspect, `j.smith@example.com`.
pub const SUSPECT_ID: &str = "6d3c1f52-8a4e-4b7a-9c1d-2f5e8a9b0c11";
/// The object id of `dana@example.com`.
pub const DANA_ID: &str = "a1b2c3d4-0e1f-4a5b-8c6d-7e8f9a0b1c2d";

const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const REPORTS_LIMIT: usize = 5;
const REPORTS_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct SandboxUser {
    id: String,
    upn: String,
    mail: String,
    name: String,
    enabled: bool,
    sessions_valid_from: String,
}

#[derive(Debug)]
struct World {
    users: Vec<SandboxUser>,
    tokens: BTreeSet<String>,
    sign_ins: Vec<Value>,
    audits: Vec<Value>,
    report_hits: VecDeque<Instant>,
    /// Largest page served (Graph's is 1,000; the seeded sandbox uses a small one so that
    /// paging is exercised with a handful of records).
    max_page: usize,
    calls: Vec<String>,
}

/// The sandbox's Entra tenant. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct EntraSandbox {
    world: Arc<Mutex<World>>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
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

impl EntraSandbox {
    /// The seeded tenant: the suspect with a few days of sign-ins and audit events (times
    /// relative to now, so any recent `since` finds them), and Dana.
    pub fn seeded() -> EntraSandbox {
        let now = Utc::now();
        let users = vec![
            SandboxUser {
                id: SUSPECT_ID.into(),
                upn: "j.smith@example.com".into(),
                mail: "j.smith@example.com".into(),
                name: "John Smith".into(),
                enabled: true,
                sessions_valid_from: "2025-01-06T09:00:00Z".into(),
            },
            SandboxUser {
                id: DANA_ID.into(),
                upn: "dana@example.onmicrosoft.com".into(),
                mail: "dana@example.com".into(),
                name: "Dana Analyst".into(),
                enabled: true,
                sessions_valid_from: "2024-11-02T08:00:00Z".into(),
            },
        ];
        // The suspect: the company laptop at the laptop farm (US broadband), sessions
        // through a commercial VPN, and sign-ins from abroad, over IPv4 and IPv6.
        let sign_in_seed = [
            (1, addresses::VPN_EXIT, "AnyDesk", "Windows 10"),
            (3, addresses::VPN_EXIT, "Microsoft Teams", "Windows 10"),
            (
                7,
                addresses::FOREIGN,
                "Office 365 Exchange Online",
                "Windows 10",
            ),
            (20, addresses::FOREIGN_V6, "Azure Portal", "Windows 10"),
            (26, addresses::US_RESIDENTIAL, "GitHub Enterprise", "MacOs"),
            (49, addresses::US_RESIDENTIAL, "Microsoft Teams", "MacOs"),
            (
                72,
                addresses::FOREIGN,
                "Office 365 SharePoint Online",
                "Windows 10",
            ),
        ];
        // Newest first, as Graph returns them.
        let mut sign_ins: Vec<Value> = sign_in_seed
            .iter()
            .map(|(hours, ip, app, os)| {
                let country = addresses::geo(ip).map(|g| g.0);
                json!({
                    "id": guid(),
                    "createdDateTime": ts(now - chrono::Duration::hours(*hours)),
                    "userDisplayName": "John Smith",
                    "userPrincipalName": "j.smith@example.com",
                    "userId": SUSPECT_ID,
                    "appDisplayName": app,
                    "ipAddress": ip,
                    "clientAppUsed": "Browser",
                    "conditionalAccessStatus": "notApplied",
                    "isInteractive": true,
                    "status": {"errorCode": 0, "failureReason": "Other.", "additionalDetails": null},
                    "deviceDetail": {"deviceId": "", "displayName": "", "operatingSystem": os, "browser": "Chrome 131.0.0", "isCompliant": false, "isManaged": false, "trustType": ""},
                    "location": {"city": null, "state": null, "countryOrRegion": country},
                })
            })
            .collect();
        sign_ins.push(json!({
            "id": guid(),
            "createdDateTime": ts(now - chrono::Duration::hours(5)),
            "userDisplayName": "Dana Analyst",
            "userPrincipalName": "dana@example.onmicrosoft.com",
            "userId": DANA_ID,
            "appDisplayName": "Microsoft Teams",
            "ipAddress": addresses::OFFICE,
            "status": {"errorCode": 0},
            "location": {"countryOrRegion": "US"},
        }));
        sign_ins.sort_by(|a, b| {
            b["createdDateTime"]
                .as_str()
                .cmp(&a["createdDateTime"].as_str())
        });
        let audit_seed = [
            (
                2,
                "User registered security info",
                "UserManagement",
                "Authenticator App",
            ),
            (
                6,
                "Consent to application",
                "ApplicationManagement",
                "AnyDesk Remote",
            ),
            (30, "Update user", "UserManagement", "John Smith"),
        ];
        let audits = audit_seed
            .iter()
            .map(|(hours, activity, category, target)| {
                json!({
                    "id": format!("Directory_{}", guid()),
                    "category": category,
                    "correlationId": guid(),
                    "result": "success",
                    "resultReason": "",
                    "activityDisplayName": activity,
                    "activityDateTime": ts(now - chrono::Duration::hours(*hours)),
                    "loggedByService": "Core Directory",
                    "operationType": "Update",
                    "initiatedBy": {"app": null, "user": {"id": SUSPECT_ID, "displayName": null, "userPrincipalName": "j.smith@example.com", "ipAddress": addresses::VPN_EXIT}},
                    "targetResources": [{"id": SUSPECT_ID, "displayName": target, "type": "User", "userPrincipalName": "j.smith@example.com"}],
                    "additionalDetails": [],
                })
            })
            .collect();
        EntraSandbox {
            world: Arc::new(Mutex::new(World {
                users,
                tokens: BTreeSet::new(),
                sign_ins,
                audits,
                report_hits: VecDeque::new(),
                max_page: 3,
                calls: Vec::new(),
            })),
        }
    }

    /// Mutating Graph calls received so far, as `METHOD path` lines.
    pub fn calls(&self) -> Vec<String> {
        self.world
            .lock()
            .map(|w| w.calls.clone())
            .unwrap_or_default()
    }

    /// Whether the user (id or UPN) may sign in; None when unknown.
    pub fn account_enabled(&self, user: &str) -> Option<bool> {
        let w = self.world.lock().ok()?;
        find(&w.users, user).map(|u| u.enabled)
    }

    /// Serve at most `n` records per page (at least 1).
    pub fn set_max_page(&self, n: usize) {
        if let Ok(mut w) = self.world.lock() {
            w.max_page = n.max(1);
        }
    }
}

/// The routes, relative to the mount point (`/entra` in [`super::Sandbox::router`]).
pub fn router(state: EntraSandbox) -> Router {
    Router::new()
        .route("/login/{tenant}/oauth2/v2.0/token", post(token))
        .route("/v1.0/users", get(list_users))
        .route("/v1.0/users/{user}", get(get_user).patch(patch_user))
        .route("/v1.0/users/{user}/revokeSignInSessions", post(revoke))
        .route("/v1.0/auditLogs/signIns", get(sign_ins))
        .route("/v1.0/auditLogs/directoryAudits", get(directory_audits))
        .with_state(state)
}

fn find<'a>(users: &'a [SandboxUser], key: &str) -> Option<&'a SandboxUser> {
    users
        .iter()
        .find(|u| u.id.eq_ignore_ascii_case(key) || u.upn.eq_ignore_ascii_case(key))
}

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message, "innerError": {
        "date": ts(Utc::now()), "request-id": guid(), "client-request-id": guid()}}});
    (status, Json(body)).into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!("{description}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}", guid(), guid(), ts(Utc::now())),
        "error_codes": [],
        "timestamp": ts(Utc::now()),
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

fn user_json(u: &SandboxUser) -> Value {
    json!({
        "id": u.id,
        "displayName": u.name,
        "userPrincipalName": u.upn,
        "mail": u.mail,
        "accountEnabled": u.enabled,
        "signInSessionsValidFromDateTime": u.sessions_valid_from,
    })
}

async fn token(
    State(s): State<EntraSandbox>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if tenant != SANDBOX_TENANT_ID {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            &format!("AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        );
    }
    if get("grant_type") != "client_credentials" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    if get("client_id") != SANDBOX_CLIENT_ID {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            &format!(
                "AADSTS700016: Application with identifier '{}' was not found in the directory.",
                get("client_id")
            ),
        );
    }
    if get("client_secret") != SANDBOX_CLIENT_SECRET {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            &format!("AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{SANDBOX_CLIENT_ID}'."),
        );
    }
    if get("scope") != GRAPH_SCOPE {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS1002012: The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).",
        );
    }
    let access = format!(
        "sbx-entra-{}",
        hex::encode(rand::thread_rng().gen::<[u8; 24]>())
    );
    let Ok(mut w) = s.world.lock() else {
        return internal();
    };
    w.tokens.insert(access.clone());
    Json(json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": access}))
        .into_response()
}

/// Graph's bearer check: None when authorised, else the 401 to send.
fn unauthorised(s: &EntraSandbox, headers: &HeaderMap) -> Option<Response> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(token) = value.strip_prefix("Bearer ") else {
        return Some(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token is empty.",
        ));
    };
    let known = s
        .world
        .lock()
        .map(|w| w.tokens.contains(token))
        .unwrap_or(false);
    (!known).then(|| {
        graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
        )
    })
}

fn not_found(key: &str) -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!("Resource '{key}' does not exist or one of its queried reference-property objects are not present."),
    )
}

fn unsupported_query() -> Response {
    graph_error(
        StatusCode::BAD_REQUEST,
        "Request_UnsupportedQuery",
        "Unsupported Query.",
    )
}

async fn get_user(
    State(s): State<EntraSandbox>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Response {
    if let Some(r) = unauthorised(&s, &headers) {
        return r;
    }
    let Ok(w) = s.world.lock() else {
        return internal();
    };
    match find(&w.users, &user) {
        Some(u) => {
            let mut body = user_json(u);
            body["@odata.context"] =
                json!("https://graph.microsoft.com/v1.0/$metadata#users/$entity");
            Json(body).into_response()
        }
        None => not_found(&user),
    }
}

async fn list_users(
    State(s): State<EntraSandbox>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = unauthorised(&s, &headers) {
        return r;
    }
    let Some(filter) = q.get("$filter") else {
        return unsupported_query();
    };
    let Some(mail) = filter
        .strip_prefix("mail eq '")
        .and_then(|r| r.strip_suffix('\''))
        .map(|m| m.replace("''", "'"))
    else {
        return unsupported_query();
    };
    let Ok(w) = s.world.lock() else {
        return internal();
    };
    let value: Vec<Value> = w
        .users
        .iter()
        .filter(|u| u.mail.eq_ignore_ascii_case(&mail))
        .map(user_json)
        .collect();
    Json(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users", "value": value}))
        .into_response()
}

async fn patch_user(
    State(s): State<EntraSandbox>,
    headers: HeaderMap,
    Path(user): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = unauthorised(&s, &headers) {
        return r;
    }
    let Ok(Value::Object(changes)) = serde_json::from_slice::<Value>(&body) else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Empty Payload. JSON content expected.",
        );
    };
    let Ok(mut w) = s.world.lock() else {
        return internal();
    };
    w.calls.push(format!("PATCH /v1.0/users/{user}"));
    let Some(u) = w
        .users
        .iter_mut()
        .find(|u| u.id.eq_ignore_ascii_case(&user) || u.upn.eq_ignore_ascii_case(&user))
    else {
        return not_found(&user);
    };
    for (k, v) in &changes {
        match (k.as_str(), v) {
            ("accountEnabled", Value::Bool(b)) => u.enabled = *b,
            ("displayName", Value::String(n)) => u.name = n.clone(),
            ("accountEnabled" | "displayName", _) => {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "Request_BadRequest",
                    &format!("Invalid value specified for property '{k}' of resource 'User'."),
                )
            }
            _ => {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "Request_BadRequest",
                    &format!("Property '{k}' does not exist on type 'microsoft.graph.user'."),
                )
            }
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn revoke(
    State(s): State<EntraSandbox>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Response {
    if let Some(r) = unauthorised(&s, &headers) {
        return r;
    }
    let Ok(mut w) = s.world.lock() else {
        return internal();
    };
    w.calls
        .push(format!("POST /v1.0/users/{user}/revokeSignInSessions"));
    let Some(u) = w
        .users
        .iter_mut()
        .find(|u| u.id.eq_ignore_ascii_case(&user) || u.upn.eq_ignore_ascii_case(&user))
    else {
        return not_found(&user);
    };
    u.sessions_valid_from = ts(Utc::now());
    // The documented answer is 204; the service sends 200 with `true` (known issue).
    Json(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Edm.Boolean", "value": true}))
        .into_response()
}

/// One `$filter` clause the reports endpoints understand.
struct Clauses {
    user: Option<String>,
    ge: Option<DateTime<Utc>>,
    le: Option<DateTime<Utc>>,
}

fn parse_filter(filter: &str, user_field: &str, time_field: &str) -> Option<Clauses> {
    let mut c = Clauses {
        user: None,
        ge: None,
        le: None,
    };
    for clause in filter.split(" and ") {
        let mut parts = clause.trim().splitn(3, ' ');
        let (field, op, value) = (parts.next()?, parts.next()?, parts.next()?);
        if field == user_field && op == "eq" {
            let v = value.strip_prefix('\'')?.strip_suffix('\'')?;
            c.user = Some(v.replace("''", "'"));
        } else if field == time_field && (op == "ge" || op == "le") {
            let t = DateTime::parse_from_rfc3339(value)
                .ok()?
                .with_timezone(&Utc);
            if op == "ge" {
                c.ge = Some(t);
            } else {
                c.le = Some(t);
            }
        } else {
            return None;
        }
    }
    Some(c)
}

struct ReportQuery<'a> {
    s: &'a EntraSandbox,
    headers: &'a HeaderMap,
    uri: &'a axum::http::Uri,
    query: &'a HashMap<String, String>,
    user_field: &'a str,
    time_field: &'a str,
    /// Dotted path to the record's user id.
    user_path: &'a [&'a str],
    audits: bool,
}

async fn sign_ins(
    State(s): State<EntraSandbox>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    report(ReportQuery {
        s: &s,
        headers: &headers,
        uri: &uri,
        query: &q,
        user_field: "userId",
        time_field: "createdDateTime",
        user_path: &["userId"],
        audits: false,
    })
}

async fn directory_audits(
    State(s): State<EntraSandbox>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    report(ReportQuery {
        s: &s,
        headers: &headers,
        uri: &uri,
        query: &q,
        user_field: "initiatedBy/user/id",
        time_field: "activityDateTime",
        user_path: &["initiatedBy", "user", "id"],
        audits: true,
    })
}

fn report(r: ReportQuery<'_>) -> Response {
    if let Some(resp) = unauthorised(r.s, r.headers) {
        return resp;
    }
    let Ok(mut w) = r.s.world.lock() else {
        return internal();
    };
    // The "identity and access reports" limit: 5 requests per 10 s per app and tenant.
    let now = Instant::now();
    while w
        .report_hits
        .front()
        .is_some_and(|t| now.duration_since(*t) >= REPORTS_WINDOW)
    {
        w.report_hits.pop_front();
    }
    if w.report_hits.len() >= REPORTS_LIMIT {
        let wait = w
            .report_hits
            .front()
            .map(|t| REPORTS_WINDOW.saturating_sub(now.duration_since(*t)))
            .unwrap_or(REPORTS_WINDOW);
        let mut resp = graph_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests.",
        );
        if let Ok(v) = wait.as_secs().max(1).to_string().parse() {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    w.report_hits.push_back(now);
    let filter = r.query.get("$filter").map(String::as_str).unwrap_or("");
    let clauses = if filter.is_empty() {
        Some(Clauses {
            user: None,
            ge: None,
            le: None,
        })
    } else {
        parse_filter(filter, r.user_field, r.time_field)
    };
    let Some(c) = clauses else {
        return unsupported_query();
    };
    let top = match r.query.get("$top").map(|t| t.parse::<usize>()) {
        None => 1000,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                "Invalid value for $top: it must be between 1 and 1000.",
            )
        }
    };
    let page = top.min(w.max_page);
    let skip: usize = r
        .query
        .get("$skiptoken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let source = if r.audits { &w.audits } else { &w.sign_ins };
    let matching: Vec<&Value> = source
        .iter()
        .filter(|rec| {
            let mut v = *rec;
            for k in r.user_path {
                v = &v[*k];
            }
            let t = rec[r.time_field]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc));
            c.user.as_deref().is_none_or(|u| v.as_str() == Some(u))
                && c.ge.is_none_or(|ge| t.is_some_and(|t| t >= ge))
                && c.le.is_none_or(|le| t.is_some_and(|t| t <= le))
        })
        .collect();
    let value: Vec<&Value> = matching.iter().skip(skip).take(page).copied().collect();
    let mut body = json!({
        "@odata.context": format!("https://graph.microsoft.com/v1.0/$metadata#auditLogs/{}", if r.audits { "directoryAudits" } else { "signIns" }),
        "value": value,
    });
    if skip + page < matching.len() {
        let host = r
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        let kept: Vec<&str> = r
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| {
                !p.is_empty() && !p.starts_with("$skiptoken=") && !p.starts_with("%24skiptoken=")
            })
            .collect();
        let mut query = kept.join("&");
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(&format!("$skiptoken={}", skip + page));
        body["@odata.nextLink"] = json!(format!("http://{host}{}?{query}", r.uri.path()));
    }
    Json(body).into_response()
}
