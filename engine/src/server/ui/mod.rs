//! The review UI at `/ui/`: server-rendered pages over the same store, roles and decision
//! logic as the API, for approvers deciding from a chat link and for counsel and auditors
//! reviewing what happened.
//!
//! - Login with an API token ([`session`]): a cookie session, CSRF tokens on every form.
//! - Pages: the runs list (filters, grouped by case), a run's timeline, a step's page (the
//!   approval page: what the decision releases, the decisions so far, Approve/Reject or
//!   Done forms), drafts rendered for reading, the audit chain's status with per-run
//!   exports, and what waits for the logged-in person.
//! - Templates are Handlebars, embedded in the binary, strict and HTML-escaping; the style
//!   sheet is served from the binary too, and no page needs JavaScript (a Content Security
//!   Policy allows none).
//! - Every change made here (decisions, task completions, cancel, undo) and every evidence
//!   download, secret reveal and audit export is an audit event whose actor is
//!   `ui:<token name>`. Decisions go through [`crate::exec::decide`]: groups, quorum and no
//!   self-approval are enforced there, for the API, the CLI and this UI alike.

pub mod session;
pub mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use handlebars::Handlebars;
use serde::Deserialize;
use serde_json::{json, Value};

use self::session::{safe_next, same_secret, Session, Sessions, LOGIN_COOKIE};
use self::view::{pretty, run_href, status_class, step_href, subject, time};
use super::api::evidence_response;
use super::auth::{role_name, Identity, Permission};
use super::error::ApiError;
use super::AppState;
use crate::exec::decide::{allowed, decide, Decider, Verdict};
use crate::runbook::model::StepKind;
use crate::store::{AuditDraft, Decision, RunFilter, RunRecord, RunStatus, StepStatus};

/// The UI's state: its sessions and what it needs from the configuration.
pub struct Ui {
    pub sessions: Sessions,
    /// `public_url` without a trailing slash: shown as the link to share for a step.
    pub public_url: Option<String>,
}

impl Ui {
    pub fn new(public_url: Option<&str>) -> Ui {
        let public_url = public_url.map(|u| u.trim_end_matches('/').to_string());
        let secure = public_url
            .as_deref()
            .is_some_and(|u| u.to_ascii_lowercase().starts_with("https://"));
        Ui {
            sessions: Sessions::new(secure),
            public_url,
        }
    }
}

/// The page for a step, as a link to share: `{public_url}/ui/runs/{run}/steps/{step}`
/// (only the path when `public_url` is not configured).
pub fn step_link(public_url: Option<&str>, run: &str, step: &str) -> String {
    match public_url {
        // The same link `notify_waiting` sends.
        Some(base) => crate::notify::waiting::approval_link(base, run, step),
        None => step_href(run, step),
    }
}

const CSS: &str = include_str!("templates/cordon.css");
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

static TEMPLATES: LazyLock<Handlebars<'static>> = LazyLock::new(|| {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::html_escape);
    for (name, text) in [
        ("layout", include_str!("templates/layout.hbs")),
        ("login", include_str!("templates/login.hbs")),
        ("runs", include_str!("templates/runs.hbs")),
        ("run", include_str!("templates/run.hbs")),
        ("step", include_str!("templates/step.hbs")),
        ("draft", include_str!("templates/draft.hbs")),
        ("audit", include_str!("templates/audit.hbs")),
        ("pending", include_str!("templates/pending.hbs")),
        ("error", include_str!("templates/error.hbs")),
    ] {
        // The templates are part of the binary; a unit test renders every one of them.
        if let Err(e) = hb.register_template_string(name, text) {
            panic!("review UI template {name}: {e}");
        }
    }
    hb
});

/// Every `/ui` route (full paths, merged into the server's router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(runs_page))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/static/cordon.css", get(css))
        .route("/ui/pending", get(pending_page))
        .route("/ui/audit", get(audit_page))
        .route("/ui/runs/{id}", get(run_page))
        .route("/ui/runs/{id}/cancel", post(cancel_run))
        .route("/ui/runs/{id}/undo", post(undo_run))
        .route("/ui/runs/{id}/audit.html", get(export_html))
        .route("/ui/runs/{id}/audit.jsonl", get(export_jsonl))
        .route("/ui/runs/{id}/steps/{step}", get(step_page))
        .route("/ui/runs/{id}/steps/{step}/approve", post(approve))
        .route("/ui/runs/{id}/steps/{step}/reject", post(reject))
        .route("/ui/runs/{id}/steps/{step}/done", post(done))
        .route("/ui/evidence/{id}", get(download_evidence))
        .route("/ui/drafts/{id}", get(draft_page))
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .layer(axum::middleware::map_response(security_headers))
}

/// Headers on every UI answer: no framing, no sniffing, no caching of pages, a CSP without
/// scripts. An answer that set its own (the audit export's CSP) keeps it.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    }
    resp
}

// ---------------------------------------------------------------------------------------
// Rendering and errors

/// Render `template` inside the layout. `session` fills the header (who, logout form).
fn render(
    template: &str,
    title: &str,
    nav: &str,
    session: Option<&Session>,
    page: Value,
) -> Result<String, UiError> {
    let user = session.map(|s| {
        json!({"name": s.identity.name, "role": role_name(s.identity.role), "groups": s.identity.groups})
    });
    let ctx = json!({
        "title": title,
        "nav": nav,
        "user": user,
        "csrf": session.map(|s| s.csrf.clone()),
        "page": page,
    });
    TEMPLATES
        .render(template, &ctx)
        .map_err(|e| UiError::internal(format!("template {template}: {e}")))
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn page(
    template: &str,
    title: &str,
    nav: &str,
    session: &Session,
    data: Value,
) -> Result<Response, UiError> {
    Ok(html(
        StatusCode::OK,
        render(template, title, nav, Some(session), data)?,
    ))
}

/// An error shown as a page (never as JSON), with the status the API would answer.
pub struct UiError {
    status: StatusCode,
    message: String,
    session: Option<Box<Session>>,
}

impl UiError {
    fn new(status: StatusCode, message: impl Into<String>) -> UiError {
        UiError {
            status,
            message: message.into(),
            session: None,
        }
    }

    fn internal(detail: impl std::fmt::Display) -> UiError {
        ApiError::internal(detail).into()
    }

    fn forbidden(message: impl Into<String>) -> UiError {
        UiError::new(StatusCode::FORBIDDEN, message)
    }

    /// Show the header of the logged-in person on the error page.
    fn with(mut self, session: &Session) -> UiError {
        self.session = Some(Box::new(session.clone()));
        self
    }
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> UiError {
        let status = e.status();
        let message = match &e {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error answering a review UI request");
                "Internal error; the server log has the details under this response's x-request-id."
                    .to_string()
            }
            other => other.to_string(),
        };
        UiError::new(status, message)
    }
}

