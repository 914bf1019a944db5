//! The store conformance suite: behaviour every [`Store`] backend must show, written against
//! the trait only, so that the SQLite tests and the PostgreSQL tests run the same checks.
//! Each function expects a fresh, empty store and panics on the first deviation.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{
    AuditDraft, Change, Created, Decision, DedupKey, DraftRecord, EvidenceRecord, Fired,
    ItemRecord, Lease, NoticeOutcome, RunFilter, RunRecord, RunStatus, ScheduleFire, StepRecord,
    StepStatus, Store, StoreError, Triggered,
};
use crate::audit;
use cordon_connectors::evidence::EvidenceMeta;

/// Every behaviour that needs only one handle.
pub async fn run_all(store: &dyn Store) {
    create_and_join(store).await;
    lease_lifecycle(store).await;
    first_lease(store).await;
    stale_commit_changes_nothing(store).await;
    commit_is_atomic(store).await;
    commit_round_trips_state(store).await;
    decisions_cancel_pause_evidence(store).await;
    drafts_round_trip(store).await;
    list_filters(store).await;
    dedup_keys_and_service_queries(store).await;
    schedule_fires(store).await;
    waiting_notices(store).await;
    assert_chain_intact(store).await;
}

pub fn run(id: &str, key: Option<&str>, created_at: &str) -> RunRecord {
    RunRecord {
        id: id.into(),
        runbook: "nk-it-worker".into(),
        runbook_text: "name: nk-it-worker\nsteps: []\n".into(),
        runbook_sha256: "5f".repeat(32),
        status: RunStatus::Queued,
        trigger: "webhook:siem".into(),
        started_by: "webhook:siem".into(),
        inputs: json!({"user_email": "j.doe@example.com", "alert_id": format!("alert-{id}")}),
        concurrency_key: key.map(str::to_owned),
        undo_of: None,
        dry_run: false,
        case_id: key.unwrap_or(id).to_owned(),
        error: None,
        created_at: created_at.into(),
        started_at: None,
        finished_at: None,
        cancel_requested: false,
    }
}

pub fn draft(run_id: Option<&str>, action: &str, details: Value) -> AuditDraft {
    AuditDraft {
        run_id: run_id.map(str::to_owned),
        actor: "cli:dana".into(),
        action: action.into(),
        details,
    }
}

fn step(run_id: &str, step_id: &str, status: StepStatus) -> StepRecord {
    StepRecord {
        run_id: run_id.into(),
        step_id: step_id.into(),
        status,
        attempts: 1,
        items: 1,
        inputs: None,
        output: None,
        error: None,
        reason: None,
        started_at: Some("2026-11-25T23:57:58.123Z".into()),
        finished_at: None,
        deadline: None,
        on_failure: false,
    }
}

pub fn item(run_id: &str, step_id: &str, idx: u32) -> ItemRecord {
    ItemRecord {
        run_id: run_id.into(),
        step_id: step_id.into(),
        idx,
        status: StepStatus::Running,
        attempts: 1,
        inputs: json!({"user": format!("u{idx}")}),
        connector: "okta-prod".into(),
        output: None,
        error: None,
        prior_state: None,
        secret_output: None,
        started_at: None,
        finished_at: None,
    }
}

fn run_status(status: RunStatus, started: Option<&str>, finished: Option<&str>) -> Change {
    Change::Run {
        status,
        error: None,
        started_at: started.map(str::to_owned),
        finished_at: finished.map(str::to_owned),
    }
}

/// Commits of two leased runs that a group-commit writer applies together (its tests
/// queue them, in this order, into one batch; PostgreSQL's gathers their rows): rows written twice, new steps, run-row
/// changes and lease releases. [`assert_gathered_outcome`] checks what they must leave.
pub fn gathered_commits(a: &Lease, b: &Lease) -> Vec<(Lease, Vec<Change>)> {
    let (ra, rb) = (a.run_id.as_str(), b.run_id.as_str());
    let finished = |run, step, idx| ItemRecord {
        status: StepStatus::Succeeded,
        output: Some(json!({"already": false})),
        ..item(run, step, idx)
    };
    let running = ItemRecord {
        status: StepStatus::Running,
        output: None,
        ..item(ra, "s1", 0)
    };
    vec![
        (
            a.clone(),
            vec![
                run_status(RunStatus::Running, Some("2026-11-25T23:00:01.000Z"), None),
                Change::Step(step(ra, "s1", StepStatus::Running)),
                Change::Step(step(ra, "s2", StepStatus::Pending)),
                Change::Item(running),
            ],
        ),
        (
            b.clone(),
            vec![
                Change::Step(step(rb, "x", StepStatus::Succeeded)),
                Change::Item(finished(rb, "x", 0)),
                run_status(RunStatus::Succeeded, None, Some("2026-11-25T23:00:09.000Z")),
                Change::ReleaseLease,
            ],
        ),
        (
            a.clone(),
            vec![
                run_status(RunStatus::Running, Some("2026-11-25T23:00:05.000Z"), None),
                Change::Item(finished(ra, "s1", 0)),
                Change::Step(step(ra, "s1", StepStatus::Succeeded)),
                Change::Step(step(ra, "s3", StepStatus::Running)),
            ],
        ),
        (
            a.clone(),
            vec![
                run_status(RunStatus::Failed, None, Some("2026-11-25T23:00:07.000Z")),
                Change::ReleaseLease,
            ],
        ),
    ]
}

/// What [`gathered_commits`] applied in order leave (each commit carried one audit event).
pub async fn assert_gathered_outcome(store: &dyn Store, a: &Lease, b: &Lease) {
    let (ra, rb) = (a.run_id.as_str(), b.run_id.as_str());
    // Steps in the order they first appeared, each as its last commit left it.
    let steps: Vec<(String, StepStatus)> = store
        .steps(ra)
        .await
        .expect("steps")
        .into_iter()
        .map(|s| (s.step_id, s.status))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("s1".into(), StepStatus::Succeeded),
            ("s2".into(), StepStatus::Pending),
            ("s3".into(), StepStatus::Running),
        ]
    );
    let items = store.items(ra).await.expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].status, StepStatus::Succeeded);
    let run_a = store.get_run(ra).await.expect("get").expect("run a");
    assert_eq!(run_a.status, RunStatus::Failed);
    assert_eq!(
        run_a.started_at.as_deref(),
        Some("2026-11-25T23:00:01.000Z")
    );
    assert_eq!(
        run_a.finished_at.as_deref(),
        Some("2026-11-25T23:00:07.000Z")
    );
    let run_b = store.get_run(rb).await.expect("get").expect("run b");
    assert_eq!(run_b.status, RunStatus::Succeeded);
    assert_eq!(store.items(rb).await.expect("items").len(), 1);
    // Both leases were given up with their runs' last commits.
    for lease in [a, b] {
        assert_eq!(
            store.lease_holder(&lease.run_id).await.expect("holder"),
            None
        );
        assert!(matches!(
            store.commit(lease, vec![], vec![]).await,
            Err(StoreError::LeaseLost(_))
        ));
    }
    assert_eq!(
        store.audit_events(Some(ra)).await.expect("events").len(),
        1 + 3
    );
    assert_chain_intact(store).await;
}

