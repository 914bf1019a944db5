//! The local evidence store: one folder per run under the evidence root.
//!
//! ```text
//! <root>/<run id>/<evidence id>.<ext>    the artifact, exactly as the vendor sent it
//! <root>/<run id>/manifest.jsonl         one EvidenceRecord (JSON) per finished artifact
//! <root>/<run id>/SHA256SUMS             `<sha256>  <file>` lines: `sha256sum -c SHA256SUMS`
//! ```
//!
//! Artifacts stream through a writer that hashes as it writes (nothing is held whole),
//! into `<file>.partial`; `finish` fsyncs the file, renames it into place, fsyncs the
//! folder and appends the manifest lines. A snapshot that fails half-way leaves only a
//! `.partial` file, which is never listed as evidence. [`LocalEvidence::verify_run`]
//! re-hashes a run's artifacts against their records (chain of custody).

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cordon_connectors::evidence::EvidenceError;
use cordon_connectors::{EvidenceMeta, EvidenceRecord, EvidenceSink, EvidenceWriter};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

/// The manifest of a run folder: one JSON record per line.
pub const MANIFEST: &str = "manifest.jsonl";
/// Checksums in the format `sha256sum -c` reads.
pub const SHA256SUMS: &str = "SHA256SUMS";
/// Suffix of artifacts still being written (or abandoned).
pub const PARTIAL_SUFFIX: &str = ".partial";

/// Evidence kept in a local directory.
#[derive(Debug, Clone)]
pub struct LocalEvidence {
    root: PathBuf,
    /// Serialises manifest appends from concurrent writers of this process.
    append_lock: Arc<tokio::sync::Mutex<()>>,
}

/// A run id or file name must be one plain path component: never `..`, never a separator.
fn safe_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])
}

fn err(message: impl Into<String>) -> EvidenceError {
    EvidenceError(message.into())
}

impl LocalEvidence {
    pub fn new(root: PathBuf) -> Self {
        LocalEvidence {
            root,
            append_lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
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

    /// Where a recorded artifact lives; refuses records whose path would leave the run's
    /// folder (records come from the database, which we do not trust blindly).
    pub fn artifact_path(&self, record: &EvidenceRecord) -> Result<PathBuf, EvidenceError> {
        let file = record_file_name(record).map_err(err)?;
        Ok(self.root.join(&record.run_id).join(file))
    }

    /// The records listed in a run's `manifest.jsonl` (empty when the run has none).
    pub fn read_manifest(&self, run_id: &str) -> Result<Vec<EvidenceRecord>, EvidenceError> {
        if !safe_component(run_id) {
            return Err(err(format!("`{run_id}` is not a usable run id")));
        }
        let path = self.root.join(run_id).join(MANIFEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(err(format!("cannot read {}: {e}", path.display()))),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    err(format!(
                        "{}:{}: not an evidence record: {e}",
                        path.display(),
                        i + 1
                    ))
                })
            })
            .collect()
    }

    /// Re-hash every recorded artifact of a run and look for files no record mentions.
    /// Reads files synchronously: call it from `spawn_blocking` inside a server.
    pub fn verify_run(&self, run_id: &str, records: &[EvidenceRecord]) -> EvidenceVerifyReport {
        let mut report = EvidenceVerifyReport {
            run_id: run_id.to_string(),
            artifacts: Vec::new(),
            unlisted: Vec::new(),
            partial: Vec::new(),
            folder_error: None,
        };
        if !safe_component(run_id) {
            report.folder_error = Some(format!("`{run_id}` is not a usable run id"));
            return report;
        }
        let dir = self.root.join(run_id);
        let mut listed = BTreeSet::new();
        for record in records {
            let status = match record_file_name(record) {
                Err(reason) => ArtifactStatus::InvalidRecord { reason },
                Ok(_) if record.run_id != run_id => ArtifactStatus::InvalidRecord {
                    reason: format!("the record belongs to run `{}`", record.run_id),
                },
                Ok(file) => {
                    listed.insert(file.to_string());
                    check_file(&dir.join(file), record)
                }
            };
            report.artifacts.push(ArtifactCheck {
                evidence_id: record.evidence_id.clone(),
                path: record.path.clone(),
                status,
            });
        }
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                for name in names {
                    if name == MANIFEST || name == SHA256SUMS || listed.contains(&name) {
                        continue;
                    }
                    if name.ends_with(PARTIAL_SUFFIX) {
                        report.partial.push(name);
                    } else {
                        report.unlisted.push(name);
                    }
                }
            }
            // No folder: fine when there are no records; each record says `missing` otherwise.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => report.folder_error = Some(format!("cannot list {}: {e}", dir.display())),
        }
        report
    }
}

