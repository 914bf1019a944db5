//! # cordon
//!
//! The incident-response engine: it parses and validates YAML runbooks, executes them
//! durably, and keeps a hash-chained audit trail a court can trust.
//!
//! A guided tour, in the order a run flows:
//! - [`config`]: the configuration file (or embedded defaults).
//! - [`runbook`]: the runbook model, parsing with source locations, validation (all problems
//!   at once, each with a stable code), input checking, and the JSON Schema.
//! - [`expr`]: CEL conditions and Handlebars templates, one place for both.
//! - [`exec`]: the executor: ready set, `for_each`, retries, timeouts, approvals, undo.
//! - [`store`]: durable state behind one trait (SQLite embedded, PostgreSQL for several nodes).
//! - [`audit`]: the hash chain: hashing, verification, export.
//! - [`evidence`]: the evidence store (local folder or S3 with Object Lock), verification
//!   against the audit trail, chain of custody and export bundles.
//! - [`notify`]: the incident-facts schema, notification templates, drafts, and sending
//!   drafts.
//! - [`triggers`]: webhooks (signature schemes, payload mapping) and schedules (cron in a
//!   time zone, catch-up).
//! - [`server`]: `cordon serve`: webhooks, schedules, the API, approvals over HTTP, notices
//!   that runs wait (`notify_waiting`), the review UI at `/ui/`, metrics, shutdown.
//! - [`cli`]: the `cordon` command line and its progress display.

pub mod alloc;
pub mod audit;
pub mod cli;
pub mod config;
pub mod duration;
pub mod evidence;
pub mod exec;
pub mod expr;
pub mod notify;
pub mod runbook;
pub mod server;
pub mod store;
pub mod time;
pub mod triggers;
