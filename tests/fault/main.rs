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
//! Each test runs on SQLite and on PostgreSQL ([`backend::Backend`]); the PostgreSQL
//! variants say loudly why they were skipped while no PostgreSQL store exists.

#[allow(dead_code)]
#[path = "../e2e/harness.rs"]
mod harness;

mod backend;
mod common;
mod matrix;
mod random;
mod stop;
