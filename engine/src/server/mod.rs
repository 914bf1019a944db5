//! `cordon serve`: webhooks, schedules, the `/api/v1` API, approvals over HTTP, notices
//! that runs wait, health and metrics.
//!
//! A tour:
//! - [`Server::build`] reads what the service needs beyond the engine (API tokens, webhooks
//!   and their runbooks; every problem at once), binds the listener and hands back the
//!   bound address, so tests use port 0; [`Server::run`] serves until the shutdown future
//!   resolves, then drains.
//! - [`executor`]: runs execute in background tasks of this process (bounded concurrency);
//!   a periodic sweep resumes unfinished runs nobody executes (all of them at start),
//!   decides timed-out approvals and purges old webhook deliveries.
//! - [`scheduler`]: `schedules:`, one task per schedule; each fire time is claimed in the
//!   transaction that creates its run. [`notifier`]: `notify_waiting`, sending the notices
//!   queued when steps start waiting.
//! - [`hooks`]: `POST /hooks/{name}`; [`api`]: `/api/v1` and the OpenAPI document;
//!   [`auth`]: bearer tokens and roles; [`error`]: the one mapping of errors to HTTP;
//!   [`metrics`]: Prometheus; [`ui`]: the review UI at `/ui/` (login with an API token,
//!   runs, timelines, approval pages, drafts, audit).
//!
//! Shutdown (SIGTERM or Ctrl-C): stop accepting connections, let requests in flight finish,
//! cancel the engine's shutdown token so run loops start nothing new and return once their
//! calls in flight are done (up to `--drain-timeout`), and exit 0. Whatever was not
//! finished stays durable: the next start resumes it, repeating an unfinished call under
//! its idempotency key.

pub mod api;
pub mod auth;
pub mod error;
pub mod executor;
pub mod hooks;
pub mod metrics;
pub mod notifier;
pub mod scheduler;
pub mod ui;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use self::auth::Tokens;
use self::executor::Executor;
use self::hooks::HookRuntime;
use self::metrics::Metrics;
use self::notifier::Notifier;
use self::scheduler::{Scheduled, Scheduler, SystemClock};
use crate::exec::Engine;
use crate::runbook::validate::validate_file;
use crate::triggers::schedule::ScheduleDef;

/// Shared by every handler.
pub type AppState = Arc<Shared>;

pub struct Shared {
    pub engine: Engine,
    pub tokens: Tokens,
    pub hooks: HashMap<String, HookRuntime>,
    pub metrics: Arc<Metrics>,
    pub executor: Arc<Executor>,
    /// The configured schedules (checked at start).
    pub schedules: Vec<ScheduleDef>,
    pub ui: ui::Ui,
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Overrides the configuration's `listen`.
    pub listen: Option<String>,
    /// How long shutdown waits for steps in flight.
    pub drain_timeout: Duration,
    /// Runs executed at once by this process.
    pub max_concurrent_runs: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: None,
            drain_timeout: Duration::from_secs(30),
            max_concurrent_runs: 16,
        }
    }
}

/// Bodies of API requests (webhooks read theirs with the same bound themselves).
const API_BODY_LIMIT: usize = 1024 * 1024;
/// Bound on producing a response (not on streaming a download's body).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for HTTP requests in flight.
const HTTP_DRAIN: Duration = Duration::from_secs(10);

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A bound, ready server.
pub struct Server {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    state: AppState,
    opts: ServeOptions,
    scheduler: Option<Arc<Scheduler>>,
    notifier: Option<Arc<Notifier>>,
}

