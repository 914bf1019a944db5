//! The evidence store: where snapshot actions stream their artifacts, and how a run's
//! evidence is verified, traced and handed over.
//!
//! - [`EvidenceStore`]: one closed set of backends. [`local`] keeps a folder per run
//!   (`<root>/<run>/<id>.<ext>`, `manifest.jsonl`, `SHA256SUMS`); [`s3`] writes to
//!   S3-compatible object storage, optionally under Object Lock, with one manifest object and
//!   one checksum object per artifact (objects are never appended to).
//! - [`CallEvidence`]: the sink one action call writes through. Every writer hashes
//!   (SHA-256) and counts as bytes go by; nothing is held whole.
//! - [`verify`]: re-hashes every artifact and compares it with the database record, the
//!   `evidence.collected` audit event (the root of trust: the audit trail is hash-chained)
//!   and the backend's manifest and checksums.
//! - [`custody`]: each artifact's chain of custody (RFC 3227) read back from the audit trail.
//! - [`export`]: a tar bundle a third party checks with `sha256sum -c SHA256SUMS`.

pub mod custody;
pub mod export;
pub mod local;
pub mod s3;
pub mod verify;

/// The real S3-compatible server the tests start (shared with the end-to-end tests).
#[cfg(test)]
#[path = "../../../tests/support/s3_server.rs"]
pub(crate) mod s3_server;

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cordon_connectors::evidence::EvidenceError;
use cordon_connectors::secret::Redactor;
use cordon_connectors::{EvidenceMeta, EvidenceRecord, EvidenceSink, EvidenceWriter};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;

pub use local::LocalEvidence;
pub use s3::S3Evidence;
pub use verify::{verify_run, ArtifactCheck, EvidenceVerifyReport, Problem};

use crate::config::Config;

/// The manifest of a run folder: one JSON record per line.
pub const MANIFEST: &str = "manifest.jsonl";
/// Checksums in the format `sha256sum -c` reads.
pub const SHA256SUMS: &str = "SHA256SUMS";
/// Suffix of local artifacts still being written (or abandoned).
pub const PARTIAL_SUFFIX: &str = ".partial";

/// Where a run's evidence is kept.
#[derive(Debug, Clone)]
pub enum EvidenceStore {
    Local(LocalEvidence),
    S3(S3Evidence),
}

/// A finished artifact and where the backend put it.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    pub record: EvidenceRecord,
    pub stored: Stored,
}

/// Where an artifact was stored: the `storage` of its `evidence.collected` audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum Stored {
    Local {
        /// The evidence root (absolute).
        root: String,
        /// The artifact's path under the root: `<run>/<id>.<ext>`.
        path: String,
    },
    S3 {
        bucket: String,
        /// The endpoint, when not AWS.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        key: String,
        /// The object version (buckets with versioning, which Object Lock implies).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version_id: Option<String>,
        /// The manifest object (the record as JSON) and the checksum object.
        manifest_key: String,
        sums_key: String,
        /// The retention every one of those objects carries, as read back from the store.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object_lock: Option<LockApplied>,
    },
}

/// Object Lock retention as the store reported it after the write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockApplied {
    /// `COMPLIANCE` or `GOVERNANCE`.
    pub mode: String,
    /// RFC 3339 UTC.
    pub retain_until: String,
}

/// What a backend holds for one run, as verification needs it.
#[derive(Debug, Clone, Default)]
pub struct RunListing {
    /// Artifact-like entries (file names relative to the run folder), manifests and
    /// checksum files excluded, sorted.
    pub files: Vec<String>,
    /// Writes that never finished (`.partial` files, open multipart uploads).
    pub partial: Vec<String>,
    /// Manifest lines, in order.
    pub manifest: Vec<ManifestLine>,
    /// Checksum lines, in order.
    pub sums: Vec<SumsLine>,
}

/// One line of a manifest.
#[derive(Debug, Clone)]
pub struct ManifestLine {
    /// `manifest.jsonl:3` or `manifest.d/<id>.json`.
    pub origin: String,
    pub raw: String,
    pub record: Result<EvidenceRecord, String>,
}

/// One `sha256sum` line.
#[derive(Debug, Clone)]
pub struct SumsLine {
    pub origin: String,
    pub raw: String,
    /// `(sha256, file)` when the line has the `sha256sum` format.
    pub parsed: Option<(String, String)>,
}

impl SumsLine {
    pub fn parse(origin: String, raw: &str) -> SumsLine {
        let parsed = raw.split_once(' ').and_then(|(hash, rest)| {
            let file = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
            (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) && !file.is_empty())
                .then(|| (hash.to_ascii_lowercase(), file.to_string()))
        });
        SumsLine {
            origin,
            raw: raw.to_string(),
            parsed,
        }
    }
}

