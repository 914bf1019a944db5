//! Configuration: the YAML file named by `--config`/`CORDON_CONFIG`, or embedded defaults.
//!
//! Raw file → [`ConfigFile`] (serde, unknown keys refused) → [`Config`] with every path made
//! absolute (relative paths are relative to the file's folder; with no file, to the working
//! directory). Connector instance settings stay as raw maps here: each connector type parses
//! its own in `cordon_connectors::registry`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "CORDON_CONFIG";
/// Environment variable overriding `database`.
pub const DATABASE_ENV: &str = "CORDON_DATABASE_URL";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub evidence: Option<EvidenceSettings>,
    #[serde(default)]
    pub runbooks: Option<String>,
    #[serde(default)]
    pub templates: Option<String>,
    #[serde(default)]
    pub listen: Option<String>,
    #[serde(default)]
    pub connectors: BTreeMap<String, Value>,
    #[serde(default)]
    pub webhooks: BTreeMap<String, Value>,
    #[serde(default)]
    pub schedules: Vec<Value>,
    #[serde(default)]
    pub guards: Guards,
    #[serde(default)]
    pub public_url: Option<String>,
    #[serde(default)]
    pub notify_waiting: Option<Value>,
    #[serde(default)]
    pub api: ApiSettings,
    #[serde(default)]
    pub tls: Option<Value>,
    /// `text` (default) or `json`: the format of `cordon serve`'s log lines.
    #[serde(default)]
    pub log_format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceSettings {
    #[serde(default)]
    pub dir: Option<String>,
}

/// Blast-radius limits, enforced by the engine before any call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guards {
    /// Users (emails, logins or vendor ids) no mutating action may touch.
    #[serde(default)]
    pub protected_users: Vec<String>,
    /// Devices (serials, names or vendor ids) no mutating action may touch.
    #[serde(default)]
    pub protected_devices: Vec<String>,
    /// Most distinct targets the mutating steps of one run may touch.
    #[serde(default = "default_max_targets")]
    pub max_targets_per_run: usize,
}

fn default_max_targets() -> usize {
    25
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            protected_users: Vec::new(),
            protected_devices: Vec::new(),
            max_targets_per_run: default_max_targets(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    #[serde(default)]
    pub tokens: Vec<ApiToken>,
}

/// One API token. The token value itself is a secret reference, read only by `serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    pub name: String,
    pub token: Value,
    pub role: Role,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Responder,
    Approver,
    Admin,
}

/// Configuration with defaults applied and paths resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
    /// Folder relative paths are resolved against.
    pub base_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    pub evidence_dir: PathBuf,
    pub runbooks_dir: PathBuf,
    pub templates_dir: PathBuf,
    pub listen: String,
    pub connectors: BTreeMap<String, Value>,
    pub webhooks: BTreeMap<String, Value>,
    pub schedules: Vec<Value>,
    pub guards: Guards,
    pub public_url: Option<String>,
    pub notify_waiting: Option<Value>,
    pub api_tokens: Vec<ApiToken>,
    pub log_format: Option<LogFormat>,
    /// `tls: {cert, key}` as written (not served yet: `cordon serve` refuses it).
    pub tls: Option<Value>,
}

