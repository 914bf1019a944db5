//! `cordon evidence verify RUN`: every artifact re-hashed and checked against four accounts of
//! it that must agree.
//!
//! The root of trust is the audit trail: its `evidence.collected` events carry each
//! artifact's id, path, SHA-256, size and source, and the chain's hashes make a silent edit
//! of them impossible (the chain itself is checked first). Against each audited record this
//! compares the database's `evidence` row, the backend's manifest line and `sha256sum` line,
//! and the bytes themselves (streamed and re-hashed). Every file the backend holds must
//! belong to a record.
//!
//! Backends write an artifact's manifest line before the artifact itself appears. A manifest
//! line with no audit event and no database row is `unrecorded` when its file is absent
//! (the write stopped before the artifact was complete) or present with exactly the bytes the
//! line describes (the process stopped, kill -9 or power loss, between the write and the
//! commit of its record; the step then ran again and wrote a new artifact). It is reported,
//! is not evidence, is never exported, and does not fail verification. Anything else without
//! a record (a file no line accounts for, an unrecorded file whose bytes differ from its
//! line, an unreadable line) fails it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use cordon_connectors::{EvidenceMeta, EvidenceRecord};
use serde::Serialize;
use serde_json::Value;

use super::{record_file_name, EvidenceStore, Hashed, RunListing};
use crate::store::{AuditEvent, Store, StoreError};

/// One thing wrong with one artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// The artifact's bytes are gone.
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
    /// No manifest line for the artifact.
    ManifestMissing,
    /// The manifest line differs from the audited record in these fields.
    ManifestEdited {
        origin: String,
        fields: Vec<String>,
    },
    /// More than one manifest line for the artifact.
    ManifestDuplicated {
        origins: Vec<String>,
    },
    /// No `sha256sum` line for the artifact's file.
    SumsMissing,
    /// The `sha256sum` line names another hash.
    SumsEdited {
        origin: String,
        found: String,
    },
    /// A database record with no `evidence.collected` audit event.
    NotAudited,
    /// An audited artifact without its database record.
    NotInDatabase,
    /// The database record differs from the audited record in these fields.
    DatabaseMismatch {
        fields: Vec<String>,
    },
}

impl Problem {
    /// The problem's stable name (as in the JSON report).
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::Missing => "missing",
            Problem::HashMismatch { .. } => "hash_mismatch",
            Problem::SizeMismatch { .. } => "size_mismatch",
            Problem::Unreadable { .. } => "unreadable",
            Problem::InvalidRecord { .. } => "invalid_record",
            Problem::ManifestMissing => "manifest_missing",
            Problem::ManifestEdited { .. } => "manifest_edited",
            Problem::ManifestDuplicated { .. } => "manifest_duplicated",
            Problem::SumsMissing => "sums_missing",
            Problem::SumsEdited { .. } => "sums_edited",
            Problem::NotAudited => "not_audited",
            Problem::NotInDatabase => "not_in_database",
            Problem::DatabaseMismatch { .. } => "database_mismatch",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => write!(f, "MISSING"),
            Problem::HashMismatch { expected, actual } => {
                write!(f, "HASH MISMATCH (recorded {expected}, found {actual})")
            }
            Problem::SizeMismatch { expected, actual } => {
                write!(
                    f,
                    "SIZE MISMATCH (recorded {expected} bytes, found {actual})"
                )
            }
            Problem::Unreadable { reason } => write!(f, "UNREADABLE ({reason})"),
            Problem::InvalidRecord { reason } => write!(f, "INVALID RECORD ({reason})"),
            Problem::ManifestMissing => write!(f, "MANIFEST LINE MISSING"),
            Problem::ManifestEdited { origin, fields } => write!(
                f,
                "MANIFEST EDITED ({origin} differs from the audited record in {})",
                fields.join(", ")
            ),
            Problem::ManifestDuplicated { origins } => {
                write!(f, "MANIFEST DUPLICATED ({})", origins.join(", "))
            }
            Problem::SumsMissing => write!(f, "SHA256SUMS LINE MISSING"),
            Problem::SumsEdited { origin, found } => {
                write!(f, "SHA256SUMS EDITED ({origin} says {found})")
            }
            Problem::NotAudited => write!(
                f,
                "NOT IN THE AUDIT TRAIL (a database record no evidence.collected event backs)"
            ),
            Problem::NotInDatabase => write!(f, "DATABASE RECORD MISSING"),
            Problem::DatabaseMismatch { fields } => write!(
                f,
                "DATABASE RECORD EDITED (differs from the audited record in {})",
                fields.join(", ")
            ),
        }
    }
}