impl From<crate::store::StoreError> for UiError {
    fn from(e: crate::store::StoreError) -> UiError {
        ApiError::from(e).into()
    }
}

impl std::fmt::Debug for UiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UiError({}, {:?})", self.status, self.message)
    }
}

impl std::fmt::Display for UiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let title = self
            .status
            .canonical_reason()
            .unwrap_or("Error")
            .to_string();
        let body = render(
            "error",
            &title,
            "",
            self.session.as_deref(),
            json!({"status": self.status.as_u16(), "reason": title, "message": self.message}),
        )
        .unwrap_or_else(|_| {
            // The error template itself failed: plain text, escaped by being text.
            String::new()
        });
        if body.is_empty() {
            return (self.status, self.message).into_response();
        }
        html(self.status, body)
    }
}

async fn not_found(session: Option<UiUser>) -> UiError {
    let e = UiError::new(StatusCode::NOT_FOUND, "There is no such page.");
    match session {
        Some(UiUser(s)) => e.with(&s),
        None => e,
    }
}

// ---------------------------------------------------------------------------------------
// Sessions and forms

/// Extractor: the logged-in person, or a redirect to the login page (which comes back to
/// this page afterwards).
pub struct UiUser(pub Session);

impl FromRequestParts<AppState> for UiUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        if let Some(s) = state.ui.sessions.get(&parts.headers) {
            return Ok(UiUser(s));
        }
        let read = parts.method == Method::GET || parts.method == Method::HEAD;
        // Scripts may read pages with the API's bearer token instead of a session (no
        // cookie, so nothing for another site to ride on); changes need a session and its
        // CSRF token.
        if read {
            if let Some(who) = bearer(&parts.headers).and_then(|t| state.tokens.authenticate(t)) {
                return Ok(UiUser(Session::transient(who.clone())));
            }
        }
        let next = if read {
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/ui/".into())
        } else {
            "/ui/".into()
        };
        Err(Redirect::to(&format!(
            "/ui/login?next={}",
            view::query_value(&safe_next(Some(&next)))
        ))
        .into_response())
    }
}

impl axum::extract::OptionalFromRequestParts<AppState> for UiUser {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(state.ui.sessions.get(&parts.headers).map(UiUser))
    }
}

/// A submitted form (`application/x-www-form-urlencoded`).
struct Form(HashMap<String, String>);

