//! The shipped notification templates, rendered with the sample facts
//! (`templates/sample-facts.yaml`) and compared with reviewed snapshots under
//! `tests/snapshots/` (review changes with `cargo insta review`, and read every one: counsel
//! reads these drafts). Also: every template marks itself a draft, renders with no facts at
//! all (placeholders only), carries the facts the domain notes ask for, and a template that
//! reads a field outside the schema fails, naming the template, its line and the field.

use cordon::notify::{self, facts, templates::SHIPPED, Audience, DraftTemplates};
use serde_json::{json, Value};

const BANNER: &str = "**DRAFT — PRIVILEGED & CONFIDENTIAL — FOR REVIEW BY COUNSEL — NOT SENT**";

fn sample() -> Value {
    notify::sample_facts().expect("the sample facts are valid")
}

fn render(name: &str, facts: &Value) -> notify::Rendered {
    notify::render_named(&DraftTemplates::shipped(), name, facts, None)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_shipped_template_renders_the_sample_facts() {
    assert_eq!(SHIPPED.len(), 10);
    let f = sample();
    for (name, _) in SHIPPED {
        let r = render(name, &f);
        assert!(
            r.body_markdown.starts_with(BANNER),
            "{name} must begin with the draft banner"
        );
        assert!(r.body_text.starts_with("DRAFT — PRIVILEGED"), "{name}");
        let doc = format!(
            "subject: {}\naudience: {}\n\n{}",
            r.subject,
            r.audience.as_str(),
            r.body_markdown
        );
        insta::assert_snapshot!(format!("template_{name}"), doc);
    }
}

#[test]
fn the_complaint_as_plain_text() {
    let r = render("fbi-ic3-complaint", &sample());
    insta::assert_snapshot!("text_fbi-ic3-complaint", r.body_text);
}

#[test]
fn every_template_renders_with_no_facts_showing_placeholders() {
    let empty = notify::builder::finish(json!({}), None).expect("empty facts complete");
    for (name, _) in SHIPPED {
        let r = render(name, &empty);
        assert!(
            r.body_markdown.contains("\\[COUNSEL TO COMPLETE: "),
            "{name} shows no placeholder with empty facts"
        );
        assert!(r.body_text.contains("[COUNSEL TO COMPLETE: "), "{name}");
        assert!(
            !r.subject.is_empty() && !r.subject.contains('\n'),
            "{name}: {}",
            r.subject
        );
    }
}

#[test]
fn every_template_uses_only_schema_fields_in_every_branch() {
    let templates = DraftTemplates::shipped();
    let shape = facts::shape();
    for (name, _) in SHIPPED {
        let t = templates.load(name).expect("loads");
        let problems = t.check(&shape);
        assert!(problems.is_empty(), "{name}: {problems:#?}");
    }
}

#[test]
fn audiences() {
    let templates = DraftTemplates::shipped();
    let audience = |n: &str| templates.load(n).expect("loads").audience;
    for n in [
        "fbi-ic3-complaint",
        "fbi-field-office-cover-letter",
        "ofac-voluntary-self-disclosure",
        "ofac-blocked-property-report",
        "ofac-rejected-transaction-report",
    ] {
        assert_eq!(audience(n), Audience::Authority, "{n}");
    }
    for n in ["legal-hold-memo", "executive-brief"] {
        assert_eq!(audience(n), Audience::Internal, "{n}");
    }
    for n in ["staffing-vendor-notice", "hr-separation-notice"] {
        assert_eq!(audience(n), Audience::ThirdParty, "{n}");
    }
}

/// The report to the FBI carries the identities used, IP addresses with times, devices and
/// serials, payments with amounts and rails, actions with times and the evidence hashes.
#[test]
fn the_complaint_carries_the_facts_the_fbi_asks_for() {
    let f = sample();
    let r = render("fbi-ic3-complaint", &f);
    let body = &r.body_text;
    let must = [
        "Jonathan Smith",
        "j.smith@example.com",
        "+1 512 555 0199 (VoIP: yes)",
        "jsmith-devops",
        "U.S. passport",
        "203.0.113.45",
        "2026-03-02T14:05:11Z",
        "2026-11-24T21:14:05Z",
        "Astrill VPN",
        "C02DEMO0001",
        "AnyDesk, Chrome Remote Desktop",
        "12,500.00",
        "Contractor invoice, Payoneer",
        "Payoneer receiving account ending 7781",
        "100,000.00 USD",
        "2026-11-25T16:40:12.904Z",
        "suspend_user",
        "3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8551",
        "18 U.S.C. § 1028A",
        "31 C.F.R. part 510",
        "Marcus Lee",
    ];
    for m in must {
        assert!(body.contains(m), "the IC3 complaint lacks {m:?}");
    }
    for section in [
        "1. Victim information",
        "2. Financial transactions",
        "3. Information about the subject",
        "4. Description of the incident",
        "5. Other information",
    ] {
        assert!(body.contains(section), "missing section {section}");
    }
}

#[test]
fn the_ofac_reports_carry_their_fields_and_legal_basis() {
    let f = sample();
    let vsd = render("ofac-voluntary-self-disclosure", &f).body_text;
    for m in [
        "OFACDisclosures@treasury.gov",
        "Executive Order 13570",
        "31 C.F.R. § 510.201",
        "50 U.S.C. § 1705",
        "§ 501.601",
        "appendix A",
        "100,000.00 USD",
        "Payoneer receiving account ending 7781",
        "Total paid",
    ] {
        assert!(vsd.contains(m), "the OFAC disclosure lacks {m:?}");
    }
    let blocked = render("ofac-blocked-property-report", &f).body_text;
    for m in [
        "31 C.F.R. § 501.603",
        "ten business days",
        "30 September",
        "Date blocked",
        "2026-11-25",
        "12,500.00 USD",
        "AP voucher 2026-11-0417",
        "Original transfer instructions",
    ] {
        assert!(
            blocked.contains(m),
            "the blocked-property report lacks {m:?}"
        );
    }
    assert!(!blocked.contains("No blocked property is recorded"));
    let rejected = render("ofac-rejected-transaction-report", &f).body_text;
    for m in [
        "31 C.F.R. § 501.604",
        "ten business days",
        "FAQ 820",
        "1,180.40 USD",
        "First Example Bank",
        "EXP-2026-11-2291",
        "Associated sanctions target",
    ] {
        assert!(
            rejected.contains(m),
            "the rejected-transaction report lacks {m:?}"
        );
    }
    // Without blocked property or rejected transactions the reports say so.
    let mut none = f.clone();
    none["payments"]["blocked"] = json!([]);
    none["payments"]["rejected"] = json!([]);
    assert!(render("ofac-blocked-property-report", &none)
        .body_text
        .contains("No blocked property is recorded"));
    assert!(render("ofac-rejected-transaction-report", &none)
        .body_text
        .contains("No rejected transaction is recorded"));
}

#[test]
fn the_separation_notice_is_neutral() {
    let r = render("hr-separation-notice", &sample());
    let all = format!("{}\n{}\n{}", r.subject, r.body_markdown, r.body_text).to_lowercase();
    for word in [
        "sanction",
        "dprk",
        "korea",
        "investigat",
        "fbi",
        "ofac",
        "ic3",
        "law enforcement",
        "police",
        "fraud",
        "stolen",
        "evidence",
        "vpn",
        "ip address",
        "suspect",
    ] {
        assert!(
            !all.contains(word),
            "the separation notice mentions {word:?}"
        );
    }
    assert!(
        all.contains("c02demo0001"),
        "it lists the equipment to return"
    );
    assert!(all.contains("elena ortiz"), "it is signed by HR");
}

#[test]
fn a_hostile_display_name_cannot_add_markup() {
    let mut f = sample();
    f["subject"]["names"] =
        json!(["[Verify here](https://evil.example/login) <img src=x>\n# Urgent"]);
    let r = render("fbi-ic3-complaint", &f);
    assert!(
        r.body_markdown
            .contains("\\[Verify here\\](https://evil.example/login) \\<img src=x> # Urgent"),
        "{}",
        r.body_markdown
    );
    assert!(!r.body_markdown.contains("\n# Urgent"));
    // Counsel's plain text shows exactly what the worker typed, on one line.
    assert!(r
        .body_text
        .contains("[Verify here](https://evil.example/login) <img src=x> # Urgent"));
    // Readable values are not escaped.
    assert!(r.body_markdown.contains("j.smith@example.com"));
    assert!(r.body_markdown.contains("jsmith-devops"));
}

#[test]
fn a_template_reading_a_field_outside_the_schema_fails_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("custom-brief.md.hbs"),
        "---\nsubject: \"Brief {{case.id}}\"\naudience: internal\n---\n# Brief\n\nPaid: {{payments.total_paid}}\nPayee bank: {{payments.bank_name}}\n",
    )
    .expect("write");
    let templates = DraftTemplates::new(Some(dir.path().to_path_buf()));
    let err = notify::render_named(&templates, "custom-brief", &sample(), None).unwrap_err();
    let file = dir.path().join("custom-brief.md.hbs").display().to_string();
    assert_eq!(
        err,
        format!("template `custom-brief` ({file}:8:13): field `payments.bank_name` is not in the incident-facts schema; its fields: blocked, currency, hold, items, payroll_changes, rejected, total_paid")
    );
    // The same field supplied through the step's `data` is fine.
    let ok = notify::render_named(
        &templates,
        "custom-brief",
        &sample(),
        Some(&json!({"payments": {"bank_name": "First Example Bank"}})),
    )
    .expect("renders with data");
    assert!(ok.body_markdown.contains("Payee bank: First Example Bank"));
}