pub fn evidence(run_id: &str, evidence_id: &str) -> EvidenceRecord {
    EvidenceRecord {
        evidence_id: evidence_id.into(),
        run_id: run_id.into(),
        step_id: "snapshot".into(),
        path: format!("{run_id}/{evidence_id}.jsonl"),
        sha256: "ab".repeat(32),
        bytes: 1_234_567,
        records: 42,
        collected_at: "2026-11-25T23:58:00.000Z".into(),
        meta: EvidenceMeta {
            connector_type: "okta".into(),
            instance: "okta-prod".into(),
            action: "snapshot_system_log".into(),
            extension: "jsonl".into(),
            media_type: "application/x-ndjson".into(),
            source: json!({"filter": "actor.id eq \"00u1\"", "since": "2026-08-27T00:00:00Z"}),
        },
    }
}

async fn new_run(store: &dyn Store, id: &str) {
    let created = store
        .create_run(
            run(id, None, "2026-11-25T23:00:00.000Z"),
            draft(Some(id), "run.created", json!({})),
        )
        .await
        .expect("create run");
    assert!(matches!(created, Created::New(_)));
}

/// Take the lease of `id` for `owner`, which must succeed (the lease is free or stealable).
async fn take(store: &dyn Store, id: &str, owner: &str, steal_from: Option<&str>) -> Lease {
    store
        .acquire_lease(id, owner, 60_000, steal_from)
        .await
        .expect("acquire")
        .unwrap_or_else(|| panic!("the lease of {id} is not free for {owner}"))
}

/// The whole chain verifies and its head matches the last event.
pub async fn assert_chain_intact(store: &dyn Store) {
    let events = store.audit_events(None).await.expect("audit events");
    let head = store.audit_head().await.expect("audit head");
    let (snap_events, snap_head) = store.audit_chain().await.expect("audit chain");
    assert_eq!((&snap_events, &snap_head), (&events, &head));
    let report = audit::verify(&events, head.as_ref());
    assert!(report.ok, "chain broken: {report:?}");
    assert_eq!(report.events, events.len());
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev.seq, i as i64 + 1, "sequence numbers are dense");
    }
}

pub async fn create_and_join(store: &dyn Store) {
    let first = run(
        "01JOIN0000000000000000000A",
        Some("case:j.doe"),
        "2026-11-25T23:00:00.000Z",
    );
    let created = store
        .create_run(
            first.clone(),
            draft(Some(&first.id), "run.created", json!({"k": 1})),
        )
        .await
        .expect("create");
    let Created::New(stored) = created else {
        panic!("first run must be new")
    };
    assert_eq!(stored, first);
    assert_eq!(
        store.get_run(&first.id).await.expect("get"),
        Some(first.clone())
    );

    // Same key while the first is active: joined, not created.
    let mut second = run(
        "01JOIN0000000000000000000B",
        Some("case:j.doe"),
        "2026-11-25T23:01:00.000Z",
    );
    second.trigger = "webhook:okta".into();
    second.inputs = json!({"alert_id": "second-alert", "severity": "high"});
    let created = store
        .create_run(
            second.clone(),
            draft(Some(&second.id), "run.created", json!({})),
        )
        .await
        .expect("join");
    let Created::Joined(existing) = created else {
        panic!("a second trigger with an active key must join")
    };
    assert_eq!(existing.id, first.id);
    assert_eq!(store.get_run(&second.id).await.expect("get"), None);
    let joins = store.joined_triggers(&first.id).await.expect("joins");
    assert_eq!(joins.len(), 1);
    assert_eq!(joins[0]["trigger"], json!("webhook:okta"));
    assert_eq!(joins[0]["inputs"], second.inputs);
    let events = store.audit_events(Some(&first.id)).await.expect("events");
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["run.created", "run.joined"]);
    assert_eq!(events[1].details["trigger"], json!("webhook:okta"));

    // Once the first run finished, the key is free again.
    let lease = take(store, &first.id, "proc-a", None).await;
    store
        .commit(
            &lease,
            vec![Change::Run {
                status: RunStatus::Succeeded,
                error: None,
                started_at: None,
                finished_at: Some("2026-11-25T23:05:00.000Z".into()),
            }],
            vec![draft(Some(&first.id), "run.succeeded", json!({}))],
        )
        .await
        .expect("finish");
    let third = run(
        "01JOIN0000000000000000000C",
        Some("case:j.doe"),
        "2026-11-25T23:06:00.000Z",
    );
    let created = store
        .create_run(
            third.clone(),
            draft(Some(&third.id), "run.created", json!({})),
        )
        .await
        .expect("create third");
    assert!(matches!(created, Created::New(r) if r.id == third.id));
    assert_chain_intact(store).await;
}

/// [`Lease::first`] promises an untouched run: no lease before, still queued, no
/// cancellation asked. A cancellation asked before the first lease withdraws that promise.
pub async fn first_lease(store: &dyn Store) {
    let id = "01FIRST000000000000000000A";
    new_run(store, id).await;
    store
        .request_cancel(id, draft(Some(id), "run.cancel_requested", json!({})))
        .await
        .expect("cancel");
    let lease = take(store, id, "proc-a", None).await;
    assert_eq!(lease.token, 1);
    assert!(
        !lease.first,
        "a cancelled run must be read back, not started as created"
    );

    let id = "01FIRST000000000000000000B";
    new_run(store, id).await;
    let lease = take(store, id, "proc-a", None).await;
    assert!(lease.first);
    store.release_lease(&lease).await.expect("release");
    let again = take(store, id, "proc-b", None).await;
    assert!(!again.first, "a run leased before may have been executed");
}

