//! The `google` connector: Google Workspace through the Admin SDK (Directory and Reports
//! APIs), authenticated as a service account with domain-wide delegation.
//!
//! ## Settings
//! - `service_account_key` (required secret, `{env: …}` or `{file: …}`): the service
//!   account's JSON key as downloaded from Google Cloud (`client_email`, `private_key`,
//!   `private_key_id`). The key is parsed when the instance is built, so a broken key is a
//!   configuration error naming this setting; its contents never appear in any message.
//! - `subject` (required): the Workspace admin the service account acts as (`sub` claim).
//! - `base_url` (default `https://admin.googleapis.com`): API paths are appended to it.
//! - `token_url` (default `https://oauth2.googleapis.com/token`): where the signed assertion
//!   is exchanged for an access token. It wins over the key's own `token_uri`, so tests and
//!   the sandbox can never be pointed at Google by a key file. It is also the JWT `aud`.
//!
//! ## Auth
//! The JWT bearer grant (RFC 7523): an RS256-signed assertion with `iss` = the key's
//! `client_email`, `sub` = `subject`, `scope`, `aud` = `token_url`, `iat` and `exp`
//! (one hour), posted form-encoded to `token_url`. One access token per scope set (each action
//! asks only for the scopes its calls need), kept in memory until a minute before it
//! expires; a 401 from the API refreshes it once (not an attempt). Tokens and assertions are
//! registered with the instance's [`Redactor`].
//!
//! ## Actions and the vendor calls they make
//! | action | calls | scopes |
//! | --- | --- | --- |
//! | `get_user` | `GET /admin/directory/v1/users/{user}` | `admin.directory.user` |
//! | `suspend_user` | the same `GET`, then `PUT …/users/{id}` `{"suspended": true}` unless already suspended | `admin.directory.user` |
//! | `unsuspend_user` | the same `GET`, then `PUT …/users/{id}` `{"suspended": false}` unless already active | `admin.directory.user` |
//! | `sign_out` | the same `GET`, then `POST …/users/{id}/signOut` (empty body) | `admin.directory.user`, `admin.directory.user.security` |
//! | `snapshot_login_activity` | `GET /admin/reports/v1/activity/users/{user}/applications/login?startTime&endTime&maxResults=1000&pageToken` for every page | `admin.reports.audit.readonly` |
//!
//! A snapshot whose first page answers 404 (a user the Reports API does not know) returns
//! `{"found": false, "target": null}` and writes no artifact. Otherwise the output also
//! lists the activities' addresses (`ipAddress`, `id.time`, `networkInfo.regionCode`) as
//! `ip_addresses` ([`crate::ipsummary`]).
//!
//! `users.get` takes the primary email, an alias or the immutable numeric id, so one read
//! resolves any form of `user`; the mutations then address the resolved id. A 404 is "not
//! found" (`found: false`), never an error. Google's throttling answers (403
//! `userRateLimitExceeded`, `rateLimitExceeded`, `quotaExceeded`, and 429) are
//! `RateLimited`; other errors name Google's `reason` and message.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::Method;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::sha2::Sha256;
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use rsa::RsaPrivateKey;
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::evidence::{EvidenceMeta, EvidenceWriter};
use crate::http_client::{
    display_url, retry_after, HttpClient, HttpClientConfig, HttpResponse, MaybeSecret, RequestSpec,
};
use crate::ipsummary::{
    self, IpCollector, GOOGLE_LOGIN_ACTIVITY, IP_ADDRESSES_OUTPUT, IP_ADDRESSES_TRUNCATED_OUTPUT,
};
use crate::registry::{ConfigError, Settings};
use crate::secret::{Redactor, SecretValue};
use crate::{ActionCall, Connector, ConnectorError, RequestLog};

/// Google's API root.
pub const DEFAULT_BASE_URL: &str = "https://admin.googleapis.com";
/// Google's OAuth 2.0 token endpoint.
pub const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The JWT bearer grant type (RFC 7523).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Read and update users.
pub const SCOPE_USER: &str = "https://www.googleapis.com/auth/admin.directory.user";
/// `users.signOut`, tokens, application-specific passwords.
pub const SCOPE_USER_SECURITY: &str =
    "https://www.googleapis.com/auth/admin.directory.user.security";
/// Reports API activities.
pub const SCOPE_REPORTS: &str = "https://www.googleapis.com/auth/admin.reports.audit.readonly";

/// Lifetime asked for in the assertion (Google's maximum).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);
/// A cached token is replaced this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Reports API page size (its maximum).
const PAGE_SIZE: &str = "1000";
const DIRECTORY_USERS: &str = "admin/directory/v1/users";
const LOGIN_ACTIVITY: &str = "admin/reports/v1/activity/users/{user}/applications/login";
/// Google's reasons for throttling answers (sent with 403).
const THROTTLE_REASONS: &[&str] = &[
    "userRateLimitExceeded",
    "rateLimitExceeded",
    "quotaExceeded",
];

const SCOPES_DIRECTORY: &[&str] = &[SCOPE_USER];
const SCOPES_SIGN_OUT: &[&str] = &[SCOPE_USER, SCOPE_USER_SECURITY];
const SCOPES_REPORTS: &[&str] = &[SCOPE_REPORTS];

const USER_INPUT: FieldDecl = FieldDecl {
    name: "user",
    ty: "string",
    required: true,
    description: "primary email, alias, or Google's numeric user id",
};

