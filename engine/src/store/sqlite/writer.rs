//! Group commit: one writer task per store applies many callers' writes in one transaction.
//!
//! The frequent writes of executing runs (step commits, run creation, leases, audit appends)
//! are handed to a single task. It takes everything queued, opens one `BEGIN IMMEDIATE`,
//! applies each request, seals all their audit events onto the chain in request order, and
//! COMMITs once (one fsync for the whole batch). Only after that COMMIT
//! returned does it answer the waiters, so "durable before the next side effect" holds for
//! every caller exactly as with one transaction each.
//!
//! - A request whose lease was lost writes nothing and is answered with its own error. Run
//!   creations, which may have to undo their own rows, run behind a savepoint; the other
//!   requests do not (a savepoint makes SQLite journal every page the request touches), and
//!   each savepoint is released as soon as its request is applied or undone. If
//!   the database refuses a statement of one of them, the batch is rolled back and applied
//!   again with a savepoint per request, where the refused request is rolled back alone and
//!   answered with its own error; the others commit.
//! - A failure of the batch as a whole after it began (sealing the audit events, COMMIT) is
//!   retried request by request, one transaction each, so every caller gets its own outcome.
//! - A crash before COMMIT loses the batch, and none of its requests was answered.
//!
//! Callers reach the task through [`Queue`](crate::store::queue::Queue).

use std::sync::atomic::Ordering;
use std::sync::Arc;
#[cfg(test)]
use std::sync::Mutex;

use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::mpsc;

use crate::store::queue::{committed, holds, spawn_writer, Counters, Leases, Queue};

use super::{
    append_events, create_in, insert_run, push_changes, push_insert_run, AuditDraft, Change,
    Created, DedupKey, Lease, Result, RunRecord, StoreError, Triggered, ROWS_PER_INSERT,
};

/// At most this many requests share one transaction (bounds the first waiter's delay).
const MAX_BATCH: usize = 512;

/// A write handed to the writer task.
pub(super) enum Op {
    Commit {
        lease: Lease,
        changes: Vec<Change>,
        audit: Vec<AuditDraft>,
    },
    CreateRun {
        run: RunRecord,
        audit: AuditDraft,
    },
    CreateRunOnce {
        run: RunRecord,
        audit: AuditDraft,
        keys: Vec<DedupKey>,
        remember_since: String,
    },
    AcquireLease {
        run_id: String,
        owner: String,
        /// RFC 3339 times, taken when the caller asked.
        now: String,
        until: String,
        steal_from: Option<String>,
    },
    RenewLease {
        lease: Lease,
        until: String,
    },
    ReleaseLease {
        lease: Lease,
    },
    AppendAudit {
        audit: Vec<AuditDraft>,
    },
}

/// What a request gives back once its transaction committed.
#[derive(Debug)]
pub(super) enum Answer {
    Done,
    Created(Box<Created>),
    Triggered(Triggered),
    Lease(Option<Lease>),
}

impl Answer {
    fn mismatch(self, wanted: &str) -> StoreError {
        StoreError::Corrupt(format!(
            "the SQLite writer answered {self:?} where {wanted} was expected"
        ))
    }
    pub(super) fn created(self) -> Result<Created> {
        match self {
            Answer::Created(c) => Ok(*c),
            other => Err(other.mismatch("a created run")),
        }
    }
    pub(super) fn triggered(self) -> Result<Triggered> {
        match self {
            Answer::Triggered(t) => Ok(t),
            other => Err(other.mismatch("a triggered run")),
        }
    }
    pub(super) fn lease(self) -> Result<Option<Lease>> {
        match self {
            Answer::Lease(l) => Ok(l),
            other => Err(other.mismatch("a lease")),
        }
    }
}

/// One request applied inside its savepoint.
struct Applied {
    answer: Answer,
    /// False: roll the request's savepoint back (a duplicate delivery stores nothing).
    keep: bool,
    /// Its audit events, sealed onto the chain with the batch's.
    audit: Vec<AuditDraft>,
}

type Request = crate::store::queue::Request<Op, Answer>;

pub use crate::store::queue::WriteStats;

/// Called by the writer just before each COMMIT with the batch's size (crash tests).
#[cfg(test)]
pub(super) type BeforeCommit = Arc<dyn Fn(usize) + Send + Sync>;

struct Shared {
    counters: Arc<Counters>,
    #[cfg(test)]
    before_commit: Mutex<Option<BeforeCommit>>,
}

/// The handle every clone of a store shares.
pub(super) struct Writer {
    queue: Queue<Op, Answer>,
    shared: Arc<Shared>,
}

