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
//! 2. applies each request: a request whose fencing check fails writes nothing and is
//!    answered `LeaseLost`. The others run without savepoints first (a savepoint is a round
//!    trip per request), and their step, item and run-row changes are gathered into one
//!    multi-row statement per table for the whole batch ([`Gathered`]); if the database
//!    refuses a statement, the batch is rolled back and applied again, one statement per
//!    change and each request behind its own `SAVEPOINT`,
//!    where the refused request is rolled back to its savepoint and answered with its own
//!    error, and the others go on;
//! 3. locks `audit_head` once (after the rows are written: other nodes' batches queue on
//!    it), seals the audit events of every kept request onto the chain in request order,
//!    stores them and moves the head in one statement;
//! 4. COMMITs (one WAL flush for the whole batch), and only then answers every waiter.
//!
//! When this writer alone appends to the audit chain (its last look at the head, under the
//! head's lock, found it where this writer had left it), a batch whose requests can all be
//! gathered skips the transaction: its rows, its events and the head's move are one
//! statement ([`try_unlocked`]), which locks the run rows and checks each fencing token,
//! then moves the head only if it is still where this writer left it, and writes nothing
//! otherwise. The statement is its own transaction, so nothing of it is visible before it
//! committed. If another writer moved the head (another node, a CLI process), nothing was
//! written, the batch takes the locking path above, and so do the next ones until the head
//! is found where this writer left it again; several busy nodes therefore stay on the
//! locking path. A lone step commit is then one round trip instead of six.
//!
//! The writer has a pool of its own (see [`super::PgStore::open`]) and keeps the
//! connection of its last batch while batches follow each other closely, saving the pool's
//! ping on each.
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

use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor, PgPool, Postgres};
use tokio::sync::mpsc;

use super::{
    append_events, apply, insert_run, write_locked, Fence, Gathered, Lease, Result, Sealed,
    StoreError,
};
use crate::store::queue::{committed, holds, Counters, Leases, Queue, WriteStats};
use crate::store::{AuditDraft, AuditHead, Change, RunRecord};

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
    CreateRun {
        run: Box<RunRecord>,
        audit: AuditDraft,
    },
    ReleaseLease {
        lease: Lease,
    },
    AppendAudit {
        audit: Vec<AuditDraft>,
    },
}

impl Op {
    /// The lease the request is made under (its run's row is locked).
    fn lease(&self) -> Option<&Lease> {
        match self {
            Op::Commit { lease, .. } | Op::ReleaseLease { lease } => Some(lease),
            Op::CreateRun { .. } | Op::AppendAudit { .. } => None,
        }
    }

    /// The existing run whose row the request locks.
    fn run_id(&self) -> Option<&str> {
        self.lease().map(|l| l.run_id.as_str())
    }

    /// Whether the request can be part of a gathered batch (see [`Gathered`]).
    fn gatherable(&self) -> bool {
        match self {
            Op::Commit { changes, .. } => Gathered::takes(changes),
            Op::CreateRun { .. } | Op::ReleaseLease { .. } | Op::AppendAudit { .. } => true,
        }
    }
}

type Request = crate::store::queue::Request<Op, ()>;

struct Shared {
    counters: Arc<Counters>,
    /// Held by a test to keep the writer from starting a batch.
    #[cfg(test)]
    hold: tokio::sync::Mutex<()>,
}

/// The handle every clone of a store shares.
pub(super) struct Writer {
    queue: Queue<Op, ()>,
    shared: Arc<Shared>,
}

