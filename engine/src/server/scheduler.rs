//! The schedules of `cordon serve`: one task per schedule turns fire times into runs.
//!
//! A schedule resumes after the newest fire time it handled (from `schedule_fires`; at its
//! very first start, the start is recorded as `registered`, so that fires missed before its
//! first fire are noticed later). Each turn ([`Scheduler::tick`]) asks the planner
//! ([`crate::triggers::schedule::plan`]) what is due since then: the run for the most recent
//! fire time is created in the transaction that claims that fire time under the primary
//! key (schedule, fire time), so a restart, or several processes sharing the database,
//! make each fire once; the fire times passed over are one `schedule.missed` audit event.
//! Then it sleeps (tokio time, at most a minute at a time, so a changed wall clock is
//! noticed) until the next fire time. The runs execute in the background like the others.
//!
//! Shutdown: the loop stops between turns; a turn's claim and run creation are one
//! transaction, so a stop leaves either both or neither.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::exec::{Engine, ExecError, StartRequest};
use crate::runbook::validate::ValidatedRunbook;
use crate::store::{AuditDraft, Created, Fired, ScheduleFire, StoreError};
use crate::triggers::schedule::{plan, ScheduleDef};

/// The longest single sleep: the wall clock is looked at again at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Pause after a database error before the next try.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Fire times listed ahead by `cordon schedules list` and the API.
pub const LIST_NEXT: usize = 3;

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A schedule with its runbook (validated, inputs checked, at start).
pub struct Scheduled {
    pub def: ScheduleDef,
    pub runbook: Arc<ValidatedRunbook>,
}

/// Called with the id of each new run (the service submits it to its executor).
pub type OnRun = Arc<dyn Fn(&str) + Send + Sync>;

pub struct Scheduler {
    engine: Engine,
    schedules: Vec<Arc<Scheduled>>,
    clock: Arc<dyn Clock>,
    on_run: OnRun,
}

fn fmt(t: DateTime<Utc>) -> String {
    crate::time::format(t)
}

impl Scheduler {
    pub fn new(
        engine: Engine,
        schedules: Vec<Arc<Scheduled>>,
        clock: Arc<dyn Clock>,
        on_run: OnRun,
    ) -> Scheduler {
        Scheduler {
            engine,
            schedules,
            clock,
            on_run,
        }
    }

    pub fn schedules(&self) -> &[Arc<Scheduled>] {
        &self.schedules
    }

