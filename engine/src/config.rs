//! Configuration: the YAML file named by `--config`/`CORDON_CONFIG`, or embedded defaults.
//!
//! Raw file → [`ConfigFile`] (serde, unknown keys refused) → [`Config`] with every path made
//! absolute (relative paths are relative to the file's folder; with no file, to the working
//! directory). Connector instance settings stay as raw maps here: each connector type parses
//! its own in `cordon_connectors::registry`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cordon_connectors::secret::SecretRef;
use serde::Deserialize;
use serde_json::Value;

/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "CORDON_CONFIG";
/// Environment variable overriding `database`.
pub const DATABASE_ENV: &str = "CORDON_DATABASE_URL";
/// Environment variable overriding `cluster.node`.
pub const NODE_ENV: &str = "CORDON_NODE_NAME";

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
    /// Leases and the resume sweep, for several nodes on one database.
    #[serde(default)]
    pub cluster: Option<ClusterFile>,
}

/// `cluster:` as written: durations such as `10s` or `500ms`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// How long a run's lease lasts without a heartbeat (default `10s`). A node that dies
    /// holds its runs this long at most; another node then resumes them.
    #[serde(default)]
    pub lease_ttl: Option<String>,
    /// How often the executing node renews its leases (default a third of `lease_ttl`).
    #[serde(default)]
    pub heartbeat: Option<String>,
    /// How often `cordon serve` looks for runs nobody executes and timed-out approvals
    /// (default `2s`).
    #[serde(default)]
    pub sweep: Option<String>,
    /// This node's name in leases, logs and `cordon runs show` (default the host name;
    /// `CORDON_NODE_NAME` overrides it). A run leased by a process of this node whose
    /// process is gone is taken over at once; other nodes' leases must lapse.
    #[serde(default)]
    pub node: Option<String>,
}

/// Lease and sweep timing with defaults applied (`cluster:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub lease_ttl: std::time::Duration,
    pub heartbeat: std::time::Duration,
    pub sweep: std::time::Duration,
    /// `cluster.node` or `CORDON_NODE_NAME`; None: the host name.
    pub node: Option<String>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            lease_ttl: std::time::Duration::from_secs(10),
            heartbeat: std::time::Duration::from_millis(3_333),
            sweep: std::time::Duration::from_secs(2),
            node: None,
        }
    }
}

/// A node name: what a lease owner (`node/pid/nonce`) can hold.
pub fn check_node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}`: a node name is 1 to 100 of A-Z a-z 0-9 - _ . :"
        ))
    }
}

impl Cluster {
    /// The lease time in milliseconds, as the store takes it.
    pub fn lease_ttl_ms(&self) -> u64 {
        u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// The longest a dead node's runs wait before another node resumes them: the lease
    /// lapses at most `lease_ttl` after the last heartbeat, and the next sweep finds them.
    pub fn worst_case_takeover(&self) -> std::time::Duration {
        self.lease_ttl + self.sweep
    }

    fn from_file(raw: Option<&ClusterFile>) -> Result<Cluster, String> {
        let Some(raw) = raw else {
            return Ok(Cluster::default());
        };
        let field =
            |name: &str, v: &Option<String>| -> Result<Option<std::time::Duration>, String> {
                v.as_deref()
                    .map(|s| {
                        crate::duration::parse(s).map_err(|m| format!("cluster.{name}: `{s}`: {m}"))
                    })
                    .transpose()
            };
        let lease_ttl = field("lease_ttl", &raw.lease_ttl)?.unwrap_or(Cluster::default().lease_ttl);
        let heartbeat = field("heartbeat", &raw.heartbeat)?.unwrap_or_else(|| {
            std::time::Duration::from_millis(
                u64::try_from(lease_ttl.as_millis() / 3).unwrap_or(u64::MAX),
            )
        });
        let sweep = field("sweep", &raw.sweep)?.unwrap_or(Cluster::default().sweep);
        if lease_ttl < std::time::Duration::from_secs(1) {
            return Err(
                "cluster.lease_ttl: at least 1s, so that a busy node keeps its runs".into(),
            );
        }
        if heartbeat.is_zero() || heartbeat * 2 > lease_ttl {
            return Err(format!(
                "cluster.heartbeat: more than zero and at most half of lease_ttl ({}ms), so that one late renewal does not lose a lease",
                lease_ttl.as_millis()
            ));
        }
        if sweep < std::time::Duration::from_millis(100)
            || sweep > std::time::Duration::from_secs(3600)
        {
            return Err("cluster.sweep: between 100ms and 1h".into());
        }
        if let Some(n) = &raw.node {
            check_node_name(n).map_err(|m| format!("cluster.node: {m}"))?;
        }
        Ok(Cluster {
            lease_ttl,
            heartbeat,
            sweep,
            node: raw.node.clone(),
        })
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `evidence:`: a local folder (`dir`, the default) or S3-compatible storage (`s3`), never both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceSettings {
    /// The evidence folder (default `./evidence`).
    #[serde(default)]
    pub dir: Option<String>,
    /// S3-compatible object storage instead of a folder.
    #[serde(default)]
    pub s3: Option<S3Settings>,
}

/// `evidence.s3`: where artifacts go in S3-compatible object storage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// The bucket; it must exist (with Object Lock enabled when `object_lock` is set).
    pub bucket: String,
    /// Endpoint URL of an S3-compatible service; AWS S3 when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Signing region (default `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// Prepended to every key; empty or ending with `/` (e.g. `evidence/`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers want.
    #[serde(default)]
    pub path_style: bool,
    pub access_key_id: SecretRef,
    pub secret_access_key: SecretRef,
    /// For temporary credentials.
    #[serde(default)]
    pub session_token: Option<SecretRef>,
    /// Write every object under Object Lock (WORM) with this retention.
    #[serde(default)]
    pub object_lock: Option<ObjectLockSettings>,
}