/// The file name in `record.path`, which must be `<run id>/<file>`.
fn record_file_name(record: &EvidenceRecord) -> Result<&str, String> {
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

fn check_file(path: &Path, record: &EvidenceRecord) -> ArtifactStatus {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return ArtifactStatus::Missing,
        Err(e) => {
            return ArtifactStatus::Unreadable {
                reason: e.to_string(),
            }
        }
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes: u64 = 0;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                bytes += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return ArtifactStatus::Unreadable {
                    reason: e.to_string(),
                }
            }
        }
    }
    let actual = hex::encode(hasher.finalize());
    if bytes != record.bytes {
        ArtifactStatus::SizeMismatch {
            expected: record.bytes,
            actual: bytes,
        }
    } else if !actual.eq_ignore_ascii_case(&record.sha256) {
        ArtifactStatus::HashMismatch {
            expected: record.sha256.clone(),
            actual,
        }
    } else {
        ArtifactStatus::Ok
    }
}

/// The outcome of re-hashing one artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ArtifactStatus {
    Ok,
    Missing,
    HashMismatch {
        expected: String,
        actual: String,
    },
    SizeMismatch {
        expected: u64,
        actual: u64,
    },
    Unreadable {
        reason: String,
    },
    /// The record itself is unusable (a path outside the run's folder, another run's id).
    InvalidRecord {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactCheck {
    pub evidence_id: String,
    pub path: String,
    #[serde(flatten)]
    pub status: ArtifactStatus,
}

/// What `cordon evidence verify RUN` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvidenceVerifyReport {
    pub run_id: String,
    pub artifacts: Vec<ArtifactCheck>,
    /// Files in the run's folder that no record mentions.
    pub unlisted: Vec<String>,
    /// Abandoned `.partial` files (a snapshot that failed); reported, never evidence.
    pub partial: Vec<String>,
    /// The folder exists but could not be listed.
    pub folder_error: Option<String>,
}

impl EvidenceVerifyReport {
    /// True only when every artifact matches and nothing unrecorded sits in the folder.
    pub fn ok(&self) -> bool {
        self.folder_error.is_none()
            && self.unlisted.is_empty()
            && self
                .artifacts
                .iter()
                .all(|a| a.status == ArtifactStatus::Ok)
    }
}

impl fmt::Display for EvidenceVerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.artifacts {
            let what = match &a.status {
                ArtifactStatus::Ok => "ok".to_string(),
                ArtifactStatus::Missing => "MISSING".to_string(),
                ArtifactStatus::HashMismatch { expected, actual } => {
                    format!("HASH MISMATCH (recorded {expected}, found {actual})")
                }
                ArtifactStatus::SizeMismatch { expected, actual } => {
                    format!("SIZE MISMATCH (recorded {expected} bytes, found {actual})")
                }
                ArtifactStatus::Unreadable { reason } => format!("UNREADABLE ({reason})"),
                ArtifactStatus::InvalidRecord { reason } => format!("INVALID RECORD ({reason})"),
            };
            writeln!(f, "{}  {}: {what}", a.evidence_id, a.path)?;
        }
        for u in &self.unlisted {
            writeln!(f, "{}/{u}: NOT IN ANY RECORD", self.run_id)?;
        }
        for p in &self.partial {
            writeln!(
                f,
                "{}/{p}: incomplete (abandoned write), not evidence",
                self.run_id
            )?;
        }
        if let Some(e) = &self.folder_error {
            writeln!(f, "{e}")?;
        }
        write!(
            f,
            "{}: {} artifact(s), {}",
            self.run_id,
            self.artifacts.len(),
            if self.ok() {
                "verified"
            } else {
                "VERIFICATION FAILED"
            }
        )
    }
}

