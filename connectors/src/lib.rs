//! # cordon-connectors
//!
//! Everything Cordon knows about the outside world, behind one trait.
//!
//! - [`catalog`]: the static declarations of every connector type and action (inputs, outputs,
//!   effect, undo). The validator and `cordon connectors list` read these; no I/O.
//! - [`Connector`]: the runtime trait a configured instance implements.
//! - [`error::ConnectorError`]: typed failures; retry decisions come from the variant.
//! - [`secret`]: `{env: …}` / `{file: …}` references, a redacting secret type, and the
//!   [`secret::Redactor`] that scrubs known secret values from anything we store or print.
//! - [`http_client`]: the shared HTTP client (timeouts, status mapping, `Retry-After`).
//! - [`evidence`]: the sink that snapshot actions stream artifacts into.
//! - [`ipsummary`]: the bounded per-address summary (`ip_addresses`) every identity-log and
//!   SIEM snapshot reports beside its artifact.
//! - [`registry`]: builds live instances from configuration.
//! - Vendors: [`http`] (generic REST), [`core`] (built-in no-op), [`entra`] (Microsoft Entra ID).
//! - [`oauth`]: the shared OAuth 2.0 client-credentials token source.
//! - Devices: [`jamf`] (Jamf Pro), [`kandji`].
//! - Vendors: [`http`] (generic REST), [`core`] (built-in no-op), [`okta`].
//! - [`notify`]: `notify.draft`, declared here and executed by the engine.
//! - [`sandbox`]: a local imitation of vendor APIs for `cordon demo` and tests.
//! - [`fault`]: crash points for the fault-injection tests, armed only by `CORDON_FAULT`.

pub mod catalog;
pub mod core;
pub mod crowdstrike;
pub mod defender;
pub mod elasticsearch;
pub mod entra;
pub mod error;
pub mod evidence;
pub mod fault;
pub mod fleet;
pub mod google;
pub mod http;
pub mod http_client;
pub mod intune;
pub mod ipsummary;
pub mod jamf;
pub mod kandji;
pub mod notify;
pub mod oauth;
pub mod okta;
pub mod registry;
pub mod roles;
pub mod sandbox;
pub mod scim;
pub mod secret;
pub mod slack;
pub mod smtp;
pub mod splunk;

use async_trait::async_trait;
use serde_json::Value;

pub use catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
pub use error::ConnectorError;
pub use evidence::{EvidenceMeta, EvidenceRecord, EvidenceSink, EvidenceWriter};

/// Everything an action call needs besides its inputs.
pub struct ActionCall<'a> {
    /// The action's name within its type, e.g. `request`.
    pub action: &'a str,
    /// Rendered inputs (the step's `with`, after templating).
    pub input: &'a Value,
    /// `<run id>/<step id>/<for_each index>[/<instance>]`: the same for every attempt.
    pub idempotency_key: &'a str,
    pub run_id: &'a str,
    pub step_id: &'a str,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Where snapshot actions write artifacts.
    pub evidence: &'a dyn EvidenceSink,
    /// Every HTTP request the call makes is noted here (method, path, status: never a
    /// header, query string or body), for the audit trail.
    pub requests: &'a RequestLog,
    /// Progress kept across attempts of this call within one process: a paged snapshot
    /// interrupted by a transient error stashes its open evidence writer and next-page
    /// cursor here, and the next attempt resumes from the page that failed.
    pub resume: &'a ResumeSlot,
    /// The target's state as [`Connector::prior_state`] returned it before the first
    /// attempt, stored durably (None on a first attempt that had none). A `secret` object
    /// in it (a generated lock PIN) is kept in the secret column, shown to admins only, and
    /// handed back here on every attempt and after a crash, so a repeated call reuses it.
    /// Role actions hand each instance its own part.
    pub prior: Option<&'a serde_json::Value>,
}

/// See [`ActionCall::resume`]. Empty at the first attempt; the engine keeps the same slot
/// for every attempt of one item (a new process starts with an empty one).
#[derive(Default)]
pub struct ResumeSlot(std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>);

impl ResumeSlot {
    /// Take what an earlier attempt left, if it is a `T`.
    pub fn take<T: 'static>(&self) -> Option<T> {
        let boxed = self.0.lock().ok()?.take()?;
        boxed.downcast::<T>().ok().map(|b| *b)
    }
    /// Leave progress for the next attempt.
    pub fn put<T: Send + 'static>(&self, value: T) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(Box::new(value));
        }
    }
}

impl std::fmt::Debug for ResumeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeSlot")
    }
}

/// One HTTP request an action made, as the audit trail records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestSummary {
    pub method: String,
    /// The URL path only: no query string, which may carry identifiers or tokens.
    pub path: String,
    /// HTTP status, or None when no answer came (timeout, connection error).
    pub status: Option<u16>,
    pub duration_ms: u64,
}

/// Collects [`RequestSummary`]s during one action call.
#[derive(Debug, Default)]
pub struct RequestLog(std::sync::Mutex<Vec<RequestSummary>>);

impl RequestLog {
    pub fn push(&self, summary: RequestSummary) {
        if let Ok(mut v) = self.0.lock() {
            v.push(summary);
        }
    }
    /// Everything noted so far, emptying the log.
    pub fn take(&self) -> Vec<RequestSummary> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// A configured connector instance.
#[async_trait]
pub trait Connector: Send + Sync {
    /// The connector type, e.g. `http`.
    fn type_name(&self) -> &'static str;
    /// The configured instance name, e.g. `okta-prod` (the type name for default instances).
    fn instance(&self) -> &str;
    /// Run one action once. Retries are the engine's job: return a typed error instead.
    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError>;
    /// Read the target's current state before a mutating action, where the vendor allows
    /// a read. The engine stores it durably before the first call (`prior_state`).
    async fn prior_state(&self, _call: ActionCall<'_>) -> Result<Option<Value>, ConnectorError> {
        Ok(None)
    }
}