impl Default for Writer {
    fn default() -> Self {
        let queue = Queue::default();
        let shared = Arc::new(Shared {
            counters: queue.counters.clone(),
            #[cfg(test)]
            hold: tokio::sync::Mutex::new(()),
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

    /// While the guard lives the writer starts no batch (requests queue up).
    #[cfg(test)]
    pub(super) async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.shared.hold.lock().await
    }

    /// Let the writer task end once it has answered what is queued.
    pub(super) fn stop(&self) {
        self.queue.stop();
    }

    /// Hand `op` to the writer and wait until the transaction holding it committed.
    pub(super) async fn submit(&self, pool: &PgPool, op: Op) -> Result<()> {
        self.queue
            .submit(op, |rx| {
                tokio::spawn(run(pool.clone(), rx, self.shared.clone()));
            })
            .await
    }
}

/// The writer task: batch, apply, commit, answer; until every sender is gone.
async fn run(pool: PgPool, mut rx: mpsc::UnboundedReceiver<Request>, shared: Arc<Shared>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    let mut state = State::default();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        #[cfg(test)]
        drop(shared.hold.lock().await);
        process(&pool, &mut rx, &mut batch, &shared, &mut state).await;
        batch.clear();
    }
}

/// A connection used this recently is used again without the pool's ping (a round trip
/// on every acquisition). Under load the writer keeps its connection from batch to batch;
/// after a pause it goes back to the pool, whose ping then finds out a connection the
/// server dropped meanwhile.
const KEEP_CONNECTION: Duration = Duration::from_millis(250);

/// What the writer carries from one batch to the next.
#[derive(Default)]
struct State {
    /// The connection of the last batch, and when that batch ended.
    conn: Option<(PoolConnection<Postgres>, Instant)>,
    /// Where this writer left the audit head with its last committed batch.
    head: Option<AuditHead>,
    /// Whether the last look at the head (under its lock) found it where this writer had
    /// left it: no other writer appends in between, so the next batch may assume the head
    /// and skip the transaction (see [`try_unlocked`]). Several busy nodes make this false
    /// and keep each other's batches on the locking path.
    head_is_ours: bool,
}

/// Why a batch did not commit.
enum BatchError {
    /// The connection failed (or could not be had): the outcome of the whole batch is
    /// known only to the server, and every waiter is told so.
    Connection(sqlx::Error),
    /// The database refused the batch as a whole (sealing the events, COMMIT): it was
    /// rolled back, and its requests can be tried one by one.
    Refused(StoreError),
    /// Applied without savepoints, a request's statement failed: the batch was rolled
    /// back, to be applied again with a savepoint per request.
    Retry,
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
    state: &mut State,
) {
    let mut conn = match state.conn.take() {
        Some((conn, at)) if at.elapsed() < KEEP_CONNECTION => conn,
        _ => match pool.acquire().await {
            Ok(c) => c,
            Err(e) => return fail_all(batch, e),
        },
    };
    // Requests that arrived while a connection was being had join this batch.
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
    let ops: Vec<&Op> = batch.iter().map(|r| &r.op).collect();
    let mut first = match try_unlocked(&mut conn, &ops, shared, state).await {
        Ok(Some(outcomes)) => Ok(outcomes),
        Ok(None) => try_batch(&mut conn, &ops, shared, false, state).await,
        Err(e) => Err(e),
    };
    if matches!(first, Err(BatchError::Retry)) {
        first = try_batch(&mut conn, &ops, shared, true, state).await;
    }
    let outcomes = match first {
        Ok(outcomes) => outcomes,
        Err(BatchError::Retry) => {
            return fail_each(batch, "the PostgreSQL writer could not apply a batch");
        }
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
                match try_batch(&mut conn, &[*op], shared, true, state).await {
                    Ok(mut v) => alone.push(v.pop().unwrap_or_else(|| {
                        Err(StoreError::Corrupt(
                            "the PostgreSQL writer lost an answer".into(),
                        ))
                    })),
                    Err(BatchError::Refused(e)) => alone.push(Err(e)),
                    Err(BatchError::Retry) => alone.push(Err(StoreError::Corrupt(
                        "the PostgreSQL writer could not apply a request".into(),
                    ))),
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
    state.conn = Some((conn, Instant::now()));
    answer(batch, outcomes);
}

/// Answer each request with its outcome (a caller that stopped waiting does not mind).
fn answer(batch: &mut Vec<Request>, outcomes: Vec<Result<()>>) {
    for (request, outcome) in batch.drain(..).zip(outcomes) {
        let _ = request.reply.send(outcome);
    }
}

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

/// The batch as one statement, without a transaction around it (one round trip instead of
/// BEGIN, lock, write, COMMIT): when every request can be gathered, each run's requests
/// hold one lease, and the head is where this writer left it (or the batch has no events).
/// The statement checks all of that under the rows' and the head's locks ([`WRITE`]) and
/// writes nothing if any of it is no longer so; `None` then, and the batch takes the
/// locking path ([`try_batch`]), which answers each request as it deserves.
///
/// [`WRITE`]: super::WRITE
async fn try_unlocked(
    conn: &mut PgConnection,
    ops: &[&Op],
    shared: &Shared,
    state: &mut State,
) -> std::result::Result<Option<Vec<Result<()>>>, BatchError> {
    if ops
        .iter()
        .any(|op| matches!(op, Op::CreateRun { .. }) || !op.gatherable())
    {
        return Ok(None);
    }
    // The fence, and the leases the locking path would read if each run still had the one
    // its requests hold: the batch is gathered from those.
    let mut fence = Fence::default();
    let mut leases = Leases::new();
    for lease in ops.iter().filter_map(|op| op.lease()) {
        let held = (Some(lease.owner.clone()), lease.token);
        match leases.insert(lease.run_id.clone(), held.clone()) {
            None => fence.expect(lease),
            Some(before) if before == held => {}
            // Two leases on one run: the locking path tells which one is stale.
            Some(_) => return Ok(None),
        }
    }
    let mut gathered = Gathered::default();
    let mut audit = Vec::new();
    for op in ops {
        match gather_one(op, &mut leases, &mut gathered) {
            Ok(events) => audit.extend(events),
            Err(_) => return Ok(None),
        }
    }
    let sealed = if audit.is_empty() {
        None
    } else {
        match &state.head {
            Some(head) if state.head_is_ours => Some(Sealed::new(head.clone(), audit)?),
            _ => return Ok(None),
        }
    };
    let written = match gathered.write(conn, &fence, sealed.as_ref()).await {
        Ok(w) => w,
        Err(StoreError::Database(e)) if is_connection(&e) => return Err(BatchError::Connection(e)),
        // Refused as a whole: the locking path finds out which request it was.
        Err(_) => return Ok(None),
    };
    if !written.written {
        if written.fenced == fence.len() {
            // Another writer moved the head: take the lock until it is ours again.
            state.head_is_ours = false;
        }
        return Ok(None);
    }
    if let Some(sealed) = sealed {
        state.head = Some(sealed.to);
    }
    let c = &shared.counters;
    c.transactions.fetch_add(1, Ordering::Relaxed);
    c.single_statement.fetch_add(1, Ordering::Relaxed);
    c.requests.fetch_add(ops.len() as u64, Ordering::Relaxed);
    Ok(Some(ops.iter().map(|_| Ok(())).collect()))
}

/// Apply `ops` in one transaction; each request's outcome once it committed. Without
/// `savepoints`, a batch whose requests all apply costs no savepoint round trips; the first
/// request refused by the database makes it [`BatchError::Retry`] with them.
async fn try_batch(
    conn: &mut PgConnection,
    ops: &[&Op],
    shared: &Shared,
    savepoints: bool,
    state: &mut State,
) -> Outcomes {
    let mut tx = conn.begin().await?;
    let mut leases = lock_runs(&mut tx, ops).await?;
    let grouped = ops.len() > 1;
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut audit = Vec::new();
    // Without savepoints, the rows of every commit are written together after the loop
    // (when every commit of the batch consists of such rows): one statement per table, for
    // a lone commit's rows as for a batch's.
    let mut gathered =
        (!savepoints && ops.iter().all(|op| op.gatherable())).then(Gathered::default);
    for op in ops {
        let applied = match gathered.as_mut() {
            // A new run is inserted at once: no gathered row can be of it (it has no lease).
            Some(g) if !matches!(op, Op::CreateRun { .. }) => gather_one(op, &mut leases, g),
            _ => apply_one(&mut tx, op, &mut leases, grouped && savepoints).await,
        };
        match applied {
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
            // Fenced off before any statement of its own: nothing to undo.
            Err(e @ (StoreError::LeaseLost(_) | StoreError::RunNotFound(_))) => {
                outcomes.push(Err(e));
            }
            Err(_) if !savepoints => {
                tx.rollback().await?;
                return Err(BatchError::Retry);
            }
            Err(e) => outcomes.push(Err(e)),
        }
    }
    // The gathered rows in one statement, then the events and the head's move in another:
    // the head's lock is taken last and held only for that statement and COMMIT (other
    // nodes' batches queue on it, so holding it while the rows are written would cost
    // every node's throughput).
    if let Some(g) = gathered.filter(|g| !g.is_empty()) {
        if let Err(e) = write_locked(&mut tx, g, None).await {
            if matches!(&e, StoreError::Database(d) if is_connection(d)) {
                return Err(e.into());
            }
            tx.rollback().await?;
            return Err(BatchError::Retry);
        }
    }
    let sealed = append_events(&mut tx, audit).await?;
    if let Some(sealed) = &sealed {
        state.head_is_ours = state.head.as_ref() == Some(&sealed.from);
    }
    tx.commit().await?;
    if let Some(sealed) = sealed {
        state.head = Some(sealed.to);
    }
    let c = &shared.counters;
    c.transactions.fetch_add(1, Ordering::Relaxed);
    c.requests.fetch_add(ops.len() as u64, Ordering::Relaxed);
    Ok(outcomes)
}

/// Take one request of a gathered batch: check its fencing and gather its rows (written
/// after the loop); its audit events to seal if it is kept.
fn gather_one<'a>(
    op: &'a Op,
    leases: &mut Leases,
    gathered: &mut Gathered<'a>,
) -> Result<Vec<AuditDraft>> {
    match op {
        Op::Commit {
            lease,
            changes,
            audit,
        } => {
            holds(leases, lease)?;
            gathered.add(lease, changes)?;
            committed(leases, lease, changes);
            Ok(audit.clone())
        }
        Op::ReleaseLease { lease } => {
            if holds(leases, lease).is_ok() {
                gathered.add(lease, std::slice::from_ref(&RELEASE))?;
                leases.insert(lease.run_id.clone(), (None, lease.token));
            }
            Ok(Vec::new())
        }
        Op::AppendAudit { audit } => Ok(audit.clone()),
        Op::CreateRun { .. } => Err(StoreError::Corrupt(
            "the PostgreSQL writer tried to gather a run creation".into(),
        )),
    }
}

static RELEASE: Change = Change::ReleaseLease;

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
            committed(leases, lease, changes);
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
        if let Err(e) = conn.execute("ROLLBACK TO SAVEPOINT request").await {
            return Err(StoreError::Database(sqlx::Error::Io(
                std::io::Error::other(format!(
                    "cannot roll a request back to its savepoint ({e}) after: {error}"
                )),
            )));
        }
    }
    Err(error)
}

