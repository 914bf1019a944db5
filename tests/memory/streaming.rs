//! The memory bar: a 1 GiB export is streamed to disk, never held whole. The real `cordon`
//! binary runs `splunk.snapshot_search` (and `elasticsearch.snapshot_search`) against a
//! stub vendor in this process that generates its answer on the fly (never held in memory
//! here either) and hashes, while generating, exactly the bytes the artifact must hold.
//! The child's peak resident set comes from `wait4(2)`, which reports that one child's
//! `ru_maxrss` as it is reaped.

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::Router;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::harness::{step, Env};

const GIB: u64 = 1 << 30;
/// The bar: peak resident memory of the whole `cordon run` process.
const MAX_RSS: u64 = 100 * 1000 * 1000;
/// The four addresses the generated rows cycle through.
const IPS: [&str; 4] = [
    "198.51.100.23",
    "203.0.113.45",
    "192.0.2.14",
    "2001:db8:4a3::15",
];

/// What one generated answer held, as the artifact must hold it.
#[derive(Debug, Clone, Default)]
struct Sent {
    records: u64,
    bytes: u64,
    sha256: String,
}

/// A process-local stub vendor on a loopback port, with its own runtime.
struct Stub {
    addr: SocketAddr,
    sent: Arc<Mutex<Vec<Sent>>>,
    _rt: tokio::runtime::Runtime,
}

impl Stub {
    fn start(app: impl FnOnce(Arc<Mutex<Vec<Sent>>>) -> Router) -> Stub {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let sent = Arc::new(Mutex::new(Vec::new()));
        let app = app(sent.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Stub {
            addr,
            sent,
            _rt: rt,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }
}

/// The `n`-th generated record (compact JSON, keys in the order the connector keeps, so
/// that its re-encoding is byte-identical): a second apart from 2024-06-01T00:00:00Z.
fn record(n: u64, time_key: &str, filler: &str, out: &mut Vec<u8>) {
    use std::io::Write;
    let (day, rest) = (1 + n / 86_400, n % 86_400);
    let _ = write!(
        out,
        "{{\"{time_key}\":\"2024-06-{day:02}T{:02}:{:02}:{:02}.000+00:00\",\"src_ip\":\"{}\",\"user\":\"j.smith@example.com\",\"n\":{n},\"_raw\":\"{filler}\"}}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        IPS[(n % 4) as usize],
    );
}

fn filler() -> String {
    "event=sign-in outcome=success agent=Mozilla/5.0 (Windows NT 10.0; Win64; x64) ".repeat(12)
}

/// What `wait4(2)` says about one reaped child.
struct Usage {
    code: i32,
    /// Peak resident set, bytes.
    max_rss: u64,
    /// User plus system CPU time, seconds.
    cpu: f64,
}

/// Wait for `child` with `wait4(2)`: its exit status, its own peak RSS and CPU time. A
/// watchdog kills it (and so fails the test) if it runs past `limit`.
fn wait_with_rusage(child: Child, limit: Duration) -> Usage {
    let pid = child.id() as libc::pid_t;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < limit {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if !done.load(std::sync::atomic::Ordering::SeqCst) {
                // SAFETY: `pid` is our own child, not yet reaped (so not reused).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        })
    };
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: plain FFI call with valid pointers; `pid` is our child.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = watchdog.join();
    assert_eq!(reaped, pid, "wait4 failed");
    // The child is reaped: std must not wait for it again.
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Usage {
        code,
        // Linux reports ru_maxrss in KiB.
        max_rss: usage.ru_maxrss as u64 * 1024,
        cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
    }
}

/// Run `cordon run RUNBOOK --json` in `env`, output to files: its usage, run document,
/// stderr and wall-clock seconds.
fn run_measured(env: &Env, runbook: &str) -> (Usage, Value, String, f64) {
    let out = env.path().join("stdout.json");
    let err = env.path().join("stderr.txt");
    let started = Instant::now();
    let child = env
        .command(&["run", runbook, "--json"])
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
        .spawn()
        .expect("spawn cordon");
    let usage = wait_with_rusage(child, Duration::from_secs(900));
    let secs = started.elapsed().as_secs_f64();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap_or_default())
        .unwrap_or_else(|e| {
            panic!(
                "no run document ({e}); exit {}; stderr:\n{stderr}",
                usage.code
            )
        });
    (usage, doc, stderr, secs)
}

/// The checks both vendors share: the step, the artifact on disk, the address summary and
/// the memory bar.
fn check(env: &Env, doc: &Value, sent: &[Sent], rss: u64, min_bytes: u64) -> Value {
    assert_eq!(doc["status"], "succeeded", "{doc:#}");
    let out = step(doc, "export")["output"].clone();
    assert_eq!(sent.len(), 1, "one answer generated (no retry): {sent:?}");
    let sent = &sent[0];
    assert!(sent.bytes >= min_bytes, "{sent:?}");
    assert_eq!(out["bytes"], sent.bytes, "{out}");
    assert_eq!(out["records"], sent.records, "{out}");
    assert_eq!(out["sha256"], sent.sha256.as_str(), "{out}");
    let path = env
        .path()
        .join("evidence")
        .join(out["path"].as_str().expect("artifact path"));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), sent.bytes);
    // The summary saw every record: four addresses, a quarter each, in first-seen order.
    let ips = out["ip_addresses"].as_array().expect("ip_addresses");
    let seen: Vec<&str> = ips.iter().map(|a| a["ip"].as_str().unwrap()).collect();
    assert_eq!(seen, IPS);
    let events: u64 = ips.iter().map(|a| a["events"].as_u64().unwrap()).sum();
    assert_eq!(events, sent.records);
    assert_eq!(ips[0]["first_seen"], "2024-06-01T00:00:00Z");
    assert_eq!(out["ip_addresses_truncated"], false);
    // Not vacuous: a real process was measured (a Rust binary with tokio and SQLite uses
    // several MB), and it stayed under the bar while `bytes` went through it.
    assert!(rss > 4 * 1000 * 1000, "implausible peak RSS {rss}");
    assert!(
        rss < MAX_RSS,
        "peak RSS {} MB for {} MB streamed",
        rss / 1_000_000,
        sent.bytes / 1_000_000
    );
    out
}

