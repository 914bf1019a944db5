//! Incident facts from a run: what the run knows, then what people told it.
//!
//! [`facts_from_run`] reads the run's inputs (`alert_id`, `subject_email`,
//! `device_serials`, `confidence`), its succeeded steps' outputs (role actions' per-instance
//! `results` included), its evidence records and its decisions:
//! - accounts, names and emails from identity lookups (`*.get_user`, `identity.find_user`);
//! - devices from device lookups (`find_*`, `device.find`), merged by serial, with each
//!   vendor's id and where the device is managed, and remote-access tools from inventory
//!   snapshots (`remote_access_tools`); every serial in `device_serials` is listed;
//! - IP addresses from every `ip_addresses` list anywhere in a step's output (snapshot
//!   outputs carry `[{ip, first_seen, last_seen, events, country}]`), merged by address:
//!   earliest first sighting, latest last sighting, events summed;
//! - actions: every succeeded mutating call (per role instance) with its finish time,
//!   action, instance, target and whether the target was `already` in that state;
//! - evidence: every artifact with its SHA-256, size, record count and source;
//! - approvals: every decision on an approval or task.
//!
//! Secret outputs (lock PINs) live in another column and are never read here.
//!
//! [`finish`] then merges the facts people gave (the run's `facts` input), checked against
//! the schema, derives what follows from the rest (the total paid, the network summary, the
//! containment date), and fills every remaining field with a visible placeholder.

use std::collections::{BTreeMap, BTreeSet};

use cordon_connectors::catalog::{find_action, Effect};
use serde_json::{json, Map, Value};

use super::facts::{self, deep_merge};
use crate::runbook::validate::ValidatedRunbook;
use crate::store::{Decision, EvidenceRecord, ItemRecord, RunRecord, StepStatus};

/// Identity-provider connector types and their lookup action.
const IDENTITY_LOOKUPS: &[&str] = &["get_user"];
/// Device lookups across MDMs and EDRs.
const DEVICE_LOOKUPS: &[&str] = &["find_computer", "find_device", "find_host", "find_machine"];

/// What the builder reads about one run.
pub struct RunState<'a> {
    pub run: &'a RunRecord,
    /// The runbook the run executed (for each step's `uses`).
    pub runbook: Option<&'a ValidatedRunbook>,
    pub items: &'a [ItemRecord],
    pub evidence: &'a [EvidenceRecord],
    pub decisions: &'a [Decision],
    /// Now, RFC 3339 (the draft's preparation time).
    pub now: &'a str,
}

/// One vendor call's result: a plain step's item, or one instance inside a role action.
struct Call<'a> {
    item: &'a ItemRecord,
    ty: String,
    action: String,
    connector: String,
    status: String,
    output: &'a Value,
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn push_unique(list: &mut Vec<String>, v: String) {
    if !list.iter().any(|x| x.eq_ignore_ascii_case(&v)) {
        list.push(v);
    }
}