pub async fn lease_lifecycle(store: &dyn Store) {
    let id = "01LEASE000000000000000000A";
    new_run(store, id).await;
    assert_eq!(store.lease_holder(id).await.expect("holder"), None);

    let a1 = take(store, id, "proc-a", None).await;
    assert_eq!((a1.owner.as_str(), a1.run_id.as_str()), ("proc-a", id));
    assert!(a1.first, "the first lease of a queued run is its first");
    let holder = store.lease_holder(id).await.expect("holder").expect("held");
    assert_eq!(holder.owner, "proc-a");

    // Held by someone else: refused, unless stealing from exactly that owner.
    assert_eq!(
        store
            .acquire_lease(id, "proc-b", 60_000, None)
            .await
            .expect("b"),
        None
    );
    assert_eq!(
        store
            .acquire_lease(id, "proc-b", 60_000, Some("proc-x"))
            .await
            .expect("b"),
        None
    );

    // Ours again: a new token.
    let a2 = take(store, id, "proc-a", None).await;
    assert!(a2.token > a1.token);
    assert!(!a2.first, "a second lease is not the first");
    assert!(matches!(
        store.renew_lease(&a1, 60_000).await,
        Err(StoreError::LeaseLost(r)) if r == id
    ));
    store.renew_lease(&a2, 60_000).await.expect("renew current");

    // Stolen from a process proven dead.
    let b = take(store, id, "proc-b", Some("proc-a")).await;
    assert!(b.token > a2.token);
    assert!(!b.first);
    assert!(matches!(
        store.commit(&a2, vec![], vec![]).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.renew_lease(&a2, 1000).await,
        Err(StoreError::LeaseLost(_))
    ));
    // Releasing a lost lease leaves the new holder alone.
    store.release_lease(&a2).await.expect("release lost");
    assert_eq!(
        store
            .lease_holder(id)
            .await
            .expect("holder")
            .map(|h| h.owner),
        Some("proc-b".into())
    );

    // Expiry: a lease renewed with no time left is free for anyone.
    store.renew_lease(&b, 0).await.expect("renew to now");
    assert_eq!(store.lease_holder(id).await.expect("holder"), None);
    let c = take(store, id, "proc-c", None).await;
    assert!(c.token > b.token);
    assert!(matches!(
        store.commit(&b, vec![], vec![]).await,
        Err(StoreError::LeaseLost(_))
    ));

    // Release keeps the counter: the next token is still higher.
    store.release_lease(&c).await.expect("release");
    assert_eq!(store.lease_holder(id).await.expect("holder"), None);
    assert!(matches!(
        store.commit(&c, vec![], vec![]).await,
        Err(StoreError::LeaseLost(_))
    ));
    let d = take(store, id, "proc-d", None).await;
    assert!(d.token > c.token);

    // A commit can give the lease up with its changes: the run's state and the release
    // land together, the lease is then free, and the old lease commits nothing more.
    store
        .commit(
            &d,
            vec![
                Change::Run {
                    status: RunStatus::Waiting,
                    error: None,
                    started_at: None,
                    finished_at: None,
                },
                Change::ReleaseLease,
            ],
            vec![draft(Some(id), "run.waiting", json!({}))],
        )
        .await
        .expect("commit and release");
    assert_eq!(store.lease_holder(id).await.expect("holder"), None);
    assert_eq!(
        store.get_run(id).await.expect("get").expect("run").status,
        RunStatus::Waiting
    );
    assert!(matches!(
        store.commit(&d, vec![], vec![]).await,
        Err(StoreError::LeaseLost(_))
    ));
    let e = take(store, id, "proc-e", None).await;
    assert!(e.token > d.token);

    assert!(matches!(
        store.acquire_lease("no-such-run", "proc-a", 1000, None).await,
        Err(StoreError::RunNotFound(r)) if r == "no-such-run"
    ));
}

pub async fn stale_commit_changes_nothing(store: &dyn Store) {
    let id = "01STALE000000000000000000A";
    new_run(store, id).await;
    let old = take(store, id, "proc-a", None).await;
    let new = take(store, id, "proc-b", Some("proc-a")).await;
    let events_before = store.audit_events(None).await.expect("events").len();
    let head_before = store.audit_head().await.expect("head");
    let err = store
        .commit(
            &old,
            vec![
                Change::Run {
                    status: RunStatus::Failed,
                    error: Some("stale".into()),
                    started_at: Some("2026-11-25T23:00:00.000Z".into()),
                    finished_at: None,
                },
                Change::Step(step(id, "suspend", StepStatus::Running)),
            ],
            vec![draft(Some(id), "step.started", json!({}))],
        )
        .await;
    assert!(matches!(err, Err(StoreError::LeaseLost(r)) if r == id));
    let stored = store.get_run(id).await.expect("get").expect("run");
    assert_eq!(stored.status, RunStatus::Queued);
    assert_eq!(stored.error, None);
    assert!(store.steps(id).await.expect("steps").is_empty());
    assert_eq!(
        store.audit_events(None).await.expect("events").len(),
        events_before
    );
    assert_eq!(store.audit_head().await.expect("head"), head_before);
    // The current holder still commits.
    store
        .commit(
            &new,
            vec![Change::Step(step(id, "suspend", StepStatus::Running))],
            vec![],
        )
        .await
        .expect("current lease commits");
}

pub async fn commit_is_atomic(store: &dyn Store) {
    let id = "01ATOMIC00000000000000000A";
    new_run(store, id).await;
    let lease = take(store, id, "proc-a", None).await;
    store
        .commit(&lease, vec![Change::Evidence(evidence(id, "ev-1"))], vec![])
        .await
        .expect("first evidence");
    let events_before = store.audit_events(None).await.expect("events").len();
    let head_before = store.audit_head().await.expect("head");

    // The duplicate evidence id fails the commit after the run and step changes applied.
    let result = store
        .commit(
            &lease,
            vec![
                Change::Run {
                    status: RunStatus::Running,
                    error: None,
                    started_at: Some("2026-11-25T23:00:00.000Z".into()),
                    finished_at: None,
                },
                Change::Step(step(id, "snapshot", StepStatus::Succeeded)),
                Change::Evidence(evidence(id, "ev-1")),
            ],
            vec![
                draft(Some(id), "step.succeeded", json!({})),
                draft(Some(id), "evidence.collected", json!({})),
            ],
        )
        .await;
    assert!(
        result.is_err(),
        "a duplicate evidence id must fail the commit"
    );
    let stored = store.get_run(id).await.expect("get").expect("run");
    assert_eq!(stored.status, RunStatus::Queued);
    assert_eq!(stored.started_at, None);
    assert!(store.steps(id).await.expect("steps").is_empty());
    assert_eq!(store.evidence(id).await.expect("evidence").len(), 1);
    assert_eq!(
        store.audit_events(None).await.expect("events").len(),
        events_before
    );
    assert_eq!(store.audit_head().await.expect("head"), head_before);

    // A change for another run is refused too, and also changes nothing.
    let result = store
        .commit(
            &lease,
            vec![
                Change::Step(step(id, "a", StepStatus::Running)),
                Change::Step(step("some-other-run", "b", StepStatus::Running)),
            ],
            vec![draft(Some(id), "step.started", json!({}))],
        )
        .await;
    assert!(result.is_err());
    assert!(store.steps(id).await.expect("steps").is_empty());
    assert_eq!(
        store.audit_events(None).await.expect("events").len(),
        events_before
    );
}

