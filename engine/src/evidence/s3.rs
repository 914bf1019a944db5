//! Evidence in S3-compatible object storage, optionally under Object Lock (WORM).
//!
//! ```text
//! <prefix><run>/<evidence id>.<ext>               the artifact, exactly as the vendor sent it
//! <prefix><run>/manifest.d/<evidence id>.json     its manifest line (the EvidenceRecord)
//! <prefix><run>/SHA256SUMS.d/<evidence id>        its `sha256sum` line: `<sha256>  <id>.<ext>`
//! ```
//!
//! Nothing is ever appended to or rewritten: each artifact brings its own manifest and
//! checksum objects, so every object can be locked at its first write. They are written
//! before the artifact is completed, so an artifact never exists without them. After downloading a
//! run's prefix, `cat manifest.d/*.json` is the run's `manifest.jsonl` and
//! `cat SHA256SUMS.d/* > SHA256SUMS && sha256sum -c SHA256SUMS` checks the artifacts.
//!
//! The writer streams: bytes are hashed and counted as they pass and gathered into one part
//! buffer (8 MiB); a full buffer becomes one part of a multipart upload, so memory stays at
//! one part whatever the size. An artifact smaller than a part is one `PutObject`. Every
//! upload carries `Content-MD5`, which S3 requires for Object Lock writes. A failed or
//! abandoned writer aborts its multipart upload; an upload that a killed process left open
//! is never listed as evidence (set a bucket lifecycle rule
//! `AbortIncompleteMultipartUpload` to reclaim its space).
//!
//! With `object_lock`, objects are written with the configured mode and a retain-until date
//! `retain_days` from the write; the store's answer is read back (`HeadObject`) and a lock
//! the server did not apply at creation (some S3-compatible servers ignore lock headers on
//! multipart uploads) is set with `PutObjectRetention`; a write whose lock cannot be
//! confirmed fails. At start the bucket's Object Lock configuration is checked.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat};
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ObjectLockEnabled, ObjectLockMode,
    ObjectLockRetention, ObjectLockRetentionMode,
};
use aws_sdk_s3::Client;
use base64::Engine as _;
use cordon_connectors::evidence::EvidenceError;
use cordon_connectors::secret::Redactor;
use cordon_connectors::{EvidenceMeta, EvidenceRecord, EvidenceWriter};
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::{
    err, manifest_line, ArtifactReader, CallEvidence, Collected, LockApplied, ManifestLine,
    RunListing, Stored, SumsLine,
};
use crate::config::{LockMode, ObjectLockSettings, S3Settings};

/// Default size of one multipart part (and of the one buffer a writer holds).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Folder of the per-artifact manifest objects under a run's prefix.
pub const MANIFEST_DIR: &str = "manifest.d";
/// Folder of the per-artifact checksum objects under a run's prefix.
pub const SUMS_DIR: &str = "SHA256SUMS.d";
/// Manifest and checksum objects are small; a larger one is not ours.
const SMALL_OBJECT_LIMIT: usize = 1024 * 1024;

/// Evidence in an S3 bucket. Cheap to clone.
#[derive(Clone)]
pub struct S3Evidence {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
    lock: Option<ObjectLockSettings>,
    part_size: usize,
    ready: tokio::sync::OnceCell<()>,
}

impl std::fmt::Debug for S3Evidence {
    // The client's configuration holds credentials: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Evidence")
            .field("bucket", &self.inner.bucket)
            .field("prefix", &self.inner.prefix)
            .field("endpoint", &self.inner.endpoint)
            .field("lock", &self.inner.lock)
            .finish()
    }
}

/// Connection settings with the credentials already read.
pub struct ClientSettings<'a> {
    pub endpoint: Option<&'a str>,
    pub region: &'a str,
    pub path_style: bool,
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
}

/// An S3 client: static credentials, rustls on ring, standard retries, bounded timeouts.
/// Checksums are sent where an operation requires one (and `Content-MD5` by this module).
pub fn build_client(s: &ClientSettings<'_>) -> Client {
    let credentials = Credentials::new(
        s.access_key_id,
        s.secret_access_key,
        s.session_token.map(str::to_string),
        None,
        "cordon-configuration",
    );
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut builder = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(s.region.to_string()))
        .credentials_provider(credentials)
        .http_client(http)
        .force_path_style(s.path_style)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(RetryConfig::standard().with_max_attempts(4))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(120))
                .build(),
        );
    if let Some(ep) = s.endpoint {
        builder = builder.endpoint_url(ep);
    }
    Client::from_conf(builder.build())
}

