//! The run loop. One task per run owns the run's state; item tasks do the calls.
//!
//! Each turn of the loop: read what other processes said (cancel, decisions), start the
//! ready steps (render their inputs once and store them), mark the next items `running`,
//! commit all of that in one transaction, and only then spawn the calls. Results that come
//! back are folded into the next turn's commit. A crash at any point leaves a state from
//! which [`drive`] continues: items found `running` are called again with the same
//! idempotency key.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cordon_connectors::catalog::{find_action, Effect};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::context::{dry_run_placeholders, RunContext};
use super::item::{idempotency_key, ItemDone, ItemJob, RetryPolicy, DEFAULT_TIMEOUT};
use super::{Engine, ExecError, Observer, Progress};
use crate::expr::Cel;
use crate::runbook::model::{OnTimeout, Step, StepKind};
use crate::runbook::validate::ValidatedRunbook;
use crate::store::{
    AuditDraft, Change, Decision, ItemRecord, Lease, RunRecord, RunStatus, StepRecord, StepStatus,
    Store, StoreError,
};

/// How often a busy run looks for decisions and cancellation from other processes.
const POLL: Duration = Duration::from_millis(500);
const DEFAULT_MAX_PARALLEL: u32 = 8;

/// Drive a run whose lease we hold, until it finishes or waits for people. The flag: a
/// decision arrived while the run parked, so it must be driven again.
///
/// `created`: the run as this process created it. It is used only under the run's first
/// lease ([`Lease::first`]): nothing has changed the run since, and it has no steps or
/// items yet. Otherwise the run is read.
pub async fn drive(
    engine: Engine,
    lease: Lease,
    created: Option<RunRecord>,
    observer: Arc<dyn Observer>,
) -> Result<(RunRecord, bool), ExecError> {
    let store = engine.inner.store.clone();
    let run = match created.filter(|r| lease.first && r.id == lease.run_id) {
        Some(run) => run,
        None => store
            .get_run(&lease.run_id)
            .await?
            .ok_or_else(|| ExecError::NotFound(lease.run_id.clone()))?,
    };
    if !run.status.is_active() && !run.cancel_requested {
        store.release_lease(&lease).await?;
        return Ok((run, false));
    }
    let rb = engine.stored_runbook(&run)?;
    let lost = Arc::new(AtomicBool::new(false));
    let cancel = CancellationToken::new();
    let cluster = engine.inner.config.cluster.clone();
    let heartbeat = {
        let store = store.clone();
        let lease = lease.clone();
        let lost = lost.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(cluster.heartbeat).await;
                if let Err(e) = store.renew_lease(&lease, cluster.lease_ttl_ms()).await {
                    if matches!(e, StoreError::LeaseLost(_)) {
                        lost.store(true, Ordering::SeqCst);
                        cancel.cancel();
                        return;
                    }
                    tracing::warn!(error = %e, "lease renewal failed; will retry");
                }
            }
        })
    };
    let mut runner = Runner::load(engine, lease, run, rb, observer, lost, cancel).await?;
    let result = runner.main().await;
    heartbeat.abort();
    if result.is_err() {
        runner.cancel.cancel();
    }
    result.map(|run| (run, runner.decided_while_parking))
}

/// What one commit of the run loop holds, for the crash points around it
/// ([`cordon_connectors::fault`]); only looked at when a point is armed.
#[derive(Default)]
struct CommitPoints {
    results: bool,
    starts: bool,
    finish: bool,
}

impl CommitPoints {
    fn of(changes: &[Change]) -> CommitPoints {
        let mut p = CommitPoints::default();
        for c in changes {
            match c {
                Change::Item(i) if i.status == StepStatus::Running => p.starts = true,
                Change::Item(i) if i.status.is_finished() => p.results = true,
                Change::Run { status, .. } if !status.is_active() => p.finish = true,
                _ => {}
            }
        }
        p
    }

    fn before(&self) {
        use cordon_connectors::fault::point;
        if self.results {
            point("step.before_commit");
        }
        if self.starts {
            point("step.before_start_commit");
        }
        if self.finish {
            point("run.before_finish_commit");
        }
    }

    fn after(&self) {
        use cordon_connectors::fault::point;
        if self.results {
            point("step.after_commit");
        }
        if self.starts {
            point("step.after_start_commit");
        }
        if self.finish {
            point("run.after_finish_commit");
        }
    }
}

/// The stored runbook, validated without the current configuration's instances (which may
/// have changed since the run started; connector resolution reports that per step).
pub(crate) fn stored_runbook(run: &RunRecord) -> Result<ValidatedRunbook, ExecError> {
    crate::runbook::validate::validate(
        &run.runbook_text,
        &format!("{} (stored with run {})", run.runbook, run.id),
        &crate::runbook::validate::ValidationContext::default(),
    )
    .map_err(|diags| ExecError::StoredRunbook {
        run: run.id.clone(),
        message: diags
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("; "),
    })
}

struct Runner {
    engine: Engine,
    store: Arc<dyn Store>,
    lease: Lease,
    observer: Arc<dyn Observer>,
    run: RunRecord,
    rb: Arc<ValidatedRunbook>,
    /// Main steps, then on_failure steps, in file order.
    order: Vec<(String, bool)>,
    steps: HashMap<String, StepRecord>,
    items: HashMap<String, Vec<ItemRecord>>,
    ctx: RunContext,
    changes: Vec<Change>,
    audit: Vec<AuditDraft>,
    running: HashMap<String, u32>,
    inflight: usize,
    tx: mpsc::UnboundedSender<ItemDone>,
    rx: mpsc::UnboundedReceiver<ItemDone>,
    cancel: CancellationToken,
    lost: Arc<AtomicBool>,
    failing: Option<String>,
    cancelling: bool,
    /// Dry run: steps whose action was not called.
    uncalled: BTreeSet<String>,
    /// Distinct targets of mutating items so far (guard `max_targets_per_run`).
    targets: BTreeSet<String>,
    cel: HashMap<String, crate::expr::CelProgram>,
    /// Step definitions by id (main and on_failure), shared with every run of the runbook.
    defs: Arc<HashMap<String, Step>>,
    /// Steps worth looking at in the next `schedule` (their needs may have finished).
    candidates: std::collections::VecDeque<String>,
    /// Steps that need each step.
    dependents: HashMap<String, Vec<String>>,
    on_failure_ids: BTreeSet<String>,
    on_failure_seeded: bool,
    /// Position of each step in `order`.
    pos: HashMap<String, usize>,
    /// Action steps now running, by position in the file.
    active: BTreeMap<usize, String>,
    /// Per running step: index of the first item that may still be pending.
    cursor: HashMap<String, usize>,
    /// How many decisions the run had when they were last applied.
    decisions_seen: usize,
    /// A decision arrived while the run parked (after the last look, before the lease was
    /// released): whoever recorded it found the lease held, so the run must be driven again.
    decided_while_parking: bool,
}

