//! A stateful imitation of the Google Workspace Admin SDK endpoints the `google` connector
//! calls, mounted by [`super::Sandbox::router`] under `/google`:
//!
//! - `POST /google/token`: the JWT bearer grant. The assertion must be RS256-signed by the
//!   sandbox service account's key ([`sandbox_service_account_key`]), with `iss` its
//!   `client_email`, `sub` an admin of the sandbox domain, an `aud` ending in `/token`, a
//!   lifetime of at most an hour and only known scopes; errors use Google's OAuth shape
//!   (`invalid_grant`, `unauthorized_client`, `unsupported_grant_type`).
//! - `GET|PUT /google/admin/directory/v1/users/{userKey}` (`users.get`, `users.update` with
//!   patch semantics for `suspended`), `POST …/users/{userKey}/signOut` (204; 411 without
//!   `Content-Length`, as Google's front end answers).
//! - `GET /google/admin/reports/v1/activity/users/{userKey}/applications/login`:
//!   newest first, `startTime`/`endTime` filters, `maxResults` (1–1000) and
//!   `pageToken`/`nextPageToken` paging.
//!
//! Every API call needs `Authorization: Bearer` with a token this sandbox issued whose scopes
//! cover the call (401 `authError` / 403 `insufficientPermissions` otherwise), and answers
//! errors in Google's standard shape. [`GoogleSandbox::throttle_next`] makes the next calls
//! answer 403 `userRateLimitExceeded`, Google's throttling signal.
//!
//! Seeded with `admin@example.com` (the admin to act as), `j.smith@example.com` (the suspect,
//! active, with a trail of logins from unusual addresses) and `dana@example.com`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePrivateKey;
use rsa::sha2::Sha256;
use rsa::signature::Verifier;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};

use super::addresses;
use crate::google::{SCOPE_REPORTS, SCOPE_USER, SCOPE_USER_SECURITY};

/// The sandbox service account's email (the assertion's `iss`).
pub const SANDBOX_CLIENT_EMAIL: &str = "cordon-sandbox@cordon-sandbox.iam.gserviceaccount.com";
/// The sandbox key's id (the assertion header's `kid`).
pub const SANDBOX_KEY_ID: &str = "cordon-sandbox-key-1";
/// The sandbox domain's admin, for the connector's `subject` setting.
pub const SANDBOX_SUBJECT: &str = "admin@example.com";
/// The customer id the sandbox reports.
const CUSTOMER_ID: &str = "C03sandbox";

