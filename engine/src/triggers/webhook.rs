//! Webhooks: `POST /hooks/{name}` starts the hook's runbook with inputs mapped from the JSON
//! body.
//!
//! Raw (`webhooks:` in the configuration, unknown keys refused) → [`Webhook`] (secrets read,
//! `whsec_` keys decoded, templates parsed) once at start; then, per delivery:
//! [`Webhook::verify`] (signature and timestamp, constant-time compares),
//! [`Webhook::map_inputs`] and [`Webhook::dedup_key`] (templates over `payload`).
//!
//! Schemes:
//! - `standard` ([Standard Webhooks](https://www.standardwebhooks.com/)): headers
//!   `webhook-id`, `webhook-timestamp` (Unix seconds, at most 5 minutes off) and
//!   `webhook-signature`, a space-separated list of `v1,<base64 HMAC-SHA256 of
//!   "{id}.{timestamp}.{body}">`. A secret written `whsec_<base64>` is base64-decoded; any
//!   other secret is used as its bytes.
//! - `github`: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
//! - `token`: `Authorization: Bearer <secret>`.
//!
//! `secret` may be a list: during a rotation every listed secret is accepted (and a
//! Standard Webhooks sender may sign with several at once).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use axum::http::HeaderMap;
use base64::Engine as _;
use cordon_connectors::secret::{Redactor, SecretRef};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::expr::{ExprError, Templates};

/// Largest accepted body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How far `webhook-timestamp` may be from this server's clock, either way.
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;
/// How long delivery ids and dedup keys are remembered.
pub const REMEMBER_DAYS: i64 = 30;

type HmacSha256 = Hmac<Sha256>;

/// How a sender proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Standard Webhooks signatures.
    #[default]
    Standard,
    /// GitHub's `X-Hub-Signature-256`.
    Github,
    /// `Authorization: Bearer <secret>`.
    Token,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Standard => "standard",
            Scheme::Github => "github",
            Scheme::Token => "token",
        }
    }
}

/// A token bucket per hook: `per_second` deliveries on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: u32,
    /// Default: `per_second`.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// One entry of `webhooks:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HookFile {
    /// The runbook's `name`, looked up in the runbooks folder.
    runbook: String,
    /// A secret reference, or a list of them (rotation).
    secret: Value,
    #[serde(default)]
    scheme: Scheme,
    /// Input name → template over `payload`. Without it, the payload's keys are the inputs.
    #[serde(default)]
    inputs: Option<Map<String, Value>>,
    /// Template over `payload`; a repeat with the same value is answered with the first run.
    #[serde(default)]
    dedup_key: Option<String>,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
    /// Answer Okta's one-time `GET` verification challenge (scheme `token` only).
    #[serde(default)]
    okta_verification: bool,
}

/// A configured webhook, ready to verify deliveries.
pub struct Webhook {
    pub name: String,
    pub runbook: String,
    pub scheme: Scheme,
    /// HMAC keys (`standard`, `github`) or SHA-256 digests of bearer tokens (`token`).
    keys: Vec<Vec<u8>>,
    pub inputs: Option<Map<String, Value>>,
    pub dedup_key: Option<String>,
    pub rate_limit: Option<RateLimit>,
    pub okta_verification: bool,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("runbook", &self.runbook)
            .field("scheme", &self.scheme)
            .field("secrets", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Why a delivery was refused before its body was looked at (all answered 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    #[error("header `{0}` is malformed")]
    Malformed(&'static str),
    #[error("`webhook-timestamp` is more than 5 minutes away from this server's clock")]
    StaleTimestamp,
    #[error("no signature matches")]
    BadSignature,
    #[error("the bearer token does not match")]
    BadToken,
}

impl Rejected {
    /// The `reason` label of the rejection metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::MissingHeader(_) => "missing_signature",
            Rejected::Malformed(_) => "malformed_signature",
            Rejected::StaleTimestamp => "stale_timestamp",
            Rejected::BadSignature | Rejected::BadToken => "bad_signature",
        }
    }
}

/// Why a verified payload cannot start the runbook (answered 400 or 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("the payload has no `{field}`, which {needed_by} needs")]
    Missing { field: String, needed_by: String },
    #[error("{needed_by}: {message}")]
    Template { needed_by: String, message: String },
    #[error(
        "the payload must be a JSON object whose keys are input names (this hook maps no `inputs`)"
    )]
    NotAnObject,
}