pub async fn commit_round_trips_state(store: &dyn Store) {
    let id = "01STATE000000000000000000A";
    new_run(store, id).await;
    let lease = take(store, id, "proc-a", None).await;

    // JSON that must come back exactly: key order, unicode, big integers, floats, nesting.
    let tricky = json!({
        "zeta": 1, "alpha": [1, 2.5, -0.1, 18446744073709551615u64, -9223372036854775808i64],
        "nested": {"b": null, "a": true, "emoji": "🔒 \"quoted\" \\ </script>"},
        "empty": {}, "list": []
    });
    let mut s2 = step(id, "suspend", StepStatus::Running);
    s2.inputs = Some(tricky.clone());
    let mut i0 = item(id, "suspend", 0);
    i0.prior_state = Some(json!({"status": "ACTIVE"}));
    i0.secret_output = Some(json!({"pin": "123456"}));
    store
        .commit(
            &lease,
            vec![
                Change::Run {
                    status: RunStatus::Running,
                    error: None,
                    started_at: Some("2026-11-25T23:00:01.000Z".into()),
                    finished_at: None,
                },
                // Inserted first despite the name: order is insertion order, not name order.
                Change::Step(step(id, "zz-lookup", StepStatus::Succeeded)),
                Change::Step(s2.clone()),
                Change::Item(item(id, "suspend", 2)),
                Change::Item(i0.clone()),
                Change::Item(item(id, "suspend", 1)),
            ],
            vec![draft(Some(id), "step.started", tricky.clone())],
        )
        .await
        .expect("commit");

    // Upsert replaces the whole row but keeps the step's position.
    let mut lookup = step(id, "zz-lookup", StepStatus::Failed);
    lookup.error = Some("boom".into());
    lookup.output = Some(json!([{"id": "00u1"}]));
    lookup.attempts = 3;
    store
        .commit(
            &lease,
            vec![
                Change::Run {
                    status: RunStatus::Failed,
                    error: Some("step zz-lookup failed".into()),
                    // Already set: ignored.
                    started_at: Some("2030-01-01T00:00:00.000Z".into()),
                    finished_at: Some("2026-11-25T23:09:00.000Z".into()),
                },
                Change::Step(lookup.clone()),
                Change::TruncateItems {
                    step_id: "suspend".into(),
                    from_idx: 2,
                },
            ],
            vec![],
        )
        .await
        .expect("commit 2");

    let r = store.get_run(id).await.expect("get").expect("run");
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(r.started_at.as_deref(), Some("2026-11-25T23:00:01.000Z"));
    assert_eq!(r.finished_at.as_deref(), Some("2026-11-25T23:09:00.000Z"));
    assert_eq!(r.error.as_deref(), Some("step zz-lookup failed"));

    let steps = store.steps(id).await.expect("steps");
    assert_eq!(steps, vec![lookup, s2]);
    assert_eq!(
        serde_json::to_string(&steps[1].inputs).expect("ser"),
        serde_json::to_string(&Some(&tricky)).expect("ser"),
        "key order survives"
    );
    let items = store.items(id).await.expect("items");
    assert_eq!(items, vec![i0, item(id, "suspend", 1)]);

    let events = store.audit_events(Some(id)).await.expect("events");
    let started = events
        .iter()
        .find(|e| e.action == "step.started")
        .expect("event");
    assert_eq!(started.details, tricky);

    // A retry clears error and finished_at (None is written as given).
    store
        .commit(
            &lease,
            vec![Change::Run {
                status: RunStatus::Running,
                error: None,
                started_at: None,
                finished_at: None,
            }],
            vec![],
        )
        .await
        .expect("commit 3");
    let r = store.get_run(id).await.expect("get").expect("run");
    assert_eq!((r.error, r.finished_at), (None, None));
    assert_eq!(r.started_at.as_deref(), Some("2026-11-25T23:00:01.000Z"));
}

pub async fn decisions_cancel_pause_evidence(store: &dyn Store) {
    let id = "01MISC0000000000000000000A";
    new_run(store, id).await;

    let d1 = Decision {
        run_id: id.into(),
        step_id: "approve".into(),
        decision: "approve".into(),
        decided_by: "cli:lee".into(),
        comment: Some("confirmed with HR <ok>".into()),
        at: "2026-11-25T23:10:00.000Z".into(),
        releases: json!({"suspend": {"user": "00u1"}}),
    };
    let mut d0 = d1.clone();
    d0.decided_by = "cli:kim".into();
    d0.comment = None;
    d0.at = "2026-11-25T23:09:00.000Z".into();
    store
        .add_decision(
            d1.clone(),
            draft(Some(id), "approval.decided", json!({"by": "lee"})),
        )
        .await
        .expect("decide");
    store
        .add_decision(
            d0.clone(),
            draft(Some(id), "approval.decided", json!({"by": "kim"})),
        )
        .await
        .expect("decide");
    assert_eq!(
        store.decisions(id).await.expect("decisions"),
        vec![d0, d1.clone()]
    );
    let mut orphan = d1.clone();
    orphan.run_id = "no-such-run".into();
    assert!(matches!(
        store
            .add_decision(orphan, draft(None, "approval.decided", json!({})))
            .await,
        Err(StoreError::RunNotFound(_))
    ));

    assert!(
        !store
            .get_run(id)
            .await
            .expect("get")
            .expect("run")
            .cancel_requested
    );
    store
        .request_cancel(id, draft(Some(id), "run.cancel_requested", json!({})))
        .await
        .expect("cancel");
    assert!(
        store
            .get_run(id)
            .await
            .expect("get")
            .expect("run")
            .cancel_requested
    );
    assert!(matches!(
        store
            .request_cancel(
                "no-such-run",
                draft(None, "run.cancel_requested", json!({}))
            )
            .await,
        Err(StoreError::RunNotFound(_))
    ));

    assert!(!store.is_paused().await.expect("paused"));
    store
        .set_paused(true, draft(None, "engine.paused", json!({})))
        .await
        .expect("pause");
    assert!(store.is_paused().await.expect("paused"));
    store
        .set_paused(false, draft(None, "engine.unpaused", json!({})))
        .await
        .expect("unpause");
    assert!(!store.is_paused().await.expect("paused"));

    let lease = take(store, id, "proc-a", None).await;
    let e1 = evidence(id, "ev-b");
    let mut e2 = evidence(id, "ev-a");
    e2.collected_at = "2026-11-25T23:59:00.000Z".into();
    store
        .commit(
            &lease,
            vec![Change::Evidence(e2.clone()), Change::Evidence(e1.clone())],
            vec![],
        )
        .await
        .expect("evidence");
    assert_eq!(store.evidence(id).await.expect("evidence"), vec![e1, e2]);

    store
        .append_audit(vec![
            draft(None, "config.loaded", json!({"path": "/etc/cordon.yaml"})),
            draft(Some(id), "audit.exported", json!({"format": "html"})),
        ])
        .await
        .expect("append");
    store.append_audit(vec![]).await.expect("append nothing");

    let actions: Vec<String> = store
        .audit_events(Some(id))
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            "run.created",
            "approval.decided",
            "approval.decided",
            "run.cancel_requested",
            "audit.exported"
        ]
    );
    let all = store.audit_events(None).await.expect("events");
    assert!(all
        .iter()
        .any(|e| e.action == "engine.paused" && e.run_id.is_none()));
    assert_chain_intact(store).await;
}

pub fn draft_record(run_id: &str, draft_id: &str, created_at: &str) -> DraftRecord {
    DraftRecord {
        draft_id: draft_id.into(),
        run_id: run_id.into(),
        step_id: "draft-fbi".into(),
        idx: 0,
        template: "fbi-ic3-complaint".into(),
        audience: "authority".into(),
        subject: "IC3 complaint: remote IT worker \u{2014} case A-1".into(),
        to: Some(json!(["FBI Phoenix", "ic3.gov"])),
        body_markdown: "# IC3 complaint\n\n- IP `203.0.113.7` \\[Astrill\\]\n".into(),
        body_text: "IC3 COMPLAINT\n\n- IP 203.0.113.7 [Astrill]\n".into(),
        body_sha256: "cd".repeat(32),
        facts: json!({"case": {"id": "A-1"}, "payments": {"items": [], "total_paid": "[COUNSEL TO COMPLETE: payments.total_paid]"}}),
        created_at: created_at.into(),
    }
}

