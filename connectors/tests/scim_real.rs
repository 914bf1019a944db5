//! The `scim` connector against a real SCIM server: `scim2-server` from PyPI (an in-memory
//! RFC 7644 provider built on `scim2-models`).
//!
//! `CORDON_SCIM2_SERVER` holds the command line that starts it, split on whitespace, e.g.
//! `/opt/scim2-venv/bin/scim2-server` or `python3 -m scim2_server.testserver.cli`; the test
//! appends `--hostname 127.0.0.1 --port N --bearer-token T`. Unset, the test is skipped
//! with a loud message (CI sets it; see the connector's report for the install commands).
//!
//! The server takes a port number, not a listening socket, and with `--port 0` it does not
//! say which port it got: so a free port is chosen by binding port 0 and releasing it, and
//! the start is retried on another port if the server then fails to bind.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use cordon_connectors::evidence::EvidenceError;
use cordon_connectors::registry::Registry;
use cordon_connectors::secret::Redactor;
use cordon_connectors::{
    ActionCall, Connector, ConnectorError, EvidenceMeta, EvidenceSink, EvidenceWriter, RequestLog,
    ResumeSlot,
};
use serde_json::{json, Value};

const TOKEN: &str = "real-scim-tok-77f0c1d2";
const ENV: &str = "CORDON_SCIM2_SERVER";
const START_TIMEOUT: Duration = Duration::from_secs(60);

struct NoEvidence;

#[async_trait]
impl EvidenceSink for NoEvidence {
    async fn create(&self, _meta: EvidenceMeta) -> Result<Box<dyn EvidenceWriter>, EvidenceError> {
        Err(EvidenceError("scim actions must not write evidence".into()))
    }
}

/// The running server; killed (and reaped) when dropped, even when a test panics.
struct Server {
    child: Child,
    port: u16,
    _stderr_dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn root(&self) -> String {
        format!("http://127.0.0.1:{}/v2", self.port)
    }
}

/// What one start attempt came to.
enum Start {
    Ready(Server),
    /// The server exited before it was ready; its stderr.
    Exited(String),
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

fn start_once(command: &[String], port: u16) -> Start {
    let dir = tempfile::tempdir().expect("temp dir");
    let stderr_path = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .args(["--hostname", "127.0.0.1", "--port", &port.to_string()])
        .args(["--bearer-token", TOKEN])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap_or_else(|e| panic!("{ENV}: cannot start `{}`: {e}", command.join(" ")));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    // The server prints "Serving SCIM on …" once its socket is bound; the reader thread
    // ends with the process (end of file).
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("Serving SCIM on") && tx.send(()).is_err() {
                break;
            }
        }
    });
    let read_stderr = || {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&stderr_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    };
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(()) => Start::Ready(Server {
            child,
            port,
            _stderr_dir: dir,
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let _ = child.wait();
            Start::Exited(read_stderr())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{ENV}: the server did not say it was serving within {START_TIMEOUT:?}; stderr:\n{}",
                read_stderr()
            );
        }
    }
}

/// Start the server, or None (with a loud message) when `CORDON_SCIM2_SERVER` is unset.
fn start() -> Option<Server> {
    let Ok(line) = std::env::var(ENV) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the real SCIM server test: set {ENV} (see .ci/run)"
        );
        eprintln!(
            "\n**************************************************************\n\
             SKIPPED: scim_real needs {ENV} (the command that starts\n\
             scim2-server, e.g. /opt/scim2-venv/bin/scim2-server)\n\
             **************************************************************\n"
        );
        return None;
    };
    let command: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    assert!(!command.is_empty(), "{ENV} is set but empty");
    let mut last = String::new();
    for _ in 0..5 {
        match start_once(&command, free_port()) {
            Start::Ready(server) => return Some(server),
            // Most likely another process took the port between our release and its bind.
            Start::Exited(stderr) => last = stderr,
        }
    }
    panic!("{ENV}: the server exited before serving, 5 times; last stderr:\n{last}");
}

struct Harness {
    connector: std::sync::Arc<dyn Connector>,
    log: RequestLog,
    resume: ResumeSlot,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(root: &str, token: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), token).unwrap();
        let config: BTreeMap<String, Value> = serde_json::from_value(json!({
            "scim-real": {"type": "scim", "base_url": root, "token": {"file": "token"}}
        }))
        .unwrap();
        let registry = Registry::from_config(&config, dir.path(), &Redactor::new()).unwrap();
        Harness {
            connector: registry.resolve("scim", None).unwrap(),
            log: RequestLog::default(),
            resume: ResumeSlot::default(),
            _dir: dir,
        }
    }

    fn args<'a>(&'a self, action: &'a str, input: &'a Value) -> ActionCall<'a> {
        ActionCall {
            action,
            input,
            idempotency_key: "run-real/step/0",
            run_id: "run-real",
            step_id: "step",
            attempt: 1,
            evidence: &NoEvidence,
            requests: &self.log,
            resume: &self.resume,
            prior: None,
        }
    }

    async fn call(&self, action: &str, user: &str) -> Result<Value, ConnectorError> {
        let input = json!({ "user": user });
        self.connector.call(self.args(action, &input)).await
    }

    async fn prior(&self, action: &str, user: &str) -> Option<Value> {
        let input = json!({ "user": user });
        self.connector
            .prior_state(self.args(action, &input))
            .await
            .unwrap()
    }

    /// PATCH requests made since the last call.
    fn patches(&self) -> usize {
        self.log
            .take()
            .iter()
            .filter(|r| r.method == "PATCH")
            .count()
    }
}

