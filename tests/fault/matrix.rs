//! The crash-point matrix: `cordon run` of a four-step runbook (s1 → s2 → s3 → s4, each a
//! POST with an idempotency key) is SIGKILLed by `CORDON_FAULT=<point>:<n>`, then
//! `cordon resume` finishes it.
//!
//! What each crash leaves is known exactly, since the steps run one after the other and a
//! step's result is committed together with the next step's start:
//!
//! | point, n | requests seen at the crash | step repeated after resume |
//! | --- | --- | --- |
//! | `http.before_send`, n | n − 1 | none (the vendor never saw step n) |
//! | `http.after_response`, n | n | step n (its outcome was unknown) |
//! | `step.before_start_commit`, n | n − 1 | step n − 1 (its result shares that commit) |
//! | `step.after_start_commit`, n | n − 1 | none (step n is called once, after the resume) |
//! | `step.before_commit`, n | n | step n |
//! | `step.after_commit`, n | n | none |
//! | `run.before_finish_commit`, 1 | 4 | s4 (its result is committed with the run's end) |
//! | `run.after_finish_commit`, 1 | 4 | none |
//! | `step.before_retry_commit` / `step.after_retry_commit`, 1 (s2 answers 503 once) | 2 | s2's retry, after its 503 |

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Instant;

use serde_json::Value;

use crate::backend::Backend;
use crate::common::{assert_audit_verifies, audit_events, by_key, show_requests, succeeded_events};
use crate::harness::{Env, TestServer};

const STEPS: [&str; 4] = ["s1", "s2", "s3", "s4"];

fn runbook(base: &str, flaky: bool) -> String {
    let mut s = String::from("version: 1\nname: chain\nsteps:\n");
    for (i, id) in STEPS.iter().enumerate() {
        let path = if flaky && *id == "s2" {
            format!("flaky/1/chain/{id}")
        } else {
            format!("ok/chain/{id}")
        };
        s.push_str(&format!("  - id: {id}\n"));
        if i > 0 {
            s.push_str(&format!("    needs: [{}]\n", STEPS[i - 1]));
        }
        s.push_str(&format!(
            "    uses: http.request\n    retry: {{ attempts: 3, backoff: 100ms }}\n    with: {{ method: POST, url: \"{base}/{path}\", json: {{ step: {id} }} }}\n"
        ));
    }
    s
}

/// What a crash at `point` reached for the `n`-th time leaves: requests seen by then, and
/// the step (1-based) whose request is seen twice in the end.
fn expected(point: &str, n: usize) -> (usize, Option<usize>) {
    match point {
        "http.before_send" => (n - 1, None),
        "http.after_response" | "step.before_commit" => (n, Some(n)),
        "step.before_start_commit" => (n - 1, (n > 1).then(|| n - 1)),
        "step.after_start_commit" => (n - 1, None),
        "step.after_commit" => (n, None),
        // The last step's result is committed with the run's end: one commit, not two.
        "run.before_finish_commit" => (4, Some(4)),
        "run.after_finish_commit" => (4, None),
        "step.before_retry_commit" | "step.after_retry_commit" => (2, Some(2)),
        other => panic!("no expectation for {other}"),
    }
}