    /// Where `s` resumes: after the newest fire time it handled, or now at its first start
    /// (recorded, so that what is missed before its first fire is noticed).
    pub async fn resume_point(
        &self,
        s: &Scheduled,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        let store = self.engine.store();
        let state = store.schedule_state(&s.def.key).await?;
        if let Some(t) = state.through {
            return crate::time::parse(&t).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "schedule_fires.fire_time of schedule `{}` holds {t:?}",
                    s.def.key
                ))
            });
        }
        store
            .mark_schedule(
                ScheduleFire {
                    schedule: s.def.key.clone(),
                    fire_time: fmt(now),
                    outcome: "registered".into(),
                    run_id: None,
                    missed: 0,
                    at: fmt(now),
                },
                None,
            )
            .await?;
        // Another process may have registered it (or fired) meanwhile: take the newest.
        let state = store.schedule_state(&s.def.key).await?;
        Ok(state
            .through
            .as_deref()
            .and_then(crate::time::parse)
            .unwrap_or(now))
    }

    /// Handle what came due for `s` in (`after`, `now`]; returns where it now stands.
    pub async fn tick(
        &self,
        s: &Scheduled,
        after: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, ExecError> {
        let Some(due) = plan(&s.def.cron, after, now, s.def.catch_up) else {
            return Ok(after);
        };
        let store = self.engine.store();
        let trigger = s.def.trigger();
        let missed_event = |reason: &str, error: Option<&str>| {
            due.missed.as_ref().map(|m| AuditDraft {
                run_id: None,
                actor: trigger.clone(),
                action: "schedule.missed".into(),
                details: json!({
                    "schedule": s.def.key,
                    "runbook": s.def.runbook,
                    "cron": s.def.cron.expression(),
                    "timezone": s.def.cron.timezone().name(),
                    "count": m.count,
                    "count_capped": m.capped,
                    "first": fmt(m.first),
                    "last": fmt(m.last),
                    "catch_up_seconds": s.def.catch_up.as_secs(),
                    "reason": reason,
                    "error": error,
                }),
            })
        };
        let Some(fire) = due.fire else {
            if let Some(m) = &due.missed {
                tracing::warn!(schedule = %s.def.key, count = m.count, first = %fmt(m.first), last = %fmt(m.last),
                    "schedule fire times passed while nobody could make them (more than catch_up ago): recorded as missed");
                store
                    .mark_schedule(
                        self.missed_row(s, m.last, m.count, now),
                        missed_event("older than catch_up", None),
                    )
                    .await?;
            }
            return Ok(due.through);
        };
        let request = StartRequest {
            runbook: (*s.runbook).clone(),
            inputs: s.def.inputs.clone(),
            trigger: trigger.clone(),
            started_by: trigger.clone(),
            dry_run: false,
        };
        let (run, mut audit) = match self.engine.prepare_run(request) {
            Ok(x) => x,
            Err(ExecError::Invalid(e)) => {
                // Inputs were checked at start; what is left (a concurrency key that does
                // not render) fails every fire the same way: record it, do not retry.
                tracing::error!(schedule = %s.def.key, error = %e, "a scheduled run cannot start");
                let count = due.missed.as_ref().map_or(0, |m| m.count) + 1;
                let event = AuditDraft {
                    run_id: None,
                    actor: trigger.clone(),
                    action: "schedule.missed".into(),
                    details: json!({
                        "schedule": s.def.key, "runbook": s.def.runbook,
                        "cron": s.def.cron.expression(), "count": count,
                        "first": fmt(due.missed.as_ref().map_or(fire, |m| m.first)),
                        "last": fmt(fire), "reason": "the run could not start", "error": e,
                    }),
                };
                store
                    .mark_schedule(self.missed_row(s, fire, count, now), Some(event))
                    .await?;
                return Ok(due.through);
            }
            Err(e) => return Err(e),
        };
        if let Value::Object(d) = &mut audit.details {
            d.insert(
                "schedule".into(),
                json!({"key": s.def.key, "fire_time": fmt(fire)}),
            );
        }
        if let Some(m) = &due.missed {
            tracing::warn!(schedule = %s.def.key, count = m.count, first = %fmt(m.first), last = %fmt(m.last),
                "schedule fire times passed while nobody could make them: firing only the most recent");
        }
        let missed = missed_event(
            "superseded by a later fire time (catch-up fires once)",
            None,
        );
        match store
            .fire_schedule(&s.def.key, &fmt(fire), run, audit, missed)
            .await?
        {
            Fired::Claimed(created) => match *created {
                Created::New(run) => {
                    tracing::info!(schedule = %s.def.key, run_id = %run.id, fire_time = %fmt(fire), "schedule fired");
                    (self.on_run)(&run.id);
                }
                Created::Joined(run) => {
                    tracing::info!(schedule = %s.def.key, run_id = %run.id, fire_time = %fmt(fire),
                        "schedule fired into the active run with the same concurrency key");
                }
            },
            Fired::Duplicate(run_id) => {
                tracing::debug!(schedule = %s.def.key, fire_time = %fmt(fire), run_id = ?run_id,
                    "fire time already handled (by another process, or before a restart)");
            }
        }
        Ok(due.through)
    }

    fn missed_row(
        &self,
        s: &Scheduled,
        last: DateTime<Utc>,
        count: u64,
        now: DateTime<Utc>,
    ) -> ScheduleFire {
        ScheduleFire {
            schedule: s.def.key.clone(),
            fire_time: fmt(last),
            outcome: "missed".into(),
            run_id: None,
            missed: count,
            at: fmt(now),
        }
    }

    /// Drive every schedule until `token` is cancelled.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        let tasks: Vec<_> = self
            .schedules
            .iter()
            .cloned()
            .map(|s| {
                let this = self.clone();
                let token = token.clone();
                tokio::spawn(async move { this.drive(&s, &token).await })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Sleep `d`, or return true at once when cancelled.
    async fn pause(token: &CancellationToken, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = token.cancelled() => true,
        }
    }

    async fn drive(&self, s: &Scheduled, token: &CancellationToken) {
        let key = s.def.key.as_str();
        let mut after = loop {
            match self.resume_point(s, self.clock.now()).await {
                Ok(t) => break t,
                Err(e) => {
                    tracing::warn!(schedule = key, error = %e, "cannot read the schedule's last fire; retrying");
                    if Self::pause(token, RETRY_PAUSE).await {
                        return;
                    }
                }
            }
        };
        tracing::info!(schedule = key, runbook = %s.def.runbook, cron = %s.def.cron.expression(),
            timezone = %s.def.cron.timezone().name(), after = %fmt(after), "schedule started");
        loop {
            if token.is_cancelled() {
                return;
            }
            let now = self.clock.now();
            match self.tick(s, after, now).await {
                Ok(t) => after = t,
                Err(e) => {
                    tracing::warn!(schedule = key, error = %e, "schedule turn failed; retrying");
                    if Self::pause(token, RETRY_PAUSE).await {
                        return;
                    }
                    continue;
                }
            }
            let Some(next) = s.def.cron.next_after(after.max(now)) else {
                tracing::info!(schedule = key, "the schedule fires no more");
                return;
            };
            let wait = (next - self.clock.now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(MAX_SLEEP);
            if Self::pause(token, wait).await {
                return;
            }
        }
    }
}

/// The document `cordon schedules list --json` and `GET /api/v1/schedules` show for each
/// schedule: what it runs, its next fire times, and its last fire with its run.
pub async fn describe(
    engine: &Engine,
    defs: &[ScheduleDef],
    now: DateTime<Utc>,
) -> Result<Vec<Value>, StoreError> {
    let mut out = Vec::with_capacity(defs.len());
    for d in defs {
        let state = engine.store().schedule_state(&d.key).await?;
        let next: Vec<String> = d
            .cron
            .upcoming(now, LIST_NEXT)
            .into_iter()
            .map(fmt)
            .collect();
        out.push(json!({
            "index": d.index,
            "key": d.key,
            "name": d.name,
            "runbook": d.runbook,
            "cron": d.cron.expression(),
            "timezone": d.cron.timezone().name(),
            "catch_up_seconds": d.catch_up.as_secs(),
            "inputs": d.inputs,
            "trigger": d.trigger(),
            "next": next,
            "last_fire": state.last_fire.map(|f| json!({
                "fire_time": f.fire_time,
                "run_id": f.run_id,
                "outcome": f.outcome,
                "at": f.at,
            })),
            "handled_through": state.through,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::tests::engine;
    use crate::store::Store;
    use std::sync::Mutex;

    const RUNBOOK: &str = "version: 1\nname: sweep\ninputs:\n  scope: { type: string, required: true }\nsteps:\n  - id: look\n    uses: core.noop\n";

    fn scheduled(cron: &str, catch_up: &str) -> Arc<Scheduled> {
        let (mut defs, problems) = crate::triggers::schedule::build_all(&[json!({
            "runbook": "sweep", "cron": cron, "catch_up": catch_up, "inputs": {"scope": "all"}
        })]);
        assert!(problems.is_empty(), "{problems:?}");
        let runbook =
            crate::runbook::validate::validate(RUNBOOK, "sweep.yaml", &Default::default())
                .unwrap_or_else(|d| panic!("{d:?}"));
        let def = defs.remove(0);
        def.check_inputs(&runbook).unwrap();
        Arc::new(Scheduled {
            def,
            runbook: Arc::new(runbook),
        })
    }

    fn scheduler(engine: &Engine, s: &Arc<Scheduled>) -> (Scheduler, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let on_run: OnRun = Arc::new(move |id: &str| sink.lock().unwrap().push(id.to_string()));
        (
            Scheduler::new(
                engine.clone(),
                vec![s.clone()],
                Arc::new(SystemClock),
                on_run,
            ),
            seen,
        )
    }

    fn utc(s: &str) -> DateTime<Utc> {
        crate::time::parse(s).unwrap()
    }

    async fn audit_actions(store: &dyn Store, action: &str) -> Vec<Value> {
        store
            .audit_events(None)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.action == action)
            .map(|e| e.details)
            .collect()
    }

    #[tokio::test]
    async fn fires_once_per_fire_time_across_restarts_and_processes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path()).await;
        let s = scheduled("*/15 * * * *", "1h");
        let (a, seen_a) = scheduler(&engine, &s);
        let start = utc("2026-03-02T10:05:00Z");
        let after = a.resume_point(&s, start).await.unwrap();
        assert_eq!(after, start, "first start: registered at its start");
        // Nothing due before 10:15.
        assert_eq!(
            a.tick(&s, after, utc("2026-03-02T10:14:59Z"))
                .await
                .unwrap(),
            after
        );
        let after = a
            .tick(&s, after, utc("2026-03-02T10:15:00.300Z"))
            .await
            .unwrap();
        assert_eq!(after, utc("2026-03-02T10:15:00Z"));
        let runs = seen_a.lock().unwrap().clone();
        assert_eq!(runs.len(), 1);
        let run = engine.store().get_run(&runs[0]).await.unwrap().unwrap();
        assert_eq!(run.trigger, "schedule:sweep");
        assert_eq!(run.started_by, "schedule:sweep");
        assert_eq!(run.inputs["scope"], "all");

        // A second process (or the same after a restart) that reaches 10:15 again makes no
        // second run: the fire time is claimed.
        let (b, seen_b) = scheduler(&engine, &s);
        let b_after = b
            .resume_point(&s, utc("2026-03-02T10:15:01Z"))
            .await
            .unwrap();
        assert_eq!(
            b_after,
            utc("2026-03-02T10:15:00Z"),
            "resumes after the last fire"
        );
        assert_eq!(
            b.tick(&s, utc("2026-03-02T10:05:00Z"), utc("2026-03-02T10:15:02Z"))
                .await
                .unwrap(),
            utc("2026-03-02T10:15:00Z")
        );
        assert!(
            seen_b.lock().unwrap().is_empty(),
            "a duplicate fire made a run"
        );
        let state = engine.store().schedule_state(&s.def.key).await.unwrap();
        assert_eq!(
            state.last_fire.unwrap().run_id.as_deref(),
            Some(runs[0].as_str())
        );
        let created = audit_actions(engine.store(), "run.created").await;
        assert_eq!(created.len(), 1);
        assert_eq!(
            created[0]["schedule"]["fire_time"],
            "2026-03-02T10:15:00.000Z"
        );
        assert_eq!(created[0]["trigger"], "schedule:sweep");
    }

    #[tokio::test]
    async fn catch_up_after_downtime_fires_the_most_recent_once_and_audits_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path()).await;
        let s = scheduled("*/15 * * * *", "1h");
        let (a, seen) = scheduler(&engine, &s);
        let after = a
            .resume_point(&s, utc("2026-03-02T10:00:30Z"))
            .await
            .unwrap();
        let after = a
            .tick(&s, after, utc("2026-03-02T10:15:00Z"))
            .await
            .unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1);
        // Down from 10:16 to 11:20: 10:30, 10:45, 11:00 and 11:15 came due.
        let (b, seen_b) = scheduler(&engine, &s);
        let resumed = b
            .resume_point(&s, utc("2026-03-02T11:20:00Z"))
            .await
            .unwrap();
        assert_eq!(resumed, after);
        let through = b
            .tick(&s, resumed, utc("2026-03-02T11:20:00Z"))
            .await
            .unwrap();
        assert_eq!(through, utc("2026-03-02T11:15:00Z"));
        assert_eq!(
            seen_b.lock().unwrap().len(),
            1,
            "one catch-up fire, never a burst"
        );
        let state = engine.store().schedule_state(&s.def.key).await.unwrap();
        assert_eq!(
            state.last_fire.unwrap().fire_time,
            "2026-03-02T11:15:00.000Z"
        );
        let missed = audit_actions(engine.store(), "schedule.missed").await;
        assert_eq!(missed.len(), 1, "{missed:?}");
        assert_eq!(missed[0]["count"], 3);
        assert_eq!(missed[0]["first"], "2026-03-02T10:30:00.000Z");
        assert_eq!(missed[0]["last"], "2026-03-02T11:00:00.000Z");
        // Nothing more is due, and a restart finds nothing to catch up.
        let (c, seen_c) = scheduler(&engine, &s);
        let r = c
            .resume_point(&s, utc("2026-03-02T11:21:00Z"))
            .await
            .unwrap();
        assert_eq!(c.tick(&s, r, utc("2026-03-02T11:21:00Z")).await.unwrap(), r);
        assert!(seen_c.lock().unwrap().is_empty());
        assert_eq!(
            audit_actions(engine.store(), "schedule.missed").await.len(),
            1
        );
    }

    #[tokio::test]
    async fn fires_older_than_catch_up_are_missed_not_made() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path()).await;
        let s = scheduled("0 * * * *", "10m");
        let (a, seen) = scheduler(&engine, &s);
        // Registered at 08:30, down until 12:40: 09:00 to 12:00 passed; 12:00 is 40 min old.
        let after = a
            .resume_point(&s, utc("2026-03-02T08:30:00Z"))
            .await
            .unwrap();
        let through = a
            .tick(&s, after, utc("2026-03-02T12:40:00Z"))
            .await
            .unwrap();
        assert_eq!(through, utc("2026-03-02T12:00:00Z"));
        assert!(seen.lock().unwrap().is_empty());
        let missed = audit_actions(engine.store(), "schedule.missed").await;
        assert_eq!(missed.len(), 1);
        assert_eq!(missed[0]["count"], 4);
        assert_eq!(missed[0]["reason"], "older than catch_up");
        let state = engine.store().schedule_state(&s.def.key).await.unwrap();
        assert_eq!(state.through.as_deref(), Some("2026-03-02T12:00:00.000Z"));
        assert_eq!(state.last_fire, None);
        // The next fire is made as usual.
        a.tick(&s, through, utc("2026-03-02T13:00:01Z"))
            .await
            .unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn describe_lists_next_fires_and_the_last_run() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path()).await;
        let s = scheduled("*/15 * * * *", "1h");
        let (a, seen) = scheduler(&engine, &s);
        let after = a
            .resume_point(&s, utc("2026-03-02T10:00:30Z"))
            .await
            .unwrap();
        a.tick(&s, after, utc("2026-03-02T10:15:00Z"))
            .await
            .unwrap();
        let doc = describe(
            &engine,
            std::slice::from_ref(&s.def),
            utc("2026-03-02T10:20:00Z"),
        )
        .await
        .unwrap();
        assert_eq!(doc[0]["runbook"], "sweep");
        assert_eq!(doc[0]["trigger"], "schedule:sweep");
        assert_eq!(
            doc[0]["next"],
            json!([
                "2026-03-02T10:30:00.000Z",
                "2026-03-02T10:45:00.000Z",
                "2026-03-02T11:00:00.000Z"
            ])
        );
        assert_eq!(
            doc[0]["last_fire"]["run_id"],
            json!(seen.lock().unwrap()[0])
        );
        assert_eq!(doc[0]["last_fire"]["fire_time"], "2026-03-02T10:15:00.000Z");
    }

    /// Two processes (two engines on one database file) run the same every-second schedule:
    /// each fire time makes one run, and every second between the first and last fire is
    /// either fired or recorded as missed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_on_one_database_fire_each_second_once() {
        let dir = tempfile::tempdir().unwrap();
        let a_engine = engine(dir.path()).await;
        let b_engine = engine(dir.path()).await;
        let s = scheduled("* * * * * *", "1h");
        let (a, _) = scheduler(&a_engine, &s);
        let (b, _) = scheduler(&b_engine, &s);
        let token = CancellationToken::new();
        let ta = tokio::spawn(Arc::new(a).run(token.clone()));
        let tb = tokio::spawn(Arc::new(b).run(token.clone()));
        tokio::time::sleep(Duration::from_millis(3500)).await;
        token.cancel();
        ta.await.unwrap();
        tb.await.unwrap();
        let store = a_engine.store();
        let mut fires: Vec<DateTime<Utc>> = audit_actions(store, "run.created")
            .await
            .iter()
            .map(|d| utc(d["schedule"]["fire_time"].as_str().unwrap()))
            .collect();
        fires.sort();
        let n = fires.len();
        fires.dedup();
        assert_eq!(fires.len(), n, "a fire time made two runs: {fires:?}");
        assert!(n >= 2, "{fires:?}");
        let missed: u64 = audit_actions(store, "schedule.missed")
            .await
            .iter()
            .map(|d| d["count"].as_u64().unwrap())
            .sum();
        let gaps: i64 = fires
            .windows(2)
            .map(|w| (w[1] - w[0]).num_seconds() - 1)
            .sum();
        assert_eq!(
            gaps as u64, missed,
            "seconds neither fired nor recorded as missed"
        );
        assert_eq!(store.list_runs(&Default::default()).await.unwrap().len(), n);
    }
}