impl Webhook {
    /// Check a delivery's signature (or token) and timestamp. Returns the sender's delivery
    /// id (`webhook-id`, or GitHub's `X-GitHub-Delivery`), which dedups repeats.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Option<String>, Rejected> {
        match self.scheme {
            Scheme::Standard => {
                let id = header(headers, "webhook-id")?;
                let ts_text = header(headers, "webhook-timestamp")?;
                let sigs = header(headers, "webhook-signature")?;
                let ts: i64 = ts_text
                    .trim()
                    .parse()
                    .map_err(|_| Rejected::Malformed("webhook-timestamp"))?;
                if (now_unix - ts).abs() > TIMESTAMP_TOLERANCE_SECS {
                    return Err(Rejected::StaleTimestamp);
                }
                let candidates: Vec<Vec<u8>> = sigs
                    .split_whitespace()
                    .filter_map(|s| s.split_once(','))
                    .filter(|(version, _)| *version == "v1")
                    .filter_map(|(_, sig)| {
                        base64::engine::general_purpose::STANDARD.decode(sig).ok()
                    })
                    .collect();
                if candidates.is_empty() {
                    return Err(Rejected::Malformed("webhook-signature"));
                }
                let matched = self.keys.iter().any(|key| {
                    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
                        return false;
                    };
                    mac.update(id.as_bytes());
                    mac.update(b".");
                    mac.update(ts_text.trim().as_bytes());
                    mac.update(b".");
                    mac.update(body);
                    // verify_slice compares in constant time.
                    candidates
                        .iter()
                        .any(|c| mac.clone().verify_slice(c).is_ok())
                });
                if matched {
                    Ok(Some(id.to_string()))
                } else {
                    Err(Rejected::BadSignature)
                }
            }
            Scheme::Github => {
                let sig = header(headers, "x-hub-signature-256")?;
                let given = sig
                    .trim()
                    .strip_prefix("sha256=")
                    .and_then(|h| hex::decode(h).ok())
                    .ok_or(Rejected::Malformed("x-hub-signature-256"))?;
                let matched = self.keys.iter().any(|key| {
                    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
                        return false;
                    };
                    mac.update(body);
                    mac.verify_slice(&given).is_ok()
                });
                if !matched {
                    return Err(Rejected::BadSignature);
                }
                Ok(headers
                    .get("x-github-delivery")
                    .or_else(|| headers.get("webhook-id"))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string))
            }
            Scheme::Token => {
                self.verify_token(headers)?;
                Ok(headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string))
            }
        }
    }

    /// `Authorization: Bearer <secret>` against every configured secret, by SHA-256 digest
    /// and in constant time.
    pub fn verify_token(&self, headers: &HeaderMap) -> Result<(), Rejected> {
        let auth = header(headers, "authorization")?;
        let token = auth
            .strip_prefix("Bearer ")
            .or_else(|| auth.strip_prefix("bearer "))
            .ok_or(Rejected::Malformed("authorization"))?;
        let digest = Sha256::digest(token.trim().as_bytes());
        let mut matched = subtle::Choice::from(0);
        for key in &self.keys {
            matched |= key.as_slice().ct_eq(digest.as_slice());
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(Rejected::BadToken)
        }
    }

    /// The runbook's inputs from the payload: each configured input's template rendered
    /// over `{payload}` (a value that is exactly one `{{ path }}` keeps its JSON type), or
    /// the payload's own keys when the hook maps no inputs.
    pub fn map_inputs(
        &self,
        templates: &Templates,
        payload: &Value,
    ) -> Result<Map<String, Value>, MapError> {
        let Some(mapping) = &self.inputs else {
            return match payload {
                Value::Object(m) => Ok(m.clone()),
                _ => Err(MapError::NotAnObject),
            };
        };
        let ctx = serde_json::json!({ "payload": payload });
        let mut out = Map::new();
        for (input, template) in mapping {
            let v = templates
                .render_value(template, &ctx)
                .map_err(|e| map_error(e, format!("input `{input}`")))?;
            out.insert(input.clone(), v);
        }
        Ok(out)
    }

    /// The rendered `dedup_key`, if the hook has one.
    pub fn dedup_key(
        &self,
        templates: &Templates,
        payload: &Value,
    ) -> Result<Option<String>, MapError> {
        let Some(t) = &self.dedup_key else {
            return Ok(None);
        };
        let ctx = serde_json::json!({ "payload": payload });
        let v = templates
            .render_str(t, &ctx)
            .map_err(|e| map_error(e, "`dedup_key`".into()))?;
        Ok(Some(match v {
            Value::String(s) => s,
            other => other.to_string(),
        }))
    }
}