const MUTATION_OUTPUTS: &[FieldDecl] = &[
    FieldDecl {
        name: "found",
        ty: "boolean",
        required: true,
        description: "false when Google knows no such user (nothing was changed)",
    },
    FieldDecl {
        name: "target",
        ty: "string",
        required: true,
        description: "Google's user id (null when not found)",
    },
    FieldDecl {
        name: "already",
        ty: "boolean",
        required: true,
        description: "true when the user was already in that state and nothing was sent",
    },
    FieldDecl {
        name: "email",
        ty: "string",
        required: false,
        description: "the user's primary email",
    },
    FieldDecl {
        name: "suspended",
        ty: "boolean",
        required: false,
        description: "the user's suspension state after the call",
    },
];

pub const TYPE: TypeDecl = TypeDecl {
    name: "google",
    description: "Google Workspace (Admin SDK Directory and Reports APIs)",
    needs_instance: true,
    actions: &[
        ActionDecl {
            name: "get_user",
            description: "Look a user up by email, alias or id",
            inputs: &[USER_INPUT],
            outputs: &[
                FieldDecl {
                    name: "found",
                    ty: "boolean",
                    required: true,
                    description: "false when Google knows no such user",
                },
                FieldDecl {
                    name: "id",
                    ty: "string",
                    required: false,
                    description: "Google's immutable user id",
                },
                FieldDecl {
                    name: "email",
                    ty: "string",
                    required: false,
                    description: "primary email",
                },
                FieldDecl {
                    name: "name",
                    ty: "string",
                    required: false,
                    description: "full name",
                },
                FieldDecl {
                    name: "status",
                    ty: "string",
                    required: false,
                    description: "ACTIVE, SUSPENDED or ARCHIVED",
                },
                FieldDecl {
                    name: "suspended",
                    ty: "boolean",
                    required: false,
                    description: "whether the account is suspended",
                },
                FieldDecl {
                    name: "is_admin",
                    ty: "boolean",
                    required: false,
                    description: "whether the user is a super administrator",
                },
                FieldDecl {
                    name: "last_login_time",
                    ty: "string",
                    required: false,
                    description: "RFC 3339 time of the last login",
                },
            ],
            effect: Effect::Lookup,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "suspend_user",
            description: "Suspend the account (users.update suspended=true)",
            inputs: &[USER_INPUT],
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: Some("unsuspend_user"),
            secret_outputs: &[],
        },
        ActionDecl {
            name: "unsuspend_user",
            description: "Lift a suspension (users.update suspended=false)",
            inputs: &[USER_INPUT],
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: Some("suspend_user"),
            secret_outputs: &[],
        },
        ActionDecl {
            name: "sign_out",
            description: "Sign the user out of all web and device sessions (users.signOut)",
            inputs: &[USER_INPUT],
            outputs: MUTATION_OUTPUTS,
            effect: Effect::Mutation,
            undo: None,
            secret_outputs: &[],
        },
        ActionDecl {
            name: "snapshot_login_activity",
            description: "Save the user's login audit events (Reports API) as JSON Lines evidence",
            inputs: &[
                USER_INPUT,
                FieldDecl {
                    name: "since",
                    ty: "string",
                    required: true,
                    description: "RFC 3339 start of the window (startTime)",
                },
                FieldDecl {
                    name: "until",
                    ty: "string",
                    required: false,
                    description: "RFC 3339 end of the window (endTime); default now",
                },
            ],
            outputs: &[
                FieldDecl {
                    name: "evidence_id",
                    ty: "string",
                    required: true,
                    description: "the artifact's id",
                },
                FieldDecl {
                    name: "sha256",
                    ty: "string",
                    required: true,
                    description: "lowercase hex SHA-256 of the stored bytes",
                },
                FieldDecl {
                    name: "bytes",
                    ty: "integer",
                    required: true,
                    description: "size in bytes",
                },
                FieldDecl {
                    name: "records",
                    ty: "integer",
                    required: true,
                    description: "login activity records (one JSON line each)",
                },
                FieldDecl {
                    name: "found",
                    ty: "boolean",
                    required: false,
                    description: "false when the Reports API does not know the user (no artifact)",
                },
                FieldDecl {
                    name: "pages",
                    ty: "integer",
                    required: true,
                    description: "Reports API pages fetched",
                },
                IP_ADDRESSES_OUTPUT,
                IP_ADDRESSES_TRUNCATED_OUTPUT,
            ],
            effect: Effect::Snapshot,
            undo: None,
            secret_outputs: &[],
        },
    ],
};

/// The registry's constructor: one `google` instance from its settings map.
pub fn build(
    name: &str,
    map: &serde_json::Map<String, Value>,
    base_dir: &std::path::Path,
    redactor: &Redactor,
) -> Result<std::sync::Arc<dyn Connector>, Vec<ConfigError>> {
    let settings = Settings::new(name, map, GoogleConnector::SETTINGS, base_dir, redactor);
    Ok(std::sync::Arc::new(GoogleConnector::from_settings(
        settings,
    )?))
}

/// Why a service account key could not be used. Never quotes the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is not a JSON service account key ({0})")]
    NotJson(String),
    #[error("has `type` `{0}`, expected `service_account`")]
    WrongType(String),
    #[error("has no `{0}` field")]
    Missing(&'static str),
    #[error("`private_key` is not a PEM-encoded RSA private key (PKCS#8 or PKCS#1)")]
    BadPrivateKey,
}

