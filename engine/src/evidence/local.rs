//! The local evidence store: one folder per run under the evidence root.
//!
//! ```text
//! <root>/<run id>/<evidence id>.<ext>    the artifact, exactly as the vendor sent it
//! <root>/<run id>/manifest.jsonl         one EvidenceRecord (JSON) per finished artifact
//! <root>/<run id>/SHA256SUMS             `<sha256>  <file>` lines: `sha256sum -c SHA256SUMS`
//! ```
//!
//! Artifacts stream through a writer that hashes as it writes (nothing is held whole),
//! into `<file>.partial`; `finish` fsyncs the file, appends (and fsyncs) its manifest and
//! checksum lines, renames it into place and fsyncs the folder. A snapshot that fails
//! half-way leaves only a `.partial` file, which is never listed as evidence.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use cordon_connectors::evidence::EvidenceError;
use cordon_connectors::{EvidenceMeta, EvidenceRecord, EvidenceWriter};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

use super::{
    err, manifest_line, record_file_name, safe_component, ArtifactReader, CallEvidence, Collected,
    ManifestLine, RunListing, Stored, SumsLine, MANIFEST, PARTIAL_SUFFIX, SHA256SUMS,
};

/// Evidence kept in a local directory.
#[derive(Debug, Clone)]
pub struct LocalEvidence {
    root: PathBuf,
    /// Serialises manifest appends from concurrent writers of this process.
    append_lock: Arc<tokio::sync::Mutex<()>>,
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

    /// Where a recorded artifact lives; refuses records whose path would leave the run's
    /// folder (records come from the database, which we do not trust blindly).
    pub fn artifact_path(&self, record: &EvidenceRecord) -> Result<PathBuf, EvidenceError> {
        let file = record_file_name(record).map_err(err)?;
        Ok(self.root.join(&record.run_id).join(file))
    }

    /// The records listed in a run's `manifest.jsonl` (empty when the run has none).
    pub fn read_manifest(&self, run_id: &str) -> Result<Vec<EvidenceRecord>, EvidenceError> {
        self.listing(run_id)?
            .manifest
            .into_iter()
            .map(|l| l.record.map_err(|e| err(format!("{}: {e}", l.origin))))
            .collect()
    }

    /// The run folder's files, manifest and checksums. Synchronous (file system).
    pub fn listing(&self, run_id: &str) -> Result<RunListing, EvidenceError> {
        if !safe_component(run_id) {
            return Err(err(format!("`{run_id}` is not a usable run id")));
        }
        let dir = self.root.join(run_id);
        let mut listing = RunListing::default();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry =
                        entry.map_err(|e| err(format!("cannot list {}: {e}", dir.display())))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name == MANIFEST || name == SHA256SUMS {
                        continue;
                    }
                    if name.ends_with(PARTIAL_SUFFIX) {
                        listing.partial.push(name);
                    } else {
                        listing.files.push(name);
                    }
                }
            }
            // No folder: a run without evidence.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(listing),
            Err(e) => return Err(err(format!("cannot list {}: {e}", dir.display()))),
        }
        listing.files.sort();
        listing.partial.sort();
        if let Some(text) = read_optional(&dir.join(MANIFEST))? {
            for (i, line) in text.lines().enumerate() {
                if !line.trim().is_empty() {
                    listing
                        .manifest
                        .push(ManifestLine::parse(format!("{MANIFEST}:{}", i + 1), line));
                }
            }
        }
        if let Some(text) = read_optional(&dir.join(SHA256SUMS))? {
            for (i, line) in text.lines().enumerate() {
                if !line.trim().is_empty() {
                    listing
                        .sums
                        .push(SumsLine::parse(format!("{SHA256SUMS}:{}", i + 1), line));
                }
            }
        }
        Ok(listing)
    }

    pub(super) async fn open(
        &self,
        run_id: &str,
        file: &str,
    ) -> Result<Option<ArtifactReader>, EvidenceError> {
        let path = self.root.join(run_id).join(file);
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(Some(Box::pin(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(format!("cannot open {}: {e}", path.display()))),
        }
    }

    pub(super) async fn create(
        &self,
        sink: CallEvidence,
        meta: EvidenceMeta,
        evidence_id: String,
        file_name: String,
    ) -> Result<Box<dyn EvidenceWriter>, EvidenceError> {
        let dir = self.root.join(sink.run_id());
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        let partial_path = dir.join(format!("{file_name}{PARTIAL_SUFFIX}"));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial_path)
            .await
            .map_err(|e| err(format!("cannot create {}: {e}", partial_path.display())))?;
        Ok(Box::new(LocalWriter {
            store: self.clone(),
            sink,
            meta,
            evidence_id,
            file_name,
            dir,
            partial_path,
            out: BufWriter::with_capacity(64 * 1024, file),
            hasher: Sha256::new(),
            bytes: 0,
            records: 0,
        }))
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, EvidenceError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(format!("cannot read {}: {e}", path.display()))),
    }
}

