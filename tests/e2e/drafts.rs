//! Notification drafts end to end: a runbook that preserves, contains and then drafts runs
//! against the vendor sandbox; the drafts carry what the run gathered (the subject, the
//! devices' serials, the actions with their times, the evidence hashes) and what counsel
//! gave (`facts`), are listed, shown and exported from the command line, and recorded in the
//! audit trail by hash. Sending a draft by email goes to a real SMTP server (aiosmtpd), and
//! is refused for a draft meant for an authority or a draft of another run.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::{step, Env};
use serde_json::{json, Value};

const SUBJECT: &str = "j.smith@example.com";

fn copy_runbook(env: &Env) {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/runbooks-good/notify-drafts.yaml");
    std::fs::copy(&src, env.path().join("runbooks/notify-drafts.yaml")).expect("copy runbook");
}

fn given_facts() -> Value {
    json!({
        "case": {"organisation": {"name": "Northwind Robotics, Inc.", "address": "1200 Harbor Way, Oakland, CA"}},
        "payments": {"items": [
            {"date": "2026-09-30", "gross": 12500, "currency": "USD", "method": "ACH", "account": "Chase ...4410"},
            {"date": "2026-10-30", "gross": 12500, "currency": "USD", "method": "Payoneer", "account": "Payoneer ...7781"},
        ]},
    })
}

/// The first cell of the Markdown table row that contains `needle`.
fn first_cell_of_row<'a>(md: &'a str, needle: &str) -> Option<&'a str> {
    md.lines()
        .find(|l| l.starts_with('|') && l.contains(needle))
        .and_then(|l| l.split('|').nth(1))
        .map(str::trim)
}

