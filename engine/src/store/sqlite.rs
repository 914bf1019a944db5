//! The SQLite implementation of [`Store`]: the embedded default, one database file shared by
//! every `cordon` process on the machine (a run, an `approve`, a `cancel`, `serve`).
//!
//! - WAL journal, `synchronous=FULL` (a committed step survives power loss), foreign keys on,
//!   and a 10 s busy timeout so processes queue for the write lock instead of failing.
//! - Every write is one transaction opened with `BEGIN IMMEDIATE`: it takes the write lock up
//!   front, so two processes that read and then write cannot deadlock (a deferred transaction
//!   that read first gets `SQLITE_BUSY` without waiting when it tries to write). Writes go
//!   through a pool of one connection, which also queues this process's writers in order;
//!   reads use a separate pool and see the last committed state (WAL readers never block).
//! - The frequent writes (step commits, run creation, leases, audit appends) go through one
//!   writer task that groups many callers' requests into one transaction (savepoints only
//!   where a request may have to undo itself, or after the database refused one), and
//!   answers them only after that COMMIT ([`writer`]): one fsync for many runs' steps.
//! - Audit events are sealed inside the writing transaction from the head row read in that
//!   same transaction, so the chain has one order even with several processes appending.
//! - Lease expiry is judged on this process's clock (`crate::time::now()`), compared as RFC
//!   3339 text with the stored `lease_until`; every process sharing a SQLite file runs on the
//!   same machine, hence the same clock. Fencing does not depend on clocks: each acquisition
//!   increments `lease_token` and every commit checks it.

mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, Transaction};

use super::rows::{
    json_text, opt_json_text, parse_json, to_i64, to_u32, to_u64, ttl, AuditRow, DecisionRow,
    DraftRow, EvidenceRow, FireRow, HeldRow, ItemRow, NoticeRow, RunRow, StepRow, DRAFT_COLUMNS,
    NOTICE_COLUMNS, RUN_COLUMNS,
};
use super::{
    AuditDraft, AuditEvent, AuditHead, Change, Created, Decision, DedupKey, DraftRecord,
    EvidenceRecord, Fired, HeldRun, ItemRecord, Lease, LeaseHolder, NoticeOutcome, Result,
    RunFilter, RunRecord, RunStatus, ScheduleFire, ScheduleState, StepRecord, Store, StoreError,
    Triggered, WaitingNotice,
};
use crate::audit::Chain;
pub use writer::WriteStats;
use writer::{Op, Writer};

/// How long a connection waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a task waits for this process's single write connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(60);
const READ_CONNECTIONS: u32 = 4;
/// Attempts at running migrations; see [`SqliteStore::migrate`].
const MIGRATE_ATTEMPTS: u32 = 5;
/// Prepared statements kept per connection: the multi-row inserts have one text per row
/// count, and the common ones should stay prepared.
const STATEMENT_CACHE: usize = 512;
/// Rows per multi-row INSERT (well under SQLite's 32,766 bound parameters).
const ROWS_PER_INSERT: usize = 64;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store. Cheap to clone; clones share the pools.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// One connection: every write transaction.
    write: SqlitePool,
    /// Reads; the same pool as `write` for an in-memory database, which exists only on its
    /// one connection.
    read: SqlitePool,
    /// The group-commit writer (it borrows the `write` connection for each batch).
    writer: Arc<Writer>,
}

/// Open a pool, retrying while another process holds the file's lock. Switching a fresh
/// file to WAL answers SQLITE_BUSY at once (the busy timeout does not cover it), so two
/// processes that open a new database together would otherwise fail at random.
async fn connect_retrying(
    pool: &SqlitePoolOptions,
    options: &SqliteConnectOptions,
) -> Result<SqlitePool> {
    let mut attempt = 1;
    loop {
        match pool.clone().connect_with(options.clone()).await {
            Ok(p) => return Ok(p),
            Err(sqlx::Error::Database(e))
                if attempt < MIGRATE_ATTEMPTS && e.code().as_deref() == Some("5") =>
            {
                tracing::debug!(attempt, "database is locked while opening; retrying");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl SqliteStore {
    /// Open (creating if needed) and migrate the database at `sqlite://path`, `sqlite:path`
    /// or a bare path. `sqlite::memory:` gives a private in-memory database (tests).
    pub async fn open(url_or_path: &str) -> Result<SqliteStore> {
        let in_memory = url_or_path.contains(":memory:") || url_or_path.contains("mode=memory");
        let base = if url_or_path.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url_or_path)?
        } else {
            SqliteConnectOptions::new().filename(url_or_path)
        };
        let options = base
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .statement_cache_capacity(STATEMENT_CACHE)
            // Savepoint and statement journals in memory: the batch's rollbacks stay cheap.
            .pragma("temp_store", "memory");

        // A local file's connection cannot go stale: no ping (a round trip to the
        // connection's thread) before every use.
        let mut write_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false);
        if in_memory {
            // The database lives and dies with its one connection: never let it close.
            write_pool = write_pool
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let write = connect_retrying(&write_pool, &options).await?;
        Self::migrate(&write).await?;

        let read = if in_memory {
            write.clone()
        } else {
            let read_pool = SqlitePoolOptions::new()
                .max_connections(READ_CONNECTIONS)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .test_before_acquire(false);
            connect_retrying(&read_pool, &options).await?
        };
        Ok(SqliteStore {
            write,
            read,
            writer: Arc::default(),
        })
    }

    /// How many write requests the group-commit writer took, in how many transactions.
    pub fn write_stats(&self) -> WriteStats {
        self.writer.stats()
    }

    /// Run the migrations. SQLite has no migration lock in sqlx, so two processes opening a
    /// fresh file at once can collide; the loser retries and then finds the work done.
    async fn migrate(pool: &SqlitePool) -> Result<()> {
        let mut attempt = 1;
        loop {
            match MIGRATOR.run(pool).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < MIGRATE_ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "migration attempt failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Close both pools, waiting for connections to finish.
    pub async fn close(&self) {
        self.writer.stop();
        self.write.close().await;
        self.read.close().await;
    }

    /// A write transaction holding the database write lock from its first statement.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.write.begin_with("BEGIN IMMEDIATE").await?)
    }
}

// ---------------------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------------------

/// Seal `drafts` onto the chain and store them with the new head, inside `tx`: one read of
/// the head, then one round trip for every insert and the new head.
async fn append_events(conn: &mut SqliteConnection, drafts: Vec<AuditDraft>) -> Result<()> {
    if drafts.is_empty() {
        return Ok(());
    }
    let head = read_head(&mut *conn).await?;
    let mut chain = Chain::from_head(head);
    let mut events = Vec::with_capacity(drafts.len());
    for draft in drafts {
        let ev = chain.seal(draft);
        let details = json_text(&ev.details)?;
        events.push((ev, details));
    }
    let head = chain.head();
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("");
    for chunk in events.chunks(ROWS_PER_INSERT) {
        q.push(
            "INSERT INTO audit_events (seq, at, run_id, actor, action, details, prev_hash, hash) ",
        );
        q.push_values(chunk, |mut b, (ev, details)| {
            b.push_bind(ev.seq)
                .push_bind(&ev.at)
                .push_bind(&ev.run_id)
                .push_bind(&ev.actor)
                .push_bind(&ev.action)
                .push_bind(details)
                .push_bind(&ev.prev_hash)
                .push_bind(&ev.hash);
        });
        q.push("; ");
    }
    q.push("INSERT INTO audit_head (id, seq, hash) VALUES (1, ")
        .push_bind(head.seq)
        .push(", ")
        .push_bind(&head.hash)
        .push(") ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash");
    q.build().execute(&mut *conn).await?;
    Ok(())
}

async fn read_head(conn: &mut SqliteConnection) -> Result<Option<AuditHead>> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(seq, hash)| AuditHead { seq, hash }))
}