impl Default for Writer {
    fn default() -> Self {
        let queue = Queue::default();
        let shared = Arc::new(Shared {
            counters: queue.counters.clone(),
            #[cfg(test)]
            before_commit: Mutex::new(None),
        });
        Writer { queue, shared }
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Writer {
    pub(super) fn stats(&self) -> WriteStats {
        self.queue.stats()
    }

    #[cfg(test)]
    pub(super) fn set_before_commit(&self, hook: Option<BeforeCommit>) {
        if let Ok(mut h) = self.shared.before_commit.lock() {
            *h = hook;
        }
    }

    /// Let the writer task end once it has answered what is queued.
    pub(super) fn stop(&self) {
        self.queue.stop();
    }

    /// Hand `op` to the writer and wait until the transaction holding it committed.
    pub(super) async fn submit(&self, pool: &SqlitePool, op: Op) -> Result<Answer> {
        self.queue
            .submit(op, |rx| {
                spawn_writer("sqlite-writer", run(pool.clone(), rx, self.shared.clone()));
            })
            .await
    }
}

/// The writer task: batch, apply, commit, answer; until every sender is gone.
async fn run(pool: SqlitePool, mut rx: mpsc::UnboundedReceiver<Request>, shared: Arc<Shared>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        process(&pool, &mut rx, &mut batch, &shared).await;
        batch.clear();
    }
}

/// Why a batch did not commit.
enum BatchError {
    /// The transaction could not be opened (the lock, the disk): nothing of any request ran.
    Begin(sqlx::Error),
    /// Sealing the audit events or COMMIT failed: the batch was rolled back.
    Later(StoreError),
    /// Applied without savepoints, a request's statement failed: the batch was rolled
    /// back, to be applied again with a savepoint per request.
    Retry,
}

async fn process(
    pool: &SqlitePool,
    rx: &mut mpsc::UnboundedReceiver<Request>,
    batch: &mut Vec<Request>,
    shared: &Shared,
) {
    let mut conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => return fail_all(batch, e),
    };
    // Requests that arrived while the connection was busy join this batch.
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
    let ops: Vec<&Op> = batch.iter().map(|r| &r.op).collect();
    let mut first = try_batch(&mut conn, &ops, shared, false).await;
    if matches!(first, Err(BatchError::Retry)) {
        first = try_batch(&mut conn, &ops, shared, true).await;
    }
    let outcomes = match first {
        Ok(outcomes) => outcomes,
        Err(BatchError::Begin(e)) => return fail_all(batch, e),
        Err(BatchError::Retry) => {
            let e = StoreError::Corrupt("the SQLite writer could not apply a batch".into());
            vec![Err(e)]
        }
        Err(BatchError::Later(e)) if ops.len() == 1 => vec![Err(e)],
        Err(BatchError::Later(e)) => {
            tracing::warn!(error = %e, requests = ops.len(),
                "a grouped SQLite transaction failed; committing its requests one by one");
            let mut alone = Vec::with_capacity(ops.len());
            for op in &ops {
                alone.push(match try_batch(&mut conn, &[*op], shared, true).await {
                    Ok(mut v) => v.pop().unwrap_or_else(|| {
                        Err(StoreError::Corrupt(
                            "the SQLite writer lost an answer".into(),
                        ))
                    }),
                    Err(BatchError::Begin(e)) => Err(e.into()),
                    Err(BatchError::Later(e)) => Err(e),
                    Err(BatchError::Retry) => Err(StoreError::Corrupt(
                        "the SQLite writer could not apply a request".into(),
                    )),
                });
            }
            alone
        }
    };
    drop(conn);
    for (request, outcome) in batch.drain(..).zip(outcomes) {
        // A caller that stopped waiting does not mind.
        let _ = request.reply.send(outcome);
    }
}

