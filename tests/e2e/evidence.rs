//! Evidence end to end: a snapshot, `cordon evidence verify|custody|export`, and the bundle
//! checked with the system's `tar` and `sha256sum`; the same against a real S3-compatible
//! server under Object Lock.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::harness::{step, Env, TestServer};
use crate::s3_server;

fn snapshot_runbook(env: &Env, url: &str) {
    env.write_runbook(
        "snap",
        &format!(
            "version: 1\nname: snap\nsteps:\n  - id: logs\n    uses: http.snapshot\n    with: {{ method: GET, url: \"{url}/ndjson/300/logs\" }}\n  - id: users\n    uses: http.snapshot\n    with: {{ method: GET, url: \"{url}/ok/users\" }}\n"
        ),
    );
}

/// `tar -xf BUNDLE -C DIR`, then `sha256sum -c SHA256SUMS` inside the bundle's folder.
fn extract_and_check(bundle: &Path, into: &Path, run: &str) -> (std::process::Output, String) {
    let tar = Command::new("tar")
        .arg("-xf")
        .arg(bundle)
        .arg("-C")
        .arg(into)
        .output()
        .expect("the system tar");
    assert!(tar.status.success(), "{tar:?}");
    let folder = into.join(format!("cordon-evidence-{run}"));
    let out = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(&folder)
        .output()
        .expect("the system sha256sum");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    (out, text)
}