/// Drafts are stored under the run's lease, with the step result, and read back exactly,
/// oldest first; a draft of another run is refused under this run's lease.
pub async fn drafts_round_trip(store: &dyn Store) {
    let id = "01DRFT0000000000000000000A";
    new_run(store, id).await;
    assert!(store.drafts(id).await.expect("drafts").is_empty());
    assert_eq!(store.draft("no-such-draft").await.expect("draft"), None);
    let lease = take(store, id, "proc-d", None).await;
    let later = draft_record(id, "01DRAFTB", "2026-11-26T00:00:02.000Z");
    let mut earlier = draft_record(id, "01DRAFTA", "2026-11-26T00:00:01.000Z");
    earlier.to = None;
    earlier.idx = 3;
    earlier.audience = "internal".into();
    store
        .commit(
            &lease,
            vec![Change::Draft(later.clone()), Change::Draft(earlier.clone())],
            vec![draft(
                Some(id),
                "draft.created",
                json!({"template": "fbi-ic3-complaint", "sha256": "cd".repeat(32)}),
            )],
        )
        .await
        .expect("commit drafts");
    assert_eq!(
        store.drafts(id).await.expect("drafts"),
        vec![earlier.clone(), later.clone()]
    );
    assert_eq!(store.draft("01DRAFTB").await.expect("draft"), Some(later));

    // Under this run's lease, a draft that names another run is refused, and nothing of the
    // commit is applied.
    let foreign = draft_record(
        "01OTHER000000000000000000A",
        "01DRAFTC",
        "2026-11-26T00:00:03.000Z",
    );
    let mut own = draft_record(id, "01DRAFTD", "2026-11-26T00:00:04.000Z");
    own.subject = "must not be stored".into();
    assert!(store
        .commit(
            &lease,
            vec![Change::Draft(own), Change::Draft(foreign)],
            vec![]
        )
        .await
        .is_err());
    assert_eq!(store.drafts(id).await.expect("drafts").len(), 2);
    assert_eq!(store.draft("01DRAFTD").await.expect("draft"), None);
    assert_chain_intact(store).await;
}

pub async fn list_filters(store: &dyn Store) {
    let mut a = run(
        "01LIST0000000000000000000A",
        None,
        "2027-01-01T00:00:01.000Z",
    );
    a.case_id = "case-1".into();
    let mut b = run(
        "01LIST0000000000000000000B",
        None,
        "2027-01-01T00:00:02.000Z",
    );
    b.runbook = "laptop-recovery".into();
    b.case_id = "case-1".into();
    b.inputs = json!({"subject_email": "j.smith@example.com", "alert_id": "alert-b"});
    let c = run(
        "01LIST0000000000000000000C",
        None,
        "2027-01-01T00:00:03.000Z",
    );
    for r in [&a, &b, &c] {
        store
            .create_run(r.clone(), draft(Some(&r.id), "run.created", json!({})))
            .await
            .expect("create");
    }
    let lease = take(store, &c.id, "p", None).await;
    store
        .commit(
            &lease,
            vec![Change::Run {
                status: RunStatus::Running,
                error: None,
                started_at: Some("2027-01-01T00:00:04.000Z".into()),
                finished_at: None,
            }],
            vec![],
        )
        .await
        .expect("commit");

    let ids = |runs: Vec<RunRecord>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let all = ids(store.list_runs(&RunFilter::default()).await.expect("list"));
    // Newest first; the three newest runs are ours (other tests use earlier timestamps).
    assert_eq!(all[..3], [c.id.clone(), b.id.clone(), a.id.clone()]);
    let filter = RunFilter {
        limit: Some(2),
        ..RunFilter::default()
    };
    assert_eq!(
        ids(store.list_runs(&filter).await.expect("list")),
        [c.id.clone(), b.id.clone()]
    );
    let filter = RunFilter {
        case_id: Some("case-1".into()),
        ..RunFilter::default()
    };
    assert_eq!(
        ids(store.list_runs(&filter).await.expect("list")),
        [b.id.clone(), a.id.clone()]
    );
    let filter = RunFilter {
        runbook: Some("laptop-recovery".into()),
        ..RunFilter::default()
    };
    assert_eq!(
        ids(store.list_runs(&filter).await.expect("list")),
        [b.id.clone()]
    );
    let filter = RunFilter {
        status: Some(RunStatus::Running),
        ..RunFilter::default()
    };
    let running = store.list_runs(&filter).await.expect("list");
    assert!(running.iter().all(|r| r.status == RunStatus::Running));
    let running = ids(running);
    assert!(running.contains(&c.id) && !running.contains(&a.id) && !running.contains(&b.id));
    let filter = RunFilter {
        status: Some(RunStatus::Queued),
        runbook: Some("nk-it-worker".into()),
        case_id: Some("case-1".into()),
        limit: Some(10),
        ..RunFilter::default()
    };
    assert_eq!(
        ids(store.list_runs(&filter).await.expect("list")),
        [a.id.clone()]
    );
    // Subject: a case-insensitive part of the `subject_email` input; `%` is not a wildcard.
    let filter = RunFilter {
        subject: Some("J.Smith@Example".into()),
        ..RunFilter::default()
    };
    assert_eq!(
        ids(store.list_runs(&filter).await.expect("list")),
        [b.id.clone()]
    );
    let filter = RunFilter {
        subject: Some("%".into()),
        ..RunFilter::default()
    };
    assert_eq!(
        ids(store.list_runs(&filter).await.expect("list")),
        Vec::<String>::new()
    );
    // Active runs only: c is running, a and b are queued; none has finished.
    let filter = RunFilter {
        active: true,
        ..RunFilter::default()
    };
    let active = ids(store.list_runs(&filter).await.expect("list"));
    assert!(
        [&a.id, &b.id, &c.id].iter().all(|id| active.contains(id)),
        "{active:?}"
    );
    // Creation time: from inclusive, before exclusive.
    let filter = RunFilter {
        created_from: Some("2027-01-01T00:00:02.000Z".into()),
        created_before: Some("2027-01-01T00:00:03.000Z".into()),
        ..RunFilter::default()
    };
    assert_eq!(
        ids(store.list_runs(&filter).await.expect("list")),
        [b.id.clone()]
    );
}

/// Eight tasks commit to their own runs at once through one store; the chain stays whole.
pub async fn concurrent_commits(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    const COMMITS: usize = 10;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let id = format!("01CONC{t:020}");
            new_run(store.as_ref(), &id).await;
            let lease = store
                .acquire_lease(&id, &format!("task-{t}"), 60_000, None)
                .await
                .expect("lease")
                .expect("free");
            for n in 0..COMMITS {
                store
                    .commit(
                        &lease,
                        vec![Change::Item(item(&id, "suspend", n as u32))],
                        vec![
                            draft(Some(&id), "step.started", json!({"n": n})),
                            draft(Some(&id), "step.succeeded", json!({"n": n})),
                        ],
                    )
                    .await
                    .expect("commit");
            }
            id
        }));
    }
    for h in handles {
        let id = h.await.expect("task");
        assert_eq!(store.items(&id).await.expect("items").len(), COMMITS);
        assert_eq!(
            store.audit_events(Some(&id)).await.expect("events").len(),
            1 + 2 * COMMITS
        );
    }
    assert_chain_intact(store.as_ref()).await;
}

