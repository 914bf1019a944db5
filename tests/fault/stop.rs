//! SIGSTOP/SIGCONT: two `cordon serve` nodes on one database. Node A takes webhook runs and
//! is stopped (SIGSTOP) while its vendor calls are in flight; its leases lapse, node B resumes
//! the runs and finishes them; then A is continued (SIGCONT) with its calls' answers waiting.
//! A's commits must be refused (`LeaseLost`, the lease token fences it): no step completes
//! twice, A sends nothing more, every run succeeds once, the audit chain verifies.
//!
//! On SQLite both nodes share one file on one host, and A's pid is alive while stopped, so
//! this is lease expiry at work (a dead pid's lease is taken at once). The lease is
//! shortened with `cluster: { lease_ttl }` to keep the test fast. Each node tags its vendor
//! requests with an `X-Node` header (a connector header from its own environment), so the
//! test server tells who called.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::backend::Backend;
use crate::common::{
    admin_yaml, assert_audit_verifies, by_key, show_requests, succeeded_events, wait_for, Node,
};
use crate::harness::{Env, TestServer};

const HOOK_TOKEN: &str = "fault-hook-token";
const RUNS: usize = 6;
const LEASE_TTL_MS: u64 = 3000;
/// How long the test server takes to answer each step's request.
const VENDOR_MS: u64 = 1500;
const ALPHA: &str = "node-alpha-7f3c";
const BRAVO: &str = "node-bravo-91d2";
const STEPS: [&str; 4] = ["s1", "s2", "s3", "s4"];

fn runbook(base: &str) -> String {
    let mut s = String::from(
        "version: 1\nname: slow\ninputs:\n  alert_id: { type: string, required: true }\nsteps:\n",
    );
    for (i, id) in STEPS.iter().enumerate() {
        s.push_str(&format!("  - id: {id}\n"));
        if i > 0 {
            s.push_str(&format!("    needs: [{}]\n", STEPS[i - 1]));
        }
        s.push_str(&format!(
            "    uses: http.request\n    connector: api\n    with: {{ method: POST, url: \"{base}/delay/{VENDOR_MS}/r/{{{{ inputs.alert_id }}}}/{id}\" }}\n"
        ));
    }
    s
}

fn node_of(s: &crate::harness::Seen) -> &str {
    s.headers.get("x-node").map(String::as_str).unwrap_or("")
}