/// A parsed service account key: who we are and how we sign. `Debug` shows the identity
/// only.
#[derive(Clone)]
pub struct ServiceAccountKey {
    client_email: String,
    private_key_id: Option<String>,
    signing_key: SigningKey<Sha256>,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RawKey {
    #[serde(rename = "type")]
    ty: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
}

impl ServiceAccountKey {
    /// Parse the JSON key file's text. The private key is registered with `redactor`.
    pub fn from_json(text: &str, redactor: &Redactor) -> Result<Self, KeyError> {
        // The serde error names a position only: it never quotes the input.
        let raw: RawKey = serde_json::from_str(text).map_err(|e| {
            KeyError::NotJson(format!(
                "{:?} error at line {}, column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        if let Some(ty) = raw.ty.as_deref() {
            if ty != "service_account" {
                return Err(KeyError::WrongType(ty.chars().take(40).collect()));
            }
        }
        let client_email = raw
            .client_email
            .filter(|s| !s.trim().is_empty())
            .ok_or(KeyError::Missing("client_email"))?;
        let pem = raw
            .private_key
            .filter(|s| !s.trim().is_empty())
            .ok_or(KeyError::Missing("private_key"))?;
        redactor.register(&pem);
        let pem = pem.trim();
        redactor.register(pem);
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| KeyError::BadPrivateKey)?;
        Ok(ServiceAccountKey {
            client_email,
            private_key_id: raw.private_key_id.filter(|s| !s.is_empty()),
            signing_key: SigningKey::<Sha256>::new(key),
        })
    }

    /// The service account's email (the assertion's `iss`).
    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// A signed JWT bearer assertion: `header.claims.signature`, each base64url without
    /// padding. `now` is injectable for tests.
    pub fn assertion(
        &self,
        subject: &str,
        scopes: &[&str],
        audience: &str,
        now: SystemTime,
    ) -> String {
        let iat = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.private_key_id {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": self.client_email,
            "sub": subject,
            "scope": scopes.join(" "),
            "aud": audience,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME.as_secs(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        // Randomised (blinded) signing: the private-key operation does not leak timing.
        let signature = self
            .signing_key
            .sign_with_rng(&mut rand::thread_rng(), signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

/// Everything a `google` instance needs, already checked.
#[derive(Debug, Clone)]
pub struct GoogleConfig {
    pub instance: String,
    pub key: ServiceAccountKey,
    /// The admin to act as.
    pub subject: String,
    pub base_url: Url,
    pub token_url: Url,
    /// Bound on each request.
    pub timeout: Duration,
}

/// One cached access token.
struct CachedToken {
    token: SecretValue,
    refresh_at: Instant,
}

/// A configured `google` instance.
pub struct GoogleConnector {
    instance: String,
    client: HttpClient,
    key: ServiceAccountKey,
    subject: String,
    base_url: Url,
    token_url: Url,
    /// Access tokens by space-joined scope set. A tokio mutex: one fetch at a time, so
    /// concurrent items share a fresh token instead of each signing their own.
    tokens: tokio::sync::Mutex<HashMap<String, CachedToken>>,
}

impl fmt::Debug for GoogleConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoogleConnector")
            .field("instance", &self.instance)
            .field("client_email", &self.key.client_email)
            .field("subject", &self.subject)
            .field("base_url", &display_url(&self.base_url))
            .field("token_url", &display_url(&self.token_url))
            .finish_non_exhaustive()
    }
}

/// A user as the Directory API describes it (the fields we use).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DirectoryUser {
    id: String,
    #[serde(default)]
    primary_email: Option<String>,
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    suspended: bool,
    #[serde(default)]
    archived: bool,
    #[serde(default)]
    is_admin: bool,
    #[serde(default)]
    last_login_time: Option<String>,
    #[serde(default)]
    suspension_reason: Option<String>,
}

impl DirectoryUser {
    fn status(&self) -> &'static str {
        if self.suspended {
            "SUSPENDED"
        } else if self.archived {
            "ARCHIVED"
        } else {
            "ACTIVE"
        }
    }
}

/// What a paged snapshot leaves for the next attempt after a transient failure.
struct SnapshotProgress {
    /// The inputs the progress belongs to: another call's progress is never reused.
    fingerprint: String,
    writer: Option<Box<dyn EvidenceWriter>>,
    /// The page that failed (None: the first page).
    page_token: Option<String>,
    records: u64,
    pages: u64,
    /// The addresses of the records written so far.
    ips: IpCollector,
}

/// The checked inputs of `snapshot_login_activity`.
#[derive(Debug)]
struct SnapshotInput {
    user: String,
    since: String,
    until: Option<String>,
}

impl SnapshotInput {
    fn fingerprint(&self) -> String {
        json!([self.user, self.since, self.until]).to_string()
    }
}

impl GoogleConnector {
    /// The settings this type takes.
    pub const SETTINGS: &'static [&'static str] =
        &["service_account_key", "subject", "base_url", "token_url"];

    /// Build from an instance's settings (pure apart from reading the key's secret).
    pub fn from_settings(mut s: Settings<'_>) -> Result<Self, Vec<ConfigError>> {
        let instance = s.instance().to_string();
        let redactor = s.redactor().clone();
        let key_text = s.required_secret("service_account_key");
        let subject = s.required_string("subject");
        let base_url = s.url_or("base_url", DEFAULT_BASE_URL);
        let token_url = s.url_or("token_url", DEFAULT_TOKEN_URL);
        let key = key_text.and_then(|text| {
            match ServiceAccountKey::from_json(text.expose(), &redactor) {
                Ok(k) => Some(k),
                Err(e) => {
                    s.error(Some("service_account_key"), format!("the secret {e}"));
                    None
                }
            }
        });
        let subject = subject.and_then(|sub| {
            let sub = sub.trim().to_string();
            if is_plausible_email(&sub) {
                Some(sub)
            } else {
                s.error(
                    Some("subject"),
                    "must be the email address of the Workspace admin to act as",
                );
                None
            }
        });
        s.finish()?;
        let (Some(key), Some(subject), Some(base_url), Some(token_url)) =
            (key, subject, base_url, token_url)
        else {
            // Every None above recorded an error, so finish() has already returned them.
            return Err(vec![ConfigError::new(
                &instance,
                None,
                "incomplete google settings",
            )]);
        };
        GoogleConnector::new(
            GoogleConfig {
                instance,
                key,
                subject,
                base_url,
                token_url,
                timeout: crate::http_client::DEFAULT_TIMEOUT,
            },
            redactor,
        )
        .map_err(|e| vec![e])
    }

    /// Build from a checked configuration (tests and embedders use this to set `timeout`).
    pub fn new(config: GoogleConfig, redactor: Redactor) -> Result<Self, ConfigError> {
        let mut http = HttpClientConfig::new(&config.instance);
        http.base_url = Some(config.base_url.clone());
        http.timeout = config.timeout;
        let client = HttpClient::new(http, redactor)
            .map_err(|e| ConfigError::new(&config.instance, Some("base_url"), e.to_string()))?;
        crate::http_client::check_url(&config.instance, &config.token_url)
            .map_err(|e| ConfigError::new(&config.instance, Some("token_url"), e.reason.clone()))?;
        Ok(GoogleConnector {
            instance: config.instance,
            client,
            key: config.key,
            subject: config.subject,
            base_url: config.base_url,
            token_url: config.token_url,
            tokens: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// An access token for these scopes: the cached one, or a new one. `stale` is a token
    /// the API just refused: it is replaced even if it has not expired yet.
    async fn token(
        &self,
        scopes: &[&str],
        stale: Option<&SecretValue>,
        log: &RequestLog,
    ) -> Result<SecretValue, ConnectorError> {
        let scope = scopes.join(" ");
        let mut cache = self.tokens.lock().await;
        if let Some(cached) = cache.get(&scope) {
            let refused = stale.is_some_and(|s| s.expose() == cached.token.expose());
            if !refused && Instant::now() < cached.refresh_at {
                return Ok(cached.token.clone());
            }
        }
        cache.remove(&scope);
        let redactor = self.client.redactor();
        let assertion = redactor.secret(self.key.assertion(
            &self.subject,
            scopes,
            self.token_url.as_str(),
            SystemTime::now(),
        ));
        let spec = RequestSpec::post(self.token_url.as_str()).form(vec![
            (
                "grant_type".to_string(),
                MaybeSecret::Plain(JWT_BEARER_GRANT.to_string()),
            ),
            ("assertion".to_string(), MaybeSecret::Secret(assertion)),
        ]);
        let resp = self.client.send_raw(spec, log).await?;
        if !resp.status.is_success() {
            return Err(self.token_error(&resp));
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse = resp.json().map_err(|e| {
            ConnectorError::Other(format!(
                "connector `{}`: the token endpoint's answer is unusable: {e}",
                self.instance
            ))
        })?;
        if parsed.access_token.is_empty() {
            return Err(ConnectorError::Other(format!(
                "connector `{}`: the token endpoint returned an empty access_token",
                self.instance
            )));
        }
        let token = redactor.secret(parsed.access_token);
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(3600));
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        cache.insert(
            scope,
            CachedToken {
                token: token.clone(),
                refresh_at: Instant::now() + lifetime - margin,
            },
        );
        Ok(token)
    }

    /// The token endpoint's refusal, from its OAuth error body (`error`,
    /// `error_description`).
    fn token_error(&self, resp: &HttpResponse) -> ConnectorError {
        let status = resp.status.as_u16();
        let redactor = self.client.redactor();
        let path = display_url(&self.token_url);
        #[derive(Deserialize)]
        struct OAuthError {
            error: String,
            #[serde(default)]
            error_description: Option<String>,
        }
        let oauth: Option<OAuthError> = serde_json::from_slice(&resp.body).ok();
        let detail = match &oauth {
            Some(o) => {
                let mut d = format!("OAuth error `{}`", o.error);
                if let Some(desc) = &o.error_description {
                    d.push_str(&format!(": {desc}"));
                }
                if o.error == "unauthorized_client" || o.error == "access_denied" {
                    d.push_str(
                        " (hint: allow the service account's client ID these scopes under \
                         domain-wide delegation in the Admin console, and check `subject`)",
                    );
                }
                redactor.redact_str(&d)
            }
            None => "no OAuth error body".to_string(),
        };
        let message = format!(
            "connector `{}`: token request POST {path} → {status}: {detail}",
            self.instance
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
            _ => ConnectorError::Auth { status, message },
        }
    }

    /// Send an API request with a bearer token; on 401, refresh the token once and send
    /// again. Returns the answer whatever its status.
    async fn send_api(
        &self,
        scopes: &[&str],
        spec: RequestSpec,
        log: &RequestLog,
    ) -> Result<HttpResponse, ConnectorError> {
        let token = self.token(scopes, None, log).await?;
        let resp = self
            .client
            .send_raw(spec.clone().auth("Bearer", &token), log)
            .await?;
        if resp.status.as_u16() != 401 {
            return Ok(resp);
        }
        let fresh = self.token(scopes, Some(&token), log).await?;
        self.client.send_raw(spec.auth("Bearer", &fresh), log).await
    }

    /// The typed error for a non-2xx API answer, naming Google's reason and message.
    fn api_error(&self, method: &Method, path: &str, resp: &HttpResponse) -> ConnectorError {
        let status = resp.status.as_u16();
        let redactor = self.client.redactor();
        let google = GoogleError::parse(&resp.body);
        let detail = match &google {
            Some(g) => g.describe(),
            None => {
                let text = resp.text();
                let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
                let short: String = text.chars().take(200).collect();
                if short.is_empty() {
                    "no error body".to_string()
                } else {
                    short
                }
            }
        };
        let message = redactor.redact_str(&format!(
            "connector `{}`: {method} /{path} → {status}: {detail}",
            self.instance
        ));
        let throttled = google.as_ref().is_some_and(|g| {
            g.reasons
                .iter()
                .any(|r| THROTTLE_REASONS.contains(&r.as_str()))
        });
        match status {
            429 => ConnectorError::RateLimited {
                retry_after: retry_after(&resp.headers),
                message,
            },
            403 if throttled => ConnectorError::RateLimited {
                retry_after: retry_after(&resp.headers),
                message,
            },
            408 | 500..=599 => ConnectorError::Transient {
                retry_after: retry_after(&resp.headers),
                message,
            },
            401 | 403 => ConnectorError::Auth { status, message },
            _ => ConnectorError::Rejected { status, message },
        }
    }

    /// `users.get`: the user, or None for a 404.
    async fn read_user(
        &self,
        user: &str,
        scopes: &[&str],
        log: &RequestLog,
    ) -> Result<Option<DirectoryUser>, ConnectorError> {
        let path = format!("{DIRECTORY_USERS}/{}", encode_segment(user));
        let resp = self.send_api(scopes, RequestSpec::get(&path), log).await?;
        match resp.status.as_u16() {
            200..=299 => {
                let u: DirectoryUser = resp.json().map_err(|e| {
                    ConnectorError::Other(format!(
                        "connector `{}`: GET /{path}: {e}",
                        self.instance
                    ))
                })?;
                Ok(Some(u))
            }
            404 => Ok(None),
            _ => Err(self.api_error(&Method::GET, &path, &resp)),
        }
    }

    async fn get_user(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let user = user_input(call.input)?;
        let Some(u) = self
            .read_user(&user, SCOPES_DIRECTORY, call.requests)
            .await?
        else {
            return Ok(json!({"found": false}));
        };
        let name = u
            .name
            .as_ref()
            .and_then(|n| n.get("fullName"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut out = json!({
            "found": true,
            "id": u.id,
            "email": u.primary_email,
            "name": name,
            "status": u.status(),
            "suspended": u.suspended,
            "archived": u.archived,
            "is_admin": u.is_admin,
            "last_login_time": u.last_login_time,
        });
        if let Some(reason) = &u.suspension_reason {
            out["suspension_reason"] = json!(reason);
        }
        Ok(out)
    }

    /// suspend_user / unsuspend_user: read, then write only when the state differs.
    async fn set_suspended(
        &self,
        call: &ActionCall<'_>,
        suspended: bool,
    ) -> Result<Value, ConnectorError> {
        let user = user_input(call.input)?;
        let Some(u) = self
            .read_user(&user, SCOPES_DIRECTORY, call.requests)
            .await?
        else {
            return Ok(not_found());
        };
        if u.suspended == suspended {
            return Ok(json!({
                "found": true, "target": u.id, "already": true,
                "email": u.primary_email, "suspended": suspended,
            }));
        }
        let path = format!("{DIRECTORY_USERS}/{}", encode_segment(&u.id));
        let spec = RequestSpec::new(Method::PUT, &path).json(json!({"suspended": suspended}));
        let resp = self.send_api(SCOPES_DIRECTORY, spec, call.requests).await?;
        match resp.status.as_u16() {
            200..=299 => {}
            // Deleted between the read and the write.
            404 => return Ok(not_found()),
            _ => return Err(self.api_error(&Method::PUT, &path, &resp)),
        }
        let now_suspended = resp
            .json::<DirectoryUser>()
            .map(|after| after.suspended)
            .unwrap_or(suspended);
        Ok(json!({
            "found": true, "target": u.id, "already": false,
            "email": u.primary_email, "suspended": now_suspended,
        }))
    }

    async fn sign_out(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let user = user_input(call.input)?;
        let Some(u) = self
            .read_user(&user, SCOPES_SIGN_OUT, call.requests)
            .await?
        else {
            return Ok(not_found());
        };
        let path = format!("{DIRECTORY_USERS}/{}/signOut", encode_segment(&u.id));
        // An explicit `Content-Length: 0`: Google's front end answers 411 to a body-less
        // POST without one, and the HTTP stack omits it for an empty body.
        let spec = RequestSpec::post(&path)
            .header("content-length", "0")
            .text(String::new());
        let resp = self.send_api(SCOPES_SIGN_OUT, spec, call.requests).await?;
        match resp.status.as_u16() {
            200..=299 => {}
            404 => return Ok(not_found()),
            _ => return Err(self.api_error(&Method::POST, &path, &resp)),
        }
        // Signing out has no "already" state: every session is ended each time.
        Ok(json!({
            "found": true, "target": u.id, "already": false,
            "email": u.primary_email, "suspended": u.suspended, "signed_out": true,
        }))
    }

    async fn snapshot(&self, call: &ActionCall<'_>) -> Result<Value, ConnectorError> {
        let input = snapshot_input(call.input)?;
        let fingerprint = input.fingerprint();
        let mut progress = match call.resume.take::<SnapshotProgress>() {
            Some(p) if p.fingerprint == fingerprint => p,
            _ => SnapshotProgress {
                fingerprint,
                writer: None,
                page_token: None,
                records: 0,
                pages: 0,
                ips: IpCollector::new(GOOGLE_LOGIN_ACTIVITY),
            },
        };
        let path = LOGIN_ACTIVITY.replace("{user}", &encode_segment(&input.user));
        let evidence_err = |e: crate::evidence::EvidenceError| ConnectorError::Evidence(e.0);
        loop {
            let mut spec = RequestSpec::get(&path)
                .query("startTime", &input.since)
                .query("maxResults", PAGE_SIZE);
            if let Some(until) = &input.until {
                spec = spec.query("endTime", until);
            }
            if let Some(t) = &progress.page_token {
                spec = spec.query("pageToken", t);
            }
            let resp = match self.send_api(SCOPES_REPORTS, spec, call.requests).await {
                Ok(r) if r.status.is_success() => r,
                Ok(r) if r.status.as_u16() == 404 && progress.pages == 0 => {
                    let mut out = json!({"found": false, "target": null});
                    ipsummary::add_empty(&mut out);
                    return Ok(out);
                }
                Ok(r) => {
                    let e = self.api_error(&Method::GET, &path, &r);
                    return Err(self.stash_if_transient(call, progress, e));
                }
                Err(e) => return Err(self.stash_if_transient(call, progress, e)),
            };
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Page {
                #[serde(default)]
                items: Vec<Value>,
                #[serde(default)]
                next_page_token: Option<String>,
            }
            let page: Page = resp.json().map_err(|e| {
                ConnectorError::Other(format!("connector `{}`: GET /{path}: {e}", self.instance))
            })?;
            let writer = match progress.writer.as_mut() {
                Some(w) => w,
                None => {
                    let meta = self.snapshot_meta(call, &input, &path);
                    progress
                        .writer
                        .insert(call.evidence.create(meta).await.map_err(evidence_err)?)
                }
            };
            // One page at a time: a page is at most 1,000 records.
            let mut chunk = Vec::new();
            for item in &page.items {
                serde_json::to_writer(&mut chunk, item)
                    .map_err(|e| ConnectorError::Other(format!("cannot encode a record: {e}")))?;
                chunk.push(b'\n');
            }
            if !chunk.is_empty() {
                writer.write(&chunk).await.map_err(evidence_err)?;
            }
            for item in &page.items {
                progress.ips.feed(item);
            }
            let n = page.items.len() as u64;
            writer.add_records(n);
            progress.records += n;
            progress.pages += 1;
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) if progress.page_token.as_deref() == Some(next.as_str()) => {
                    return Err(ConnectorError::Other(format!(
                        "connector `{}`: GET /{path}: Google returned the same nextPageToken twice; stopping rather than looping",
                        self.instance
                    )));
                }
                Some(next) => progress.page_token = Some(next),
                None => break,
            }
        }
        let Some(writer) = progress.writer.take() else {
            return Err(ConnectorError::Other("no evidence was opened".to_string()));
        };
        let record = writer.finish().await.map_err(evidence_err)?;
        let mut out = json!({
            "found": true,
            "evidence_id": record.evidence_id,
            "sha256": record.sha256,
            "bytes": record.bytes,
            "records": record.records,
            "pages": progress.pages,
            "path": record.path,
        });
        progress.ips.add_to(&mut out);
        Ok(out)
    }

    /// Keep the open writer and the failed page for the engine's next attempt.
    fn stash_if_transient(
        &self,
        call: &ActionCall<'_>,
        progress: SnapshotProgress,
        e: ConnectorError,
    ) -> ConnectorError {
        if e.is_transient() {
            call.resume.put(progress);
        }
        e
    }

    fn snapshot_meta(
        &self,
        call: &ActionCall<'_>,
        input: &SnapshotInput,
        path: &str,
    ) -> EvidenceMeta {
        EvidenceMeta {
            connector_type: TYPE.name.to_string(),
            instance: self.instance.clone(),
            action: call.action.to_string(),
            extension: "jsonl".to_string(),
            media_type: "application/x-ndjson".to_string(),
            source: json!({
                "api": "Admin SDK Reports API activities.list",
                "base_url": display_url(&self.base_url),
                "endpoint": format!("/{path}"),
                "application": "login",
                "user": input.user,
                "since": input.since,
                "until": input.until,
                "subject": self.subject,
            }),
        }
    }
}

#[async_trait]
impl Connector for GoogleConnector {
    fn type_name(&self) -> &'static str {
        TYPE.name
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        match call.action {
            "get_user" => self.get_user(&call).await,
            "suspend_user" => self.set_suspended(&call, true).await,
            "unsuspend_user" => self.set_suspended(&call, false).await,
            "sign_out" => self.sign_out(&call).await,
            "snapshot_login_activity" => self.snapshot(&call).await,
            other => Err(ConnectorError::Other(format!(
                "connector type `google` has no action `{other}`"
            ))),
        }
    }

    async fn prior_state(&self, call: ActionCall<'_>) -> Result<Option<Value>, ConnectorError> {
        let scopes = match call.action {
            "suspend_user" | "unsuspend_user" => SCOPES_DIRECTORY,
            "sign_out" => SCOPES_SIGN_OUT,
            _ => return Ok(None),
        };
        let user = user_input(call.input)?;
        Ok(Some(
            match self.read_user(&user, scopes, call.requests).await? {
                Some(u) => {
                    let mut state = json!({
                        "found": true,
                        "id": u.id,
                        "email": u.primary_email,
                        "suspended": u.suspended,
                        "status": u.status(),
                    });
                    // Was the user already where this action takes them, before the run?
                    match call.action {
                        "suspend_user" => state["already"] = json!(u.suspended),
                        "unsuspend_user" => state["already"] = json!(!u.suspended),
                        _ => {}
                    }
                    state
                }
                None => json!({"found": false}),
            },
        ))
    }
}

/// Google's standard error body:
/// `{"error": {"code", "message", "status", "errors": [{"domain", "reason", "message"}]}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GoogleError {
    message: String,
    status: Option<String>,
    reasons: Vec<String>,
}

impl GoogleError {
    fn parse(body: &[u8]) -> Option<GoogleError> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let e = v.get("error")?.as_object()?;
        let reasons = e
            .get("errors")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|x| x.get("reason").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Some(GoogleError {
            message: e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .chars()
                .take(300)
                .collect(),
            status: e.get("status").and_then(Value::as_str).map(str::to_string),
            reasons,
        })
    }

    /// `Google error `notFound` (NOT_FOUND): Resource Not Found: userKey`.
    fn describe(&self) -> String {
        let mut s = "Google error".to_string();
        if !self.reasons.is_empty() {
            s.push_str(&format!(" `{}`", self.reasons.join("`, `")));
        }
        if let Some(st) = &self.status {
            s.push_str(&format!(" ({st})"));
        }
        if !self.message.is_empty() {
            s.push_str(&format!(": {}", self.message));
        }
        s
    }
}

fn not_found() -> Value {
    json!({"found": false, "target": null, "already": false})
}

fn invalid(field: &str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidInput {
        field: field.to_string(),
        message: message.into(),
    }
}

fn check_keys(input: &Value, allowed: &[&str]) -> Result<(), ConnectorError> {
    let obj = input
        .as_object()
        .ok_or_else(|| invalid("with", "the inputs must be a map"))?;
    if let Some(unknown) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(
            unknown,
            format!(
                "not an input of this action (takes: {})",
                allowed.join(", ")
            ),
        ));
    }
    Ok(())
}

/// The `user` input: an email, alias or numeric id, checked for shape only.
fn user_input(input: &Value) -> Result<String, ConnectorError> {
    check_keys(input, &["user"])?;
    parse_user(input)
}

fn parse_user(input: &Value) -> Result<String, ConnectorError> {
    let user = match input.get("user") {
        Some(Value::String(s)) => s.trim().to_string(),
        // Google ids have 21 digits: more than a JSON number holds exactly.
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        Some(Value::Number(_)) => {
            return Err(invalid("user", "write a Google user id as a string"))
        }
        Some(_) => {
            return Err(invalid(
                "user",
                "must be an email address or a Google user id",
            ))
        }
        None => return Err(invalid("user", "is required")),
    };
    if user.is_empty() {
        return Err(invalid("user", "must not be empty"));
    }
    if user.len() > 320 || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "user",
            "must be an email address or a Google user id (no spaces, at most 320 characters)",
        ));
    }
    if user.eq_ignore_ascii_case("all") {
        // `all` means every user to the Reports API; never a single person.
        return Err(invalid("user", "`all` is not a user: name one user"));
    }
    Ok(user)
}