/// The evidence sink of one action call. Cheap to clone; clones share what was finished.
#[derive(Debug, Clone)]
pub struct CallEvidence {
    store: LocalEvidence,
    run_id: String,
    step_id: String,
    finished: Arc<Mutex<Vec<EvidenceRecord>>>,
}

impl CallEvidence {
    /// The artifacts finished through this sink so far, emptying the list (the executor
    /// stores them with the step result).
    pub fn take_records(&self) -> Vec<EvidenceRecord> {
        match self.finished.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    fn run_dir(&self) -> PathBuf {
        self.store.root.join(&self.run_id)
    }
}

#[async_trait]
impl EvidenceSink for CallEvidence {
    async fn create(&self, meta: EvidenceMeta) -> Result<Box<dyn EvidenceWriter>, EvidenceError> {
        if !safe_component(&self.run_id) {
            return Err(err(format!("`{}` is not a usable run id", self.run_id)));
        }
        let dir = self.run_dir();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        let evidence_id = ulid::Ulid::new().to_string();
        let ext = sanitize_extension(&meta.extension);
        let file_name = format!("{evidence_id}.{ext}");
        let partial_path = dir.join(format!("{file_name}{PARTIAL_SUFFIX}"));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial_path)
            .await
            .map_err(|e| err(format!("cannot create {}: {e}", partial_path.display())))?;
        Ok(Box::new(LocalWriter {
            sink: self.clone(),
            meta,
            evidence_id,
            file_name,
            partial_path,
            out: BufWriter::with_capacity(64 * 1024, file),
            hasher: Sha256::new(),
            bytes: 0,
            records: 0,
        }))
    }
}

/// Extensions become part of a file name: keep them short and plain.
fn sanitize_extension(ext: &str) -> String {
    let ext = ext.trim_start_matches('.').to_ascii_lowercase();
    if !ext.is_empty() && ext.len() <= 10 && ext.chars().all(|c| c.is_ascii_alphanumeric()) {
        ext
    } else {
        "bin".to_string()
    }
}

struct LocalWriter {
    sink: CallEvidence,
    meta: EvidenceMeta,
    evidence_id: String,
    file_name: String,
    partial_path: PathBuf,
    out: BufWriter<tokio::fs::File>,
    hasher: Sha256,
    bytes: u64,
    records: u64,
}

#[async_trait]
impl EvidenceWriter for LocalWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), EvidenceError> {
        self.out
            .write_all(chunk)
            .await
            .map_err(|e| err(format!("cannot write {}: {e}", self.partial_path.display())))?;
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    fn add_records(&mut self, n: u64) {
        self.records = self.records.saturating_add(n);
    }