fn stop_and_continue(backend: Backend) {
    let srv = TestServer::start();
    let t0 = Instant::now();
    let mut env = Env::new(&format!(
        "{}cluster: {{ lease_ttl: {LEASE_TTL_MS}ms, sweep: 500ms }}\nconnectors:\n  api:\n    type: http\n    headers:\n      X-Node: {{ env: FAULT_NODE }}\nwebhooks:\n  alerts:\n    runbook: slow\n    scheme: token\n    secret: {{ env: FAULT_HOOK_TOKEN }}\n    inputs: {{ alert_id: \"{{{{ payload.id }}}}\" }}\n    dedup_key: \"{{{{ payload.id }}}}\"\n",
        admin_yaml()
    ));
    env.extra_env
        .push(("FAULT_HOOK_TOKEN".into(), HOOK_TOKEN.into()));
    // The command line's own value (each node sets its own).
    env.extra_env.push(("FAULT_NODE".into(), "cli".into()));
    let Some(db) = backend.prepare("SIGSTOP/SIGCONT of a node", &mut env) else {
        return;
    };
    let ctx = format!("[{} SIGSTOP/SIGCONT]", db.label());
    env.write_runbook("slow", &runbook(&srv.url()));

    // Both nodes up before the first run: B's sweeps leave runs that A holds (live lease)
    // or has just queued alone.
    let a = Node::start(&env, "node A", &[("FAULT_NODE", ALPHA.into())]);
    let b = Node::start(&env, "node B", &[("FAULT_NODE", BRAVO.into())]);
    let mut runs = Vec::new();
    for i in 0..RUNS {
        let resp = a
            .http
            .post(format!("{}/hooks/alerts", a.base))
            .bearer_auth(HOOK_TOKEN)
            .json(&json!({"id": format!("s{i}")}))
            .send()
            .expect("delivery");
        assert_eq!(resp.status().as_u16(), 202, "{ctx}");
        let v: Value = resp.json().expect("json");
        runs.push(v["run_id"].as_str().expect("run_id").to_string());
    }
    // Every run's second call is in flight at node A (its first succeeded, committed), and
    // B has called nothing.
    wait_for(Duration::from_secs(60), "node A's s2 calls", || {
        let seen = srv.seen();
        let n = seen
            .iter()
            .filter(|s| s.path.ends_with("/s2") && node_of(s) == ALPHA)
            .count();
        (n == RUNS).then_some(())
    });
    assert!(
        srv.seen().iter().all(|s| node_of(s) == ALPHA),
        "{ctx}: node B called the vendor while node A held every lease"
    );
    let stopped_at = db.stop_cleanly(&a, &ctx);

    // B resumes every run after A's lease lapses, and finishes it.
    let done = wait_for(
        Duration::from_secs(60),
        "node B to finish node A's runs",
        || {
            let mut docs = Vec::new();
            for run in &runs {
                let (st, doc) = b.api(&format!("/runs/{run}")).ok()?;
                if st != 200 || doc["status"] != "succeeded" {
                    return None;
                }
                docs.push(doc);
            }
            Some(docs)
        },
    );
    assert_eq!(done.len(), RUNS);
    let seen = srv.seen();
    let first_bravo = seen
        .iter()
        .filter(|s| node_of(s) == BRAVO)
        .map(|s| s.start)
        .min()
        .expect("node B called the vendor");
    eprintln!(
        "{ctx} node B's first call {} ms after node A stopped (lease {LEASE_TTL_MS} ms)",
        first_bravo
            .saturating_duration_since(stopped_at)
            .as_millis()
    );
    assert!(
        first_bravo.saturating_duration_since(stopped_at)
            >= Duration::from_millis(LEASE_TTL_MS / 2),
        "{ctx}: node B called before node A's lease could have lapsed"
    );

    // A goes on: its answers arrive, its commits are refused, it calls nothing more.
    a.signal(libc::SIGCONT);
    wait_for(
        Duration::from_secs(30),
        "node A to find every lease lost",
        || {
            let log = a.log();
            runs.iter()
                .all(|r| log.contains(&format!("lease on run {r} lost to another process")))
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(LEASE_TTL_MS / 2));
    let seen = srv.seen();
    let late: Vec<_> = seen
        .iter()
        .filter(|s| node_of(s) == ALPHA && s.start >= stopped_at)
        .cloned()
        .collect();
    assert!(
        late.is_empty(),
        "{ctx}: node A called the vendor after it was stopped:\n{}",
        show_requests(&late, t0)
    );

    // The vendor's view: s1 once by A; s2 by A (answer never committed) and again by B
    // under the same key; s3 and s4 once by B.
    let keys = by_key(&seen);
    for run in &runs {
        for step in STEPS {
            let key = format!("{run}/{step}/0");
            let reqs = keys.get(&key).cloned().unwrap_or_default();
            let who: Vec<&str> = reqs.iter().map(node_of).collect();
            let want: &[&str] = match step {
                "s1" => &[ALPHA],
                "s2" => &[ALPHA, BRAVO],
                _ => &[BRAVO],
            };
            assert_eq!(
                who,
                want,
                "{ctx}: requests with key {key}:\n{}",
                show_requests(&reqs, t0)
            );
        }
    }

    // The store: each step succeeded once, the runs are still succeeded, the chain holds.
    for run in &runs {
        let (st, doc) = b.api(&format!("/runs/{run}")).expect("run");
        assert_eq!(
            (st, &doc["status"]),
            (200, &json!("succeeded")),
            "{ctx}: {doc:#}"
        );
        let (st, events) = b.api(&format!("/runs/{run}/audit")).expect("audit");
        assert_eq!(st, 200, "{ctx}");
        let events = events.as_array().cloned().unwrap_or_default();
        let ok = succeeded_events(&events);
        for step in STEPS {
            assert_eq!(
                ok.get(step).copied().unwrap_or(0),
                1,
                "{ctx}: run {run}: step.succeeded events of {step}: {ok:?}"
            );
        }
        let owners: BTreeSet<String> = events
            .iter()
            .filter(|e| e["action"] == "run.started" || e["action"] == "run.resumed")
            .filter_map(|e| e["details"]["owner"].as_str().map(str::to_string))
            .collect();
        assert_eq!(owners.len(), 2, "{ctx}: run {run} executed by {owners:?}");
    }
    let (st, verdict) = b.api("/audit/verify").expect("audit verify");
    assert_eq!(
        (st, &verdict["ok"]),
        (200, &json!(true)),
        "{ctx}: {verdict}"
    );
    assert_eq!(a.stop(), 0, "{ctx}: node A's exit");
    assert_eq!(b.stop(), 0, "{ctx}: node B's exit");
    assert_audit_verifies(&env, &ctx);
}

#[test]
fn sqlite_a_stopped_node_past_its_lease_completes_no_step_twice() {
    stop_and_continue(Backend::Sqlite);
}

#[test]
fn postgres_a_stopped_node_past_its_lease_completes_no_step_twice() {
    stop_and_continue(Backend::Postgres);
}
