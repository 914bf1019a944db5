//! Secrets: where they come from, how they are held, and how they are kept out of output.
//!
//! - [`SecretRef`]: how configuration points at a secret, `{env: NAME}` or `{file: PATH}`.
//!   Inline values are refused so that secrets never sit in a file that gets committed.
//! - [`SecretValue`]: a resolved secret; `Debug` and `Display` print `[REDACTED]`, and the
//!   value is only reachable through [`SecretValue::expose`], which is easy to grep for.
//! - [`Redactor`]: remembers every resolved secret and scrubs it (and its URL- and
//!   JSON-escaped forms) from strings and JSON trees before they are stored, logged or shown.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use secrecy::{ExposeSecret, SecretString};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// What a redacted secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// A reference to a secret in configuration: `{env: NAME}` or `{file: PATH}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable of the engine's process.
    Env(String),
    /// A file; a relative path is relative to the configuration file's folder.
    File(PathBuf),
}

/// Why a secret could not be read. Names the variable or file, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable `{0}` is not set")]
    EnvMissing(String),
    #[error("environment variable `{0}` is not valid UTF-8")]
    EnvNotUnicode(String),
    #[error("environment variable `{0}` is empty")]
    EnvEmpty(String),
    #[error("cannot read secret file `{path}`: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret file `{0}` is not valid UTF-8")]
    FileNotUnicode(PathBuf),
    #[error("secret file `{0}` is empty")]
    FileEmpty(PathBuf),
}

impl SecretRef {
    /// Read the secret and register it with `redactor`.
    ///
    /// File contents lose one trailing newline (`\n` or `\r\n`), which editors and
    /// `echo` add; anything else is kept, since some secrets legitimately end in spaces.
    pub fn resolve(
        &self,
        base_dir: &Path,
        redactor: &Redactor,
    ) -> Result<SecretValue, SecretError> {
        let value = match self {
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(v) if v.is_empty() => return Err(SecretError::EnvEmpty(name.clone())),
                Ok(v) => v,
                Err(std::env::VarError::NotPresent) => {
                    return Err(SecretError::EnvMissing(name.clone()))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(SecretError::EnvNotUnicode(name.clone()))
                }
            },
            SecretRef::File(path) => {
                let full = if path.is_absolute() {
                    path.clone()
                } else {
                    base_dir.join(path)
                };
                let bytes = std::fs::read(&full).map_err(|source| SecretError::File {
                    path: full.clone(),
                    source,
                })?;
                let mut text = String::from_utf8(bytes)
                    .map_err(|_| SecretError::FileNotUnicode(full.clone()))?;
                if text.ends_with("\r\n") {
                    text.truncate(text.len() - 2);
                } else if text.ends_with('\n') {
                    text.truncate(text.len() - 1);
                }
                if text.is_empty() {
                    return Err(SecretError::FileEmpty(full));
                }
                text
            }
        };
        Ok(redactor.secret(value))
    }

    /// Where the secret comes from, for messages: `env OKTA_TOKEN` or `file ./token`.
    pub fn describe(&self) -> String {
        match self {
            SecretRef::Env(name) => format!("env {name}"),
            SecretRef::File(path) => format!("file {}", path.display()),
        }
    }
}

const SECRET_REF_HINT: &str =
    "a secret must be written as `{env: NAME}` or `{file: PATH}`, never inline";

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RefVisitor;

        impl<'de> Visitor<'de> for RefVisitor {
            type Value = SecretRef;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`{env: NAME}` or `{file: PATH}`")
            }

            // Inline values are refused without echoing them: they are likely secrets.
            fn visit_str<E: de::Error>(self, _v: &str) -> Result<SecretRef, E> {
                Err(E::custom(format!(
                    "inline secret refused: {SECRET_REF_HINT}"
                )))
            }

            fn visit_i64<E: de::Error>(self, _v: i64) -> Result<SecretRef, E> {
                Err(E::custom(format!(
                    "inline secret refused: {SECRET_REF_HINT}"
                )))
            }

            fn visit_u64<E: de::Error>(self, _v: u64) -> Result<SecretRef, E> {
                Err(E::custom(format!(
                    "inline secret refused: {SECRET_REF_HINT}"
                )))
            }

            fn visit_f64<E: de::Error>(self, _v: f64) -> Result<SecretRef, E> {
                Err(E::custom(format!(
                    "inline secret refused: {SECRET_REF_HINT}"
                )))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretRef, A::Error> {
                let mut found: Option<SecretRef> = None;
                while let Some(key) = map.next_key::<String>()? {
                    if found.is_some() {
                        return Err(de::Error::custom(format!(
                            "a secret reference takes exactly one key: {SECRET_REF_HINT}"
                        )));
                    }
                    let value: String = map.next_value().map_err(|_| {
                        de::Error::custom(format!("`{key}` must be a string: {SECRET_REF_HINT}"))
                    })?;
                    if value.is_empty() {
                        return Err(de::Error::custom(format!(
                            "`{key}` must not be empty: {SECRET_REF_HINT}"
                        )));
                    }
                    found = Some(match key.as_str() {
                        "env" => SecretRef::Env(value),
                        "file" => SecretRef::File(PathBuf::from(value)),
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown key `{other}` in a secret reference: {SECRET_REF_HINT}"
                            )))
                        }
                    });
                }
                found.ok_or_else(|| {
                    de::Error::custom(format!("empty secret reference: {SECRET_REF_HINT}"))
                })
            }
        }

        deserializer.deserialize_any(RefVisitor)
    }
}