/// SANDBOX-ONLY, PUBLIC TEST KEY. This RSA key was generated for Cordon's local sandbox and
/// tests and is published in the source: it identifies no Google service account and must
/// never be trusted by anything but the sandbox.
pub const SANDBOX_PRIVATE_KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC+heSl8zq62Iz3\n\
R3fgGe/DVLBD7GFtMSoFAHfLW6z7OyeJU4EZ8l2Mw25dw3QCYkhWLCxWp1Q0i1r1\n\
t+7kcOs/Zs44N/H6kXQPZo+7SWOLmOPElhGhXVQNomB5qaMYrP5gB3AoStpGMEtq\n\
t/ShtWiYgs3SIb0LAqOMidxr68/hVRx5kZKFygRjz5/fXoqU4shzff3jGURMukXw\n\
St5cBuwGp02/vW79U9bThCd48amJ6ukyK4DCQDhas1Z8Hi/KA7tqtkFK3CHDYO7W\n\
WCwQq9envUB0HwolLXbqVLDUiLeN6U4SgkKd8QVHWaNzZvZFKtxQqWr16CxY1619\n\
meHirwhvAgMBAAECggEAEnPOqgadVjde/8bGOh2I9owfPj+IosCzkc8dIG79Q/Uo\n\
u8jV+iNaeCWoF3YJ/akd2cARffBa3B6bGAKmeoLikJNuaaIm0jPVinWjz2nTiv5V\n\
y6u/2Axn9aIXt0Yna7O64ftrxhs/JLPMuhtIRYPXtjME/X29shv2px07DKDG03X1\n\
/nd0n8gSIhYw3R2Y/oxWfE8qfV2EDgX1BT0Ja3CcptFY7yuK7i2ttbIY4EFsFPqx\n\
aMFQl1gIt5DvaYU9mrbXF/6OmvLD7fewBOWU+bVoCcDTqJtqDcRYLmNxqorYzrc7\n\
mlEMjfyoaQz1H3hLtFMjGK4BdkJ5G9TEB1IlI5sH0QKBgQDmLnS09P95Z2vaOGEH\n\
JwLUz8vZkKs3FjO37l80CShE9uV+fFWbo+rnS/a71bQyBeWySZcJrGhdsYzDXK7N\n\
MdZS7w8T0OJ8hQduRWKEnMxiiNZl4jcovzEeoi3B+tM6Kieb+Nni2Q7O5Ao6f9B3\n\
U0DlXf5HpweNreZ3PU06WsvsywKBgQDT5KpAhF4pPe3wDj+LtG3FT/Q6IjFVzVbr\n\
xXKCNu6RCVS1WW83OOeb9cz8w7VtXN3/B+AL7+7QYPh56RF5V+yWzd0QUrC+aHHW\n\
GZ7B6X3/vClKa3CNU3Gh0VKR5j6ywMKmnEDEQuKnTVdjgL7+2kyc6FpVf0c/5wPS\n\
81bTjnDibQKBgQCGvzlI2YdYradgdtKuGjM5G2/tLBhexht+mAeZcabmQFZ2ZhjD\n\
ZQDVaA3HRcIX6oXdieDmI8xw1MhfcTlPG9aodBOyePytAj8oWWvjz9qB8DL6L6Q0\n\
sT/y++Ong8r1aMoJL3N1rbVSfgJS3pHN2KnL2+tITMpKMTwSH4u/Fnn8YwKBgAwB\n\
O4gWN8N8Z7ufAwimO0XfhsW4ZDUpQhBvilJITHHZJnxzybJGPhD+9xMm/2NnzIgD\n\
aTUj7dLOe6VkiAHo8lWE6k5fcPYIstJfdzgjQ2k2vtwhhCntnVV+p3/unITCGQUZ\n\
ey3jYDX8UsQnairEMWz+WQfZAy9ipjvQX43y1wBtAoGARxwK47jG3YTCTy0V76aQ\n\
oWWS4UOnGbxKPDANI4IcB2D9gGcS2GpxZow383aOFD9Z2tOlgZGu9ZAOZah8cNOq\n\
95fcLCkEZUoTI9oHd1tK5g69yDc+uggG4x5ETM+QbnzRku1uPp9zoRYM05hsAE2O\n\
il1MZrpNpQdntioQcCBUbIk=\n\
-----END PRIVATE KEY-----\n\
";

/// A service account JSON key for the sandbox, in the shape Google Cloud hands out, whose
/// `token_uri` is `token_uri` (the connector's `token_url` setting wins over it anyway).
pub fn sandbox_service_account_key(token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "cordon-sandbox",
        "private_key_id": SANDBOX_KEY_ID,
        "private_key": SANDBOX_PRIVATE_KEY_PEM,
        "client_email": SANDBOX_CLIENT_EMAIL,
        "client_id": "100000000000000000042",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
    .to_string()
}

/// One imitated Workspace user.
#[derive(Debug, Clone)]
struct GUser {
    id: String,
    email: String,
    given: String,
    family: String,
    is_admin: bool,
    suspended: bool,
    last_login: String,
}

impl GUser {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "kind": "admin#directory#user",
            "id": self.id,
            "etag": format!("\"sandbox-{}-{}\"", self.id, u8::from(self.suspended)),
            "primaryEmail": self.email,
            "name": {
                "givenName": self.given,
                "familyName": self.family,
                "fullName": format!("{} {}", self.given, self.family),
            },
            "isAdmin": self.is_admin,
            "isDelegatedAdmin": false,
            "lastLoginTime": self.last_login,
            "creationTime": "2024-02-01T09:00:00.000Z",
            "agreedToTerms": true,
            "suspended": self.suspended,
            "archived": false,
            "changePasswordAtNextLogin": false,
            "ipWhitelisted": false,
            "customerId": CUSTOMER_ID,
            "orgUnitPath": "/",
            "isMailboxSetup": true,
            "includeInGlobalAddressList": true,
        });
        if self.suspended {
            v["suspensionReason"] = json!("ADMIN");
        }
        v
    }
}