/// An SDK error with its cause chain (service code and message included; never credentials).
fn sdk_err<E, R>(what: &str, e: SdkError<E, R>) -> EvidenceError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    let mut text = match &e {
        SdkError::ServiceError(s) => match (s.err().code(), s.err().message()) {
            (Some(code), Some(msg)) => format!("{code}: {msg}"),
            (Some(code), None) => code.to_string(),
            _ => e.to_string(),
        },
        _ => e.to_string(),
    };
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    err(format!("{what}: {text}"))
}

fn service_code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    match e {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

fn md5_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(bytes))
}

impl S3Evidence {
    /// Read the credentials (registered with `redactor`) and build the client. No network.
    pub fn new(
        settings: &S3Settings,
        base_dir: &Path,
        redactor: &Redactor,
    ) -> Result<S3Evidence, EvidenceError> {
        let read = |field: &str, r: &cordon_connectors::secret::SecretRef| {
            r.resolve(base_dir, redactor)
                .map_err(|e| err(format!("evidence.s3.{field} ({}): {e}", r.describe())))
        };
        let ak = read("access_key_id", &settings.access_key_id)?;
        let sk = read("secret_access_key", &settings.secret_access_key)?;
        let token = match &settings.session_token {
            Some(r) => Some(read("session_token", r)?),
            None => None,
        };
        let client = build_client(&ClientSettings {
            endpoint: settings.endpoint.as_deref(),
            region: settings.region(),
            path_style: settings.path_style,
            access_key_id: ak.expose(),
            secret_access_key: sk.expose(),
            session_token: token.as_ref().map(|t| t.expose()),
        });
        Ok(S3Evidence::with_client(
            client,
            settings.bucket.clone(),
            settings.prefix().to_string(),
            settings.endpoint.clone(),
            settings.object_lock,
        ))
    }

