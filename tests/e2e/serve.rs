//! `cordon serve` end to end: the real binary on a free port, driven over HTTP.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::harness::{step, Env, TestServer};

const OLD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW_SECRET: &str = "a-plain-new-secret";

/// Tokens: name, value, role, groups.
pub(crate) const TOKENS: &[(&str, &str, &str, &str)] = &[
    ("vic", "tok-viewer", "viewer", ""),
    ("rita", "tok-responder", "responder", ""),
    ("dana", "tok-dana", "approver", "legal"),
    ("sam", "tok-sam", "approver", "legal"),
    ("fin", "tok-fin", "approver", "finance"),
    ("root", "tok-admin", "admin", ""),
];

pub(crate) fn token(name: &str) -> &'static str {
    TOKENS
        .iter()
        .find(|t| t.0 == name)
        .map(|t| t.1)
        .unwrap_or_else(|| panic!("no token {name}"))
}

pub(crate) fn tokens_yaml() -> String {
    let mut s = String::from("api:\n  tokens:\n");
    for (name, _, role, groups) in TOKENS {
        s.push_str(&format!(
            "    - {{ name: {name}, token: {{ env: TOKEN_{} }}, role: {role}, groups: [{groups}] }}\n",
            name.to_uppercase()
        ));
    }
    s
}

pub(crate) const GATE: &str = r#"version: 1
name: gate
inputs:
  alert_id: { type: string, required: true }
  subject_email: { type: string, required: true }
  confidence: { type: number, minimum: 0, maximum: 1, default: 0.5 }
steps:
  - id: look
    uses: core.noop
  - id: approve-suspend
    needs: [look]
    approval:
      approvers: [role:legal]
      message: "Suspend {{ inputs.subject_email }}?"
  - id: suspend
    needs: [approve-suspend]
    uses: core.noop
"#;

const QUORUM: &str = r#"version: 1
name: quorum
inputs:
  alert_id: { type: string, required: true }
  subject_email: { type: string, default: "" }
steps:
  - id: approve-both
    approval:
      approvers: [role:legal]
      min_approvals: 2
  - id: after
    needs: [approve-both]
    uses: core.noop
"#;

const PLAIN: &str = r#"version: 1
name: plain
inputs:
  alert_id: { type: string, required: true }
  subject_email: { type: string, default: "" }
steps:
  - id: only
    uses: core.noop
"#;

const TASK: &str = r#"version: 1
name: chore
inputs:
  alert_id: { type: string, required: true }
  subject_email: { type: string, default: "" }
steps:
  - id: hold-payments
    task:
      assignees: [role:legal]
      message: "Hold payments for {{ inputs.alert_id }}"
"#;

/// A scratch installation with the test runbooks, the API tokens and `extra` YAML.
pub(crate) fn env_with(extra: &str) -> Env {
    let mut env = Env::new(&format!("{}{extra}", tokens_yaml()));
    for (name, body) in [
        ("gate", GATE),
        ("quorum", QUORUM),
        ("plain", PLAIN),
        ("chore", TASK),
    ] {
        env.write_runbook(name, body);
    }
    for (name, value, _, _) in TOKENS {
        env.extra_env
            .push((format!("TOKEN_{}", name.to_uppercase()), value.to_string()));
    }
    env.extra_env
        .push(("SIEM_OLD".into(), OLD_SECRET.to_string()));
    env.extra_env
        .push(("SIEM_NEW".into(), NEW_SECRET.to_string()));
    env
}

/// A running `cordon serve`.
pub(crate) struct Serving {
    child: Option<Child>,
    pub(crate) base: String,
    log: Arc<Mutex<String>>,
    pub(crate) http: reqwest::blocking::Client,
}

pub(crate) fn serve(env: &Env) -> Serving {
    serve_with(env, &[])
}

pub(crate) fn serve_with(env: &Env, extra: &[&str]) -> Serving {
    serve_node(env, extra, &[])
}

/// `cordon serve` with extra arguments and environment variables (`CORDON_NODE_NAME`).
pub(crate) fn serve_node(env: &Env, extra: &[&str], vars: &[(&str, &str)]) -> Serving {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--drain-timeout", "20s"];
    args.extend_from_slice(extra);
    let mut cmd = env.command(&args);
    cmd.envs(vars.iter().copied());
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("CORDON_LOG", "info");
    let mut child = cmd.spawn().expect("spawn cordon serve");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    let addr = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!(
                "cordon serve did not start:\n{}",
                log.lock().unwrap().as_str()
            );
        }
    };
    Serving {
        child: Some(child),
        base: format!("http://{addr}"),
        log,
        http: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
    }
}

pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, String::from_utf8_lossy(&self.body))
    }
}

