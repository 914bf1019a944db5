//! The `slack` connector: posts a message through a Slack incoming webhook.
//!
//! Settings (`connectors.<name>` with `type: slack`):
//! - `webhook_url` (required, a secret `{env: …}`/`{file: …}`): the incoming webhook URL,
//!   e.g. `https://hooks.slack.com/services/T…/B…/…`. Its path *is* the credential, so the
//!   whole URL and its path are registered with the redactor: neither appears in errors,
//!   logs or the request log (whose path shows `[REDACTED]`).
//!
//! Actions, and the vendor call each makes:
//! - `post_message`: `POST <webhook_url>` with `Content-Type: application/json` and body
//!   `{"text": …}` (plus `"channel": …` when the input gives one; Slack ignores a channel
//!   override on webhooks created by Slack apps, which always post to their own channel).
//!   Slack answers 200 with the text body `ok`. Its documented errors are text bodies such
//!   as `invalid_payload`, `no_text`, `channel_not_found`, `channel_is_archived`,
//!   `action_prohibited`, `no_service` (4xx): `Rejected`, naming the code. 429 is
//!   `RateLimited` with `Retry-After`; 5xx (e.g. `rollup_error`), timeouts and connection
//!   failures are transient.
//!
//! Webhooks have no idempotency key: a retry after an attempt whose outcome is unknown
//! (timeout, 5xx) may post twice, so the output says `possibly_duplicate: true` on any
//! attempt after the first.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use url::Url;

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::http_client::{
    retry_after, ClientBuildError, HttpClient, HttpClientConfig, RequestSpec,
};
use crate::registry::{ConfigError, Settings};
use crate::secret::{Redactor, SecretValue};
use crate::{ActionCall, Connector, ConnectorError};

/// Bound on one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Slack truncates messages beyond 40,000 characters; refuse rather than lose the end.
pub const MAX_TEXT_CHARS: usize = 40_000;

pub const TYPE: TypeDecl = TypeDecl {
    name: "slack",
    description: "Slack incoming webhook",
    needs_instance: true,
    actions: &[ActionDecl {
        name: "post_message",
        description: "Post a message through the incoming webhook",
        inputs: &[
            FieldDecl {
                name: "text",
                ty: "string",
                required: true,
                description: "the message (Slack mrkdwn)",
            },
            FieldDecl {
                name: "channel",
                ty: "string",
                required: false,
                description: "channel override (legacy webhooks only; app webhooks ignore it)",
            },
        ],
        outputs: &[
            FieldDecl {
                name: "posted",
                ty: "boolean",
                required: true,
                description: "true when Slack answered `ok`",
            },
            FieldDecl {
                name: "channel",
                ty: "string",
                required: false,
                description: "the channel override sent, if any",
            },
            FieldDecl {
                name: "possibly_duplicate",
                ty: "boolean",
                required: true,
                description: "an earlier attempt may already have posted it",
            },
        ],
        effect: Effect::Send,
        undo: None,
        secret_outputs: &[],
    }],
};

/// A configured `slack` instance.
pub struct SlackConnector {
    instance: String,
    webhook_url: SecretValue,
    client: HttpClient,
}

impl fmt::Debug for SlackConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackConnector")
            .field("instance", &self.instance)
            .field("webhook_url", &self.webhook_url)
            .finish()
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidInput {
        field: field.to_string(),
        message: message.into(),
    }
}

/// The registry's constructor: one `slack` instance from its settings map.
pub fn build(
    name: &str,
    map: &Map<String, Value>,
    base_dir: &std::path::Path,
    redactor: &Redactor,
) -> Result<Arc<dyn Connector>, Vec<ConfigError>> {
    let settings = Settings::new(name, map, SlackConnector::SETTINGS, base_dir, redactor);
    Ok(Arc::new(SlackConnector::from_settings(settings)?))
}