/// Read the leases of every run the batch's requests name.
async fn read_leases(conn: &mut SqliteConnection, ops: &[&Op]) -> Result<Leases> {
    let mut ids: Vec<&str> = ops.iter().filter_map(|op| op.run_id()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut leases = Leases::with_capacity(ids.len());
    for chunk in ids.chunks(ROWS_PER_INSERT * 4) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT id, lease_owner, lease_token FROM runs WHERE id IN (");
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        q.push(")");
        let rows: Vec<(String, Option<String>, i64)> =
            q.build_query_as().fetch_all(&mut *conn).await?;
        for (id, owner, token) in rows {
            leases.insert(id, (owner, token));
        }
    }
    Ok(leases)
}

/// Apply `ops` in one transaction; each request's outcome once it committed. Without
/// `savepoints`, only the requests that may have to undo their own statements (a run
/// creation that finds its delivery already remembered, or joins a concurrency key) open
/// one; the statement journal work of a savepoint per commit is saved, and the first
/// other request the database refuses makes the batch [`BatchError::Retry`] with them.
async fn try_batch(
    conn: &mut SqliteConnection,
    ops: &[&Op],
    shared: &Shared,
    savepoints: bool,
) -> Result<Vec<Result<Answer>>, BatchError> {
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(BatchError::Begin)?;
    let mut leases = read_leases(&mut tx, ops).await.map_err(BatchError::Later)?;
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut audit = Vec::new();
    if let [op] = ops {
        // Alone in the transaction: no savepoint needed, the transaction is the request's.
        match apply(&mut tx, op, &mut leases, false).await {
            Ok(a) if a.keep => {
                audit = a.audit;
                outcomes.push(Ok(a.answer));
            }
            Ok(a) => {
                tx.rollback()
                    .await
                    .map_err(|e| BatchError::Later(e.into()))?;
                return Ok(vec![Ok(a.answer)]);
            }
            Err(e) => {
                tx.rollback()
                    .await
                    .map_err(|e| BatchError::Later(e.into()))?;
                return Ok(vec![Err(e)]);
            }
        }
    } else {
        // A request with a savepoint rolls itself back to it when it fails (see `apply`).
        for op in ops {
            let savepoint = savepoints || op.may_undo();
            match apply(&mut tx, op, &mut leases, savepoint).await {
                Ok(a) => {
                    if a.keep {
                        audit.extend(a.audit);
                    }
                    outcomes.push(Ok(a.answer));
                }
                Err(StoreError::Database(e)) if is_fatal(&e) => {
                    return Err(BatchError::Later(StoreError::Database(e)))
                }
                // Fenced off before any statement of its own: nothing to undo.
                Err(e @ (StoreError::LeaseLost(_) | StoreError::RunNotFound(_))) => {
                    outcomes.push(Err(e));
                }
                Err(_) if !savepoint => {
                    tx.rollback()
                        .await
                        .map_err(|e| BatchError::Later(e.into()))?;
                    return Err(BatchError::Retry);
                }
                Err(e) => outcomes.push(Err(e)),
            }
        }
    }
    append_events(&mut tx, audit)
        .await
        .map_err(BatchError::Later)?;
    #[cfg(test)]
    {
        let hook = shared.before_commit.lock().ok().and_then(|h| h.clone());
        if let Some(hook) = hook {
            hook(ops.len());
        }
    }
    tx.commit().await.map_err(|e| BatchError::Later(e.into()))?;
    let c = &shared.counters;
    c.transactions.fetch_add(1, Ordering::Relaxed);
    c.requests.fetch_add(ops.len() as u64, Ordering::Relaxed);
    Ok(outcomes)
}

/// An error after which the transaction cannot go on (the savepoint could not be rolled
/// back, the connection broke): the batch is retried request by request.
fn is_fatal(e: &sqlx::Error) -> bool {
    !matches!(e, sqlx::Error::Database(_))
}

/// Open the request's savepoint. It is released once the request is applied or undone:
/// while a savepoint is open, SQLite copies every page a statement changes into the
/// statement journal and truncates that journal after every statement, so savepoints
/// left open until COMMIT made each later statement of the batch slower than the last.
const SAVEPOINT: &str = "SAVEPOINT request; ";

/// Keep what the request wrote: its savepoint ends, its changes stay in the transaction.
const RELEASE: &str = "RELEASE request; ";

/// Undo what the request wrote, and end its savepoint.
const UNDO: &str = "ROLLBACK TO request; RELEASE request";

/// Release the request's savepoint. Should that fail, the request's statements can no
/// longer be told apart from the batch's: a non-database error makes the batch retry
/// request by request.
async fn release(conn: &mut SqliteConnection) -> Result<()> {
    sqlx::query(RELEASE).execute(conn).await.map_err(|e| {
        StoreError::Database(sqlx::Error::Io(std::io::Error::other(format!(
            "cannot release a request's savepoint: {e}"
        ))))
    })?;
    Ok(())
}

/// Undo a failed request back to its savepoint, and pass its error on. If even that fails,
/// the transaction is unusable: a non-database error makes the batch retry one by one.
async fn roll_back<T>(conn: &mut SqliteConnection, error: StoreError) -> Result<T> {
    if let Err(e) = sqlx::query(UNDO).execute(conn).await {
        return Err(StoreError::Database(sqlx::Error::Io(
            std::io::Error::other(format!(
                "cannot roll a request back to its savepoint ({e}) after: {error}"
            )),
        )));
    }
    Err(error)
}

/// The transaction could not even begin: every waiter learns why. sqlx errors cannot be
/// cloned, so the first waiter gets the original and the others its text.
fn fail_all(batch: &mut Vec<Request>, e: sqlx::Error) {
    let text = e.to_string();
    let mut first = Some(e);
    for request in batch.drain(..) {
        let err = match first.take() {
            Some(e) => e,
            None => same_error(&text),
        };
        let _ = request.reply.send(Err(StoreError::Database(err)));
    }
}

fn same_error(text: &str) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(format!(
        "the SQLite write transaction could not begin: {text}"
    )))
}

impl Op {
    /// Whether the request may have to undo statements of its own that succeeded: a run
    /// creation whose delivery key turns out to be remembered, or one that joins an active
    /// run of its concurrency key. The others are refused before their statements run (the
    /// fencing check) or not at all.
    fn may_undo(&self) -> bool {
        match self {
            Op::CreateRunOnce { .. } => true,
            Op::CreateRun { run, .. } => run.concurrency_key.is_some(),
            _ => false,
        }
    }

