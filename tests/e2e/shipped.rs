//! The shipped runbooks and `cordon demo`, end to end against the vendor sandbox.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{bin, step, Env};

fn shipped(env: &Env, name: &str) {
    let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../runbooks")
        .join(format!("{name}.yaml"));
    std::fs::copy(
        &from,
        env.path().join("runbooks").join(format!("{name}.yaml")),
    )
    .unwrap();
}

/// From an empty folder, with no configuration: the whole default runbook, every gate
/// decided by the labelled demo approver, drafts written as files, in under a minute.
#[test]
fn demo_runs_the_whole_response_from_an_empty_folder() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(bin())
        .arg("demo")
        .current_dir(dir.path())
        .env_remove("CORDON_CONFIG")
        .env_remove("CORDON_DATABASE_URL")
        .output()
        .expect("spawn cordon demo");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(took < Duration::from_secs(60), "the demo took {took:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let run = stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("run "))
        .expect("first line is `run <id>`")
        .to_string();
    // Every decision is labelled as the demo's, never as a person's.
    for gate in [
        "legal-hold",
        "payment-hold",
        "approve-containment",
        "approve-notifications",
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("demo-approver (automatic, demo only")
                    && l.ends_with(&format!("`{gate}`"))),
            "{gate}: {stderr}"
        );
    }
    assert!(stderr.contains("hashes verified"), "{stderr}");
    // And how to open the review UI on this run.
    assert!(stderr.contains(&format!("/ui/runs/{run}")), "{stderr}");
    assert!(
        stderr.contains("audit chain:") && stderr.contains("intact"),
        "{stderr}"
    );
    // The drafts' paths are printed and the files are there, Markdown and text.
    let drafts = dir.path().join("drafts").join(&run);
    for t in [
        "fbi-ic3-complaint",
        "ofac-voluntary-self-disclosure",
        "legal-hold-memo",
    ] {
        let md = drafts.join(format!("{t}.md"));
        assert!(stderr.contains(&format!("drafts/{run}/{t}.md")), "{stderr}");
        let body = std::fs::read_to_string(&md).unwrap();
        assert!(body.starts_with("**DRAFT — PRIVILEGED"), "{t}");
        assert!(drafts.join(format!("{t}.txt")).exists(), "{t}");
    }
    // The state is on embedded defaults in the folder it ran in.
    assert!(dir.path().join("cordon.db").exists());
    assert!(dir
        .path()
        .join("evidence")
        .join(&run)
        .join("SHA256SUMS")
        .exists());
}

/// A false positive: counsel approves, the identity comes back everywhere, EDR isolation is
/// lifted, IT is asked to unlock the MDM-locked laptops, and a release notice is drafted.
#[test]
fn false_positive_release_restores_access_after_counsel_approves() {
    use cordon_connectors::sandbox::Sandbox;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(Sandbox::seeded().serve()).unwrap();
    let sb = server.sandbox.clone();
    let env = Env::with_sandbox(&server.base_url());
    let subject = "j.smith@example.com";
    // Contained earlier, by hand.
    env.write_runbook(
        "pre",
        "version: 1\nname: pre\nsteps:\n  - id: s\n    uses: identity.suspend_user\n    with: { user: j.smith@example.com }\n  - id: c\n    uses: device.contain\n    with: { device: C02DEMO0001 }\n",
    );
    assert_eq!(env.run(&["run", "pre"]).code, 0);
    assert_eq!(sb.okta.status_of(subject).as_deref(), Some("SUSPENDED"));
    assert_eq!(sb.google.is_suspended(subject), Some(true));

    shipped(&env, "false-positive-release");
    let r = env.run(&[
        "run",
        "false-positive-release",
        "--input",
        "alert_id=A-7",
        "--input",
        &format!("subject_email={subject}"),
        "--input",
        "reason=The sign-ins from abroad were a documented business trip.",
        "--input",
        r#"device_serials=["C02DEMO0001"]"#,
        "--as",
        "analyst",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    let run = r.run_id();
    // Nothing changes before counsel decides.
    assert_eq!(sb.okta.status_of(subject).as_deref(), Some("SUSPENDED"));
    let a = env.run(&["approve", &run, "approve-release", "--by", "counsel"]);
    assert_eq!(a.code, 3, "waits for IT's unlock task: {a:?}");
    assert_eq!(sb.okta.status_of(subject).as_deref(), Some("ACTIVE"));
    assert_eq!(sb.google.is_suspended(subject), Some(false));
    let doc = env.show(&run);
    let released = &step(&doc, "release-devices")["output"][0];
    assert!(released["succeeded"].as_u64().unwrap() >= 1, "{released:#}");
    assert_eq!(step(&doc, "unlock-devices")["status"], "waiting");
    let d = env.run(&["done", &run, "unlock-devices", "--by", "it-desk", "--json"]);
    assert_eq!(d.code, 0, "{d:?}");
    let listed = env.run(&["drafts", "list", &run, "--json"]).json();
    let draft = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["template"] == "false-positive-release-notice")
        .expect("a release notice")["draft_id"]
        .as_str()
        .unwrap()
        .to_string();
    let body = env.run(&["drafts", "show", &draft, "--text"]).stdout;
    assert!(body.contains("documented business trip"), "{body}");
    assert!(body.contains("unsuspend_user"), "{body}");
}

/// Two accounts linked to a case: each is preserved, then contained after one approval.
#[test]
fn linked_identity_sweep_contains_every_linked_account() {
    use cordon_connectors::sandbox::Sandbox;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(Sandbox::seeded().serve()).unwrap();
    let sb = server.sandbox.clone();
    let env = Env::with_sandbox(&server.base_url());
    shipped(&env, "linked-identity-sweep");
    let r = env.run(&[
        "run",
        "linked-identity-sweep",
        "--input",
        "alert_id=CASE-9",
        "--input",
        r#"linked_emails=["j.smith@example.com","dana@example.com"]"#,
        "--input",
        "link=shared MFA authenticator",
        "--as",
        "analyst",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    let run = r.run_id();
    let doc = env.show(&run);
    // Evidence for both accounts before anything else.
    let snaps = step(&doc, "snapshot-identity-logs")["output"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(snaps.len(), 2);
    assert!(
        snaps.iter().all(|s| s["succeeded"].as_u64().unwrap() >= 3),
        "{snaps:?}"
    );
    for task in ["legal-hold", "payment-hold"] {
        assert_eq!(env.run(&["done", &run, task, "--by", "counsel"]).code, 3);
    }
    assert_eq!(
        sb.okta.status_of("dana@example.com").as_deref(),
        Some("ACTIVE")
    );
    let a = env.run(&[
        "approve",
        &run,
        "approve-containment",
        "--by",
        "counsel",
        "--json",
    ]);
    assert_eq!(a.code, 0, "{a:?}");
    for who in ["j.smith@example.com", "dana@example.com"] {
        assert_eq!(
            sb.okta.status_of(who).as_deref(),
            Some("SUSPENDED"),
            "{who}"
        );
        assert_eq!(sb.google.is_suspended(who), Some(true), "{who}");
    }
    let undo = env.run(&["undo", &run]);
    assert_eq!(undo.code, 0, "{undo:?}");
    assert_eq!(
        sb.okta.status_of("dana@example.com").as_deref(),
        Some("ACTIVE")
    );
}
