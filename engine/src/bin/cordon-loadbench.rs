//! Load benchmarks against the real `cordon serve` binary (the one built beside this one),
//! each on a fresh SQLite database in a temporary folder:
//!
//! - `--mode accept` (the default): one webhook (`scheme: token`) starts a runbook of
//!   `--steps` `core.noop` steps; `--rate` deliveries per second for `--seconds`. Reports the
//!   acceptance latency (a 202 means the run is durably committed) and how fast the accepted
//!   runs finished.
//! - `--mode http4`: the webhook starts a runbook of four `http.request` POST calls to a
//!   local HTTP stub (an in-process server on its own thread), webhook → 4 calls → done.
//!   Reports runs finished per second (overall, and the slowest and median second of the
//!   steady part) and the end-to-end latency from each delivery's due time to its run's
//!   `finished_at`.
//! - `--mode recovery`: the same runbook with a stub that answers after `--call-ms`; once
//!   `--runs` deliveries are accepted, serve is killed with SIGKILL while runs are in flight
//!   and started again on the same database. Reports the time to listen, to the first
//!   resumed call, and until every accepted run finished; and how many calls were repeated.
//! - `--mode waiting` (or `--waiting N`): N deliveries start runs that wait for an approval;
//!   once all N wait, reports serve's peak and current resident memory (`VmHWM`, `VmRSS`
//!   from `/proc/PID/status`).
//!
//! Deliveries are sent open loop: each is due at a fixed time and its latency counts from
//! that time, so a slow server cannot hide its queue by slowing the sender down. Each has
//! its own `webhook-id`, over a pool of keep-alive connections.

mod support;
use support::{arg, pct};

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

