//! PostgreSQL restarted and crashed under load, on a private instance the test starts
//! itself (`initdb` in a temporary folder, a free port of its own; never the machine's
//! shared server). Two `cordon serve` nodes take a stream of webhook deliveries, alternately,
//! from a sender that retries each until it is acknowledged (202, or 200 for a repeat).
//! In the middle PostgreSQL is restarted (`pg_ctl restart -m fast`), and later crashed
//! (`pg_ctl stop -m immediate`) and kept down for a few seconds before it starts again.
//!
//! Then: the nodes were never restarted and went on by themselves; while the database was
//! down, `/readyz` answered 503 and deliveries 503, each within a bound (no request hangs
//! for the pool's whole patience); every acknowledged delivery's run succeeded within a
//! bound; one run per delivery; each step succeeded once in the store; the vendor saw a key
//! again only when an outage lay between its two requests (a step in flight when the
//! database went away, its outcome unrecorded); the audit chain verifies.
//!
//! Without `initdb` the test says SKIPPED loudly (CI=true fails instead). As root (initdb
//! refuses root) the instance runs as the `postgres` user. The instance is stopped and its
//! folder removed when the test ends, failed or not ([`PrivatePostgres`]'s `Drop`).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{
    admin_yaml, assert_audit_verifies, by_key, events_with_each_step_succeeded_once, show_requests,
    wait_for, Node,
};
use crate::harness::{Env, TestServer};
use crate::postgres_schema::loud_skip;

/// How long after PostgreSQL answers again a node may still see the outage (see the check
/// of repeated keys).
const RECOVERY_GRACE: Duration = Duration::from_secs(2);
const TEST: &str = "PostgreSQL restart and crash under webhook load";
const HOOK_TOKEN: &str = "pg-restart-hook-token";
const DELIVERIES: usize = 100;
const STEPS: [&str; 4] = ["s1", "s2", "s3", "s4"];
/// Any answer to a delivery, the database up or down, comes within this.
const ANSWER_BOUND: Duration = Duration::from_secs(8);
/// `/readyz` answers within this, the database up or down.
const READY_BOUND: Duration = Duration::from_secs(6);
/// How long PostgreSQL stays down after the crash.
const DOWN_FOR: Duration = Duration::from_secs(3);
/// Every acknowledged run has finished this long after the last acknowledgement.
const FINISH_BOUND: Duration = Duration::from_secs(30);

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
    with: {{ method: POST, url: "{base}/delay/100/r/{{{{ inputs.alert_id }}}}/s1" }}
  - id: s2
    needs: [s1]
    uses: http.request
    with: {{ method: POST, url: "{base}/delay/200/r/{{{{ inputs.alert_id }}}}/s2" }}
  - id: s3
    needs: [s1]
    uses: http.request
    with: {{ method: POST, url: "{base}/delay/50/r/{{{{ inputs.alert_id }}}}/s3" }}
  - id: s4
    needs: [s2, s3]
    uses: http.request
    with: {{ method: POST, url: "{base}/delay/100/r/{{{{ inputs.alert_id }}}}/s4" }}
"#
    )
}