/// Two handles on one database (two processes) interleave commits into one chain.
pub async fn two_handles(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    const COMMITS: usize = 15;
    let run_a = "01TWOHANDLES0000000000000A";
    let run_b = "01TWOHANDLES0000000000000B";
    new_run(a.as_ref(), run_a).await;
    new_run(b.as_ref(), run_b).await;
    // Each handle sees the other's writes.
    assert!(b.get_run(run_a).await.expect("get").is_some());
    let la = a
        .acquire_lease(run_a, "proc-a", 60_000, None)
        .await
        .expect("a")
        .expect("a");
    let lb = b
        .acquire_lease(run_b, "proc-b", 60_000, None)
        .await
        .expect("b")
        .expect("b");
    // Handle b cannot take a's lease: leases live in the database, not the handle.
    assert_eq!(
        b.acquire_lease(run_a, "proc-b", 60_000, None)
            .await
            .expect("b"),
        None
    );

    let work = |store: Arc<dyn Store>, lease: super::Lease| async move {
        for n in 0..COMMITS {
            store
                .commit(
                    &lease,
                    vec![Change::Step(step(
                        &lease.run_id,
                        &format!("s{n}"),
                        StepStatus::Succeeded,
                    ))],
                    vec![draft(
                        Some(&lease.run_id),
                        "step.succeeded",
                        json!({"n": n}),
                    )],
                )
                .await
                .expect("commit");
            tokio::task::yield_now().await;
        }
    };
    let (ra, rb) = tokio::join!(
        tokio::spawn(work(Arc::clone(&a), la)),
        tokio::spawn(work(Arc::clone(&b), lb))
    );
    ra.expect("a");
    rb.expect("b");
    for store in [&a, &b] {
        assert_eq!(store.steps(run_a).await.expect("steps").len(), COMMITS);
        assert_eq!(store.steps(run_b).await.expect("steps").len(), COMMITS);
        assert_chain_intact(store.as_ref()).await;
    }
    let events = a.audit_events(None).await.expect("events");
    assert_eq!(events.len(), 2 * (1 + COMMITS));
}

/// Webhook deliveries are remembered in the run's transaction (a repeat stores nothing),
/// expire, and are purged; and the queries `cordon serve` sweeps with.
pub async fn dedup_keys_and_service_queries(store: &dyn Store) {
    let key = |hook: &str, kind: &str, k: &str| DedupKey {
        hook: hook.into(),
        kind: kind.into(),
        key: k.into(),
    };
    let since = "2026-10-26T00:00:00.000Z";
    let once = |id: &'static str, keys: Vec<DedupKey>, since: &'static str| async move {
        store
            .create_run_once(
                run(id, None, "2026-11-25T23:10:00.000Z"),
                draft(Some(id), "run.created", json!({})),
                &keys,
                since,
            )
            .await
            .expect("create_run_once")
    };
    let first = once(
        "dd-1",
        vec![
            key("siem", "webhook-id", "msg-1"),
            key("siem", "dedup_key", "A-1"),
        ],
        since,
    )
    .await;
    assert!(
        matches!(first, Triggered::Created(ref c) if matches!(**c, Created::New(ref r) if r.id == "dd-1"))
    );
    let events = store.audit_events(None).await.expect("events").len();
    // A repeat by delivery id stores nothing, not even an audit event.
    let again = once("dd-2", vec![key("siem", "webhook-id", "msg-1")], since).await;
    assert!(
        matches!(again, Triggered::Duplicate(ref id) if id == "dd-1"),
        "{again:?}"
    );
    assert!(store.get_run("dd-2").await.expect("get").is_none());
    assert_eq!(
        store.audit_events(None).await.expect("events").len(),
        events
    );
    // A repeat by dedup key under a new delivery id: the new id is not remembered either.
    let again = once(
        "dd-3",
        vec![
            key("siem", "webhook-id", "msg-2"),
            key("siem", "dedup_key", "A-1"),
        ],
        since,
    )
    .await;
    assert!(
        matches!(again, Triggered::Duplicate(ref id) if id == "dd-1"),
        "{again:?}"
    );
    let fresh = once("dd-3", vec![key("siem", "webhook-id", "msg-2")], since).await;
    assert!(
        matches!(fresh, Triggered::Created(ref c) if matches!(**c, Created::New(_))),
        "{fresh:?}"
    );
    // Keys are per hook.
    let other = once("dd-4", vec![key("other", "webhook-id", "msg-1")], since).await;
    assert!(
        matches!(other, Triggered::Created(ref c) if matches!(**c, Created::New(_))),
        "{other:?}"
    );
    // A key older than the remembering window is taken over by the new run.
    let expired = once(
        "dd-5",
        vec![key("siem", "webhook-id", "msg-1")],
        "2999-01-01T00:00:00.000Z",
    )
    .await;
    assert!(
        matches!(expired, Triggered::Created(ref c) if matches!(**c, Created::New(_))),
        "{expired:?}"
    );
    let again = once("dd-6", vec![key("siem", "webhook-id", "msg-1")], since).await;
    assert!(
        matches!(again, Triggered::Duplicate(ref id) if id == "dd-5"),
        "{again:?}"
    );
    // Purging forgets everything older than the bound.
    let purged = store
        .purge_dedup_keys("2999-01-01T00:00:00.000Z")
        .await
        .expect("purge");
    assert!(purged >= 4, "{purged}");
    let after = once("dd-6", vec![key("siem", "webhook-id", "msg-1")], since).await;
    assert!(
        matches!(after, Triggered::Created(ref c) if matches!(**c, Created::New(_))),
        "{after:?}"
    );

    // Unfinished runs with a live lease, and its holder; a queued run nobody holds is not
    // listed.
    let lease = take(store, "dd-4", "host/1/x", None).await;
    let held = store.held_runs().await.expect("held");
    assert!(held.iter().all(|u| u.id != "dd-1"), "{held:?}");
    let dd4 = held.iter().find(|u| u.id == "dd-4").expect("dd-4");
    assert_eq!(
        (dd4.status, dd4.lease.owner.as_str()),
        (RunStatus::Queued, "host/1/x")
    );

    // A waiting step past its deadline makes the run overdue.
    let mut gate = step("dd-4", "approve", StepStatus::Waiting);
    gate.deadline = Some("2026-11-25T23:30:00.000Z".into());
    let ev = evidence("dd-4", "ev-dd-4");
    store
        .commit(
            &lease,
            vec![
                Change::Run {
                    status: RunStatus::Waiting,
                    error: None,
                    started_at: None,
                    finished_at: None,
                },
                Change::Step(gate),
                Change::Evidence(ev.clone()),
            ],
            vec![],
        )
        .await
        .expect("commit");
    let overdue = store
        .overdue_runs("2026-11-26T00:00:00.000Z")
        .await
        .expect("overdue");
    assert!(overdue.contains(&"dd-4".to_string()), "{overdue:?}");
    let early = store
        .overdue_runs("2026-11-25T23:00:00.000Z")
        .await
        .expect("overdue");
    assert!(!early.contains(&"dd-4".to_string()), "{early:?}");
    assert!(!store
        .held_runs()
        .await
        .expect("held")
        .iter()
        .any(|u| u.id == "dd-4"));
    assert_eq!(store.get_evidence("ev-dd-4").await.expect("get"), Some(ev));
    assert_eq!(store.get_evidence("no-such").await.expect("get"), None);

    let counts = store.run_counts().await.expect("counts");
    let n = |s: RunStatus| counts.iter().find(|(st, _)| *st == s).map(|(_, n)| *n);
    assert!(n(RunStatus::Waiting) >= Some(1), "{counts:?}");
    assert!(n(RunStatus::Queued) >= Some(5), "{counts:?}");
    let listed = store
        .list_runs(&RunFilter::default())
        .await
        .expect("list")
        .len() as u64;
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), listed);
}

