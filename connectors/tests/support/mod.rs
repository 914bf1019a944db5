//! Test support shared by the connector tests: an in-memory evidence store that hashes
//! like the real one. (Each test file includes it with `mod support;`.)
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cordon_connectors::evidence::EvidenceError;
use cordon_connectors::{EvidenceMeta, EvidenceRecord, EvidenceSink, EvidenceWriter};
use sha2::{Digest, Sha256};

pub type Artifacts = Arc<Mutex<Vec<(EvidenceRecord, Vec<u8>)>>>;

/// Keeps artifacts in memory, hashing like the real store.
#[derive(Default, Clone)]
pub struct MemSink {
    pub finished: Artifacts,
    pub created: Arc<Mutex<u32>>,
}

struct MemWriter {
    sink: MemSink,
    meta: EvidenceMeta,
    data: Vec<u8>,
    records: u64,
}

#[async_trait]
impl EvidenceSink for MemSink {
    async fn create(&self, meta: EvidenceMeta) -> Result<Box<dyn EvidenceWriter>, EvidenceError> {
        *self.created.lock().unwrap() += 1;
        Ok(Box::new(MemWriter {
            sink: self.clone(),
            meta,
            data: Vec::new(),
            records: 0,
        }))
    }
}

#[async_trait]
impl EvidenceWriter for MemWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), EvidenceError> {
        self.data.extend_from_slice(chunk);
        Ok(())
    }
    fn add_records(&mut self, n: u64) {
        self.records += n;
    }
    async fn finish(self: Box<Self>) -> Result<EvidenceRecord, EvidenceError> {
        let rec = EvidenceRecord {
            evidence_id: "01TEST".into(),
            run_id: "run1".into(),
            step_id: "snap".into(),
            path: format!("run1/01TEST.{}", self.meta.extension),
            sha256: hex::encode(Sha256::digest(&self.data)),
            bytes: self.data.len() as u64,
            records: self.records,
            collected_at: "2024-01-01T00:00:00.000Z".into(),
            meta: self.meta.clone(),
        };
        self.sink
            .finished
            .lock()
            .unwrap()
            .push((rec.clone(), self.data.clone()));
        Ok(rec)
    }
}
