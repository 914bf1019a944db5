//! A SCIM 2.0 service provider imitation (RFC 7644), mounted under `/scim`: a connector
//! with `base_url: http://127.0.0.1:PORT/scim` and the token [`SANDBOX_TOKEN`] talks to it.
//!
//! It serves what the `scim` connector calls, statefully: `GET /Users` (a ListResponse,
//! 1-based `startIndex` and `count` paging, `filter=userName eq "…"` with JSON-string
//! escapes, case-insensitive), `GET /Users/{id}`, and `PATCH /Users/{id}` with a PatchOp
//! `replace` of `active` in the path form or the value-object form (answered `200` with the
//! resource). It checks `Authorization: Bearer`, the PatchOp schema and the content type,
//! and answers failures with RFC 7644 §3.12 error bodies (`status` as a string, `scimType`,
//! `detail`). [`ScimState::throttle_next`] makes the next requests answer 429 with
//! `Retry-After`, to rehearse throttling.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

/// The bearer token the sandbox accepts.
pub const SANDBOX_TOKEN: &str = "cordon-sandbox-scim-token";

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const MEDIA_TYPE: &str = "application/scim+json";

#[derive(Debug, Clone)]
struct ScimUser {
    id: String,
    user_name: String,
    given: String,
    family: String,
    active: bool,
    version: u32,
}

impl ScimUser {
    fn resource(&self) -> Value {
        json!({
            "schemas": [USER_SCHEMA],
            "id": self.id,
            "userName": self.user_name,
            "name": {
                "formatted": format!("{} {}", self.given, self.family),
                "givenName": self.given,
                "familyName": self.family,
            },
            "emails": [{"value": self.user_name, "type": "work", "primary": true}],
            "active": self.active,
            "meta": {"resourceType": "User", "version": format!("W/\"{}\"", self.version)},
        })
    }
}

#[derive(Debug, Default)]
struct World {
    /// By id, in id order (the list order).
    users: BTreeMap<String, ScimUser>,
    /// Mutating requests received, as `METHOD path` lines.
    calls: Vec<String>,
    /// Requests still to be answered 429.
    throttle: u32,
}

/// The SCIM sandbox's state. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct ScimState {
    world: Arc<Mutex<World>>,
}

impl Default for ScimState {
    /// Seeded: `j.smith@example.com` (the suspect) and `dana@example.com`, both active.
    fn default() -> Self {
        let mut users = BTreeMap::new();
        for (id, user_name, given, family) in [
            (
                "2819c223-7f76-453a-919d-413861904646",
                "j.smith@example.com",
                "John",
                "Smith",
            ),
            (
                "902c246b-6245-4190-8e05-00816be7344a",
                "dana@example.com",
                "Dana",
                "Analyst",
            ),
        ] {
            users.insert(
                id.to_string(),
                ScimUser {
                    id: id.into(),
                    user_name: user_name.into(),
                    given: given.into(),
                    family: family.into(),
                    active: true,
                    version: 1,
                },
            );
        }
        ScimState {
            world: Arc::new(Mutex::new(World {
                users,
                ..World::default()
            })),
        }
    }
}

impl ScimState {
    /// The user's `active` attribute, by userName (case-insensitive) or id.
    pub fn active(&self, user: &str) -> Option<bool> {
        let w = self.world.lock().ok()?;
        w.users
            .values()
            .find(|u| u.id == user || u.user_name.eq_ignore_ascii_case(user))
            .map(|u| u.active)
    }

    /// Mutating requests received so far, as `METHOD path` lines.
    pub fn calls(&self) -> Vec<String> {
        self.world
            .lock()
            .map(|w| w.calls.clone())
            .unwrap_or_default()
    }

    /// Answer the next `n` requests with 429 and `Retry-After: 1`.
    pub fn throttle_next(&self, n: u32) {
        if let Ok(mut w) = self.world.lock() {
            w.throttle = n;
        }
    }
}

/// The SCIM routes, relative to the SCIM root (mount under `/scim`).
pub fn router(state: ScimState) -> Router {
    Router::new()
        .route("/Users", get(list_users))
        .route("/Users/{id}", get(get_user).patch(patch_user))
        .with_state(state)
}

fn error(status: StatusCode, scim_type: Option<&str>, detail: &str) -> Response {
    let mut body = json!({
        "schemas": [ERROR_SCHEMA],
        "status": status.as_u16().to_string(),
        "detail": detail,
    });
    if let Some(t) = scim_type {
        body["scimType"] = json!(t);
    }
    scim(status, body)
}

fn scim(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, MEDIA_TYPE)],
        body.to_string(),
    )
        .into_response()
}

/// Bearer check and throttling, before anything else: the answer when refused.
fn gate(s: &ScimState, headers: &HeaderMap) -> Option<Response> {
    let Ok(mut w) = s.world.lock() else {
        return Some(StatusCode::INTERNAL_SERVER_ERROR.into_response());
    };
    if w.throttle > 0 {
        w.throttle -= 1;
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            "Too many requests; retry later",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return Some(resp);
    }
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = auth.split_once(' ').is_some_and(|(scheme, token)| {
        scheme.eq_ignore_ascii_case("bearer") && token == SANDBOX_TOKEN
    });
    if ok {
        None
    } else {
        let mut resp = error(
            StatusCode::UNAUTHORIZED,
            None,
            "Authorization failure. The authorization header is invalid or missing",
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"SCIM\""),
        );
        Some(resp)
    }
}