/// One artifact's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactCheck {
    pub evidence_id: String,
    pub path: String,
    /// `ok`, or the kind of the first problem.
    pub status: &'static str,
    pub problems: Vec<Problem>,
}

impl ArtifactCheck {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A file written but never recorded (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unrecorded {
    pub evidence_id: String,
    pub file: String,
    /// False when the artifact itself was never completed (only its manifest line exists).
    pub complete: bool,
}

/// What `cordon evidence verify RUN` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvidenceVerifyReport {
    pub run_id: String,
    /// Where the evidence is kept.
    pub store: String,
    pub artifacts: Vec<ArtifactCheck>,
    /// Written but never recorded: reported, not evidence, not a failure.
    pub unrecorded: Vec<Unrecorded>,
    /// Files that no record, audited or not, mentions.
    pub unlisted: Vec<String>,
    /// Writes that never finished; reported, never evidence.
    pub partial: Vec<String>,
    /// Run-level problems: stray manifest or checksum lines, unusable audit events.
    pub problems: Vec<String>,
    /// The audit chain's first problem (`None`: intact).
    pub audit_chain: Option<String>,
    /// The backend could not be read.
    pub store_error: Option<String>,
    /// The audited records, in audit order (what an export bundles).
    #[serde(skip)]
    pub audited: Vec<EvidenceRecord>,
}

impl EvidenceVerifyReport {
    /// True only when the chain is intact, every artifact matches everywhere and nothing
    /// unaccounted for sits in the store.
    pub fn ok(&self) -> bool {
        self.audit_chain.is_none()
            && self.store_error.is_none()
            && self.problems.is_empty()
            && self.unlisted.is_empty()
            && self.artifacts.iter().all(ArtifactCheck::ok)
    }

    pub fn failed_count(&self) -> usize {
        self.artifacts.iter().filter(|a| !a.ok()).count()
    }

    /// The counts recorded in the `evidence.verified` audit event.
    pub fn audit_details(&self) -> Value {
        serde_json::json!({
            "ok": self.ok(),
            "store": self.store,
            "artifacts": self.artifacts.iter().map(|a| serde_json::json!({
                "evidence_id": a.evidence_id, "status": a.status,
            })).collect::<Vec<_>>(),
            "counts": {
                "artifacts": self.artifacts.len(),
                "ok": self.artifacts.len() - self.failed_count(),
                "failed": self.failed_count(),
                "unrecorded": self.unrecorded.len(),
                "unlisted": self.unlisted.len(),
                "problems": self.problems.len(),
            },
            "audit_chain_ok": self.audit_chain.is_none(),
        })
    }
}

impl fmt::Display for EvidenceVerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = &self.audit_chain {
            writeln!(f, "AUDIT CHAIN BROKEN: {e}")?;
        }
        if let Some(e) = &self.store_error {
            writeln!(f, "STORE UNREADABLE: {e}")?;
        }
        for a in &self.artifacts {
            let what = if a.ok() {
                "ok".to_string()
            } else {
                a.problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            writeln!(f, "{}  {}: {what}", a.evidence_id, a.path)?;
        }
        for u in &self.unlisted {
            writeln!(f, "{}/{u}: NOT IN ANY RECORD", self.run_id)?;
        }
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        for u in &self.unrecorded {
            let what = if u.complete {
                "written, but the process stopped before recording it"
            } else {
                "its write stopped before the artifact was complete; only its manifest line exists"
            };
            writeln!(
                f,
                "{}/{}: unrecorded ({what}; not evidence)",
                self.run_id, u.file
            )?;
        }
        for p in &self.partial {
            writeln!(
                f,
                "{}/{p}: incomplete (abandoned write), not evidence",
                self.run_id
            )?;
        }
        write!(
            f,
            "{}: {} artifact(s) in {}, {}",
            self.run_id,
            self.artifacts.len(),
            self.store,
            if self.ok() {
                "verified".to_string()
            } else {
                format!("VERIFICATION FAILED ({} bad)", self.failed_count())
            }
        )
    }
}

