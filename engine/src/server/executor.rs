//! Runs executed in the background of `cordon serve`.
//!
//! [`Executor::submit`] hands a run id to a task of this process: it waits for one of
//! `max_concurrent_runs` slots (the queue depth metric counts the waiting), takes the run's
//! lease and drives it until it finishes or waits for people. A run submitted again while
//! it executes (a decision arrived as it was parking) is executed once more afterwards.
//!
//! [`Executor::sweep`], every few seconds: resumes queued and running runs that no live
//! process holds (every unfinished run at start), continues waiting runs whose approval
//! timed out, and forgets webhook deliveries and schedule fires older than 30 days (each
//! schedule's newest fire is kept: it is where the schedule resumes).
//!
//! Shutdown: the engine's shutdown token makes run loops start nothing new and return once
//! their calls in flight are done; tasks still waiting for a slot leave their runs queued.
//! [`Executor::drain`] waits for all of that, up to a bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::metrics::{Metrics, StepTimer};
use crate::exec::{owner_is_dead, Engine, ExecError};
use crate::store::RunRecord;

/// Queued runs younger than this are left to the process that created them: a `cordon run`
/// takes its run's lease within moments. Older queued runs without a lease are anyone's (a
/// node's own queue of accepted runs included: another node with free slots helps out).
const FRESH_QUEUED: chrono::TimeDelta = chrono::TimeDelta::seconds(2);
/// Each sweep claims runs until this many per execution slot are executing or queued here,
/// so that slots freed between sweeps find work waiting. Claimed runs that wait for a slot
/// longer than a lease may be taken by another node first; this one then skips them.
const CLAIMED_PER_SLOT: usize = 4;
/// The first sweep may claim this many at least (a restart with a backlog).
const CLAIM_AT_START: usize = 256;
/// How often old webhook deliveries are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

pub struct Executor {
    engine: Engine,
    metrics: Arc<Metrics>,
    slots: Arc<Semaphore>,
    /// `max_concurrent_runs`.
    slot_count: usize,
    tracker: TaskTracker,
    /// Runs submitted to this process → "submitted again while executing".
    active: Mutex<HashMap<String, bool>>,
    last_purge: Mutex<Option<Instant>>,
}

impl Executor {
    pub fn new(engine: Engine, metrics: Arc<Metrics>, max_concurrent_runs: usize) -> Executor {
        Executor {
            engine,
            metrics,
            slots: Arc::new(Semaphore::new(max_concurrent_runs.max(1))),
            slot_count: max_concurrent_runs.max(1),
            tracker: TaskTracker::new(),
            active: Mutex::new(HashMap::new()),
            last_purge: Mutex::new(None),
        }
    }

    fn shutdown(&self) -> &CancellationToken {
        &self.engine.inner.shutdown
    }

    pub fn is_active(&self, run_id: &str) -> bool {
        self.active
            .lock()
            .map(|m| m.contains_key(run_id))
            .unwrap_or(false)
    }

    /// Execute `run_id` in the background (or once more, if it is executing now).
    pub fn submit(self: &Arc<Self>, run_id: &str) {
        self.submit_from(run_id, None);
    }

    /// [`Executor::submit`] for a run this process just created, with its record: if it is
    /// still untouched when its turn comes, it starts without being read back.
    pub fn submit_created(self: &Arc<Self>, run: RunRecord) {
        let id = run.id.clone();
        self.submit_from(&id, Some(run));
    }

    fn submit_from(self: &Arc<Self>, run_id: &str, created: Option<RunRecord>) {
        if self.shutdown().is_cancelled() {
            return; // left durable for the next start
        }
        {
            let Ok(mut active) = self.active.lock() else {
                return;
            };
            if let Some(again) = active.get_mut(run_id) {
                *again = true;
                return;
            }
            active.insert(run_id.to_string(), false);
        }
        let this = self.clone();
        let id = run_id.to_string();
        let span = tracing::info_span!("run", run_id = %id);
        self.tracker
            .spawn(async move { this.execute(id, created).await }.instrument(span));
    }