/// Fire times are claimed once, with their run; marks never replace a fire; the state and
/// the purge keep the newest.
pub async fn schedule_fires(store: &dyn Store) {
    let sched = "sweep@abc";
    let t1 = "2026-11-25T10:15:00.000Z";
    let events = store.audit_events(None).await.expect("events").len();
    let fired = store
        .fire_schedule(
            sched,
            t1,
            run("sf-1", None, "2026-11-25T10:15:00.010Z"),
            draft(Some("sf-1"), "run.created", json!({})),
            Some(draft(None, "schedule.missed", json!({"count": 2}))),
        )
        .await
        .expect("fire");
    assert!(
        matches!(fired, Fired::Claimed(ref c) if matches!(**c, Created::New(ref r) if r.id == "sf-1"))
    );
    assert_eq!(
        store.audit_events(None).await.expect("events").len(),
        events + 2,
        "run.created and schedule.missed in the same transaction"
    );
    // The same fire time again (a restart, another process): nothing stored.
    let again = store
        .fire_schedule(
            sched,
            t1,
            run("sf-2", None, "2026-11-25T10:15:00.020Z"),
            draft(Some("sf-2"), "run.created", json!({})),
            Some(draft(None, "schedule.missed", json!({"count": 1}))),
        )
        .await
        .expect("fire again");
    assert!(
        matches!(again, Fired::Duplicate(Some(ref id)) if id == "sf-1"),
        "{again:?}"
    );
    assert!(store.get_run("sf-2").await.expect("get").is_none());
    assert_eq!(
        store.audit_events(None).await.expect("events").len(),
        events + 2
    );
    // Another schedule may fire at the same time.
    let other = store
        .fire_schedule(
            "other",
            t1,
            run("sf-3", None, "2026-11-25T10:15:00.030Z"),
            draft(Some("sf-3"), "run.created", json!({})),
            None,
        )
        .await
        .expect("other");
    assert!(matches!(other, Fired::Claimed(_)));
    // A mark never replaces a fire; a new mark is stored with its event.
    let mark = |t: &str, outcome: &str, at: &str| ScheduleFire {
        schedule: sched.into(),
        fire_time: t.into(),
        outcome: outcome.into(),
        run_id: None,
        missed: 3,
        at: at.into(),
    };
    assert!(!store
        .mark_schedule(
            mark(t1, "missed", "2026-11-25T10:16:00.000Z"),
            Some(draft(None, "schedule.missed", json!({})))
        )
        .await
        .expect("mark"));
    assert_eq!(
        store.audit_events(None).await.expect("events").len(),
        events + 3
    );
    let t2 = "2026-11-25T11:00:00.000Z";
    assert!(store
        .mark_schedule(
            mark(t2, "missed", "2026-11-25T11:30:00.000Z"),
            Some(draft(None, "schedule.missed", json!({})))
        )
        .await
        .expect("mark"));
    assert_eq!(
        store.audit_events(None).await.expect("events").len(),
        events + 4
    );
    let state = store.schedule_state(sched).await.expect("state");
    assert_eq!(
        state.through.as_deref(),
        Some(t2),
        "missed rows count as handled"
    );
    let last = state.last_fire.expect("a fire");
    assert_eq!(
        (
            last.fire_time.as_str(),
            last.run_id.as_deref(),
            last.outcome.as_str()
        ),
        (t1, Some("sf-1"), "fired")
    );
    assert_eq!(
        store.schedule_state("never").await.expect("state"),
        Default::default()
    );
    // A fire joining an active run with the same concurrency key is recorded as joined.
    store
        .create_run(
            run("sf-k1", Some("K-1"), "2026-11-25T12:00:00.000Z"),
            draft(Some("sf-k1"), "run.created", json!({})),
        )
        .await
        .expect("create");
    let joined = store
        .fire_schedule(
            "keyed",
            "2026-11-25T12:00:00.000Z",
            run("sf-k2", Some("K-1"), "2026-11-25T12:00:00.010Z"),
            draft(Some("sf-k2"), "run.created", json!({})),
            None,
        )
        .await
        .expect("joined");
    assert!(
        matches!(joined, Fired::Claimed(ref c) if matches!(**c, Created::Joined(ref r) if r.id == "sf-k1"))
    );
    let state = store.schedule_state("keyed").await.expect("state");
    assert_eq!(
        state.last_fire.map(|f| (f.outcome, f.run_id)),
        Some(("joined".into(), Some("sf-k1".into())))
    );
    // The purge forgets old rows but keeps each schedule's newest.
    let purged = store
        .purge_schedule_fires("2999-01-01T00:00:00.000Z")
        .await
        .expect("purge");
    assert_eq!(purged, 1, "only sweep@abc's older row");
    assert_eq!(
        store
            .schedule_state(sched)
            .await
            .expect("state")
            .through
            .as_deref(),
        Some(t2)
    );
    assert_eq!(
        store
            .schedule_state("other")
            .await
            .expect("state")
            .through
            .as_deref(),
        Some(t1)
    );
}

/// A notice is queued by the commit that makes a step wait, claimed by one owner, and
/// settled once with its event; a stale claim is taken over.
pub async fn waiting_notices(store: &dyn Store) {
    let id = "01NOTICE00000000000000000A";
    new_run(store, id).await;
    let lease = take(store, id, "proc-a", None).await;
    store
        .commit(
            &lease,
            vec![
                Change::Step(step(id, "approve", StepStatus::Waiting)),
                Change::WaitingNotice {
                    id: "n-1".into(),
                    step_id: "approve".into(),
                },
            ],
            vec![],
        )
        .await
        .expect("commit");
    store.release_lease(&lease).await.expect("release");
    let now = "2999-01-01T00:00:00.000Z";
    let stale = "2998-12-31T23:55:00.000Z";
    let due = store.due_notices(now, stale, 10).await.expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(
        (
            due[0].run_id.as_str(),
            due[0].step_id.as_str(),
            due[0].status.as_str()
        ),
        (id, "approve", "pending")
    );
    // One claimant wins.
    assert_eq!(
        store
            .claim_notice("n-1", "proc-a", now, stale)
            .await
            .expect("claim"),
        Some(1)
    );
    assert_eq!(
        store
            .claim_notice("n-1", "proc-b", now, stale)
            .await
            .expect("claim"),
        None
    );
    assert!(store
        .due_notices(now, stale, 10)
        .await
        .expect("due")
        .is_empty());
    // A failure to retry later: due again only at next_at.
    let events = store.audit_events(Some(id)).await.expect("events").len();
    assert!(store
        .settle_notice(
            "n-1",
            "proc-a",
            NoticeOutcome::Retry {
                next_at: "2999-01-01T00:01:00.000Z".into(),
                error: "503".into()
            },
            Some(draft(
                Some(id),
                "notify.waiting_failed",
                json!({"will_retry": true})
            )),
        )
        .await
        .expect("settle"));
    assert!(store
        .due_notices(now, stale, 10)
        .await
        .expect("due")
        .is_empty());
    let later = "2999-01-01T00:01:00.000Z";
    assert_eq!(
        store
            .claim_notice("n-1", "proc-b", later, stale)
            .await
            .expect("claim"),
        Some(2)
    );
    // Only the claimant settles.
    assert!(!store
        .settle_notice(
            "n-1",
            "proc-a",
            NoticeOutcome::Sent,
            Some(draft(Some(id), "notify.waiting_sent", json!({})))
        )
        .await
        .expect("settle"));
    // A claim older than the stale bound is taken over (its process died mid-send).
    let much_later = "2999-01-01T00:10:00.000Z";
    let stale_now = "2999-01-01T00:05:00.000Z";
    assert_eq!(
        store
            .due_notices(much_later, stale_now, 10)
            .await
            .expect("due")
            .len(),
        1
    );
    assert_eq!(
        store
            .claim_notice("n-1", "proc-c", much_later, stale_now)
            .await
            .expect("claim"),
        Some(3)
    );
    assert!(store
        .settle_notice(
            "n-1",
            "proc-c",
            NoticeOutcome::Sent,
            Some(draft(Some(id), "notify.waiting_sent", json!({})))
        )
        .await
        .expect("settle"));
    assert!(!store
        .settle_notice("n-1", "proc-b", NoticeOutcome::Sent, None)
        .await
        .expect("settle"));
    let all = store.notices(id).await.expect("notices");
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].status.as_str(), all[0].attempts), ("sent", 3));
    assert!(all[0].finished_at.is_some());
    // Sent is final: never due again.
    assert!(store
        .due_notices("3999-01-01T00:00:00.000Z", "3999-01-01T00:00:00.000Z", 10)
        .await
        .expect("due")
        .is_empty());
    assert_eq!(
        store.audit_events(Some(id)).await.expect("events").len(),
        events + 2
    );
}

