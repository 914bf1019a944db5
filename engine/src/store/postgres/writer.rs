//! Group commit on PostgreSQL: one writer task per store applies many callers' writes in
//! one transaction.
//!
//! Step commits, run creation (without a concurrency key), lease releases and audit appends
//! are handed to a single task per store (per node). It takes everything queued and, in one
//! transaction:
//!
//! 1. locks the row of every run the batch names, in id order, with one
//!    `SELECT … WHERE id = ANY($1) ORDER BY id FOR UPDATE`, and reads their lease owner and
//!    fencing token: each commit's fencing check is then a lookup, and no acquisition can
//!    slip in before COMMIT;
//! 2. applies each request behind its own `SAVEPOINT`: a request whose fencing check fails
//!    writes nothing and is answered `LeaseLost`; one whose statements fail is rolled back
//!    to its savepoint and answered with its own error; the others go on;
//! 3. locks `audit_head` once, seals the audit events of every kept request onto the chain
//!    in request order, stores them with a multi-row insert and moves the head in the same
//!    statement;
//! 4. COMMITs (one WAL flush for the whole batch), and only then answers every waiter.
//!
//! No caller learns that its change is durable before the COMMIT holding it returned, so
//! "durable before the next side effect" is unchanged. If the connection fails during a
//! batch, every waiter of that batch gets an error (the batch was rolled back by the
//! server, or its outcome is unknown, as with any failed commit); a database error of the
//! batch as a whole (sealing the events, COMMIT) is retried request by request, one
//! transaction each, so every caller gets its own outcome.
//!
//! Why batches of different nodes cannot deadlock: locks are always taken as "run rows,
//! then the audit head". A batch takes all its run rows in one statement in id order, so two
//! batches wanting overlapping rows queue instead of crossing; it takes the audit head last
//! and, holding it, waits for nothing but its own inserts and COMMIT. A run's row is only
//! committed to by the holder of its lease (a stale holder's request is refused after the
//! row's lock, and waits at most for the current holder's batch); claims use
//! `FOR UPDATE SKIP LOCKED` and never wait; the other writers of run rows (acquire, renew,
//! cancel, and `claim_runnable`) are single statements that lock one row, or take one row
//! and then the audit head, in the same order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor, PgPool};
use tokio::sync::{mpsc, oneshot};

use super::{append_events, apply, insert_run, Lease, Result, StoreError};
use crate::store::sqlite::WriteStats;
use crate::store::{AuditDraft, Change, RunRecord};

/// At most this many requests share one transaction (bounds the first waiter's delay).
const MAX_BATCH: usize = 512;

/// A write handed to the writer task.
pub(super) enum Op {
    Commit {
        lease: Lease,
        changes: Vec<Change>,
        audit: Vec<AuditDraft>,
    },
    /// A run without a concurrency key (a key needs the advisory lock: not grouped).
    CreateRun { run: RunRecord, audit: AuditDraft },
    ReleaseLease { lease: Lease },
    AppendAudit { audit: Vec<AuditDraft> },
}

impl Op {
    /// The existing run whose row the request locks.
    fn run_id(&self) -> Option<&str> {
        match self {
            Op::Commit { lease, .. } | Op::ReleaseLease { lease } => Some(&lease.run_id),
            Op::CreateRun { .. } | Op::AppendAudit { .. } => None,
        }
    }
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<()>>,
}

#[derive(Default)]
struct Counters {
    submitted: AtomicU64,
    requests: AtomicU64,
    transactions: AtomicU64,
}

#[derive(Default)]
struct Shared {
    counters: Counters,
    /// Held by a test to keep the writer from starting a batch.
    #[cfg(test)]
    hold: tokio::sync::Mutex<()>,
}

/// The handle every clone of a store shares.
#[derive(Default)]
pub(super) struct Writer {
    sender: Mutex<Option<mpsc::UnboundedSender<Request>>>,
    shared: Arc<Shared>,
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
        let c = &self.shared.counters;
        WriteStats {
            submitted: c.submitted.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            transactions: c.transactions.load(Ordering::Relaxed),
        }
    }

    /// While the guard lives the writer starts no batch (requests queue up).
    #[cfg(test)]
    pub(super) async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.shared.hold.lock().await
    }

    /// Let the writer task end once it has answered what is queued.
    pub(super) fn stop(&self) {
        if let Ok(mut s) = self.sender.lock() {
            *s = None;
        }
    }

    /// The sender to a live writer task, starting one if there is none.
    fn sender(&self, pool: &PgPool) -> Option<mpsc::UnboundedSender<Request>> {
        let mut slot = self.sender.lock().ok()?;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Some(s.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool.clone(), rx, self.shared.clone()));
        *slot = Some(tx.clone());
        Some(tx)
    }

    /// Hand `op` to the writer and wait until the transaction holding it committed.
    pub(super) async fn submit(&self, pool: &PgPool, op: Op) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let mut request = Request { op, reply };
        self.shared
            .counters
            .submitted
            .fetch_add(1, Ordering::Relaxed);
        // A closed channel means the task's runtime is gone: start another and try again.
        for _ in 0..2 {
            let Some(sender) = self.sender(pool) else {
                break;
            };
            match sender.send(request) {
                Ok(()) => {
                    return answer
                        .await
                        .map_err(|_| StoreError::Database(sqlx::Error::WorkerCrashed))?;
                }
                Err(mpsc::error::SendError(back)) => {
                    request = back;
                    if let Ok(mut s) = self.sender.lock() {
                        *s = None;
                    }
                }
            }
        }
        Err(StoreError::Database(sqlx::Error::WorkerCrashed))
    }
}

