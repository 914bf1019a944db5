//! `cordon evidence export RUN`: a tar bundle that a third party verifies with standard tools.
//!
//! ```text
//! cordon-evidence-<run>/README.txt        how to check the bundle
//! cordon-evidence-<run>/manifest.jsonl    one EvidenceRecord per artifact (the audited records)
//! cordon-evidence-<run>/custody.jsonl     the run's evidence.* audit events (seq, prev_hash, hash)
//! cordon-evidence-<run>/<id>.<ext>        the artifacts, byte for byte
//! cordon-evidence-<run>/SHA256SUMS        `sha256sum` lines for every other file
//! ```
//!
//! The run is verified first; a bundle is written only when verification passes. Artifacts
//! are streamed from the backend into the archive (never held whole) and hashed again on the
//! way; a byte that changed since verification aborts the export. The archive is written
//! under a temporary name next to its destination, fsynced and renamed into place.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use cordon_connectors::EvidenceRecord;
use sha2::{Digest, Sha256};

use super::custody::evidence_events;
use super::verify::{verify_run, EvidenceVerifyReport};
use super::{manifest_line, record_file_name, EvidenceStore, SHA256SUMS};
use crate::store::{AuditEvent, Store};

/// What an export came to.
#[derive(Debug)]
pub enum ExportOutcome {
    /// Verification failed: no bundle was written.
    Refused(EvidenceVerifyReport),
    Written(Exported),
}

/// A written bundle.
#[derive(Debug, Clone)]
pub struct Exported {
    pub path: PathBuf,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the whole tar file.
    pub sha256: String,
    pub artifacts: Vec<String>,
    pub report: EvidenceVerifyReport,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot write the bundle {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}")]
    Evidence(String),
}

/// The bundle's top folder.
pub fn bundle_dir(run_id: &str) -> String {
    format!("cordon-evidence-{run_id}")
}

/// Verify, then write the bundle to `out` (see the module documentation).
pub async fn export_run(
    store: &dyn Store,
    evidence: &EvidenceStore,
    run_id: &str,
    out: &Path,
    actor: &str,
) -> Result<ExportOutcome, ExportError> {
    let report = verify_run(store, evidence, run_id).await?;
    if !report.ok() {
        return Ok(ExportOutcome::Refused(report));
    }
    let custody = evidence_events(store, run_id).await?;
    let records = report.audited.clone();
    let handle = tokio::runtime::Handle::current();
    let job = Bundle {
        run_id: run_id.to_string(),
        actor: actor.to_string(),
        records: records.clone(),
        custody,
        store: report.store.clone(),
    };
    let evidence = evidence.clone();
    let out_path = out.to_path_buf();
    let (bytes, sha256) =
        tokio::task::spawn_blocking(move || job.write(&handle, &evidence, &out_path))
            .await
            .map_err(|e| ExportError::Evidence(format!("the export task failed: {e}")))??;
    Ok(ExportOutcome::Written(Exported {
        path: out.to_path_buf(),
        bytes,
        sha256,
        artifacts: records.into_iter().map(|r| r.evidence_id).collect(),
        report,
    }))
}

struct Bundle {
    run_id: String,
    actor: String,
    records: Vec<EvidenceRecord>,
    custody: Vec<AuditEvent>,
    store: String,
}

/// Hashes and counts everything written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Yields exactly `expected` bytes of `inner`, hashing them; a shorter source is an error
/// (the tar header already promised the size).
struct CheckedReader<R> {
    inner: R,
    expected: u64,
    read: u64,
    hasher: Sha256,
    what: String,
}

impl<R: Read> Read for CheckedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.expected - self.read;
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} is shorter than recorded ({} of {} bytes): it changed during the export",
                    self.what, self.read, self.expected
                ),
            ));
        }
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

impl Bundle {
    fn readme(&self, names: &[String]) -> String {
        let dir = bundle_dir(&self.run_id);
        format!(
            "Evidence bundle of Cordon run {run}\n\
             Exported {at} by {actor} from {store}, Cordon {version}.\n\
             \n\
             To check it (GNU coreutils; on macOS `shasum -a 256 -c SHA256SUMS`):\n\
             \n\
             \x20   tar -xf {dir}.tar\n\
             \x20   cd {dir}\n\
             \x20   sha256sum -c SHA256SUMS\n\
             \n\
             Every line must end in `OK`. SHA256SUMS covers every other file of this folder;\n\
             the SHA-256 of the .tar file itself was printed at export and recorded in the\n\
             audit trail (event `evidence.exported`).\n\
             \n\
             Files:\n\
             - manifest.jsonl: one JSON record per artifact: evidence_id, run_id, step_id,\n\
             \x20 path, sha256, bytes, records (vendor records such as log events),\n\
             \x20 collected_at (UTC) and meta (connector type, instance, action, media type\n\
             \x20 and source: the query, URL or time range that was asked).\n\
             - custody.jsonl: the run's evidence events from the audit trail (collection,\n\
             \x20 storage, verification, earlier exports), one per line with seq, at, run_id,\n\
             \x20 actor, action, details, prev_hash, hash. Each hash is the lowercase hex\n\
             \x20 SHA-256 of prev_hash followed by the RFC 8785 canonical JSON of the event\n\
             \x20 without its hash field; the whole chain is checked with `cordon audit verify`.\n\
             \x20 Each artifact's sha256 in its evidence.collected event must equal its line\n\
             \x20 in SHA256SUMS.\n\
             - {n} artifact(s), byte for byte as the vendors returned them:\n{list}",
            run = self.run_id,
            at = crate::time::now(),
            actor = self.actor,
            store = self.store,
            version = env!("CARGO_PKG_VERSION"),
            n = names.len(),
            list = names.iter().map(|n| format!("  {n}\n")).collect::<String>(),
        )
    }