fn report(vendor: &str, sent: &Sent, usage: &Usage, secs: f64) {
    eprintln!(
        "{vendor}: {} records, {:.2} GiB in {secs:.1} s ({:.0} MiB/s; cordon used {:.1} s of CPU), peak RSS {:.1} MB",
        sent.records,
        sent.bytes as f64 / GIB as f64,
        sent.bytes as f64 / (1 << 20) as f64 / secs,
        usage.cpu,
        usage.max_rss as f64 / 1e6
    );
}

// ---------------------------------------------------------------------------------------
// Splunk: one streamed NDJSON export of 1 GiB.

/// The export body: a preview row, then rows until the results reach 1 GiB, the last one
/// marked `lastrow`. Hashes each `result` (plus its newline) as it is generated.
fn export_body(sent: Arc<Mutex<Vec<Sent>>>) -> Body {
    struct Gen {
        n: u64,
        bytes: u64,
        hasher: Sha256,
        filler: String,
        done: bool,
        sent: Arc<Mutex<Vec<Sent>>>,
    }
    let gen = Gen {
        n: 0,
        bytes: 0,
        hasher: Sha256::new(),
        filler: filler(),
        done: false,
        sent,
    };
    let stream = futures_util::stream::unfold(gen, |mut g| async move {
        if g.done {
            return None;
        }
        let mut chunk = Vec::with_capacity(300 * 1024);
        if g.n == 0 {
            chunk.extend_from_slice(
                b"{\"preview\":true,\"offset\":0,\"result\":{\"src_ip\":\"192.0.2.99\"}}\n",
            );
        }
        let mut result = Vec::with_capacity(1200);
        while chunk.len() < 256 * 1024 {
            result.clear();
            record(g.n, "_time", &g.filler, &mut result);
            g.hasher.update(&result);
            g.hasher.update(b"\n");
            g.bytes += result.len() as u64 + 1;
            let last = g.bytes >= GIB;
            chunk.extend_from_slice(format!("{{\"preview\":false,\"offset\":{},", g.n).as_bytes());
            if last {
                chunk.extend_from_slice(b"\"lastrow\":true,");
            }
            chunk.extend_from_slice(b"\"result\":");
            chunk.extend_from_slice(&result);
            chunk.extend_from_slice(b"}\n");
            g.n += 1;
            if last {
                g.done = true;
                let sha256 = hex::encode(std::mem::take(&mut g.hasher).finalize());
                g.sent.lock().unwrap().push(Sent {
                    records: g.n,
                    bytes: g.bytes,
                    sha256,
                });
                break;
            }
        }
        Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), g))
    });
    Body::from_stream(stream)
}

async fn export(State(sent): State<Arc<Mutex<Vec<Sent>>>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        export_body(sent),
    )
        .into_response()
}

#[test]
fn a_one_gib_splunk_export_streams_to_disk_under_100_mb() {
    let stub = Stub::start(|sent| {
        Router::new()
            .route("/services/search/v2/jobs/export", post(export))
            .with_state(sent)
    });
    let mut env = Env::new(&format!(
        "connectors:\n  big-splunk:\n    type: splunk\n    base_url: {}\n    token: {{ env: BIG_SPLUNK_TOKEN }}\n",
        stub.url()
    ));
    env.extra_env
        .push(("BIG_SPLUNK_TOKEN".into(), "stub-splunk-token".into()));
    env.write_runbook(
        "big-export",
        "version: 1\nname: big-export\nsteps:\n  - id: export\n    uses: splunk.snapshot_search\n    with: { query: \"index=okta user=j.smith@example.com\", since: \"2024-06-01T00:00:00Z\", until: \"2024-07-01T00:00:00Z\" }\n",
    );
    let (usage, doc, stderr, secs) = run_measured(&env, "big-export");
    assert_eq!(usage.code, 0, "{stderr}");
    let sent = stub.sent();
    check(&env, &doc, &sent, usage.max_rss, GIB);
    report("splunk", &sent[0], &usage, secs);
}

