//! The `smtp` connector: sends plain-text email through an SMTP relay (the `lettre` crate,
//! tokio + rustls).
//!
//! Settings (`connectors.<name>` with `type: smtp`):
//! - `host` (required): the relay's host name (also the name its TLS certificate is checked
//!   against).
//! - `port` (optional): default 465 for `tls`, 587 for `starttls`, 25 for `none`.
//! - `tls` (required): `tls` (implicit TLS, "SMTPS"), `starttls` (plain connection upgraded
//!   with STARTTLS, which is required: a relay that does not offer it is refused) or `none`
//!   (no encryption; allowed only to a loopback host, like plain `http://`).
//! - `from` (required): the sender, `soc@example.com` or `SOC <soc@example.com>`.
//! - `username` and `password` (optional, together; `password` a secret `{env: …}`/
//!   `{file: …}`): SMTP AUTH credentials. Never sent over `none`.
//!
//! Action `send_email` (`Effect::Send`): inputs `to` (an address or a list of them),
//! `subject`, `body` (plain text) and optional `body_markdown`. With `body_markdown` the
//! message is `multipart/alternative`: the plain text first, then the Markdown as
//! `text/markdown; variant=CommonMark` (RFC 7763), so a client that cannot show Markdown
//! shows the text. `draft` (a stored draft's id) is declared because runbooks name it, but
//! the engine resolves drafts into `subject`/`body`/`body_markdown` before the call (and
//! refuses drafts meant for authorities): this connector accepts `draft` only alongside
//! them, and refuses a bare `draft` (naming the field) rather than send an empty message.
//! The vendor exchange is one SMTP session: EHLO, (STARTTLS), (AUTH), MAIL FROM, RCPT TO
//! per recipient, DATA.
//!
//! The `Message-ID` is derived from the call's idempotency key, so every attempt of one
//! step sends the same id and receiving systems can spot a duplicate. Output:
//! `{message_id, to, possibly_duplicate}`; `possibly_duplicate` is true on attempts after
//! the first, since an earlier attempt may have been delivered before its connection failed.
//!
//! Errors: a 4xx SMTP reply, connection failures and I/O errors are `Transient`; a timeout
//! is `Timeout`; a 5xx reply is `Rejected` (535, failed authentication, is `Auth`) with the
//! server's code and text; TLS failures are `Other` naming the `tls` setting. The password
//! is registered with the redactor and never appears in an error.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::registry::{ConfigError, Settings};
use crate::secret::{Redactor, SecretValue};
use crate::{ActionCall, Connector, ConnectorError};

/// Bound on one SMTP session's commands.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(60);

/// At most this many recipients per message: a runbook notifies people, it does not mass-mail.
pub const MAX_RECIPIENTS: usize = 50;

pub const TYPE: TypeDecl = TypeDecl {
    name: "smtp",
    description: "Email through an SMTP relay",
    needs_instance: true,
    actions: &[ActionDecl {
        name: "send_email",
        description: "Send a plain-text email",
        inputs: &[
            FieldDecl {
                name: "to",
                ty: "any",
                required: true,
                description: "recipient address, or a list of them",
            },
            FieldDecl {
                name: "subject",
                ty: "string",
                required: false,
                description: "subject line (required unless the engine resolves `draft`)",
            },
            FieldDecl {
                name: "body",
                ty: "string",
                required: false,
                description: "plain-text body (required unless the engine resolves `draft`)",
            },
            FieldDecl {
                name: "body_markdown",
                ty: "string",
                required: false,
                description: "a Markdown alternative of `body` (sent as a second, text/markdown part)",
            },
            FieldDecl {
                name: "draft",
                ty: "string",
                required: false,
                description: "a stored draft id (of this run, not for an authority); the engine resolves it into subject and body",
            },
        ],
        outputs: &[
            FieldDecl {
                name: "message_id",
                ty: "string",
                required: true,
                description: "the Message-ID sent (the same on every attempt of one step)",
            },
            FieldDecl {
                name: "to",
                ty: "array",
                required: true,
                description: "the recipients' addresses",
            },
            FieldDecl {
                name: "possibly_duplicate",
                ty: "boolean",
                required: true,
                description: "an earlier attempt may already have delivered it",
            },
        ],
        effect: Effect::Send,
        undo: None,
        secret_outputs: &[],
    }],
};

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    None,
    StartTls,
    Tls,
}

impl TlsMode {
    pub fn parse(s: &str) -> Option<TlsMode> {
        match s {
            "none" => Some(TlsMode::None),
            "starttls" => Some(TlsMode::StartTls),
            "tls" => Some(TlsMode::Tls),
            _ => None,
        }
    }

    fn default_port(self) -> u16 {
        match self {
            TlsMode::None => 25,
            TlsMode::StartTls => 587,
            TlsMode::Tls => 465,
        }
    }
}

/// A complete configuration.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub instance: String,
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub from: Mailbox,
    /// `(username, password)`.
    pub credentials: Option<(String, SecretValue)>,
    pub timeout: Duration,
}