    async fn finish(self: Box<Self>) -> Result<EvidenceRecord, EvidenceError> {
        let LocalWriter {
            sink,
            meta,
            evidence_id,
            file_name,
            partial_path,
            mut out,
            hasher,
            bytes,
            records,
        } = *self;
        let dir = sink.run_dir();
        let io_err = |what: &str, path: &Path, e: io::Error| {
            err(format!("cannot {what} {}: {e}", path.display()))
        };
        out.flush()
            .await
            .map_err(|e| io_err("write", &partial_path, e))?;
        let file = out.into_inner();
        file.sync_all()
            .await
            .map_err(|e| io_err("fsync", &partial_path, e))?;
        drop(file);
        let final_path = dir.join(&file_name);
        tokio::fs::rename(&partial_path, &final_path)
            .await
            .map_err(|e| io_err("rename", &partial_path, e))?;

        let record = EvidenceRecord {
            evidence_id,
            run_id: sink.run_id.clone(),
            step_id: sink.step_id.clone(),
            path: format!("{}/{file_name}", sink.run_id),
            sha256: hex::encode(hasher.finalize()),
            bytes,
            records,
            collected_at: crate::time::now(),
            meta,
        };
        let mut manifest_line = serde_json::to_string(&record)
            .map_err(|e| err(format!("cannot encode the manifest record: {e}")))?;
        manifest_line.push('\n');
        let sums_line = format!("{}  {file_name}\n", record.sha256);
        {
            let _guard = sink.store.append_lock.lock().await;
            append_line(&dir.join(MANIFEST), &manifest_line).await?;
            append_line(&dir.join(SHA256SUMS), &sums_line).await?;
        }
        // The rename and any newly created manifest files are durable only once the
        // folder itself is synced.
        let d = tokio::fs::File::open(&dir)
            .await
            .map_err(|e| io_err("open", &dir, e))?;
        d.sync_all().await.map_err(|e| io_err("fsync", &dir, e))?;

        match sink.finished.lock() {
            Ok(mut v) => v.push(record.clone()),
            Err(poisoned) => poisoned.into_inner().push(record.clone()),
        }
        Ok(record)
    }
}

