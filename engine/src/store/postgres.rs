//! The PostgreSQL implementation of [`Store`]: one database shared by several `cordon`
//! nodes (and the CLI processes beside them), with the same tables, columns, text
//! timestamps and JSON-as-text as the SQLite store (`migrations/postgres/` mirrors
//! `migrations/sqlite/` under the same version numbers; `rows.rs` holds the row types both
//! read).
//!
//! How the guarantees of the SQLite store carry over when the writers are many:
//!
//! - **The database clock.** Nodes run on different machines whose clocks drift, so lease
//!   expiry is judged on the database server's clock, never the process's: every lease
//!   deadline is written as `clock_timestamp()` plus the TTL and every liveness check
//!   compares with `clock_timestamp()`, both formatted in the store's RFC 3339 millisecond
//!   text form (see [`NOW`]). That covers acquire, renew, claim, [`Store::lease_holder`] and
//!   [`Store::held_runs`]. Fencing does not depend on clocks at all: each acquisition
//!   increments `lease_token`, and [`Store::commit`] takes the run row's lock
//!   (`SELECT … FOR UPDATE`) and checks owner and token in the transaction that writes, so a
//!   stale holder changes nothing.
//! - **Claiming work.** [`Store::claim_runnable`] is one statement:
//!   `UPDATE runs … WHERE id IN (SELECT id … FOR UPDATE SKIP LOCKED LIMIT n) RETURNING …`.
//!   Rows another node is claiming (or committing to) are skipped, not waited for, and a row
//!   whose lease was taken after the statement's snapshot is re-checked under its lock, so
//!   two nodes never get the same run.
//! - **One audit chain.** Appends lock the single `audit_head` row (`SELECT … FOR UPDATE`),
//!   seal the events from it (seq = head + 1) and update it in the same transaction; the row
//!   exists from the first migration (seq 0 is the empty chain) so there is always something
//!   to lock. Lock order is always "run row or concurrency key, then audit head", so writers
//!   queue and never deadlock. [`Store::audit_chain`] reads events and head in one
//!   `REPEATABLE READ` read-only transaction (one snapshot).
//! - **Group commit.** Step commits, run creation without a concurrency key, lease
//!   releases and audit appends go to one writer task per store ([`writer`]): a batch locks
//!   its runs' rows in id order (one statement, which also reads the fencing tokens),
//!   applies each request behind its own savepoint, takes the audit head once for all of
//!   them, and COMMITs once; every waiter is answered only after that COMMIT. A node holds
//!   the head for one batch instead of one commit at a time, so the nodes' commits share
//!   WAL flushes instead of queueing one by one behind the head's lock. While a node is the
//!   only one appending, a batch is a single statement without a transaction around it,
//!   which checks the fencing tokens and the head under their locks and writes nothing if
//!   either changed ([`WRITE`]).
//! - **Once across nodes.** Webhook deliveries and schedule fire times are inserted with
//!   `INSERT … ON CONFLICT` in the transaction that creates the run; a concurrent identical
//!   insert waits for the first transaction and then sees the conflict, so exactly one run
//!   is made. Joining by concurrency key takes a transaction-level advisory lock on the key
//!   (`pg_advisory_xact_lock`) before looking for the active run; the migration explains why
//!   not a unique index.
//! - **Migrations.** sqlx's PostgreSQL migrator holds a session advisory lock
//!   (`pg_advisory_lock`, keyed by the database name) while it checks and applies
//!   migrations, so nodes starting together against a fresh database apply each migration
//!   once and the others wait, then find the work done.
//! - **Connections.** The pool tests a connection before handing it out (a server restart
//!   costs one failed ping per dead connection, not a failed request), sessions are named
//!   `cordon` (`application_name`) and carry a statement timeout and an
//!   idle-in-transaction timeout, so a stuck node cannot hold the audit head forever.
//!   While the server is down, a request waits at most [`ACQUIRE_TIMEOUT`] for a connection
//!   and then fails as [`StoreError::is_unavailable`] (the API answers 503).
//!
//! A PostgreSQL-compatible distributed SQL database (CockroachDB, YugabyteDB) is the path
//! past one server. The SQL here keeps to what they accept where practical (`ON CONFLICT`,
//! `RETURNING`, `FOR UPDATE`, `SKIP LOCKED`, identity columns, no stored procedures or
//! triggers); what they would need instead:
//! - no advisory locks (CockroachDB): the concurrency-key lock becomes a lock row
//!   (`INSERT INTO key_locks … ON CONFLICT DO NOTHING` then `SELECT … FOR UPDATE` on it),
//!   and migrations a lock row of their own, or one node that migrates before the others
//!   start; their default `SERIALIZABLE` isolation also turns a missed race into a
//!   retryable error instead of a duplicate;
//! - no LISTEN/NOTIFY: nothing here uses it; nodes find work by polling
//!   [`Store::claim_runnable`] and [`Store::due_notices`];
//! - `COLLATE "C"` (bytewise text order, as on SQLite) is their default string order, so
//!   the column collations can be dropped there.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, QueryBuilder};

use super::rows::{
    json_text, opt_json_text, parse_json, to_i64, to_u32, to_u64, AuditRow, DecisionRow, DraftRow,
    EvidenceRow, FireRow, HeldRow, ItemRow, NoticeRow, RunRow, StepRow, DRAFT_COLUMNS,
    NOTICE_COLUMNS, RUN_COLUMNS,
};
use super::{
    AuditDraft, AuditEvent, AuditHead, Change, Created, Decision, DedupKey, DraftRecord,
    EvidenceRecord, Fired, HeldRun, ItemRecord, Lease, LeaseHolder, NoticeOutcome, Result,
    RunFilter, RunRecord, RunStatus, ScheduleFire, ScheduleState, StepRecord, Store, StoreError,
    Triggered, WaitingNotice,
};
use crate::audit::Chain;

mod writer;

pub use super::queue::WriteStats;
use writer::{Op, Writer};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per node: the executor's reads, the service's sweeps and API reads.
const MAX_CONNECTIONS: u32 = 10;
/// The group-commit writer's connections per node (it uses one at a time; a second lets
/// it replace a broken one without waiting for the first to be closed).
const WRITER_CONNECTIONS: u32 = 2;
/// How long a task waits for a connection (including connecting, which sqlx retries while
/// the server refuses) before giving up. It bounds how long a request waits while the
/// database is down before it is answered 503 (webhook senders time out after a few
/// seconds and retry), and lets a run in flight ride out a restart shorter than this; a
/// longer outage stops the run's execution, and the sweep resumes it once the database is
/// back.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Server-side bound on one statement (a lock wait included).
const STATEMENT_TIMEOUT: &str = "60s";
/// Server-side bound on a transaction left open without a statement (a hung node).
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "60s";
/// The first key of the advisory locks this store takes ("Cord"), so that they never
/// collide with another application's single-key locks in the same database.
const LOCK_CLASS: i32 = 0x436f_7264;
/// Absurd TTLs are clamped instead of overflowing the timestamp: ten years is "forever".
const MAX_TTL_MS: u64 = 10 * 366 * 24 * 3600 * 1000;

/// The database clock now, in the store's timestamp text form (RFC 3339, UTC, milliseconds,
/// `Z`), so that it compares as text with every stored timestamp.
pub const NOW: &str =
    r#"to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"#;

/// The database clock plus (or minus) `param` milliseconds, formatted like [`NOW`].
fn db_time(param: &str, sign: char) -> String {
    format!(
        r#"to_char((clock_timestamp() {sign} {param}::float8 * interval '1 millisecond') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"#
    )
}

fn clamp_ms(ms: u64) -> i64 {
    i64::try_from(ms.min(MAX_TTL_MS)).unwrap_or(0)
}

/// The PostgreSQL store. Cheap to clone; clones share the pool.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// The writer's own pool (its sessions plan without sequential scans).
    writes: PgPool,
    /// The group-commit writer: step commits, run creation, lease releases and audit
    /// appends of this node share transactions ([`writer`]).
    writer: Arc<Writer>,
}