/// Set a run's status under a lease taken and given back again.
async fn set_status(store: &dyn Store, id: &str, status: RunStatus) {
    let lease = take(store, id, "setter", None).await;
    store
        .commit(
            &lease,
            vec![Change::Run {
                status,
                error: None,
                started_at: Some("2026-01-01T00:00:00.000Z".into()),
                finished_at: None,
            }],
            vec![draft(
                Some(id),
                "run.status",
                json!({"status": status.as_str()}),
            )],
        )
        .await
        .expect("commit status");
    store.release_lease(&lease).await.expect("release");
}

/// Work claiming (several nodes): queued and running runs whose lease is free or expired,
/// oldest first, up to the limit; fresh queued runs are left alone. Expects a fresh store.
pub async fn claim_runnable(store: &dyn Store) {
    // Long ago, whatever the clock says today.
    let at = |s: u32| format!("2020-01-01T00:00:{s:02}.000Z");
    let ids = |leases: &[Lease]| leases.iter().map(|l| l.run_id.clone()).collect::<Vec<_>>();
    assert!(store
        .claim_runnable("nobody", 60_000, 0, 10)
        .await
        .expect("claim on an empty store")
        .is_empty());
    for (i, id) in [
        "cl-queued",
        "cl-running",
        "cl-waiting",
        "cl-done",
        "cl-held",
        "cl-expired",
    ]
    .iter()
    .enumerate()
    {
        store
            .create_run(
                run(id, None, &at(i as u32 + 1)),
                draft(Some(id), "run.created", json!({})),
            )
            .await
            .expect("create");
    }
    set_status(store, "cl-running", RunStatus::Running).await;
    set_status(store, "cl-waiting", RunStatus::Waiting).await;
    set_status(store, "cl-done", RunStatus::Succeeded).await;
    let held = take(store, "cl-held", "other-node", None).await;
    let expired = take(store, "cl-expired", "dead-node", None).await;
    store.renew_lease(&expired, 0).await.expect("expire");
    // Queued a moment ago by a process that is about to run it itself.
    store
        .create_run(
            run("cl-fresh", None, &crate::time::now()),
            draft(Some("cl-fresh"), "run.created", json!({})),
        )
        .await
        .expect("create fresh");

    assert!(store
        .claim_runnable("node-1", 60_000, 60_000, 0)
        .await
        .expect("limit 0")
        .is_empty());
    let first = store
        .claim_runnable("node-1", 60_000, 60_000, 2)
        .await
        .expect("claim");
    assert_eq!(
        ids(&first),
        ["cl-queued", "cl-running"],
        "oldest first, up to the limit"
    );
    let rest = store
        .claim_runnable("node-1", 60_000, 60_000, 10)
        .await
        .expect("claim");
    assert_eq!(
        ids(&rest),
        ["cl-expired"],
        "held, waiting, finished and fresh runs stay"
    );
    assert!(
        rest[0].token > expired.token,
        "a claim is a new fencing token"
    );
    assert!(rest.iter().chain(&first).all(|l| l.owner == "node-1"));
    for id in ["cl-queued", "cl-running", "cl-expired"] {
        assert_eq!(
            store
                .lease_holder(id)
                .await
                .expect("holder")
                .map(|h| h.owner),
            Some("node-1".into())
        );
    }
    assert_eq!(
        store
            .lease_holder("cl-held")
            .await
            .expect("holder")
            .map(|h| h.owner),
        Some("other-node".into())
    );
    // The dead node's lease is fenced off; the claim's commits.
    assert!(matches!(
        store.commit(&expired, vec![], vec![]).await,
        Err(StoreError::LeaseLost(r)) if r == "cl-expired"
    ));
    store
        .commit(
            &rest[0],
            vec![Change::Step(step("cl-expired", "s", StepStatus::Running))],
            vec![],
        )
        .await
        .expect("the claimed lease commits");
    // Everything claimable is held now.
    assert!(store
        .claim_runnable("node-2", 60_000, 60_000, 10)
        .await
        .expect("claim")
        .is_empty());
    // Without the freshness bound the fresh run is claimable too.
    let fresh = store
        .claim_runnable("node-2", 60_000, 0, 10)
        .await
        .expect("claim");
    assert_eq!(ids(&fresh), ["cl-fresh"]);
    // A released lease can be claimed again; the held one still cannot.
    store.release_lease(&first[0]).await.expect("release");
    let again = store
        .claim_runnable("node-2", 60_000, 0, 10)
        .await
        .expect("claim");
    assert_eq!(ids(&again), ["cl-queued"]);
    assert!(again[0].token > first[0].token);
    store.release_lease(&held).await.expect("release held");
    assert_eq!(
        ids(&store
            .claim_runnable("node-3", 60_000, 0, 10)
            .await
            .expect("claim")),
        ["cl-held"]
    );
    assert_chain_intact(store).await;
}

/// Several claimers on two handles (two nodes) at once: every runnable run is claimed by
/// exactly one of them.
pub async fn claim_concurrently(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    const RUNS: usize = 40;
    for i in 0..RUNS {
        let id = format!("01CLAIM{i:019}");
        a.create_run(
            run(&id, None, "2020-01-01T00:00:00.000Z"),
            draft(Some(&id), "run.created", json!({})),
        )
        .await
        .expect("create");
    }
    let mut handles = Vec::new();
    for c in 0..4 {
        let store = if c % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        handles.push(tokio::spawn(async move {
            let owner = format!("node-{c}");
            let mut got = Vec::new();
            loop {
                let leases = store
                    .claim_runnable(&owner, 60_000, 0, 3)
                    .await
                    .expect("claim");
                if leases.is_empty() {
                    break;
                }
                got.extend(leases.into_iter().map(|l| l.run_id));
                tokio::task::yield_now().await;
            }
            got
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("claimer"));
    }
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(total, all.len(), "a run was claimed twice");
    assert_eq!(all.len(), RUNS, "every run was claimed");
}