impl Runner {
    async fn load(
        engine: Engine,
        lease: Lease,
        run: RunRecord,
        rb: Arc<ValidatedRunbook>,
        observer: Arc<dyn Observer>,
        lost: Arc<AtomicBool>,
        cancel: CancellationToken,
    ) -> Result<Runner, ExecError> {
        let store = engine.inner.store.clone();
        // A run on its first lease has no rows of steps or items to read.
        let mut steps: HashMap<String, StepRecord> = HashMap::new();
        let mut items: HashMap<String, Vec<ItemRecord>> = HashMap::new();
        if !lease.first {
            for s in store.steps(&run.id).await? {
                steps.insert(s.step_id.clone(), s);
            }
            for it in store.items(&run.id).await? {
                items.entry(it.step_id.clone()).or_default().push(it);
            }
        }
        for v in items.values_mut() {
            v.sort_by_key(|i| i.idx);
        }
        let order: Vec<(String, bool)> = rb
            .runbook
            .steps
            .iter()
            .map(|s| (s.id.clone(), false))
            .chain(rb.runbook.on_failure.iter().map(|s| (s.id.clone(), true)))
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut ctx = RunContext::new(&run);
        let fresh = steps.is_empty();
        let mut changes = Vec::new();
        let mut audit = Vec::new();
        let now = crate::time::now();
        if fresh {
            for (id, on_failure) in &order {
                let rec = StepRecord {
                    run_id: run.id.clone(),
                    step_id: id.clone(),
                    status: StepStatus::Pending,
                    attempts: 0,
                    items: 0,
                    inputs: None,
                    output: None,
                    error: None,
                    reason: None,
                    started_at: None,
                    finished_at: None,
                    deadline: None,
                    on_failure: *on_failure,
                };
                changes.push(Change::Step(rec.clone()));
                steps.insert(id.clone(), rec);
            }
        }
        let mut failing = None;
        let mut uncalled = BTreeSet::new();
        for (id, _) in &order {
            if let Some(s) = steps.get(id) {
                if s.status.is_finished() {
                    ctx.set_step(id, s.status.as_str(), s.output.as_ref());
                    if s.output.as_ref().and_then(|o| o.get("dry_run")) == Some(&Value::Bool(true))
                    {
                        uncalled.insert(id.clone());
                    }
                }
            }
        }
        if let Some(err) = &run.error {
            if run.status != RunStatus::Waiting {
                failing = Some(err.clone());
                ctx.set_error(err);
            }
        }
        // Items that were running when a process died are called again (same key).
        let mut resumed = Vec::new();
        for list in items.values_mut() {
            for it in list.iter_mut() {
                if it.status == StepStatus::Running {
                    it.status = StepStatus::Pending;
                    resumed.push(
                        json!({"step": it.step_id, "index": it.idx, "attempts": it.attempts}),
                    );
                }
            }
        }
        let mut targets = BTreeSet::new();
        for list in items.values() {
            for it in list {
                if it.status != StepStatus::Pending || it.attempts > 0 {
                    targets.extend(item_targets(&it.inputs));
                }
            }
        }
        let action = if fresh || run.status == RunStatus::Queued {
            "run.started"
        } else {
            "run.resumed"
        };
        changes.push(Change::Run {
            status: RunStatus::Running,
            error: run.error.clone().filter(|_| failing.is_some()),
            started_at: Some(now.clone()),
            finished_at: None,
        });
        audit.push(AuditDraft {
            run_id: Some(run.id.clone()),
            actor: engine.inner.owner.clone(),
            action: action.into(),
            details: json!({"owner": engine.inner.owner, "lease_token": lease.token, "reexecuted": resumed}),
        });
        let mut run = run;
        run.status = RunStatus::Running;
        if run.started_at.is_none() {
            run.started_at = Some(now);
        }
        let cancelling = run.cancel_requested;
        let defs = rb.steps_by_id();
        let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
        for (id, _) in &order {
            if let Some(d) = defs.get(id) {
                for n in &d.needs {
                    dependents.entry(n.clone()).or_default().push(id.clone());
                }
            }
        }
        let active: BTreeMap<usize, String> = order
            .iter()
            .enumerate()
            .filter(|(_, (id, _))| {
                steps
                    .get(id)
                    .is_some_and(|s| s.status == StepStatus::Running)
            })
            .map(|(i, (id, _))| (i, id.clone()))
            .collect();
        let candidates = order
            .iter()
            .filter(|(_, f)| !*f)
            .map(|(id, _)| id.clone())
            .collect();
        let on_failure_ids = order
            .iter()
            .filter(|(_, f)| *f)
            .map(|(id, _)| id.clone())
            .collect();
        let pos = order
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (id.clone(), i))
            .collect();
        Ok(Runner {
            decisions_seen: 0,
            decided_while_parking: false,
            store,
            engine,
            lease,
            observer,
            run,
            rb,
            order,
            steps,
            items,
            ctx,
            changes,
            audit,
            running: HashMap::new(),
            inflight: 0,
            tx,
            rx,
            cancel,
            lost,
            failing,
            cancelling,
            uncalled,
            targets,
            cel: HashMap::new(),
            candidates,
            dependents,
            on_failure_ids,
            pos,
            on_failure_seeded: false,
            active,
            cursor: HashMap::new(),
            defs,
        })
    }

    async fn main(&mut self) -> Result<RunRecord, ExecError> {
        // The run was read just before (cancellation included); decisions are read at once
        // only when a step already waits for them.
        let mut last_poll: Option<Instant> = if self.any_waiting() {
            None
        } else {
            Some(Instant::now())
        };
        if self.run.dry_run {
            // nothing to pre-check
        } else if let Err(e) = self.static_target_check() {
            self.fail_run(e);
        }
        loop {
            if self.lost.load(Ordering::SeqCst) {
                return Err(StoreError::LeaseLost(self.run.id.clone()).into());
            }
            if last_poll.is_none_or(|t| t.elapsed() >= POLL) {
                last_poll = Some(Instant::now());
                self.poll_external().await?;
            }
            // Shutting down: start nothing new, let the calls in flight finish (the caller
            // bounds how long), then hand the run back for the next start.
            let draining = self.engine.inner.shutdown.is_cancelled() && !self.cancelling;
            if self.cancelling {
                self.cancel.cancel();
                self.cancel_unstarted("cancelled");
            } else if !draining {
                self.schedule();
            }
            let jobs = if draining { Vec::new() } else { self.launch() };
            // Durable before the next side effect: commit before spawning calls. When no
            // call starts and none is in flight, the changes wait for the commit that ends
            // or parks the run (or for the next turn's), which saves one commit per run.
            if !jobs.is_empty() || self.inflight > 0 || draining {
                self.flush().await?;
            }
            for job in jobs {
                self.inflight += 1;
                *self.running.entry(job.record.step_id.clone()).or_default() += 1;
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let done = job.run().await;
                    let _ = tx.send(done);
                });
            }
            if self.inflight > 0 {
                tokio::select! {
                    msg = self.rx.recv() => {
                        if let Some(done) = msg { self.on_done(done)?; }
                    }
                    _ = tokio::time::sleep(POLL) => {}
                }
                while let Ok(done) = self.rx.try_recv() {
                    self.on_done(done)?;
                }
                continue;
            }
            if draining {
                if !self.ready_exists() {
                    if let Some(status) = self.end_state() {
                        return self.finish(status).await;
                    }
                }
                self.store.release_lease(&self.lease).await?;
                return self.reload().await;
            }
            if self.ready_exists() {
                continue;
            }
            if let Some(status) = self.end_state() {
                return self.finish(status).await;
            }
            if self.any_waiting() {
                return self.park().await;
            }
            // Nothing ready, nothing running, nothing waiting, not finished: a dependency
            // can never be met. Fail loudly rather than spin.
            let stuck: Vec<String> = self
                .order
                .iter()
                .filter(|(id, _)| self.status(id) == StepStatus::Pending)
                .map(|(id, _)| id.clone())
                .collect();
            self.fail_run(format!("steps can never start: {}", stuck.join(", ")));
            self.cancel_unstarted("run failed");
        }
    }

    fn status(&self, id: &str) -> StepStatus {
        self.steps
            .get(id)
            .map(|s| s.status)
            .unwrap_or(StepStatus::Pending)
    }

    fn def(&self, id: &str) -> Option<&Step> {
        self.defs.get(id)
    }

    fn in_phase(&self, on_failure: bool) -> bool {
        if on_failure {
            self.failing.is_some() && !self.cancelling && self.main_quiet()
        } else {
            self.failing.is_none() && !self.cancelling
        }
    }

    /// No main step is running or waiting any more.
    fn main_quiet(&self) -> bool {
        self.order
            .iter()
            .filter(|(_, f)| !*f)
            .all(|(id, _)| !matches!(self.status(id), StepStatus::Running | StepStatus::Waiting))
    }

    fn ready_exists(&self) -> bool {
        self.order.iter().any(|(id, f)| {
            self.in_phase(*f)
                && self.status(id) == StepStatus::Pending
                && self.deps_state(id).is_some()
        }) || self.items.iter().any(|(sid, list)| {
            self.status(sid) == StepStatus::Running
                && list.iter().any(|i| i.status == StepStatus::Pending)
        })
    }

    /// Some(all_skipped) when every need is finished in a way that lets the step run.
    fn deps_state(&self, id: &str) -> Option<bool> {
        let def = self.def(id)?;
        let mut all_skipped = !def.needs.is_empty();
        for n in &def.needs {
            let st = self.status(n);
            match st {
                StepStatus::Succeeded => all_skipped = false,
                StepStatus::Skipped => {}
                StepStatus::Failed if self.def(n).is_some_and(|d| d.continue_on_error) => {
                    all_skipped = false
                }
                _ => return None,
            }
        }
        Some(all_skipped)
    }

    fn blocked_forever(&self, id: &str) -> bool {
        self.def(id).is_some_and(|d| {
            d.needs.iter().any(|n| {
                let st = self.status(n);
                st == StepStatus::Cancelled
                    || (st == StepStatus::Failed
                        && !self.def(n).is_some_and(|x| x.continue_on_error))
            })
        })
    }

    fn schedule(&mut self) {
        if self.failing.is_some()
            && !self.on_failure_seeded
            && !self.cancelling
            && self.main_quiet()
        {
            self.on_failure_seeded = true;
            let ids: Vec<String> = self
                .order
                .iter()
                .filter(|(_, f)| *f)
                .map(|(id, _)| id.clone())
                .collect();
            self.candidates.extend(ids);
        }
        while let Some(id) = self.candidates.pop_front() {
            let on_failure = self.on_failure_ids.contains(&id);
            if self.status(&id) != StepStatus::Pending || !self.in_phase(on_failure) {
                continue;
            }
            if self.blocked_forever(&id) {
                self.set_finished(
                    &id,
                    StepStatus::Cancelled,
                    None,
                    Some("a step it needs did not succeed".into()),
                    None,
                );
                continue;
            }
            let Some(all_skipped) = self.deps_state(&id) else {
                continue;
            };
            self.start_step(&id, all_skipped);
        }
    }

    fn start_step(&mut self, id: &str, all_skipped: bool) {
        let defs = self.defs.clone();
        let Some(def) = defs.get(id) else {
            return;
        };
        let ctx = self.step_ctx(def);
        if let Some(cond) = &def.condition {
            match self.eval_bool(cond, &ctx) {
                Ok(true) => {}
                Ok(false) => {
                    self.set_finished(
                        id,
                        StepStatus::Skipped,
                        None,
                        Some(format!("condition `{cond}` is false")),
                        None,
                    );
                    return;
                }
                Err(e) if self.run.dry_run => {
                    tracing::debug!(step = id, error = %e, "dry run: condition unknown, assumed true");
                }
                Err(e) => {
                    self.step_failed(id, format!("step `{id}`: `if`: {e}"));
                    return;
                }
            }
        } else if all_skipped {
            self.set_finished(
                id,
                StepStatus::Skipped,
                None,
                Some("every step it needs was skipped".into()),
                None,
            );
            return;
        }
        match def.kind() {
            StepKind::Approval | StepKind::Task => self.start_gate(def, &ctx),
            StepKind::Action => self.start_action(def, &ctx),
        }
    }

    fn start_action(&mut self, def: &Step, ctx: &Value) {
        let id = def.id.as_str();
        let uses = def.uses.clone().unwrap_or_default();
        let Some((_, decl)) = find_action(&uses) else {
            self.step_failed(id, format!("step `{id}`: unknown action `{uses}`"));
            return;
        };
        let instance = def
            .connector
            .as_ref()
            .and_then(|c| c.names().first().map(|s| s.to_string()));
        let connector = match resolve_connector(&self.engine, def, instance.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                if def.optional && !configured(&self.engine, &uses) {
                    self.set_finished(
                        id,
                        StepStatus::Skipped,
                        None,
                        Some("not configured".into()),
                        None,
                    );
                } else {
                    self.step_failed(id, format!("step `{id}`: {e}"));
                }
                return;
            }
        };
        let elements: Vec<Value> = match &def.for_each {
            Some(expr) => match self.eval_list(expr, ctx) {
                Ok(list) => list,
                Err(e) => {
                    self.step_failed(id, format!("step `{id}`: `for_each`: {e}"));
                    return;
                }
            },
            None => vec![Value::Null],
        };
        if elements.is_empty() {
            self.set_finished(
                id,
                StepStatus::Skipped,
                Some(json!([])),
                Some("`for_each` list is empty".into()),
                None,
            );
            return;
        }
        let with = Value::Object(def.with.clone().unwrap_or_default());
        let mut rendered = Vec::with_capacity(elements.len());
        for (idx, el) in elements.iter().enumerate() {
            let c = if def.for_each.is_some() {
                super::context::bind(ctx, def.loop_var(), el, idx)
            } else {
                ctx.clone()
            };
            match self.render(&with, &c) {
                Ok(v) => rendered.push(v),
                Err(e) => {
                    let at = if def.for_each.is_some() {
                        format!(" (element {idx})")
                    } else {
                        String::new()
                    };
                    self.step_failed(id, format!("step `{id}`{at}: {e}"));
                    return;
                }
            }
        }
        let effect = decl
            .effect
            .for_input(rendered.first().unwrap_or(&Value::Null));
        if effect == Effect::Mutation && !self.run.dry_run {
            let guarded = self.check_guards(&rendered).and_then(|()| {
                if is_destructive(&uses) {
                    self.check_evidence_first(&rendered)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = guarded {
                self.step_failed(id, format!("step `{id}`: {e}"));
                if !def.continue_on_error {
                    self.cancel_unstarted("run failed");
                }
                return;
            }
        }
        let now = crate::time::now();
        let list: Vec<ItemRecord> = rendered
            .into_iter()
            .enumerate()
            .map(|(idx, inputs)| ItemRecord {
                run_id: self.run.id.clone(),
                step_id: id.to_string(),
                idx: idx as u32,
                status: StepStatus::Pending,
                attempts: 0,
                inputs,
                connector: connector.instance().to_string(),
                output: None,
                error: None,
                prior_state: None,
                secret_output: None,
                started_at: None,
                finished_at: None,
            })
            .collect();
        let n = list.len() as u32;
        // Items of a retried step keep their stored inputs; new ones are added.
        let existing = self.items.remove(id).unwrap_or_default();
        let mut merged = Vec::with_capacity(list.len());
        for it in list {
            match existing.iter().find(|e| e.idx == it.idx) {
                Some(old) if old.status == StepStatus::Succeeded => merged.push(old.clone()),
                Some(old) => {
                    let mut o = old.clone();
                    o.status = StepStatus::Pending;
                    merged.push(o);
                }
                None => merged.push(it),
            }
        }
        if existing.len() > merged.len() {
            self.changes.push(Change::TruncateItems {
                step_id: id.to_string(),
                from_idx: n,
            });
        }
        for it in &merged {
            self.changes.push(Change::Item(it.clone()));
        }
        self.items.insert(id.to_string(), merged);
        if let Some(p) = self.pos.get(id) {
            self.active.insert(*p, id.to_string());
        }
        if let Some(s) = self.steps.get_mut(id) {
            s.status = StepStatus::Running;
            s.items = n;
            s.started_at.get_or_insert(now);
            s.error = None;
            s.reason = None;
            self.changes.push(Change::Step(s.clone()));
        }
        let connector = uses.split_once('.').map_or(uses.as_str(), |(t, _)| t);
        self.observer.event(Progress::StepStarted {
            step: id.to_string(),
            items: n,
            connector: connector.to_string(),
        });
        self.maybe_finalize(id);
    }

    fn start_gate(&mut self, def: &Step, ctx: &Value) {
        let id = def.id.as_str();
        let (message, deadline) = match (&def.approval, &def.task) {
            (Some(a), _) => (a.message.clone().unwrap_or_default(), a.timeout.clone()),
            (_, Some(t)) => (t.message.clone(), t.timeout.clone()),
            _ => return,
        };
        let message = match self.render(&Value::String(message), ctx) {
            Ok(Value::String(s)) => s,
            Ok(other) => other.to_string(),
            Err(e) => {
                self.step_failed(id, format!("step `{id}`: message: {e}"));
                return;
            }
        };
        if self.run.dry_run {
            let what = if def.approval.is_some() {
                "approved"
            } else {
                "done"
            };
            self.set_finished(
                id,
                StepStatus::Succeeded,
                Some(json!({"dry_run": true, "assumed": what, "message": message})),
                Some(format!("dry run: assumed {what}")),
                None,
            );
            return;
        }
        let deadline = deadline
            .and_then(|d| crate::duration::parse(&d).ok())
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| crate::time::format(chrono::Utc::now() + d));
        let releases = self.releases(id, ctx);
        let (kind, who) = match (&def.approval, &def.task) {
            (Some(a), _) => (
                "approval",
                json!({"approvers": a.approvers, "min_approvals": a.min_approvals}),
            ),
            (_, Some(t)) => ("task", json!({"assignees": t.assignees})),
            _ => return,
        };
        let inputs = json!({"kind": kind, "message": message, "who": who, "releases": releases, "deadline": deadline});
        if let Some(s) = self.steps.get_mut(id) {
            s.status = StepStatus::Waiting;
            s.started_at.get_or_insert_with(crate::time::now);
            s.inputs = Some(inputs.clone());
            s.deadline = deadline;
            self.changes.push(Change::Step(s.clone()));
        }
        if self.engine.inner.config.notify_waiting.is_some() {
            // Sent once by `cordon serve`: queued in the commit that makes the step wait.
            self.changes.push(Change::WaitingNotice {
                id: ulid::Ulid::new().to_string(),
                step_id: id.to_string(),
            });
        }
        self.audit.push(AuditDraft {
            run_id: Some(self.run.id.clone()),
            actor: "engine".into(),
            action: format!("{kind}.requested"),
            details: json!({"step": id, "details": inputs}),
        });
        self.observer.event(Progress::Waiting {
            step: id.to_string(),
            message,
        });
    }

    /// The resolved inputs of the steps a decision on `gate` releases.
    fn releases(&self, gate: &str, ctx: &Value) -> Value {
        let mut out = serde_json::Map::new();
        for (id, _) in &self.order {
            let Some(def) = self.def(id) else { continue };
            if !def.needs.iter().any(|n| n == gate) || def.kind() != StepKind::Action {
                continue;
            }
            let with = Value::Object(def.with.clone().unwrap_or_default());
            let resolved = match &def.for_each {
                None => self
                    .render(&with, ctx)
                    .map(|v| json!({"uses": def.uses, "with": v})),
                Some(expr) => self.eval_list(expr, ctx).and_then(|list| {
                    let mut all = Vec::new();
                    for (i, el) in list.iter().enumerate() {
                        all.push(self.render(&with, &self.ctx.with_var(def.loop_var(), el, i))?);
                    }
                    Ok(json!({"uses": def.uses, "for_each": all}))
                }),
            };
            out.insert(
                id.clone(),
                resolved.unwrap_or_else(|e| json!({"uses": def.uses, "unresolved": format!("resolved when it runs ({e})")})),
            );
        }
        Value::Object(out)
    }

    fn launch(&mut self) -> Vec<ItemJob> {
        let mut jobs = Vec::new();
        if self.cancelling {
            return jobs;
        }
        let ids: Vec<String> = self
            .active
            .values()
            .filter(|id| self.status(id) == StepStatus::Running)
            .cloned()
            .collect();
        for id in ids {
            let defs = self.defs.clone();
            let Some(def) = defs.get(&id) else {
                continue;
            };
            let Some((_, decl)) = def.uses.as_deref().and_then(find_action) else {
                continue;
            };
            let limit = if def.for_each.is_some() {
                def.max_parallel.unwrap_or(DEFAULT_MAX_PARALLEL).max(1)
            } else {
                1
            };
            let mut busy = self.running.get(&id).copied().unwrap_or(0);
            let policy = retry_policy(def);
            let timeout = def
                .timeout
                .as_deref()
                .and_then(|t| crate::duration::parse(t).ok())
                .unwrap_or(DEFAULT_TIMEOUT);
            // Items are launched in order; the cursor skips those already past.
            let from = self.cursor.get(&id).copied().unwrap_or(0);
            let room = limit.saturating_sub(busy) as usize;
            let pending: Vec<usize> = self
                .items
                .get(&id)
                .map(|l| {
                    l.iter()
                        .enumerate()
                        .skip(from)
                        .filter(|(_, i)| i.status == StepStatus::Pending)
                        .map(|(n, _)| n)
                        .take(room.max(1) + 64)
                        .collect()
                })
                .unwrap_or_default();
            if let Some(first) = pending.first() {
                self.cursor.insert(id.clone(), *first);
            }
            let mut touched = false;
            for pos in pending {
                if busy >= limit {
                    break;
                }
                let Some(item) = self.items.get_mut(&id).and_then(|l| l.get_mut(pos)) else {
                    continue;
                };
                let effect = decl.effect.for_input(&item.inputs);
                if self.run.dry_run && effect != Effect::Lookup {
                    let uses = def.uses.clone().unwrap_or_default();
                    item.status = StepStatus::Succeeded;
                    item.output = Some(json!({
                        "dry_run": true,
                        "would": format!("would call {uses} on {}", instances_for(&self.engine, &uses, &item.connector)),
                        "inputs": self.engine.inner.redactor.redact_value(&item.inputs),
                    }));
                    item.finished_at = Some(crate::time::now());
                    self.changes.push(Change::Item(item.clone()));
                    self.uncalled.insert(id.clone());
                    touched = true;
                    continue;
                }
                let connector =
                    match resolve_connector(&self.engine, def, Some(item.connector.as_str())) {
                        Ok(c) => c,
                        Err(e) => {
                            item.status = StepStatus::Failed;
                            item.error = Some(e.to_string());
                            item.finished_at = Some(crate::time::now());
                            self.changes.push(Change::Item(item.clone()));
                            touched = true;
                            continue;
                        }
                    };
                item.status = StepStatus::Running;
                item.attempts += 1;
                item.started_at.get_or_insert_with(crate::time::now);
                self.changes.push(Change::Item(item.clone()));
                self.audit.push(AuditDraft {
                    run_id: Some(self.run.id.clone()),
                    actor: "engine".into(),
                    action: "step.started".into(),
                    details: json!({
                        "step": id, "index": item.idx, "uses": def.uses,
                        "connector": item.connector, "attempt": item.attempts,
                        "idempotency_key": idempotency_key(&item.run_id, &item.step_id, item.idx),
                        "inputs": self.engine.inner.redactor.redact_value(&item.inputs),
                    }),
                });
                busy += 1;
                jobs.push(ItemJob {
                    engine: self.engine.clone(),
                    lease: self.lease.clone(),
                    connector,
                    decl,
                    record: item.clone(),
                    policy,
                    timeout,
                    effect,
                    dry_run: self.run.dry_run,
                    cancel: self.cancel.child_token(),
                    observer: self.observer.clone(),
                    prior_view: None,
                    call_input: None,
                });
            }
            if touched {
                self.maybe_finalize(&id);
            }
        }
        jobs
    }

    fn on_done(&mut self, done: ItemDone) -> Result<(), ExecError> {
        self.inflight = self.inflight.saturating_sub(1);
        if let Some(n) = self.running.get_mut(&done.record.step_id) {
            *n = n.saturating_sub(1);
        }
        if done.lease_lost {
            self.lost.store(true, Ordering::SeqCst);
            return Err(StoreError::LeaseLost(self.run.id.clone()).into());
        }
        let rec = done.record;
        let step = rec.step_id.clone();
        for c in &done.evidence {
            self.changes.push(Change::Evidence(c.record.clone()));
            self.audit.push(collected_event(
                &self.run.id,
                c,
                &step,
                rec.idx,
                &rec.connector,
            ));
        }
        for d in &done.drafts {
            self.changes.push(Change::Draft(d.clone()));
            self.audit.push(AuditDraft {
                run_id: Some(self.run.id.clone()),
                actor: "engine".into(),
                action: "draft.created".into(),
                details: crate::notify::draft_audit_details(d),
            });
        }
        let action = match rec.status {
            StepStatus::Succeeded => "step.succeeded",
            StepStatus::Cancelled => "step.cancelled",
            _ => "step.failed",
        };
        let mut details = json!({
            "step": step, "index": rec.idx, "connector": rec.connector,
            "attempts": rec.attempts, "requests": done.requests,
        });
        if let Some(out) = &rec.output {
            for k in [
                "target",
                "already",
                "found",
                "status",
                "evidence_id",
                "sha256",
            ] {
                if let Some(v) = out.get(k) {
                    details[k] = v.clone();
                }
            }
        }
        if let Some(e) = &rec.error {
            details["error"] = json!(e);
        }
        self.audit.push(AuditDraft {
            run_id: Some(self.run.id.clone()),
            actor: "engine".into(),
            action: action.into(),
            details,
        });
        let total = self.items.get(&step).map(|l| l.len() as u32).unwrap_or(1);
        self.observer.event(Progress::ItemFinished {
            step: step.clone(),
            idx: rec.idx,
            total,
            ok: rec.status == StepStatus::Succeeded,
        });
        self.changes.push(Change::Item(rec.clone()));
        if let Some(slot) = self
            .items
            .get_mut(&step)
            .and_then(|l| l.iter_mut().find(|i| i.idx == rec.idx))
        {
            *slot = rec;
        }
        self.maybe_finalize(&step);
        Ok(())
    }

    /// Finish a running action step whose items have all finished.
    fn maybe_finalize(&mut self, id: &str) {
        if self.status(id) != StepStatus::Running || self.running.get(id).copied().unwrap_or(0) > 0
        {
            return;
        }
        let Some(list) = self.items.get(id) else {
            return;
        };
        if list.iter().any(|i| !i.status.is_finished()) {
            return;
        }
        let for_each = self.def(id).is_some_and(|d| d.for_each.is_some());
        let output = if for_each {
            Value::Array(
                list.iter()
                    .map(|i| i.output.clone().unwrap_or(Value::Null))
                    .collect(),
            )
        } else {
            list.first()
                .and_then(|i| i.output.clone())
                .unwrap_or(Value::Null)
        };
        let attempts: u32 = list.iter().map(|i| i.attempts).sum();
        let failed: Vec<String> = list
            .iter()
            .filter(|i| i.status == StepStatus::Failed)
            .map(|i| {
                let e = i.error.clone().unwrap_or_default();
                if for_each {
                    format!("element {}: {e}", i.idx)
                } else {
                    e
                }
            })
            .collect();
        let cancelled = list.iter().any(|i| i.status == StepStatus::Cancelled);
        if let Some(s) = self.steps.get_mut(id) {
            s.attempts = attempts;
        }
        if !failed.is_empty() {
            let msg = failed.join("; ");
            self.set_finished(
                id,
                StepStatus::Failed,
                Some(output),
                None,
                Some(msg.clone()),
            );
            if !self.def(id).is_some_and(|d| d.continue_on_error) {
                self.fail_run(format!("step `{id}` failed: {msg}"));
                self.cancel_unstarted("run failed");
            }
        } else if cancelled {
            self.set_finished(
                id,
                StepStatus::Cancelled,
                Some(output),
                Some("cancelled".into()),
                None,
            );
        } else {
            self.set_finished(id, StepStatus::Succeeded, Some(output), None, None);
        }
    }

    fn set_finished(
        &mut self,
        id: &str,
        status: StepStatus,
        output: Option<Value>,
        reason: Option<String>,
        error: Option<String>,
    ) {
        let now = crate::time::now();
        let Some(s) = self.steps.get_mut(id) else {
            return;
        };
        s.status = status;
        s.output = output;
        s.reason = reason.clone();
        s.error = error.clone();
        s.finished_at = Some(now);
        self.changes.push(Change::Step(s.clone()));
        self.ctx.set_step(id, status.as_str(), s.output.as_ref());
        if let Some(p) = self.pos.get(id) {
            self.active.remove(p);
        }
        self.cursor.remove(id);
        if let Some(deps) = self.dependents.get(id) {
            self.candidates.extend(deps.iter().cloned());
        }
        if matches!(status, StepStatus::Skipped | StepStatus::Cancelled) {
            self.audit.push(AuditDraft {
                run_id: Some(self.run.id.clone()),
                actor: "engine".into(),
                action: format!("step.{}", status.as_str()),
                details: json!({"step": id, "reason": reason}),
            });
        }
        self.observer.event(Progress::StepFinished {
            step: id.to_string(),
            status,
            detail: error.or(reason),
        });
    }

    fn step_failed(&mut self, id: &str, error: String) {
        self.audit.push(AuditDraft {
            run_id: Some(self.run.id.clone()),
            actor: "engine".into(),
            action: "step.failed".into(),
            details: json!({"step": id, "error": error}),
        });
        self.set_finished(id, StepStatus::Failed, None, None, Some(error.clone()));
        if !self.def(id).is_some_and(|d| d.continue_on_error) {
            self.fail_run(format!(
                "step `{id}` failed: {}",
                strip_step_prefix(id, &error)
            ));
            self.cancel_unstarted("run failed");
        }
    }

    fn fail_run(&mut self, error: String) {
        if self.failing.is_none() {
            self.ctx.set_error(&error);
            self.failing = Some(error);
        }
    }

    /// Mark main steps that have not started (and waiting gates, and unstarted items)
    /// cancelled.
    fn cancel_unstarted(&mut self, why: &str) {
        let ids: Vec<String> = self
            .order
            .iter()
            .filter(|(_, f)| !*f || self.cancelling)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            match self.status(&id) {
                StepStatus::Pending | StepStatus::Waiting => {
                    self.set_finished(&id, StepStatus::Cancelled, None, Some(why.into()), None)
                }
                StepStatus::Running => {
                    let mut touched = false;
                    if let Some(list) = self.items.get_mut(&id) {
                        for it in list.iter_mut().filter(|i| i.status == StepStatus::Pending) {
                            it.status = StepStatus::Cancelled;
                            it.error = Some(why.into());
                            self.changes.push(Change::Item(it.clone()));
                            touched = true;
                        }
                    }
                    if touched {
                        self.maybe_finalize(&id);
                    }
                }
                _ => {}
            }
        }
    }

    fn any_waiting(&self) -> bool {
        self.steps.values().any(|s| s.status == StepStatus::Waiting)
    }

    fn end_state(&self) -> Option<RunStatus> {
        let unfinished = |f: bool| {
            self.order
                .iter()
                .filter(|(_, of)| *of == f)
                .any(|(id, _)| !self.status(id).is_finished())
        };
        if self.cancelling {
            return (!unfinished(false) && !unfinished(true) || self.inflight == 0)
                .then_some(RunStatus::Cancelled);
        }
        if unfinished(false) {
            return None;
        }
        if self.failing.is_some() {
            return (!unfinished(true)).then_some(RunStatus::Failed);
        }
        Some(RunStatus::Succeeded)
    }

    async fn poll_external(&mut self) -> Result<(), ExecError> {
        let Some(run) = self.store.get_run(&self.run.id).await? else {
            return Err(ExecError::NotFound(self.run.id.clone()));
        };
        if run.cancel_requested && !self.cancelling {
            self.cancelling = true;
        }
        if !self.any_waiting() {
            return Ok(());
        }
        let decisions = self.store.decisions(&self.run.id).await?;
        self.decisions_seen = decisions.len();
        let waiting: Vec<String> = self
            .order
            .iter()
            .filter(|(id, _)| self.status(id) == StepStatus::Waiting)
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            self.apply_decisions(&id, &decisions).await?;
        }
        Ok(())
    }

    async fn apply_decisions(&mut self, id: &str, all: &[Decision]) -> Result<(), ExecError> {
        let defs = self.defs.clone();
        let Some(def) = defs.get(id) else {
            return Ok(());
        };
        let mine: Vec<&Decision> = all.iter().filter(|d| d.step_id == id).collect();
        if let Some(task) = &def.task {
            let _ = task;
            if let Some(d) = mine.iter().find(|d| d.decision == "done") {
                let out = json!({"done_by": d.decided_by, "note": d.comment, "at": d.at});
                self.set_finished(id, StepStatus::Succeeded, Some(out), None, None);
            }
            return Ok(());
        }
        let Some(approval) = &def.approval else {
            return Ok(());
        };
        if let Some(r) = mine
            .iter()
            .find(|d| d.decision == "reject" || d.decision == "timeout-reject")
        {
            let why = match &r.comment {
                Some(c) if !c.is_empty() => format!("rejected by {}: {c}", r.decided_by),
                _ => format!("rejected by {}", r.decided_by),
            };
            self.set_finished(
                id,
                StepStatus::Failed,
                Some(json!({"approved": false, "rejected_by": r.decided_by, "comment": r.comment})),
                None,
                Some(why.clone()),
            );
            self.fail_run(format!("step `{id}` {why}"));
            self.cancel_unstarted("run failed");
            return Ok(());
        }
        if let Some(t) = mine.iter().find(|d| d.decision == "timeout-approve") {
            let out = json!({"approved": true, "approvers": [t.decided_by], "by_timeout": true});
            self.set_finished(id, StepStatus::Succeeded, Some(out), None, None);
            return Ok(());
        }
        let mut approvers: Vec<String> = Vec::new();
        let mut comments = Vec::new();
        for d in mine.iter().filter(|d| d.decision == "approve") {
            if !approvers.contains(&d.decided_by) {
                approvers.push(d.decided_by.clone());
                comments.push(json!({"by": d.decided_by, "comment": d.comment, "at": d.at}));
            }
        }
        if approvers.len() as u32 >= approval.min_approvals.max(1) {
            let out = json!({"approved": true, "approvers": approvers, "comments": comments});
            self.set_finished(id, StepStatus::Succeeded, Some(out), None, None);
            return Ok(());
        }
        // Timeout: decided by whichever process looks first.
        let deadline = self.steps.get(id).and_then(|s| s.deadline.clone());
        if let Some(deadline) = deadline.and_then(|d| crate::time::parse(&d)) {
            if chrono::Utc::now() > deadline {
                let decision = match approval.on_timeout {
                    OnTimeout::Approve => "timeout-approve",
                    OnTimeout::Reject => "timeout-reject",
                };
                let d = Decision {
                    run_id: self.run.id.clone(),
                    step_id: id.to_string(),
                    decision: decision.into(),
                    decided_by: "system:timeout".into(),
                    comment: Some("approval timed out".into()),
                    at: crate::time::now(),
                    releases: self
                        .steps
                        .get(id)
                        .and_then(|s| s.inputs.clone())
                        .unwrap_or(Value::Null),
                };
                let audit = AuditDraft {
                    run_id: Some(self.run.id.clone()),
                    actor: "system:timeout".into(),
                    action: "approval.decided".into(),
                    details: json!({"step": id, "decision": decision}),
                };
                self.store.add_decision(d.clone(), audit).await?;
                Box::pin(self.apply_decisions(id, &[d])).await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ExecError> {
        if self.changes.is_empty() && self.audit.is_empty() {
            return Ok(());
        }
        let changes = coalesce(std::mem::take(&mut self.changes));
        let audit = std::mem::take(&mut self.audit);
        let points = if cordon_connectors::fault::is_armed() {
            CommitPoints::of(&changes)
        } else {
            CommitPoints::default()
        };
        points.before();
        self.store.commit(&self.lease, changes, audit).await?;
        points.after();
        Ok(())
    }

    async fn park(&mut self) -> Result<RunRecord, ExecError> {
        let waiting: Vec<String> = self
            .order
            .iter()
            .filter(|(id, _)| self.status(id) == StepStatus::Waiting)
            .map(|(id, _)| id.clone())
            .collect();
        self.changes.push(Change::Run {
            status: RunStatus::Waiting,
            error: None,
            started_at: None,
            finished_at: None,
        });
        self.audit.push(AuditDraft {
            run_id: Some(self.run.id.clone()),
            actor: "engine".into(),
            action: "run.waiting".into(),
            details: json!({"steps": waiting}),
        });
        // The lease goes with the commit that parks the run: one transaction, not two.
        self.changes.push(Change::ReleaseLease);
        self.flush().await?;
        self.decided_while_parking =
            self.store.decisions(&self.run.id).await?.len() != self.decisions_seen;
        self.reload().await
    }

    async fn finish(&mut self, status: RunStatus) -> Result<RunRecord, ExecError> {
        if status == RunStatus::Succeeded {
            let skip: Vec<String> = self
                .order
                .iter()
                .filter(|(id, f)| *f && self.status(id) == StepStatus::Pending)
                .map(|(id, _)| id.clone())
                .collect();
            for id in skip {
                self.set_finished(
                    &id,
                    StepStatus::Skipped,
                    None,
                    Some("the run did not fail".into()),
                    None,
                );
            }
        }
        if status == RunStatus::Cancelled {
            let rest: Vec<String> = self
                .order
                .iter()
                .filter(|(id, _)| !self.status(id).is_finished())
                .map(|(id, _)| id.clone())
                .collect();
            for id in rest {
                self.set_finished(
                    &id,
                    StepStatus::Cancelled,
                    None,
                    Some("cancelled".into()),
                    None,
                );
            }
        }
        let error = match status {
            RunStatus::Failed => self.failing.clone(),
            RunStatus::Cancelled => Some("cancelled".into()),
            _ => None,
        };
        let finished_at = crate::time::now();
        self.changes.push(Change::Run {
            status,
            error: error.clone(),
            started_at: None,
            finished_at: Some(finished_at.clone()),
        });
        self.audit.push(AuditDraft {
            run_id: Some(self.run.id.clone()),
            actor: "engine".into(),
            action: format!("run.{}", status.as_str()),
            details: json!({"error": error}),
        });
        // The lease goes with the run's last commit: one transaction, not two.
        self.changes.push(Change::ReleaseLease);
        self.flush().await?;
        // What that commit made of the run's row, without reading it back.
        let mut run = self.run.clone();
        run.status = status;
        run.error = error;
        run.finished_at = Some(finished_at);
        run.cancel_requested |= self.cancelling;
        Ok(run)
    }

    async fn reload(&self) -> Result<RunRecord, ExecError> {
        self.store
            .get_run(&self.run.id)
            .await?
            .ok_or_else(|| ExecError::NotFound(self.run.id.clone()))
    }

    fn render(&self, v: &Value, ctx: &Value) -> Result<Value, crate::expr::ExprError> {
        let t = &self.engine.inner.templates;
        if self.run.dry_run && !self.uncalled.is_empty() {
            let patched = patch_placeholders(v, &self.uncalled);
            return t.render_value(&patched, ctx);
        }
        t.render_value(v, ctx)
    }

    /// The context one step renders against: inputs, run, and only the steps it reads
    /// (validation guarantees those are among its ancestors). Keeps rendering cheap in
    /// long runbooks and wide fan-outs.
    fn step_ctx(&self, def: &Step) -> Value {
        match self.rb.reads(&def.id) {
            None => self.ctx.value(),
            Some(ids) => self.ctx.value_with(ids),
        }
    }

    /// RFC 3227's order of volatility: a destructive action (retire, wipe) on a device
    /// runs only after a snapshot of that device succeeded in this run.
    fn check_evidence_first(&self, rendered: &[Value]) -> Result<(), String> {
        for inputs in rendered {
            let Some(device) = inputs.get("device").and_then(Value::as_str) else {
                continue;
            };
            let preserved = self.items.iter().any(|(sid, list)| {
                let snapshot = self
                    .def(sid)
                    .and_then(|d| d.uses.as_deref())
                    .and_then(find_action)
                    .is_some_and(|(_, a)| a.effect == Effect::Snapshot);
                snapshot
                    && list.iter().any(|i| {
                        i.status == StepStatus::Succeeded
                            && i.inputs
                                .get("device")
                                .and_then(Value::as_str)
                                .is_some_and(|d| d.eq_ignore_ascii_case(device))
                    })
            });
            if !preserved {
                return Err(format!(
                    "guard `evidence_first`: no snapshot of device `{device}` has succeeded in this run; a destructive action waits for the evidence (RFC 3227); no call was made"
                ));
            }
        }
        Ok(())
    }

    fn program(&mut self, expr: &str) -> Result<crate::expr::CelProgram, crate::expr::ExprError> {
        if let Some(p) = self.cel.get(expr) {
            return Ok(p.clone());
        }
        let p = Cel::compile(expr)?;
        self.cel.insert(expr.to_string(), p.clone());
        Ok(p)
    }

    fn eval_bool(&mut self, expr: &str, ctx: &Value) -> Result<bool, crate::expr::ExprError> {
        self.program(expr)?.eval_bool(ctx)
    }

    fn eval_list(&self, expr: &str, ctx: &Value) -> Result<Vec<Value>, crate::expr::ExprError> {
        match self.cel.get(expr) {
            Some(p) => p.eval_list(ctx),
            None => Cel::compile(expr)?.eval_list(ctx),
        }
    }

    /// `protected_users`/`protected_devices`, then `max_targets_per_run`.
    fn check_guards(&mut self, rendered: &[Value]) -> Result<(), String> {
        self.targets = check_guards(self.engine.guards(), &self.targets, rendered)?;
        Ok(())
    }

    /// Before the first step: count the targets of every mutating step whose inputs depend
    /// only on the run's inputs, so an oversized run fails before any of them.
    fn static_target_check(&mut self) -> Result<(), String> {
        if self.steps.values().any(|s| s.status != StepStatus::Pending) {
            return Ok(());
        }
        let limit = self.engine.guards().max_targets_per_run;
        let ctx = self.ctx.value();
        let mut all = BTreeSet::new();
        let defs: Vec<Step> = self.rb.runbook.steps.clone();
        for def in &defs {
            let Some((_, decl)) = def.uses.as_deref().and_then(find_action) else {
                continue;
            };
            let with = Value::Object(def.with.clone().unwrap_or_default());
            let elements = match &def.for_each {
                Some(e) => match self.eval_list(e, &ctx) {
                    Ok(l) => l,
                    Err(_) => continue,
                },
                None => vec![Value::Null],
            };
            for (i, el) in elements.iter().enumerate() {
                let c = if def.for_each.is_some() {
                    self.ctx.with_var(def.loop_var(), el, i)
                } else {
                    ctx.clone()
                };
                let Ok(inputs) = self.engine.inner.templates.render_value(&with, &c) else {
                    break;
                };
                if decl.effect.for_input(&inputs) == Effect::Mutation {
                    all.extend(item_targets(&inputs));
                }
            }
        }
        if all.len() > limit {
            return Err(format!(
                "guard `max_targets_per_run`: this run would touch {} distinct targets (limit {}); no call was made",
                all.len(),
                limit
            ));
        }
        Ok(())
    }
}

/// The guards a mutating step must pass before any call: no protected user or device among
/// its targets, and no more distinct targets in the run than `max_targets_per_run`.
/// Returns the run's target set with this step's added.
pub(crate) fn check_guards(
    guards: &crate::config::Guards,
    so_far: &BTreeSet<String>,
    rendered: &[Value],
) -> Result<BTreeSet<String>, String> {
    for inputs in rendered {
        if let Some(u) = inputs.get("user").and_then(Value::as_str) {
            if guards
                .protected_users
                .iter()
                .any(|p| p.eq_ignore_ascii_case(u))
            {
                return Err(format!(
                    "guard `protected_users`: user `{u}` is protected; no call was made"
                ));
            }
        }
        if let Some(d) = inputs.get("device").and_then(Value::as_str) {
            if guards
                .protected_devices
                .iter()
                .any(|p| p.eq_ignore_ascii_case(d))
            {
                return Err(format!(
                    "guard `protected_devices`: device `{d}` is protected; no call was made"
                ));
            }
        }
    }
    let mut next = so_far.clone();
    for inputs in rendered {
        next.extend(item_targets(inputs));
    }
    if next.len() > guards.max_targets_per_run {
        return Err(format!(
            "guard `max_targets_per_run`: this run would touch {} distinct targets (limit {}); no call was made",
            next.len(),
            guards.max_targets_per_run
        ));
    }
    Ok(next)
}

/// The connector that runs a step: a role action bound to its instances, or one instance.
fn resolve_connector(
    engine: &Engine,
    def: &Step,
    instance: Option<&str>,
) -> Result<Arc<dyn cordon_connectors::Connector>, String> {
    let uses = def.uses.as_deref().unwrap_or("");
    let registry = &engine.inner.registry;
    if cordon_connectors::roles::find_role(uses).is_some() {
        let names: Option<Vec<String>> = def
            .connector
            .as_ref()
            .map(|c| c.names().iter().map(|s| s.to_string()).collect());
        return registry
            .role(uses, names.as_deref())
            .map_err(|e| e.to_string());
    }
    let ty = uses.split_once('.').map(|(t, _)| t).unwrap_or(uses);
    registry.resolve(ty, instance).map_err(|e| e.to_string())
}

/// Whether anything is configured to run `uses` (for `optional: true` steps).
fn configured(engine: &Engine, uses: &str) -> bool {
    let registry = &engine.inner.registry;
    match cordon_connectors::roles::find_role(uses) {
        Some(role) => role.members.iter().any(|(t, _)| registry.has_type(t)),
        None => registry.has_type(uses.split_once('.').map(|(t, _)| t).unwrap_or(uses)),
    }
}

/// Keep only the last write of each step and item row in a batch (a step started and
/// launched in one turn is written once): fewer statements in the commit.
fn coalesce(changes: Vec<Change>) -> Vec<Change> {
    let mut last_step: HashMap<String, usize> = HashMap::new();
    let mut last_item: HashMap<(String, u32), usize> = HashMap::new();
    for (i, c) in changes.iter().enumerate() {
        match c {
            Change::Step(s) => {
                last_step.insert(s.step_id.clone(), i);
            }
            Change::Item(it) => {
                last_item.insert((it.step_id.clone(), it.idx), i);
            }
            _ => {}
        }
    }
    changes
        .into_iter()
        .enumerate()
        .filter(|(i, c)| match c {
            Change::Step(s) => last_step.get(&s.step_id) == Some(i),
            Change::Item(it) => last_item.get(&(it.step_id.clone(), it.idx)) == Some(i),
            _ => true,
        })
        .map(|(_, c)| c)
        .collect()
}

/// The instances a call would run on, for dry-run reports: a role action's every serving
/// instance, or the one instance.
fn instances_for(engine: &Engine, uses: &str, connector: &str) -> String {
    if cordon_connectors::roles::find_role(uses).is_none() {
        return connector.to_string();
    }
    let names: Vec<String> = engine
        .inner
        .registry
        .instance_types()
        .into_iter()
        .filter(|(_, t)| cordon_connectors::roles::role_accepts(uses, t))
        .map(|(n, _)| n)
        .collect();
    if names.is_empty() {
        "no configured instance".into()
    } else {
        names.join(", ")
    }
}

/// Actions that destroy state a court may need (retire, wipe): guarded by
/// `evidence_first`.
fn is_destructive(uses: &str) -> bool {
    let action = uses.split_once('.').map(|(_, a)| a).unwrap_or(uses);
    action == "retire" || action.starts_with("wipe")
}

fn strip_step_prefix<'a>(id: &str, error: &'a str) -> &'a str {
    let prefix = format!("step `{id}`: ");
    error.strip_prefix(prefix.as_str()).unwrap_or(error)
}