impl Server {
    /// Read tokens and webhooks (every problem at once), validate each hook's runbook, and
    /// bind the listener.
    pub async fn build(engine: Engine, opts: ServeOptions) -> Result<Server> {
        let config = &engine.inner.config;
        let redactor = &engine.inner.redactor;
        let origin = config
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "configuration".into());
        let mut problems = Vec::new();
        if config.tls.is_some() {
            // Serving plain HTTP when TLS was asked for would be a silent downgrade.
            problems.push(
                "tls: this version does not terminate TLS itself; remove `tls` and put a reverse proxy (which terminates TLS) in front of `cordon serve`"
                    .to_string(),
            );
        }
        let (scheduled, schedule_problems) = load_schedules(&engine);
        problems.extend(schedule_problems);
        let public_url = match config.public_url.as_deref() {
            Some(u) => match crate::notify::waiting::check_public_url(u) {
                Ok(u) => Some(u),
                Err(p) => {
                    problems.push(p);
                    None
                }
            },
            None => None,
        };
        let notify = match &config.notify_waiting {
            Some(v) => match crate::notify::waiting::build(v, &engine.inner.registry) {
                Ok(n) => Some(n),
                Err(p) => {
                    problems.extend(p);
                    None
                }
            },
            None => None,
        };
        if notify.is_some() && config.public_url.is_none() {
            tracing::warn!("notify_waiting without public_url: notices carry no approval link");
        }
        let tokens = match Tokens::from_config(&config.api_tokens, &config.base_dir, redactor) {
            Ok(t) => Some(t),
            Err(p) => {
                problems.extend(p);
                None
            }
        };
        let mut hooks = HashMap::new();
        let (built, hook_problems) =
            crate::triggers::webhook::build_all(&config.webhooks, &config.base_dir, redactor);
        problems.extend(hook_problems);
        let ctx = engine.validation_context();
        for hook in built {
            let at = format!("webhooks.{}.runbook", hook.name);
            let path = match crate::cli::find_runbook(&config.runbooks_dir, &hook.runbook) {
                Ok(p) => p,
                Err(e) => {
                    problems.push(format!("{at}: {e}"));
                    continue;
                }
            };
            match validate_file(&path, &ctx) {
                Ok(rb) => {
                    hooks.insert(hook.name.clone(), HookRuntime::new(hook, rb));
                }
                Err(diags) => problems.push(format!(
                    "{at}: runbook `{}` is not valid: {}",
                    hook.runbook,
                    diags
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
            }
        }
        let tokens = match tokens {
            Some(t) if problems.is_empty() => t,
            _ => {
                return Err(crate::cli::Exit(
                    2,
                    problems
                        .iter()
                        .map(|p| format!("{origin}: {p}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
                .into())
            }
        };
        if tokens.is_empty() {
            tracing::warn!("no api.tokens configured: every /api/v1 request except openapi.json will be refused (401)");
        }
        if config.database_url.starts_with("postgres") && config.evidence_s3.is_none() {
            tracing::warn!(
                evidence = %config.evidence_dir.display(),
                "the database is PostgreSQL (several nodes?) but evidence goes to a local folder: a run resumed on another node would write its evidence there; use evidence.s3 or a folder every node mounts at this path"
            );
        }
        let listen = opts.listen.clone().unwrap_or_else(|| config.listen.clone());
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let metrics = Arc::new(Metrics::new());
        let ui = ui::Ui::new(config.public_url.as_deref());
        let executor = Arc::new(Executor::new(
            engine.clone(),
            metrics.clone(),
            opts.max_concurrent_runs,
        ));
        let schedules = scheduled.iter().map(|s| s.def.clone()).collect();
        let scheduler = (!scheduled.is_empty()).then(|| {
            let ex = executor.clone();
            Arc::new(Scheduler::new(
                engine.clone(),
                scheduled,
                Arc::new(SystemClock),
                Arc::new(move |id: &str| ex.submit(id)),
            ))
        });
        let notifier =
            notify.map(|n| Arc::new(Notifier::new(engine.clone(), n, public_url.clone())));
        Ok(Server {
            listener,
            addr,
            state: Arc::new(Shared {
                engine,
                tokens,
                hooks,
                metrics,
                executor,
                schedules,
                ui,
            }),
            opts,
            scheduler,
            notifier,
        })
    }

    /// The bound address (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve until `shutdown` resolves, then drain. Returns false when the drain bound was
    /// reached with steps still in flight (they are resumed by the next start).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<bool> {
        let Server {
            listener,
            state,
            opts,
            scheduler,
            notifier,
            ..
        } = self;
        let token = state.engine.inner.shutdown.clone();
        {
            let token = token.clone();
            tokio::spawn(async move {
                shutdown.await;
                token.cancel();
            });
        }
        // Every unfinished run, at start; then the periodic sweep.
        state.executor.sweep(true).await;
        let sweeper = {
            let executor = state.executor.clone();
            let token = token.clone();
            let every = state.engine.inner.config.cluster.sweep;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => executor.sweep(false).await,
                        _ = token.cancelled() => break,
                    }
                }
            })
        };
        // Schedules and waiting notices stop between turns at shutdown.
        let background: Vec<_> = scheduler
            .map(|s| tokio::spawn(s.run(token.clone())))
            .into_iter()
            .chain(notifier.map(|n| tokio::spawn(n.run(token.clone()))))
            .collect();
        let app = router(state.clone());
        let graceful = token.clone().cancelled_owned();
        let http = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await
        });
        token.cancelled().await;
        tracing::info!(
            bound_secs = opts.drain_timeout.as_secs(),
            "shutting down: no new connections or runs; letting steps in flight finish"
        );
        let _ = sweeper.await;
        for task in background {
            if tokio::time::timeout(opts.drain_timeout, task)
                .await
                .is_err()
            {
                tracing::warn!("a schedule or notice task did not stop within the drain bound");
            }
        }
        let drained = state.executor.drain(opts.drain_timeout).await;
        match tokio::time::timeout(HTTP_DRAIN, http).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
            Err(_) => tracing::warn!("HTTP requests still open after the drain bound; closing"),
            Ok(Ok(Ok(()))) => {}
        }
        if drained {
            tracing::info!("drained: every run is finished, waiting, or saved for the next start");
        } else {
            tracing::warn!("drain bound reached: calls still in flight are repeated, under their idempotency keys, by the next start");
        }
        Ok(drained)
    }
}