    /// The run whose lease the request reads or changes.
    fn run_id(&self) -> Option<&str> {
        match self {
            Op::Commit { lease, .. }
            | Op::RenewLease { lease, .. }
            | Op::ReleaseLease { lease } => Some(&lease.run_id),
            Op::AcquireLease { run_id, .. } => Some(run_id),
            Op::CreateRun { .. } | Op::CreateRunOnce { .. } | Op::AppendAudit { .. } => None,
        }
    }
}

fn kept(answer: Answer, audit: Vec<AuditDraft>) -> Applied {
    Applied {
        answer,
        keep: true,
        audit,
    }
}

/// Apply one request on `conn`. With a savepoint (`grouped`), a request of several statements
/// opens its own savepoint in the same round trip as its statements, and rolls back to it
/// when it fails or stores nothing; alone, the caller rolls the transaction back.
async fn apply(
    conn: &mut SqliteConnection,
    op: &Op,
    leases: &mut Leases,
    grouped: bool,
) -> Result<Applied> {
    match op {
        Op::Commit {
            lease,
            changes,
            audit,
        } => {
            holds(leases, lease)?;
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new(if grouped { SAVEPOINT } else { "" });
            push_changes(&mut q, lease, changes)?;
            if grouped {
                q.push(RELEASE);
            }
            if !changes.is_empty() {
                if let Err(e) = q.build().execute(&mut *conn).await {
                    return if grouped {
                        roll_back(conn, e.into()).await
                    } else {
                        Err(e.into())
                    };
                }
            }
            committed(leases, lease, changes);
            Ok(kept(Answer::Done, audit.clone()))
        }
        Op::CreateRun { run, audit } if run.concurrency_key.is_none() => {
            // One statement: atomic on its own.
            insert_run(conn, run).await?;
            leases.insert(run.id.clone(), (None, 0));
            Ok(kept(
                Answer::Created(Box::new(Created::New(run.clone()))),
                vec![audit.clone()],
            ))
        }
        Op::CreateRunOnce {
            run,
            audit,
            keys,
            remember_since,
        } if run.concurrency_key.is_none() => {
            // The run and its delivery keys in one round trip; a key already remembered
            // returns no row, and the savepoint (or the transaction) is rolled back.
            let at = crate::time::now();
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new(if grouped { SAVEPOINT } else { "" });
            push_insert_run(&mut q, run)?;
            for k in keys {
                push_remember(&mut q, k, &run.id, &at, remember_since);
            }
            let mine = match q.build().fetch_all(&mut *conn).await {
                Ok(rows) => rows.len(),
                Err(e) if grouped => return roll_back(conn, e.into()).await,
                Err(e) => return Err(e.into()),
            };
            if mine < keys.len() {
                return duplicate(conn, keys, &run.id, grouped).await;
            }
            if grouped {
                release(conn).await?;
            }
            leases.insert(run.id.clone(), (None, 0));
            Ok(kept(
                Answer::Triggered(Triggered::Created(Box::new(Created::New(run.clone())))),
                vec![audit.clone()],
            ))
        }
        Op::CreateRun { run, audit } => {
            // A concurrency key: look for the active run to join (several statements).
            if grouped {
                sqlx::query(SAVEPOINT).execute(&mut *conn).await?;
            }
            match create_in(&mut *conn, run.clone(), audit.clone()).await {
                Ok((created, event)) => {
                    if grouped {
                        release(conn).await?;
                    }
                    leases.entry(run.id.clone()).or_insert((None, 0));
                    Ok(kept(Answer::Created(Box::new(created)), vec![event]))
                }
                Err(e) if grouped => roll_back(conn, e).await,
                Err(e) => Err(e),
            }
        }
        Op::CreateRunOnce {
            run,
            audit,
            keys,
            remember_since,
        } => {
            if grouped {
                sqlx::query(SAVEPOINT).execute(&mut *conn).await?;
            }
            let created = create_in(&mut *conn, run.clone(), audit.clone()).await;
            let (created, event) = match created {
                Ok(c) => c,
                Err(e) if grouped => return roll_back(conn, e).await,
                Err(e) => return Err(e),
            };
            let target = match &created {
                Created::New(r) | Created::Joined(r) => r.id.clone(),
            };
            let at = crate::time::now();
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("");
            for k in keys {
                push_remember(&mut q, k, &target, &at, remember_since);
            }
            let mine = if keys.is_empty() {
                0
            } else {
                match q.build().fetch_all(&mut *conn).await {
                    Ok(rows) => rows.len(),
                    Err(e) if grouped => return roll_back(conn, e.into()).await,
                    Err(e) => return Err(e.into()),
                }
            };
            if mine < keys.len() {
                return duplicate(conn, keys, &target, grouped).await;
            }
            if grouped {
                release(conn).await?;
            }
            leases.entry(run.id.clone()).or_insert((None, 0));
            Ok(kept(
                Answer::Triggered(Triggered::Created(Box::new(created))),
                vec![event],
            ))
        }
        Op::AcquireLease {
            run_id,
            owner,
            now,
            until,
            steal_from,
        } => {
            if !leases.contains_key(run_id) {
                return Err(StoreError::RunNotFound(run_id.clone()));
            }
            // Free, expired (until <= now), ours, or held by the process the caller proved
            // dead. One statement: atomic on its own.
            let token: Option<(i64, bool)> = sqlx::query_as(
                "UPDATE runs SET lease_owner = ?1, lease_until = ?2, lease_token = lease_token + 1
                 WHERE id = ?3 AND (lease_owner IS NULL OR lease_until IS NULL
                     OR lease_until <= ?4 OR lease_owner = ?1 OR lease_owner = ?5)
                 RETURNING lease_token,
                     lease_token = 1 AND status = 'queued' AND NOT cancel_requested",
            )
            .bind(owner)
            .bind(until)
            .bind(run_id)
            .bind(now)
            .bind(steal_from)
            .fetch_optional(&mut *conn)
            .await?;
            let lease = token.map(|(token, first)| {
                leases.insert(run_id.clone(), (Some(owner.clone()), token));
                Lease {
                    run_id: run_id.clone(),
                    owner: owner.clone(),
                    token,
                    first,
                }
            });
            Ok(kept(Answer::Lease(lease), Vec::new()))
        }
        Op::RenewLease { lease, until } => {
            match holds(leases, lease) {
                Err(StoreError::RunNotFound(id)) => return Err(StoreError::LeaseLost(id)),
                other => other?,
            }
            sqlx::query(
                "UPDATE runs SET lease_until = ?
                 WHERE id = ? AND lease_owner = ? AND lease_token = ?",
            )
            .bind(until)
            .bind(&lease.run_id)
            .bind(&lease.owner)
            .bind(lease.token)
            .execute(conn)
            .await?;
            Ok(kept(Answer::Done, Vec::new()))
        }
        Op::ReleaseLease { lease } => {
            // A lease already lost is already released: never touch the new holder's.
            if holds(leases, lease).is_ok() {
                sqlx::query(
                    "UPDATE runs SET lease_owner = NULL, lease_until = NULL
                     WHERE id = ? AND lease_owner = ? AND lease_token = ?",
                )
                .bind(&lease.run_id)
                .bind(&lease.owner)
                .bind(lease.token)
                .execute(conn)
                .await?;
                leases.insert(lease.run_id.clone(), (None, lease.token));
            }
            Ok(kept(Answer::Done, Vec::new()))
        }
        Op::AppendAudit { audit } => Ok(kept(Answer::Done, audit.clone())),
    }
}

