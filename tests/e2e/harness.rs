//! Test harness: a scratch folder with a configuration, the real `cordon` binary, and a
//! scriptable local HTTP server that records every request it receives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as AxPath, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::{json, Value};

/// One request the test server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    pub start: Instant,
    pub end: Instant,
}

#[derive(Default)]
pub struct ServerState {
    pub seen: Mutex<Vec<Seen>>,
    counters: Mutex<HashMap<String, u32>>,
}

/// A local HTTP server whose behaviour is spelled in the path:
/// - `/ok/...`: 200 with `{"path": …, "id": <last segment>}`
/// - `/delay/{ms}/...`: the same after `ms` milliseconds
/// - `/status/{code}/...`: that status
/// - `/flaky/{n}/...`: 503 for the first `n` requests to that path, then 200
/// - `/limited/{n}/{secs}/...`: 429 with `Retry-After: secs` the first `n` times, then 200
/// - `/echo/...`: 200 with the request's method, headers and body
/// - `/ndjson/{n}/...`: `n` lines of NDJSON
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    _rt: tokio::runtime::Runtime,
}

impl TestServer {
    pub fn start() -> TestServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let state = Arc::new(ServerState::default());
        let app = Router::new()
            .route("/{*rest}", any(handle))
            .with_state(state.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestServer {
            addr,
            state,
            _rt: rt,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests whose path contains `needle`.
    pub fn hits(&self, needle: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.contains(needle))
            .collect()
    }
}

async fn handle(
    State(st): State<Arc<ServerState>>,
    AxPath(rest): AxPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let start = Instant::now();
    let parts: Vec<&str> = rest.split('/').collect();
    let path = uri.path().to_string();
    // Recorded on arrival (and its end time on completion), so that a request whose client
    // was killed mid-way still counts.
    let slot = {
        let mut seen = st.seen.lock().unwrap();
        seen.push(Seen {
            method: method.to_string(),
            path: path.clone(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
            body: String::from_utf8_lossy(&body).to_string(),
            start,
            end: start + Duration::from_secs(3600),
        });
        seen.len() - 1
    };
    let count = {
        let mut c = st.counters.lock().unwrap();
        let n = c.entry(path.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let last = parts.last().copied().unwrap_or("").to_string();
    let ok = json!({"path": path, "id": last, "method": method.as_str()});
    let resp: Response = match parts.first().copied() {
        Some("delay") => {
            let ms: u64 = parts.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            axum::Json(ok).into_response()
        }
        Some("status") => {
            let code: u16 = parts.get(1).and_then(|s| s.parse().ok()).unwrap_or(500);
            (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                axum::Json(json!({"error": format!("status {code}")})),
            )
                .into_response()
        }
        Some("flaky") => {
            let n: u32 = parts.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
            if count <= n {
                (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response()
            } else {
                axum::Json(ok).into_response()
            }
        }
        Some("limited") => {
            let n: u32 = parts.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
            let secs = parts.get(2).copied().unwrap_or("1").to_string();
            if count <= n {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", secs)],
                    "slow down",
                )
                    .into_response()
            } else {
                axum::Json(ok).into_response()
            }
        }
        Some("echo") => {
            let h: serde_json::Map<String, Value> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
                .collect();
            axum::Json(
                json!({"method": method.as_str(), "path": path, "headers": h,
                "body": String::from_utf8_lossy(&body)}),
            )
            .into_response()
        }
        Some("ndjson") => {
            let n: usize = parts.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
            let body: String = (0..n).map(|i| format!("{{\"n\":{i}}}\n")).collect();
            ([("content-type", "application/x-ndjson")], body).into_response()
        }
        _ => axum::Json(ok).into_response(),
    };
    st.seen.lock().unwrap()[slot].end = Instant::now();
    resp
}

/// A scratch installation: config, database, evidence and runbooks in a temp folder.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub extra_env: Vec<(String, String)>,
}

pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// The run id from `run <id>` on stdout, or `id` of a JSON document.
    pub fn run_id(&self) -> String {
        if let Some(line) = self.stdout.lines().find(|l| l.starts_with("run ")) {
            return line[4..].trim().to_string();
        }
        let v: Value = serde_json::from_str(&self.stdout).unwrap_or_else(|_| {
            panic!(
                "no run id in stdout: {}\nstderr: {}",
                self.stdout, self.stderr
            )
        });
        v["id"].as_str().expect("id").to_string()
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cordon")
}

impl Env {
    /// A scratch folder with `config.yaml` holding `extra` YAML after the basics.
    pub fn new(extra: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
        std::fs::write(
            dir.path().join("config.yaml"),
            format!("database: sqlite://cordon.db\nevidence: {{ dir: evidence }}\nrunbooks: runbooks\n{extra}"),
        )
        .unwrap();
        Env {
            dir,
            extra_env: Vec::new(),
        }
    }

    /// A scratch folder whose configuration names one instance of every vendor the
    /// sandbox at `base_url` imitates (secrets written as files, as in a real set-up).
    pub fn with_sandbox(base_url: &str) -> Env {
        let env = Env::new("");
        let conns = cordon_connectors::sandbox::Sandbox::connector_config(
            base_url,
            &env.path().join("secrets"),
        )
        .expect("sandbox configuration");
        std::fs::write(
            env.path().join("config.yaml"),
            format!(
                "database: sqlite://cordon.db\nevidence: {{ dir: evidence }}\nrunbooks: runbooks\nconnectors: {}\n",
                serde_json::to_string(&conns).expect("json")
            ),
        )
        .expect("write config");
        env
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn db(&self) -> PathBuf {
        self.path().join("cordon.db")
    }

    pub fn write_runbook(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self.path().join("runbooks").join(format!("{name}.yaml"));
        std::fs::write(&p, yaml).unwrap();
        p
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--config")
            .arg(self.path().join("config.yaml"))
            .args(args)
            .current_dir(self.path())
            .env_remove("CORDON_CONFIG")
            .env_remove("CORDON_DATABASE_URL")
            .env("USER", "tester")
            .stdin(Stdio::null());
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Ran {
        let out: Output = self.command(args).output().expect("spawn cordon");
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cordon")
    }

    /// `cordon runs show RUN --json`.
    pub fn show(&self, run: &str) -> Value {
        let r = self.run(&["runs", "show", run, "--json"]);
        assert_eq!(r.code, 0, "{r:?}");
        r.json()
    }
}

/// The step named `id` in a run document.
pub fn step<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["id"] == id))
        .unwrap_or_else(|| panic!("no step {id} in {doc:#}"))
}
