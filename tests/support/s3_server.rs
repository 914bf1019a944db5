//! A real S3-compatible server for tests: moto's server (`moto[server]` from PyPI), which
//! implements versioning and Object Lock retention (a locked version cannot be deleted).
//!
//! `CORDON_S3_SERVER` holds the command line that starts it, split on whitespace, e.g.
//! `/var/tmp/cordon-scim2-venv/bin/moto_server`; the test appends `-H 127.0.0.1 -p N`.
//! Unset, a test that needs it says so loudly and passes without running; under `CI` it
//! fails instead (`.ci/run` installs the server and sets the variable).
//!
//! Shared by the engine's unit tests and the end-to-end tests (included with `#[path]`).

#![allow(dead_code)]

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ENV: &str = "CORDON_S3_SERVER";
/// Any credentials do: moto does not check signatures.
pub const ACCESS_KEY: &str = "AKIATESTCORDON000001";
pub const SECRET_KEY: &str = "cordon-test-secret-key-5f1e0b";

/// The running server; killed (and reaped) when dropped, even when a test panics.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Start the server, or `None` (with a loud message) when `CORDON_S3_SERVER` is unset.
pub fn start() -> Option<S3Server> {
    let Ok(line) = std::env::var(ENV) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the real S3 server tests: set {ENV} (see .ci/run)"
        );
        eprintln!(
            "\n**************************************************************\n\
             SKIPPED: this test needs {ENV} (the command that starts an\n\
             S3-compatible server, e.g. /var/tmp/cordon-scim2-venv/bin/moto_server)\n\
             **************************************************************\n"
        );
        return None;
    };
    let command: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    assert!(!command.is_empty(), "{ENV} is set but empty");
    let mut last = String::new();
    // The server takes a port number, not a socket: a port found free may be taken before
    // it binds, so a start that exits early is retried on another port.
    for _ in 0..5 {
        let port = free_port();
        let mut child = Command::new(&command[0])
            .args(&command[1..])
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{ENV}: cannot start `{line}`: {e}"));
        let t0 = Instant::now();
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut s, &mut stderr);
                }
                last = stderr;
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Drain stderr in the background so the server never blocks on it.
                if let Some(mut s) = child.stderr.take() {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut s, &mut std::io::sink());
                    });
                }
                return Some(S3Server { child, port });
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("{ENV}: the server did not listen on port {port} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("{ENV}: the server exited before serving, 5 times; last stderr:\n{last}");
}
