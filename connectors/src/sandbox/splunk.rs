//! A stateful imitation of the Splunk REST search export the `splunk` connector calls,
//! mounted under `/splunk` (so `base_url: http://127.0.0.1:PORT/splunk`):
//!
//! - `POST /services/search/v2/jobs/export` and the v1 `POST /services/search/jobs/export`,
//!   form-encoded `search`, `output_mode=json`, `earliest_time`, `latest_time` (RFC 3339):
//!   `200` with one `{"preview":false,"offset":N,"result":{…}}` line per matching event,
//!   the last with `"lastrow":true`; no match gives `{"preview":false,"lastrow":true}`.
//! - The search understands a small SPL subset: an optional leading `search`, `key=value`
//!   or `key="value"` terms (`index`, `user`, `action`, `src_ip`, `sourcetype`) and bare
//!   words that must occur in `_raw`; anything after a `|` is ignored. A search that does
//!   not start with `search` or `|` is refused with `400` and Splunk's messages body.
//!
//! Every call needs `Authorization: Bearer` [`SANDBOX_TOKEN`] (else 401 `{"messages":[…]}`).
//! [`SplunkSandbox::throttle`] answers the next calls with 503 and a search-concurrency
//! message, as a search head over its quota does. Seeded with 300 sign-in and VPN events
//! about `j.smith@example.com` and 40 about `dana@example.com`, from
//! 2026-11-20T00:00:00Z, 10 minutes apart; the suspect's `src_ip` cycles through the
//! laptop farm, a VPN exit and two addresses abroad ([`super::addresses`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{json, Value};

use super::addresses;

/// The suspect's sources, in turn: laptop farm, VPN exit, abroad (IPv4 and IPv6).
const SUSPECT_ADDRESSES: [&str; 4] = [
    addresses::US_RESIDENTIAL,
    addresses::VPN_EXIT,
    addresses::FOREIGN,
    addresses::FOREIGN_V6,
];

/// The authentication token the sandbox accepts (a fixed, public sandbox credential).
pub const SANDBOX_TOKEN: &str = "sandbox-splunk-auth-token";

#[derive(Debug, Default)]
struct World {
    events: Vec<Value>,
    throttle: u32,
    searches: Vec<String>,
}

/// The sandbox's Splunk state. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct SplunkSandbox {
    world: Arc<Mutex<World>>,
}

impl SplunkSandbox {
    /// Seeded with the demonstration's log events.
    pub fn seeded() -> SplunkSandbox {
        let s = SplunkSandbox::default();
        let start = Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).single();
        if let (Ok(mut w), Some(start)) = (s.world.lock(), start) {
            let people = std::iter::repeat_n("j.smith@example.com", 300)
                .chain(std::iter::repeat_n("dana@example.com", 40));
            for (i, user) in people.enumerate() {
                let t = start + Duration::minutes(10 * i as i64);
                let (index, sourcetype, action) = match i % 3 {
                    0 => ("okta", "okta:im2", "user.session.start"),
                    1 => ("vpn", "pan:globalprotect", "gateway-connected"),
                    _ => ("okta", "okta:im2", "user.authentication.sso"),
                };
                let src_ip = if user == "dana@example.com" {
                    addresses::OFFICE
                } else {
                    SUSPECT_ADDRESSES[i % SUSPECT_ADDRESSES.len()]
                };
                w.events.push(json!({
                    "_time": t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "index": index,
                    "sourcetype": sourcetype,
                    "user": user,
                    "action": action,
                    "src_ip": src_ip,
                    "_raw": format!("{} {action} user={user} src_ip={src_ip}", t.to_rfc3339()),
                }));
            }
        }
        s
    }

    /// Answer the next `n` searches with 503 (search concurrency quota reached).
    pub fn throttle(&self, n: u32) {
        if let Ok(mut w) = self.world.lock() {
            w.throttle = n;
        }
    }

    /// The search strings received so far.
    pub fn searches(&self) -> Vec<String> {
        self.world
            .lock()
            .map(|w| w.searches.clone())
            .unwrap_or_default()
    }
}

/// The `/splunk` routes.
pub fn router(state: SplunkSandbox) -> Router {
    Router::new()
        .route("/services/search/v2/jobs/export", post(export))
        .route("/services/search/jobs/export", post(export))
        .with_state(state)
}

