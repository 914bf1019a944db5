//! A stateful imitation of the Okta Management API endpoints the `okta` connector calls,
//! mounted by [`super::Sandbox::router`] under `/okta` (configure the connector with
//! `base_url: http://127.0.0.1:PORT/okta` and a token file holding [`SANDBOX_TOKEN`]).
//!
//! Faithful where it matters to the connector: `Authorization: SSWS <token>` (else 401
//! `E0000011`), Okta's error body `{errorCode, errorSummary, errorLink, errorId,
//! errorCauses}`, lookups by id, login or login shortname, `search` on `profile.login` /
//! `profile.email` / `id` / `status`, the lifecycle moves answering 400 `E0000001` in the
//! wrong state, `204` for clearing sessions, a System Log whose bounded queries page through
//! `Link: <…>; rel="next"` (an opaque `after` cursor that may not be combined with `since`),
//! and throttling (429 `E0000047` with `X-Rate-Limit-*` headers) on demand.
//!
//! Seeded with the suspect `j.smith@example.com` (ACTIVE, a week of suspicious sign-ins) and
//! `dana@example.com`. Lifecycle moves and session clears are added to the System Log, as
//! Okta does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::addresses;

/// The API token the sandbox accepts (`Authorization: SSWS <this>`).
pub const SANDBOX_TOKEN: &str = "cordon-sandbox-okta-token";
/// The seeded suspect's Okta id.
pub const SUSPECT_ID: &str = "00u1jsmith0suspect01";
/// The seeded analyst's Okta id.
pub const ANALYST_ID: &str = "00u2dana0analyst0001";
/// The admin the API token belongs to (the actor of lifecycle events).
const ADMIN_ID: &str = "00u0sandbox0admin001";

#[derive(Debug, Clone)]
struct SbUser {
    id: String,
    login: String,
    email: String,
    first: String,
    last: String,
    status: &'static str,
    created: String,
    status_changed: String,
}

#[derive(Debug, Default)]
struct OktaWorld {
    users: Vec<SbUser>,
    /// System Log events, in `published` order.
    events: Vec<Value>,
    /// Mutating requests received, as `METHOD path` lines.
    calls: Vec<String>,
    /// The next this many requests are answered 429.
    throttle: u32,
    event_seq: u64,
}

