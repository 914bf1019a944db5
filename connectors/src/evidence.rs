//! The evidence sink snapshot actions stream into. The engine implements it (a local folder
//! or S3-compatible object storage); connectors only see these traits.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What an artifact is, supplied by the connector before writing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvidenceMeta {
    /// Connector type, e.g. `http`.
    pub connector_type: String,
    /// Instance name.
    pub instance: String,
    /// Action name, e.g. `snapshot`.
    pub action: String,
    /// File extension without dot: `json`, `jsonl`, `txt`, `bin`.
    pub extension: String,
    /// Media type, e.g. `application/x-ndjson`.
    pub media_type: String,
    /// What was asked: query, URL (no secrets), time range…
    pub source: Value,
}

/// A finished artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvidenceRecord {
    pub evidence_id: String,
    pub run_id: String,
    pub step_id: String,
    /// `<run>/<evidence id>.<ext>`: relative to the evidence folder, or to the S3 key prefix.
    pub path: String,
    /// Lowercase hex SHA-256 of the bytes, computed while writing.
    pub sha256: String,
    pub bytes: u64,
    pub records: u64,
    /// RFC 3339 UTC collection time.
    pub collected_at: String,
    pub meta: EvidenceMeta,
}

impl PartialEq for EvidenceMeta {
    fn eq(&self, other: &Self) -> bool {
        serde_json::to_value(self).ok() == serde_json::to_value(other).ok()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("evidence store: {0}")]
pub struct EvidenceError(pub String);

/// Opens artifacts for one action call.
#[async_trait]
pub trait EvidenceSink: Send + Sync {
    async fn create(&self, meta: EvidenceMeta) -> Result<Box<dyn EvidenceWriter>, EvidenceError>;
}

/// Streams one artifact; the hash is computed as bytes go by.
#[async_trait]
pub trait EvidenceWriter: Send {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), EvidenceError>;
    /// Count vendor records (log events, rows) written so far.
    fn add_records(&mut self, n: u64);
    /// Flush, fsync and record the artifact.
    async fn finish(self: Box<Self>) -> Result<EvidenceRecord, EvidenceError>;
}
