//! Random moments, many runs: `cordon serve` takes webhook deliveries while the test
//! SIGKILLs it at random moments (a seeded RNG; the seed is printed, and `FAULT_SEED=<n>`
//! repeats the kill schedule) and starts it again; a sender retries each delivery until it is
//! acknowledged, as a real one does.
//!
//! Then: every acknowledged delivery's run exists and succeeds within a bound (none lost,
//! none stuck), each delivery made one run, each step succeeded once in the store, the
//! vendor saw each idempotency key once, and again only when a kill fell between two of its
//! requests (a step in flight at two kills in a row is called three times, always under
//! the same key; a resume re-executed the step each time), and the audit chain verifies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::backend::Backend;
use crate::common::{
    admin_yaml, assert_audit_verifies, by_key, events_with_each_step_succeeded_once, show_requests,
    Node,
};
use crate::harness::{Env, TestServer};

const HOOK_TOKEN: &str = "fault-hook-token";
const DELIVERIES: usize = 200;
const KILLS: usize = 8;
const STEPS: [&str; 4] = ["s1", "s2", "s3", "s4"];

fn runbook(base: &str) -> String {
    // s1 → (s2, s3) → s4: two steps in flight at once in the middle.
    format!(
        r#"version: 1
name: intake
inputs:
  alert_id: {{ type: string, required: true }}
steps:
  - id: s1
    uses: http.request
    with: {{ method: POST, url: "{base}/delay/15/r/{{{{ inputs.alert_id }}}}/s1", json: {{ alert: "{{{{ inputs.alert_id }}}}" }} }}
  - id: s2
    needs: [s1]
    uses: http.request
    with: {{ method: POST, url: "{base}/delay/25/r/{{{{ inputs.alert_id }}}}/s2" }}
  - id: s3
    needs: [s1]
    uses: http.request
    with: {{ method: POST, url: "{base}/delay/5/r/{{{{ inputs.alert_id }}}}/s3" }}
  - id: s4
    needs: [s2, s3]
    uses: http.request
    with: {{ method: POST, url: "{base}/delay/15/r/{{{{ inputs.alert_id }}}}/s4" }}
"#
    )
}

/// What the sender learnt about one delivery.
#[derive(Debug, Clone)]
struct Ack {
    run: String,
    /// Answers before the acknowledgement (refused connections, cut requests, 5xx).
    failures: u32,
    deduplicated: bool,
}