/// A PostgreSQL server of the test's own, in a temporary folder.
struct PrivatePostgres {
    /// The folder holding `initdb`, `pg_ctl`, `postgres`.
    bin: PathBuf,
    /// Data directory, socket directory and server log; removed after `Drop::drop`.
    dir: tempfile::TempDir,
    port: u16,
    /// The user and group the server runs as when the test runs as root.
    owner: Option<(u32, u32)>,
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb` (Debian's layout), else a
/// folder on `PATH` with `initdb` and `pg_ctl`.
fn find_bin() -> Option<PathBuf> {
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Ok(version) = name
                .split('.')
                .map(str::parse::<u32>)
                .collect::<Result<Vec<u32>, _>>()
            else {
                continue;
            };
            let bin = e.path().join("bin");
            if bin.join("initdb").is_file()
                && bin.join("pg_ctl").is_file()
                && best.as_ref().is_none_or(|(v, _)| version > *v)
            {
                best = Some((version, bin));
            }
        }
    }
    if let Some((_, bin)) = best {
        return Some(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

/// `initdb` refuses to run as root: then the server runs as the `postgres` user.
fn unprivileged_owner() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: a valid C string; the returned record is read at once, before any other
    // getpw* call in this process could overwrite it.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(
            "the test runs as root, which initdb refuses, and there is no `postgres` user to run it as"
                .into(),
        );
    }
    // SAFETY: checked non-null above.
    Ok(Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) }))
}

fn free_port() -> u16 {
    // The port is handed to another program, which binds it itself; a clash (someone took
    // it in between) is retried with another port in `PrivatePostgres::start`.
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl PrivatePostgres {
    /// initdb and start, or None after a loud SKIPPED line (a failure under CI=true).
    fn start(test: &str) -> Option<PrivatePostgres> {
        let skip = |why: &str| -> Option<PrivatePostgres> {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: {why}; CI does not skip this test"
            );
            loud_skip(test, why);
            None
        };
        let Some(bin) = find_bin() else {
            return skip(
                "no initdb (looked in /usr/lib/postgresql/*/bin and on PATH): install the PostgreSQL server package",
            );
        };
        let owner = match unprivileged_owner() {
            Ok(o) => o,
            Err(why) => return skip(&why),
        };
        let dir = tempfile::Builder::new()
            .prefix("cordon-pg-restart-")
            .tempdir()
            .expect("a temporary folder");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("hand the temporary folder to the postgres user");
        }
        let mut pg = PrivatePostgres {
            bin,
            dir,
            port: 0,
            owner,
        };
        let data = pg.data();
        let init = pg
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            init.status.success(),
            "{test}: initdb failed: {}",
            show(&init)
        );
        for attempt in 1..=3 {
            pg.port = free_port();
            let out = pg.launch();
            if out.status.success() {
                return Some(pg);
            }
            let log = pg.log();
            if attempt < 3 && log.contains("could not bind") {
                continue; // someone took the port in between: another one
            }
            panic!(
                "{test}: the private PostgreSQL did not start: {}\n{log}",
                show(&out)
            );
        }
        unreachable!("the loop returns or panics")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        c
    }

    /// `pg_ctl -D DATA -l LOG -w -t 30 ARGS…`.
    fn ctl(&self, args: &[&str]) -> Output {
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "30"])
            .args(args)
            .output()
            .expect("run pg_ctl")
    }

    /// `pg_ctl start` on this instance's port and socket folder, TCP on loopback only.
    fn launch(&self) -> Output {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        self.ctl(&["-o", &opts, "start"])
    }

    /// `pg_ctl ARGS…`, which must succeed; how long it took.
    fn must(&self, args: &[&str]) -> Duration {
        let t = Instant::now();
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}\n{}",
            show(&out),
            self.log()
        );
        t.elapsed()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Whatever state the test left it in; the folder goes when `dir` is dropped next.
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One answer the sender got.
#[derive(Debug, Clone)]
struct Attempt {
    delivery: String,
    node: usize,
    start: Instant,
    took: Duration,
    /// The HTTP status, or why there was none.
    answer: Result<u16, String>,
}

/// Send every delivery, alternately to the two nodes, retrying each (on the same node)
/// until it is acknowledged.
fn send_all(
    bases: [String; 2],
    acks: Arc<Mutex<BTreeMap<String, String>>>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
) {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    for i in 0..DELIVERIES {
        let id = format!("p{i:03}");
        let node = i % 2;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "delivery {id} was not acknowledged within 60 s"
            );
            let start = Instant::now();
            let answer = http
                .post(format!("{}/hooks/alerts", bases[node]))
                .bearer_auth(HOOK_TOKEN)
                .json(&json!({"id": id}))
                .send()
                .and_then(|r| {
                    let st = r.status().as_u16();
                    r.json::<Value>().map(|v| (st, v))
                });
            let took = start.elapsed();
            let status = answer
                .as_ref()
                .map(|(st, _)| *st)
                .map_err(|e| e.to_string());
            attempts.lock().unwrap().push(Attempt {
                delivery: id.clone(),
                node,
                start,
                took,
                answer: status,
            });
            match answer {
                Ok((202 | 200, v)) if v["run_id"].is_string() => {
                    let run = v["run_id"].as_str().unwrap_or("").to_string();
                    acks.lock().unwrap().insert(id.clone(), run);
                    break;
                }
                Ok((st, v)) if st < 500 => panic!("delivery {id}: unexpected answer {st}: {v}"),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// `GET /readyz`: status (or the error) and how long the answer took.
fn readiness(node: &Node) -> (Result<u16, String>, Duration) {
    let t = Instant::now();
    let r = node
        .http
        .get(format!("{}/readyz", node.base))
        .send()
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string());
    (r, t.elapsed())
}

/// With the database down: `/readyz` 503 within its bound, `/healthz` 200.
fn not_ready(node: &Node, ctx: &str) {
    let (ready, took) = readiness(node);
    eprintln!(
        "{ctx} {} /readyz with the database down: {ready:?} in {} ms",
        node.name,
        took.as_millis()
    );
    assert_eq!(
        ready,
        Ok(503),
        "{ctx}: {} /readyz with the database down",
        node.name
    );
    assert!(
        took <= READY_BOUND,
        "{ctx}: {} /readyz took {took:?} with the database down",
        node.name
    );
    let health = node
        .http
        .get(format!("{}/healthz", node.base))
        .send()
        .map(|r| r.status().as_u16());
    assert_eq!(health.ok(), Some(200), "{ctx}: {} /healthz", node.name);
}

/// With the database down: a delivery is refused with 503 within its bound.
fn refuses_deliveries(node: &Node, ctx: &str) {
    let t = Instant::now();
    let probe = node
        .http
        .post(format!("{}/hooks/alerts", node.base))
        .bearer_auth(HOOK_TOKEN)
        .json(&json!({"id": format!("down-probe-{}", node.name)}))
        .send()
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string());
    let took = t.elapsed();
    eprintln!(
        "{ctx} {} delivery with the database down: {probe:?} in {} ms",
        node.name,
        took.as_millis()
    );
    assert_eq!(
        probe,
        Ok(503),
        "{ctx}: {} delivery with the database down",
        node.name
    );
    assert!(
        took <= ANSWER_BOUND,
        "{ctx}: {} took {took:?} to refuse a delivery with the database down",
        node.name
    );
}

#[test]
fn postgres_restarted_and_crashed_under_load_loses_and_repeats_nothing() {
    let Some(pg) = PrivatePostgres::start(TEST) else {
        return;
    };
    let srv = TestServer::start();
    let t0 = Instant::now();
    let mut env = Env::new(&format!(
        "{}cluster: {{ lease_ttl: 3s, sweep: 500ms }}\nwebhooks:\n  alerts:\n    runbook: intake\n    scheme: token\n    secret: {{ env: PG_RESTART_HOOK_TOKEN }}\n    inputs: {{ alert_id: \"{{{{ payload.id }}}}\" }}\n    dedup_key: \"{{{{ payload.id }}}}\"\n",
        admin_yaml()
    ));
    env.extra_env
        .push(("PG_RESTART_HOOK_TOKEN".into(), HOOK_TOKEN.into()));
    env.extra_env.push(("CORDON_DATABASE_URL".into(), pg.url()));
    env.write_runbook("intake", &runbook(&srv.url()));
    let ctx = "[private postgres restart]";

    let mut a = Node::start(&env, "node A", &[("CORDON_NODE_NAME", "node-a".into())]);
    let mut b = Node::start(&env, "node B", &[("CORDON_NODE_NAME", "node-b".into())]);
    let pids = (a.pid(), b.pid());
    let acks: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let sender = {
        let bases = [a.base.clone(), b.base.clone()];
        let acks = acks.clone();
        let attempts = attempts.clone();
        std::thread::spawn(move || send_all(bases, acks, attempts))
    };
    let acked = || acks.lock().unwrap().len();
    // Each outage: from the moment the database starts going away to the moment it is up.
    let mut outages: Vec<(Instant, Instant)> = Vec::new();

    // 1. A fast restart (clients disconnected, shutdown checkpoint, start) mid-stream.
    wait_for(
        Duration::from_secs(60),
        "25 acknowledged deliveries",
        || (acked() >= 25).then_some(()),
    );
    let down = Instant::now();
    let took = pg.must(&["-m", "fast", "restart"]);
    outages.push((down, Instant::now()));
    eprintln!(
        "{ctx} pg_ctl restart -m fast at {} acknowledged deliveries took {} ms",
        acked(),
        took.as_millis()
    );

    // 2. A crash (SIGQUIT to every server process, no checkpoint), down for a while.
    wait_for(
        Duration::from_secs(60),
        "60 acknowledged deliveries",
        || (acked() >= 60).then_some(()),
    );
    let down = Instant::now();
    pg.must(&["-m", "immediate", "stop"]);
    eprintln!(
        "{ctx} PostgreSQL crashed (pg_ctl stop -m immediate) at {} acknowledged deliveries",
        acked()
    );
    // While it is down: the processes live, are not ready, and refuse deliveries quickly
    // (both nodes checked at once, so the outage lasts about one answer's bound).
    std::thread::scope(|sc| {
        for node in [&a, &b] {
            sc.spawn(move || not_ready(node, ctx));
            sc.spawn(move || refuses_deliveries(node, ctx));
        }
    });
    if let Some(rest) = DOWN_FOR.checked_sub(down.elapsed()) {
        std::thread::sleep(rest);
    }
    let out = pg.launch();
    assert!(
        out.status.success(),
        "{ctx}: PostgreSQL did not start again: {}\n{}",
        show(&out),
        pg.log()
    );
    let up = Instant::now();
    outages.push((down, up));
    for node in [&a, &b] {
        wait_for(
            Duration::from_secs(10),
            &format!("{} ready again", node.name),
            || (readiness(node).0 == Ok(200)).then_some(()),
        );
        eprintln!(
            "{ctx} {} ready {} ms after PostgreSQL was up (down {} ms)",
            node.name,
            up.elapsed().as_millis(),
            (up - down).as_millis()
        );
    }

    if let Err(e) = sender.join() {
        std::panic::resume_unwind(e);
    }
    let last_ack = Instant::now();
    let acks = acks.lock().unwrap().clone();
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(acks.len(), DELIVERIES, "{ctx}");

    // The sender's view: every answer in bound; every refusal a 503 (never a 500, never a
    // dropped connection), and only while the database was away.
    let slowest = attempts.iter().map(|a| a.took).max().unwrap_or_default();
    let refused: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| !matches!(a.answer, Ok(200 | 202)))
        .collect();
    for at in &attempts {
        assert!(
            at.took <= ANSWER_BOUND,
            "{ctx}: delivery {} to node {} took {:?}: {:?}",
            at.delivery,
            at.node,
            at.took,
            at.answer
        );
    }
    for at in &refused {
        assert_eq!(
            at.answer,
            Ok(503),
            "{ctx}: delivery {} to node {} at +{} ms",
            at.delivery,
            at.node,
            at.start.saturating_duration_since(t0).as_millis()
        );
        let end = at.start + at.took;
        assert!(
            outages
                .iter()
                .any(|(d, u)| at.start <= *u + Duration::from_secs(2) && end >= *d),
            "{ctx}: delivery {} refused with the database up",
            at.delivery
        );
    }
    eprintln!(
        "{ctx} {} deliveries, {} attempts, {} answered 503 during the outages; slowest answer {} ms",
        DELIVERIES,
        attempts.len(),
        refused.len(),
        slowest.as_millis()
    );

    // Every acknowledged run finishes, successfully, within the bound.
    let runs: BTreeSet<String> = acks.values().cloned().collect();
    assert_eq!(runs.len(), DELIVERIES, "{ctx}: two deliveries share a run");
    let mut open = runs.clone();
    while !open.is_empty() {
        for run in open.clone() {
            match a.api(&format!("/runs/{run}")) {
                Ok((200, doc)) => match doc["status"].as_str() {
                    Some("succeeded") => {
                        open.remove(&run);
                    }
                    Some("failed" | "cancelled") => panic!("{ctx}: run {run}: {doc:#}"),
                    _ => {}
                },
                Ok((404, _)) => panic!("{ctx}: acknowledged run {run} was lost"),
                Ok((st, v)) => panic!("{ctx}: GET run {run}: {st} {v}"),
                Err(e) => panic!("{ctx}: GET run {run}: {e}"),
            }
        }
        if last_ack.elapsed() > FINISH_BOUND {
            panic!(
                "{ctx}: {} runs unfinished {FINISH_BOUND:?} after the last acknowledgement, e.g. {:?}\nnode A:\n{}\nnode B:\n{}",
                open.len(),
                open.iter().take(5).collect::<Vec<_>>(),
                a.log(),
                b.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "{ctx} all {} runs succeeded {} ms after the last acknowledgement ({:.1} s after the start)",
        runs.len(),
        last_ack.elapsed().as_millis(),
        t0.elapsed().as_secs_f64()
    );

    // The vendor's view: each key once, again only across an outage.
    let seen = srv.seen();
    let keys = by_key(&seen);
    let mut repeated = 0;
    for run in &runs {
        for step in STEPS {
            let key = format!("{run}/{step}/0");
            let reqs = keys.get(&key).cloned().unwrap_or_default();
            assert!(
                !reqs.is_empty() && reqs.len() <= 1 + outages.len(),
                "{ctx}: key {key} seen {} times:\n{}",
                reqs.len(),
                show_requests(&reqs, t0)
            );
            for pair in reqs.windows(2) {
                // The first request may also fall just after the outage as the test saw it
                // end: a node's first commits then can still fail on a connection the crash
                // broke, or find that a lease lapsed during the outage was taken over, and
                // the call's outcome is unknown to the store.
                let across = outages
                    .iter()
                    .any(|(d, u)| pair[0].start <= *u + RECOVERY_GRACE && pair[1].start >= *d);
                assert!(
                    across,
                    "{ctx}: key {key} repeated with no outage between its requests (outages at {:?} ms):\n{}",
                    outages
                        .iter()
                        .map(|(d, u)| (
                            d.saturating_duration_since(t0).as_millis(),
                            u.saturating_duration_since(t0).as_millis()
                        ))
                        .collect::<Vec<_>>(),
                    show_requests(&reqs, t0)
                );
            }
            if reqs.len() > 1 {
                repeated += 1;
            }
        }
    }
    assert_eq!(keys.len(), DELIVERIES * STEPS.len(), "{ctx}: keys seen");
    eprintln!(
        "{ctx} vendor requests: {} for {} keys; {repeated} keys repeated across an outage",
        keys.values().map(Vec::len).sum::<usize>(),
        keys.len()
    );

    // The store: each step succeeded once, each run was created once.
    for run in &runs {
        let events = events_with_each_step_succeeded_once(&b, run, &STEPS, ctx);
        let created = events
            .iter()
            .filter(|e| e["action"] == "run.created")
            .count();
        assert_eq!(created, 1, "{ctx}: run {run}: run.created events");
    }
    for node in [&a, &b] {
        let (st, verdict) = node.api("/audit/verify").expect("audit verify");
        assert_eq!(
            (st, &verdict["ok"]),
            (200, &json!(true)),
            "{ctx}: {}: {verdict}",
            node.name
        );
    }

    // The same two processes all along: nobody restarted cordon.
    assert_eq!(a.exited(), None, "{ctx}: node A exited:\n{}", a.log());
    assert_eq!(b.exited(), None, "{ctx}: node B exited:\n{}", b.log());
    assert_eq!((a.pid(), b.pid()), pids);
    assert_eq!(a.stop(), 0, "{ctx}: node A's exit");
    assert_eq!(b.stop(), 0, "{ctx}: node B's exit");

    // Nothing else was started (the probes refused with the database down made no run).
    let list = env.run(&["runs", "list", "--json", "--limit", "100000"]);
    assert_eq!(list.code, 0, "{ctx}: {list:?}");
    let listed = list.json();
    let n = listed
        .as_array()
        .or_else(|| listed["runs"].as_array())
        .map(Vec::len)
        .unwrap_or(0);
    assert_eq!(n, DELIVERIES, "{ctx}: runs in the store");
    assert_audit_verifies(&env, ctx);
    eprintln!("{ctx} done in {:.1} s", t0.elapsed().as_secs_f64());
}