async fn insert_run(conn: &mut SqliteConnection, run: &RunRecord) -> Result<()> {
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("");
    push_insert_run(&mut q, run)?;
    q.build().execute(conn).await?;
    Ok(())
}

/// The statements of the write path are built onto one [`QueryBuilder`], separated by
/// `; `, so that a whole commit is one round trip to SQLite's worker thread.
type Statements<'a> = QueryBuilder<'a, Sqlite>;

fn push_insert_run<'a>(q: &mut Statements<'a>, run: &'a RunRecord) -> Result<()> {
    q.push(
        "INSERT INTO runs (id, runbook, runbook_text, runbook_sha256, status, trigger_source,
             started_by, inputs, concurrency_key, undo_of, dry_run, case_id, error, created_at,
             started_at, finished_at, cancel_requested) ",
    );
    let inputs = json_text(&run.inputs)?;
    q.push_values([run], |mut b, run| {
        b.push_bind(&run.id)
            .push_bind(&run.runbook)
            .push_bind(&run.runbook_text)
            .push_bind(&run.runbook_sha256)
            .push_bind(run.status.as_str())
            .push_bind(&run.trigger)
            .push_bind(&run.started_by)
            .push_bind(inputs.clone())
            .push_bind(&run.concurrency_key)
            .push_bind(&run.undo_of)
            .push_bind(run.dry_run)
            .push_bind(&run.case_id)
            .push_bind(&run.error)
            .push_bind(&run.created_at)
            .push_bind(&run.started_at)
            .push_bind(&run.finished_at)
            .push_bind(run.cancel_requested);
    });
    q.push("; ");
    Ok(())
}

/// Insert or replace step rows (all of one run), one statement per chunk. A new row's `pos`
/// comes after every row of its run, in the order given (gaps are harmless: `pos` only
/// orders).
fn push_steps<'a>(q: &mut Statements<'a>, steps: &[&'a StepRecord]) -> Result<()> {
    let mut rows = Vec::with_capacity(steps.len());
    for s in steps {
        rows.push((*s, opt_json_text(&s.inputs)?, opt_json_text(&s.output)?));
    }
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<_> = rows.by_ref().take(ROWS_PER_INSERT).collect();
        q.push(
            "INSERT INTO steps (run_id, step_id, pos, status, attempts, items, inputs, output,
                 error, reason, started_at, finished_at, deadline, on_failure) ",
        );
        q.push_values(
            chunk.into_iter().enumerate(),
            |mut b, (k, (s, inputs, output))| {
                b.push_bind(&s.run_id)
                    .push_bind(&s.step_id)
                    .push(format!(
                        "(SELECT COALESCE(MAX(pos), -1) + {} FROM steps WHERE run_id = ",
                        k + 1
                    ))
                    .push_bind_unseparated(&s.run_id)
                    .push_unseparated(")")
                    .push_bind(s.status.as_str())
                    .push_bind(i64::from(s.attempts))
                    .push_bind(i64::from(s.items))
                    .push_bind(inputs)
                    .push_bind(output)
                    .push_bind(&s.error)
                    .push_bind(&s.reason)
                    .push_bind(&s.started_at)
                    .push_bind(&s.finished_at)
                    .push_bind(&s.deadline)
                    .push_bind(s.on_failure);
            },
        );
        q.push(
            " ON CONFLICT (run_id, step_id) DO UPDATE SET
                 status = excluded.status, attempts = excluded.attempts, items = excluded.items,
                 inputs = excluded.inputs, output = excluded.output, error = excluded.error,
                 reason = excluded.reason, started_at = excluded.started_at,
                 finished_at = excluded.finished_at, deadline = excluded.deadline,
                 on_failure = excluded.on_failure; ",
        );
    }
    Ok(())
}

/// Insert or replace item rows, one statement per chunk.
fn push_items<'a>(q: &mut Statements<'a>, items: &[&'a ItemRecord]) -> Result<()> {
    let mut rows = Vec::with_capacity(items.len());
    for i in items {
        rows.push((
            *i,
            json_text(&i.inputs)?,
            opt_json_text(&i.output)?,
            opt_json_text(&i.prior_state)?,
            opt_json_text(&i.secret_output)?,
        ));
    }
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<_> = rows.by_ref().take(ROWS_PER_INSERT).collect();
        q.push(
            "INSERT INTO items (run_id, step_id, idx, status, attempts, inputs, connector,
                 output, error, prior_state, secret_output, started_at, finished_at) ",
        );
        q.push_values(chunk, |mut b, (i, inputs, output, prior, secret)| {
            b.push_bind(&i.run_id)
                .push_bind(&i.step_id)
                .push_bind(i64::from(i.idx))
                .push_bind(i.status.as_str())
                .push_bind(i64::from(i.attempts))
                .push_bind(inputs)
                .push_bind(&i.connector)
                .push_bind(output)
                .push_bind(&i.error)
                .push_bind(prior)
                .push_bind(secret)
                .push_bind(&i.started_at)
                .push_bind(&i.finished_at);
        });
        q.push(
            " ON CONFLICT (run_id, step_id, idx) DO UPDATE SET
                 status = excluded.status, attempts = excluded.attempts, inputs = excluded.inputs,
                 connector = excluded.connector, output = excluded.output, error = excluded.error,
                 prior_state = excluded.prior_state, secret_output = excluded.secret_output,
                 started_at = excluded.started_at, finished_at = excluded.finished_at; ",
        );
    }
    Ok(())
}

