//! The `cordon` command line.
//!
//! Exit status: 0 succeeded, 1 failed (or problems found), 2 bad usage or input, 3 the run
//! waits for an approval or a task. Progress goes to stderr; stdout carries `run <id>` or the
//! `--json` document.

mod demo;
mod drafts;
pub mod progress;

pub use demo::demo;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use cordon_connectors::registry::Registry;
use cordon_connectors::secret::Redactor;
use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::evidence::EvidenceStore;
use crate::exec::decide::{decide, Decider, Verdict};
use crate::exec::{Engine, ExecError, StartRequest};
use crate::notify::DraftTemplates;
use crate::runbook::validate::{validate_file, ValidatedRunbook, ValidationContext};
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{AuditDraft, Created, RunFilter, RunRecord, RunStatus, Store};

#[derive(Parser, Debug)]
#[command(
    name = "cordon",
    version,
    about = "Incident-response runbooks, executed durably, with an audit trail a court can trust"
)]
pub struct Cli {
    /// Configuration file (default: $CORDON_CONFIG, else embedded defaults).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check runbooks (default: the runbooks folder); exit 1 on any problem.
    Validate {
        paths: Vec<PathBuf>,
        /// Diagnostics as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a run in this process and follow it to its end.
    Run(RunArgs),
    /// Decide an approval step and continue the run.
    Approve {
        run: String,
        step: String,
        #[arg(long, value_name = "NAME")]
        by: String,
        #[arg(long)]
        reject: bool,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Mark a task step done and continue the run.
    Done {
        run: String,
        step: String,
        #[arg(long, value_name = "NAME")]
        by: String,
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a run.
    Cancel {
        run: String,
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
    },
    /// Stop every new mutating call, in every process, until `cordon unpause`.
    Pause {
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
    },
    /// Allow mutating calls again.
    Unpause {
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
    },
    /// Re-run the failed and cancelled steps of a failed run (or STEP and all after it).
    Retry {
        run: String,
        #[arg(long, value_name = "STEP")]
        from: Option<String>,
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Continue a run whose process died, from its last durable state.
    Resume {
        run: String,
        #[arg(long)]
        json: bool,
    },
    /// Start an undo run that reverses every succeeded step of RUN, newest first.
    Undo {
        run: String,
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List runs, or show one.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Verify or export the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Verify, trace or export collected evidence.
    Evidence {
        #[command(subcommand)]
        command: EvidenceCommand,
    },
    /// Print the JSON Schema of the runbook format (or, with --facts, of the incident facts
    /// notification templates are filled from).
    Schema {
        /// The incident-facts schema instead.
        #[arg(long)]
        facts: bool,
    },
    /// Notification drafts of a run: list, show, export for counsel.
    Drafts {
        #[command(subcommand)]
        command: DraftsCommand,
    },
    /// Notification templates: list, preview with sample or given facts, the facts schema.
    Templates {
        #[command(subcommand)]
        command: TemplatesCommand,
    },
    /// List connector types, their actions, inputs and outputs.
    Connectors {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// List the runbooks in the runbooks folder.
    Runbooks {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// The configured schedules: next fire times, the last fire and its run.
    Schedules {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Run the demonstration runbook end to end against the local vendor sandbox.
    Demo {
        #[arg(long)]
        json: bool,
    },
    /// Serve webhooks, the API and approvals over HTTP; resumes every unfinished run; runs
    /// until SIGTERM or Ctrl-C, then drains.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (default: the configuration's `listen`, else 127.0.0.1:8480);
    /// port 0 picks a free port, printed on stderr.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Log lines as JSON (also `log_format: json` in the configuration).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<crate::config::LogFormat>,
    /// How long shutdown lets steps in flight finish, e.g. `30s`.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub drain_timeout: String,
    /// Runs executed at once by this process.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_concurrent_runs: usize,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A runbook name (looked up in the runbooks folder) or a path to a YAML file.
    pub runbook: String,
    /// Set one input: `k=v` (v read as JSON when it parses, else as a string).
    #[arg(long = "input", short = 'i', value_name = "K=V")]
    pub inputs: Vec<String>,
    /// A JSON object whose keys are input names.
    #[arg(long, value_name = "FILE")]
    pub alert: Option<PathBuf>,
    /// Plan only: lookups run, nothing else is called.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the run document as JSON.
    #[arg(long)]
    pub json: bool,
    /// Who starts the run (default: the operating-system user).
    #[arg(long = "as", value_name = "NAME")]
    pub actor: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum RunsCommand {
    List {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        runbook: Option<String>,
        #[arg(long)]
        case: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    Show {
        run: String,
        #[arg(long)]
        json: bool,
        /// Include secret outputs (lock PINs).
        #[arg(long)]
        reveal: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the whole chain; exit 1 names the first bad event.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// The audit trail of one run.
    Export {
        #[arg(long)]
        run: String,
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Write to FILE instead of stdout.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Html,
}

#[derive(Subcommand, Debug)]
pub enum EvidenceCommand {
    /// Re-hash every artifact of RUN and compare it with its database record, its audit
    /// event and the manifest; exit 1 on any difference.
    Verify {
        run: String,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
        /// Who verifies (default: the operating-system user).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
    },
    /// Each artifact of RUN with its record and chain-of-custody events.
    Custody {
        run: String,
        #[arg(long)]
        json: bool,
    },
    /// Verify RUN, then write a tar bundle a third party checks with `sha256sum -c`.
    Export {
        run: String,
        /// The bundle (default: cordon-evidence-RUN.tar in the current folder).
        #[arg(long, short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
        /// Who exports (default: the operating-system user).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DraftsCommand {
    /// The drafts of RUN.
    List {
        run: String,
        #[arg(long)]
        json: bool,
    },
    /// One draft: its Markdown (default), its plain text, or everything as JSON.
    Show {
        draft: String,
        /// The plain-text version (what email sends).
        #[arg(long, conflicts_with = "json")]
        text: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write RUN's drafts as `<template>.md` and `<template>.txt` (default folder
    /// `drafts/<RUN>`), and print their paths.
    Export {
        run: String,
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TemplatesCommand {
    /// Every template (the templates folder's and the shipped ones), checked.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Render a template with the sample facts, or with FILE (JSON or YAML), to preview it.
    Render {
        name: String,
        #[arg(long, value_name = "FILE")]
        facts: Option<PathBuf>,
        /// The plain-text version.
        #[arg(long, conflicts_with = "json")]
        text: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of the incident facts.
    Schema,
}

#[derive(Subcommand, Debug)]
pub enum ListCommand {
    List {
        #[arg(long)]
        json: bool,
    },
}

/// A failure with the exit status it deserves.
#[derive(Debug)]
pub struct Exit(pub u8, pub String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}
impl std::error::Error for Exit {}

pub(crate) fn bad_input(msg: impl Into<String>) -> anyhow::Error {
    Exit(2, msg.into()).into()
}

/// Run the command line; returns the process exit code.
pub async fn main(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if let Some(Exit(code, msg)) = e.downcast_ref::<Exit>() {
                eprintln!("error: {msg}");
                return ExitCode::from(*code);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<u8> {
    let config_path = cli.config.clone();
    match cli.command {
        Command::Validate { paths, json } => cmd_validate(config_path.as_deref(), paths, json),
        Command::Schema { facts } => {
            let schema = if facts {
                crate::notify::facts::json_schema()
            } else {
                crate::runbook::schema::json_schema()
            };
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(0)
        }
        Command::Templates { command } => {
            let config = load_config(config_path.as_deref())?;
            drafts::cmd_templates(&config, command)
        }
        Command::Connectors {
            command: ListCommand::List { json },
        } => {
            cmd_connectors(json);
            Ok(0)
        }
        Command::Runbooks {
            command: ListCommand::List { json },
        } => {
            let config = load_config(config_path.as_deref())?;
            cmd_runbooks(&config, json)
        }
        Command::Demo { json } => crate::cli::demo(config_path.as_deref(), json).await,
        Command::Serve(args) => {
            let drain = crate::duration::parse(&args.drain_timeout)
                .map_err(|e| bad_input(format!("--drain-timeout `{}`: {e}", args.drain_timeout)))?;
            crate::server::command(
                config_path.as_deref(),
                crate::server::ServeOptions {
                    listen: args.listen,
                    drain_timeout: drain,
                    max_concurrent_runs: args.max_concurrent_runs,
                },
            )
            .await
        }
        other => {
            let app = App::open(config_path.as_deref()).await?;
            app.command(other).await
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    Config::load(path).map_err(|e| bad_input(e.to_string()))
}

/// An opened configuration, store and engine.
pub struct App {
    pub engine: Engine,
}

impl App {
    pub async fn open(config_path: Option<&Path>) -> Result<App> {
        let config = load_config(config_path)?;
        App::from_config(config).await
    }

    pub async fn from_config(config: Config) -> Result<App> {
        let redactor = Redactor::default();
        let registry = Registry::from_config(&config.connectors, &config.base_dir, &redactor)
            .map_err(|errs| {
                bad_input(
                    errs.iter()
                        .map(|e| format!("{}: {e}", config_origin(&config)))
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            })?;
        let evidence = EvidenceStore::from_config(&config, &redactor)
            .map_err(|e| bad_input(format!("{}: {}", config_origin(&config), e.0)))?;
        let store: Arc<dyn Store> = open_store(&config.database_url).await?;
        Ok(App {
            engine: Engine::with_evidence(config, store, registry, redactor, evidence),
        })
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.engine.store()
    }

    /// Record that this process acts under this configuration (chain of custody).
    pub(crate) async fn audit_config(&self, actor: &str) -> Result<()> {
        let c = &self.engine.inner.config;
        let sha = c
            .source
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&b)));
        self.store()
            .append_audit(vec![AuditDraft {
                run_id: None,
                actor: actor.to_string(),
                action: "config.loaded".into(),
                details: json!({
                    "file": c.source.as_ref().map(|p| p.display().to_string()),
                    "sha256": sha,
                    "connectors": self.engine.inner.registry.instance_types(),
                    "pid": std::process::id(),
                }),
            }])
            .await?;
        Ok(())
    }

    async fn command(&self, cmd: Command) -> Result<u8> {
        if matches!(
            cmd,
            Command::Run(_)
                | Command::Approve { .. }
                | Command::Done { .. }
                | Command::Retry { .. }
                | Command::Resume { .. }
                | Command::Undo { .. }
        ) {
            // A run may collect evidence: a store that cannot take it is a start-up error.
            self.engine
                .inner
                .evidence
                .check()
                .await
                .map_err(|e| Exit(1, e.0))?;
        }
        match cmd {
            Command::Run(args) => self.cmd_run(args).await,
            Command::Approve {
                run,
                step,
                by,
                reject,
                comment,
                json,
            } => {
                let verdict = if reject {
                    Verdict::Reject
                } else {
                    Verdict::Approve
                };
                self.cmd_decide(&run, &step, &by, verdict, comment, json)
                    .await
            }
            Command::Done {
                run,
                step,
                by,
                note,
                json,
            } => {
                self.cmd_decide(&run, &step, &by, Verdict::Done, note, json)
                    .await
            }
            Command::Cancel { run, actor } => self.cmd_cancel(&run, &actor_name(actor)).await,
            Command::Pause { actor } => self.cmd_pause(true, &actor_name(actor)).await,
            Command::Unpause { actor } => self.cmd_pause(false, &actor_name(actor)).await,
            Command::Retry {
                run,
                from,
                actor,
                json,
            } => {
                let actor = format!("cli:{}", actor_name(actor));
                self.audit_config(&actor).await?;
                let lease = self.engine.acquire(&run).await.map_err(exec_err)?;
                if let Err(e) = crate::exec::runner::prepare_retry(
                    &self.engine,
                    &lease,
                    from.as_deref(),
                    &actor,
                )
                .await
                {
                    let _ = self.store().release_lease(&lease).await;
                    return Err(exec_err(e));
                }
                self.follow(&run, json, true).await
            }
            Command::Resume { run, json } => {
                self.audit_config("cli").await?;
                self.follow(&run, json, true).await
            }
            Command::Undo { run, actor, json } => {
                let who = actor_name(actor);
                self.audit_config(&format!("cli:{who}")).await?;
                let (undo, plan) = crate::exec::undo::create_undo_run(
                    &self.engine,
                    &run,
                    &format!("cli:{who}"),
                    &who,
                    &who,
                )
                .await
                .map_err(exec_err)?;
                if !json {
                    println!("run {}", undo.id);
                    for p in &plan {
                        eprintln!(
                            "  {} [{}] {}: {}",
                            p.step,
                            p.index,
                            p.action,
                            p.disposition.replace('_', " ")
                        );
                    }
                }
                self.follow(&undo.id, json, false).await
            }
            Command::Runs { command } => self.cmd_runs(command).await,
            Command::Audit { command } => self.cmd_audit(command).await,
            Command::Evidence { command } => self.cmd_evidence(command).await,
            Command::Drafts { command } => drafts::cmd_drafts(self, command).await,
            Command::Schedules {
                command: ListCommand::List { json },
            } => self.cmd_schedules(json).await,
            Command::Validate { .. }
            | Command::Schema { .. }
            | Command::Templates { .. }
            | Command::Connectors { .. }
            | Command::Runbooks { .. }
            | Command::Demo { .. }
            | Command::Serve(_) => Err(anyhow!("unreachable command dispatch")),
        }
    }

    async fn cmd_run(&self, args: RunArgs) -> Result<u8> {
        let config = &self.engine.inner.config;
        let rb = load_runbook(&args.runbook, config, &self.engine.validation_context())?;
        let mut inputs = Map::new();
        if let Some(path) = &args.alert {
            let text = std::fs::read_to_string(path).map_err(|e| {
                bad_input(format!("cannot read alert file {}: {e}", path.display()))
            })?;
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => inputs.extend(m),
                Ok(_) => {
                    return Err(bad_input(format!(
                        "alert file {}: expected a JSON object whose keys are input names",
                        path.display()
                    )))
                }
                Err(e) => {
                    return Err(bad_input(format!(
                        "alert file {}: not valid JSON: {e}",
                        path.display()
                    )))
                }
            }
        }
        for kv in &args.inputs {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad_input(format!("--input `{kv}`: expected KEY=VALUE")))?;
            let value =
                serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.to_string()));
            inputs.insert(k.trim().to_string(), value);
        }
        let who = actor_name(args.actor);
        let trigger = format!("cli:{who}");
        self.audit_config(&trigger).await?;
        let created = self
            .engine
            .start_run(StartRequest {
                runbook: rb,
                inputs,
                trigger,
                started_by: who,
                dry_run: args.dry_run,
            })
            .await
            .map_err(|e| match e {
                ExecError::Invalid(m) => bad_input(format!("{}: {m}", args.runbook)),
                other => exec_err(other),
            })?;
        match created {
            Created::New(run) => {
                if !args.json {
                    println!("run {}", run.id);
                }
                self.follow(&run.id, args.json, false).await
            }
            Created::Joined(run) => {
                if !args.json {
                    println!("run {}", run.id);
                }
                eprintln!(
                    "joined active run {} (same concurrency key `{}`); the alert was recorded on it",
                    run.id,
                    run.concurrency_key.clone().unwrap_or_default()
                );
                if args.json {
                    let mut doc =
                        crate::exec::document::run_document(self.store(), &run, false).await?;
                    doc["deduplicated"] = json!(true);
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                }
                Ok(exit_for(run.status))
            }
        }
    }

    /// Execute (or continue) a run in this process, printing progress, then the outcome.
    async fn follow(&self, run_id: &str, json: bool, print_id: bool) -> Result<u8> {
        if print_id && !json {
            println!("run {run_id}");
        }
        let display = Arc::new(progress::Display::new(false));
        let engine = self.engine.clone();
        let id = run_id.to_string();
        let exec = tokio::spawn(async move { engine.execute(&id, display).await });
        let result = tokio::select! {
            r = exec => r.map_err(|e| anyhow!("executor task failed: {e}"))?,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\ninterrupted: run {run_id} is saved; continue it with `cordon resume {run_id}`");
                return Ok(130);
            }
        };
        let run = match result {
            Ok(run) => run,
            Err(ExecError::Busy { .. }) if !print_id => {
                // Another process executes it (a decision recorded while it runs).
                eprintln!(
                    "run {run_id} is being executed by another process; it will pick this up"
                );
                return self.wait_for(run_id, json).await;
            }
            Err(e) => return Err(exec_err(e)),
        };
        self.report(&run, json).await
    }

    /// Poll a run another process executes until it finishes or waits.
    async fn wait_for(&self, run_id: &str, json: bool) -> Result<u8> {
        loop {
            let run = self
                .store()
                .get_run(run_id)
                .await?
                .ok_or_else(|| bad_input(format!("run {run_id} not found")))?;
            if matches!(
                run.status,
                RunStatus::Succeeded
                    | RunStatus::Failed
                    | RunStatus::Cancelled
                    | RunStatus::Waiting
            ) {
                return self.report(&run, json).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    async fn report(&self, run: &RunRecord, json: bool) -> Result<u8> {
        if json {
            let doc = crate::exec::document::run_document(self.store(), run, false).await?;
            println!("{}", serde_json::to_string_pretty(&doc)?);
        } else {
            match run.status {
                RunStatus::Succeeded => eprintln!("run {} succeeded", run.id),
                RunStatus::Failed => eprintln!(
                    "run {} failed: {}",
                    run.id,
                    run.error.clone().unwrap_or_default()
                ),
                RunStatus::Cancelled => eprintln!("run {} cancelled", run.id),
                RunStatus::Waiting => {
                    let steps = self.store().steps(&run.id).await?;
                    for s in steps
                        .iter()
                        .filter(|s| s.status == crate::store::StepStatus::Waiting)
                    {
                        let kind = s
                            .inputs
                            .as_ref()
                            .and_then(|i| i.get("kind"))
                            .and_then(Value::as_str)
                            .unwrap_or("approval");
                        let verb = if kind == "task" { "done" } else { "approve" };
                        eprintln!(
                            "run {} waits for {kind} `{}`: cordon {verb} {} {} --by NAME",
                            run.id, s.step_id, run.id, s.step_id
                        );
                    }
                }
                _ => eprintln!("run {} is {}", run.id, run.status.as_str()),
            }
        }
        Ok(exit_for(run.status))
    }

    async fn cmd_decide(
        &self,
        run: &str,
        step: &str,
        by: &str,
        verdict: Verdict,
        comment: Option<String>,
        json: bool,
    ) -> Result<u8> {
        let config = &self.engine.inner.config;
        let (groups, admin) = match config.groups_of(by) {
            None => (None, false),
            Some((g, admin)) => (Some(g), admin),
        };
        let decider = Decider {
            name: by.to_string(),
            via: "cli".into(),
            groups,
            admin,
        };
        self.audit_config(&decider.id()).await?;
        if let Err(e) = decide(&self.engine, run, step, &decider, verdict, comment).await {
            return Err(match e {
                crate::exec::decide::DecideError::Exec(ExecError::NotFound(r)) => {
                    bad_input(format!("run {r} not found"))
                }
                crate::exec::decide::DecideError::Exec(other) => exec_err(other),
                other => Exit(1, other.to_string()).into(),
            });
        }
        eprintln!(
            "recorded: {} on step `{step}` by {}",
            match verdict {
                Verdict::Approve => "approval",
                Verdict::Reject => "rejection",
                Verdict::Done => "done",
            },
            decider.id()
        );
        self.follow(run, json, false).await
    }

    async fn cmd_cancel(&self, run_id: &str, who: &str) -> Result<u8> {
        let run = self
            .store()
            .get_run(run_id)
            .await?
            .ok_or_else(|| bad_input(format!("run {run_id} not found")))?;
        if !run.status.is_active() {
            eprintln!("run {run_id} is already {}", run.status.as_str());
            return Ok(0);
        }
        self.store()
            .request_cancel(
                run_id,
                AuditDraft {
                    run_id: Some(run_id.to_string()),
                    actor: format!("cli:{who}"),
                    action: "run.cancel_requested".into(),
                    details: json!({}),
                },
            )
            .await?;
        // If no live process executes it, finish the cancellation here.
        match self
            .engine
            .execute(run_id, Arc::new(crate::exec::Quiet))
            .await
        {
            Ok(run) => eprintln!("run {run_id} {}", run.status.as_str()),
            Err(ExecError::Busy { .. }) => {
                eprintln!("cancellation requested; the process executing run {run_id} stops it");
            }
            Err(e) => return Err(exec_err(e)),
        }
        Ok(0)
    }

    async fn cmd_pause(&self, paused: bool, who: &str) -> Result<u8> {
        let action = if paused {
            "engine.paused"
        } else {
            "engine.unpaused"
        };
        self.store()
            .set_paused(
                paused,
                AuditDraft {
                    run_id: None,
                    actor: format!("cli:{who}"),
                    action: action.into(),
                    details: json!({}),
                },
            )
            .await?;
        eprintln!(
            "{}",
            if paused {
                "paused: no new mutating call will start until `cordon unpause`"
            } else {
                "unpaused"
            }
        );
        Ok(0)
    }

    async fn cmd_runs(&self, cmd: RunsCommand) -> Result<u8> {
        match cmd {
            RunsCommand::List {
                json,
                status,
                runbook,
                case,
                limit,
            } => {
                let status = match status {
                    Some(s) => Some(RunStatus::parse(&s).ok_or_else(|| bad_input(format!("unknown status `{s}`: use queued, running, waiting, succeeded, failed or cancelled")))?),
                    None => None,
                };
                let runs = self
                    .store()
                    .list_runs(&RunFilter {
                        status,
                        runbook,
                        case_id: case,
                        limit: Some(limit),
                        ..RunFilter::default()
                    })
                    .await?;
                if json {
                    let list: Vec<Value> = runs.iter().map(|r| json!({
                        "id": r.id, "runbook": r.runbook, "status": r.status.as_str(), "trigger": r.trigger,
                        "started_by": r.started_by, "case": r.case_id, "created_at": r.created_at,
                        "finished_at": r.finished_at, "undo_of": r.undo_of, "dry_run": r.dry_run, "error": r.error,
                    })).collect();
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    println!(
                        "{:<26}  {:<10}  {:<24}  {:<32}  TRIGGER",
                        "RUN", "STATUS", "CREATED", "RUNBOOK"
                    );
                    for r in runs {
                        println!(
                            "{:<26}  {:<10}  {:<24}  {:<32}  {}",
                            r.id,
                            r.status.as_str(),
                            r.created_at,
                            r.runbook,
                            r.trigger
                        );
                    }
                }
                Ok(0)
            }
            RunsCommand::Show { run, json, reveal } => {
                let mut rec = self
                    .store()
                    .get_run(&run)
                    .await?
                    .ok_or_else(|| bad_input(format!("run {run} not found")))?;
                // Overdue approvals are decided by the next process that looks.
                if rec.status == RunStatus::Waiting && self.has_overdue(&run).await? {
                    if let Ok(r) = self
                        .engine
                        .execute(&run, Arc::new(crate::exec::Quiet))
                        .await
                    {
                        rec = r;
                    }
                }
                let doc = crate::exec::document::run_document(self.store(), &rec, reveal).await?;
                if reveal {
                    self.store()
                        .append_audit(vec![AuditDraft {
                            run_id: Some(run.clone()),
                            actor: "cli".into(),
                            action: "secrets.revealed".into(),
                            details: json!({}),
                        }])
                        .await?;
                }
                if json {
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                } else {
                    print_run(&doc);
                }
                Ok(0)
            }
        }
    }

    async fn has_overdue(&self, run: &str) -> Result<bool> {
        let now = crate::time::now();
        Ok(self.store().steps(run).await?.iter().any(|s| {
            s.status == crate::store::StepStatus::Waiting
                && s.deadline.as_deref().is_some_and(|d| d < now.as_str())
        }))
    }

    async fn cmd_audit(&self, cmd: AuditCommand) -> Result<u8> {
        match cmd {
            AuditCommand::Verify { json } => {
                let (events, head) = self.store().audit_chain().await?;
                let report = crate::audit::verify(&events, head.as_ref());
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&json!({
                            "ok": report.ok, "events": report.events, "head": report.head, "first_bad": report.first_bad, "problem": report.problem,
                        }))?
                    );
                } else if report.ok {
                    println!(
                        "audit chain intact: {} events, head {}",
                        report.events,
                        report.head.clone().unwrap_or_default()
                    );
                } else {
                    println!(
                        "audit chain BROKEN at event {}: {}",
                        report
                            .first_bad
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "?".into()),
                        report.problem.clone().unwrap_or_default()
                    );
                }
                Ok(if report.ok { 0 } else { 1 })
            }
            AuditCommand::Export {
                run,
                format,
                output,
            } => {
                let rec = self
                    .store()
                    .get_run(&run)
                    .await?
                    .ok_or_else(|| bad_input(format!("run {run} not found")))?;
                let events = self.store().audit_events(Some(&run)).await?;
                let mut buf: Vec<u8> = Vec::new();
                match format {
                    ExportFormat::Jsonl => crate::audit::export_jsonl(&events, &mut buf)?,
                    ExportFormat::Html => {
                        let (all, head) = self.store().audit_chain().await?;
                        let report = crate::audit::verify(&all, head.as_ref());
                        crate::audit::export_html(&rec, &events, &report, &mut buf)?
                    }
                }
                let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&buf));
                match &output {
                    Some(p) => std::fs::write(p, &buf)
                        .with_context(|| format!("cannot write {}", p.display()))?,
                    None => {
                        use std::io::Write;
                        std::io::stdout().write_all(&buf)?;
                    }
                }
                self.store()
                    .append_audit(vec![AuditDraft {
                        run_id: Some(run.clone()),
                        actor: "cli".into(),
                        action: "audit.exported".into(),
                        details: json!({"format": format!("{format:?}").to_lowercase(), "events": events.len(), "sha256": digest,
                            "file": output.map(|p| p.display().to_string())}),
                    }])
                    .await?;
                Ok(0)
            }
        }
    }

    /// `cordon schedules list`: every schedule checked as `cordon serve` checks them (exit 2
    /// naming each problem), with its next fire times and its last fire.
    async fn cmd_schedules(&self, json: bool) -> Result<u8> {
        let (scheduled, problems) = crate::server::load_schedules(&self.engine);
        if !problems.is_empty() {
            let origin = config_origin(&self.engine.inner.config);
            return Err(bad_input(
                problems
                    .iter()
                    .map(|p| format!("{origin}: {p}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ));
        }
        let defs: Vec<_> = scheduled.iter().map(|s| s.def.clone()).collect();
        let list =
            crate::server::scheduler::describe(&self.engine, &defs, chrono::Utc::now()).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&list)?);
            return Ok(0);
        }
        if list.is_empty() {
            println!("no schedules configured");
        }
        let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| "-".into());
        for d in &list {
            println!(
                "{:<28} runbook {}  cron `{}` ({})",
                s(&d["key"]),
                s(&d["runbook"]),
                s(&d["cron"]),
                s(&d["timezone"])
            );
            let next: Vec<String> = d["next"]
                .as_array()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default();
            println!("  next      {}", next.join(", "));
            match d["last_fire"].as_object() {
                Some(f) => println!(
                    "  last fire {}  run {}",
                    s(&f["fire_time"]),
                    s(&f["run_id"])
                ),
                None => println!("  last fire -"),
            }
        }
        Ok(0)
    }

    async fn cmd_evidence(&self, cmd: EvidenceCommand) -> Result<u8> {
        let run = match &cmd {
            EvidenceCommand::Verify { run, .. }
            | EvidenceCommand::Custody { run, .. }
            | EvidenceCommand::Export { run, .. } => run.clone(),
        };
        self.store()
            .get_run(&run)
            .await?
            .ok_or_else(|| bad_input(format!("run {run} not found")))?;
        let evidence = &self.engine.inner.evidence;
        match cmd {
            EvidenceCommand::Verify { json, actor, .. } => {
                let report = crate::evidence::verify_run(self.store(), evidence, &run).await?;
                if json {
                    let mut doc = serde_json::to_value(&report)?;
                    doc["ok"] = json!(report.ok());
                    print_out(&serde_json::to_string_pretty(&doc)?)?;
                } else {
                    print_out(&report.to_string())?;
                }
                self.store()
                    .append_audit(vec![AuditDraft {
                        run_id: Some(run.clone()),
                        actor: format!("cli:{}", actor_name(actor)),
                        action: "evidence.verified".into(),
                        details: report.audit_details(),
                    }])
                    .await?;
                Ok(if report.ok() { 0 } else { 1 })
            }
            EvidenceCommand::Custody { json, .. } => {
                let custody = crate::evidence::custody::custody(self.store(), &run).await?;
                if json {
                    print_out(&serde_json::to_string_pretty(&custody)?)?;
                } else {
                    print_out(&custody.to_string())?;
                }
                Ok(0)
            }
            EvidenceCommand::Export { out, actor, .. } => {
                let who = format!("cli:{}", actor_name(actor));
                let out = out.unwrap_or_else(|| {
                    PathBuf::from(crate::evidence::export::bundle_dir(&run) + ".tar")
                });
                use crate::evidence::export::{export_run, ExportOutcome};
                let outcome = export_run(self.store(), evidence, &run, &out, &who)
                    .await
                    .map_err(|e| Exit(1, e.to_string()))?;
                let (report, exported) = match &outcome {
                    ExportOutcome::Refused(r) => (r, None),
                    ExportOutcome::Written(x) => (&x.report, Some(x)),
                };
                let mut verified = report.audit_details();
                verified["for"] = json!("export");
                let mut audit = vec![AuditDraft {
                    run_id: Some(run.clone()),
                    actor: who.clone(),
                    action: "evidence.verified".into(),
                    details: verified,
                }];
                if let Some(x) = exported {
                    let abs = std::path::absolute(&x.path).unwrap_or_else(|_| x.path.clone());
                    audit.push(AuditDraft {
                        run_id: Some(run.clone()),
                        actor: who,
                        action: "evidence.exported".into(),
                        details: json!({
                            "file": x.path.file_name().map(|n| n.to_string_lossy().into_owned()),
                            "path": abs.display().to_string(),
                            "bytes": x.bytes,
                            "sha256": x.sha256,
                            "artifacts": x.artifacts,
                        }),
                    });
                }
                self.store().append_audit(audit).await?;
                match exported {
                    None => {
                        print_out(&report.to_string())?;
                        eprintln!("error: verification failed: no bundle was written");
                        Ok(1)
                    }
                    Some(x) => {
                        print_out(&format!(
                            "{}\n  {} artifact(s), {} bytes\n  sha256 {}",
                            x.path.display(),
                            x.artifacts.len(),
                            x.bytes,
                            x.sha256
                        ))?;
                        eprintln!(
                            "check it with: tar -xf {} && cd {} && sha256sum -c SHA256SUMS",
                            x.path.display(),
                            crate::evidence::export::bundle_dir(&run)
                        );
                        Ok(0)
                    }
                }
            }
        }
    }
}

/// One block of text and a newline on stdout; a reader that went away (`| head`) is not an
/// error.
fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Open the store a database URL names: `postgres://…` or `postgresql://…` for PostgreSQL,
/// anything else for SQLite. A password in the URL never appears in the error.
pub async fn open_store(url: &str) -> Result<Arc<dyn Store>> {
    let shown = crate::config::redact_url(url);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PgStore::open(url)
            .await
            .with_context(|| format!("cannot open database {shown}"))?;
        return Ok(Arc::new(store));
    }
    let store = SqliteStore::open(url)
        .await
        .with_context(|| format!("cannot open database {shown}"))?;
    Ok(Arc::new(store))
}

fn config_origin(c: &Config) -> String {
    c.source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "configuration".into())
}

fn exec_err(e: ExecError) -> anyhow::Error {
    match e {
        ExecError::NotFound(r) => bad_input(format!("run {r} not found")),
        ExecError::Invalid(m) => Exit(1, m).into(),
        other => Exit(1, other.to_string()).into(),
    }
}

fn exit_for(status: RunStatus) -> u8 {
    match status {
        RunStatus::Succeeded => 0,
        RunStatus::Waiting => 3,
        RunStatus::Queued | RunStatus::Running => 3,
        RunStatus::Failed | RunStatus::Cancelled => 1,
    }
}

fn actor_name(given: Option<String>) -> String {
    given
        .filter(|s| !s.trim().is_empty())
        .or_else(|| std::env::var("USER").ok().filter(|s| !s.is_empty()))
        .or_else(|| std::env::var("LOGNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// A runbook by name (in the runbooks folder) or by path.
pub fn load_runbook(
    which: &str,
    config: &Config,
    ctx: &ValidationContext,
) -> Result<ValidatedRunbook> {
    let as_path = Path::new(which);
    let path = if as_path.is_file() {
        as_path.to_path_buf()
    } else if which.contains('/') || which.ends_with(".yaml") || which.ends_with(".yml") {
        return Err(bad_input(format!("runbook file {which} not found")));
    } else {
        find_runbook(&config.runbooks_dir, which)?
    };
    validate_file(&path, ctx).map_err(|diags| {
        bad_input(format!(
            "runbook {} is not valid:\n{}",
            path.display(),
            diags
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ))
    })
}

fn runbook_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

pub(crate) fn find_runbook(dir: &Path, name: &str) -> Result<PathBuf> {
    for ext in ["yaml", "yml"] {
        let p = dir.join(format!("{name}.{ext}"));
        if p.is_file() {
            return Ok(p);
        }
    }
    let mut known = Vec::new();
    for f in runbook_files(dir) {
        if let Some(n) = declared_name(&f) {
            if n == name {
                return Ok(f);
            }
            known.push(n);
        }
    }
    let hint = known
        .iter()
        .max_by(|a, b| strsim::jaro_winkler(a, name).total_cmp(&strsim::jaro_winkler(b, name)))
        .filter(|k| strsim::jaro_winkler(k, name) > 0.8)
        .map(|k| format!("; did you mean `{k}`?"))
        .unwrap_or_default();
    Err(bad_input(format!(
        "unknown runbook `{name}` (not in {}){hint}",
        dir.display()
    )))
}

/// The top-level `name:` of a runbook file, read cheaply to find a runbook by name (the
/// file is validated properly once chosen).
fn declared_name(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let v = l.strip_prefix("name:")?.trim();
        let v = v.split(" #").next().unwrap_or(v).trim();
        Some(v.trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

fn cmd_validate(config_path: Option<&Path>, paths: Vec<PathBuf>, json: bool) -> Result<u8> {
    let config = load_config(config_path)?;
    let ctx = if config.source.is_some() {
        let redactor = Redactor::default();
        match Registry::from_config(&config.connectors, &config.base_dir, &redactor) {
            Ok(r) => ValidationContext {
                instances: Some(r.instance_types()),
                templates: Some(DraftTemplates::new(Some(config.templates_dir.clone()))),
            },
            Err(errs) => {
                return Err(bad_input(
                    errs.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                ));
            }
        }
    } else {
        ValidationContext {
            instances: None,
            templates: Some(DraftTemplates::new(Some(config.templates_dir.clone()))),
        }
    };
    let targets = if paths.is_empty() {
        vec![config.runbooks_dir.clone()]
    } else {
        paths
    };
    let mut files = Vec::new();
    for t in &targets {
        if t.is_dir() {
            files.extend(runbook_files(t));
        } else {
            files.push(t.clone());
        }
    }
    let mut all = Vec::new();
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    for f in &files {
        match validate_file(f, &ctx) {
            Ok(rb) => {
                if let Some(prev) = names.insert(rb.runbook.name.clone(), f.clone()) {
                    all.push(json!({"file": f.display().to_string(), "line": 1, "column": 1, "code": "E002",
                        "message": format!("runbook name `{}` is also used by {}", rb.runbook.name, prev.display())}));
                }
            }
            Err(diags) => {
                for d in diags {
                    all.push(serde_json::to_value(&d).unwrap_or_else(|_| json!(d.to_string())));
                    if !json {
                        println!("{d}");
                    }
                }
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"files": files.len(), "problems": all}))?
        );
    } else {
        for d in all.iter().filter(|d| d.get("code") == Some(&json!("E002"))) {
            println!(
                "{}:{}:{}: {} [E002]",
                d["file"].as_str().unwrap_or(""),
                1,
                1,
                d["message"].as_str().unwrap_or("")
            );
        }
        if all.is_empty() {
            eprintln!("{} runbook(s) valid", files.len());
        } else {
            eprintln!("{} problem(s) in {} file(s)", all.len(), files.len());
        }
    }
    if files.is_empty() {
        return Err(bad_input(format!(
            "no runbooks found in {}",
            targets
                .iter()
                .map(|t| t.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(if all.is_empty() { 0 } else { 1 })
}

fn cmd_connectors(json: bool) {
    let catalog = cordon_connectors::catalog::catalog();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&catalog).unwrap_or_default()
        );
        return;
    }
    for t in catalog {
        println!("{} — {}", t.name, t.description);
        for a in t.actions {
            let undo = a.undo.map(|u| format!(", undo: {u}")).unwrap_or_default();
            println!(
                "  {}.{} ({:?}{undo}) — {}",
                t.name, a.name, a.effect, a.description
            );
            for f in a.inputs {
                let req = if f.required { " (required)" } else { "" };
                println!("      in  {}: {}{req} — {}", f.name, f.ty, f.description);
            }
            for f in a.outputs {
                println!("      out {}: {} — {}", f.name, f.ty, f.description);
            }
        }
    }
}

/// The runbooks folder's files: name, title, hash and step count, or how many problems.
pub(crate) fn runbook_list(config: &Config) -> Vec<Value> {
    let ctx = ValidationContext::default();
    let mut list = Vec::new();
    for f in runbook_files(&config.runbooks_dir) {
        match validate_file(&f, &ctx) {
            Ok(rb) => list.push(json!({
                "name": rb.runbook.name, "title": rb.runbook.title, "description": rb.runbook.description,
                "file": f.display().to_string(), "sha256": rb.sha256, "steps": rb.runbook.steps.len(), "valid": true,
            })),
            Err(d) => list.push(json!({"file": f.display().to_string(), "valid": false, "problems": d.len()})),
        }
    }
    list
}

fn cmd_runbooks(config: &Config, json: bool) -> Result<u8> {
    let list = runbook_list(config);
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        for r in &list {
            if r["valid"] == json!(true) {
                println!(
                    "{:<36} {}",
                    r["name"].as_str().unwrap_or(""),
                    r["title"].as_str().unwrap_or("")
                );
            } else {
                println!(
                    "{:<36} (invalid: {} problems; run `cordon validate`)",
                    r["file"].as_str().unwrap_or(""),
                    r["problems"]
                );
            }
        }
    }
    Ok(0)
}

fn print_run(doc: &Value) {
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| "-".into());
    println!("run       {}", s(&doc["id"]));
    println!(
        "runbook   {} (sha256 {})",
        s(&doc["runbook"]),
        s(&doc["runbook_sha256"])
    );
    println!("status    {}", s(&doc["status"]));
    println!(
        "trigger   {} (started by {})",
        s(&doc["trigger"]),
        s(&doc["started_by"])
    );
    println!(
        "started   {}   finished {}",
        s(&doc["started_at"]),
        s(&doc["finished_at"])
    );
    if let Some(u) = doc["undo_of"].as_str() {
        println!("undo of   {u}");
    }
    if let Some(e) = doc["error"].as_str() {
        println!("error     {e}");
    }
    println!();
    if let Some(steps) = doc["steps"].as_array() {
        for st in steps {
            let mut line = format!(
                "  {:<10} {:<32} attempts {}",
                s(&st["status"]),
                s(&st["id"]),
                st["attempts"]
            );
            if let Some(e) = st["error"].as_str() {
                line.push_str(&format!("  error: {e}"));
            } else if let Some(r) = st["reason"].as_str() {
                line.push_str(&format!("  ({r})"));
            }
            println!("{line}");
        }
    }
}