fn step_statuses(doc: &Value) -> Vec<(String, String)> {
    doc["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["id"].as_str().unwrap_or("").to_string(),
                        s["status"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One cell of the matrix; false when the backend is not available (said loudly).
fn crash_and_resume(backend: Backend, point: &str, n: usize) -> bool {
    let flaky = point.contains("retry");
    let label = format!("{point}:{n}");
    let srv = TestServer::start();
    let t0 = Instant::now();
    let mut env = Env::new("");
    let Some(db) = backend.prepare(&format!("crash point {label}"), &mut env) else {
        return false;
    };
    let ctx = format!("[{} crash point {label}]", db.label());
    env.write_runbook("chain", &runbook(&srv.url(), flaky));

    // The crash.
    let out = env
        .command(&["run", "chain"])
        .env("CORDON_FAULT", &label)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("spawn cordon run");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "{ctx} cordon run was not killed at the point ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains(&format!("CORDON_FAULT: SIGKILL at {point}")),
        "{ctx} {stderr}"
    );
    let run = stdout
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .unwrap_or_else(|| panic!("{ctx} no run id on stdout: {stdout}"))
        .trim()
        .to_string();
    let ctx = format!("{ctx} run {run}");

    let (seen_at_crash, repeated) = expected(point, n);
    let at_crash = srv.seen();
    assert_eq!(
        at_crash.len(),
        seen_at_crash,
        "{ctx}: requests seen when the process died:\n{}",
        show_requests(&at_crash, t0)
    );
    let doc = env.show(&run);
    let was_active = doc["status"] != "succeeded";
    let running: BTreeSet<String> = step_statuses(&doc)
        .into_iter()
        .filter(|(_, st)| st == "running")
        .map(|(id, _)| id)
        .collect();

    // The resume.
    let r = env.run(&["resume", &run, "--json"]);
    assert_eq!(r.code, 0, "{ctx}: resume: {r:?}");
    let doc = r.json();
    assert_eq!(doc["status"], "succeeded", "{ctx}: {doc:#}");
    for (id, st) in step_statuses(&doc) {
        assert_eq!(st, "succeeded", "{ctx}: step {id}: {doc:#}");
    }

    // Each step's requests: once, or twice (the unknown outcome) under the same key.
    let seen = srv.seen();
    let keys = by_key(&seen);
    assert_eq!(
        keys.len(),
        STEPS.len(),
        "{ctx}: keys seen:\n{}",
        show_requests(&seen, t0)
    );
    for (i, id) in STEPS.iter().enumerate() {
        let key = format!("{run}/{id}/0");
        let reqs = keys.get(&key).cloned().unwrap_or_default();
        let want = if repeated == Some(i + 1) { 2 } else { 1 };
        assert_eq!(
            reqs.len(),
            want,
            "{ctx}: requests with idempotency key {key}:\n{}\nall requests:\n{}",
            show_requests(&reqs, t0),
            show_requests(&seen, t0)
        );
        assert!(
            reqs.iter()
                .all(|s| s.path.ends_with(&format!("/chain/{id}"))),
            "{ctx}: key {key} on another step's request:\n{}",
            show_requests(&reqs, t0)
        );
        if want == 2 {
            assert!(
                running.contains(*id),
                "{ctx}: {id} was repeated but was not in flight at the crash (running: {running:?})"
            );
        }
    }

    // The store: each step succeeded once; the resume re-executed exactly what was in flight.
    let events = audit_events(&env, &run);
    let succeeded = succeeded_events(&events);
    for id in STEPS {
        assert_eq!(
            succeeded.get(id).copied().unwrap_or(0),
            1,
            "{ctx}: step.succeeded events of {id}: {succeeded:?}"
        );
    }
    let finished = events
        .iter()
        .filter(|e| e["action"] == "run.succeeded")
        .count();
    assert_eq!(finished, 1, "{ctx}: run.succeeded events");
    if was_active {
        let resumed: Vec<&Value> = events
            .iter()
            .filter(|e| e["action"] == "run.resumed" || e["action"] == "run.started")
            .collect();
        let last = resumed.last().expect("a start event");
        let again: BTreeSet<String> = last["details"]["reexecuted"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["step"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            again, running,
            "{ctx}: the resume re-executed other items than those running at the crash"
        );
    }
    assert_audit_verifies(&env, &ctx);
    true
}

fn cell_row(backend: Backend, point: &str, counts: &[usize]) {
    for &n in counts {
        if !crash_and_resume(backend, point, n) {
            return;
        }
    }
}

const ALL: &[usize] = &[1, 2, 3, 4];

macro_rules! matrix_tests {
    ($($name:ident: $point:expr, $counts:expr;)*) => {
        mod sqlite {
            use super::*;
            $(#[test] fn $name() { cell_row(Backend::Sqlite, $point, $counts) })*
        }
        mod postgres {
            use super::*;
            $(#[test] fn $name() { cell_row(Backend::Postgres, $point, $counts) })*
        }
    };
}

matrix_tests! {
    http_before_send: "http.before_send", ALL;
    http_after_response: "http.after_response", ALL;
    step_before_start_commit: "step.before_start_commit", ALL;
    step_after_start_commit: "step.after_start_commit", ALL;
    step_before_commit: "step.before_commit", ALL;
    step_after_commit: "step.after_commit", ALL;
    run_before_finish_commit: "run.before_finish_commit", &[1];
    run_after_finish_commit: "run.after_finish_commit", &[1];
    step_before_retry_commit: "step.before_retry_commit", &[1];
    step_after_retry_commit: "step.after_retry_commit", &[1];
}
