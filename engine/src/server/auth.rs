//! API identities: bearer tokens from `api.tokens`, roles and groups.
//!
//! Token values are read once at start and kept only as SHA-256 digests; a presented token
//! is hashed and compared with every digest in constant time. Roles:
//!
//! | role | may |
//! | --- | --- |
//! | `viewer` | read runs, their audit trail, runbooks, connectors (not evidence contents) |
//! | `responder` | the above, start, cancel and undo runs, read evidence |
//! | `approver` | the above reads, decide approvals and tasks for its groups, read evidence |
//! | `admin` | everything, every group, secret outputs (`?reveal=true`) |

use std::path::Path;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use cordon_connectors::secret::{Redactor, SecretRef};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::config::{ApiToken, Role};
use crate::exec::decide::Decider;

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    pub groups: Vec<String>,
}

impl Identity {
    /// `api:<name>`: the actor of the audit events this caller causes.
    pub fn actor(&self) -> String {
        format!("api:{}", self.name)
    }

    pub fn may(&self, what: Permission) -> bool {
        use Role::*;
        match what {
            Permission::Read => true,
            Permission::ReadEvidence => matches!(self.role, Responder | Approver | Admin),
            Permission::Operate => matches!(self.role, Responder | Admin),
            Permission::Decide => matches!(self.role, Approver | Admin),
            Permission::Reveal => self.role == Admin,
        }
    }

    /// 403 unless the role allows `what`.
    pub fn require(&self, what: Permission) -> Result<(), ApiError> {
        if self.may(what) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "token `{}` (role {}) may not {}",
                self.name,
                role_name(self.role),
                what.describe()
            )))
        }
    }

    /// The decider for approvals and tasks: groups must match the step's approvers.
    pub fn decider(&self) -> Decider {
        Decider {
            name: self.name.clone(),
            via: "api".into(),
            groups: Some(self.groups.clone()),
            admin: self.role == Role::Admin,
        }
    }
}

pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Viewer => "viewer",
        Role::Responder => "responder",
        Role::Approver => "approver",
        Role::Admin => "admin",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    /// Evidence and draft contents (viewers see run metadata only).
    ReadEvidence,
    /// Start, cancel and undo runs.
    Operate,
    /// Decide approvals and tasks.
    Decide,
    /// See secret outputs.
    Reveal,
}

impl Permission {
    fn describe(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::ReadEvidence => "read evidence or drafts",
            Permission::Operate => "start, cancel or undo runs",
            Permission::Decide => "decide approvals or tasks",
            Permission::Reveal => "see secret outputs",
        }
    }
}

/// The configured tokens, by digest.
pub struct Tokens {
    entries: Vec<([u8; 32], Identity)>,
}

impl Tokens {
    /// Read every token's secret; every problem is reported, naming the token.
    pub fn from_config(
        tokens: &[ApiToken],
        base_dir: &Path,
        redactor: &Redactor,
    ) -> Result<Tokens, Vec<String>> {
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        for t in tokens {
            let at = format!("api.tokens.{}.token", t.name);
            let sref = match SecretRef::deserialize(&t.token) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(format!("{at}: {e}"));
                    continue;
                }
            };
            match sref.resolve(base_dir, redactor) {
                Ok(v) => {
                    let digest: [u8; 32] = Sha256::digest(v.expose().as_bytes()).into();
                    if entries
                        .iter()
                        .any(|(d, _): &([u8; 32], Identity)| d == &digest)
                    {
                        problems.push(format!("{at}: the same token value is given to two names"));
                        continue;
                    }
                    entries.push((
                        digest,
                        Identity {
                            name: t.name.clone(),
                            role: t.role,
                            groups: t.groups.clone(),
                        },
                    ));
                }
                Err(e) => problems.push(format!("{at} ({}): {e}", sref.describe())),
            }
        }
        if problems.is_empty() {
            Ok(Tokens { entries })
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The identity whose token this is. Every digest is compared, in constant time.
    pub fn authenticate(&self, presented: &str) -> Option<&Identity> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (d, who) in &self.entries {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(who);
            }
        }
        found
    }
}

/// Extractor: the caller's identity from `Authorization: Bearer <token>`, or 401.
pub struct Caller(pub Identity);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::Unauthorized("missing `Authorization: Bearer <token>`".into())
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("the Authorization header must be `Bearer <token>`".into())
            })?;
        state
            .tokens
            .authenticate(token)
            .cloned()
            .map(Caller)
            .ok_or_else(|| ApiError::Unauthorized("unknown token".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_table() {
        let id = |role| Identity {
            name: "x".into(),
            role,
            groups: vec![],
        };
        use Permission::*;
        let table = [
            (Role::Viewer, [true, false, false, false, false]),
            (Role::Responder, [true, true, true, false, false]),
            (Role::Approver, [true, true, false, true, false]),
            (Role::Admin, [true, true, true, true, true]),
        ];
        for (role, expect) in table {
            let got = [Read, ReadEvidence, Operate, Decide, Reveal].map(|p| id(role).may(p));
            assert_eq!(got, expect, "{role:?}");
        }
    }

    #[test]
    fn tokens_are_found_by_digest() {
        std::env::set_var("CORDON_AUTH_TEST_A", "token-a");
        std::env::set_var("CORDON_AUTH_TEST_B", "token-b");
        let cfg: Vec<ApiToken> = serde_json::from_value(serde_json::json!([
            {"name": "a", "token": {"env": "CORDON_AUTH_TEST_A"}, "role": "viewer"},
            {"name": "b", "token": {"env": "CORDON_AUTH_TEST_B"}, "role": "approver", "groups": ["legal"]},
        ]))
        .unwrap();
        let t = Tokens::from_config(&cfg, Path::new("."), &Redactor::default()).unwrap();
        assert_eq!(t.authenticate("token-b").unwrap().name, "b");
        assert_eq!(t.authenticate("token-a").unwrap().role, Role::Viewer);
        assert!(t.authenticate("token-c").is_none());
        assert!(t.authenticate("").is_none());
    }
}