/// Every vendor call of the run's succeeded items.
fn calls<'a>(state: &RunState<'a>) -> Vec<Call<'a>> {
    let uses_of: BTreeMap<&str, &str> = state
        .runbook
        .map(|rb| {
            rb.runbook
                .steps
                .iter()
                .chain(&rb.runbook.on_failure)
                .filter_map(|s| s.uses.as_deref().map(|u| (s.id.as_str(), u)))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for item in state.items {
        if item.status != StepStatus::Succeeded {
            continue;
        }
        let Some(output) = &item.output else { continue };
        if output.get("dry_run") == Some(&Value::Bool(true)) {
            continue;
        }
        if let Some(results) = output.get("results").and_then(Value::as_array) {
            for r in results {
                let (Some(ty), Some(action)) = (text(r.get("type")), text(r.get("action"))) else {
                    continue;
                };
                out.push(Call {
                    item,
                    ty,
                    action,
                    connector: text(r.get("connector")).unwrap_or_default(),
                    status: text(r.get("status")).unwrap_or_default(),
                    output: r.get("output").unwrap_or(&Value::Null),
                });
            }
            continue;
        }
        let Some((ty, action)) = uses_of
            .get(item.step_id.as_str())
            .and_then(|u| u.split_once('.'))
        else {
            continue;
        };
        out.push(Call {
            item,
            ty: ty.to_string(),
            action: action.to_string(),
            connector: item.connector.clone(),
            status: "succeeded".into(),
            output,
        });
    }
    out
}

/// The facts the run itself knows (not yet completed with placeholders).
pub fn facts_from_run(state: &RunState<'_>) -> Value {
    let run = state.run;
    let inputs = &run.inputs;
    let calls = calls(state);

    // Subject: the login first, then what the identity providers know.
    let mut emails: Vec<String> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    if let Some(e) = text(inputs.get("subject_email")) {
        emails.push(e);
    }
    let mut accounts = Vec::new();
    for c in calls.iter().filter(|c| {
        IDENTITY_LOOKUPS.contains(&c.action.as_str()) && c.output.get("found") == Some(&json!(true))
    }) {
        let o = c.output;
        let login = text(o.get("login"))
            .or_else(|| text(o.get("user_principal_name")))
            .or_else(|| text(o.get("email")));
        if let Some(e) = text(o.get("email")) {
            push_unique(&mut emails, e);
        }
        if let Some(n) = text(o.get("name")) {
            push_unique(&mut names, n);
        }
        accounts.push(json!({
            "connector": c.connector, "type": c.ty, "id": text(o.get("id")),
            "login": login, "name": text(o.get("name")), "status": text(o.get("status")),
        }));
    }

    // Devices: every serial the run was given, then what each MDM/EDR found.
    let mut devices: Vec<Map<String, Value>> = Vec::new();
    let device_key = |d: &Map<String, Value>| text(d.get("serial")).map(|s| s.to_ascii_lowercase());
    let find_device = |devices: &mut Vec<Map<String, Value>>, key: &str| -> usize {
        if let Some(i) = devices
            .iter()
            .position(|d| device_key(d).as_deref() == Some(&key.to_ascii_lowercase()))
        {
            return i;
        }
        let mut m = Map::new();
        m.insert("serial".into(), json!(key));
        for list in ["vendor_ids", "managed_by", "rmm_tools"] {
            m.insert(list.into(), json!([]));
        }
        devices.push(m);
        devices.len() - 1
    };
    if let Some(serials) = inputs.get("device_serials").and_then(Value::as_array) {
        for s in serials.iter().filter_map(|s| text(Some(s))) {
            find_device(&mut devices, &s);
        }
    }
    for c in &calls {
        let asked = text(c.item.inputs.get("device"));
        if DEVICE_LOOKUPS.contains(&c.action.as_str())
            && c.output.get("found") == Some(&json!(true))
        {
            let o = c.output;
            let Some(key) = text(o.get("serial")).or_else(|| asked.clone()) else {
                continue;
            };
            let i = find_device(&mut devices, &key);
            let d = &mut devices[i];
            for (field, from) in [
                ("name", "name"),
                ("platform", "os"),
                ("owner", "owner"),
                ("last_seen", "last_seen"),
            ] {
                if d.get(field).is_none() {
                    if let Some(v) = text(o.get(from)) {
                        d.insert(field.into(), json!(v));
                    }
                }
            }
            if let Some(id) = text(o.get("id")) {
                if let Some(Value::Array(ids)) = d.get_mut("vendor_ids") {
                    ids.push(json!({"connector": c.connector, "type": c.ty, "id": id}));
                }
            }
            if let Some(Value::Array(m)) = d.get_mut("managed_by") {
                let entry = json!(format!("{} ({})", c.connector, c.ty));
                if !m.contains(&entry) {
                    m.push(entry);
                }
            }
        }
        if let (Some(tools), Some(key)) = (
            c.output
                .get("remote_access_tools")
                .and_then(Value::as_array),
            asked,
        ) {
            if tools.is_empty() {
                continue;
            }
            let i = find_device(&mut devices, &key);
            if let Some(Value::Array(have)) = devices[i].get_mut("rmm_tools") {
                for t in tools.iter().filter_map(|t| text(Some(t))) {
                    if !have
                        .iter()
                        .any(|h| h.as_str().is_some_and(|h| h.eq_ignore_ascii_case(&t)))
                    {
                        have.push(json!(t));
                    }
                }
            }
        }
    }

    // Network: every `ip_addresses` list anywhere in any output, merged by address.
    let mut ips: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for c in &calls {
        collect_ips(c.output, &c.connector, &mut ips, 0);
    }
    let mut ip_list: Vec<Value> = ips.into_values().map(Value::Object).collect();
    ip_list.sort_by(|a, b| {
        let k = |v: &Value| {
            (
                text(v.get("first_seen")).unwrap_or_default(),
                text(v.get("ip")).unwrap_or_default(),
            )
        };
        k(a).cmp(&k(b))
    });

    // Actions: succeeded mutating calls, per instance, in time order.
    let mut actions = Vec::new();
    for c in &calls {
        let uses = format!("{}.{}", c.ty, c.action);
        let Some((_, decl)) = find_action(&uses) else {
            continue;
        };
        if decl.effect.for_input(&c.item.inputs) != Effect::Mutation {
            continue;
        }
        if !matches!(c.status.as_str(), "succeeded" | "already") {
            continue;
        }
        let entity = text(c.item.inputs.get("user")).or_else(|| text(c.item.inputs.get("device")));
        let target = text(c.output.get("target")).or_else(|| {
            // `http.request`: the method and URL path (never the query string).
            let method = text(c.item.inputs.get("method"))?;
            let url = text(c.item.inputs.get("url"))?;
            let path = url.split(['?', '#']).next().unwrap_or("").to_string();
            Some(format!("{} {path}", method.to_ascii_uppercase()))
        });
        let already = c.status == "already" || c.output.get("already") == Some(&json!(true));
        actions.push(json!({
            "at": c.item.finished_at, "step": c.item.step_id, "action": c.action,
            "connector": c.connector, "type": c.ty, "entity": entity, "target": target,
            "result": if already { "already" } else { "succeeded" },
            "already": already,
        }));
    }
    actions.sort_by(|a, b| {
        let k = |v: &Value| {
            (
                text(v.get("at")).unwrap_or_default(),
                text(v.get("step")).unwrap_or_default(),
            )
        };
        k(a).cmp(&k(b))
    });

    let evidence: Vec<Value> = state
        .evidence
        .iter()
        .map(|e| {
            json!({
                "id": e.evidence_id, "sha256": e.sha256, "bytes": e.bytes, "records": e.records,
                "source": describe_source(e), "collected_at": e.collected_at, "step": e.step_id,
            })
        })
        .collect();

    let approvals: Vec<Value> = state
        .decisions
        .iter()
        .map(|d| json!({"step": d.step_id, "decision": d.decision, "by": d.decided_by, "at": d.at, "comment": d.comment}))
        .collect();

    let started = run
        .started_at
        .clone()
        .unwrap_or_else(|| run.created_at.clone());
    json!({
        "case": {
            "id": run.case_id,
            "alert_id": text(inputs.get("alert_id")),
            "prepared_on": state.now.get(..10),
            "dates": {"response_started": started},
            "detection": {"confidence": text(inputs.get("confidence"))},
        },
        "subject": {"names": names, "emails": emails, "accounts": accounts},
        "network": {"ip_addresses": ip_list},
        "devices": devices.into_iter().map(Value::Object).collect::<Vec<_>>(),
        "actions": actions,
        "approvals": approvals,
        "evidence": evidence,
        "run": {
            "id": run.id, "runbook": run.runbook, "runbook_sha256": run.runbook_sha256,
            "started_at": started, "started_by": run.started_by, "trigger": run.trigger,
        },
    })
}

/// `connector.action on instance (user …, since …)`.
fn describe_source(e: &EvidenceRecord) -> String {
    let m = &e.meta;
    let mut s = format!("{}.{} on {}", m.connector_type, m.action, m.instance);
    let details: Vec<String> = ["user", "device", "index", "query", "since", "until"]
        .iter()
        .filter_map(|k| text(m.source.get(*k)).map(|v| format!("{k} {v}")))
        .collect();
    if !details.is_empty() {
        s.push_str(&format!(" ({})", details.join(", ")));
    }
    s
}

fn collect_ips(
    v: &Value,
    source: &str,
    out: &mut BTreeMap<String, Map<String, Value>>,
    depth: usize,
) {
    if depth > 16 {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "ip_addresses" {
                    if let Some(list) = x.as_array() {
                        for entry in list {
                            merge_ip(entry, source, out);
                        }
                        continue;
                    }
                }
                collect_ips(x, source, out, depth + 1);
            }
        }
        Value::Array(a) => a
            .iter()
            .for_each(|x| collect_ips(x, source, out, depth + 1)),
        _ => {}
    }
}