fn snapshot_input(input: &Value) -> Result<SnapshotInput, ConnectorError> {
    check_keys(input, &["user", "since", "until"])?;
    let user = parse_user(input)?;
    let time = |field: &str,
                required: bool|
     -> Result<
        Option<(String, chrono::DateTime<chrono::FixedOffset>)>,
        ConnectorError,
    > {
        match input.get(field) {
            None | Some(Value::Null) if !required => Ok(None),
            None | Some(Value::Null) => Err(invalid(field, "is required (an RFC 3339 time)")),
            Some(Value::String(s)) => {
                let s = s.trim();
                chrono::DateTime::parse_from_rfc3339(s)
                    .map(|t| Some((s.to_string(), t)))
                    .map_err(|e| {
                        invalid(
                            field,
                            format!(
                                "`{s}` is not an RFC 3339 time such as 2024-06-01T00:00:00Z: {e}"
                            ),
                        )
                    })
            }
            Some(_) => Err(invalid(field, "must be an RFC 3339 time string")),
        }
    };
    let Some((since, since_t)) = time("since", true)? else {
        return Err(invalid("since", "is required (an RFC 3339 time)"));
    };
    let until = time("until", false)?;
    if let Some((_, until_t)) = &until {
        if *until_t < since_t {
            return Err(invalid("until", "is before `since`"));
        }
    }
    Ok(SnapshotInput {
        user,
        since,
        until: until.map(|(s, _)| s),
    })
}