/// The writer task: batch, apply, commit, answer; until every sender is gone.
async fn run(pool: PgPool, mut rx: mpsc::UnboundedReceiver<Request>, shared: Arc<Shared>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        #[cfg(test)]
        drop(shared.hold.lock().await);
        process(&pool, &mut rx, &mut batch, &shared).await;
        batch.clear();
    }
}

/// Why a batch did not commit.
enum BatchError {
    /// The connection failed (or could not be had): the outcome of the whole batch is
    /// known only to the server, and every waiter is told so.
    Connection(sqlx::Error),
    /// The database refused the batch as a whole (sealing the events, COMMIT): it was
    /// rolled back, and its requests can be tried one by one.
    Refused(StoreError),
}

impl From<StoreError> for BatchError {
    fn from(e: StoreError) -> BatchError {
        match e {
            StoreError::Database(e) if is_connection(&e) => BatchError::Connection(e),
            other => BatchError::Refused(other),
        }
    }
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> BatchError {
        BatchError::from(StoreError::Database(e))
    }
}

/// An error after which the connection cannot be used (anything but the server refusing
/// a statement).
fn is_connection(e: &sqlx::Error) -> bool {
    !matches!(e, sqlx::Error::Database(_))
}

async fn process(
    pool: &PgPool,
    rx: &mut mpsc::UnboundedReceiver<Request>,
    batch: &mut Vec<Request>,
    shared: &Shared,
) {
    let mut conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => return fail_all(batch, e),
    };
    // Requests that arrived while a connection was being had join this batch.
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
    let ops: Vec<&Op> = batch.iter().map(|r| &r.op).collect();
    let outcomes = match try_batch(&mut conn, &ops, shared).await {
        Ok(outcomes) => outcomes,
        Err(BatchError::Connection(e)) => {
            // The connection is not returned to the pool for reuse.
            conn.close_on_drop();
            return fail_all(batch, e);
        }
        Err(BatchError::Refused(e)) if ops.len() == 1 => vec![Err(e)],
        Err(BatchError::Refused(e)) => {
            tracing::warn!(error = %e, requests = ops.len(),
                "a grouped PostgreSQL transaction failed; committing its requests one by one");
            let mut alone = Vec::with_capacity(ops.len());
            for (i, op) in ops.iter().enumerate() {
                match try_batch(&mut conn, &[*op], shared).await {
                    Ok(mut v) => alone.push(v.pop().unwrap_or_else(|| {
                        Err(StoreError::Corrupt(
                            "the PostgreSQL writer lost an answer".into(),
                        ))
                    })),
                    Err(BatchError::Refused(e)) => alone.push(Err(e)),
                    Err(BatchError::Connection(e)) => {
                        conn.close_on_drop();
                        let mut rest: Vec<Request> = batch.drain(i..).collect();
                        answer(batch, alone);
                        return fail_all(&mut rest, e);
                    }
                }
            }
            alone
        }
    };
    drop(conn);
    answer(batch, outcomes);
}

/// Answer each request with its outcome (a caller that stopped waiting does not mind).
fn answer(batch: &mut Vec<Request>, outcomes: Vec<Result<()>>) {
    for (request, outcome) in batch.drain(..).zip(outcomes) {
        let _ = request.reply.send(outcome);
    }
}

/// Each locked run's lease (owner, token) as this transaction sees it, kept up to date by
/// the batch's own releases. A run absent from the map does not exist.
type Leases = HashMap<String, (Option<String>, i64)>;

/// Lock the rows of every run the batch names, in id order, and read their leases.
async fn lock_runs(conn: &mut PgConnection, ops: &[&Op]) -> Result<Leases> {
    let mut ids: Vec<String> = ops
        .iter()
        .filter_map(|op| op.run_id())
        .map(str::to_owned)
        .collect();
    if ids.is_empty() {
        return Ok(Leases::new());
    }
    ids.sort_unstable();
    ids.dedup();
    let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT id, lease_owner, lease_token FROM runs WHERE id = ANY($1)
         ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, owner, token)| (id, (owner, token)))
        .collect())
}

type Outcomes = std::result::Result<Vec<Result<()>>, BatchError>;