impl PgStore {
    /// Connect to `postgres://…` or `postgresql://…` and migrate. The URL's own settings
    /// (`options=-c search_path=…`, `application_name`, `sslmode`, …) are kept; Cordon adds
    /// its application name and timeouts where the URL sets none.
    pub async fn open(url: &str) -> Result<PgStore> {
        let mut options = PgConnectOptions::from_str(url)?;
        if options.get_application_name().is_none() {
            options = options.application_name("cordon");
        }
        let given = options.get_options().unwrap_or_default().to_owned();
        let mut extra = Vec::new();
        if !given.contains("statement_timeout") {
            extra.push(("statement_timeout", STATEMENT_TIMEOUT));
        }
        if !given.contains("idle_in_transaction_session_timeout") {
            extra.push((
                "idle_in_transaction_session_timeout",
                IDLE_IN_TRANSACTION_TIMEOUT,
            ));
        }
        if !extra.is_empty() {
            options = options.options(extra);
        }
        // One plain connection first: an unreachable server or a refused login is reported
        // at once with its cause (a pool would retry until its timeout and say only that).
        PgConnection::connect_with(&options).await?.close().await?;
        // The group-commit writer's own connections: commits never wait behind API reads
        // for a connection, and its sessions plan without sequential scans. Every statement
        // the writer runs finds its rows by key, but PostgreSQL caches a prepared
        // statement's generic plan, and one made while a table was nearly empty (a new
        // database) would go on scanning the whole table as it grows.
        let pools = PgPoolOptions::new()
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A connection the server dropped (a restart, a failover) is found out by the
            // ping and replaced, instead of failing the request that drew it.
            .test_before_acquire(true);
        let writes = pools
            .clone()
            .max_connections(WRITER_CONNECTIONS)
            .connect_lazy_with(options.clone().options([("enable_seqscan", "off")]));
        let pool = pools
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        // Under the migrator's session advisory lock: nodes starting together wait for the
        // first one's migrations, then find them applied.
        MIGRATOR.run(&pool).await?;
        Ok(PgStore {
            pool,
            writes,
            writer: Arc::default(),
        })
    }

    /// How many write requests the group-commit writer took, in how many transactions.
    pub fn write_stats(&self) -> WriteStats {
        self.writer.stats()
    }

    /// Close the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.writer.stop();
        tokio::join!(self.writes.close(), self.pool.close());
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }
}

// ---------------------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------------------

/// Seal `drafts` onto the chain and store them with the new head, inside a transaction:
/// the head row's lock serialises every appender on every node. What was stored, with
/// where the head was and where it went; None when there was nothing to append.
async fn append_events(conn: &mut PgConnection, drafts: Vec<AuditDraft>) -> Result<Option<Sealed>> {
    if drafts.is_empty() {
        return Ok(None);
    }
    let sealed = Sealed::new(lock_head(conn).await?, drafts)?;
    write_locked(conn, Gathered::default(), Some(&sealed)).await?;
    Ok(Some(sealed))
}

/// Lock the audit head row until the transaction ends, and read it (seq 0 with the genesis
/// hash is the empty chain). A missing row fails closed: the chain cannot be extended.
async fn lock_head(conn: &mut PgConnection) -> Result<AuditHead> {
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
            .fetch_optional(&mut *conn)
            .await?;
    let (seq, hash) = head.ok_or_else(|| {
        StoreError::Corrupt("the audit head row is missing; refusing to extend the chain".into())
    })?;
    Ok(AuditHead { seq, hash })
}

/// Write `gathered` and `sealed` in a transaction that holds the rows' locks and read the
/// head under its lock: the write cannot find anything else than what it expects.
async fn write_locked(
    conn: &mut PgConnection,
    gathered: Gathered<'_>,
    sealed: Option<&Sealed>,
) -> Result<()> {
    if gathered
        .write(conn, &Fence::default(), sealed)
        .await?
        .written
    {
        Ok(())
    } else {
        Err(StoreError::Corrupt(
            "the audit head moved while this transaction held its lock".into(),
        ))
    }
}

/// The head checkpoint; seq 0 (the row the migration seeds) is the empty chain.
async fn read_head(conn: &mut PgConnection) -> Result<Option<AuditHead>> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1 AND seq <> 0")
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(seq, hash)| AuditHead { seq, hash }))
}

async fn insert_run(conn: &mut PgConnection, run: &RunRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO runs (id, runbook, runbook_text, runbook_sha256, status, trigger_source,
             started_by, inputs, concurrency_key, undo_of, dry_run, case_id, error, created_at,
             started_at, finished_at, cancel_requested)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(&run.id)
    .bind(&run.runbook)
    .bind(&run.runbook_text)
    .bind(&run.runbook_sha256)
    .bind(run.status.as_str())
    .bind(&run.trigger)
    .bind(&run.started_by)
    .bind(json_text(&run.inputs)?)
    .bind(&run.concurrency_key)
    .bind(&run.undo_of)
    .bind(run.dry_run)
    .bind(&run.case_id)
    .bind(&run.error)
    .bind(&run.created_at)
    .bind(&run.started_at)
    .bind(&run.finished_at)
    .bind(run.cancel_requested)
    .execute(conn)
    .await?;
    Ok(())
}

/// One step row, for a commit applied change by change (behind a savepoint, after its
/// batch's single statement was refused).
async fn upsert_step(conn: &mut PgConnection, s: &StepRecord) -> Result<()> {
    // The run row is locked by the commit, so `pos` cannot be taken twice.
    sqlx::query(
        "INSERT INTO steps (run_id, step_id, pos, status, attempts, items, inputs, output, error,
             reason, started_at, finished_at, deadline, on_failure)
         VALUES ($1, $2, (SELECT COALESCE(MAX(pos), -1) + 1 FROM steps WHERE run_id = $1),
             $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (run_id, step_id) DO UPDATE SET
             status = excluded.status, attempts = excluded.attempts, items = excluded.items,
             inputs = excluded.inputs, output = excluded.output, error = excluded.error,
             reason = excluded.reason, started_at = excluded.started_at,
             finished_at = excluded.finished_at, deadline = excluded.deadline,
             on_failure = excluded.on_failure",
    )
    .bind(&s.run_id)
    .bind(&s.step_id)
    .bind(s.status.as_str())
    .bind(i64::from(s.attempts))
    .bind(i64::from(s.items))
    .bind(opt_json_text(&s.inputs)?)
    .bind(opt_json_text(&s.output)?)
    .bind(&s.error)
    .bind(&s.reason)
    .bind(&s.started_at)
    .bind(&s.finished_at)
    .bind(&s.deadline)
    .bind(s.on_failure)
    .execute(conn)
    .await?;
    Ok(())
}