/// `evidence.s3.object_lock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockSettings {
    pub mode: LockMode,
    /// Days from the write until the object may be deleted or overwritten (1 to 36500).
    pub retain_days: u32,
}

/// S3 Object Lock retention modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Nobody, the root account included, can delete the version before its date.
    Compliance,
    /// Users with `s3:BypassGovernanceRetention` can.
    Governance,
}

impl LockMode {
    pub fn as_s3(self) -> &'static str {
        match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        }
    }
}

impl S3Settings {
    /// The region, with its default.
    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or("us-east-1")
    }

    /// The key prefix, possibly empty.
    pub fn prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or("")
    }

    /// Every problem with these settings (pure: no network, no secrets read).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let b = &self.bucket;
        if b.len() < 3
            || b.len() > 63
            || !b
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            || b.starts_with(['-', '.'])
            || b.ends_with(['-', '.'])
        {
            out.push(format!(
                "evidence.s3.bucket: `{b}` is not a bucket name (3 to 63 lowercase letters, digits, `-` and `.`)"
            ));
        }
        if let Some(ep) = &self.endpoint {
            match url::Url::parse(ep) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => out.push(format!(
                    "evidence.s3.endpoint: `{ep}` is not an http:// or https:// URL"
                )),
            }
        }
        if self.region().is_empty() {
            out.push("evidence.s3.region must not be empty".into());
        }
        let p = self.prefix();
        if !p.is_empty()
            && (!p.ends_with('/')
                || p.starts_with('/')
                || p.split('/').any(|seg| seg == "." || seg == ".."))
        {
            out.push(format!(
                "evidence.s3.prefix: `{p}` must end with `/` and must not start with `/` or contain `.`/`..` segments (e.g. `evidence/`)"
            ));
        }
        if let Some(lock) = &self.object_lock {
            if !(1..=36_500).contains(&lock.retain_days) {
                out.push(format!(
                    "evidence.s3.object_lock.retain_days: {} is outside 1 to 36500",
                    lock.retain_days
                ));
            }
        }
        out
    }
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
#[derive(Clone)]
pub struct Config {
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
    /// Folder relative paths are resolved against.
    pub base_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// The local evidence folder (used when `evidence_s3` is `None`).
    pub evidence_dir: PathBuf,
    /// S3-compatible evidence storage, when configured (then `evidence_dir` is unused).
    pub evidence_s3: Option<S3Settings>,
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
    /// Lease and sweep timing.
    pub cluster: Cluster,
}