#[derive(Debug, Default)]
struct World {
    users: Vec<GUser>,
    /// Issued access token → its scopes.
    tokens: HashMap<String, Vec<String>>,
    issued: u64,
    /// Login activities, any order (sorted when listed).
    activities: Vec<Value>,
    /// API calls still to answer with 403 `userRateLimitExceeded`.
    throttle: u32,
    /// Every request received, as `METHOD path`.
    calls: Vec<String>,
}

impl World {
    fn find(&self, key: &str) -> Option<usize> {
        self.users
            .iter()
            .position(|u| u.id == key || u.email.eq_ignore_ascii_case(key))
    }
}

/// The Google sandbox's state. Cheap to clone (shared).
#[derive(Clone)]
pub struct GoogleSandbox {
    world: Arc<Mutex<World>>,
    verifier: Option<VerifyingKey<Sha256>>,
}

impl GoogleSandbox {
    /// The seeded domain: an admin, the suspect and an analyst, with login activity
    /// spread over the last five days.
    pub fn seeded() -> GoogleSandbox {
        let verifier = RsaPrivateKey::from_pkcs8_pem(SANDBOX_PRIVATE_KEY_PEM)
            .ok()
            .map(|k| VerifyingKey::<Sha256>::new(k.to_public_key()));
        let now = Utc::now();
        let stamp = |hours_ago: i64| {
            (now - chrono::Duration::hours(hours_ago)).to_rfc3339_opts(SecondsFormat::Millis, true)
        };
        let mut world = World::default();
        for (id, email, given, family, is_admin) in [
            (
                "100000000000000000001",
                SANDBOX_SUBJECT,
                "Sandbox",
                "Admin",
                true,
            ),
            (
                "114211980000000000001",
                "j.smith@example.com",
                "John",
                "Smith",
                false,
            ),
            (
                "114211980000000000002",
                "dana@example.com",
                "Dana",
                "Analyst",
                false,
            ),
        ] {
            world.users.push(GUser {
                id: id.into(),
                email: email.into(),
                given: given.into(),
                family: family.into(),
                is_admin,
                suspended: false,
                last_login: stamp(1),
            });
        }
        // The suspect: 30 logins every 4 hours, mostly from addresses the company never
        // uses, a few failures; the analyst: 5 ordinary logins.
        let suspect_ips = [
            addresses::VPN_EXIT,
            addresses::FOREIGN,
            addresses::FOREIGN_V6,
        ];
        for i in 0..30u32 {
            let ip = if i % 5 == 4 {
                addresses::US_RESIDENTIAL
            } else {
                suspect_ips[(i % 3) as usize]
            };
            let name = if i % 7 == 3 {
                "login_failure"
            } else {
                "login_success"
            };
            world.activities.push(activity(
                &stamp(i64::from(i) * 4 + 1),
                i,
                "j.smith@example.com",
                "114211980000000000001",
                ip,
                name,
                ip != addresses::US_RESIDENTIAL,
            ));
        }
        for i in 0..5u32 {
            world.activities.push(activity(
                &stamp(i64::from(i) * 24 + 2),
                100 + i,
                "dana@example.com",
                "114211980000000000002",
                addresses::OFFICE,
                "login_success",
                false,
            ));
        }
        GoogleSandbox {
            world: Arc::new(Mutex::new(world)),
            verifier,
        }
    }

    /// Answer the next `n` API calls (not token requests) with 403
    /// `userRateLimitExceeded`.
    pub fn throttle_next(&self, n: u32) {
        if let Ok(mut w) = self.world.lock() {
            w.throttle = n;
        }
    }

    /// Every request received so far, as `METHOD path` (paths without `/google`).
    pub fn calls(&self) -> Vec<String> {
        self.world
            .lock()
            .map(|w| w.calls.clone())
            .unwrap_or_default()
    }

    /// Whether a user (email or id) is suspended; None for an unknown user.
    pub fn is_suspended(&self, user: &str) -> Option<bool> {
        let w = self.world.lock().ok()?;
        w.find(user).map(|i| w.users[i].suspended)
    }

