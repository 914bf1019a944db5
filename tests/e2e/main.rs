//! End-to-end tests: the real `cordon` binary against a local HTTP server.

mod cluster;
mod drafts;
mod evidence;
mod harness;
mod postgres;
#[path = "../support/postgres.rs"]
mod postgres_schema;
#[path = "../support/s3_server.rs"]
mod s3_server;
mod schedules;
mod serve;
mod shipped;
mod ui;
mod ui_browser;

use std::time::{Duration, Instant};

use harness::{step, Env, TestServer};
use serde_json::Value;

fn rb(name: &str, body: &str) -> String {
    format!("version: 1\nname: {name}\n{body}")
}

#[test]
fn dag_order_parallel_steps_and_outputs_between_steps() {
    let srv = TestServer::start();
    let env = Env::new("");
    let u = srv.url();
    env.write_runbook(
        "dag",
        &rb(
            "dag",
            &format!(
                r#"inputs:
  base: {{ type: string, default: "{u}" }}
steps:
  - id: first
    uses: http.request
    with: {{ method: GET, url: "{{{{ inputs.base }}}}/ok/user-42" }}
  - id: left
    needs: [first]
    uses: http.request
    with: {{ method: GET, url: "{{{{ inputs.base }}}}/delay/400/left/{{{{ steps.first.output.body.id }}}}" }}
  - id: right
    needs: [first]
    uses: http.request
    with: {{ method: GET, url: "{{{{ inputs.base }}}}/delay/400/right" }}
  - id: last
    needs: [left, right]
    uses: http.request
    with: {{ method: GET, url: "{{{{ inputs.base }}}}/ok/last" }}
"#
            ),
        ),
    );
    let r = env.run(&["run", "dag", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let doc = r.json();
    assert_eq!(doc["status"], "succeeded");
    let first = &srv.hits("/ok/user-42")[0];
    let left = &srv.hits("/left/")[0];
    let right = &srv.hits("/right")[0];
    let last = &srv.hits("/ok/last")[0];
    // Output of `first` reached `left`'s URL.
    assert!(left.path.ends_with("/left/user-42"), "{}", left.path);
    // Order: first before both, both before last.
    assert!(first.end <= left.start && first.end <= right.start);
    assert!(left.end <= last.start && right.end <= last.start);
    // left and right overlapped in time: they ran concurrently.
    assert!(
        left.start < right.end && right.start < left.end,
        "left/right did not overlap"
    );
    assert_eq!(step(&doc, "left")["output"]["status"], 200);
}

#[test]
fn if_false_skips_and_propagates_unless_own_condition() {
    let srv = TestServer::start();
    let env = Env::new("");
    env.write_runbook(
        "cond",
        &rb(
            "cond",
            &format!(
                r#"inputs:
  confidence: {{ type: number, default: 0.2 }}
steps:
  - id: gated
    if: inputs.confidence >= 0.7
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/gated" }}
  - id: follows
    needs: [gated]
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/follows" }}
  - id: own-if
    needs: [gated]
    if: inputs.confidence < 0.7
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/own-if" }}
"#,
                u = srv.url()
            ),
        ),
    );
    let r = env.run(&["run", "cond", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let doc = r.json();
    assert_eq!(step(&doc, "gated")["status"], "skipped");
    assert_eq!(step(&doc, "follows")["status"], "skipped");
    assert_eq!(step(&doc, "own-if")["status"], "succeeded");
    assert!(srv.hits("/ok/gated").is_empty() && srv.hits("/ok/follows").is_empty());
    assert_eq!(srv.hits("/ok/own-if").len(), 1);
}

#[test]
fn for_each_outputs_keep_input_order_and_respect_the_bound() {
    let srv = TestServer::start();
    let env = Env::new("");
    env.write_runbook(
        "fan",
        &rb(
            "fan",
            &format!(
                r#"inputs:
  delays: {{ type: array, items: {{ type: integer }}, default: [300, 50, 200, 10] }}
steps:
  - id: fan
    for_each: inputs.delays
    as: ms
    max_parallel: 2
    uses: http.request
    with: {{ method: GET, url: "{u}/delay/{{{{ ms }}}}/item-{{{{ ms }}}}" }}
"#,
                u = srv.url()
            ),
        ),
    );
    let r = env.run(&["run", "fan", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let doc = r.json();
    let ids: Vec<String> = step(&doc, "fan")["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["body"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["item-300", "item-50", "item-200", "item-10"]);
    // Never more than two at once: at every request's start, count those in flight.
    let seen = srv.seen();
    for a in &seen {
        let in_flight = seen
            .iter()
            .filter(|b| b.start <= a.start && a.start < b.end)
            .count();
        assert!(in_flight <= 2, "{in_flight} requests in flight at once");
    }
}

#[test]
fn retries_after_503_and_after_429_with_retry_after() {
    let srv = TestServer::start();
    let env = Env::new("");
    env.write_runbook(
        "retry",
        &rb(
            "retry",
            &format!(
                r#"steps:
  - id: flaky
    uses: http.request
    with: {{ method: POST, url: "{u}/flaky/2/x" }}
    retry: {{ attempts: 4, backoff: 100ms, max_backoff: 200ms }}
  - id: limited
    uses: http.request
    with: {{ method: POST, url: "{u}/limited/1/2/y" }}
"#,
                u = srv.url()
            ),
        ),
    );
    let r = env.run(&["run", "retry", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let doc = r.json();
    assert_eq!(step(&doc, "flaky")["attempts"], 3);
    assert_eq!(step(&doc, "limited")["attempts"], 2);
    let flaky = srv.hits("/flaky/");
    assert_eq!(flaky.len(), 3);
    // Same idempotency key on every attempt.
    let keys: Vec<&String> = flaky
        .iter()
        .map(|s| &s.headers["idempotency-key"])
        .collect();
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    assert!(keys[0].ends_with("/flaky/0"), "{}", keys[0]);
    // Retry-After: 2 was honoured.
    let lim = srv.hits("/limited/");
    assert_eq!(lim.len(), 2);
    let gap = lim[1].start.duration_since(lim[0].end);
    assert!(gap >= Duration::from_millis(1900), "waited only {gap:?}");
}

#[test]
fn a_4xx_is_not_retried_and_timeouts_fail_the_step() {
    let srv = TestServer::start();
    let env = Env::new("");
    env.write_runbook(
        "fails",
        &rb(
            "fails",
            &format!(
                r#"steps:
  - id: slow
    uses: http.request
    with: {{ method: GET, url: "{u}/delay/3000/slow" }}
    timeout: 300ms
    retry: {{ attempts: 2, backoff: 50ms }}
    continue_on_error: true
  - id: bad
    uses: http.request
    with: {{ method: POST, url: "{u}/status/404/missing" }}
"#,
                u = srv.url()
            ),
        ),
    );
    let r = env.run(&["run", "fails", "--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    let doc = r.json();
    assert_eq!(doc["status"], "failed");
    let slow = step(&doc, "slow");
    assert_eq!(slow["status"], "failed");
    assert_eq!(slow["attempts"], 2);
    assert!(
        slow["error"].as_str().unwrap().contains("timed out"),
        "{slow}"
    );
    let bad = step(&doc, "bad");
    assert_eq!(bad["attempts"], 1);
    assert!(bad["error"].as_str().unwrap().contains("404"), "{bad}");
    assert_eq!(srv.hits("/status/404").len(), 1);
}

#[test]
fn on_failure_steps_run_with_the_error_and_later_steps_are_cancelled() {
    let srv = TestServer::start();
    let env = Env::new("");
    env.write_runbook(
        "onfail",
        &rb(
            "onfail",
            &format!(
                r#"steps:
  - id: breaks
    uses: http.request
    with: {{ method: POST, url: "{u}/status/500/boom" }}
    retry: {{ attempts: 1 }}
  - id: after
    needs: [breaks]
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/after" }}
on_failure:
  - id: page
    uses: http.request
    with: {{ method: POST, url: "{u}/echo/page", json: {{ text: "{{{{ run.runbook }}}} failed: {{{{ run.error }}}}" }} }}
"#,
                u = srv.url()
            ),
        ),
    );
    let r = env.run(&["run", "onfail", "--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    let doc = r.json();
    assert_eq!(step(&doc, "after")["status"], "cancelled");
    assert_eq!(step(&doc, "page")["status"], "succeeded");
    assert!(srv.hits("/ok/after").is_empty());
    let page = &srv.hits("/echo/page")[0];
    assert!(
        page.body.contains("onfail failed: step `breaks` failed"),
        "{}",
        page.body
    );
}

fn approval_runbook(u: &str) -> String {
    rb(
        "gate",
        &format!(
            r#"inputs:
  user: {{ type: string, default: "mallory@example.com" }}
steps:
  - id: look
    uses: http.request
    with: {{ method: GET, url: "{u}/ok/look" }}
  - id: approve-suspend
    needs: [look]
    approval:
      approvers: [role:legal]
      message: "Suspend {{{{ inputs.user }}}}?"
  - id: suspend
    needs: [approve-suspend]
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/suspend/{{{{ inputs.user }}}}" }}
on_failure:
  - id: tell
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/tell" }}
"#
        ),
    )
}

#[test]
fn approval_waits_durably_then_approve_continues() {
    let srv = TestServer::start();
    let env = Env::new(
        "api:\n  tokens:\n    - { name: dana, token: { env: DANA_TOKEN }, role: approver, groups: [legal] }\n    - { name: sam, token: { env: SAM_TOKEN }, role: approver, groups: [finance] }\n",
    );
    env.write_runbook("gate", &approval_runbook(&srv.url()));
    let r = env.run(&["run", "gate", "--as", "dana"]);
    assert_eq!(r.code, 3, "{r:?}");
    let run = r.run_id();
    assert!(srv.hits("/ok/suspend").is_empty());
    let doc = env.show(&run);
    assert_eq!(doc["status"], "waiting");
    // The starter cannot approve alone; a person outside the group cannot approve at all.
    let selfie = env.run(&["approve", &run, "approve-suspend", "--by", "dana"]);
    assert_eq!(selfie.code, 1, "{selfie:?}");
    assert!(
        selfie.stderr.contains("cannot approve it alone"),
        "{selfie:?}"
    );
    let outsider = env.run(&["approve", &run, "approve-suspend", "--by", "sam"]);
    assert_eq!(outsider.code, 1, "{outsider:?}");
    assert!(srv.hits("/ok/suspend").is_empty());
    // Someone else in legal: admin has every group.
    let env2_tokens = env.run(&["approve", &run, "approve-suspend", "--by", "nobody"]);
    assert_eq!(env2_tokens.code, 1, "{env2_tokens:?}");
    std::fs::write(
        env.path().join("config.yaml"),
        "database: sqlite://cordon.db\nevidence: { dir: evidence }\nrunbooks: runbooks\napi:\n  tokens:\n    - { name: dana, token: { env: DANA_TOKEN }, role: approver, groups: [legal] }\n    - { name: lee, token: { env: LEE_TOKEN }, role: approver, groups: [legal] }\n",
    )
    .unwrap();
    let ok = env.run(&[
        "approve",
        &run,
        "approve-suspend",
        "--by",
        "lee",
        "--comment",
        "evidence is clear",
        "--json",
    ]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let doc = ok.json();
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(srv.hits("/ok/suspend/mallory@example.com").len(), 1);
    let approvers = &step(&doc, "approve-suspend")["output"]["approvers"];
    assert_eq!(approvers[0], "cli:lee");
    // The decision is in the audit trail with its comment.
    let audit = env.run(&["audit", "export", "--run", &run, "--format", "jsonl"]);
    assert_eq!(audit.code, 0);
    let decided: Vec<Value> = audit
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["action"] == "approval.decided")
        .collect();
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0]["actor"], "cli:lee");
    assert_eq!(decided[0]["details"]["comment"], "evidence is clear");
}

#[test]
fn rejection_fails_the_run_and_runs_on_failure() {
    let srv = TestServer::start();
    let env = Env::new("");
    env.write_runbook("gate", &approval_runbook(&srv.url()));
    let r = env.run(&["run", "gate", "--as", "ana"]);
    assert_eq!(r.code, 3, "{r:?}");
    let run = r.run_id();
    // The starter may reject.
    let rej = env.run(&[
        "approve",
        &run,
        "approve-suspend",
        "--by",
        "ana",
        "--reject",
        "--comment",
        "false positive",
        "--json",
    ]);
    assert_eq!(rej.code, 1, "{rej:?}");
    let doc = rej.json();
    assert_eq!(doc["status"], "failed");
    assert_eq!(step(&doc, "suspend")["status"], "cancelled");
    assert_eq!(step(&doc, "tell")["status"], "succeeded");
    assert!(
        doc["error"].as_str().unwrap().contains("false positive"),
        "{doc}"
    );
    assert!(srv.hits("/ok/suspend").is_empty());
}

#[test]
fn undo_reverses_succeeded_steps_newest_first() {
    let srv = TestServer::start();
    let env = Env::new("");
    env.write_runbook(
        "undoable",
        &rb(
            "undoable",
            &format!(
                r#"inputs:
  devices: {{ type: array, default: ["d1", "d2"] }}
steps:
  - id: suspend
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/suspend" }}
    undo: {{ uses: http.request, with: {{ method: POST, url: "{u}/ok/unsuspend" }} }}
  - id: contain
    needs: [suspend]
    for_each: inputs.devices
    as: dev
    max_parallel: 1
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/contain/{{{{ dev }}}}" }}
    undo: {{ uses: http.request, with: {{ method: POST, url: "{u}/ok/release/{{{{ dev }}}}" }} }}
  - id: note
    needs: [contain]
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/note" }}
"#,
                u = srv.url()
            ),
        ),
    );
    let r = env.run(&["run", "undoable"]);
    assert_eq!(r.code, 0, "{r:?}");
    let run = r.run_id();
    let u = env.run(&["undo", &run, "--json"]);
    assert_eq!(u.code, 0, "{u:?}");
    let doc = u.json();
    assert_eq!(doc["undo_of"], run.as_str());
    let order: Vec<String> = srv
        .seen()
        .iter()
        .filter(|s| s.path.contains("/release/") || s.path.contains("/unsuspend"))
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(order, ["/ok/release/d2", "/ok/release/d1", "/ok/unsuspend"]);
    // `note` has no undo: reported, not silently dropped.
    let plan = doc["inputs"]["plan"].as_array().unwrap();
    assert!(
        plan.iter()
            .any(|p| p["step"] == "note" && p["disposition"] == "not_undoable"),
        "{plan:?}"
    );
}

#[test]
fn dry_run_calls_lookups_only_and_reports_the_rest() {
    let srv = TestServer::start();
    let env = Env::new("");
    env.write_runbook(
        "plan",
        &rb(
            "plan",
            &format!(
                r#"steps:
  - id: find
    uses: http.request
    with: {{ method: GET, url: "{u}/ok/u-77" }}
  - id: suspend
    needs: [find]
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/suspend/{{{{ steps.find.output.body.id }}}}" }}
  - id: approve-it
    needs: [suspend]
    approval: {{ approvers: [role:legal] }}
  - id: notify
    needs: [approve-it]
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/notify", json: {{ target: "{{{{ steps.suspend.output.body.id }}}}" }} }}
"#,
                u = srv.url()
            ),
        ),
    );
    let r = env.run(&["run", "plan", "--dry-run", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let doc = r.json();
    assert_eq!(srv.hits("/ok/u-77").len(), 1, "the lookup runs for real");
    assert!(
        srv.seen().iter().all(|s| s.method == "GET"),
        "{:?}",
        srv.seen()
    );
    let s = step(&doc, "suspend");
    assert_eq!(s["output"]["dry_run"], true);
    assert!(
        s["output"]["inputs"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/ok/suspend/u-77"),
        "{s}"
    );
    let n = step(&doc, "notify");
    let target = n["output"]["inputs"]["json"]["target"].as_str().unwrap();
    assert!(target.contains("not run in dry run"), "{target}");
}

#[test]
fn resume_after_kill_dash_nine_repeats_no_succeeded_step() {
    let srv = TestServer::start();
    let env = Env::new("");
    env.write_runbook(
        "slow",
        &rb(
            "slow",
            &format!(
                r#"steps:
  - id: first
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/first" }}
  - id: slow
    needs: [first]
    uses: http.request
    with: {{ method: POST, url: "{u}/delay/2500/slow" }}
  - id: last
    needs: [slow]
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/last" }}
"#,
                u = srv.url()
            ),
        ),
    );
    let mut child = env.spawn(&["run", "slow"]);
    // Wait until the slow step's request is in flight, then kill -9.
    let t0 = Instant::now();
    while srv
        .state
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| !s.path.contains("/ok/first"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "first step never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(600));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let run = stdout
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .expect("run id")
        .trim()
        .to_string();
    // Let the killed attempt's request finish on the server before counting.
    std::thread::sleep(Duration::from_millis(2500));
    let r = env.run(&["resume", &run, "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["status"], "succeeded");
    assert_eq!(
        srv.hits("/ok/first").len(),
        1,
        "a succeeded step was repeated"
    );
    let slow = srv.hits("/slow");
    assert_eq!(slow.len(), 2, "the interrupted step runs again");
    assert_eq!(
        slow[0].headers["idempotency-key"],
        slow[1].headers["idempotency-key"]
    );
    assert_eq!(srv.hits("/ok/last").len(), 1);
    let v = env.run(&["audit", "verify"]);
    assert_eq!(v.code, 0, "{v:?}");
}

#[test]
fn secrets_from_env_never_reach_database_audit_logs_or_errors() {
    let srv = TestServer::start();
    let secret = "s3cr3t-Value-8d1f0a77";
    let mut env = Env::new(&format!(
        "connectors:\n  api:\n    type: http\n    base_url: {}\n    headers:\n      X-Api-Key: {{ env: TEST_API_KEY }}\n",
        srv.url()
    ));
    env.extra_env.push(("TEST_API_KEY".into(), secret.into()));
    env.write_runbook(
        "sec",
        &rb(
            "sec",
            r#"steps:
  - id: echo
    uses: http.request
    with: { method: POST, url: /echo/with-key, json: { hello: world } }
  - id: fail
    needs: [echo]
    uses: http.request
    with: { method: GET, url: /status/403/denied }
"#,
        ),
    );
    let r = env.run(&["run", "sec", "--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    // The server did get the header...
    assert_eq!(srv.hits("/echo/with-key")[0].headers["x-api-key"], secret);
    // ...but nothing Cordon wrote or printed contains it.
    let run = r.run_id();
    let export = env.run(&["audit", "export", "--run", &run, "--format", "jsonl"]);
    let html = env.run(&["audit", "export", "--run", &run, "--format", "html"]);
    let show = env.run(&["runs", "show", &run, "--json", "--reveal"]);
    for (what, text) in [
        ("run output", format!("{}{}", r.stdout, r.stderr)),
        ("audit jsonl", export.stdout.clone()),
        ("audit html", html.stdout.clone()),
        ("runs show", show.stdout.clone()),
    ] {
        assert!(!text.contains(secret), "secret leaked into {what}");
    }
    let mut db_bytes = Vec::new();
    for f in ["cordon.db", "cordon.db-wal"] {
        if let Ok(b) = std::fs::read(env.path().join(f)) {
            db_bytes.extend(b);
        }
    }
    assert!(!db_bytes.is_empty());
    assert!(
        !db_bytes
            .windows(secret.len())
            .any(|w| w == secret.as_bytes()),
        "secret stored in the database"
    );
    assert!(
        show.stdout.contains("[REDACTED]"),
        "the echoed header should show as redacted"
    );
}

#[test]
fn bad_input_exits_two_naming_the_problem() {
    let env = Env::new("");
    env.write_runbook(
        "typed",
        &rb(
            "typed",
            r#"inputs:
  subject_email: { type: string, format: email, required: true }
  confidence: { type: number, minimum: 0, maximum: 1, default: 0.5 }
steps:
  - id: noop
    uses: core.noop
    with: { who: "{{ inputs.subject_email }}" }
"#,
        ),
    );
    let unknown = env.run(&["run", "typo"]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("typo"), "{unknown:?}");
    let missing = env.run(&["run", "typed"]);
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(missing.stderr.contains("subject_email"), "{missing:?}");
    let mistyped = env.run(&[
        "run",
        "typed",
        "--input",
        "subject_email=a@b.co",
        "--input",
        "confidence=high",
    ]);
    assert_eq!(mistyped.code, 2, "{mistyped:?}");
    assert!(mistyped.stderr.contains("confidence"), "{mistyped:?}");
    let alert = env.run(&["run", "typed", "--alert", "nope.json"]);
    assert_eq!(alert.code, 2, "{alert:?}");
    assert!(alert.stderr.contains("nope.json"), "{alert:?}");
    std::fs::write(
        env.path().join("alert.json"),
        r#"{"subject_email": "x@example.com", "confidence": 0.9}"#,
    )
    .unwrap();
    let good = env.run(&["run", "typed", "--alert", "alert.json", "--json"]);
    assert_eq!(good.code, 0, "{good:?}");
    assert_eq!(good.json()["inputs"]["confidence"], 0.9);
    // Nothing was stored for the bad attempts.
    let list = env.run(&["runs", "list", "--json"]);
    assert_eq!(list.json().as_array().unwrap().len(), 1);
}

#[test]
fn hundred_steps_and_ten_thousand_items() {
    let env = Env::new("");
    let mut steps = String::from("steps:\n");
    for i in 0..100 {
        let needs = if i == 0 {
            String::new()
        } else {
            format!("\n    needs: [s{}]", i - 1)
        };
        steps.push_str(&format!(
            "  - id: s{i}{needs}\n    uses: core.noop\n    with: {{ n: {i} }}\n"
        ));
    }
    env.write_runbook("hundred", &rb("hundred", &steps));
    let r = env.run(&["run", "hundred", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(step(&r.json(), "s99")["output"]["n"], 99);

    env.write_runbook(
        "wide",
        &rb(
            "wide",
            "steps:\n  - id: wide\n    for_each: inputs.n\n    max_parallel: 64\n    uses: core.noop\n    with: { i: \"{{ item }}\" }\ninputs:\n  n: { type: array, required: true }\n",
        ),
    );
    let list: Vec<u32> = (0..10_000).collect();
    std::fs::write(
        env.path().join("big.json"),
        serde_json::json!({ "n": list }).to_string(),
    )
    .unwrap();
    let r = env.run(&["run", "wide", "--alert", "big.json", "--json"]);
    assert_eq!(r.code, 0, "{:?}", r.stderr);
    let out = step(&r.json(), "wide")["output"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(out.len(), 10_000);
    assert_eq!(out[9_999]["i"], 9_999);
}

#[test]
fn audit_verify_names_the_first_tampered_event() {
    let env = Env::new("");
    env.write_runbook(
        "one",
        &rb("one", "steps:\n  - id: a\n    uses: core.noop\n"),
    );
    for _ in 0..3 {
        assert_eq!(env.run(&["run", "one"]).code, 0);
    }
    let ok = env.run(&["audit", "verify", "--json"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert_eq!(ok.json()["ok"], true);
    let events = ok.json()["events"].as_u64().unwrap();
    assert!(events >= 12, "{events}");
    // Edit one event's details in place.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let url = format!("sqlite://{}", env.db().display());
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE audit_events SET details = '{\"forged\":true}' WHERE seq = 5")
            .execute(&mut c)
            .await
            .unwrap();
    });
    let bad = env.run(&["audit", "verify", "--json"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert_eq!(bad.json()["first_bad"], 5);
}

#[test]
fn validate_reports_every_problem_with_location_and_exit_one() {
    let env = Env::new("");
    let p = env.write_runbook(
        "broken",
        "version: 1\nname: broken\nsteps:\n  - id: a\n    uses: http.request\n    neds: [b]\n    with: { method: GET, url: /x }\n  - id: b\n    uses: http.requets\n",
    );
    let r = env.run(&["validate", p.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains(":6:5:"), "{r:?}");
    assert!(r.stdout.contains("needs"), "{r:?}");
    assert!(
        r.stdout.contains(":9:11:") || r.stdout.contains(":9:"),
        "{r:?}"
    );
    let good = env.run(&[
        "validate",
        env.path().join("runbooks/none.yaml").to_str().unwrap(),
    ]);
    assert_ne!(good.code, 0);
}

#[test]
fn tasks_joins_cancel_and_retry() {
    let srv = TestServer::start();
    let env = Env::new("");
    let u = srv.url();
    env.write_runbook(
        "task",
        &rb(
            "task",
            &format!(
                r#"inputs:
  subject: {{ type: string, required: true }}
concurrency_key: "{{{{ inputs.subject }}}}"
steps:
  - id: hold-payments
    task:
      assignees: [role:finance]
      message: "Hold payments to {{{{ inputs.subject }}}}"
  - id: after
    needs: [hold-payments]
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/after-task" }}
"#
            ),
        ),
    );
    let first = env.run(&["run", "task", "--input", "subject=x@example.com"]);
    assert_eq!(first.code, 3, "{first:?}");
    let run = first.run_id();
    // A second trigger for the same subject joins the active run.
    let second = env.run(&["run", "task", "--input", "subject=x@example.com"]);
    assert_eq!(second.run_id(), run, "{second:?}");
    assert!(second.stderr.contains("joined"), "{second:?}");
    assert_eq!(
        env.run(&["runs", "list", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Tasks are done with `cordon done`; `approve` is refused for them.
    let wrong = env.run(&["approve", &run, "hold-payments", "--by", "fin"]);
    assert_eq!(wrong.code, 1, "{wrong:?}");
    let done = env.run(&[
        "done",
        &run,
        "hold-payments",
        "--by",
        "fin",
        "--note",
        "held",
        "--json",
    ]);
    assert_eq!(done.code, 0, "{done:?}");
    let doc = done.json();
    assert_eq!(step(&doc, "hold-payments")["output"]["note"], "held");
    assert_eq!(srv.hits("/ok/after-task").len(), 1);

    // Cancel a run that is executing in another process.
    env.write_runbook(
        "slowcancel",
        &rb("slowcancel", &format!("steps:\n  - id: slow\n    uses: http.request\n    with: {{ method: GET, url: \"{u}/delay/4000/c\" }}\n  - id: next\n    needs: [slow]\n    uses: http.request\n    with: {{ method: POST, url: \"{u}/ok/never\" }}\n")),
    );
    let child = env.spawn(&["run", "slowcancel"]);
    let t0 = Instant::now();
    while srv.state.seen.lock().unwrap().is_empty()
        || env
            .run(&["runs", "list", "--json", "--runbook", "slowcancel"])
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    let id = env
        .run(&["runs", "list", "--json", "--runbook", "slowcancel"])
        .json()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let c = env.run(&["cancel", &id]);
    assert_eq!(c.code, 0, "{c:?}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc = env.show(&id);
    assert_eq!(doc["status"], "cancelled");
    assert!(srv.hits("/ok/never").is_empty());

    // Retry keeps what succeeded and re-runs what failed.
    env.write_runbook(
        "retryable",
        &rb("retryable", &format!("steps:\n  - id: a\n    uses: http.request\n    with: {{ method: POST, url: \"{u}/ok/a\" }}\n  - id: b\n    needs: [a]\n    uses: http.request\n    with: {{ method: POST, url: \"{u}/flaky/1/b\" }}\n    retry: {{ attempts: 1 }}\n")),
    );
    let r = env.run(&["run", "retryable"]);
    assert_eq!(r.code, 1, "{r:?}");
    let id = r.run_id();
    let again = env.run(&["retry", &id, "--json"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json()["id"], id.as_str());
    assert_eq!(srv.seen().iter().filter(|s| s.path == "/ok/a").count(), 1);
    assert_eq!(srv.hits("/flaky/1/b").len(), 2);

    // Retry from a step re-runs it and every step that needs it, directly or through
    // others, and keeps the rest.
    env.write_runbook(
        "retryfrom",
        &rb("retryfrom", &format!("steps:\n  - id: a\n    uses: http.request\n    with: {{ method: POST, url: \"{u}/ok/from-a\" }}\n  - id: b\n    needs: [a]\n    uses: http.request\n    with: {{ method: POST, url: \"{u}/ok/from-b\" }}\n  - id: c\n    needs: [b]\n    uses: http.request\n    with: {{ method: POST, url: \"{u}/flaky/1/from-c\" }}\n    retry: {{ attempts: 1 }}\n  - id: d\n    needs: [a]\n    uses: http.request\n    with: {{ method: POST, url: \"{u}/ok/from-d\" }}\n")),
    );
    let r = env.run(&["run", "retryfrom"]);
    assert_eq!(r.code, 1, "{r:?}");
    let id = r.run_id();
    let again = env.run(&["retry", &id, "--from", "b", "--json"]);
    assert_eq!(again.code, 0, "{again:?}");
    let calls = |path: &str| srv.seen().iter().filter(|s| s.path == path).count();
    assert_eq!(calls("/ok/from-a"), 1, "a is kept");
    assert_eq!(calls("/ok/from-d"), 1, "d does not need b: kept");
    assert_eq!(calls("/ok/from-b"), 2, "b runs again");
    assert_eq!(
        srv.hits("/flaky/1/from-c").len(),
        2,
        "c needs b: runs again"
    );
}

#[test]
fn pause_holds_mutating_calls_until_unpause() {
    let srv = TestServer::start();
    let env = Env::new("");
    let u = srv.url();
    env.write_runbook(
        "paused",
        &rb("paused", &format!("steps:\n  - id: look\n    uses: http.request\n    with: {{ method: GET, url: \"{u}/ok/look\" }}\n  - id: change\n    needs: [look]\n    uses: http.request\n    with: {{ method: POST, url: \"{u}/ok/change\" }}\n")),
    );
    assert_eq!(env.run(&["pause"]).code, 0);
    let child = env.spawn(&["run", "paused"]);
    let t0 = Instant::now();
    while srv.hits("/ok/look").is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "lookup did not run while paused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        srv.hits("/ok/change").is_empty(),
        "a mutating call went out while paused"
    );
    assert_eq!(env.run(&["unpause"]).code, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(srv.hits("/ok/change").len(), 1);
    let audit = env.run(&["audit", "verify"]);
    assert_eq!(audit.code, 0);
}

#[test]
fn snapshots_are_evidence_with_hashes_and_verify_catches_tampering() {
    let srv = TestServer::start();
    let env = Env::new("");
    env.write_runbook(
        "snap",
        &rb("snap", &format!("steps:\n  - id: logs\n    uses: http.snapshot\n    with: {{ method: GET, url: \"{}/ndjson/25/logs\" }}\n", srv.url())),
    );
    let r = env.run(&["run", "snap", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let doc = r.json();
    let out = &step(&doc, "logs")["output"];
    assert_eq!(out["records"], 25);
    let run = r.run_id();
    let v = env.run(&["evidence", "verify", &run]);
    assert_eq!(v.code, 0, "{v:?}");
    // Tamper with the artifact on disk.
    let dir = env.path().join("evidence").join(&run);
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.extension()
                .is_some_and(|e| e != "jsonl" || !p.ends_with("manifest.jsonl"))
                && !p.ends_with("SHA256SUMS")
                && !p.ends_with("manifest.jsonl")
        })
        .expect("artifact file");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let bad = env.run(&["evidence", "verify", &run]);
    assert_eq!(bad.code, 1, "{bad:?}");
}

#[test]
fn quorum_needs_distinct_approvers_and_timeouts_decide() {
    let srv = TestServer::start();
    let env = Env::new("");
    let u = srv.url();
    env.write_runbook(
        "quorum",
        &rb(
            "quorum",
            &format!(
                r#"steps:
  - id: approve-two
    approval: {{ approvers: [role:legal], min_approvals: 2 }}
  - id: act
    needs: [approve-two]
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/act" }}
"#
            ),
        ),
    );
    let r = env.run(&["run", "quorum", "--as", "ana"]);
    assert_eq!(r.code, 3, "{r:?}");
    let run = r.run_id();
    // The starter may be one of a quorum...
    let one = env.run(&["approve", &run, "approve-two", "--by", "ana"]);
    assert_eq!(one.code, 3, "{one:?}");
    // ...but not twice.
    let twice = env.run(&["approve", &run, "approve-two", "--by", "ana"]);
    assert_eq!(twice.code, 1, "{twice:?}");
    assert!(srv.hits("/ok/act").is_empty());
    let two = env.run(&["approve", &run, "approve-two", "--by", "bob", "--json"]);
    assert_eq!(two.code, 0, "{two:?}");
    assert_eq!(
        step(&two.json(), "approve-two")["output"]["approvers"],
        serde_json::json!(["cli:ana", "cli:bob"])
    );
    assert_eq!(srv.hits("/ok/act").len(), 1);

    env.write_runbook(
        "expires",
        &rb(
            "expires",
            &format!(
                r#"steps:
  - id: approve-fast
    approval: {{ approvers: [role:legal], timeout: 1s, on_timeout: approve }}
  - id: act
    needs: [approve-fast]
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/after-timeout" }}
"#
            ),
        ),
    );
    let r = env.run(&["run", "expires"]);
    assert_eq!(r.code, 3, "{r:?}");
    let run = r.run_id();
    std::thread::sleep(Duration::from_millis(1300));
    // The next process that looks at the run decides the overdue approval.
    let doc = env.show(&run);
    assert_eq!(doc["status"], "succeeded", "{doc:#}");
    assert_eq!(step(&doc, "approve-fast")["output"]["by_timeout"], true);
    assert_eq!(srv.hits("/ok/after-timeout").len(), 1);
}

/// The shipped default runbook against the vendor sandbox: evidence first, counsel's
/// approval, the identity suspended in every identity provider at once (an account that
/// was already suspended is reported `already`), and `cordon undo` restoring exactly what
/// the run changed.
#[test]
fn default_runbook_suspends_everywhere_and_undo_restores_only_its_own_changes() {
    use cordon_connectors::sandbox::{entra, Sandbox};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(Sandbox::seeded().serve()).unwrap();
    let sb = server.sandbox.clone();
    let env = Env::with_sandbox(&server.base_url());
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../runbooks/dprk-it-worker-containment.yaml");
    std::fs::copy(
        &shipped,
        env.path().join("runbooks/dprk-it-worker-containment.yaml"),
    )
    .unwrap();
    let subject = "j.smith@example.com";

    // A dry run finds the identity for real and reports what it would change, changing nothing.
    let dry = env.run(&[
        "run",
        "dprk-it-worker-containment",
        "--dry-run",
        "--json",
        "--input",
        &format!("subject_email={subject}"),
        "--input",
        "alert_id=A-0",
    ]);
    assert_eq!(dry.code, 0, "{dry:?}");
    let plan = dry.json();
    assert_eq!(
        step(&plan, "find-identities")["output"]["succeeded"],
        4,
        "{plan:#}"
    );
    let would = step(&plan, "suspend-identity")["output"]["would"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        would.contains("okta-sandbox") && would.contains("scim-sandbox"),
        "{would}"
    );
    assert_eq!(sb.entra.account_enabled(entra::SUSPECT_ID), Some(true));
    assert_eq!(sb.okta.status_of(subject).as_deref(), Some("ACTIVE"));

    // Someone suspended the user in Okta before this incident.
    env.write_runbook(
        "pre",
        &rb("pre", "steps:\n  - id: s\n    uses: okta.suspend_user\n    connector: okta-sandbox\n    with: { user: j.smith@example.com }\n"),
    );
    assert_eq!(env.run(&["run", "pre"]).code, 0);
    assert_eq!(sb.okta.status_of(subject).as_deref(), Some("SUSPENDED"));
    // 2,500 Google login events for the subject: several pages, all of them preserved.
    sb.google.add_login_events(subject, 2_470);

    let r = env.run(&[
        "run",
        "dprk-it-worker-containment",
        "--input",
        &format!("subject_email={subject}"),
        "--input",
        "alert_id=A-1",
        "--as",
        "analyst",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    let run = r.run_id();
    let doc = env.show(&run);
    // Evidence was taken before anything was revoked.
    let snap = step(&doc, "snapshot-identity-logs");
    assert_eq!(snap["status"], "succeeded");
    assert!(
        snap["output"]["succeeded"].as_u64().unwrap() >= 3,
        "{snap:#}"
    );
    // Each instance's snapshot reports the subject's addresses, untouched by the role: the
    // VPN exit everywhere, never the office address of the admin who suspended them.
    for res in snap["output"]["results"].as_array().unwrap() {
        if res["status"] != "succeeded" {
            continue;
        }
        let ips = res["output"]["ip_addresses"]
            .as_array()
            .unwrap_or_else(|| panic!("{res:#}"));
        assert!(ips.iter().any(|a| a["ip"] == "203.0.113.45"), "{res:#}");
        assert!(ips.iter().all(|a| a["ip"] != "198.51.100.7"), "{res:#}");
        assert_eq!(res["output"]["ip_addresses_truncated"], false);
    }
    assert_eq!(step(&doc, "suspend-identity")["status"], "pending");
    assert_eq!(sb.entra.account_enabled(entra::SUSPECT_ID), Some(true));
    // Counsel's legal hold and finance's payment hold are tasks the run waits for; the
    // containment approval waits for the legal hold and the evidence.
    assert_eq!(step(&doc, "legal-hold")["status"], "waiting", "{doc:#}");
    assert_eq!(step(&doc, "payment-hold")["status"], "waiting", "{doc:#}");
    assert_eq!(step(&doc, "approve-containment")["status"], "pending");
    assert_eq!(step(&doc, "draft-legal-hold-memo")["status"], "succeeded");
    // The sandbox's SIEMs hold the subject's events too: preserved before containment.
    for siem in ["snapshot-siem-splunk", "snapshot-siem-elasticsearch"] {
        let s = step(&doc, siem);
        assert_eq!(s["status"], "succeeded", "{s:#}");
        assert!(s["output"]["records"].as_u64().unwrap() > 0, "{s:#}");
    }
    for task in ["legal-hold", "payment-hold"] {
        let d = env.run(&["done", &run, task, "--by", "counsel", "--note", "in place"]);
        assert_eq!(d.code, 3, "{d:?}");
    }
    let ok = env.run(&[
        "approve",
        &run,
        "approve-containment",
        "--by",
        "counsel",
        "--json",
    ]);
    // Contained; the run now waits for counsel to approve the notification drafts.
    assert_eq!(ok.code, 3, "{ok:?}");
    let doc = ok.json();
    assert_eq!(step(&doc, "approve-notifications")["status"], "waiting");
    assert_eq!(step(&doc, "draft-executive-brief")["status"], "succeeded");
    assert_eq!(step(&doc, "draft-fbi-ic3-complaint")["status"], "pending");
    let out = &step(&doc, "suspend-identity")["output"];
    assert_eq!(out["succeeded"], 3, "{out:#}");
    assert_eq!(out["already"], 1, "{out:#}");
    assert_eq!(sb.entra.account_enabled(entra::SUSPECT_ID), Some(false));
    assert_eq!(sb.google.is_suspended(subject), Some(true));
    assert_eq!(sb.scim.active(subject), Some(false));
    let notified = env.run(&[
        "approve",
        &run,
        "approve-notifications",
        "--by",
        "counsel",
        "--json",
    ]);
    assert_eq!(notified.code, 0, "{notified:?}");
    let done = notified.json();
    assert_eq!(done["status"], "succeeded", "{done:#}");
    // Without payments in the facts, the conditional OFAC reports are not drafted.
    assert_eq!(
        step(&done, "draft-ofac-blocked-property")["status"],
        "skipped"
    );
    assert_eq!(
        step(&done, "draft-ofac-rejected-transaction")["status"],
        "skipped"
    );
    let listed = env.run(&["drafts", "list", &run, "--json"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    let drafts = listed.json();
    let templates: std::collections::BTreeSet<&str> = drafts
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["template"].as_str().unwrap())
        .collect();
    assert_eq!(
        templates,
        [
            "executive-brief",
            "fbi-field-office-cover-letter",
            "fbi-ic3-complaint",
            "hr-separation-notice",
            "legal-hold-memo",
            "ofac-voluntary-self-disclosure",
            "staffing-vendor-notice",
        ]
        .into_iter()
        .collect()
    );
    // The IC3 draft carries what the run learned: addresses with times from the preserved
    // logs, the actions with their times, and every evidence hash; what it cannot know is a
    // visible placeholder for counsel.
    let ic3 = drafts
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["template"] == "fbi-ic3-complaint")
        .unwrap()["draft_id"]
        .as_str()
        .unwrap()
        .to_string();
    let body = env.run(&["drafts", "show", &ic3, "--json"]).json()["body_markdown"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(body.starts_with("**DRAFT — PRIVILEGED"), "{body}");
    assert!(body.contains("203.0.113.45"), "{body}");
    assert!(body.contains("suspend_user"), "{body}");
    for e in env.run(&["runs", "show", &run, "--json"]).json()["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["id"] == "snapshot-identity-logs")
        .flat_map(|s| s["output"]["results"].as_array().unwrap().clone())
    {
        let sha = e["output"]["sha256"].as_str().unwrap();
        assert!(
            body.contains(sha),
            "the IC3 draft lacks evidence hash {sha}"
        );
    }
    assert!(
        body.contains(r"\[COUNSEL TO COMPLETE: payments.items\]"),
        "{body}"
    );
    // Every call of the role step carried the step's key plus the instance.
    let audit = env.run(&["audit", "export", "--run", &run, "--format", "jsonl"]);
    assert!(audit.stdout.contains("\"evidence.collected\""));
    assert_eq!(env.run(&["evidence", "verify", &run]).code, 0);
    let snap = step(&doc, "snapshot-identity-logs")["output"]["results"]
        .as_array()
        .unwrap()
        .clone();
    let google = snap
        .iter()
        .find(|r| r["connector"] == "google-sandbox")
        .unwrap();
    assert_eq!(google["output"]["records"], 2_500, "{google:#}");
    assert!(
        google["output"]["pages"].as_u64().unwrap() >= 3,
        "{google:#}"
    );
    let manifest = std::fs::read_to_string(
        env.path()
            .join("evidence")
            .join(&run)
            .join("manifest.jsonl"),
    )
    .unwrap();
    let entry: Value = manifest
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["evidence_id"] == google["output"]["evidence_id"])
        .expect("the artifact is in the manifest");
    assert_eq!(entry["records"], 2_500);
    assert_eq!(entry["sha256"], google["output"]["sha256"]);
    let bytes = std::fs::read(
        env.path()
            .join("evidence")
            .join(entry["path"].as_str().unwrap()),
    )
    .unwrap();
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
    assert_eq!(entry["sha256"].as_str().unwrap(), hex::encode(digest));
    assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 2_500);

    let u = env.run(&["undo", &run, "--json"]);
    assert_eq!(u.code, 0, "{u:?}");
    let plan = u.json()["inputs"]["plan"].as_array().unwrap().clone();
    let okta = plan
        .iter()
        .find(|p| p["connector"] == "okta-sandbox" && p["step"] == "suspend-identity")
        .unwrap();
    assert_eq!(okta["disposition"], "already", "{plan:?}");
    assert_eq!(sb.entra.account_enabled(entra::SUSPECT_ID), Some(true));
    assert_eq!(sb.google.is_suspended(subject), Some(false));
    assert_eq!(sb.scim.active(subject), Some(true));
    // The account suspended before the incident stays suspended.
    assert_eq!(sb.okta.status_of(subject).as_deref(), Some("SUSPENDED"));
    assert_eq!(env.run(&["audit", "verify"]).code, 0);

    // No vendor credential reached the database or the audit trail.
    let mut stored = Vec::new();
    for f in ["cordon.db", "cordon.db-wal"] {
        if let Ok(b) = std::fs::read(env.path().join(f)) {
            stored.extend(b);
        }
    }
    stored.extend(
        env.run(&["audit", "export", "--run", &run, "--format", "jsonl"])
            .stdout
            .into_bytes(),
    );
    for secret in [
        cordon_connectors::sandbox::okta::SANDBOX_TOKEN,
        cordon_connectors::sandbox::scim::SANDBOX_TOKEN,
        entra::SANDBOX_CLIENT_SECRET,
    ] {
        assert!(
            !stored.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a credential was stored"
        );
    }
}

/// A destructive action (Intune retire) waits for a snapshot of that device in the same run.
#[test]
fn retire_is_refused_until_the_device_was_snapshotted() {
    use cordon_connectors::sandbox::Sandbox;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(Sandbox::seeded().serve()).unwrap();
    let sb = server.sandbox.clone();
    let env = Env::with_sandbox(&server.base_url());
    env.write_runbook(
        "hasty",
        &rb(
            "hasty",
            "steps:\n  - id: retire\n    uses: intune.retire\n    with: { device: C02DEMO0001 }\n",
        ),
    );
    let r = env.run(&["run", "hasty", "--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    let err = step(&r.json(), "retire")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("evidence_first"), "{err}");
    assert!(
        !sb.intune.calls().iter().any(|c| c.contains("retire")),
        "{:?}",
        sb.intune.calls()
    );

    env.write_runbook(
        "careful",
        &rb(
            "careful",
            "steps:\n  - id: preserve\n    uses: intune.snapshot_device\n    with: { device: C02DEMO0001 }\n  - id: retire\n    needs: [preserve]\n    uses: intune.retire\n    with: { device: C02DEMO0001 }\n",
        ),
    );
    let r = env.run(&["run", "careful", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        sb.intune.calls().iter().any(|c| c.contains("retire")),
        "{:?}",
        sb.intune.calls()
    );
}

/// Twenty-five laptops spread over the six device vendors: one run contains (EDR) or locks
/// (MDM) every one of them through role actions, fanned out in parallel.
#[test]
fn twenty_five_devices_across_six_vendors_are_contained_or_locked() {
    use cordon_connectors::sandbox::Sandbox;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(Sandbox::seeded().serve()).unwrap();
    let sb = server.sandbox.clone();
    let owner = "j.smith@example.com";
    let mut serials: Vec<String> = Vec::new();
    for (prefix, count) in [
        ("JAMF", 5),
        ("KNDJ", 4),
        ("FLEET", 4),
        ("CSTK", 4),
        ("MDE", 4),
        ("INTN", 4),
    ] {
        for i in 1..=count {
            let serial = format!("C02{prefix}{i:03}");
            match prefix {
                "JAMF" => sb.jamf.add_device(&serial, owner),
                "KNDJ" => sb.kandji.add_device(&serial, owner),
                "FLEET" => sb.fleet.add_device(&serial, owner),
                "CSTK" => sb.crowdstrike.add_device(&serial, owner),
                "MDE" => sb.defender.add_device(&serial, owner),
                _ => sb.intune.add_device(&serial, owner),
            }
            serials.push(serial);
        }
    }
    assert_eq!(serials.len(), 25);
    let env = Env::with_sandbox(&server.base_url());
    env.write_runbook(
        "quarantine",
        &rb(
            "quarantine",
            r#"inputs:
  serials: { type: array, items: { type: string }, required: true }
steps:
  - id: contain
    for_each: inputs.serials
    as: serial
    max_parallel: 25
    uses: device.contain
    with: { device: "{{ serial }}", allow_not_found: true }
  - id: lock
    for_each: inputs.serials
    as: serial
    max_parallel: 25
    uses: device.lock
    with: { device: "{{ serial }}", allow_not_found: true }
"#,
        ),
    );
    std::fs::write(
        env.path().join("alert.json"),
        serde_json::json!({ "serials": serials }).to_string(),
    )
    .unwrap();
    let r = env.run(&["run", "quarantine", "--alert", "alert.json", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let doc = r.json();
    let contain = step(&doc, "contain")["output"].as_array().unwrap().clone();
    let lock = step(&doc, "lock")["output"].as_array().unwrap().clone();
    for (i, serial) in serials.iter().enumerate() {
        let acted: Vec<String> = contain[i]["results"]
            .as_array()
            .unwrap()
            .iter()
            .chain(lock[i]["results"].as_array().unwrap())
            .filter(|r| r["status"] == "succeeded")
            .map(|r| r["connector"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(acted.len(), 1, "{serial}: acted on by {acted:?}");
    }
    assert_eq!(
        sb.crowdstrike.status_of("C02CSTK001").as_deref(),
        Some("contained")
    );
    assert_eq!(
        sb.fleet.device_status("C02FLEET004").as_deref(),
        Some("locked")
    );
    // Lock PINs are shown to admins (`--reveal`) and nowhere else.
    let run = r.run_id();
    let revealed = env
        .run(&["runs", "show", &run, "--json", "--reveal"])
        .stdout;
    let mut pins = Vec::new();
    let mut rest = revealed.as_str();
    while let Some(i) = rest.find("\"pin\": \"") {
        let tail = &rest[i + 8..];
        let pin: String = tail.chars().take_while(|c| c.is_ascii_digit()).collect();
        if pin.len() >= 4 {
            pins.push(pin);
        }
        rest = tail;
    }
    assert!(!pins.is_empty(), "the Jamf and Kandji locks produced PINs");
    let plain = env.run(&["runs", "show", &run, "--json"]).stdout;
    let audit = env
        .run(&["audit", "export", "--run", &run, "--format", "jsonl"])
        .stdout;
    for pin in &pins {
        assert!(
            !plain.contains(&format!("\"{pin}\"")),
            "PIN {pin} shown without --reveal"
        );
        assert!(
            !audit.contains(pin.as_str()),
            "PIN {pin} in the audit trail"
        );
    }
}

/// Ctrl-C on `cordon run` leaves the run durable and says how to continue it.
#[test]
fn ctrl_c_leaves_the_run_resumable() {
    let srv = TestServer::start();
    let env = Env::new("");
    env.write_runbook(
        "interrupted",
        &rb(
            "interrupted",
            &format!(
                "steps:\n  - id: slow\n    uses: http.request\n    with: {{ method: GET, url: \"{}/delay/1500/slow\" }}\n",
                srv.url()
            ),
        ),
    );
    let child = env.spawn(&["run", "interrupted"]);
    let t0 = Instant::now();
    while srv.hits("/slow").is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the step never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let run = stdout
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .unwrap()
        .trim()
        .to_string();
    assert!(stderr.contains(&format!("cordon resume {run}")), "{stderr}");
    let r = env.run(&["resume", &run, "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["status"], "succeeded");
}