// ---------------------------------------------------------------------------------------
// Elasticsearch: 256 MiB over point-in-time pages of 1,000 hits.

const ES_BYTES: u64 = 256 << 20;

#[derive(Default)]
struct EsState {
    /// The hits' artifact bytes so far, their hash and count, across pages.
    hasher: Sha256,
    bytes: u64,
    records: u64,
    sent: Option<Arc<Mutex<Vec<Sent>>>>,
    filler: String,
}

type Es = Arc<Mutex<EsState>>;

async fn open_pit() -> Response {
    axum::Json(json!({"id": "stub-pit"})).into_response()
}

async fn close_pit() -> Response {
    axum::Json(json!({"succeeded": true, "num_freed": 1})).into_response()
}

/// A page of up to `size` hits after `search_after`; the hits stop once their artifact
/// bytes reach [`ES_BYTES`] (a short page ends the snapshot).
async fn search(State(es): State<Es>, body: Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let size = req["size"].as_u64().unwrap_or(10);
    let start = req["search_after"][1].as_u64().map_or(0, |n| n + 1);
    let mut es = es.lock().unwrap();
    let mut page = Vec::with_capacity(1_100_000);
    page.extend_from_slice(b"{\"pit_id\":\"stub-pit\",\"timed_out\":false,\"_shards\":{\"total\":1,\"successful\":1,\"skipped\":0,\"failed\":0},\"hits\":{\"hits\":[");
    let mut hit = Vec::with_capacity(1300);
    let mut source = Vec::with_capacity(1200);
    for n in start..start + size {
        if es.bytes >= ES_BYTES {
            break;
        }
        source.clear();
        record(n, "@timestamp", &es.filler, &mut source);
        // ECS: the address under `source.ip` rather than Splunk's `src_ip`.
        let source = String::from_utf8_lossy(&source).replace("\"src_ip\":", "\"source\":{\"ip\":");
        let source = source.replacen(",\"user\"", "},\"user\"", 1);
        hit.clear();
        hit.extend_from_slice(
            format!("{{\"_index\":\"logs-big\",\"_id\":\"d{n}\",\"_score\":null,\"_source\":{source},\"sort\":[{n},{n}]}}")
                .as_bytes(),
        );
        es.hasher.update(&hit);
        es.hasher.update(b"\n");
        es.bytes += hit.len() as u64 + 1;
        es.records += 1;
        if n > start {
            page.push(b',');
        }
        page.extend_from_slice(&hit);
        if es.bytes >= ES_BYTES {
            let sha256 = hex::encode(std::mem::take(&mut es.hasher).finalize());
            let done = Sent {
                records: es.records,
                bytes: es.bytes,
                sha256,
            };
            if let Some(sent) = &es.sent {
                sent.lock().unwrap().push(done);
            }
        }
    }
    page.extend_from_slice(b"]}}");
    ([(header::CONTENT_TYPE, "application/json")], page).into_response()
}

#[test]
fn a_256_mib_elasticsearch_snapshot_pages_to_disk_under_100_mb() {
    let stub = Stub::start(|sent| {
        let es: Es = Arc::new(Mutex::new(EsState {
            sent: Some(sent),
            filler: filler(),
            ..EsState::default()
        }));
        Router::new()
            .route("/logs-big/_pit", post(open_pit))
            .route("/_search", post(search))
            .route("/_pit", delete(close_pit))
            .with_state(es)
    });
    let mut env = Env::new(&format!(
        "connectors:\n  big-es:\n    type: elasticsearch\n    base_url: {}\n    api_key: {{ env: BIG_ES_KEY }}\n",
        stub.url()
    ));
    env.extra_env
        .push(("BIG_ES_KEY".into(), "c3R1YjpzdHViLWtleQ==".into()));
    env.write_runbook(
        "big-export",
        "version: 1\nname: big-export\nsteps:\n  - id: export\n    uses: elasticsearch.snapshot_search\n    with: { index: logs-big, query: { match_all: {} }, since: \"2024-06-01T00:00:00Z\", until: \"2024-07-01T00:00:00Z\" }\n",
    );
    let (usage, doc, stderr, secs) = run_measured(&env, "big-export");
    assert_eq!(usage.code, 0, "{stderr}");
    let sent = stub.sent();
    let out = check(&env, &doc, &sent, usage.max_rss, ES_BYTES);
    assert_eq!(
        out["pages"],
        sent[0].records / 1000 + 1,
        "pages of 1,000 hits"
    );
    report("elasticsearch", &sent[0], &usage, secs);
}