    /// Add a login activity for a known user `n` times (tests of paging).
    pub fn add_login_events(&self, user: &str, n: u32) {
        let Ok(mut w) = self.world.lock() else { return };
        let Some(i) = w.find(user) else { return };
        let (email, id) = (w.users[i].email.clone(), w.users[i].id.clone());
        let now = Utc::now();
        let base = w.activities.len() as u32;
        for k in 0..n {
            let t = (now - chrono::Duration::minutes(i64::from(k) + 1))
                .to_rfc3339_opts(SecondsFormat::Millis, true);
            let a = activity(
                &t,
                base + k,
                &email,
                &id,
                "198.51.100.22",
                "login_success",
                false,
            );
            w.activities.push(a);
        }
    }

    fn record(&self, line: String) {
        if let Ok(mut w) = self.world.lock() {
            w.calls.push(line);
        }
    }
}

fn activity(
    time: &str,
    n: u32,
    email: &str,
    profile_id: &str,
    ip: &str,
    name: &str,
    suspicious: bool,
) -> Value {
    json!({
        "kind": "admin#reports#activity",
        "id": {
            "time": time,
            "uniqueQualifier": format!("-{}", 7_000_000_000_000_000_000u64 + u64::from(n)),
            "applicationName": "login",
            "customerId": CUSTOMER_ID,
        },
        "etag": format!("\"sandbox-activity-{n}\""),
        "actor": {"callerType": "USER", "email": email, "profileId": profile_id},
        "ipAddress": ip,
        "networkInfo": addresses::geo(ip).map(|g| json!({"regionCode": g.0})),
        "events": [{
            "type": "login",
            "name": name,
            "parameters": [
                {"name": "login_type", "value": "google_password"},
                {"name": "is_suspicious", "boolValue": suspicious},
            ],
        }],
    })
}

/// The sandbox's routes, to be nested under `/google`.
pub fn router(state: GoogleSandbox) -> Router {
    Router::new()
        .route("/token", post(token))
        .route(
            "/admin/directory/v1/users/{user_key}",
            get(get_user).put(update_user),
        )
        .route(
            "/admin/directory/v1/users/{user_key}/signOut",
            post(sign_out),
        )
        .route(
            "/admin/reports/v1/activity/users/{user_key}/applications/{app}",
            get(activities),
        )
        .with_state(state)
}

/// Google's standard error body.
fn google_error(status: StatusCode, reason: &str, message: &str) -> Response {
    let status_text = match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        411 => "LENGTH_REQUIRED",
        _ => "UNKNOWN",
    };
    let domain = if reason == "userRateLimitExceeded" {
        "usageLimits"
    } else {
        "global"
    };
    (
        status,
        Json(json!({"error": {
            "code": status.as_u16(),
            "message": message,
            "errors": [{"message": message, "domain": domain, "reason": reason}],
            "status": status_text,
        }})),
    )
        .into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn internal() -> Response {
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

async fn token(
    State(s): State<GoogleSandbox>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    s.record("POST /token".into());
    if form.get("grant_type").map(String::as_str) != Some(crate::google::JWT_BEARER_GRANT) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Invalid grant_type: ",
        );
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    let claims = match s.verify_assertion(assertion) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let Ok(mut w) = s.world.lock() else {
        return internal();
    };
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
    match w.find(sub) {
        Some(i) if w.users[i].is_admin && !w.users[i].suspended => {}
        Some(_) => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized_client",
                "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.",
            )
        }
        None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Invalid email or User ID"),
    }
    let scopes: Vec<String> = claims
        .get("scope")
        .and_then(Value::as_str)
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let known = [SCOPE_USER, SCOPE_USER_SECURITY, SCOPE_REPORTS];
    if scopes.is_empty() || scopes.iter().any(|s| !known.contains(&s.as_str())) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.",
        );
    }
    w.issued += 1;
    let token = format!(
        "ya29.sandbox-{}-{}",
        w.issued,
        Utc::now().timestamp_micros()
    );
    w.tokens.insert(token.clone(), scopes);
    Json(json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})).into_response()
}