/// The Okta sandbox's state. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct OktaSandbox {
    world: Arc<Mutex<OktaWorld>>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl OktaSandbox {
    /// Seeded with the suspect and the analyst, and a week of their sign-in events.
    pub fn seeded() -> OktaSandbox {
        let s = OktaSandbox::default();
        let now = Utc::now();
        let created = ts(now - Duration::days(200));
        if let Ok(mut w) = s.world.lock() {
            for (id, login, first, last) in [
                (SUSPECT_ID, "j.smith@example.com", "John", "Smith"),
                (ANALYST_ID, "dana@example.com", "Dana", "Analyst"),
            ] {
                w.users.push(SbUser {
                    id: id.into(),
                    login: login.into(),
                    email: login.into(),
                    first: first.into(),
                    last: last.into(),
                    status: "ACTIVE",
                    created: created.clone(),
                    status_changed: created.clone(),
                });
            }
            // The suspect signs in from the laptop farm's home broadband, through a
            // commercial VPN and from abroad, with remote-access tools; the analyst from the
            // office.
            let suspect = [
                ("user.session.start", addresses::VPN_EXIT, "AnyDesk/8.0.8"),
                (
                    "user.authentication.sso",
                    addresses::US_RESIDENTIAL,
                    "Mozilla/5.0 Chrome/131",
                ),
                (
                    "app.oauth2.as.token.grant",
                    addresses::FOREIGN,
                    "git/2.43.0",
                ),
                (
                    "user.authentication.auth_via_mfa",
                    addresses::FOREIGN_V6,
                    "Mozilla/5.0 Chrome/131",
                ),
                (
                    "policy.evaluate_sign_on",
                    addresses::VPN_EXIT,
                    "TeamViewer/15",
                ),
            ];
            for i in 0..150i64 {
                let (ev, ip, ua) = suspect[(i as usize) % suspect.len()];
                let at = now - Duration::days(7) + Duration::minutes(i * 67);
                w.push_event(
                    at,
                    ev,
                    (SUSPECT_ID, "j.smith@example.com", "John Smith"),
                    None,
                    ip,
                    ua,
                );
            }
            for i in 0..30i64 {
                let at = now - Duration::days(7) + Duration::minutes(i * 331 + 13);
                w.push_event(
                    at,
                    "user.session.start",
                    (ANALYST_ID, "dana@example.com", "Dana Analyst"),
                    None,
                    addresses::OFFICE,
                    "Mozilla/5.0 Firefox/133",
                );
            }
            w.events
                .sort_by(|a, b| a["published"].as_str().cmp(&b["published"].as_str()));
        }
        s
    }

    /// Mutating requests received so far, as `METHOD path` lines.
    pub fn calls(&self) -> Vec<String> {
        self.world
            .lock()
            .map(|w| w.calls.clone())
            .unwrap_or_default()
    }

    /// A user's status, by login or id.
    pub fn status_of(&self, user: &str) -> Option<String> {
        let w = self.world.lock().ok()?;
        w.find(user).map(|u| u.status.to_string())
    }

    /// Answer the next `n` requests with 429 `E0000047`.
    pub fn throttle_next(&self, n: u32) {
        if let Ok(mut w) = self.world.lock() {
            w.throttle = n;
        }
    }

    /// How many System Log events mention this user id as actor or target.
    pub fn event_count(&self, user_id: &str) -> usize {
        self.world
            .lock()
            .map(|w| {
                w.events
                    .iter()
                    .filter(|e| {
                        event_mentions(e, "actor.id", user_id)
                            || event_mentions(e, "target.id", user_id)
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

impl OktaWorld {
    fn find(&self, key: &str) -> Option<&SbUser> {
        self.index_of(key).map(|i| &self.users[i])
    }

    /// By id, login (case-insensitive) or unambiguous login shortname.
    fn index_of(&self, key: &str) -> Option<usize> {
        if let Some(i) = self
            .users
            .iter()
            .position(|u| u.id == key || u.login.eq_ignore_ascii_case(key))
        {
            return Some(i);
        }
        let short: Vec<usize> = self
            .users
            .iter()
            .enumerate()
            .filter(|(_, u)| {
                u.login
                    .split('@')
                    .next()
                    .is_some_and(|s| s.eq_ignore_ascii_case(key))
            })
            .map(|(i, _)| i)
            .collect();
        (short.len() == 1).then(|| short[0])
    }

    fn push_event(
        &mut self,
        at: DateTime<Utc>,
        event_type: &str,
        actor: (&str, &str, &str),
        target: Option<(&str, &str, &str)>,
        ip: &str,
        ua: &str,
    ) {
        self.event_seq += 1;
        let targets: Vec<Value> = target
            .map(|(id, alt, name)| {
                vec![json!({"id": id, "type": "User", "alternateId": alt, "displayName": name})]
            })
            .unwrap_or_default();
        self.events.push(json!({
            "uuid": format!("sbx-{:08}-0000-4000-8000-{:012}", self.event_seq, self.event_seq),
            "published": ts(at),
            "eventType": event_type,
            "version": "0",
            "severity": "INFO",
            "legacyEventType": null,
            "displayMessage": event_type.replace('.', " "),
            "actor": {"id": actor.0, "type": "User", "alternateId": actor.1, "displayName": actor.2, "detailEntry": null},
            "client": {"ipAddress": ip, "userAgent": {"rawUserAgent": ua, "os": "Unknown", "browser": "UNKNOWN"}, "zone": "null", "device": "Computer",
                       "geographicalContext": geographical_context(ip)},
            "securityContext": {"isProxy": ip == addresses::VPN_EXIT},
            "outcome": {"result": "SUCCESS", "reason": null},
            "target": targets,
            "transaction": {"type": "WEB", "id": format!("sbx-tx-{}", self.event_seq)},
        }));
    }
}

/// Okta's `client.geographicalContext` for a sandbox address (null when unknown).
fn geographical_context(ip: &str) -> Value {
    match addresses::geo(ip) {
        Some((_, country, city)) => json!({"city": city, "state": null, "country": country,
                                           "postalCode": null, "geolocation": null}),
        None => Value::Null,
    }
}

/// Every route, relative to where the router is mounted.
pub fn router(state: OktaSandbox) -> Router {
    Router::new()
        .route("/api/v1/users", get(list_users))
        .route("/api/v1/users/{id}", get(get_user))
        .route("/api/v1/users/{id}/lifecycle/suspend", post(suspend))
        .route("/api/v1/users/{id}/lifecycle/unsuspend", post(unsuspend))
        .route("/api/v1/users/{id}/sessions", delete(clear_sessions))
        .route("/api/v1/logs", get(logs))
        .with_state(state)
}

fn epoch_now() -> i64 {
    Utc::now().timestamp()
}

/// Okta's rate-limit headers, on every answer.
fn with_rate_headers(mut resp: Response, remaining: u32) -> Response {
    let h = resp.headers_mut();
    h.insert("x-rate-limit-limit", HeaderValue::from_static("600"));
    if let Ok(v) = HeaderValue::from_str(&remaining.to_string()) {
        h.insert("x-rate-limit-remaining", v);
    }
    if let Ok(v) = HeaderValue::from_str(&(epoch_now() + 1).to_string()) {
        h.insert("x-rate-limit-reset", v);
    }
    resp
}

/// An Okta error answer.
fn okta_error(status: StatusCode, code: &str, summary: &str, causes: &[&str]) -> Response {
    let body = json!({
        "errorCode": code,
        "errorSummary": summary,
        "errorLink": code,
        "errorId": format!("sbx{}", epoch_now()),
        "errorCauses": causes.iter().map(|c| json!({"errorSummary": c})).collect::<Vec<_>>(),
    });
    with_rate_headers((status, Json(body)).into_response(), 599)
}

fn not_found(key: &str) -> Response {
    okta_error(
        StatusCode::NOT_FOUND,
        "E0000007",
        &format!("Not found: Resource not found: {key} (User)"),
        &[],
    )
}

fn ok_json(v: Value) -> Response {
    with_rate_headers(Json(v).into_response(), 599)
}

/// Auth and throttling, checked before every answer: `Some` is the refusal.
fn gate(s: &OktaSandbox, headers: &HeaderMap) -> Option<Response> {
    let expected = format!("SSWS {SANDBOX_TOKEN}");
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    if !authorized {
        return Some(okta_error(
            StatusCode::UNAUTHORIZED,
            "E0000011",
            "Invalid token provided",
            &[],
        ));
    }
    let Ok(mut w) = s.world.lock() else {
        return Some(StatusCode::INTERNAL_SERVER_ERROR.into_response());
    };
    if w.throttle > 0 {
        w.throttle -= 1;
        return Some(with_rate_headers(
            okta_error(
                StatusCode::TOO_MANY_REQUESTS,
                "E0000047",
                "API call exceeded rate limit due to too many requests.",
                &[],
            ),
            0,
        ));
    }
    None
}

fn user_json(u: &SbUser, base: &str) -> Value {
    json!({
        "id": u.id,
        "status": u.status,
        "created": u.created,
        "activated": u.created,
        "statusChanged": u.status_changed,
        "lastLogin": u.status_changed,
        "lastUpdated": u.status_changed,
        "passwordChanged": u.created,
        "type": {"id": "oty1sandbox0default1"},
        "profile": {
            "firstName": u.first, "lastName": u.last, "mobilePhone": null, "secondEmail": null,
            "login": u.login, "email": u.email,
        },
        "credentials": {"provider": {"type": "OKTA", "name": "OKTA"}},
        "_links": {"self": {"href": format!("{base}/api/v1/users/{}", u.id)}},
    })
}

/// `http://host/okta` from the request (whatever prefix the router is mounted under): where
/// `_links` and `Link` URLs point.
fn mount_base(headers: &HeaderMap, original: &OriginalUri) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let path = original.0.path();
    let prefix = path.find("/api/v1/").map(|i| &path[..i]).unwrap_or("");
    format!("http://{host}{prefix}")
}

async fn get_user(
    State(s): State<OktaSandbox>,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let base = mount_base(&headers, &OriginalUri(uri));
    let Ok(w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match w.find(&id) {
        Some(u) => ok_json(user_json(u, &base)),
        None => not_found(&id),
    }
}

/// One `field eq "value"` clause of a search or filter.
fn parse_clauses(expr: &str, fields: &[&str]) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for clause in expr.split(" or ") {
        let clause = clause.trim().trim_start_matches('(').trim_end_matches(')');
        let (field, rest) = clause.split_once(" eq ")?;
        let field = field.trim();
        if !fields.contains(&field) {
            return None;
        }
        let value = rest.trim().strip_prefix('"')?.strip_suffix('"')?;
        out.push((
            field.to_string(),
            value.replace("\\\"", "\"").replace("\\\\", "\\"),
        ));
    }
    Some(out)
}

async fn list_users(
    State(s): State<OktaSandbox>,
    Query(q): Query<HashMap<String, String>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let base = mount_base(&headers, &OriginalUri(uri));
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(200);
    let Ok(w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let expr = q.get("search").or_else(|| q.get("filter"));
    let matches: Vec<Value> = match expr {
        None => w
            .users
            .iter()
            .filter(|u| u.status != "DEPROVISIONED")
            .take(limit)
            .map(|u| user_json(u, &base))
            .collect(),
        Some(expr) => {
            let Some(clauses) =
                parse_clauses(expr, &["profile.login", "profile.email", "id", "status"])
            else {
                return okta_error(
                    StatusCode::BAD_REQUEST,
                    "E0000031",
                    "Invalid search criteria.",
                    &["the sandbox supports `field eq \"value\"` clauses joined by `or`"],
                );
            };
            w.users
                .iter()
                .filter(|u| {
                    clauses.iter().any(|(f, v)| match f.as_str() {
                        "profile.login" => u.login.eq_ignore_ascii_case(v),
                        "profile.email" => u.email.eq_ignore_ascii_case(v),
                        "id" => u.id == *v,
                        _ => u.status.eq_ignore_ascii_case(v),
                    })
                })
                .take(limit)
                .map(|u| user_json(u, &base))
                .collect()
        }
    };
    ok_json(Value::Array(matches))
}

async fn lifecycle(
    s: OktaSandbox,
    id: String,
    headers: HeaderMap,
    from: &'static str,
    to: &'static str,
    verb: &str,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let Ok(mut w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    w.calls
        .push(format!("POST /api/v1/users/{id}/lifecycle/{verb}"));
    let Some(i) = w.index_of(&id) else {
        return not_found(&id);
    };
    if w.users[i].status != from {
        let cause = format!(
            "Cannot {verb} a user whose status is {}; the user must be {from}",
            w.users[i].status
        );
        return okta_error(
            StatusCode::BAD_REQUEST,
            "E0000001",
            "Api validation failed: status",
            &[&cause],
        );
    }
    let now = Utc::now();
    w.users[i].status = to;
    w.users[i].status_changed = ts(now);
    let u = w.users[i].clone();
    let name = format!("{} {}", u.first, u.last);
    w.push_event(
        now,
        &format!("user.lifecycle.{verb}"),
        (ADMIN_ID, "admin@example.com", "Sandbox Admin"),
        Some((&u.id, &u.login, &name)),
        addresses::OFFICE,
        "cordon",
    );
    with_rate_headers(StatusCode::OK.into_response(), 599)
}

async fn suspend(
    State(s): State<OktaSandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    lifecycle(s, id, headers, "ACTIVE", "SUSPENDED", "suspend").await
}

async fn unsuspend(
    State(s): State<OktaSandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    lifecycle(s, id, headers, "SUSPENDED", "ACTIVE", "unsuspend").await
}

async fn clear_sessions(
    State(s): State<OktaSandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let Ok(mut w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    w.calls.push(format!("DELETE /api/v1/users/{id}/sessions"));
    // `userId` here is an id only, as the spec says.
    let Some(u) = w.users.iter().find(|u| u.id == id).cloned() else {
        return not_found(&id);
    };
    let name = format!("{} {}", u.first, u.last);
    w.push_event(
        Utc::now(),
        "user.session.clear",
        (ADMIN_ID, "admin@example.com", "Sandbox Admin"),
        Some((&u.id, &u.login, &name)),
        addresses::OFFICE,
        "cordon",
    );
    with_rate_headers(StatusCode::NO_CONTENT.into_response(), 599)
}

/// True when the event's `actor.id`/`target.id`/`actor.alternateId`/`eventType` is `value`.
fn event_mentions(e: &Value, field: &str, value: &str) -> bool {
    match field {
        "actor.id" => e["actor"]["id"].as_str() == Some(value),
        "actor.alternateId" => e["actor"]["alternateId"]
            .as_str()
            .is_some_and(|a| a.eq_ignore_ascii_case(value)),
        "target.id" => e["target"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["id"].as_str() == Some(value))),
        "eventType" => e["eventType"].as_str() == Some(value),
        _ => false,
    }
}

fn bad_request(summary: &str, cause: &str) -> Response {
    okta_error(StatusCode::BAD_REQUEST, "E0000001", summary, &[cause])
}

async fn logs(
    State(s): State<OktaSandbox>,
    Query(q): Query<HashMap<String, String>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let base = mount_base(&headers, &OriginalUri(uri.clone()));
    if q.contains_key("since") && q.contains_key("after") {
        return bad_request(
            "Api validation failed: after",
            "The 'since' and 'after' parameters cannot be combined",
        );
    }
    let parse = |name: &str| -> Result<Option<DateTime<Utc>>, String> {
        match q.get(name) {
            None => Ok(None),
            Some(v) => DateTime::parse_from_rfc3339(v)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|_| name.to_string()),
        }
    };
    let bad_date = |name: String| {
        bad_request(
            &format!("Api validation failed: {name}"),
            &format!("{name}: Invalid date. Dates must be of the form yyyy-MM-dd'T'HH:mm:ss.SSSZZ, e.g. 2013-01-01T12:00:00.000-07:00."),
        )
    };
    let until_given = match parse("until") {
        Ok(t) => t,
        Err(name) => return bad_date(name),
    };
    // The cursor carries the lower bound and the position: `<since ms>_<offset>`.
    let (since, offset) = match q.get("after") {
        Some(after) => {
            let parsed = after.split_once('_').and_then(|(a, b)| {
                Some((
                    DateTime::<Utc>::from_timestamp_millis(a.parse().ok()?)?,
                    b.parse::<usize>().ok()?,
                ))
            });
            match parsed {
                Some((t, o)) => (t, o),
                None => return bad_request("Api validation failed: after", "Invalid cursor"),
            }
        }
        None => match parse("since") {
            Ok(t) => (
                t.unwrap_or_else(|| until_given.unwrap_or_else(Utc::now) - Duration::days(7)),
                0,
            ),
            Err(name) => return bad_date(name),
        },
    };
    let until = until_given.unwrap_or_else(Utc::now);
    let limit: usize = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if l <= 1000 => l,
        Some(_) => {
            return bad_request(
                "Api validation failed: limit",
                "limit: must be between 0 and 1000",
            )
        }
    };
    let descending = match q.get("sortOrder").map(String::as_str) {
        None | Some("ASCENDING") => false,
        Some("DESCENDING") => true,
        Some(_) => {
            return bad_request(
                "Api validation failed: sortOrder",
                "sortOrder: must be ASCENDING or DESCENDING",
            )
        }
    };
    let clauses = match q.get("filter") {
        None => None,
        Some(f) => match parse_clauses(
            f,
            &["actor.id", "target.id", "actor.alternateId", "eventType"],
        ) {
            Some(c) => Some(c),
            None => {
                return okta_error(
                    StatusCode::BAD_REQUEST,
                    "E0000053",
                    "Invalid filter",
                    &["the sandbox supports actor.id, target.id, actor.alternateId and eventType with `eq`, joined by `or`"],
                )
            }
        },
    };
    let Ok(w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let (since_s, until_s) = (ts(since), ts(until));
    let mut matching: Vec<&Value> = w
        .events
        .iter()
        .filter(|e| {
            let p = e["published"].as_str().unwrap_or("");
            p >= since_s.as_str() && p < until_s.as_str()
        })
        .filter(|e| {
            clauses
                .as_ref()
                .is_none_or(|c| c.iter().any(|(f, v)| event_mentions(e, f, v)))
        })
        .collect();
    if descending {
        matching.reverse();
    }
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|e| (*e).clone())
        .collect();
    let next_offset = offset + page.len();
    // Bounded queries end without a `next` link; polling queries (no `until`) always have one.
    let more = next_offset < matching.len() || until_given.is_none();
    let self_link = format!(
        "<{base}/api/v1/logs{}>; rel=\"self\"",
        uri.query().map(|q| format!("?{q}")).unwrap_or_default()
    );
    let mut resp = ok_json(Value::Array(page));
    if let Ok(v) = HeaderValue::from_str(&self_link) {
        resp.headers_mut().append(header::LINK, v);
    }
    if more && limit > 0 {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(u) = q.get("until") {
            query.append_pair("until", u);
        }
        if let Some(f) = q.get("filter") {
            query.append_pair("filter", f);
        }
        query.append_pair("limit", &limit.to_string());
        if let Some(o) = q.get("sortOrder") {
            query.append_pair("sortOrder", o);
        }
        query.append_pair(
            "after",
            &format!("{}_{}", since.timestamp_millis(), next_offset),
        );
        let next = format!("<{base}/api/v1/logs?{}>; rel=\"next\"", query.finish());
        if let Ok(v) = HeaderValue::from_str(&next) {
            resp.headers_mut().append(header::LINK, v);
        }
    }
    resp
}
