//! The real binary on PostgreSQL: `cordon run`, `runs show`, `audit verify` and
//! `cordon serve` with `CORDON_DATABASE_URL=postgres://…` (a schema of the test's own).

use serde_json::json;

use crate::harness::{step, Env};
use crate::postgres_schema::Schema;
use crate::serve::{env_with, serve, token};

/// A password only this test uses: the server trusts local connections, so it is ignored
/// there, and it must never appear in anything Cordon prints.
const PASSWORD: &str = "e2e-pg-pw-4f9c1d";

/// The schema's URL with [`PASSWORD`] in it (unless the server URL carries one of its own).
fn url_with_password(schema: &Schema) -> String {
    let mut url = url::Url::parse(&schema.url).expect("url");
    if url.password().is_none() {
        url.set_password(Some(PASSWORD)).expect("password");
    }
    url.to_string()
}

fn on_postgres(env: &mut Env, url: &str) {
    env.extra_env
        .push(("CORDON_DATABASE_URL".into(), url.to_string()));
}

#[test]
fn run_show_verify_and_serve_on_postgres() {
    let Some(schema) = Schema::create() else {
        return;
    };
    let url = url_with_password(&schema);
    use cordon_connectors::sandbox::Sandbox;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(Sandbox::seeded().serve()).unwrap();
    let sb = server.sandbox.clone();
    let mut env = Env::with_sandbox(&server.base_url());
    on_postgres(&mut env, &url);
    env.write_runbook(
        "careful",
        "version: 1\nname: careful\nsteps:\n  - id: preserve\n    uses: intune.snapshot_device\n    with: { device: C02DEMO0001 }\n  - id: retire\n    needs: [preserve]\n    uses: intune.retire\n    with: { device: C02DEMO0001 }\n",
    );
    let r = env.run(&["run", "careful", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let doc = r.json();
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(step(&doc, "retire")["status"], "succeeded");
    assert!(sb.intune.calls().iter().any(|c| c.contains("retire")));
    let run = r.run_id();
    // The state is in PostgreSQL, not in the configuration's SQLite file.
    assert!(!env.db().exists(), "a SQLite file was created");
    let rows = schema.query_text(&format!(
        "SELECT status, lease_owner FROM runs WHERE id = '{run}'"
    ));
    assert_eq!(rows, [[Some("succeeded".to_string()), None]]);
    let events = schema.query_text("SELECT COUNT(*)::text FROM audit_events");
    assert!(
        events[0][0]
            .as_deref()
            .unwrap_or("0")
            .parse::<u32>()
            .unwrap()
            >= 4,
        "{events:?}"
    );

    let shown = env.run(&["runs", "show", &run, "--json"]);
    assert_eq!(shown.code, 0, "{shown:?}");
    assert_eq!(shown.json()["status"], "succeeded");
    let listed = env.run(&["runs", "list", "--json"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(listed.stdout.contains(&run), "{listed:?}");
    let verified = env.run(&["audit", "verify"]);
    assert_eq!(verified.code, 0, "{verified:?}");
    let evidence = env.run(&["evidence", "verify", &run]);
    assert_eq!(evidence.code, 0, "{evidence:?}");
    let exported = env.run(&["audit", "export", "--run", &run, "--format", "jsonl"]);
    assert_eq!(exported.code, 0, "{exported:?}");
    assert!(exported.stdout.contains("\"run.created\""), "{exported:?}");
    for out in [&r, &shown, &listed, &verified, &evidence, &exported] {
        assert!(!out.stdout.contains(PASSWORD) && !out.stderr.contains(PASSWORD));
    }

    // `cordon serve` on the same database: a webhook starts a run that finishes, and a
    // repeat of the delivery is answered with the first run.
    let mut env = env_with(
        r#"webhooks:
  siem:
    runbook: plain
    secret: { env: SIEM_TOKEN }
    scheme: token
    inputs: { alert_id: "{{ payload.id }}" }
    dedup_key: "{{ payload.id }}"
"#,
    );
    env.extra_env
        .push(("SIEM_TOKEN".into(), "siem-shared-token".into()));
    on_postgres(&mut env, &url);
    let s = serve(&env);
    let deliver = || {
        s.send(
            s.http
                .post(format!("{}/hooks/siem", s.base))
                .bearer_auth("siem-shared-token")
                .json(&json!({"id": "pg-alert-1"})),
        )
    };
    // Evidence in a local folder beside a shared database is warned about at start.
    assert!(
        s.log().contains("evidence goes to a local folder"),
        "no evidence warning:\n{}",
        s.log()
    );
    let a = deliver();
    assert_eq!(a.status, 202, "{a:?}");
    let hooked = a.json()["run_id"].as_str().expect("run_id").to_string();
    let done = s.wait_status(&hooked, "succeeded");
    assert_eq!(done["inputs"]["alert_id"], "pg-alert-1");
    let again = deliver();
    assert_eq!(
        (again.status, again.json()["run_id"].as_str()),
        (200, Some(hooked.as_str())),
        "{again:?}"
    );
    // The run `cordon run` made is there too: one database.
    let runs = s.get("/api/v1/runs", Some(token("vic"))).json();
    let ids: Vec<&str> = runs
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert!(
        ids.contains(&run.as_str()) && ids.contains(&hooked.as_str()),
        "{runs:#}"
    );
    let ready = s.get("/readyz", None);
    assert_eq!(ready.status, 200, "{ready:?}");
    let log = s.log();
    assert_eq!(s.stop(), 0);
    assert!(
        !log.contains(PASSWORD),
        "the password reached the log:\n{log}"
    );
    assert!(!env.db().exists(), "a SQLite file was created");
    let verified = env.run(&["audit", "verify"]);
    assert_eq!(verified.code, 0, "{verified:?}");
}

/// A database that cannot be reached is named in the error, without its password.
#[test]
fn an_unreachable_database_is_reported_without_its_password() {
    let mut env = Env::new("");
    // Port 1 (tcpmux): privileged and unused, so the connection is refused at once.
    let port = 1;
    let url = format!("postgres://cordon:{PASSWORD}@127.0.0.1:{port}/cordon");
    on_postgres(&mut env, &url);
    let r = env.run(&["runs", "list"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("postgres://cordon:***@127.0.0.1:{port}/cordon")),
        "{r:?}"
    );
    assert!(
        !r.stderr.contains(PASSWORD) && !r.stdout.contains(PASSWORD),
        "{r:?}"
    );
}

/// Two `cordon serve` nodes on one PostgreSQL database: the same delivery sent to both at
/// once makes exactly one run, which one of them finishes.
#[test]
fn two_nodes_share_one_database_and_deduplicate_across_nodes() {
    let Some(schema) = Schema::create() else {
        return;
    };
    let mut env = env_with(
        r#"webhooks:
  siem:
    runbook: plain
    secret: { env: SIEM_TOKEN }
    scheme: token
    inputs: { alert_id: "{{ payload.id }}" }
    dedup_key: "{{ payload.id }}"
"#,
    );
    env.extra_env
        .push(("SIEM_TOKEN".into(), "siem-shared-token".into()));
    on_postgres(&mut env, &schema.url);
    let nodes = [serve(&env), serve(&env)];
    let barrier = std::sync::Barrier::new(20);
    let answers: Vec<(u16, serde_json::Value)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..20)
            .map(|i| {
                let (s, barrier) = (&nodes[i % 2], &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    let a = s.send(
                        s.http
                            .post(format!("{}/hooks/siem", s.base))
                            .bearer_auth("siem-shared-token")
                            .json(&json!({"id": "storm-across-nodes"})),
                    );
                    (a.status, a.json())
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let created: Vec<&serde_json::Value> = answers
        .iter()
        .filter(|(st, _)| *st == 202)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    let id = created[0]["run_id"].as_str().expect("run_id").to_string();
    assert!(
        answers
            .iter()
            .filter(|(st, _)| *st != 202)
            .all(|(st, v)| *st == 200 && v["run_id"] == id.as_str()),
        "{answers:?}"
    );
    for s in &nodes {
        assert_eq!(s.wait_status(&id, "succeeded")["id"], id.as_str());
        let runs = s.get("/api/v1/runs", Some(token("vic"))).json();
        assert_eq!(runs.as_array().expect("runs").len(), 1, "{runs:#}");
    }
    let [a, b] = nodes;
    assert_eq!(a.stop(), 0);
    assert_eq!(b.stop(), 0);
    let verified = env.run(&["audit", "verify"]);
    assert_eq!(verified.code, 0, "{verified:?}");
}