impl Serialize for SecretRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            SecretRef::Env(name) => map.serialize_entry("env", name)?,
            SecretRef::File(path) => map.serialize_entry("file", &path.to_string_lossy())?,
        }
        map.end()
    }
}

/// A resolved secret. Prints as `[REDACTED]`; read it with [`SecretValue::expose`].
#[derive(Clone)]
pub struct SecretValue(SecretString);

impl SecretValue {
    /// Wrap a value. Prefer [`Redactor::secret`], which also registers it for redaction.
    pub fn new(value: impl Into<String>) -> Self {
        SecretValue(SecretString::from(value.into()))
    }

    /// The secret itself: only for putting it on the wire.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Scrubs known secret values out of text and JSON. Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct Redactor {
    /// Every form to scrub, longest first so a value containing another is removed whole.
    needles: Arc<RwLock<Vec<String>>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("registered_forms", &self.read().len())
            .finish()
    }
}

impl Redactor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remember a secret value (and its URL- and JSON-escaped forms). Empty values are
    /// ignored: they would match everywhere.
    pub fn register(&self, value: &str) {
        if value.is_empty() {
            return;
        }
        let mut forms = vec![value.to_string()];
        // Query strings and form bodies: `application/x-www-form-urlencoded` writes a space
        // as `+`, percent-encoding as `%20`; both show up in logged URLs and bodies.
        let form: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        forms.push(form.replace('+', "%20"));
        forms.push(form);
        // Inside JSON text (response bodies), quotes, backslashes and controls are escaped.
        if let Ok(json) = serde_json::to_string(value) {
            if json.len() >= 2 {
                forms.push(json[1..json.len() - 1].to_string());
            }
        }
        let mut needles = match self.needles.write() {
            Ok(n) => n,
            Err(poisoned) => poisoned.into_inner(),
        };
        for f in forms {
            if !f.is_empty() && !needles.contains(&f) {
                needles.push(f);
            }
        }
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    /// Register `value` and wrap it: the usual way to hold a secret obtained at run time
    /// (an OAuth access token, say).
    pub fn secret(&self, value: impl Into<String>) -> SecretValue {
        let value = value.into();
        self.register(&value);
        SecretValue::new(value)
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<String>> {
        match self.needles.read() {
            Ok(n) => n,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// `s` with every occurrence of every registered form replaced by `[REDACTED]`.
    pub fn redact_str(&self, s: &str) -> String {
        let needles = self.read();
        if needles.is_empty() {
            return s.to_string();
        }
        redact_with(&needles, s)
    }

    /// A copy of `v` with every string (map keys included) redacted.
    pub fn redact_value(&self, v: &Value) -> Value {
        let needles = self.read();
        if needles.is_empty() {
            return v.clone();
        }
        redact_value_with(&needles, v)
    }
}

/// Find every match of every needle first and merge overlapping ranges, so replacing one
/// value can never expose part of another, and `[REDACTED]` itself is never re-matched.
fn redact_with(needles: &[String], s: &str) -> String {
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for n in needles {
        for (start, m) in s.match_indices(n.as_str()) {
            ranges.push(start..start + m.len());
        }
    }
    if ranges.is_empty() {
        return s.to_string();
    }
    ranges.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    let mut current: Option<Range<usize>> = None;
    for r in ranges {
        match current.as_mut() {
            Some(c) if r.start <= c.end => c.end = c.end.max(r.end),
            _ => {
                if let Some(c) = current.take() {
                    out.push_str(&s[pos..c.start]);
                    out.push_str(REDACTED);
                    pos = c.end;
                }
                current = Some(r);
            }
        }
    }
    if let Some(c) = current {
        out.push_str(&s[pos..c.start]);
        out.push_str(REDACTED);
        pos = c.end;
    }
    out.push_str(&s[pos..]);
    out
}

fn redact_value_with(needles: &[String], v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(redact_with(needles, s)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| redact_value_with(needles, i))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (redact_with(needles, k), redact_value_with(needles, v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_ref_forms() {
        let r: SecretRef = serde_json::from_value(json!({"env": "OKTA_TOKEN"})).unwrap();
        assert_eq!(r, SecretRef::Env("OKTA_TOKEN".into()));
        let r: SecretRef = serde_json::from_value(json!({"file": "secrets/t"})).unwrap();
        assert_eq!(r, SecretRef::File("secrets/t".into()));
    }

    #[test]
    fn inline_and_malformed_refs_are_refused_without_echo() {
        let e = serde_json::from_value::<SecretRef>(json!("hunter2-token")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("{env: NAME}") && msg.contains("{file: PATH}"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(serde_json::from_value::<SecretRef>(json!({"env": "A", "file": "b"})).is_err());
        assert!(serde_json::from_value::<SecretRef>(json!({"vault": "x"})).is_err());
        assert!(serde_json::from_value::<SecretRef>(json!({})).is_err());
        assert!(serde_json::from_value::<SecretRef>(json!({"env": ""})).is_err());
    }

    #[test]
    fn resolve_file_relative_and_trims_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "s3cr3t-value\n").unwrap();
        std::fs::write(dir.path().join("two"), "pin \r\n\r\n").unwrap();
        let redactor = Redactor::new();
        let v = SecretRef::File("tok".into())
            .resolve(dir.path(), &redactor)
            .unwrap();
        assert_eq!(v.expose(), "s3cr3t-value");
        assert_eq!(redactor.redact_str("x s3cr3t-value y"), "x [REDACTED] y");
        assert_eq!(format!("{v:?} {v}"), "[REDACTED] [REDACTED]");
        let abs = dir.path().join("two");
        let v = SecretRef::File(abs)
            .resolve(Path::new("/nonexistent"), &redactor)
            .unwrap();
        assert_eq!(v.expose(), "pin \r\n");
    }

    #[test]
    fn resolve_errors_name_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let redactor = Redactor::new();
        let e = SecretRef::File("missing".into())
            .resolve(dir.path(), &redactor)
            .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let e = SecretRef::Env("CORDON_TEST_SURELY_UNSET_VAR".into())
            .resolve(dir.path(), &redactor)
            .unwrap_err();
        assert!(
            e.to_string().contains("CORDON_TEST_SURELY_UNSET_VAR"),
            "{e}"
        );
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        assert!(matches!(
            SecretRef::File("empty".into()).resolve(dir.path(), &redactor),
            Err(SecretError::FileEmpty(_))
        ));
    }

    #[test]
    fn redacts_all_occurrences_and_encodings() {
        let r = Redactor::new();
        assert_eq!(r.redact_str("nothing registered"), "nothing registered");
        r.register("");
        assert!(r.is_empty());
        r.register("p@ss word/\"x\"");
        let s = "a=p@ss word/\"x\" b=p%40ss+word%2F%22x%22 c=p%40ss%20word%2F%22x%22 d={\"t\":\"p@ss word/\\\"x\\\"\"}";
        let out = r.redact_str(s);
        assert!(!out.contains("p@ss") && !out.contains("p%40ss"), "{out}");
        assert_eq!(out.matches(REDACTED).count(), 4, "{out}");
    }

    #[test]
    fn overlapping_values_and_marker_collisions() {
        let r = Redactor::new();
        r.register("abcdef");
        r.register("cdefgh");
        r.register("RED");
        assert_eq!(r.redact_str("xabcdefghy"), "x[REDACTED]y");
        assert_eq!(r.redact_str("RED"), "[REDACTED]");
    }

    #[test]
    fn redact_value_covers_keys_and_nesting() {
        let r = Redactor::new();
        r.register("tok123");
        let v = json!({"tok123": ["Bearer tok123", 5, {"k": "tok123"}], "n": null});
        let out = r.redact_value(&v);
        assert_eq!(
            out,
            json!({"[REDACTED]": ["Bearer [REDACTED]", 5, {"k": "[REDACTED]"}], "n": null})
        );
    }
}