/// The record an `evidence.collected` event describes.
pub fn audited_record(ev: &AuditEvent) -> Result<EvidenceRecord, String> {
    let d = &ev.details;
    let s = |k: &str| {
        d.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("no `{k}`"))
    };
    let u = |k: &str| {
        d.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("no `{k}`"))
    };
    let collector = d.get("collector").ok_or("no `collector`")?;
    let meta: EvidenceMeta = serde_json::from_value(d.get("source").cloned().unwrap_or_default())
        .map_err(|e| format!("`source`: {e}"))?;
    Ok(EvidenceRecord {
        evidence_id: s("evidence_id")?,
        run_id: ev
            .run_id
            .clone()
            .or_else(|| {
                collector
                    .get("run")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .ok_or("no run")?,
        step_id: collector
            .get("step")
            .and_then(Value::as_str)
            .ok_or("no `collector.step`")?
            .to_string(),
        path: s("path")?,
        sha256: s("sha256")?,
        bytes: u("bytes")?,
        records: u("records")?,
        collected_at: s("collected_at")?,
        meta,
    })
}

/// The fields in which two records differ (`meta.*` named one level down), compared as
/// canonical JSON so that number spellings do not matter.
pub fn differing_fields(a: &EvidenceRecord, b: &EvidenceRecord) -> Vec<String> {
    fn canon(v: Option<&Value>) -> String {
        v.and_then(|v| serde_json_canonicalizer::to_string(v).ok())
            .unwrap_or_default()
    }
    fn diff(prefix: &str, a: &Value, b: &Value, out: &mut Vec<String>, depth: usize) {
        let keys: BTreeSet<&String> = a
            .as_object()
            .into_iter()
            .flat_map(|m| m.keys())
            .chain(b.as_object().into_iter().flat_map(|m| m.keys()))
            .collect();
        for k in keys {
            let (x, y) = (a.get(k), b.get(k));
            if canon(x) == canon(y) {
                continue;
            }
            let name = format!("{prefix}{k}");
            match (x, y) {
                (Some(x @ Value::Object(_)), Some(y @ Value::Object(_))) if depth == 0 => {
                    diff(&format!("{name}."), x, y, out, depth + 1)
                }
                _ => out.push(name),
            }
        }
    }
    let (Ok(a), Ok(b)) = (serde_json::to_value(a), serde_json::to_value(b)) else {
        return vec!["(unencodable record)".into()];
    };
    let mut out = Vec::new();
    diff("", &a, &b, &mut out, 0);
    out
}

/// Verify one run's evidence (see the module documentation). Store errors are errors;
/// everything found wrong with the evidence is in the report.
pub async fn verify_run(
    store: &dyn Store,
    evidence: &EvidenceStore,
    run_id: &str,
) -> Result<EvidenceVerifyReport, StoreError> {
    let db_records = store.evidence(run_id).await?;
    let all_events = store.audit_events(None).await?;
    let head = store.audit_head().await?;
    let chain = crate::audit::verify(&all_events, head.as_ref());
    let mut report = EvidenceVerifyReport {
        run_id: run_id.to_string(),
        store: evidence.describe(),
        artifacts: Vec::new(),
        unrecorded: Vec::new(),
        unlisted: Vec::new(),
        partial: Vec::new(),
        problems: Vec::new(),
        audit_chain: (!chain.ok).then(|| {
            format!(
                "event {}: {}",
                chain
                    .first_bad
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "?".into()),
                chain.problem.clone().unwrap_or_default()
            )
        }),
        store_error: None,
        audited: Vec::new(),
    };

    // The audited records, in chain order.
    let mut audited: Vec<EvidenceRecord> = Vec::new();
    for ev in all_events
        .iter()
        .filter(|e| e.run_id.as_deref() == Some(run_id) && e.action == "evidence.collected")
    {
        match audited_record(ev) {
            Ok(r) if audited.iter().any(|a| a.evidence_id == r.evidence_id) => {
                report.problems.push(format!(
                    "audit event {}: a second evidence.collected for {}",
                    ev.seq, r.evidence_id
                ))
            }
            Ok(r) => audited.push(r),
            Err(e) => report.problems.push(format!(
                "audit event {}: evidence.collected without a usable record ({e})",
                ev.seq
            )),
        }
    }
    drop(all_events);

    let listing = match evidence.listing(run_id).await {
        Ok(l) => l,
        Err(e) => {
            report.store_error = Some(e.0);
            RunListing::default()
        }
    };
    report.partial = listing.partial.clone();

    let mut db: BTreeMap<&str, &EvidenceRecord> = db_records
        .iter()
        .map(|r| (r.evidence_id.as_str(), r))
        .collect();
    let mut files_used: BTreeSet<String> = BTreeSet::new();
    let mut manifest_used = vec![false; listing.manifest.len()];
    let mut sums_used = vec![false; listing.sums.len()];

    // Audited artifacts first (in audit order), then database records nobody audited.
    let mut subjects: Vec<(EvidenceRecord, bool)> =
        audited.iter().cloned().map(|r| (r, true)).collect();
    for r in &db_records {
        if !audited.iter().any(|a| a.evidence_id == r.evidence_id) {
            subjects.push((r.clone(), false));
        }
    }

    for (expected, is_audited) in subjects {
        let id = expected.evidence_id.clone();
        let mut problems = Vec::new();
        match (is_audited, db.remove(id.as_str())) {
            (true, None) => problems.push(Problem::NotInDatabase),
            (false, _) => problems.push(Problem::NotAudited),
            (true, Some(d)) => {
                let fields = differing_fields(&expected, d);
                if !fields.is_empty() {
                    problems.push(Problem::DatabaseMismatch { fields });
                }
            }
        }
        let file = match record_file_name(&expected) {
            Ok(f) if expected.run_id == run_id => Some(f.to_string()),
            Ok(_) => {
                problems.push(Problem::InvalidRecord {
                    reason: format!("the record belongs to run `{}`", expected.run_id),
                });
                None
            }
            Err(reason) => {
                problems.push(Problem::InvalidRecord { reason });
                None
            }
        };

        // The manifest.
        let mut matched = Vec::new();
        for (i, line) in listing.manifest.iter().enumerate() {
            let mine = match &line.record {
                Ok(r) => r.evidence_id == id,
                // An edit that broke the JSON still names the artifact, most likely.
                Err(_) => line.raw.contains(&id),
            };
            if mine {
                manifest_used[i] = true;
                matched.push(line);
            }
        }
        match matched.as_slice() {
            [] => problems.push(Problem::ManifestMissing),
            [line] => match &line.record {
                Ok(r) => {
                    let fields = differing_fields(&expected, r);
                    if !fields.is_empty() {
                        problems.push(Problem::ManifestEdited {
                            origin: line.origin.clone(),
                            fields,
                        });
                    }
                }
                Err(e) => problems.push(Problem::ManifestEdited {
                    origin: line.origin.clone(),
                    fields: vec![format!("the whole line ({e})")],
                }),
            },
            many => problems.push(Problem::ManifestDuplicated {
                origins: many.iter().map(|l| l.origin.clone()).collect(),
            }),
        }

        if let Some(file) = &file {
            // The checksum line.
            let mut found_sum = false;
            for (i, s) in listing.sums.iter().enumerate() {
                let mine = match &s.parsed {
                    Some((_, f)) => f == file,
                    None => s.raw.contains(file.as_str()),
                };
                if !mine {
                    continue;
                }
                sums_used[i] = true;
                found_sum = true;
                match &s.parsed {
                    Some((hash, _)) if hash.eq_ignore_ascii_case(&expected.sha256) => {}
                    _ => problems.push(Problem::SumsEdited {
                        origin: s.origin.clone(),
                        found: s.raw.clone(),
                    }),
                }
            }
            if !found_sum {
                problems.push(Problem::SumsMissing);
            }

            // The bytes.
            files_used.insert(file.clone());
            if report.store_error.is_none() {
                match evidence.hash(run_id, file).await {
                    Hashed::Missing => problems.push(Problem::Missing),
                    Hashed::Unreadable(reason) => problems.push(Problem::Unreadable { reason }),
                    Hashed::Found { sha256, bytes } => {
                        if bytes != expected.bytes {
                            problems.push(Problem::SizeMismatch {
                                expected: expected.bytes,
                                actual: bytes,
                            });
                        } else if !sha256.eq_ignore_ascii_case(&expected.sha256) {
                            problems.push(Problem::HashMismatch {
                                expected: expected.sha256.clone(),
                                actual: sha256,
                            });
                        }
                    }
                }
            }
        }
        report.artifacts.push(ArtifactCheck {
            evidence_id: id,
            path: expected.path.clone(),
            status: problems.first().map(Problem::kind).unwrap_or("ok"),
            problems,
        });
    }

    // Files no record mentions: written-but-unrecorded artifacts, or planted.
    for file in &listing.files {
        if files_used.contains(file) {
            continue;
        }
        let orphan = listing.manifest.iter().enumerate().find_map(|(i, l)| {
            let r = l.record.as_ref().ok()?;
            (r.run_id == run_id && record_file_name(r).ok() == Some(file.as_str()))
                .then_some((i, r))
        });
        let Some((i, rec)) = orphan else {
            report.unlisted.push(file.clone());
            continue;
        };
        manifest_used[i] = true;
        let intact = matches!(
            evidence.hash(run_id, file).await,
            Hashed::Found { ref sha256, bytes } if *sha256 == rec.sha256 && bytes == rec.bytes
        );
        for (j, s) in listing.sums.iter().enumerate() {
            if s.parsed.as_ref().is_some_and(|(_, f)| f == file) {
                sums_used[j] = true;
            }
        }
        if intact {
            report.unrecorded.push(Unrecorded {
                evidence_id: rec.evidence_id.clone(),
                file: file.clone(),
                complete: true,
            });
        } else {
            report.unlisted.push(file.clone());
        }
    }
    for (i, line) in listing.manifest.iter().enumerate() {
        if manifest_used[i] {
            continue;
        }
        // A manifest line whose artifact never appeared: the write stopped between the two.
        let incomplete = line.record.as_ref().ok().and_then(|r| {
            let file = record_file_name(r).ok()?;
            (r.run_id == run_id && !listing.files.iter().any(|f| f == file))
                .then(|| (r.evidence_id.clone(), file.to_string()))
        });
        match incomplete {
            Some((evidence_id, file)) => {
                for (j, s) in listing.sums.iter().enumerate() {
                    if s.parsed.as_ref().is_some_and(|(_, f)| *f == file) {
                        sums_used[j] = true;
                    }
                }
                report.unrecorded.push(Unrecorded {
                    evidence_id,
                    file,
                    complete: false,
                });
            }
            None => report.problems.push(format!(
                "{}: a manifest line that no recorded artifact matches",
                line.origin
            )),
        }
    }
    for (i, s) in listing.sums.iter().enumerate() {
        if !sums_used[i] {
            report.problems.push(format!(
                "{}: a checksum line for no recorded artifact (`{}`)",
                s.origin, s.raw
            ));
        }
    }
    report.audited = audited;
    Ok(report)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use serde_json::json;

    use super::super::testutil::write_artifact;
    use super::super::{Collected, LocalEvidence, MANIFEST, SHA256SUMS};
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{AuditDraft, Change, Created, RunRecord, RunStatus};

    /// A database with one run whose collected artifacts are recorded as the runner does.
    pub struct Fixture {
        pub store: Arc<dyn Store>,
        pub run_id: String,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        pub async fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("c.db").display());
            let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.unwrap());
            let run_id = ulid::Ulid::new().to_string();
            let now = crate::time::now();
            let run = RunRecord {
                id: run_id.clone(),
                runbook: "rb".into(),
                runbook_text: "version: 1\n".into(),
                runbook_sha256: "0".repeat(64),
                status: RunStatus::Queued,
                trigger: "cli:test".into(),
                started_by: "test".into(),
                inputs: json!({}),
                concurrency_key: None,
                undo_of: None,
                dry_run: false,
                case_id: run_id.clone(),
                error: None,
                created_at: now,
                started_at: None,
                finished_at: None,
                cancel_requested: false,
            };
            let audit = AuditDraft {
                run_id: Some(run_id.clone()),
                actor: "test".into(),
                action: "run.created".into(),
                details: json!({}),
            };
            assert!(matches!(
                store.create_run(run, audit).await.unwrap(),
                Created::New(_)
            ));
            Fixture {
                store,
                run_id,
                _dir: dir,
            }
        }

        /// Record artifacts exactly as the runner's `on_done` does.
        pub async fn record(&self, collected: Vec<Collected>) {
            let lease = self
                .store
                .acquire_lease(&self.run_id, "test-owner", 60_000, None)
                .await
                .unwrap()
                .unwrap();
            let mut changes = Vec::new();
            let mut audit = Vec::new();
            for c in collected {
                audit.push(crate::exec::runner::collected_event(
                    &self.run_id,
                    &c,
                    "snap",
                    0,
                    "okta-prod",
                ));
                changes.push(Change::Evidence(c.record));
            }
            self.store.commit(&lease, changes, audit).await.unwrap();
            self.store.release_lease(&lease).await.unwrap();
        }
    }

    async fn local_run(
        n: usize,
    ) -> (
        Fixture,
        EvidenceStore,
        tempfile::TempDir,
        Vec<EvidenceRecord>,
    ) {
        let fx = Fixture::new().await;
        let dir = tempfile::tempdir().unwrap();
        let ev = EvidenceStore::Local(LocalEvidence::new(dir.path().to_path_buf()));
        let sink = ev.sink(&fx.run_id, "snap");
        let mut recs = Vec::new();
        for i in 0..n {
            let body = format!("{{\"event\":{i},\"ip\":\"203.0.113.{i}\"}}\n").repeat(50 + i);
            recs.push(write_artifact(&sink, &[body.as_bytes()], 50 + i as u64).await);
        }
        fx.record(sink.take_collected()).await;
        (fx, ev, dir, recs)
    }

    fn flip_random_byte(path: &Path) -> usize {
        use rand::Rng;
        let mut bytes = std::fs::read(path).unwrap();
        let at = rand::thread_rng().gen_range(0..bytes.len());
        bytes[at] ^= 0x01;
        std::fs::write(path, bytes).unwrap();
        at
    }

    fn problems_of<'a>(r: &'a EvidenceVerifyReport, id: &str) -> &'a [Problem] {
        &r.artifacts
            .iter()
            .find(|a| a.evidence_id == id)
            .expect("artifact in the report")
            .problems
    }

    #[tokio::test]
    async fn untouched_evidence_verifies() {
        let (fx, ev, _dir, recs) = local_run(3).await;
        let r = verify_run(fx.store.as_ref(), &ev, &fx.run_id)
            .await
            .unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!(r.artifacts.len(), 3);
        assert!(r.artifacts.iter().all(|a| a.status == "ok"));
        assert_eq!(r.audited, recs);
        assert!(r.to_string().ends_with("verified"), "{r}");
    }

    #[tokio::test]
    async fn one_flipped_byte_anywhere_is_a_hash_mismatch() {
        let (fx, ev, dir, recs) = local_run(3).await;
        let victim = &recs[1];
        let at = flip_random_byte(&dir.path().join(&victim.path));
        let r = verify_run(fx.store.as_ref(), &ev, &fx.run_id)
            .await
            .unwrap();
        assert!(!r.ok(), "byte {at} flipped, still verified");
        assert!(
            matches!(problems_of(&r, &victim.evidence_id), [Problem::HashMismatch { expected, .. }] if *expected == victim.sha256),
            "{r}"
        );
        assert!(problems_of(&r, &recs[0].evidence_id).is_empty());
        assert!(r.to_string().contains(&victim.evidence_id));
    }

    #[tokio::test]
    async fn a_dropped_file_is_missing() {
        let (fx, ev, dir, recs) = local_run(2).await;
        std::fs::remove_file(dir.path().join(&recs[0].path)).unwrap();
        let r = verify_run(fx.store.as_ref(), &ev, &fx.run_id)
            .await
            .unwrap();
        assert!(!r.ok());
        assert_eq!(problems_of(&r, &recs[0].evidence_id), [Problem::Missing]);
        assert_eq!(r.artifacts[0].status, "missing");
    }

    #[tokio::test]
    async fn an_edited_or_removed_manifest_line_is_named() {
        let (fx, ev, dir, recs) = local_run(3).await;
        let manifest = dir.path().join(&fx.run_id).join(MANIFEST);
        let text = std::fs::read_to_string(&manifest).unwrap();
        // Edit the second line's record count, drop the third line.
        let lines: Vec<&str> = text.lines().collect();
        let edited = lines[1].replace("\"records\":51", "\"records\":5");
        assert_ne!(edited, lines[1]);
        std::fs::write(&manifest, format!("{}\n{edited}\n", lines[0])).unwrap();
        let r = verify_run(fx.store.as_ref(), &ev, &fx.run_id)
            .await
            .unwrap();
        assert!(!r.ok());
        assert!(problems_of(&r, &recs[0].evidence_id).is_empty(), "{r}");
        assert_eq!(
            problems_of(&r, &recs[1].evidence_id),
            [Problem::ManifestEdited {
                origin: format!("{MANIFEST}:2"),
                fields: vec!["records".into()]
            }]
        );
        assert_eq!(
            problems_of(&r, &recs[2].evidence_id),
            [Problem::ManifestMissing]
        );
        let text = r.to_string();
        assert!(text.contains("MANIFEST EDITED") && text.contains("MANIFEST LINE MISSING"));

        // A consistent forgery (file, manifest and SHA256SUMS rewritten together) still
        // disagrees with the audit trail.
        let (fx, ev, dir, recs) = local_run(1).await;
        let run_dir = dir.path().join(&fx.run_id);
        let forged = b"{\"event\":0,\"ip\":\"198.51.100.7\"}\n";
        std::fs::write(dir.path().join(&recs[0].path), forged).unwrap();
        let mut rec = recs[0].clone();
        rec.sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(forged));
        rec.bytes = forged.len() as u64;
        std::fs::write(
            run_dir.join(MANIFEST),
            format!("{}\n", serde_json::to_string(&rec).unwrap()),
        )
        .unwrap();
        std::fs::write(
            run_dir.join(SHA256SUMS),
            format!("{}  {}.jsonl\n", rec.sha256, rec.evidence_id),
        )
        .unwrap();
        let r = verify_run(fx.store.as_ref(), &ev, &fx.run_id)
            .await
            .unwrap();
        let kinds: Vec<&str> = problems_of(&r, &rec.evidence_id)
            .iter()
            .map(Problem::kind)
            .collect();
        assert_eq!(
            kinds,
            ["manifest_edited", "sums_edited", "size_mismatch"],
            "{r}"
        );
    }

    #[tokio::test]
    async fn planted_files_unrecorded_writes_and_partial_files() {
        let (fx, ev, dir, recs) = local_run(1).await;
        let run_dir = dir.path().join(&fx.run_id);
        std::fs::write(run_dir.join("planted.txt"), b"x").unwrap();
        let r = verify_run(fx.store.as_ref(), &ev, &fx.run_id)
            .await
            .unwrap();
        assert!(!r.ok());
        assert_eq!(r.unlisted, vec!["planted.txt".to_string()]);
        assert!(r.to_string().contains("planted.txt: NOT IN ANY RECORD"));
        std::fs::remove_file(run_dir.join("planted.txt")).unwrap();

        // A write whose record never reached the database (kill -9 before the commit): the
        // artifact, its manifest and checksum lines exist, nothing else does.
        let sink = ev.sink(&fx.run_id, "snap");
        let orphan = write_artifact(&sink, &[b"never recorded\n"], 1).await;
        let r = verify_run(fx.store.as_ref(), &ev, &fx.run_id)
            .await
            .unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!(r.unrecorded.len(), 1);
        assert_eq!(r.unrecorded[0].evidence_id, orphan.evidence_id);
        assert_eq!(r.artifacts.len(), 1);
        assert_eq!(r.artifacts[0].evidence_id, recs[0].evidence_id);
        // A write that stopped between its manifest line and the artifact's appearance.
        std::fs::rename(
            dir.path().join(&orphan.path),
            dir.path().join(format!("{}.partial", orphan.path)),
        )
        .unwrap();
        let r = verify_run(fx.store.as_ref(), &ev, &fx.run_id)
            .await
            .unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!(r.unrecorded.len(), 1);
        assert!(!r.unrecorded[0].complete);
        assert_eq!(r.partial.len(), 1);
        std::fs::rename(
            dir.path().join(format!("{}.partial", orphan.path)),
            dir.path().join(&orphan.path),
        )
        .unwrap();
        // Tampered with, it is no longer a harmless leftover.
        std::fs::write(dir.path().join(&orphan.path), b"changed\n").unwrap();
        let r = verify_run(fx.store.as_ref(), &ev, &fx.run_id)
            .await
            .unwrap();
        assert!(!r.ok());
        assert!(r
            .unlisted
            .contains(&format!("{}.jsonl", orphan.evidence_id)));
    }

    #[tokio::test]
    async fn the_database_and_the_audit_trail_must_agree() {
        let (fx, ev, _dir, recs) = local_run(1).await;
        // A database record that no audit event backs (inserted behind the engine's back).
        let dir2 = tempfile::tempdir().unwrap();
        let other = EvidenceStore::Local(LocalEvidence::new(dir2.path().to_path_buf()));
        let sink = other.sink(&fx.run_id, "snap");
        let extra = write_artifact(&sink, &[b"extra"], 1).await;
        let lease = fx
            .store
            .acquire_lease(&fx.run_id, "o", 60_000, None)
            .await
            .unwrap()
            .unwrap();
        fx.store
            .commit(&lease, vec![Change::Evidence(extra.clone())], vec![])
            .await
            .unwrap();
        let r = verify_run(fx.store.as_ref(), &ev, &fx.run_id)
            .await
            .unwrap();
        assert!(!r.ok());
        assert!(problems_of(&r, &recs[0].evidence_id).is_empty());
        assert_eq!(
            problems_of(&r, &extra.evidence_id)[0],
            Problem::NotAudited,
            "{r}"
        );
    }

    /// The same tampering against S3, on a bucket under Object Lock: an overwrite becomes a
    /// new version and a delete a delete marker (the locked originals stay), and verification
    /// reads what the bucket now serves.
    #[tokio::test]
    async fn tampering_in_s3_is_detected() {
        use super::super::s3::tests::store;
        use super::super::s3_server;
        use crate::config::{LockMode, ObjectLockSettings};
        let Some(server) = s3_server::start() else {
            return;
        };
        let s3 = store(
            &server,
            Some(ObjectLockSettings {
                mode: LockMode::Governance,
                retain_days: 1,
            }),
        )
        .await;
        let ev = EvidenceStore::S3(s3.clone());
        let fx = Fixture::new().await;
        let sink = ev.sink(&fx.run_id, "snap");
        let mut recs = Vec::new();
        for i in 0..5u8 {
            let body = vec![b'a' + i; 1000 + usize::from(i)];
            recs.push(write_artifact(&sink, &[&body], 1).await);
        }
        fx.record(sink.take_collected()).await;
        let r = verify_run(fx.store.as_ref(), &ev, &fx.run_id)
            .await
            .unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!(r.artifacts.len(), 5);

        let c = s3.client();
        let key = |rel: &str| s3.key(&fx.run_id, rel);
        let bucket = s3.bucket().to_string();
        async fn put(c: &aws_sdk_s3::Client, bucket: &str, k: String, body: Vec<u8>) {
            c.put_object()
                .bucket(bucket)
                .key(k)
                .body(aws_sdk_s3::primitives::ByteStream::from(body))
                .send()
                .await
                .unwrap();
        }
        async fn get(c: &aws_sdk_s3::Client, bucket: &str, k: String) -> Vec<u8> {
            let out = c.get_object().bucket(bucket).key(k).send().await.unwrap();
            out.body.collect().await.unwrap().into_bytes().to_vec()
        }
        // 0: one byte flipped at a random offset.
        let file0 = format!("{}.jsonl", recs[0].evidence_id);
        let mut bytes = get(c, &bucket, key(&file0)).await;
        let at = {
            use rand::Rng;
            rand::thread_rng().gen_range(0..bytes.len())
        };
        bytes[at] ^= 0x20;
        put(c, &bucket, key(&file0), bytes).await;
        // 1: the artifact dropped.
        c.delete_object()
            .bucket(s3.bucket())
            .key(key(&format!("{}.jsonl", recs[1].evidence_id)))
            .send()
            .await
            .unwrap();
        // 2: its manifest line edited.
        let m2 = key(&format!("manifest.d/{}.json", recs[2].evidence_id));
        let text = String::from_utf8(get(c, &bucket, m2.clone()).await).unwrap();
        put(
            c,
            &bucket,
            m2,
            text.replace(&recs[2].sha256, &"0".repeat(64)).into_bytes(),
        )
        .await;
        // 3: its manifest line removed.
        c.delete_object()
            .bucket(s3.bucket())
            .key(key(&format!("manifest.d/{}.json", recs[3].evidence_id)))
            .send()
            .await
            .unwrap();

        let r = verify_run(fx.store.as_ref(), &ev, &fx.run_id)
            .await
            .unwrap();
        assert!(!r.ok());
        assert!(
            matches!(
                problems_of(&r, &recs[0].evidence_id),
                [Problem::HashMismatch { .. }]
            ),
            "byte {at}: {r}"
        );
        assert_eq!(problems_of(&r, &recs[1].evidence_id), [Problem::Missing]);
        assert_eq!(
            problems_of(&r, &recs[2].evidence_id),
            [Problem::ManifestEdited {
                origin: format!("manifest.d/{}.json", recs[2].evidence_id),
                fields: vec!["sha256".into()]
            }]
        );
        assert_eq!(
            problems_of(&r, &recs[3].evidence_id),
            [Problem::ManifestMissing]
        );
        assert!(problems_of(&r, &recs[4].evidence_id).is_empty(), "{r}");
        let text = r.to_string();
        for rec in &recs[..4] {
            assert!(text.contains(&rec.evidence_id), "{text}");
        }
    }

    #[test]
    fn differing_fields_are_named() {
        let a = EvidenceRecord {
            evidence_id: "E".into(),
            run_id: "R".into(),
            step_id: "s".into(),
            path: "R/E.jsonl".into(),
            sha256: "a".repeat(64),
            bytes: 10,
            records: 1,
            collected_at: "2026-01-01T00:00:00Z".into(),
            meta: super::super::testutil::meta("jsonl"),
        };
        let mut b = a.clone();
        assert!(differing_fields(&a, &b).is_empty());
        b.bytes = 11;
        b.meta.source = json!({"since": "2023-01-01T00:00:00Z"});
        assert_eq!(differing_fields(&a, &b), vec!["bytes", "meta.source"]);
    }
}
