//! The shared incident-facts schema: one Rust type that every notification template is
//! filled from (the domain notes' "Shared incident-facts schema").
//!
//! The type is the schema: its doc comments become the JSON Schema's descriptions
//! (`cordon templates schema`), and [`shape`] (derived from that schema) is what template
//! checking and placeholder filling walk. Built facts are JSON whose every field is present:
//! scalars are text (a known value, or a visible `[COUNSEL TO COMPLETE: <path>]`
//! placeholder), lists are lists (empty when nothing is known; templates show a placeholder
//! with `{{#each}}…{{else}}…{{/each}}`).
//!
//! Given facts (the run's `facts` input, `cordon templates render --facts`) may leave any
//! field out, and may give numbers or booleans where text is expected (shown as written);
//! an unknown field is an error naming its path, so a typo never disappears silently.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The marker a placeholder starts with.
pub const PLACEHOLDER_PREFIX: &str = "[COUNSEL TO COMPLETE: ";

/// The visible placeholder for an unknown field at `path` (`payments.total_paid`).
pub fn placeholder(path: &str) -> String {
    format!("{PLACEHOLDER_PREFIX}{path}]")
}

/// True when `v` is a placeholder rather than a known value.
pub fn is_placeholder(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.starts_with(PLACEHOLDER_PREFIX))
}

/// A scalar fact: text as shown to counsel. Given facts may use a number or a boolean
/// (shown as written); `null` or an empty string means unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Text(s)),
            Value::Null => Ok(Text(String::new())),
            Value::Bool(b) => Ok(Text(b.to_string())),
            Value::Number(n) => Ok(Text(n.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "expected text, a number or a boolean, not {}",
                match other {
                    Value::Array(_) => "a list",
                    _ => "a mapping",
                }
            ))),
        }
    }
}

impl JsonSchema for Text {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Text".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": ["string", "number", "boolean", "null"]})
    }
}