impl GoogleSandbox {
    /// Check an assertion's form, signature and claims; the claims, or the OAuth error.
    fn verify_assertion(&self, assertion: &str) -> Result<Value, Box<Response>> {
        let bad = |d: &str| Box::new(oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", d));
        let parts: Vec<&str> = assertion.split('.').collect();
        let [h, c, sig] = parts.as_slice() else {
            return Err(bad(
                "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe",
            ));
        };
        let decode = |p: &str| -> Option<Value> {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()
        };
        let (Some(header), Some(claims)) = (decode(h), decode(c)) else {
            return Err(bad("Invalid JWT: not base64url JSON"));
        };
        if header.get("alg").and_then(Value::as_str) != Some("RS256") {
            return Err(bad("Invalid JWT: alg must be RS256"));
        }
        let Some(verifier) = &self.verifier else {
            return Err(bad("the sandbox key is unusable"));
        };
        let signature = URL_SAFE_NO_PAD
            .decode(sig)
            .ok()
            .and_then(|b| Signature::try_from(b.as_slice()).ok());
        let signed = format!("{h}.{c}");
        match signature {
            Some(sig) if verifier.verify(signed.as_bytes(), &sig).is_ok() => {}
            _ => return Err(bad("Invalid JWT Signature.")),
        }
        if claims.get("iss").and_then(Value::as_str) != Some(SANDBOX_CLIENT_EMAIL) {
            return Err(bad("Invalid JWT: unknown issuer"));
        }
        if !claims
            .get("aud")
            .and_then(Value::as_str)
            .is_some_and(|a| a.ends_with("/token"))
        {
            return Err(bad("Invalid JWT: audience is not the token endpoint"));
        }
        let now = Utc::now().timestamp();
        let iat = claims.get("iat").and_then(Value::as_i64).unwrap_or(0);
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        if exp <= now || exp - iat > 3600 || iat > now + 300 {
            return Err(bad("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim."));
        }
        Ok(claims)
    }

    /// Why the call is refused, if it is: the caller's token must be one we issued, with
    /// one of `scopes`; throttling comes next.
    fn refusal(&self, headers: &HeaderMap, scopes: &[&str]) -> Option<Response> {
        let Ok(mut w) = self.world.lock() else {
            return Some(internal());
        };
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(granted) = token.and_then(|t| w.tokens.get(t)) else {
            return Some(google_error(
                StatusCode::UNAUTHORIZED,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            ));
        };
        if !granted.iter().any(|g| scopes.contains(&g.as_str())) {
            return Some(google_error(
                StatusCode::FORBIDDEN,
                "insufficientPermissions",
                "Request had insufficient authentication scopes.",
            ));
        }
        if w.throttle > 0 {
            w.throttle -= 1;
            return Some(google_error(
                StatusCode::FORBIDDEN,
                "userRateLimitExceeded",
                "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute per user' of service 'admin.googleapis.com'.",
            ));
        }
        None
    }
}

fn user_not_found() -> Response {
    google_error(
        StatusCode::NOT_FOUND,
        "notFound",
        "Resource Not Found: userKey",
    )
}

async fn get_user(
    State(s): State<GoogleSandbox>,
    Path(user_key): Path<String>,
    headers: HeaderMap,
) -> Response {
    s.record(format!("GET /admin/directory/v1/users/{user_key}"));
    if let Some(r) = s.refusal(&headers, &[SCOPE_USER]) {
        return r;
    }
    let Ok(w) = s.world.lock() else {
        return internal();
    };
    match w.find(&user_key) {
        Some(i) => Json(w.users[i].to_json()).into_response(),
        None => user_not_found(),
    }
}

async fn update_user(
    State(s): State<GoogleSandbox>,
    Path(user_key): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    s.record(format!("PUT /admin/directory/v1/users/{user_key}"));
    if let Some(r) = s.refusal(&headers, &[SCOPE_USER]) {
        return r;
    }
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return google_error(StatusCode::BAD_REQUEST, "parseError", "Parse Error");
    };
    let suspended = match patch.get("suspended") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return google_error(
                StatusCode::BAD_REQUEST,
                "invalid",
                "Invalid value for: suspended",
            )
        }
    };
    let Ok(mut w) = s.world.lock() else {
        return internal();
    };
    let Some(i) = w.find(&user_key) else {
        return user_not_found();
    };
    // users.update has patch semantics: fields not sent keep their values.
    if let Some(b) = suspended {
        w.users[i].suspended = b;
    }
    Json(w.users[i].to_json()).into_response()
}

