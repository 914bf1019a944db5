//! Durable state behind one trait.
//!
//! The executor talks only to [`Store`]; `sqlite.rs` (the embedded default) and
//! `postgres.rs` (several nodes on one database) implement it, each with its own migrations
//! folder under the same version numbers, and share their row types (`rows.rs`) and one
//! conformance suite (`conformance.rs`). Every state
//! change goes through [`Store::commit`], which checks the run's lease token (fencing) and
//! appends the audit events in the same transaction, so the trail and the state never
//! disagree. Timestamps are RFC 3339 UTC strings with millisecond precision
//! (`2026-11-25T23:57:58.123Z`), which sort as text.

pub mod postgres;
mod queue;
mod rows;
pub mod sqlite;

/// The backend-independent store test suite (run by each backend's tests).
#[cfg(test)]
pub(crate) mod conformance;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use cordon_connectors::EvidenceRecord;

/// Run states (`runbook-format.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "waiting" => RunStatus::Waiting,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            _ => return None,
        })
    }
    /// Queued, running or waiting: the run can still change.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RunStatus::Queued | RunStatus::Running | RunStatus::Waiting
        )
    }
}

/// Step (and step item) states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Pending,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Waiting => "waiting",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => StepStatus::Pending,
            "running" => StepStatus::Running,
            "waiting" => StepStatus::Waiting,
            "succeeded" => StepStatus::Succeeded,
            "failed" => StepStatus::Failed,
            "skipped" => StepStatus::Skipped,
            "cancelled" => StepStatus::Cancelled,
            _ => return None,
        })
    }
    /// Succeeded, failed, skipped or cancelled.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded
                | StepStatus::Failed
                | StepStatus::Skipped
                | StepStatus::Cancelled
        )
    }
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// ULID.
    pub id: String,
    /// The runbook's `name`.
    pub runbook: String,
    /// The exact runbook text the run started with; resume, retry and undo use it.
    pub runbook_text: String,
    /// Lowercase hex SHA-256 of `runbook_text`.
    pub runbook_sha256: String,
    pub status: RunStatus,
    /// `cli:dana`, `webhook:siem`, `schedule:sweep`, `api:soc-bot`, `undo:<run>`.
    pub trigger: String,
    pub started_by: String,
    /// Inputs after defaults and type conversion.
    pub inputs: Value,
    pub concurrency_key: Option<String>,
    /// The run this one undoes.
    pub undo_of: Option<String>,
    /// A dry run calls no mutating action.
    pub dry_run: bool,
    /// Grouping for review: concurrency key, else `alert_id`, else the origin run's case.
    pub case_id: String,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Set by `cordon cancel`; the executing process notices and stops.
    pub cancel_requested: bool,
}

/// A step's aggregate state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub run_id: String,
    pub step_id: String,
    pub status: StepStatus,
    /// Attempts summed over the step's items.
    pub attempts: u32,
    /// For an action step: number of items (1, or the `for_each` length). Approval/task: 0.
    pub items: u32,
    /// Rendered message / inputs for approval and task steps; None for action steps
    /// (their inputs live on the items).
    pub inputs: Option<Value>,
    /// A plain step: its item's output; `for_each`: the list of item outputs in order.
    pub output: Option<Value>,
    pub error: Option<String>,
    /// Why the step was skipped or cancelled.
    pub reason: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Approval/task timeout deadline.
    pub deadline: Option<String>,
    /// True for `on_failure` steps.
    pub on_failure: bool,
}

/// One action invocation: a plain step has item 0, a `for_each` step one per element.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    pub run_id: String,
    pub step_id: String,
    pub idx: u32,
    pub status: StepStatus,
    pub attempts: u32,
    /// Rendered inputs, stored before the first attempt; retries, resume and undo reuse them.
    pub inputs: Value,
    /// The connector instance that runs it.
    pub connector: String,
    pub output: Option<Value>,
    pub error: Option<String>,
    /// The target's state read before the first mutating call.
    pub prior_state: Option<Value>,
    /// Secret output fields (a lock PIN): shown to admins only.
    pub secret_output: Option<Value>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// A decision on an approval or task step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub run_id: String,
    pub step_id: String,
    /// `approve`, `reject` (approvals) or `done` (tasks), or `timeout-approve`/`timeout-reject`.
    pub decision: String,
    /// `cli:dana`, `api:dana`, `system:timeout`.
    pub decided_by: String,
    pub comment: Option<String>,
    pub at: String,
    /// The exact resolved inputs of the steps this decision releases.
    pub releases: Value,
}