impl Config {
    /// Load from `path`, else `$CORDON_CONFIG`, else embedded defaults; then apply
    /// `$CORDON_DATABASE_URL`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env_path = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty());
        let chosen: Option<PathBuf> = path.map(Path::to_path_buf).or(env_path.map(PathBuf::from));
        let mut config = match chosen {
            Some(p) => Self::from_file(&p)?,
            None => {
                let cwd = std::env::current_dir().map_err(|e| ConfigError::Read {
                    path: ".".into(),
                    source: e,
                })?;
                Self::from_parts(ConfigFile::default(), cwd, None)?
            }
        };
        if let Some(url) = std::env::var(DATABASE_ENV).ok().filter(|u| !u.is_empty()) {
            config.database_url =
                normalise_database_url(&url, &config.base_dir, "CORDON_DATABASE_URL")?;
        }
        Ok(config)
    }

    /// Read and check one file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: shown.clone(),
            source: e,
        })?;
        let file: ConfigFile = if text.trim().is_empty() {
            ConfigFile::default()
        } else {
            serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: shown.clone(),
                message: e.to_string(),
            })?
        };
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base = abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_parts(file, base, Some(abs))
    }

    fn from_parts(
        file: ConfigFile,
        base_dir: PathBuf,
        source: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let shown = source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(defaults)".into());
        let database_url = normalise_database_url(
            file.database.as_deref().unwrap_or("sqlite://cordon.db"),
            &base_dir,
            &shown,
        )?;
        let rel = |p: Option<&str>, default: &str| -> PathBuf {
            let p = Path::new(p.unwrap_or(default));
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            }
        };
        let evidence_dir = rel(
            file.evidence.as_ref().and_then(|e| e.dir.as_deref()),
            "evidence",
        );
        let mut names = std::collections::BTreeSet::new();
        for t in &file.api.tokens {
            if !names.insert(t.name.clone()) {
                return Err(ConfigError::Invalid {
                    path: shown,
                    message: format!("api.tokens: the name `{}` is used twice", t.name),
                });
            }
        }
        Ok(Config {
            runbooks_dir: rel(file.runbooks.as_deref(), "runbooks"),
            templates_dir: rel(file.templates.as_deref(), "templates"),
            evidence_dir,
            database_url,
            listen: file.listen.unwrap_or_else(|| "127.0.0.1:8480".into()),
            connectors: file.connectors,
            webhooks: file.webhooks,
            schedules: file.schedules,
            guards: file.guards,
            public_url: file.public_url,
            notify_waiting: file.notify_waiting,
            api_tokens: file.api.tokens,
            log_format: file.log_format,
            tls: file.tls,
            source,
            base_dir,
        })
    }

    /// The groups a person may decide for, from the API token of that name. `None` when no
    /// tokens are configured (then anyone may decide), `Some(empty)` for an unknown name.
    pub fn groups_of(&self, name: &str) -> Option<(Vec<String>, bool)> {
        if self.api_tokens.is_empty() {
            return None;
        }
        Some(
            self.api_tokens
                .iter()
                .find(|t| t.name == name)
                .map(|t| (t.groups.clone(), t.role == Role::Admin))
                .unwrap_or_default(),
        )
    }
}

/// `sqlite://relative.db` is made absolute against `base`; `postgres://` passes through.
fn normalise_database_url(url: &str, base: &Path, origin: &str) -> Result<String, ConfigError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(url.to_string());
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| ConfigError::Invalid {
            path: origin.to_string(),
            message: format!("database `{url}` is neither sqlite://PATH nor postgres://…"),
        })?;
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let p = Path::new(path);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    Ok(match query {
        Some(q) => format!("sqlite://{}?{q}", abs.display()),
        None => format!("sqlite://{}", abs.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cordon.yaml");
        std::fs::write(
            &path,
            "database: sqlite://state/c.db\nevidence: { dir: ev }\nguards: { max_targets_per_run: 3 }\n",
        )
        .unwrap();
        let c = Config::from_file(&path).unwrap();
        assert_eq!(
            c.database_url,
            format!("sqlite://{}", dir.path().join("state/c.db").display())
        );
        assert_eq!(c.evidence_dir, dir.path().join("ev"));
        assert_eq!(c.runbooks_dir, dir.path().join("runbooks"));
        assert_eq!(c.guards.max_targets_per_run, 3);
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "databse: sqlite://x.db\n").unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("databse"), "{err}");
        assert!(err.contains("c.yaml"), "{err}");
    }

    #[test]
    fn bad_database_url() {
        let err = normalise_database_url("mysql://x", Path::new("/"), "f").unwrap_err();
        assert!(err.to_string().contains("mysql://x"));
    }
}
