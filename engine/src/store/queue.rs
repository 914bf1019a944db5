//! The queue in front of a store's group-commit writer task (`sqlite/writer.rs`,
//! `postgres/writer.rs`): callers hand a request over and wait for its answer, which the
//! writer sends only after the transaction holding the request committed. The task is
//! started on first use (SQLite's on a thread of its own, [`spawn_writer`]; PostgreSQL's
//! in the caller's runtime), and again if it ended (PostgreSQL's when the runtime it ran
//! in went away: a store kept across runtimes in tests).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{Change, Lease, Result, StoreError};

/// Each run's lease (owner, fencing token) as a writer's batch sees it: read (PostgreSQL:
/// locked) once per batch and kept up to date by the batch's own lease requests, so a
/// commit's fencing check costs no statement. A run absent from the map does not exist.
pub(crate) type Leases = std::collections::HashMap<String, (Option<String>, i64)>;

/// The fencing check of a request under `lease`.
pub(crate) fn holds(leases: &Leases, lease: &Lease) -> Result<()> {
    match leases.get(&lease.run_id) {
        None => Err(StoreError::RunNotFound(lease.run_id.clone())),
        Some((Some(owner), token)) if *owner == lease.owner && *token == lease.token => Ok(()),
        Some(_) => Err(StoreError::LeaseLost(lease.run_id.clone())),
    }
}

/// Note a committed request under `lease`: if it gave the lease up, the batch's later
/// requests under that lease are fenced off.
pub(crate) fn committed(leases: &mut Leases, lease: &Lease, changes: &[Change]) {
    if changes.iter().any(|c| matches!(c, Change::ReleaseLease)) {
        leases.insert(lease.run_id.clone(), (None, lease.token));
    }
}

/// Start a writer task on a thread of its own, with a single-threaded runtime.
///
/// Every durable step waits for the writer, and a batch is several statements, each one a
/// wake-up of the task. On the service's runtime, each of those wake-ups would queue behind
/// the HTTP and run tasks that are runnable at that moment; on its own thread the writer
/// goes on as soon as the database answers. If the runtime or the thread cannot be had, the
/// task (and its receiver) is dropped: [`Queue::submit`] finds the channel closed, tries to
/// start another once, and then answers its caller with an error.
pub(crate) fn spawn_writer<F>(name: &str, task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let started = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| {
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || rt.block_on(task))
        });
    if let Err(e) = started {
        tracing::error!(error = %e, writer = name, "cannot start the writer's thread");
    }
}

/// One caller's request and where its answer goes.
pub(crate) struct Request<Op, A> {
    pub op: Op,
    pub reply: oneshot::Sender<Result<A>>,
}

/// Counters of a writer: how many requests, in how many committed transactions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// Requests handed to the writer.
    pub submitted: u64,
    /// Requests answered after a COMMIT (including those refused inside their savepoint).
    pub requests: u64,
    /// Transactions committed by the writer.
    pub transactions: u64,
    /// Of those, how many were one statement outside an explicit transaction (PostgreSQL,
    /// when the writer could assume the audit head and each run's lease; never on SQLite).
    pub single_statement: u64,
}

/// What the writer task counts as it goes.
#[derive(Default)]
pub(crate) struct Counters {
    pub submitted: AtomicU64,
    pub requests: AtomicU64,
    pub transactions: AtomicU64,
    pub single_statement: AtomicU64,
}

/// The sending side every clone of a store shares.
pub(crate) struct Queue<Op, A> {
    sender: Mutex<Option<mpsc::UnboundedSender<Request<Op, A>>>>,
    pub counters: Arc<Counters>,
}

impl<Op, A> Default for Queue<Op, A> {
    fn default() -> Self {
        Queue {
            sender: Mutex::new(None),
            counters: Arc::default(),
        }
    }
}

impl<Op, A> Queue<Op, A> {
    pub fn stats(&self) -> WriteStats {
        let c = &self.counters;
        WriteStats {
            submitted: c.submitted.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            transactions: c.transactions.load(Ordering::Relaxed),
            single_statement: c.single_statement.load(Ordering::Relaxed),
        }
    }

    /// Let the writer task end once it has answered what is queued.
    pub fn stop(&self) {
        if let Ok(mut s) = self.sender.lock() {
            *s = None;
        }
    }

    /// The sender to a live writer task, starting one with `start` if there is none.
    fn sender(
        &self,
        start: &impl Fn(mpsc::UnboundedReceiver<Request<Op, A>>),
    ) -> Option<mpsc::UnboundedSender<Request<Op, A>>> {
        let mut slot = self.sender.lock().ok()?;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Some(s.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        start(rx);
        *slot = Some(tx.clone());
        Some(tx)
    }

    /// Hand `op` to the writer (started by `start` when none runs) and wait until the
    /// transaction holding it committed.
    pub async fn submit(
        &self,
        op: Op,
        start: impl Fn(mpsc::UnboundedReceiver<Request<Op, A>>),
    ) -> Result<A> {
        let (reply, answer) = oneshot::channel();
        let mut request = Request { op, reply };
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        // A closed channel means the task's runtime is gone: start another and try again.
        for _ in 0..2 {
            let Some(sender) = self.sender(&start) else {
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
                    self.stop();
                }
            }
        }
        Err(StoreError::Database(sqlx::Error::WorkerCrashed))
    }
}
