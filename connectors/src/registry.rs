//! Live connector instances, built from the `connectors:` section of the configuration.
//!
//! [`Registry::from_config`] checks every instance's settings and reports every problem at
//! once ([`ConfigError`] names the instance and the setting, with a hint); types usable
//! without settings (`core`, `http`, `notify`) get a default instance named after the type.
//! [`Registry::resolve`] answers "which instance runs `okta.suspend_user` here?".
//!
//! Adding a vendor type is one match arm in `build` plus a `from_settings` constructor
//! that reads its settings through [`Settings`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use url::Url;

use crate::catalog;
use crate::core::CoreConnector;
use crate::http::HttpConnector;
use crate::http_client::{check_url, parse_duration, MaybeSecret};
use crate::secret::{Redactor, SecretRef, SecretValue};
use crate::Connector;

/// One problem in a connector instance's configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The instance's name (its key under `connectors:`).
    pub instance: String,
    /// The setting at fault, when there is one.
    pub setting: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connector `{}`", self.instance)?;
        if let Some(s) = &self.setting {
            write!(f, ", setting `{s}`")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub fn new(instance: &str, setting: Option<&str>, message: impl Into<String>) -> Self {
        ConfigError {
            instance: instance.to_string(),
            setting: setting.map(str::to_string),
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Reads one instance's settings map, collecting every problem instead of stopping at the
/// first. Getters return `None` (and record an error) for bad values.
pub struct Settings<'a> {
    instance: &'a str,
    map: &'a Map<String, Value>,
    base_dir: &'a Path,
    redactor: &'a Redactor,
    errors: Vec<ConfigError>,
}

impl<'a> Settings<'a> {
    /// `known` lists the type's setting keys (`type` is always allowed); any other key is
    /// an error with a "did you mean" hint.
    pub fn new(
        instance: &'a str,
        map: &'a Map<String, Value>,
        known: &[&str],
        base_dir: &'a Path,
        redactor: &'a Redactor,
    ) -> Self {
        let mut errors = Vec::new();
        for key in map.keys() {
            if key == "type" || known.contains(&key.as_str()) {
                continue;
            }
            let hint = match closest(key, known.iter().copied()) {
                Some(c) => format!("did you mean `{c}`?"),
                None if known.is_empty() => "this connector type takes no settings".to_string(),
                None => format!("known settings: {}", known.join(", ")),
            };
            errors.push(ConfigError::new(instance, Some(key), "unknown setting").with_hint(hint));
        }
        Settings {
            instance,
            map,
            base_dir,
            redactor,
            errors,
        }
    }

    pub fn instance(&self) -> &str {
        self.instance
    }

    pub fn redactor(&self) -> &Redactor {
        self.redactor
    }

    /// Record a problem found by the connector's own checks.
    pub fn error(&mut self, setting: Option<&str>, message: impl Into<String>) {
        self.errors
            .push(ConfigError::new(self.instance, setting, message));
    }

    fn missing(&mut self, key: &str) {
        self.error(Some(key), "is required");
    }

    /// An optional string setting.
    pub fn string(&mut self, key: &str) -> Option<String> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.error(Some(key), "must be a string");
                None
            }
        }
    }

    /// An optional whole-number setting within `min..=max` (a port, say).
    pub fn integer(&mut self, key: &str, min: i64, max: i64) -> Option<i64> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) if (min..=max).contains(&i) => Some(i),
                _ => {
                    self.error(
                        Some(key),
                        format!("must be a whole number from {min} to {max}"),
                    );
                    None
                }
            },
            Some(_) => {
                self.error(Some(key), "must be a number");
                None
            }
        }
    }

    /// A required string setting.
    pub fn required_string(&mut self, key: &str) -> Option<String> {
        if !self.map.contains_key(key) {
            self.missing(key);
            return None;
        }
        self.string(key)
    }

    /// An optional URL, checked against the transport policy.
    pub fn url(&mut self, key: &str) -> Option<Url> {
        let raw = self.string(key)?;
        self.parse_url(key, &raw)
    }

    /// A URL with a default (national clouds and tests override it).
    pub fn url_or(&mut self, key: &str, default: &str) -> Option<Url> {
        let raw = self.string(key).unwrap_or_else(|| default.to_string());
        self.parse_url(key, &raw)
    }

    /// A required URL.
    pub fn required_url(&mut self, key: &str) -> Option<Url> {
        let raw = self.required_string(key)?;
        self.parse_url(key, &raw)
    }

    fn parse_url(&mut self, key: &str, raw: &str) -> Option<Url> {
        match Url::parse(raw) {
            Ok(u) => match check_url(self.instance, &u) {
                Ok(()) => Some(u),
                Err(e) => {
                    self.error(Some(key), e.reason);
                    None
                }
            },
            Err(e) => {
                self.error(Some(key), format!("not an absolute URL: {e}"));
                None
            }
        }
    }

    /// An optional duration (`30s`, `2m`).
    pub fn duration(&mut self, key: &str) -> Option<Duration> {
        let raw = self.string(key)?;
        match parse_duration(&raw) {
            Ok(d) if d.is_zero() => {
                self.error(Some(key), "must be longer than zero");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(Some(key), e);
                None
            }
        }
    }

    /// A secret (`{env: NAME}` or `{file: PATH}`), resolved now and registered for redaction.
    pub fn secret(&mut self, key: &str) -> Option<SecretValue> {
        let value = self.map.get(key)?;
        self.resolve_secret(key, value)
    }

    /// A required secret.
    pub fn required_secret(&mut self, key: &str) -> Option<SecretValue> {
        if !self.map.contains_key(key) {
            self.missing(key);
            return None;
        }
        self.secret(key)
    }

    fn resolve_secret(&mut self, key: &str, value: &Value) -> Option<SecretValue> {
        let r: SecretRef = match serde_json::from_value(value.clone()) {
            Ok(r) => r,
            Err(e) => {
                // A refused inline value is a secret typed into the file: never echo it.
                self.error(Some(key), e.to_string());
                return None;
            }
        };
        match r.resolve(self.base_dir, self.redactor) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(Some(key), e.to_string());
                None
            }
        }
    }

    /// A map of header names to plain strings or secrets.
    pub fn headers(&mut self, key: &str) -> Vec<(String, MaybeSecret)> {
        let Some(value) = self.map.get(key) else {
            return Vec::new();
        };
        let Some(obj) = value.as_object() else {
            self.error(Some(key), "must be a map of header names to values");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, v) in obj {
            let setting = format!("{key}.{name}");
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.error(Some(&setting), "not a valid HTTP header name");
                continue;
            }
            match v {
                Value::String(s) => out.push((name.clone(), MaybeSecret::Plain(s.clone()))),
                Value::Object(_) => {
                    if let Some(secret) = self.resolve_secret(&setting, v) {
                        out.push((name.clone(), MaybeSecret::Secret(secret)));
                    }
                }
                _ => self.error(
                    Some(&setting),
                    "must be a string or a secret `{env: NAME}` / `{file: PATH}`",
                ),
            }
        }
        out
    }

    /// Every problem recorded, or `Ok` when there were none.
    pub fn finish(self) -> Result<(), Vec<ConfigError>> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Why no instance could be chosen for an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown connector type `{0}`")]
    UnknownType(String),
    #[error("no instance of connector type `{ty}` is configured; add one under `connectors:` in the configuration file")]
    NotConfigured { ty: String },
    #[error("several instances of connector type `{ty}` are configured ({}); name one with `connector:`", instances.join(", "))]
    Ambiguous { ty: String, instances: Vec<String> },
    #[error(
        "no connector instance named `{instance}` is configured{}",
        list_suffix(configured)
    )]
    UnknownInstance {
        instance: String,
        /// The instances of the requested type.
        configured: Vec<String>,
    },
    #[error("connector instance `{instance}` is of type `{actual}`, not `{expected}`")]
    WrongType {
        instance: String,
        expected: String,
        actual: String,
    },
}