/// A change carries its own run id; under a lease it must be the leased run's, or the
/// fencing check would protect the wrong run.
fn same_run(lease: &Lease, what: &str, run_id: &str) -> Result<()> {
    if run_id == lease.run_id {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "refusing a commit under the lease of run {} that carries a {what} of run {run_id}",
            lease.run_id
        )))
    }
}

/// One change other than step and item rows.
fn push_change<'a>(q: &mut Statements<'a>, lease: &'a Lease, change: &'a Change) -> Result<()> {
    match change {
        Change::Run {
            status,
            error,
            started_at,
            finished_at,
        } => {
            q.push("UPDATE runs SET status = ")
                .push_bind(status.as_str())
                .push(", error = ")
                .push_bind(error)
                .push(", started_at = COALESCE(started_at, ")
                .push_bind(started_at)
                .push("), finished_at = ")
                .push_bind(finished_at)
                .push(" WHERE id = ")
                .push_bind(&lease.run_id);
        }
        Change::Step(s) => {
            same_run(lease, "step record", &s.run_id)?;
            return push_steps(q, &[s]);
        }
        Change::Item(i) => {
            same_run(lease, "item record", &i.run_id)?;
            return push_items(q, &[i]);
        }
        Change::Evidence(e) => {
            same_run(lease, "evidence record", &e.run_id)?;
            let bytes = to_i64(e.bytes, "evidence.bytes")?;
            let records = to_i64(e.records, "evidence.records")?;
            let meta = json_text(&e.meta)?;
            q.push(
                "INSERT INTO evidence (evidence_id, run_id, step_id, path, sha256, bytes, records,
                     collected_at, meta) ",
            );
            q.push_values([e], |mut b, e| {
                b.push_bind(&e.evidence_id)
                    .push_bind(&e.run_id)
                    .push_bind(&e.step_id)
                    .push_bind(&e.path)
                    .push_bind(&e.sha256)
                    .push_bind(bytes)
                    .push_bind(records)
                    .push_bind(&e.collected_at)
                    .push_bind(meta.clone());
            });
        }
        Change::Draft(d) => {
            same_run(lease, "draft", &d.run_id)?;
            let to = opt_json_text(&d.to)?;
            let facts = json_text(&d.facts)?;
            q.push(
                "INSERT INTO drafts (draft_id, run_id, step_id, idx, template, audience, subject,
                     recipient, body_markdown, body_text, body_sha256, facts, created_at) ",
            );
            q.push_values([d], |mut b, d| {
                b.push_bind(&d.draft_id)
                    .push_bind(&d.run_id)
                    .push_bind(&d.step_id)
                    .push_bind(i64::from(d.idx))
                    .push_bind(&d.template)
                    .push_bind(&d.audience)
                    .push_bind(&d.subject)
                    .push_bind(to.clone())
                    .push_bind(&d.body_markdown)
                    .push_bind(&d.body_text)
                    .push_bind(&d.body_sha256)
                    .push_bind(facts.clone())
                    .push_bind(&d.created_at);
            });
        }
        Change::TruncateItems { step_id, from_idx } => {
            q.push("DELETE FROM items WHERE run_id = ")
                .push_bind(&lease.run_id)
                .push(" AND step_id = ")
                .push_bind(step_id)
                .push(" AND idx >= ")
                .push_bind(i64::from(*from_idx));
        }
        Change::WaitingNotice { id, step_id } => {
            let now = crate::time::now();
            q.push(
                "INSERT INTO waiting_notices (id, run_id, step_id, status, attempts, next_at,
                     created_at) VALUES (",
            )
            .push_bind(id)
            .push(", ")
            .push_bind(&lease.run_id)
            .push(", ")
            .push_bind(step_id)
            .push(", 'pending', 0, ")
            .push_bind(now.clone())
            .push(", ")
            .push_bind(now)
            .push(") ON CONFLICT (id) DO NOTHING");
        }
        Change::ReleaseLease => {
            q.push("UPDATE runs SET lease_owner = NULL, lease_until = NULL WHERE id = ")
                .push_bind(&lease.run_id)
                .push(" AND lease_owner = ")
                .push_bind(&lease.owner)
                .push(" AND lease_token = ")
                .push_bind(lease.token);
        }
    }
    q.push("; ");
    Ok(())
}

/// Push the statements that apply `changes` under `lease`: all step rows in one multi-row
/// statement, all item rows in another, then the rest in order. Only `runs` is referenced
/// by the other tables, so the order between tables does not matter; within a table it is
/// kept. A commit that truncates items keeps its exact order (consecutive rows still share
/// a statement). On an error the builder holds a partial text: drop it.
fn push_changes<'a>(q: &mut Statements<'a>, lease: &'a Lease, changes: &'a [Change]) -> Result<()> {
    let truncates = changes
        .iter()
        .any(|c| matches!(c, Change::TruncateItems { .. }));
    if !truncates {
        let mut steps = Vec::new();
        let mut items = Vec::new();
        for c in changes {
            match c {
                Change::Step(s) => {
                    same_run(lease, "step record", &s.run_id)?;
                    steps.push(s);
                }
                Change::Item(i) => {
                    same_run(lease, "item record", &i.run_id)?;
                    items.push(i);
                }
                _ => {}
            }
        }
        if !items.is_empty() {
            push_items(q, &items)?;
        }
        if !steps.is_empty() {
            push_steps(q, &steps)?;
        }
        for c in changes {
            if !matches!(c, Change::Step(_) | Change::Item(_)) {
                push_change(q, lease, c)?;
            }
        }
        return Ok(());
    }
    let mut i = 0;
    while i < changes.len() {
        match &changes[i] {
            Change::Step(_) => {
                let mut rows = Vec::new();
                while let Some(Change::Step(s)) = changes.get(i) {
                    same_run(lease, "step record", &s.run_id)?;
                    rows.push(s);
                    i += 1;
                }
                push_steps(q, &rows)?;
            }
            Change::Item(_) => {
                let mut rows = Vec::new();
                while let Some(Change::Item(it)) = changes.get(i) {
                    same_run(lease, "item record", &it.run_id)?;
                    rows.push(it);
                    i += 1;
                }
                push_items(q, &rows)?;
            }
            other => {
                push_change(q, lease, other)?;
                i += 1;
            }
        }
    }
    Ok(())
}

