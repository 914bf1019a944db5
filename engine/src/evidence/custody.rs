//! Chain of custody (RFC 3227: who, what, when, every transfer), read back from the audit
//! trail: for each artifact of a run, its record and every `evidence.*` event that concerns
//! it, in chain order.
//!
//! An event concerns an artifact when its `details.evidence_id` is the artifact's id
//! (`evidence.collected`, a download), or when its `details.artifacts` lists it
//! (`evidence.verified`, `evidence.exported`: strings or objects with `evidence_id`).

use std::fmt;

use cordon_connectors::EvidenceRecord;
use serde::Serialize;
use serde_json::Value;

use super::verify::audited_record;
use crate::store::{AuditEvent, Store, StoreError};

/// One artifact and its custody events.
#[derive(Debug, Clone, Serialize)]
pub struct CustodyEntry {
    pub evidence_id: String,
    /// The audited record (or, lacking an audit event, the database's).
    pub record: EvidenceRecord,
    /// False when only the database knows the artifact.
    pub audited: bool,
    pub events: Vec<CustodyEvent>,
}

/// One audit event, as stored (with its place in the chain).
#[derive(Debug, Clone, Serialize)]
pub struct CustodyEvent {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub details: Value,
    pub prev_hash: String,
    pub hash: String,
}

impl From<&AuditEvent> for CustodyEvent {
    fn from(e: &AuditEvent) -> Self {
        CustodyEvent {
            seq: e.seq,
            at: e.at.clone(),
            actor: e.actor.clone(),
            action: e.action.clone(),
            details: e.details.clone(),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
        }
    }
}

/// The run's chain of custody.
#[derive(Debug, Clone, Serialize)]
pub struct Custody {
    pub run_id: String,
    pub artifacts: Vec<CustodyEntry>,
}

/// Whether an event concerns the artifact `id`.
pub fn concerns(details: &Value, id: &str) -> bool {
    if details.get("evidence_id").and_then(Value::as_str) == Some(id) {
        return true;
    }
    details
        .get("artifacts")
        .and_then(Value::as_array)
        .is_some_and(|list| {
            list.iter().any(|a| {
                a.as_str() == Some(id) || a.get("evidence_id").and_then(Value::as_str) == Some(id)
            })
        })
}

/// The run's evidence-related audit events (`evidence.*`), in chain order.
pub async fn evidence_events(
    store: &dyn Store,
    run_id: &str,
) -> Result<Vec<AuditEvent>, StoreError> {
    Ok(store
        .audit_events(Some(run_id))
        .await?
        .into_iter()
        .filter(|e| e.action.starts_with("evidence."))
        .collect())
}

/// Each artifact of the run with its custody events.
pub async fn custody(store: &dyn Store, run_id: &str) -> Result<Custody, StoreError> {
    let events = evidence_events(store, run_id).await?;
    let mut artifacts: Vec<CustodyEntry> = Vec::new();
    for e in events.iter().filter(|e| e.action == "evidence.collected") {
        if let Ok(record) = audited_record(e) {
            if !artifacts
                .iter()
                .any(|a| a.evidence_id == record.evidence_id)
            {
                artifacts.push(CustodyEntry {
                    evidence_id: record.evidence_id.clone(),
                    record,
                    audited: true,
                    events: Vec::new(),
                });
            }
        }
    }
    for record in store.evidence(run_id).await? {
        if !artifacts
            .iter()
            .any(|a| a.evidence_id == record.evidence_id)
        {
            artifacts.push(CustodyEntry {
                evidence_id: record.evidence_id.clone(),
                record,
                audited: false,
                events: Vec::new(),
            });
        }
    }
    for a in &mut artifacts {
        a.events = events
            .iter()
            .filter(|e| concerns(&e.details, &a.evidence_id))
            .map(CustodyEvent::from)
            .collect();
    }
    Ok(Custody {
        run_id: run_id.to_string(),
        artifacts,
    })
}

fn summary(e: &CustodyEvent, id: &str) -> String {
    let d = &e.details;
    let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    match e.action.as_str() {
        "evidence.collected" => {
            let c = &d["collector"];
            let stored = match d.get("storage") {
                Some(st) if st["backend"] == "s3" => {
                    let mut t = format!(
                        "s3://{}/{}",
                        st["bucket"].as_str().unwrap_or(""),
                        st["key"].as_str().unwrap_or("")
                    );
                    if let Some(v) = st["version_id"].as_str() {
                        t.push_str(&format!(" version {v}"));
                    }
                    if let Some(l) = st.get("object_lock").filter(|l| !l.is_null()) {
                        t.push_str(&format!(
                            ", {} lock until {}",
                            l["mode"].as_str().unwrap_or(""),
                            l["retain_until"].as_str().unwrap_or("")
                        ));
                    }
                    t
                }
                Some(st) if st["backend"] == "local" => format!(
                    "{}/{}",
                    st["root"].as_str().unwrap_or(""),
                    st["path"].as_str().unwrap_or("")
                ),
                _ => s("path"),
            };
            let via = c["via"]
                .as_str()
                .map(|v| format!(" ({v})"))
                .unwrap_or_default();
            format!(
                "collected by step {} [{}] through {}{via}; stored at {stored}",
                c["step"].as_str().unwrap_or("?"),
                c["index"],
                c["connector"].as_str().unwrap_or("?"),
            )
        }
        "evidence.verified" => {
            let status = d["artifacts"]
                .as_array()
                .and_then(|l| l.iter().find(|a| a["evidence_id"] == id))
                .and_then(|a| a["status"].as_str())
                .unwrap_or("?");
            format!(
                "verified: {status} (run {})",
                if d["ok"] == true { "ok" } else { "FAILED" }
            )
        }
        "evidence.exported" => format!("exported in {} (sha256 {})", s("file"), s("sha256")),
        _ => e.details.to_string(),
    }
}

impl fmt::Display for Custody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.artifacts.is_empty() {
            return write!(f, "{}: no evidence", self.run_id);
        }
        for (i, a) in self.artifacts.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let r = &a.record;
            writeln!(
                f,
                "{}  {}.{} ({})  step {}",
                a.evidence_id, r.meta.connector_type, r.meta.action, r.meta.instance, r.step_id
            )?;
            writeln!(f, "  path      {}", r.path)?;
            writeln!(f, "  sha256    {}", r.sha256)?;
            writeln!(f, "  size      {} bytes, {} records", r.bytes, r.records)?;
            writeln!(f, "  collected {}", r.collected_at)?;
            writeln!(f, "  source    {}", r.meta.source)?;
            if !a.audited {
                writeln!(f, "  NOT IN THE AUDIT TRAIL (database record only)")?;
            }
            for e in &a.events {
                writeln!(
                    f,
                    "  #{:<6} {}  {:<18} {:<24} {}",
                    e.seq,
                    e.at,
                    e.action,
                    e.actor,
                    summary(e, &a.evidence_id)
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn events_concern_artifacts_by_id_or_list() {
        assert!(concerns(&json!({"evidence_id": "A"}), "A"));
        assert!(!concerns(&json!({"evidence_id": "B"}), "A"));
        assert!(concerns(&json!({"artifacts": ["B", "A"]}), "A"));
        assert!(concerns(
            &json!({"artifacts": [{"evidence_id": "A", "status": "ok"}]}),
            "A"
        ));
        assert!(!concerns(&json!({"artifacts": 3}), "A"));
        assert!(!concerns(&json!(null), "A"));
    }
}