struct LocalWriter {
    store: LocalEvidence,
    sink: CallEvidence,
    meta: EvidenceMeta,
    evidence_id: String,
    file_name: String,
    dir: PathBuf,
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
            store,
            sink,
            meta,
            evidence_id,
            file_name,
            dir,
            partial_path,
            mut out,
            hasher,
            bytes,
            records,
        } = *self;
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

        // The manifest lines go first and the artifact appears last: a process killed in
        // between leaves a manifest line whose file is still `.partial` (an incomplete,
        // unrecorded write that verification reports and tolerates), never a file that no
        // line accounts for.
        let record = sink.record(
            evidence_id,
            &file_name,
            meta,
            hex::encode(hasher.finalize()),
            bytes,
            records,
        );
        let mut line = manifest_line(&record)?;
        line.push('\n');
        let sums_line = format!("{}  {file_name}\n", record.sha256);
        {
            let _guard = store.append_lock.lock().await;
            append_line(&dir.join(MANIFEST), &line).await?;
            append_line(&dir.join(SHA256SUMS), &sums_line).await?;
        }
        let final_path = dir.join(&file_name);
        tokio::fs::rename(&partial_path, &final_path)
            .await
            .map_err(|e| io_err("rename", &partial_path, e))?;
        // The rename and any newly created manifest files are durable only once the
        // folder itself is synced.
        let d = tokio::fs::File::open(&dir)
            .await
            .map_err(|e| io_err("open", &dir, e))?;
        d.sync_all().await.map_err(|e| io_err("fsync", &dir, e))?;

        let root = std::path::absolute(&store.root).unwrap_or_else(|_| store.root.clone());
        sink.push(Collected {
            record: record.clone(),
            stored: Stored::Local {
                root: root.display().to_string(),
                path: record.path.clone(),
            },
        });
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
    use super::super::testutil::{meta, write_artifact};
    use super::super::{EvidenceStore, Hashed};
    use super::*;
    use cordon_connectors::EvidenceSink;

    fn store(dir: &Path) -> EvidenceStore {
        EvidenceStore::Local(LocalEvidence::new(dir.to_path_buf()))
    }

    #[tokio::test]
    async fn streams_hashes_and_records_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
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
        let EvidenceStore::Local(local) = &store else {
            unreachable!()
        };
        let on_disk = std::fs::read(local.artifact_path(&rec).unwrap()).unwrap();
        assert_eq!(on_disk, content);
        assert_eq!(
            store
                .hash("run-1", &format!("{}.jsonl", rec.evidence_id))
                .await,
            Hashed::Found {
                sha256: rec.sha256.clone(),
                bytes: rec.bytes
            }
        );

        let rec2 = write_artifact(&sink, &[b"second"], 1).await;
        let collected = sink.take_collected();
        assert_eq!(
            collected.iter().map(|c| &c.record).collect::<Vec<_>>(),
            vec![&rec, &rec2]
        );
        assert!(matches!(&collected[0].stored, Stored::Local { path, .. } if *path == rec.path));
        assert!(sink.take_collected().is_empty());

        assert_eq!(
            local.read_manifest("run-1").unwrap(),
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
        let listing = store.listing("run-1").await.unwrap();
        assert_eq!(listing.files.len(), 2);
        assert_eq!(listing.manifest.len(), 2);
        assert_eq!(listing.sums.len(), 2);
    }

    #[tokio::test]
    async fn sha256sum_accepts_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        write_artifact(&store.sink("r", "s"), &[b"hello\n"], 1).await;
        let out = std::process::Command::new("sha256sum")
            .arg("-c")
            .arg(SHA256SUMS)
            .current_dir(dir.path().join("r"))
            .output()
            .expect("sha256sum (coreutils) is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    #[tokio::test]
    async fn abandoned_writer_leaves_only_a_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let sink = store.sink("run-3", "snap");
        let good = write_artifact(&sink, &[b"kept"], 1).await;
        {
            let mut w = sink.create(meta("json")).await.unwrap();
            w.write(b"[1, 2, ").await.unwrap();
            // Dropped without finish: the vendor connection died mid-body.
        }
        assert_eq!(
            sink.take_collected()
                .into_iter()
                .map(|c| c.record)
                .collect::<Vec<_>>(),
            vec![good.clone()]
        );
        let listing = store.listing("run-3").await.unwrap();
        assert_eq!(listing.files, vec![format!("{}.jsonl", good.evidence_id)]);
        assert_eq!(listing.manifest.len(), 1);
        assert_eq!(listing.partial.len(), 1);
        assert!(listing.partial[0].ends_with(".json.partial"));
    }

    #[tokio::test]
    async fn unsafe_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        assert!(store
            .sink("../escape", "s")
            .create(meta("txt"))
            .await
            .is_err());
        assert!(store.listing("..").await.is_err());
        assert!(matches!(
            store.hash("run", "../../etc/passwd").await,
            Hashed::Unreadable(_)
        ));
        // A run without evidence has an empty listing.
        let l = store.listing("never-ran").await.unwrap();
        assert!(l.files.is_empty() && l.manifest.is_empty());
    }
}
