//! Triggers that start runs from outside: webhooks today (schedules are planned).
//!
//! - [`webhook`]: the `webhooks:` configuration, checked and built once at start; signature
//!   verification for the schemes `standard` (Standard Webhooks), `github` and `token`; the
//!   mapping of a payload to runbook inputs and a dedup key. Pure: no I/O after building,
//!   so it is tested without a server; `crate::server::hooks` does the HTTP.

pub mod webhook;