/// Percent-encode one path segment (RFC 3986 unreserved characters and `@` pass).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_plausible_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1v15::{Signature, VerifyingKey};
    use rsa::signature::Verifier;

    fn key_json() -> String {
        crate::sandbox::google::sandbox_service_account_key(DEFAULT_TOKEN_URL)
    }

    #[test]
    fn assertion_has_googles_header_claims_and_a_valid_signature() {
        let redactor = Redactor::new();
        let key = ServiceAccountKey::from_json(&key_json(), &redactor).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let jwt = key.assertion("admin@example.com", SCOPES_SIGN_OUT, DEFAULT_TOKEN_URL, now);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], crate::sandbox::google::SANDBOX_KEY_ID);
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], crate::sandbox::google::SANDBOX_CLIENT_EMAIL);
        assert_eq!(claims["sub"], "admin@example.com");
        assert_eq!(claims["aud"], DEFAULT_TOKEN_URL);
        assert_eq!(
            claims["scope"],
            format!("{SCOPE_USER} {SCOPE_USER_SECURITY}")
        );
        assert_eq!(claims["iat"], 1_700_000_000u64);
        assert_eq!(claims["exp"], 1_700_003_600u64);
        let public = key.signing_key.as_ref().to_public_key();
        let verifier = VerifyingKey::<Sha256>::new(public);
        let sig =
            Signature::try_from(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().as_slice()).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        verifier.verify(signed.as_bytes(), &sig).unwrap();
        assert!(verifier.verify(b"tampered", &sig).is_err());
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn key_errors_never_quote_the_key() {
        let r = Redactor::new();
        let e = ServiceAccountKey::from_json("not json with secret-ish text", &r).unwrap_err();
        assert!(matches!(e, KeyError::NotJson(_)));
        assert!(!e.to_string().contains("secret-ish"), "{e}");
        let e = ServiceAccountKey::from_json(r#"{"type":"authorized_user"}"#, &r).unwrap_err();
        assert_eq!(e, KeyError::WrongType("authorized_user".into()));
        let e = ServiceAccountKey::from_json(r#"{"type":"service_account","private_key":"x"}"#, &r)
            .unwrap_err();
        assert_eq!(e, KeyError::Missing("client_email"));
        let bad = r#"{"type":"service_account","client_email":"a@b.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA-leaky\n-----END PRIVATE KEY-----\n"}"#;
        let e = ServiceAccountKey::from_json(bad, &r).unwrap_err();
        assert_eq!(e, KeyError::BadPrivateKey);
        assert!(!e.to_string().contains("leaky"));
        // The PEM was registered before parsing, so it is scrubbed wherever it shows up.
        let pem = "-----BEGIN PRIVATE KEY-----\nAAAA-leaky\n-----END PRIVATE KEY-----";
        assert!(!r.redact_str(&format!("x {pem}\n y")).contains("leaky"));
    }

    #[test]
    fn google_errors_name_reason_and_message() {
        let body = br#"{"error":{"code":403,"message":"Quota exceeded for quota metric","errors":[{"domain":"usageLimits","reason":"userRateLimitExceeded","message":"x"}],"status":"PERMISSION_DENIED"}}"#;
        let g = GoogleError::parse(body).unwrap();
        assert_eq!(g.reasons, vec!["userRateLimitExceeded"]);
        assert_eq!(
            g.describe(),
            "Google error `userRateLimitExceeded` (PERMISSION_DENIED): Quota exceeded for quota metric"
        );
        assert!(GoogleError::parse(b"<html>").is_none());
    }

    #[test]
    fn inputs_are_checked_and_name_the_field() {
        fn field<T: std::fmt::Debug>(r: Result<T, ConnectorError>) -> String {
            match r {
                Err(ConnectorError::InvalidInput { field, .. }) => field,
                other => panic!("expected InvalidInput, got {other:?}"),
            }
        }
        assert_eq!(field(user_input(&json!({}))), "user");
        assert_eq!(field(user_input(&json!({"user": ""}))), "user");
        assert_eq!(field(user_input(&json!({"user": "a b@x.com"}))), "user");
        assert_eq!(field(user_input(&json!({"user": "all"}))), "user");
        assert_eq!(
            field(user_input(&json!({"user": "a@x.com", "usr": 1}))),
            "usr"
        );
        assert_eq!(
            user_input(&json!({"user": " a@x.com "})).unwrap(),
            "a@x.com"
        );
        assert_eq!(user_input(&json!({"user": 42})).unwrap(), "42");
        assert_eq!(
            field(user_input(&json!({"user": 114211980000000000001.0}))),
            "user"
        );
        let snap = |v: Value| snapshot_input(&v).map(|_| ());
        assert_eq!(field(snap(json!({"user": "a@x.com"}))), "since");
        assert_eq!(
            field(snap(json!({"user": "a@x.com", "since": "yesterday"}))),
            "since"
        );
        assert_eq!(
            field(snap(
                json!({"user": "a@x.com", "since": "2024-06-01T00:00:00Z", "until": "2024-13-01"})
            )),
            "until"
        );
        assert_eq!(
            field(snap(
                json!({"user": "a@x.com", "since": "2024-06-02T00:00:00Z", "until": "2024-06-01T00:00:00Z"})
            )),
            "until"
        );
        let ok = snapshot_input(&json!({"user": "a@x.com", "since": "2024-06-01T00:00:00+02:00"}))
            .unwrap();
        assert_eq!(ok.since, "2024-06-01T00:00:00+02:00");
        assert_eq!(ok.until, None);
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(
            encode_segment("j.smith+x@example.com"),
            "j.smith%2Bx@example.com"
        );
        assert_eq!(encode_segment("a/b?c#d"), "a%2Fb%3Fc%23d");
        assert_eq!(
            encode_segment("114000000000000000001"),
            "114000000000000000001"
        );
    }

    #[test]
    fn subject_must_look_like_an_email() {
        assert!(is_plausible_email("admin@example.com"));
        assert!(!is_plausible_email("admin"));
        assert!(!is_plausible_email("@example.com"));
        assert!(!is_plausible_email("a@localhost"));
    }
}