/// Debug output shows the database URL without its password.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("source", &self.source)
            .field("base_dir", &self.base_dir)
            .field("database_url", &redact_url(&self.database_url))
            .field("evidence_dir", &self.evidence_dir)
            .field("evidence_s3", &self.evidence_s3)
            .field("runbooks_dir", &self.runbooks_dir)
            .field("templates_dir", &self.templates_dir)
            .field("listen", &self.listen)
            .field("connectors", &self.connectors)
            .field("webhooks", &self.webhooks)
            .field("schedules", &self.schedules)
            .field("guards", &self.guards)
            .field("public_url", &self.public_url)
            .field("notify_waiting", &self.notify_waiting)
            .field("api_tokens", &self.api_tokens)
            .field("log_format", &self.log_format)
            .field("tls", &self.tls)
            .finish()
    }
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
        if let Some(node) = std::env::var(NODE_ENV).ok().filter(|n| !n.is_empty()) {
            check_node_name(&node).map_err(|message| ConfigError::Invalid {
                path: NODE_ENV.into(),
                message,
            })?;
            config.cluster.node = Some(node);
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
        let evidence_s3 = file.evidence.as_ref().and_then(|e| e.s3.clone());
        if let Some(e) = &file.evidence {
            if e.dir.is_some() && e.s3.is_some() {
                return Err(ConfigError::Invalid {
                    path: shown,
                    message: "evidence: `dir` and `s3` are exclusive: evidence goes to one store, a local folder or S3-compatible storage".into(),
                });
            }
        }
        if let Some(s3) = &evidence_s3 {
            let problems = s3.problems();
            if !problems.is_empty() {
                return Err(ConfigError::Invalid {
                    path: shown,
                    message: problems.join("; "),
                });
            }
        }
        let cluster =
            Cluster::from_file(file.cluster.as_ref()).map_err(|message| ConfigError::Invalid {
                path: shown.clone(),
                message,
            })?;
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
            evidence_s3,
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
            cluster,
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

/// `url` as it may be shown in a message or a log line: a password in the user part
/// (`postgres://cordon:***@db/cordon`) or in a `password=` parameter becomes `***`. Works on
/// text that is not a valid URL too (it is what the user typed).
pub fn redact_url(url: &str) -> String {
    // The query (and fragment) starts at the first `?` or `#`; the user part ends at the
    // last `@` before it (a password may hold an unescaped `/` or `@`).
    let query_at = url.find(['?', '#']).unwrap_or(url.len());
    let (head, query) = url.split_at(query_at);
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let mut out = String::with_capacity(url.len());
    match head[scheme_end..].rfind('@').map(|i| i + scheme_end) {
        Some(at) => {
            let userinfo = &head[scheme_end..at];
            out.push_str(&head[..scheme_end]);
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&head[at..]);
        }
        None => out.push_str(head),
    }
    // `password=` parameters, whatever their case.
    let mut rest = query;
    while !rest.is_empty() {
        let end = rest[1..]
            .find(['&', '#'])
            .map(|i| i + 1)
            .unwrap_or(rest.len());
        let (param, tail) = rest.split_at(end);
        // `param` starts with its separator (`?`, `&` or `#`).
        let (sep, body) = param.split_at(1);
        match body.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                out.push_str(sep);
                out.push_str(key);
                out.push_str("=***");
            }
            _ => out.push_str(param),
        }
        rest = tail;
    }
    out
}