/// Everything the notification templates know about one incident.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Facts {
    /// The case: who reports, counsel, key dates, how it was detected.
    pub case: Case,
    /// The person behind the identity: names, contact details, documents, locations.
    pub subject: Subject,
    /// Where the subject connected from, as the preserved logs show it.
    pub network: Network,
    /// The company devices issued to or used by the subject.
    pub devices: Vec<Device>,
    /// Money paid to (or withheld from) the subject.
    pub payments: Payments,
    /// What the subject reached, took or threatened.
    pub impact: Impact,
    /// Containment actions the run took, with their times (from the run).
    pub actions: Vec<Action>,
    /// Approvals and tasks decided during the run (from the run).
    pub approvals: Vec<Approval>,
    /// Preserved evidence with its hashes (from the run's evidence store).
    pub evidence: Vec<Evidence>,
    /// The Cordon run that gathered these facts.
    pub run: RunInfo,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Case {
    /// Case identifier (the run's concurrency key, else its alert id, else its run id).
    pub id: Text,
    /// The alert that started the response.
    pub alert_id: Text,
    /// Date this draft was prepared (UTC, `YYYY-MM-DD`).
    pub prepared_on: Text,
    /// The reporting organisation (the victim).
    pub organisation: Organisation,
    /// Outside or in-house counsel handling the matter.
    pub counsel: Counsel,
    /// Key dates of the matter.
    pub dates: Dates,
    /// How the matter was detected.
    pub detection: Detection,
    /// Who holds the preserved originals (name, title, contact): the evidence custodian.
    pub evidence_custodian: Text,
    /// References with the authorities (field office, complaint numbers).
    pub references: References,
    /// How the matter was closed, when it was (a false positive, a confirmed case).
    pub resolution: Resolution,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Resolution {
    /// `false positive` or `confirmed`.
    pub outcome: Text,
    /// Counsel's reason, in a sentence or two.
    pub reason: Text,
    /// The containment run this closes, when there was one.
    pub containment_run: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Organisation {
    /// Legal name of the reporting organisation.
    pub name: Text,
    /// Registered or principal business address.
    pub address: Text,
    /// Main telephone number.
    pub phone: Text,
    /// Industry or sector.
    pub industry: Text,
    /// Website.
    pub website: Text,
    /// The organisation's point of contact for the authorities.
    pub contact: Contact,
    /// The human-resources contact who signs notices to the worker.
    pub hr_contact: Contact,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Contact {
    pub name: Text,
    pub title: Text,
    pub email: Text,
    pub phone: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Counsel {
    pub name: Text,
    /// Law firm (or "in-house").
    pub firm: Text,
    pub email: Text,
    pub phone: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Dates {
    /// Date the subject was hired or engaged.
    pub hire: Text,
    /// Date the company device was shipped.
    pub device_shipped: Text,
    /// First access to company systems.
    pub first_access: Text,
    /// Last access to company systems.
    pub last_access: Text,
    /// When the activity was detected.
    pub detection: Text,
    /// When this response started (from the run).
    pub response_started: Text,
    /// When access was first contained (from the run's first containment action).
    pub containment: Text,
    /// Termination or end of engagement.
    pub termination: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Detection {
    /// How the activity was detected, in a sentence or two.
    pub summary: Text,
    /// The detecting system or team.
    pub source: Text,
    /// Detection confidence, 0 to 1 (from the run's `confidence` input).
    pub confidence: Text,
    /// The indicators observed (e.g. "sign-ins through a commercial VPN").
    pub indicators: Vec<Text>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct References {
    /// The FBI field office the matter is reported to.
    pub fbi_field_office: Text,
    /// The IC3 complaint number, once filed.
    pub ic3_complaint_id: Text,
    /// An OFAC case or correspondence reference, if any.
    pub ofac_reference: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Subject {
    /// Names and aliases used (first the name on the employment record).
    pub names: Vec<Text>,
    /// Email addresses used (the corporate login first).
    pub emails: Vec<Text>,
    /// Telephone numbers used.
    pub phones: Vec<Phone>,
    /// Usernames and handles (GitHub, LinkedIn, Telegram, …).
    pub handles: Vec<Handle>,
    /// Identity documents presented (passport, driver's licence, SSN card, …).
    pub identity_documents: Vec<IdentityDocument>,
    /// Corporate accounts found in the identity providers (from the run).
    pub accounts: Vec<Account>,
    /// Job title or role.
    pub role: Text,
    /// Employee or contractor number.
    pub employee_id: Text,
    /// Where the subject claimed to live and work.
    pub claimed_location: Text,
    /// Where the evidence places the subject (or the device) instead.
    pub observed_location: Text,
    /// Home, shipping and other addresses on record.
    pub addresses: Vec<Address>,
    /// The staffing or employer-of-record vendor, if any.
    pub staffing_vendor: StaffingVendor,
    /// Who referred the subject, if anyone.
    pub referrer: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Phone {
    pub number: Text,
    /// Whether the number is VoIP (`yes`, `no`, or unknown).
    pub voip: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Handle {
    /// GitHub, LinkedIn, Telegram, Slack, …
    pub platform: Text,
    pub handle: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityDocument {
    /// Passport, driver's licence, SSN, …
    pub kind: Text,
    pub number: Text,
    /// Issuing country or authority.
    pub issuer: Text,
    /// Whose identity it is believed to be, verification results, …
    pub notes: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Account {
    /// The configured connector instance (e.g. `okta-prod`).
    pub connector: Text,
    /// The connector type (`okta`, `entra`, `google`, `scim`).
    #[serde(rename = "type")]
    pub kind: Text,
    /// The vendor's id for the account.
    pub id: Text,
    pub login: Text,
    pub name: Text,
    /// Status when the run looked it up.
    pub status: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Address {
    /// `home`, `shipping`, `device return`, …
    pub kind: Text,
    pub address: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StaffingVendor {
    pub name: Text,
    /// The vendor's contact (name, email, phone).
    pub contact: Text,
    /// The contract and its audit or notice clauses.
    pub contract: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    /// Every IP address seen in the preserved logs, merged by address.
    pub ip_addresses: Vec<IpAddress>,
    /// Countries those addresses were located in.
    pub countries: Vec<Text>,
    /// Earliest sign-in or event seen in the preserved logs.
    pub first_seen: Text,
    /// Latest sign-in or event seen in the preserved logs.
    pub last_seen: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct IpAddress {
    pub ip: Text,
    /// First time seen (UTC).
    pub first_seen: Text,
    /// Last time seen (UTC).
    pub last_seen: Text,
    /// Number of log events from this address.
    pub events: Text,
    pub country: Text,
    /// Autonomous system (network operator).
    pub asn: Text,
    /// VPN or proxy provider, if the address belongs to one (e.g. Astrill).
    pub vpn_provider: Text,
    /// The log sources that showed it (connector instances).
    pub sources: Vec<Text>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Device {
    pub serial: Text,
    /// Host or computer name.
    pub name: Text,
    /// The organisation's asset tag.
    pub asset_tag: Text,
    /// Operating system and version.
    pub platform: Text,
    /// The user the device is assigned to, as the MDM or EDR records it.
    pub owner: Text,
    /// Last check-in seen by the MDM or EDR.
    pub last_seen: Text,
    /// The vendors' ids for the device, per connector.
    pub vendor_ids: Vec<VendorId>,
    /// Where it is managed (the connector instances that know it).
    pub managed_by: Vec<Text>,
    /// Remote-access tools found installed (AnyDesk, TeamViewer, …).
    pub rmm_tools: Vec<Text>,
    /// Where it was shipped.
    pub shipped_to: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct VendorId {
    pub connector: Text,
    #[serde(rename = "type")]
    pub kind: Text,
    pub id: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Payments {
    /// Every payment made to the subject (salary, invoices, reimbursements).
    pub items: Vec<Payment>,
    /// Total paid; computed from the items when they share one currency and all amounts
    /// are numbers, unless given.
    pub total_paid: Text,
    /// Currency of the total.
    pub currency: Text,
    /// What was done to stop further payments, and when.
    pub hold: Text,
    /// Changes to the subject's payroll or payee details.
    pub payroll_changes: Vec<PayrollChange>,
    /// Funds or property held and blocked (31 CFR 501.603).
    pub blocked: Vec<BlockedProperty>,
    /// Payments refused because they would violate sanctions (31 CFR 501.604).
    pub rejected: Vec<RejectedTransaction>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Payment {
    pub date: Text,
    /// Gross amount.
    pub gross: Text,
    /// Net amount actually transferred.
    pub net: Text,
    pub currency: Text,
    /// Payroll, invoice, reimbursement, …, and the rail (ACH, wire, Wise, Payoneer, crypto).
    pub method: Text,
    /// Bank, routing and account number, or the Wise/Payoneer/crypto address.
    pub account: Text,
    /// The payee as named on the payment.
    pub payee: Text,
    /// Payroll run, invoice or transaction reference.
    pub reference: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PayrollChange {
    pub date: Text,
    /// What changed (e.g. "payee account changed to a Payoneer account").
    pub change: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BlockedProperty {
    /// Date the property was blocked.
    pub date_blocked: Text,
    /// What the property is (funds owed, a payment in process, equipment, …).
    pub description: Text,
    pub amount: Text,
    pub currency: Text,
    /// Where it is held (bank, account, location).
    pub location: Text,
    /// Account or reference number.
    pub account: Text,
    /// Owner, or the sanctions target with an interest in it.
    pub owner: Text,
    /// The original transfer instructions, where there were any.
    pub instructions: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RejectedTransaction {
    /// Date the transaction was rejected.
    pub date: Text,
    /// What the transaction was.
    pub description: Text,
    pub amount: Text,
    pub currency: Text,
    /// Originator, beneficiary and intermediaries.
    pub parties: Text,
    /// Financial institutions involved.
    pub banks: Text,
    /// Account or reference numbers.
    pub reference: Text,
    /// The associated sanctions target, as counsel identifies it.
    pub sanctions_target: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Impact {
    /// The business impact, in a sentence or two.
    pub summary: Text,
    /// Systems accessed.
    pub systems: Vec<Text>,
    /// Data accessed or taken (repositories, customer data, credentials, …).
    pub data: Vec<Text>,
    /// What is known about exfiltration (copies to personal accounts, …).
    pub exfiltration: Text,
    /// Whether export-controlled (ITAR/EAR) data was involved.
    pub export_controlled: Text,
    /// Any extortion or ransom demand (date, channel, content). Never pay it.
    pub extortion: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Action {
    /// When it finished (UTC).
    pub at: Text,
    /// The runbook step.
    pub step: Text,
    /// The vendor action, e.g. `suspend_user`.
    pub action: Text,
    /// The connector instance that carried it out.
    pub connector: Text,
    /// The connector type.
    #[serde(rename = "type")]
    pub kind: Text,
    /// The user or device the step named (email, serial).
    pub entity: Text,
    /// The vendor's id of what was changed.
    pub target: Text,
    /// `succeeded`, or `already` when it was in that state before the run.
    pub result: Text,
    /// `true` when the target was already in that state before the run.
    pub already: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Approval {
    /// The approval or task step.
    pub step: Text,
    /// `approve`, `reject`, `done`, `timeout-approve`, `timeout-reject`.
    pub decision: Text,
    /// Who decided (`cli:dana`, `api:dana`).
    pub by: Text,
    pub at: Text,
    pub comment: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Evidence {
    /// The evidence id.
    pub id: Text,
    /// Lowercase hex SHA-256 of the artifact, computed while it was written.
    pub sha256: Text,
    pub bytes: Text,
    /// Number of vendor records (log events, rows).
    pub records: Text,
    /// What was collected, from where (connector, instance, action, query).
    pub source: Text,
    /// Collection time (UTC).
    pub collected_at: Text,
    /// The runbook step that collected it.
    pub step: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RunInfo {
    pub id: Text,
    pub runbook: Text,
    /// SHA-256 of the runbook text the run executed.
    pub runbook_sha256: Text,
    pub started_at: Text,
    pub started_by: Text,
    /// What started it (`cli:dana`, `webhook:siem`).
    pub trigger: Text,
}

/// The JSON Schema (draft 2020-12) of the incident facts.
pub fn json_schema() -> Value {
    let mut s = serde_json::to_value(schemars::schema_for!(Facts)).unwrap_or_else(|_| Value::Null);
    if let Value::Object(m) = &mut s {
        m.insert(
            "title".into(),
            Value::String("Cordon incident facts".into()),
        );
        m.insert(
            "description".into(),
            Value::String(
                "The facts every notification template is filled from. Given facts may leave any field out (it shows as a `[COUNSEL TO COMPLETE: <path>]` placeholder); unknown fields are errors."
                    .into(),
            ),
        );
    }
    s
}

/// The structure of the facts, for placeholder filling and template checking.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// A scalar (text).
    Text,
    /// A list whose items have this shape.
    List(Box<Shape>),
    /// A mapping with these fields.
    Object(BTreeMap<String, Shape>),
    /// Anything (fields added by a step's `data` whose shape is not known in advance).
    Any,
}

impl Shape {
    /// The field `name` of an object shape.
    pub fn field(&self, name: &str) -> Option<&Shape> {
        match self {
            Shape::Object(m) => m.get(name),
            Shape::Any => Some(&Shape::Any),
            _ => None,
        }
    }

    /// The shape of `v`, for `data` merged over the facts: keys known, values anything.
    pub fn of_value(v: &Value) -> Shape {
        match v {
            Value::Object(m) => Shape::Object(
                m.iter()
                    .map(|(k, x)| (k.clone(), Shape::of_value(x)))
                    .collect(),
            ),
            Value::Array(a) => Shape::List(Box::new(
                a.first().map(Shape::of_value).unwrap_or(Shape::Any),
            )),
            Value::String(s) if s.contains("{{") => Shape::Any,
            _ => Shape::Text,
        }
    }

    /// This shape with `other` merged over it (objects merge field by field; anything else
    /// is replaced).
    pub fn merged(&self, other: &Shape) -> Shape {
        match (self, other) {
            (Shape::Object(a), Shape::Object(b)) => {
                let mut out = a.clone();
                for (k, v) in b {
                    let merged = match out.get(k) {
                        Some(existing) => existing.merged(v),
                        None => v.clone(),
                    };
                    out.insert(k.clone(), merged);
                }
                Shape::Object(out)
            }
            (Shape::List(a), Shape::List(b)) if **b == Shape::Any => Shape::List(a.clone()),
            (_, b) => b.clone(),
        }
    }
}

/// The shape of [`Facts`], read from its JSON Schema.
pub fn shape() -> Shape {
    let schema = json_schema();
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    shape_of(&schema, &defs, 0)
}

fn shape_of(s: &Value, defs: &Map<String, Value>, depth: usize) -> Shape {
    if depth > 32 {
        return Shape::Any;
    }
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or("");
        return match defs.get(name) {
            Some(d) => shape_of(d, defs, depth + 1),
            None => Shape::Any,
        };
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        return Shape::Object(
            props
                .iter()
                .map(|(k, v)| (k.clone(), shape_of(v, defs, depth + 1)))
                .collect(),
        );
    }
    if s.get("type").and_then(Value::as_str) == Some("array") {
        let items = s.get("items").cloned().unwrap_or(Value::Null);
        return Shape::List(Box::new(shape_of(&items, defs, depth + 1)));
    }
    Shape::Text
}

/// Fill `v` to `shape`: every missing, null or empty scalar becomes the placeholder for its
/// path, numbers and booleans become text, missing lists become empty lists, and list items
/// are filled by the item shape. Fields the shape does not know (from `data`) are kept.
pub fn complete(v: &mut Value, shape: &Shape, path: &str) {
    match shape {
        Shape::Any => {}
        Shape::Text => {
            let text = match &*v {
                Value::String(s) if !s.trim().is_empty() => return,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => placeholder(path),
            };
            *v = Value::String(text);
        }
        Shape::List(item) => {
            if !v.is_array() {
                *v = Value::Array(Vec::new());
            }
            if let Value::Array(items) = v {
                for it in items.iter_mut() {
                    complete(it, item, path);
                }
            }
        }
        Shape::Object(fields) => {
            if !v.is_object() {
                *v = Value::Object(Map::new());
            }
            if let Value::Object(m) = v {
                for (k, s) in fields {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    let slot = m.entry(k.clone()).or_insert(Value::Null);
                    complete(slot, s, &p);
                }
            }
        }
    }
}

/// Check given facts against the schema: every problem, each naming its path (`/payments/
/// items/0/gros`). Unknown fields, and lists or mappings where text belongs, are errors.
pub fn check_given(given: &Value) -> Result<(), Vec<String>> {
    let schema = json_schema();
    let validator = match jsonschema::validator_for(&schema) {
        Ok(v) => v,
        Err(e) => return Err(vec![format!("the facts schema does not compile: {e}")]),
    };
    let errors: Vec<String> = validator
        .iter_errors(given)
        .map(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".to_string() } else { at };
            format!("at `{at}`: {e}")
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// `over` merged into `base`: mappings field by field (recursively), anything else (lists
/// included) replaced. `null` in `over` leaves the base value alone.
pub fn deep_merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (_, Value::Null) => {}
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shape_follows_the_type() {
        let s = shape();
        let Shape::Object(top) = &s else {
            panic!("facts are a mapping: {s:?}")
        };
        for k in [
            "case",
            "subject",
            "network",
            "devices",
            "payments",
            "impact",
            "actions",
            "approvals",
            "evidence",
            "run",
        ] {
            assert!(top.contains_key(k), "missing {k}");
        }
        assert_eq!(
            s.field("case")
                .and_then(|c| c.field("organisation"))
                .and_then(|o| o.field("contact"))
                .and_then(|c| c.field("email")),
            Some(&Shape::Text)
        );
        let Some(Shape::List(ip)) = s.field("network").and_then(|n| n.field("ip_addresses")) else {
            panic!("ip_addresses is a list")
        };
        assert_eq!(ip.field("first_seen"), Some(&Shape::Text));
        assert!(matches!(ip.field("sources"), Some(Shape::List(_))));
        let Some(Shape::List(acc)) = s.field("subject").and_then(|n| n.field("accounts")) else {
            panic!("accounts is a list")
        };
        assert_eq!(acc.field("type"), Some(&Shape::Text), "serde rename kept");
    }

    #[test]
    fn complete_fills_every_field_with_its_path() {
        let mut v = json!({
            "payments": {"items": [{"gross": 4250, "currency": "USD", "net": ""}]},
            "case": {"detection": {"confidence": 0.92}},
            "extra": {"from": "data"},
        });
        complete(&mut v, &shape(), "");
        assert_eq!(
            v["payments"]["total_paid"],
            "[COUNSEL TO COMPLETE: payments.total_paid]"
        );
        assert_eq!(v["payments"]["items"][0]["gross"], "4250");
        assert_eq!(
            v["payments"]["items"][0]["net"],
            "[COUNSEL TO COMPLETE: payments.items.net]"
        );
        assert_eq!(v["case"]["detection"]["confidence"], "0.92");
        assert_eq!(v["devices"], json!([]));
        assert_eq!(v["subject"]["names"], json!([]));
        assert_eq!(v["extra"]["from"], "data", "unknown fields are kept");
        // The completed facts are a valid `Facts`, and nothing is left empty.
        let mut known = v.clone();
        known.as_object_mut().map(|m| m.remove("extra"));
        let typed: Facts = serde_json::from_value(known).expect("typed");
        assert!(!typed.case.organisation.contact.phone.0.is_empty());
        assert!(is_placeholder(&v["case"]["organisation"]["name"]));
    }

    #[test]
    fn given_facts_are_checked_naming_the_path() {
        assert!(
            check_given(&json!({"payments": {"items": [{"gross": 1, "date": "2026-01-31"}]}}))
                .is_ok()
        );
        let errs = check_given(&json!({
            "payments": {"items": [{"gros": 1}], "total_paid": ["x"]},
            "subjct": {},
        }))
        .unwrap_err();
        let all = errs.join("\n");
        assert!(
            all.contains("/payments/items/0") && all.contains("gros"),
            "{all}"
        );
        assert!(all.contains("/payments/total_paid"), "{all}");
        assert!(all.contains("subjct"), "{all}");
    }

    #[test]
    fn deep_merge_merges_mappings_and_replaces_lists() {
        let mut base = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        deep_merge(
            &mut base,
            &json!({"a": {"c": [3], "e": true}, "d": null, "f": 2}),
        );
        assert_eq!(
            base,
            json!({"a": {"b": 1, "c": [3], "e": true}, "d": "x", "f": 2})
        );
    }

    #[test]
    fn text_accepts_numbers_and_booleans() {
        let t: Text = serde_json::from_value(json!(12.5)).unwrap();
        assert_eq!(t.0, "12.5");
        let t: Text = serde_json::from_value(json!(true)).unwrap();
        assert_eq!(t.0, "true");
        assert!(serde_json::from_value::<Text>(json!([1])).is_err());
    }
}