const TOKEN: &str = "bench-hook-token";
const API_TOKEN: &str = "bench-api-token";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `cordon` binary built beside this one.
fn cordon_binary() -> Result<std::path::PathBuf> {
    let me = std::env::current_exe().context("cannot find this binary")?;
    let bin = me.with_file_name("cordon");
    if !bin.exists() {
        bail!(
            "{} not found: build it first (`cargo build --release`)",
            bin.display()
        );
    }
    Ok(bin)
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    /// SIGKILL, and reap.
    fn kill(mut self) -> Result<()> {
        self.child.kill().context("cannot kill cordon serve")?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write `runbooks/bench.yaml` and `config.yaml` (one token webhook `bench` starting it
/// with `alert_id` from the payload's `id`, plus `extra` configuration).
fn write_setup(dir: &Path, runbook: &str, extra: &str) -> Result<()> {
    std::fs::create_dir_all(dir.join("runbooks"))?;
    std::fs::write(dir.join("runbooks/bench.yaml"), runbook)?;
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "database: sqlite://bench.db\nevidence: {{ dir: evidence }}\nrunbooks: runbooks\n\
             webhooks:\n  bench:\n    runbook: bench\n    scheme: token\n    secret: {{ env: BENCH_HOOK_TOKEN }}\n    inputs: {{ alert_id: \"{{{{ payload.id }}}}\" }}\n\
             api:\n  tokens:\n    - {{ name: bench, token: {{ env: BENCH_API_TOKEN }}, role: viewer }}\n{extra}"
        ),
    )?;
    Ok(())
}

fn noop_runbook(steps: u64) -> String {
    let mut runbook = String::from(
        "version: 1\nname: bench\ninputs:\n  alert_id: { type: string, required: true }\nsteps:\n",
    );
    for i in 0..steps {
        let needs = if i == 0 {
            String::new()
        } else {
            format!("\n    needs: [s{}]", i - 1)
        };
        runbook.push_str(&format!(
            "  - id: s{i}{needs}\n    uses: core.noop\n    with: {{ alert: \"{{{{ inputs.alert_id }}}}\" }}\n"
        ));
    }
    runbook
}

/// Four chained POSTs to the stub instance `stub`.
fn http4_runbook() -> String {
    let mut runbook = String::from(
        "version: 1\nname: bench\ninputs:\n  alert_id: { type: string, required: true }\nsteps:\n",
    );
    for i in 0..4 {
        let needs = if i == 0 {
            String::new()
        } else {
            format!("\n    needs: [call{}]", i - 1)
        };
        runbook.push_str(&format!(
            "  - id: call{i}{needs}\n    uses: http.request\n    connector: stub\n    \
             with: {{ method: POST, url: \"/call/{i}\", json: {{ alert: \"{{{{ inputs.alert_id }}}}\" }} }}\n"
        ));
    }
    runbook
}

fn waiting_runbook() -> String {
    String::from(
        "version: 1\nname: bench\ninputs:\n  alert_id: { type: string, required: true }\nsteps:\n\
         \x20 - id: triage\n    uses: core.noop\n    with: { alert: \"{{ inputs.alert_id }}\" }\n\
         \x20 - id: approve\n    needs: [triage]\n    approval: { approvers: [role:legal], message: \"Contain {{ inputs.alert_id }}?\" }\n\
         \x20 - id: act\n    needs: [approve]\n    uses: core.noop\n    with: { alert: \"{{ inputs.alert_id }}\" }\n",
    )
}

fn start_server(dir: &Path, workers: u64) -> Result<Server> {
    let mut child = Command::new(cordon_binary()?)
        .args([
            "--config",
            "config.yaml",
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--max-concurrent-runs", &workers.to_string()])
        .current_dir(dir)
        .env("BENCH_HOOK_TOKEN", TOKEN)
        .env("BENCH_API_TOKEN", API_TOKEN)
        .env("CORDON_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start cordon serve")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.trim().to_string());
            } else if line.contains("ERROR") {
                eprintln!("server: {line}");
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .context("cordon serve did not start within 60 s")?;
    Ok(Server {
        child,
        base: format!("http://{addr}"),
    })
}

/// Runs in `state`, from the server's own metrics (`cordon_runs{state="…"}`).
async fn runs_in(client: &reqwest::Client, base: &str, state: &str) -> Result<u64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let label = format!("state=\"{state}\"");
    Ok(text
        .lines()
        .find(|l| l.starts_with("cordon_runs{") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

/// Poll until `want` runs are in `state` (or `limit` passes); the count seen last.
async fn wait_for(
    client: &reqwest::Client,
    base: &str,
    state: &str,
    want: u64,
    limit: Duration,
) -> Result<u64> {
    let deadline = Instant::now() + limit;
    loop {
        let n = runs_in(client, base, state).await?;
        if n >= want || Instant::now() >= deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The HTTP stub
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct StubLog {
    calls: AtomicU64,
    /// Arrival of every call, with its idempotency key.
    arrivals: Mutex<Vec<(Instant, String)>>,
}

/// Start the stub on its own thread and runtime; its base URL.
fn start_stub(delay: Duration, log: Arc<StubLog>) -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("http-stub".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return eprintln!("stub runtime: {e}"),
            };
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/call/{n}",
                    axum::routing::post(move |headers: axum::http::HeaderMap| {
                        let log = log.clone();
                        async move {
                            let key = headers
                                .get("idempotency-key")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            log.calls.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut a) = log.arrivals.lock() {
                                a.push((Instant::now(), key));
                            }
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            axum::Json(json!({"ok": true}))
                        }
                    }),
                );
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        if let Err(e) = axum::serve(l, app).await {
                            eprintln!("stub: {e}");
                        }
                    }
                    Err(e) => eprintln!("stub listener: {e}"),
                }
            });
        })?;
    Ok(format!("http://{addr}"))
}

fn stub_config(base: &str) -> String {
    format!("connectors:\n  stub:\n    type: http\n    base_url: \"{base}\"\n    timeout: 30s\n")
}

// ---------------------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------------------

struct Delivery {
    /// When it was due, on the wall clock (compared with the runs' `finished_at`).
    due: DateTime<Utc>,
    latency: Duration,
    status: u16,
    run_id: Option<String>,
}

/// Send `total` deliveries at `rate` per second, open loop; numbered from `first`.
async fn send(
    client: &reqwest::Client,
    base: &str,
    rate: u64,
    total: u64,
    first: u64,
) -> Result<Vec<Delivery>> {
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let url = Arc::new(format!("{base}/hooks/bench"));
    let started = Instant::now();
    let started_wall = Utc::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let offset = interval.mul_f64(i as f64);
        let due = started + offset;
        tokio::time::sleep_until(due.into()).await;
        let client = client.clone();
        let url = url.clone();
        let n = first + i;
        tasks.push(tokio::spawn(async move {
            let answer = client
                .post(url.as_str())
                .bearer_auth(TOKEN)
                .header("webhook-id", format!("bench-{n}"))
                .json(&json!({"id": format!("alert-{n}")}))
                .send()
                .await;
            let (status, run_id) = match answer {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    let id = body["run_id"].as_str().map(str::to_owned);
                    (status, id)
                }
                Err(_) => (0, None),
            };
            (due.elapsed(), status, run_id)
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.into_iter().enumerate() {
        let (latency, status, run_id) = t.await?;
        let offset = chrono::TimeDelta::from_std(interval.mul_f64(i as f64))?;
        out.push(Delivery {
            due: started_wall + offset,
            latency,
            status,
            run_id,
        });
    }
    Ok(out)
}

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .timeout(Duration::from_secs(60))
        .build()?)
}

