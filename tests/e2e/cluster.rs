//! Several `cordon serve` nodes on one database, end to end: a dead node's runs are resumed
//! by another within 15 seconds (its lease must lapse: the nodes have different names), a
//! decision taken on any node continues the run, a delivery sent to two nodes at once makes
//! one run, and a schedule that both nodes keep fires once per fire time. Each test runs on
//! SQLite (one file shared by the nodes) and on PostgreSQL (a fresh schema on the server
//! `CORDON_TEST_POSTGRES_URL` names; skipped loudly when it is not set, never under CI).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{step, Env, TestServer};
use crate::postgres_schema::Schema;
use crate::serve::{env_with, serve_node, token, Serving};

const HOOK_TOKEN: &str = "cluster-hook-token";

/// Two slow vendor calls: the first outlives a kill of the node executing it.
fn slow_runbook(base: &str) -> String {
    format!(
        r#"version: 1
name: slow
inputs:
  alert_id: {{ type: string, required: true }}
steps:
  - id: first
    uses: http.request
    with: {{ method: POST, url: "{base}/delay/3000/first/{{{{ inputs.alert_id }}}}" }}
  - id: second
    needs: [first]
    uses: http.request
    with: {{ method: POST, url: "{base}/ok/second/{{{{ inputs.alert_id }}}}" }}
"#
    )
}

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// The nodes' configuration and database: None when the PostgreSQL variant is skipped. The
/// schema (PostgreSQL) is dropped with the second value: keep it until the nodes are gone.
fn cluster_env(
    backend: Backend,
    test: &str,
    srv: &TestServer,
    extra: &str,
) -> Option<(Env, Option<Schema>)> {
    let mut env = env_with(&format!(
        r#"webhooks:
  alerts:
    runbook: slow
    secret: {{ env: CLUSTER_HOOK_TOKEN }}
    scheme: token
    inputs: {{ alert_id: "{{{{ payload.id }}}}" }}
  gates:
    runbook: gate
    secret: {{ env: CLUSTER_HOOK_TOKEN }}
    scheme: token
    inputs: {{ alert_id: "{{{{ payload.id }}}}", subject_email: "{{{{ payload.email }}}}" }}
    dedup_key: "{{{{ payload.id }}}}"
{extra}"#
    ));
    env.write_runbook("slow", &slow_runbook(&srv.url()));
    env.extra_env
        .push(("CLUSTER_HOOK_TOKEN".into(), HOOK_TOKEN.into()));
    let schema = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let schema = Schema::create_for(test)?;
            env.extra_env
                .push(("CORDON_DATABASE_URL".into(), schema.url.clone()));
            Some(schema)
        }
    };
    Some((env, schema))
}

fn node(env: &Env, name: &str) -> Serving {
    serve_node(env, &[], &[("CORDON_NODE_NAME", name)])
}

fn deliver(s: &Serving, hook: &str, body: Value) -> (u16, String) {
    let a = s.hook(
        hook,
        &[("authorization", format!("Bearer {HOOK_TOKEN}"))],
        &serde_json::to_vec(&body).unwrap(),
    );
    assert!(matches!(a.status, 200 | 202), "{a:?}");
    (a.status, a.json()["run_id"].as_str().unwrap().to_string())
}