fn merge_ip(entry: &Value, source: &str, out: &mut BTreeMap<String, Map<String, Value>>) {
    let Some(ip) = text(entry.get("ip")) else {
        return;
    };
    let slot = out.entry(ip.clone()).or_insert_with(|| {
        let mut m = Map::new();
        m.insert("ip".into(), json!(ip));
        m.insert("events".into(), json!(0));
        m.insert("sources".into(), json!([]));
        m
    });
    let earlier = |a: &str, b: &str| match (crate::time::parse(a), crate::time::parse(b)) {
        (Some(x), Some(y)) => x < y,
        _ => a < b,
    };
    if let Some(f) = text(entry.get("first_seen")) {
        let keep = text(slot.get("first_seen")).is_some_and(|old| !earlier(&f, &old));
        if !keep {
            slot.insert("first_seen".into(), json!(f));
        }
    }
    if let Some(l) = text(entry.get("last_seen")) {
        let keep = text(slot.get("last_seen")).is_some_and(|old| !earlier(&old, &l));
        if !keep {
            slot.insert("last_seen".into(), json!(l));
        }
    }
    let add = entry.get("events").and_then(Value::as_u64).unwrap_or(0);
    let have = slot.get("events").and_then(Value::as_u64).unwrap_or(0);
    slot.insert("events".into(), json!(have.saturating_add(add)));
    if slot.get("country").is_none() {
        if let Some(c) = text(entry.get("country")) {
            slot.insert("country".into(), json!(c));
        }
    }
    for (k, from) in [("asn", "asn"), ("vpn_provider", "vpn_provider")] {
        if slot.get(k).is_none() {
            if let Some(v) = text(entry.get(from)) {
                slot.insert(k.into(), json!(v));
            }
        }
    }
    if let Some(Value::Array(s)) = slot.get_mut("sources") {
        if !source.is_empty() && !s.contains(&json!(source)) {
            s.push(json!(source));
        }
    }
}

