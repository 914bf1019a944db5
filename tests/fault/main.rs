//! Fault injection against the real `cordon` binary: the crash-safety promises tested by
//! killing and stopping processes, on every store backend.
//!
//! - [`matrix`]: SIGKILL at each named crash point (`CORDON_FAULT`, see
//!   `cordon_connectors::fault`) of a four-step runbook, for several counts, then
//!   `cordon resume`: the run succeeds, each step succeeds once, the only repeated request is
//!   the one whose outcome was unknown at the crash, under the same idempotency key.
//! - [`random`]: `cordon serve` taking webhook deliveries, SIGKILLed at random moments
//!   (seeded; the seed is printed) and restarted while deliveries go on: no acknowledged run
//!   lost, none stuck, no succeeded step repeated.
//! - [`stop`]: two `cordon serve` nodes on one database; one is SIGSTOPped past its lease
//!   while it calls vendors, the other resumes its runs, and the first, continued, has its
//!   commits refused: no step completes twice.
//!
//! - [`pg_restart`]: two `cordon serve` nodes on a private PostgreSQL instance the test
//!   starts itself, restarted (`pg_ctl restart -m fast`) and crashed (`-m immediate`) under
//!   webhook load: the nodes reconnect and go on, deliveries meanwhile get 503 within a
//!   bound, `/readyz` says not ready, no acknowledged run is lost or repeated.
//!
//! Each of the first three runs on SQLite and on PostgreSQL ([`backend::Backend`]); the
//! PostgreSQL variants use a fresh schema on the server `CORDON_TEST_POSTGRES_URL` names,
//! and say loudly that they were skipped when it is not set (CI refuses to skip them).

#[allow(dead_code)]
#[path = "../e2e/harness.rs"]
mod harness;

mod backend;
mod common;
mod matrix;
mod pg_restart;
#[allow(dead_code)]
#[path = "../support/postgres.rs"]
mod postgres_schema;
mod random;
mod stop;
