//! Re-checking a stored chain: every hash recomputed, every link followed, and the last event
//! compared with the head checkpoint.

use serde::{Deserialize, Serialize};

use super::{event_hash, genesis, EventBody};
use crate::store::{AuditEvent, AuditHead};

/// The outcome of [`verify`]; serialises as the body of `GET /audit/verify` (plus `problem`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// True when every event and the head checkpoint agree.
    pub ok: bool,
    /// Number of events examined.
    pub events: usize,
    /// The head hash: the checkpoint's, or the last event's when there is no checkpoint.
    pub head: Option<String>,
    /// The first bad sequence number; for a truncated tail, the first missing one.
    pub first_bad: Option<i64>,
    /// What is wrong, in plain words.
    pub problem: Option<String>,
}

/// Check the whole chain, `events` in sequence order, against the head checkpoint.
///
/// Detects an edited event (its hash no longer matches its contents), a deleted, inserted or
/// reordered one (a gap in the sequence numbers, or a `prev_hash` that is not the previous
/// event's hash) and a truncated tail (the checkpoint names an event beyond the last one, or
/// a different hash). Stops at the first problem.
pub fn verify(events: &[AuditEvent], head: Option<&AuditHead>) -> VerifyReport {
    let head_hash = head
        .map(|h| h.hash.clone())
        .or_else(|| events.last().map(|e| e.hash.clone()));
    let report = |first_bad: Option<i64>, problem: Option<String>| VerifyReport {
        ok: problem.is_none(),
        events: events.len(),
        head: head_hash.clone(),
        first_bad,
        problem,
    };

    let mut expected_seq = 1i64;
    let mut expected_prev = genesis();
    for ev in events {
        if ev.seq != expected_seq {
            let problem = if ev.seq > expected_seq {
                if expected_seq == ev.seq - 1 {
                    format!("event {expected_seq} is missing (deleted)")
                } else {
                    format!(
                        "events {expected_seq} to {} are missing (deleted)",
                        ev.seq - 1
                    )
                }
            } else {
                format!(
                    "event {} appears after event {} (duplicated or reordered)",
                    ev.seq,
                    expected_seq - 1
                )
            };
            return report(Some(expected_seq.min(ev.seq)), Some(problem));
        }
        if ev.prev_hash != expected_prev {
            return report(
                Some(ev.seq),
                Some(format!(
                    "event {} does not link to the event before it (its prev_hash is not the \
                     previous event's hash): an event was deleted, inserted or reordered here",
                    ev.seq
                )),
            );
        }
        let recomputed = event_hash(&EventBody::of(ev));
        if recomputed != ev.hash {
            return report(
                Some(ev.seq),
                Some(format!(
                    "event {} was altered: its stored hash does not match its contents",
                    ev.seq
                )),
            );
        }
        expected_seq += 1;
        expected_prev = recomputed;
    }

    let last_seq = expected_seq - 1;
    match head {
        None if events.is_empty() => report(None, None),
        None => report(
            None,
            Some(format!(
                "the head checkpoint is missing although {} events exist",
                events.len()
            )),
        ),
        Some(h) if h.seq > last_seq => {
            let problem = if last_seq == 0 {
                format!(
                    "the chain is empty but the head checkpoint records event {}: every event \
                     was deleted",
                    h.seq
                )
            } else {
                format!(
                    "the chain ends at event {last_seq} but the head checkpoint records event \
                     {}: the newest events were deleted (truncated)",
                    h.seq
                )
            };
            report(Some(last_seq + 1), Some(problem))
        }
        Some(h) if h.seq < last_seq => report(
            Some(h.seq + 1),
            Some(format!(
                "events {} to {last_seq} are not covered by the head checkpoint, which records \
                 event {}",
                h.seq + 1,
                h.seq
            )),
        ),
        Some(h) if h.hash != expected_prev => report(
            Some(last_seq),
            Some(format!(
                "event {last_seq} does not match the head checkpoint's hash: the newest events \
                 were replaced"
            )),
        ),
        Some(_) => report(None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Chain;
    use crate::store::AuditDraft;
    use serde_json::json;

    fn chain(n: usize) -> (Vec<AuditEvent>, AuditHead) {
        let mut c = Chain::from_head(None);
        let events = (0..n)
            .map(|i| {
                c.seal(AuditDraft {
                    run_id: Some("r".into()),
                    actor: "system".into(),
                    action: "step.succeeded".into(),
                    details: json!({ "i": i }),
                })
            })
            .collect();
        (events, c.head())
    }

    #[test]
    fn intact_chain_verifies() {
        let (events, head) = chain(5);
        let r = verify(&events, Some(&head));
        assert!(r.ok, "{r:?}");
        assert_eq!(r.events, 5);
        assert_eq!(r.head.as_deref(), Some(head.hash.as_str()));
        assert_eq!(r.first_bad, None);
        assert_eq!(r.problem, None);
    }

    #[test]
    fn empty_chain_without_head_verifies() {
        let r = verify(&[], None);
        assert!(r.ok);
        assert_eq!(r.events, 0);
        assert_eq!(r.head, None);
    }

    #[test]
    fn edited_event_is_named() {
        let (mut events, head) = chain(5);
        events[2].details = json!({"i": 99});
        let r = verify(&events, Some(&head));
        assert!(!r.ok);
        assert_eq!(r.first_bad, Some(3));
        assert!(r.problem.unwrap_or_default().contains("altered"));
    }

    #[test]
    fn deleted_middle_event_is_named() {
        let (mut events, head) = chain(5);
        events.remove(1);
        let r = verify(&events, Some(&head));
        assert!(!r.ok);
        assert_eq!(r.first_bad, Some(2));
    }

    #[test]
    fn renumbered_after_deletion_breaks_the_link() {
        let (mut events, _) = chain(5);
        events.remove(1);
        for (i, e) in events.iter_mut().enumerate() {
            e.seq = i as i64 + 1;
        }
        let r = verify(&events, None);
        assert!(!r.ok);
        assert_eq!(r.first_bad, Some(2));
        assert!(r.problem.unwrap_or_default().contains("does not link"));
    }

    #[test]
    fn truncated_tail_names_first_missing_event() {
        let (mut events, head) = chain(5);
        events.truncate(3);
        let r = verify(&events, Some(&head));
        assert!(!r.ok);
        assert_eq!(r.first_bad, Some(4));
        assert!(r.problem.unwrap_or_default().contains("truncated"));
    }

    #[test]
    fn everything_deleted_is_caught_by_the_head() {
        let (_, head) = chain(3);
        let r = verify(&[], Some(&head));
        assert!(!r.ok);
        assert_eq!(r.first_bad, Some(1));
    }

    #[test]
    fn head_mismatch_and_missing_head_fail() {
        let (events, mut head) = chain(3);
        let r = verify(&events, None);
        assert!(!r.ok);
        head.hash = "f".repeat(64);
        let r = verify(&events, Some(&head));
        assert!(!r.ok);
        assert_eq!(r.first_bad, Some(3));
    }
}