/// Answer every request with one error.
fn fail_each(batch: &mut Vec<Request>, text: &str) {
    for request in batch.drain(..) {
        let _ = request
            .reply
            .send(Err(StoreError::Corrupt(text.to_owned())));
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::super::testing::TestSchema;
    use super::super::PgStore;
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

    async fn fresh() -> Option<(TestSchema, PgStore)> {
        let schema = TestSchema::create().await?;
        let store = PgStore::open(&schema.url).await.expect("open");
        Some((schema, store))
    }

    async fn leased_run(store: &PgStore, id: &str) -> Lease {
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

    /// Wait until `n` requests in all were handed to the writer.
    async fn submitted(store: &PgStore, n: u64) {
        for _ in 0..2000 {
            if store.write_stats().submitted >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("only {:?} requests reached the writer", store.write_stats());
    }

    fn commit_task(
        store: &PgStore,
        lease: &Lease,
        changes: Vec<Change>,
        action: &str,
    ) -> tokio::task::JoinHandle<Result<(), StoreError>> {
        let store = store.clone();
        let lease = lease.clone();
        let event = draft(Some(&lease.run_id), action, json!({}));
        tokio::spawn(async move { store.commit(&lease, changes, vec![event]).await })
    }

    /// Commit one item and one event under `lease`; how many of the writer's transactions
    /// it took, and how many of those were one statement.
    async fn commit_one(store: &PgStore, lease: &Lease, idx: u32) -> (u64, u64) {
        let before = store.write_stats();
        store
            .commit(
                lease,
                vec![Change::Item(item(&lease.run_id, "s", idx))],
                vec![draft(Some(&lease.run_id), "step", json!({"idx": idx}))],
            )
            .await
            .expect("commit");
        let after = store.write_stats();
        (
            after.transactions - before.transactions,
            after.single_statement - before.single_statement,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_lone_writer_commits_in_one_statement_and_locks_when_it_must() {
        let Some((schema, store)) = fresh().await else {
            return;
        };
        let a = leased_run(&store, "01ONESTATEMENT000000000000").await;
        // Once the writer has found the head where it left it, a commit is one statement.
        commit_one(&store, &a, 0).await;
        for idx in 1..4 {
            assert_eq!(commit_one(&store, &a, idx).await, (1, 1), "commit {idx}");
        }

        // Another node appends: the statement finds the head moved and writes nothing; the
        // locking path commits. The next commit locks too and finds the head as it left
        // it; the one after is one statement again.
        let other = PgStore::open(&schema.url).await.expect("open other");
        other
            .append_audit(vec![draft(None, "config.loaded", json!({}))])
            .await
            .expect("append");
        assert_eq!(commit_one(&store, &a, 4).await, (1, 0));
        assert_eq!(commit_one(&store, &a, 5).await, (1, 0));
        assert_eq!(commit_one(&store, &a, 6).await, (1, 1));
        assert_eq!(store.items(&a.run_id).await.expect("items").len(), 7);
        assert_chain_intact(&store).await;

        // Another node takes the lease over (and appends no event, so only the fence can
        // stop the stale holder): its statement writes nothing, and the locking path tells
        // it the lease is lost.
        let events_before = store.audit_events(None).await.expect("events").len();
        let taken = other
            .acquire_lease(&a.run_id, "node-b/2/y", 60_000, Some(&a.owner))
            .await
            .expect("steal")
            .expect("taken");
        let stale = store
            .commit(
                &a,
                vec![Change::Item(item(&a.run_id, "s", 7))],
                vec![draft(Some(&a.run_id), "stale", json!({}))],
            )
            .await;
        assert!(
            matches!(stale, Err(StoreError::LeaseLost(ref r)) if r == &a.run_id),
            "{stale:?}"
        );
        assert_eq!(store.items(&a.run_id).await.expect("items").len(), 7);
        assert_eq!(
            store.audit_events(None).await.expect("events").len(),
            events_before
        );
        // The new holder commits.
        commit_one(&other, &taken, 7).await;
        assert_eq!(store.items(&a.run_id).await.expect("items").len(), 8);
        assert_chain_intact(&store).await;
        other.close().await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_commits_share_one_transaction_and_one_chain() {
        let Some((_schema, store)) = fresh().await else {
            return;
        };
        let mut leases = Vec::new();
        for r in 0..8 {
            leases.push(leased_run(&store, &format!("01GROUP{r:019}")).await);
        }
        let before = store.write_stats();
        // While the writer is held, 64 commits from 8 runs queue up.
        let hold = store.writer.hold().await;
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
        drop(hold);
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

        // Unheld and concurrent: fewer transactions than requests, one chain.
        let before = store.write_stats();
        let mut tasks = Vec::new();
        for n in 0..256u32 {
            let lease = &leases[n as usize % 8];
            let it = item(&lease.run_id, "later", n / 8);
            tasks.push(commit_task(&store, lease, vec![Change::Item(it)], "later"));
        }
        for t in tasks {
            t.await.expect("task").expect("commit");
        }
        let after = store.write_stats();
        assert_eq!(after.requests - before.requests, 256);
        assert!(
            after.transactions - before.transactions < 256,
            "{before:?} → {after:?}"
        );
        assert_eq!(
            store.audit_events(None).await.expect("events").len(),
            8 + 64 + 256
        );
        assert_chain_intact(&store).await;
        store.close().await;
    }

    /// Commits queued in this order while the writer is held, so they share one batch.
    async fn queued_in_order(
        store: &PgStore,
        commits: Vec<(Lease, Vec<Change>)>,
    ) -> Vec<tokio::task::JoinHandle<Result<(), StoreError>>> {
        let mut tasks = Vec::new();
        for (lease, changes) in commits {
            let n = store.write_stats().submitted;
            tasks.push(commit_task(store, &lease, changes, "step.succeeded"));
            submitted(store, n + 1).await;
        }
        tasks
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_gathered_batch_writes_what_its_commits_in_order_would() {
        let Some((_schema, store)) = fresh().await else {
            return;
        };
        let a = leased_run(&store, "01GATHERA00000000000000000").await;
        let b = leased_run(&store, "01GATHERB00000000000000000").await;
        let before = store.write_stats();
        let hold = store.writer.hold().await;
        let tasks = queued_in_order(&store, gathered_commits(&a, &b)).await;
        drop(hold);
        for t in tasks {
            t.await.expect("task").expect("commit");
        }
        let after = store.write_stats();
        assert_eq!(after.transactions - before.transactions, 1, "one batch");
        assert_gathered_outcome(&store, &a, &b).await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failing_request_in_a_batch_does_not_affect_the_others() {
        let Some((_schema, store)) = fresh().await else {
            return;
        };
        let a = leased_run(&store, "01FAILA0000000000000000000").await;
        let b = leased_run(&store, "01FAILB0000000000000000000").await;
        let c = leased_run(&store, "01FAILC0000000000000000000").await;
        let d = leased_run(&store, "01FAILD0000000000000000000").await;
        // b's lease is taken over by another node: b's holder is fenced off.
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

        let hold = store.writer.hold().await;
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
        // b's stale holder also releases: the new holder's lease stays.
        let store2 = store.clone();
        let b2 = b.clone();
        let te = tokio::spawn(async move { store2.release_lease(&b2).await });
        submitted(&store, before.submitted + 5).await;
        drop(hold);
        ta.await.expect("a").expect("a commits");
        let eb = tb.await.expect("b").expect_err("b is fenced");
        assert!(
            matches!(eb, StoreError::LeaseLost(ref r) if r == &b.run_id),
            "{eb}"
        );
        let ec = tc.await.expect("c").expect_err("c is refused");
        assert!(matches!(ec, StoreError::Database(_)), "{ec}");
        td.await.expect("d").expect("d commits");
        te.await.expect("e").expect("a lost lease releases quietly");

        let after = store.write_stats();
        assert_eq!(after.transactions - before.transactions, 1, "one batch");
        assert_eq!(after.requests - before.requests, 5);
        assert_eq!(store.items(&a.run_id).await.expect("a").len(), 1);
        assert_eq!(store.items(&d.run_id).await.expect("d").len(), 1);
        assert!(store.items(&b.run_id).await.expect("b").is_empty());
        assert!(
            store.items(&c.run_id).await.expect("c").is_empty(),
            "c's first write was rolled back to its savepoint"
        );
        let holder = store.lease_holder(&b.run_id).await.expect("holder");
        assert_eq!(holder.map(|h| h.owner).as_deref(), Some("node-b/2/y"));
        let events = store.audit_events(None).await.expect("events");
        let mut new: Vec<&str> = events[events_before..]
            .iter()
            .map(|e| e.action.as_str())
            .collect();
        new.sort();
        assert_eq!(new, ["a.ok", "d.ok"], "only the committed requests' events");
        assert_chain_intact(&store).await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_broken_connection_fails_every_waiter_of_its_batch() {
        let Some((schema, store)) = fresh().await else {
            return;
        };
        let a = leased_run(&store, "01CONNA0000000000000000000").await;
        let b = leased_run(&store, "01CONNB0000000000000000000").await;
        // A second pool locks a's row, so the next batch waits on it; then its session is
        // terminated by the server while it waits.
        let other = PgStore::open(&schema.url).await.expect("open other");
        let mut blocker = other.pool.begin().await.expect("begin");
        sqlx::query("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE")
            .bind(&a.run_id)
            .execute(&mut *blocker)
            .await
            .expect("lock a");
        let before = store.write_stats();
        let ta = commit_task(&store, &a, vec![], "a.event");
        let tb = commit_task(&store, &b, vec![], "b.event");
        submitted(&store, before.submitted + 2).await;
        // Kill the writer's session (the one waiting for the lock on a's row).
        let mut killed = 0;
        for _ in 0..200 {
            let done = sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock'
                   AND (query LIKE 'SELECT id, lease_owner%' OR query LIKE '%WITH fence AS%')
                   AND pid <> pg_backend_pid() AND datname = current_database()",
            )
            .fetch_all(&mut *blocker)
            .await
            .expect("terminate");
            killed = done.len();
            if killed > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(killed, 1, "the writer's session was waiting for the lock");
        let ea = ta.await.expect("a").expect_err("a fails");
        assert!(ea.is_unavailable(), "{ea}");
        // b was in the same batch (or the next one, which then commits).
        if let Err(e) = tb.await.expect("b") {
            assert!(e.is_unavailable(), "{e}");
        }
        blocker.rollback().await.expect("rollback");
        // Nothing of the failed batch is stored; the store goes on.
        assert!(store
            .audit_events(Some(&a.run_id))
            .await
            .expect("events")
            .iter()
            .all(|e| e.action != "a.event"));
        store
            .commit(
                &a,
                vec![],
                vec![draft(Some(&a.run_id), "a.again", json!({}))],
            )
            .await
            .expect("the next batch commits");
        assert_chain_intact(&store).await;
        other.close().await;
        store.close().await;
    }
}