/// Remember a delivery key for `run_id`, or take over a row old enough to be forgotten; a
/// row that is neither new nor stale returns nothing: a repeat.
fn push_remember<'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    k: &'a DedupKey,
    run_id: &str,
    at: &str,
    remember_since: &'a str,
) {
    q.push("INSERT INTO webhook_deliveries (hook, kind, key, run_id, at) VALUES (")
        .push_bind(&k.hook)
        .push(", ")
        .push_bind(&k.kind)
        .push(", ")
        .push_bind(&k.key)
        .push(", ")
        .push_bind(run_id.to_owned())
        .push(", ")
        .push_bind(at.to_owned())
        .push(
            ") ON CONFLICT (hook, kind, key) DO UPDATE
                 SET run_id = excluded.run_id, at = excluded.at
                 WHERE webhook_deliveries.at < ",
        )
        .push_bind(remember_since)
        .push(" RETURNING run_id; ");
}

/// A delivery key was remembered already: undo what the request wrote and answer with
/// the run the first delivery made.
async fn duplicate(
    conn: &mut SqliteConnection,
    keys: &[DedupKey],
    target: &str,
    grouped: bool,
) -> Result<Applied> {
    let first = match first_run(conn, keys, target).await {
        Ok(first) => first,
        Err(e) if grouped => return roll_back(conn, e).await,
        Err(e) => return Err(e),
    };
    if grouped {
        sqlx::query(UNDO).execute(&mut *conn).await?;
    }
    Ok(Applied {
        answer: Answer::Triggered(Triggered::Duplicate(first)),
        keep: false,
        audit: Vec::new(),
    })
}