/// Merge the facts people gave over `base`, derive what follows, and fill every remaining
/// field with its placeholder. `given` must fit the schema (every problem is returned, each
/// naming its path).
pub fn finish(mut base: Value, given: Option<&Value>) -> Result<Value, Vec<String>> {
    if let Some(g) = given.filter(|g| !g.is_null()) {
        if !g.is_object() {
            return Err(vec!["must be a mapping of incident facts".into()]);
        }
        facts::check_given(g)?;
        deep_merge(&mut base, g);
    }
    derive(&mut base);
    facts::complete(&mut base, &facts::shape(), "");
    Ok(base)
}

/// Fill what follows from other facts, where it was not given.
fn derive(v: &mut Value) {
    let missing = |v: &Value, ptr: &str| v.pointer(ptr).and_then(|x| text(Some(x))).is_none();

    // Payments: amounts shown with two decimals; the total when it can be computed exactly.
    if let Some(items) = v
        .pointer_mut("/payments/items")
        .and_then(Value::as_array_mut)
    {
        for it in items.iter_mut() {
            for k in ["gross", "net"] {
                format_amount(it, k);
            }
        }
    }
    for list in ["/payments/blocked", "/payments/rejected"] {
        if let Some(items) = v.pointer_mut(list).and_then(Value::as_array_mut) {
            for it in items.iter_mut() {
                format_amount(it, "amount");
            }
        }
    }
    let items: Vec<Value> = v
        .pointer("/payments/items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !items.is_empty() {
        let currencies: BTreeSet<String> = items
            .iter()
            .filter_map(|i| text(i.get("currency")).map(|c| c.to_ascii_uppercase()))
            .collect();
        let one_currency = currencies.len() <= 1;
        if missing(v, "/payments/currency") && currencies.len() == 1 {
            if let Some(c) = currencies.iter().next() {
                set(v, &["payments", "currency"], json!(c));
            }
        }
        let cents: Option<i128> = items
            .iter()
            .map(|i| text(i.get("gross")).and_then(|g| parse_cents(&g)))
            .sum();
        if let (Some(total), true, true) = (cents, one_currency, missing(v, "/payments/total_paid"))
        {
            set(v, &["payments", "total_paid"], json!(format_cents(total)));
        }
    }

    // Network summary.
    let ips: Vec<Value> = v
        .pointer("/network/ip_addresses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !ips.is_empty() {
        if v.pointer("/network/countries")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            let countries: BTreeSet<String> =
                ips.iter().filter_map(|i| text(i.get("country"))).collect();
            if !countries.is_empty() {
                set(v, &["network", "countries"], json!(countries));
            }
        }
        let times =
            |k: &str| -> Vec<String> { ips.iter().filter_map(|i| text(i.get(k))).collect() };
        if missing(v, "/network/first_seen") {
            if let Some(t) = times("first_seen")
                .into_iter()
                .min_by(|a, b| cmp_time(a, b))
            {
                set(v, &["network", "first_seen"], json!(t));
            }
        }
        if missing(v, "/network/last_seen") {
            if let Some(t) = times("last_seen").into_iter().max_by(|a, b| cmp_time(a, b)) {
                set(v, &["network", "last_seen"], json!(t));
            }
        }
    }

    // Containment: the first action that suspended, disabled, isolated or locked something.
    if missing(v, "/case/dates/containment") {
        let first = v
            .pointer("/actions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|a| {
                text(a.get("action")).is_some_and(|x| {
                    [
                        "suspend",
                        "disable",
                        "deactivate",
                        "contain",
                        "isolate",
                        "lock",
                        "clear_sessions",
                        "revoke",
                        "sign_out",
                    ]
                    .iter()
                    .any(|w| x.contains(w))
                })
            })
            .filter_map(|a| text(a.get("at")))
            .min_by(|a, b| cmp_time(a, b));
        if let Some(t) = first {
            set(v, &["case", "dates", "containment"], json!(t));
        }
    }
}