    /// A store over an existing client (tests, tools).
    pub fn with_client(
        client: Client,
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        lock: Option<ObjectLockSettings>,
    ) -> S3Evidence {
        S3Evidence {
            inner: Arc::new(Inner {
                client,
                bucket,
                prefix,
                endpoint,
                lock,
                part_size: PART_SIZE,
                ready: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// The same store with another part size (at least S3's 5 MiB minimum).
    pub fn with_part_size(&self, part_size: usize) -> S3Evidence {
        S3Evidence {
            inner: Arc::new(Inner {
                client: self.inner.client.clone(),
                bucket: self.inner.bucket.clone(),
                prefix: self.inner.prefix.clone(),
                endpoint: self.inner.endpoint.clone(),
                lock: self.inner.lock,
                part_size: part_size.max(MIN_PART_SIZE),
                ready: tokio::sync::OnceCell::new(),
            }),
        }
    }

    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    pub fn describe(&self) -> String {
        let mut s = format!("s3://{}/{}", self.inner.bucket, self.inner.prefix);
        if let Some(ep) = &self.inner.endpoint {
            s.push_str(&format!(" at {ep}"));
        }
        if let Some(lock) = &self.inner.lock {
            s.push_str(&format!(
                " (Object Lock {}, {} days)",
                lock.mode.as_s3(),
                lock.retain_days
            ));
        }
        s
    }

    /// `<prefix><run>/<rel>`.
    pub fn key(&self, run_id: &str, rel: &str) -> String {
        format!("{}{run_id}/{rel}", self.inner.prefix)
    }

    /// The bucket answers and, when Object Lock is asked for, has it enabled. Once per
    /// process; a failure is retried on the next call.
    pub async fn ready(&self) -> Result<(), EvidenceError> {
        self.inner
            .ready
            .get_or_try_init(|| self.check_bucket())
            .await
            .map(|_| ())
    }

    async fn check_bucket(&self) -> Result<(), EvidenceError> {
        let c = &self.inner.client;
        let bucket = &self.inner.bucket;
        c.head_bucket().bucket(bucket).send().await.map_err(|e| {
            sdk_err(
                &format!("evidence store: bucket `{bucket}` is not reachable"),
                e,
            )
        })?;
        if self.inner.lock.is_none() {
            return Ok(());
        }
        let missing = || {
            err(format!(
                "evidence.s3.object_lock is set, but bucket `{bucket}` does not have Object Lock enabled; \
                 create the bucket with Object Lock enabled, or remove `object_lock`"
            ))
        };
        match c
            .get_object_lock_configuration()
            .bucket(bucket)
            .send()
            .await
        {
            Ok(out) => {
                let enabled = out
                    .object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    == Some(&ObjectLockEnabled::Enabled);
                if enabled {
                    Ok(())
                } else {
                    Err(missing())
                }
            }
            Err(e) if service_code(&e) == Some("ObjectLockConfigurationNotFoundError") => {
                Err(missing())
            }
            Err(e) => Err(sdk_err(
                &format!("cannot read the Object Lock configuration of bucket `{bucket}`"),
                e,
            )),
        }
    }

    fn retain_until(&self) -> Option<(ObjectLockSettings, DateTime)> {
        self.inner.lock.map(|lock| {
            let until = chrono::Utc::now() + chrono::Duration::days(i64::from(lock.retain_days));
            (lock, DateTime::from_secs(until.timestamp()))
        })
    }

    /// One small object in a single `PutObject` (with `Content-MD5` and the lock).
    async fn put_small(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        lock: Option<&(ObjectLockSettings, DateTime)>,
    ) -> Result<Option<String>, EvidenceError> {
        let mut req = self
            .inner
            .client
            .put_object()
            .bucket(&self.inner.bucket)
            .key(key)
            .content_type(content_type)
            .content_md5(md5_base64(&body))
            .body(ByteStream::from(body));
        if let Some((l, until)) = lock {
            req = req
                .object_lock_mode(object_lock_mode(l.mode))
                .object_lock_retain_until_date(*until);
        }
        let out = req
            .send()
            .await
            .map_err(|e| sdk_err(&format!("cannot write s3://{}/{key}", self.inner.bucket), e))?;
        Ok(out.version_id().map(str::to_string))
    }

    /// Read back the lock of a written version; apply it when the server did not.
    async fn ensure_locked(
        &self,
        key: &str,
        version_id: Option<&str>,
        lock: &(ObjectLockSettings, DateTime),
    ) -> Result<LockApplied, EvidenceError> {
        let c = &self.inner.client;
        let bucket = &self.inner.bucket;
        let read = || async {
            let out = c
                .head_object()
                .bucket(bucket)
                .key(key)
                .set_version_id(version_id.map(str::to_string))
                .send()
                .await
                .map_err(|e| sdk_err(&format!("cannot read back s3://{bucket}/{key}"), e))?;
            Ok::<_, EvidenceError>(
                match (out.object_lock_mode(), out.object_lock_retain_until_date()) {
                    (Some(mode), Some(until)) => Some(LockApplied {
                        mode: mode.as_str().to_string(),
                        retain_until: until
                            .fmt(DateTimeFormat::DateTime)
                            .unwrap_or_else(|_| until.secs().to_string()),
                    }),
                    _ => None,
                },
            )
        };
        if let Some(applied) = read().await? {
            return Ok(applied);
        }
        let (settings, until) = lock;
        c.put_object_retention()
            .bucket(bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .retention(
                ObjectLockRetention::builder()
                    .mode(ObjectLockRetentionMode::from(settings.mode.as_s3()))
                    .retain_until_date(*until)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_err(&format!("cannot lock s3://{bucket}/{key}"), e))?;
        read().await?.ok_or_else(|| {
            err(format!(
                "bucket `{bucket}` did not apply Object Lock to `{key}`: the evidence is not protected"
            ))
        })
    }

    pub(super) async fn create(
        &self,
        sink: CallEvidence,
        meta: EvidenceMeta,
        evidence_id: String,
        file_name: String,
    ) -> Result<Box<dyn EvidenceWriter>, EvidenceError> {
        self.ready().await?;
        let key = self.key(sink.run_id(), &file_name);
        Ok(Box::new(S3Writer {
            store: self.clone(),
            lock: self.retain_until(),
            sink,
            meta,
            evidence_id,
            file_name,
            key,
            buf: Vec::new(),
            hasher: Sha256::new(),
            bytes: 0,
            records: 0,
            upload: None,
            failed: None,
        }))
    }

    pub(super) async fn open(
        &self,
        run_id: &str,
        file: &str,
    ) -> Result<Option<ArtifactReader>, EvidenceError> {
        self.ready().await?;
        let key = self.key(run_id, file);
        match self
            .inner
            .client
            .get_object()
            .bucket(&self.inner.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(Box::pin(out.body.into_async_read()))),
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => Ok(None),
            Err(e) => Err(sdk_err(
                &format!("cannot read s3://{}/{key}", self.inner.bucket),
                e,
            )),
        }
    }

    async fn get_small(&self, key: &str) -> Result<String, EvidenceError> {
        let out = self
            .inner
            .client
            .get_object()
            .bucket(&self.inner.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_err(&format!("cannot read s3://{}/{key}", self.inner.bucket), e))?;
        let mut text = Vec::new();
        out.body
            .into_async_read()
            .take(SMALL_OBJECT_LIMIT as u64 + 1)
            .read_to_end(&mut text)
            .await
            .map_err(|e| err(format!("cannot read s3://{}/{key}: {e}", self.inner.bucket)))?;
        if text.len() > SMALL_OBJECT_LIMIT {
            return Err(err(format!(
                "s3://{}/{key} is larger than 1 MiB: not a manifest or checksum object",
                self.inner.bucket
            )));
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    pub(super) async fn listing(&self, run_id: &str) -> Result<RunListing, EvidenceError> {
        self.ready().await?;
        let c = &self.inner.client;
        let bucket = &self.inner.bucket;
        let base = self.key(run_id, "");
        let mut listing = RunListing::default();
        let mut manifest_keys = Vec::new();
        let mut sums_keys = Vec::new();
        let mut pages = c
            .list_objects_v2()
            .bucket(bucket)
            .prefix(&base)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| sdk_err(&format!("cannot list s3://{bucket}/{base}"), e))?;
            for obj in page.contents() {
                let Some(rel) = obj.key().and_then(|k| k.strip_prefix(&base)) else {
                    continue;
                };
                if rel.starts_with(&format!("{MANIFEST_DIR}/")) {
                    manifest_keys.push(rel.to_string());
                } else if rel.starts_with(&format!("{SUMS_DIR}/")) {
                    sums_keys.push(rel.to_string());
                } else {
                    listing.files.push(rel.to_string());
                }
            }
        }
        manifest_keys.sort();
        sums_keys.sort();
        listing.files.sort();
        for rel in manifest_keys {
            let text = self.get_small(&format!("{base}{rel}")).await?;
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.is_empty() {
                listing.manifest.push(ManifestLine::parse(rel.clone(), ""));
            }
            for (i, line) in lines.iter().enumerate() {
                let origin = if i == 0 {
                    rel.clone()
                } else {
                    format!("{rel}:{}", i + 1)
                };
                listing.manifest.push(ManifestLine::parse(origin, line));
            }
        }
        for rel in sums_keys {
            let text = self.get_small(&format!("{base}{rel}")).await?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                listing.sums.push(SumsLine::parse(rel.clone(), line));
            }
        }
        let uploads = c
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(&base)
            .send()
            .await
            .map_err(|e| {
                sdk_err(
                    &format!("cannot list the open uploads under s3://{bucket}/{base}"),
                    e,
                )
            })?;
        for u in uploads.uploads() {
            if let Some(rel) = u.key().and_then(|k| k.strip_prefix(&base)) {
                listing
                    .partial
                    .push(format!("{rel} (unfinished multipart upload)"));
            }
        }
        Ok(listing)
    }
}

fn object_lock_mode(mode: LockMode) -> ObjectLockMode {
    ObjectLockMode::from(mode.as_s3())
}

struct Upload {
    id: String,
    parts: Vec<CompletedPart>,
}

struct S3Writer {
    store: S3Evidence,
    /// The lock every object of this artifact gets, fixed when the writer opened.
    lock: Option<(ObjectLockSettings, DateTime)>,
    sink: CallEvidence,
    meta: EvidenceMeta,
    evidence_id: String,
    file_name: String,
    key: String,
    /// The one part buffer.
    buf: Vec<u8>,
    hasher: Sha256,
    bytes: u64,
    records: u64,
    /// The multipart upload, once the first part is full.
    upload: Option<Upload>,
    /// A write failed (and the upload was aborted): the writer is unusable.
    failed: Option<String>,
}

impl S3Writer {
    fn client(&self) -> &Client {
        &self.store.inner.client
    }

    fn bucket(&self) -> &str {
        &self.store.inner.bucket
    }

    /// Send the buffer as the next part, starting the multipart upload if needed.
    async fn flush_part(&mut self) -> Result<(), EvidenceError> {
        if self.upload.is_none() {
            let mut req = self
                .client()
                .create_multipart_upload()
                .bucket(self.bucket())
                .key(&self.key)
                .content_type(&self.meta.media_type);
            if let Some((l, until)) = &self.lock {
                req = req
                    .object_lock_mode(object_lock_mode(l.mode))
                    .object_lock_retain_until_date(*until);
            }
            let out = req.send().await.map_err(|e| {
                sdk_err(
                    &format!(
                        "cannot start an upload to s3://{}/{}",
                        self.bucket(),
                        self.key
                    ),
                    e,
                )
            })?;
            let id = out
                .upload_id()
                .ok_or_else(|| err("the store started an upload without an upload id"))?;
            self.upload = Some(Upload {
                id: id.to_string(),
                parts: Vec::new(),
            });
        }
        // The buffer moves into the request; a new one is allocated on the next write, so
        // only one part is ever held.
        let body = std::mem::take(&mut self.buf);
        let md5 = md5_base64(&body);
        let Some(upload) = &self.upload else {
            return Err(err("internal: no upload"));
        };
        let number = i32::try_from(upload.parts.len() + 1)
            .map_err(|_| err("too many parts for one upload"))?;
        let out = self
            .client()
            .upload_part()
            .bucket(self.bucket())
            .key(&self.key)
            .upload_id(&upload.id)
            .part_number(number)
            .content_md5(md5)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| {
                sdk_err(
                    &format!(
                        "cannot upload part {number} of s3://{}/{}",
                        self.bucket(),
                        self.key
                    ),
                    e,
                )
            })?;
        let part = CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .build();
        if let Some(upload) = &mut self.upload {
            upload.parts.push(part);
        }
        Ok(())
    }

    /// Abort the multipart upload, if any (best effort: the error that led here matters more).
    async fn abort(&mut self) {
        if let Some(upload) = self.upload.take() {
            if let Err(e) = self
                .client()
                .abort_multipart_upload()
                .bucket(self.bucket())
                .key(&self.key)
                .upload_id(&upload.id)
                .send()
                .await
            {
                tracing::warn!(key = %self.key, error = %DisplayErrorContext(&e), "cannot abort an evidence upload");
            }
        }
    }

    /// Store the artifact: one PutObject, or the last part and CompleteMultipartUpload.
    async fn commit_object(&mut self) -> Result<Option<String>, EvidenceError> {
        if self.upload.is_none() {
            let body = std::mem::take(&mut self.buf);
            let media_type = self.meta.media_type.clone();
            let key = self.key.clone();
            return self
                .store
                .put_small(&key, body, &media_type, self.lock.as_ref())
                .await;
        }
        let has_parts = self.upload.as_ref().is_some_and(|u| !u.parts.is_empty());
        if !self.buf.is_empty() || !has_parts {
            self.flush_part().await?;
        }
        let Some(upload) = self.upload.take() else {
            return Err(err("internal: no upload"));
        };
        let res = self
            .client()
            .complete_multipart_upload()
            .bucket(self.bucket())
            .key(&self.key)
            .upload_id(&upload.id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(upload.parts.clone()))
                    .build(),
            )
            .send()
            .await;
        match res {
            Ok(out) => Ok(out.version_id().map(str::to_string)),
            Err(e) => {
                // Keep the upload so that it is aborted.
                self.upload = Some(upload);
                Err(sdk_err(
                    &format!("cannot complete s3://{}/{}", self.bucket(), self.key),
                    e,
                ))
            }
        }
    }

    async fn finish_inner(&mut self) -> Result<EvidenceRecord, EvidenceError> {
        // The last part goes up first (the bytes are all known now), then the manifest and
        // checksum objects, and the artifact becomes visible last: a process killed in
        // between leaves manifest objects without their artifact (an incomplete, unrecorded
        // write that verification reports and tolerates), never an artifact that no
        // manifest accounts for.
        if self.upload.is_some() && !self.buf.is_empty() {
            if let Err(e) = self.flush_part().await {
                self.abort().await;
                return Err(e);
            }
        }
        let store = self.store.clone();
        let hasher = std::mem::take(&mut self.hasher);
        let record = self.sink.record(
            self.evidence_id.clone(),
            &self.file_name,
            self.meta.clone(),
            hex::encode(hasher.finalize()),
            self.bytes,
            self.records,
        );
        let run = self.sink.run_id().to_string();
        let manifest_key = store.key(&run, &format!("{MANIFEST_DIR}/{}.json", self.evidence_id));
        let sums_key = store.key(&run, &format!("{SUMS_DIR}/{}", self.evidence_id));
        let mut line = manifest_line(&record)?;
        line.push('\n');
        let sums = format!("{}  {}\n", record.sha256, self.file_name);
        for (key, body, media) in [
            (&manifest_key, line.into_bytes(), "application/json"),
            (&sums_key, sums.into_bytes(), "text/plain"),
        ] {
            let written = match store.put_small(key, body, media, self.lock.as_ref()).await {
                Ok(v) => v,
                Err(e) => {
                    self.abort().await;
                    return Err(e);
                }
            };
            if let Some(lock) = &self.lock {
                if let Err(e) = store.ensure_locked(key, written.as_deref(), lock).await {
                    self.abort().await;
                    return Err(e);
                }
            }
        }
        let version_id = match self.commit_object().await {
            Ok(v) => v,
            Err(e) => {
                self.abort().await;
                return Err(e);
            }
        };
        let applied = match &self.lock {
            Some(lock) => Some(
                store
                    .ensure_locked(&self.key, version_id.as_deref(), lock)
                    .await?,
            ),
            None => None,
        };
        self.sink.push(Collected {
            record: record.clone(),
            stored: Stored::S3 {
                bucket: self.bucket().to_string(),
                endpoint: store.inner.endpoint.clone(),
                key: self.key.clone(),
                version_id,
                manifest_key,
                sums_key,
                object_lock: applied,
            },
        });
        Ok(record)
    }
}

#[async_trait]
impl EvidenceWriter for S3Writer {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), EvidenceError> {
        if let Some(f) = &self.failed {
            return Err(err(format!("an earlier write failed: {f}")));
        }
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        let part_size = self.store.inner.part_size;
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(part_size);
            }
            let n = (part_size - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() >= part_size {
                if let Err(e) = self.flush_part().await {
                    self.abort().await;
                    self.failed = Some(e.0.clone());
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn add_records(&mut self, n: u64) {
        self.records = self.records.saturating_add(n);
    }

    async fn finish(mut self: Box<Self>) -> Result<EvidenceRecord, EvidenceError> {
        if let Some(f) = &self.failed {
            return Err(err(format!("an earlier write failed: {f}")));
        }
        self.finish_inner().await
    }
}

impl Drop for S3Writer {
    /// A writer dropped mid-upload (the vendor connection died, the step was cancelled)
    /// aborts its multipart upload in the background.
    fn drop(&mut self) {
        let Some(upload) = self.upload.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client().clone();
        let bucket = self.bucket().to_string();
        let key = self.key.clone();
        handle.spawn(async move {
            let _ = client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(upload.id)
                .send()
                .await;
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::s3_server;

    use super::super::testutil::{meta, write_artifact};
    use super::super::{EvidenceStore, Hashed};
    use super::*;
    use cordon_connectors::EvidenceSink;

    /// A path-style client for the test server.
    pub fn client(server: &s3_server::S3Server) -> Client {
        build_client(&ClientSettings {
            endpoint: Some(&server.endpoint()),
            region: "us-east-1",
            path_style: true,
            access_key_id: s3_server::ACCESS_KEY,
            secret_access_key: s3_server::SECRET_KEY,
            session_token: None,
        })
    }

    /// A fresh bucket on the test server, with or without Object Lock.
    pub async fn store(
        server: &s3_server::S3Server,
        lock: Option<ObjectLockSettings>,
    ) -> S3Evidence {
        let client = client(server);
        let bucket = format!("ev-{}", ulid::Ulid::new().to_string().to_ascii_lowercase());
        let mut req = client.create_bucket().bucket(&bucket);
        if lock.is_some() {
            req = req.object_lock_enabled_for_bucket(true);
        }
        req.send().await.expect("create bucket");
        S3Evidence::with_client(
            client,
            bucket,
            "evidence/".into(),
            Some(server.endpoint()),
            lock,
        )
    }

    const COMPLIANCE: ObjectLockSettings = ObjectLockSettings {
        mode: LockMode::Compliance,
        retain_days: 1,
    };

    #[tokio::test]
    async fn streams_small_and_multipart_artifacts_with_records() {
        let Some(server) = s3_server::start() else {
            return;
        };
        let s3 = store(&server, None).await.with_part_size(MIN_PART_SIZE);
        let ev = EvidenceStore::S3(s3.clone());
        let sink = ev.sink("run-s3", "snap");
        let small = write_artifact(&sink, &[b"{\"a\":1}\n", b"{\"a\":2}\n"], 2).await;
        assert_eq!(
            small.sha256,
            hex::encode(Sha256::digest(b"{\"a\":1}\n{\"a\":2}\n"))
        );
        assert_eq!((small.bytes, small.records), (16, 2));

        // 11 MiB in odd-sized chunks: three parts of a multipart upload.
        let chunk: Vec<u8> = (0..65_521u32).map(|i| (i % 251) as u8).collect();
        let mut whole = Vec::new();
        let mut w = sink.create(meta("bin")).await.unwrap();
        while whole.len() < 11 * 1024 * 1024 {
            w.write(&chunk).await.unwrap();
            whole.extend_from_slice(&chunk);
        }
        w.add_records(7);
        let big = w.finish().await.unwrap();
        assert_eq!(big.sha256, hex::encode(Sha256::digest(&whole)));
        assert_eq!(big.bytes, whole.len() as u64);
        assert_eq!(big.records, 7);

        let collected = sink.take_collected();
        assert_eq!(collected.len(), 2);
        let Stored::S3 {
            key,
            manifest_key,
            sums_key,
            object_lock,
            ..
        } = &collected[1].stored
        else {
            panic!("not stored in S3: {:?}", collected[1].stored)
        };
        assert_eq!(key, &format!("evidence/run-s3/{}.bin", big.evidence_id));
        assert_eq!(
            manifest_key,
            &format!("evidence/run-s3/manifest.d/{}.json", big.evidence_id)
        );
        assert_eq!(
            sums_key,
            &format!("evidence/run-s3/SHA256SUMS.d/{}", big.evidence_id)
        );
        assert!(object_lock.is_none());

        // Read back: the bytes, the manifest objects and the checksum objects.
        assert_eq!(
            ev.hash("run-s3", &format!("{}.bin", big.evidence_id)).await,
            Hashed::Found {
                sha256: big.sha256.clone(),
                bytes: big.bytes
            }
        );
        let listing = ev.listing("run-s3").await.unwrap();
        assert_eq!(
            listing.files,
            vec![
                format!("{}.jsonl", small.evidence_id),
                format!("{}.bin", big.evidence_id)
            ]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
        let records: Vec<EvidenceRecord> = listing
            .manifest
            .iter()
            .map(|l| l.record.clone().unwrap())
            .collect();
        assert!(records.contains(&small) && records.contains(&big));
        assert!(listing
            .sums
            .iter()
            .any(|s| s.parsed == Some((big.sha256.clone(), format!("{}.bin", big.evidence_id)))));
        assert!(listing.partial.is_empty());
    }

    #[tokio::test]
    async fn a_failed_or_abandoned_upload_leaves_nothing_listed() {
        let Some(server) = s3_server::start() else {
            return;
        };
        let s3 = store(&server, None).await.with_part_size(MIN_PART_SIZE);
        let ev = EvidenceStore::S3(s3.clone());
        let sink = ev.sink("run-abort", "snap");
        // Abandoned after one part went up (the vendor connection died): while the writer
        // lives the upload is open, and listed as unfinished, never as evidence; dropping
        // the writer aborts it.
        let mut w = sink.create(meta("bin")).await.unwrap();
        w.write(&vec![7u8; MIN_PART_SIZE + 10]).await.unwrap();
        let open = ev.listing("run-abort").await.unwrap();
        assert_eq!(open.partial.len(), 1, "{:?}", open.partial);
        assert!(open.files.is_empty() && open.manifest.is_empty());
        drop(w);
        let mut listing = ev.listing("run-abort").await.unwrap();
        for _ in 0..50 {
            if listing.partial.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            listing = ev.listing("run-abort").await.unwrap();
        }
        assert!(listing.partial.is_empty(), "{:?}", listing.partial);

        // A store that refuses to complete the upload (its parts are below the server's
        // minimum): `finish` fails and aborts the upload.
        let tiny = S3Evidence {
            inner: Arc::new(Inner {
                client: s3.client().clone(),
                bucket: s3.bucket().to_string(),
                prefix: "evidence/".into(),
                endpoint: None,
                lock: None,
                part_size: 1024,
                ready: tokio::sync::OnceCell::new(),
            }),
        };
        let sink2 = EvidenceStore::S3(tiny).sink("run-abort", "snap");
        let mut w = sink2.create(meta("bin")).await.unwrap();
        w.write(&[1u8; 3 * 1024 + 5]).await.unwrap();
        let e = w.finish().await.unwrap_err().to_string();
        assert!(e.contains("cannot complete"), "{e}");

        // Nothing is evidence: no artifact, no open upload; the failed write's manifest and
        // checksum objects (written before the artifact) remain, which verification reports
        // as an incomplete write.
        let listing = ev.listing("run-abort").await.unwrap();
        assert!(listing.files.is_empty(), "{:?}", listing.files);
        assert!(listing.partial.is_empty(), "{:?}", listing.partial);
        assert_eq!((listing.manifest.len(), listing.sums.len()), (1, 1));
        let fx = super::super::verify::tests::Fixture::new().await;
        let r = super::super::verify_run(fx.store.as_ref(), &ev, "run-abort")
            .await
            .unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!(r.unrecorded.len(), 1);
        assert!(!r.unrecorded[0].complete);
        assert!(sink.take_collected().is_empty());
        assert!(sink2.take_collected().is_empty());
    }

    #[tokio::test]
    async fn object_lock_is_applied_and_enforced() {
        let Some(server) = s3_server::start() else {
            return;
        };
        // A bucket without Object Lock is refused when the configuration asks for it.
        let plain = store(&server, None).await;
        let wants_lock = S3Evidence::with_client(
            plain.client().clone(),
            plain.bucket().to_string(),
            String::new(),
            None,
            Some(COMPLIANCE),
        );
        let e = wants_lock.ready().await.unwrap_err().to_string();
        assert!(
            e.contains(plain.bucket()) && e.contains("Object Lock"),
            "{e}"
        );

        let s3 = store(&server, Some(COMPLIANCE))
            .await
            .with_part_size(MIN_PART_SIZE);
        let ev = EvidenceStore::S3(s3.clone());
        let sink = ev.sink("run-lock", "snap");
        let small = write_artifact(&sink, &[b"locked"], 1).await;
        let mut w = sink.create(meta("bin")).await.unwrap();
        w.write(&vec![3u8; MIN_PART_SIZE + 1]).await.unwrap();
        let big = w.finish().await.unwrap();
        let collected = sink.take_collected();
        let tomorrow = chrono::Utc::now() + chrono::Duration::days(1);
        for (c, rec) in collected.iter().zip([&small, &big]) {
            let Stored::S3 {
                key,
                version_id,
                object_lock,
                manifest_key,
                sums_key,
                ..
            } = &c.stored
            else {
                panic!("{:?}", c.stored)
            };
            assert_eq!(&c.record, rec);
            let applied = object_lock.as_ref().expect("lock recorded");
            assert_eq!(applied.mode, "COMPLIANCE");
            let until = crate::time::parse(&applied.retain_until).expect("RFC 3339");
            assert!((until - tomorrow).num_minutes().abs() < 10, "{until}");
            // Every object carries the lock, as the server reports it.
            for k in [key, manifest_key, sums_key] {
                let head = s3
                    .client()
                    .head_object()
                    .bucket(s3.bucket())
                    .key(k)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    head.object_lock_mode(),
                    Some(&ObjectLockMode::Compliance),
                    "{k}"
                );
                assert!(head.object_lock_retain_until_date().is_some(), "{k}");
            }
            // Deleting the locked version is refused by the server.
            let del = s3
                .client()
                .delete_object()
                .bucket(s3.bucket())
                .key(key)
                .set_version_id(version_id.clone())
                .send()
                .await;
            assert!(del.is_err(), "the locked version {key} was deleted");
            assert!(matches!(
                ev.hash("run-lock", key.rsplit('/').next().unwrap()).await,
                Hashed::Found { .. }
            ));
        }
    }
}