impl Serving {
    pub(crate) fn send(&self, req: reqwest::blocking::RequestBuilder) -> Answer {
        let resp = req.send().expect("request");
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.bytes().expect("body").to_vec(),
        }
    }

    pub(crate) fn get(&self, path: &str, tok: Option<&str>) -> Answer {
        let mut r = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = tok {
            r = r.bearer_auth(t);
        }
        self.send(r)
    }

    pub(crate) fn post(&self, path: &str, tok: Option<&str>, body: Value) -> Answer {
        let mut r = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = tok {
            r = r.bearer_auth(t);
        }
        self.send(r)
    }

    /// A raw webhook delivery.
    pub(crate) fn hook(&self, name: &str, headers: &[(&str, String)], body: &[u8]) -> Answer {
        let mut r = self
            .http
            .post(format!("{}/hooks/{name}", self.base))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        self.send(r)
    }

    pub(crate) fn run(&self, id: &str) -> Value {
        let a = self.get(&format!("/api/v1/runs/{id}"), Some(token("root")));
        assert_eq!(a.status, 200, "{a:?}");
        a.json()
    }

    /// Poll until the run has `status`.
    pub(crate) fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let doc = self.run(id);
            if doc["status"] == status {
                return doc;
            }
            if Instant::now() > deadline {
                panic!(
                    "run {id} is {} after 30 s, expected {status}: {doc:#}\n{}",
                    doc["status"],
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL, and reap the process.
    pub(crate) fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL cordon serve");
            c.wait().expect("reap cordon serve");
        }
    }

    /// SIGTERM, then the exit code.
    pub(crate) fn stop(mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("cordon serve did not stop after SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{ts}.{body}">` with a Standard Webhooks secret.
fn standard_sig(secret: &str, id: &str, ts: i64, body: &[u8]) -> String {
    let key = match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        None => secret.as_bytes().to_vec(),
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn standard_headers(id: &str, ts: i64, sig: String) -> Vec<(&'static str, String)> {
    vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", sig),
    ]
}

fn signed(secret: &str, id: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let ts = now();
    standard_headers(id, ts, standard_sig(secret, id, ts, body))
}

const SIEM_HOOK: &str = r#"webhooks:
  siem:
    runbook: gate
    secret: [{ env: SIEM_OLD }, { env: SIEM_NEW }]
    scheme: standard
    inputs:
      alert_id: "{{ payload.id }}"
      subject_email: "{{ payload.user.email }}"
      confidence: "{{ payload.score }}"
    dedup_key: "{{ payload.id }}"
"#;

#[test]
fn webhook_answers_every_case_in_the_contract() {
    let env = env_with(SIEM_HOOK);
    let s = serve(&env);
    let body = |id: &str| {
        serde_json::to_vec(
            &json!({"id": id, "user": {"email": "j.smith@example.com"}, "score": 0.9}),
        )
        .unwrap()
    };

    // 202 once the run is durably queued: it is there the moment the answer arrives.
    let b1 = body("A-1");
    let a = s.hook("siem", &signed(NEW_SECRET, "msg_1", &b1), &b1);
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(a.json()["deduplicated"], false);
    let r1 = a.json()["run_id"].as_str().unwrap().to_string();
    let doc = s.run(&r1);
    assert_eq!(doc["trigger"], "webhook:siem");
    assert_eq!(doc["started_by"], "webhook:siem");
    assert_eq!(doc["inputs"]["confidence"], 0.9, "kept its JSON type");
    assert_eq!(doc["inputs"]["alert_id"], "A-1");

    // Same webhook-id, even with another body: 200 with the first run.
    let b2 = body("A-2");
    let a = s.hook("siem", &signed(NEW_SECRET, "msg_1", &b2), &b2);
    assert_eq!(
        (a.status, a.json()["run_id"].as_str()),
        (200, Some(r1.as_str())),
        "{a:?}"
    );
    assert_eq!(a.json()["deduplicated"], true);
    // Same dedup key under a new webhook-id: 200 with the first run.
    let a = s.hook("siem", &signed(NEW_SECRET, "msg_2", &b1), &b1);
    assert_eq!(
        (a.status, a.json()["run_id"].as_str()),
        (200, Some(r1.as_str())),
        "{a:?}"
    );
    assert_eq!(a.json()["deduplicated"], true);

    // Rotation: two signatures, one by an unknown secret and one by the old secret.
    let b3 = body("A-3");
    let ts = now();
    let sig = format!(
        "{} {}",
        standard_sig("not-configured", "msg_3", ts, &b3),
        standard_sig(OLD_SECRET, "msg_3", ts, &b3)
    );
    let a = s.hook("siem", &standard_headers("msg_3", ts, sig), &b3);
    assert_eq!(a.status, 202, "{a:?}");
    let r3 = a.json()["run_id"].as_str().unwrap().to_string();
    assert_ne!(r3, r1);

    // 401: bad signature, missing signature, stale or future timestamp.
    let b4 = body("A-4");
    let a = s.hook("siem", &signed("not-configured", "msg_4", &b4), &b4);
    assert_eq!(a.status, 401, "{a:?}");
    let a = s.hook("siem", &[("webhook-id", "msg_4".to_string())], &b4);
    assert_eq!(a.status, 401, "{a:?}");
    assert!(
        a.json()["error"].as_str().unwrap().contains("webhook-"),
        "{a:?}"
    );
    for off in [-400, 400] {
        let ts = now() + off;
        let hd = standard_headers("msg_4", ts, standard_sig(NEW_SECRET, "msg_4", ts, &b4));
        let a = s.hook("siem", &hd, &b4);
        assert_eq!(a.status, 401, "{a:?}");
        assert!(
            a.json()["error"].as_str().unwrap().contains("5 minutes"),
            "{a:?}"
        );
    }
    // A signed body that is not JSON: 400.
    let junk = b"alert=A-5&user=j";
    let a = s.hook("siem", &signed(NEW_SECRET, "msg_5", junk), junk);
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.json()["error"].as_str().unwrap().contains("not JSON"));
    // A field the inputs need is missing: 422 naming it.
    let b6 = serde_json::to_vec(&json!({"id": "A-6", "score": 1})).unwrap();
    let a = s.hook("siem", &signed(NEW_SECRET, "msg_6", &b6), &b6);
    assert_eq!(a.status, 422, "{a:?}");
    let e = a.json()["error"].as_str().unwrap().to_string();
    assert!(
        e.contains("user.email") && e.contains("subject_email"),
        "{e}"
    );
    // Inputs that do not fit the runbook: 422 naming the input.
    let b7 =
        serde_json::to_vec(&json!({"id": "A-7", "user": {"email": "j@x.com"}, "score": "high"}))
            .unwrap();
    let a = s.hook("siem", &signed(NEW_SECRET, "msg_7", &b7), &b7);
    assert_eq!(a.status, 422, "{a:?}");
    assert!(
        a.json()["error"].as_str().unwrap().contains("confidence"),
        "{a:?}"
    );
    // Unknown hook: 404.
    let a = s.hook("nope", &signed(NEW_SECRET, "msg_8", &b1), &b1);
    assert_eq!(a.status, 404, "{a:?}");
    // Over 1 MiB: 413.
    let mut big = br#"{"id": "A-9", "pad": ""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 1024 * 1024));
    big.extend(br#""}"#);
    let a = s.hook("siem", &signed(NEW_SECRET, "msg_9", &big), &big);
    assert_eq!(a.status, 413, "{a:?}");

    s.wait_status(&r1, "waiting");
    s.wait_status(&r3, "waiting");
    // Exactly two runs exist; nothing refused left a trace.
    let list = s.get("/api/v1/runs", Some(token("vic"))).json();
    let mut ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![r1.as_str(), r3.as_str()];
    want.sort();
    assert_eq!(ids, want);

    // The metrics count what happened, by hook and reason.
    let m = s.get("/metrics", None);
    assert_eq!(m.status, 200);
    let text = String::from_utf8(m.body).unwrap();
    for line in [
        r#"cordon_webhook_accepted_total{hook="siem",deduplicated="false"} 2"#,
        r#"cordon_webhook_accepted_total{hook="siem",deduplicated="true"} 2"#,
        r#"cordon_webhook_rejected_total{hook="siem",reason="bad_signature"} 1"#,
        r#"cordon_webhook_rejected_total{hook="siem",reason="missing_signature"} 1"#,
        r#"cordon_webhook_rejected_total{hook="siem",reason="stale_timestamp"} 2"#,
        r#"cordon_webhook_rejected_total{hook="siem",reason="not_json"} 1"#,
        r#"cordon_webhook_rejected_total{hook="siem",reason="missing_field"} 1"#,
        r#"cordon_webhook_rejected_total{hook="siem",reason="invalid_input"} 1"#,
        r#"cordon_webhook_rejected_total{hook="siem",reason="too_large"} 1"#,
        r#"cordon_webhook_rejected_total{hook="(unknown)",reason="unknown_hook"} 1"#,
        r#"cordon_runs{state="waiting"} 2"#,
        "cordon_step_duration_seconds_count{connector=\"core\"}",
        "cordon_queue_depth 0",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    // Secrets never reach the log.
    let log = s.log();
    assert_eq!(s.stop(), 0);
    assert!(
        !log.contains("plain-new-secret") && !log.contains("MfKQ9r8GK"),
        "{log}"
    );
}

#[test]
fn github_and_token_schemes_okta_verification_and_rate_limit() {
    let env = {
        let mut e = env_with(
            r#"webhooks:
  gh:
    runbook: plain
    secret: { env: GH_SECRET }
    scheme: github
    inputs: { alert_id: "gh-{{ payload.alert.number }}" }
  okta:
    runbook: plain
    secret: { env: OKTA_HOOK_TOKEN }
    scheme: token
    okta_verification: true
    inputs: { alert_id: "{{ payload.eventId }}" }
    rate_limit: { per_second: 1, burst: 2 }
"#,
        );
        e.extra_env
            .push(("GH_SECRET".into(), "It's a Secret to Everybody".into()));
        e.extra_env
            .push(("OKTA_HOOK_TOKEN".into(), "okta-shared-token".into()));
        e
    };
    let s = serve(&env);
    let body = br#"{"alert": {"number": 17}}"#;
    let mut mac = Hmac::<Sha256>::new_from_slice(b"It's a Secret to Everybody").unwrap();
    mac.update(body);
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let hd = vec![
        ("x-hub-signature-256", sig.clone()),
        ("x-github-delivery", "d-1".to_string()),
    ];
    let a = s.hook("gh", &hd, body);
    assert_eq!(a.status, 202, "{a:?}");
    let first = a.json()["run_id"].clone();
    assert_eq!(
        s.wait_status(first.as_str().unwrap(), "succeeded")["inputs"]["alert_id"],
        "gh-17"
    );
    // GitHub redelivers with the same delivery id: deduplicated.
    let a = s.hook("gh", &hd, body);
    assert_eq!(
        (a.status, a.json()["run_id"].clone()),
        (200, first),
        "{a:?}"
    );
    let a = s.hook(
        "gh",
        &[("x-hub-signature-256", sig.replace('a', "b"))],
        body,
    );
    assert_eq!(a.status, 401, "{a:?}");

    // Okta's one-time verification: the challenge is echoed, with the token checked.
    let challenge = |tok: &str| {
        s.send(
            s.http
                .get(format!("{}/hooks/okta", s.base))
                .header("x-okta-verification-challenge", "chal-123")
                .bearer_auth(tok),
        )
    };
    let a = challenge("okta-shared-token");
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json(), json!({"verification": "chal-123"}));
    assert_eq!(challenge("wrong").status, 401);
    // A hook not configured for it does not answer.
    let a = s.send(
        s.http
            .get(format!("{}/hooks/gh", s.base))
            .header("x-okta-verification-challenge", "chal-123"),
    );
    assert_eq!(a.status, 404, "{a:?}");

    // Token scheme; a missing token is refused before the rate limit counts anything.
    let ev = |n: u32| serde_json::to_vec(&json!({"eventId": format!("ev-{n}")})).unwrap();
    assert_eq!(s.hook("okta", &[], &ev(0)).status, 401);
    let auth = vec![("authorization", "Bearer okta-shared-token".to_string())];
    assert_eq!(s.hook("okta", &auth, &ev(1)).status, 202);
    assert_eq!(s.hook("okta", &auth, &ev(2)).status, 202);
    let a = s.hook("okta", &auth, &ev(3));
    assert_eq!(a.status, 429, "{a:?}");
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(s.stop(), 0);
}

#[test]
fn fifty_concurrent_identical_deliveries_make_exactly_one_run() {
    let env = env_with(SIEM_HOOK);
    let s = Arc::new(serve(&env));
    let body = serde_json::to_vec(
        &json!({"id": "storm-1", "user": {"email": "j.smith@example.com"}, "score": 0.8}),
    )
    .unwrap();
    let hd = signed(NEW_SECRET, "msg_storm", &body);
    let barrier = Arc::new(Barrier::new(50));
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (s, body, hd, barrier) = (s.clone(), body.clone(), hd.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let a = s.hook("siem", &hd, &body);
                (a.status, a.json())
            })
        })
        .collect();
    let answers: Vec<(u16, Value)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let created: Vec<&Value> = answers
        .iter()
        .filter(|(st, _)| *st == 202)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    let id = created[0]["run_id"].clone();
    let dups = answers
        .iter()
        .filter(|(st, v)| *st == 200 && v["deduplicated"] == true && v["run_id"] == id)
        .count();
    assert_eq!(dups, 49, "{answers:?}");
    let runs = s.get("/api/v1/runs", Some(token("vic"))).json();
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs:#}");
}

/// What a role may do: allowed (2xx) or refused (403).
#[derive(Debug, Clone, Copy, PartialEq)]
enum May {
    Yes,
    No,
}

#[test]
fn api_authorisation_for_each_role() {
    let env = env_with("");
    let s = serve(&env);
    let start = |tok: &str, rb: &str| -> String {
        let a = s.post(
            "/api/v1/runs",
            Some(tok),
            json!({"runbook": rb, "inputs": {"alert_id": format!("a-{}", ulid_like()), "subject_email": "j@x.com"}}),
        );
        assert_eq!(a.status, 201, "{a:?}");
        a.json()["id"].as_str().unwrap().to_string()
    };
    let waiting = start(token("rita"), "gate");
    s.wait_status(&waiting, "waiting");
    let finished = start(token("rita"), "plain");
    s.wait_status(&finished, "succeeded");

    type Req = Box<dyn Fn(&str) -> (&'static str, String, Value)>;
    let get = |p: String| -> Req { Box::new(move |_| ("GET", p.clone(), Value::Null)) };
    let roles = ["vic", "rita", "dana", "root"]; // viewer, responder, approver, admin
    use May::*;
    let table: Vec<(&str, Req, [May; 4])> = vec![
        (
            "list runs",
            get("/api/v1/runs".into()),
            [Yes, Yes, Yes, Yes],
        ),
        (
            "show run",
            get(format!("/api/v1/runs/{waiting}")),
            [Yes, Yes, Yes, Yes],
        ),
        (
            "reveal secrets",
            get(format!("/api/v1/runs/{waiting}?reveal=true")),
            [No, No, No, Yes],
        ),
        (
            "run audit",
            get(format!("/api/v1/runs/{waiting}/audit")),
            [Yes, Yes, Yes, Yes],
        ),
        (
            "audit verify",
            get("/api/v1/audit/verify".into()),
            [Yes, Yes, Yes, Yes],
        ),
        (
            "run evidence",
            get(format!("/api/v1/runs/{waiting}/evidence")),
            [No, Yes, Yes, Yes],
        ),
        (
            "run drafts",
            get(format!("/api/v1/runs/{waiting}/drafts")),
            [No, Yes, Yes, Yes],
        ),
        (
            "runbooks",
            get("/api/v1/runbooks".into()),
            [Yes, Yes, Yes, Yes],
        ),
        (
            "connectors",
            get("/api/v1/connectors".into()),
            [Yes, Yes, Yes, Yes],
        ),
        (
            "start run",
            Box::new(|_| {
                (
                    "POST",
                    "/api/v1/runs".into(),
                    json!({"runbook": "plain", "inputs": {"alert_id": "t"}}),
                )
            }),
            [No, Yes, No, Yes],
        ),
        (
            "cancel",
            Box::new(|_| {
                (
                    "POST",
                    "/api/v1/runs/{fresh-gate}/cancel".into(),
                    Value::Null,
                )
            }),
            [No, Yes, No, Yes],
        ),
        (
            "undo",
            Box::new(|_| {
                (
                    "POST",
                    "/api/v1/runs/{fresh-plain}/undo".into(),
                    Value::Null,
                )
            }),
            [No, Yes, No, Yes],
        ),
        (
            "approve",
            Box::new(|_| {
                (
                    "POST",
                    "/api/v1/runs/{fresh-gate}/steps/approve-suspend/approve".into(),
                    json!({"comment": "ok"}),
                )
            }),
            [No, No, Yes, Yes],
        ),
        (
            "reject",
            Box::new(|_| {
                (
                    "POST",
                    "/api/v1/runs/{fresh-gate}/steps/approve-suspend/reject".into(),
                    json!({}),
                )
            }),
            [No, No, Yes, Yes],
        ),
        (
            "done",
            Box::new(|_| {
                (
                    "POST",
                    "/api/v1/runs/{fresh-chore}/steps/hold-payments/done".into(),
                    json!({"note": "held"}),
                )
            }),
            [No, No, Yes, Yes],
        ),
    ];
    for (what, req, expect) in &table {
        for (role, may) in roles.iter().zip(expect) {
            let (method, mut path, body) = req(role);
            // Mutations get a run of their own, started by the responder and settled.
            for (marker, rb, settled) in [
                ("{fresh-gate}", "gate", "waiting"),
                ("{fresh-plain}", "plain", "succeeded"),
                ("{fresh-chore}", "chore", "waiting"),
            ] {
                if path.contains(marker) {
                    let id = start(token("rita"), rb);
                    s.wait_status(&id, settled);
                    path = path.replace(marker, &id);
                }
            }
            let send = |tok: Option<&str>| match method {
                "GET" => s.get(&path, tok),
                _ => s.post(&path, tok, body.clone()),
            };
            // Without a token, or with an unknown one: 401 everywhere.
            if *role == "vic" {
                assert_eq!(send(None).status, 401, "{what} without a token");
                assert_eq!(
                    send(Some("tok-unknown")).status,
                    401,
                    "{what} with a bad token"
                );
            }
            let a = send(Some(token(role)));
            match may {
                Yes => assert!(
                    (200..300).contains(&a.status),
                    "{what} as {role}: expected success, got {a:?}"
                ),
                No => {
                    assert_eq!(a.status, 403, "{what} as {role}: {a:?}");
                    assert!(a.json()["error"].is_string());
                }
            }
        }
    }
    // The OpenAPI document needs no token; everything else under /api/v1 does.
    assert_eq!(s.get("/api/v1/openapi.json", None).status, 200);
    assert_eq!(s.get("/healthz", None).status, 200);
    assert_eq!(s.get("/readyz", None).status, 200);
    // Every change was audited under the token's name.
    let ev = s
        .get(&format!("/api/v1/runs/{waiting}/audit"), Some(token("vic")))
        .json();
    assert_eq!(ev[0]["action"], "run.created");
    assert_eq!(ev[0]["actor"], "api:rita");
    for k in [
        "seq",
        "at",
        "run_id",
        "actor",
        "action",
        "details",
        "prev_hash",
        "hash",
    ] {
        assert!(ev[0].get(k).is_some(), "{k} in {:#}", ev[0]);
    }
    let reveal = s
        .get(&format!("/api/v1/runs/{waiting}/audit"), Some(token("vic")))
        .json();
    assert!(reveal
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "secrets.revealed" && e["actor"] == "api:root"));
    let v = s.get("/api/v1/audit/verify", Some(token("vic"))).json();
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        v["events"].as_u64().unwrap() > 10 && v["first_bad"].is_null(),
        "{v}"
    );
}

fn ulid_like() -> String {
    format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[test]
fn approvals_over_http_enforce_groups_self_approval_and_quorum() {
    let env = env_with("");
    let s = serve(&env);
    let start = |tok: &str, rb: &str| -> String {
        let a = s.post(
            "/api/v1/runs",
            Some(tok),
            json!({"runbook": rb, "inputs": {"alert_id": format!("q-{}", ulid_like()), "subject_email": "j@x.com"}}),
        );
        assert_eq!(a.status, 201, "{a:?}");
        a.json()["id"].as_str().unwrap().to_string()
    };
    let approve = |tok: &str, run: &str, step: &str| {
        s.post(
            &format!("/api/v1/runs/{run}/steps/{step}/approve"),
            Some(tok),
            json!({"comment": "evidence is clear"}),
        )
    };

    // The starter alone may not approve, even as an admin; a group mismatch is refused.
    let r = start(token("root"), "gate");
    s.wait_status(&r, "waiting");
    let a = approve(token("root"), &r, "approve-suspend");
    assert_eq!(a.status, 403, "{a:?}");
    assert!(
        a.json()["error"]
            .as_str()
            .unwrap()
            .contains("started this run"),
        "{a:?}"
    );
    let a = approve(token("fin"), &r, "approve-suspend");
    assert_eq!(a.status, 403, "{a:?}");
    assert!(
        a.json()["error"].as_str().unwrap().contains("role:legal"),
        "{a:?}"
    );
    // An approver of the group decides; the run continues in the background.
    let a = approve(token("dana"), &r, "approve-suspend");
    assert_eq!(a.status, 200, "{a:?}");
    let doc = s.wait_status(&r, "succeeded");
    assert_eq!(
        step(&doc, "approve-suspend")["output"]["approvers"],
        json!(["api:dana"])
    );
    assert_eq!(step(&doc, "suspend")["status"], "succeeded");
    // Deciding again: the step is no longer waiting.
    assert_eq!(approve(token("sam"), &r, "approve-suspend").status, 409);

    // Quorum: two distinct approvers of the group.
    let q = start(token("rita"), "quorum");
    s.wait_status(&q, "waiting");
    assert_eq!(approve(token("dana"), &q, "approve-both").status, 200);
    std::thread::sleep(Duration::from_millis(800));
    let doc = s.run(&q);
    assert_eq!(doc["status"], "waiting", "{doc:#}");
    let a = approve(token("dana"), &q, "approve-both");
    assert_eq!(a.status, 409, "the same approver twice: {a:?}");
    assert_eq!(approve(token("sam"), &q, "approve-both").status, 200);
    let doc = s.wait_status(&q, "succeeded");
    assert_eq!(
        step(&doc, "approve-both")["output"]["approvers"],
        json!(["api:dana", "api:sam"])
    );

    // A rejection fails the run, with the comment.
    let x = start(token("rita"), "gate");
    s.wait_status(&x, "waiting");
    let a = s.post(
        &format!("/api/v1/runs/{x}/steps/approve-suspend/reject"),
        Some(token("sam")),
        json!({"comment": "false positive"}),
    );
    assert_eq!(a.status, 200, "{a:?}");
    let doc = s.wait_status(&x, "failed");
    assert!(
        doc["error"].as_str().unwrap().contains("false positive"),
        "{doc:#}"
    );

    // A task, marked done.
    let t = start(token("rita"), "chore");
    s.wait_status(&t, "waiting");
    let a = s.post(
        &format!("/api/v1/runs/{t}/steps/hold-payments/done"),
        Some(token("dana")),
        json!({"note": "held"}),
    );
    assert_eq!(a.status, 200, "{a:?}");
    s.wait_status(&t, "succeeded");

    // Cancel a waiting run; then it is finished and cannot be cancelled again.
    let c = start(token("rita"), "gate");
    s.wait_status(&c, "waiting");
    let a = s.post(
        &format!("/api/v1/runs/{c}/cancel"),
        Some(token("rita")),
        json!({}),
    );
    assert_eq!(a.status, 200, "{a:?}");
    s.wait_status(&c, "cancelled");
    let a = s.post(
        &format!("/api/v1/runs/{c}/cancel"),
        Some(token("rita")),
        json!({}),
    );
    assert_eq!(a.status, 409, "{a:?}");
    // Undo a finished run: 201 with the undo run, which then executes.
    let a = s.post(
        &format!("/api/v1/runs/{r}/undo"),
        Some(token("rita")),
        json!({}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.json()["undo_of"], r.as_str());
    let u = a.json()["id"].as_str().unwrap().to_string();
    s.wait_status(&u, "succeeded");
    // An active run cannot be undone.
    let w = start(token("rita"), "gate");
    s.wait_status(&w, "waiting");
    let a = s.post(
        &format!("/api/v1/runs/{w}/undo"),
        Some(token("rita")),
        json!({}),
    );
    assert_eq!(a.status, 422, "{a:?}");
    assert!(
        a.json()["error"].as_str().unwrap().contains("waiting"),
        "{a:?}"
    );

    // Unknown run and step.
    assert_eq!(approve(token("dana"), "01NOSUCHRUN", "x").status, 404);
    assert_eq!(approve(token("dana"), &x, "no-such-step").status, 404);
    // Decisions are audit events under the token's name.
    let ev = s
        .get(&format!("/api/v1/runs/{q}/audit"), Some(token("vic")))
        .json();
    let deciders: Vec<&str> = ev
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "approval.decided")
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(deciders, vec!["api:dana", "api:sam"]);
    assert_eq!(s.stop(), 0);
}

#[test]
fn a_run_waiting_across_a_restart_is_approved_over_http_and_finishes() {
    let env = env_with(SIEM_HOOK);
    let s = serve(&env);
    let body = serde_json::to_vec(
        &json!({"id": "R-1", "user": {"email": "j.smith@example.com"}, "score": 0.9}),
    )
    .unwrap();
    let a = s.hook("siem", &signed(OLD_SECRET, "msg_r1", &body), &body);
    assert_eq!(a.status, 202, "{a:?}");
    let id = a.json()["run_id"].as_str().unwrap().to_string();
    s.wait_status(&id, "waiting");
    assert_eq!(s.stop(), 0);

    let s = serve(&env);
    assert_eq!(s.run(&id)["status"], "waiting");
    // The delivery is still remembered after the restart.
    let a = s.hook("siem", &signed(OLD_SECRET, "msg_r1", &body), &body);
    assert_eq!(
        (a.status, a.json()["run_id"].as_str()),
        (200, Some(id.as_str()))
    );
    let a = s.post(
        &format!("/api/v1/runs/{id}/steps/approve-suspend/approve"),
        Some(token("dana")),
        json!({}),
    );
    assert_eq!(a.status, 200, "{a:?}");
    let doc = s.wait_status(&id, "succeeded");
    assert_eq!(step(&doc, "suspend")["status"], "succeeded");
    assert_eq!(s.stop(), 0);
}

#[test]
fn sigterm_drains_steps_in_flight_exits_zero_and_the_next_start_resumes() {
    let srv = TestServer::start();
    let env = env_with("");
    env.write_runbook(
        "slow",
        &format!(
            r#"version: 1
name: slow
inputs:
  alert_id: {{ type: string, required: true }}
steps:
  - id: slow
    uses: http.request
    with: {{ method: POST, url: "{u}/delay/1500/slow" }}
  - id: after
    needs: [slow]
    uses: http.request
    with: {{ method: POST, url: "{u}/ok/after" }}
"#,
            u = srv.url()
        ),
    );
    let s = serve(&env);
    let a = s.post(
        "/api/v1/runs",
        Some(token("rita")),
        json!({"runbook": "slow", "inputs": {"alert_id": "d-1"}}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.json()["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while srv.hits("/delay/1500/slow").is_empty() {
        assert!(Instant::now() < deadline, "the slow call never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopping = Instant::now();
    assert_eq!(s.stop(), 0);
    // It waited for the call in flight, and started nothing after it.
    let slow = &srv.hits("/delay/1500/slow")[0];
    assert!(
        slow.end <= Instant::now() && slow.end > stopping,
        "stopped before the call ended"
    );
    assert!(srv.hits("/ok/after").is_empty());
    let doc = env.show(&id);
    assert_eq!(doc["status"], "running", "{doc:#}");
    assert_eq!(step(&doc, "slow")["status"], "succeeded");
    assert_eq!(step(&doc, "after")["status"], "pending");

    // The next start resumes it without repeating the finished call.
    let s = serve(&env);
    s.wait_status(&id, "succeeded");
    assert_eq!(srv.hits("/delay/1500/slow").len(), 1);
    assert_eq!(srv.hits("/ok/after").len(), 1);
    assert_eq!(s.stop(), 0);
}

#[test]
fn evidence_is_listed_and_downloaded_byte_for_byte_with_an_audit_event() {
    let srv = TestServer::start();
    let env = env_with("");
    env.write_runbook(
        "snap",
        &format!(
            r#"version: 1
name: snap
inputs:
  alert_id: {{ type: string, required: true }}
steps:
  - id: logs
    uses: http.snapshot
    with: {{ method: GET, url: "{u}/ndjson/25/logs" }}
"#,
            u = srv.url()
        ),
    );
    let s = serve(&env);
    let a = s.post(
        "/api/v1/runs",
        Some(token("rita")),
        json!({"runbook": "snap", "inputs": {"alert_id": "e-1"}}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.json()["id"].as_str().unwrap().to_string();
    s.wait_status(&id, "succeeded");
    let list = s
        .get(&format!("/api/v1/runs/{id}/evidence"), Some(token("dana")))
        .json();
    let rec = &list[0];
    let eid = rec["evidence_id"].as_str().unwrap();
    assert_eq!(
        s.get(&format!("/api/v1/evidence/{eid}"), Some(token("vic")))
            .status,
        403
    );
    let got = s.get(&format!("/api/v1/evidence/{eid}"), Some(token("dana")));
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(
        hex::encode(Sha256::digest(&got.body)),
        rec["sha256"].as_str().unwrap()
    );
    assert_eq!(got.body.len() as u64, rec["bytes"].as_u64().unwrap());
    assert_eq!(
        got.headers["x-content-sha256"],
        rec["sha256"].as_str().unwrap()
    );
    assert_eq!(
        s.get("/api/v1/evidence/nope", Some(token("dana"))).status,
        404
    );
    let ev = s
        .get(&format!("/api/v1/runs/{id}/audit"), Some(token("vic")))
        .json();
    assert!(
        ev.as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "evidence.downloaded"
                && e["actor"] == "api:dana"
                && e["details"]["sha256"] == rec["sha256"]),
        "{ev:#}"
    );
    assert_eq!(s.stop(), 0);
}

#[test]
fn drafts_are_listed_and_read_by_responders_not_viewers() {
    let env = env_with("");
    env.write_runbook(
        "brief",
        r#"version: 1
name: brief
inputs:
  alert_id: { type: string, required: true }
  subject_email: { type: string, required: true }
steps:
  - id: brief
    uses: notify.draft
    with: { template: executive-brief, to: "CISO" }
"#,
    );
    let s = serve(&env);
    let a = s.post(
        "/api/v1/runs",
        Some(token("rita")),
        json!({"runbook": "brief", "inputs": {"alert_id": "d-1", "subject_email": "j.smith@example.com"}}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.json()["id"].as_str().unwrap().to_string();
    s.wait_status(&id, "succeeded");
    assert_eq!(
        s.get(&format!("/api/v1/runs/{id}/drafts"), Some(token("vic")))
            .status,
        403
    );
    let list = s
        .get(&format!("/api/v1/runs/{id}/drafts"), Some(token("dana")))
        .json();
    let d = &list[0];
    assert_eq!(d["template"], "executive-brief", "{list:#}");
    assert_eq!(d["to"], "CISO");
    for k in ["draft_id", "subject", "created_at"] {
        assert!(d[k].is_string(), "{k}: {d:#}");
    }
    let did = d["draft_id"].as_str().unwrap();
    assert_eq!(
        s.get(&format!("/api/v1/drafts/{did}"), Some(token("vic")))
            .status,
        403
    );
    let full = s.get(&format!("/api/v1/drafts/{did}"), Some(token("rita")));
    assert_eq!(full.status, 200, "{full:?}");
    let full = full.json();
    assert!(full["body_markdown"]
        .as_str()
        .unwrap()
        .starts_with("**DRAFT — PRIVILEGED"));
    assert!(full["body_text"]
        .as_str()
        .unwrap()
        .starts_with("DRAFT — PRIVILEGED"));
    assert_eq!(
        s.get("/api/v1/drafts/nope", Some(token("dana"))).status,
        404
    );
    assert_eq!(s.stop(), 0);
}

#[test]
fn the_openapi_document_parses_and_lists_every_path() {
    let env = env_with("");
    let s = serve_with(&env, &["--log-format", "json"]);
    let a = s.get("/api/v1/openapi.json", None);
    assert_eq!(a.status, 200);
    let doc = a.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/runs",
        "/api/v1/runs/{id}",
        "/api/v1/runs/{id}/cancel",
        "/api/v1/runs/{id}/undo",
        "/api/v1/runs/{id}/steps/{step}/approve",
        "/api/v1/runs/{id}/steps/{step}/reject",
        "/api/v1/runs/{id}/steps/{step}/done",
        "/api/v1/runs/{id}/audit",
        "/api/v1/audit/verify",
        "/api/v1/runs/{id}/evidence",
        "/api/v1/evidence/{id}",
        "/api/v1/runs/{id}/drafts",
        "/api/v1/drafts/{id}",
        "/api/v1/runbooks",
        "/api/v1/connectors",
        "/api/v1/openapi.json",
        "/hooks/{name}",
        "/healthz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} missing from {:?}", paths.keys());
    }
    assert!(paths["/api/v1/runs"]["post"].is_object());
    assert!(paths["/api/v1/runs"]["get"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // Unknown paths answer in the same JSON shape.
    let a = s.get("/api/v1/nothing-here", Some(token("vic")));
    assert_eq!(a.status, 404);
    assert!(a.json()["error"].is_string());
    assert!(a.headers.contains_key("x-request-id"));
    // Structured logs: one JSON object per line, request ids in the span.
    let rid = a.headers["x-request-id"].to_str().unwrap().to_string();
    // The request's log line may be written (and read from the pipe) just after the answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.log().contains(&rid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = s.log();
    assert_eq!(s.stop(), 0);
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["request_id"] == rid.as_str()),
        "{log}"
    );
}

#[test]
fn sample_payloads_of_common_alert_sources_map_to_the_default_inputs() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/webhooks");
    // The mappings the README documents.
    let env = {
        let mut e = env_with(
            r#"webhooks:
  splunk:
    runbook: intake
    scheme: token
    secret: { env: HOOK_TOKEN }
    inputs:
      alert_id: "{{ payload.sid }}"
      subject_email: "{{ payload.result.user }}"
    dedup_key: "{{ payload.sid }}"
  sentinel:
    runbook: intake
    scheme: token
    secret: { env: HOOK_TOKEN }
    inputs:
      alert_id: "{{ payload.name }}"
      subject_email: "{{ payload.properties.relatedEntities.[0].properties.accountName }}@{{ payload.properties.relatedEntities.[0].properties.upnSuffix }}"
    dedup_key: "{{ payload.name }}"
  elastic:
    runbook: intake
    scheme: token
    secret: { env: HOOK_TOKEN }
    inputs:
      alert_id: "{{ payload.alert.uuid }}"
      subject_email: "{{ payload.user.email }}"
      device_serials: ["{{ payload.host.serial }}"]
    dedup_key: "{{ payload.alert.uuid }}"
  crowdstrike:
    runbook: intake
    scheme: token
    secret: { env: HOOK_TOKEN }
    inputs:
      alert_id: "{{ payload.data.detection.id }}"
      subject_email: "{{ payload.data.detection.user_name }}"
      device_serials: ["{{ payload.data.device.serial_number }}"]
    dedup_key: "{{ payload.data.detection.id }}"
"#,
        );
        e.extra_env.push(("HOOK_TOKEN".into(), "hook-token".into()));
        e
    };
    env.write_runbook(
        "intake",
        r#"version: 1
name: intake
inputs:
  alert_id: { type: string, required: true }
  subject_email: { type: string, format: email, required: true }
  device_serials: { type: array, items: { type: string }, default: [] }
steps:
  - id: noted
    uses: core.noop
"#,
    );
    let s = serve(&env);
    let auth = vec![("authorization", "Bearer hook-token".to_string())];
    for (hook, alert, serials) in [
        (
            "splunk",
            "scheduler__admin__search__RMD5a1b2c3d4e5f6a7b8_at_1764115200_1234",
            json!([]),
        ),
        (
            "sentinel",
            "7d2c4b0e-5a61-4f0a-9d5e-1b2a3c4d5e6f",
            json!([]),
        ),
        (
            "elastic",
            "3a5b7c9d-1e2f-4a6b-8c0d-2e4f6a8b0c1d",
            json!(["C02XK1JHJG5J"]),
        ),
        (
            "crowdstrike",
            "ldt:4f3c1a2b9e8d7c6b5a4f3e2d1c0b9a8f:42",
            json!(["C02XK1JHJG5J"]),
        ),
    ] {
        let body = std::fs::read(format!("{fixtures}/{hook}.json")).unwrap();
        let a = s.hook(hook, &auth, &body);
        assert_eq!(a.status, 202, "{hook}: {a:?}");
        let id = a.json()["run_id"].as_str().unwrap().to_string();
        let doc = s.wait_status(&id, "succeeded");
        assert_eq!(doc["inputs"]["alert_id"], alert, "{hook}");
        assert_eq!(
            doc["inputs"]["subject_email"], "j.smith@example.com",
            "{hook}"
        );
        assert_eq!(doc["inputs"]["device_serials"], serials, "{hook}");
        // A repeat of the same alert is the same run.
        let a = s.hook(hook, &auth, &body);
        assert_eq!(
            (a.status, a.json()["run_id"].as_str()),
            (200, Some(id.as_str())),
            "{hook}"
        );
    }
    assert_eq!(s.stop(), 0);
}

#[test]
fn bad_serve_configuration_is_refused_naming_every_problem() {
    let env = env_with(
        r#"webhooks:
  siem:
    runbook: no-such-runbook
    secret: { env: SIEM_OLD }
  inline:
    runbook: gate
    secret: "abc"
"#,
    );
    let r = env.run(&["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("webhooks.siem.runbook"), "{r:?}");
    assert!(r.stderr.contains("no-such-runbook"), "{r:?}");
    assert!(r.stderr.contains("webhooks.inline.secret"), "{r:?}");
    assert!(!r.stderr.contains("abc"), "{r:?}");
}

#[test]
fn the_service_decides_an_approval_that_timed_out_without_anyone_looking() {
    let env = env_with("");
    env.write_runbook(
        "expires",
        r#"version: 1
name: expires
inputs:
  alert_id: { type: string, required: true }
steps:
  - id: approve-fast
    approval: { approvers: [role:legal], timeout: 1s, on_timeout: reject }
  - id: act
    needs: [approve-fast]
    uses: core.noop
"#,
    );
    let s = serve(&env);
    let a = s.post(
        "/api/v1/runs",
        Some(token("rita")),
        json!({"runbook": "expires", "inputs": {"alert_id": "t-1"}}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.json()["id"].as_str().unwrap().to_string();
    // Reading the run does not decide it; the service's sweep does, within seconds.
    let doc = s.wait_status(&id, "failed");
    assert_eq!(step(&doc, "approve-fast")["status"], "failed");
    assert_eq!(step(&doc, "act")["status"], "cancelled", "{doc:#}");
    let ev = s
        .get(&format!("/api/v1/runs/{id}/audit"), Some(token("vic")))
        .json();
    assert!(ev
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "approval.decided" && e["actor"] == "system:timeout"));
    assert_eq!(s.stop(), 0);
}
