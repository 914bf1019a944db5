//! The executor: turns a validated runbook and its inputs into a durable run.
//!
//! - [`Engine`] holds what every run needs (store, connectors, templates, evidence, guards).
//! - [`Engine::start_run`] stores a new run (or joins an active one by concurrency key).
//! - [`Engine::execute`] takes the run's lease and drives it until it finishes or waits for
//!   people ([`runner`]); every state change commits before the next side effect.
//! - [`item`]: one action invocation with its retries, timeout, pause and guard checks.
//! - [`decide`]: approvals and tasks decided from the command line (and later the API).
//! - [`undo`]: plans the undo run of a finished run.
//! - [`document`]: the run document `--json` and the API print.

pub mod context;
pub mod decide;
pub mod document;
pub mod item;
pub mod runner;
pub mod undo;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use cordon_connectors::registry::Registry;
use cordon_connectors::secret::Redactor;
use serde_json::{Map, Value};

use crate::config::{Config, Guards};
use crate::evidence::{EvidenceStore, LocalEvidence};
use crate::expr::Templates;
use crate::runbook::validate::{ValidatedRunbook, ValidationContext};
use crate::store::{AuditDraft, Created, RunRecord, RunStatus, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("run {run} is being executed by another process ({owner}, lease until {until}); wait for it, or run `cordon resume {run}` after that process has stopped")]
    Busy {
        run: String,
        owner: String,
        until: String,
    },
    #[error("run {0} not found")]
    NotFound(String),
    #[error("the runbook stored with run {run} no longer validates: {message}")]
    StoredRunbook { run: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// A change of state worth showing a person following the run.
#[derive(Debug, Clone)]
pub enum Progress {
    StepStarted {
        step: String,
        items: u32,
        /// The connector type of its action (`uses` up to the dot).
        connector: String,
    },
    StepRetrying {
        step: String,
        idx: u32,
        attempt: u32,
        delay_ms: u64,
        error: String,
    },
    ItemFinished {
        step: String,
        idx: u32,
        total: u32,
        ok: bool,
    },
    StepFinished {
        step: String,
        status: crate::store::StepStatus,
        detail: Option<String>,
    },
    Waiting {
        step: String,
        message: String,
    },
    Paused {
        step: String,
    },
}

/// Receives [`Progress`] events (the CLI's display; a no-op elsewhere).
pub trait Observer: Send + Sync {
    fn event(&self, event: Progress);
}

/// Observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {
    fn event(&self, _event: Progress) {}
}

/// Everything runs need, shared.
#[derive(Clone)]
pub struct Engine {
    pub inner: Arc<EngineInner>,
}

pub struct EngineInner {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    pub templates: Templates,
    /// Notification templates (the configured folder, the shipped ones as a fallback).
    pub drafts: crate::notify::DraftTemplates,
    pub evidence: EvidenceStore,
    pub redactor: Redactor,
    /// This process's lease owner id: `node/pid/nonce`.
    pub owner: String,
    /// This node's name (`cluster.node`, else the host name).
    pub node: String,
    /// Cancelled when the process shuts down (`cordon serve` on SIGTERM): run loops stop
    /// starting work, let the calls in flight finish, and release their runs for the next
    /// start. Never cancelled by the one-shot commands.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Stored runbooks already validated, by the SHA-256 of their text: a service runs the
    /// same few runbooks thousands of times, and validation (YAML, CEL, templates) costs
    /// more than a step's commit.
    runbooks: std::sync::Mutex<HashMap<String, Arc<ValidatedRunbook>>>,
}

/// At most this many validated runbooks are kept; the cache starts over when full.
const RUNBOOK_CACHE: usize = 256;

/// What to start.
pub struct StartRequest {
    pub runbook: ValidatedRunbook,
    /// Supplied inputs (not yet checked).
    pub inputs: Map<String, Value>,
    /// `cli:dana`, `webhook:siem`, …
    pub trigger: String,
    pub started_by: String,
    pub dry_run: bool,
}