fn messages(status: StatusCode, ty: &str, text: &str) -> Response {
    (
        status,
        Json(json!({"messages": [{"type": ty, "text": text}]})),
    )
        .into_response()
}

fn time_param(form: &HashMap<String, String>, name: &str) -> Result<Option<DateTime<Utc>>, String> {
    match form.get(name) {
        None => Ok(None),
        Some(raw) => DateTime::parse_from_rfc3339(raw)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| format!("Invalid {name}: '{raw}'")),
    }
}

/// One term of the supported SPL subset.
enum Term {
    Field(String, String),
    Word(String),
}

/// The terms of a search, or the parser's complaint.
fn parse_search(search: &str) -> Result<Vec<Term>, String> {
    let s = search.trim();
    let body = if let Some(rest) = s.strip_prefix("search") {
        rest
    } else if s.starts_with('|') {
        return Ok(Vec::new());
    } else {
        return Err("Error in 'SearchParser': The search must start with a command".to_string());
    };
    let body = body.split('|').next().unwrap_or("");
    let mut terms = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let end = token_end(rest);
        let token = &rest[..end];
        rest = rest[end..].trim_start();
        match token.split_once('=') {
            Some((k, v)) => terms.push(Term::Field(k.to_string(), unquote(v))),
            None => terms.push(Term::Word(unquote(token))),
        }
    }
    Ok(terms)
}

/// The end of the next whitespace-separated token, keeping quoted parts whole.
fn token_end(s: &str) -> usize {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return i,
            _ => {}
        }
    }
    s.len()
}

fn unquote(s: &str) -> String {
    s.trim_matches('"').to_string()
}

fn matches(event: &Value, terms: &[Term]) -> bool {
    terms.iter().all(|t| match t {
        Term::Field(k, v) => event.get(k).and_then(Value::as_str) == Some(v.as_str()),
        Term::Word(w) => event
            .get("_raw")
            .and_then(Value::as_str)
            .is_some_and(|raw| raw.contains(w.as_str())),
    })
}

async fn export(
    State(s): State<SplunkSandbox>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let authorised = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {SANDBOX_TOKEN}"));
    if !authorised {
        return messages(
            StatusCode::UNAUTHORIZED,
            "WARN",
            "call not properly authenticated",
        );
    }
    let Ok(mut w) = s.world.lock() else {
        return messages(StatusCode::INTERNAL_SERVER_ERROR, "FATAL", "sandbox state");
    };
    if w.throttle > 0 {
        w.throttle -= 1;
        return messages(
            StatusCode::SERVICE_UNAVAILABLE,
            "FATAL",
            "Search not executed: The maximum number of concurrent historical searches for \
             this user based on their role quota has been reached.",
        );
    }
    let Some(search) = form.get("search") else {
        return messages(StatusCode::BAD_REQUEST, "FATAL", "Missing search argument");
    };
    w.searches.push(search.clone());
    let terms = match parse_search(search) {
        Ok(t) => t,
        Err(text) => return messages(StatusCode::BAD_REQUEST, "FATAL", &text),
    };
    let (earliest, latest) = match (
        time_param(&form, "earliest_time"),
        time_param(&form, "latest_time"),
    ) {
        (Ok(e), Ok(l)) => (e, l),
        (Err(text), _) | (_, Err(text)) => {
            return messages(StatusCode::BAD_REQUEST, "FATAL", &text)
        }
    };
    let hits: Vec<&Value> = w
        .events
        .iter()
        .filter(|e| {
            let t = e
                .get("_time")
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            let Some(t) = t else { return false };
            earliest.is_none_or(|e| t >= e) && latest.is_none_or(|l| t < l) && matches(e, &terms)
        })
        .collect();
    let mut body = String::new();
    if hits.is_empty() {
        body.push_str("{\"preview\":false,\"lastrow\":true}\n");
    }
    for (i, event) in hits.iter().enumerate() {
        let mut row = json!({"preview": false, "offset": i, "result": event});
        if i + 1 == hits.len() {
            row["lastrow"] = Value::Bool(true);
        }
        body.push_str(&row.to_string());
        body.push('\n');
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        body,
    )
        .into_response()
}
