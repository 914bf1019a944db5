//! OAuth 2.0 client-credentials tokens (RFC 6749 §4.4), shared by every connector that
//! authenticates as an application: Microsoft Entra ID and Intune (Microsoft Graph),
//! Defender for Endpoint, and any other vendor with a token endpoint that takes
//! `grant_type=client_credentials`, `client_id`, `client_secret` and `scope` as a form.
//!
//! [`ClientCredentials`] is a token source: [`ClientCredentials::bearer`] returns a cached
//! access token, fetching a new one when there is none or when the cached one is within a
//! safety margin of its expiry. Tokens live in memory only and are registered with the
//! instance's [`Redactor`] the moment they arrive, so they are scrubbed from every error,
//! log line and stored output. [`ClientCredentials::send`] sends a request with the token
//! and, on a 401, refreshes the token once and sends it again: the vendor may revoke a token
//! before its advertised expiry, and that refresh is not an attempt in the engine's sense.
//!
//! Token endpoint errors use the OAuth shape `{error, error_description}` (Microsoft adds
//! `error_codes` and an `AADSTS…` prefix); they become [`ConnectorError::Auth`] naming the
//! OAuth error code and the settings to check, never the secret or the form body.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use crate::error::ConnectorError;
use crate::http_client::{
    display_url, retry_after, HttpClient, HttpResponse, MaybeSecret, RequestSpec,
};
use crate::secret::SecretValue;
use crate::RequestLog;

/// A token is refreshed this long before it expires (or at half its lifetime, when that
/// is shorter), so that a request never leaves with a token that dies in flight.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(120);
/// Lifetime assumed when the token endpoint does not say (`expires_in` missing).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// How much of an `error_description` is quoted.
const DESCRIPTION_CHARS: usize = 240;

/// What a [`ClientCredentials`] token source needs.
#[derive(Clone)]
pub struct ClientCredentialsConfig {
    /// The token endpoint, e.g. `https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token`.
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: SecretValue,
    /// E.g. `https://graph.microsoft.com/.default`.
    pub scope: String,
}

impl fmt::Debug for ClientCredentialsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentialsConfig")
            .field("token_url", &display_url(&self.token_url))
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("scope", &self.scope)
            .finish()
    }
}

struct CachedToken {
    token: SecretValue,
    refresh_at: Instant,
}