impl Form {
    fn parse(body: &Bytes) -> Form {
        Form(url::form_urlencoded::parse(body).into_owned().collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A free-text field; empty means none.
    fn text(&self, key: &str) -> Option<String> {
        self.get(key)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }

    /// 403 unless the form carries this session's CSRF token.
    fn check_csrf(&self, s: &Session) -> Result<(), UiError> {
        if s.csrf_ok(self.get("csrf")) {
            Ok(())
        } else {
            Err(UiError::forbidden(
                "This form's CSRF token is missing or wrong, so nothing was done. Reload the page and submit it again.",
            )
            .with(s))
        }
    }
}

fn ui_actor(who: &Identity) -> String {
    format!("ui:{}", who.name)
}

fn ui_decider(who: &Identity) -> Decider {
    Decider {
        name: who.name.clone(),
        via: "ui".into(),
        groups: Some(who.groups.clone()),
        admin: who.role == crate::config::Role::Admin,
    }
}

fn require(s: &Session, what: Permission, message: &str) -> Result<(), UiError> {
    if s.identity.may(what) {
        Ok(())
    } else {
        Err(UiError::forbidden(format!(
            "{} (you are logged in as {}, role {}).",
            message,
            s.identity.name,
            role_name(s.identity.role)
        ))
        .with(s))
    }
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Login and logout

#[derive(Debug, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

fn login_form(
    state: &AppState,
    status: StatusCode,
    next: &str,
    error: Option<&str>,
) -> Result<Response, UiError> {
    let csrf = session::random_token();
    let body = render(
        "login",
        "Log in",
        "",
        None,
        json!({"next": next, "csrf": csrf, "error": error,
               "no_tokens": state.tokens.is_empty()}),
    )?;
    let mut resp = html(status, body);
    if let Ok(v) = HeaderValue::from_str(&state.ui.sessions.login_cookie(&csrf)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Result<Response, UiError> {
    let next = safe_next(q.next.as_deref());
    if state.ui.sessions.get(&headers).is_some() {
        return Ok(Redirect::to(&next).into_response());
    }
    login_form(&state, StatusCode::OK, &next, None)
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, UiError> {
    let form = Form::parse(&body);
    let next = safe_next(form.get("next"));
    // The form's CSRF value must match its cookie. A client that sends no value at all (a
    // script, not this form) is accepted only when nothing says the request came from
    // another site (browsers send `Origin` and `Sec-Fetch-Site` with a form's POST).
    let expected = session::cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    let ok = match form.get("csrf") {
        Some(c) => same_secret(c, &expected),
        None => !cross_site(&headers, state.ui.public_url.as_deref()),
    };
    if !ok {
        return login_form(
            &state,
            StatusCode::FORBIDDEN,
            &next,
            Some(
                "The login form had expired or did not come from this site. Enter the token again.",
            ),
        );
    }
    let token = form.get("token").map(str::trim).unwrap_or("");
    let Some(who) = state
        .tokens
        .authenticate(token)
        .filter(|_| !token.is_empty())
    else {
        return login_form(
            &state,
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That token is not one of this server's API tokens."),
        );
    };
    tracing::info!(name = %who.name, "review UI login");
    let id = state.ui.sessions.create(who.clone());
    let mut resp = Redirect::to(&next).into_response();
    for line in [
        state.ui.sessions.session_cookie(&id),
        state
            .ui
            .sessions
            .login_cookie("")
            .replace("Max-Age=3600", "Max-Age=0"),
    ] {
        if let Ok(v) = HeaderValue::from_str(&line) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(resp)
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let h = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    h.strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether the browser says this request came from another site: `Sec-Fetch-Site` other
/// than same-origin or none, or an `Origin` that is neither this host nor `public_url`.
fn cross_site(headers: &HeaderMap, public_url: Option<&str>) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.to_str(), Ok("same-origin") | Ok("none")) {
            return true;
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let authority = origin.split_once("://").map(|(_, a)| a);
    let same_host = authority.is_some() && authority == host;
    let same_public = public_url.is_some_and(|p| p.trim_end_matches('/') == origin);
    !(same_host || same_public)
}

async fn logout(
    State(state): State<AppState>,
    UiUser(s): UiUser,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, UiError> {
    Form::parse(&body).check_csrf(&s)?;
    state.ui.sessions.remove(&headers);
    let mut resp = Redirect::to("/ui/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&state.ui.sessions.clear_session_cookie()) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

// ---------------------------------------------------------------------------------------
// Runs list

#[derive(Debug, Default, Deserialize)]
struct RunsQuery {
    runbook: Option<String>,
    status: Option<String>,
    subject: Option<String>,
    case: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

const LIST_LIMIT: u32 = 500;

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A day (`2026-11-26`) or an RFC 3339 time, as the store's timestamp text. `end_of_day`
/// turns a day into the start of the next one (the range's exclusive end).
fn bound(field: &str, value: &str, end_of_day: bool) -> Result<String, String> {
    if let Ok(day) = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        let day = if end_of_day {
            day.succ_opt().unwrap_or(day)
        } else {
            day
        };
        let t = day.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
        return t
            .map(crate::time::format)
            .ok_or_else(|| format!("{field}: `{value}` is not a day"));
    }
    crate::time::parse(value)
        .map(crate::time::format)
        .ok_or_else(|| {
            format!("{field}: `{value}` is neither a day (2026-11-26) nor an RFC 3339 time")
        })
}

fn run_row(r: &RunRecord) -> Value {
    json!({
        "id": r.id,
        "href": run_href(&r.id),
        "runbook": r.runbook,
        "status": r.status.as_str(),
        "status_class": status_class(r.status.as_str()),
        "trigger": r.trigger,
        "started_by": r.started_by,
        "subject": subject(&r.inputs),
        "created": time(Some(&r.created_at)),
        "finished": r.finished_at.as_deref().map(|f| time(Some(f))),
        "duration": view::duration(r.started_at.as_deref().or(Some(&r.created_at)), r.finished_at.as_deref()),
        "undo_of": r.undo_of,
        "undo_href": r.undo_of.as_deref().map(run_href),
        "dry_run": r.dry_run,
        "error": r.error,
    })
}

async fn runs_page(
    State(state): State<AppState>,
    UiUser(s): UiUser,
    Query(q): Query<RunsQuery>,
) -> Result<Response, UiError> {
    let mut problems = Vec::new();
    let status = match nonempty(&q.status) {
        Some(st) => match RunStatus::parse(&st) {
            Some(x) => Some(x),
            None => {
                problems.push(format!("status: unknown status `{st}`"));
                None
            }
        },
        None => None,
    };
    let mut range = |field: &str, v: &Option<String>, end: bool| match nonempty(v) {
        Some(v) => match bound(field, &v, end) {
            Ok(b) => Some(b),
            Err(e) => {
                problems.push(e);
                None
            }
        },
        None => None,
    };
    let created_from = range("from", &q.from, false);
    let created_before = range("to", &q.to, true);
    let runs = if problems.is_empty() {
        state
            .engine
            .store()
            .list_runs(&RunFilter {
                status,
                runbook: nonempty(&q.runbook),
                case_id: nonempty(&q.case),
                subject: nonempty(&q.subject),
                created_from,
                created_before,
                limit: Some(LIST_LIMIT),
                ..RunFilter::default()
            })
            .await?
    } else {
        Vec::new()
    };
    // Grouped by case, cases in the order of their newest run.
    let mut order: Vec<String> = Vec::new();
    let mut groups: HashMap<String, Vec<&RunRecord>> = HashMap::new();
    for r in &runs {
        if !groups.contains_key(&r.case_id) {
            order.push(r.case_id.clone());
        }
        groups.entry(r.case_id.clone()).or_default().push(r);
    }
    let cases: Vec<Value> = order
        .iter()
        .map(|case| {
            let list = &groups[case];
            let subject = list.iter().find_map(|r| subject(&r.inputs));
            let active = list.iter().filter(|r| r.status.is_active()).count();
            json!({
                "case": case,
                "case_href": format!("/ui/?case={}", view::query_value(case)),
                "subject": subject,
                "active": active,
                "runs": list.iter().map(|r| run_row(r)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let statuses: Vec<Value> = ["", "queued", "running", "waiting", "succeeded", "failed", "cancelled"]
        .iter()
        .map(|st| json!({"value": st, "label": if st.is_empty() { "any" } else { st }, "selected": q.status.as_deref().unwrap_or("") == *st}))
        .collect();
    let mut runbooks: Vec<&str> = runs.iter().map(|r| r.runbook.as_str()).collect();
    runbooks.sort_unstable();
    runbooks.dedup();
    let filtered = [&q.runbook, &q.status, &q.subject, &q.case, &q.from, &q.to]
        .iter()
        .any(|v| nonempty(v).is_some());
    page(
        "runs",
        "Runs",
        "runs",
        &s,
        json!({
            "filters": {
                "runbook": q.runbook.clone().unwrap_or_default(),
                "subject": q.subject.clone().unwrap_or_default(),
                "case": q.case.clone().unwrap_or_default(),
                "from": q.from.clone().unwrap_or_default(),
                "to": q.to.clone().unwrap_or_default(),
            },
            "filtered": filtered,
            "statuses": statuses,
            "runbooks": runbooks,
            "problems": problems,
            "cases": cases,
            "count": runs.len(),
            "truncated": runs.len() as u32 >= LIST_LIMIT,
            "limit": LIST_LIMIT,
        }),
    )
}

// ---------------------------------------------------------------------------------------
// A run's timeline

async fn get_run(state: &AppState, id: &str, s: &Session) -> Result<RunRecord, UiError> {
    state
        .engine
        .store()
        .get_run(id)
        .await
        .map_err(|e| UiError::from(e).with(s))?
        .ok_or_else(|| {
            UiError::new(StatusCode::NOT_FOUND, format!("Run {id} was not found.")).with(s)
        })
}

#[derive(Debug, Default, Deserialize)]
struct RunQuery {
    reveal: Option<String>,
}

fn kind_name(k: StepKind) -> &'static str {
    match k {
        StepKind::Action => "action",
        StepKind::Approval => "approval",
        StepKind::Task => "task",
    }
}

fn decision_row(d: &Decision) -> Value {
    json!({
        "step": d.step_id,
        "decision": d.decision,
        "class": match d.decision.as_str() { "reject" => "bad", _ => "ok" },
        "by": d.decided_by,
        "at": time(Some(&d.at)),
        "comment": d.comment,
    })
}

async fn run_page(
    State(state): State<AppState>,
    UiUser(s): UiUser,
    Path(id): Path<String>,
    Query(q): Query<RunQuery>,
) -> Result<Response, UiError> {
    let reveal = q
        .reveal
        .as_deref()
        .is_some_and(|v| v != "0" && !v.is_empty());
    if reveal {
        require(&s, Permission::Reveal, "Only admins may see secret outputs")?;
    }
    let run = get_run(&state, &id, &s).await?;
    let store = state.engine.store();
    let fail = |e: crate::store::StoreError| UiError::from(e).with(&s);
    let steps = store.steps(&id).await.map_err(fail)?;
    let items = store.items(&id).await.map_err(fail)?;
    let decisions = store.decisions(&id).await.map_err(fail)?;
    let joined = store.joined_triggers(&id).await.map_err(fail)?;
    let rb = crate::exec::runner::stored_runbook(&run).ok();
    let may_evidence = s.identity.may(Permission::ReadEvidence);
    let is_admin = s.identity.may(Permission::Reveal);
    if reveal {
        store
            .append_audit(vec![AuditDraft {
                run_id: Some(id.clone()),
                actor: ui_actor(&s.identity),
                action: "secrets.revealed".into(),
                details: json!({}),
            }])
            .await
            .map_err(fail)?;
    }
    let mut secrets_withheld = false;
    // A timeline: steps in the order they started; those that never did, last, in the
    // order the store keeps them.
    let mut ordered: Vec<&crate::store::StepRecord> = steps.iter().collect();
    ordered.sort_by(|a, b| match (&a.started_at, &b.started_at) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    let step_rows: Vec<Value> = ordered
        .into_iter()
        .map(|st| {
            let def = rb.as_ref().and_then(|rb| rb.step(&st.step_id));
            let kind = def.map(|d| d.kind()).unwrap_or(StepKind::Action);
            let mine: Vec<Value> = items
                .iter()
                .filter(|i| i.step_id == st.step_id)
                .map(|i| {
                    let secret = i.secret_output.is_some();
                    if secret && !reveal {
                        secrets_withheld = true;
                    }
                    json!({
                        "index": i.idx,
                        "status": i.status.as_str(),
                        "status_class": status_class(i.status.as_str()),
                        "attempts": i.attempts,
                        "connector": i.connector,
                        "inputs": pretty(&i.inputs),
                        "output": i.output.as_ref().map(pretty),
                        "error": i.error,
                        "secret": secret,
                        "secret_output": if reveal { i.secret_output.as_ref().map(pretty) } else { None },
                        "duration": view::duration(i.started_at.as_deref(), i.finished_at.as_deref()),
                    })
                })
                .collect();
            let attempts = st.attempts.max(
                items
                    .iter()
                    .filter(|i| i.step_id == st.step_id)
                    .map(|i| i.attempts)
                    .sum(),
            );
            let gate = st.inputs.as_ref().filter(|_| kind != StepKind::Action);
            let step_decisions: Vec<Value> = decisions
                .iter()
                .filter(|d| d.step_id == st.step_id)
                .map(decision_row)
                .collect();
            json!({
                "id": st.step_id,
                "href": step_href(&id, &st.step_id),
                "uses": def.and_then(|d| d.uses.clone()),
                "kind": kind_name(kind),
                "gate": kind != StepKind::Action,
                "status": st.status.as_str(),
                "status_class": status_class(st.status.as_str()),
                "waiting": st.status == StepStatus::Waiting,
                "attempts": attempts,
                "started": st.started_at.as_deref().map(|t| time(Some(t))),
                "finished": st.finished_at.as_deref().map(|t| view::time_after(st.started_at.as_deref(), t)),
                "duration": view::duration(st.started_at.as_deref(), st.finished_at.as_deref()),
                "message": gate.and_then(|g| g.get("message")).and_then(Value::as_str),
                "output": st.output.as_ref().map(pretty),
                "error": st.error,
                "reason": st.reason,
                "on_failure": st.on_failure,
                "items": mine,
                "single": items.iter().filter(|i| i.step_id == st.step_id).count() == 1,
                "decisions": step_decisions,
            })
        })
        .collect();
    let evidence: Vec<Value> = if may_evidence {
        store
            .evidence(&id)
            .await
            .map_err(fail)?
            .iter()
            .map(|e| {
                json!({
                    "id": e.evidence_id, "step": e.step_id, "path": e.path, "sha256": e.sha256,
                    "bytes": e.bytes, "records": e.records, "collected": time(Some(&e.collected_at)),
                    "source": format!("{}.{} ({})", e.meta.connector_type, e.meta.action, e.meta.instance),
                    "href": view::path(&["ui", "evidence", &e.evidence_id]),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let drafts: Vec<Value> = if may_evidence {
        store
            .drafts(&id)
            .await
            .map_err(fail)?
            .iter()
            .map(|d| {
                json!({
                    "id": d.draft_id, "template": d.template, "subject": d.subject,
                    "to": d.to.as_ref().map(pretty), "audience": d.audience, "step": d.step_id,
                    "created": time(Some(&d.created_at)),
                    "href": view::path(&["ui", "drafts", &d.draft_id]),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let operate = s.identity.may(Permission::Operate);
    let data = json!({
        "run": {
            "id": run.id,
            "runbook": run.runbook,
            "sha256": run.runbook_sha256,
            "status": run.status.as_str(),
            "status_class": status_class(run.status.as_str()),
            "trigger": run.trigger,
            "started_by": run.started_by,
            "subject": subject(&run.inputs),
            "case": run.case_id,
            "case_href": format!("/ui/?case={}", view::query_value(&run.case_id)),
            "inputs": pretty(&run.inputs),
            "created": time(Some(&run.created_at)),
            "started": run.started_at.as_deref().map(|t| time(Some(t))),
            "finished": run.finished_at.as_deref().map(|t| time(Some(t))),
            "duration": view::duration(run.started_at.as_deref().or(Some(&run.created_at)), run.finished_at.as_deref()),
            "error": run.error,
            "undo_of": run.undo_of,
            "undo_href": run.undo_of.as_deref().map(run_href),
            "dry_run": run.dry_run,
            "joined": joined.iter().map(pretty).collect::<Vec<_>>(),
        },
        "steps": step_rows,
        "decisions": decisions.iter().map(decision_row).collect::<Vec<_>>(),
        "may_evidence": may_evidence,
        "evidence": evidence,
        "drafts": drafts,
        "reveal": reveal,
        "may_reveal": is_admin && secrets_withheld,
        "reveal_href": format!("{}?reveal=1", run_href(&id)),
        "secrets_withheld": secrets_withheld,
        "can_cancel": operate && run.status.is_active(),
        "can_undo": operate && !run.status.is_active() && !run.dry_run,
        "cancel_action": view::path(&["ui", "runs", &id, "cancel"]),
        "undo_action": view::path(&["ui", "runs", &id, "undo"]),
        "export_html": view::path(&["ui", "runs", &id, "audit.html"]),
        "export_jsonl": view::path(&["ui", "runs", &id, "audit.jsonl"]),
    });
    page("run", &format!("Run {id}"), "runs", &s, data)
}

async fn cancel_run(
    State(state): State<AppState>,
    UiUser(s): UiUser,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, UiError> {
    Form::parse(&body).check_csrf(&s)?;
    require(
        &s,
        Permission::Operate,
        "Only responders and admins may cancel runs",
    )?;
    let run = get_run(&state, &id, &s).await?;
    if !run.status.is_active() {
        return Err(UiError::new(
            StatusCode::CONFLICT,
            format!("Run {id} is already {}.", run.status.as_str()),
        )
        .with(&s));
    }
    state
        .engine
        .store()
        .request_cancel(
            &id,
            AuditDraft {
                run_id: Some(id.clone()),
                actor: ui_actor(&s.identity),
                action: "run.cancel_requested".into(),
                details: json!({}),
            },
        )
        .await
        .map_err(|e| UiError::from(e).with(&s))?;
    state.executor.submit(&id);
    Ok(Redirect::to(&run_href(&id)).into_response())
}

async fn undo_run(
    State(state): State<AppState>,
    UiUser(s): UiUser,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, UiError> {
    Form::parse(&body).check_csrf(&s)?;
    require(
        &s,
        Permission::Operate,
        "Only responders and admins may undo runs",
    )?;
    let actor = ui_actor(&s.identity);
    let (undo, _plan) =
        crate::exec::undo::create_undo_run(&state.engine, &id, &actor, &s.identity.name, &actor)
            .await
            .map_err(|e| UiError::from(ApiError::from(e)).with(&s))?;
    state.executor.submit(&undo.id);
    Ok(Redirect::to(&run_href(&undo.id)).into_response())
}

// ---------------------------------------------------------------------------------------
// A step's page: the approval page

#[derive(Debug, Default, Deserialize)]
struct StepQuery {
    decided: Option<String>,
}

/// Everything the step page shows. `error` is a refused decision to show on the page.
async fn step_view(
    state: &AppState,
    s: &Session,
    run_id: &str,
    step_id: &str,
    notice: Option<&str>,
    error: Option<&str>,
) -> Result<Value, UiError> {
    let run = get_run(state, run_id, s).await?;
    let store = state.engine.store();
    let fail = |e: crate::store::StoreError| UiError::from(e).with(s);
    let rb = crate::exec::runner::stored_runbook(&run)
        .map_err(|e| UiError::from(ApiError::from(e)).with(s))?;
    let def = rb.step(step_id).ok_or_else(|| {
        UiError::new(
            StatusCode::NOT_FOUND,
            format!("Run {run_id} has no step `{step_id}`."),
        )
        .with(s)
    })?;
    let kind = def.kind();
    let steps = store.steps(run_id).await.map_err(fail)?;
    let rec = steps.iter().find(|x| x.step_id == step_id);
    let status = rec.map(|r| r.status).unwrap_or(StepStatus::Pending);
    let gate = rec.and_then(|r| r.inputs.clone()).unwrap_or(Value::Null);
    let decisions: Vec<Decision> = store
        .decisions(run_id)
        .await
        .map_err(fail)?
        .into_iter()
        .filter(|d| d.step_id == step_id)
        .collect();
    let (who, min) = match (&def.approval, &def.task) {
        (Some(a), _) => (a.approvers.clone(), a.min_approvals.max(1)),
        (_, Some(t)) => (t.assignees.clone(), 1),
        _ => (Vec::new(), 1),
    };
    let decider = ui_decider(&s.identity);
    let in_groups = allowed(&decider, &who);
    let approvals = decisions.iter().filter(|d| d.decision == "approve").count();
    let mine = decisions.iter().any(|d| {
        d.decision == "approve"
            && d.decided_by.split_once(':').map(|(_, n)| n) == Some(&s.identity.name)
    });
    let waiting = status == StepStatus::Waiting && run.status.is_active();
    let may_decide = s.identity.may(Permission::Decide);
    let can_decide = waiting && kind != StepKind::Action && may_decide && in_groups && !mine;
    let why_not = if !waiting || kind == StepKind::Action {
        None
    } else if !may_decide {
        Some(format!(
            "Your role ({}) does not decide approvals or tasks.",
            role_name(s.identity.role)
        ))
    } else if !in_groups {
        Some(format!(
            "You are not among this step's {}: {}.",
            if kind == StepKind::Task {
                "assignees"
            } else {
                "approvers"
            },
            who.join(", ")
        ))
    } else if mine {
        Some(format!(
            "You have approved; {} of {min} approvals so far.",
            approvals
        ))
    } else {
        None
    };
    let releases: Vec<Value> = gate
        .get("releases")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(step, what)| {
                    json!({
                        "step": step,
                        "href": step_href(run_id, step),
                        "uses": what.get("uses").and_then(Value::as_str),
                        "resolved": what.get("with").map(pretty),
                        "for_each": what.get("for_each").map(pretty),
                        "unresolved": what.get("unresolved").and_then(Value::as_str),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let items: Vec<Value> = store
        .items(run_id)
        .await
        .map_err(fail)?
        .iter()
        .filter(|i| i.step_id == step_id)
        .map(|i| {
            json!({"index": i.idx, "status": i.status.as_str(), "status_class": status_class(i.status.as_str()),
                   "attempts": i.attempts, "connector": i.connector, "inputs": pretty(&i.inputs),
                   "output": i.output.as_ref().map(pretty), "error": i.error, "secret": i.secret_output.is_some()})
        })
        .collect();
    let notice = notice
        .map(|n| match n {
            "approve" => "Your approval was recorded.".to_string(),
            "reject" => {
                "Your rejection was recorded; the run stops here and runs its on_failure steps."
                    .to_string()
            }
            "done" => "The task was marked done.".to_string(),
            _ => String::new(),
        })
        .filter(|n| !n.is_empty());
    let base = view::path(&["ui", "runs", run_id, "steps", step_id]);
    Ok(json!({
        "run": {
            "id": run.id, "href": run_href(&run.id), "runbook": run.runbook,
            "status": run.status.as_str(), "status_class": status_class(run.status.as_str()),
            "started_by": run.started_by, "trigger": run.trigger, "subject": subject(&run.inputs),
            "case": run.case_id, "created": time(Some(&run.created_at)),
        },
        "step": {
            "id": step_id,
            "kind": kind_name(kind),
            "is_approval": kind == StepKind::Approval,
            "is_task": kind == StepKind::Task,
            "uses": def.uses,
            "status": status.as_str(),
            "status_class": status_class(status.as_str()),
            "message": gate.get("message").and_then(Value::as_str),
            "who": who,
            "min": min,
            "approvals": approvals,
            "deadline": gate.get("deadline").and_then(Value::as_str).map(|d| time(Some(d))),
            "since": rec.and_then(|r| r.started_at.as_deref()).map(|t| time(Some(t))),
            "finished": rec.and_then(|r| r.finished_at.as_deref()).map(|t| time(Some(t))),
            "output": rec.and_then(|r| r.output.as_ref()).map(pretty),
            "error": rec.and_then(|r| r.error.clone()),
            "reason": rec.and_then(|r| r.reason.clone()),
        },
        "releases": releases,
        "items": items,
        "decisions": decisions.iter().map(decision_row).collect::<Vec<_>>(),
        "waiting": waiting,
        "can_decide": can_decide,
        "why_not": why_not,
        "notice": notice,
        "error": error,
        "approve_action": format!("{base}/approve"),
        "reject_action": format!("{base}/reject"),
        "done_action": format!("{base}/done"),
        "link": step_link(state.ui.public_url.as_deref(), run_id, step_id),
    }))
}

async fn step_page(
    State(state): State<AppState>,
    UiUser(s): UiUser,
    Path((run, step)): Path<(String, String)>,
    Query(q): Query<StepQuery>,
) -> Result<Response, UiError> {
    let data = step_view(&state, &s, &run, &step, q.decided.as_deref(), None).await?;
    page("step", &format!("{step} · run {run}"), "pending", &s, data)
}

async fn decide_from_form(
    state: AppState,
    s: Session,
    run: String,
    step: String,
    verdict: Verdict,
    body: Bytes,
) -> Result<Response, UiError> {
    let form = Form::parse(&body);
    form.check_csrf(&s)?;
    let text = form.text(if verdict == Verdict::Done {
        "note"
    } else {
        "comment"
    });
    let refused = if !s.identity.may(Permission::Decide) {
        Some((
            StatusCode::FORBIDDEN,
            format!(
                "{} (role {}) may not decide approvals or tasks.",
                s.identity.name,
                role_name(s.identity.role)
            ),
        ))
    } else {
        match decide(
            &state.engine,
            &run,
            &step,
            &ui_decider(&s.identity),
            verdict,
            text,
        )
        .await
        {
            Ok(()) => None,
            Err(e) => {
                let api = ApiError::from(e);
                let status = api.status();
                let UiError { message, .. } = UiError::from(api);
                Some((status, message))
            }
        }
    };
    match refused {
        None => {
            state.executor.submit(&run);
            let decided = match verdict {
                Verdict::Approve => "approve",
                Verdict::Reject => "reject",
                Verdict::Done => "done",
            };
            Ok(
                Redirect::to(&format!("{}?decided={decided}", step_href(&run, &step)))
                    .into_response(),
            )
        }
        Some((status, message)) => {
            // The refusal is shown on the step's page, with the page as it is now.
            let data = step_view(&state, &s, &run, &step, None, Some(&message)).await?;
            let body = render(
                "step",
                &format!("{step} · run {run}"),
                "pending",
                Some(&s),
                data,
            )?;
            Ok(html(status, body))
        }
    }
}

async fn approve(
    State(state): State<AppState>,
    UiUser(s): UiUser,
    Path((run, step)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, UiError> {
    decide_from_form(state, s, run, step, Verdict::Approve, body).await
}

async fn reject(
    State(state): State<AppState>,
    UiUser(s): UiUser,
    Path((run, step)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, UiError> {
    decide_from_form(state, s, run, step, Verdict::Reject, body).await
}

async fn done(
    State(state): State<AppState>,
    UiUser(s): UiUser,
    Path((run, step)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, UiError> {
    decide_from_form(state, s, run, step, Verdict::Done, body).await
}

// ---------------------------------------------------------------------------------------
// What waits for me

async fn pending_page(
    State(state): State<AppState>,
    UiUser(s): UiUser,
) -> Result<Response, UiError> {
    let store = state.engine.store();
    let fail = |e: crate::store::StoreError| UiError::from(e).with(&s);
    // One query, so that a run moving between running and waiting is not missed.
    let mut runs = store
        .list_runs(&RunFilter {
            active: true,
            limit: Some(1000),
            ..RunFilter::default()
        })
        .await
        .map_err(fail)?;
    runs.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    let decider = ui_decider(&s.identity);
    let may_decide = s.identity.may(Permission::Decide);
    let mut mine = Vec::new();
    let mut others = Vec::new();
    for run in &runs {
        let steps = store.steps(&run.id).await.map_err(fail)?;
        let waiting: Vec<_> = steps
            .iter()
            .filter(|st| st.status == StepStatus::Waiting)
            .collect();
        if waiting.is_empty() {
            continue;
        }
        let decisions = store.decisions(&run.id).await.map_err(fail)?;
        for st in waiting {
            let gate = st.inputs.clone().unwrap_or(Value::Null);
            let kind = gate
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("approval");
            let who_v = gate.get("who").cloned().unwrap_or(Value::Null);
            let list: Vec<String> = who_v
                .get(if kind == "task" {
                    "assignees"
                } else {
                    "approvers"
                })
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let min = who_v
                .get("min_approvals")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1);
            let approvals: Vec<&Decision> = decisions
                .iter()
                .filter(|d| d.step_id == st.step_id && d.decision == "approve")
                .collect();
            let approved_by_me = approvals
                .iter()
                .any(|d| d.decided_by.split_once(':').map(|(_, n)| n) == Some(&s.identity.name));
            let row = json!({
                "run": run.id, "run_href": run_href(&run.id), "runbook": run.runbook,
                "subject": subject(&run.inputs), "case": run.case_id,
                "step": st.step_id, "href": step_href(&run.id, &st.step_id), "kind": kind,
                "message": gate.get("message").and_then(Value::as_str),
                "who": list.join(", "),
                "since": st.started_at.as_deref().map(|t| time(Some(t))),
                "deadline": gate.get("deadline").and_then(Value::as_str).map(|d| time(Some(d))),
                "approvals": approvals.len(), "min": min, "is_task": kind == "task",
                "approved_by_me": approved_by_me,
            });
            if may_decide && allowed(&decider, &list) && !approved_by_me {
                mine.push(row);
            } else {
                others.push(row);
            }
        }
    }
    page(
        "pending",
        "Pending approvals",
        "pending",
        &s,
        json!({"mine": mine, "others": others, "may_decide": may_decide}),
    )
}

// ---------------------------------------------------------------------------------------
// Drafts, evidence, audit

async fn draft_page(
    State(state): State<AppState>,
    UiUser(s): UiUser,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    require(
        &s,
        Permission::ReadEvidence,
        "Viewers see run metadata only: draft contents are shown to responders, approvers and admins",
    )?;
    let d = state
        .engine
        .store()
        .draft(&id)
        .await
        .map_err(|e| UiError::from(e).with(&s))?
        .ok_or_else(|| {
            UiError::new(StatusCode::NOT_FOUND, format!("Draft {id} was not found.")).with(&s)
        })?;
    let data = json!({
        "id": d.draft_id, "template": d.template, "subject": d.subject,
        "to": d.to.as_ref().map(pretty), "audience": d.audience, "step": d.step_id,
        "run": d.run_id, "run_href": run_href(&d.run_id),
        "step_href": step_href(&d.run_id, &d.step_id),
        "created": time(Some(&d.created_at)), "sha256": d.body_sha256,
        "body_html": view::markdown_html(&d.body_markdown),
        "markdown": d.body_markdown, "text": d.body_text,
        "authority": d.audience == "authority",
    });
    page("draft", &d.subject, "runs", &s, data)
}

async fn download_evidence(
    State(state): State<AppState>,
    UiUser(s): UiUser,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    require(
        &s,
        Permission::ReadEvidence,
        "Viewers see run metadata only: evidence is downloaded by responders, approvers and admins",
    )?;
    evidence_response(&state, &id, &ui_actor(&s.identity))
        .await
        .map_err(|e| UiError::from(e).with(&s))
}

async fn audit_page(State(state): State<AppState>, UiUser(s): UiUser) -> Result<Response, UiError> {
    let store = state.engine.store();
    let fail = |e: crate::store::StoreError| UiError::from(e).with(&s);
    let (events, head) = store.audit_chain().await.map_err(fail)?;
    let report = crate::audit::verify(&events, head.as_ref());
    // Actions by count, for a sense of what the chain holds.
    let mut actions: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &events {
        *actions.entry(e.action.as_str()).or_default() += 1;
    }
    let runs = store
        .list_runs(&RunFilter {
            limit: Some(100),
            ..RunFilter::default()
        })
        .await
        .map_err(fail)?;
    let rows: Vec<Value> = runs
        .iter()
        .map(|r| {
            let mut v = run_row(r);
            v["export_html"] = json!(view::path(&["ui", "runs", &r.id, "audit.html"]));
            v["export_jsonl"] = json!(view::path(&["ui", "runs", &r.id, "audit.jsonl"]));
            v
        })
        .collect();
    page(
        "audit",
        "Audit chain",
        "audit",
        &s,
        json!({
            "ok": report.ok, "events": report.events, "head": report.head,
            "first_bad": report.first_bad, "problem": report.problem,
            "last_at": events.last().map(|e| time(Some(&e.at))),
            "actions": actions.iter().map(|(a, n)| json!({"action": a, "count": n})).collect::<Vec<_>>(),
            "runs": rows,
        }),
    )
}

#[derive(Clone, Copy)]
enum ExportKind {
    Html,
    Jsonl,
}

async fn export(
    state: AppState,
    s: Session,
    id: String,
    kind: ExportKind,
) -> Result<Response, UiError> {
    let run = get_run(&state, &id, &s).await?;
    let store = state.engine.store();
    let fail = |e: crate::store::StoreError| UiError::from(e).with(&s);
    let events = store.audit_events(Some(&id)).await.map_err(fail)?;
    let mut buf: Vec<u8> = Vec::new();
    let written = match kind {
        ExportKind::Jsonl => crate::audit::export_jsonl(&events, &mut buf),
        ExportKind::Html => {
            let (all, head) = store.audit_chain().await.map_err(fail)?;
            let report = crate::audit::verify(&all, head.as_ref());
            crate::audit::export_html(&run, &events, &report, &mut buf)
        }
    };
    written.map_err(|e| UiError::internal(e).with(&s))?;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&buf));
    let format = match kind {
        ExportKind::Html => "html",
        ExportKind::Jsonl => "jsonl",
    };
    // Chain of custody: the export is recorded before it leaves.
    store
        .append_audit(vec![AuditDraft {
            run_id: Some(id.clone()),
            actor: ui_actor(&s.identity),
            action: "audit.exported".into(),
            details: json!({"format": format, "events": events.len(), "sha256": digest}),
        }])
        .await
        .map_err(fail)?;
    let (content_type, disposition) = match kind {
        ExportKind::Html => (
            "text/html; charset=utf-8",
            format!("inline; filename=\"audit-{}.html\"", id.replace('"', "")),
        ),
        ExportKind::Jsonl => (
            "application/x-ndjson",
            format!(
                "attachment; filename=\"audit-{}.jsonl\"",
                id.replace('"', "")
            ),
        ),
    };
    let mut resp = (StatusCode::OK, buf).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&digest) {
        h.insert("x-content-sha256", v);
    }
    // The export is one self-contained page with its own inline style sheet.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    Ok(resp)
}

async fn export_html(
    State(state): State<AppState>,
    UiUser(s): UiUser,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    export(state, s, id, ExportKind::Html).await
}

async fn export_jsonl(
    State(state): State<AppState>,
    UiUser(s): UiUser,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    export(state, s, id, ExportKind::Jsonl).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every template compiles and renders with the data its handler gives, and escapes.
    #[test]
    fn templates_render_and_escape() {
        let who = Identity {
            name: "<dana>".into(),
            role: crate::config::Role::Approver,
            groups: vec!["legal".into()],
        };
        let s = Session {
            identity: who,
            csrf: "tok\"en".into(),
            expires: std::time::Instant::now(),
        };
        let out = render(
            "error",
            "Forbidden",
            "",
            Some(&s),
            json!({"status": 403, "reason": "Forbidden", "message": "<script>x</script>"}),
        )
        .expect("error page");
        assert!(out.contains("&lt;script&gt;x&lt;/script&gt;"), "{out}");
        assert!(out.contains("&lt;dana&gt;"), "{out}");
        assert!(!out.contains("<script>"), "{out}");
        assert!(out.contains("value=\"tok&quot;en\""), "{out}");
        let login = render(
            "login",
            "Log in",
            "",
            None,
            json!({"next": "/ui/\"><x", "csrf": "c", "error": null, "no_tokens": false}),
        )
        .expect("login page");
        assert!(login.contains("/ui/&quot;&gt;&lt;x"), "{login}");
    }

    #[test]
    fn step_links_use_public_url() {
        assert_eq!(
            step_link(Some("https://cordon.example/"), "01J", "approve-x"),
            "https://cordon.example/ui/runs/01J/steps/approve-x"
        );
        assert_eq!(step_link(None, "01J", "s"), "/ui/runs/01J/steps/s");
        assert!(Ui::new(Some("https://c.example")).sessions.secure);
        assert!(!Ui::new(Some("http://127.0.0.1:8480")).sessions.secure);
    }

    #[test]
    fn day_bounds() {
        assert_eq!(
            bound("from", "2026-11-26", false).unwrap(),
            "2026-11-26T00:00:00.000Z"
        );
        assert_eq!(
            bound("to", "2026-11-26", true).unwrap(),
            "2026-11-27T00:00:00.000Z"
        );
        assert_eq!(
            bound("to", "2026-11-26T10:00:00+01:00", true).unwrap(),
            "2026-11-26T09:00:00.000Z"
        );
        assert!(bound("from", "yesterday", false)
            .unwrap_err()
            .contains("from"));
    }
}