fn map_error(e: ExprError, needed_by: String) -> MapError {
    match e {
        ExprError::Undefined { variable } => MapError::Missing {
            field: variable
                .strip_prefix("payload.")
                .unwrap_or(&variable)
                .to_string(),
            needed_by,
        },
        other => MapError::Template {
            needed_by,
            message: other.to_string(),
        },
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, Rejected> {
    let v = headers.get(name).ok_or(Rejected::MissingHeader(name))?;
    let s = v.to_str().map_err(|_| Rejected::Malformed(name))?;
    if s.trim().is_empty() {
        return Err(Rejected::MissingHeader(name));
    }
    Ok(s)
}

/// The HMAC key a Standard Webhooks secret stands for.
pub fn standard_key(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| "a `whsec_` secret must be followed by base64".to_string()),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// Build every configured webhook, reading its secrets. Returns the hooks that built and
/// every problem of the others, each naming `webhooks.<name>` (the caller refuses to start
/// when there is any).
pub fn build_all(
    raw: &BTreeMap<String, Value>,
    base_dir: &Path,
    redactor: &Redactor,
) -> (Vec<Webhook>, Vec<String>) {
    let mut hooks = Vec::new();
    let mut problems = Vec::new();
    for (name, value) in raw {
        match build_one(name, value, base_dir, redactor) {
            Ok(h) => hooks.push(h),
            Err(mut p) => problems.append(&mut p),
        }
    }
    (hooks, problems)
}

fn build_one(
    name: &str,
    value: &Value,
    base_dir: &Path,
    redactor: &Redactor,
) -> Result<Webhook, Vec<String>> {
    let at = format!("webhooks.{name}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(vec![format!(
            "{at}: a webhook name may hold only letters, digits, `-` and `_` (it is a URL path segment)"
        )]);
    }
    let file: HookFile =
        serde_json::from_value(value.clone()).map_err(|e| vec![format!("{at}: {e}")])?;
    let mut problems = Vec::new();
    let refs: Vec<Value> = match &file.secret {
        Value::Array(list) if list.is_empty() => {
            problems.push(format!("{at}.secret: the list of secrets is empty"));
            Vec::new()
        }
        Value::Array(list) => list.clone(),
        one => vec![one.clone()],
    };
    let mut keys = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let where_ = if refs.len() > 1 {
            format!("{at}.secret[{i}]")
        } else {
            format!("{at}.secret")
        };
        let sref = match SecretRef::deserialize(r) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("{where_}: {e}"));
                continue;
            }
        };
        let value = match sref.resolve(base_dir, redactor) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{where_} ({}): {e}", sref.describe()));
                continue;
            }
        };
        let secret = value.expose();
        match file.scheme {
            Scheme::Standard => match standard_key(secret) {
                Ok(k) => keys.push(k),
                Err(e) => problems.push(format!("{where_}: {e}")),
            },
            Scheme::Github => keys.push(secret.as_bytes().to_vec()),
            Scheme::Token => keys.push(Sha256::digest(secret.as_bytes()).to_vec()),
        }
    }
    if file.okta_verification && file.scheme != Scheme::Token {
        problems.push(format!(
            "{at}.okta_verification: Okta event hooks authenticate with a header, so the hook's scheme must be `token`"
        ));
    }
    if let Some(rl) = &file.rate_limit {
        if rl.per_second == 0 || rl.burst == Some(0) {
            problems.push(format!(
                "{at}.rate_limit: `per_second` and `burst` must be at least 1"
            ));
        }
    }
    let mut check_template = |where_: String, t: &str| match crate::expr::template_refs(t) {
        Ok(refs) => {
            for r in refs {
                if r != "payload" && !r.starts_with("payload.") && !r.starts_with("payload[") {
                    problems.push(format!(
                            "{where_}: `{r}` is not available here; templates read only `payload` (the request's JSON body)"
                        ));
                }
            }
        }
        Err(e) => problems.push(format!("{where_}: {e}")),
    };
    if let Some(map) = &file.inputs {
        for (input, v) in map {
            let mut strings = Vec::new();
            collect_strings(v, &mut strings);
            for s in strings {
                check_template(format!("{at}.inputs.{input}"), s);
            }
        }
    }
    if let Some(t) = &file.dedup_key {
        check_template(format!("{at}.dedup_key"), t);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Webhook {
        name: name.to_string(),
        runbook: file.runbook,
        scheme: file.scheme,
        keys,
        inputs: file.inputs,
        dedup_key: file.dedup_key,
        rate_limit: file.rate_limit,
        okta_verification: file.okta_verification,
    })
}