/// One whole line, appended in a single write (O_APPEND) and synced.
async fn append_line(path: &Path, line: &str) -> Result<(), EvidenceError> {
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|e| err(format!("cannot open {}: {e}", path.display())))?;
    f.write_all(line.as_bytes())
        .await
        .map_err(|e| err(format!("cannot append to {}: {e}", path.display())))?;
    f.sync_all()
        .await
        .map_err(|e| err(format!("cannot fsync {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(ext: &str) -> EvidenceMeta {
        EvidenceMeta {
            connector_type: "okta".into(),
            instance: "okta-prod".into(),
            action: "snapshot_system_log".into(),
            extension: ext.into(),
            media_type: "application/x-ndjson".into(),
            source: json!({"since": "2024-01-01T00:00:00Z"}),
        }
    }

    async fn write_artifact(sink: &CallEvidence, chunks: &[&[u8]], records: u64) -> EvidenceRecord {
        let mut w = sink.create(meta("jsonl")).await.unwrap();
        for c in chunks {
            w.write(c).await.unwrap();
        }
        w.add_records(records);
        w.finish().await.unwrap()
    }

    #[tokio::test]
    async fn streams_hashes_and_records_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalEvidence::new(dir.path().to_path_buf());
        let sink = store.sink("run-1", "snap");
        let rec = write_artifact(&sink, &[b"{\"a\":1}\n", b"{\"a\":2}\n"], 2).await;
        let content = b"{\"a\":1}\n{\"a\":2}\n";
        assert_eq!(rec.sha256, hex::encode(Sha256::digest(content)));
        assert_eq!(rec.bytes, content.len() as u64);
        assert_eq!(rec.records, 2);
        assert_eq!(rec.run_id, "run-1");
        assert_eq!(rec.step_id, "snap");
        assert_eq!(rec.path, format!("run-1/{}.jsonl", rec.evidence_id));
        assert!(ulid::Ulid::from_string(&rec.evidence_id).is_ok());
        assert!(crate::time::parse(&rec.collected_at).is_some());
        let on_disk = std::fs::read(store.artifact_path(&rec).unwrap()).unwrap();
        assert_eq!(on_disk, content);

        let rec2 = write_artifact(&sink, &[b"second"], 1).await;
        assert_eq!(sink.take_records(), vec![rec.clone(), rec2.clone()]);
        assert!(sink.take_records().is_empty());

        assert_eq!(
            store.read_manifest("run-1").unwrap(),
            vec![rec.clone(), rec2.clone()]
        );
        let sums = std::fs::read_to_string(dir.path().join("run-1").join(SHA256SUMS)).unwrap();
        assert_eq!(
            sums,
            format!(
                "{}  {}.jsonl\n{}  {}.jsonl\n",
                rec.sha256, rec.evidence_id, rec2.sha256, rec2.evidence_id
            )
        );
        let report = store.verify_run("run-1", &[rec, rec2]);
        assert!(report.ok(), "{report}");
        assert_eq!(report.artifacts.len(), 2);
    }

    #[tokio::test]
    async fn sha256sum_accepts_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalEvidence::new(dir.path().to_path_buf());
        write_artifact(&store.sink("r", "s"), &[b"hello\n"], 1).await;
        // Standard tools must verify the folder; skip quietly only where the tool is absent.
        match std::process::Command::new("sha256sum")
            .arg("-c")
            .arg(SHA256SUMS)
            .current_dir(dir.path().join("r"))
            .output()
        {
            Ok(out) => assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            ),
            Err(e) => eprintln!("sha256sum not available, skipped: {e}"),
        }
    }

    #[tokio::test]
    async fn tampering_and_missing_files_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalEvidence::new(dir.path().to_path_buf());
        let sink = store.sink("run-2", "snap");
        let a = write_artifact(&sink, &[b"original content"], 1).await;
        let b = write_artifact(&sink, &[b"to be deleted"], 1).await;
        let c = write_artifact(&sink, &[b"short"], 1).await;
        // Same size, different bytes.
        std::fs::write(store.artifact_path(&a).unwrap(), b"Original content").unwrap();
        std::fs::remove_file(store.artifact_path(&b).unwrap()).unwrap();
        std::fs::write(store.artifact_path(&c).unwrap(), b"longer now").unwrap();
        std::fs::write(dir.path().join("run-2").join("planted.txt"), b"x").unwrap();

        let report = store.verify_run("run-2", &[a.clone(), b, c]);
        assert!(!report.ok());
        assert!(matches!(
            report.artifacts[0].status,
            ArtifactStatus::HashMismatch { .. }
        ));
        assert_eq!(report.artifacts[1].status, ArtifactStatus::Missing);
        assert_eq!(
            report.artifacts[2].status,
            ArtifactStatus::SizeMismatch {
                expected: 5,
                actual: 10
            }
        );
        assert_eq!(report.unlisted, vec!["planted.txt".to_string()]);
        let text = report.to_string();
        assert!(
            text.contains("HASH MISMATCH")
                && text.contains("MISSING")
                && text.contains("planted.txt")
        );

        // A record pointing outside the run folder is refused, not followed.
        let mut evil = a;
        evil.path = "run-2/../../etc/passwd".into();
        let report = store.verify_run("run-2", &[evil.clone()]);
        assert!(matches!(
            report.artifacts[0].status,
            ArtifactStatus::InvalidRecord { .. }
        ));
        assert!(store.artifact_path(&evil).is_err());
    }

    #[tokio::test]
    async fn abandoned_writer_leaves_only_a_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalEvidence::new(dir.path().to_path_buf());
        let sink = store.sink("run-3", "snap");
        let good = write_artifact(&sink, &[b"kept"], 1).await;
        {
            let mut w = sink.create(meta("json")).await.unwrap();
            w.write(b"[1, 2, ").await.unwrap();
            // Dropped without finish: the vendor connection died mid-body.
        }
        assert_eq!(sink.take_records(), vec![good.clone()]);
        assert_eq!(store.read_manifest("run-3").unwrap(), vec![good.clone()]);
        let report = store.verify_run("run-3", &[good]);
        assert!(report.ok(), "{report}");
        assert_eq!(report.partial.len(), 1);
        assert!(report.partial[0].ends_with(".json.partial"));
    }

    #[tokio::test]
    async fn unsafe_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalEvidence::new(dir.path().to_path_buf());
        assert!(store
            .sink("../escape", "s")
            .create(meta("txt"))
            .await
            .is_err());
        assert_eq!(sanitize_extension("../x"), "bin");
        assert_eq!(sanitize_extension(".JSONL"), "jsonl");
        assert!(store.verify_run("..", &[]).folder_error.is_some());
        // A run without evidence verifies trivially.
        assert!(store.verify_run("never-ran", &[]).ok());
    }
}