/// Check `schedules:` (every problem at once), load and validate each schedule's runbook and
/// check its inputs against it.
pub fn load_schedules(engine: &Engine) -> (Vec<Arc<Scheduled>>, Vec<String>) {
    let config = &engine.inner.config;
    let (defs, errors) = crate::triggers::schedule::build_all(&config.schedules);
    let mut problems: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let ctx = engine.validation_context();
    let mut out = Vec::new();
    for def in defs {
        let at = format!(
            "schedules[{}] (runbook `{}`): runbook",
            def.index, def.runbook
        );
        let path = match crate::cli::find_runbook(&config.runbooks_dir, &def.runbook) {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("{at}: {e}"));
                continue;
            }
        };
        match validate_file(&path, &ctx) {
            Ok(rb) => match def.check_inputs(&rb) {
                Ok(()) => out.push(Arc::new(Scheduled {
                    def,
                    runbook: Arc::new(rb),
                })),
                Err(e) => problems.push(e.to_string()),
            },
            Err(diags) => problems.push(format!(
                "{at}: `{}` is not valid: {}",
                def.runbook,
                diags
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        }
    }
    (out, problems)
}

#[derive(Clone, Default)]
struct UlidRequestId;

impl MakeRequestId for UlidRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&ulid::Ulid::new().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// Every route, with request ids, tracing and timeouts.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/runs", post(api::start_run).get(api::list_runs))
        .route("/runs/{id}", get(api::show_run))
        .route("/runs/{id}/cancel", post(api::cancel_run))
        .route("/runs/{id}/undo", post(api::undo_run))
        .route("/runs/{id}/steps/{step}/approve", post(api::approve))
        .route("/runs/{id}/steps/{step}/reject", post(api::reject))
        .route("/runs/{id}/steps/{step}/done", post(api::done))
        .route("/runs/{id}/audit", get(api::run_audit))
        .route("/runs/{id}/evidence", get(api::run_evidence))
        .route("/audit/verify", get(api::audit_verify))
        .route("/evidence/{id}", get(api::download_evidence))
        .route("/runs/{id}/drafts", get(api::run_drafts))
        .route("/drafts/{id}", get(api::show_draft))
        .route("/runbooks", get(api::runbooks))
        .route("/connectors", get(api::connectors))
        .route("/schedules", get(api::schedules))
        .route("/openapi.json", get(api::openapi))
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT));
    Router::new()
        .nest("/api/v1", api)
        .route("/hooks/{name}", post(hooks::receive).get(hooks::okta_challenge))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .merge(ui::router())
        .fallback(error::not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            // Method and path only: headers (Authorization, signatures) and bodies are never
            // logged.
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<axum::body::Body>| {
                    let id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("http", request_id = %id, method = %req.method(), path = %req.uri().path())
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, UlidRequestId))
        .with_state(state)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// `cordon serve`.
pub async fn command(config_path: Option<&Path>, opts: ServeOptions) -> Result<u8> {
    let app = crate::cli::App::open(config_path).await?;
    app.audit_config("serve").await?;
    let server = Server::build(app.engine.clone(), opts).await?;
    let addr = server.local_addr();
    tracing::info!(%addr, "listening");
    eprintln!("cordon serve listening on http://{addr}");
    let drained = server
        .run(shutdown_signal())
        .await
        .map_err(|e| anyhow!("{e:#}"))?;
    eprintln!(
        "{}",
        if drained {
            "cordon serve stopped; unfinished runs resume at the next start"
        } else {
            "cordon serve stopped at the drain bound; unfinished runs (and calls in flight) resume at the next start"
        }
    );
    Ok(0)
}