    async fn execute(self: Arc<Self>, id: String, mut created: Option<RunRecord>) {
        self.metrics.queue_depth.inc();
        let permit = tokio::select! {
            p = self.slots.clone().acquire_owned() => p.ok(),
            _ = self.shutdown().cancelled() => None,
        };
        self.metrics.queue_depth.dec();
        let Some(_permit) = permit else {
            self.forget(&id);
            return;
        };
        self.metrics.executing.inc();
        loop {
            let observer = Arc::new(StepTimer::new(self.metrics.clone()));
            match self
                .engine
                .execute_from(&id, created.take(), observer)
                .await
            {
                Ok(run) => {
                    tracing::info!(status = run.status.as_str(), "run executed");
                    if run.status.is_active() && self.shutdown().is_cancelled() {
                        tracing::info!(
                            "run left {} for the next start (shutting down)",
                            run.status.as_str()
                        );
                    }
                }
                Err(ExecError::Busy { owner, .. }) => {
                    tracing::info!(%owner, "run is executed by another process");
                }
                Err(e) => tracing::warn!(error = %e, "run execution stopped"),
            }
            let again = match self.active.lock() {
                Ok(mut active) => match active.get_mut(&id) {
                    Some(again) if *again && !self.shutdown().is_cancelled() => {
                        *again = false;
                        true
                    }
                    _ => {
                        active.remove(&id);
                        false
                    }
                },
                Err(_) => false,
            };
            if !again {
                break;
            }
        }
        self.metrics.executing.dec();
    }

    fn forget(&self, id: &str) {
        if let Ok(mut active) = self.active.lock() {
            active.remove(id);
        }
    }

    /// Pick up what needs this process: unfinished runs nobody executes, overdue approvals,
    /// and the purge of old webhook deliveries. `at_start` takes every unfinished run.
    ///
    /// Runs whose lease a dead process of this node holds (a `cordon run` killed here, or
    /// this service before a restart) are taken over at once. Runs with a free or lapsed
    /// lease are claimed with [`Store::claim_runnable`](crate::store::Store::claim_runnable)
    /// (`FOR UPDATE SKIP LOCKED` on PostgreSQL), up to the execution slots this process
    /// has free, so that several nodes share the work without waiting for each other or
    /// taking the same run.
    pub async fn sweep(self: &Arc<Self>, at_start: bool) {
        let store = self.engine.store();
        let now = chrono::Utc::now();
        let me = &self.engine.inner;
        // Only runs with a live lease are read: a backlog of accepted runs that nobody
        // holds yet (thousands, after an outage) is left to `claim_runnable` below.
        match store.held_runs().await {
            Ok(runs) => {
                for r in runs {
                    let h = &r.lease;
                    let ours = h.owner == me.owner || owner_is_dead(&me.node, &h.owner);
                    if ours && !self.is_active(&r.id) {
                        tracing::info!(run_id = %r.id, status = r.status.as_str(), "resuming run");
                        self.submit(&r.id);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the runs with a live lease"),
        }
        let here = self.metrics.queue_depth.get().max(0) as usize
            + self.metrics.executing.get().max(0) as usize;
        let room = (self.slot_count * CLAIMED_PER_SLOT).saturating_sub(here);
        let limit = if at_start {
            room.max(CLAIM_AT_START)
        } else {
            room
        };
        if limit > 0 {
            let fresh_ms = u64::try_from(FRESH_QUEUED.num_milliseconds()).unwrap_or(0);
            let claimed = store
                .claim_runnable(
                    &me.owner,
                    me.config.cluster.lease_ttl_ms(),
                    fresh_ms,
                    u32::try_from(limit).unwrap_or(u32::MAX),
                )
                .await;
            match claimed {
                Ok(leases) => {
                    for lease in leases {
                        if !self.is_active(&lease.run_id) {
                            tracing::info!(run_id = %lease.run_id, lease_token = lease.token, "claimed run");
                            self.submit(&lease.run_id);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot claim runnable runs"),
            }
        }
        match store.overdue_runs(&crate::time::format(now)).await {
            Ok(ids) => {
                for id in ids {
                    if !self.is_active(&id) {
                        tracing::info!(run_id = %id, "deciding a timed-out approval");
                        self.submit(&id);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list overdue approvals"),
        }
        let due = self
            .last_purge
            .lock()
            .map(|mut last| {
                let due = last.is_none_or(|t| t.elapsed() >= PURGE_EVERY);
                if due {
                    *last = Some(Instant::now());
                }
                due
            })
            .unwrap_or(false);
        if due {
            let before = crate::time::format(
                now - chrono::TimeDelta::days(crate::triggers::webhook::REMEMBER_DAYS),
            );
            match store.purge_dedup_keys(&before).await {
                Ok(n) if n > 0 => tracing::info!(forgotten = n, "purged old webhook deliveries"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot purge old webhook deliveries"),
            }
            match store.purge_schedule_fires(&before).await {
                Ok(n) if n > 0 => tracing::info!(forgotten = n, "purged old schedule fires"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot purge old schedule fires"),
            }
        }
    }

    /// Wait for every background run to stop, up to `bound`. Returns false when the bound
    /// was reached (the calls still in flight are repeated, under their idempotency keys,
    /// by the next start).
    pub async fn drain(&self, bound: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(bound, self.tracker.wait())
            .await
            .is_ok()
    }
}
