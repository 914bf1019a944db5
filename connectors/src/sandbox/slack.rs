//! A stateful imitation of a Slack incoming webhook, mounted under `/slack` (so
//! `webhook_url: http://127.0.0.1:PORT/slack/services/…`):
//!
//! - `POST /services/{team}/{bot}/{secret}`: only [`SANDBOX_WEBHOOK_PATH`] is a live
//!   webhook; any other path answers 404 `no_service`, as Slack does for a revoked one.
//!   The body must be JSON (else 400 `invalid_payload`) with a non-empty `text` (else 400
//!   `no_text`); a `channel` other than the known ones is 404 `channel_not_found`, and
//!   `#archived` is 410 `channel_is_archived`. Success is 200 with the text body `ok`, and
//!   the message is recorded ([`SlackSandbox::messages`]).
//! - [`SlackSandbox::throttle`] answers the next posts with 429 and `Retry-After: 1`.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde_json::Value;

/// The webhook path the sandbox accepts (below `/slack`), a fixed public sandbox value.
pub const SANDBOX_WEBHOOK_PATH: &str = "/services/T0SANDBOX/B0SANDBOX/sandbox-webhook-secret";

/// Channels the imitated workspace has (the webhook's own channel is `#soc`).
const CHANNELS: &[&str] = &["#soc", "#incident-response", "#legal"];

/// One message the webhook accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedMessage {
    /// The channel it went to (the webhook's default when none was given).
    pub channel: String,
    pub text: String,
}

#[derive(Debug, Default)]
struct World {
    messages: Vec<PostedMessage>,
    throttle: u32,
}

/// The sandbox's Slack state. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct SlackSandbox {
    world: Arc<Mutex<World>>,
}

impl SlackSandbox {
    /// Every message accepted so far, in order.
    pub fn messages(&self) -> Vec<PostedMessage> {
        self.world
            .lock()
            .map(|w| w.messages.clone())
            .unwrap_or_default()
    }

    /// Answer the next `n` posts with 429.
    pub fn throttle(&self, n: u32) {
        if let Ok(mut w) = self.world.lock() {
            w.throttle = n;
        }
    }
}

pub fn router(state: SlackSandbox) -> Router {
    Router::new()
        .route("/services/{team}/{bot}/{secret}", post(webhook))
        .with_state(state)
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

async fn webhook(
    State(s): State<SlackSandbox>,
    Path((team, bot, secret)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    if format!("/services/{team}/{bot}/{secret}") != SANDBOX_WEBHOOK_PATH {
        return text(StatusCode::NOT_FOUND, "no_service");
    }
    let Ok(mut w) = s.world.lock() else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "rollup_error");
    };
    if w.throttle > 0 {
        w.throttle -= 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "rate_limited",
        )
            .into_response();
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return text(StatusCode::BAD_REQUEST, "invalid_payload");
    };
    let Some(message) = payload
        .get("text")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
    else {
        return text(StatusCode::BAD_REQUEST, "no_text");
    };
    let channel = match payload.get("channel") {
        None | Some(Value::Null) => "#soc".to_string(),
        Some(Value::String(c)) if c == "#archived" => {
            return text(StatusCode::GONE, "channel_is_archived")
        }
        Some(Value::String(c)) if CHANNELS.contains(&c.as_str()) => c.clone(),
        Some(Value::String(_)) => return text(StatusCode::NOT_FOUND, "channel_not_found"),
        Some(_) => return text(StatusCode::BAD_REQUEST, "invalid_payload"),
    };
    w.messages.push(PostedMessage {
        channel,
        text: message.to_string(),
    });
    text(StatusCode::OK, "ok")
}