/// Plain SCIM calls, to set up and to check the server's state independently.
struct Plain {
    http: reqwest::Client,
    root: String,
}

impl Plain {
    async fn create_user(&self, user_name: &str, given: &str, family: &str) -> String {
        let body = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": user_name,
            "name": {"formatted": format!("{given} {family}"), "givenName": given, "familyName": family},
            "emails": [{"value": user_name, "type": "work", "primary": true}],
            "active": true,
        });
        let resp = self
            .http
            .post(format!("{}/Users", self.root))
            .bearer_auth(TOKEN)
            .header("content-type", "application/scim+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "creating {user_name}");
        let created: Value = resp.json().await.unwrap();
        created["id"].as_str().unwrap().to_string()
    }

    async fn active(&self, id: &str) -> bool {
        let resp = self
            .http
            .get(format!("{}/Users/{id}", self.root))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        v["active"].as_bool().unwrap()
    }
}

#[tokio::test]
async fn real_scim_server_get_deactivate_activate() {
    let Some(server) = start() else { return };
    let plain = Plain {
        http: reqwest::Client::new(),
        root: server.root(),
    };
    let suspect = plain
        .create_user("j.smith@example.com", "John", "Smith")
        .await;
    let dana = plain
        .create_user("dana@example.com", "Dana", "Analyst")
        .await;
    let h = Harness::new(&server.root(), TOKEN);

    // Lookups: by email, by id, unknown, and a value that needs escaping in the filter.
    let by_email = h.call("get_user", "J.Smith@example.com").await.unwrap();
    assert_eq!(by_email["found"], json!(true));
    assert_eq!(by_email["id"], json!(suspect));
    assert_eq!(by_email["login"], json!("j.smith@example.com"));
    assert_eq!(by_email["name"], json!("John Smith"));
    assert_eq!(by_email["status"], json!("ACTIVE"));
    let by_id = h.call("get_user", &suspect).await.unwrap();
    assert_eq!(by_id["login"], json!("j.smith@example.com"));
    assert_eq!(
        h.call("get_user", "nobody@example.com").await.unwrap(),
        json!({"found": false})
    );
    assert_eq!(
        h.call("get_user", r#"o"brien\x@example.com"#)
            .await
            .unwrap(),
        json!({"found": false})
    );
    assert_eq!(
        h.call("get_user", "no-such-id").await.unwrap(),
        json!({"found": false})
    );
    h.log.take();

    // Deactivate, then again: the second says `already` and sends no PATCH.
    assert_eq!(
        h.prior("deactivate_user", "j.smith@example.com").await,
        Some(
            json!({"id": suspect, "login": "j.smith@example.com", "active": true, "status": "ACTIVE", "already": false})
        )
    );
    let out = h
        .call("deactivate_user", "j.smith@example.com")
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"found": true, "target": suspect, "already": false, "active": false})
    );
    assert_eq!(h.patches(), 1);
    assert!(!plain.active(&suspect).await);
    assert!(plain.active(&dana).await, "only the suspect changes");
    let again = h.call("deactivate_user", &suspect).await.unwrap();
    assert_eq!(again["already"], json!(true));
    assert_eq!(h.patches(), 0);
    assert!(!plain.active(&suspect).await);

    // Undo: activate, then again.
    let back = h
        .call("activate_user", "j.smith@example.com")
        .await
        .unwrap();
    assert_eq!(
        back,
        json!({"found": true, "target": suspect, "already": false, "active": true})
    );
    assert_eq!(h.patches(), 1);
    assert!(plain.active(&suspect).await);
    let again = h
        .call("activate_user", "j.smith@example.com")
        .await
        .unwrap();
    assert_eq!(again["already"], json!(true));
    assert_eq!(h.patches(), 0);

    // Unknown users are not errors.
    assert_eq!(
        h.call("deactivate_user", "ghost@example.com")
            .await
            .unwrap(),
        json!({"found": false, "target": null, "already": false})
    );

    // A wrong token: a typed 401 that names the SCIM error and never the token.
    let wrong = Harness::new(&server.root(), "wrong-token-0000");
    let e = wrong
        .call("deactivate_user", "j.smith@example.com")
        .await
        .unwrap_err();
    match &e {
        ConnectorError::Auth {
            status: 401,
            message,
        } => {
            assert!(message.contains("SCIM error 401"), "{message}")
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains("wrong-token-0000"), "{shown}");
    assert!(plain.active(&suspect).await);
}
