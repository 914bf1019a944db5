//! Triggers that start runs from outside: webhooks and schedules.
//!
//! - [`webhook`]: the `webhooks:` configuration, checked and built once at start; signature
//!   verification for the schemes `standard` (Standard Webhooks), `github` and `token`; the
//!   mapping of a payload to runbook inputs and a dedup key. Pure: no I/O after building,
//!   so it is tested without a server; `crate::server::hooks` does the HTTP.
//! - [`schedule`]: the `schedules:` configuration, cron expressions (five-field standard
//!   cron translated for the `cron` crate) in a time zone, and the catch-up planner. Pure;
//!   `crate::server::scheduler` claims fire times and starts the runs.

pub mod schedule;
pub mod webhook;