impl ManifestLine {
    pub fn parse(origin: String, raw: &str) -> ManifestLine {
        ManifestLine {
            origin,
            raw: raw.to_string(),
            record: serde_json::from_str(raw).map_err(|e| format!("not an evidence record: {e}")),
        }
    }
}

/// Hashing an artifact's current bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hashed {
    Missing,
    Found { sha256: String, bytes: u64 },
    Unreadable(String),
}

/// An artifact's bytes, streamed.
pub type ArtifactReader = Pin<Box<dyn AsyncRead + Send>>;

impl EvidenceStore {
    /// The store the configuration names. Reads the S3 credentials (their values join the
    /// redactor) but makes no network call: see [`EvidenceStore::check`].
    pub fn from_config(config: &Config, redactor: &Redactor) -> Result<Self, EvidenceError> {
        match &config.evidence_s3 {
            Some(settings) => Ok(EvidenceStore::S3(S3Evidence::new(
                settings,
                &config.base_dir,
                redactor,
            )?)),
            None => Ok(EvidenceStore::Local(LocalEvidence::new(
                config.evidence_dir.clone(),
            ))),
        }
    }

    /// Make sure the store can take evidence: for S3, the bucket answers and, when Object
    /// Lock is configured, has Object Lock enabled. Checked once per process.
    pub async fn check(&self) -> Result<(), EvidenceError> {
        match self {
            EvidenceStore::Local(_) => Ok(()),
            EvidenceStore::S3(s) => s.ready().await,
        }
    }

    /// `local folder /x/evidence` or `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        match self {
            EvidenceStore::Local(l) => format!("local folder {}", l.root().display()),
            EvidenceStore::S3(s) => s.describe(),
        }
    }

    /// The sink one action call writes through.
    pub fn sink(&self, run_id: &str, step_id: &str) -> CallEvidence {
        CallEvidence {
            store: self.clone(),
            run_id: run_id.to_string(),
            step_id: step_id.to_string(),
            finished: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// What the store holds for a run.
    pub async fn listing(&self, run_id: &str) -> Result<RunListing, EvidenceError> {
        if !safe_component(run_id) {
            return Err(err(format!("`{run_id}` is not a usable run id")));
        }
        match self {
            EvidenceStore::Local(l) => {
                let l = l.clone();
                let run = run_id.to_string();
                tokio::task::spawn_blocking(move || l.listing(&run))
                    .await
                    .map_err(|e| err(format!("listing failed: {e}")))?
            }
            EvidenceStore::S3(s) => s.listing(run_id).await,
        }
    }

    /// SHA-256 and size of a stored file of a run, streamed.
    pub async fn hash(&self, run_id: &str, file: &str) -> Hashed {
        if !safe_component(run_id) || !safe_component(file) {
            return Hashed::Unreadable(format!("`{run_id}/{file}` is not a usable path"));
        }
        let reader = match self.open(run_id, file).await {
            Ok(Some(r)) => r,
            Ok(None) => return Hashed::Missing,
            Err(e) => return Hashed::Unreadable(e.0),
        };
        match hash_reader(reader).await {
            Ok((sha256, bytes)) => Hashed::Found { sha256, bytes },
            Err(e) => Hashed::Unreadable(e.to_string()),
        }
    }

    /// A stored file of a run, streamed; `None` when it does not exist.
    pub async fn open(
        &self,
        run_id: &str,
        file: &str,
    ) -> Result<Option<ArtifactReader>, EvidenceError> {
        if !safe_component(run_id) || !safe_component(file) {
            return Err(err(format!("`{run_id}/{file}` is not a usable path")));
        }
        match self {
            EvidenceStore::Local(l) => l.open(run_id, file).await,
            EvidenceStore::S3(s) => s.open(run_id, file).await,
        }
    }

    /// A recorded artifact's bytes (the bytes its `sha256` covers), streamed.
    pub async fn open_artifact(
        &self,
        record: &EvidenceRecord,
    ) -> Result<Option<ArtifactReader>, EvidenceError> {
        let file = record_file_name(record).map_err(err)?;
        self.open(&record.run_id, file).await
    }
}

/// Read to the end, hashing.
pub async fn hash_reader(mut reader: ArtifactReader) -> std::io::Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncReadExt;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), bytes))
}

/// The evidence sink of one action call. Cheap to clone; clones share what was finished.
#[derive(Debug, Clone)]
pub struct CallEvidence {
    store: EvidenceStore,
    run_id: String,
    step_id: String,
    finished: Arc<Mutex<Vec<Collected>>>,
}

