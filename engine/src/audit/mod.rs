//! The audit hash chain: how events are sealed, verified and exported.
//!
//! Every event carries `prev_hash` (the previous event's hash; 64 zeros for the first) and
//! `hash` = lowercase hex SHA-256 of the `prev_hash` text followed by the RFC 8785 canonical
//! JSON of the event without `hash`. Changing any stored field, deleting or reordering events
//! therefore breaks the chain from that point on; a head checkpoint (sequence number and
//! hash), kept outside the events table, catches a truncated tail.
//!
//! The store seals drafts with a [`Chain`] inside the transaction that changes state and
//! updates its head row in the same transaction; [`verify`] re-checks a stored chain, and
//! [`export_jsonl`] / [`export_html`] write it out for review.

mod export;
mod verify;

pub use export::{export_html, export_jsonl};
pub use verify::{verify, VerifyReport};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::store::{AuditDraft, AuditEvent, AuditHead};

/// The `prev_hash` of the first event: 64 zeros.
pub fn genesis() -> String {
    "0".repeat(64)
}

/// An event as it is hashed: every stored field except `hash`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EventBody<'a> {
    pub seq: i64,
    pub at: &'a str,
    pub run_id: Option<&'a str>,
    pub actor: &'a str,
    pub action: &'a str,
    pub details: &'a Value,
    pub prev_hash: &'a str,
}

impl<'a> EventBody<'a> {
    /// The hashed part of a stored event (its own `hash` is ignored).
    pub fn of(ev: &'a AuditEvent) -> Self {
        EventBody {
            seq: ev.seq,
            at: &ev.at,
            run_id: ev.run_id.as_deref(),
            actor: &ev.actor,
            action: &ev.action,
            details: &ev.details,
            prev_hash: &ev.prev_hash,
        }
    }
}

/// Lowercase hex SHA-256 of `prev_hash` (its 64-character text) followed by the RFC 8785
/// canonical JSON of the event body.
pub fn event_hash(body: &EventBody<'_>) -> String {
    // Canonicalisation only fails on NaN/infinite numbers or duplicate object keys, neither of
    // which a `serde_json::Value` (and so an `EventBody`) can hold.
    let canonical = serde_json_canonicalizer::to_vec(body)
        .expect("an EventBody of serde_json values always canonicalises");
    let mut hasher = Sha256::new();
    hasher.update(body.prev_hash.as_bytes());
    hasher.update(&canonical);
    hex::encode(hasher.finalize())
}

/// The running end of the chain while a transaction appends to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    seq: i64,
    hash: String,
}

impl Chain {
    /// Continue from the stored head checkpoint, or start a new chain.
    pub fn from_head(head: Option<AuditHead>) -> Self {
        match head {
            Some(h) => Chain {
                seq: h.seq,
                hash: h.hash,
            },
            None => Chain {
                seq: 0,
                hash: genesis(),
            },
        }
    }

    /// Seal the next event with the current time.
    pub fn seal(&mut self, draft: AuditDraft) -> AuditEvent {
        self.seal_at(draft, crate::time::now())
    }

    /// Seal the next event with a given timestamp (tests, imports).
    pub fn seal_at(&mut self, draft: AuditDraft, at: String) -> AuditEvent {
        let details = normalize(draft.details);
        let seq = self.seq + 1;
        let prev_hash = std::mem::take(&mut self.hash);
        let hash = event_hash(&EventBody {
            seq,
            at: &at,
            run_id: draft.run_id.as_deref(),
            actor: &draft.actor,
            action: &draft.action,
            details: &details,
            prev_hash: &prev_hash,
        });
        self.seq = seq;
        self.hash.clone_from(&hash);
        AuditEvent {
            seq,
            at,
            run_id: draft.run_id,
            actor: draft.actor,
            action: draft.action,
            details,
            prev_hash,
            hash,
        }
    }

    /// The checkpoint to store after the events sealed so far.
    pub fn head(&self) -> AuditHead {
        AuditHead {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }

    /// Whether anything has been sealed at all (a new chain has seq 0).
    pub fn is_empty(&self) -> bool {
        self.seq == 0
    }
}

/// Make `details` exactly what a reader will get back from its stored text.
///
/// serde_json prints floats in shortest form but, without its `float_roundtrip` feature, may
/// parse some of them back one ULP off. Hashing the value as it will be re-read keeps
/// [`verify`] consistent with what was sealed; integers, strings and the rest round-trip
/// exactly and are left alone.
fn normalize(details: Value) -> Value {
    if !has_float(&details) {
        return details;
    }
    match serde_json::to_string(&details).map(|s| serde_json::from_str::<Value>(&s)) {
        Ok(Ok(v)) => v,
        // Cannot happen for a Value; keep the original rather than lose the event.
        _ => details,
    }
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn draft(action: &str, details: Value) -> AuditDraft {
        AuditDraft {
            run_id: Some("01RUN".into()),
            actor: "cli:dana".into(),
            action: action.into(),
            details,
        }
    }

    #[test]
    fn genesis_is_64_zeros() {
        let g = genesis();
        assert_eq!(g.len(), 64);
        assert!(g.chars().all(|c| c == '0'));
    }

    #[test]
    fn hash_is_sha256_of_prev_hash_then_canonical_json() {
        let details = json!({"b": 1, "a": "x"});
        let body = EventBody {
            seq: 1,
            at: "2026-11-25T23:57:58.123Z",
            run_id: None,
            actor: "system",
            action: "config.loaded",
            details: &details,
            prev_hash: &genesis(),
        };
        // RFC 8785: keys sorted, no whitespace, null kept.
        let canonical = r#"{"action":"config.loaded","actor":"system","at":"2026-11-25T23:57:58.123Z","details":{"a":"x","b":1},"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","run_id":null,"seq":1}"#;
        let mut h = Sha256::new();
        h.update(genesis().as_bytes());
        h.update(canonical.as_bytes());
        assert_eq!(event_hash(&body), hex::encode(h.finalize()));
    }

    #[test]
    fn chain_links_events_and_reports_its_head() {
        let mut chain = Chain::from_head(None);
        assert!(chain.is_empty());
        let a = chain.seal(draft("run.created", json!({"n": 1})));
        let b = chain.seal(draft("step.started", json!({"n": 2})));
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(a.prev_hash, genesis());
        assert_eq!(b.prev_hash, a.hash);
        assert_eq!(event_hash(&EventBody::of(&b)), b.hash);
        assert_eq!(
            chain.head(),
            AuditHead {
                seq: 2,
                hash: b.hash.clone()
            }
        );
        // Continuing from a stored head gives the same next event.
        let mut resumed = Chain::from_head(Some(chain.head()));
        let c1 = chain.seal_at(draft("x", json!(null)), "t".into());
        let c2 = resumed.seal_at(draft("x", json!(null)), "t".into());
        assert_eq!(c1, c2);
    }

    #[test]
    fn floats_are_hashed_as_they_will_be_read_back() {
        let mut chain = Chain::from_head(None);
        let ev = chain.seal(draft(
            "x",
            json!({"ratio": 0.1 + 0.2, "list": [1.5e300, 2]}),
        ));
        let text = serde_json::to_string(&ev).expect("serialise");
        let back: AuditEvent = serde_json::from_str(&text).expect("parse");
        assert_eq!(event_hash(&EventBody::of(&back)), ev.hash);
    }
}