/// A notification draft rendered by `notify.draft`, stored with its step's result. Shown
/// to responders and above only; never sent to an authority by Cordon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DraftRecord {
    /// ULID.
    pub draft_id: String,
    pub run_id: String,
    pub step_id: String,
    /// The step's `for_each` index (0 for a plain step).
    pub idx: u32,
    /// The template's name (`templates/<template>.md.hbs`).
    pub template: String,
    /// `authority`, `internal` or `third-party`, from the template's front matter.
    pub audience: String,
    pub subject: String,
    /// The recipient shown on the draft (`with.to`), as given: a string or a list.
    pub to: Option<Value>,
    pub body_markdown: String,
    /// The Markdown rendered to plain text (what email sends).
    pub body_text: String,
    /// Lowercase hex SHA-256 of `body_markdown` (also in the `draft.created` audit event).
    pub body_sha256: String,
    /// The incident facts the draft was rendered from (after `data` was merged).
    pub facts: Value,
    pub created_at: String,
}

/// An audit event to append; the store assigns `seq`, `at`, `prev_hash`, `hash`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditDraft {
    pub run_id: Option<String>,
    pub actor: String,
    /// e.g. `run.created`, `step.started`, `step.succeeded`, `approval.decided`.
    pub action: String,
    pub details: Value,
}

/// A stored audit event (the JSON Lines export has exactly these fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub seq: i64,
    pub at: String,
    pub run_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub details: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The checkpoint kept outside the events table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: String,
}

/// Proof that this process may execute a run. `token` increases with every acquisition
/// (fencing): a commit with a stale token is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub run_id: String,
    pub owner: String,
    pub token: i64,
    /// The run's first lease, taken while it was still queued with no cancellation asked:
    /// nothing has executed it, so it has no step or item rows and its row is as created.
    /// The executor then starts from the record it created instead of reading it back.
    pub first: bool,
}

/// Who holds a run's lease and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub owner: String,
    pub until: String,
}

/// One state change inside a [`Store::commit`].
#[derive(Debug, Clone)]
pub enum Change {
    /// Run status. `error` and `finished_at` are written as given (None clears them, as
    /// on `cordon retry`); `started_at` is only ever set once, when Some.
    Run {
        status: RunStatus,
        error: Option<String>,
        started_at: Option<String>,
        finished_at: Option<String>,
    },
    /// Insert or replace the step row.
    Step(StepRecord),
    /// Insert or replace the item row.
    Item(ItemRecord),
    /// Record an evidence artifact.
    Evidence(EvidenceRecord),
    /// Store a notification draft (with the result of the step that rendered it).
    Draft(DraftRecord),
    /// Delete the step's item rows with `idx >= from_idx` (a retried `for_each` whose list
    /// is rendered again).
    TruncateItems { step_id: String, from_idx: u32 },
    /// Queue a notice that the step now waits (`notify_waiting`), in the commit that makes
    /// it wait: `cordon serve` sends it once.
    WaitingNotice { id: String, step_id: String },
    /// Give the run's lease up in this commit (the run finished or now waits for people),
    /// rather than in a transaction of its own.
    ReleaseLease,
}

/// Filters for [`Store::list_runs`].
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    /// Only runs that can still change (queued, running or waiting), read at once.
    pub active: bool,
    pub runbook: Option<String>,
    pub case_id: Option<String>,
    /// A case-insensitive part of the run's `subject_email` input.
    pub subject: Option<String>,
    /// Runs created at or after this RFC 3339 UTC time (compared as text, like every
    /// timestamp of the store).
    pub created_from: Option<String>,
    /// Runs created strictly before this RFC 3339 UTC time.
    pub created_before: Option<String>,
    pub limit: Option<u32>,
}

/// What [`Store::create_run`] did.
#[derive(Debug, Clone)]
pub enum Created {
    /// A new run was stored.
    New(RunRecord),
    /// An active run with the same concurrency key exists; the trigger was recorded on it.
    Joined(RunRecord),
}

/// A key under which a trigger is remembered (webhook deliveries), scoped to its hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupKey {
    /// The webhook's name.
    pub hook: String,
    /// `webhook-id` (the sender's delivery id) or `dedup_key` (the hook's template).
    pub kind: String,
    pub key: String,
}

/// What [`Store::create_run_once`] did.
#[derive(Debug, Clone)]
pub enum Triggered {
    /// No key was known: the run was created (or joined an active one).
    Created(Box<Created>),
    /// A key was already remembered: nothing was stored; the first run's id.
    Duplicate(String),
}

/// One fire time a schedule handled (`schedule_fires`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleFire {
    /// The schedule's key (its `name`, or one derived from its runbook, cron, zone, inputs).
    pub schedule: String,
    /// RFC 3339 UTC.
    pub fire_time: String,
    /// `fired`, `joined`, `missed` or `registered`.
    pub outcome: String,
    pub run_id: Option<String>,
    /// For `missed`: how many fire times the row stands for.
    pub missed: u64,
    /// When the row was written.
    pub at: String,
}

