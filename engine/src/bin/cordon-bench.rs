//! Engine benchmark:
//! `cargo run --release --bin cordon-bench [-- --steps N --runs N --parallel N --nodes N --database URL]`.
//!
//! Measures, on a fresh database (by default SQLite in a temporary folder, WAL,
//! synchronous=FULL; with `--database postgres://…/db` a database created for the bench on
//! that server and dropped afterwards):
//! 1. engine overhead per durable step: a chain of `core.noop` steps (the action itself
//!    costs nothing), timed between consecutive step completions — p50, p99 and mean;
//! 2. throughput: runs (and durable steps) per second for a 5-step runbook, `--parallel`
//!    runs in flight at once, spread over `--nodes` engines that each have their own
//!    connection pool and lease owner (as separate processes would).
//!
//! On SQLite it also prints how many write transactions the store's group commit made for
//! how many write requests.

mod support;
use support::{arg, pct};

/// The allocator the `cordon` binary uses, so the engine is measured as it ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The allocator's settings ([`cordon::alloc`]), before the first allocation.
#[ctor::ctor(unsafe)]
fn tune_allocator() {
    cordon::alloc::tune();
}

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use cordon::config::Config;
use cordon::exec::{Engine, Observer, Progress, StartRequest};
use cordon::runbook::validate::{validate, ValidationContext};
use cordon::store::postgres::PgStore;
use cordon::store::sqlite::{SqliteStore, WriteStats};
use cordon::store::{Created, RunStatus, Store};
use cordon_connectors::registry::Registry;
use cordon_connectors::secret::Redactor;
use sqlx::Connection;

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

/// The database the bench writes to, and what to clean up afterwards.
struct Database {
    url: String,
    /// A PostgreSQL database created for this bench: (server URL, name) to drop.
    created: Option<(String, String)>,
}

impl Database {
    async fn new(dir: &std::path::Path, given: Option<String>) -> anyhow::Result<Database> {
        let Some(url) = given else {
            return Ok(Database {
                url: format!("sqlite://{}", dir.join("bench.db").display()),
                created: None,
            });
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Ok(Database { url, created: None });
        }
        // A fresh database beside the one named, so that nothing there is touched.
        let name = format!(
            "cordon_bench_{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let mut conn = sqlx::PgConnection::connect(&url)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        conn.close().await?;
        let mut parsed = url::Url::parse(&url)?;
        parsed.set_path(&format!("/{name}"));
        Ok(Database {
            url: parsed.to_string(),
            created: Some((url, name)),
        })
    }

    async fn drop_created(&self) -> anyhow::Result<()> {
        if let Some((server, name)) = &self.created {
            let mut conn = sqlx::PgConnection::connect(server).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await?;
            conn.close().await?;
        }
        Ok(())
    }
}

/// A node's store, kept to read its group-commit counters.
enum Counted {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Counted {
    fn write_stats(&self) -> WriteStats {
        match self {
            Counted::Sqlite(s) => s.write_stats(),
            Counted::Postgres(s) => s.write_stats(),
        }
    }
}

/// One engine (a node): its own store handle (pool) and lease owner.
async fn engine(dir: &std::path::Path, url: &str) -> anyhow::Result<(Engine, Option<Counted>)> {
    let cfg_path = dir.join("config.yaml");
    std::fs::write(
        &cfg_path,
        "database: sqlite://bench.db\nevidence: { dir: evidence }\n",
    )?;
    let config = Config::from_file(&cfg_path)?;
    let redactor = Redactor::default();
    let registry = Registry::from_config(&config.connectors, &config.base_dir, &redactor)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (store, counted): (Arc<dyn Store>, Option<Counted>) = if url.starts_with("sqlite:") {
        let s = SqliteStore::open(url).await?;
        (Arc::new(s.clone()), Some(Counted::Sqlite(s)))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let s = PgStore::open(url)
            .await
            .with_context(|| format!("cannot open {url}"))?;
        (Arc::new(s.clone()), Some(Counted::Postgres(s)))
    } else {
        (cordon::cli::open_store(url).await?, None)
    };
    Ok((Engine::new(config, store, registry, redactor), counted))
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let steps = arg("--steps", 500);
    let runs = arg("--runs", 1000);
    let parallel = arg("--parallel", 32);
    let nodes = arg("--nodes", 1usize).max(1);
    let given = Some(arg("--database", String::new())).filter(|s| !s.is_empty());
    let dir = tempfile::tempdir()?;
    let db = Database::new(dir.path(), given).await?;
    let result = bench(dir.path(), &db.url, steps, runs, parallel, nodes).await;
    db.drop_created().await?;
    result
}

async fn bench(
    dir: &std::path::Path,
    url: &str,
    steps: usize,
    runs: usize,
    parallel: usize,
    nodes: usize,
) -> anyhow::Result<()> {
    let backend = if url.starts_with("sqlite:") {
        "SQLite (WAL, synchronous=FULL)"
    } else {
        "PostgreSQL"
    };
    let mut engines = Vec::with_capacity(nodes);
    let mut counted = Vec::new();
    for _ in 0..nodes {
        let (e, s) = engine(dir, url).await?;
        engines.push(e);
        counted.extend(s);
    }
    let stats = |counted: &[Counted]| {
        counted.iter().fold((0, 0, 0), |(r, t, one), s| {
            let w = s.write_stats();
            (r + w.requests, t + w.transactions, one + w.single_statement)
        })
    };

    // 1. Per-step overhead on a chain.
    let engine = &engines[0];
    let text = chain("bench-chain", steps);
    let id = start(engine, &text).await?;
    let stamps = Arc::new(Stamps(Mutex::new(Vec::new())));
    let chain0 = stats(&counted);
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
    println!("per-step engine overhead, chain of {steps} core.noop steps on {backend}:");
    println!(
        "  p50 {:.3} ms   p99 {:.3} ms   mean {:.3} ms",
        ms(pct(&deltas, 0.50)),
        ms(pct(&deltas, 0.99)),
        ms(total) / steps as f64
    );
    if !counted.is_empty() {
        let (req, tx, one) = stats(&counted);
        println!(
            "  {} write requests in {} transactions, {} of them one statement",
            req - chain0.0,
            tx - chain0.1,
            one - chain0.2
        );
    }

    // 2. Runs per second, 5-step runbook, spread over the nodes.
    let text = chain("bench-five", 5);
    let mut ids = Vec::with_capacity(runs);
    for i in 0..runs {
        ids.push(start(&engines[i % nodes], &text).await?);
    }
    let (req0, tx0, one0) = stats(&counted);
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, id) in ids.into_iter().enumerate() {
        let engine = engines[i % nodes].clone();
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
    println!(
        "throughput, {runs} runs of a 5-step runbook, {parallel} in flight, {nodes} node(s), {backend}:"
    );
    println!(
        "  {:.0} runs/s   ({:.0} durable steps/s, {:.2} s total)",
        runs as f64 / el.as_secs_f64(),
        (runs * 5) as f64 / el.as_secs_f64(),
        el.as_secs_f64()
    );
    if !counted.is_empty() {
        let (req1, tx1, one1) = stats(&counted);
        let (req, tx, one) = (req1 - req0, tx1 - tx0, one1 - one0);
        println!(
            "  group commit: {req} write requests in {tx} transactions ({:.1} per transaction; \
             {one} of them one statement)",
            req as f64 / tx.max(1) as f64
        );
    }
    Ok(())
}