#[test]
fn drafts_carry_what_the_run_gathered_and_the_cli_lists_shows_and_exports_them() {
    use cordon_connectors::sandbox::Sandbox;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt.block_on(Sandbox::seeded().serve()).expect("sandbox");
    let env = Env::with_sandbox(&server.base_url());
    copy_runbook(&env);
    let facts = given_facts().to_string();
    let r = env.run(&[
        "run",
        "notify-drafts",
        "--input",
        &format!("subject_email={SUBJECT}"),
        "--input",
        "alert_id=A-7",
        "--input",
        r#"device_serials=["C02DEMO0001","C02DEMO0002"]"#,
        "--input",
        &format!("facts={facts}"),
        "--as",
        "analyst",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    let run = r.run_id();
    // Nothing is drafted before counsel approves containment.
    let none = env.run(&["drafts", "list", &run, "--json"]);
    assert_eq!(none.code, 0, "{none:?}");
    assert_eq!(none.json(), json!([]));

    let ok = env.run(&[
        "approve",
        &run,
        "approve-containment",
        "--by",
        "counsel",
        "--json",
    ]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let doc = ok.json();
    assert_eq!(
        step(&doc, "mail-brief")["status"],
        "skipped",
        "no SMTP configured"
    );
    let fbi_out = step(&doc, "draft-fbi")["output"].clone();
    assert_eq!(fbi_out["template"], "fbi-ic3-complaint");
    assert_eq!(fbi_out["audience"], "authority");
    assert!(
        fbi_out["subject"]
            .as_str()
            .unwrap_or("")
            .contains("Northwind Robotics, Inc."),
        "{fbi_out}"
    );
    let fbi_id = fbi_out["draft_id"].as_str().expect("draft_id").to_string();

    // The list: both drafts, with the API's fields.
    let list = env.run(&["drafts", "list", &run, "--json"]).json();
    let list = list.as_array().expect("a list").clone();
    assert_eq!(list.len(), 2, "{list:#?}");
    for d in &list {
        for k in ["draft_id", "template", "subject", "to", "created_at"] {
            assert!(d.get(k).is_some(), "{k} missing in {d}");
        }
    }
    let brief = list
        .iter()
        .find(|d| d["template"] == "executive-brief")
        .expect("brief");
    assert_eq!(brief["to"], json!(["ceo@example.com"]));
    let text_list = env.run(&["drafts", "list", &run]);
    assert!(text_list.stdout.contains("fbi-ic3-complaint") && text_list.stdout.contains(&fbi_id));

    // The complaint: what the run gathered, and what counsel gave.
    let shown = env.run(&["drafts", "show", &fbi_id, "--json"]).json();
    let md = shown["body_markdown"]
        .as_str()
        .expect("markdown")
        .to_string();
    let text = shown["body_text"].as_str().expect("text").to_string();
    assert!(
        md.starts_with("**DRAFT — PRIVILEGED & CONFIDENTIAL — FOR REVIEW BY COUNSEL — NOT SENT**")
    );
    assert!(md.contains(SUBJECT), "the subject's login");
    for serial in ["C02DEMO0001", "C02DEMO0002"] {
        assert!(
            md.contains(&format!("| {serial} |")),
            "device {serial} in the devices table"
        );
    }
    assert!(
        md.contains("Northwind Robotics, Inc."),
        "given facts are merged"
    );
    assert!(
        text.contains("Total paid: 25,000.00 USD"),
        "the total is computed"
    );
    assert!(md.contains("\\[COUNSEL TO COMPLETE: case.references.ic3_complaint_id\\]"));
    // Every identity provider's suspension, with the time it finished.
    let started = doc["started_at"].as_str().expect("started_at").to_string();
    let finished = doc["finished_at"]
        .as_str()
        .expect("finished_at")
        .to_string();
    for action in [
        "suspend_user",
        "disable_user",
        "deactivate_user",
        "contain_host",
        "isolate_machine",
        "lock_computer",
    ] {
        let at = first_cell_of_row(&md, &format!("| {action} |"))
            .unwrap_or_else(|| panic!("no action {action} in\n{md}"));
        assert!(
            at.len() == 24 && at > started.as_str() && at < finished.as_str(),
            "{action} at {at} is not a time within the run ({started} .. {finished})"
        );
    }
    // Every evidence artifact, with its hash.
    let audit = env.run(&["audit", "export", "--run", &run, "--format", "jsonl"]);
    assert_eq!(audit.code, 0, "{audit:?}");
    let events: Vec<Value> = audit
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let hashes: Vec<String> = events
        .iter()
        .filter(|e| e["action"] == "evidence.collected")
        .map(|e| e["details"]["sha256"].as_str().expect("sha256").to_string())
        .collect();
    assert!(
        hashes.len() >= 5,
        "identity logs and device inventories: {hashes:?}"
    );
    for h in &hashes {
        assert!(
            md.contains(h.as_str()),
            "evidence {h} missing from the complaint"
        );
    }
    // The audit trail records each draft by its hash, never its body.
    let created: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "draft.created")
        .collect();
    assert_eq!(created.len(), 2);
    let fbi_event = created
        .iter()
        .find(|e| e["details"]["draft_id"] == fbi_id.as_str())
        .expect("event of the complaint");
    assert_eq!(fbi_event["details"]["sha256"], shown["sha256"]);
    assert_eq!(fbi_event["details"]["template"], "fbi-ic3-complaint");
    assert!(
        !audit.stdout.contains("Description of the incident"),
        "no body in the audit trail"
    );

    // The brief got the step's `data` merged over the facts.
    let brief_id = brief["draft_id"].as_str().expect("id");
    let brief_md = env.run(&["drafts", "show", brief_id]);
    assert_eq!(brief_md.code, 0, "{brief_md:?}");
    assert!(brief_md.stdout.contains("# Executive brief"));
    let brief_json = env.run(&["drafts", "show", brief_id, "--json"]).json();
    assert_eq!(brief_json["run_id"], run.as_str());
    let brief_text = env.run(&["drafts", "show", brief_id, "--text"]);
    assert_eq!(
        brief_text.stdout,
        brief_json["body_text"].as_str().unwrap_or("")
    );

    // Export: `<template>.md` and `<template>.txt`, paths printed, contents as stored.
    let out = env.path().join("for-counsel");
    let exp = env.run(&[
        "drafts",
        "export",
        &run,
        "--out",
        out.to_str().expect("path"),
    ]);
    assert_eq!(exp.code, 0, "{exp:?}");
    let printed: Vec<&str> = exp.stdout.lines().collect();
    assert_eq!(printed.len(), 4, "{exp:?}");
    for (file, want) in [
        ("fbi-ic3-complaint.md", &md),
        ("fbi-ic3-complaint.txt", &text),
    ] {
        let p = out.join(file);
        assert!(
            printed.contains(&p.to_str().expect("path")),
            "{file} not printed: {printed:?}"
        );
        assert_eq!(&std::fs::read_to_string(&p).expect("exported"), want);
    }
    assert!(out.join("executive-brief.md").is_file());
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| {
            !e.file_name().to_string_lossy().ends_with(".md")
                && !e.file_name().to_string_lossy().ends_with(".txt")
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
    let audit = env.run(&["audit", "export", "--run", &run, "--format", "jsonl"]);
    assert!(audit.stdout.contains("\"drafts.exported\""));
    assert_eq!(env.run(&["audit", "verify"]).code, 0);

    // Unknown drafts and runs are bad input.
    let missing = env.run(&["drafts", "show", "01NOSUCHDRAFT"]);
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(missing.stderr.contains("draft 01NOSUCHDRAFT not found"));
    assert_eq!(env.run(&["drafts", "list", "01NOSUCHRUN"]).code, 2);
}

#[test]
fn templates_commands_list_preview_and_check_given_facts() {
    let env = Env::new("");
    let list = env.run(&["templates", "list", "--json"]);
    assert_eq!(list.code, 0, "{list:?}");
    let rows = list.json();
    let rows = rows.as_array().expect("list");
    assert_eq!(rows.len(), 10);
    assert!(rows.iter().all(|r| r["problems"] == json!([])), "{rows:#?}");
    assert!(rows
        .iter()
        .any(|r| r["name"] == "hr-separation-notice" && r["audience"] == "third-party"));

    let sample = env.run(&["templates", "render", "executive-brief"]);
    assert_eq!(sample.code, 0, "{sample:?}");
    assert!(sample.stdout.contains("# Executive brief"));
    assert!(sample
        .stderr
        .contains("subject: Executive brief (privileged)"));

    std::fs::write(
        env.path().join("facts.yaml"),
        "case:\n  organisation: { name: Acme Widgets Ltd }\nsubject:\n  names: [Pat Example]\n",
    )
    .expect("write");
    let given = env.run(&[
        "templates",
        "render",
        "hr-separation-notice",
        "--facts",
        "facts.yaml",
        "--text",
    ]);
    assert_eq!(given.code, 0, "{given:?}");
    assert!(given.stdout.contains("Dear Pat Example,"));
    assert!(given.stdout.contains("Acme Widgets Ltd has decided"));
    assert!(given
        .stdout
        .contains("[COUNSEL TO COMPLETE: case.dates.termination]"));

    std::fs::write(
        env.path().join("bad.json"),
        r#"{"payments": {"totl_paid": 1}}"#,
    )
    .expect("write");
    let bad = env.run(&[
        "templates",
        "render",
        "executive-brief",
        "--facts",
        "bad.json",
    ]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr.contains("bad.json") && bad.stderr.contains("totl_paid"),
        "{bad:?}"
    );

    // A template in the configured folder that reads a field outside the schema.
    std::fs::create_dir_all(env.path().join("templates")).expect("dir");
    std::fs::write(
        env.path().join("templates/board-note.md.hbs"),
        "---\nsubject: Note\naudience: internal\n---\nPaid {{payments.totalpaid}}\n",
    )
    .expect("write");
    let broken = env.run(&["templates", "render", "board-note"]);
    assert_eq!(broken.code, 1, "{broken:?}");
    assert!(
        broken.stderr.contains("template `board-note`")
            && broken.stderr.contains("board-note.md.hbs:5:6")
            && broken.stderr.contains("field `payments.totalpaid`"),
        "{broken:?}"
    );
    assert_eq!(
        env.run(&["templates", "list"]).code,
        1,
        "a broken template is reported"
    );

    let schema = env.run(&["schema", "--facts"]);
    assert_eq!(schema.code, 0);
    let s = schema.json();
    assert!(s["properties"]["payments"].is_object(), "{s}");
    assert_eq!(env.run(&["templates", "schema"]).json(), s);
}

/// Start `CORDON_SMTP_SERVER` (aiosmtpd) on a free port, printing what it receives to a file.
pub(crate) fn smtp_server() -> Option<(
    tokio::process::Child,
    u16,
    std::path::PathBuf,
    tempfile::TempDir,
)> {
    let Some(cmd) = std::env::var("CORDON_SMTP_SERVER")
        .ok()
        .filter(|c| !c.trim().is_empty())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CORDON_SMTP_SERVER must be set under CI (e.g. `python3 -m aiosmtpd -n`)"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED drafts e2e SMTP test: set CORDON_SMTP_SERVER=\"python3 -m aiosmtpd -n\""
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("received");
    let out = std::fs::File::create(&out_path).expect("file");
    let mut words = cmd.split_whitespace();
    let program = words.next()?;
    let child = tokio::process::Command::new(program)
        .args(words)
        .args(["-l", &format!("127.0.0.1:{port}")])
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::from(out))
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start CORDON_SMTP_SERVER");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, port, out_path, dir));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the SMTP server did not start listening on {port}");
}

pub(crate) fn wait_for(path: &Path, needle: &str) -> String {
    let mut seen = String::new();
    for _ in 0..50 {
        seen = std::fs::read_to_string(path).unwrap_or_default();
        if seen.contains(needle) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    seen
}

#[test]
fn an_approved_internal_draft_is_emailed_and_drafts_for_authorities_never_are() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = rt.enter();
    let Some((_child, port, received, _dir)) = smtp_server() else {
        return;
    };
    let env = Env::new(&format!(
        "connectors:\n  mail: {{ type: smtp, host: 127.0.0.1, port: {port}, tls: none, from: \"Cordon SOC <soc@example.com>\" }}\n"
    ));
    env.write_runbook(
        "send-a-draft",
        "version: 1\nname: send-a-draft\ninputs:\n  template: { type: string, required: true }\n  facts: { type: object, default: {} }\nsteps:\n  - id: draft\n    uses: notify.draft\n    with: { template: \"{{ inputs.template }}\", to: legal@example.com }\n  - id: approve-send\n    needs: [draft]\n    approval: { approvers: [role:legal], message: \"Send {{ steps.draft.output.subject }}?\" }\n  - id: send\n    needs: [approve-send]\n    uses: smtp.send_email\n    with: { to: legal@example.com, draft: \"{{ steps.draft.output.draft_id }}\" }\n",
    );
    let facts =
        json!({"subject": {"employee_id": "C-20417", "names": ["Jonathan Smith"]}}).to_string();
    let start = |template: &str| {
        let r = env.run(&[
            "run",
            "send-a-draft",
            "--input",
            &format!("template={template}"),
            "--input",
            &format!("facts={facts}"),
            "--as",
            "analyst",
        ]);
        assert_eq!(r.code, 3, "{r:?}");
        r.run_id()
    };

    // An internal draft, approved: sent with its subject, text and a Markdown alternative.
    let run = start("legal-hold-memo");
    let ok = env.run(&["approve", &run, "approve-send", "--by", "counsel", "--json"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let doc = ok.json();
    let sent = &step(&doc, "send")["output"];
    let message_id = sent["message_id"].as_str().expect("message id").to_string();
    let mail = wait_for(&received, "LEGAL HOLD NOTICE");
    assert!(
        mail.contains("Subject: Legal hold notice: preserve all records about contractor C-20417"),
        "{mail}"
    );
    assert!(mail.contains(&message_id), "{mail}");
    assert!(mail.contains("multipart/alternative"), "{mail}");
    assert!(mail.contains("text/plain"), "{mail}");
    assert!(mail.contains("text/markdown"), "{mail}");
    assert!(
        mail.contains("LEGAL HOLD NOTICE"),
        "the plain-text part: {mail}"
    );
    assert!(
        mail.contains("# Legal hold notice"),
        "the Markdown part: {mail}"
    );
    let draft_id = step(&doc, "draft")["output"]["draft_id"]
        .as_str()
        .expect("id")
        .to_string();

    // A draft for an authority: refused at the send step, nothing sent.
    let run2 = start("fbi-ic3-complaint");
    let refused = env.run(&[
        "approve",
        &run2,
        "approve-send",
        "--by",
        "counsel",
        "--json",
    ]);
    assert_eq!(refused.code, 1, "{refused:?}");
    let doc2 = refused.json();
    let err = step(&doc2, "send")["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        err.contains("drafts to authorities are filed by counsel, never sent automatically"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let all = std::fs::read_to_string(&received).unwrap_or_default();
    assert!(
        !all.contains("Internet Crime Complaint"),
        "an authority draft was sent: {all}"
    );
    // The refused draft is still there for counsel.
    let drafts = env.run(&["drafts", "list", &run2, "--json"]).json();
    assert_eq!(drafts[0]["template"], "fbi-ic3-complaint");

    // A draft of another run: refused.
    env.write_runbook(
        "send-other",
        "version: 1\nname: send-other\ninputs:\n  draft: { type: string, required: true }\nsteps:\n  - id: approve-send\n    approval: { approvers: [role:legal] }\n  - id: send\n    needs: [approve-send]\n    uses: smtp.send_email\n    with: { to: legal@example.com, draft: \"{{ inputs.draft }}\" }\n",
    );
    let r = env.run(&[
        "run",
        "send-other",
        "--input",
        &format!("draft={draft_id}"),
        "--as",
        "analyst",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    let other = r.run_id();
    let refused = env.run(&[
        "approve",
        &other,
        "approve-send",
        "--by",
        "counsel",
        "--json",
    ]);
    assert_eq!(refused.code, 1, "{refused:?}");
    let err = step(&refused.json(), "send")["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(err.contains(&format!("belongs to run {run}")), "{err}");
}
