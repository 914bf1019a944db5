//! `cordon serve` schedules and `notify_waiting`, end to end: the real binary, its
//! database, and the Slack sandbox.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::Env;
use crate::serve::{env_with, serve, token, Serving};

const SWEEP: &str = r#"version: 1
name: sweep
inputs:
  scope: { type: string, required: true }
steps:
  - id: look
    uses: core.noop
"#;

fn schedule_env(schedules: &str) -> Env {
    let env = env_with(schedules);
    env.write_runbook("sweep", SWEEP);
    env
}

/// Rows of a read-only query on the installation's database.
fn rows(env: &Env, sql: &str) -> Vec<Vec<Option<String>>> {
    use sqlx::{Connection, Row};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}?mode=ro", env.db().display());
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let got = sqlx::query(sql).fetch_all(&mut c).await.unwrap();
        got.iter()
            .map(|r| {
                (0..r.columns().len())
                    .map(|i| {
                        r.try_get::<Option<String>, _>(i)
                            .ok()
                            .flatten()
                            .or_else(|| r.try_get::<i64, _>(i).ok().map(|n| n.to_string()))
                    })
                    .collect()
            })
            .collect()
    })
}

fn utc(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&chrono::Utc)
}

/// Poll the API until at least `n` runs of `runbook` exist; returns their documents.
fn wait_runs(s: &Serving, runbook: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = s.get(
            &format!("/api/v1/runs?runbook={runbook}&limit=1000"),
            Some(token("vic")),
        );
        assert_eq!(a.status, 200, "{a:?}");
        let list = a.json().as_array().cloned().unwrap_or_default();
        if list.len() >= n {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{} runs of {runbook} after 30 s, expected {n}\n{}",
            list.len(),
            s.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Fire times, sorted, each with its run; and the fire times `schedule.missed` accounts for.
fn fires(env: &Env) -> (Vec<(String, String)>, u64) {
    let fired: Vec<(String, String)> = rows(
        env,
        "SELECT fire_time, run_id FROM schedule_fires WHERE outcome = 'fired' ORDER BY fire_time",
    )
    .into_iter()
    .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
    .collect();
    let missed: u64 = rows(
        env,
        "SELECT json_extract(details, '$.count') FROM audit_events WHERE action = 'schedule.missed'",
    )
    .into_iter()
    .map(|r| r[0].as_deref().unwrap().parse::<u64>().unwrap())
    .sum();
    (fired, missed)
}

#[test]
fn an_every_second_schedule_fires_runs_and_a_restart_neither_repeats_nor_bursts() {
    let env = schedule_env(
        "schedules:\n  - { name: every-second, runbook: sweep, cron: \"* * * * * *\", inputs: { scope: all } }\n",
    );
    // Listed before anything fired: the next fire times, one second apart.
    let r = env.run(&["schedules", "list", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let list = r.json();
    assert_eq!(list[0]["key"], "every-second");
    assert_eq!(list[0]["runbook"], "sweep");
    assert_eq!(list[0]["timezone"], "UTC");
    assert_eq!(list[0]["last_fire"], Value::Null);
    let next: Vec<_> = list[0]["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| utc(t.as_str().unwrap()))
        .collect();
    assert_eq!(next.len(), 3);
    assert_eq!((next[1] - next[0]).num_seconds(), 1);
    assert_eq!((next[2] - next[1]).num_seconds(), 1);

    let s = serve(&env);
    let runs = wait_runs(&s, "sweep", 3);
    for r in &runs {
        assert_eq!(r["trigger"], "schedule:sweep", "{r:#}");
        assert_eq!(r["started_by"], "schedule:sweep", "{r:#}");
    }
    let first = runs.last().unwrap()["id"].as_str().unwrap().to_string();
    let doc = s.wait_status(&first, "succeeded");
    assert_eq!(doc["inputs"]["scope"], "all");
    // The API lists the schedule with its next fire times and its last fire.
    assert_eq!(s.get("/api/v1/schedules", None).status, 401);
    let a = s.get("/api/v1/schedules", Some(token("vic")));
    assert_eq!(a.status, 200, "{a:?}");
    let api = a.json();
    assert_eq!(api[0]["key"], "every-second");
    assert_eq!(api[0]["cron"], "* * * * * *");
    assert_eq!(api[0]["next"].as_array().unwrap().len(), 3);
    let last_run = api[0]["last_fire"]["run_id"].as_str().unwrap().to_string();
    assert_eq!(s.run(&last_run)["trigger"], "schedule:sweep");
    let created = s
        .get(&format!("/api/v1/runs/{first}/audit"), Some(token("vic")))
        .json();
    let event = created
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "run.created")
        .cloned()
        .unwrap();
    assert_eq!(event["details"]["schedule"]["key"], "every-second");
    assert_eq!(event["actor"], "schedule:sweep");
    assert_eq!(s.stop(), 0);
    let (before, _) = fires(&env);
    let stopped_at = chrono::Utc::now();

    // Down for three seconds: at the restart only the most recent missed second fires;
    // the others are one `schedule.missed` event. No fire time makes a second run.
    std::thread::sleep(Duration::from_secs(3));
    let s = serve(&env);
    let runs = wait_runs(&s, "sweep", before.len() + 3);
    assert_eq!(s.stop(), 0);
    let (fired, missed) = fires(&env);
    let total = rows(
        &env,
        "SELECT COUNT(*) FROM runs WHERE trigger_source = 'schedule:sweep'",
    )[0][0]
        .clone()
        .unwrap()
        .parse::<usize>()
        .unwrap();
    assert_eq!(total, fired.len(), "every run has its own fire time");
    assert!(runs.len() <= total);
    let mut ids: Vec<&str> = fired.iter().map(|f| f.1.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), fired.len(), "one run per fire time");
    let times: Vec<_> = fired.iter().map(|f| utc(&f.0)).collect();
    let gaps: i64 = times
        .windows(2)
        .map(|w| (w[1] - w[0]).num_seconds() - 1)
        .sum();
    assert_eq!(
        gaps as u64, missed,
        "every second between fires is fired or recorded as missed: {fired:?}"
    );
    assert!(
        missed >= 2,
        "three seconds down: at least two missed ({missed})"
    );
    // The first fire after the restart is a catch-up of a time that passed while down.
    let resumed = times
        .iter()
        .find(|t| **t > stopped_at)
        .copied()
        .expect("a fire after the restart");
    let reason = rows(
        &env,
        "SELECT json_extract(details, '$.reason') FROM audit_events WHERE action = 'schedule.missed'",
    );
    assert!(
        reason
            .iter()
            .any(|r| r[0].as_deref().unwrap_or("").contains("superseded")),
        "{reason:?}"
    );
    assert!(resumed > *before.last().map(|(t, _)| utc(t)).as_ref().unwrap());
    // `cordon schedules list` shows the last fire and its run.
    let r = env.run(&["schedules", "list"]);
    assert_eq!(r.code, 0, "{r:?}");
    let (last_time, last_id) = fired.last().unwrap();
    assert!(r.stdout.contains(last_id.as_str()), "{r:?}");
    assert!(r.stdout.contains(last_time.as_str()), "{r:?}");
    assert!(r.stdout.contains("every-second"), "{r:?}");
}

#[test]
fn bad_schedules_are_refused_naming_the_index_runbook_and_field() {
    let env = schedule_env(
        r#"schedules:
  - { runbook: sweep, cron: "0 9 * * 8", inputs: { scope: all } }
  - { runbook: no-such-runbook, cron: "* * * * *" }
  - { runbook: sweep, cron: "*/5 * * * *" }
  - { runbook: sweep, cron: "0 9 * * MON", timezone: Europe/Berln, inputs: { scope: all } }
  - { runbook: sweep, cron: "0 9 * * MON", inputs: { scope: all }, catch_up: soon }
"#,
    );
    for args in [
        &["serve", "--listen", "127.0.0.1:0"][..],
        &["schedules", "list"][..],
    ] {
        let r = env.run(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        for needle in [
            "schedules[0] (runbook `sweep`): cron: field 5 (day of week): `8` is out of range 0-7",
            "schedules[1] (runbook `no-such-runbook`): runbook",
            "schedules[2] (runbook `sweep`): inputs:",
            "scope",
            "schedules[3] (runbook `sweep`): timezone: `Europe/Berln`",
            "did you mean `Europe/Berlin`",
            "schedules[4] (runbook `sweep`): catch_up: `soon`",
        ] {
            assert!(
                r.stderr.contains(needle),
                "{args:?}: no `{needle}` in {r:?}"
            );
        }
    }
}

/// A configuration with the Slack sandbox (`webhook_path` below `/slack`) as the
/// `notify_waiting` connector.
fn notify_env(base: &str, webhook_path: &str, public_url: Option<&str>) -> Env {
    let public = public_url
        .map(|u| format!("public_url: {u}\n"))
        .unwrap_or_default();
    // `{file: …}` is relative to the configuration's folder.
    let env = env_with(&format!(
        "{public}connectors:\n  soc-slack:\n    type: slack\n    webhook_url: {{ file: slack-webhook }}\nnotify_waiting: {{ connector: soc-slack }}\n"
    ));
    std::fs::write(
        env.path().join("slack-webhook"),
        format!("{base}/slack{webhook_path}"),
    )
    .unwrap();
    env
}

fn wait_messages(
    slack: &cordon_connectors::sandbox::slack::SlackSandbox,
    n: usize,
    s: &Serving,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: Vec<String> = slack.messages().into_iter().map(|m| m.text).collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} Slack messages after 30 s, expected {n}: {got:#?}\n{}",
            got.len(),
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The run's `action` events once there is one: a notice's event is committed when its
/// send is settled, a moment after the message arrived.
fn sent_events(s: &Serving, run: &str, action: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = audit_of(s, run, action);
        if !found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn audit_of(s: &Serving, run: &str, action: &str) -> Vec<Value> {
    s.get(&format!("/api/v1/runs/{run}/audit"), Some(token("root")))
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

#[test]
fn notify_waiting_posts_once_per_waiting_step_with_the_approval_link_across_restarts() {
    use cordon_connectors::sandbox::{slack::SANDBOX_WEBHOOK_PATH, Sandbox};
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sandbox = rt.block_on(Sandbox::seeded().serve()).expect("sandbox");
    let slack = sandbox.sandbox.slack.clone();
    let env = notify_env(
        &sandbox.base_url(),
        SANDBOX_WEBHOOK_PATH,
        Some("https://cordon.test.example/"),
    );

    let s = serve(&env);
    let a = s.post(
        "/api/v1/runs",
        Some(token("rita")),
        json!({"runbook": "gate", "inputs": {"alert_id": "N-1", "subject_email": "j.smith@example.com"}}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let r1 = a.json()["id"].as_str().unwrap().to_string();
    s.wait_status(&r1, "waiting");
    let msgs = wait_messages(&slack, 1, &s);
    let link = format!("https://cordon.test.example/ui/runs/{r1}/steps/approve-suspend");
    for needle in [
        r1.as_str(),
        "`gate`",
        "approve-suspend",
        "Suspend j.smith@example.com?",
        "role:legal",
        link.as_str(),
    ] {
        assert!(msgs[0].contains(needle), "no `{needle}` in {}", msgs[0]);
    }
    let sent = sent_events(&s, &r1, "notify.waiting_sent");
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0]["details"]["link"], json!(link));
    assert_eq!(sent[0]["details"]["connector"], "soc-slack");
    assert_eq!(s.stop(), 0);

    // While the service is down, the command line starts two runs that wait (an approval
    // and a task): their notices are queued with the wait and sent by the next start.
    let r = env.run(&[
        "run",
        "gate",
        "--input",
        "alert_id=N-2",
        "--input",
        "subject_email=k.lee@example.com",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    let r2 = r.run_id();
    let r = env.run(&["run", "chore", "--input", "alert_id=N-3"]);
    assert_eq!(r.code, 3, "{r:?}");
    let r3 = r.run_id();

    let s = serve(&env);
    let msgs = wait_messages(&slack, 3, &s);
    // A few more passes of the sender: the first run, still waiting, is not told again.
    std::thread::sleep(Duration::from_millis(2500));
    let msgs_after: Vec<String> = slack.messages().into_iter().map(|m| m.text).collect();
    assert_eq!(msgs_after.len(), 3, "{msgs_after:#?}");
    assert_eq!(msgs.iter().filter(|m| m.contains(&r1)).count(), 1);
    let m2 = msgs
        .iter()
        .find(|m| m.contains(&r2))
        .expect("the CLI run's notice");
    assert!(m2.contains("Suspend k.lee@example.com?"), "{m2}");
    let m3 = msgs
        .iter()
        .find(|m| m.contains(&r3))
        .expect("the task's notice");
    assert!(m3.starts_with("*Task waiting*"), "{m3}");
    assert!(m3.contains("Hold payments for N-3"), "{m3}");
    assert!(
        m3.contains(&format!(
            "https://cordon.test.example/ui/runs/{r3}/steps/hold-payments"
        )),
        "{m3}"
    );
    assert_eq!(audit_of(&s, &r1, "notify.waiting_sent").len(), 1);

    // Deciding sends nothing more, and the run finishes.
    let a = s.post(
        &format!("/api/v1/runs/{r1}/steps/approve-suspend/approve"),
        Some(token("dana")),
        json!({}),
    );
    assert_eq!(a.status, 200, "{a:?}");
    s.wait_status(&r1, "succeeded");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(slack.messages().len(), 3);
    let log = s.log();
    assert_eq!(s.stop(), 0);
    // The webhook URL is a secret: never in logs or the audit trail.
    assert!(!log.contains("sandbox-webhook-secret"), "{log}");
    let leaked = rows(
        &env,
        "SELECT seq FROM audit_events WHERE details LIKE '%sandbox-webhook-secret%'",
    );
    assert!(leaked.is_empty(), "{leaked:?}");
}

#[test]
fn a_notice_that_cannot_be_sent_is_audited_and_never_fails_the_run() {
    use cordon_connectors::sandbox::Sandbox;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sandbox = rt.block_on(Sandbox::seeded().serve()).expect("sandbox");
    // A revoked webhook: Slack answers 404 `no_service`, which is not worth retrying.
    let env = notify_env(
        &sandbox.base_url(),
        "/services/T0SANDBOX/B0SANDBOX/revoked-webhook-secret",
        None,
    );
    let s = serve(&env);
    let a = s.post(
        "/api/v1/runs",
        Some(token("rita")),
        json!({"runbook": "gate", "inputs": {"alert_id": "F-1", "subject_email": "j.smith@example.com"}}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.json()["id"].as_str().unwrap().to_string();
    s.wait_status(&id, "waiting");
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let f = audit_of(&s, &id, "notify.waiting_failed");
        if !f.is_empty() {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "no notify.waiting_failed\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(failed[0]["details"]["will_retry"], false);
    assert_eq!(failed[0]["details"]["connector"], "soc-slack");
    let error = failed[0]["details"]["error"].as_str().unwrap();
    assert!(error.contains("no_service"), "{error}");
    assert!(!error.contains("revoked-webhook-secret"), "{error}");
    assert!(sandbox.sandbox.slack.messages().is_empty());
    assert_eq!(s.run(&id)["status"], "waiting");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        audit_of(&s, &id, "notify.waiting_failed").len(),
        1,
        "a rejected notice is not retried"
    );
    let a = s.post(
        &format!("/api/v1/runs/{id}/steps/approve-suspend/approve"),
        Some(token("dana")),
        json!({}),
    );
    assert_eq!(a.status, 200, "{a:?}");
    s.wait_status(&id, "succeeded");
    let log = s.log();
    assert!(log.contains("cannot tell that the run waits"), "{log}");
    assert!(!log.contains("revoked-webhook-secret"), "{log}");
    assert_eq!(s.stop(), 0);
}

#[test]
fn notify_waiting_emails_the_configured_recipients_through_smtp() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = rt.enter();
    let Some((_child, port, received, _dir)) = crate::drafts::smtp_server() else {
        return;
    };
    let env = env_with(&format!(
        "public_url: https://cordon.test.example\nconnectors:\n  mail: {{ type: smtp, host: 127.0.0.1, port: {port}, tls: none, from: \"Cordon <soc@example.com>\" }}\nnotify_waiting: {{ connector: mail, to: [legal@example.com, counsel@example.com] }}\n"
    ));
    let s = serve(&env);
    let a = s.post(
        "/api/v1/runs",
        Some(token("rita")),
        json!({"runbook": "quorum", "inputs": {"alert_id": "M-1"}}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.json()["id"].as_str().unwrap().to_string();
    s.wait_status(&id, "waiting");
    let link = format!("https://cordon.test.example/ui/runs/{id}/steps/approve-both");
    crate::drafts::wait_for(&received, "END MESSAGE");
    let mail = unfold_quoted_printable(&std::fs::read_to_string(&received).unwrap());
    assert!(mail.contains(&link), "{mail}");
    assert!(
        mail.contains(&format!(
            "Subject: Approval needed: quorum / approve-both (run {id})"
        )),
        "{mail}"
    );
    assert!(
        mail.contains("role:legal (2 distinct approvals needed)"),
        "{mail}"
    );
    assert!(
        mail.contains("legal@example.com") && mail.contains("counsel@example.com"),
        "{mail}"
    );
    let sent = sent_events(&s, &id, "notify.waiting_sent");
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0]["details"]["connector"], "mail");
    assert_eq!(s.stop(), 0);
}

/// The mail as aiosmtpd printed it, with folded headers unfolded and quoted-printable
/// soft line breaks and `=XX` escapes decoded.
fn unfold_quoted_printable(raw: &str) -> String {
    let text = raw
        .replace("\r\n", "\n")
        .replace("\n ", " ")
        .replace("=\n", "");
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