fn collect_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The Standard Webhooks specification's published test vector.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn hook(scheme: Scheme, secrets: &[&str]) -> Webhook {
        let keys = secrets
            .iter()
            .map(|s| match scheme {
                Scheme::Standard => standard_key(s).unwrap(),
                Scheme::Github => s.as_bytes().to_vec(),
                Scheme::Token => Sha256::digest(s.as_bytes()).to_vec(),
            })
            .collect();
        Webhook {
            name: "siem".into(),
            runbook: "rb".into(),
            scheme,
            keys,
            inputs: None,
            dedup_key: None,
            rate_limit: None,
            okta_verification: false,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn spec_headers(sig: &str, ts: i64) -> HeaderMap {
        headers(&[
            ("webhook-id", SPEC_ID),
            ("webhook-timestamp", &ts.to_string()),
            ("webhook-signature", sig),
        ])
    }

    fn sign(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn the_specification_test_vector_verifies() {
        let h = hook(Scheme::Standard, &[SPEC_SECRET]);
        let key = standard_key(SPEC_SECRET).unwrap();
        assert_eq!(sign(&key, SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
        let id = h
            .verify(&spec_headers(SPEC_SIG, SPEC_TS), SPEC_BODY, SPEC_TS + 10)
            .unwrap();
        assert_eq!(id.as_deref(), Some(SPEC_ID));
    }

    #[test]
    fn a_changed_body_or_signature_is_refused() {
        let h = hook(Scheme::Standard, &[SPEC_SECRET]);
        let err = h
            .verify(
                &spec_headers(SPEC_SIG, SPEC_TS),
                br#"{"test": 2432232315}"#,
                SPEC_TS,
            )
            .unwrap_err();
        assert_eq!(err, Rejected::BadSignature);
        let bad = "v1,g1hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(
            h.verify(&spec_headers(bad, SPEC_TS), SPEC_BODY, SPEC_TS),
            Err(Rejected::BadSignature)
        );
        // A signature of another version is not accepted as v1.
        let v2 = SPEC_SIG.replacen("v1,", "v2,", 1);
        assert!(h
            .verify(&spec_headers(&v2, SPEC_TS), SPEC_BODY, SPEC_TS)
            .is_err());
    }

    #[test]
    fn timestamps_more_than_five_minutes_off_are_refused_either_way() {
        let h = hook(Scheme::Standard, &[SPEC_SECRET]);
        let hd = spec_headers(SPEC_SIG, SPEC_TS);
        assert!(h.verify(&hd, SPEC_BODY, SPEC_TS + 300).is_ok());
        assert!(h.verify(&hd, SPEC_BODY, SPEC_TS - 300).is_ok());
        assert_eq!(
            h.verify(&hd, SPEC_BODY, SPEC_TS + 301),
            Err(Rejected::StaleTimestamp)
        );
        assert_eq!(
            h.verify(&hd, SPEC_BODY, SPEC_TS - 301),
            Err(Rejected::StaleTimestamp)
        );
    }

    #[test]
    fn missing_headers_are_named() {
        let h = hook(Scheme::Standard, &[SPEC_SECRET]);
        let hd = headers(&[("webhook-id", SPEC_ID), ("webhook-timestamp", "1")]);
        assert_eq!(
            h.verify(&hd, SPEC_BODY, 1),
            Err(Rejected::MissingHeader("webhook-signature"))
        );
        let hd = spec_headers(SPEC_SIG, SPEC_TS);
        let mut no_ts = hd.clone();
        no_ts.insert("webhook-timestamp", "soon".parse().unwrap());
        assert_eq!(
            h.verify(&no_ts, SPEC_BODY, SPEC_TS),
            Err(Rejected::Malformed("webhook-timestamp"))
        );
    }

    #[test]
    fn rotation_accepts_any_listed_secret_and_any_listed_signature() {
        let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let new = "a-plain-new-secret";
        let h = hook(Scheme::Standard, &[old, new]);
        let body = br#"{"id":"a1"}"#;
        let ts = 1_700_000_000;
        let by_new = sign(new.as_bytes(), "m1", ts, body);
        let by_other = sign(b"not configured", "m1", ts, body);
        let hd = headers(&[
            ("webhook-id", "m1"),
            ("webhook-timestamp", &ts.to_string()),
            ("webhook-signature", &format!("{by_other} {by_new}")),
        ]);
        assert!(h.verify(&hd, body, ts).is_ok());
        // Only a signature by an unconfigured secret: refused.
        let hd = headers(&[
            ("webhook-id", "m1"),
            ("webhook-timestamp", &ts.to_string()),
            ("webhook-signature", &by_other),
        ]);
        assert_eq!(h.verify(&hd, body, ts), Err(Rejected::BadSignature));
    }

    #[test]
    fn github_signatures() {
        let h = hook(Scheme::Github, &["It's a Secret to Everybody"]);
        // GitHub's documented example.
        let body = b"Hello, World!";
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let hd = headers(&[("x-hub-signature-256", sig), ("x-github-delivery", "d-1")]);
        assert_eq!(h.verify(&hd, body, 0).unwrap().as_deref(), Some("d-1"));
        assert_eq!(
            h.verify(&hd, b"Hello, World?", 0),
            Err(Rejected::BadSignature)
        );
        let hd = headers(&[("x-hub-signature-256", "md5=00")]);
        assert_eq!(
            h.verify(&hd, body, 0),
            Err(Rejected::Malformed("x-hub-signature-256"))
        );
    }

    #[test]
    fn bearer_tokens() {
        let h = hook(Scheme::Token, &["t-old", "t-new"]);
        for t in ["t-old", "t-new"] {
            let hd = headers(&[("authorization", &format!("Bearer {t}"))]);
            assert!(h.verify(&hd, b"{}", 0).is_ok());
        }
        let hd = headers(&[("authorization", "Bearer t-other")]);
        assert_eq!(h.verify(&hd, b"{}", 0), Err(Rejected::BadToken));
        assert_eq!(
            h.verify(&HeaderMap::new(), b"{}", 0),
            Err(Rejected::MissingHeader("authorization"))
        );
    }

    #[test]
    fn inputs_keep_json_types_and_missing_fields_are_named() {
        let mut h = hook(Scheme::Token, &["x"]);
        h.inputs = Some(
            json!({"alert_id": "{{ payload.id }}", "subject_email": "{{ payload.user.email }}",
                   "confidence": "{{ payload.score }}", "label": "alert {{ payload.id }}"})
            .as_object()
            .unwrap()
            .clone(),
        );
        h.dedup_key = Some("{{ payload.id }}".into());
        let t = Templates::new();
        let p = json!({"id": 7, "user": {"email": "a@b.c"}, "score": 0.9});
        let m = h.map_inputs(&t, &p).unwrap();
        assert_eq!(m["alert_id"], json!(7));
        assert_eq!(m["confidence"], json!(0.9));
        assert_eq!(m["label"], json!("alert 7"));
        assert_eq!(h.dedup_key(&t, &p).unwrap().as_deref(), Some("7"));
        let err = h.map_inputs(&t, &json!({"id": 7, "score": 1})).unwrap_err();
        assert_eq!(
            err,
            MapError::Missing {
                field: "user.email".into(),
                needed_by: "input `subject_email`".into()
            }
        );
        assert!(err.to_string().contains("user.email"), "{err}");
    }

    #[test]
    fn configuration_problems_name_the_hook_and_field() {
        let raw: BTreeMap<String, Value> = serde_json::from_value(json!({
            "siem": {"runbook": "rb", "secret": "inline!", "scheme": "standard"},
            "okta": {"runbook": "rb", "secret": {"env": "CORDON_TEST_SURELY_UNSET_VAR"},
                     "scheme": "github", "okta_verification": true},
            "bad name": {"runbook": "rb", "secret": {"env": "X"}},
            "tpl": {"runbook": "rb", "secret": {"env": "PATH"}, "scheme": "token",
                    "inputs": {"a": "{{ inputs.x }}"}, "colour": 1},
        }))
        .unwrap();
        let (built, errs) = build_all(&raw, Path::new("."), &Redactor::default());
        assert!(built.is_empty());
        let all = errs.join("\n");
        assert!(
            all.contains("webhooks.siem.secret: inline secret refused"),
            "{all}"
        );
        assert!(all.contains("CORDON_TEST_SURELY_UNSET_VAR"), "{all}");
        assert!(all.contains("webhooks.okta.okta_verification"), "{all}");
        assert!(all.contains("webhooks.bad name"), "{all}");
        assert!(
            all.contains("webhooks.tpl") && all.contains("colour"),
            "{all}"
        );
    }
}