fn list_suffix(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(" (instances of this type: {})", names.join(", "))
    }
}

/// The configured connector instances, by name.
#[derive(Clone, Default)]
pub struct Registry {
    instances: BTreeMap<String, Arc<dyn Connector>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.instance_types()).finish()
    }
}

impl Registry {
    /// An empty registry (no default instances): for tests that insert their own.
    pub fn empty() -> Self {
        Registry::default()
    }

    /// Build every configured instance, then a default instance for each type that needs
    /// no settings and has none. `base_dir` is the configuration file's folder (relative
    /// secret files); resolved secrets are registered with `redactor`.
    pub fn from_config(
        instances: &BTreeMap<String, Value>,
        base_dir: &Path,
        redactor: &Redactor,
    ) -> Result<Registry, Vec<ConfigError>> {
        let mut registry = Registry::empty();
        let mut errors = Vec::new();
        for (name, value) in instances {
            if name.is_empty()
                || name
                    .chars()
                    .any(|c| c.is_whitespace() || c == '.' || c == '/')
            {
                errors.push(
                    ConfigError::new(name, None, "is not a usable instance name")
                        .with_hint("use letters, digits, `-` and `_`, e.g. `okta-prod`"),
                );
                continue;
            }
            let Some(map) = value.as_object() else {
                errors.push(ConfigError::new(
                    name,
                    None,
                    "must be a map of settings with a `type`",
                ));
                continue;
            };
            let ty = match map.get("type") {
                Some(Value::String(t)) => t.as_str(),
                Some(_) => {
                    errors.push(ConfigError::new(name, Some("type"), "must be a string"));
                    continue;
                }
                None => {
                    errors.push(
                        ConfigError::new(name, Some("type"), "is required")
                            .with_hint(format!("one of: {}", known_types())),
                    );
                    continue;
                }
            };
            match build(name, ty, map, base_dir, redactor) {
                Ok(c) => {
                    registry.instances.insert(name.clone(), c);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        for t in catalog::catalog() {
            if t.needs_instance || crate::roles::is_role_type(t.name) || registry.has_type(t.name) {
                continue;
            }
            if instances.contains_key(t.name) {
                // The name is taken by an instance of another type (or a broken one).
                if errors.iter().all(|e| e.instance != t.name) {
                    errors.push(
                        ConfigError::new(
                            t.name,
                            Some("type"),
                            format!(
                                "the name `{}` is reserved for the built-in `{}` connector",
                                t.name, t.name
                            ),
                        )
                        .with_hint("rename this instance"),
                    );
                }
                continue;
            }
            match build(t.name, t.name, &Map::new(), base_dir, redactor) {
                Ok(c) => {
                    registry.instances.insert(t.name.to_string(), c);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(registry)
        } else {
            Err(errors)
        }
    }

    /// Add (or replace) an instance, keyed by its [`Connector::instance`] name. For tests
    /// and embedders that bring their own connectors.
    pub fn insert(&mut self, connector: Arc<dyn Connector>) {
        self.instances
            .insert(connector.instance().to_string(), connector);
    }

    /// The instance that runs an action of type `ty`: the one named `instance` (which must
    /// be of that type), or else the only instance of the type.
    pub fn resolve(
        &self,
        ty: &str,
        instance: Option<&str>,
    ) -> Result<Arc<dyn Connector>, ResolveError> {
        if let Some(name) = instance {
            return match self.instances.get(name) {
                Some(c) if c.type_name() == ty => Ok(c.clone()),
                Some(c) => Err(ResolveError::WrongType {
                    instance: name.to_string(),
                    expected: ty.to_string(),
                    actual: c.type_name().to_string(),
                }),
                None => Err(ResolveError::UnknownInstance {
                    instance: name.to_string(),
                    configured: self.names_of(ty),
                }),
            };
        }
        let mut of_type = self.instances_of(ty);
        match of_type.len() {
            1 => Ok(of_type.remove(0)),
            0 if catalog::find_type(ty).is_none() => Err(ResolveError::UnknownType(ty.to_string())),
            0 => Err(ResolveError::NotConfigured { ty: ty.to_string() }),
            _ => Err(ResolveError::Ambiguous {
                ty: ty.to_string(),
                instances: self.names_of(ty),
            }),
        }
    }

    /// A role action (`identity.suspend_user`) bound to every configured instance that
    /// serves it, or to the named ones (`connector:` in the step).
    pub fn role(
        &self,
        uses: &str,
        only: Option<&[String]>,
    ) -> Result<Arc<dyn Connector>, ResolveError> {
        let role = crate::roles::find_role(uses)
            .ok_or_else(|| ResolveError::UnknownType(uses.to_string()))?;
        let mut chosen = Vec::new();
        match only {
            Some(names) => {
                for n in names {
                    match self.instances.get(n) {
                        Some(c) if crate::roles::role_accepts(uses, c.type_name()) => {
                            chosen.push(c.clone())
                        }
                        Some(c) => {
                            return Err(ResolveError::WrongType {
                                instance: n.clone(),
                                expected: role
                                    .members
                                    .iter()
                                    .map(|(t, _)| *t)
                                    .collect::<Vec<_>>()
                                    .join(" or "),
                                actual: c.type_name().to_string(),
                            })
                        }
                        None => {
                            return Err(ResolveError::UnknownInstance {
                                instance: n.clone(),
                                configured: self.instances.keys().cloned().collect(),
                            })
                        }
                    }
                }
            }
            None => {
                for c in self.instances.values() {
                    if crate::roles::role_accepts(uses, c.type_name()) {
                        chosen.push(c.clone());
                    }
                }
            }
        }
        let rc = crate::roles::RoleConnector::new(uses, chosen)
            .ok_or_else(|| ResolveError::UnknownType(uses.to_string()))?;
        Ok(Arc::new(rc))
    }

    /// The instance with this name, whatever its type.
    pub fn get(&self, instance: &str) -> Option<Arc<dyn Connector>> {
        self.instances.get(instance).cloned()
    }

    /// Every instance of a type, in name order.
    pub fn instances_of(&self, ty: &str) -> Vec<Arc<dyn Connector>> {
        self.instances
            .values()
            .filter(|c| c.type_name() == ty)
            .cloned()
            .collect()
    }

    /// Instance name → type name.
    pub fn instance_types(&self) -> BTreeMap<String, String> {
        self.instances
            .iter()
            .map(|(n, c)| (n.clone(), c.type_name().to_string()))
            .collect()
    }

    /// True when at least one instance of `ty` exists (default instances included).
    pub fn has_type(&self, ty: &str) -> bool {
        self.instances.values().any(|c| c.type_name() == ty)
    }

    fn names_of(&self, ty: &str) -> Vec<String> {
        self.instances
            .iter()
            .filter(|(_, c)| c.type_name() == ty)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

fn known_types() -> String {
    catalog::catalog()
        .iter()
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One live instance from its settings. A new vendor type is one arm here.
fn build(
    name: &str,
    ty: &str,
    map: &Map<String, Value>,
    base_dir: &Path,
    redactor: &Redactor,
) -> Result<Arc<dyn Connector>, Vec<ConfigError>> {
    match ty {
        "core" => {
            Settings::new(name, map, &[], base_dir, redactor).finish()?;
            Ok(Arc::new(CoreConnector::new(name)))
        }
        "notify" => {
            Settings::new(name, map, &[], base_dir, redactor).finish()?;
            Ok(Arc::new(crate::notify::NotifyConnector::new(name)))
        }
        "http" => {
            let settings = Settings::new(name, map, HttpConnector::SETTINGS, base_dir, redactor);
            Ok(Arc::new(HttpConnector::from_settings(settings)?))
        }
        "scim" => crate::scim::build(name, map, base_dir, redactor),
        "entra" => crate::entra::build(name, map, base_dir, redactor),
        "okta" => crate::okta::OktaConnector::build(name, map, base_dir, redactor),
        "google" => crate::google::build(name, map, base_dir, redactor),
        "fleet" => crate::fleet::build(name, map, base_dir, redactor),
        "crowdstrike" => crate::crowdstrike::build(name, map, base_dir, redactor),
        "jamf" => crate::jamf::build(name, map, base_dir, redactor),
        "kandji" => crate::kandji::build(name, map, base_dir, redactor),
        "intune" => crate::intune::build(name, map, base_dir, redactor),
        "defender" => crate::defender::build(name, map, base_dir, redactor),
        "slack" => crate::slack::build(name, map, base_dir, redactor),
        "smtp" => crate::smtp::build(name, map, base_dir, redactor),
        "splunk" => crate::splunk::build(name, map, base_dir, redactor),
        "elasticsearch" => crate::elasticsearch::build(name, map, base_dir, redactor),
        other => {
            let hint = match closest(other, catalog::catalog().iter().map(|t| t.name)) {
                Some(c) => format!("did you mean `{c}`?"),
                None => format!("known types: {}", known_types()),
            };
            let message = if catalog::find_type(other).is_some() {
                format!("connector type `{other}` cannot be configured in this build")
            } else {
                format!("unknown connector type `{other}`")
            };
            Err(vec![
                ConfigError::new(name, Some("type"), message).with_hint(hint)
            ])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    fn build_reg(v: Value) -> Result<Registry, Vec<ConfigError>> {
        let dir = tempfile::tempdir().unwrap();
        Registry::from_config(&config(v), dir.path(), &Redactor::new())
    }

    #[test]
    fn defaults_exist_without_configuration() {
        let r = build_reg(json!({})).unwrap();
        assert_eq!(
            r.instance_types(),
            BTreeMap::from([
                ("core".into(), "core".into()),
                ("http".into(), "http".into()),
                ("notify".into(), "notify".into())
            ])
        );
        assert_eq!(r.resolve("http", None).unwrap().instance(), "http");
        assert_eq!(r.resolve("core", Some("core")).unwrap().type_name(), "core");
        assert!(r.has_type("http"));
        assert!(!r.has_type("okta"));
    }

    #[test]
    fn named_instances_replace_the_default_and_resolution_rules() {
        let r = build_reg(json!({
            "api-a": {"type": "http", "base_url": "https://a.example.com"},
            "api-b": {"type": "http", "base_url": "https://b.example.com", "timeout": "5s"},
        }))
        .unwrap();
        assert!(
            r.get("http").is_none(),
            "no default when http instances are configured"
        );
        assert_eq!(r.instances_of("http").len(), 2);
        let e = r.resolve("http", None).err().unwrap();
        assert_eq!(
            e,
            ResolveError::Ambiguous {
                ty: "http".into(),
                instances: vec!["api-a".into(), "api-b".into()]
            }
        );
        assert!(e.to_string().contains("api-a, api-b"));
        assert_eq!(
            r.resolve("http", Some("api-b")).unwrap().instance(),
            "api-b"
        );
        assert!(matches!(
            r.resolve("core", Some("api-a")),
            Err(ResolveError::WrongType { .. })
        ));
        let e = r.resolve("http", Some("nope")).err().unwrap().to_string();
        assert!(e.contains("nope") && e.contains("api-a"), "{e}");
        assert!(matches!(
            r.resolve("okta", None),
            Err(ResolveError::NotConfigured { .. })
        ));
        assert!(matches!(
            r.resolve("nosuchtype", None),
            Err(ResolveError::UnknownType(_))
        ));
    }

    #[test]
    fn all_problems_at_once_naming_instance_and_setting() {
        let errs = build_reg(json!({
            "x": {"type": "htp"},
            "y": {"type": "http", "base_ur": "https://a.example.com"},
            "z": {"type": "http", "base_url": "http://a.example.com", "timeout": "fast"},
            "w": {"base_url": "https://a.example.com"},
            "v": {"type": "http", "headers": {"X-Key": "inline-is-fine-for-plain", "Authorization": {"env": "CORDON_TEST_UNSET_XYZ"}}},
        }))
        .unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let all = text.join("\n");
        assert!(all.contains("connector `x`, setting `type`: unknown connector type `htp` (hint: did you mean `http`?)"), "{all}");
        assert!(all.contains("connector `y`, setting `base_ur`: unknown setting (hint: did you mean `base_url`?)"), "{all}");
        assert!(
            all.contains("connector `z`, setting `base_url`") && all.contains("https://"),
            "{all}"
        );
        assert!(all.contains("connector `z`, setting `timeout`"), "{all}");
        assert!(
            all.contains("connector `w`, setting `type`: is required"),
            "{all}"
        );
        assert!(
            all.contains("connector `v`, setting `headers.Authorization`")
                && all.contains("CORDON_TEST_UNSET_XYZ"),
            "{all}"
        );
        assert_eq!(errs.len(), 6, "{all}");
    }

    #[test]
    fn inline_secret_header_is_refused_without_echo() {
        let errs = build_reg(json!({
            "v": {"type": "http", "headers": {"Authorization": {"value": "Bearer abc123"}}},
        }))
        .unwrap_err();
        let all = format!("{errs:?}");
        assert!(!all.contains("abc123"), "{all}");
    }

    #[test]
    fn reserved_default_names() {
        let errs = build_reg(json!({"http": {"type": "core"}})).unwrap_err();
        assert!(errs[0].to_string().contains("reserved"), "{errs:?}");
        let errs = build_reg(json!({"c": {"type": "core", "x": 1}})).unwrap_err();
        assert!(
            errs[0].to_string().contains("takes no settings"),
            "{errs:?}"
        );
    }

    #[test]
    fn closest_match() {
        assert_eq!(
            closest("tokn", ["token", "base_url"].into_iter()),
            Some("token")
        );
        assert_eq!(closest("zzzzzz", ["token", "base_url"].into_iter()), None);
    }
}