async fn upsert_item(conn: &mut PgConnection, i: &ItemRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO items (run_id, step_id, idx, status, attempts, inputs, connector, output,
             error, prior_state, secret_output, started_at, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (run_id, step_id, idx) DO UPDATE SET
             status = excluded.status, attempts = excluded.attempts, inputs = excluded.inputs,
             connector = excluded.connector, output = excluded.output, error = excluded.error,
             prior_state = excluded.prior_state, secret_output = excluded.secret_output,
             started_at = excluded.started_at, finished_at = excluded.finished_at",
    )
    .bind(&i.run_id)
    .bind(&i.step_id)
    .bind(i64::from(i.idx))
    .bind(i.status.as_str())
    .bind(i64::from(i.attempts))
    .bind(json_text(&i.inputs)?)
    .bind(&i.connector)
    .bind(opt_json_text(&i.output)?)
    .bind(&i.error)
    .bind(opt_json_text(&i.prior_state)?)
    .bind(opt_json_text(&i.secret_output)?)
    .bind(&i.started_at)
    .bind(&i.finished_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The run-row changes of one run gathered from a batch's commits, applied together.
#[derive(Debug, Default)]
struct RunUpdate {
    /// The last `Change::Run` (status, error, finished_at), and the first `started_at`.
    status: Option<String>,
    error: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
    /// Give the lease with this token up.
    release: Option<i64>,
}

/// Rows that many commits of a group-commit batch write, gathered so that each table
/// takes one multi-row statement per batch instead of one statement per change. A later
/// change of the same row replaces an earlier one, as applying them in order would; a
/// step keeps the position of its first appearance.
#[derive(Debug, Default)]
pub(super) struct Gathered<'a> {
    items: Vec<&'a ItemRecord>,
    item_at: HashMap<(&'a str, &'a str, u32), usize>,
    steps: Vec<&'a StepRecord>,
    step_at: HashMap<(&'a str, &'a str), usize>,
    runs: Vec<(&'a str, RunUpdate)>,
    run_at: HashMap<&'a str, usize>,
}

impl<'a> Gathered<'a> {
    /// Whether a commit's changes can be gathered: all but evidence, drafts, notices and
    /// truncations, which are rare and are applied at once.
    pub(super) fn takes(changes: &[Change]) -> bool {
        changes.iter().all(|c| {
            matches!(
                c,
                Change::Item(_) | Change::Step(_) | Change::Run { .. } | Change::ReleaseLease
            )
        })
    }

    /// Gather a commit's changes (every one of which [`Gathered::takes`]).
    pub(super) fn add(&mut self, lease: &'a Lease, changes: &'a [Change]) -> Result<()> {
        for c in changes {
            match c {
                Change::Item(i) => {
                    same_run(lease, "item record", &i.run_id)?;
                    let key = (i.run_id.as_str(), i.step_id.as_str(), i.idx);
                    match self.item_at.get(&key) {
                        Some(&at) => self.items[at] = i,
                        None => {
                            self.item_at.insert(key, self.items.len());
                            self.items.push(i);
                        }
                    }
                }
                Change::Step(s) => {
                    same_run(lease, "step record", &s.run_id)?;
                    let key = (s.run_id.as_str(), s.step_id.as_str());
                    match self.step_at.get(&key) {
                        Some(&at) => self.steps[at] = s,
                        None => {
                            self.step_at.insert(key, self.steps.len());
                            self.steps.push(s);
                        }
                    }
                }
                Change::Run {
                    status,
                    error,
                    started_at,
                    finished_at,
                } => {
                    let u = self.run(&lease.run_id);
                    u.status = Some(status.as_str().to_owned());
                    u.error.clone_from(error);
                    u.finished_at.clone_from(finished_at);
                    if u.started_at.is_none() {
                        u.started_at.clone_from(started_at);
                    }
                }
                Change::ReleaseLease => self.run(&lease.run_id).release = Some(lease.token),
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "a gathered commit carries a change it cannot gather: {other:?}"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Whether nothing was gathered.
    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty() && self.steps.is_empty() && self.runs.is_empty()
    }

    fn run(&mut self, id: &'a str) -> &mut RunUpdate {
        let at = *self.run_at.entry(id).or_insert_with(|| {
            self.runs.push((id, RunUpdate::default()));
            self.runs.len() - 1
        });
        &mut self.runs[at].1
    }

    /// Write what was gathered, with `sealed`'s events and the head's move, as one
    /// statement ([`WRITE`]); the rows of runs that `fence` names are locked first and
    /// nothing is written unless each still has the lease the fence expects and the head
    /// is still at `sealed.from`. Inside a transaction that already holds those locks (and
    /// has read the head under its lock), pass an empty fence.
    pub(super) async fn write(
        self,
        conn: &mut PgConnection,
        fence: &Fence<'_>,
        sealed: Option<&Sealed>,
    ) -> Result<Written> {
        let (items, steps, runs) = (&self.items, &self.steps, &self.runs);
        let (ev, details) = sealed.map_or((&[][..], &[][..]), |s| (&s.events[..], &s.details[..]));
        let run_col = |f: fn(&RunUpdate) -> Option<&str>| -> Vec<Option<&str>> {
            runs.iter().map(|(_, u)| f(u)).collect()
        };
        let (fenced, written): (i64, bool) = sqlx::query_as(WRITE)
            .bind(&fence.ids)
            .bind(&fence.owners)
            .bind(&fence.tokens)
            .bind(fence.ids.len() as i64)
            .bind(sealed.is_some())
            .bind(sealed.map(|s| s.from.seq))
            .bind(sealed.map(|s| s.from.hash.as_str()))
            .bind(sealed.map(|s| s.to.seq))
            .bind(sealed.map(|s| s.to.hash.as_str()))
            .bind(ev.iter().map(|e| e.seq).collect::<Vec<_>>())
            .bind(ev.iter().map(|e| e.at.as_str()).collect::<Vec<_>>())
            .bind(ev.iter().map(|e| e.run_id.as_deref()).collect::<Vec<_>>())
            .bind(ev.iter().map(|e| e.actor.as_str()).collect::<Vec<_>>())
            .bind(ev.iter().map(|e| e.action.as_str()).collect::<Vec<_>>())
            .bind(details)
            .bind(ev.iter().map(|e| e.prev_hash.as_str()).collect::<Vec<_>>())
            .bind(ev.iter().map(|e| e.hash.as_str()).collect::<Vec<_>>())
            .bind(column(items, |i| i.run_id.as_str()))
            .bind(column(items, |i| i.step_id.as_str()))
            .bind(column(items, |i| i64::from(i.idx)))
            .bind(column(items, |i| i.status.as_str()))
            .bind(column(items, |i| i64::from(i.attempts)))
            .bind(
                items
                    .iter()
                    .map(|i| json_text(&i.inputs))
                    .collect::<Result<Vec<_>>>()?,
            )
            .bind(column(items, |i| i.connector.as_str()))
            .bind(json_column(items, |i| &i.output)?)
            .bind(column(items, |i| i.error.as_deref()))
            .bind(json_column(items, |i| &i.prior_state)?)
            .bind(json_column(items, |i| &i.secret_output)?)
            .bind(column(items, |i| i.started_at.as_deref()))
            .bind(column(items, |i| i.finished_at.as_deref()))
            .bind(column(steps, |s| s.run_id.as_str()))
            .bind(column(steps, |s| s.step_id.as_str()))
            .bind(column(steps, |s| s.status.as_str()))
            .bind(column(steps, |s| i64::from(s.attempts)))
            .bind(column(steps, |s| i64::from(s.items)))
            .bind(json_column(steps, |s| &s.inputs)?)
            .bind(json_column(steps, |s| &s.output)?)
            .bind(column(steps, |s| s.error.as_deref()))
            .bind(column(steps, |s| s.reason.as_deref()))
            .bind(column(steps, |s| s.started_at.as_deref()))
            .bind(column(steps, |s| s.finished_at.as_deref()))
            .bind(column(steps, |s| s.deadline.as_deref()))
            .bind(column(steps, |s| s.on_failure))
            .bind(runs.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .bind(
                runs.iter()
                    .map(|(_, u)| u.status.is_some())
                    .collect::<Vec<_>>(),
            )
            .bind(run_col(|u| u.status.as_deref()))
            .bind(run_col(|u| u.error.as_deref()))
            .bind(run_col(|u| u.started_at.as_deref()))
            .bind(run_col(|u| u.finished_at.as_deref()))
            .bind(runs.iter().map(|(_, u)| u.release).collect::<Vec<_>>())
            .fetch_one(conn)
            .await?;
        Ok(Written {
            fenced: usize::try_from(fenced).unwrap_or(0),
            written,
        })
    }
}

/// What [`Gathered::write`] did.
#[derive(Debug, Clone, Copy)]
pub(super) struct Written {
    /// How many of the fence's runs still had the expected lease (and were locked).
    pub fenced: usize,
    /// Whether anything was written (the fence held and the head was where expected).
    pub written: bool,
}

/// The leases a [`Gathered::write`] outside a transaction expects its runs to have: the
/// statement locks these rows (in id order, before the audit head, as every writer does)
/// and writes nothing unless each one still has this owner and token.
#[derive(Debug, Default)]
pub(super) struct Fence<'a> {
    ids: Vec<&'a str>,
    owners: Vec<&'a str>,
    tokens: Vec<i64>,
}

impl<'a> Fence<'a> {
    /// Expect `lease` on its run (each run once).
    pub(super) fn expect(&mut self, lease: &'a Lease) {
        self.ids.push(&lease.run_id);
        self.owners.push(&lease.owner);
        self.tokens.push(lease.token);
    }

    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// Audit events sealed onto the chain at `from`; storing them moves the head to `to`.
#[derive(Debug)]
pub(super) struct Sealed {
    pub from: AuditHead,
    pub to: AuditHead,
    events: Vec<AuditEvent>,
    /// Each event's details as the JSON text stored.
    details: Vec<String>,
}

impl Sealed {
    pub(super) fn new(from: AuditHead, drafts: Vec<AuditDraft>) -> Result<Sealed> {
        let mut chain = Chain::from_head(Some(from.clone()));
        let mut events = Vec::with_capacity(drafts.len());
        let mut details = Vec::with_capacity(drafts.len());
        for draft in drafts {
            let ev = chain.seal(draft);
            details.push(json_text(&ev.details)?);
            events.push(ev);
        }
        Ok(Sealed {
            from,
            to: chain.head(),
            events,
            details,
        })
    }
}

/// One column of `rows`, as the array a statement binds.
fn column<'a, T, U>(rows: &[&'a T], f: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(|r| f(r)).collect()
}

/// A column of JSON text (or NULL).
fn json_column<'a, T>(
    rows: &[&'a T],
    f: impl Fn(&'a T) -> &'a Option<Value>,
) -> Result<Vec<Option<String>>> {
    rows.iter().map(|r| opt_json_text(f(r))).collect()
}

/// Every row a group-commit batch writes, audit events and the head's move included, in
/// one statement (one round trip, and one prepared statement: each table's rows are
/// arrays, so the text never changes). Data-modifying `WITH` parts all run, so each is
/// gated on `ok`:
///
/// - `fence` locks the rows of the runs in `$1` (in id order) that still have the lease
///   owner `$2` and token `$3` (at the same index); it must find all `$4` of them. Rows are
///   found by primary key (`= ANY`), never by joining the arrays, which a generic plan
///   could do with a scan of the whole table;
/// - `head` then moves the audit head from (`$6`, `$7`) to (`$8`, `$9`) when there are
///   events (`$5`); it takes the head's lock after the run rows', as every writer does, and
///   changes nothing if another writer moved the head first;
/// - `ok` holds when both did what they had to, and the rows are written only then.
///
/// It answers how many fenced runs it found and whether it wrote. Outside a transaction
/// the statement is its own transaction: all or nothing. Positions of new steps come after
/// the run's last step, in the order given (they may skip numbers where a row updated an
/// existing step; only their order matters); the run rows are locked, so no position can
/// be taken twice.
const WRITE: &str = "
WITH fence AS (
    SELECT count(*) AS n FROM (
        SELECT r.id FROM runs AS r
        WHERE r.id = ANY($1::text[])
            AND r.lease_owner = ($2::text[])[array_position($1::text[], r.id::text)]
            AND r.lease_token = ($3::int8[])[array_position($1::text[], r.id::text)]
        ORDER BY r.id FOR UPDATE) AS locked),
fenced AS (SELECT (SELECT n FROM fence) = $4::int8 AS held),
head AS (
    UPDATE audit_head SET seq = $8::int8, hash = $9::text
    WHERE id = 1 AND $5::bool AND seq = $6::int8 AND hash = $7::text
        AND (SELECT held FROM fenced)
    RETURNING 1),
ok AS (
    SELECT 1 WHERE (SELECT held FROM fenced) AND (NOT $5::bool OR EXISTS (SELECT 1 FROM head))),
new_events AS (
    INSERT INTO audit_events (seq, at, run_id, actor, action, details, prev_hash, hash)
    SELECT * FROM UNNEST($10::int8[], $11::text[], $12::text[], $13::text[], $14::text[],
        $15::text[], $16::text[], $17::text[])
    WHERE EXISTS (SELECT 1 FROM ok)),
new_items AS (
    INSERT INTO items (run_id, step_id, idx, status, attempts, inputs, connector, output,
        error, prior_state, secret_output, started_at, finished_at)
    SELECT * FROM UNNEST($18::text[], $19::text[], $20::int8[], $21::text[], $22::int8[],
        $23::text[], $24::text[], $25::text[], $26::text[], $27::text[], $28::text[],
        $29::text[], $30::text[])
    WHERE EXISTS (SELECT 1 FROM ok)
    ON CONFLICT (run_id, step_id, idx) DO UPDATE SET
        status = excluded.status, attempts = excluded.attempts, inputs = excluded.inputs,
        connector = excluded.connector, output = excluded.output, error = excluded.error,
        prior_state = excluded.prior_state, secret_output = excluded.secret_output,
        started_at = excluded.started_at, finished_at = excluded.finished_at),
new_steps AS (
    INSERT INTO steps (run_id, step_id, pos, status, attempts, items, inputs, output, error,
        reason, started_at, finished_at, deadline, on_failure)
    SELECT u.run_id, u.step_id,
        (SELECT COALESCE(MAX(s.pos), -1) FROM steps AS s WHERE s.run_id = u.run_id)
            + ROW_NUMBER() OVER (PARTITION BY u.run_id ORDER BY u.ord),
        u.status, u.attempts, u.items, u.inputs, u.output, u.error, u.reason,
        u.started_at, u.finished_at, u.deadline, u.on_failure
    FROM UNNEST($31::text[], $32::text[], $33::text[], $34::int8[], $35::int8[], $36::text[],
        $37::text[], $38::text[], $39::text[], $40::text[], $41::text[], $42::text[],
        $43::bool[]) WITH ORDINALITY
        AS u(run_id, step_id, status, attempts, items, inputs, output, error, reason,
             started_at, finished_at, deadline, on_failure, ord)
    WHERE EXISTS (SELECT 1 FROM ok)
    ON CONFLICT (run_id, step_id) DO UPDATE SET
        status = excluded.status, attempts = excluded.attempts, items = excluded.items,
        inputs = excluded.inputs, output = excluded.output, error = excluded.error,
        reason = excluded.reason, started_at = excluded.started_at,
        finished_at = excluded.finished_at, deadline = excluded.deadline,
        on_failure = excluded.on_failure),
run_rows AS (
    UPDATE runs AS r SET
        status = CASE WHEN u.set THEN u.status ELSE r.status END,
        error = CASE WHEN u.set THEN u.error ELSE r.error END,
        started_at = COALESCE(r.started_at, u.started_at),
        finished_at = CASE WHEN u.set THEN u.finished_at ELSE r.finished_at END,
        lease_owner = CASE WHEN u.release = r.lease_token THEN NULL ELSE r.lease_owner END,
        lease_until = CASE WHEN u.release = r.lease_token THEN NULL ELSE r.lease_until END
    FROM UNNEST($44::text[], $45::bool[], $46::text[], $47::text[], $48::text[], $49::text[],
        $50::int8[]) AS u(id, set, status, error, started_at, finished_at, release)
    WHERE r.id = ANY($44::text[]) AND r.id = u.id AND EXISTS (SELECT 1 FROM ok))
SELECT (SELECT n FROM fence), EXISTS (SELECT 1 FROM ok)";

async fn insert_evidence(conn: &mut PgConnection, e: &EvidenceRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO evidence (evidence_id, run_id, step_id, path, sha256, bytes, records,
             collected_at, meta)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&e.evidence_id)
    .bind(&e.run_id)
    .bind(&e.step_id)
    .bind(&e.path)
    .bind(&e.sha256)
    .bind(to_i64(e.bytes, "evidence.bytes")?)
    .bind(to_i64(e.records, "evidence.records")?)
    .bind(&e.collected_at)
    .bind(json_text(&e.meta)?)
    .execute(conn)
    .await?;
    Ok(())
}

async fn insert_draft(conn: &mut PgConnection, d: &DraftRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO drafts (draft_id, run_id, step_id, idx, template, audience, subject,
             recipient, body_markdown, body_text, body_sha256, facts, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&d.draft_id)
    .bind(&d.run_id)
    .bind(&d.step_id)
    .bind(i64::from(d.idx))
    .bind(&d.template)
    .bind(&d.audience)
    .bind(&d.subject)
    .bind(opt_json_text(&d.to)?)
    .bind(&d.body_markdown)
    .bind(&d.body_text)
    .bind(&d.body_sha256)
    .bind(json_text(&d.facts)?)
    .bind(&d.created_at)
    .execute(conn)
    .await?;
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

async fn apply(conn: &mut PgConnection, lease: &Lease, change: &Change) -> Result<()> {
    match change {
        Change::Run {
            status,
            error,
            started_at,
            finished_at,
        } => {
            sqlx::query(
                "UPDATE runs SET status = $1, error = $2, started_at = COALESCE(started_at, $3),
                     finished_at = $4
                 WHERE id = $5",
            )
            .bind(status.as_str())
            .bind(error)
            .bind(started_at)
            .bind(finished_at)
            .bind(&lease.run_id)
            .execute(conn)
            .await?;
        }
        Change::Step(s) => {
            same_run(lease, "step record", &s.run_id)?;
            upsert_step(conn, s).await?;
        }
        Change::Item(i) => {
            same_run(lease, "item record", &i.run_id)?;
            upsert_item(conn, i).await?;
        }
        Change::Evidence(e) => {
            same_run(lease, "evidence record", &e.run_id)?;
            insert_evidence(conn, e).await?;
        }
        Change::Draft(d) => {
            same_run(lease, "draft", &d.run_id)?;
            insert_draft(conn, d).await?;
        }
        Change::TruncateItems { step_id, from_idx } => {
            sqlx::query("DELETE FROM items WHERE run_id = $1 AND step_id = $2 AND idx >= $3")
                .bind(&lease.run_id)
                .bind(step_id)
                .bind(i64::from(*from_idx))
                .execute(conn)
                .await?;
        }
        Change::WaitingNotice { id, step_id } => {
            let now = crate::time::now();
            sqlx::query(
                "INSERT INTO waiting_notices (id, run_id, step_id, status, attempts, next_at, created_at)
                 VALUES ($1, $2, $3, 'pending', 0, $4, $4)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(&lease.run_id)
            .bind(step_id)
            .bind(&now)
            .execute(conn)
            .await?;
        }
        Change::ReleaseLease => {
            sqlx::query(
                "UPDATE runs SET lease_owner = NULL, lease_until = NULL
                 WHERE id = $1 AND lease_owner = $2 AND lease_token = $3",
            )
            .bind(&lease.run_id)
            .bind(&lease.owner)
            .bind(lease.token)
            .execute(conn)
            .await?;
        }
    }
    Ok(())
}

/// Insert a `schedule_fires` row unless its (schedule, fire time) is taken; true if
/// inserted. A concurrent insert of the same key waits for the other transaction.
async fn insert_fire(conn: &mut PgConnection, f: &ScheduleFire) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO schedule_fires (schedule, fire_time, outcome, run_id, missed, at)
         VALUES ($1, $2, $3, $4, $5, $6)
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

async fn run_exists(conn: &mut PgConnection, run_id: &str) -> Result<bool> {
    let row: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM runs WHERE id = $1")
        .bind(run_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some())
}

/// Create a run, or join the active run with its concurrency key, inside a transaction.
async fn create_in(tx: &mut PgConnection, run: RunRecord, audit: AuditDraft) -> Result<Created> {
    if let Some(key) = &run.concurrency_key {
        // Serialise creators of this key across nodes until this transaction ends: the
        // lookup below then sees a run another node created with the key a moment ago.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        let existing: Option<RunRow> = sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM runs
             WHERE concurrency_key = $1 AND status IN ('queued', 'running', 'waiting')
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
                 VALUES ($1, $2, $3, $4, $5)",
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
            append_events(&mut *tx, vec![joined]).await?;
            return Ok(Created::Joined(existing));
        }
    }
    insert_run(&mut *tx, &run).await?;
    append_events(&mut *tx, vec![audit]).await?;
    Ok(Created::New(run))
}

#[async_trait]
impl Store for PgStore {
    async fn create_run(&self, run: RunRecord, audit: AuditDraft) -> Result<Created> {
        if run.concurrency_key.is_none() {
            let created = run.clone();
            self.writer
                .submit(
                    &self.writes,
                    Op::CreateRun {
                        run: Box::new(run),
                        audit,
                    },
                )
                .await?;
            return Ok(Created::New(created));
        }
        let mut tx = self.begin().await?;
        let created = create_in(&mut tx, run, audit).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn create_run_once(
        &self,
        run: RunRecord,
        audit: AuditDraft,
        keys: &[DedupKey],
        remember_since: &str,
    ) -> Result<Triggered> {
        let mut tx = self.begin().await?;
        let created = create_in(&mut tx, run, audit).await?;
        let target = match &created {
            Created::New(r) | Created::Joined(r) => r.id.clone(),
        };
        let at = crate::time::now();
        for k in keys {
            // Insert, or take over a row old enough to be forgotten; a row that is neither
            // new nor stale returns nothing: a repeat. A concurrent transaction inserting
            // the same key makes this statement wait for it, then decide on its outcome.
            let mine: Option<(String,)> = sqlx::query_as(
                "INSERT INTO webhook_deliveries (hook, kind, key, run_id, at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (hook, kind, key) DO UPDATE
                     SET run_id = excluded.run_id, at = excluded.at
                     WHERE webhook_deliveries.at < $6
                 RETURNING run_id",
            )
            .bind(&k.hook)
            .bind(&k.kind)
            .bind(&k.key)
            .bind(&target)
            .bind(&at)
            .bind(remember_since)
            .fetch_optional(&mut *tx)
            .await?;
            if mine.is_none() {
                let (first,): (String,) = sqlx::query_as(
                    "SELECT run_id FROM webhook_deliveries
                     WHERE hook = $1 AND kind = $2 AND key = $3",
                )
                .bind(&k.hook)
                .bind(&k.kind)
                .bind(&k.key)
                .fetch_one(&mut *tx)
                .await?;
                tx.rollback().await?;
                return Ok(Triggered::Duplicate(first));
            }
        }
        tx.commit().await?;
        Ok(Triggered::Created(Box::new(created)))
    }

    async fn fire_schedule(
        &self,
        schedule: &str,
        fire_time: &str,
        run: RunRecord,
        audit: AuditDraft,
        missed: Option<AuditDraft>,
    ) -> Result<Fired> {
        let known = |store: &PgStore| {
            let pool = store.pool.clone();
            async move {
                let row: Option<(Option<String>,)> = sqlx::query_as(
                    "SELECT run_id FROM schedule_fires WHERE schedule = $1 AND fire_time = $2",
                )
                .bind(schedule)
                .bind(fire_time)
                .fetch_optional(&pool)
                .await?;
                Ok::<_, StoreError>(row)
            }
        };
        if let Some((run_id,)) = known(self).await? {
            return Ok(Fired::Duplicate(run_id));
        }
        let mut tx = self.begin().await?;
        let created = create_in(&mut tx, run, audit).await?;
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
        // Another node may have claimed the fire time since the look above: the key
        // decides, and the run made here is rolled back.
        if !insert_fire(&mut tx, &fire).await? {
            tx.rollback().await?;
            let first = known(self).await?.and_then(|(id,)| id);
            return Ok(Fired::Duplicate(first));
        }
        if let Some(m) = missed {
            append_events(&mut tx, vec![m]).await?;
        }
        tx.commit().await?;
        Ok(Fired::Claimed(Box::new(created)))
    }

    async fn mark_schedule(&self, mark: ScheduleFire, audit: Option<AuditDraft>) -> Result<bool> {
        let mut tx = self.begin().await?;
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
            "SELECT fire_time FROM schedule_fires WHERE schedule = $1
             ORDER BY fire_time DESC LIMIT 1",
        )
        .bind(schedule)
        .fetch_optional(&self.pool)
        .await?;
        let last: Option<FireRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM schedule_fires
             WHERE schedule = $1 AND outcome IN ('fired', 'joined')
             ORDER BY fire_time DESC LIMIT 1"
        ))
        .bind(schedule)
        .fetch_optional(&self.pool)
        .await?;
        Ok(ScheduleState {
            through: through.map(|(t,)| t),
            last_fire: last.map(FireRow::into_record).transpose()?,
        })
    }

    async fn purge_schedule_fires(&self, before: &str) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM schedule_fires
             WHERE at < $1 AND fire_time < (SELECT MAX(f.fire_time) FROM schedule_fires f
                                            WHERE f.schedule = schedule_fires.schedule)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
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
             WHERE (status = 'pending' AND next_at <= $1)
                OR (status = 'sending' AND claimed_at < $2)
             ORDER BY created_at, id LIMIT $3"
        ))
        .bind(now)
        .bind(stale_before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
        // A concurrent claim waits for this row's lock and then re-checks the condition
        // against the claimed row: one claimant wins.
        let got: Option<(i64,)> = sqlx::query_as(
            "UPDATE waiting_notices
             SET status = 'sending', owner = $1, claimed_at = $2, attempts = attempts + 1
             WHERE id = $3 AND ((status = 'pending' AND next_at <= $2)
                             OR (status = 'sending' AND claimed_at < $4))
             RETURNING attempts",
        )
        .bind(owner)
        .bind(now)
        .bind(id)
        .bind(stale_before)
        .fetch_optional(&self.pool)
        .await?;
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
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE waiting_notices
             SET status = $1, next_at = COALESCE($2, next_at), error = $3, finished_at = $4,
                 owner = NULL, claimed_at = NULL
             WHERE id = $5 AND owner = $6 AND status = 'sending'",
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
            "SELECT {NOTICE_COLUMNS} FROM waiting_notices WHERE run_id = $1
             ORDER BY created_at, id"
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(NoticeRow::into_record).collect()
    }

    async fn purge_dedup_keys(&self, before: &str) -> Result<u64> {
        let done = sqlx::query("DELETE FROM webhook_deliveries WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn held_runs(&self) -> Result<Vec<HeldRun>> {
        let rows: Vec<HeldRow> = sqlx::query_as(&format!(
            "SELECT id, status, lease_owner, lease_until FROM runs
                 WHERE status IN ('queued', 'running') AND lease_owner IS NOT NULL
                     AND lease_until > {NOW}
                 ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(HeldRow::into_record).collect()
    }

    async fn overdue_runs(&self, now: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT r.id FROM runs r JOIN steps s ON s.run_id = r.id
             WHERE r.status = 'waiting' AND s.status = 'waiting'
                 AND s.deadline IS NOT NULL AND s.deadline < $1
             ORDER BY r.id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn run_counts(&self) -> Result<Vec<(RunStatus, u64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY status")
                .fetch_all(&self.pool)
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
             FROM evidence WHERE evidence_id = $1",
        )
        .bind(evidence_id)
        .fetch_optional(&self.pool)
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
        // Free, expired (until <= now on the database clock), ours, or held by the process
        // the caller proved dead. One statement: the row lock makes it atomic.
        let token: Option<(i64, bool)> = sqlx::query_as(&format!(
            "UPDATE runs SET lease_owner = $1, lease_until = {until},
                 lease_token = lease_token + 1
             WHERE id = $3 AND (lease_owner IS NULL OR lease_until IS NULL
                 OR lease_until <= {NOW} OR lease_owner = $1 OR lease_owner = $4)
             RETURNING lease_token,
                 lease_token = 1 AND status = 'queued' AND NOT cancel_requested",
            until = db_time("$2", '+'),
        ))
        .bind(owner)
        .bind(clamp_ms(ttl_ms))
        .bind(run_id)
        .bind(steal_from)
        .fetch_optional(&self.pool)
        .await?;
        match token {
            Some((token, first)) => Ok(Some(Lease {
                run_id: run_id.to_owned(),
                owner: owner.to_owned(),
                token,
                first,
            })),
            None => {
                let mut conn = self.pool.acquire().await?;
                if run_exists(&mut conn, run_id).await? {
                    Ok(None)
                } else {
                    Err(StoreError::RunNotFound(run_id.to_owned()))
                }
            }
        }
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> Result<()> {
        let done = sqlx::query(&format!(
            "UPDATE runs SET lease_until = {until}
             WHERE id = $2 AND lease_owner = $3 AND lease_token = $4",
            until = db_time("$1", '+'),
        ))
        .bind(clamp_ms(ttl_ms))
        .bind(&lease.run_id)
        .bind(&lease.owner)
        .bind(lease.token)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::LeaseLost(lease.run_id.clone()));
        }
        Ok(())
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        // A lease already lost is already released: nothing to do, and never touch the
        // new holder's lease (see the writer).
        let op = Op::ReleaseLease {
            lease: lease.clone(),
        };
        self.writer.submit(&self.writes, op).await
    }

    async fn lease_holder(&self, run_id: &str) -> Result<Option<LeaseHolder>> {
        let row: Option<(String, String)> = sqlx::query_as(&format!(
            "SELECT lease_owner, lease_until FROM runs
             WHERE id = $1 AND lease_owner IS NOT NULL AND lease_until > {NOW}"
        ))
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(owner, until)| LeaseHolder { owner, until }))
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
        // Rows locked by another claimer or a commit are skipped, not waited for; a row
        // whose lease changed after this statement's snapshot is re-checked under its lock.
        let mut taken: Vec<(String, i64, String)> = sqlx::query_as(&format!(
            "UPDATE runs SET lease_owner = $1, lease_until = {until},
                 lease_token = lease_token + 1
             WHERE id IN (
                 SELECT id FROM runs
                 WHERE status IN ('queued', 'running')
                     AND (lease_owner IS NULL OR lease_until IS NULL OR lease_until <= {NOW})
                     AND NOT (status = 'queued' AND created_at > {fresh_after})
                 ORDER BY created_at, id
                 LIMIT $4
                 FOR UPDATE SKIP LOCKED)
             RETURNING id, lease_token, created_at",
            until = db_time("$2", '+'),
            fresh_after = db_time("$3", '-'),
        ))
        .bind(owner)
        .bind(clamp_ms(ttl_ms))
        .bind(clamp_ms(fresh_queued_ms))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
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
        // The writer locks the run row and checks owner and token in the transaction that
        // writes: no acquisition can slip in between the fencing check and the writes.
        let op = Op::Commit {
            lease: lease.clone(),
            changes,
            audit,
        };
        self.writer.submit(&self.writes, op).await
    }

    async fn append_audit(&self, audit: Vec<AuditDraft>) -> Result<()> {
        if audit.is_empty() {
            return Ok(());
        }
        self.writer
            .submit(&self.pool, Op::AppendAudit { audit })
            .await
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let row: Option<RunRow> =
            sqlx::query_as(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"))
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(RunRow::into_record).transpose()
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let mut q: QueryBuilder<Postgres> =
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
            // strpos, not LIKE: `%` and `_` in what was typed are plain characters. `json`
            // (not `jsonb`) reads the stored text as it is; lower() under the "C" collation
            // folds ASCII only, like SQLite's.
            q.push(
                " AND strpos(lower(COALESCE(inputs::json ->> 'subject_email', '') COLLATE \"C\"), ",
            )
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
        let rows: Vec<RunRow> = q.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(RunRow::into_record).collect()
    }

    async fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>> {
        let rows: Vec<StepRow> = sqlx::query_as(
            "SELECT run_id, step_id, status, attempts, items, inputs, output, error, reason,
                 started_at, finished_at, deadline, on_failure
             FROM steps WHERE run_id = $1 ORDER BY pos",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(StepRow::into_record).collect()
    }

    async fn items(&self, run_id: &str) -> Result<Vec<ItemRecord>> {
        // Items follow their step's insertion order, then their index.
        let rows: Vec<ItemRow> = sqlx::query_as(
            "SELECT i.run_id, i.step_id, i.idx, i.status, i.attempts, i.inputs, i.connector,
                 i.output, i.error, i.prior_state, i.secret_output, i.started_at, i.finished_at
             FROM items i LEFT JOIN steps s ON s.run_id = i.run_id AND s.step_id = i.step_id
             WHERE i.run_id = $1
             ORDER BY s.pos IS NULL, s.pos, i.step_id, i.idx",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ItemRow::into_record).collect()
    }

    async fn add_decision(&self, decision: Decision, audit: AuditDraft) -> Result<()> {
        let mut tx = self.begin().await?;
        if !run_exists(&mut tx, &decision.run_id).await? {
            return Err(StoreError::RunNotFound(decision.run_id));
        }
        sqlx::query(
            "INSERT INTO decisions (run_id, step_id, decision, decided_by, comment, at, releases)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
             FROM decisions WHERE run_id = $1 ORDER BY at, id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(DecisionRow::into_record).collect()
    }

    async fn request_cancel(&self, run_id: &str, audit: AuditDraft) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("UPDATE runs SET cancel_requested = TRUE WHERE id = $1")
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
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO control (key, value) VALUES ('paused', $1)
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
                .fetch_optional(&self.pool)
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
             WHERE run_id = $1 ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
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
             FROM evidence WHERE run_id = $1 ORDER BY collected_at, evidence_id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(EvidenceRow::into_record).collect()
    }

    async fn drafts(&self, run_id: &str) -> Result<Vec<DraftRecord>> {
        let rows: Vec<DraftRow> = sqlx::query_as(&format!(
            "SELECT {DRAFT_COLUMNS} FROM drafts WHERE run_id = $1 ORDER BY created_at, draft_id"
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(DraftRow::into_record).collect()
    }

    async fn draft(&self, draft_id: &str) -> Result<Option<DraftRecord>> {
        let row: Option<DraftRow> = sqlx::query_as(&format!(
            "SELECT {DRAFT_COLUMNS} FROM drafts WHERE draft_id = $1"
        ))
        .bind(draft_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(DraftRow::into_record).transpose()
    }

    async fn audit_events(&self, run_id: Option<&str>) -> Result<Vec<AuditEvent>> {
        const COLUMNS: &str = "seq, at, run_id, actor, action, details, prev_hash, hash";
        let rows: Vec<AuditRow> = match run_id {
            Some(id) => {
                sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM audit_events WHERE run_id = $1 ORDER BY seq"
                ))
                .bind(id)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query_as(&format!("SELECT {COLUMNS} FROM audit_events ORDER BY seq"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.into_iter().map(AuditRow::into_record).collect()
    }

    async fn audit_head(&self) -> Result<Option<AuditHead>> {
        let mut conn = self.pool.acquire().await?;
        read_head(&mut conn).await
    }

    async fn audit_chain(&self) -> Result<(Vec<AuditEvent>, Option<AuditHead>)> {
        // One snapshot for both reads: a verification beside writers sees a chain and a
        // head that belong together.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
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

/// What the PostgreSQL tests share: the server from `CORDON_TEST_POSTGRES_URL` and a fresh
/// schema per test, dropped afterwards.
#[cfg(test)]
pub(crate) mod testing {
    use sqlx::{Connection, PgConnection};

    /// The variable naming the test server (CI sets it; see `.ci/run`).
    pub const ENV: &str = "CORDON_TEST_POSTGRES_URL";

    /// The test server's URL, or None after a loud SKIPPED line; under CI a missing server
    /// fails the test instead.
    pub fn server_url() -> Option<String> {
        match std::env::var(ENV) {
            Ok(url) if !url.trim().is_empty() => Some(url),
            _ => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must run the PostgreSQL tests: set {ENV} (see .ci/run)"
                );
                eprintln!(
                    "\n**************************************************************\n\
                     SKIPPED: {ENV} is not set\n\
                     **************************************************************\n"
                );
                None
            }
        }
    }

    /// `url` with `-c key=value` settings added to its `options` parameter.
    pub fn with_options(url: &str, settings: &str) -> String {
        let mut u = url::Url::parse(url).expect("the test server URL parses");
        u.query_pairs_mut().append_pair("options", settings);
        u.to_string()
    }

    /// A schema of its own on the test server; dropped (with everything in it) on drop.
    pub struct TestSchema {
        pub name: String,
        /// The server URL with `search_path` set to the schema.
        pub url: String,
        server: String,
    }

    impl TestSchema {
        /// A fresh schema, or None when the server is not configured (see [`server_url`]).
        pub async fn create() -> Option<TestSchema> {
            let server = server_url()?;
            let name = format!("cordon_t_{}", ulid::Ulid::new().to_string().to_lowercase());
            let mut conn = PgConnection::connect(&server)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to {ENV}: {e}"));
            sqlx::query(&format!("CREATE SCHEMA \"{name}\""))
                .execute(&mut conn)
                .await
                .expect("create schema");
            conn.close().await.ok();
            let url = with_options(&server, &format!("-c search_path={name}"));
            Some(TestSchema { name, url, server })
        }

        /// The server URL itself (no schema set).
        pub fn server(&self) -> &str {
            &self.server
        }
    }

    impl Drop for TestSchema {
        fn drop(&mut self) {
            let server = self.server.clone();
            let name = self.name.clone();
            // Drop runs inside the test's runtime: use a thread with a runtime of its own.
            let dropped = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let mut conn = PgConnection::connect(&server).await?;
                    sqlx::query("SET lock_timeout = '20s'")
                        .execute(&mut conn)
                        .await?;
                    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                        .execute(&mut conn)
                        .await?;
                    conn.close().await
                })
            })
            .join();
            if !matches!(dropped, Ok(Ok(()))) {
                eprintln!("could not drop test schema {}: {dropped:?}", self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use sqlx::{Connection, PgConnection};
    use tokio::sync::Barrier;

    use super::testing::{with_options, TestSchema};
    use super::*;
    use crate::store::conformance;

    async fn fresh() -> Option<(TestSchema, PgStore)> {
        let schema = TestSchema::create().await?;
        let store = PgStore::open(&schema.url).await.expect("open");
        Some((schema, store))
    }

    #[tokio::test]
    async fn conformance_suite() {
        let Some((_schema, store)) = fresh().await else {
            return;
        };
        conformance::run_all(&store).await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_commits_keep_one_chain() {
        let Some((_schema, store)) = fresh().await else {
            return;
        };
        conformance::concurrent_commits(Arc::new(store.clone())).await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_pools_on_one_database_keep_one_chain() {
        let Some((schema, a)) = fresh().await else {
            return;
        };
        let b = PgStore::open(&schema.url).await.expect("open b");
        conformance::two_handles(Arc::new(a.clone()), Arc::new(b.clone())).await;
        a.close().await;
        b.close().await;
    }

    #[tokio::test]
    async fn claim_runnable_conformance() {
        let Some((_schema, store)) = fresh().await else {
            return;
        };
        conformance::claim_runnable(&store).await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_pools_claim_each_run_once() {
        let Some((schema, a)) = fresh().await else {
            return;
        };
        let b = PgStore::open(&schema.url).await.expect("open b");
        conformance::claim_concurrently(Arc::new(a.clone()), Arc::new(b.clone())).await;
        a.close().await;
        b.close().await;
    }

    /// `n` tasks, alternating between two pools (two nodes), each calling `f` at once.
    async fn race<T, F, Fut>(a: &PgStore, b: &PgStore, n: usize, f: F) -> Vec<T>
    where
        T: Send + 'static,
        F: Fn(PgStore, usize) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        let barrier = Arc::new(Barrier::new(n));
        let mut handles = Vec::new();
        for i in 0..n {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let barrier = Arc::clone(&barrier);
            let task = f(store, i);
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                task.await
            }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("task"));
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_identical_deliveries_make_one_run() {
        let Some((schema, a)) = fresh().await else {
            return;
        };
        let b = PgStore::open(&schema.url).await.expect("open b");
        let outcomes = race(&a, &b, 8, |store, i| async move {
            let id = format!("01DELIVERY{i:016}");
            store
                .create_run_once(
                    conformance::run(&id, None, "2026-11-25T23:10:00.000Z"),
                    conformance::draft(Some(&id), "run.created", json!({})),
                    &[DedupKey {
                        hook: "siem".into(),
                        kind: "webhook-id".into(),
                        key: "msg-1".into(),
                    }],
                    "2026-10-26T00:00:00.000Z",
                )
                .await
                .expect("create_run_once")
        })
        .await;
        let created: Vec<String> = outcomes
            .iter()
            .filter_map(|t| match t {
                Triggered::Created(c) => match c.as_ref() {
                    Created::New(r) => Some(r.id.clone()),
                    Created::Joined(r) => panic!("joined {}", r.id),
                },
                Triggered::Duplicate(_) => None,
            })
            .collect();
        assert_eq!(created.len(), 1, "{outcomes:?}");
        for t in &outcomes {
            if let Triggered::Duplicate(first) = t {
                assert_eq!(first, &created[0]);
            }
        }
        let runs = a.list_runs(&RunFilter::default()).await.expect("list");
        assert_eq!(runs.len(), 1);
        conformance::assert_chain_intact(&a).await;
        assert_eq!(a.audit_events(None).await.expect("events").len(), 1);
        a.close().await;
        b.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_runs_with_one_concurrency_key_make_one_run_and_joins() {
        let Some((schema, a)) = fresh().await else {
            return;
        };
        let b = PgStore::open(&schema.url).await.expect("open b");
        let outcomes = race(&a, &b, 8, |store, i| async move {
            let id = format!("01KEYED{i:019}");
            store
                .create_run(
                    conformance::run(&id, Some("case:j.doe"), "2026-11-25T23:10:00.000Z"),
                    conformance::draft(Some(&id), "run.created", json!({})),
                )
                .await
                .expect("create_run")
        })
        .await;
        let new: Vec<&RunRecord> = outcomes
            .iter()
            .filter_map(|c| match c {
                Created::New(r) => Some(r),
                Created::Joined(_) => None,
            })
            .collect();
        assert_eq!(new.len(), 1, "{outcomes:?}");
        for c in &outcomes {
            if let Created::Joined(r) = c {
                assert_eq!(r.id, new[0].id);
            }
        }
        assert_eq!(
            a.list_runs(&RunFilter::default())
                .await
                .expect("list")
                .len(),
            1
        );
        assert_eq!(a.joined_triggers(&new[0].id).await.expect("joins").len(), 7);
        conformance::assert_chain_intact(&a).await;
        a.close().await;
        b.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_fires_of_one_time_make_one_run() {
        let Some((schema, a)) = fresh().await else {
            return;
        };
        let b = PgStore::open(&schema.url).await.expect("open b");
        let outcomes = race(&a, &b, 8, |store, i| async move {
            let id = format!("01FIRE{i:020}");
            store
                .fire_schedule(
                    "sweep",
                    "2026-11-25T10:15:00.000Z",
                    conformance::run(&id, None, "2026-11-25T10:15:00.010Z"),
                    conformance::draft(Some(&id), "run.created", json!({})),
                    None,
                )
                .await
                .expect("fire")
        })
        .await;
        let claimed: Vec<String> = outcomes
            .iter()
            .filter_map(|f| match f {
                Fired::Claimed(c) => match c.as_ref() {
                    Created::New(r) | Created::Joined(r) => Some(r.id.clone()),
                },
                Fired::Duplicate(_) => None,
            })
            .collect();
        assert_eq!(claimed.len(), 1, "{outcomes:?}");
        for f in &outcomes {
            if let Fired::Duplicate(first) = f {
                assert_eq!(first.as_deref(), Some(claimed[0].as_str()));
            }
        }
        assert_eq!(
            a.list_runs(&RunFilter::default())
                .await
                .expect("list")
                .len(),
            1
        );
        conformance::assert_chain_intact(&a).await;
        a.close().await;
        b.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn four_nodes_migrating_a_fresh_schema_at_once() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        let opened = race_open(&schema.url, 4).await;
        for (i, r) in opened.iter().enumerate() {
            assert!(r.is_ok(), "open {i}: {:?}", r.as_ref().err());
        }
        let mut conn = PgConnection::connect(schema.server()).await.expect("raw");
        let (migrations,): (i64,) = sqlx::query_as(&format!(
            "SELECT COUNT(*) FROM \"{}\"._sqlx_migrations WHERE success",
            schema.name
        ))
        .fetch_one(&mut conn)
        .await
        .expect("migrations");
        assert_eq!(migrations, MIGRATOR.iter().count() as i64);
        let (tables,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'runs'",
        )
        .bind(&schema.name)
        .fetch_one(&mut conn)
        .await
        .expect("tables");
        assert_eq!(tables, 1);
        let (heads,): (i64,) = sqlx::query_as(&format!(
            "SELECT COUNT(*) FROM \"{}\".audit_head",
            schema.name
        ))
        .fetch_one(&mut conn)
        .await
        .expect("head rows");
        assert_eq!(heads, 1);
        for store in opened.into_iter().flatten() {
            assert!(store.audit_head().await.expect("head").is_none());
            store.close().await;
        }
        conn.close().await.ok();
    }

    async fn race_open(url: &str, n: usize) -> Vec<Result<PgStore>> {
        let barrier = Arc::new(Barrier::new(n));
        let mut handles = Vec::new();
        for _ in 0..n {
            let url = url.to_owned();
            let barrier = Arc::clone(&barrier);
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                PgStore::open(&url).await
            }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("task"));
        }
        out
    }

    /// Leases are judged on the database's clock: with the database's clock_timestamp()
    /// replaced (for this schema's sessions) by one that reads 2100, a lease taken now runs
    /// until 2100, and a lease that the process clock would call live is expired.
    #[tokio::test]
    async fn leases_follow_the_database_clock() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        let mut raw = PgConnection::connect(schema.server()).await.expect("raw");
        sqlx::query(&format!(
            "CREATE FUNCTION \"{}\".clock_timestamp() RETURNS timestamptz
             LANGUAGE sql AS $$ SELECT timestamptz '2100-01-01 00:00:00+00' $$",
            schema.name
        ))
        .execute(&mut raw)
        .await
        .expect("fake clock");
        // pg_catalog named after the schema: the schema's clock_timestamp() wins.
        let url = with_options(
            schema.server(),
            &format!("-c search_path={},pg_catalog", schema.name),
        );
        let store = PgStore::open(&url).await.expect("open");
        let id = "01DBCLOCK00000000000000000";
        store
            .create_run(
                conformance::run(id, None, "2020-01-01T00:00:00.000Z"),
                conformance::draft(Some(id), "run.created", json!({})),
            )
            .await
            .expect("create");
        let lease = store
            .acquire_lease(id, "node-a", 60_000, None)
            .await
            .expect("acquire")
            .expect("free");
        let holder = store.lease_holder(id).await.expect("holder").expect("held");
        assert_eq!(holder.until, "2100-01-01T00:01:00.000Z");
        let held = store.held_runs().await.expect("held");
        assert_eq!(
            held.iter()
                .find(|r| r.id == id)
                .map(|r| r.lease.until.as_str()),
            Some("2100-01-01T00:01:00.000Z")
        );
        // A lease that runs an hour past the process's now is long over for the database.
        let process_later = crate::time::format(chrono::Utc::now() + chrono::TimeDelta::hours(1));
        sqlx::query(&format!(
            "UPDATE \"{}\".runs SET lease_until = $1 WHERE id = $2",
            schema.name
        ))
        .bind(&process_later)
        .bind(id)
        .execute(&mut raw)
        .await
        .expect("set lease_until");
        assert_eq!(store.lease_holder(id).await.expect("holder"), None);
        assert!(store
            .held_runs()
            .await
            .expect("held")
            .iter()
            .all(|r| r.id != id));
        let taken = store
            .acquire_lease(id, "node-b", 60_000, None)
            .await
            .expect("acquire")
            .expect("expired on the database clock");
        assert!(taken.token > lease.token);
        store.release_lease(&taken).await.expect("release");
        let claimed = store
            .claim_runnable("node-c", 1_000, 0, 10)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(
            store
                .lease_holder(id)
                .await
                .expect("holder")
                .map(|h| h.until),
            Some("2100-01-01T00:00:01.000Z".to_string())
        );
        store.close().await;
        raw.close().await.ok();
    }

    #[tokio::test]
    async fn sessions_are_named_and_bounded_and_url_settings_win() {
        let Some((schema, store)) = fresh().await else {
            return;
        };
        let on = |pool: PgPool, what: &'static str| async move {
            let (v,): (String,) = sqlx::query_as(&format!("SHOW {what}"))
                .fetch_one(&pool)
                .await
                .expect(what);
            v
        };
        let show = |store: PgStore, what: &'static str| on(store.pool, what);
        assert_eq!(show(store.clone(), "application_name").await, "cordon");
        assert_eq!(show(store.clone(), "statement_timeout").await, "1min");
        assert_eq!(
            show(store.clone(), "idle_in_transaction_session_timeout").await,
            "1min"
        );
        assert_eq!(show(store.clone(), "enable_seqscan").await, "on");
        // The writer's sessions: the same settings, and planned without sequential scans.
        let writes = || store.writes.clone();
        assert_eq!(on(writes(), "application_name").await, "cordon");
        assert_eq!(on(writes(), "statement_timeout").await, "1min");
        assert_eq!(on(writes(), "enable_seqscan").await, "off");
        store.close().await;
        let mut url = url::Url::parse(&schema.url).expect("url");
        url.query_pairs_mut()
            .append_pair("application_name", "cordon-node-7")
            .append_pair("options", "-c statement_timeout=5s");
        let custom = PgStore::open(url.as_str()).await.expect("open");
        assert_eq!(
            show(custom.clone(), "application_name").await,
            "cordon-node-7"
        );
        assert_eq!(show(custom.clone(), "statement_timeout").await, "5s");
        custom.close().await;
    }

    /// Connections the server ends (as a restart does) are replaced, not handed out.
    #[tokio::test]
    async fn the_pool_survives_the_server_dropping_its_connections() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        let app = format!("cordon-reconnect-{}", schema.name);
        let mut url = url::Url::parse(&schema.url).expect("url");
        url.query_pairs_mut().append_pair("application_name", &app);
        let store = PgStore::open(url.as_str()).await.expect("open");
        // Several connections in the pool.
        let all = RunFilter::default();
        let (a, b, c) = tokio::join!(
            store.run_counts(),
            store.audit_head(),
            store.list_runs(&all)
        );
        a.expect("a");
        b.expect("b");
        c.expect("c");
        let mut raw = PgConnection::connect(schema.server()).await.expect("raw");
        let (ended,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = $1) t",
        )
        .bind(&app)
        .fetch_one(&mut raw)
        .await
        .expect("terminate");
        assert!(ended >= 1, "no connection to end");
        // Every request after the drop still succeeds.
        for i in 0..5 {
            let id = format!("01RECONNECT{i:015}");
            store
                .create_run(
                    conformance::run(&id, None, "2020-01-01T00:00:00.000Z"),
                    conformance::draft(Some(&id), "run.created", json!({})),
                )
                .await
                .expect("create after the server dropped the connections");
        }
        assert_eq!(
            store
                .list_runs(&RunFilter::default())
                .await
                .expect("list")
                .len(),
            5
        );
        store.close().await;
        raw.close().await.ok();
    }

    /// Text compares bytewise, as on SQLite, whatever the database's collation.
    #[tokio::test]
    async fn text_orders_bytewise() {
        let Some((_schema, store)) = fresh().await else {
            return;
        };
        for id in ["b-1", "B1", "a1", "a-1", "_x"] {
            store
                .create_run(
                    conformance::run(id, None, "2020-01-01T00:00:00.000Z"),
                    conformance::draft(Some(id), "run.created", json!({})),
                )
                .await
                .expect("create");
        }
        let ids: Vec<String> = store
            .list_runs(&RunFilter::default())
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["b-1", "a1", "a-1", "_x", "B1"]);
        // Whatever the test server's default collation, every text column says "C".
        let (other,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM information_schema.columns
             WHERE table_schema = current_schema() AND data_type = 'text'
                 AND table_name <> '_sqlx_migrations'
                 AND collation_name IS DISTINCT FROM 'C'",
        )
        .fetch_one(&store.pool)
        .await
        .expect("collations");
        assert_eq!(other, 0, "text columns without COLLATE \"C\"");
        store.close().await;
    }

    #[tokio::test]
    async fn appending_after_tampering_with_the_head_fails_closed() {
        let Some((schema, store)) = fresh().await else {
            return;
        };
        for i in 0..3 {
            store
                .append_audit(vec![conformance::draft(
                    None,
                    "config.loaded",
                    json!({"i": i}),
                )])
                .await
                .expect("append");
        }
        let mut raw = PgConnection::connect(&schema.url).await.expect("raw");
        sqlx::query("UPDATE audit_head SET seq = 1")
            .execute(&mut raw)
            .await
            .expect("tamper");
        let result = store
            .append_audit(vec![conformance::draft(None, "config.loaded", json!({}))])
            .await;
        assert!(matches!(result, Err(StoreError::Database(_))), "{result:?}");
        assert_eq!(store.audit_events(None).await.expect("events").len(), 3);
        // Deleting the head is caught by verification, never reported as an empty chain.
        sqlx::query("DELETE FROM audit_head")
            .execute(&mut raw)
            .await
            .expect("tamper");
        let (events, head) = store.audit_chain().await.expect("chain");
        assert!(head.is_none());
        assert!(!crate::audit::verify(&events, head.as_ref()).ok);
        // Nor is the chain extended from nothing: appending fails closed.
        let result = store
            .append_audit(vec![conformance::draft(None, "config.loaded", json!({}))])
            .await;
        assert!(
            matches!(&result, Err(e) if e.to_string().contains("audit head row is missing")),
            "{result:?}"
        );
        assert_eq!(store.audit_events(None).await.expect("events").len(), 3);
        store.close().await;
        raw.close().await.ok();
    }

    /// Run with `CORDON_TEST_POSTGRES_URL=… cargo test -p cordon --lib -- --ignored
    /// postgres::tests::commit_speed --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "micro-benchmark"]
    async fn commit_speed() {
        let Some((_schema, store)) = fresh().await else {
            return;
        };
        let n = 500u32;
        let commit_all = |store: PgStore, batch: u32, runs: u32| async move {
            let mut handles = Vec::new();
            for r in 0..runs {
                let store = store.clone();
                handles.push(tokio::spawn(async move {
                    let id = format!("01BENCH{batch}{r:018}");
                    store
                        .create_run(
                            conformance::run(&id, None, "2020-01-01T00:00:00.000Z"),
                            conformance::draft(Some(&id), "run.created", json!({})),
                        )
                        .await
                        .expect("create");
                    let lease = store
                        .acquire_lease(&id, "bench", 600_000, None)
                        .await
                        .expect("lease")
                        .expect("free");
                    for i in 0..n / runs {
                        let item = ItemRecord {
                            run_id: id.clone(),
                            step_id: "suspend".into(),
                            idx: i % 16,
                            status: super::super::StepStatus::Succeeded,
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
                                    Some(&id),
                                    "step.succeeded",
                                    json!({"i": i}),
                                )],
                            )
                            .await
                            .expect("commit");
                    }
                }));
            }
            for h in handles {
                h.await.expect("task");
            }
        };
        let started = std::time::Instant::now();
        commit_all(store.clone(), 1, 1).await;
        let one = started.elapsed();
        let started = std::time::Instant::now();
        commit_all(store.clone(), 2, 8).await;
        let eight = started.elapsed();
        println!(
            "commit (1 item upsert + 1 audit event): one run {:?} mean; 8 runs at once {:.0} commits/s",
            one / n,
            f64::from(n) / eight.as_secs_f64()
        );
        store.close().await;
    }
}