    fn write(
        self,
        handle: &tokio::runtime::Handle,
        evidence: &EvidenceStore,
        out: &Path,
    ) -> Result<(u64, String), ExportError> {
        let shown = out.display().to_string();
        let io_err = |source: io::Error| ExportError::Io {
            path: shown.clone(),
            source,
        };
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| ExportError::Evidence(format!("`{shown}` is not a file name")))?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = parent.join(format!(".{name}.{}.tmp", ulid::Ulid::new()));
        let result = self.write_to(handle, evidence, &tmp);
        let finish = result.and_then(|(file, bytes, sha)| {
            file.sync_all().map_err(io_err)?;
            drop(file);
            std::fs::rename(&tmp, out).map_err(io_err)?;
            File::open(&parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err)?;
            Ok((bytes, sha))
        });
        if finish.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        finish
    }

    fn write_to(
        &self,
        handle: &tokio::runtime::Handle,
        evidence: &EvidenceStore,
        tmp: &Path,
    ) -> Result<(File, u64, String), ExportError> {
        let shown = tmp.display().to_string();
        let io_err = |source: io::Error| ExportError::Io {
            path: shown.clone(),
            source,
        };
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(io_err)?;
        let writer = HashingWriter {
            inner: BufWriter::with_capacity(256 * 1024, file),
            hasher: Sha256::new(),
            bytes: 0,
        };
        let mut tar = tar::Builder::new(writer);
        let dir = bundle_dir(&self.run_id);
        let mtime = chrono::Utc::now().timestamp().max(0) as u64;
        let header = |size: u64, kind: tar::EntryType, mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(mode);
            h.set_mtime(mtime);
            h.set_uid(0);
            h.set_gid(0);
            h
        };
        tar.append_data(
            &mut header(0, tar::EntryType::Directory, 0o755),
            format!("{dir}/"),
            io::empty(),
        )
        .map_err(io_err)?;

        let names: Vec<String> = self
            .records
            .iter()
            .map(|r| record_file_name(r).map(str::to_string))
            .collect::<Result<_, _>>()
            .map_err(ExportError::Evidence)?;
        let mut manifest = String::new();
        for r in &self.records {
            manifest.push_str(&manifest_line(r).map_err(|e| ExportError::Evidence(e.0))?);
            manifest.push('\n');
        }
        let mut custody = Vec::new();
        crate::audit::export_jsonl(&self.custody, &mut custody).map_err(io_err)?;

        let mut sums: Vec<(String, String)> = Vec::new();
        let small = |tar: &mut tar::Builder<HashingWriter<BufWriter<File>>>,
                     file: &str,
                     body: &[u8],
                     sums: &mut Vec<(String, String)>| {
            tar.append_data(
                &mut header(body.len() as u64, tar::EntryType::Regular, 0o644),
                format!("{dir}/{file}"),
                body,
            )
            .map_err(io_err)?;
            sums.push((hex::encode(Sha256::digest(body)), file.to_string()));
            Ok::<_, ExportError>(())
        };
        small(
            &mut tar,
            "README.txt",
            self.readme(&names).as_bytes(),
            &mut sums,
        )?;
        small(&mut tar, "manifest.jsonl", manifest.as_bytes(), &mut sums)?;
        small(&mut tar, "custody.jsonl", &custody, &mut sums)?;

        for (r, file) in self.records.iter().zip(&names) {
            let reader = handle
                .block_on(evidence.open_artifact(r))
                .map_err(|e| ExportError::Evidence(e.0))?
                .ok_or_else(|| {
                    ExportError::Evidence(format!("{} disappeared during the export", r.path))
                })?;
            let mut checked = CheckedReader {
                inner: tokio_util::io::SyncIoBridge::new_with_handle(reader, handle.clone()),
                expected: r.bytes,
                read: 0,
                hasher: Sha256::new(),
                what: r.path.clone(),
            };
            tar.append_data(
                &mut header(r.bytes, tar::EntryType::Regular, 0o644),
                format!("{dir}/{file}"),
                &mut checked,
            )
            .map_err(io_err)?;
            let actual = hex::encode(checked.hasher.finalize());
            if actual != r.sha256 {
                return Err(ExportError::Evidence(format!(
                    "{} changed during the export (recorded {}, read {actual}); no bundle written",
                    r.path, r.sha256
                )));
            }
            sums.push((actual, file.clone()));
        }
        let sums_text: String = sums.iter().map(|(h, f)| format!("{h}  {f}\n")).collect();
        tar.append_data(
            &mut header(sums_text.len() as u64, tar::EntryType::Regular, 0o644),
            format!("{dir}/{SHA256SUMS}"),
            sums_text.as_bytes(),
        )
        .map_err(io_err)?;
        let mut writer = tar.into_inner().map_err(io_err)?;
        writer.flush().map_err(io_err)?;
        let HashingWriter {
            inner,
            hasher,
            bytes,
        } = writer;
        let file = inner.into_inner().map_err(|e| io_err(e.into_error()))?;
        Ok((file, bytes, hex::encode(hasher.finalize())))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::write_artifact;
    use super::super::verify::tests::Fixture;
    use super::super::LocalEvidence;
    use super::*;

    #[tokio::test]
    async fn bundles_verify_with_sha256sum_and_refuse_tampered_runs() {
        let fx = Fixture::new().await;
        let dir = tempfile::tempdir().unwrap();
        let ev = EvidenceStore::Local(LocalEvidence::new(dir.path().join("evidence")));
        let sink = ev.sink(&fx.run_id, "snap");
        // One artifact larger than any buffer in the path.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let a = write_artifact(&sink, &[&big], 1).await;
        let b = write_artifact(&sink, &[b"{\"n\":1}\n"], 1).await;
        fx.record(sink.take_collected()).await;

        let out = dir.path().join("bundle.tar");
        let ExportOutcome::Written(x) =
            export_run(fx.store.as_ref(), &ev, &fx.run_id, &out, "cli:tester")
                .await
                .unwrap()
        else {
            panic!("refused")
        };
        assert_eq!(
            x.artifacts,
            vec![a.evidence_id.clone(), b.evidence_id.clone()]
        );
        let tar_bytes = std::fs::read(&out).unwrap();
        assert_eq!(x.bytes, tar_bytes.len() as u64);
        assert_eq!(x.sha256, hex::encode(Sha256::digest(&tar_bytes)));
        // No temporary file is left beside it.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());

        // Read it back with the tar crate: every file, and SHA256SUMS covering the rest.
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut files = std::collections::BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mut body = Vec::new();
            entry.read_to_end(&mut body).unwrap();
            files.insert(path, body);
        }
        let root = bundle_dir(&fx.run_id);
        let big_name = format!("{root}/{}.jsonl", a.evidence_id);
        assert_eq!(files[&big_name], big);
        let sums = String::from_utf8(files[&format!("{root}/SHA256SUMS")].clone()).unwrap();
        assert_eq!(sums.lines().count(), 5, "{sums}");
        for line in sums.lines() {
            let (hash, name) = line.split_once("  ").unwrap();
            assert_eq!(
                hash,
                hex::encode(Sha256::digest(&files[&format!("{root}/{name}")])),
                "{name}"
            );
        }
        let manifest = String::from_utf8(files[&format!("{root}/manifest.jsonl")].clone()).unwrap();
        let recs: Vec<EvidenceRecord> = manifest
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(recs, vec![a.clone(), b.clone()]);
        let custody = String::from_utf8(files[&format!("{root}/custody.jsonl")].clone()).unwrap();
        let events: Vec<AuditEvent> = custody
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events.len(), 2);
        for e in &events {
            assert_eq!(e.action, "evidence.collected");
            assert_eq!(
                crate::audit::event_hash(&crate::audit::EventBody::of(e)),
                e.hash
            );
        }
        let readme = String::from_utf8(files[&format!("{root}/README.txt")].clone()).unwrap();
        assert!(readme.contains("sha256sum -c SHA256SUMS"), "{readme}");

        // Tampered: refused, and nothing is written.
        let victim = dir.path().join("evidence").join(&b.path);
        std::fs::write(&victim, b"{\"n\":2}\n").unwrap();
        let out2 = dir.path().join("refused.tar");
        let ExportOutcome::Refused(report) =
            export_run(fx.store.as_ref(), &ev, &fx.run_id, &out2, "cli:tester")
                .await
                .unwrap()
        else {
            panic!("a tampered run was exported")
        };
        assert!(!report.ok());
        assert!(!out2.exists());
    }

    #[test]
    fn a_source_shorter_than_recorded_fails_the_copy() {
        let mut r = CheckedReader {
            inner: &b"abc"[..],
            expected: 5,
            read: 0,
            hasher: Sha256::new(),
            what: "R/E.bin".into(),
        };
        let mut out = Vec::new();
        let e = io::copy(&mut r, &mut out).unwrap_err();
        assert!(e.to_string().contains("shorter than recorded"), "{e}");
        // A longer one is cut at the recorded size.
        let mut r = CheckedReader {
            inner: &b"abcdef"[..],
            expected: 4,
            read: 0,
            hasher: Sha256::new(),
            what: "x".into(),
        };
        let mut out = Vec::new();
        io::copy(&mut r, &mut out).unwrap();
        assert_eq!(out, b"abcd");
    }
}