/// `userName eq "<JSON string>"` (attribute and operator case-insensitive): the value.
fn parse_user_name_filter(filter: &str) -> Option<String> {
    let f = filter.trim();
    let (attr, rest) = f.split_once(char::is_whitespace)?;
    if !attr.eq_ignore_ascii_case("userName") {
        return None;
    }
    let (op, value) = rest.trim_start().split_once(char::is_whitespace)?;
    if !op.eq_ignore_ascii_case("eq") {
        return None;
    }
    match serde_json::from_str::<Value>(value.trim()) {
        Ok(Value::String(s)) => Some(s),
        _ => None,
    }
}

async fn list_users(
    State(s): State<ScimState>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let filter = match q.get("filter") {
        None => None,
        Some(f) => match parse_user_name_filter(f) {
            Some(v) => Some(v),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    Some("invalidFilter"),
                    "this provider supports only: userName eq \"<value>\"",
                )
            }
        },
    };
    let number = |key: &str, default: usize| -> Option<usize> {
        q.get(key)
            .map_or(Some(default), |v| v.parse::<usize>().ok())
    };
    let (Some(start), Some(count)) = (number("startIndex", 1), number("count", 100)) else {
        return error(
            StatusCode::BAD_REQUEST,
            Some("invalidValue"),
            "`startIndex` and `count` must be non-negative integers",
        );
    };
    let start = start.max(1);
    let Ok(w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let matching: Vec<&ScimUser> = w
        .users
        .values()
        .filter(|u| {
            filter
                .as_deref()
                .is_none_or(|f| u.user_name.eq_ignore_ascii_case(f))
        })
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(start - 1)
        .take(count)
        .map(|u| u.resource())
        .collect();
    scim(
        StatusCode::OK,
        json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": matching.len(),
            "startIndex": start,
            "itemsPerPage": page.len(),
            "Resources": page,
        }),
    )
}

async fn get_user(
    State(s): State<ScimState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let Ok(w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match w.users.get(&id) {
        Some(u) => scim(StatusCode::OK, u.resource()),
        None => error(
            StatusCode::NOT_FOUND,
            None,
            &format!("Resource {id} not found"),
        ),
    }
}

/// The `active` value a PatchOp sets, or the `scimType` and `detail` of the 400 to answer.
fn patch_active(body: &Value) -> Result<bool, (&'static str, &'static str)> {
    let has_schema = body
        .get("schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|x| x.as_str() == Some(PATCH_SCHEMA)));
    if !has_schema {
        return Err(("invalidSyntax", "the request must use the PatchOp schema"));
    }
    let Some(ops) = body.get("Operations").and_then(Value::as_array) else {
        return Err(("invalidSyntax", "`Operations` must be a list"));
    };
    let mut result = None;
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or("");
        if !name.eq_ignore_ascii_case("replace") && !name.eq_ignore_ascii_case("add") {
            return Err((
                "invalidSyntax",
                "only `replace` and `add` are supported here",
            ));
        }
        let value = match op.get("path").and_then(Value::as_str) {
            Some(p) if p.eq_ignore_ascii_case("active") => op.get("value"),
            Some(_) => return Err(("invalidPath", "only the `active` attribute can be patched")),
            None => op.get("value").and_then(|v| v.get("active")),
        };
        match value {
            Some(Value::Bool(b)) => result = Some(*b),
            _ => return Err(("invalidValue", "`active` must be a boolean")),
        }
    }
    result.ok_or(("invalidSyntax", "`Operations` is empty"))
}

async fn patch_user(
    State(s): State<ScimState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = gate(&s, &headers) {
        return r;
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if ct != MEDIA_TYPE && ct != "application/json" {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            "send application/scim+json",
        );
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            Some("invalidSyntax"),
            "the body is not JSON",
        );
    };
    let active = match patch_active(&body) {
        Ok(a) => a,
        Err((scim_type, detail)) => return error(StatusCode::BAD_REQUEST, Some(scim_type), detail),
    };
    let Ok(mut w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    w.calls.push(format!("PATCH /scim/Users/{id}"));
    match w.users.get_mut(&id) {
        Some(u) => {
            u.active = active;
            u.version += 1;
            scim(StatusCode::OK, u.resource())
        }
        None => error(
            StatusCode::NOT_FOUND,
            Some("noTarget"),
            &format!("Resource {id} not found"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_are_json_strings() {
        assert_eq!(
            parse_user_name_filter(r#"userName eq "a\"b@x""#).as_deref(),
            Some("a\"b@x")
        );
        assert_eq!(
            parse_user_name_filter(r#"USERNAME EQ "dana@example.com""#).as_deref(),
            Some("dana@example.com")
        );
        assert_eq!(parse_user_name_filter("userName eq bare"), None);
        assert_eq!(parse_user_name_filter(r#"emails co "x""#), None);
    }

    #[test]
    fn patch_forms() {
        let path_form = json!({"schemas": [PATCH_SCHEMA],
            "Operations": [{"op": "Replace", "path": "active", "value": false}]});
        assert!(matches!(patch_active(&path_form), Ok(false)));
        let value_form = json!({"schemas": [PATCH_SCHEMA],
            "Operations": [{"op": "replace", "value": {"active": true}}]});
        assert!(matches!(patch_active(&value_form), Ok(true)));
        assert!(patch_active(&json!({"Operations": []})).is_err());
        let other = json!({"schemas": [PATCH_SCHEMA],
            "Operations": [{"op": "replace", "path": "userName", "value": "x"}]});
        assert!(patch_active(&other).is_err());
    }
}