/// Where a schedule stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleState {
    /// The newest fire time handled (fired, joined, missed or registered): the schedule
    /// resumes after it.
    pub through: Option<String>,
    /// The newest fire that started (or joined) a run.
    pub last_fire: Option<ScheduleFire>,
}

/// What [`Store::fire_schedule`] did.
#[derive(Debug, Clone)]
pub enum Fired {
    /// This call claimed the fire time: the run was created (or joined an active one).
    Claimed(Box<Created>),
    /// The fire time was handled already (another process, or before a restart); its run,
    /// if it made one.
    Duplicate(Option<String>),
}

/// A queued notice that a step waits (`waiting_notices`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingNotice {
    pub id: String,
    pub run_id: String,
    pub step_id: String,
    /// `pending`, `sending`, `sent`, `failed` or `skipped`.
    pub status: String,
    /// Attempts made so far (a claim counts as one).
    pub attempts: u32,
    pub next_at: String,
    pub error: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// How a claimed notice ends (or waits for another attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeOutcome {
    Sent,
    /// The step no longer waits: nothing was sent.
    Skipped(String),
    /// Try again at `next_at` (RFC 3339).
    Retry {
        next_at: String,
        error: String,
    },
    /// Gave up.
    Failed(String),
}

/// A queued or running run whose lease is held, and its holder, for the service's sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRun {
    pub id: String,
    pub status: RunStatus,
    pub lease: LeaseHolder,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The lease was taken by another process (or expired and was re-acquired): stop.
    #[error("lease on run {0} lost to another process")]
    LeaseLost(String),
    #[error("run {0} not found")]
    RunNotFound(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The database cannot be reached right now (refused or dropped connections, no
    /// connection within the pool's bound, a server shutting down or starting up), as
    /// opposed to a query that failed: the same request may well succeed later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // SQLSTATE class 08 (connection exception); 57P01 admin_shutdown,
                // 57P02 crash_shutdown, 57P03 cannot_connect_now (PostgreSQL).
                sqlx::Error::Database(db) => db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0")),
                _ => false,
            },
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The durable store. Implementations must be safe to share between tasks and processes.
#[async_trait]
pub trait Store: Send + Sync {
    /// Create a run (status `queued`) with its `run.created` audit event in one transaction,
    /// or join the active run with the same concurrency key (recording the trigger on it and
    /// a `run.joined` event).
    async fn create_run(&self, run: RunRecord, audit: AuditDraft) -> Result<Created>;

    /// Take the run's lease if it is free, expired, already ours, or `steal_from` names the
    /// current owner (the caller proved that process dead). Returns None when someone else
    /// holds it.
    async fn acquire_lease(
        &self,
        run_id: &str,
        owner: &str,
        ttl_ms: u64,
        steal_from: Option<&str>,
    ) -> Result<Option<Lease>>;
    /// Extend the lease; `LeaseLost` if it is no longer ours.
    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> Result<()>;
    /// Give the lease up (a waiting or finished run).
    async fn release_lease(&self, lease: &Lease) -> Result<()>;
    /// Current holder, if the lease is held and not expired.
    async fn lease_holder(&self, run_id: &str) -> Result<Option<LeaseHolder>>;
    /// Take the leases (each with a new token) of up to `limit` runs that are queued or
    /// running and whose lease is free or expired, oldest first, for `owner` for `ttl_ms`.
    /// Queued runs created less than `fresh_queued_ms` ago are left to the process that
    /// created them. Several processes claiming at once never get the same run.
    async fn claim_runnable(
        &self,
        owner: &str,
        ttl_ms: u64,
        fresh_queued_ms: u64,
        limit: u32,
    ) -> Result<Vec<Lease>>;

    /// Apply state changes and append audit events atomically, if `lease` is still current.
    async fn commit(
        &self,
        lease: &Lease,
        changes: Vec<Change>,
        audit: Vec<AuditDraft>,
    ) -> Result<()>;

    /// Append audit events that belong to no leased state change (config load, pause,
    /// exports, a CLI decision's record).
    async fn append_audit(&self, audit: Vec<AuditDraft>) -> Result<()>;

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>>;
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>>;
    async fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>>;
    async fn items(&self, run_id: &str) -> Result<Vec<ItemRecord>>;

    /// Record a decision on an approval or task step, with its audit event, without the
    /// lease (the executing process picks it up).
    async fn add_decision(&self, decision: Decision, audit: AuditDraft) -> Result<()>;
    async fn decisions(&self, run_id: &str) -> Result<Vec<Decision>>;

    /// Ask the executing process to cancel (with the `run.cancel_requested` audit event).
    async fn request_cancel(&self, run_id: &str, audit: AuditDraft) -> Result<()>;

    /// Stop (or allow) every new mutating call across all processes; audited.
    async fn set_paused(&self, paused: bool, audit: AuditDraft) -> Result<()>;
    async fn is_paused(&self) -> Result<bool>;

    /// Triggers that joined the run through its concurrency key (alert payloads).
    async fn joined_triggers(&self, run_id: &str) -> Result<Vec<Value>>;

    async fn evidence(&self, run_id: &str) -> Result<Vec<EvidenceRecord>>;
    async fn get_evidence(&self, evidence_id: &str) -> Result<Option<EvidenceRecord>>;

    /// [`Store::create_run`], remembering `keys` in the same transaction. When one of them
    /// is already remembered (and newer than `remember_since`, an RFC 3339 time), nothing
    /// is stored and the run it points to is returned. A UNIQUE constraint decides, so
    /// concurrent identical deliveries create exactly one run.
    async fn create_run_once(
        &self,
        run: RunRecord,
        audit: AuditDraft,
        keys: &[DedupKey],
        remember_since: &str,
    ) -> Result<Triggered>;
    /// Forget remembered keys older than `before`; returns how many.
    async fn purge_dedup_keys(&self, before: &str) -> Result<u64>;
    /// Queued and running runs whose lease is held and not expired (on the store's clock),
    /// with their holders, oldest first. Runs without a live lease are not listed (a
    /// backlog of accepted runs can be long): [`Store::claim_runnable`] takes those.
    async fn held_runs(&self) -> Result<Vec<HeldRun>>;
    /// Waiting runs with a waiting step whose deadline is before `now`.
    async fn overdue_runs(&self, now: &str) -> Result<Vec<String>>;
    /// How many runs are in each state (states with none are left out).
    async fn run_counts(&self) -> Result<Vec<(RunStatus, u64)>>;

    /// Claim `fire_time` of `schedule` and create the run for it (or join the active run with
    /// its concurrency key), with `audit` (and `missed`, a `schedule.missed` event for the
    /// earlier fire times this one stands in for), all in one transaction. A primary key on
    /// (schedule, fire time) decides: when the fire time is handled already, nothing is
    /// stored.
    async fn fire_schedule(
        &self,
        schedule: &str,
        fire_time: &str,
        run: RunRecord,
        audit: AuditDraft,
        missed: Option<AuditDraft>,
    ) -> Result<Fired>;
    /// Record a fire time that makes no run (`missed` or `registered`) with its audit event,
    /// unless that fire time is handled already (returns false then; nothing is stored).
    async fn mark_schedule(&self, mark: ScheduleFire, audit: Option<AuditDraft>) -> Result<bool>;
    /// Where `schedule` stands.
    async fn schedule_state(&self, schedule: &str) -> Result<ScheduleState>;
    /// Forget handled fire times older than `before`, keeping each schedule's newest.
    async fn purge_schedule_fires(&self, before: &str) -> Result<u64>;

    /// Notices due for sending: pending ones whose `next_at` is at most `now`, and claims
    /// older than `stale_before` (their process died mid-send), oldest first.
    async fn due_notices(
        &self,
        now: &str,
        stale_before: &str,
        limit: u32,
    ) -> Result<Vec<WaitingNotice>>;
    /// Claim a due notice for `owner`; Some(attempt number) when this call got it.
    async fn claim_notice(
        &self,
        id: &str,
        owner: &str,
        now: &str,
        stale_before: &str,
    ) -> Result<Option<u32>>;
    /// Settle a notice `owner` claimed, with its audit event, in one transaction. False
    /// (and nothing stored) when the claim was taken over meanwhile.
    async fn settle_notice(
        &self,
        id: &str,
        owner: &str,
        outcome: NoticeOutcome,
        audit: Option<AuditDraft>,
    ) -> Result<bool>;
    /// A run's notices, oldest first.
    async fn notices(&self, run_id: &str) -> Result<Vec<WaitingNotice>>;

    /// A run's notification drafts, oldest first.
    async fn drafts(&self, run_id: &str) -> Result<Vec<DraftRecord>>;
    /// One draft by id.
    async fn draft(&self, draft_id: &str) -> Result<Option<DraftRecord>>;

    /// Events in sequence order; all of them, or one run's.
    async fn audit_events(&self, run_id: Option<&str>) -> Result<Vec<AuditEvent>>;
    async fn audit_head(&self) -> Result<Option<AuditHead>>;
    /// Every event and the head checkpoint, read from one snapshot, so that a verification
    /// running beside writers sees a chain and a head that belong together.
    async fn audit_chain(&self) -> Result<(Vec<AuditEvent>, Option<AuditHead>)>;
}