impl CallEvidence {
    /// The artifacts finished through this sink so far, emptying the list (the executor
    /// stores them with the step result).
    pub fn take_collected(&self) -> Vec<Collected> {
        match self.finished.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn step_id(&self) -> &str {
        &self.step_id
    }

    fn push(&self, c: Collected) {
        match self.finished.lock() {
            Ok(mut v) => v.push(c),
            Err(poisoned) => poisoned.into_inner().push(c),
        }
    }

    /// The record of a finished artifact (same fields whatever the backend).
    fn record(
        &self,
        evidence_id: String,
        file_name: &str,
        meta: EvidenceMeta,
        sha256: String,
        bytes: u64,
        records: u64,
    ) -> EvidenceRecord {
        EvidenceRecord {
            evidence_id,
            run_id: self.run_id.clone(),
            step_id: self.step_id.clone(),
            path: format!("{}/{file_name}", self.run_id),
            sha256,
            bytes,
            records,
            collected_at: crate::time::now(),
            meta,
        }
    }
}

#[async_trait]
impl EvidenceSink for CallEvidence {
    async fn create(&self, meta: EvidenceMeta) -> Result<Box<dyn EvidenceWriter>, EvidenceError> {
        if !safe_component(&self.run_id) {
            return Err(err(format!("`{}` is not a usable run id", self.run_id)));
        }
        let evidence_id = ulid::Ulid::new().to_string();
        let file_name = format!("{evidence_id}.{}", sanitize_extension(&meta.extension));
        match &self.store {
            EvidenceStore::Local(l) => l.create(self.clone(), meta, evidence_id, file_name).await,
            EvidenceStore::S3(s) => s.create(self.clone(), meta, evidence_id, file_name).await,
        }
    }
}

/// A run id or file name must be one plain path component: never `..`, never a separator.
pub fn safe_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])
}

pub(crate) fn err(message: impl Into<String>) -> EvidenceError {
    EvidenceError(message.into())
}

/// Extensions become part of a file name: keep them short and plain.
pub(crate) fn sanitize_extension(ext: &str) -> String {
    let ext = ext.trim_start_matches('.').to_ascii_lowercase();
    if !ext.is_empty() && ext.len() <= 10 && ext.chars().all(|c| c.is_ascii_alphanumeric()) {
        ext
    } else {
        "bin".to_string()
    }
}

/// The file name in `record.path`, which must be `<run id>/<file>`.
pub fn record_file_name(record: &EvidenceRecord) -> Result<&str, String> {
    let bad = || {
        format!(
            "path `{}` is not `<run id>/<file>` inside the evidence root",
            record.path
        )
    };
    let (run, file) = record.path.split_once('/').ok_or_else(bad)?;
    if run != record.run_id || !safe_component(run) || !safe_component(file) {
        return Err(bad());
    }
    Ok(file)
}

/// The manifest line of a record (what `manifest.jsonl` holds, without the newline).
pub fn manifest_line(record: &EvidenceRecord) -> Result<String, EvidenceError> {
    serde_json::to_string(record)
        .map_err(|e| err(format!("cannot encode the manifest record: {e}")))
}

#[cfg(test)]
pub(crate) mod testutil {
    use cordon_connectors::{EvidenceMeta, EvidenceRecord, EvidenceSink};
    use serde_json::json;

    use super::CallEvidence;

    pub fn meta(ext: &str) -> EvidenceMeta {
        EvidenceMeta {
            connector_type: "okta".into(),
            instance: "okta-prod".into(),
            action: "snapshot_system_log".into(),
            extension: ext.into(),
            media_type: "application/x-ndjson".into(),
            source: json!({"since": "2024-01-01T00:00:00Z", "query": "actor.id eq \"00u1\""}),
        }
    }

    pub async fn write_artifact(
        sink: &CallEvidence,
        chunks: &[&[u8]],
        records: u64,
    ) -> EvidenceRecord {
        let mut w = sink.create(meta("jsonl")).await.unwrap();
        for c in chunks {
            w.write(c).await.unwrap();
        }
        w.add_records(records);
        w.finish().await.unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_lines_parse_like_sha256sum() {
        let h = "a".repeat(64);
        let ok = SumsLine::parse("x".into(), &format!("{h}  file.jsonl"));
        assert_eq!(ok.parsed, Some((h.clone(), "file.jsonl".into())));
        let binary = SumsLine::parse("x".into(), &format!("{h} *file.bin"));
        assert_eq!(binary.parsed, Some((h.clone(), "file.bin".into())));
        assert!(SumsLine::parse("x".into(), "zz  file").parsed.is_none());
        assert!(SumsLine::parse("x".into(), &format!("{h}  "))
            .parsed
            .is_none());
        assert!(SumsLine::parse("x".into(), "").parsed.is_none());
    }

    #[test]
    fn names_and_extensions() {
        assert_eq!(sanitize_extension("../x"), "bin");
        assert_eq!(sanitize_extension(".JSONL"), "jsonl");
        assert_eq!(sanitize_extension("averyverylongext"), "bin");
        assert!(!safe_component(".."));
        assert!(!safe_component("a/b"));
        assert!(safe_component("01JD0000000000000000000000"));
    }
}