/// Insert a `schedule_fires` row unless its (schedule, fire time) is taken; true if
/// inserted.
async fn insert_fire(conn: &mut SqliteConnection, f: &ScheduleFire) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO schedule_fires (schedule, fire_time, outcome, run_id, missed, at)
         VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (schedule, fire_time) DO NOTHING",
    )
    .bind(&f.schedule)
    .bind(&f.fire_time)
    .bind(&f.outcome)
    .bind(&f.run_id)
    .bind(to_i64(f.missed, "schedule_fires.missed")?)
    .bind(&f.at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn run_exists(conn: &mut SqliteConnection, run_id: &str) -> Result<bool> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM runs WHERE id = ?")
        .bind(run_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some())
}

/// Create a run, or join the active run with its concurrency key, inside `tx`. Returns the
/// audit event to append (`audit`, or the `run.joined` event made from it).
async fn create_in(
    tx: &mut SqliteConnection,
    run: RunRecord,
    audit: AuditDraft,
) -> Result<(Created, AuditDraft)> {
    if let Some(key) = &run.concurrency_key {
        let existing: Option<RunRow> = sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM runs
             WHERE concurrency_key = ? AND status IN ('queued', 'running', 'waiting')
             ORDER BY created_at, id LIMIT 1"
        ))
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            let existing = row.into_record()?;
            let at = crate::time::now();
            sqlx::query(
                "INSERT INTO run_joins (run_id, trigger_source, started_by, inputs, at)
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&existing.id)
            .bind(&run.trigger)
            .bind(&run.started_by)
            .bind(json_text(&run.inputs)?)
            .bind(&at)
            .execute(&mut *tx)
            .await?;
            let joined = AuditDraft {
                run_id: Some(existing.id.clone()),
                actor: audit.actor,
                action: "run.joined".into(),
                details: serde_json::json!({
                    "trigger": run.trigger,
                    "started_by": run.started_by,
                    "concurrency_key": key,
                    "details": audit.details,
                }),
            };
            return Ok((Created::Joined(existing), joined));
        }
    }
    insert_run(&mut *tx, &run).await?;
    Ok((Created::New(run), audit))
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_run(&self, run: RunRecord, audit: AuditDraft) -> Result<Created> {
        self.writer
            .submit(&self.write, Op::CreateRun { run, audit })
            .await?
            .created()
    }

    async fn create_run_once(
        &self,
        run: RunRecord,
        audit: AuditDraft,
        keys: &[DedupKey],
        remember_since: &str,
    ) -> Result<Triggered> {
        let op = Op::CreateRunOnce {
            run,
            audit,
            keys: keys.to_vec(),
            remember_since: remember_since.to_string(),
        };
        self.writer.submit(&self.write, op).await?.triggered()
    }

    async fn fire_schedule(
        &self,
        schedule: &str,
        fire_time: &str,
        run: RunRecord,
        audit: AuditDraft,
        missed: Option<AuditDraft>,
    ) -> Result<Fired> {
        let mut tx = self.begin_write().await?;
        let known: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT run_id FROM schedule_fires WHERE schedule = ? AND fire_time = ?",
        )
        .bind(schedule)
        .bind(fire_time)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((run_id,)) = known {
            tx.rollback().await?;
            return Ok(Fired::Duplicate(run_id));
        }
        let (created, event) = create_in(&mut tx, run, audit).await?;
        let (outcome, run_id) = match &created {
            Created::New(r) => ("fired", r.id.clone()),
            Created::Joined(r) => ("joined", r.id.clone()),
        };
        let fire = ScheduleFire {
            schedule: schedule.to_string(),
            fire_time: fire_time.to_string(),
            outcome: outcome.into(),
            run_id: Some(run_id),
            missed: 0,
            at: crate::time::now(),
        };
        // The write lock is held since BEGIN IMMEDIATE, so the row cannot have appeared;
        // the key still decides if it did.
        if !insert_fire(&mut tx, &fire).await? {
            tx.rollback().await?;
            return Ok(Fired::Duplicate(None));
        }
        append_events(&mut tx, std::iter::once(event).chain(missed).collect()).await?;
        tx.commit().await?;
        Ok(Fired::Claimed(Box::new(created)))
    }

    async fn mark_schedule(&self, mark: ScheduleFire, audit: Option<AuditDraft>) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        if !insert_fire(&mut tx, &mark).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(a) = audit {
            append_events(&mut tx, vec![a]).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn schedule_state(&self, schedule: &str) -> Result<ScheduleState> {
        const COLUMNS: &str = "schedule, fire_time, outcome, run_id, missed, at";
        let through: Option<(String,)> = sqlx::query_as(
            "SELECT fire_time FROM schedule_fires WHERE schedule = ?
             ORDER BY fire_time DESC LIMIT 1",
        )
        .bind(schedule)
        .fetch_optional(&self.read)
        .await?;
        let last: Option<FireRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM schedule_fires
             WHERE schedule = ? AND outcome IN ('fired', 'joined')
             ORDER BY fire_time DESC LIMIT 1"
        ))
        .bind(schedule)
        .fetch_optional(&self.read)
        .await?;
        Ok(ScheduleState {
            through: through.map(|(t,)| t),
            last_fire: last.map(FireRow::into_record).transpose()?,
        })
    }

    async fn purge_schedule_fires(&self, before: &str) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "DELETE FROM schedule_fires
             WHERE at < ? AND fire_time < (SELECT MAX(f.fire_time) FROM schedule_fires f
                                           WHERE f.schedule = schedule_fires.schedule)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn due_notices(
        &self,
        now: &str,
        stale_before: &str,
        limit: u32,
    ) -> Result<Vec<WaitingNotice>> {
        let rows: Vec<NoticeRow> = sqlx::query_as(&format!(
            "SELECT {NOTICE_COLUMNS} FROM waiting_notices
             WHERE (status = 'pending' AND next_at <= ?)
                OR (status = 'sending' AND claimed_at < ?)
             ORDER BY created_at, id LIMIT ?"
        ))
        .bind(now)
        .bind(stale_before)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.into_iter().map(NoticeRow::into_record).collect()
    }

    async fn claim_notice(
        &self,
        id: &str,
        owner: &str,
        now: &str,
        stale_before: &str,
    ) -> Result<Option<u32>> {
        let mut tx = self.begin_write().await?;
        let got: Option<(i64,)> = sqlx::query_as(
            "UPDATE waiting_notices
             SET status = 'sending', owner = ?, claimed_at = ?, attempts = attempts + 1
             WHERE id = ? AND ((status = 'pending' AND next_at <= ?)
                            OR (status = 'sending' AND claimed_at < ?))
             RETURNING attempts",
        )
        .bind(owner)
        .bind(now)
        .bind(id)
        .bind(now)
        .bind(stale_before)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        got.map(|(n,)| to_u32(n, "waiting_notices.attempts"))
            .transpose()
    }

    async fn settle_notice(
        &self,
        id: &str,
        owner: &str,
        outcome: NoticeOutcome,
        audit: Option<AuditDraft>,
    ) -> Result<bool> {
        let now = crate::time::now();
        let (status, next_at, error, finished_at) = match &outcome {
            NoticeOutcome::Sent => ("sent", None, None, Some(now.clone())),
            NoticeOutcome::Skipped(why) => ("skipped", None, Some(why.clone()), Some(now.clone())),
            NoticeOutcome::Retry { next_at, error } => {
                ("pending", Some(next_at.clone()), Some(error.clone()), None)
            }
            NoticeOutcome::Failed(error) => {
                ("failed", None, Some(error.clone()), Some(now.clone()))
            }
        };
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE waiting_notices
             SET status = ?, next_at = COALESCE(?, next_at), error = ?, finished_at = ?,
                 owner = NULL, claimed_at = NULL
             WHERE id = ? AND owner = ? AND status = 'sending'",
        )
        .bind(status)
        .bind(next_at)
        .bind(error)
        .bind(finished_at)
        .bind(id)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(a) = audit {
            append_events(&mut tx, vec![a]).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn notices(&self, run_id: &str) -> Result<Vec<WaitingNotice>> {
        let rows: Vec<NoticeRow> = sqlx::query_as(&format!(
            "SELECT {NOTICE_COLUMNS} FROM waiting_notices WHERE run_id = ?
             ORDER BY created_at, id"
        ))
        .bind(run_id)
        .fetch_all(&self.read)
        .await?;
        rows.into_iter().map(NoticeRow::into_record).collect()
    }

    async fn purge_dedup_keys(&self, before: &str) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM webhook_deliveries WHERE at < ?")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn held_runs(&self) -> Result<Vec<HeldRun>> {
        let rows: Vec<HeldRow> = sqlx::query_as(
            "SELECT id, status, lease_owner, lease_until FROM runs
             WHERE status IN ('queued', 'running') AND lease_owner IS NOT NULL
                 AND lease_until > ?
             ORDER BY created_at, id",
        )
        .bind(crate::time::now())
        .fetch_all(&self.read)
        .await?;
        rows.into_iter().map(HeldRow::into_record).collect()
    }

    async fn overdue_runs(&self, now: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT r.id FROM runs r JOIN steps s ON s.run_id = r.id
             WHERE r.status = 'waiting' AND s.status = 'waiting'
                 AND s.deadline IS NOT NULL AND s.deadline < ?
             ORDER BY r.id",
        )
        .bind(now)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn run_counts(&self) -> Result<Vec<(RunStatus, u64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY status")
                .fetch_all(&self.read)
                .await?;
        rows.into_iter()
            .map(|(status, n)| {
                let s = RunStatus::parse(&status).ok_or_else(|| {
                    StoreError::Corrupt(format!("runs.status holds unknown status {status:?}"))
                })?;
                Ok((s, to_u64(n, "count")?))
            })
            .collect()
    }

    async fn get_evidence(&self, evidence_id: &str) -> Result<Option<EvidenceRecord>> {
        let row: Option<EvidenceRow> = sqlx::query_as(
            "SELECT evidence_id, run_id, step_id, path, sha256, bytes, records, collected_at, meta
             FROM evidence WHERE evidence_id = ?",
        )
        .bind(evidence_id)
        .fetch_optional(&self.read)
        .await?;
        row.map(EvidenceRow::into_record).transpose()
    }

    async fn acquire_lease(
        &self,
        run_id: &str,
        owner: &str,
        ttl_ms: u64,
        steal_from: Option<&str>,
    ) -> Result<Option<Lease>> {
        let now = chrono::Utc::now();
        let op = Op::AcquireLease {
            run_id: run_id.to_owned(),
            owner: owner.to_owned(),
            until: crate::time::format(now + ttl(ttl_ms)),
            now: crate::time::format(now),
            steal_from: steal_from.map(str::to_owned),
        };
        self.writer.submit(&self.write, op).await?.lease()
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> Result<()> {
        let op = Op::RenewLease {
            lease: lease.clone(),
            until: crate::time::format(chrono::Utc::now() + ttl(ttl_ms)),
        };
        self.writer.submit(&self.write, op).await.map(drop)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let op = Op::ReleaseLease {
            lease: lease.clone(),
        };
        self.writer.submit(&self.write, op).await.map(drop)
    }

    async fn lease_holder(&self, run_id: &str) -> Result<Option<LeaseHolder>> {
        let row: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT lease_owner, lease_until FROM runs WHERE id = ?")
                .bind(run_id)
                .fetch_optional(&self.read)
                .await?;
        let now = crate::time::now();
        Ok(match row {
            Some((Some(owner), Some(until))) if until > now => Some(LeaseHolder { owner, until }),
            _ => None,
        })
    }

    async fn claim_runnable(
        &self,
        owner: &str,
        ttl_ms: u64,
        fresh_queued_ms: u64,
        limit: u32,
    ) -> Result<Vec<Lease>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = chrono::Utc::now();
        let until = crate::time::format(now + ttl(ttl_ms));
        let fresh_after = crate::time::format(now - ttl(fresh_queued_ms));
        let now = crate::time::format(now);
        // The write lock, held from BEGIN IMMEDIATE, makes the pick and the take one step.
        let mut tx = self.begin_write().await?;
        let mut taken: Vec<(String, i64, String)> = sqlx::query_as(
            "UPDATE runs SET lease_owner = ?1, lease_until = ?2, lease_token = lease_token + 1
             WHERE id IN (
                 SELECT id FROM runs
                 WHERE status IN ('queued', 'running')
                     AND (lease_owner IS NULL OR lease_until IS NULL OR lease_until <= ?3)
                     AND NOT (status = 'queued' AND created_at > ?4)
                 ORDER BY created_at, id LIMIT ?5)
             RETURNING id, lease_token, created_at",
        )
        .bind(owner)
        .bind(&until)
        .bind(&now)
        .bind(&fresh_after)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        taken.sort_by(|a, b| (&a.2, &a.0).cmp(&(&b.2, &b.0)));
        Ok(taken
            .into_iter()
            .map(|(run_id, token, _)| Lease {
                run_id,
                owner: owner.to_owned(),
                token,
                first: false,
            })
            .collect())
    }

    async fn commit(
        &self,
        lease: &Lease,
        changes: Vec<Change>,
        audit: Vec<AuditDraft>,
    ) -> Result<()> {
        let op = Op::Commit {
            lease: lease.clone(),
            changes,
            audit,
        };
        self.writer.submit(&self.write, op).await.map(drop)
    }

    async fn append_audit(&self, audit: Vec<AuditDraft>) -> Result<()> {
        if audit.is_empty() {
            return Ok(());
        }
        self.writer
            .submit(&self.write, Op::AppendAudit { audit })
            .await
            .map(drop)
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let row: Option<RunRow> =
            sqlx::query_as(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?"))
                .bind(run_id)
                .fetch_optional(&self.read)
                .await?;
        row.map(RunRow::into_record).transpose()
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT {RUN_COLUMNS} FROM runs WHERE 1 = 1"));
        if let Some(status) = filter.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if filter.active {
            q.push(" AND status IN ('queued', 'running', 'waiting')");
        }
        if let Some(runbook) = &filter.runbook {
            q.push(" AND runbook = ").push_bind(runbook.clone());
        }
        if let Some(case_id) = &filter.case_id {
            q.push(" AND case_id = ").push_bind(case_id.clone());
        }
        if let Some(subject) = &filter.subject {
            // instr, not LIKE: `%` and `_` in what was typed are plain characters.
            q.push(" AND instr(lower(COALESCE(json_extract(inputs, '$.subject_email'), '')), ")
                .push_bind(subject.to_lowercase())
                .push(") > 0");
        }
        if let Some(from) = &filter.created_from {
            q.push(" AND created_at >= ").push_bind(from.clone());
        }
        if let Some(before) = &filter.created_before {
            q.push(" AND created_at < ").push_bind(before.clone());
        }
        q.push(" ORDER BY created_at DESC, id DESC");
        if let Some(limit) = filter.limit {
            q.push(" LIMIT ").push_bind(i64::from(limit));
        }
        let rows: Vec<RunRow> = q.build_query_as().fetch_all(&self.read).await?;
        rows.into_iter().map(RunRow::into_record).collect()
    }

    async fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>> {
        let rows: Vec<StepRow> = sqlx::query_as(
            "SELECT run_id, step_id, status, attempts, items, inputs, output, error, reason,
                 started_at, finished_at, deadline, on_failure
             FROM steps WHERE run_id = ? ORDER BY pos",
        )
        .bind(run_id)
        .fetch_all(&self.read)
        .await?;
        rows.into_iter().map(StepRow::into_record).collect()
    }

    async fn items(&self, run_id: &str) -> Result<Vec<ItemRecord>> {
        // Items follow their step's insertion order, then their index.
        let rows: Vec<ItemRow> = sqlx::query_as(
            "SELECT i.run_id, i.step_id, i.idx, i.status, i.attempts, i.inputs, i.connector,
                 i.output, i.error, i.prior_state, i.secret_output, i.started_at, i.finished_at
             FROM items i LEFT JOIN steps s ON s.run_id = i.run_id AND s.step_id = i.step_id
             WHERE i.run_id = ?
             ORDER BY s.pos IS NULL, s.pos, i.step_id, i.idx",
        )
        .bind(run_id)
        .fetch_all(&self.read)
        .await?;
        rows.into_iter().map(ItemRow::into_record).collect()
    }

    async fn add_decision(&self, decision: Decision, audit: AuditDraft) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if !run_exists(&mut tx, &decision.run_id).await? {
            return Err(StoreError::RunNotFound(decision.run_id));
        }
        sqlx::query(
            "INSERT INTO decisions (run_id, step_id, decision, decided_by, comment, at, releases)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&decision.run_id)
        .bind(&decision.step_id)
        .bind(&decision.decision)
        .bind(&decision.decided_by)
        .bind(&decision.comment)
        .bind(&decision.at)
        .bind(json_text(&decision.releases)?)
        .execute(&mut *tx)
        .await?;
        append_events(&mut tx, vec![audit]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn decisions(&self, run_id: &str) -> Result<Vec<Decision>> {
        let rows: Vec<DecisionRow> = sqlx::query_as(
            "SELECT run_id, step_id, decision, decided_by, comment, at, releases
             FROM decisions WHERE run_id = ? ORDER BY at, id",
        )
        .bind(run_id)
        .fetch_all(&self.read)
        .await?;
        rows.into_iter().map(DecisionRow::into_record).collect()
    }

    async fn request_cancel(&self, run_id: &str, audit: AuditDraft) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE runs SET cancel_requested = TRUE WHERE id = ?")
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::RunNotFound(run_id.to_owned()));
        }
        append_events(&mut tx, vec![audit]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_paused(&self, paused: bool, audit: AuditDraft) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO control (key, value) VALUES ('paused', ?)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(if paused { "true" } else { "false" })
        .execute(&mut *tx)
        .await?;
        append_events(&mut tx, vec![audit]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn is_paused(&self) -> Result<bool> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT value FROM control WHERE key = 'paused'")
                .fetch_optional(&self.read)
                .await?;
        match row.as_ref().map(|(v,)| v.as_str()) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(StoreError::Corrupt(format!(
                "control.paused holds {other:?}, expected \"true\" or \"false\""
            ))),
        }
    }

    async fn joined_triggers(&self, run_id: &str) -> Result<Vec<Value>> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT trigger_source, started_by, inputs, at FROM run_joins
             WHERE run_id = ? ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|(trigger, started_by, inputs, at)| {
                Ok(serde_json::json!({
                    "trigger": trigger,
                    "started_by": started_by,
                    "inputs": parse_json::<Value>(&inputs, "run_joins.inputs")?,
                    "at": at,
                }))
            })
            .collect()
    }

    async fn evidence(&self, run_id: &str) -> Result<Vec<EvidenceRecord>> {
        let rows: Vec<EvidenceRow> = sqlx::query_as(
            "SELECT evidence_id, run_id, step_id, path, sha256, bytes, records, collected_at, meta
             FROM evidence WHERE run_id = ? ORDER BY collected_at, evidence_id",
        )
        .bind(run_id)
        .fetch_all(&self.read)
        .await?;
        rows.into_iter().map(EvidenceRow::into_record).collect()
    }

    async fn drafts(&self, run_id: &str) -> Result<Vec<DraftRecord>> {
        let rows: Vec<DraftRow> = sqlx::query_as(&format!(
            "SELECT {DRAFT_COLUMNS} FROM drafts WHERE run_id = ? ORDER BY created_at, draft_id"
        ))
        .bind(run_id)
        .fetch_all(&self.read)
        .await?;
        rows.into_iter().map(DraftRow::into_record).collect()
    }

    async fn draft(&self, draft_id: &str) -> Result<Option<DraftRecord>> {
        let row: Option<DraftRow> = sqlx::query_as(&format!(
            "SELECT {DRAFT_COLUMNS} FROM drafts WHERE draft_id = ?"
        ))
        .bind(draft_id)
        .fetch_optional(&self.read)
        .await?;
        row.map(DraftRow::into_record).transpose()
    }

    async fn audit_events(&self, run_id: Option<&str>) -> Result<Vec<AuditEvent>> {
        const COLUMNS: &str = "seq, at, run_id, actor, action, details, prev_hash, hash";
        let rows: Vec<AuditRow> = match run_id {
            Some(id) => {
                sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM audit_events WHERE run_id = ? ORDER BY seq"
                ))
                .bind(id)
                .fetch_all(&self.read)
                .await?
            }
            None => {
                sqlx::query_as(&format!("SELECT {COLUMNS} FROM audit_events ORDER BY seq"))
                    .fetch_all(&self.read)
                    .await?
            }
        };
        rows.into_iter().map(AuditRow::into_record).collect()
    }

    async fn audit_head(&self) -> Result<Option<AuditHead>> {
        let mut conn = self.read.acquire().await?;
        read_head(&mut conn).await
    }

    async fn audit_chain(&self) -> Result<(Vec<AuditEvent>, Option<AuditHead>)> {
        // One read transaction: in WAL mode its first read fixes the snapshot both see.
        let mut tx = self.read.begin().await?;
        let head = read_head(&mut tx).await?;
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT seq, at, run_id, actor, action, details, prev_hash, hash
             FROM audit_events ORDER BY seq",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let events = rows
            .into_iter()
            .map(AuditRow::into_record)
            .collect::<Result<Vec<_>>>()?;
        Ok((events, head))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use sqlx::Connection;

    use super::*;
    use crate::audit;
    use crate::store::{conformance, StepStatus};

    async fn temp_store() -> (tempfile::TempDir, String, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cordon.db").to_string_lossy().into_owned();
        let store = SqliteStore::open(&path).await.expect("open");
        (dir, path, store)
    }

    #[tokio::test]
    async fn conformance_suite() {
        let (_dir, _, store) = temp_store().await;
        conformance::run_all(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_commits_keep_one_chain() {
        let (_dir, _, store) = temp_store().await;
        conformance::concurrent_commits(Arc::new(store)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_handles_on_one_file_keep_one_chain() {
        let (_dir, path, a) = temp_store().await;
        let b = SqliteStore::open(&format!("sqlite://{path}"))
            .await
            .expect("open b");
        conformance::two_handles(Arc::new(a), Arc::new(b)).await;
    }

    #[tokio::test]
    async fn claim_runnable_conformance() {
        let (_dir, _, store) = temp_store().await;
        conformance::claim_runnable(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_handles_claim_each_run_once() {
        let (_dir, path, a) = temp_store().await;
        let b = SqliteStore::open(&path).await.expect("open b");
        conformance::claim_concurrently(Arc::new(a), Arc::new(b)).await;
    }

    #[tokio::test]
    async fn huge_lease_ttl_does_not_overflow() {
        let (_dir, _, store) = temp_store().await;
        let run = conformance::run(
            "01TTL000000000000000000000",
            None,
            "2026-11-25T23:00:00.000Z",
        );
        store
            .create_run(
                run.clone(),
                conformance::draft(Some(&run.id), "run.created", json!({})),
            )
            .await
            .expect("create");
        let lease = store
            .acquire_lease(&run.id, "p", u64::MAX, None)
            .await
            .expect("acquire")
            .expect("free");
        store.renew_lease(&lease, u64::MAX).await.expect("renew");
        let holder = store
            .lease_holder(&run.id)
            .await
            .expect("holder")
            .expect("held");
        assert!(holder.until > crate::time::now());
    }

    #[tokio::test]
    async fn in_memory_database_works() {
        let store = SqliteStore::open("sqlite::memory:").await.expect("open");
        conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn open_accepts_urls_and_paths_and_sets_pragmas() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (i, form) in ["sqlite://{}", "sqlite:{}", "{}"].iter().enumerate() {
            let path = dir.path().join(format!("db{i}.sqlite"));
            let url = form.replace("{}", &path.to_string_lossy());
            let store = SqliteStore::open(&url).await.expect("open");
            assert!(path.exists(), "{url} created the file");
            let mut conn = store.write.acquire().await.expect("conn");
            let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
                .fetch_one(&mut *conn)
                .await
                .expect("mode");
            assert_eq!(mode, "wal");
            let (sync,): (i64,) = sqlx::query_as("PRAGMA synchronous")
                .fetch_one(&mut *conn)
                .await
                .expect("sync");
            assert_eq!(sync, 2, "synchronous=FULL");
            let (fk,): (i64,) = sqlx::query_as("PRAGMA foreign_keys")
                .fetch_one(&mut *conn)
                .await
                .expect("fk");
            assert_eq!(fk, 1);
            let (busy,): (i64,) = sqlx::query_as("PRAGMA busy_timeout")
                .fetch_one(&mut *conn)
                .await
                .expect("busy");
            assert_eq!(busy, 10_000);
        }
        // Opening an existing, migrated file again is fine.
        let path = dir.path().join("db2.sqlite");
        SqliteStore::open(&path.to_string_lossy())
            .await
            .expect("reopen");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_migrating_a_fresh_file_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fresh.db").to_string_lossy().into_owned();
        let (a, b) = tokio::join!(SqliteStore::open(&path), SqliteStore::open(&path));
        a.expect("first open");
        b.expect("second open");
    }

    /// A store with `n` events across two runs, and a raw connection for tampering.
    async fn tamper_setup(n: usize) -> (tempfile::TempDir, SqliteStore, SqliteConnection) {
        let (dir, path, store) = temp_store().await;
        for i in 0..n {
            store
                .append_audit(vec![conformance::draft(
                    Some(if i % 2 == 0 { "run-a" } else { "run-b" }),
                    "step.succeeded",
                    json!({"i": i, "user": "j.doe@example.com"}),
                )])
                .await
                .expect("append");
        }
        let report = verify_store(&store).await;
        assert!(report.ok, "{report:?}");
        let raw = SqliteConnection::connect(&format!("sqlite://{path}"))
            .await
            .expect("raw");
        (dir, store, raw)
    }

    async fn verify_store(store: &SqliteStore) -> audit::VerifyReport {
        let events = store.audit_events(None).await.expect("events");
        let head = store.audit_head().await.expect("head");
        audit::verify(&events, head.as_ref())
    }

    async fn exec(raw: &mut SqliteConnection, sql: &str) {
        sqlx::query(sql).execute(raw).await.expect(sql);
    }

    #[tokio::test]
    async fn tamper_edited_details_names_the_event() {
        let (_dir, store, mut raw) = tamper_setup(6).await;
        exec(
            &mut raw,
            r#"UPDATE audit_events SET details = '{"i":3,"user":"someone.else@example.com"}' WHERE seq = 4"#,
        )
        .await;
        let r = verify_store(&store).await;
        assert!(!r.ok);
        assert_eq!(r.first_bad, Some(4));
        assert!(r.problem.unwrap_or_default().contains("altered"));
    }

    #[tokio::test]
    async fn tamper_edited_actor_with_rehash_is_caught_at_the_next_link() {
        let (_dir, store, mut raw) = tamper_setup(6).await;
        // Edit event 2 and recompute its hash: event 3 no longer links to it.
        let mut events = store.audit_events(None).await.expect("events");
        events[1].actor = "cli:mallory".into();
        let forged = audit::event_hash(&audit::EventBody::of(&events[1]));
        sqlx::query("UPDATE audit_events SET actor = 'cli:mallory', hash = ? WHERE seq = 2")
            .bind(&forged)
            .execute(&mut raw)
            .await
            .expect("update");
        let r = verify_store(&store).await;
        assert!(!r.ok);
        assert_eq!(r.first_bad, Some(3));
    }

    #[tokio::test]
    async fn tamper_deleted_middle_event_is_named() {
        let (_dir, store, mut raw) = tamper_setup(6).await;
        exec(&mut raw, "DELETE FROM audit_events WHERE seq = 3").await;
        let r = verify_store(&store).await;
        assert!(!r.ok);
        assert_eq!(r.first_bad, Some(3));
        assert!(r.problem.unwrap_or_default().contains("missing"));
    }

    #[tokio::test]
    async fn tamper_swapped_events_are_named() {
        let (_dir, store, mut raw) = tamper_setup(6).await;
        exec(&mut raw, "UPDATE audit_events SET seq = -1 WHERE seq = 2").await;
        exec(&mut raw, "UPDATE audit_events SET seq = 2 WHERE seq = 5").await;
        exec(&mut raw, "UPDATE audit_events SET seq = 5 WHERE seq = -1").await;
        let r = verify_store(&store).await;
        assert!(!r.ok);
        assert_eq!(r.first_bad, Some(2));
    }

    #[tokio::test]
    async fn tamper_truncated_tail_names_the_first_missing_event() {
        let (_dir, store, mut raw) = tamper_setup(6).await;
        exec(&mut raw, "DELETE FROM audit_events WHERE seq >= 5").await;
        let r = verify_store(&store).await;
        assert!(!r.ok);
        assert_eq!(r.first_bad, Some(5));
        assert!(r.problem.unwrap_or_default().contains("truncated"));
    }

    #[tokio::test]
    async fn tamper_invalid_json_is_reported_with_its_event() {
        let (_dir, store, mut raw) = tamper_setup(3).await;
        exec(
            &mut raw,
            "UPDATE audit_events SET details = '{oops' WHERE seq = 2",
        )
        .await;
        let err = store.audit_events(None).await.expect_err("corrupt row");
        assert!(err.to_string().contains("event 2"), "{err}");
    }

    #[tokio::test]
    async fn appending_after_tampering_with_the_head_fails_closed() {
        let (_dir, store, mut raw) = tamper_setup(3).await;
        // The head points back to event 1: the next append would reuse seq 2.
        exec(&mut raw, "UPDATE audit_head SET seq = 1").await;
        let result = store
            .append_audit(vec![conformance::draft(None, "config.loaded", json!({}))])
            .await;
        assert!(matches!(result, Err(StoreError::Database(_))), "{result:?}");
        assert_eq!(store.audit_events(None).await.expect("events").len(), 3);
    }

    /// Run with `cargo test -p cordon -- --ignored commit_speed --nocapture`.
    #[tokio::test]
    #[ignore = "micro-benchmark"]
    async fn commit_speed() {
        let (_dir, _, store) = temp_store().await;
        let run = conformance::run(
            "01BENCH0000000000000000000",
            None,
            "2026-11-25T23:00:00.000Z",
        );
        store
            .create_run(
                run.clone(),
                conformance::draft(Some(&run.id), "run.created", json!({})),
            )
            .await
            .expect("create");
        let lease = store
            .acquire_lease(&run.id, "bench", 600_000, None)
            .await
            .expect("l")
            .expect("l");
        let n = 500u32;
        let started = std::time::Instant::now();
        for i in 0..n {
            let item = ItemRecord {
                run_id: run.id.clone(),
                step_id: "suspend".into(),
                idx: i % 16,
                status: StepStatus::Succeeded,
                attempts: 1,
                inputs: json!({"user": "00u1", "i": i}),
                connector: "okta-prod".into(),
                output: Some(json!({"already": false})),
                error: None,
                prior_state: None,
                secret_output: None,
                started_at: None,
                finished_at: None,
            };
            store
                .commit(
                    &lease,
                    vec![Change::Item(item)],
                    vec![conformance::draft(
                        Some(&run.id),
                        "step.succeeded",
                        json!({"i": i}),
                    )],
                )
                .await
                .expect("commit");
        }
        let mean = started.elapsed() / n;
        println!("commit (1 item upsert + 1 audit event, synchronous=FULL): mean {mean:?}");
    }
}