/// The targets a mutating call names: its `user` and `device` inputs.
fn item_targets(inputs: &Value) -> Vec<String> {
    ["user", "device"]
        .iter()
        .filter_map(|k| inputs.get(*k).and_then(Value::as_str))
        .map(|s| s.to_ascii_lowercase())
        .collect()
}

fn retry_policy(def: &Step) -> RetryPolicy {
    let mut p = RetryPolicy::default();
    if let Some(r) = &def.retry {
        p.attempts = r.attempts.max(1);
        if let Some(b) = r
            .backoff
            .as_deref()
            .and_then(|b| crate::duration::parse(b).ok())
        {
            p.backoff = b;
        }
        if let Some(m) = r
            .max_backoff
            .as_deref()
            .and_then(|m| crate::duration::parse(m).ok())
        {
            p.max_backoff = m;
        }
    }
    p
}

fn patch_placeholders(v: &Value, uncalled: &BTreeSet<String>) -> Value {
    match v {
        Value::String(s) => dry_run_placeholders(s, uncalled)
            .map(Value::String)
            .unwrap_or_else(|| v.clone()),
        Value::Array(a) => {
            Value::Array(a.iter().map(|x| patch_placeholders(x, uncalled)).collect())
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), patch_placeholders(x, uncalled)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Reset a failed (or cancelled) run so that [`drive`] runs its failed and cancelled steps
/// again — or `from` and everything after it — keeping what succeeded.
pub async fn prepare_retry(
    engine: &Engine,
    lease: &Lease,
    from: Option<&str>,
    actor: &str,
) -> Result<(), ExecError> {
    let store = engine.store();
    let run = store
        .get_run(&lease.run_id)
        .await?
        .ok_or_else(|| ExecError::NotFound(lease.run_id.clone()))?;
    if !matches!(run.status, RunStatus::Failed | RunStatus::Cancelled) {
        return Err(ExecError::Invalid(format!(
            "run {} is {}; only a failed or cancelled run can be retried",
            run.id,
            run.status.as_str()
        )));
    }
    let rb = stored_runbook(&run)?;
    let steps = store.steps(&run.id).await?;
    let items = store.items(&run.id).await?;
    let reset: BTreeSet<String> = match from {
        Some(f) => {
            if rb.step(f).is_none() {
                return Err(ExecError::Invalid(format!(
                    "run {} has no step `{f}`",
                    run.id
                )));
            }
            let mut set = BTreeSet::from([f.to_string()]);
            for s in &rb.runbook.steps {
                if rb.needs_transitively(&s.id, f) {
                    set.insert(s.id.clone());
                }
            }
            set
        }
        None => steps
            .iter()
            .filter(|s| {
                !s.on_failure && matches!(s.status, StepStatus::Failed | StepStatus::Cancelled)
            })
            .map(|s| s.step_id.clone())
            .collect(),
    };
    let mut changes = Vec::new();
    for s in steps {
        if reset.contains(&s.step_id) || s.on_failure {
            let mut s = s;
            s.status = StepStatus::Pending;
            s.error = None;
            s.reason = None;
            s.finished_at = None;
            s.output = None;
            s.deadline = None;
            s.attempts = 0;
            changes.push(Change::Step(s));
        }
    }
    let by_step: BTreeMap<&str, bool> =
        reset.iter().map(|s| (s.as_str(), from.is_some())).collect();
    for mut it in items {
        if let Some(all) = by_step.get(it.step_id.as_str()) {
            if *all || it.status != StepStatus::Succeeded {
                it.status = StepStatus::Pending;
                it.error = None;
                it.output = None;
                it.finished_at = None;
                it.attempts = 0;
                changes.push(Change::Item(it));
            }
        }
    }
    changes.push(Change::Run {
        status: RunStatus::Queued,
        error: None,
        started_at: None,
        finished_at: None,
    });
    let audit = vec![AuditDraft {
        run_id: Some(run.id.clone()),
        actor: actor.to_string(),
        action: "run.retried".into(),
        details: json!({"from": from, "steps": reset}),
    }];
    store.commit(lease, changes, audit).await?;
    Ok(())
}

/// The `evidence.collected` audit event of one artifact: the first link of its chain of
/// custody (who collected what, from where, when, and where it was stored).
pub fn collected_event(
    run_id: &str,
    c: &crate::evidence::Collected,
    step: &str,
    index: u32,
    connector: &str,
) -> AuditDraft {
    let ev = &c.record;
    // A role action (`identity.snapshot_logs`) collects through one vendor instance: the
    // instance that wrote the artifact is the collector.
    let instance = if ev.meta.instance.is_empty() {
        connector
    } else {
        ev.meta.instance.as_str()
    };
    let mut collector = json!({"run": run_id, "step": step, "index": index, "connector": instance});
    if instance != connector {
        collector["via"] = json!(connector);
    }
    AuditDraft {
        run_id: Some(run_id.to_string()),
        actor: format!("connector:{instance}"),
        action: "evidence.collected".into(),
        details: json!({
            "evidence_id": ev.evidence_id, "sha256": ev.sha256, "bytes": ev.bytes,
            "records": ev.records, "path": ev.path, "collected_at": ev.collected_at,
            "collector": collector,
            "source": ev.meta,
            "storage": c.stored,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Guards;
    use serde_json::json;

    fn guards() -> Guards {
        Guards {
            protected_users: vec!["BreakGlass@acme.com".into()],
            protected_devices: vec!["C02BREAKGLASS".into()],
            max_targets_per_run: 3,
        }
    }

    #[test]
    fn protected_targets_are_refused_case_insensitively() {
        let e = check_guards(
            &guards(),
            &BTreeSet::new(),
            &[json!({"user": "breakglass@ACME.com"})],
        )
        .unwrap_err();
        assert!(
            e.contains("protected_users") && e.contains("no call was made"),
            "{e}"
        );
        let e = check_guards(
            &guards(),
            &BTreeSet::new(),
            &[json!({"device": "c02breakglass"})],
        )
        .unwrap_err();
        assert!(e.contains("protected_devices"), "{e}");
    }

    #[test]
    fn distinct_targets_are_counted_across_steps() {
        let g = guards();
        let a = check_guards(
            &g,
            &BTreeSet::new(),
            &[json!({"user": "a@x.com"}), json!({"user": "A@x.com"})],
        )
        .unwrap();
        assert_eq!(a.len(), 1, "the same user twice is one target");
        let b = check_guards(&g, &a, &[json!({"device": "d1"}), json!({"device": "d2"})]).unwrap();
        assert_eq!(b.len(), 3);
        let e = check_guards(&g, &b, &[json!({"device": "d3"})]).unwrap_err();
        assert!(e.contains("4 distinct targets (limit 3)"), "{e}");
    }
}