impl SlackConnector {
    /// The settings this type takes.
    pub const SETTINGS: &'static [&'static str] = &["webhook_url"];

    /// Build from an instance's settings (pure apart from reading the secret).
    pub fn from_settings(mut s: Settings<'_>) -> Result<Self, Vec<ConfigError>> {
        let instance = s.instance().to_string();
        let webhook = s.required_secret("webhook_url");
        let redactor = s.redactor().clone();
        s.finish()?;
        let Some(webhook) = webhook else {
            return Err(vec![ConfigError::new(
                &instance,
                Some("webhook_url"),
                "is required",
            )]);
        };
        SlackConnector::new(&instance, webhook, redactor, REQUEST_TIMEOUT)
            .map_err(|e| vec![ConfigError::new(&instance, Some("webhook_url"), e)])
    }

    /// Build from a webhook URL. No network I/O. The error never quotes the URL.
    pub fn new(
        instance: &str,
        webhook_url: SecretValue,
        redactor: Redactor,
        timeout: Duration,
    ) -> Result<Self, String> {
        redactor.register(webhook_url.expose());
        let url = Url::parse(webhook_url.expose())
            .map_err(|e| format!("is not an absolute URL ({e})"))?;
        // The path carries the webhook's secret part: scrub it wherever a path is shown.
        let path = url.path();
        if path.len() > 1 {
            redactor.register(path);
            redactor.register(path.trim_start_matches('/'));
        }
        crate::http_client::check_url(instance, &url).map_err(|e| e.reason)?;
        let mut http = HttpClientConfig::new(instance);
        http.timeout = timeout;
        let client = HttpClient::new(http, redactor).map_err(|e: ClientBuildError| {
            // Redacted by construction: the URL is registered above.
            e.to_string()
        })?;
        Ok(SlackConnector {
            instance: instance.to_string(),
            webhook_url,
            client,
        })
    }

    async fn post_message(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let obj = call
            .input
            .as_object()
            .ok_or_else(|| invalid("with", "the inputs must be a map"))?;
        let text = match obj.get("text") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::String(_)) => return Err(invalid("text", "must not be empty")),
            Some(_) => return Err(invalid("text", "must be a string")),
            None => return Err(invalid("text", "is required")),
        };
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(invalid(
                "text",
                format!("is longer than Slack's {MAX_TEXT_CHARS} characters"),
            ));
        }
        let channel = match obj.get("channel") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Some(Value::String(_)) => return Err(invalid("channel", "must not be empty")),
            Some(_) => return Err(invalid("channel", "must be a string")),
        };
        let mut body = json!({ "text": text });
        if let Some(c) = &channel {
            body["channel"] = json!(c);
        }
        let spec = RequestSpec::post(self.webhook_url.expose()).json(body);
        let resp = self.client.send_raw(spec, call.requests).await?;
        let status = resp.status.as_u16();
        let redactor = self.client.redactor();
        let text_body = resp.text();
        let code = redactor.redact_str(
            &text_body
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(200)
                .collect::<String>(),
        );
        let named = if code.is_empty() {
            String::new()
        } else {
            format!(": `{code}`")
        };
        let message = format!(
            "Slack webhook (connector `{}`) → {}{named}",
            self.instance, resp.status
        );
        match status {
            200..=299 => {
                if text_body.trim() != "ok" {
                    // A 200 with another body is not Slack's success answer.
                    return Err(ConnectorError::Other(format!("{message} (expected `ok`)")));
                }
                Ok(json!({
                    "posted": true,
                    "channel": channel,
                    "possibly_duplicate": call.attempt > 1,
                }))
            }
            429 => Err(ConnectorError::RateLimited {
                retry_after: retry_after(&resp.headers),
                message,
            }),
            408 | 500..=599 => Err(ConnectorError::Transient {
                retry_after: retry_after(&resp.headers),
                message,
            }),
            _ => Err(ConnectorError::Rejected { status, message }),
        }
    }
}

#[async_trait]
impl Connector for SlackConnector {
    fn type_name(&self) -> &'static str {
        "slack"
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        match call.action {
            "post_message" => self.post_message(&call).await,
            other => Err(ConnectorError::Other(format!(
                "connector type `slack` has no action `{other}`"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_path_is_registered_for_redaction() {
        let redactor = Redactor::new();
        let url = "http://127.0.0.1:9/services/T000/B000/XXXXsecret";
        let c = SlackConnector::new(
            "s",
            SecretValue::new(url),
            redactor.clone(),
            REQUEST_TIMEOUT,
        )
        .unwrap();
        assert_eq!(
            redactor.redact_str("POST /services/T000/B000/XXXXsecret failed"),
            "POST [REDACTED] failed"
        );
        assert!(!format!("{c:?}").contains("XXXXsecret"));
    }

    #[test]
    fn plain_http_to_a_remote_host_is_refused_without_quoting_it() {
        let err = SlackConnector::new(
            "s",
            SecretValue::new("http://hooks.slack.com/services/T/B/sekrit"),
            Redactor::new(),
            REQUEST_TIMEOUT,
        )
        .unwrap_err();
        assert!(!err.contains("sekrit"), "{err}");
    }
}
