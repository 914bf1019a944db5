//! Pieces the fault tests share: `cordon serve` nodes that can be killed and stopped, the
//! audit trail of a run, and the test server's requests grouped by idempotency key.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Env, Seen};

/// The API token every fault test configures (role admin).
pub const ADMIN_TOKEN: &str = "fault-admin-token";

/// Configuration lines for the admin token (its value from `FAULT_ADMIN_TOKEN`).
pub fn admin_yaml() -> &'static str {
    "api:\n  tokens:\n    - { name: root, token: { env: FAULT_ADMIN_TOKEN }, role: admin }\n"
}

/// A running `cordon serve`.
pub struct Node {
    pub name: String,
    child: Option<Child>,
    pub base: String,
    log: Arc<Mutex<String>>,
    pub http: reqwest::blocking::Client,
}

impl Node {
    /// Start `cordon serve` on a free port with `vars` added to its environment.
    pub fn start(env: &Env, name: &str, vars: &[(&str, String)]) -> Node {
        let mut cmd = env.command(&["serve", "--listen", "127.0.0.1:0", "--drain-timeout", "5s"]);
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("CORDON_LOG", "info")
            .env("FAULT_ADMIN_TOKEN", ADMIN_TOKEN);
        for (k, v) in vars {
            cmd.env(k, v);
        }
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
                let _ = child.wait();
                panic!(
                    "cordon serve ({name}) did not start:\n{}",
                    log.lock().unwrap().as_str()
                );
            }
        };
        Node {
            name: name.to_string(),
            child: Some(child),
            base: format!("http://{addr}"),
            log,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child process, which has not been reaped yet.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// How the process ended, if it did (None: still running).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL, and reap the process (so that its lease owner id reads as dead).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let st = c.wait().expect("wait");
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                st.signal(),
                Some(libc::SIGKILL),
                "{} exited by itself: {st:?}",
                self.name
            );
        }
    }

    /// SIGTERM (drain), then the exit code.
    pub fn stop(mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        // SAFETY: a signal to our own child process.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGCONT);
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not stop after SIGTERM:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `GET /api/v1{path}` as admin: status and JSON body.
    pub fn api(&self, path: &str) -> Result<(u16, Value), String> {
        let resp = self
            .http
            .get(format!("{}/api/v1{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.bytes().map_err(|e| e.to_string())?;
        let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, v))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The run's audit events (`cordon audit export --run RUN`).
pub fn audit_events(env: &Env, run: &str) -> Vec<Value> {
    let r = env.run(&["audit", "export", "--run", run, "--format", "jsonl"]);
    assert_eq!(r.code, 0, "audit export of {run}: {r:?}");
    r.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A run's audit events, read through `node`'s API, after checking that each of `steps` has
/// exactly one `step.succeeded` event.
pub fn events_with_each_step_succeeded_once(
    node: &Node,
    run: &str,
    steps: &[&str],
    ctx: &str,
) -> Vec<Value> {
    let (st, events) = node
        .api(&format!("/runs/{run}/audit"))
        .unwrap_or_else(|e| panic!("{ctx}: audit of {run}: {e}"));
    assert_eq!(st, 200, "{ctx}: audit of {run}: {events}");
    let events = events.as_array().cloned().unwrap_or_default();
    let ok = succeeded_events(&events);
    for step in steps {
        assert_eq!(
            ok.get(*step).copied().unwrap_or(0),
            1,
            "{ctx}: run {run}: step.succeeded events of {step}: {ok:?}"
        );
    }
    events
}

/// How many `step.succeeded` events each step has among `events`.
pub fn succeeded_events(events: &[Value]) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for e in events.iter().filter(|e| e["action"] == "step.succeeded") {
        let step = e["details"]["step"].as_str().unwrap_or("?").to_string();
        *n.entry(step).or_default() += 1;
    }
    n
}

/// `cordon audit verify` exits 0.
pub fn assert_audit_verifies(env: &Env, context: &str) {
    let v = env.run(&["audit", "verify"]);
    assert_eq!(
        v.code, 0,
        "{context}: the audit chain does not verify: {v:?}"
    );
}

/// The server's requests that carried an idempotency key, by key.
pub fn by_key(seen: &[Seen]) -> BTreeMap<String, Vec<Seen>> {
    let mut m: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    for s in seen {
        if let Some(k) = s.headers.get("idempotency-key") {
            m.entry(k.clone()).or_default().push(s.clone());
        }
    }
    m
}

/// The test server's log for one key, for failure messages.
pub fn show_requests(reqs: &[Seen], t0: Instant) -> String {
    reqs.iter()
        .map(|s| {
            format!(
                "  {} {} at +{} ms (node {})",
                s.method,
                s.path,
                s.start.saturating_duration_since(t0).as_millis(),
                s.headers.get("x-node").map(String::as_str).unwrap_or("-")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Poll `f` until it gives Some, or panic with `what` after `within`.
pub fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
