//! Review-UI sessions: a login with an API token makes an opaque random session id (the
//! cookie), mapped in memory to the token's identity, a CSRF token and an expiry.
//!
//! - The cookie holds 32 random bytes (base64url); the map is keyed by their SHA-256, so the
//!   lookup's timing says nothing useful about a guessed id. `HttpOnly; SameSite=Lax;
//!   Path=/ui` (Lax so that a link from chat or mail arrives logged in), `Secure` when
//!   `public_url` is `https://`.
//! - Each session has one CSRF token, put in every form and compared in constant time.
//!   The login form, which has no session yet, is protected the same way by a short-lived
//!   `cordon_login` cookie whose value the form repeats (double submit); a client that
//!   sends no value (a script) is refused when the browser's headers say another site
//!   sent it.
//! - Sessions live for [`SESSION_TTL`] from login and end at logout or when the process
//!   stops (they are not stored: a restart asks everyone to log in again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::header::COOKIE;
use axum::http::HeaderMap;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::server::auth::Identity;

/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// How long the login form's CSRF cookie lasts.
pub const LOGIN_TTL: Duration = Duration::from_secs(3600);

pub const SESSION_COOKIE: &str = "cordon_session";
pub const LOGIN_COOKIE: &str = "cordon_login";

/// A logged-in browser.
#[derive(Clone)]
pub struct Session {
    pub identity: Identity,
    pub csrf: String,
    pub expires: Instant,
}

impl Session {
    /// A session for one request authenticated by a bearer token (never stored, so its
    /// CSRF token admits nothing).
    pub fn transient(identity: Identity) -> Session {
        Session {
            identity,
            csrf: random_token(),
            expires: Instant::now(),
        }
    }

    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_ok(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| same_secret(p, &self.csrf))
    }
}

/// Every session of this process.
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    /// `Secure` on cookies (the UI is reached over https).
    pub secure: bool,
}

impl Sessions {
    pub fn new(secure: bool) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            secure,
        }
    }

    /// Start a session for `identity`; returns the cookie value.
    pub fn create(&self, identity: Identity) -> String {
        let id = random_token();
        let session = Session {
            identity,
            csrf: random_token(),
            expires: Instant::now() + SESSION_TTL,
        };
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.expires > now);
        map.insert(digest(&id), session);
        id
    }

    /// The live session named by the request's cookie.
    pub fn get(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let key = digest(&id);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// End the session named by the request's cookie, if any.
    pub fn remove(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.remove(&digest(&id));
        }
    }

    /// `Set-Cookie` for a new session.
    pub fn session_cookie(&self, value: &str) -> String {
        self.cookie_line(SESSION_COOKIE, value, "/ui", "Lax", SESSION_TTL.as_secs())
    }

    /// `Set-Cookie` that ends the session cookie.
    pub fn clear_session_cookie(&self) -> String {
        self.cookie_line(SESSION_COOKIE, "", "/ui", "Lax", 0)
    }

    /// `Set-Cookie` for the login form's CSRF value.
    pub fn login_cookie(&self, value: &str) -> String {
        self.cookie_line(
            LOGIN_COOKIE,
            value,
            "/ui/login",
            "Strict",
            LOGIN_TTL.as_secs(),
        )
    }

    fn cookie_line(
        &self,
        name: &str,
        value: &str,
        path: &str,
        same_site: &str,
        max_age: u64,
    ) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite={same_site}{secure}")
    }
}

/// 32 random bytes from the operating system, base64url without padding.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Constant-time equality of two secrets (their digests, so lengths do not leak either).
pub fn same_secret(a: &str, b: &str) -> bool {
    !b.is_empty() && bool::from(digest(a).ct_eq(&digest(b)))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `next` after login: only a path of this UI (`/ui/…`), never another site. Anything else
/// (an absolute URL, `//host`, a backslash, control characters) gives `/ui/`.
pub fn safe_next(next: Option<&str>) -> String {
    const HOME: &str = "/ui/";
    let Some(n) = next else {
        return HOME.into();
    };
    let ok = (n == "/ui" || n.starts_with("/ui/"))
        && !n.contains("//")
        && !n.contains('\\')
        && !n.chars().any(|c| c.is_control() || c.is_whitespace())
        && !n
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .split('/')
            .any(|seg| seg == "..");
    if ok {
        n.to_string()
    } else {
        HOME.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn next_stays_on_this_ui() {
        for good in [
            "/ui/",
            "/ui/runs/01J/steps/approve-x",
            "/ui/?status=waiting&runbook=a",
        ] {
            assert_eq!(safe_next(Some(good)), good);
        }
        for bad in [
            "https://evil.example/",
            "//evil.example/ui/",
            "/\\evil.example",
            "/ui//evil.example",
            "/ui\\..\\x",
            "/ui/../api/v1/runs",
            "javascript:alert(1)",
            "/uix",
            "/ui/\nSet-Cookie: x",
            "",
            "ui/",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/ui/");
    }

    #[test]
    fn cookies_are_read_from_every_cookie_header() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; cordon_session=abc"));
        h.append(COOKIE, HeaderValue::from_static("cordon_login=xyz"));
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, LOGIN_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn sessions_are_found_by_cookie_and_end_at_logout() {
        let s = Sessions::new(true);
        let who = Identity {
            name: "dana".into(),
            role: crate::config::Role::Approver,
            groups: vec!["legal".into()],
        };
        let id = s.create(who);
        let line = s.session_cookie(&id);
        assert!(
            line.contains("HttpOnly")
                && line.contains("SameSite=Lax")
                && line.contains("Path=/ui")
                && line.ends_with("; Secure"),
            "{line}"
        );
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("{SESSION_COOKIE}={id}")).unwrap(),
        );
        let got = s.get(&h).expect("session");
        assert_eq!(got.identity.name, "dana");
        assert!(got.csrf_ok(Some(&got.csrf.clone())));
        assert!(!got.csrf_ok(Some("nope")));
        assert!(!got.csrf_ok(None));
        s.remove(&h);
        assert!(s.get(&h).is_none());
        assert!(!same_secret("", ""));
    }
}