async fn sign_out(
    State(s): State<GoogleSandbox>,
    Path(user_key): Path<String>,
    headers: HeaderMap,
) -> Response {
    s.record(format!("POST /admin/directory/v1/users/{user_key}/signOut"));
    if !headers.contains_key("content-length") && !headers.contains_key("transfer-encoding") {
        return google_error(
            StatusCode::LENGTH_REQUIRED,
            "lengthRequired",
            "POST requests require a Content-length header.",
        );
    }
    if let Some(r) = s.refusal(&headers, &[SCOPE_USER_SECURITY]) {
        return r;
    }
    let Ok(w) = s.world.lock() else {
        return internal();
    };
    match w.find(&user_key) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => user_not_found(),
    }
}

async fn activities(
    State(s): State<GoogleSandbox>,
    Path((user_key, app)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    s.record(format!(
        "GET /admin/reports/v1/activity/users/{user_key}/applications/{app}"
    ));
    if let Some(r) = s.refusal(&headers, &[SCOPE_REPORTS]) {
        return r;
    }
    if app != "login" {
        // The sandbox keeps login activity only; other applications are empty.
        return Json(json!({"kind": "admin#reports#activities", "etag": "\"sandbox\""}))
            .into_response();
    }
    // The bad value, if any, is named in the error as Google does.
    let time = |name: &str| -> Result<Option<DateTime<Utc>>, String> {
        match q.get(name) {
            None => Ok(None),
            Some(v) => DateTime::parse_from_rfc3339(v)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|_| v.clone()),
        }
    };
    let (start, end) = match (time("startTime"), time("endTime")) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(v), _) | (_, Err(v)) => {
            return google_error(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("Invalid value '{v}'. Values must be RFC 3339 times"),
            )
        }
    };
    if let (Some(a), Some(b)) = (start, end) {
        if a > b {
            return google_error(
                StatusCode::BAD_REQUEST,
                "invalid",
                "Start time can not be greater than end time",
            );
        }
    }
    if start.is_some_and(|a| a > Utc::now()) {
        return google_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "Start time can not be in the future",
        );
    }
    let max: usize = match q.get("maxResults").map(|v| v.parse::<usize>()) {
        None => 1000,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => {
            return google_error(
                StatusCode::BAD_REQUEST,
                "invalid",
                "Invalid value for: maxResults",
            )
        }
    };
    let offset: usize = match q.get("pageToken") {
        None => 0,
        Some(t) => match t.strip_prefix("sandbox-page-").and_then(|n| n.parse().ok()) {
            Some(n) => n,
            None => {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "Invalid value for: pageToken",
                )
            }
        },
    };
    let Ok(w) = s.world.lock() else {
        return internal();
    };
    let Some(i) = w.find(&user_key) else {
        return user_not_found();
    };
    let (email, id) = (&w.users[i].email, &w.users[i].id);
    let at = |a: &Value| {
        a.pointer("/id/time")
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let mut matching: Vec<(DateTime<Utc>, &Value)> = w
        .activities
        .iter()
        .filter(|a| {
            a.pointer("/actor/email").and_then(Value::as_str) == Some(email.as_str())
                || a.pointer("/actor/profileId").and_then(Value::as_str) == Some(id.as_str())
        })
        .filter_map(|a| at(a).map(|t| (t, a)))
        .filter(|(t, _)| start.is_none_or(|s| *t >= s) && end.is_none_or(|e| *t <= e))
        .collect();
    // Newest first, as the Reports API lists.
    matching.sort_by_key(|m| std::cmp::Reverse(m.0));
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(max)
        .map(|(_, a)| (*a).clone())
        .collect();
    let mut body = json!({"kind": "admin#reports#activities", "etag": "\"sandbox\""});
    if !page.is_empty() {
        body["items"] = Value::Array(page);
    }
    if offset + max < matching.len() {
        body["nextPageToken"] = json!(format!("sandbox-page-{}", offset + max));
    }
    Json(body).into_response()
}