/// A configured `smtp` instance.
pub struct SmtpConnector {
    config: SmtpConfig,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    redactor: Redactor,
}

impl fmt::Debug for SmtpConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `SmtpConfig`'s Debug shows the password as a redacted `SecretValue`.
        f.debug_struct("SmtpConnector")
            .field("config", &self.config)
            .finish()
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidInput {
        field: field.to_string(),
        message: message.into(),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The registry's constructor: one `smtp` instance from its settings map.
pub fn build(
    name: &str,
    map: &Map<String, Value>,
    base_dir: &std::path::Path,
    redactor: &Redactor,
) -> Result<Arc<dyn Connector>, Vec<ConfigError>> {
    let settings = Settings::new(name, map, SmtpConnector::SETTINGS, base_dir, redactor);
    Ok(Arc::new(SmtpConnector::from_settings(settings)?))
}

impl SmtpConnector {
    /// The settings this type takes.
    pub const SETTINGS: &'static [&'static str] =
        &["host", "port", "tls", "from", "username", "password"];

    /// Build from an instance's settings (pure apart from reading the secret).
    pub fn from_settings(mut s: Settings<'_>) -> Result<Self, Vec<ConfigError>> {
        let instance = s.instance().to_string();
        let host = s.required_string("host");
        if host.as_deref().is_some_and(|h| h.trim().is_empty()) {
            s.error(Some("host"), "must not be empty");
        }
        let port = s.integer("port", 1, 65535);
        let tls = match s.required_string("tls") {
            Some(t) => match TlsMode::parse(&t) {
                Some(m) => Some(m),
                None => {
                    s.error(
                        Some("tls"),
                        format!("`{t}` is not one of `none`, `starttls`, `tls`"),
                    );
                    None
                }
            },
            None => None,
        };
        if let (Some(TlsMode::None), Some(h)) = (tls, host.as_deref()) {
            if !is_loopback_host(h) {
                s.error(
                    Some("tls"),
                    "`none` (unencrypted SMTP) is allowed only to a loopback host; use `starttls` or `tls`",
                );
            }
        }
        let from = match s.required_string("from") {
            Some(f) => match f.parse::<Mailbox>() {
                Ok(m) => Some(m),
                Err(e) => {
                    s.error(Some("from"), format!("`{f}` is not an email address ({e})"));
                    None
                }
            },
            None => None,
        };
        let username = s.string("username");
        let password = s.secret("password");
        let credentials = match (username, password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            (Some(_), None) => {
                s.error(Some("password"), "is required when `username` is set");
                None
            }
            (None, Some(_)) => {
                s.error(Some("username"), "is required when `password` is set");
                None
            }
        };
        let redactor = s.redactor().clone();
        s.finish()?;
        let (Some(host), Some(tls), Some(from)) = (host, tls, from) else {
            return Err(vec![ConfigError::new(
                &instance,
                None,
                "incomplete settings",
            )]);
        };
        let port = port
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(tls.default_port());
        let config = SmtpConfig {
            instance: instance.clone(),
            host: host.trim().to_string(),
            port,
            tls,
            from,
            credentials,
            timeout: SMTP_TIMEOUT,
        };
        SmtpConnector::new(config, redactor)
            .map_err(|e| vec![ConfigError::new(&instance, Some("host"), e)])
    }

    /// Build from a complete configuration. No network I/O.
    pub fn new(config: SmtpConfig, redactor: Redactor) -> Result<Self, String> {
        let host = config.host.clone();
        let builder = match config.tls {
            TlsMode::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host).tls(Tls::None)
            }
            TlsMode::StartTls => {
                let params = TlsParameters::new(host.clone())
                    .map_err(|e| format!("cannot set up TLS for `{host}`: {e}"))?;
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
                    .tls(Tls::Required(params))
            }
            TlsMode::Tls => {
                let params = TlsParameters::new(host.clone())
                    .map_err(|e| format!("cannot set up TLS for `{host}`: {e}"))?;
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
                    .tls(Tls::Wrapper(params))
            }
        };
        let mut builder = builder.port(config.port).timeout(Some(config.timeout));
        if let Some((user, password)) = &config.credentials {
            redactor.register(password.expose());
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        Ok(SmtpConnector {
            transport: builder.build(),
            config,
            redactor,
        })
    }

    /// `<cordon.<hash of the idempotency key>@<sender's domain>>`: stable across attempts.
    fn message_id(&self, idempotency_key: &str) -> String {
        let digest = Sha256::digest(idempotency_key.as_bytes());
        let domain = self.config.from.email.domain().to_string();
        format!("<cordon.{}@{domain}>", hex::encode(&digest[..16]))
    }

    fn map_error(&self, e: lettre::transport::smtp::Error) -> ConnectorError {
        let text = self.redactor.redact_str(&e.to_string());
        let message = format!(
            "SMTP relay {}:{} (connector `{}`): {text}",
            self.config.host, self.config.port, self.config.instance
        );
        if e.is_timeout() {
            return ConnectorError::Timeout(self.config.timeout);
        }
        if e.is_permanent() {
            let status = e.status().map(u16::from).unwrap_or(550);
            return if status == 535 || status == 530 {
                ConnectorError::Auth { status, message }
            } else {
                ConnectorError::Rejected { status, message }
            };
        }
        if e.is_tls() {
            return ConnectorError::Other(format!("{message} (check setting `tls`)"));
        }
        if e.is_client() {
            return ConnectorError::Other(message);
        }
        // 4xx replies, connection and I/O failures: worth another attempt.
        ConnectorError::Transient {
            retry_after: None,
            message,
        }
    }

    async fn send_email(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let input = call
            .input
            .as_object()
            .ok_or_else(|| invalid("with", "the inputs must be a map"))?;
        let to = recipients(input.get("to"))?;
        let has = |k: &str| input.get(k).is_some_and(|v| !v.is_null());
        if has("draft") && !(has("subject") && has("body")) {
            return Err(invalid(
                "draft",
                "drafts are resolved by the engine into `subject` and `body`; give those too",
            ));
        }
        let subject = required_text(input, "subject")?;
        if subject.contains(['\r', '\n']) {
            return Err(invalid("subject", "must be one line"));
        }
        let body = required_text(input, "body")?;
        let markdown = match input.get("body_markdown") {
            None | Some(Value::Null) => None,
            Some(_) => Some(required_text(input, "body_markdown")?),
        };
        let message_id = self.message_id(call.idempotency_key);
        let mut builder = Message::builder()
            .from(self.config.from.clone())
            .subject(subject)
            .message_id(Some(message_id.clone()));
        for m in &to {
            builder = builder.to(m.clone());
        }
        let built = match markdown {
            None => builder.header(ContentType::TEXT_PLAIN).body(body),
            Some(md) => {
                let markdown_type =
                    ContentType::parse("text/markdown; charset=utf-8; variant=CommonMark")
                        .map_err(|e| {
                            ConnectorError::Other(format!("text/markdown content type: {e}"))
                        })?;
                builder.multipart(
                    MultiPart::alternative()
                        .singlepart(
                            SinglePart::builder()
                                .header(ContentType::TEXT_PLAIN)
                                .body(body),
                        )
                        .singlepart(SinglePart::builder().header(markdown_type).body(md)),
                )
            }
        };
        let message =
            built.map_err(|e| ConnectorError::Other(format!("cannot build the message: {e}")))?;
        self.transport
            .send(message)
            .await
            .map_err(|e| self.map_error(e))?;
        Ok(json!({
            "message_id": message_id,
            "to": to.iter().map(|m| m.email.to_string()).collect::<Vec<_>>(),
            "possibly_duplicate": call.attempt > 1,
        }))
    }
}