fn seed() -> u64 {
    match std::env::var("FAULT_SEED") {
        Ok(s) => s.trim().parse().expect("FAULT_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7),
    }
}

/// Send every delivery, retrying each until it is acknowledged (202, or 200 for a repeat).
fn send_all(current: Arc<Mutex<Option<String>>>, acks: Arc<Mutex<BTreeMap<String, Ack>>>) {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for i in 0..DELIVERIES {
        let id = format!("a{i:04}");
        let body = json!({"id": id});
        let mut failures = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(
                Instant::now() < deadline,
                "delivery {id} was not acknowledged within 120 s"
            );
            let Some(base) = current.lock().unwrap().clone() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let answer = http
                .post(format!("{base}/hooks/alerts"))
                .bearer_auth(HOOK_TOKEN)
                .json(&body)
                .send()
                .and_then(|r| {
                    let st = r.status().as_u16();
                    r.json::<Value>().map(|v| (st, v))
                });
            match answer {
                Ok((202 | 200, v)) if v["run_id"].is_string() => {
                    acks.lock().unwrap().insert(
                        id.clone(),
                        Ack {
                            run: v["run_id"].as_str().unwrap_or("").to_string(),
                            failures,
                            deduplicated: v["deduplicated"] == true,
                        },
                    );
                    break;
                }
                Ok((st, v)) if st < 500 => panic!("delivery {id}: unexpected answer {st}: {v}"),
                _ => {
                    failures += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(8));
    }
}

fn random_kills(backend: Backend) {
    let srv = TestServer::start();
    let t0 = Instant::now();
    let mut env = Env::new(&format!(
        "{}webhooks:\n  alerts:\n    runbook: intake\n    scheme: token\n    secret: {{ env: FAULT_HOOK_TOKEN }}\n    inputs: {{ alert_id: \"{{{{ payload.id }}}}\" }}\n    dedup_key: \"{{{{ payload.id }}}}\"\n",
        admin_yaml()
    ));
    env.extra_env
        .push(("FAULT_HOOK_TOKEN".into(), HOOK_TOKEN.into()));
    let Some(db) = backend.prepare("random SIGKILLs of cordon serve", &mut env) else {
        return;
    };
    env.write_runbook("intake", &runbook(&srv.url()));
    let seed = seed();
    let ctx = format!("[{} random kills, seed {seed}]", db.label());
    eprintln!("{ctx} FAULT_SEED={seed} repeats this kill schedule");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut node = Node::start(&env, "serve-0", &[]);
    let current = Arc::new(Mutex::new(Some(node.base.clone())));
    let acks: Arc<Mutex<BTreeMap<String, Ack>>> = Arc::default();
    let sender = {
        let current = current.clone();
        let acks = acks.clone();
        std::thread::spawn(move || send_all(current, acks))
    };
    let mut kills: Vec<Instant> = Vec::new();
    for k in 0..KILLS {
        let wait = rng.gen_range(100..700);
        std::thread::sleep(Duration::from_millis(wait));
        *current.lock().unwrap() = None;
        node.kill9();
        kills.push(Instant::now());
        eprintln!(
            "{ctx} kill {} after {wait} ms, {} deliveries acknowledged, {} vendor requests",
            k + 1,
            acks.lock().unwrap().len(),
            srv.seen().len()
        );
        node = Node::start(&env, &format!("serve-{}", k + 1), &[]);
        *current.lock().unwrap() = Some(node.base.clone());
    }
    if let Err(e) = sender.join() {
        std::panic::resume_unwind(e);
    }
    let acks = acks.lock().unwrap().clone();
    assert_eq!(acks.len(), DELIVERIES, "{ctx}");

    // None lost, none stuck: every acknowledged run finishes within the bound.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut open: BTreeSet<String> = acks.values().map(|a| a.run.clone()).collect();
    let mut finished: BTreeMap<String, Value> = BTreeMap::new();
    while !open.is_empty() {
        for run in open.clone() {
            match node.api(&format!("/runs/{run}")) {
                Ok((200, doc)) => {
                    if matches!(
                        doc["status"].as_str(),
                        Some("succeeded" | "failed" | "cancelled")
                    ) {
                        open.remove(&run);
                        finished.insert(run, doc);
                    }
                }
                Ok((404, _)) => panic!("{ctx}: acknowledged run {run} was lost"),
                Ok((st, v)) => panic!("{ctx}: GET run {run}: {st} {v}"),
                Err(e) => panic!("{ctx}: GET run {run}: {e}\n{}", node.log()),
            }
        }
        if Instant::now() > deadline {
            let stuck: Vec<String> = open.iter().take(5).cloned().collect();
            panic!(
                "{ctx}: {} runs still unfinished 90 s after the last delivery, e.g. {stuck:?}\n{}",
                open.len(),
                node.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let retried = acks.values().filter(|a| a.failures > 0).count();
    let dedup = acks.values().filter(|a| a.deduplicated).count();
    eprintln!(
        "{ctx} all {} runs finished {:.1} s after the start; {retried} deliveries were retried, {dedup} acknowledged as repeats",
        finished.len(),
        t0.elapsed().as_secs_f64()
    );

    // One run per delivery, each succeeded.
    let distinct: BTreeSet<&String> = acks.values().map(|a| &a.run).collect();
    assert_eq!(
        distinct.len(),
        DELIVERIES,
        "{ctx}: two deliveries share a run"
    );
    for (run, doc) in &finished {
        assert_eq!(doc["status"], "succeeded", "{ctx}: run {run}: {doc:#}");
    }

    // The vendor's view: each key once, or twice across a kill.
    let seen = srv.seen();
    let keys = by_key(&seen);
    let mut repeated = Vec::new();
    for run in &distinct {
        for step in STEPS {
            let key = format!("{run}/{step}/0");
            let reqs = keys.get(&key).cloned().unwrap_or_default();
            let show = || show_requests(&reqs, t0);
            let kill_times: Vec<u128> = kills
                .iter()
                .map(|k| k.saturating_duration_since(t0).as_millis())
                .collect();
            // A request is repeated only when a kill left its outcome unknown: between any
            // two requests with one key lies a kill (a step in flight at two kills in a row
            // is called three times, each under the same key).
            assert!(
                !reqs.is_empty() && reqs.len() <= 1 + kills.len(),
                "{ctx}: key {key} seen {} times (kills at {kill_times:?} ms):\n{}",
                reqs.len(),
                show()
            );
            for pair in reqs.windows(2) {
                let across = kills
                    .iter()
                    .any(|k| pair[0].start <= *k && *k <= pair[1].start);
                assert!(
                    across,
                    "{ctx}: key {key} repeated with no kill between its requests (kills at {kill_times:?} ms):\n{}",
                    show()
                );
            }
            if reqs.len() > 1 {
                repeated.push((run.to_string(), step, reqs.len()));
            }
        }
    }
    let total = keys.values().map(Vec::len).sum::<usize>();
    assert_eq!(keys.len(), DELIVERIES * STEPS.len(), "{ctx}: keys seen");
    eprintln!(
        "{ctx} vendor requests: {total} for {} keys; {} keys repeated across a kill, {} of them across two or more",
        keys.len(),
        repeated.len(),
        repeated.iter().filter(|(_, _, n)| *n > 2).count()
    );

    // The store: each step succeeded once; a repeated step was re-executed by a resume.
    for run in &distinct {
        let events = events_with_each_step_succeeded_once(&node, run, &STEPS, &ctx);
        for (_, step, n) in repeated.iter().filter(|(r, _, _)| r == *run) {
            let reexecuted = events
                .iter()
                .filter(|e| e["action"] == "run.resumed")
                .flat_map(|e| {
                    e["details"]["reexecuted"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .filter(|x| x["step"] == *step)
                .count();
            assert!(
                reexecuted + 1 >= *n,
                "{ctx}: run {run}: {step} was called {n} times but re-executed by only {reexecuted} resumes"
            );
        }
    }
    let (st, verdict) = node.api("/audit/verify").expect("audit verify");
    assert_eq!(
        (st, &verdict["ok"]),
        (200, &json!(true)),
        "{ctx}: {verdict}"
    );
    let code = node.stop();
    assert_eq!(code, 0, "{ctx}: the last node's exit");

    // Nothing else was started: one run per delivery in the store.
    let list = env.run(&["runs", "list", "--json", "--limit", "100000"]);
    assert_eq!(list.code, 0, "{ctx}: {list:?}");
    let runs = list.json();
    let n = runs
        .as_array()
        .or_else(|| runs["runs"].as_array())
        .map(Vec::len)
        .unwrap_or(0);
    assert_eq!(n, DELIVERIES, "{ctx}: runs in the store");
    assert_audit_verifies(&env, &ctx);
}

#[test]
fn sqlite_random_kills_of_serve_lose_and_repeat_nothing() {
    random_kills(Backend::Sqlite);
}

#[test]
fn postgres_random_kills_of_serve_lose_and_repeat_nothing() {
    random_kills(Backend::Postgres);
}