fn cmp_time(a: &str, b: &str) -> std::cmp::Ordering {
    match (crate::time::parse(a), crate::time::parse(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

fn set(v: &mut Value, path: &[&str], value: Value) {
    let mut cur = v;
    for (i, k) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(m) = cur else { return };
        if i + 1 == path.len() {
            m.insert((*k).to_string(), value);
            return;
        }
        cur = m
            .entry((*k).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// A number written as a JSON number becomes `12,345.00`; text is left as written.
fn format_amount(item: &mut Value, key: &str) {
    let Some(Value::Number(n)) = item.get(key) else {
        return;
    };
    if let Some(c) = parse_cents(&n.to_string()) {
        item[key] = json!(format_cents(c));
    }
}

/// `4,250.5`, `$4250`, `4250.00` → cents; None for anything else (or more than two
/// decimals, which cannot be totalled exactly here).
pub fn parse_cents(s: &str) -> Option<i128> {
    let t: String = s
        .trim()
        .trim_start_matches(['$', '€', '£'])
        .chars()
        .filter(|c| *c != ',')
        .collect();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r.to_string()),
        None => (false, t),
    };
    let (whole, frac) = match t.split_once('.') {
        Some((w, f)) => (w, f),
        None => (t.as_str(), ""),
    };
    if whole.is_empty()
        || !whole.chars().all(|c| c.is_ascii_digit())
        || frac.len() > 2
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let w: i128 = whole.parse().ok()?;
    let f: i128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<2}").parse().ok()?
    };
    let c = w.checked_mul(100)?.checked_add(f)?;
    Some(if neg { -c } else { c })
}

/// Cents as `12,345.67`.
pub fn format_cents(c: i128) -> String {
    let neg = c < 0;
    let c = c.unsigned_abs();
    let whole = (c / 100).to_string();
    let mut grouped = String::new();
    for (i, ch) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    format!("{}{grouped}.{:02}", if neg { "-" } else { "" }, c % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_record() -> RunRecord {
        RunRecord {
            id: "01RUN".into(),
            runbook: "rb".into(),
            runbook_text: "version: 1\nname: rb\nsteps:\n  - id: find-user\n    uses: okta.get_user\n    with: { user: x@example.com }\n".into(),
            runbook_sha256: "ab".repeat(32),
            status: crate::store::RunStatus::Running,
            trigger: "cli:analyst".into(),
            started_by: "analyst".into(),
            inputs: json!({"alert_id": "A-1", "subject_email": "x@example.com", "device_serials": ["S1", "S9"], "confidence": 0.9}),
            concurrency_key: Some("x@example.com".into()),
            undo_of: None,
            dry_run: false,
            case_id: "x@example.com".into(),
            error: None,
            created_at: "2026-11-25T10:00:00.000Z".into(),
            started_at: Some("2026-11-25T10:00:01.000Z".into()),
            finished_at: None,
            cancel_requested: false,
        }
    }

    fn item(step: &str, idx: u32, inputs: Value, output: Value, finished: &str) -> ItemRecord {
        ItemRecord {
            run_id: "01RUN".into(),
            step_id: step.into(),
            idx,
            status: StepStatus::Succeeded,
            attempts: 1,
            inputs,
            connector: "role".into(),
            output: Some(output),
            error: None,
            prior_state: None,
            secret_output: Some(json!({"jamf-prod": {"pin": "482913"}})),
            started_at: None,
            finished_at: Some(finished.into()),
        }
    }

    /// Facts from a run's items: role results and a plain vendor step, IP lists merged by
    /// address wherever they sit, devices merged by serial, mutations as actions; secrets
    /// never read.
    #[test]
    fn facts_from_run_items() {
        let run = run_record();
        let rb = crate::exec::runner::stored_runbook(&run).expect("valid");
        let items = vec![
            item(
                "find-user",
                0,
                json!({"user": "x@example.com"}),
                json!({"found": true, "id": "00u1", "login": "x@example.com", "email": "x.alias@example.com", "name": "Pat Example", "status": "ACTIVE"}),
                "2026-11-25T10:00:02.000Z",
            ),
            item(
                "logs",
                0,
                json!({"user": "x@example.com"}),
                json!({"results": [
                    {"connector": "okta-prod", "type": "okta", "action": "snapshot_system_log", "status": "succeeded",
                     "output": {"evidence_id": "e1", "ip_addresses": [
                        {"ip": "203.0.113.7", "first_seen": "2026-11-01T08:00:00Z", "last_seen": "2026-11-02T08:00:00Z", "events": 10, "country": "SG"},
                        {"ip": "198.51.100.2", "first_seen": "2026-10-01T08:00:00Z", "last_seen": "2026-10-01T09:00:00Z", "events": 1}]}},
                    {"connector": "graph", "type": "entra", "action": "snapshot_sign_ins", "status": "succeeded",
                     "output": {"nested": {"ip_addresses": [
                        {"ip": "203.0.113.7", "first_seen": "2026-10-30T08:00:00+00:00", "last_seen": "2026-11-20T08:00:00Z", "events": 5, "country": "SG"}]}}},
                ]}),
                "2026-11-25T10:00:03.000Z",
            ),
            item(
                "find-devices",
                0,
                json!({"device": "S1"}),
                json!({"results": [
                    {"connector": "jamf-prod", "type": "jamf", "action": "find_computer", "status": "succeeded",
                     "output": {"found": true, "id": "17", "serial": "S1", "name": "mbp", "os": "macOS 14", "owner": "x@example.com"}},
                    {"connector": "falcon", "type": "crowdstrike", "action": "find_host", "status": "succeeded",
                     "output": {"found": true, "id": "aid1", "serial": "s1"}},
                    {"connector": "kandji", "type": "kandji", "action": "find_device", "status": "not_found", "output": {"found": false}},
                ]}),
                "2026-11-25T10:00:04.000Z",
            ),
            item(
                "inventory",
                0,
                json!({"device": "S1"}),
                json!({"results": [
                {"connector": "fleet", "type": "fleet", "action": "snapshot_software", "status": "succeeded",
                 "output": {"remote_access_tools": ["AnyDesk", "anydesk", "TeamViewer"]}}]}),
                "2026-11-25T10:00:05.000Z",
            ),
            item(
                "lock",
                0,
                json!({"device": "S1"}),
                json!({"results": [
                {"connector": "jamf-prod", "type": "jamf", "action": "lock_computer", "status": "succeeded",
                 "output": {"target": "17", "already": false, "pin": "[SECRET]"}},
                {"connector": "kandji", "type": "kandji", "action": "lock_device", "status": "not_found", "output": {"found": false}}]}),
                "2026-11-25T10:00:07.000Z",
            ),
            item(
                "suspend",
                0,
                json!({"user": "x@example.com"}),
                json!({"results": [
                {"connector": "okta-prod", "type": "okta", "action": "suspend_user", "status": "already",
                 "output": {"target": "00u1", "already": true}}]}),
                "2026-11-25T10:00:06.000Z",
            ),
        ];
        let f = facts_from_run(&RunState {
            run: &run,
            runbook: Some(&rb),
            items: &items,
            evidence: &[],
            decisions: &[],
            now: "2026-11-26T09:00:00.000Z",
        });
        assert!(!f.to_string().contains("482913"), "secrets are never read");
        assert_eq!(
            f["subject"]["emails"],
            json!(["x@example.com", "x.alias@example.com"])
        );
        assert_eq!(f["subject"]["names"], json!(["Pat Example"]));
        assert_eq!(f["subject"]["accounts"][0]["connector"], "role");
        assert_eq!(f["case"]["prepared_on"], "2026-11-26");
        let ips = f["network"]["ip_addresses"].as_array().expect("ips");
        assert_eq!(ips.len(), 2);
        let a = ips
            .iter()
            .find(|i| i["ip"] == "203.0.113.7")
            .expect("merged");
        assert_eq!(a["first_seen"], "2026-10-30T08:00:00+00:00");
        assert_eq!(a["last_seen"], "2026-11-20T08:00:00Z");
        assert_eq!(a["events"], 15);
        assert_eq!(a["sources"], json!(["okta-prod", "graph"]));
        assert_eq!(ips[0]["ip"], "198.51.100.2", "oldest first");
        let devices = f["devices"].as_array().expect("devices");
        assert_eq!(
            devices.len(),
            2,
            "S1 found (twice, merged) and S9 only given"
        );
        assert_eq!(devices[0]["serial"], "S1");
        assert_eq!(devices[0]["platform"], "macOS 14");
        assert_eq!(devices[0]["vendor_ids"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            devices[0]["managed_by"],
            json!(["jamf-prod (jamf)", "falcon (crowdstrike)"])
        );
        assert_eq!(devices[0]["rmm_tools"], json!(["AnyDesk", "TeamViewer"]));
        assert_eq!(devices[1]["serial"], "S9");
        let actions = f["actions"].as_array().expect("actions");
        assert_eq!(
            actions.len(),
            2,
            "mutations only, not_found left out: {actions:#?}"
        );
        assert_eq!(actions[0]["action"], "suspend_user");
        assert_eq!(actions[0]["result"], "already");
        assert_eq!(actions[0]["at"], "2026-11-25T10:00:06.000Z");
        assert_eq!(actions[1]["action"], "lock_computer");
        assert_eq!(actions[1]["entity"], "S1");
        assert_eq!(actions[1]["target"], "17");
        let done = finish(f, None).expect("complete");
        assert_eq!(
            done["case"]["dates"]["containment"],
            "2026-11-25T10:00:06.000Z"
        );
        assert_eq!(done["network"]["countries"], json!(["SG"]));
        assert_eq!(done["network"]["first_seen"], "2026-10-01T08:00:00Z");
    }

    #[test]
    fn money() {
        assert_eq!(parse_cents("4,250.5"), Some(425_050));
        assert_eq!(parse_cents("$12"), Some(1200));
        assert_eq!(parse_cents("0.015"), None);
        assert_eq!(parse_cents("abc"), None);
        assert_eq!(format_cents(1_275_000), "12,750.00");
        assert_eq!(format_cents(5), "0.05");
        assert_eq!(format_cents(-123_456_789), "-1,234,567.89");
    }

    #[test]
    fn finish_derives_totals_and_fills_placeholders() {
        let given = json!({"payments": {"items": [
            {"date": "2026-09-30", "gross": 4250, "currency": "usd"},
            {"date": "2026-10-31", "gross": "4,250.00", "currency": "USD"},
        ]}, "network": {"ip_addresses": [
            {"ip": "203.0.113.7", "first_seen": "2026-10-02T08:00:00Z", "last_seen": "2026-11-20T09:00:00Z", "country": "CN"},
            {"ip": "198.51.100.22", "first_seen": "2026-09-01T08:00:00Z", "last_seen": "2026-09-02T08:00:00Z", "country": "US"},
        ]}});
        let f = finish(json!({}), Some(&given)).unwrap();
        assert_eq!(f["payments"]["total_paid"], "8,500.00");
        assert_eq!(f["payments"]["currency"], "USD");
        assert_eq!(f["payments"]["items"][0]["gross"], "4,250.00");
        assert_eq!(f["network"]["countries"], json!(["CN", "US"]));
        assert_eq!(f["network"]["first_seen"], "2026-09-01T08:00:00Z");
        assert_eq!(f["network"]["last_seen"], "2026-11-20T09:00:00Z");
        assert_eq!(
            f["case"]["dates"]["containment"],
            "[COUNSEL TO COMPLETE: case.dates.containment]"
        );
        // Mixed currencies: no total is invented.
        let mixed = json!({"payments": {"items": [
            {"gross": 100, "currency": "USD"}, {"gross": 100, "currency": "EUR"}]}});
        let f = finish(json!({}), Some(&mixed)).unwrap();
        assert!(facts::is_placeholder(&f["payments"]["total_paid"]));
        // A typo in the given facts is an error naming it.
        let e = finish(json!({}), Some(&json!({"payments": {"itmes": []}}))).unwrap_err();
        assert!(e.join(" ").contains("itmes"), "{e:?}");
        assert!(finish(json!({}), Some(&json!([1]))).is_err());
    }
}
