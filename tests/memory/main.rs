//! The memory bar, in a test binary of its own: the large streaming snapshots run with no
//! other end-to-end test beside them, so the child's peak resident set measures the snapshot
//! rather than a machine busy with forty other tests.

#[allow(dead_code)]
#[path = "../e2e/harness.rs"]
mod harness;
mod streaming;