/// An OAuth 2.0 client-credentials token source with an in-memory cache.
pub struct ClientCredentials {
    config: ClientCredentialsConfig,
    cache: Mutex<Option<CachedToken>>,
    /// Held while fetching, so concurrent callers wait for one token request instead of
    /// each sending their own.
    fetching: tokio::sync::Mutex<()>,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("config", &self.config)
            .field("cached", &self.cached().is_some())
            .finish()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct TokenErrorBody {
    error: Option<String>,
    error_description: Option<String>,
}

impl ClientCredentials {
    pub fn new(config: ClientCredentialsConfig) -> Self {
        ClientCredentials {
            config,
            cache: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub fn config(&self) -> &ClientCredentialsConfig {
        &self.config
    }

    fn cached(&self) -> Option<SecretValue> {
        let guard = self.cache.lock().ok()?;
        let cached = guard.as_ref()?;
        (Instant::now() < cached.refresh_at).then(|| cached.token.clone())
    }

    /// Forget the cached token (after the vendor answered 401 to it).
    pub fn invalidate(&self) {
        if let Ok(mut guard) = self.cache.lock() {
            *guard = None;
        }
    }

    /// A valid access token: the cached one, or a new one from the token endpoint (sent
    /// through `client`, noted in `log`).
    pub async fn bearer(
        &self,
        client: &HttpClient,
        log: &RequestLog,
    ) -> Result<SecretValue, ConnectorError> {
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let _fetching = self.fetching.lock().await;
        // Another caller may have fetched one while we waited.
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let (token, lifetime) = self.fetch(client, log).await?;
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        if let Ok(mut guard) = self.cache.lock() {
            *guard = Some(CachedToken {
                token: token.clone(),
                refresh_at: Instant::now() + lifetime.saturating_sub(margin),
            });
        }
        Ok(token)
    }

    /// Send `spec` with `Authorization: Bearer <token>` and return the answer whatever its
    /// status (map it with the vendor's own error reader). A 401 is answered by refreshing
    /// the token and sending once more.
    pub async fn send(
        &self,
        client: &HttpClient,
        log: &RequestLog,
        spec: RequestSpec,
    ) -> Result<HttpResponse, ConnectorError> {
        let token = self.bearer(client, log).await?;
        let resp = client
            .send_raw(spec.clone().auth("Bearer", &token), log)
            .await?;
        if resp.status.as_u16() != 401 {
            return Ok(resp);
        }
        self.invalidate();
        let token = self.bearer(client, log).await?;
        client.send_raw(spec.auth("Bearer", &token), log).await
    }

    async fn fetch(
        &self,
        client: &HttpClient,
        log: &RequestLog,
    ) -> Result<(SecretValue, Duration), ConnectorError> {
        let c = &self.config;
        let mut form = vec![
            (
                "grant_type".to_string(),
                MaybeSecret::from("client_credentials"),
            ),
            (
                "client_id".to_string(),
                MaybeSecret::from(c.client_id.as_str()),
            ),
            (
                "client_secret".to_string(),
                MaybeSecret::Secret(c.client_secret.clone()),
            ),
        ];
        // Some token endpoints (Jamf Pro) document no `scope`: an empty one is not sent.
        if !c.scope.is_empty() {
            form.push(("scope".to_string(), MaybeSecret::from(c.scope.as_str())));
        }
        let spec = RequestSpec::post(c.token_url.as_str())
            .header("accept", "application/json")
            .form(form);
        let resp = client.send_raw(spec, log).await?;
        if !resp.status.is_success() {
            return Err(self.token_error(client, &resp));
        }
        let where_ = display_url(&c.token_url);
        let body: TokenResponse = serde_json::from_slice(&resp.body).map_err(|e| {
            ConnectorError::Other(format!(
                "token endpoint {where_} answered {} with a body that is not a token response \
                 ({:?} error at line {}, column {})",
                resp.status,
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        let access = body.access_token.filter(|t| !t.is_empty()).ok_or_else(|| {
            ConnectorError::Other(format!(
                "token endpoint {where_} answered without an `access_token`"
            ))
        })?;
        // Register first: from here on the token is scrubbed from anything we print.
        let token = client.redactor().secret(access);
        if let Some(kind) = body.token_type.as_deref() {
            if !kind.eq_ignore_ascii_case("bearer") {
                return Err(ConnectorError::Other(format!(
                    "token endpoint {where_} issued a `{kind}` token; only Bearer tokens are supported"
                )));
            }
        }
        let lifetime = body
            .expires_in
            .as_ref()
            .and_then(|v| match v {
                serde_json::Value::Number(n) => n.as_u64(),
                // Some endpoints send the number as a string.
                serde_json::Value::String(s) => s.trim().parse().ok(),
                _ => None,
            })
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME);
        Ok((token, lifetime))
    }

    fn token_error(&self, client: &HttpClient, resp: &HttpResponse) -> ConnectorError {
        let status = resp.status.as_u16();
        let parsed: Option<TokenErrorBody> = serde_json::from_slice(&resp.body).ok();
        let code = parsed
            .as_ref()
            .and_then(|b| b.error.clone())
            .unwrap_or_else(|| "no OAuth error code".to_string());
        let description = parsed
            .and_then(|b| b.error_description)
            .map(|d| {
                // Microsoft appends trace and correlation ids on later lines.
                let first = d.lines().next().unwrap_or("").trim().to_string();
                let first = client.redactor().redact_str(&first);
                let mut out: String = first.chars().take(DESCRIPTION_CHARS).collect();
                if first.chars().count() > DESCRIPTION_CHARS {
                    out.push('…');
                }
                format!(": {out}")
            })
            .unwrap_or_default();
        let message = format!(
            "token request to {} → {}: {code}{description}",
            display_url(&self.config.token_url),
            resp.status
        );
        match status {
            429 => ConnectorError::RateLimited {
                retry_after: retry_after(&resp.headers),
                message,
            },
            408 | 500..=599 => ConnectorError::Transient {
                retry_after: retry_after(&resp.headers),
                message,
            },
            400 | 401 | 403 => ConnectorError::Auth {
                status,
                message: format!(
                    "{message} (check the connector's `token_url`, `tenant_id`, `client_id` and `client_secret`)"
                ),
            },
            _ => ConnectorError::Rejected { status, message },
        }
    }
}

/// A token URL template with `{tenant_id}` replaced (Entra, Intune, Defender settings).
pub fn tenant_token_url(template: &str, tenant_id: &str) -> String {
    template.replace("{tenant_id}", tenant_id)
}

/// A tenant id as Microsoft writes them: a GUID or a domain name (`contoso.onmicrosoft.com`).
/// Anything else could change the token URL's path, so it is refused.
pub fn check_tenant_id(tenant_id: &str) -> Result<(), String> {
    if tenant_id.is_empty() {
        return Err("must not be empty".to_string());
    }
    if tenant_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !tenant_id.starts_with('.')
        && !tenant_id.contains("..")
    {
        Ok(())
    } else {
        Err(
            "must be a directory (tenant) id GUID or a domain name such as contoso.onmicrosoft.com"
                .to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_client::HttpClientConfig;
    use crate::secret::Redactor;

    #[test]
    fn tenant_ids() {
        assert!(check_tenant_id("00000000-0000-0000-0000-000000000000").is_ok());
        assert!(check_tenant_id("contoso.onmicrosoft.com").is_ok());
        assert!(check_tenant_id("").is_err());
        assert!(check_tenant_id("../evil").is_err());
        assert!(check_tenant_id("a/b").is_err());
        assert!(check_tenant_id("a?b").is_err());
        assert_eq!(
            tenant_token_url("https://x/{tenant_id}/oauth2/v2.0/token", "t1"),
            "https://x/t1/oauth2/v2.0/token"
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let cc = ClientCredentials::new(ClientCredentialsConfig {
            token_url: Url::parse("https://login.example.com/t/token").unwrap(),
            client_id: "app".into(),
            client_secret: SecretValue::new("s3cr3t-value"),
            scope: "https://graph.microsoft.com/.default".into(),
        });
        let d = format!("{cc:?}");
        assert!(!d.contains("s3cr3t-value"), "{d}");
        assert!(d.contains("app"), "{d}");
    }

    #[test]
    fn token_errors_name_the_oauth_code_not_the_secret() {
        let r = Redactor::new();
        r.register("s3cr3t-value");
        let client = HttpClient::new(HttpClientConfig::new("graph"), r).unwrap();
        let cc = ClientCredentials::new(ClientCredentialsConfig {
            token_url: Url::parse("https://login.example.com/t/token?x=1").unwrap(),
            client_id: "app".into(),
            client_secret: SecretValue::new("s3cr3t-value"),
            scope: "s".into(),
        });
        let resp = HttpResponse {
            status: reqwest::StatusCode::UNAUTHORIZED,
            headers: Default::default(),
            body: bytes::Bytes::from_static(
                br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret s3cr3t-value provided.\r\nTrace ID: 1"}"#,
            ),
        };
        let e = cc.token_error(&client, &resp);
        let text = format!("{e} {e:?}");
        assert!(matches!(e, ConnectorError::Auth { status: 401, .. }));
        assert!(
            text.contains("invalid_client") && text.contains("AADSTS7000215"),
            "{text}"
        );
        assert!(
            !text.contains("s3cr3t-value") && !text.contains("Trace ID"),
            "{text}"
        );
        assert!(!text.contains("x=1"), "{text}");
        assert!(text.contains("client_secret"), "{text}");
    }
}