fn audit_events(env: &Env, run: &str) -> Vec<Value> {
    let r = env.run(&["audit", "export", "--run", run, "--format", "jsonl"]);
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn exported_bundle_verifies_with_sha256sum_and_tampering_is_caught() {
    let srv = TestServer::start();
    let env = Env::new("");
    snapshot_runbook(&env, &srv.url());
    let r = env.run(&["run", "snap", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let run = r.run_id();
    let doc = r.json();
    let logs = step(&doc, "logs")["output"].clone();
    assert_eq!(logs["records"], 300);
    let logs_id = logs["evidence_id"].as_str().unwrap().to_string();

    let v = env.run(&["evidence", "verify", &run, "--as", "dana"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert!(
        v.stdout
            .contains(&format!("{logs_id}  {run}/{logs_id}.jsonl: ok")),
        "{v:?}"
    );

    // Export (default file name, in the current folder), as counsel.
    let x = env.run(&["evidence", "export", &run, "--as", "counsel"]);
    assert_eq!(x.code, 0, "{x:?}");
    let bundle = env.path().join(format!("cordon-evidence-{run}.tar"));
    let lines: Vec<&str> = x.stdout.lines().collect();
    assert_eq!(lines[0], bundle.file_name().unwrap().to_str().unwrap());
    let tar_bytes = std::fs::read(&bundle).unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&tar_bytes));
    assert_eq!(
        lines[1].trim(),
        format!("2 artifact(s), {} bytes", tar_bytes.len())
    );
    assert_eq!(lines[2].trim(), format!("sha256 {digest}"));

    // A third party: the system tar and sha256sum.
    let out = tempfile::tempdir().unwrap();
    let (check, text) = extract_and_check(&bundle, out.path(), &run);
    assert!(check.status.success(), "{text}");
    // Two artifacts, the manifest, the custody log and the README.
    assert_eq!(
        text.lines().filter(|l| l.ends_with(": OK")).count(),
        5,
        "{text}"
    );
    let folder = out.path().join(format!("cordon-evidence-{run}"));
    let manifest = std::fs::read_to_string(folder.join("manifest.jsonl")).unwrap();
    assert_eq!(manifest.lines().count(), 2);
    assert!(manifest.contains(&logs_id));
    let custody = std::fs::read_to_string(folder.join("custody.jsonl")).unwrap();
    assert!(
        custody.contains("\"evidence.collected\"") && custody.contains("\"evidence.verified\"")
    );

    // One flipped byte in the extracted artifact: sha256sum says so.
    let artifact = folder.join(format!("{logs_id}.jsonl"));
    let mut bytes = std::fs::read(&artifact).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x04;
    std::fs::write(&artifact, bytes).unwrap();
    let failed = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(&folder)
        .output()
        .unwrap();
    assert!(!failed.status.success());
    assert!(
        String::from_utf8_lossy(&failed.stdout).contains(&format!("{logs_id}.jsonl: FAILED")),
        "{failed:?}"
    );

    // The chain of custody: collected, verified (by dana), verified and exported (by counsel).
    let c = env.run(&["evidence", "custody", &run, "--json"]);
    assert_eq!(c.code, 0, "{c:?}");
    let doc: Value = serde_json::from_str(&c.stdout).unwrap();
    let entry = doc["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["evidence_id"] == logs_id.as_str())
        .unwrap()
        .clone();
    let actions: Vec<(&str, &str)> = entry["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("evidence.collected", "connector:http"),
            ("evidence.verified", "cli:dana"),
            ("evidence.verified", "cli:counsel"),
            ("evidence.exported", "cli:counsel"),
        ]
    );
    let collected = &entry["events"][0]["details"];
    assert_eq!(collected["storage"]["backend"], "local");
    assert_eq!(collected["source"]["connector_type"], "http");
    assert_eq!(entry["events"][3]["details"]["sha256"], digest.as_str());
    let text = env.run(&["evidence", "custody", &run]);
    assert!(
        text.stdout.contains("exported in cordon-evidence-"),
        "{text:?}"
    );
    assert_eq!(env.run(&["audit", "verify"]).code, 0);

    // Tampering with the stored evidence: verify names the artifact, export refuses.
    let stored = env
        .path()
        .join("evidence")
        .join(&run)
        .join(format!("{logs_id}.jsonl"));
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[7] ^= 0x01;
    std::fs::write(&stored, bytes).unwrap();
    let bad = env.run(&["evidence", "verify", &run]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stdout
            .contains(&format!("{logs_id}  {run}/{logs_id}.jsonl: HASH MISMATCH")),
        "{bad:?}"
    );
    let refused = env.run(&["evidence", "export", &run, "--out", "again.tar"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stdout.contains("HASH MISMATCH"), "{refused:?}");
    assert!(!env.path().join("again.tar").exists());
    let last = audit_events(&env, &run).pop().unwrap();
    assert_eq!(last["action"], "evidence.verified");
    assert_eq!(last["details"]["ok"], false);
    assert_eq!(last["details"]["for"], "export");

    // An unknown run is bad usage.
    assert_eq!(env.run(&["evidence", "export", "01NOPE"]).code, 2);
}

#[test]
fn s3_evidence_under_object_lock_verifies_and_exports() {
    let Some(server) = s3_server::start() else {
        return;
    };
    let endpoint = server.endpoint();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = cordon::evidence::s3::build_client(&cordon::evidence::s3::ClientSettings {
        endpoint: Some(&endpoint),
        region: "us-east-1",
        path_style: true,
        access_key_id: s3_server::ACCESS_KEY,
        secret_access_key: s3_server::SECRET_KEY,
        session_token: None,
    });
    rt.block_on(async {
        client
            .create_bucket()
            .bucket("cordon-evidence")
            .object_lock_enabled_for_bucket(true)
            .send()
            .await
            .unwrap();
        client
            .create_bucket()
            .bucket("no-lock")
            .send()
            .await
            .unwrap();
    });

    let srv = TestServer::start();
    let mut env = Env::new("");
    env.extra_env = vec![
        ("AWS_ACCESS_KEY_ID".into(), s3_server::ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), s3_server::SECRET_KEY.into()),
    ];
    let config = |bucket: &str| {
        format!(
            "database: sqlite://cordon.db\nrunbooks: runbooks\nevidence:\n  s3:\n    bucket: {bucket}\n    endpoint: {endpoint}\n    region: us-east-1\n    prefix: evidence/\n    path_style: true\n    access_key_id: {{ env: AWS_ACCESS_KEY_ID }}\n    secret_access_key: {{ env: AWS_SECRET_ACCESS_KEY }}\n    object_lock: {{ mode: compliance, retain_days: 1 }}\n"
        )
    };
    snapshot_runbook(&env, &srv.url());

    // Object Lock asked for on a bucket without it: a start-up error naming the bucket.
    std::fs::write(env.path().join("config.yaml"), config("no-lock")).unwrap();
    let r = env.run(&["run", "snap"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("`no-lock`") && r.stderr.contains("Object Lock"),
        "{r:?}"
    );

    std::fs::write(env.path().join("config.yaml"), config("cordon-evidence")).unwrap();
    let r = env.run(&["run", "snap", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let run = r.run_id();
    let logs_id = step(&r.json(), "logs")["output"]["evidence_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !env.path().join("evidence").exists(),
        "nothing is written locally"
    );

    let v = env.run(&["evidence", "verify", &run]);
    assert_eq!(v.code, 0, "{v:?}");
    assert!(v.stdout.contains("s3://cordon-evidence/evidence/"), "{v:?}");

    // Stored where the audit trail says, under the lock it records.
    let events = audit_events(&env, &run);
    let collected = events
        .iter()
        .find(|e| {
            e["action"] == "evidence.collected" && e["details"]["evidence_id"] == logs_id.as_str()
        })
        .unwrap();
    let storage = &collected["details"]["storage"];
    assert_eq!(storage["backend"], "s3");
    assert_eq!(storage["bucket"], "cordon-evidence");
    let key = format!("evidence/{run}/{logs_id}.jsonl");
    assert_eq!(storage["key"], key.as_str());
    assert_eq!(storage["object_lock"]["mode"], "COMPLIANCE");
    let version = storage["version_id"].as_str().unwrap().to_string();
    rt.block_on(async {
        let head = client
            .head_object()
            .bucket("cordon-evidence")
            .key(&key)
            .version_id(&version)
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.object_lock_mode().map(|m| m.as_str()),
            Some("COMPLIANCE")
        );
        let del = client
            .delete_object()
            .bucket("cordon-evidence")
            .key(&key)
            .version_id(&version)
            .send()
            .await;
        assert!(del.is_err(), "the locked version was deleted");
    });

    // The export works from S3 too.
    let x = env.run(&["evidence", "export", &run, "--out", "bundle.tar"]);
    assert_eq!(x.code, 0, "{x:?}");
    let out = tempfile::tempdir().unwrap();
    let (check, text) = extract_and_check(&env.path().join("bundle.tar"), out.path(), &run);
    assert!(check.status.success(), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.ends_with(": OK")).count(),
        5,
        "{text}"
    );

    // An overwrite (a new version on top of the locked one) is caught and named.
    rt.block_on(async {
        client
            .put_object()
            .bucket("cordon-evidence")
            .key(&key)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(
                b"{\"forged\":true}\n",
            ))
            .send()
            .await
            .unwrap();
    });
    let bad = env.run(&["evidence", "verify", &run]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stdout
            .contains(&format!("{logs_id}  {run}/{logs_id}.jsonl: SIZE MISMATCH")),
        "{bad:?}"
    );

    // The secret key appears in no output and not in the audit trail.
    let audit = env
        .run(&["audit", "export", "--run", &run, "--format", "jsonl"])
        .stdout;
    for text in [
        &r.stdout,
        &r.stderr,
        &v.stdout,
        &x.stderr,
        &bad.stdout,
        &audit,
    ] {
        assert!(!text.contains(s3_server::SECRET_KEY));
    }
}