/// `sqlite://relative.db` is made absolute against `base`; `postgres://` and
/// `postgresql://` pass through untouched.
fn normalise_database_url(url: &str, base: &Path, origin: &str) -> Result<String, ConfigError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(url.to_string());
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| ConfigError::Invalid {
            path: origin.to_string(),
            message: format!(
                "database `{}` is neither sqlite://PATH nor postgres://…",
                redact_url(url)
            ),
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
    fn passwords_in_database_urls_never_show() {
        for (url, shown) in [
            (
                "postgres://cordon:s3cret@db.internal:5432/cordon",
                "postgres://cordon:***@db.internal:5432/cordon",
            ),
            (
                "postgresql://cordon:p%40ss@db/cordon?sslmode=require",
                "postgresql://cordon:***@db/cordon?sslmode=require",
            ),
            // An unescaped `@` or `/` in the password still hides all of it.
            ("postgres://u:pa@s/s@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?sslmode=disable&password=s3cret&options=-c%20a%3Db",
                "postgres://u@h/db?sslmode=disable&password=***&options=-c%20a%3Db",
            ),
            (
                "postgres://h/db?PASSWORD=s3cret",
                "postgres://h/db?PASSWORD=***",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "sqlite:///var/lib/cordon/c.db",
                "sqlite:///var/lib/cordon/c.db",
            ),
            ("mysql://root:s3cret@h/db", "mysql://root:***@h/db"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
            assert!(!redact_url(url).contains("s3cret"));
        }
    }

    #[test]
    fn postgres_urls_pass_through_untouched() {
        let base = Path::new("/srv/cordon");
        for url in [
            "postgres://cordon:s3cret@db:5432/cordon?options=-c%20search_path%3Dx",
            "postgresql://cordon@db/cordon",
        ] {
            assert_eq!(normalise_database_url(url, base, "f").unwrap(), url);
        }
        let mut config =
            Config::from_parts(ConfigFile::default(), base.to_path_buf(), None).expect("defaults");
        config.database_url = "postgres://cordon:s3cret@db/cordon".into();
        let shown = format!("{config:?}");
        assert!(
            shown.contains("postgres://cordon:***@db/cordon") && !shown.contains("s3cret"),
            "{shown}"
        );
        let err = normalise_database_url("mysql://root:s3cret@h/db", base, "f")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mysql://root:***@h/db"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

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
    fn s3_evidence_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "evidence:\n  s3:\n    bucket: cordon-evidence\n    endpoint: http://127.0.0.1:9000\n    prefix: evidence/\n    path_style: true\n    access_key_id: { env: AK }\n    secret_access_key: { file: sk }\n    object_lock: { mode: compliance, retain_days: 3650 }\n",
        )
        .unwrap();
        let c = Config::from_file(&path).unwrap();
        let s3 = c.evidence_s3.unwrap();
        assert_eq!(s3.bucket, "cordon-evidence");
        assert_eq!(s3.region(), "us-east-1");
        assert_eq!(s3.prefix(), "evidence/");
        assert!(s3.path_style);
        assert_eq!(s3.access_key_id, SecretRef::Env("AK".into()));
        assert_eq!(
            s3.object_lock,
            Some(ObjectLockSettings {
                mode: LockMode::Compliance,
                retain_days: 3650
            })
        );

        let bad = |yaml: &str| {
            std::fs::write(&path, yaml).unwrap();
            Config::from_file(&path).unwrap_err().to_string()
        };
        let keys = "access_key_id: { env: AK }, secret_access_key: { env: SK }";
        let err = bad(&format!(
            "evidence: {{ dir: ev, s3: {{ bucket: b-1, {keys} }} }}\n"
        ));
        assert!(err.contains("`dir` and `s3` are exclusive"), "{err}");
        assert!(err.contains("c.yaml"), "{err}");
        let err = bad(&format!(
            "evidence: {{ s3: {{ bucket: Bad_Name, prefix: ev, endpoint: ftp://x, {keys}, object_lock: {{ mode: compliance, retain_days: 0 }} }} }}\n"
        ));
        for needle in [
            "evidence.s3.bucket",
            "evidence.s3.prefix",
            "evidence.s3.endpoint",
            "retain_days",
        ] {
            assert!(err.contains(needle), "{needle}: {err}");
        }
        // Inline secrets are refused without echoing them.
        let err = bad("evidence: { s3: { bucket: b-1, access_key_id: AKIAINLINE, secret_access_key: { env: SK } } }\n");
        assert!(err.contains("inline secret refused"), "{err}");
        assert!(!err.contains("AKIAINLINE"), "{err}");
        let err = bad(&format!(
            "evidence: {{ s3: {{ bucket: b-1, {keys}, object_lock: {{ mode: legal }} }} }}\n"
        ));
        assert!(err.contains("legal") || err.contains("mode"), "{err}");
    }

    #[test]
    fn bad_database_url() {
        let err = normalise_database_url("mysql://x", Path::new("/"), "f").unwrap_err();
        assert!(err.to_string().contains("mysql://x"));
    }

    fn cluster_of(yaml: &str) -> Result<Cluster, ConfigError> {
        let file: ConfigFile = serde_yaml::from_str(yaml).unwrap();
        Config::from_parts(file, PathBuf::from("/srv/cordon"), None).map(|c| c.cluster)
    }

    #[test]
    fn cluster_defaults_resume_a_dead_nodes_runs_within_fifteen_seconds() {
        let c = cluster_of("{}").unwrap();
        assert_eq!(c, Cluster::default());
        assert_eq!(c.lease_ttl_ms(), 10_000);
        assert!(c.heartbeat * 2 < c.lease_ttl);
        assert!(c.worst_case_takeover() <= std::time::Duration::from_secs(15));
    }

    #[test]
    fn cluster_settings_are_read_and_heartbeat_follows_the_lease() {
        let c = cluster_of("cluster: { lease_ttl: 4s, sweep: 500ms }").unwrap();
        assert_eq!(c.lease_ttl, std::time::Duration::from_secs(4));
        assert_eq!(c.heartbeat, std::time::Duration::from_millis(1333));
        assert_eq!(c.sweep, std::time::Duration::from_millis(500));
        let c = cluster_of("cluster: { lease_ttl: 30s, heartbeat: 5s, node: web-1.eu }").unwrap();
        assert_eq!(c.heartbeat, std::time::Duration::from_secs(5));
        assert_eq!(c.node.as_deref(), Some("web-1.eu"));
    }

    #[test]
    fn cluster_settings_that_would_lose_leases_are_refused_by_name() {
        for (yaml, needle) in [
            ("cluster: { lease_ttl: 10 }", "cluster.lease_ttl: `10`"),
            (
                "cluster: { lease_ttl: 500ms }",
                "cluster.lease_ttl: at least 1s",
            ),
            (
                "cluster: { lease_ttl: 10s, heartbeat: 6s }",
                "cluster.heartbeat",
            ),
            ("cluster: { heartbeat: 0s }", "cluster.heartbeat"),
            ("cluster: { sweep: 10ms }", "cluster.sweep"),
            ("cluster: { node: a/b }", "cluster.node: `a/b`"),
            ("cluster: { node: '' }", "cluster.node"),
        ] {
            let err = cluster_of(yaml).unwrap_err().to_string();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
        let err = serde_yaml::from_str::<ConfigFile>("cluster: { lease: 10s }").unwrap_err();
        assert!(err.to_string().contains("unknown field `lease`"), "{err}");
    }
}
