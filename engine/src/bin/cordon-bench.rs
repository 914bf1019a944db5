//! Engine benchmark: `cargo run --release --bin cordon-bench [-- --steps N --runs N]`.
//!
//! Measures, on a fresh SQLite database in a temporary folder (WAL, synchronous=FULL):
//! 1. engine overhead per durable step: a chain of `core.noop` steps (the action itself
//!    costs nothing), timed between consecutive step completions — p50 and p99;
//! 2. throughput: runs per second for a 5-step runbook, many runs in flight at once.

mod support;
use support::{arg, pct};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cordon::config::Config;
use cordon::exec::{Engine, Observer, Progress, StartRequest};
use cordon::runbook::validate::{validate, ValidationContext};
use cordon::store::{Created, RunStatus};
use cordon_connectors::registry::Registry;
use cordon_connectors::secret::Redactor;

struct Stamps(Mutex<Vec<Instant>>);
impl Observer for Stamps {
    fn event(&self, e: Progress) {
        if let Progress::StepFinished { .. } = e {
            if let Ok(mut v) = self.0.lock() {
                v.push(Instant::now());
            }
        }
    }
}

async fn engine(dir: &std::path::Path) -> anyhow::Result<Engine> {
    let cfg_path = dir.join("config.yaml");
    std::fs::write(
        &cfg_path,
        "database: sqlite://bench.db\nevidence: { dir: evidence }\n",
    )?;
    let config = Config::from_file(&cfg_path)?;
    let redactor = Redactor::default();
    let registry = Registry::from_config(&config.connectors, &config.base_dir, &redactor)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let store = cordon::cli::open_store(&config.database_url).await?;
    Ok(Engine::new(config, store, registry, redactor))
}

fn chain(name: &str, n: usize) -> String {
    let mut s = format!("version: 1\nname: {name}\nsteps:\n");
    for i in 0..n {
        let needs = if i == 0 {
            String::new()
        } else {
            format!("\n    needs: [s{}]", i - 1)
        };
        s.push_str(&format!(
            "  - id: s{i}{needs}\n    uses: core.noop\n    with: {{ n: {i} }}\n"
        ));
    }
    s
}

async fn start(engine: &Engine, text: &str) -> anyhow::Result<String> {
    let rb = validate(text, "bench.yaml", &ValidationContext::default())
        .map_err(|d| anyhow::anyhow!("{d:?}"))?;
    match engine
        .start_run(StartRequest {
            runbook: rb,
            inputs: Default::default(),
            trigger: "bench".into(),
            started_by: "bench".into(),
            dry_run: false,
        })
        .await?
    {
        Created::New(r) | Created::Joined(r) => Ok(r.id),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let steps = arg("--steps", 500);
    let runs = arg("--runs", 1000);
    let parallel = arg("--parallel", 32);
    let dir = tempfile::tempdir()?;
    let engine = engine(dir.path()).await?;

    // 1. Per-step overhead on a chain.
    let text = chain("bench-chain", steps);
    let id = start(&engine, &text).await?;
    let stamps = Arc::new(Stamps(Mutex::new(Vec::new())));
    let t0 = Instant::now();
    let run = engine.execute(&id, stamps.clone()).await?;
    let total = t0.elapsed();
    anyhow::ensure!(
        run.status == RunStatus::Succeeded,
        "chain run {}",
        run.status.as_str()
    );
    let v = stamps.0.lock().map(|v| v.clone()).unwrap_or_default();
    let mut deltas: Vec<Duration> = v.windows(2).map(|w| w[1] - w[0]).collect();
    deltas.sort();
    println!(
        "per-step engine overhead, chain of {steps} core.noop steps on SQLite (synchronous=FULL):"
    );
    println!(
        "  p50 {:.3} ms   p99 {:.3} ms   mean {:.3} ms",
        pct(&deltas, 0.50).as_secs_f64() * 1e3,
        pct(&deltas, 0.99).as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3 / steps as f64
    );

    // 2. Runs per second, 5-step runbook.
    let text = chain("bench-five", 5);
    let mut ids = Vec::with_capacity(runs);
    for _ in 0..runs {
        ids.push(start(&engine, &text).await?);
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for id in ids {
        let engine = engine.clone();
        let permit = sem.clone().acquire_owned().await?;
        set.spawn(async move {
            let r = engine.execute(&id, Arc::new(cordon::exec::Quiet)).await;
            drop(permit);
            r.map(|r| r.status)
        });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        if matches!(r, Ok(Ok(RunStatus::Succeeded))) {
            ok += 1;
        }
    }
    let el = t0.elapsed();
    anyhow::ensure!(ok == runs, "only {ok} of {runs} runs succeeded");
    println!("throughput, {runs} runs of a 5-step runbook, {parallel} in flight:");
    println!(
        "  {:.0} runs/s   ({:.0} durable steps/s, {:.2} s total)",
        runs as f64 / el.as_secs_f64(),
        (runs * 5) as f64 / el.as_secs_f64(),
        el.as_secs_f64()
    );
    Ok(())
}