fn quantiles(sorted: &[Duration]) -> Value {
    let [p50, p90, p99] = [0.50, 0.90, 0.99].map(|q| ms(pct(sorted, q)));
    json!({"p50": p50, "p90": p90, "p99": p99,
           "max": ms(sorted.last().copied().unwrap_or_default())})
}

fn by_status(deliveries: &[Delivery]) -> serde_json::Map<String, Value> {
    let mut m: std::collections::BTreeMap<u16, u64> = Default::default();
    for d in deliveries {
        *m.entry(d.status).or_default() += 1;
    }
    m.into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect()
}

/// `finished_at` and status of every run, read from the database after the load.
async fn finished_runs(dir: &Path) -> Result<HashMap<String, (String, Option<DateTime<Utc>>)>> {
    let url = format!("sqlite://{}?mode=ro", dir.join("bench.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await?;
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT id, status, finished_at FROM runs")
            .fetch_all(&pool)
            .await?;
    pool.close().await;
    Ok(rows
        .into_iter()
        .map(|(id, status, fin)| {
            let fin = fin
                .and_then(|f| DateTime::parse_from_rfc3339(&f).ok())
                .map(|f| f.with_timezone(&Utc));
            (id, (status, fin))
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// Modes
// ---------------------------------------------------------------------------------------

async fn accept_mode() -> Result<()> {
    let rate = arg("--rate", 500).max(1);
    let seconds = arg("--seconds", 20).max(1);
    let steps = arg("--steps", 2).max(1);
    let workers = arg("--max-concurrent-runs", 16).max(1);
    let dir = tempfile::tempdir()?;
    write_setup(dir.path(), &noop_runbook(steps), "")?;
    let server = start_server(dir.path(), workers)?;
    let base = server.base.clone();
    eprintln!(
        "cordon serve at {base}; {rate} deliveries/s for {seconds} s, runbook of {steps} durable steps, {workers} runs executing at once"
    );
    let client = client()?;
    let started = Instant::now();
    let deliveries = send(&client, &base, rate, rate * seconds, 0).await?;
    let sent_in = started.elapsed();
    let mut latencies: Vec<Duration> = deliveries.iter().map(|d| d.latency).collect();
    latencies.sort();
    let accepted = deliveries.iter().filter(|d| d.status == 202).count() as u64;
    let done = wait_for(
        &client,
        &base,
        "succeeded",
        accepted,
        Duration::from_secs(600),
    )
    .await?;
    let finished_in = started.elapsed();
    let report = json!({
        "mode": "accept",
        "deliveries": deliveries.len(),
        "rate_per_second": rate,
        "answers": by_status(&deliveries),
        "acceptance_latency_ms": quantiles(&latencies),
        "sent_in_seconds": sent_in.as_secs_f64(),
        "runs_succeeded": done,
        "runs_per_second": done as f64 / finished_in.as_secs_f64(),
        "all_runs_finished_in_seconds": finished_in.as_secs_f64(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!(
        "accepted {accepted}/{}; latency p50 {:.2} ms p99 {:.2} ms; {done} runs succeeded in {:.1} s ({:.0} runs/s)",
        deliveries.len(),
        ms(pct(&latencies, 0.5)),
        ms(pct(&latencies, 0.99)),
        finished_in.as_secs_f64(),
        done as f64 / finished_in.as_secs_f64()
    );
    if done < accepted {
        bail!("only {done} of {accepted} accepted runs finished within 10 minutes");
    }
    Ok(())
}

async fn http4_mode() -> Result<()> {
    let rate = arg("--rate", 1000).max(1);
    let seconds = arg("--seconds", 60).max(1);
    let workers = arg("--max-concurrent-runs", 64).max(1);
    let log = Arc::new(StubLog::default());
    let stub = start_stub(Duration::from_millis(arg("--call-ms", 0)), log.clone())?;
    let dir = tempfile::tempdir()?;
    write_setup(dir.path(), &http4_runbook(), &stub_config(&stub))?;
    let server = start_server(dir.path(), workers)?;
    let base = server.base.clone();
    eprintln!(
        "cordon serve at {base}, stub at {stub}; {rate} deliveries/s for {seconds} s; webhook -> 4 http.request -> done; {workers} runs executing at once"
    );
    let client = client()?;
    let started_wall = Utc::now();
    let started = Instant::now();
    let deliveries = send(&client, &base, rate, rate * seconds, 0).await?;
    let sent_in = started.elapsed();
    let accepted = deliveries.iter().filter(|d| d.status == 202).count() as u64;
    let done = wait_for(
        &client,
        &base,
        "succeeded",
        accepted,
        Duration::from_secs(600),
    )
    .await?;
    let waited = started.elapsed();
    let rss = memory(server.pid()).unwrap_or_default();
    drop(server);

    let runs = finished_runs(dir.path()).await?;
    let mut e2e = Vec::new();
    let mut last = started_wall;
    let mut per_second = vec![0u64; (seconds as usize) + 1];
    for d in &deliveries {
        let Some((status, Some(fin))) = d.run_id.as_ref().and_then(|id| runs.get(id)) else {
            continue;
        };
        if status != "succeeded" {
            continue;
        }
        last = last.max(*fin);
        e2e.push((*fin - d.due).to_std().unwrap_or_default());
        let s = (*fin - started_wall).num_milliseconds().max(0) as usize / 1000;
        if let Some(slot) = per_second.get_mut(s) {
            *slot += 1;
        }
    }
    e2e.sort();
    let mut acceptance: Vec<Duration> = deliveries.iter().map(|d| d.latency).collect();
    acceptance.sort();
    // The steady part: past the first five seconds, before the sending stops.
    let mut steady: Vec<u64> = per_second
        .get(5.min(per_second.len())..(seconds as usize).saturating_sub(1).max(5))
        .unwrap_or_default()
        .to_vec();
    steady.sort();
    let overall = e2e.len() as f64 / ((last - started_wall).num_milliseconds().max(1) as f64 / 1e3);
    let report = json!({
        "mode": "http4",
        "deliveries": deliveries.len(),
        "rate_per_second": rate,
        "answers": by_status(&deliveries),
        "acceptance_latency_ms": quantiles(&acceptance),
        "sent_in_seconds": sent_in.as_secs_f64(),
        "runs_succeeded": done,
        "stub_calls": log.calls.load(Ordering::Relaxed),
        "runs_per_second_overall": overall,
        "runs_finished_per_second_steady": {
            "min": steady.first(), "median": steady.get(steady.len() / 2),
            "max": steady.last(),
        },
        "end_to_end_latency_ms": quantiles(&e2e),
        "all_runs_finished_in_seconds": waited.as_secs_f64(),
        "serve_memory_kib": rss,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!(
        "http4: accepted {accepted}/{}; {} runs succeeded; {:.0} runs/s overall (steady seconds: min {} median {}); end-to-end p50 {:.1} ms p99 {:.1} ms",
        deliveries.len(),
        e2e.len(),
        overall,
        steady.first().copied().unwrap_or_default(),
        steady.get(steady.len() / 2).copied().unwrap_or_default(),
        ms(pct(&e2e, 0.5)),
        ms(pct(&e2e, 0.99)),
    );
    if done < accepted {
        bail!("only {done} of {accepted} accepted runs finished within 10 minutes");
    }
    Ok(())
}

async fn recovery_mode() -> Result<()> {
    let runs = arg("--runs", 1000).max(1);
    let rate = arg("--rate", 500).max(1);
    let call = Duration::from_millis(arg("--call-ms", 200));
    let workers = arg("--max-concurrent-runs", 256).max(1);
    let log = Arc::new(StubLog::default());
    let stub = start_stub(call, log.clone())?;
    let dir = tempfile::tempdir()?;
    write_setup(dir.path(), &http4_runbook(), &stub_config(&stub))?;
    let server = start_server(dir.path(), workers)?;
    let base = server.base.clone();
    eprintln!(
        "cordon serve at {base}; {runs} deliveries at {rate}/s of webhook -> 4 http.request (stub answers after {} ms); SIGKILL once all are accepted",
        call.as_millis()
    );
    let client = client()?;
    let deliveries = send(&client, &base, rate, runs, 0).await?;
    let accepted = deliveries.iter().filter(|d| d.status == 202).count() as u64;
    let before_kill = runs_in(&client, &base, "succeeded").await?;
    let calls_before = log.calls.load(Ordering::Relaxed);
    server.kill()?;
    let killed = Instant::now();
    eprintln!("killed serve with {before_kill} of {accepted} runs finished; restarting");

    let restarted = Instant::now();
    let server = start_server(dir.path(), workers)?;
    let listening = restarted.elapsed();
    let base = server.base.clone();
    let done = wait_for(
        &client,
        &base,
        "succeeded",
        accepted,
        Duration::from_secs(600),
    )
    .await?;
    let all_done = restarted.elapsed();
    let arrivals = log.arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    let first_resumed = arrivals
        .iter()
        .filter(|(t, _)| *t >= restarted)
        .map(|(t, _)| *t - restarted)
        .min();
    // Calls whose idempotency key was seen before: repeated after the crash, same key.
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for (_, k) in &arrivals {
        *seen.entry(k.as_str()).or_default() += 1;
    }
    let repeated: u64 = seen.values().map(|n| n - 1).sum();
    let report = json!({
        "mode": "recovery",
        "runs_accepted": accepted,
        "runs_finished_before_kill": before_kill,
        "calls_before_kill": calls_before,
        "kill_to_restart_ms": ms(restarted - killed),
        "restart_to_listening_ms": ms(listening),
        "restart_to_first_resumed_call_ms": first_resumed.map(ms),
        "restart_to_all_runs_finished_ms": ms(all_done),
        "runs_succeeded": done,
        "calls_total": arrivals.len(),
        "calls_repeated_with_the_same_idempotency_key": repeated,
        "calls_with_distinct_keys": seen.len(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!(
        "recovery: {before_kill}/{accepted} runs done at the kill; listening after {:.0} ms, first resumed call after {:.0} ms, all {done} runs finished {:.0} ms after the restart; {repeated} calls repeated (same idempotency key)",
        ms(listening),
        first_resumed.map(ms).unwrap_or(f64::NAN),
        ms(all_done)
    );
    if done < accepted {
        bail!("only {done} of {accepted} accepted runs finished after the restart");
    }
    if seen.len() as u64 != accepted * 4 {
        bail!(
            "{} distinct calls for {accepted} runs of 4 calls",
            seen.len()
        );
    }
    Ok(())
}

/// `VmHWM` and `VmRSS` of a process, in KiB.
fn memory(pid: u32) -> Result<Value> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Ok(json!({"VmHWM": field("VmHWM:"), "VmRSS": field("VmRSS:")}))
}

async fn waiting_mode(n: u64) -> Result<()> {
    let rate = arg("--rate", 500).max(1);
    let workers = arg("--max-concurrent-runs", 16).max(1);
    let dir = tempfile::tempdir()?;
    write_setup(dir.path(), &waiting_runbook(), "")?;
    let server = start_server(dir.path(), workers)?;
    let base = server.base.clone();
    let at_start = memory(server.pid())?;
    eprintln!("cordon serve at {base}; {n} runs that wait for an approval, {rate} deliveries/s");
    let client = client()?;
    let started = Instant::now();
    let deliveries = send(&client, &base, rate, n, 0).await?;
    let accepted = deliveries.iter().filter(|d| d.status == 202).count() as u64;
    let waiting = wait_for(
        &client,
        &base,
        "waiting",
        accepted,
        Duration::from_secs(600),
    )
    .await?;
    let all_waiting = started.elapsed();
    // Let the process settle (background sweeps) before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mem = memory(server.pid())?;
    let report = json!({
        "mode": "waiting",
        "deliveries": n,
        "answers": by_status(&deliveries),
        "runs_waiting": waiting,
        "all_waiting_after_seconds": all_waiting.as_secs_f64(),
        "serve_memory_kib_at_start": at_start,
        "serve_memory_kib_with_runs_waiting": mem,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    let mib = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN) / 1024.0;
    eprintln!(
        "waiting: {waiting} runs waiting for approval; serve peak RSS (VmHWM) {:.1} MiB, current RSS {:.1} MiB (at start {:.1} MiB)",
        mib(&mem, "VmHWM"),
        mib(&mem, "VmRSS"),
        mib(&at_start, "VmRSS"),
    );
    if waiting < accepted {
        bail!("only {waiting} of {accepted} runs reached the approval");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let waiting = arg("--waiting", 0u64);
    let mode: String = arg(
        "--mode",
        if waiting > 0 { "waiting" } else { "accept" }.to_string(),
    );
    match mode.as_str() {
        "accept" => accept_mode().await,
        "http4" => http4_mode().await,
        "recovery" => recovery_mode().await,
        "waiting" => waiting_mode(if waiting > 0 { waiting } else { 10_000 }).await,
        other => bail!("unknown --mode {other}: accept, http4, recovery or waiting"),
    }
}