impl Engine {
    /// An engine whose evidence goes to the local folder `config.evidence_dir`. The command
    /// line opens the configured store (S3 included) with [`Engine::with_evidence`].
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        registry: Registry,
        redactor: Redactor,
    ) -> Engine {
        let evidence = EvidenceStore::Local(LocalEvidence::new(config.evidence_dir.clone()));
        Engine::with_evidence(config, store, registry, redactor, evidence)
    }

    /// An engine with the given evidence store.
    pub fn with_evidence(
        config: Config,
        store: Arc<dyn Store>,
        registry: Registry,
        redactor: Redactor,
        evidence: EvidenceStore,
    ) -> Engine {
        let drafts = crate::notify::DraftTemplates::new(Some(config.templates_dir.clone()));
        let node = config.cluster.node.clone().unwrap_or_else(hostname);
        let owner = format!("{node}/{}/{}", std::process::id(), ulid::Ulid::new());
        Engine {
            inner: Arc::new(EngineInner {
                config,
                store,
                registry,
                templates: Templates::new(),
                drafts,
                evidence,
                redactor,
                owner,
                node,
                shutdown: tokio_util::sync::CancellationToken::new(),
                runbooks: Default::default(),
            }),
        }
    }

    /// The run's stored runbook, validated (once per distinct text in this process).
    pub fn stored_runbook(&self, run: &RunRecord) -> Result<Arc<ValidatedRunbook>, ExecError> {
        use sha2::Digest;
        let key = hex::encode(sha2::Sha256::digest(run.runbook_text.as_bytes()));
        if let Some(rb) = self
            .inner
            .runbooks
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned())
        {
            return Ok(rb);
        }
        let rb = Arc::new(runner::stored_runbook(run)?);
        if let Ok(mut m) = self.inner.runbooks.lock() {
            if m.len() >= RUNBOOK_CACHE {
                m.clear();
            }
            m.insert(key, rb.clone());
        }
        Ok(rb)
    }

    pub fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    pub fn guards(&self) -> &Guards {
        &self.inner.config.guards
    }

    /// What the validator needs to know about this configuration.
    pub fn validation_context(&self) -> ValidationContext {
        ValidationContext {
            instances: Some(self.inner.registry.instance_types()),
            templates: Some(self.inner.drafts.clone()),
        }
    }

    /// Check inputs, render the concurrency key, and store the run (or join an active one).
    pub async fn start_run(&self, req: StartRequest) -> Result<Created, ExecError> {
        let (run, audit) = self.prepare_run(req)?;
        Ok(self.inner.store.create_run(run, audit).await?)
    }

    /// The run record and its `run.created` event for `req`, inputs checked, not stored.
    pub fn prepare_run(&self, req: StartRequest) -> Result<(RunRecord, AuditDraft), ExecError> {
        let inputs = crate::runbook::inputs::resolve_inputs(&req.runbook.runbook, req.inputs)
            .map_err(|errs| {
                ExecError::Invalid(
                    errs.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })?;
        let id = ulid::Ulid::new().to_string();
        let now = crate::time::now();
        let inputs = Value::Object(inputs);
        let ctx = serde_json::json!({
            "inputs": inputs,
            "run": {"id": id, "runbook": req.runbook.runbook.name, "started_at": now, "trigger": req.trigger},
        });
        let concurrency_key = match &req.runbook.runbook.concurrency_key {
            Some(t) if !req.dry_run => {
                let v = self
                    .inner
                    .templates
                    .render_str(t, &ctx)
                    .map_err(|e| ExecError::Invalid(format!("concurrency_key: {e}")))?;
                Some(match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            _ => None,
        };
        let case_id = concurrency_key
            .clone()
            .or_else(|| {
                inputs
                    .get("alert_id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| id.clone());
        let run = RunRecord {
            id: id.clone(),
            runbook: req.runbook.runbook.name.clone(),
            runbook_text: req.runbook.text.clone(),
            runbook_sha256: req.runbook.sha256.clone(),
            status: RunStatus::Queued,
            trigger: req.trigger.clone(),
            started_by: req.started_by.clone(),
            inputs: inputs.clone(),
            concurrency_key: concurrency_key.clone(),
            undo_of: None,
            dry_run: req.dry_run,
            case_id,
            error: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            cancel_requested: false,
        };
        let audit = AuditDraft {
            run_id: Some(id),
            actor: req.started_by.clone(),
            action: "run.created".into(),
            details: serde_json::json!({
                "runbook": req.runbook.runbook.name,
                "runbook_sha256": req.runbook.sha256,
                "trigger": req.trigger,
                "inputs": self.inner.redactor.redact_value(&inputs),
                "concurrency_key": concurrency_key,
                "dry_run": req.dry_run,
            }),
        };
        Ok((run, audit))
    }

    /// Store a run built elsewhere (undo runs), with its audit event.
    pub async fn store_run(
        &self,
        run: RunRecord,
        audit: AuditDraft,
    ) -> Result<RunRecord, ExecError> {
        match self.inner.store.create_run(run, audit).await? {
            Created::New(r) | Created::Joined(r) => Ok(r),
        }
    }

    /// Take the run's lease and drive it to its end or until it waits for people.
    ///
    /// A decision recorded by another process while this one parks the run (after the
    /// runner last looked, before the lease was released) finds the lease still held, so
    /// that process cannot continue the run: the runner counts the decisions again after
    /// parking, and the run is driven once more if one arrived. A decision recorded after
    /// the release is continued by whoever recorded it.
    pub async fn execute(
        &self,
        run_id: &str,
        observer: Arc<dyn Observer>,
    ) -> Result<RunRecord, ExecError> {
        self.execute_from(run_id, None, observer).await
    }

    /// [`Engine::execute`], given the record of the run as this process created it: if the
    /// lease taken is the run's first ([`Lease::first`](crate::store::Lease::first)), the
    /// run starts from it without reading the run, its steps and its items back.
    pub async fn execute_from(
        &self,
        run_id: &str,
        mut created: Option<RunRecord>,
        observer: Arc<dyn Observer>,
    ) -> Result<RunRecord, ExecError> {
        let mut lease = self.acquire(run_id).await?;
        loop {
            let (run, again) =
                runner::drive(self.clone(), lease, created.take(), observer.clone()).await?;
            if !again || self.inner.shutdown.is_cancelled() {
                return Ok(run);
            }
            lease = match self.acquire(run_id).await {
                Ok(lease) => lease,
                // Another process took it up: the decision is in its hands.
                Err(ExecError::Busy { .. }) => return Ok(run),
                Err(e) => return Err(e),
            };
        }
    }

    /// Acquire a run's lease, taking it over from a process on this host that has died.
    pub async fn acquire(&self, run_id: &str) -> Result<crate::store::Lease, ExecError> {
        let store = self.store();
        let owner = &self.inner.owner;
        // The common case first: a free (or expired, or our own) lease, in one write.
        let ttl = self.inner.config.cluster.lease_ttl_ms();
        match store.acquire_lease(run_id, owner, ttl, None).await {
            Ok(Some(lease)) => return Ok(lease),
            Ok(None) => {}
            Err(StoreError::RunNotFound(_)) => return Err(ExecError::NotFound(run_id.to_string())),
            Err(e) => return Err(e.into()),
        }
        let holder = store.lease_holder(run_id).await?;
        if let Some(dead) = holder
            .as_ref()
            .filter(|h| owner_is_dead(&self.inner.node, &h.owner))
        {
            if let Some(lease) = store
                .acquire_lease(run_id, owner, ttl, Some(&dead.owner))
                .await?
            {
                return Ok(lease);
            }
        }
        let h = store.lease_holder(run_id).await?;
        Err(ExecError::Busy {
            run: run_id.to_string(),
            owner: h.as_ref().map(|h| h.owner.clone()).unwrap_or_default(),
            until: h.map(|h| h.until).unwrap_or_default(),
        })
    }

    /// The evidence folder root.
    pub fn evidence_dir(&self) -> PathBuf {
        self.inner.config.evidence_dir.clone()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// True when `owner` (`node/pid/nonce`) names a process of this node that no longer exists
/// (the node is this host, unless `cluster.node` names it otherwise). A lease held by
/// another node is never presumed dead: it must expire.
pub fn owner_is_dead(this_node: &str, owner: &str) -> bool {
    let mut parts = owner.splitn(3, '/');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    if host != this_node {
        return false;
    }
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if pid <= 0 || pid as u32 == std::process::id() {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for the process's existence.
    let r = unsafe { libc::kill(pid, 0) };
    if r == 0 {
        return is_zombie(pid);
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// A killed child not yet reaped by its parent still answers signal 0.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::StepStatus;

    const RUNBOOK: &str = "version: 1\nname: first\ninputs:\n  alert_id: { type: string, required: true }\nsteps:\n  - id: look\n    uses: core.noop\n    with: { alert: \"{{ inputs.alert_id }}\" }\n";

    /// An engine on a SQLite database `c.db` in `dir`, with the default configuration.
    pub(crate) async fn engine(dir: &std::path::Path) -> Engine {
        let cfg = dir.join("config.yaml");
        std::fs::write(&cfg, "database: sqlite://c.db\n").unwrap();
        let config = crate::config::Config::from_file(&cfg).unwrap();
        crate::cli::App::from_config(config).await.unwrap().engine
    }

    /// A fresh engine and a run it created (not started), with the record in hand.
    async fn created() -> (tempfile::TempDir, Engine, RunRecord) {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path()).await;
        let runbook =
            crate::runbook::validate::validate(RUNBOOK, "first.yaml", &Default::default())
                .unwrap_or_else(|d| panic!("{d:?}"));
        let mut inputs = Map::new();
        inputs.insert("alert_id".into(), Value::String("A-1".into()));
        let (run, audit) = engine
            .prepare_run(StartRequest {
                runbook,
                inputs,
                trigger: "test".into(),
                started_by: "test".into(),
                dry_run: false,
            })
            .unwrap();
        let run = match engine.store().create_run(run, audit).await.unwrap() {
            Created::New(r) => r,
            Created::Joined(r) => panic!("joined {}", r.id),
        };
        (dir, engine, run)
    }

    #[tokio::test]
    async fn a_run_starts_from_the_record_it_was_created_with() {
        let (_dir, engine, run) = created().await;
        let id = run.id.clone();
        let done = engine
            .execute_from(&id, Some(run), Arc::new(Quiet))
            .await
            .unwrap();
        assert_eq!(done.status, RunStatus::Succeeded);
        let stored = engine.store().get_run(&id).await.unwrap().unwrap();
        assert_eq!(stored.status, RunStatus::Succeeded);
        let steps = engine.store().steps(&id).await.unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].status, StepStatus::Succeeded);
        assert_eq!(steps[0].output.as_ref().unwrap()["alert"], "A-1");
    }

    #[tokio::test]
    async fn a_run_cancelled_before_its_first_lease_is_read_back_not_started() {
        let (_dir, engine, run) = created().await;
        let id = run.id.clone();
        let audit = AuditDraft {
            run_id: Some(id.clone()),
            actor: "test".into(),
            action: "run.cancel_requested".into(),
            details: serde_json::json!({}),
        };
        engine.store().request_cancel(&id, audit).await.unwrap();
        // The record in hand still says "queued, no cancellation": it must not be trusted.
        assert!(!run.cancel_requested);
        let done = engine
            .execute_from(&id, Some(run), Arc::new(Quiet))
            .await
            .unwrap();
        assert_eq!(done.status, RunStatus::Cancelled);
        let steps = engine.store().steps(&id).await.unwrap();
        assert!(
            steps.iter().all(|s| s.status != StepStatus::Succeeded),
            "{steps:?}"
        );
    }
}