/// The run a remembered key points to: the first that is not `target` (the keys this
/// request stored point to it), else `target` itself (a repeat that joined the same run).
async fn first_run(conn: &mut SqliteConnection, keys: &[DedupKey], target: &str) -> Result<String> {
    for k in keys {
        let (run_id,): (String,) = sqlx::query_as(
            "SELECT run_id FROM webhook_deliveries WHERE hook = ? AND kind = ? AND key = ?",
        )
        .bind(&k.hook)
        .bind(&k.kind)
        .bind(&k.key)
        .fetch_one(&mut *conn)
        .await?;
        if run_id != target {
            return Ok(run_id);
        }
    }
    Ok(target.to_string())
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;

    use super::super::SqliteStore;
    use crate::store::conformance::evidence;
    use crate::store::conformance::{
        assert_chain_intact, assert_gathered_outcome, draft, gathered_commits, run,
    };
    use crate::store::{Change, ItemRecord, Lease, StepStatus, Store, StoreError};

    /// The conformance suite's item, as a finished call.
    fn item(run_id: &str, step_id: &str, idx: u32) -> ItemRecord {
        ItemRecord {
            status: StepStatus::Succeeded,
            output: Some(json!({"already": false})),
            ..crate::store::conformance::item(run_id, step_id, idx)
        }
    }

    async fn leased_run(store: &SqliteStore, id: &str) -> Lease {
        store
            .create_run(
                run(id, None, "2026-11-25T23:00:00.000Z"),
                draft(Some(id), "run.created", json!({})),
            )
            .await
            .expect("create run");
        store
            .acquire_lease(id, "node-a/1/x", 60_000, None)
            .await
            .expect("acquire")
            .expect("free")
    }

    /// A store on a new database in a folder that lives as long as the first value.
    async fn temp_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("writer.db").to_string_lossy())
            .await
            .expect("open");
        (dir, store)
    }

    /// Wait until `n` requests in all were handed to the writer.
    async fn submitted(store: &SqliteStore, n: u64) {
        for _ in 0..2000 {
            if store.write_stats().submitted >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("only {:?} requests reached the writer", store.write_stats());
    }

    fn commit_task(
        store: &SqliteStore,
        lease: &Lease,
        changes: Vec<Change>,
        action: &str,
    ) -> tokio::task::JoinHandle<crate::store::Result<()>> {
        let store = store.clone();
        let lease = lease.clone();
        let audit = vec![draft(Some(&lease.run_id), action, json!({"by": action}))];
        tokio::spawn(async move { store.commit(&lease, changes, audit).await })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_batch_writes_what_its_commits_in_order_would() {
        let (_dir, store) = temp_store().await;
        let a = leased_run(&store, "01GATHERA00000000000000000").await;
        let b = leased_run(&store, "01GATHERB00000000000000000").await;
        let before = store.write_stats();
        // While the write connection is busy, the commits queue up in this order.
        let busy = store.write.acquire().await.expect("write connection");
        let mut tasks = Vec::new();
        for (lease, changes) in gathered_commits(&a, &b) {
            let n = store.write_stats().submitted;
            tasks.push(commit_task(&store, &lease, changes, "step.succeeded"));
            submitted(&store, n + 1).await;
        }
        drop(busy);
        for t in tasks {
            t.await.expect("task").expect("commit");
        }
        let after = store.write_stats();
        assert_eq!(after.transactions - before.transactions, 1, "one batch");
        assert_gathered_outcome(&store, &a, &b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_commits_share_one_transaction_and_one_chain() {
        let (_dir, store) = temp_store().await;
        let mut leases = Vec::new();
        for r in 0..8 {
            leases.push(leased_run(&store, &format!("01GROUP{r:019}")).await);
        }
        let before = store.write_stats();
        // While the write connection is busy, 64 commits from 8 runs queue up.
        let busy = store.write.acquire().await.expect("write connection");
        let mut tasks = Vec::new();
        for n in 0..64u32 {
            let lease = &leases[n as usize % 8];
            let it = item(&lease.run_id, "suspend", n / 8);
            tasks.push(commit_task(
                &store,
                lease,
                vec![Change::Item(it)],
                "step.succeeded",
            ));
        }
        submitted(&store, before.submitted + 64).await;
        drop(busy);
        for t in tasks {
            t.await.expect("task").expect("commit");
        }
        let after = store.write_stats();
        assert_eq!(after.requests - before.requests, 64);
        assert_eq!(
            after.transactions - before.transactions,
            1,
            "64 commits queued together land in one transaction: {before:?} → {after:?}"
        );
        for lease in &leases {
            assert_eq!(store.items(&lease.run_id).await.expect("items").len(), 8);
            let events = store
                .audit_events(Some(&lease.run_id))
                .await
                .expect("events");
            assert_eq!(events.len(), 1 + 8, "run.created and eight step events");
        }
        assert_chain_intact(&store).await;

        // Without contention, commits still answer one by one.
        let lease = &leases[0];
        store
            .commit(
                lease,
                vec![Change::Item(item(&lease.run_id, "later", 0))],
                vec![],
            )
            .await
            .expect("alone");
        assert_eq!(store.write_stats().transactions, after.transactions + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failing_request_in_a_batch_does_not_affect_the_others() {
        let (_dir, store) = temp_store().await;
        let a = leased_run(&store, "01FAILA0000000000000000000").await;
        let b = leased_run(&store, "01FAILB0000000000000000000").await;
        let c = leased_run(&store, "01FAILC0000000000000000000").await;
        let d = leased_run(&store, "01FAILD0000000000000000000").await;
        // b's lease is taken over by another process: b's holder is fenced off.
        let stolen = store
            .acquire_lease(&b.run_id, "node-b/2/y", 60_000, Some("node-a/1/x"))
            .await
            .expect("steal")
            .expect("stolen");
        assert!(stolen.token > b.token);
        store
            .commit(
                &c,
                vec![Change::Evidence(evidence(&c.run_id, "01EVIDENCE-TAKEN"))],
                vec![],
            )
            .await
            .expect("first evidence");
        let events_before = store.audit_events(None).await.expect("events").len();
        let before = store.write_stats();

        let busy = store.write.acquire().await.expect("write connection");
        let ta = commit_task(
            &store,
            &a,
            vec![Change::Item(item(&a.run_id, "s", 0))],
            "a.ok",
        );
        let tb = commit_task(
            &store,
            &b,
            vec![Change::Item(item(&b.run_id, "s", 0))],
            "b.stale",
        );
        // c writes an item, then an evidence record whose id is taken: refused by the
        // database after a write.
        let tc = commit_task(
            &store,
            &c,
            vec![
                Change::Item(item(&c.run_id, "s", 0)),
                Change::Evidence(evidence(&c.run_id, "01EVIDENCE-TAKEN")),
            ],
            "c.bad",
        );
        let td = commit_task(
            &store,
            &d,
            vec![Change::Item(item(&d.run_id, "s", 0))],
            "d.ok",
        );
        submitted(&store, before.submitted + 4).await;
        drop(busy);
        ta.await.expect("a").expect("a commits");
        let eb = tb.await.expect("b").expect_err("b is fenced");
        assert!(
            matches!(eb, StoreError::LeaseLost(ref r) if r == &b.run_id),
            "{eb}"
        );
        let ec = tc.await.expect("c").expect_err("c is refused");
        assert!(matches!(ec, StoreError::Database(_)), "{ec}");
        td.await.expect("d").expect("d commits");

        let after = store.write_stats();
        assert_eq!(after.transactions - before.transactions, 1, "one batch");
        assert_eq!(after.requests - before.requests, 4);
        assert_eq!(store.items(&a.run_id).await.expect("a").len(), 1);
        assert_eq!(store.items(&d.run_id).await.expect("d").len(), 1);
        assert!(store.items(&b.run_id).await.expect("b").is_empty());
        assert!(
            store.items(&c.run_id).await.expect("c").is_empty(),
            "c's first write was rolled back to its savepoint"
        );
        let events = store.audit_events(None).await.expect("events");
        // In the order the requests reached the writer, which the spawned tasks decide.
        let mut new: Vec<&str> = events[events_before..]
            .iter()
            .map(|e| e.action.as_str())
            .collect();
        new.sort();
        assert_eq!(new, ["a.ok", "d.ok"], "only the committed requests' events");
        assert_chain_intact(&store).await;
    }

    /// Whether a savepoint named `request` is still open on `conn`.
    async fn savepoint_open(conn: &mut sqlx::SqliteConnection) -> bool {
        match sqlx::query("RELEASE request").execute(&mut *conn).await {
            Ok(_) => true,
            Err(e) => {
                assert!(e.to_string().contains("no such savepoint"), "{e}");
                false
            }
        }
    }

    /// Every request of a batch leaves no savepoint open behind it, whether it was kept,
    /// undone as a repeated delivery, or refused by the database: savepoints left open
    /// until COMMIT made every later statement of the batch journal and truncate more.
    #[tokio::test]
    async fn requests_in_a_batch_leave_no_savepoint_open() {
        use super::super::DedupKey;
        use super::{apply, Op};
        use sqlx::Connection;

        let (_dir, store) = temp_store().await;
        let lease = leased_run(&store, "01SAVEA0000000000000000000").await;
        let key = |k: &str| DedupKey {
            hook: "alerts".into(),
            kind: "webhook-id".into(),
            key: k.into(),
        };
        let once = |id: &str, k: &str| Op::CreateRunOnce {
            run: run(id, None, "2026-11-25T23:00:00.000Z"),
            audit: draft(Some(id), "run.created", json!({})),
            keys: vec![key(k)],
            remember_since: "2026-11-01T00:00:00.000Z".into(),
        };
        let mut conn = store.write.acquire().await.expect("write connection");
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.expect("begin");
        let mut leases = crate::store::queue::Leases::new();
        leases.insert(
            lease.run_id.clone(),
            (Some(lease.owner.clone()), lease.token),
        );

        let first = apply(
            &mut tx,
            &once("01SAVEB0000000000000000000", "d-1"),
            &mut leases,
            true,
        )
        .await
        .expect("created");
        assert!(first.keep);
        assert!(!savepoint_open(&mut tx).await, "kept: released");

        let repeat = apply(
            &mut tx,
            &once("01SAVEC0000000000000000000", "d-1"),
            &mut leases,
            true,
        )
        .await
        .expect("a repeat");
        assert!(!repeat.keep);
        assert!(!savepoint_open(&mut tx).await, "undone: released");

        let commit = Op::Commit {
            lease: lease.clone(),
            changes: vec![Change::Item(item(&lease.run_id, "s", 0))],
            audit: vec![],
        };
        assert!(
            apply(&mut tx, &commit, &mut leases, true)
                .await
                .expect("committed")
                .keep
        );
        assert!(!savepoint_open(&mut tx).await, "a commit: released");

        let refused = Op::Commit {
            lease: lease.clone(),
            changes: vec![
                Change::Item(item(&lease.run_id, "t", 0)),
                Change::Evidence(evidence(&lease.run_id, "01EVID0000000000000000000A")),
                Change::Evidence(evidence(&lease.run_id, "01EVID0000000000000000000A")),
            ],
            audit: vec![],
        };
        let e = apply(&mut tx, &refused, &mut leases, true)
            .await
            .err()
            .expect("a taken evidence id is refused");
        assert!(matches!(e, StoreError::Database(_)), "{e}");
        assert!(
            !savepoint_open(&mut tx).await,
            "refused: rolled back and released"
        );

        // What was kept is still there, what was undone is not.
        tx.commit().await.expect("commit");
        drop(conn);
        assert!(store
            .get_run("01SAVEB0000000000000000000")
            .await
            .expect("read")
            .is_some());
        assert!(store
            .get_run("01SAVEC0000000000000000000")
            .await
            .expect("read")
            .is_none());
        let items = store.items(&lease.run_id).await.expect("items");
        assert_eq!(
            items.iter().map(|i| i.step_id.as_str()).collect::<Vec<_>>(),
            ["s"]
        );
    }

    const CHILD_ENV: &str = "CORDON_TEST_GROUP_COMMIT_CRASH_DB";

    /// The child process: commits ten requests (printing each answer), then stalls inside
    /// the COMMIT of a batch of ten more until it is killed.
    async fn crash_child(path: &str) {
        let store = SqliteStore::open(path).await.expect("open");
        let lease = leased_run(&store, "01CRASH0000000000000000000").await;
        let mut first = Vec::new();
        for n in 0..10 {
            let it = item(&lease.run_id, "first", n);
            first.push((
                n,
                commit_task(&store, &lease, vec![Change::Item(it)], "first"),
            ));
        }
        for (n, t) in first {
            t.await.expect("task").expect("commit");
            println!("ANSWERED first/{n}");
        }
        store.writer.set_before_commit(Some(Arc::new(|n: usize| {
            println!("COMMITTING {n}");
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        })));
        let before = store.write_stats().submitted;
        let busy = store.write.acquire().await.expect("write connection");
        let mut second = Vec::new();
        for n in 0..10 {
            let it = item(&lease.run_id, "second", n);
            second.push((
                n,
                commit_task(&store, &lease, vec![Change::Item(it)], "second"),
            ));
        }
        submitted(&store, before + 10).await;
        drop(busy);
        for (n, t) in second {
            if t.await.expect("task").is_ok() {
                println!("ANSWERED second/{n}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_mid_batch_loses_only_unanswered_requests() {
        if let Ok(path) = std::env::var(CHILD_ENV) {
            return crash_child(&path).await;
        }
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("crash.db").to_string_lossy().into_owned();
        let name = format!(
            "{}::a_crash_mid_batch_loses_only_unanswered_requests",
            module_path!().split_once("::").map_or("", |(_, rest)| rest)
        );
        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                name.as_str(),
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("child");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut answered = Vec::new();
        let mut stalled = None;
        for line in out.lines() {
            let line = line.expect("line");
            // The harness may print `test … ... ` on the same line, before the first one.
            if let Some(what) = line.split("ANSWERED ").nth(1) {
                answered.push(what.trim().to_string());
            } else if let Some(n) = line.split("COMMITTING ").nth(1) {
                stalled = n.trim().parse::<usize>().ok();
                break;
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        assert_eq!(stalled, Some(10), "the ten second commits formed one batch");
        assert_eq!(answered.len(), 10, "{answered:?}");
        assert!(answered.iter().all(|a| a.starts_with("first/")));

        let store = SqliteStore::open(&path).await.expect("reopen");
        let items = store
            .items("01CRASH0000000000000000000")
            .await
            .expect("items");
        let kept: Vec<String> = items
            .iter()
            .map(|i| format!("{}/{}", i.step_id, i.idx))
            .collect();
        let mut want = answered.clone();
        want.sort();
        let mut got = kept.clone();
        got.sort();
        assert_eq!(
            got, want,
            "every answered request survived, nothing else did"
        );
        let events = store.audit_events(None).await.expect("events");
        assert!(events.iter().all(|e| e.action != "second"));
        assert_eq!(events.iter().filter(|e| e.action == "first").count(), 10);
        assert_chain_intact(&store).await;
    }
}