fn wait_for(what: &str, bound: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn audit(s: &Serving, run: &str) -> Vec<Value> {
    let a = s.get(&format!("/api/v1/runs/{run}/audit"), Some(token("root")));
    assert_eq!(a.status, 200, "{a:?}");
    let doc = a.json();
    doc.as_array()
        .or_else(|| doc["events"].as_array())
        .cloned()
        .unwrap_or_else(|| panic!("no events in {doc:#}"))
}

fn a_killed_nodes_run_is_resumed_by_another_node_within_fifteen_seconds(backend: Backend) {
    let srv = TestServer::start();
    let test = "a killed nodes run is resumed by another node within fifteen seconds";
    // The product's default lease and sweep timing: the promise is about them.
    let Some((env, _schema)) = cluster_env(backend, test, &srv, "") else {
        return;
    };
    let a = node(&env, "node-a");
    let (status, run) = deliver(&a, "alerts", json!({"id": "A-1"}));
    assert_eq!(status, 202);
    wait_for("node-a calls the vendor", Duration::from_secs(30), || {
        srv.hits("/first/A-1").len() == 1
    });
    // Node B starts while node A executes the run (holding its lease).
    let b = node(&env, "node-b");
    let killed = Instant::now();
    a.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while srv.hits("/first/A-1").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "node-b did not resume the run within 30 s\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(15),
        "node-b resumed the run {took:?} after node-a died\n{}",
        b.log()
    );
    let doc = b.wait_status(&run, "succeeded");
    assert_eq!(step(&doc, "second")["status"], "succeeded");
    // The call whose outcome node-a never recorded is repeated under the same key; the
    // step after it runs once.
    let first = srv.hits("/first/A-1");
    let keys: BTreeSet<_> = first
        .iter()
        .map(|s| {
            s.headers
                .get("idempotency-key")
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(keys.len(), 1, "{first:#?}");
    assert!(!keys.iter().next().unwrap().is_empty());
    assert_eq!(srv.hits("/second/A-1").len(), 1);
    let events = audit(&b, &run);
    let owners = |action: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["action"] == action)
            .map(|e| e["details"]["owner"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let started = owners("run.started");
    let resumed = owners("run.resumed");
    assert!(
        started.len() == 1 && started[0].starts_with("node-a/"),
        "{events:#?}"
    );
    assert!(
        resumed.len() == 1 && resumed[0].starts_with("node-b/"),
        "{events:#?}"
    );
    let tokens: Vec<i64> = ["run.started", "run.resumed"]
        .iter()
        .filter_map(|a| events.iter().find(|e| e["action"] == *a))
        .map(|e| e["details"]["lease_token"].as_i64().unwrap())
        .collect();
    assert!(
        tokens[1] > tokens[0],
        "fencing token did not advance: {tokens:?}"
    );
    let v = b.get("/api/v1/audit/verify", Some(token("root"))).json();
    assert_eq!(v["ok"], true, "{v:#}");
    eprintln!("takeover after SIGKILL of a node: {took:?}");
}

fn a_decision_taken_on_one_node_continues_a_run_another_node_parked(backend: Backend) {
    let srv = TestServer::start();
    let test = "a decision taken on one node continues a run another node parked";
    let Some((env, _schema)) = cluster_env(backend, test, &srv, "") else {
        return;
    };
    let a = node(&env, "node-a");
    let b = node(&env, "node-b");
    let (_, run) = deliver(
        &a,
        "gates",
        json!({"id": "G-1", "email": "j.smith@example.com"}),
    );
    a.wait_status(&run, "waiting");
    let r = b.post(
        &format!("/api/v1/runs/{run}/steps/approve-suspend/approve"),
        Some(token("dana")),
        json!({"comment": "confirmed by counsel"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let doc = a.wait_status(&run, "succeeded");
    assert_eq!(step(&doc, "suspend")["status"], "succeeded");
    let approvals: Vec<_> = audit(&a, &run)
        .into_iter()
        .filter(|e| e["action"] == "approval.decided")
        .collect();
    assert_eq!(approvals.len(), 1, "{approvals:#?}");
    assert_eq!(a.stop(), 0);
    assert_eq!(b.stop(), 0);
}

fn one_delivery_sent_to_two_nodes_at_once_makes_one_run(backend: Backend) {
    let srv = TestServer::start();
    let test = "one delivery sent to two nodes at once makes one run";
    let Some((env, _schema)) = cluster_env(backend, test, &srv, "") else {
        return;
    };
    let a = node(&env, "node-a");
    let b = node(&env, "node-b");
    for i in 0..10 {
        let body = json!({"id": format!("D-{i}"), "email": "j.smith@example.com"});
        let (ra, rb) = std::thread::scope(|sc| {
            let ta = sc.spawn(|| deliver(&a, "gates", body.clone()));
            let tb = sc.spawn(|| deliver(&b, "gates", body.clone()));
            (ta.join().unwrap(), tb.join().unwrap())
        });
        assert_eq!(ra.1, rb.1, "delivery D-{i} made two runs");
        let mut answers = [ra.0, rb.0];
        answers.sort();
        assert_eq!(answers, [200, 202], "delivery D-{i}");
    }
    let list = a
        .get("/api/v1/runs?runbook=gate&limit=1000", Some(token("vic")))
        .json();
    assert_eq!(list.as_array().map(Vec::len), Some(10), "{list:#}");
}

fn a_schedule_kept_by_two_nodes_fires_once_per_fire_time(backend: Backend) {
    let srv = TestServer::start();
    let Some((env, _schema)) = cluster_env(
        backend,
        "a schedule kept by two nodes fires once per fire time",
        &srv,
        "schedules:\n  - { name: tick, runbook: plain, cron: \"* * * * * *\", timezone: UTC, inputs: { alert_id: tick } }\n",
    ) else {
        return;
    };
    let a = node(&env, "node-a");
    let b = node(&env, "node-b");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(a.stop(), 0);
    assert_eq!(b.stop(), 0);
    let env_runs = env.run(&[
        "runs",
        "list",
        "--json",
        "--runbook",
        "plain",
        "--limit",
        "1000",
    ]);
    assert_eq!(env_runs.code, 0, "{env_runs:?}");
    let runs = env_runs.json();
    let runs = runs.as_array().cloned().unwrap_or_default();
    assert!(runs.len() >= 3, "too few fires in 5 s: {runs:#?}");
    let mut fire_times = BTreeSet::new();
    for r in &runs {
        let id = r["id"].as_str().unwrap();
        let out = env.run(&["audit", "export", "--run", id, "--format", "jsonl"]);
        assert_eq!(out.code, 0, "{out:?}");
        let created: Vec<Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["action"] == "run.created")
            .collect();
        assert_eq!(created.len(), 1, "{created:#?}");
        let t = created[0]["details"]["schedule"]["fire_time"]
            .as_str()
            .unwrap_or_else(|| panic!("no fire time: {created:#?}"))
            .to_string();
        assert!(fire_times.insert(t.clone()), "fire time {t} made two runs");
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(super::Backend::Sqlite) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name(super::Backend::Postgres) })*
        }
    };
}

on_both_backends! {
    a_killed_nodes_run_is_resumed_by_another_node_within_fifteen_seconds,
    a_decision_taken_on_one_node_continues_a_run_another_node_parked,
    one_delivery_sent_to_two_nodes_at_once_makes_one_run,
    a_schedule_kept_by_two_nodes_fires_once_per_fire_time,
}