/// Apply `ops` in one transaction; each request's outcome once it committed.
async fn try_batch(conn: &mut PgConnection, ops: &[&Op], shared: &Shared) -> Outcomes {
    let mut tx = conn.begin().await?;
    let mut leases = lock_runs(&mut tx, ops).await?;
    let grouped = ops.len() > 1;
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut audit = Vec::new();
    for op in ops {
        match apply_one(&mut tx, op, &mut leases, grouped).await {
            Ok(events) => {
                audit.extend(events);
                outcomes.push(Ok(()));
            }
            Err(StoreError::Database(e)) if is_connection(&e) => {
                return Err(BatchError::Connection(e));
            }
            Err(e) if !grouped => {
                // Alone: the transaction is the request's; nothing of it is kept.
                tx.rollback().await?;
                return Ok(vec![Err(e)]);
            }
            Err(e) => outcomes.push(Err(e)),
        }
    }
    append_events(&mut tx, audit).await?;
    tx.commit().await?;
    let c = &shared.counters;
    c.transactions.fetch_add(1, Ordering::Relaxed);
    c.requests.fetch_add(ops.len() as u64, Ordering::Relaxed);
    Ok(outcomes)
}

fn holds(leases: &Leases, lease: &Lease) -> Result<()> {
    match leases.get(&lease.run_id) {
        None => Err(StoreError::RunNotFound(lease.run_id.clone())),
        Some((Some(owner), token)) if *owner == lease.owner && *token == lease.token => Ok(()),
        Some(_) => Err(StoreError::LeaseLost(lease.run_id.clone())),
    }
}

/// Apply one request; its audit events to seal if it is kept. In a batch (`grouped`), a
/// request that writes opens its own savepoint first and rolls back to it when it fails.
async fn apply_one(
    conn: &mut PgConnection,
    op: &Op,
    leases: &mut Leases,
    grouped: bool,
) -> Result<Vec<AuditDraft>> {
    match op {
        Op::Commit {
            lease,
            changes,
            audit,
        } => {
            holds(leases, lease)?;
            if !changes.is_empty() {
                savepoint(conn, grouped).await?;
                if let Err(e) = apply_changes(conn, lease, changes).await {
                    return undo(conn, grouped, e).await;
                }
            }
            Ok(audit.clone())
        }
        Op::CreateRun { run, audit } => {
            savepoint(conn, grouped).await?;
            if let Err(e) = insert_run(conn, run).await {
                return undo(conn, grouped, e).await;
            }
            Ok(vec![audit.clone()])
        }
        Op::ReleaseLease { lease } => {
            // A lease already lost is already released: never touch the new holder's.
            if holds(leases, lease).is_ok() {
                savepoint(conn, grouped).await?;
                let done = sqlx::query(
                    "UPDATE runs SET lease_owner = NULL, lease_until = NULL
                     WHERE id = $1 AND lease_owner = $2 AND lease_token = $3",
                )
                .bind(&lease.run_id)
                .bind(&lease.owner)
                .bind(lease.token)
                .execute(&mut *conn)
                .await;
                if let Err(e) = done {
                    return undo(conn, grouped, e.into()).await;
                }
                leases.insert(lease.run_id.clone(), (None, lease.token));
            }
            Ok(Vec::new())
        }
        Op::AppendAudit { audit } => Ok(audit.clone()),
    }
}

async fn apply_changes(conn: &mut PgConnection, lease: &Lease, changes: &[Change]) -> Result<()> {
    for change in changes {
        apply(&mut *conn, lease, change).await?;
    }
    Ok(())
}

/// Open the request's savepoint when grouped (never released: COMMIT releases them all,
/// and `ROLLBACK TO` names the newest one of that name, which is this request's).
async fn savepoint(conn: &mut PgConnection, grouped: bool) -> Result<()> {
    if grouped {
        conn.execute("SAVEPOINT request").await?;
    }
    Ok(())
}

/// Undo a failed request back to its savepoint when grouped, and pass its error on. If
/// even that fails, the connection is unusable and the error says so.
async fn undo<T>(conn: &mut PgConnection, grouped: bool, error: StoreError) -> Result<T> {
    if grouped {
        if let Err(e) = conn.execute("ROLLBACK TO SAVEPOINT request").await
        {
            return Err(StoreError::Database(sqlx::Error::Io(
                std::io::Error::other(format!(
                    "cannot roll a request back to its savepoint ({e}) after: {error}"
                )),
            )));
        }
    }
    Err(error)
}

/// The batch could not be applied for want of a connection: every waiter learns why.
/// sqlx errors cannot be cloned, so the first waiter gets the original and the others a
/// connection error with its text (both count as "database unavailable").
fn fail_all(batch: &mut Vec<Request>, e: sqlx::Error) {
    let text = e.to_string();
    let mut first = Some(e);
    for request in batch.drain(..) {
        let err = match first.take() {
            Some(e) => e,
            None => sqlx::Error::Io(std::io::Error::other(format!(
                "the PostgreSQL write transaction failed: {text}"
            ))),
        };
        let _ = request.reply.send(Err(StoreError::Database(err)));
    }
}