fn required_text(input: &Map<String, Value>, field: &str) -> Result<String, ConnectorError> {
    match input.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(invalid(field, "must not be empty")),
        None | Some(Value::Null) => Err(invalid(field, "is required")),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

/// `to`: one address or a list of them, each parsed as a mailbox.
fn recipients(value: Option<&Value>) -> Result<Vec<Mailbox>, ConnectorError> {
    let raw: Vec<&str> = match value {
        None | Some(Value::Null) => return Err(invalid("to", "is required")),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| invalid("to", "must list addresses as strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("to", "must be an address or a list of addresses")),
    };
    if raw.is_empty() {
        return Err(invalid("to", "must name at least one recipient"));
    }
    if raw.len() > MAX_RECIPIENTS {
        return Err(invalid(
            "to",
            format!("names {} recipients; at most {MAX_RECIPIENTS}", raw.len()),
        ));
    }
    raw.iter()
        .map(|a| {
            a.trim()
                .parse::<Mailbox>()
                .map_err(|e| invalid("to", format!("`{a}` is not an email address ({e})")))
        })
        .collect()
}

#[async_trait]
impl Connector for SmtpConnector {
    fn type_name(&self) -> &'static str {
        "smtp"
    }

    fn instance(&self) -> &str {
        &self.config.instance
    }

    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        match call.action {
            "send_email" => self.send_email(&call).await,
            other => Err(ConnectorError::Other(format!(
                "connector type `smtp` has no action `{other}`"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_accept_one_or_many_and_name_the_field() {
        let one = recipients(Some(&json!("a@example.com"))).unwrap();
        assert_eq!(one[0].email.to_string(), "a@example.com");
        let two = recipients(Some(&json!(["a@example.com", "Legal <l@example.com>"]))).unwrap();
        assert_eq!(two[1].email.to_string(), "l@example.com");
        for bad in [json!(null), json!([]), json!(3), json!(["not an address"])] {
            match recipients(Some(&bad)) {
                Err(ConnectorError::InvalidInput { field, .. }) => assert_eq!(field, "to"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("localhost"));
        assert!(is_loopback_host("[::1]"));
        assert!(!is_loopback_host("smtp.example.com"));
    }
}
