//! Webhook load benchmark for `cordon serve`:
//! `cargo run --release --bin cordon-loadbench [-- --rate 500 --seconds 20 --steps 2 --max-concurrent-runs 16]`.
//!
//! Starts the real `cordon serve` binary (the one built beside this one) on a fresh SQLite
//! database in a temporary folder, with one webhook (`scheme: token`) that starts a runbook
//! of `--steps` `core.noop` steps. Then sends `--rate` deliveries per second for `--seconds`
//! (open loop: each request is due at a fixed time and its latency counts from that time, so
//! a slow server cannot hide its queue by slowing the sender down), each with its own
//! `webhook-id`, over a pool of keep-alive connections. A 202 means the run is durably
//! committed (the server answers only after its transaction). Reports the acceptance latency
//! (p50, p90, p99, max), the answers by status, and how fast the accepted runs finished
//! (runs per second from the first delivery to the last run's end).

mod support;
use support::{arg, pct};

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

const TOKEN: &str = "bench-hook-token";
const API_TOKEN: &str = "bench-api-token";

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
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

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(dir: &std::path::Path, steps: u64, workers: u64) -> Result<Server> {
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
    std::fs::create_dir_all(dir.join("runbooks"))?;
    std::fs::write(dir.join("runbooks/bench.yaml"), runbook)?;
    std::fs::write(
        dir.join("config.yaml"),
        "database: sqlite://bench.db\nevidence: { dir: evidence }\nrunbooks: runbooks\n\
         webhooks:\n  bench:\n    runbook: bench\n    scheme: token\n    secret: { env: BENCH_HOOK_TOKEN }\n    inputs: { alert_id: \"{{ payload.id }}\" }\n\
         api:\n  tokens:\n    - { name: bench, token: { env: BENCH_API_TOKEN }, role: viewer }\n",
    )?;
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

/// Succeeded runs, from the server's own metrics (`cordon_runs{state="succeeded"}`).
async fn succeeded(client: &reqwest::Client, base: &str) -> Result<u64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("cordon_runs{") && l.contains("state=\"succeeded\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

#[tokio::main]
async fn main() -> Result<()> {
    let rate = arg("--rate", 500).max(1);
    let seconds = arg("--seconds", 20).max(1);
    let steps = arg("--steps", 2).max(1);
    let workers = arg("--max-concurrent-runs", 16).max(1);
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path(), steps, workers)?;
    let base = server.base.clone();
    eprintln!(
        "cordon serve at {base}; {rate} deliveries/s for {seconds} s, runbook of {steps} durable steps, {workers} runs executing at once"
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let url = Arc::new(format!("{base}/hooks/bench"));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let answer = client
                .post(url.as_str())
                .bearer_auth(TOKEN)
                .header("webhook-id", format!("bench-{i}"))
                .json(&json!({"id": format!("alert-{i}")}))
                .send()
                .await;
            let latency = due.elapsed();
            let status = match answer {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            (latency, status)
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut by_status: std::collections::BTreeMap<u16, u64> = Default::default();
    for t in tasks {
        let (latency, status) = t.await?;
        latencies.push(latency);
        *by_status.entry(status).or_default() += 1;
    }
    let sent_in = started.elapsed();
    latencies.sort();
    let accepted = by_status.get(&202).copied().unwrap_or(0);
    // Wait for every accepted run to finish.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut done = 0;
    while Instant::now() < deadline {
        done = succeeded(&client, &base).await?;
        if done >= accepted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finished_in = started.elapsed();
    let [p50, p90, p99] = [0.50, 0.90, 0.99].map(|q| pct(&latencies, q));
    let max = latencies.last().copied().unwrap_or_default();
    let report: Value = json!({
        "deliveries": total,
        "rate_per_second": rate,
        "answers": by_status.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "acceptance_latency_ms": {
            "p50": p50.as_secs_f64() * 1000.0,
            "p90": p90.as_secs_f64() * 1000.0,
            "p99": p99.as_secs_f64() * 1000.0,
            "max": max.as_secs_f64() * 1000.0,
        },
        "sent_in_seconds": sent_in.as_secs_f64(),
        "runs_succeeded": done,
        "runs_per_second": done as f64 / finished_in.as_secs_f64(),
        "all_runs_finished_in_seconds": finished_in.as_secs_f64(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!(
        "accepted {accepted}/{total}; latency p50 {} p90 {} p99 {} max {}; {done} runs succeeded in {:.1} s ({:.0} runs/s)",
        ms(p50),
        ms(p90),
        ms(p99),
        ms(max),
        finished_in.as_secs_f64(),
        done as f64 / finished_in.as_secs_f64()
    );
    if done < accepted {
        bail!("only {done} of {accepted} accepted runs finished within 10 minutes");
    }
    Ok(())
}
